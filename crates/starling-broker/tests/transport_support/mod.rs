//! Shared by the transport tests (tls.rs, ws.rs, quic.rs): certificates made
//! with rcgen, a broker started from a full `Config` (listeners included), raw
//! codec peers over any byte stream, and TLS client configurations.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use starling_broker::{Broker, BrokerState, Config, ReloadHandle, ShutdownHandle};
use starling_codec::{Connect, Decoder, Packet, ProtocolVersion, QoS};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::common::{Raw, Stream, WAIT};

/// A certificate authority that issues certificates into files.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).unwrap();
    }

    /// Writes `{stem}.pem` and `{stem}.key` into `dir`: CN `cn` (if any), SANs `names`.
    pub fn issue(&self, dir: &Path, stem: &str, cn: Option<&str>, names: &[&str], server: bool) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
}

/// A directory of test certificates:
/// - `ca.pem`: the CA; `server.pem`/`.key` for localhost and 127.0.0.1;
/// - `client.pem`/`.key`: CN `device-1`, signed by the CA;
/// - `san.pem`/`.key`: no CN, first SAN `sensor-9.example`, signed by the CA;
/// - `evil.pem`/`.key`: CN `device-1`, signed by another CA.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "starling-{name}-{}-{:x}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("Starling test CA");
        ca.write(&dir.join("ca.pem"));
        ca.issue(
            &dir,
            "server",
            Some("localhost"),
            &["localhost", "127.0.0.1"],
            true,
        );
        ca.issue(&dir, "client", Some("device-1"), &["client.example"], false);
        ca.issue(&dir, "san", None, &["sensor-9.example"], false);
        Ca::new("Evil CA").issue(&dir, "evil", Some("device-1"), &[], false);
        Pki { dir, ca }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// A broker running in the test's runtime, with every listener of its config.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub handle: ShutdownHandle,
    pub reload: ReloadHandle,
    pub state: Arc<BrokerState>,
    pub join: JoinHandle<()>,
}

impl Running {
    pub async fn start(mut config: Config) -> Running {
        config.sys_interval = 0;
        let broker = Broker::bind(starling_broker::Config {
            durability: starling_broker::store::Durability::None,
            ..config
        })
        .await
        .expect("broker binds");
        let addrs = broker.local_addrs();
        let handle = broker.shutdown_handle();
        let reload = broker.reload_handle();
        let state = broker.state();
        let join = tokio::spawn(broker.run());
        Running {
            addrs,
            handle,
            reload,
            state,
            join,
        }
    }

    pub fn port(&self, i: usize) -> u16 {
        self.addrs[i].port()
    }

    pub async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("broker stops")
            .expect("no panic");
    }
}

/// A raw codec peer over an already open stream.
pub fn raw<S: Stream + 'static>(stream: S, version: ProtocolVersion) -> Raw {
    Raw {
        stream: Box::new(stream),
        buf: BytesMut::new(),
        decoder: Decoder::with_version(version),
        version,
    }
}

/// Sends CONNECT over `stream` and returns the peer and the CONNACK's reason code.
pub async fn connect_over<S: Stream + 'static>(stream: S, connect: Connect) -> (Raw, u8) {
    let mut r = raw(stream, connect.protocol);
    r.send(Packet::Connect(Box::new(connect))).await;
    match r.recv().await {
        Packet::ConnAck(ack) => (r, ack.reason_code.0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A rustls client configuration trusting `ca`, with an optional client certificate.
pub fn client_tls(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Opens TCP and runs a TLS handshake as `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Subscriber and publisher over `open`ed streams: subscribe at QoS 1, publish
/// at QoS 1, receive it. Both at `version`.
pub async fn qos1_round_trip(mut sub: Raw, mut publ: Raw, topic: &str) {
    sub.subscribe(topic, QoS::AtLeastOnce).await;
    publ.publish(topic, b"over the wire", QoS::AtLeastOnce, 7)
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(&*p.topic, topic);
    assert_eq!(&p.payload[..], b"over the wire");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.send(Packet::PubAck(starling_codec::Ack::new(p.packet_id)))
        .await;
    sub.send(Packet::Disconnect(starling_codec::Disconnect::new(
        starling_codec::ReasonCode::SUCCESS,
    )))
    .await;
    publ.send(Packet::Disconnect(starling_codec::Disconnect::new(
        starling_codec::ReasonCode::SUCCESS,
    )))
    .await;
}

/// Waits (bounded polling: an outside client gives no other sign) until
/// `client_id` has a subscription to `filter`.
pub async fn wait_subscribed(state: &BrokerState, client_id: &str, filter: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let session = state.session(client_id);
        if session.is_some_and(|s| s.is_subscribed(filter)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{client_id} never subscribed to {filter}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Everything logged (at every level) by this test binary; the first call
/// installs the capturing subscriber.
pub fn logs() -> &'static Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::util::SubscriberInitExt;
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish()
            .try_init();
        buf
    })
}

/// The captured log lines that contain `needle`.
pub fn log_lines(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

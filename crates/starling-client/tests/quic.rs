//! `quic://`: our client against our broker over QUIC (in-process, port 0,
//! certificates made by rcgen): connect, subscribe, QoS 1 and 2 round trips
//! over 3.1.1 and 5.0, a name that resolves to several addresses, untrusted
//! servers refused, `insecure`, mutual TLS with the certificate identity as
//! user name, keep alive and reconnection with a resumed session.

#[path = "support/scenarios.rs"]
mod scenarios;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use starling_broker::config::ListenerConfig;
use starling_broker::store::Durability;
use starling_broker::{Broker, Config, ShutdownHandle};
use starling_client::{
    Client, ConnectError, ConnectOptions, ConnectionStatus, ProtocolVersion as V, QoS, ReasonCode,
    TransportKind,
};

use scenarios::{recv, WAIT};

/// A certificate authority that issues certificates into files.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).unwrap();
    }

    /// Writes `{stem}.pem` and `{stem}.key` into `dir`: CN `cn`, SANs `names`.
    fn issue(&self, dir: &Path, stem: &str, cn: &str, names: &[&str], server: bool) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
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

/// A directory of certificates: `ca.pem`; `server.pem`/`.key` for localhost
/// and 127.0.0.1; `client.pem`/`.key` (CN `device-1`) from the same CA;
/// `other-ca.pem`, another CA, and `evil.pem`/`.key` (CN `device-1`) from it.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "starling-client-quic-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("Starling test CA");
        ca.write(&dir.join("ca.pem"));
        ca.issue(
            &dir,
            "server",
            "localhost",
            &["localhost", "127.0.0.1"],
            true,
        );
        ca.issue(&dir, "client", "device-1", &["client.example"], false);
        let other = Ca::new("Other CA");
        other.write(&dir.join("other-ca.pem"));
        other.issue(&dir, "evil", "device-1", &["client.example"], false);
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker with one `quic://` listener, running in this test's runtime; shut
/// down on drop.
struct Starling {
    addr: SocketAddr,
    handle: ShutdownHandle,
    pki: Pki,
}

impl Drop for Starling {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl Starling {
    async fn start() -> Starling {
        Self::start_with(|_, _| {}).await
    }

    /// Starts a broker after `edit` has adjusted the configuration (it gets the
    /// certificates).
    async fn start_with(edit: impl FnOnce(&mut Config, &Pki)) -> Starling {
        let pki = Pki::new();
        let mut config = Config {
            listen: vec!["quic://127.0.0.1:0".to_string()],
            tls_cert: Some(pki.path("server.pem")),
            tls_key: Some(pki.path("server.key")),
            data_dir: pki.path("data"),
            sys_interval: 0,
            durability: Durability::None,
            ..Config::default()
        };
        edit(&mut config, &pki);
        let broker = Broker::bind(config).await.expect("broker binds");
        let addr = broker.local_addrs()[0];
        let handle = broker.shutdown_handle();
        tokio::spawn(broker.run());
        Starling { addr, handle, pki }
    }

    /// Options for `quic://{host}:{port}` trusting the test CA.
    fn opts_at(&self, host: &str, version: V, id: &str) -> ConnectOptions {
        let url = format!("quic://{host}:{}", self.addr.port());
        let mut o = ConnectOptions::from_url(&url).expect("url");
        assert_eq!(o.transport, TransportKind::Quic);
        o.version = version;
        o.client_id = id.to_owned();
        o.connect_timeout = WAIT;
        o.tls.ca_file = Some(self.pki.path("ca.pem"));
        o
    }

    fn opts(&self, version: V, id: &str) -> ConnectOptions {
        self.opts_at("127.0.0.1", version, id)
    }

    async fn connect(&self, version: V, id: &str) -> Client {
        Client::connect(self.opts(version, id))
            .await
            .unwrap_or_else(|e| panic!("connect {id}: {e}"))
            .0
    }
}

/// Disconnects, and checks the DISCONNECT does not wait out the close timeout.
async fn disconnect(c: Client) {
    let start = Instant::now();
    c.disconnect().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn qos1_and_qos2_round_trips_over_311_and_5() {
    let b = Starling::start().await;
    for v in [V::V3_1_1, V::V5] {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let sub = b.connect(v, &format!("sub-{v}-{qos:?}")).await;
            let publ = b.connect(v, &format!("pub-{v}-{qos:?}")).await;
            let granted = sub.subscribe("quic/+", qos).await.unwrap();
            assert_eq!(granted, ReasonCode(qos as u8), "{v} {qos:?}");
            let code = publ.publish("quic/one", "hello", qos, false).await.unwrap();
            assert!(!code.is_error());
            let msg = recv(&sub).await;
            assert_eq!(&*msg.topic, "quic/one");
            assert_eq!(&msg.payload[..], b"hello");
            assert_eq!(msg.qos, qos);
            // Many in a row, some larger than a datagram, keep their order.
            for i in 0..50 {
                let payload = format!("{i}:{}", "x".repeat(i * 100));
                publ.publish("quic/seq", payload, qos, false).await.unwrap();
            }
            for i in 0..50 {
                let msg = recv(&sub).await;
                assert_eq!(msg.payload, format!("{i}:{}", "x".repeat(i * 100)));
            }
            disconnect(publ).await;
            disconnect(sub).await;
        }
    }
}

#[tokio::test]
async fn a_name_with_several_addresses_connects() {
    // `localhost` may also resolve to ::1, where nothing listens: the
    // attempts run at once and 127.0.0.1 answers.
    let b = Starling::start().await;
    let start = Instant::now();
    let (c, ack) = Client::connect(b.opts_at("localhost", V::V5, "by-name"))
        .await
        .unwrap();
    assert!(ack.code.is_success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    c.subscribe("name/t", QoS::AtLeastOnce).await.unwrap();
    c.publish("name/t", "hi", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(&recv(&c).await.payload[..], b"hi");
    disconnect(c).await;
}

#[tokio::test]
async fn an_untrusted_server_is_refused() {
    let b = Starling::start().await;
    // Another CA.
    let mut o = b.opts(V::V5, "untrusted");
    o.tls.ca_file = Some(b.pki.path("other-ca.pem"));
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    // The bundled web roots.
    let mut o = b.opts(V::V3_1_1, "untrusted");
    o.tls.ca_file = None;
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    // The right CA, a name the certificate does not have.
    let mut o = b.opts(V::V5, "untrusted");
    o.tls.server_name = Some("elsewhere.example".into());
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    // The right name, given explicitly, is accepted.
    let mut o = b.opts(V::V5, "named");
    o.tls.server_name = Some("localhost".into());
    let (c, _) = Client::connect(o).await.unwrap();
    disconnect(c).await;
}

#[tokio::test]
async fn insecure_mode_accepts_any_server() {
    let b = Starling::start().await;
    for v in [V::V3_1_1, V::V5] {
        let mut o = b.opts(v, &format!("insecure-{v}"));
        o.tls.ca_file = None;
        o.tls.insecure = true;
        o.tls.server_name = Some("elsewhere.example".into());
        let (c, ack) = Client::connect(o).await.unwrap();
        assert!(ack.code.is_success());
        c.subscribe("insecure/t", QoS::ExactlyOnce).await.unwrap();
        c.publish("insecure/t", "anyway", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        let msg = recv(&c).await;
        assert_eq!(
            (&msg.payload[..], msg.qos),
            (&b"anyway"[..], QoS::ExactlyOnce)
        );
        disconnect(c).await;
    }
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let b = Starling::start_with(|c, pki| {
        let acl = pki.path("acl");
        std::fs::write(&acl, "user device-1\ntopic readwrite dev/#\n").unwrap();
        c.listen = vec![];
        c.listener = vec![ListenerConfig {
            url: "quic://127.0.0.1:0".into(),
            tls_ca: Some(pki.path("ca.pem")),
            use_identity_as_username: Some(true),
            ..ListenerConfig::default()
        }];
        c.allow_anonymous = false;
        c.acl_file = Some(acl);
    })
    .await;
    let with_cert = |id: &str, stem: &str| {
        let mut o = b.opts(V::V5, id);
        o.tls.client_cert = Some(b.pki.path(&format!("{stem}.pem")));
        o.tls.client_key = Some(b.pki.path(&format!("{stem}.key")));
        o
    };
    for v in [V::V3_1_1, V::V5] {
        let mut o = with_cert(&format!("device-{v}"), "client");
        o.version = v;
        let (c, ack) = Client::connect(o)
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(ack.code.is_success());
        // The ACL names the certificate's CN: the broker took it as user name.
        c.subscribe("dev/q", QoS::AtLeastOnce).await.unwrap();
        c.publish("dev/q", "mine", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        let msg = recv(&c).await;
        assert_eq!(
            (&msg.payload[..], msg.qos),
            (&b"mine"[..], QoS::AtLeastOnce)
        );
        disconnect(c).await;
    }
    // No certificate, or one from another CA: the server ends the handshake
    // with a TLS alert, which the error names.
    for (o, alert) in [
        (b.opts(V::V5, "anonymous"), "peer sent no certificates"),
        (with_cert("evil", "evil"), "UnknownIssuer"),
    ] {
        let err = Client::connect(o).await.unwrap_err().to_string();
        assert!(err.contains("QUIC connection lost"), "{err}");
        assert!(err.contains(alert), "{err}");
    }
    // A certificate without its key is an options error, before any traffic.
    let mut half = b.opts(V::V5, "half");
    half.tls.client_cert = Some(b.pki.path("client.pem"));
    let err = Client::connect(half).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
}

#[tokio::test]
async fn keep_alive_holds_an_idle_connection() {
    let b = Starling::start().await;
    let mut o = b.opts(V::V3_1_1, "idle");
    o.keep_alive = Duration::from_secs(1);
    let (c, _) = Client::connect(o).await.unwrap();
    c.subscribe("idle/t", QoS::AtLeastOnce).await.unwrap();
    // Idle for more than one and a half keep-alive periods: PINGREQs keep it open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(matches!(
        &*c.status().borrow(),
        ConnectionStatus::Connected { connects: 1, .. }
    ));
    c.publish("idle/t", "awake", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(&recv(&c).await.payload[..], b"awake");
    disconnect(c).await;
}

#[tokio::test]
async fn reconnect_resumes_the_session() {
    let b = Starling::start().await;
    let versions = [V::V3_1_1, V::V5];
    scenarios::reconnect_resumes_the_session(&|v, id| b.opts(v, id), &versions).await;
}

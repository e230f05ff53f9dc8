//! `mqtts://` against a Mosquitto TLS listener, with certificates made by the test.

mod common;
#[path = "support/ws_bridge.rs"]
mod ws_bridge;

use std::path::Path;

use common::Mosquitto;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use starling_client::{Client, ClientTlsConfig, ConnectError, ConnectOptions, QoS};

struct Pki {
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// Writes `{stem}.pem` and `{stem}.key`, signed by this CA, into `dir`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    fn write_ca(&self, path: &Path) {
        std::fs::write(path, self.ca.pem()).unwrap();
    }
}

fn tls_broker(require_certificate: bool) -> Mosquitto {
    let config = format!(
        "allow_anonymous true\ncafile {{dir}}/ca.pem\ncertfile {{dir}}/server.pem\nkeyfile {{dir}}/server.key\nrequire_certificate {require_certificate}\n"
    );
    Mosquitto::start_with(&config, |dir| {
        let pki = Pki::new("starling test CA");
        pki.write_ca(&dir.join("ca.pem"));
        pki.issue(dir, "server", &["localhost", "127.0.0.1"]);
        pki.issue(dir, "client", &["client"]);
    })
}

fn opts(m: &Mosquitto, host: &str) -> ConnectOptions {
    let mut o = ConnectOptions::from_url(&format!("mqtts://{host}:{}", m.port)).unwrap();
    o.client_id = "tls-client".into();
    o
}

#[tokio::test]
async fn verified_tls_round_trip() {
    let m = tls_broker(false);
    for host in ["localhost", "127.0.0.1"] {
        let mut o = opts(&m, host);
        o.tls.ca_file = Some(m.dir.join("ca.pem"));
        let (c, ack) = Client::connect(o)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}\n{}", m.log()));
        assert!(ack.code.is_success());
        c.subscribe("tls/t", QoS::AtLeastOnce).await.unwrap();
        c.publish("tls/t", "secret", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let msg = c.recv().await.unwrap();
        assert_eq!(&msg.payload[..], b"secret");
        c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error() {
    let m = tls_broker(false);
    let other = common::temp_dir("other-ca");
    Pki::new("someone else").write_ca(&other.join("ca.pem"));
    let mut o = opts(&m, "localhost");
    o.tls.ca_file = Some(other.join("ca.pem"));
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    // Without a CA file the bundled public roots do not know our test CA either.
    let err = Client::connect(opts(&m, "localhost")).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    let _ = std::fs::remove_dir_all(other);
}

#[tokio::test]
async fn insecure_skips_verification() {
    let m = tls_broker(false);
    let mut o = opts(&m, "127.0.0.1");
    o.tls = ClientTlsConfig {
        insecure: true,
        ..Default::default()
    };
    let (c, _) = Client::connect(o).await.unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let m = tls_broker(true);
    let mut o = opts(&m, "localhost");
    o.tls.ca_file = Some(m.dir.join("ca.pem"));
    o.tls.client_cert = Some(m.dir.join("client.pem"));
    o.tls.client_key = Some(m.dir.join("client.key"));
    let (c, _) = Client::connect(o)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    c.publish("tls/m", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    // Without the certificate the broker refuses the handshake.
    let mut o = opts(&m, "localhost");
    o.tls.ca_file = Some(m.dir.join("ca.pem"));
    assert!(Client::connect(o).await.is_err());
}

#[tokio::test]
async fn cert_without_key_is_refused_locally() {
    let mut o = ConnectOptions::from_url("mqtts://127.0.0.1:1").unwrap();
    o.tls.client_cert = Some("/nonexistent.pem".into());
    let err = Client::connect(o).await.unwrap_err();
    // The TLS configuration is checked before any connection is attempted.
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    assert!(
        err.to_string().contains("both a certificate and a key"),
        "{err}"
    );
}

#[tokio::test]
async fn websocket_over_tls() {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Arc;

    let m = Mosquitto::start();
    let pki = Pki::new("wss test CA");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let port = ws_bridge::websocket_bridge(m.port, Some(acceptor)).await;
    let dir = common::temp_dir("wss");
    pki.write_ca(&dir.join("ca.pem"));
    let mut o = ConnectOptions::from_url(&format!("wss://localhost:{port}/mqtt")).unwrap();
    o.client_id = "wss-client".into();
    o.tls.ca_file = Some(dir.join("ca.pem"));
    let (c, _) = Client::connect(o).await.unwrap();
    c.subscribe("wss/t", QoS::ExactlyOnce).await.unwrap();
    c.publish("wss/t", "tls+ws", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    assert_eq!(&c.recv().await.unwrap().payload[..], b"tls+ws");
    c.disconnect().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

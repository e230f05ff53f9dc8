//! `https://` on the HTTP listener: the broker's certificate and key serve
//! TLS, a client that trusts the certificate gets the metrics and the API,
//! and a client that stalls its handshake does not hold up the others.

use std::time::Duration;

use starling_admin::{AdminConfig, AdminServer};
use starling_broker::{Broker, Config};

#[tokio::test]
async fn https_serves_with_the_brokers_certificate() {
    let dir = std::env::temp_dir().join(format!("starling-admin-https-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a certificate");
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        data_dir: dir.join("data"),
        ..Config::default()
    };
    let broker = Broker::bind(config).await.expect("broker binds");
    let admin = AdminServer::bind(
        &AdminConfig {
            listen: "https://127.0.0.1:0".into(),
            tls_cert: Some(cert_path),
            tls_key: Some(key_path),
            ..AdminConfig::default()
        },
        broker.state(),
        broker.reload_handle(),
        broker.shutdown_handle(),
    )
    .await
    .expect("HTTPS listener binds");
    let addr = admin.local_addr();
    let shutdown = broker.shutdown_handle();
    tokio::spawn(admin.run());
    tokio::spawn(broker.run());
    // A client that opens a connection and never starts its handshake.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client
        .get(format!("https://127.0.0.1:{}/readyz", addr.port()))
        .send()
        .await
        .expect("TLS handshake and answer");
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(format!("https://127.0.0.1:{}/api/v1/stats", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A client that does not trust the certificate is refused in the handshake.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .is_err());
    shutdown.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn https_without_a_certificate_is_a_clear_error() {
    let broker = Broker::bind(Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    })
    .await
    .unwrap();
    let err = AdminServer::bind(
        &AdminConfig {
            listen: "https://127.0.0.1:0".into(),
            ..AdminConfig::default()
        },
        broker.state(),
        broker.reload_handle(),
        broker.shutdown_handle(),
    )
    .await
    .expect_err("no certificate");
    assert!(err.to_string().contains("tls-cert and tls-key"), "{err}");
}

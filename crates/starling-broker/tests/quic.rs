//! `quic://` listeners: quinn clients with ALPN `mqtt`, one bidirectional stream
//! per MQTT connection, QoS 1 over 3.1.1 and 5.0, mutual TLS with the identity
//! as user name, a wrong ALPN refused, and a certificate reload.

mod common;
mod transport_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use starling_broker::config::ListenerConfig;
use starling_broker::Config;
use starling_codec::{Connect, ProtocolVersion as V};
use transport_support::{connect_over, qos1_round_trip, Pki, Running};

/// A quinn client endpoint trusting `ca`, offering `alpn`, with an optional
/// client certificate.
fn client(ca: &Path, cert: Option<(&Path, &Path)>, alpn: &[u8]) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

async fn dial(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<quinn::Connection, String> {
    endpoint
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

/// One MQTT connection: a new bidirectional stream on `conn`, then CONNECT.
async fn mqtt(conn: &quinn::Connection, connect: Connect) -> (common::Raw, u8) {
    let (send, recv) = conn.open_bi().await.unwrap();
    connect_over(tokio::io::join(recv, send), connect).await
}

fn quic_config(pki: &Pki) -> Config {
    Config {
        listen: vec!["quic://127.0.0.1:0".into()],
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        ..Config::default()
    }
}

#[tokio::test]
async fn quic_pubsub_qos1_over_311_and_5() {
    let pki = Pki::new("quic");
    let b = Running::start(quic_config(&pki)).await;
    let ep = client(&pki.path("ca.pem"), None, b"mqtt");
    for v in [V::V3_1_1, V::V5] {
        // Two QUIC connections.
        let a = dial(&ep, b.addrs[0]).await.unwrap();
        let c = dial(&ep, b.addrs[0]).await.unwrap();
        let (sub, code) = mqtt(&a, Connect::new(v, "quic-sub")).await;
        assert_eq!(code, 0);
        let (publ, code) = mqtt(&c, Connect::new(v, "quic-pub")).await;
        assert_eq!(code, 0);
        qos1_round_trip(sub, publ, &format!("quic/{v}")).await;
        // Two MQTT connections as two streams of one QUIC connection.
        let one = dial(&ep, b.addrs[0]).await.unwrap();
        let (sub, _) = mqtt(&one, Connect::new(v, "stream-sub")).await;
        let (publ, _) = mqtt(&one, Connect::new(v, "stream-pub")).await;
        qos1_round_trip(sub, publ, "quic/streams").await;
    }
    b.stop().await;
}

#[tokio::test]
async fn wrong_alpn_or_untrusted_server_fails() {
    let pki = Pki::new("quic-alpn");
    let b = Running::start(quic_config(&pki)).await;
    let ep = client(&pki.path("ca.pem"), None, b"h3");
    assert!(dial(&ep, b.addrs[0]).await.is_err());
    let other = transport_support::Ca::new("other");
    other.write(&pki.path("other.pem"));
    let ep = client(&pki.path("other.pem"), None, b"mqtt");
    assert!(dial(&ep, b.addrs[0]).await.is_err());
    b.stop().await;
}

#[tokio::test]
async fn quic_mtls_identity_and_reload() {
    let pki = Pki::new("quic-mtls");
    let acl = pki.path("acl");
    std::fs::write(&acl, "user device-1\ntopic readwrite dev/#\n").unwrap();
    let b = Running::start(Config {
        listen: vec![],
        listener: vec![ListenerConfig {
            url: "quic://127.0.0.1:0".into(),
            tls_cert: Some(pki.path("server.pem")),
            tls_key: Some(pki.path("server.key")),
            tls_ca: Some(pki.path("ca.pem")),
            use_identity_as_username: Some(true),
            ..ListenerConfig::default()
        }],
        allow_anonymous: false,
        acl_file: Some(acl),
        ..Config::default()
    })
    .await;
    let ca = pki.path("ca.pem");
    let good = client(
        &ca,
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
        b"mqtt",
    );
    let conn = dial(&good, b.addrs[0]).await.unwrap();
    let (sub, code) = mqtt(&conn, Connect::new(V::V5, "dev-sub")).await;
    assert_eq!(code, 0);
    let (publ, _) = mqtt(&conn, Connect::new(V::V5, "dev-pub")).await;
    // A client without a certificate is refused.
    let none = client(&ca, None, b"mqtt");
    let refused = match dial(&none, b.addrs[0]).await {
        Err(_) => true,
        Ok(c) => match c.open_bi().await {
            Err(_) => true,
            Ok((send, recv)) => {
                let mut raw = transport_support::raw(tokio::io::join(recv, send), V::V5);
                raw.send(starling_codec::Packet::Connect(Box::new(Connect::new(
                    V::V5,
                    "anon",
                ))))
                .await;
                raw.next().await.is_none()
            }
        },
    };
    assert!(refused);
    // A new server certificate from another CA; the connected client stays.
    let ca2 = transport_support::Ca::new("second");
    ca2.write(&pki.path("ca2.pem"));
    ca2.issue(
        &pki.dir,
        "server",
        Some("localhost"),
        &["localhost", "127.0.0.1"],
        true,
    );
    b.reload.reload().unwrap();
    assert!(dial(&good, b.addrs[0]).await.is_err());
    qos1_round_trip(sub, publ, "dev/q").await;
    let ep2 = client(
        &pki.path("ca2.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
        b"mqtt",
    );
    let conn2 = dial(&ep2, b.addrs[0]).await.unwrap();
    let (_r, code) = mqtt(&conn2, Connect::new(V::V3_1_1, "after")).await;
    assert_eq!(code, 0);
    b.stop().await;
}

//! `mqtts://` listeners: TLS round trips over 3.1.1 and 5.0, mutual TLS with the
//! certificate identity as user name, refused certificates, the handshake
//! timeout, reload of the certificate and the password file with a client
//! connected, failed-authentication rate limiting, no secret in the logs, and
//! mosquitto_pub/mosquitto_sub with `--cafile`.
//!
//! Every test of this binary logs at TRACE level into one shared buffer, which
//! `no_secret_in_logs` searches.

mod common;
mod transport_support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::WAIT;
use starling_broker::config::ListenerConfig;
use starling_broker::Config;
use starling_client::{Client, ConnectOptions};
use starling_codec::{Connect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use transport_support::{
    client_tls, connect_over, logs, qos1_round_trip, tls_connect, Pki, Running,
};

fn tls_config(pki: &Pki) -> Config {
    logs();
    Config {
        listen: vec!["mqtts://127.0.0.1:0".into()],
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        ..Config::default()
    }
}

fn login(version: V, id: &str, user: Option<&str>, password: Option<&[u8]>) -> Connect {
    let mut c = Connect::new(version, id);
    c.username = user.map(Into::into);
    c.password = password.map(bytes::Bytes::copy_from_slice);
    c
}

#[tokio::test]
async fn tls_pubsub_qos1_over_311_and_5() {
    let pki = Pki::new("tls-pubsub");
    let b = Running::start(tls_config(&pki)).await;
    let tls = client_tls(&pki.path("ca.pem"), None);
    for v in [V::V3_1_1, V::V5] {
        let s = tls_connect(b.addrs[0], tls.clone()).await.unwrap();
        let (sub, code) = connect_over(s, Connect::new(v, "tls-sub")).await;
        assert_eq!(code, 0);
        let s = tls_connect(b.addrs[0], tls.clone()).await.unwrap();
        let (publ, code) = connect_over(s, Connect::new(v, "tls-pub")).await;
        assert_eq!(code, 0);
        qos1_round_trip(sub, publ, &format!("tls/{v}")).await;
    }
    // Our client, by URL and CA file.
    let mut o = ConnectOptions::from_url(&format!("mqtts://localhost:{}", b.port(0))).unwrap();
    o.tls.ca_file = Some(pki.path("ca.pem"));
    o.client_id = "starling-client".into();
    let (c, _) = Client::connect(o).await.unwrap();
    c.subscribe("tls/c", QoS::AtLeastOnce).await.unwrap();
    c.publish("tls/c", "hello", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"hello");
    c.disconnect().await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn plaintext_on_a_tls_listener_gets_nothing() {
    let pki = Pki::new("tls-plain");
    let b = Running::start(tls_config(&pki)).await;
    let mut tcp = TcpStream::connect(b.addrs[0]).await.unwrap();
    let mut out = bytes::BytesMut::new();
    Packet::Connect(Box::new(Connect::new(V::V3_1_1, "plain")))
        .encode(V::V3_1_1, &mut out)
        .unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("closed");
    // A TLS alert at most, never a CONNACK (0x20).
    assert!(got.first() != Some(&0x20), "{got:?}");
    b.stop().await;
}

#[tokio::test]
async fn slow_handshake_is_dropped() {
    let pki = Pki::new("tls-slow");
    let mut config = tls_config(&pki);
    config.handshake_timeout = 1;
    let b = Running::start(config).await;
    let mut tcp = TcpStream::connect(b.addrs[0]).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("the broker closes a silent connection")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(900));
    b.stop().await;
}

/// An mTLS listener that takes the certificate's identity as the user name,
/// with an ACL that lets only `device-1` (the CN) and `sensor-9.example` (a
/// SAN, for a certificate without CN) publish under their own prefix.
async fn mtls_broker(pki: &Pki) -> Running {
    logs();
    let acl = pki.path("acl");
    std::fs::write(
        &acl,
        "user device-1\ntopic readwrite dev/#\nuser sensor-9.example\ntopic readwrite sensor/#\n",
    )
    .unwrap();
    Running::start(Config {
        listen: vec![],
        listener: vec![ListenerConfig {
            url: "mqtts://127.0.0.1:0".into(),
            tls_cert: Some(pki.path("server.pem")),
            tls_key: Some(pki.path("server.key")),
            tls_ca: Some(pki.path("ca.pem")),
            require_client_cert: Some(true),
            use_identity_as_username: Some(true),
            ..ListenerConfig::default()
        }],
        allow_anonymous: false,
        acl_file: Some(acl),
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn mtls_identity_is_the_username() {
    let pki = Pki::new("mtls");
    let b = mtls_broker(&pki).await;
    let good = client_tls(
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    );
    for v in [V::V3_1_1, V::V5] {
        // No password, and a user name the certificate overrides.
        let s = tls_connect(b.addrs[0], good.clone()).await.unwrap();
        let (sub, code) = connect_over(s, login(v, "dev-sub", Some("mallory"), None)).await;
        assert_eq!(code, 0);
        let s = tls_connect(b.addrs[0], good.clone()).await.unwrap();
        let (publ, code) = connect_over(s, Connect::new(v, "dev-pub")).await;
        assert_eq!(code, 0);
        qos1_round_trip(sub, publ, "dev/temp").await;
    }
    // Outside its ACL the identity may not publish (MQTT 5 tells it).
    let s = tls_connect(b.addrs[0], good.clone()).await.unwrap();
    let (mut p, _) = connect_over(s, Connect::new(V::V5, "dev-out")).await;
    let mut publish = Publish::new("sensor/x", &b"no"[..]);
    publish.qos = QoS::AtLeastOnce;
    publish.packet_id = 3;
    p.send(Packet::Publish(publish)).await;
    match p.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    // A certificate without CN: its first SAN is the user name.
    let san = client_tls(
        &pki.path("ca.pem"),
        Some((&pki.path("san.pem"), &pki.path("san.key"))),
    );
    let s = tls_connect(b.addrs[0], san.clone()).await.unwrap();
    let (sub, _) = connect_over(s, Connect::new(V::V5, "san-sub")).await;
    let s = tls_connect(b.addrs[0], san).await.unwrap();
    let (publ, _) = connect_over(s, Connect::new(V::V5, "san-pub")).await;
    qos1_round_trip(sub, publ, "sensor/hum").await;
    // Our client with a client certificate.
    let mut o = ConnectOptions::from_url(&format!("mqtts://localhost:{}", b.port(0))).unwrap();
    o.tls.ca_file = Some(pki.path("ca.pem"));
    o.tls.client_cert = Some(pki.path("client.pem"));
    o.tls.client_key = Some(pki.path("client.key"));
    o.client_id = "dev-client".into();
    let (c, _) = Client::connect(o).await.unwrap();
    c.subscribe("dev/c", QoS::AtLeastOnce).await.unwrap();
    c.publish("dev/c", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(
        &tokio::time::timeout(WAIT, c.recv())
            .await
            .unwrap()
            .unwrap()
            .payload[..],
        b"x"
    );
    c.disconnect().await.unwrap();
    b.stop().await;
}

/// Connects over TLS with `tls` and sends CONNECT; true if a CONNACK came back.
async fn gets_connack(b: &Running, tls: Arc<rustls::ClientConfig>) -> bool {
    let Ok(s) = tls_connect(b.addrs[0], tls).await else {
        return false;
    };
    let mut r = transport_support::raw(s, V::V5);
    let mut out = bytes::BytesMut::new();
    Packet::Connect(Box::new(Connect::new(V::V5, "x")))
        .encode(V::V5, &mut out)
        .unwrap();
    if r.stream.write_all(&out).await.is_err() {
        return false;
    }
    // TLS 1.3 reports the refused certificate after the client's handshake: on read.
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, r.stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0 && buf[0] == 0x20
    )
}

#[tokio::test]
async fn bad_or_missing_client_certificates_are_refused() {
    let pki = Pki::new("mtls-bad");
    let b = mtls_broker(&pki).await;
    let ca = pki.path("ca.pem");
    let good = client_tls(
        &ca,
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    );
    assert!(gets_connack(&b, good).await);
    assert!(!gets_connack(&b, client_tls(&ca, None)).await);
    let evil = client_tls(&ca, Some((&pki.path("evil.pem"), &pki.path("evil.key"))));
    assert!(!gets_connack(&b, evil).await);
    // Our client sees a failed connection too.
    let mut o = ConnectOptions::from_url(&format!("mqtts://localhost:{}", b.port(0))).unwrap();
    o.tls.ca_file = Some(ca);
    o.connect_timeout = Duration::from_secs(10);
    assert!(Client::connect(o).await.is_err());
    b.stop().await;
}

#[tokio::test]
async fn reload_swaps_certificate_and_passwords_and_keeps_clients() {
    let pki = Pki::new("reload");
    let passwords = pki.path("passwd");
    let hash = |pw: &str| starling_broker::auth::hash_password(pw).unwrap();
    std::fs::write(&passwords, format!("alice:{}\n", hash("first-pw"))).unwrap();
    let mut config = tls_config(&pki);
    config.allow_anonymous = false;
    config.password_file = Some(passwords.clone());
    let b = Running::start(config).await;
    let old_ca = client_tls(&pki.path("ca.pem"), None);
    let s = tls_connect(b.addrs[0], old_ca.clone()).await.unwrap();
    let (mut stay, code) =
        connect_over(s, login(V::V5, "stay", Some("alice"), Some(b"first-pw"))).await;
    assert_eq!(code, 0);
    stay.subscribe("reload/#", QoS::AtLeastOnce).await;

    // A new CA and server certificate, and a new password.
    let new_ca = transport_support::Ca::new("second CA");
    new_ca.write(&pki.path("ca2.pem"));
    new_ca.issue(
        &pki.dir,
        "server",
        Some("localhost"),
        &["localhost", "127.0.0.1"],
        true,
    );
    std::fs::write(&passwords, format!("alice:{}\n", hash("second-pw"))).unwrap();
    b.reload.reload().unwrap();

    // New handshakes see the new certificate only.
    assert!(tls_connect(b.addrs[0], old_ca).await.is_err());
    let new_tls = client_tls(&pki.path("ca2.pem"), None);
    let s = tls_connect(b.addrs[0], new_tls.clone()).await.unwrap();
    let (_r, code) =
        connect_over(s, login(V::V5, "old-pw", Some("alice"), Some(b"first-pw"))).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0);
    let s = tls_connect(b.addrs[0], new_tls).await.unwrap();
    let (mut publ, code) =
        connect_over(s, login(V::V5, "new-pw", Some("alice"), Some(b"second-pw"))).await;
    assert_eq!(code, 0);
    publ.publish("reload/x", b"after reload", QoS::AtLeastOnce, 1)
        .await;
    // The client connected before the reload is still there and gets it.
    let p = stay.expect_publish().await;
    assert_eq!(&p.payload[..], b"after reload");

    // A broken file changes nothing.
    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    let err = b.reload.reload().unwrap_err().to_string();
    assert!(err.contains("server.key"), "{err}");
    assert!(!err.contains("not a key"), "{err}");
    let s = tls_connect(b.addrs[0], client_tls(&pki.path("ca2.pem"), None))
        .await
        .unwrap();
    let (_r, code) =
        connect_over(s, login(V::V5, "still", Some("alice"), Some(b"second-pw"))).await;
    assert_eq!(code, 0);
    b.stop().await;
}

#[tokio::test]
async fn failed_authentications_are_rate_limited() {
    logs();
    let dir = Pki::new("ratelimit");
    let passwords = dir.path("passwd");
    let hash = starling_broker::auth::hash_password("right").unwrap();
    std::fs::write(&passwords, format!("bob:{hash}\n")).unwrap();
    let b = Running::start(Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        allow_anonymous: false,
        password_file: Some(passwords),
        auth_failure_limit: 3,
        ..Config::default()
    })
    .await;
    let tcp = || TcpStream::connect(b.addrs[0]);
    let attempt = |id: &'static str, v: V, password: &'static [u8]| async move {
        let stream = tcp().await.unwrap();
        connect_over(stream, login(v, id, Some("bob"), Some(password)))
            .await
            .1
    };
    // The first failures are answered as failures: 0x86.
    for i in 0..3 {
        let code = attempt(["w0", "w1", "w2"][i], V::V5, b"wrong").await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0, "attempt {i}");
    }
    // Past the limit, attempts wait and are checked one at a time: of two at
    // once, one is checked (0x86) and the other refused unchecked (0x9F).
    let (x, y) = tokio::join!(
        attempt("c1", V::V5, b"wrong"),
        attempt("c2", V::V5, b"wrong")
    );
    let mut codes = [x, y];
    codes.sort();
    assert_eq!(
        codes,
        [
            ReasonCode::BAD_USER_NAME_OR_PASSWORD.0,
            ReasonCode::CONNECTION_RATE_EXCEEDED.0
        ]
    );
    // 3.x: code 4 and code 3
    let (x, y) = tokio::join!(
        attempt("c3", V::V3_1_1, b"wrong"),
        attempt("c4", V::V3_1_1, b"wrong")
    );
    let mut codes = [x, y];
    codes.sort();
    // (read back as the MQTT 5 codes they map to)
    assert_eq!(
        codes,
        [
            ReasonCode::BAD_USER_NAME_OR_PASSWORD.0,
            ReasonCode::SERVER_UNAVAILABLE.0
        ],
        "3.x codes 4 and 3"
    );
    // The right password still gets in, after its wait.
    let started = std::time::Instant::now();
    assert_eq!(attempt("r5", V::V5, b"right").await, 0);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(100),
        "not slowed down"
    );
    // ... and empties the bucket: two failures at once are both checked again.
    let (x, y) = tokio::join!(
        attempt("w6", V::V5, b"wrong"),
        attempt("w7", V::V5, b"wrong")
    );
    assert_eq!([x, y], [ReasonCode::BAD_USER_NAME_OR_PASSWORD.0; 2]);
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(text.contains("failed-authentication limit"), "not logged");
    b.stop().await;
}

#[tokio::test]
async fn no_secret_in_logs() {
    logs();
    let pki = Pki::new("secrets");
    let passwords = pki.path("passwd");
    let secret = "Sup3r-Secret-Passw0rd";
    let hash = starling_broker::auth::hash_password(secret).unwrap();
    std::fs::write(&passwords, format!("carol:{hash}\n")).unwrap();
    let mut config = tls_config(&pki);
    config.allow_anonymous = false;
    config.password_file = Some(passwords);
    let b = Running::start(config).await;
    let tls = client_tls(&pki.path("ca.pem"), None);
    let wrong = "Wr0ng-Secret-Attempt";
    for (id, pw) in [("good", secret), ("bad", wrong)] {
        let s = tls_connect(b.addrs[0], tls.clone()).await.unwrap();
        let (mut r, _) =
            connect_over(s, login(V::V5, id, Some("carol"), Some(pw.as_bytes()))).await;
        r.send(Packet::Disconnect(starling_codec::Disconnect::new(
            ReasonCode::SUCCESS,
        )))
        .await;
    }
    b.reload.reload().unwrap();
    b.stop().await;
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(text.contains("client connected"), "nothing captured");
    assert!(text.contains("TRACE") || text.contains("DEBUG"));
    assert!(!text.contains(secret), "the password was logged");
    assert!(!text.contains(wrong), "a wrong password was logged");
    assert!(!text.contains(&hash), "a password hash was logged");
    let key = std::fs::read_to_string(pki.path("server.key")).unwrap();
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        assert!(!text.contains(line), "the private key was logged");
    }
}

/// mosquitto_sub and mosquitto_pub with `--cafile` against an mqtts listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_mqtts() {
    let pki = Pki::new("mosq-tls");
    let b = Running::start(tls_config(&pki)).await;
    let ca = pki.path("ca.pem").display().to_string();
    let port = b.port(0).to_string();
    for v in ["mqttv311", "mqttv5"] {
        let topic = format!("mosq/{v}");
        let common = [
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-V",
            v,
            "-t",
            &topic,
            "-q",
            "1",
        ];
        let mut sub = tokio::process::Command::new("mosquitto_sub")
            .args(common)
            .args(["-C", "1", "-i", "mosq-sub"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub (install with scripts/install-test-deps.d/interop.sh)");
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        transport_support::wait_subscribed(&b.state, "mosq-sub", &topic).await;
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(common)
            .args(["-m", "from mosquitto", "-i", "mosq-pub"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut got = false;
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap() {
            seen.push(line.clone());
            if line == "from mosquitto" {
                got = true;
            }
        }
        assert!(got, "{seen:?}");
        let status = tokio::time::timeout(WAIT, sub.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
    b.stop().await;
}

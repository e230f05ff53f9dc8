//! CONNECT / CONNACK rules, each checked on the wire.

mod common;

use common::{Raw, TestBroker};
use starling_broker::Config;
use starling_codec::{Connect, Packet, ProtocolVersion as V, ReasonCode};

#[tokio::test(start_paused = true)]
async fn connect_timeout_closes_a_silent_socket() {
    let b = TestBroker::default().await;
    let mut raw = Raw::open(b.addr, V::V3_1_1).await;
    let start = tokio::time::Instant::now();
    assert!(raw.closed().await.is_empty());
    let waited = start.elapsed().as_secs();
    assert!((10..=11).contains(&waited), "closed after {waited}s");
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_is_configurable() {
    let b = TestBroker::start(Config {
        connect_timeout: 3,
        ..Config::default()
    })
    .await;
    let mut raw = Raw::open(b.addr, V::V3_1_1).await;
    let start = tokio::time::Instant::now();
    assert!(raw.closed().await.is_empty());
    assert_eq!(start.elapsed().as_secs(), 3);
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    let b = TestBroker::default().await;
    let mut raw = Raw::open(b.addr, V::V3_1_1).await;
    raw.send(Packet::PingReq).await;
    assert!(raw.closed().await.is_empty());
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let b = TestBroker::default().await;
    let mut raw = Raw::client(b.addr, V::V5, "twice").await;
    raw.send(Packet::Connect(Box::new(Connect::new(V::V5, "twice"))))
        .await;
    let got = raw.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PROTOCOL_ERROR),
        "{got:?}"
    );
    let mut raw = Raw::client(b.addr, V::V3_1_1, "twice3").await;
    raw.send(Packet::Connect(Box::new(Connect::new(V::V3_1_1, "twice3"))))
        .await;
    assert!(raw.closed().await.is_empty());
}

/// A 3.1.1 CONNECT for client "c": name, level, flags, keep alive, client id.
fn connect_bytes(name: &[u8], level: u8, flags: u8) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&[0, 1, b'c']);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn bad_protocol_name_closes_without_connack() {
    let b = TestBroker::default().await;
    let mut raw = Raw::open(b.addr, V::V3_1_1).await;
    raw.send_bytes(&connect_bytes(b"MQTX", 4, 0x02)).await;
    assert!(raw.closed().await.is_empty());
}

#[tokio::test]
async fn unsupported_level_gets_the_answer_its_version_understands() {
    let b = TestBroker::default().await;
    // "MQTT" level 3: a 3.x client; CONNACK return code 1 in the 3.1.1 format.
    let mut raw = Raw::open(b.addr, V::V3_1_1).await;
    raw.send_bytes(&connect_bytes(b"MQTT", 3, 0x02)).await;
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut got)
        .await
        .unwrap();
    assert_eq!(got, [0x20, 0x02, 0x00, 0x01]);
    // Level 6: answered in the MQTT 5 format with 0x84.
    let mut raw = Raw::open(b.addr, V::V5).await;
    raw.send_bytes(&connect_bytes(b"MQTT", 6, 0x02)).await;
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut got)
        .await
        .unwrap();
    assert_eq!(got, [0x20, 0x03, 0x00, 0x84, 0x00]);
}

#[tokio::test]
async fn malformed_connect_v5_gets_connack_then_close() {
    let b = TestBroker::default().await;
    // Reserved flag bit 0 set.
    let mut raw = Raw::open(b.addr, V::V5).await;
    raw.send_bytes(&connect_bytes(b"MQTT", 5, 0x03)).await;
    let got = raw.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason_code == ReasonCode::MALFORMED_PACKET),
        "{got:?}"
    );
    // Will QoS without the will flag.
    let mut raw = Raw::open(b.addr, V::V5).await;
    raw.send_bytes(&connect_bytes(b"MQTT", 5, 0x0A)).await;
    let got = raw.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason_code.is_error()),
        "{got:?}"
    );
}

#[tokio::test]
async fn malformed_connect_v311_closes_silently() {
    let b = TestBroker::default().await;
    for flags in [0x03, 0x0A, 0x22, 0x42] {
        let mut raw = Raw::open(b.addr, V::V3_1_1).await;
        raw.send_bytes(&connect_bytes(b"MQTT", 4, flags)).await;
        assert!(raw.closed().await.is_empty(), "flags {flags:#x}");
    }
    // Invalid UTF-8 in the client id.
    let mut bytes = connect_bytes(b"MQTT", 4, 0x02);
    let last = bytes.len() - 1;
    bytes[last] = 0xFF;
    let mut raw = Raw::open(b.addr, V::V3_1_1).await;
    raw.send_bytes(&bytes).await;
    assert!(raw.closed().await.is_empty());
}

#[tokio::test]
async fn client_id_rules() {
    let b = TestBroker::default().await;
    // 3.1.1: empty id with clean session is accepted.
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V3_1_1, "")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // 3.1.1: empty id without clean session gets return code 2.
    let mut c = Connect::new(V::V3_1_1, "");
    c.clean_start = false;
    let (mut raw, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.return_code() as u8, 2);
    assert!(raw.closed().await.is_empty());
    // MQTT 5: empty id gets an assigned one.
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V5, "")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!assigned.is_empty());
    // MQTT 3.1: 1 to 23 bytes.
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V3_1, "a".repeat(23))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V3_1, "a".repeat(24))).await;
    assert_eq!(ack.return_code() as u8, 2);
    // Long UTF-8 ids are fine in 3.1.1 and 5.
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V3_1_1, "é".repeat(1000))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn configured_client_id_limit() {
    let b = TestBroker::start(Config {
        max_client_id_len: 8,
        ..Config::default()
    })
    .await;
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V5, "123456789")).await;
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V5, "12345678")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn connack_v5_advertises_limits() {
    let b = TestBroker::start(Config {
        receive_maximum: 100,
        max_packet_size: 4096,
        topic_alias_maximum: 10,
        max_keepalive: 30,
        ..Config::default()
    })
    .await;
    let mut c = Connect::new(V::V5, "limits");
    c.keep_alive = 120;
    let (_raw, ack) = Raw::connect(b.addr, c).await;
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(100));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(10));
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(p.wildcard_subscription_available, Some(true));
    assert_eq!(p.subscription_identifier_available, Some(true));
    assert_eq!(p.shared_subscription_available, Some(true));
    assert_eq!(
        p.maximum_qos, None,
        "QoS 2 is supported, so Maximum QoS is absent"
    );
}

#[tokio::test]
async fn extended_auth_method_is_refused() {
    let b = TestBroker::default().await;
    let mut c = Connect::new(V::V5, "am");
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (_raw, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[tokio::test]
async fn max_connections_refuses_with_quota_exceeded() {
    let b = TestBroker::start(Config {
        max_connections: 1,
        ..Config::default()
    })
    .await;
    let _first = Raw::client(b.addr, V::V5, "one").await;
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V5, "two")).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    let (_raw, ack) = Raw::connect(b.addr, Connect::new(V::V3_1_1, "three")).await;
    assert_eq!(ack.return_code() as u8, 3);
}

#[tokio::test]
async fn huge_remaining_length_is_refused_without_allocating() {
    let b = TestBroker::default().await;
    let mut raw = Raw::client(b.addr, V::V5, "huge").await;
    // PUBLISH with a remaining length of 256 MB, and nothing after it.
    raw.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    let got = raw.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PACKET_TOO_LARGE),
        "{got:?}"
    );
    // Other clients are unaffected.
    let mut other = Raw::client(b.addr, V::V3_1_1, "other").await;
    assert!(other.sync().await.is_empty());
}

#[tokio::test]
async fn graceful_shutdown_sends_server_shutting_down() {
    let b = TestBroker::default().await;
    let mut v5 = Raw::client(b.addr, V::V5, "s5").await;
    let mut v3 = Raw::client(b.addr, V::V3_1_1, "s3").await;
    b.handle.shutdown();
    let got = v5.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SERVER_SHUTTING_DOWN),
        "{got:?}"
    );
    assert!(v3.closed().await.is_empty());
    tokio::time::timeout(common::WAIT, b.join)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_connection_rate_spreads_connects_out_and_refuses_none() {
    let b = TestBroker::start(Config {
        max_connection_rate: 5,
        ..Config::default()
    })
    .await;
    // Ten clients at once against five a second: all are served (the rest
    // wait in the backlog), and the waits are counted on the listener.
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(Raw::client(b.addr, V::V3_1_1, &format!("rate{i}")).await);
    }
    let throttled = b.state.listeners()[0]
        .throttled
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(throttled >= 1, "throttled {throttled}");
    assert_eq!(b.state.session_count(), 10);
}

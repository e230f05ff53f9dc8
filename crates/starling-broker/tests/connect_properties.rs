//! MQTT 5 CONNECT properties the broker answers, checked on the bytes:
//! Request Response Information (the CONNACK's Response Information, only
//! when asked for [MQTT-3.1.2-28]) and Request Problem Information = 0 (no
//! Reason String or User Property on anything but PUBLISH, CONNACK and
//! DISCONNECT [MQTT-3.1.2-29]).

mod common;

use bytes::BytesMut;
use common::{Raw, TestBroker, WAIT};
use starling_broker::Config;
use starling_codec::{
    Connect, Packet, ProtocolVersion as V, Publish, QoS, Subscribe, Subscription,
};
use tokio::io::AsyncReadExt;

/// Reads exactly one packet's bytes from `raw`.
async fn packet_bytes(raw: &mut Raw) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        let mut buf = BytesMut::new();
        loop {
            // Fixed header: type byte, then the variable-length remaining length.
            if buf.len() >= 2 {
                let mut len = 0usize;
                let mut shift = 0;
                for (i, b) in buf[1..].iter().enumerate().take(4) {
                    len |= usize::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        let total = 2 + i + len;
                        if buf.len() >= total {
                            return buf.split_to(total).to_vec();
                        }
                        break;
                    }
                }
            }
            let n = raw.stream.read_buf(&mut buf).await.expect("read");
            assert!(n > 0, "closed");
        }
    })
    .await
    .expect("a packet")
}

async fn connect_raw(b: &TestBroker, connect: Connect) -> (Raw, Vec<u8>) {
    let mut raw = Raw::open(b.addr, V::V5).await;
    raw.send(Packet::Connect(Box::new(connect))).await;
    let ack = packet_bytes(&mut raw).await;
    assert_eq!(ack[0], 0x20, "CONNACK");
    (raw, ack)
}

/// Whether a property with this identifier appears in `bytes` followed by
/// the UTF-8 string `value` (2-byte length first).
fn has_string_property(bytes: &[u8], id: u8, value: &str) -> bool {
    let mut wanted = vec![id];
    wanted.extend_from_slice(&(value.len() as u16).to_be_bytes());
    wanted.extend_from_slice(value.as_bytes());
    bytes.windows(wanted.len()).any(|w| w == wanted.as_slice())
}

#[tokio::test]
async fn response_information_only_when_asked_for() {
    let b = TestBroker::default().await;
    let mut asks = Connect::new(V::V5, "asker");
    asks.properties.request_response_information = Some(true);
    let (_c, ack) = connect_raw(&b, asks).await;
    assert!(
        has_string_property(&ack, 0x1A, "response/asker/"),
        "{ack:02x?}"
    );
    for rri in [None, Some(false)] {
        let mut c = Connect::new(V::V5, "quiet");
        c.properties.request_response_information = rri;
        let (_c, ack) = connect_raw(&b, c).await;
        // CONNACK: flags, reason, property length, properties; no 0x1A.
        assert!(!ack[4..].contains(&0x1A), "{ack:02x?}");
    }
    b.stop().await;
}

#[tokio::test]
async fn the_prefix_is_configurable_and_empty_turns_it_off() {
    let b = TestBroker::start(Config {
        response_information: "replies/%u/%c".into(),
        ..Config::default()
    })
    .await;
    let mut c = Connect::new(V::V5, "c9");
    c.username = Some("ann".into());
    c.properties.request_response_information = Some(true);
    let (_c, ack) = connect_raw(&b, c).await;
    assert!(has_string_property(&ack, 0x1A, "replies/ann/c9"));
    b.stop().await;
    let b = TestBroker::start(Config {
        response_information: String::new(),
        ..Config::default()
    })
    .await;
    let mut c = Connect::new(V::V5, "c9");
    c.properties.request_response_information = Some(true);
    let (_c, ack) = connect_raw(&b, c).await;
    assert!(!ack[4..].contains(&0x1A));
    b.stop().await;
}

/// A broker whose ACL lets everyone write and read `open/#` only.
async fn acl_broker() -> (TestBroker, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("starling-rpi-acl-{}", std::process::id()));
    std::fs::write(&path, "topic readwrite open/#\n").unwrap();
    let b = TestBroker::start(Config {
        acl_file: Some(path.clone()),
        ..Config::default()
    })
    .await;
    (b, path)
}

async fn refused_acks(b: &TestBroker, problem_info: Option<bool>) -> (Vec<u8>, Vec<u8>) {
    let mut c = Connect::new(V::V5, "p");
    c.properties.request_problem_information = problem_info;
    let (mut raw, _) = connect_raw(b, c).await;
    let mut p = Publish::new("closed/t", &b"x"[..]);
    p.qos = QoS::AtLeastOnce;
    p.packet_id = 0x0102;
    raw.send(Packet::Publish(p)).await;
    let puback = packet_bytes(&mut raw).await;
    raw.send(Packet::Subscribe(Subscribe {
        packet_id: 0x0304,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: "closed/#".into(),
            options: Default::default(),
        }],
    }))
    .await;
    let suback = packet_bytes(&mut raw).await;
    (puback, suback)
}

#[tokio::test]
async fn request_problem_information_0_takes_reason_strings_off_acknowledgements() {
    let (b, acl) = acl_broker().await;
    // Asked not to: PUBACK 0x87 and SUBACK 0x87 without properties.
    let (puback, suback) = refused_acks(&b, Some(false)).await;
    // PUBACK: packet id, reason 0x87, and a property length of 0 or none.
    assert!(
        puback == [0x40, 0x03, 0x01, 0x02, 0x87] || puback == [0x40, 0x04, 0x01, 0x02, 0x87, 0x00],
        "{puback:02x?}"
    );
    // SUBACK: packet id, property length 0, one reason code 0x87.
    assert_eq!(suback, [0x90, 0x04, 0x03, 0x04, 0x00, 0x87]);
    // By default the refusals say why.
    let (puback, suback) = refused_acks(&b, None).await;
    assert!(has_string_property(
        &puback,
        0x1F,
        "not authorized to publish to this topic"
    ));
    assert!(has_string_property(
        &suback,
        0x1F,
        "filter 1: not authorized"
    ));
    b.stop().await;
    let _ = std::fs::remove_file(acl);
}

#[tokio::test]
async fn starling_client_asks_for_response_information() {
    let b = TestBroker::default().await;
    let mut o = starling_client::ConnectOptions::new("127.0.0.1", b.tcp.port());
    o.client_id = "rri".into();
    o.request_response_information = true;
    o.request_problem_information = Some(false);
    let (client, info) = starling_client::Client::connect(o).await.unwrap();
    assert_eq!(info.response_information(), Some("response/rri/"));
    client.disconnect().await.unwrap();
    b.stop().await;
}

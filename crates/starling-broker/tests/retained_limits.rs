//! `max-retained-messages` and `max-retained-bytes`: past them an MQTT 5
//! QoS 2 retained PUBLISH gets PUBREC 0x97 and goes nowhere, a will is
//! delivered without being retained, and the figures survive a restart.
//! (paho's view, MQTT 5 QoS 1 and 3.1.1, is in `interop.rs`.)

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{Raw, TestBroker};
use starling_broker::Config;
use starling_codec::{Connect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode, Will};

fn retained(topic: &str, payload: &'static [u8], qos: QoS, id: u16) -> Packet {
    let mut p = Publish::new(topic, Bytes::from_static(payload));
    p.retain = true;
    p.qos = qos;
    p.packet_id = id;
    Packet::Publish(p)
}

fn refused(b: &TestBroker) -> u64 {
    b.state.metrics.retained_refused.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_qos2_retained_publish_past_the_bytes_is_refused_with_pubrec_0x97() {
    let b = TestBroker::start(Config {
        max_packet_size: 1024,
        max_retained_bytes: 1024,
        ..Config::default()
    })
    .await;
    let mut watch = Raw::client(b.addr, V::V5, "watch").await;
    watch.subscribe("big/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    const HALF: &[u8] = &[b'x'; 400];
    publ.send(retained("big/1", HALF, QoS::ExactlyOnce, 1))
        .await;
    match publ.recv().await {
        Packet::PubRec(a) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    publ.send(Packet::PubRel(starling_codec::Ack::new(1))).await;
    assert!(matches!(publ.recv().await, Packet::PubComp(_)));
    assert_eq!(watch.expect_publish().await.topic, "big/1");
    // A second one of the same size does not fit beside the first.
    publ.send(retained("big/2", HALF, QoS::ExactlyOnce, 2))
        .await;
    match publ.recv().await {
        Packet::PubRec(a) => {
            assert_eq!(a.reason_code, ReasonCode::QUOTA_EXCEEDED);
            let why = a.properties.reason_string.as_deref().unwrap_or_default();
            assert!(why.contains("retained"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // The flow ended there: the packet id is free at once, and nobody got it.
    publ.send(retained("big/1", b"", QoS::ExactlyOnce, 2)).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(a) if a.reason_code == ReasonCode::SUCCESS));
    publ.send(Packet::PubRel(starling_codec::Ack::new(2))).await;
    assert!(matches!(publ.recv().await, Packet::PubComp(_)));
    let p = watch.expect_publish().await;
    assert_eq!((&p.topic[..], p.payload.len()), ("big/1", 0));
    assert_eq!(refused(&b), 1);
    assert_eq!((b.state.retained_count(), b.state.retained_bytes()), (0, 0));
    b.stop().await;
}

#[tokio::test]
async fn a_retained_will_past_the_limit_is_delivered_not_retained() {
    let b = TestBroker::start(Config {
        max_retained_messages: 1,
        ..Config::default()
    })
    .await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.send(retained("kept", b"k", QoS::AtLeastOnce, 1)).await;
    assert!(matches!(publ.recv().await, Packet::PubAck(a) if !a.reason_code.is_error()));
    let mut watch = Raw::client(b.addr, V::V5, "watch").await;
    watch.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut c = Connect::new(V::V5, "mortal");
    c.will = Some(Will {
        topic: "will/mortal".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    let (raw, _) = Raw::connect(b.addr, c).await;
    drop(raw);
    let p = watch.expect_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        ("will/mortal", &b"gone"[..])
    );
    assert_eq!(refused(&b), 1);
    assert_eq!(b.state.retained_count(), 1);
    // A later subscriber sees only what was retained.
    let mut later = Raw::client(b.addr, V::V5, "later").await;
    later.subscribe("#", QoS::AtLeastOnce).await;
    assert_eq!(later.expect_publish().await.topic, "kept");
    assert!(later.sync().await.is_empty());
    b.stop().await;
}

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("starling-retlim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn the_figures_are_restored_with_the_messages() {
    let dir = data_dir("restore");
    let config = || Config {
        data_dir: dir.clone(),
        max_retained_messages: 2,
        ..Config::default()
    };
    let b = TestBroker::start(config()).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    for (i, t) in ["r/1", "r/2"].into_iter().enumerate() {
        publ.send(retained(t, b"v", QoS::AtLeastOnce, i as u16 + 1))
            .await;
        assert!(matches!(publ.recv().await, Packet::PubAck(a) if !a.reason_code.is_error()));
    }
    let bytes = b.state.retained_bytes();
    assert!(bytes > 0);
    drop(publ);
    b.stop().await;
    let b = TestBroker::start(config()).await;
    assert_eq!(
        (b.state.retained_count(), b.state.retained_bytes()),
        (2, bytes)
    );
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.send(retained("r/3", b"v", QoS::AtLeastOnce, 1)).await;
    assert!(
        matches!(publ.recv().await, Packet::PubAck(a) if a.reason_code == ReasonCode::QUOTA_EXCEEDED)
    );
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

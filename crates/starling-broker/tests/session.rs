//! Sessions: clean and persistent, session present, offline queues and their
//! bounds, expiry, in-flight resend, and takeover.

mod common;

use std::time::Duration;

use common::{Raw, TestBroker};
use starling_broker::config::OverflowPolicy;
use starling_broker::Config;
use starling_codec::{Ack, Connect, Disconnect, Packet, ProtocolVersion as V, QoS, ReasonCode};

fn persistent(v: V, id: &str) -> Connect {
    let mut c = Connect::new(v, id);
    c.clean_start = false;
    if v == V::V5 {
        c.properties.session_expiry_interval = Some(u32::MAX);
    }
    c
}

async fn disconnect(mut raw: Raw) {
    raw.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(raw.closed().await.is_empty());
}

#[tokio::test]
async fn session_present_flag_and_clean_start_purge() {
    let b = TestBroker::default().await;
    for v in [V::V3_1_1, V::V5] {
        let id = format!("sp-{v}");
        let (raw, ack) = Raw::connect(b.addr, persistent(v, &id)).await;
        assert!(!ack.session_present, "new session");
        disconnect(raw).await;
        let (raw, ack) = Raw::connect(b.addr, persistent(v, &id)).await;
        assert!(ack.session_present, "resumed session");
        disconnect(raw).await;
        let (raw, ack) = Raw::connect(b.addr, Connect::new(v, id.as_str())).await;
        assert!(!ack.session_present, "clean start");
        disconnect(raw).await;
        let (raw, ack) = Raw::connect(b.addr, persistent(v, &id)).await;
        assert!(
            !ack.session_present,
            "the clean start purged the stored session"
        );
        disconnect(raw).await;
    }
}

#[tokio::test]
async fn offline_messages_are_queued_in_order_and_subscriptions_kept() {
    let b = TestBroker::default().await;
    for v in [V::V3_1_1, V::V5] {
        let id = format!("q-{v}");
        let topic = format!("q/{v}");
        let (mut sub, _) = Raw::connect(b.addr, persistent(v, &id)).await;
        sub.subscribe(&topic, QoS::ExactlyOnce).await;
        disconnect(sub).await;
        let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
        publ.publish(&topic, b"zero", QoS::AtMostOnce, 0).await;
        publ.publish(&topic, b"one", QoS::AtLeastOnce, 1).await;
        publ.publish(&topic, b"two", QoS::ExactlyOnce, 2).await;
        publ.publish(&topic, b"three", QoS::AtLeastOnce, 3).await;
        disconnect(publ).await;
        let (mut sub, ack) = Raw::connect(b.addr, persistent(v, &id)).await;
        assert!(ack.session_present);
        let mut got = Vec::new();
        while got.len() < 3 {
            match sub.recv().await {
                Packet::Publish(p) => {
                    got.push((p.payload.clone(), p.qos));
                    match p.qos {
                        QoS::AtLeastOnce => sub.send(Packet::PubAck(Ack::new(p.packet_id))).await,
                        QoS::ExactlyOnce => sub.send(Packet::PubRec(Ack::new(p.packet_id))).await,
                        QoS::AtMostOnce => {}
                    }
                }
                Packet::PubRel(rel) => sub.send(Packet::PubComp(Ack::new(rel.packet_id))).await,
                other => panic!("unexpected {other:?}"),
            }
        }
        for p in sub.sync().await {
            match p {
                Packet::PubRel(rel) => sub.send(Packet::PubComp(Ack::new(rel.packet_id))).await,
                other => panic!("unexpected {other:?}"),
            }
        }
        // QoS 0 to an offline 3.1.1/5 session is not queued by default.
        assert_eq!(
            got,
            [
                (bytes::Bytes::from_static(b"one"), QoS::AtLeastOnce),
                (bytes::Bytes::from_static(b"two"), QoS::ExactlyOnce),
                (bytes::Bytes::from_static(b"three"), QoS::AtLeastOnce),
            ]
        );
        assert!(sub.sync().await.is_empty());
        disconnect(sub).await;
    }
}

#[tokio::test]
async fn qos0_offline_queueing_is_configurable() {
    let b = TestBroker::start(Config {
        queue_qos0_offline: true,
        ..Config::default()
    })
    .await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V3_1_1, "q0")).await;
    sub.subscribe("q0", QoS::AtMostOnce).await;
    disconnect(sub).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
    publ.publish("q0", b"kept", QoS::AtMostOnce, 0).await;
    publ.sync().await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V3_1_1, "q0")).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"kept");
}

#[tokio::test]
async fn inflight_messages_are_resent_with_dup() {
    let b = TestBroker::default().await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "dup")).await;
    sub.subscribe("d/1", QoS::AtLeastOnce).await;
    sub.subscribe("d/2", QoS::ExactlyOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("d/1", b"a", QoS::AtLeastOnce, 1).await;
    publ.publish("d/2", b"b", QoS::ExactlyOnce, 2).await;
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    assert!(!first.dup && !second.dup);
    // Acknowledge only the first half of the QoS 2 flow, then drop the connection.
    sub.send(Packet::PubRec(Ack::new(second.packet_id))).await;
    assert!(matches!(sub.recv().await, Packet::PubRel(_)));
    drop(sub);
    let (mut sub, ack) = Raw::connect(b.addr, persistent(V::V5, "dup")).await;
    assert!(ack.session_present);
    let resent = sub.expect_publish().await;
    assert!(resent.dup, "QoS 1 resent with DUP");
    assert_eq!(resent.packet_id, first.packet_id);
    assert_eq!(&resent.payload[..], b"a");
    match sub.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, second.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(Packet::PubAck(Ack::new(resent.packet_id))).await;
    sub.send(Packet::PubComp(Ack::new(second.packet_id))).await;
    assert!(sub.sync().await.is_empty());
}

#[tokio::test]
async fn offline_queue_is_bounded_and_drops_oldest() {
    let b = TestBroker::start(Config {
        max_queued_messages: 3,
        ..Config::default()
    })
    .await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V3_1_1, "bounded")).await;
    sub.subscribe("b", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
    for (i, payload) in [b"1", b"2", b"3", b"4", b"5"].into_iter().enumerate() {
        publ.publish("b", payload, QoS::AtLeastOnce, i as u16 + 1)
            .await;
    }
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V3_1_1, "bounded")).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish().await;
        sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
        got.push(p.payload[0]);
    }
    assert_eq!(got, b"345");
    assert!(sub.sync().await.is_empty());
    let dropped = b.state.metrics.messages_dropped();
    assert_eq!(dropped, 2);
}

#[tokio::test]
async fn offline_queue_can_drop_newest() {
    let b = TestBroker::start(Config {
        max_queued_messages: 2,
        queue_overflow: OverflowPolicy::DropNewest,
        ..Config::default()
    })
    .await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V3_1_1, "newest")).await;
    sub.subscribe("n", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
    for (i, payload) in [b"1", b"2", b"3"].into_iter().enumerate() {
        publ.publish("n", payload, QoS::AtLeastOnce, i as u16 + 1)
            .await;
    }
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V3_1_1, "newest")).await;
    let a = sub.expect_publish().await;
    let c = sub.expect_publish().await;
    assert_eq!((&a.payload[..], &c.payload[..]), (&b"1"[..], &b"2"[..]));
}

#[tokio::test(start_paused = true)]
async fn queued_messages_expire_and_remaining_interval_is_adjusted() {
    let b = TestBroker::default().await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "exp")).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    for (expiry, payload, id) in [(5u32, &b"short"[..], 1u16), (100, &b"long"[..], 2)] {
        let mut p = starling_codec::Publish::new("e", bytes::Bytes::from_static(payload));
        p.qos = QoS::AtLeastOnce;
        p.packet_id = id;
        p.properties.message_expiry_interval = Some(expiry);
        publ.send(Packet::Publish(p)).await;
        assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "exp")).await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"long");
    assert_eq!(p.properties.message_expiry_interval, Some(90));
    sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
    // Nothing else was queued: the expired message is gone.
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(sub.closed().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn session_expiry_interval_ends_the_session() {
    let b = TestBroker::default().await;
    let mut c = Connect::new(V::V5, "expiring");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(30);
    let (raw, _) = Raw::connect(b.addr, c.clone()).await;
    disconnect(raw).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (raw, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(ack.session_present, "still there after 20 s");
    disconnect(raw).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    let (raw, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(!ack.session_present, "gone after 31 s");
    disconnect(raw).await;
    // Expiry 0 ends the session with the connection.
    let mut zero = c.clone();
    zero.properties.session_expiry_interval = None;
    let (raw, _) = Raw::connect(b.addr, zero.clone()).await;
    disconnect(raw).await;
    let (_raw, ack) = Raw::connect(b.addr, zero).await;
    assert!(!ack.session_present);
}

#[tokio::test(start_paused = true)]
async fn disconnect_can_change_session_expiry_but_not_from_zero() {
    let b = TestBroker::default().await;
    let mut c = Connect::new(V::V5, "chg");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(10);
    let (mut raw, _) = Raw::connect(b.addr, c.clone()).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(1000);
    raw.send(Packet::Disconnect(d)).await;
    assert!(raw.closed().await.is_empty());
    tokio::time::sleep(Duration::from_secs(100)).await;
    let (raw, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(ack.session_present, "the DISCONNECT extended the expiry");
    disconnect(raw).await;
    // From 0 to non-zero is a protocol error.
    let mut zero = Connect::new(V::V5, "chg0");
    zero.properties.session_expiry_interval = Some(0);
    let (mut raw, _) = Raw::connect(b.addr, zero).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(5);
    raw.send(Packet::Disconnect(d)).await;
    let got = raw.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PROTOCOL_ERROR),
        "{got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn persistent_session_expiry_for_v311_is_configurable() {
    let b = TestBroker::start(Config {
        persistent_session_expiry: Some(60),
        ..Config::default()
    })
    .await;
    let (raw, _) = Raw::connect(b.addr, persistent(V::V3_1_1, "p311")).await;
    disconnect(raw).await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (_raw, ack) = Raw::connect(b.addr, persistent(V::V3_1_1, "p311")).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn takeover_disconnects_the_first_connection() {
    let b = TestBroker::default().await;
    let (mut first, _) = Raw::connect(b.addr, persistent(V::V5, "same")).await;
    first.subscribe("t", QoS::AtLeastOnce).await;
    let (mut second, ack) = Raw::connect(b.addr, persistent(V::V5, "same")).await;
    assert!(ack.session_present, "the session carries over");
    let got = first.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SESSION_TAKEN_OVER),
        "{got:?}"
    );
    // The subscription moved with the session.
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("t", b"x", QoS::AtLeastOnce, 1).await;
    assert_eq!(&second.expect_publish().await.payload[..], b"x");
    // 3.1.1: the first connection is simply closed.
    let mut a = Raw::client(b.addr, V::V3_1_1, "same311").await;
    let _b2 = Raw::client(b.addr, V::V3_1_1, "same311").await;
    assert!(a.closed().await.is_empty());
}

#[tokio::test]
async fn id_stealing_clients_do_not_spin_the_broker() {
    let b = TestBroker::default().await;
    let mut last = None;
    for _ in 0..50 {
        last = Some(Raw::client(b.addr, V::V5, "thief").await);
    }
    let mut last = last.unwrap();
    assert!(last.sync().await.is_empty());
    assert_eq!(
        starling_broker::metrics::Metrics::get(&b.state.metrics.takeovers),
        49
    );
}

/// `max-sessions`: past it a CONNECT that needs a new session is refused
/// (MQTT 5: 0x97 Quota exceeded; 3.1.1: return code 3) and leaves nothing
/// behind, while the sessions held resume, are taken over and start clean.
#[tokio::test]
async fn past_max_sessions_new_client_ids_are_refused_and_held_ones_still_connect() {
    let b = TestBroker::start(Config {
        max_sessions: 2,
        ..Config::default()
    })
    .await;
    let (a, ack) = Raw::connect(b.addr, persistent(V::V5, "ms-a")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    disconnect(a).await;
    let (_held, ack) = Raw::connect(b.addr, persistent(V::V3_1_1, "ms-b")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // Full: a clean session counts as well as a persistent one.
    let (mut r, ack) = Raw::connect(b.addr, Connect::new(V::V5, "ms-c")).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    assert!(r.closed().await.is_empty(), "closed after the CONNACK");
    let (mut r, ack) = Raw::connect(b.addr, persistent(V::V3_1_1, "ms-d")).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::SERVER_UNAVAILABLE,
        "3.x code 3"
    );
    assert!(r.closed().await.is_empty(), "closed after the CONNACK");
    assert_eq!(b.state.session_count(), 2, "a refusal leaves no session");
    // The sessions held: one resumes, the other is taken over with a clean start.
    let (_a, ack) = Raw::connect(b.addr, persistent(V::V5, "ms-a")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(ack.session_present);
    let (_b, ack) = Raw::connect(b.addr, Connect::new(V::V3_1_1, "ms-b")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    assert_eq!(b.state.session_count(), 2);
    let refused = &b.state.metrics.sessions_refused;
    assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 2);
    b.stop().await;
}

//! Hibernation: idle TCP connections park without a task, and whatever
//! concerns them (a packet, a message for their session, a takeover, their
//! keep alive running out, shutdown, the peer closing) wakes them. Real TCP and
//! real time: parking is a property of TCP connections.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Raw, TestBroker, WAIT};
use starling_broker::Config;
use starling_codec::{Connect, Packet, ProtocolVersion as V, QoS, ReasonCode, Will};
use tokio::time::Instant;

async fn broker(hibernate_after_ms: u64) -> TestBroker {
    TestBroker::start(Config {
        hibernate_after_ms,
        ..Config::default()
    })
    .await
}

/// Waits until exactly `n` connections are parked.
async fn parked(b: &TestBroker, n: usize) {
    let deadline = Instant::now() + WAIT;
    while b.state.parked_connections() != n {
        assert!(
            Instant::now() < deadline,
            "{} parked, expected {n}",
            b.state.parked_connections()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn with_will(id: &str, keep_alive: u16) -> Connect {
    let mut c = Connect::new(V::V5, id);
    c.keep_alive = keep_alive;
    c.will = Some(Will {
        topic: "will/t".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    c
}

#[tokio::test]
async fn a_client_silent_after_connack_parks_at_once_and_answers_pingreq() {
    // hibernate-after is long: the park right after CONNACK does not wait for it.
    let b = broker(60_000).await;
    let mut c = Raw::client(b.addr, V::V3_1_1, "quiet").await;
    parked(&b, 1).await;
    c.send(Packet::PingReq).await;
    assert!(matches!(c.recv().await, Packet::PingResp));
    parked(&b, 0).await; // busy now: it parks again only after 60 s of quiet
    b.stop().await;
}

#[tokio::test]
async fn a_parked_subscriber_wakes_for_its_messages_in_order() {
    let b = broker(20).await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    parked(&b, 1).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
    for i in 1..=20u16 {
        publ.publish("t/x", b"m", QoS::AtLeastOnce, i).await;
    }
    for _ in 0..20 {
        let p = sub.expect_publish().await;
        assert_eq!(&p.payload[..], b"m");
        sub.send(Packet::PubAck(starling_codec::Ack::new(p.packet_id)))
            .await;
    }
    // Both go quiet and park; a later message still arrives.
    parked(&b, 2).await;
    publ.publish("t/y", b"later", QoS::AtMostOnce, 0).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"later");
    b.stop().await;
}

#[tokio::test]
async fn a_parked_connection_is_taken_over() {
    let b = broker(20).await;
    let mut first = Raw::client(b.addr, V::V5, "same").await;
    parked(&b, 1).await;
    let _second = Raw::client(b.addr, V::V5, "same").await;
    let got = first.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SESSION_TAKEN_OVER),
        "{got:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_parked_connection_still_times_out_and_sends_its_will() {
    let b = broker(20).await;
    let mut w = Raw::client(b.addr, V::V5, "watch").await;
    w.subscribe("will/t", QoS::AtLeastOnce).await;
    let start = Instant::now();
    let (mut c, _) = Raw::connect(b.addr, with_will("ka", 1)).await;
    let got = c.closed().await;
    let took = start.elapsed();
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
        "{got:?}"
    );
    // 1.5 x keep alive, plus at most the reactor's 0.5 s sweep.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "closed after {took:?}"
    );
    assert_eq!(&w.expect_publish().await.payload[..], b"gone");
    b.stop().await;
}

#[tokio::test]
async fn a_parked_peer_that_goes_away_leaves_its_will() {
    let b = broker(20).await;
    let mut w = Raw::client(b.addr, V::V5, "watch").await;
    w.subscribe("will/t", QoS::AtLeastOnce).await;
    let (c, _) = Raw::connect(b.addr, with_will("gone", 60)).await;
    parked(&b, 2).await;
    drop(c);
    assert_eq!(&w.expect_publish().await.payload[..], b"gone");
    b.stop().await;
}

#[tokio::test]
async fn shutdown_wakes_parked_connections_to_say_goodbye() {
    let b = broker(20).await;
    let mut c5 = Raw::client(b.addr, V::V5, "five").await;
    let mut c3 = Raw::client(b.addr, V::V3_1_1, "three").await;
    parked(&b, 2).await;
    b.handle.shutdown();
    let got = c5.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SERVER_SHUTTING_DOWN),
        "{got:?}"
    );
    assert!(c3.closed().await.is_empty());
    tokio::time::timeout(WAIT, b.join)
        .await
        .expect("broker stops")
        .expect("no panic");
}

#[tokio::test]
async fn hibernate_after_zero_never_parks() {
    let b = broker(0).await;
    let mut c = Raw::client(b.addr, V::V3_1_1, "awake").await;
    c.send(Packet::PingReq).await;
    assert!(matches!(c.recv().await, Packet::PingResp));
    assert_eq!(b.state.parked_connections(), 0);
    b.stop().await;
}

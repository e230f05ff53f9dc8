//! Keep alive and the will message: when it fires, when it does not, its delay,
//! its ACL and its retain flag.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Raw, TestBroker};
use starling_broker::Config;
use starling_codec::{Connect, Disconnect, Packet, ProtocolVersion as V, QoS, ReasonCode, Will};
use tokio::time::Instant;

fn with_will(v: V, id: &str, topic: &str, delay: Option<u32>) -> Connect {
    let mut c = Connect::new(v, id);
    let mut will = Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    will.properties.will_delay_interval = delay;
    c.will = Some(will);
    c
}

async fn watcher(b: &TestBroker, filter: &str) -> Raw {
    let mut w = Raw::client(b.addr, V::V5, &format!("watch-{filter}")).await;
    w.subscribe(filter, QoS::AtLeastOnce).await;
    w
}

#[tokio::test(start_paused = true)]
async fn keep_alive_closes_after_one_and_a_half_times_and_publishes_the_will() {
    let b = TestBroker::default().await;
    let mut w = watcher(&b, "will/ka").await;
    let mut c = with_will(V::V5, "ka", "will/ka", None);
    c.keep_alive = 10;
    let start = Instant::now();
    let (mut raw, _) = Raw::connect(b.addr, c).await;
    let got = raw.closed().await;
    assert_eq!(start.elapsed().as_secs(), 15, "closed at 1.5 x keep alive");
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
        "{got:?}"
    );
    assert_eq!(&w.expect_publish().await.payload[..], b"gone");
}

#[tokio::test(start_paused = true)]
async fn pingreq_keeps_the_connection_alive() {
    let b = TestBroker::default().await;
    let mut c = Connect::new(V::V3_1_1, "pinger");
    c.keep_alive = 10;
    let (mut raw, _) = Raw::connect(b.addr, c).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(9)).await;
        raw.send(Packet::PingReq).await;
        assert!(matches!(raw.recv().await, Packet::PingResp));
    }
    let start = Instant::now();
    assert!(raw.closed().await.is_empty());
    assert_eq!(start.elapsed().as_secs(), 15);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_zero_disables_the_check() {
    let b = TestBroker::default().await;
    let mut c = Connect::new(V::V3_1_1, "forever");
    c.keep_alive = 0;
    let (mut raw, _) = Raw::connect(b.addr, c).await;
    tokio::time::sleep(Duration::from_secs(100_000)).await;
    assert!(raw.sync().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn max_keepalive_clamps_v311_clients() {
    let b = TestBroker::start(Config {
        max_keepalive: 20,
        ..Config::default()
    })
    .await;
    let mut c = Connect::new(V::V3_1_1, "clamped");
    c.keep_alive = 1000;
    let start = Instant::now();
    let (mut raw, _) = Raw::connect(b.addr, c).await;
    assert!(raw.closed().await.is_empty());
    assert_eq!(start.elapsed().as_secs(), 30);
}

#[tokio::test]
async fn will_on_abrupt_close_but_not_on_normal_disconnect() {
    let b = TestBroker::default().await;
    for v in [V::V3_1, V::V3_1_1, V::V5] {
        let topic = format!("will/{}", v.level());
        let mut w = watcher(&b, &topic).await;
        // Normal DISCONNECT: no will.
        let (mut raw, _) = Raw::connect(b.addr, with_will(v, "w1", &topic, None)).await;
        raw.send(Packet::Disconnect(Disconnect::default())).await;
        assert!(raw.closed().await.is_empty());
        assert!(
            w.sync().await.is_empty(),
            "no will after a normal DISCONNECT"
        );
        // Network drop: will.
        let (raw, _) = Raw::connect(b.addr, with_will(v, "w2", &topic, None)).await;
        drop(raw);
        let p = w.expect_publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (topic.as_str(), &b"gone"[..])
        );
    }
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_it() {
    let b = TestBroker::default().await;
    let mut w = watcher(&b, "will/04").await;
    let (mut raw, _) = Raw::connect(b.addr, with_will(V::V5, "w4", "will/04", None)).await;
    raw.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DISCONNECT_WITH_WILL,
    )))
    .await;
    assert!(raw.closed().await.is_empty());
    assert_eq!(&w.expect_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn protocol_error_publishes_the_will() {
    let b = TestBroker::default().await;
    let mut w = watcher(&b, "will/pe").await;
    let (mut raw, _) = Raw::connect(b.addr, with_will(V::V5, "pe", "will/pe", None)).await;
    raw.send_bytes(&[0x00, 0x00]).await; // reserved packet type 0
    let got = raw.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::MALFORMED_PACKET),
        "{got:?}"
    );
    assert_eq!(&w.expect_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn takeover_publishes_the_will_of_the_first_connection() {
    let b = TestBroker::default().await;
    let mut w = watcher(&b, "will/to").await;
    let (mut first, _) = Raw::connect(b.addr, with_will(V::V5, "to", "will/to", None)).await;
    let _second = Raw::client(b.addr, V::V5, "to").await;
    first.closed().await;
    assert_eq!(&w.expect_publish().await.payload[..], b"gone");
}

#[tokio::test(start_paused = true)]
async fn will_delay_sends_after_the_delay() {
    let b = TestBroker::default().await;
    let mut w = watcher(&b, "will/delay").await;
    let mut c = with_will(V::V5, "wd", "will/delay", Some(30));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    let (raw, _) = Raw::connect(b.addr, c).await;
    let start = Instant::now();
    drop(raw);
    let p = w.expect_publish().await;
    assert_eq!(&p.payload[..], b"gone");
    assert_eq!(start.elapsed().as_secs(), 30);
}

#[tokio::test(start_paused = true)]
async fn will_delay_ends_with_the_session_if_that_is_sooner() {
    let b = TestBroker::default().await;
    let mut w = watcher(&b, "will/short").await;
    let mut c = with_will(V::V5, "ws", "will/short", Some(300));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(20);
    let (raw, _) = Raw::connect(b.addr, c).await;
    let start = Instant::now();
    drop(raw);
    assert_eq!(&w.expect_publish().await.payload[..], b"gone");
    assert_eq!(start.elapsed().as_secs(), 20);
}

#[tokio::test(start_paused = true)]
async fn reconnect_within_the_will_delay_cancels_it() {
    let b = TestBroker::default().await;
    let mut w = watcher(&b, "will/cancel").await;
    let mut c = with_will(V::V5, "wc", "will/cancel", Some(30));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    let (raw, _) = Raw::connect(b.addr, c.clone()).await;
    drop(raw);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (mut again, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    tokio::time::sleep(Duration::from_secs(60)).await;
    again.send(Packet::PingReq).await;
    assert!(matches!(again.recv().await, Packet::PingResp));
    assert!(w.sync().await.is_empty(), "the will was cancelled");
}

#[tokio::test]
async fn retained_will_is_stored_as_retained() {
    let b = TestBroker::default().await;
    let mut c = with_will(V::V3_1_1, "rw", "will/retained", None);
    if let Some(w) = c.will.as_mut() {
        w.retain = true;
    }
    let (raw, _) = Raw::connect(b.addr, c).await;
    drop(raw);
    // Wait until the broker has stored it: a later subscriber sees it retained.
    let mut late = Raw::client(b.addr, V::V3_1_1, "late").await;
    let mut tries = 0;
    loop {
        late.subscribe("will/retained", QoS::AtLeastOnce).await;
        let got = late.sync().await;
        if let Some(Packet::Publish(p)) = got.first() {
            assert!(p.retain);
            assert_eq!(&p.payload[..], b"gone");
            break;
        }
        tries += 1;
        assert!(tries < 1000, "retained will never appeared");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn will_respects_the_acl() {
    let dir = std::env::temp_dir().join(format!("starling-will-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite allowed/#\ntopic read denied/#\n").unwrap();
    let b = TestBroker::start(Config {
        acl_file: Some(acl),
        ..Config::default()
    })
    .await;
    let mut w = Raw::client(b.addr, V::V5, "watch").await;
    w.subscribe("denied/#", QoS::AtLeastOnce).await;
    w.subscribe("allowed/#", QoS::AtLeastOnce).await;
    let (raw, _) = Raw::connect(b.addr, with_will(V::V5, "d", "denied/w", None)).await;
    drop(raw);
    let (raw, _) = Raw::connect(b.addr, with_will(V::V5, "a", "allowed/w", None)).await;
    drop(raw);
    // Wills are published in order of the closes; the allowed one is the only one.
    let p = w.expect_publish().await;
    assert_eq!(&p.topic[..], "allowed/w");
    assert!(w.sync().await.is_empty());
}

//! Backpressure on the defaults: publishers that outrun a subscriber are held
//! (not read) until its queue drains, so a subscriber that can keep up gets
//! everything; a subscriber that stops reading holds its publishers for no
//! longer than `slow-consumer-timeout-ms`, and never slows anyone else.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use starling_broker::Config;
use starling_codec::{Packet, ProtocolVersion as V, Publish, QoS};

/// Every packet of `count` QoS 0 PUBLISHes to `topic`, encoded back to back:
/// written in one go, the broker reads them as fast as the socket allows.
fn flood(topic: &str, tag: u32, count: u32) -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..count {
        let p = Publish::new(topic, Bytes::from(format!("{tag}:{i}")));
        Packet::Publish(p)
            .encode(V::V3_1_1, &mut out)
            .expect("encodes");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_on_the_defaults_loses_nothing() {
    let b = TestBroker::default().await;
    let mut sub = Raw::client(b.addr, V::V3_1_1, "sink").await;
    sub.subscribe("fan/#", QoS::AtMostOnce).await;
    let (publishers, each) = (10u32, 5_000u32);
    let mut tasks = Vec::new();
    for n in 0..publishers {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let mut p = Raw::client(addr, V::V3_1_1, &format!("p{n}")).await;
            p.send_bytes(&flood(&format!("fan/{n}"), n, each)).await;
            // Flushed through the broker: the PINGRESP comes after every
            // PUBLISH before it was read.
            p.send(Packet::PingReq).await;
            assert!(matches!(p.recv().await, Packet::PingResp));
            p
        }));
    }
    let total = (publishers * each) as usize;
    let mut next = vec![0u32; publishers as usize];
    let mut got = 0usize;
    while got < total {
        let Packet::Publish(p) = sub.recv().await else {
            continue;
        };
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        let (tag, i) = text.split_once(':').expect("tag:index");
        let (tag, i): (usize, u32) = (tag.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[tag], "publisher {tag}: in order, none missing");
        next[tag] += 1;
        got += 1;
    }
    for t in tasks {
        drop(t.await.expect("publisher ran"));
    }
    assert_eq!(b.state.metrics.messages_dropped(), 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_holds_its_publishers_only_for_the_bound() {
    let b = TestBroker::default().await;
    let bound = Duration::from_millis(Config::default().slow_consumer_timeout_ms);
    // A subscriber that never reads its socket.
    let mut stuck = Raw::client(b.addr, V::V3_1_1, "stuck").await;
    stuck.subscribe("stuck/#", QoS::AtMostOnce).await;
    // An unrelated pair, which must not notice.
    let mut other_sub = Raw::client(b.addr, V::V5, "other-sub").await;
    other_sub.subscribe("free/t", QoS::AtLeastOnce).await;
    let mut other_pub = Raw::client(b.addr, V::V5, "other-pub").await;

    let mut flooder = Raw::client(b.addr, V::V3_1_1, "flooder").await;
    let started = Instant::now();
    let payload = Bytes::from(vec![b'x'; 1024]);
    let mut rounds = 0u32;
    // Flood until the broker has marked the stuck subscriber (bounded).
    while b
        .state
        .metrics
        .slow_consumers
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(rounds < 1_000, "the stuck subscriber was never marked");
        rounds += 1;
        let mut batch = BytesMut::new();
        for _ in 0..200 {
            Packet::Publish(Publish::new("stuck/t", payload.clone()))
                .encode(V::V3_1_1, &mut batch)
                .unwrap();
        }
        flooder.send_bytes(&batch).await;
        flooder.send(Packet::PingReq).await;
        assert!(matches!(flooder.recv().await, Packet::PingResp));
        // Meanwhile the unrelated pair is served.
        other_pub
            .publish("free/t", b"ping", QoS::AtLeastOnce, 1)
            .await;
        let got = other_sub.expect_publish().await;
        assert_eq!(&got.payload[..], b"ping");
        other_sub
            .send(Packet::PubAck(starling_codec::Ack::new(got.packet_id)))
            .await;
    }
    // Held once for the bound, not more: the flood goes on at full speed
    // after the mark (its QoS 0 overflow is dropped and counted).
    let marked_after = started.elapsed();
    let mut batch = BytesMut::new();
    for _ in 0..5_000 {
        Packet::Publish(Publish::new("stuck/t", payload.clone()))
            .encode(V::V3_1_1, &mut batch)
            .unwrap();
    }
    let t = Instant::now();
    flooder.send_bytes(&batch).await;
    flooder.send(Packet::PingReq).await;
    assert!(matches!(flooder.recv().await, Packet::PingResp));
    let after = t.elapsed();
    assert!(
        after < bound,
        "a stalled subscriber no longer holds its publisher: {after:?} for 5,000 messages"
    );
    assert!(
        marked_after < bound * 20,
        "marked as a slow consumer after {marked_after:?}"
    );
    assert!(
        b.state
            .metrics
            .publisher_waits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the publisher was held"
    );
    assert!(
        b.state.metrics.messages_dropped() > 0,
        "the overflow is counted"
    );
    let queued = b.state.session("stuck").unwrap().queued();
    assert!(
        queued <= 1_000,
        "QoS 0 beyond the high-water mark is not kept: {queued}"
    );
    drop(stuck);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_can_be_disconnected() {
    let b = TestBroker::start(Config {
        slow_consumer: starling_broker::config::SlowConsumer::Disconnect,
        slow_consumer_timeout_ms: 100,
        ..Config::default()
    })
    .await;
    let mut stuck = Raw::client(b.addr, V::V5, "stuck").await;
    stuck.subscribe("s/#", QoS::AtMostOnce).await;
    let mut flooder = Raw::client(b.addr, V::V5, "flooder").await;
    let payload = Bytes::from(vec![b'x'; 1024]);
    for round in 0.. {
        assert!(round < 1_000, "never disconnected");
        if b.state
            .metrics
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            break;
        }
        let mut batch = BytesMut::new();
        for _ in 0..200 {
            Packet::Publish(Publish::new("s/t", payload.clone()))
                .encode(V::V5, &mut batch)
                .unwrap();
        }
        flooder.send_bytes(&batch).await;
        flooder.send(Packet::PingReq).await;
        assert!(matches!(flooder.recv().await, Packet::PingResp));
    }
    // The stuck client's socket ends with DISCONNECT 0x97 after what was
    // already in it.
    let rest = stuck.closed().await;
    match rest.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x97, "{d:?}"),
        other => panic!("expected DISCONNECT 0x97 last, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_publish_rate_holds_a_client_back_and_drops_nothing() {
    let b = TestBroker::start(Config {
        max_publish_rate: 20,
        ..Config::default()
    })
    .await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    sub.subscribe("r/#", QoS::AtMostOnce).await;
    let mut p = Raw::client(b.addr, V::V3_1_1, "fast").await;
    let started = tokio::time::Instant::now();
    p.send_bytes(&flood("r/t", 0, 60)).await;
    p.send(Packet::PingReq).await;
    assert!(matches!(p.recv().await, Packet::PingResp));
    // A burst of 20, then 20 a second: the other 40 take two seconds.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    for i in 0..60 {
        let got = sub.expect_publish().await;
        assert_eq!(&got.payload[..], format!("0:{i}").as_bytes());
    }
    assert!(
        b.state
            .metrics
            .publish_throttled
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    b.stop().await;
}

#[test]
fn a_bytes_rate_below_the_packet_size_is_refused() {
    let c = Config {
        max_publish_bytes_rate: 1000,
        ..Config::default()
    };
    let err = c.validate("test.toml").unwrap_err().to_string();
    assert!(err.contains("max-publish-bytes-rate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subscriber_gets_every_one_of_100k_retained_messages() {
    let b = TestBroker::default().await;
    let n = 100_000u32;
    let mut p = Raw::client(b.addr, V::V3_1_1, "retainer").await;
    let mut batch = BytesMut::new();
    for i in 0..n {
        let mut m = Publish::new(format!("ret/{i}").as_str(), Bytes::from_static(b"r"));
        m.retain = true;
        Packet::Publish(m).encode(V::V3_1_1, &mut batch).unwrap();
    }
    p.send_bytes(&batch).await;
    p.send(Packet::PingReq).await;
    assert!(matches!(p.recv().await, Packet::PingResp));
    assert_eq!(b.state.retained_count(), n as usize);
    let mut sub = Raw::client(b.addr, V::V5, "everything").await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    let mut seen = vec![false; n as usize];
    for _ in 0..n {
        let got = sub.expect_publish().await;
        assert!(got.retain);
        let i: usize = got.topic.strip_prefix("ret/").unwrap().parse().unwrap();
        assert!(!seen[i], "ret/{i} twice");
        seen[i] = true;
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(b.state.metrics.messages_dropped(), 0);
    b.stop().await;
}

#[test]
fn a_backpressure_bound_over_a_minute_is_refused() {
    let c = Config {
        slow_consumer_timeout_ms: u64::MAX,
        ..Config::default()
    };
    let err = c.validate("test.toml").unwrap_err().to_string();
    assert!(err.contains("slow-consumer-timeout-ms"), "{err}");
}

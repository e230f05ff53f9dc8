//! Persistent sessions' queues on disk: what outgrows the memory window
//! stays in the store and is read back page by page, in order; the bounds
//! (per session, and the broker-wide disk quota) and `queue-overflow =
//! "reject"` have their defined reactions.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use starling_broker::config::OverflowPolicy;
use starling_broker::store::Durability;
use starling_broker::Config;
use starling_codec::{Ack, Connect, Disconnect, Packet, ProtocolVersion as V, Publish, QoS};

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("starling-queues-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(name: &str) -> Config {
    Config {
        data_dir: data_dir(name),
        durability: Durability::Always,
        ..Config::default()
    }
}

fn persistent(id: &str) -> Connect {
    let mut c = Connect::new(V::V5, id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// Publishes `n` QoS 1 messages numbered from 0 to `topic`, each
/// acknowledged before the next; returns the PUBACK reason codes.
async fn publish(b: &TestBroker, topic: &str, n: u32) -> Vec<u8> {
    let mut p = Raw::client(b.addr, V::V5, "publisher").await;
    let mut codes = Vec::new();
    for i in 0..n {
        let mut m = Publish::new(topic, Bytes::from(i.to_string()));
        m.qos = QoS::AtLeastOnce;
        m.packet_id = (i % 60_000) as u16 + 1;
        p.send(Packet::Publish(m)).await;
        match p.recv().await {
            Packet::PubAck(a) => codes.push(a.reason_code.0),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    codes
}

/// Receives `n` QoS 1 messages, acknowledging each; returns their payloads.
async fn receive(sub: &mut Raw, n: usize) -> Vec<u32> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = sub.expect_publish().await;
        got.push(String::from_utf8_lossy(&p.payload).parse().unwrap());
        sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_subscriber_that_falls_behind_gets_everything_in_order() {
    let b = TestBroker::start(config("online")).await;
    let (mut sub, _) = Raw::connect(b.addr, persistent("behind")).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    // Not acknowledging yet: beyond its in-flight window, its queue grows
    // past the memory window, and the rest stays on disk.
    let n = 5_000;
    let codes = publish(&b, "q", n).await;
    assert!(codes.iter().all(|c| *c == 0));
    let session = b.state.session("behind").unwrap();
    assert_eq!(session.queued() + session.in_flight(), n as usize);
    let got = receive(&mut sub, n as usize).await;
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "in order, none missing");
    assert_eq!(session.queued(), 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_queue_is_read_back_after_a_restart_in_order() {
    let cfg = config("restart");
    let b = TestBroker::start(cfg.clone()).await;
    let (mut sub, _) = Raw::connect(b.addr, persistent("away")).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    publish(&b, "q", 3_000).await;
    b.stop().await;
    let b = TestBroker::start(cfg.clone()).await;
    // More after the restart: numbered after the stored ones.
    let mut p = Raw::client(b.addr, V::V5, "publisher").await;
    let mut m = Publish::new("q", Bytes::from_static(b"3000"));
    m.qos = QoS::AtLeastOnce;
    m.packet_id = 1;
    p.send(Packet::Publish(m)).await;
    assert!(matches!(p.recv().await, Packet::PubAck(_)));
    let (mut sub, ack) = Raw::connect(b.addr, persistent("away")).await;
    assert!(ack.session_present);
    let got = receive(&mut sub, 3_001).await;
    assert_eq!(got, (0..3_001).collect::<Vec<_>>());
    b.stop().await;
}

#[tokio::test]
async fn reject_refuses_what_a_full_persistent_queue_cannot_take() {
    let b = TestBroker::start(Config {
        max_queued_messages: 3,
        queue_overflow: OverflowPolicy::Reject,
        ..config("reject")
    })
    .await;
    let (mut sub, _) = Raw::connect(b.addr, persistent("full")).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    let codes = publish(&b, "q", 5).await;
    assert_eq!(
        codes,
        [0, 0, 0, 0x97, 0x97],
        "PUBACK 0x97 once the queue is full"
    );
    assert_eq!(
        b.state
            .metrics
            .publishes_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let (mut sub, _) = Raw::connect(b.addr, persistent("full")).await;
    assert_eq!(receive(&mut sub, 3).await, [0, 1, 2]);
    b.stop().await;
}

#[tokio::test]
async fn the_disk_quota_bounds_every_queue_together() {
    // Room for about ten of these messages in all: each weighs its payload
    // ("0" to "99") and its topic ("q"), 2 or 3 bytes.
    let b = TestBroker::start(Config {
        max_store_queue_bytes: 24,
        ..config("quota")
    })
    .await;
    for id in ["a", "b"] {
        let (mut sub, _) = Raw::connect(b.addr, persistent(id)).await;
        sub.subscribe("q", QoS::AtLeastOnce).await;
        sub.send(Packet::Disconnect(Disconnect::default())).await;
        sub.closed().await;
    }
    publish(&b, "q", 100).await;
    let queued: usize = ["a", "b"]
        .iter()
        .map(|id| b.state.session(id).unwrap().queued())
        .sum();
    assert!(
        (8..=12).contains(&queued),
        "{queued} queued within the quota"
    );
    assert!(
        b.state.metrics.messages_dropped() > 0,
        "the overflow is counted"
    );
    // Drop-oldest: what remains is the newest.
    let n = b.state.session("a").unwrap().queued();
    let (mut sub, _) = Raw::connect(b.addr, persistent("a")).await;
    let got = receive(&mut sub, n).await;
    assert_eq!(*got.last().unwrap(), 99);
    b.stop().await;
}

#[tokio::test]
async fn a_restored_queue_once_counted_keeps_its_bound() {
    let cfg = Config {
        max_queued_messages: 3,
        ..config("restored-bound")
    };
    let b = TestBroker::start(cfg.clone()).await;
    let (mut sub, _) = Raw::connect(b.addr, persistent("bounded")).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    publish(&b, "q", 3).await;
    b.stop().await;
    let b = TestBroker::start(cfg).await;
    // The sweeper counts the restored queue: 3, and where it starts.
    starling_broker::sweep_spilled(b.state.clone()).await;
    assert_eq!(b.state.session("bounded").unwrap().queued(), 3);
    // One more: drop-oldest evicts the oldest stored message, for real.
    let mut p = Raw::client(b.addr, V::V5, "publisher").await;
    let mut m = Publish::new("q", Bytes::from_static(b"3"));
    m.qos = QoS::AtLeastOnce;
    m.packet_id = 1;
    p.send(Packet::Publish(m)).await;
    assert!(matches!(p.recv().await, Packet::PubAck(_)));
    assert_eq!(b.state.session("bounded").unwrap().queued(), 3);
    let (mut sub, _) = Raw::connect(b.addr, persistent("bounded")).await;
    assert_eq!(receive(&mut sub, 3).await, [1, 2, 3]);
    // And nothing after them.
    sub.send(Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Packet::PingResp));
    b.stop().await;
}

//! Retained messages are delivered whole: a new subscription's retained
//! messages are streamed in topic order as its queue drains, paced by the
//! client's Receive Maximum, past the session's queue bound; an unsubscribe
//! ends the stream.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use starling_broker::Config;
use starling_codec::{Ack, Connect, Packet, ProtocolVersion as V, Publish, QoS};

/// Retains `n` QoS 1 messages on `prefix/{i}`, and waits for their PUBACKs.
async fn retain(b: &TestBroker, prefix: &str, n: u16) {
    let mut p = Raw::client(b.addr, V::V5, "retainer").await;
    let mut batch = BytesMut::new();
    for i in 1..=n {
        let mut m = Publish::new(format!("{prefix}/{i}").as_str(), Bytes::from_static(b"r"));
        m.retain = true;
        m.qos = QoS::AtLeastOnce;
        m.packet_id = i;
        Packet::Publish(m)
            .encode(V::V5, &mut batch)
            .expect("encodes");
    }
    p.send_bytes(&batch).await;
    for _ in 0..n {
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
}

/// A v5 client with Receive Maximum `receive_max`.
async fn receiver(b: &TestBroker, id: &str, receive_max: u16) -> Raw {
    let mut c = Connect::new(V::V5, id);
    c.properties.receive_maximum = Some(receive_max);
    let (raw, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.reason_code.0, 0);
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_stream_past_the_queue_bound_under_receive_maximum() {
    // A queue bound of 100 messages, 5,000 retained: they can only arrive
    // whole if they are streamed rather than queued at once.
    let b = TestBroker::start(Config {
        max_queued_messages: 100,
        ..Config::default()
    })
    .await;
    let n = 5_000u16;
    retain(&b, "r", n).await;
    let mut sub = receiver(&b, "streamed", 10).await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let mut topics: Vec<String> = Vec::new();
    let mut unacked: Vec<u16> = Vec::new();
    for _ in 0..n {
        let got = sub.expect_publish().await;
        assert!(got.retain);
        assert_eq!(got.qos, QoS::AtLeastOnce);
        topics.push(got.topic.to_string());
        unacked.push(got.packet_id);
        // Acknowledged ten at a time: the broker never has more in flight.
        if unacked.len() == 10 {
            for id in unacked.drain(..) {
                sub.send(Packet::PubAck(Ack::new(id))).await;
            }
        }
    }
    let mut expected: Vec<String> = (1..=n).map(|i| format!("r/{i}")).collect();
    expected.sort();
    assert_eq!(topics, expected, "every one, once, in topic order");
    assert_eq!(b.state.metrics.messages_dropped(), 0);
    // Nothing more: a PING's answer comes next.
    sub.send(Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Packet::PingResp));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_ends_the_stream_and_live_messages_still_flow() {
    let b = TestBroker::start(Config {
        max_queued_messages: 100,
        ..Config::default()
    })
    .await;
    retain(&b, "u", 2_000).await;
    // Receive Maximum 1 and no PUBACK: one retained message is in flight,
    // the rest wait in the walk.
    let mut sub = receiver(&b, "quitter", 1).await;
    sub.subscribe("u/#", QoS::AtLeastOnce).await;
    let first = sub.expect_publish().await;
    assert!(first.retain);
    sub.send(Packet::Unsubscribe(starling_codec::Unsubscribe {
        packet_id: 77,
        properties: Default::default(),
        filters: vec!["u/#".into()],
    }))
    .await;
    assert!(matches!(sub.recv().await, Packet::UnsubAck(_)));
    sub.send(Packet::PubAck(Ack::new(first.packet_id))).await;
    // What the walk had queued before the UNSUBSCRIBE may still come (as
    // a queue's messages do); then nothing more of it, and a live message
    // on another subscription gets through.
    sub.send(Packet::Subscribe(starling_codec::Subscribe {
        packet_id: 78,
        properties: Default::default(),
        subscriptions: vec![starling_codec::Subscription {
            filter: "live".into(),
            options: Default::default(),
        }],
    }))
    .await;
    let mut retained = 1;
    let mut suback = false;
    let mut p: Option<Raw> = None;
    loop {
        let got = match sub.recv().await {
            Packet::Publish(got) => got,
            Packet::SubAck(_) => {
                suback = true;
                let mut publisher = Raw::client(b.addr, V::V5, "live-pub").await;
                publisher.publish("live", b"now", QoS::AtMostOnce, 0).await;
                p = Some(publisher);
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        if &*got.topic == "live" {
            assert!(suback);
            break;
        }
        assert!(got.retain);
        retained += 1;
        sub.send(Packet::PubAck(Ack::new(got.packet_id))).await;
        assert!(retained <= 300, "the stream went on after the UNSUBSCRIBE");
    }
    drop(p);
    b.stop().await;
}

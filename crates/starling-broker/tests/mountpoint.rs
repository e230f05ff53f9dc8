//! Mountpoints (`mountpoint` in a `[[listener]]` table): a listener's clients
//! publish, subscribe, unsubscribe and leave wills under a topic prefix, and
//! receive topics without it; two mountpoints are isolated from each other,
//! a client of a plain listener sees the prefixed topics, and `$SYS` is left
//! alone.

mod common;
mod transport_support;

use std::net::SocketAddr;

use bytes::Bytes;
use common::Raw;
use starling_broker::config::ListenerConfig;
use starling_broker::{Broker, Config};
use starling_codec::{
    Connect, Disconnect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions, Unsubscribe, Will,
};
use tokio::net::TcpStream;
use transport_support::{connect_over, Running};

struct Setup {
    b: Running,
    plain: SocketAddr,
    a: SocketAddr,
    b_addr: SocketAddr,
}

fn config() -> Config {
    let mounted = |m: &str| ListenerConfig {
        url: "mqtt://127.0.0.1:0".into(),
        mountpoint: Some(m.into()),
        ..ListenerConfig::default()
    };
    Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        listener: vec![mounted("tenant/a/"), mounted("tenant/b/")],
        ..Config::default()
    }
}

async fn setup() -> Setup {
    let b = Running::start(config()).await;
    Setup {
        plain: b.addrs[0],
        a: b.addrs[1],
        b_addr: b.addrs[2],
        b,
    }
}

/// A raw peer that keeps the PUBLISHes arriving while it waits for something else.
struct Peer {
    raw: Raw,
    got: Vec<String>,
}

async fn client_with(addr: SocketAddr, connect: Connect) -> Peer {
    let (raw, code) = connect_over(TcpStream::connect(addr).await.unwrap(), connect).await;
    assert_eq!(code, 0);
    Peer {
        raw,
        got: Vec::new(),
    }
}

async fn client(addr: SocketAddr, id: &str) -> Peer {
    client_with(addr, Connect::new(V::V5, id)).await
}

impl Peer {
    /// The next packet that is not a PUBLISH (those are acknowledged and kept).
    async fn next(&mut self) -> Packet {
        loop {
            match self.raw.recv().await {
                Packet::Publish(p) => {
                    self.got.push(p.topic.to_string());
                    if p.qos != QoS::AtMostOnce {
                        self.raw
                            .send(Packet::PubAck(starling_codec::Ack::new(p.packet_id)))
                            .await;
                    }
                }
                other => return other,
            }
        }
    }

    async fn send(&mut self, p: Packet) {
        self.raw.send(p).await;
    }

    /// Topics of the PUBLISHes that arrived, up to a ping round trip.
    async fn received(&mut self) -> Vec<String> {
        self.send(Packet::PingReq).await;
        assert!(matches!(self.next().await, Packet::PingResp));
        std::mem::take(&mut self.got)
    }

    /// The next PUBLISH's topic.
    async fn next_topic(&mut self) -> String {
        if self.got.is_empty() {
            match self.raw.recv().await {
                Packet::Publish(p) => {
                    self.raw
                        .send(Packet::PubAck(starling_codec::Ack::new(p.packet_id)))
                        .await;
                    return p.topic.to_string();
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        self.got.remove(0)
    }
}

/// SUBACK reason code of one subscription.
async fn subscribe(c: &mut Peer, filter: &str) -> ReasonCode {
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 9,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    }))
    .await;
    match c.next().await {
        Packet::SubAck(ack) => ack.reason_codes[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn publish(c: &mut Peer, topic: &str, retain: bool) {
    let mut p = Publish::new(topic, &b"m"[..]);
    p.qos = QoS::AtLeastOnce;
    p.packet_id = 3;
    p.retain = retain;
    c.send(Packet::Publish(p)).await;
    match c.next().await {
        Packet::PubAck(ack) => assert!(!ack.reason_code.is_error(), "{ack:?}"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn received(c: &mut Peer) -> Vec<String> {
    c.received().await
}

fn subscriptions(b: &Running, id: &str) -> Vec<String> {
    let session = b.state.session(id).unwrap();
    session.filters().iter().map(|k| k.to_string()).collect()
}

#[tokio::test]
async fn mountpoints_isolate_listeners() {
    let s = setup().await;
    let mut on_a = client(s.a, "on-a").await;
    let mut on_b = client(s.b_addr, "on-b").await;
    let mut plain = client(s.plain, "plain").await;
    for c in [&mut on_a, &mut on_b, &mut plain] {
        assert_eq!(subscribe(c, "#").await, ReasonCode(1));
    }
    assert_eq!(subscribe(&mut on_a, "x/+").await, ReasonCode(1));
    assert_eq!(subscriptions(&s.b, "on-a"), ["tenant/a/#", "tenant/a/x/+"]);
    // A publish under A reaches A without the prefix, the plain listener with it, B not at all.
    publish(&mut on_a, "x/1", false).await;
    assert_eq!(received(&mut on_a).await, ["x/1"]);
    assert_eq!(received(&mut plain).await, ["tenant/a/x/1"]);
    assert!(received(&mut on_b).await.is_empty());
    // The plain listener publishes into B.
    publish(&mut plain, "tenant/b/y", false).await;
    assert_eq!(received(&mut on_b).await, ["y"]);
    assert!(received(&mut on_a).await.is_empty());
    assert_eq!(received(&mut plain).await, ["tenant/b/y"]);
    // Outside every mountpoint, and the mountpoint's parent level (which
    // `tenant/a/#` matches): only the plain client.
    publish(&mut plain, "elsewhere", false).await;
    publish(&mut plain, "tenant/a", false).await;
    assert!(received(&mut on_a).await.is_empty());
    assert!(received(&mut on_b).await.is_empty());
    assert_eq!(received(&mut plain).await, ["elsewhere", "tenant/a"]);
    // Unsubscribe takes the prefix too.
    on_a.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 4,
        properties: Default::default(),
        filters: vec!["x/+".into()],
    }))
    .await;
    match on_a.next().await {
        Packet::UnsubAck(ack) => assert_eq!(ack.reason_codes, [ReasonCode::SUCCESS]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    assert_eq!(subscriptions(&s.b, "on-a"), ["tenant/a/#"]);
    // Retained messages: stored under the prefix, delivered without it.
    publish(&mut on_b, "r/1", true).await;
    received(&mut on_b).await;
    received(&mut plain).await;
    let mut late = client(s.b_addr, "late").await;
    assert_eq!(subscribe(&mut late, "r/#").await, ReasonCode(1));
    assert_eq!(received(&mut late).await, ["r/1"]);
    let mut late_plain = client(s.plain, "late-plain").await;
    assert_eq!(
        subscribe(&mut late_plain, "tenant/+/r/#").await,
        ReasonCode(1)
    );
    assert_eq!(received(&mut late_plain).await, ["tenant/b/r/1"]);
    let mut late_a = client(s.a, "late-a").await;
    assert_eq!(subscribe(&mut late_a, "#").await, ReasonCode(1));
    assert!(received(&mut late_a).await.is_empty());
    s.b.stop().await;
}

#[tokio::test]
async fn will_topic_is_prefixed() {
    let s = setup().await;
    let mut plain = client(s.plain, "plain").await;
    assert_eq!(
        subscribe(&mut plain, "tenant/+/status").await,
        ReasonCode(1)
    );
    let mut on_a = client(s.a, "watch-a").await;
    assert_eq!(subscribe(&mut on_a, "status").await, ReasonCode(1));
    let mut c = Connect::new(V::V5, "dying");
    c.will = Some(Will {
        topic: "status".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut dying = client_with(s.a, c).await;
    dying
        .send(Packet::Disconnect(Disconnect::new(
            ReasonCode::DISCONNECT_WITH_WILL,
        )))
        .await;
    assert_eq!(plain.next_topic().await, "tenant/a/status");
    assert_eq!(on_a.next_topic().await, "status");
    s.b.stop().await;
}

#[tokio::test]
async fn shared_subscriptions_under_a_mountpoint() {
    let s = setup().await;
    let mut a1 = client(s.a, "a1").await;
    let mut a2 = client(s.a, "a2").await;
    let mut b1 = client(s.b_addr, "b1").await;
    for c in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(subscribe(c, "$share/g/jobs").await, ReasonCode(1));
    }
    assert_eq!(subscriptions(&s.b, "a1"), ["$share/g/tenant/a/jobs"]);
    assert_eq!(subscriptions(&s.b, "b1"), ["$share/g/tenant/b/jobs"]);
    let mut plain = client(s.plain, "plain").await;
    for _ in 0..4 {
        publish(&mut plain, "tenant/a/jobs", false).await;
    }
    let mut got = received(&mut a1).await;
    got.extend(received(&mut a2).await);
    assert_eq!(got, ["jobs"; 4]);
    assert!(received(&mut b1).await.is_empty());
    // A client of the plain listener joins A's group with the full filter.
    assert_eq!(
        subscribe(&mut plain, "$share/g/tenant/a/jobs").await,
        ReasonCode(1)
    );
    let mut a1_plain = 0;
    for _ in 0..6 {
        publish(&mut plain, "tenant/a/jobs", false).await;
    }
    let mut got = received(&mut a1).await;
    got.extend(received(&mut a2).await);
    for t in received(&mut plain).await {
        assert_eq!(t, "tenant/a/jobs");
        a1_plain += 1;
    }
    assert_eq!(got.len() + a1_plain, 6);
    assert!(a1_plain > 0, "round robin reaches the plain member");
    s.b.stop().await;
}

#[tokio::test]
async fn sys_topics_are_not_prefixed() {
    let s = setup().await;
    let mut on_a = client(s.a, "sys-a").await;
    assert_eq!(subscribe(&mut on_a, "$SYS/#").await, ReasonCode(1));
    assert_eq!(subscriptions(&s.b, "sys-a"), ["$SYS/#"]);
    starling_broker::publish_sys(&s.b.state);
    let got = received(&mut on_a).await;
    assert!(got.iter().any(|t| t == "$SYS/broker/version"), "{got:?}");
    assert!(got.iter().all(|t| t.starts_with("$SYS/broker/")), "{got:?}");
    s.b.stop().await;
}

#[tokio::test]
async fn mountpoints_are_checked() {
    for bad in ["a/#", "a/+/b", "$SYS/"] {
        let mut c = config();
        c.listener[0].mountpoint = Some(bad.into());
        let err = Broker::bind(Config {
            durability: starling_broker::store::Durability::None,
            ..c
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("mountpoint"), "{bad}: {err}");
    }
    // Without a trailing `/`, a filter that would share a level with it is invalid.
    let mut c = config();
    c.listener[0].mountpoint = Some("tenant".into());
    let b = Running::start(c).await;
    let mut raw = client(b.addrs[1], "no-slash").await;
    assert_eq!(
        subscribe(&mut raw, "#").await,
        ReasonCode::TOPIC_FILTER_INVALID
    );
    assert_eq!(subscribe(&mut raw, "/x").await, ReasonCode(1));
    assert_eq!(subscriptions(&b, "no-slash"), ["tenant/x"]);
    b.stop().await;
}

//! What one hostile client could do to the broker before: crash it with one
//! deep topic, brick its data directory with one retained message. Each
//! sequence runs against the broker on its defaults (and, where the point is
//! the tries themselves, with `max-topic-levels` raised out of the way): the
//! broker survives, the client gets the right reason code, and other clients
//! are still served.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{Raw, TestBroker};
use starling_broker::store::Durability;
use starling_broker::Config;
use starling_codec::{
    Connect, Disconnect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions, Unsubscribe, Will,
};

/// `n` levels of `+/`, then `#`: n + 1 levels.
fn deep_filter(n: usize) -> String {
    format!("{}#", "+/".repeat(n))
}

fn deep_topic(n: usize) -> String {
    format!("{}z", "a/".repeat(n))
}

async fn subscribe_codes(c: &mut Raw, filters: &[&str]) -> Vec<u8> {
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 7,
        properties: Default::default(),
        subscriptions: filters
            .iter()
            .map(|f| Subscription {
                filter: (*f).into(),
                options: SubscriptionOptions::default(),
            })
            .collect(),
    }))
    .await;
    match c.recv().await {
        Packet::SubAck(ack) => ack.reason_codes.iter().map(|c| c.0).collect(),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The broker still routes: a fresh subscriber gets a fresh publisher's message.
async fn still_serving(b: &TestBroker, tag: &str) {
    let mut sub = Raw::client(b.addr, V::V5, &format!("alive-sub-{tag}")).await;
    sub.subscribe("alive/+", QoS::AtLeastOnce).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, &format!("alive-pub-{tag}")).await;
    publ.publish("alive/x", b"yes", QoS::AtLeastOnce, 1).await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"yes");
}

/// The DISCONNECT reason of a connection the broker closes, if it sent one.
async fn closed_with(c: &mut Raw) -> Option<u8> {
    c.closed().await.into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code.0),
        _ => None,
    })
}

#[tokio::test]
async fn a_subscribe_deeper_than_the_limit_is_refused_per_filter() {
    let b = TestBroker::default().await;
    let limit = Config::default().max_topic_levels;
    assert_eq!(limit, 128);
    let ok = deep_filter(limit - 1); // exactly the limit
    let over = deep_filter(limit);
    let huge = deep_filter(10_000);
    let shared_over = format!("$share/g/{over}");
    let mut c = Raw::client(b.addr, V::V5, "deep5").await;
    let codes = subscribe_codes(&mut c, &[&ok, &over, &huge, &shared_over, "a/b"]).await;
    assert_eq!(codes, [0x00, 0x8F, 0x8F, 0x8F, 0x00]);
    // 3.x has one failure code.
    let mut c3 = Raw::client(b.addr, V::V3_1_1, "deep3").await;
    assert_eq!(subscribe_codes(&mut c3, &[&huge, "a"]).await, [0x80, 0x00]);
    // UNSUBSCRIBE of a filter that deep: 0x8F, nothing else happens.
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 8,
        properties: Default::default(),
        filters: vec![huge.as_str().into(), ok.as_str().into()],
    }))
    .await;
    match c.recv().await {
        Packet::UnsubAck(ack) => {
            let codes: Vec<u8> = ack.reason_codes.iter().map(|c| c.0).collect();
            assert_eq!(codes, [0x8F, 0x00]);
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    // A granted subscription at the limit matches a topic at the limit.
    let mut sub = Raw::client(b.addr, V::V5, "at-limit").await;
    sub.subscribe(&deep_filter(limit - 1), QoS::AtMostOnce)
        .await;
    let topic = deep_topic(limit - 1);
    let mut publ = Raw::client(b.addr, V::V5, "at-limit-pub").await;
    publ.publish(&topic, b"deep", QoS::AtLeastOnce, 1).await;
    assert_eq!(&sub.expect_publish().await.topic[..], topic.as_str());
    c.send(Packet::Disconnect(Disconnect::default())).await;
    still_serving(&b, "sub").await;
    b.stop().await;
}

#[tokio::test]
async fn a_publish_deeper_than_the_limit_closes_with_0x90() {
    let b = TestBroker::default().await;
    // A subscriber whose filter would match it, if it got through.
    let mut sub = Raw::client(b.addr, V::V5, "watch").await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    for (i, topic) in ["/".repeat(65_535), deep_topic(128), deep_topic(10_000)]
        .into_iter()
        .enumerate()
    {
        for (retain, payload) in [(false, &b"x"[..]), (true, b"x"), (true, b"")] {
            let mut c = Raw::client(b.addr, V::V5, &format!("p{i}-{retain}")).await;
            let mut p = Publish::new(topic.as_str(), Bytes::from_static(payload));
            p.qos = QoS::AtLeastOnce;
            p.packet_id = 1;
            p.retain = retain;
            c.send(Packet::Publish(p)).await;
            assert_eq!(
                closed_with(&mut c).await,
                Some(ReasonCode::TOPIC_NAME_INVALID.0)
            );
        }
        // 3.x: closed without a DISCONNECT.
        let mut c = Raw::client(b.addr, V::V3_1_1, &format!("p{i}-3")).await;
        c.send(Packet::Publish(Publish::new(topic.as_str(), "x")))
            .await;
        assert_eq!(closed_with(&mut c).await, None);
    }
    // Nothing was routed or retained.
    assert!(sub.sync().await.is_empty());
    assert!(b.state.retained_count() == 0);
    still_serving(&b, "pub").await;
    b.stop().await;
}

#[tokio::test]
async fn a_will_deeper_than_the_limit_is_refused_at_connect() {
    let b = TestBroker::default().await;
    for v in [V::V5, V::V3_1_1] {
        let mut connect = Connect::new(v, format!("will{}", v.level()).as_str());
        connect.will = Some(Will {
            topic: deep_topic(10_000).into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
        });
        let mut c = Raw::open(b.addr, v).await;
        c.send(Packet::Connect(Box::new(connect))).await;
        let got = c.closed().await;
        match v {
            V::V5 => assert!(
                matches!(&got[..], [Packet::ConnAck(a)] if a.reason_code == ReasonCode::TOPIC_NAME_INVALID),
                "{got:?}"
            ),
            _ => assert!(got.is_empty(), "3.x: closed without a CONNACK: {got:?}"),
        }
    }
    still_serving(&b, "will").await;
    b.stop().await;
}

/// With the limit raised out of the way, the tries themselves take topics
/// and filters of tens of thousands of levels: subscribe, match, retain,
/// clear, retained lookup on subscribe, unsubscribe and disconnect, on the
/// test thread's ordinary stack.
#[tokio::test]
async fn the_tries_do_not_recurse_per_level() {
    let b = TestBroker::start(Config {
        max_topic_levels: 65_536,
        max_topic_length: 65_535,
        ..Config::default()
    })
    .await;
    let n = 30_000;
    let mut deep = Raw::client(b.addr, V::V5, "deep-sub").await;
    deep.subscribe(&deep_filter(n), QoS::AtMostOnce).await;
    deep.subscribe(&"/".repeat(60_000), QoS::AtMostOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "deep-pub").await;
    let topic = deep_topic(n);
    publ.publish(&"/".repeat(60_000), b"slashes", QoS::AtLeastOnce, 1)
        .await;
    assert_eq!(&deep.expect_publish().await.payload[..], b"slashes");
    let mut p = Publish::new(topic.as_str(), "kept");
    p.retain = true;
    p.qos = QoS::AtLeastOnce;
    p.packet_id = 2;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    assert_eq!(&deep.expect_publish().await.payload[..], b"kept");
    // A new subscriber gets the deep retained message through a deep filter.
    let mut late = Raw::client(b.addr, V::V5, "late").await;
    late.subscribe(&deep_filter(n - 1), QoS::AtMostOnce).await;
    assert_eq!(&late.expect_publish().await.payload[..], b"kept");
    // Clearing it, unsubscribing and disconnecting walk the same depths.
    let mut clear = Publish::new(topic.as_str(), "");
    clear.retain = true;
    publ.send(Packet::Publish(clear)).await;
    assert!(publ.sync().await.is_empty());
    assert!(b.state.retained_count() == 0);
    // (the clearing message is routed too)
    assert!(deep.expect_publish().await.payload.is_empty());
    deep.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        properties: Default::default(),
        filters: vec![deep_filter(n).as_str().into()],
    }))
    .await;
    assert!(matches!(deep.recv().await, Packet::UnsubAck(_)));
    deep.send(Packet::Disconnect(Disconnect::default())).await;
    deep.closed().await;
    late.send(Packet::Disconnect(Disconnect::default())).await;
    late.closed().await;
    still_serving(&b, "tries").await;
    assert_eq!(
        b.state.subscription_count(),
        1,
        "only the alive subscription"
    );
    b.stop().await;
}

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("starling-security-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A data directory that holds a retained message and a persistent
/// subscription deeper than the limit (written under a higher one) still
/// starts: the records are skipped with a log line, and come back when the
/// limit is raised again.
#[tokio::test]
async fn a_restart_on_a_too_deep_record_starts_and_skips_it() {
    let dir = data_dir("too-deep");
    let raised = Config {
        data_dir: dir.clone(),
        durability: Durability::Always,
        max_topic_levels: 65_536,
        max_topic_length: 65_535,
        ..Config::default()
    };
    let b = TestBroker::start(raised.clone()).await;
    let mut publ = Raw::client(b.addr, V::V5, "brick").await;
    let mut p = Publish::new(deep_topic(10_000).as_str(), "retained");
    p.retain = true;
    p.qos = QoS::AtLeastOnce;
    p.packet_id = 1;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    let mut persistent = Connect::new(V::V5, "deep-persistent");
    persistent.clean_start = false;
    persistent.properties.session_expiry_interval = Some(3600);
    let (mut s, _) = Raw::connect(b.addr, persistent.clone()).await;
    s.subscribe(&deep_filter(10_000), QoS::AtLeastOnce).await;
    s.send(Packet::Disconnect(Disconnect::default())).await;
    s.closed().await;
    b.stop().await;

    let defaults = Config {
        max_topic_levels: 128,
        ..raised.clone()
    };
    let b = TestBroker::start(defaults).await;
    assert!(b.state.retained_count() == 0, "the deep record is skipped");
    assert_eq!(b.state.subscription_count(), 0);
    still_serving(&b, "restart").await;
    b.stop().await;

    let b = TestBroker::start(raised).await;
    assert_eq!(b.state.retained_count(), 1, "kept in the store");
    let mut late = Raw::client(b.addr, V::V5, "late").await;
    late.subscribe("a/#", QoS::AtMostOnce).await;
    assert_eq!(&late.expect_publish().await.payload[..], b"retained");
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The process's resident memory, in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// 200 wrong-password CONNECTs at once, for a known user and for unknown
/// ones: the first are answered 0x86, the rest 0x86 or 0x9F; hashing memory
/// stays bounded by the authentication pool; and the right password from
/// the same address gets in right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_logins_is_bounded_and_the_right_password_gets_in() {
    let dir = data_dir("burst");
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwd");
    let hash = starling_broker::auth::hash_password("s3cret").unwrap();
    std::fs::write(&passwords, format!("alice:{hash}\n")).unwrap();
    let b = TestBroker::start(Config {
        allow_anonymous: false,
        password_file: Some(passwords),
        ..Config::default()
    })
    .await;
    let login = |id: String, user: &str, password: &str| {
        let mut c = Connect::new(V::V5, id.as_str());
        c.username = Some(user.into());
        c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        c
    };
    let before = rss_mib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_mib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    for user in ["alice", "mallory"] {
        let attempts = (0..200).map(|i| {
            let connect = login(format!("{user}{i}"), user, "wrong");
            async move { Raw::connect(b.addr, connect).await.1.reason_code.0 }
        });
        let codes = futures_util::future::join_all(attempts).await;
        let bad = codes.iter().filter(|&&c| c == 0x86).count();
        let limited = codes.iter().filter(|&&c| c == 0x9F).count();
        assert_eq!(bad + limited, 200, "{user}: only 0x86 and 0x9F: {codes:?}");
        assert!(bad >= 10, "{user}: the first failures are 0x86 ({bad})");
        assert!(limited > 0, "{user}: a burst is limited");
    }
    sampling.abort();
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed) - before;
    // Two threads of 7 MiB of argon2 memory, plus 400 connections' buffers.
    eprintln!("RSS before the bursts {before} MiB, grew by at most {grown} MiB");
    assert!(grown < 100, "RSS grew by {grown} MiB during the burst");
    let (_c, ack) = Raw::connect(b.addr, login("right".into(), "alice", "s3cret")).await;
    assert_eq!(ack.reason_code.0, 0, "the right password gets in");
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn topics_and_filters_longer_than_the_limit_are_refused() {
    let b = TestBroker::default().await;
    let limit = Config::default().max_topic_length;
    assert_eq!(limit, 4096);
    let ok = "a".repeat(limit);
    let over = "a".repeat(limit + 1);
    let mut c = Raw::client(b.addr, V::V5, "long-sub").await;
    let before = b.state.metrics.subscribe_refusals.get(0)
        + b.state.metrics.subscribe_refusals.get(1)
        + b.state.metrics.subscribe_refusals.get(2);
    assert_eq!(subscribe_codes(&mut c, &[&ok, &over]).await, [0x00, 0x8F]);
    let after = b.state.metrics.subscribe_refusals.get(0)
        + b.state.metrics.subscribe_refusals.get(1)
        + b.state.metrics.subscribe_refusals.get(2);
    assert_eq!(after, before + 1, "the refusal is counted");
    // A PUBLISH to a longer topic closes the connection with 0x90.
    let mut p = Raw::client(b.addr, V::V5, "long-pub").await;
    p.send(Packet::Publish(Publish::new(
        over.as_str(),
        Bytes::from_static(b"x"),
    )))
    .await;
    assert_eq!(closed_with(&mut p).await, Some(0x90));
    still_serving(&b, "long-sub").await;
    b.stop().await;
}

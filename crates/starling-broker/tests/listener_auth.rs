//! Per-listener password and ACL files (`password-file`, `acl-file` in a
//! `[[listener]]` table): clients of a listener are authenticated against its
//! password file and checked against its ACL (publish, subscribe, delivery,
//! will) instead of the broker's, and both files reload with the reload handle.

mod common;
mod transport_support;

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use common::Raw;
use starling_broker::auth::{hash_password, PasswordFile};
use starling_broker::config::ListenerConfig;
use starling_broker::Config;
use starling_codec::{
    Connect, Disconnect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions, Will,
};
use tokio::net::TcpStream;
use transport_support::{connect_over, Pki, Running};

fn passwords(path: PathBuf, password: &str) -> PathBuf {
    let mut f = PasswordFile::default();
    f.set("bob", hash_password(password).unwrap());
    std::fs::write(&path, f.to_text()).unwrap();
    path
}

fn login(id: &str, password: &str) -> Connect {
    let mut c = Connect::new(V::V5, id);
    c.username = Some("bob".into());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn try_connect(addr: SocketAddr, connect: Connect) -> (Raw, u8) {
    connect_over(TcpStream::connect(addr).await.unwrap(), connect).await
}

async fn connected(addr: SocketAddr, connect: Connect) -> Raw {
    let (raw, code) = try_connect(addr, connect).await;
    assert_eq!(code, 0);
    raw
}

/// SUBACK reason code of one subscription.
async fn subscribe(raw: &mut Raw, filter: &str) -> ReasonCode {
    raw.send(Packet::Subscribe(Subscribe {
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
    match raw.recv().await {
        Packet::SubAck(ack) => ack.reason_codes[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// PUBACK reason code of a QoS 1 publish.
async fn publish(raw: &mut Raw, topic: &str) -> ReasonCode {
    let mut p = Publish::new(topic, &b"m"[..]);
    p.qos = QoS::AtLeastOnce;
    p.packet_id = 3;
    raw.send(Packet::Publish(p)).await;
    match raw.recv().await {
        Packet::PubAck(ack) => ack.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Topics of the PUBLISHes that arrived (acknowledged), up to a ping round trip.
async fn received(raw: &mut Raw) -> Vec<String> {
    let mut topics = Vec::new();
    for p in raw.sync().await {
        if let Packet::Publish(p) = p {
            topics.push(p.topic.to_string());
            if p.qos != QoS::AtMostOnce {
                raw.send(Packet::PubAck(starling_codec::Ack::new(p.packet_id)))
                    .await;
            }
        }
    }
    topics
}

struct Setup {
    _dir: Pki,
    b: Running,
    /// The `listen` URL: the broker's files.
    global: SocketAddr,
    a: SocketAddr,
    b_addr: SocketAddr,
    acl_a: PathBuf,
    pw_a: PathBuf,
    acl_b: PathBuf,
}

async fn setup(name: &str) -> Setup {
    let dir = Pki::new(name);
    let global_pw = passwords(dir.path("global.passwd"), "global");
    let pw_a = passwords(dir.path("a.passwd"), "alpha");
    let pw_b = passwords(dir.path("b.passwd"), "beta");
    let acl_a = dir.path("a.acl");
    std::fs::write(&acl_a, "user bob\ntopic readwrite a/#\n").unwrap();
    let acl_b = dir.path("b.acl");
    std::fs::write(
        &acl_b,
        "user bob\ntopic readwrite b/#\ntopic write will/b\n",
    )
    .unwrap();
    let global_acl = dir.path("global.acl");
    std::fs::write(&global_acl, "user bob\ntopic readwrite #\n").unwrap();
    let b = Running::start(Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        listener: vec![
            ListenerConfig {
                url: "mqtt://127.0.0.1:0".into(),
                password_file: Some(pw_a.clone()),
                acl_file: Some(acl_a.clone()),
                ..ListenerConfig::default()
            },
            ListenerConfig {
                url: "mqtt://127.0.0.1:0".into(),
                password_file: Some(pw_b),
                acl_file: Some(acl_b.clone()),
                ..ListenerConfig::default()
            },
        ],
        allow_anonymous: false,
        password_file: Some(global_pw),
        acl_file: Some(global_acl),
        auth_failure_limit: 0,
        ..Config::default()
    })
    .await;
    Setup {
        _dir: dir,
        global: b.addrs[0],
        a: b.addrs[1],
        b_addr: b.addrs[2],
        b,
        acl_a,
        pw_a,
        acl_b,
    }
}

const BAD: u8 = ReasonCode::BAD_USER_NAME_OR_PASSWORD.0;

#[tokio::test]
async fn each_listener_authenticates_against_its_own_password_file() {
    let s = setup("lauth-pw").await;
    for (addr, good) in [(s.global, "global"), (s.a, "alpha"), (s.b_addr, "beta")] {
        for password in ["global", "alpha", "beta"] {
            let (_r, code) = try_connect(addr, login("pw", password)).await;
            let want = if password == good { 0 } else { BAD };
            assert_eq!(code, want, "{password} on the {good} listener");
        }
    }
    // Anonymous is still off on the listeners (the top-level setting).
    let (_r, code) = try_connect(s.a, Connect::new(V::V5, "anon")).await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED.0);

    // Reload: the new password works, the old one no longer does, and a
    // client connected with the old one stays connected.
    let mut kept = connected(s.a, login("kept", "alpha")).await;
    passwords(s.pw_a.clone(), "alpha-2");
    s.b.reload.reload().unwrap();
    assert_eq!(try_connect(s.a, login("pw", "alpha")).await.1, BAD);
    assert_eq!(try_connect(s.a, login("pw", "alpha-2")).await.1, 0);
    assert_eq!(try_connect(s.b_addr, login("pw", "beta")).await.1, 0);
    assert!(kept.sync().await.is_empty());
    s.b.stop().await;
}

#[tokio::test]
async fn each_listener_checks_its_own_acl() {
    let s = setup("lauth-acl").await;
    let mut on_a = connected(s.a, login("on-a", "alpha")).await;
    let mut on_b = connected(s.b_addr, login("on-b", "beta")).await;
    let mut on_g = connected(s.global, login("on-g", "global")).await;
    // Subscribe.
    assert_eq!(subscribe(&mut on_a, "a/#").await, ReasonCode(1));
    assert_eq!(
        subscribe(&mut on_a, "b/#").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(subscribe(&mut on_b, "b/#").await, ReasonCode(1));
    assert_eq!(
        subscribe(&mut on_b, "a/#").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(subscribe(&mut on_g, "#").await, ReasonCode(1));
    // Publish.
    assert_eq!(publish(&mut on_a, "b/x").await, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(publish(&mut on_b, "a/x").await, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(publish(&mut on_a, "a/1").await, ReasonCode::SUCCESS);
    assert_eq!(publish(&mut on_b, "b/1").await, ReasonCode::SUCCESS);
    assert_eq!(received(&mut on_a).await, ["a/1"]);
    assert_eq!(received(&mut on_b).await, ["b/1"]);
    assert_eq!(received(&mut on_g).await, ["a/1", "b/1"]);

    // Delivery-time read checks use the listener's ACL as it is now: after a
    // reload that takes read access away, a/# is no longer delivered to on-a.
    std::fs::write(&s.acl_a, "user bob\ntopic write a/#\n").unwrap();
    s.b.reload.reload().unwrap();
    assert_eq!(publish(&mut on_g, "a/2").await, ReasonCode::SUCCESS);
    assert_eq!(received(&mut on_a).await, Vec::<String>::new());
    assert_eq!(received(&mut on_g).await, ["a/2"]);
    // A bad file changes nothing.
    std::fs::write(&s.acl_b, "frobnicate b/#\n").unwrap();
    assert!(s.b.reload.reload().is_err());
    assert_eq!(publish(&mut on_g, "b/2").await, ReasonCode::SUCCESS);
    assert_eq!(received(&mut on_b).await, ["b/2"]);
    s.b.stop().await;
}

#[tokio::test]
async fn wills_are_checked_against_the_listener_acl() {
    let s = setup("lauth-will").await;
    let mut watcher = connected(s.global, login("watch", "global")).await;
    assert_eq!(subscribe(&mut watcher, "will/#").await, ReasonCode(1));
    // will/a is outside the listener's ACL, will/b inside; the top-level ACL
    // would allow both.
    for topic in ["will/a", "will/b"] {
        let mut c = login(&format!("dying-{topic}"), "beta");
        c.will = Some(Will {
            topic: topic.into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        let mut dying = connected(s.b_addr, c).await;
        dying
            .send(Packet::Disconnect(Disconnect::new(
                ReasonCode::DISCONNECT_WITH_WILL,
            )))
            .await;
        assert!(dying.closed().await.is_empty());
    }
    // Wills go out in the order of the closes: the allowed one is the only one.
    let will = watcher.expect_publish().await;
    assert_eq!(&*will.topic, "will/b");
    watcher
        .send(Packet::PubAck(starling_codec::Ack::new(will.packet_id)))
        .await;
    assert!(received(&mut watcher).await.is_empty());
    s.b.stop().await;
}

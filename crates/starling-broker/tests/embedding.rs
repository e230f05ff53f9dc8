//! The embedding API (`Broker::builder`): a custom authentication source,
//! authorization source and event observer, each used.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{Raw, TestBroker};
use parking_lot::Mutex;
use starling_broker::auth::chain::Client;
use starling_broker::auth::{Access, AuthnSource, AuthzSource, Credentials, Verdict};
use starling_broker::events::{Event, EventObserver};
use starling_broker::{Broker, Config};
use starling_codec::{Connect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode};
use tokio::sync::Notify;

struct Devices;
impl AuthnSource for Devices {
    fn name(&self) -> &str {
        "devices"
    }
    fn authenticate(&self, c: &Credentials<'_>) -> Verdict {
        match (c.username, c.password) {
            (Some("device-1"), Some(b"s3cret")) => Verdict::Allow,
            _ => Verdict::Deny,
        }
    }
    fn is_slow(&self, _: &Credentials<'_>) -> bool {
        false
    }
}

struct OwnTopics;
impl AuthzSource for OwnTopics {
    fn name(&self) -> &str {
        "own-topics"
    }
    fn authorize(&self, c: &Client<'_>, topic: &str, _: Access) -> Verdict {
        match c.username {
            Some(u) if topic.starts_with(&format!("devices/{u}/")) => Verdict::Allow,
            _ => Verdict::Deny,
        }
    }
}

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
    changed: Notify,
}
impl EventObserver for Recorder {
    fn observe(&self, event: &Event) {
        let line = match event {
            Event::ClientConnected { client_id, .. } => format!("connected {client_id}"),
            Event::MessagePublished { message, .. } => format!("published {}", message.topic),
            _ => return,
        };
        self.seen.lock().push(line);
        self.changed.notify_waiters();
    }
}

#[tokio::test]
async fn a_custom_authenticator_authorizer_and_observer_are_each_used() {
    let recorder = Arc::new(Recorder::default());
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        allow_anonymous: false,
        sys_interval: 0,
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    };
    let broker = Broker::builder(config)
        .authenticate(Arc::new(Devices))
        .authorize(Arc::new(OwnTopics))
        .observe(recorder.clone())
        .bind()
        .await
        .unwrap();
    let b = TestBroker::run(broker);
    let login = |password: &str| {
        let mut c = Connect::new(V::V5, "d1");
        c.username = Some("device-1".into());
        c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        c
    };
    let (_, ack) = Raw::connect(b.addr, login("wrong")).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let (mut c, ack) = Raw::connect(b.addr, login("s3cret")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    for (topic, id, allowed) in [
        ("devices/device-1/t", 1, true),
        ("devices/device-2/t", 2, false),
    ] {
        let mut p = Publish::new(topic, &b"x"[..]);
        p.qos = QoS::AtLeastOnce;
        p.packet_id = id;
        c.send(Packet::Publish(p)).await;
        match c.recv().await {
            Packet::PubAck(a) => assert_eq!(!a.reason_code.is_error(), allowed, "{topic}"),
            other => panic!("{other:?}"),
        }
    }
    tokio::time::timeout(common::WAIT, async {
        loop {
            let changed = recorder.changed.notified();
            let seen = recorder.seen.lock().clone();
            if seen.contains(&"published devices/device-1/t".to_string()) {
                assert!(seen.contains(&"connected d1".to_string()));
                assert!(!seen.iter().any(|s| s.contains("device-2")));
                return;
            }
            changed.await;
        }
    })
    .await
    .expect("the observer sees the connection and the publish");
    b.stop().await;
}

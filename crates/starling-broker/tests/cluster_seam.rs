//! The cluster seam: a recording implementation sees every message accepted
//! here forwarded once, interest follow subscriptions, sessions claimed before
//! the CONNACK and released when they end; a refused claim refuses the client.

mod common;

use std::sync::Arc;

use common::{Raw, TestBroker};
use parking_lot::Mutex;
use starling_broker::cluster::{Cluster, ClusterFuture, Ownership};
use starling_broker::message::Message;
use starling_broker::{Broker, Config};
use starling_codec::{Connect, Disconnect, Packet, ProtocolVersion as V, QoS, Unsubscribe, Will};

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
    /// Whether QoS 1/2 messages are held (their acknowledgements wait).
    hold: bool,
    held: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// Per message forwarded: its topic and whether it is withdrawable.
    withdrawable: Mutex<Vec<(String, bool)>>,
    /// How long claims of client ids beginning with "slow" take.
    slow_claim: std::time::Duration,
    /// How long client ids beginning with "queued" wait for an earlier
    /// claim of theirs before their own.
    turn_wait: std::time::Duration,
}

impl Cluster for Recorder {
    fn forward(
        &self,
        message: &Arc<Message>,
        _: Option<(u64, u64)>,
        withdrawable: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.log.lock().push(format!("forward {}", message.topic));
        self.withdrawable
            .lock()
            .push((message.topic.to_string(), withdrawable));
        if message.qos == QoS::AtMostOnce {
            return None;
        }
        let (kept, wait) = tokio::sync::oneshot::channel();
        if self.hold {
            self.held.lock().push(kept);
        } else {
            let _ = kept.send(());
        }
        Some(wait)
    }
    fn interest(&self, filter: &str, added: bool) {
        self.log.lock().push(format!("interest {filter} {added}"));
    }
    fn await_turn(&self, client_id: &str) -> ClusterFuture<bool> {
        if !client_id.starts_with("queued") {
            return Box::pin(std::future::ready(false));
        }
        let wait = self.turn_wait;
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            true
        })
    }

    fn claim(&self, client_id: &str, _persistent: bool) -> ClusterFuture<Ownership> {
        self.log.lock().push(format!("claim {client_id}"));
        let answer = if client_id == "elsewhere" {
            Ownership::Unavailable
        } else {
            Ownership::Local
        };
        if client_id.starts_with("slow") {
            let slow = self.slow_claim;
            return Box::pin(async move {
                tokio::time::sleep(slow).await;
                answer
            });
        }
        Box::pin(std::future::ready(answer))
    }
    fn release(&self, client_id: &str) {
        self.log.lock().push(format!("release {client_id}"));
    }
}

/// A broker without a store whose cluster seam is `recorder`.
async fn broker_with(recorder: Arc<Recorder>) -> TestBroker {
    let broker = Broker::bind(Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        sys_interval: 0,
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    })
    .await
    .unwrap();
    assert!(broker.state().set_cluster(recorder));
    TestBroker::run(broker)
}

#[tokio::test]
async fn the_broker_tells_the_cluster_what_it_needs() {
    let recorder = Arc::new(Recorder::default());
    let b = broker_with(recorder.clone()).await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    sub.subscribe("c/+", QoS::AtLeastOnce).await;
    sub.subscribe("c/+", QoS::AtMostOnce).await; // a replacement: no new interest
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
    publ.publish("c/1", b"x", QoS::AtLeastOnce, 1).await;
    let _ = sub.expect_publish().await;
    sub.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Default::default(),
        filters: vec!["c/+".into()],
    }))
    .await;
    assert!(matches!(sub.recv().await, Packet::UnsubAck(_)));
    sub.subscribe("d/#", QoS::AtMostOnce).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    // A claim the cluster refuses: 0x88, server unavailable.
    let (_r, ack) = Raw::connect(b.addr, Connect::new(V::V5, "elsewhere")).await;
    assert_eq!(ack.reason_code.0, 0x88);
    publ.sync().await;
    let log = recorder.log.lock().clone();
    let expected = [
        "claim sub",
        "interest c/+ true",
        "claim pub",
        "forward c/1",
        "interest c/+ false",
        "interest d/# true",
        "interest d/# false",
        "release sub",
        "claim elsewhere",
    ];
    assert_eq!(log, expected);
    b.stop().await;
}

/// A PUBACK (and a PUBREC) waits until the cluster holds the message where
/// no node's death loses it; acknowledgements keep their order.
#[tokio::test]
async fn an_acknowledgement_waits_for_the_cluster_to_keep_the_message() {
    let recorder = Arc::new(Recorder {
        hold: true,
        ..Recorder::default()
    });
    let b = broker_with(recorder.clone()).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    for (topic, qos, id) in [
        ("c/1", QoS::AtLeastOnce, 1),
        ("c/2", QoS::AtMostOnce, 0),
        ("c/3", QoS::ExactlyOnce, 2),
    ] {
        let mut p = starling_codec::Publish::new(topic, &b"x"[..]);
        p.qos = qos;
        p.packet_id = id;
        publ.send(Packet::Publish(p)).await;
    }
    // Nothing acknowledged while the cluster holds both: a PINGRESP (sent
    // at once) comes first.
    publ.send(Packet::PingReq).await;
    assert!(matches!(publ.recv().await, Packet::PingResp));
    let held: Vec<_> = std::mem::take(&mut *recorder.held.lock());
    assert_eq!(held.len(), 2, "QoS 1 and 2 held, QoS 0 not");
    for kept in held {
        let _ = kept.send(());
    }
    assert!(matches!(publ.recv().await, Packet::PubAck(a) if a.packet_id == 1));
    assert!(matches!(publ.recv().await, Packet::PubRec(a) if a.packet_id == 2));
    b.stop().await;
}

/// A message whose publisher may leave unacknowledged without being owed
/// anything more (QoS 1: it sends it again; a clean session's QoS 2) is
/// withdrawable; a persistent session's QoS 2 one, whose resend the
/// session takes as a duplicate, is not. A publisher gone unacknowledged
/// drops what the cluster's receiver waits for.
#[tokio::test]
async fn the_cluster_is_told_which_messages_it_may_withdraw() {
    let recorder = Arc::new(Recorder {
        hold: true,
        ..Recorder::default()
    });
    let b = broker_with(recorder.clone()).await;
    let mut clean = Raw::client(b.addr, V::V5, "clean").await;
    let mut connect = Connect::new(V::V5, "kept");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    let (mut kept, _) = Raw::connect(b.addr, connect).await;
    for (which, topic, qos, id) in [
        (0, "w/clean1", QoS::AtLeastOnce, 1),
        (0, "w/clean2", QoS::ExactlyOnce, 2),
        (1, "w/kept1", QoS::AtLeastOnce, 1),
        (1, "w/kept2", QoS::ExactlyOnce, 2),
    ] {
        let p = if which == 0 { &mut clean } else { &mut kept };
        let mut publish = starling_codec::Publish::new(topic, &b"x"[..]);
        publish.qos = qos;
        publish.packet_id = id;
        p.send(Packet::Publish(publish)).await;
        p.send(Packet::PingReq).await;
        assert!(matches!(p.recv().await, Packet::PingResp));
    }
    let told = recorder.withdrawable.lock().clone();
    let expected = [
        ("w/clean1", true),
        ("w/clean2", true),
        ("w/kept1", true),
        ("w/kept2", false),
    ];
    let told: Vec<(&str, bool)> = told.iter().map(|(t, w)| (t.as_str(), *w)).collect();
    assert_eq!(told, expected);
    // The clean publisher goes, unacknowledged: its two waits are dropped.
    drop(clean);
    let held: Vec<_> = std::mem::take(&mut *recorder.held.lock());
    for (n, mut sender) in held.into_iter().take(2).enumerate() {
        tokio::time::timeout(std::time::Duration::from_secs(5), sender.closed())
            .await
            .unwrap_or_else(|_| panic!("wait {n} of the gone publisher dropped"));
    }
    b.stop().await;
}

fn with_will(id: &str) -> Connect {
    let mut c = Connect::new(V::V5, id);
    c.will = Some(Will {
        topic: format!("will/{id}").as_str().into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    c
}

/// A client that closes its connection while the cluster claims its id
/// (for a second or more) gave up on that CONNECT: nothing attaches, no
/// CONNACK, and its will is not published (it may be connected elsewhere
/// by now). One that stays through the same slow claim is attached, and
/// its will goes when it drops.
#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_during_a_slow_claim_is_not_attached() {
    let recorder = Arc::new(Recorder {
        slow_claim: std::time::Duration::from_secs(3),
        ..Recorder::default()
    });
    let b = broker_with(recorder.clone()).await;
    let mut watcher = Raw::client(b.addr, V::V5, "watcher").await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut gone = Raw::open(b.addr, V::V5).await;
    gone.send(Packet::Connect(Box::new(with_will("slow-gone"))))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(gone);
    let mut stays = Raw::open(b.addr, V::V5).await;
    stays
        .send(Packet::Connect(Box::new(with_will("slow-stays"))))
        .await;
    match stays.recv().await {
        Packet::ConnAck(ack) => assert!(!ack.reason_code.is_error(), "{ack:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(
        b.state.session("slow-gone").is_none(),
        "the client that left is not attached"
    );
    drop(stays);
    match watcher.recv().await {
        Packet::Publish(p) => assert_eq!(p.topic, "will/slow-stays"),
        other => panic!("expected the will of the client that stayed, got {other:?}"),
    }
    // Nothing else comes: the client that left has no will published.
    watcher.send(Packet::PingReq).await;
    assert!(matches!(watcher.recv().await, Packet::PingResp));
    b.stop().await;
}

/// A client that closes its connection while its CONNECT waits for an
/// earlier claim of its id on the node is not claimed for at all: the
/// claim would take its session from the connection it made since. One
/// that stays through the same wait is claimed for and attached.
#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_its_connect_waits_for_an_earlier_claim_is_not_claimed_for() {
    let recorder = Arc::new(Recorder {
        turn_wait: std::time::Duration::from_secs(3),
        ..Recorder::default()
    });
    let b = broker_with(recorder.clone()).await;
    let mut gone = Raw::open(b.addr, V::V5).await;
    gone.send(Packet::Connect(Box::new(with_will("queued-gone"))))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(gone);
    let mut stays = Raw::open(b.addr, V::V5).await;
    stays
        .send(Packet::Connect(Box::new(with_will("queued-stays"))))
        .await;
    match stays.recv().await {
        Packet::ConnAck(ack) => assert!(!ack.reason_code.is_error(), "{ack:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let log = recorder.log.lock().clone();
    assert!(log.contains(&"claim queued-stays".to_string()), "{log:?}");
    assert!(
        !log.contains(&"claim queued-gone".to_string()),
        "no claim for the client that left: {log:?}"
    );
    assert!(b.state.session("queued-gone").is_none());
    b.stop().await;
}

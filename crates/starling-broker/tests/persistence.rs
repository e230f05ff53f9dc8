//! Persistent sessions across a broker restart: subscriptions, queued messages
//! in order, in-flight messages with DUP, exactly-once QoS 2 state, retained
//! messages, expiry, and corruption tolerance.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{Raw, TestBroker};
use starling_broker::store::Durability;
use starling_broker::Config;
use starling_codec::{Ack, Connect, Disconnect, Packet, ProtocolVersion as V, Publish, QoS};

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("starling-persist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(dir: &std::path::Path, durability: Durability) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        durability,
        ..Config::default()
    }
}

fn persistent(v: V, id: &str) -> Connect {
    let mut c = Connect::new(v, id);
    c.clean_start = false;
    if v == V::V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

async fn restart(b: TestBroker, cfg: Config) -> TestBroker {
    b.stop().await;
    TestBroker::start(cfg).await
}

#[tokio::test]
async fn queued_messages_and_subscriptions_survive_a_restart() {
    for durability in [Durability::Always, Durability::Periodic] {
        let dir = data_dir(&format!("queue-{durability:?}"));
        let b = TestBroker::start(config(&dir, durability)).await;
        for v in [V::V3_1_1, V::V5] {
            let (mut sub, _) =
                Raw::connect(b.addr, persistent(v, &format!("sub{}", v.level()))).await;
            sub.subscribe("p/+", QoS::ExactlyOnce).await;
            sub.send(Packet::Disconnect(Disconnect::default())).await;
            sub.closed().await;
        }
        let mut publ = Raw::client(b.addr, V::V5, "pub").await;
        for (i, payload) in [&b"one"[..], b"two", b"three"].into_iter().enumerate() {
            let mut p = Publish::new("p/x", Bytes::from_static(payload));
            p.qos = if i == 1 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            p.packet_id = i as u16 + 1;
            publ.send(Packet::Publish(p)).await;
            match publ.recv().await {
                Packet::PubAck(_) => {}
                Packet::PubRec(_) => {
                    publ.send(Packet::PubRel(Ack::new(i as u16 + 1))).await;
                    assert!(matches!(publ.recv().await, Packet::PubComp(_)));
                }
                other => panic!("{other:?}"),
            }
        }
        drop(publ);
        let b = restart(b, config(&dir, durability)).await;
        for v in [V::V3_1_1, V::V5] {
            let (mut sub, ack) =
                Raw::connect(b.addr, persistent(v, &format!("sub{}", v.level()))).await;
            assert!(
                ack.session_present,
                "{durability:?} {v}: session present after restart"
            );
            let mut got = Vec::new();
            // QoS 2 exchanges whose PUBREL has not come yet (with durability
            // "always" it follows the write of the released state).
            let mut open = Vec::new();
            while got.len() < 3 || !open.is_empty() {
                match sub.recv().await {
                    // The other version's live message (acknowledged below).
                    Packet::Publish(p) if &p.topic[..] == "p/y" => {
                        sub.send(Packet::PubAck(Ack::new(p.packet_id))).await
                    }
                    Packet::Publish(p) => {
                        got.push(p.payload.clone());
                        match p.qos {
                            QoS::AtLeastOnce => {
                                sub.send(Packet::PubAck(Ack::new(p.packet_id))).await
                            }
                            QoS::ExactlyOnce => {
                                open.push(p.packet_id);
                                sub.send(Packet::PubRec(Ack::new(p.packet_id))).await
                            }
                            QoS::AtMostOnce => {}
                        }
                    }
                    Packet::PubRel(r) => {
                        open.retain(|id| *id != r.packet_id);
                        sub.send(Packet::PubComp(Ack::new(r.packet_id))).await
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(
                got,
                [&b"one"[..], b"two", b"three"],
                "{durability:?} {v}: in order"
            );
            // Complete what is still open (and the other version's live message).
            for p in sub.sync().await {
                match p {
                    Packet::PubRel(r) => sub.send(Packet::PubComp(Ack::new(r.packet_id))).await,
                    Packet::Publish(p) => {
                        assert_eq!(&p.topic[..], "p/y");
                        sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
                    }
                    other => panic!("{other:?}"),
                }
            }
            // The subscription is still there: no resubscribe needed.
            let mut publ = Raw::client(b.addr, V::V5, "pub2").await;
            publ.publish("p/y", b"live", QoS::AtLeastOnce, 1).await;
            let p = sub.expect_publish().await;
            assert_eq!(&p.payload[..], b"live");
            sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
            sub.send(Packet::Disconnect(Disconnect::default())).await;
            sub.closed().await;
        }
        // Acknowledged messages are gone from the store: a second restart delivers nothing.
        let b = restart(b, config(&dir, durability)).await;
        let (mut sub, ack) = Raw::connect(b.addr, persistent(V::V5, "sub5")).await;
        assert!(ack.session_present);
        let left = sub.sync().await;
        assert!(left.is_empty(), "{durability:?}: nothing left: {left:?}");
        b.stop().await;
    }
}

#[tokio::test]
async fn inflight_qos2_is_resent_with_dup_after_restart() {
    let dir = data_dir("inflight");
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "q2")).await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("q2", b"a", QoS::ExactlyOnce, 1).await;
    publ.publish("q2", b"b", QoS::ExactlyOnce, 2).await;
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    // Complete half of the first exchange only.
    sub.send(Packet::PubRec(Ack::new(first.packet_id))).await;
    assert!(matches!(sub.recv().await, Packet::PubRel(_)));
    drop(sub);
    drop(publ);
    let b = restart(b, config(&dir, Durability::Always)).await;
    let (mut sub, ack) = Raw::connect(b.addr, persistent(V::V5, "q2")).await;
    assert!(ack.session_present);
    let mut saw_rel = false;
    let mut saw_dup = false;
    for p in sub.sync().await {
        match p {
            Packet::PubRel(r) => {
                assert_eq!(r.packet_id, first.packet_id);
                saw_rel = true;
            }
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], b"b");
                assert!(p.dup, "resent with DUP");
                assert_eq!(p.packet_id, second.packet_id, "same packet id");
                saw_dup = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_rel && saw_dup);
    b.stop().await;
}

#[tokio::test]
async fn incoming_qos2_state_survives_a_restart() {
    let dir = data_dir("incoming");
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "watch")).await;
    sub.subscribe("in", QoS::AtLeastOnce).await;
    drop(sub);
    let (mut publ, _) = Raw::connect(b.addr, persistent(V::V5, "pub")).await;
    let mut p = Publish::new("in", Bytes::from_static(b"once"));
    p.qos = QoS::ExactlyOnce;
    p.packet_id = 5;
    publ.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    drop(publ);
    let b = restart(b, config(&dir, Durability::Always)).await;
    // The publisher resends with DUP: it must not be routed a second time.
    let (mut publ, ack) = Raw::connect(b.addr, persistent(V::V5, "pub")).await;
    assert!(ack.session_present);
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    publ.send(Packet::PubRel(Ack::new(5))).await;
    assert!(matches!(publ.recv().await, Packet::PubComp(_)));
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "watch")).await;
    let got = sub.expect_publish().await;
    assert_eq!(&got.payload[..], b"once");
    sub.send(Packet::PubAck(Ack::new(got.packet_id))).await;
    assert!(
        sub.sync().await.is_empty(),
        "exactly once across the restart"
    );
    b.stop().await;
}

#[tokio::test]
async fn retained_messages_survive_and_clean_sessions_do_not() {
    let dir = data_dir("retained");
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
    let mut p = Publish::new("ret/a", Bytes::from_static(b"kept"));
    p.retain = true;
    p.qos = QoS::AtLeastOnce;
    p.packet_id = 1;
    publ.send(Packet::Publish(p)).await;
    publ.recv().await;
    let mut clean = Raw::client(b.addr, V::V3_1_1, "clean").await;
    clean.subscribe("x", QoS::AtLeastOnce).await;
    drop(clean);
    let b = restart(b, config(&dir, Durability::Always)).await;
    let mut sub = Raw::client(b.addr, V::V3_1_1, "sub").await;
    sub.subscribe("ret/#", QoS::AtLeastOnce).await;
    let p = sub.expect_publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept");
    let (_c, ack) = Raw::connect(b.addr, persistent(V::V3_1_1, "clean")).await;
    assert!(!ack.session_present, "clean sessions are not stored");
    b.stop().await;
}

#[tokio::test]
async fn expired_sessions_are_gone_after_a_restart() {
    let dir = data_dir("expired");
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let mut c = persistent(V::V5, "short");
    c.properties.session_expiry_interval = Some(1);
    let (mut raw, _) = Raw::connect(b.addr, c.clone()).await;
    raw.send(Packet::Disconnect(Disconnect::default())).await;
    raw.closed().await;
    b.stop().await;
    // Wall-clock expiry: the store records when the session was left.
    let started = std::time::Instant::now();
    loop {
        if started.elapsed() > std::time::Duration::from_millis(1100) {
            break;
        }
        tokio::task::yield_now().await;
    }
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let (_raw, ack) = Raw::connect(b.addr, c).await;
    assert!(!ack.session_present);
    b.stop().await;
}

#[tokio::test]
async fn the_sweeper_reclaims_expired_messages_of_offline_sessions() {
    // Real time: an offline session's queue is on disk, where expiry is
    // wall-clock time, which a paused tokio clock does not move.
    let dir = data_dir("sweep");
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let mut forever = persistent(V::V5, "swept");
    forever.properties.session_expiry_interval = Some(u32::MAX);
    let (mut sub, _) = Raw::connect(b.addr, forever).await;
    sub.subscribe("sw", QoS::AtLeastOnce).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    for (expiry, id) in [(1u32, 1u16), (500, 2)] {
        let mut p = Publish::new("sw", Bytes::from_static(b"x"));
        p.qos = QoS::AtLeastOnce;
        p.packet_id = id;
        p.properties.message_expiry_interval = Some(expiry);
        publ.send(Packet::Publish(p)).await;
        assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    }
    let mut retained = Publish::new("sw/r", Bytes::from_static(b"r"));
    retained.retain = true;
    retained.properties.message_expiry_interval = Some(1);
    publ.send(Packet::Publish(retained)).await;
    publ.sync().await;
    // Swept once expired (a bounded wait of about a second).
    let mut swept = 0;
    for _ in 0..50 {
        starling_broker::sweep(&b.state);
        swept += starling_broker::sweep_spilled(b.state.clone()).await;
        if swept == 1 && b.state.retained_count() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(swept, 1);
    assert_eq!(
        b.state.session("swept").unwrap().queued(),
        1,
        "the expired message was reclaimed"
    );
    assert_eq!(
        b.state.retained_count(),
        0,
        "the expired retained message too"
    );
    let expired = b.state.metrics.messages_expired();
    assert_eq!(expired, 1);
    drop(publ);
    let b = restart(b, config(&dir, Durability::Periodic)).await;
    assert_eq!(b.state.retained_count(), 0);
    // A restored queue is counted by the sweeper's first pass over it.
    assert_eq!(starling_broker::sweep_spilled(b.state.clone()).await, 0);
    assert_eq!(
        b.state.session("swept").unwrap().queued(),
        1,
        "the store no longer holds the reclaimed message"
    );
}

/// A store whose writes of queued messages fail once `failing` is set, as a
/// full or broken disk would make them.
struct FailingStore {
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl starling_broker::store::Store for FailingStore {
    fn apply(
        &mut self,
        ops: &[starling_broker::store::Op],
        _durable: bool,
    ) -> Result<(), starling_broker::store::StoreError> {
        let message = ops
            .iter()
            .any(|op| matches!(op, starling_broker::store::Op::Message(..)));
        if message && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(starling_broker::store::StoreError {
                path: "test".into(),
                message: "no space left on device".into(),
                source: None,
            });
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), starling_broker::store::StoreError> {
        Ok(())
    }

    fn load(
        &mut self,
    ) -> Result<starling_broker::store::Loaded, starling_broker::store::StoreError> {
        Ok(Default::default())
    }
}

#[tokio::test]
async fn a_failed_store_write_withholds_the_acknowledgement() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cfg = config(&data_dir("failing"), Durability::Always);
    cfg.listen = vec!["mqtt://127.0.0.1:0".into()];
    cfg.sys_interval = 0;
    let auth = std::sync::Arc::new(starling_broker::auth::FileAuthenticator {
        allow_anonymous: true,
        passwords: None,
    });
    let store = FailingStore {
        failing: failing.clone(),
    };
    let broker = starling_broker::Broker::bind_with_store(cfg, auth, None, Some(Box::new(store)))
        .await
        .expect("broker binds");
    let b = TestBroker::run(broker);
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "offline")).await;
    sub.subscribe("f/#", QoS::AtLeastOnce).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;

    // While the store works, the message is acknowledged.
    let mut publ = Raw::client(b.addr, V::V5, "pub5").await;
    publ.publish("f/ok", b"kept", QoS::AtLeastOnce, 1).await;
    drop(publ);

    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    for (v, id) in [(V::V5, "pub5"), (V::V3_1_1, "pub3")] {
        let mut publ = Raw::client(b.addr, v, id).await;
        let mut p = Publish::new("f/lost", Bytes::from_static(b"x"));
        p.qos = QoS::AtLeastOnce;
        p.packet_id = 7;
        publ.send(Packet::Publish(p)).await;
        let rest = publ.closed().await;
        assert!(
            !rest.iter().any(|p| matches!(p, Packet::PubAck(_))),
            "{v:?}: no PUBACK for a message the store did not keep: {rest:?}"
        );
        if v == V::V5 {
            match rest.as_slice() {
                [Packet::Disconnect(d)] => {
                    assert_eq!(d.reason_code.0, 0x80, "{d:?}");
                }
                other => panic!("expected DISCONNECT 0x80, got {other:?}"),
            }
        }
    }

    // Once the store recovers, the client's resend is acknowledged.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub3").await;
    publ.publish("f/lost", b"x", QoS::AtLeastOnce, 7).await;
    b.stop().await;
}

/// A persistent session whose client goes keeps its queue on disk only:
/// what was in memory for the connection (here 38 messages behind a
/// Receive Maximum of 2) is handed back to the store's spill, and comes back
/// in order, after the two in flight, when the client returns.
#[tokio::test]
async fn an_offline_session_keeps_its_queue_on_disk_not_in_memory() {
    const N: usize = 40;
    let dir = data_dir("parked");
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let mut c = persistent(V::V5, "parked");
    c.properties.receive_maximum = Some(2);
    let (mut sub, _) = Raw::connect(b.addr, c.clone()).await;
    sub.subscribe("pk/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    let payloads: Vec<&'static [u8]> = (0..N)
        .map(|i| &*Box::leak(i.to_string().into_boxed_str().into_boxed_bytes()))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        publ.publish("pk/x", p, QoS::AtLeastOnce, i as u16 + 1)
            .await;
    }
    // Two in flight, unacknowledged; the rest queued in memory.
    let inflight = [sub.expect_publish().await, sub.expect_publish().await];
    let session = b.state.session("parked").expect("held");
    assert!(session.state.lock().queued_bytes() > 0, "queued in memory");
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while session.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    {
        let st = session.state.lock();
        assert_eq!(st.queued_bytes(), 0, "nothing queued in memory offline");
        assert_eq!((st.queue_len(), st.inflight_len()), (N - 2, 2));
    }
    let (mut sub, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..N {
        let p = sub.expect_publish().await;
        sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
        got.push(p.payload);
    }
    assert_eq!(&got[..2], [&inflight[0].payload, &inflight[1].payload]);
    let want: Vec<&[u8]> = payloads.clone();
    let got: Vec<&[u8]> = got.iter().map(|p| &p[..]).collect();
    assert_eq!(got, want, "all, in order");
    b.stop().await;
}

/// Two takeovers of one offline session served at once (in a cluster: a
/// claim and its client's retry) write it out once: the second gets
/// nothing, not a copy whose queue the first took. The one written out
/// holds every queued message, as the node it is installed on shows.
#[tokio::test]
async fn an_offline_session_is_handed_over_once_when_asked_twice_at_once() {
    const N: u16 = 5;
    let dir = data_dir("handed-twice");
    let b = TestBroker::start(config(&dir, Durability::Always)).await;
    let (mut sub, _) = Raw::connect(b.addr, persistent(V::V5, "handed")).await;
    sub.subscribe("h/#", QoS::AtLeastOnce).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    let session = b.state.session("handed").expect("held");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while session.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    for i in 1..=N {
        publ.publish("h/x", b"m", QoS::AtLeastOnce, i).await;
    }
    let (one, two) = tokio::join!(b.state.hand_over("handed"), b.state.hand_over("handed"));
    let chunks = match (one, two) {
        (Some(c), None) | (None, Some(c)) => c,
        (one, two) => panic!(
            "handed over {} times",
            usize::from(one.is_some()) + usize::from(two.is_some())
        ),
    };
    let dir2 = data_dir("handed-twice-to");
    let b2 = TestBroker::start(config(&dir2, Durability::Always)).await;
    b2.state
        .take_handover("handed", &chunks)
        .expect("installed");
    let (mut sub, ack) = Raw::connect(b2.addr, persistent(V::V5, "handed")).await;
    assert!(ack.session_present);
    for _ in 0..N {
        let p = sub.expect_publish().await;
        assert_eq!(p.topic, "h/x");
        sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
    }
    b.stop().await;
    b2.stop().await;
}

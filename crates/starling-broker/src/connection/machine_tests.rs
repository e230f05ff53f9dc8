//! The protocol machine without a socket: packets in, bytes out, decoded
//! back with the client's decoder.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::{
    Ack, Decoder, Disconnect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Client, Close, Machine};
use crate::auth::FileAuthenticator;
use crate::broker::BrokerState;
use crate::config::Config;

fn broker(config: Config) -> Arc<BrokerState> {
    let auth = Arc::new(FileAuthenticator {
        allow_anonymous: true,
        passwords: None,
    });
    Arc::new(BrokerState::new(config, auth, None))
}

/// An attached client of `broker` and its machine.
fn attach(broker: &Arc<BrokerState>, id: &str, version: V) -> (Machine, Client) {
    let conn_id = broker
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (session, _) = crate::lifecycle::attach(
        broker,
        &id.into(),
        true,
        0,
        None,
        None,
        None,
        crate::session::Link::new(conn_id),
    );
    let client = Client {
        version,
        username: None,
        session,
        keep_alive: Duration::from_secs(10),
        will: None,
        expiry_interval: 0,
        client_receive_max: 10,
        client_max_packet: u32::MAX,
        alias_max: if version.is_v5() {
            broker.config.topic_alias_maximum
        } else {
            0
        },
        out_alias_max: 0,
        aliases: None,
        acl: None,
        grant: None,
        problem_info: true,
        enhanced_auth: false,
        mountpoint: None,
        listener: u16::MAX,
    };
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    (
        Machine::new(broker.clone(), peer, conn_id, Instant::now()),
        client,
    )
}

/// Everything the machine has written, decoded as the client would.
fn out(m: &mut Machine, version: V) -> Vec<Packet> {
    let mut decoder = Decoder::with_version(version);
    let mut packets = Vec::new();
    while let Ok(Some(p)) = decoder.decode(&mut m.wbuf) {
        packets.push(p);
    }
    assert!(m.wbuf.is_empty(), "a partial packet was written");
    packets
}

fn publish(topic: &str, payload: &'static [u8], qos: QoS, id: u16) -> Packet {
    let mut p = Publish::new(topic, Bytes::from_static(payload));
    p.qos = qos;
    p.packet_id = id;
    Packet::Publish(p)
}

fn subscribe(filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        subscriptions: filters
            .iter()
            .map(|(f, qos)| Subscription {
                filter: (*f).into(),
                options: SubscriptionOptions {
                    qos: *qos,
                    ..Default::default()
                },
            })
            .collect(),
    })
}

fn code(close: Result<(), Close>) -> Option<u8> {
    match close {
        Err(Close::Protocol(code, _)) => Some(code.0),
        _ => None,
    }
}

#[tokio::test]
async fn pingreq_gets_pingresp() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "p", V::V3_1_1);
    m.handle(&mut c, Packet::PingReq).unwrap();
    assert!(matches!(out(&mut m, V::V3_1_1)[..], [Packet::PingResp]));
}

#[tokio::test]
async fn puback_says_no_matching_subscribers_to_mqtt5_only() {
    let b = broker(Config::default());
    for (v, expected) in [(V::V5, 0x10), (V::V3_1_1, 0x00)] {
        let (mut m, mut c) = attach(&b, &format!("p{v:?}"), v);
        m.handle(&mut c, publish("nobody/here", b"x", QoS::AtLeastOnce, 7))
            .unwrap();
        match &out(&mut m, v)[..] {
            [Packet::PubAck(a)] => assert_eq!((a.packet_id, a.reason_code.0), (7, expected)),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn qos2_duplicate_is_acknowledged_and_routed_once() {
    let b = broker(Config::default());
    let (mut sm, mut s) = attach(&b, "sub", V::V5);
    sm.handle(&mut s, subscribe(&[("q/#", QoS::ExactlyOnce)]))
        .unwrap();
    out(&mut sm, V::V5);
    let (mut m, mut c) = attach(&b, "pub", V::V5);
    for _ in 0..2 {
        m.handle(&mut c, publish("q/2", b"once", QoS::ExactlyOnce, 3))
            .unwrap();
    }
    let acks = out(&mut m, V::V5);
    assert!(
        matches!(&acks[..], [Packet::PubRec(a), Packet::PubRec(b)] if a.packet_id == 3 && b.packet_id == 3)
    );
    assert_eq!(s.session.queued(), 1, "routed once");
    // PUBREL releases the id: PUBCOMP; an unknown one gets 0x92.
    m.handle(&mut c, Packet::PubRel(Ack::new(3))).unwrap();
    m.handle(&mut c, Packet::PubRel(Ack::new(3))).unwrap();
    match &out(&mut m, V::V5)[..] {
        [Packet::PubComp(a), Packet::PubComp(b)] => {
            assert_eq!(a.reason_code, ReasonCode::SUCCESS);
            assert_eq!(b.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn receive_maximum_is_enforced_for_mqtt5_only() {
    let b = broker(Config {
        receive_maximum: 2,
        ..Config::default()
    });
    let (mut m, mut c) = attach(&b, "r5", V::V5);
    m.handle(&mut c, publish("r", b"1", QoS::ExactlyOnce, 1))
        .unwrap();
    m.handle(&mut c, publish("r", b"2", QoS::ExactlyOnce, 2))
        .unwrap();
    let third = m.handle(&mut c, publish("r", b"3", QoS::ExactlyOnce, 3));
    assert_eq!(code(third), Some(0x93));
    let (mut m, mut c) = attach(&b, "r3", V::V3_1_1);
    for id in 1..=3 {
        m.handle(&mut c, publish("r", b"x", QoS::ExactlyOnce, id))
            .unwrap();
    }
}

#[tokio::test]
async fn topic_aliases_from_the_client() {
    let b = broker(Config {
        topic_alias_maximum: 4,
        ..Config::default()
    });
    let (mut sm, mut s) = attach(&b, "sub", V::V5);
    sm.handle(&mut s, subscribe(&[("alias/#", QoS::AtMostOnce)]))
        .unwrap();
    let (mut m, mut c) = attach(&b, "pub", V::V5);
    let mut first = Publish::new("alias/t", Bytes::from_static(b"1"));
    first.properties.topic_alias = Some(2);
    m.handle(&mut c, Packet::Publish(first)).unwrap();
    let mut second = Publish::new("", Bytes::from_static(b"2"));
    second.properties.topic_alias = Some(2);
    m.handle(&mut c, Packet::Publish(second)).unwrap();
    assert_eq!(s.session.queued(), 2);
    let mut unknown = Publish::new("", Bytes::from_static(b"3"));
    unknown.properties.topic_alias = Some(1);
    assert_eq!(code(m.handle(&mut c, Packet::Publish(unknown))), Some(0x82));
    let mut above = Publish::new("alias/t", Bytes::from_static(b"4"));
    above.properties.topic_alias = Some(5);
    assert_eq!(code(m.handle(&mut c, Packet::Publish(above))), Some(0x94));
}

#[tokio::test]
async fn topic_aliases_towards_the_client() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "aliased", V::V5);
    c.out_alias_max = 1;
    m.handle(&mut c, subscribe(&[("o/+", QoS::AtMostOnce)]))
        .unwrap();
    out(&mut m, V::V5);
    let (mut pm, mut p) = attach(&b, "pub", V::V5);
    for t in ["o/a", "o/a", "o/b"] {
        pm.handle(&mut p, publish(t, b"x", QoS::AtMostOnce, 0))
            .unwrap();
    }
    assert!(m.drain(&mut c));
    let seen: Vec<(String, Option<u16>)> = out(&mut m, V::V5)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("o/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("o/b".to_string(), None)
        ]
    );
}

#[tokio::test]
async fn payload_format_invalid() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "pf", V::V5);
    let bad = |qos, id| {
        let mut p = Publish::new("pf", Bytes::from_static(&[0xff, 0xfe]));
        p.qos = qos;
        p.packet_id = id;
        p.properties.payload_format_indicator = Some(true);
        Packet::Publish(p)
    };
    m.handle(&mut c, bad(QoS::AtLeastOnce, 1)).unwrap();
    match &out(&mut m, V::V5)[..] {
        [Packet::PubAck(a)] => assert_eq!(a.reason_code, ReasonCode::PAYLOAD_FORMAT_INVALID),
        other => panic!("{other:?}"),
    }
    assert_eq!(code(m.handle(&mut c, bad(QoS::AtMostOnce, 0))), Some(0x99));
}

#[tokio::test]
async fn protocol_errors_close_with_their_reason() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "pe", V::V5);
    let mut with_id = Publish::new("x", Bytes::from_static(b"1"));
    with_id.properties.subscription_identifiers = vec![1];
    assert_eq!(code(m.handle(&mut c, Packet::Publish(with_id))), Some(0x82));
    let connect = starling_codec::Connect::new(V::V5, "again");
    assert_eq!(
        code(m.handle(&mut c, Packet::Connect(Box::new(connect)))),
        Some(0x82)
    );
    assert_eq!(code(m.handle(&mut c, Packet::PingResp)), Some(0x82));
    // [MQTT-3.14.2-2]: a session that was to end cannot be given an expiry.
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(60);
    assert_eq!(code(m.handle(&mut c, Packet::Disconnect(d))), Some(0x82));
    assert_eq!(
        m.handle(&mut c, Packet::Disconnect(Disconnect::default())),
        Err(Close::Normal)
    );
    assert_eq!(
        m.handle(
            &mut c,
            Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL))
        ),
        Err(Close::NormalWithWill)
    );
}

#[tokio::test]
async fn a_topic_deeper_than_the_limit_closes_and_a_filter_is_refused() {
    let b = broker(Config {
        max_topic_levels: 3,
        ..Config::default()
    });
    let (mut m, mut c) = attach(&b, "deep", V::V5);
    m.handle(
        &mut c,
        subscribe(&[("a/b/c", QoS::AtMostOnce), ("a/b/c/d", QoS::AtMostOnce)]),
    )
    .unwrap();
    match &out(&mut m, V::V5)[..] {
        [Packet::SubAck(a)] => assert_eq!(
            a.reason_codes,
            [ReasonCode::SUCCESS, ReasonCode::TOPIC_FILTER_INVALID]
        ),
        other => panic!("{other:?}"),
    }
    m.handle(&mut c, publish("a/b/c", b"ok", QoS::AtMostOnce, 0))
        .unwrap();
    assert_eq!(
        code(m.handle(&mut c, publish("a/b/c/d", b"no", QoS::AtMostOnce, 0))),
        Some(0x90)
    );
}

#[tokio::test]
async fn unsubscribe_of_an_invalid_filter_is_0x8f() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "u", V::V5);
    m.handle(
        &mut c,
        Packet::Unsubscribe(starling_codec::Unsubscribe {
            packet_id: 4,
            properties: Default::default(),
            filters: vec!["a/#/b".into(), "a+".into(), "x".into()],
        }),
    )
    .unwrap();
    match &out(&mut m, V::V5)[..] {
        [Packet::UnsubAck(a)] => assert_eq!(
            a.reason_codes,
            [
                ReasonCode::TOPIC_FILTER_INVALID,
                ReasonCode::TOPIC_FILTER_INVALID,
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn retained_messages_follow_the_suback() {
    let b = broker(Config::default());
    let (mut pm, mut p) = attach(&b, "pub", V::V3_1_1);
    let mut r = Publish::new("ret/a", Bytes::from_static(b"kept"));
    r.retain = true;
    pm.handle(&mut p, Packet::Publish(r)).unwrap();
    let (mut m, mut c) = attach(&b, "sub", V::V5);
    m.handle(&mut c, subscribe(&[("ret/+", QoS::AtLeastOnce)]))
        .unwrap();
    assert!(m.drain(&mut c));
    match &out(&mut m, V::V5)[..] {
        [Packet::SubAck(_), Packet::Publish(p)] => {
            assert!(p.retain);
            assert_eq!(&p.payload[..], b"kept");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_mountpoint_prefixes_what_the_client_names() {
    let b = broker(Config::default());
    let (mut sm, mut s) = attach(&b, "outside", V::V3_1_1);
    sm.handle(&mut s, subscribe(&[("tenant/#", QoS::AtMostOnce)]))
        .unwrap();
    let (mut m, mut c) = attach(&b, "inside", V::V5);
    c.mountpoint = Some(Box::new("tenant/".into()));
    m.handle(&mut c, subscribe(&[("x", QoS::AtMostOnce)]))
        .unwrap();
    assert!(c.session.is_subscribed("tenant/x"));
    m.handle(&mut c, publish("x", b"m", QoS::AtMostOnce, 0))
        .unwrap();
    // The outside subscriber sees the full topic; the inside one its own.
    assert!(sm.drain(&mut s));
    assert!(
        matches!(&out(&mut sm, V::V3_1_1)[..], [Packet::SubAck(_), Packet::Publish(p)] if &*p.topic == "tenant/x")
    );
    assert!(m.drain(&mut c));
    assert!(
        matches!(&out(&mut m, V::V5)[..], [Packet::SubAck(_), Packet::Publish(p)] if &*p.topic == "x")
    );
}

#[tokio::test]
async fn the_keep_alive_deadline_is_one_and_a_half_times_it() {
    let b = broker(Config::default());
    let (m, mut c) = attach(&b, "ka", V::V5);
    assert_eq!(
        m.keep_alive_deadline(&c),
        Some(m.last_rx + Duration::from_secs(15))
    );
    c.keep_alive = Duration::ZERO;
    assert_eq!(m.keep_alive_deadline(&c), None);
}

fn puback_ids(packets: Vec<Packet>) -> Vec<u16> {
    packets
        .into_iter()
        .map(|p| match p {
            Packet::PubAck(a) => a.packet_id,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn acknowledgements_wait_for_the_store_in_order() {
    let b = broker(Config::default());
    let (mut m, _c) = attach(&b, "acks", V::V5);
    m.journal.forget(&"acks".into(), 1);
    m.send_ack(Packet::PubAck(Ack::new(1)), true, V::V5);
    // Ready, but behind the first: it waits too.
    m.send_ack(Packet::PubAck(Ack::new(2)), false, V::V5);
    let (journal, awaited) = m.take_journal().expect("a journal");
    assert_eq!((journal.len(), awaited), (1, true));
    assert!(m.take_journal().is_none(), "taken once");
    let (first_done, first_wait) = oneshot::channel();
    m.awaiting(first_wait);
    m.release_acks("c", V::V5).unwrap();
    assert!(out(&mut m, V::V5).is_empty());
    first_done.send(()).unwrap();
    m.release_acks("c", V::V5).unwrap();
    assert_eq!(puback_ids(out(&mut m, V::V5)), [1, 2]);
    assert!(!m.awaits_store());
    // A store that failed: the connection closes without the acknowledgement.
    m.journal.forget(&"acks".into(), 2);
    m.send_ack(Packet::PubAck(Ack::new(3)), true, V::V5);
    let (failed, wait) = oneshot::channel::<()>();
    assert!(m.take_journal().is_some_and(|(_, awaited)| awaited));
    m.awaiting(wait);
    drop(failed);
    assert_eq!(m.release_acks("c", V::V5), Err(Close::StoreFailed));
    assert!(out(&mut m, V::V5).is_empty());
}

/// A broker with a store in a fresh directory, acknowledging after fsync.
fn stored_broker(name: &str) -> Arc<BrokerState> {
    let dir = std::env::temp_dir().join(format!("starling-machine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config {
        data_dir: dir,
        durability: crate::store::Durability::Always,
        ..Config::default()
    };
    let auth = Arc::new(FileAuthenticator {
        allow_anonymous: true,
        passwords: None,
    });
    BrokerState::open_with_store(config, auth, None, None).expect("store opens")
}

#[tokio::test]
async fn a_stored_publish_is_acknowledged_once_its_journal_is_written() {
    let b = stored_broker("ack-after-write");
    let (mut sub, mut sc) = attach(&b, "sub", V::V5);
    sc.session
        .persistent
        .store(true, std::sync::atomic::Ordering::Relaxed);
    sub.handle(&mut sc, subscribe(&[("t", QoS::AtLeastOnce)]))
        .unwrap();
    let (_, awaited) = sub.take_journal().expect("the subscription is journaled");
    assert!(!awaited, "a SUBACK does not wait for the store");
    let (mut m, mut c) = attach(&b, "pub", V::V5);
    m.handle(&mut c, publish("t", b"x", QoS::AtLeastOnce, 7))
        .unwrap();
    // The message is queued for a persistent session: stored before the PUBACK.
    assert!(out(&mut m, V::V5).is_empty());
    let (journal, awaited) = m.take_journal().expect("the queued message");
    assert_eq!((journal.len(), awaited), (1, true));
    let store = b.store().expect("a store");
    m.awaiting(crate::journal::commit_and_wait(store, journal));
    let written = super::first_write(&mut m.writes).await;
    assert_eq!(written, Some(0));
    m.write_done(written, "c", V::V5).unwrap();
    assert_eq!(puback_ids(out(&mut m, V::V5)), [7]);
    // A QoS 0 publish to the same subscriber changes nothing on disk.
    m.handle(&mut c, publish("t", b"y", QoS::AtMostOnce, 0))
        .unwrap();
    let j = m.take_journal();
    assert!(j.is_none(), "{j:?}");
}

#[tokio::test]
async fn qos2_publish_and_pubrel_wait_until_their_state_is_written() {
    let b = stored_broker("pubrel");
    let (mut m, mut c) = attach(&b, "q2", V::V5);
    c.session
        .persistent
        .store(true, std::sync::atomic::Ordering::Relaxed);
    m.handle(&mut c, subscribe(&[("t", QoS::ExactlyOnce)]))
        .unwrap();
    let (mut p, mut pc) = attach(&b, "pub", V::V5);
    p.handle(&mut pc, publish("t", b"x", QoS::AtMostOnce, 0))
        .unwrap();
    // QoS 0 is not stored: drain to get it out of the way.
    let _ = m.take_journal();
    assert!(m.drain(&mut c));
    let _ = out(&mut m, V::V5);
    p.handle(&mut pc, publish("t", b"y", QoS::ExactlyOnce, 1))
        .unwrap();
    let _ = p.take_journal();
    assert!(m.drain(&mut c));
    // The QoS 2 PUBLISH waits until its in-flight record is written: after
    // a restart it must go again with the same packet id [MQTT-4.3.3-1].
    assert!(
        out(&mut m, V::V5).is_empty(),
        "the PUBLISH waits for the store"
    );
    let (journal, awaited) = m.take_journal().expect("the in-flight record");
    assert!(awaited);
    let store = b.store().expect("a store");
    m.awaiting(crate::journal::commit_and_wait(store, journal));
    let written = super::first_write(&mut m.writes).await;
    m.write_done(written, "c", V::V5).unwrap();
    let packet_id = match out(&mut m, V::V5).as_slice() {
        [Packet::Publish(p)] => p.packet_id,
        other => panic!("{other:?}"),
    };
    m.handle(&mut c, Packet::PubRec(Ack::new(packet_id)))
        .unwrap();
    assert!(out(&mut m, V::V5).is_empty(), "PUBREL waits for the store");
    let (journal, awaited) = m.take_journal().expect("the released state");
    assert!(awaited);
    let (done, write) = oneshot::channel();
    m.awaiting(write);
    drop(journal);
    done.send(()).unwrap();
    m.release_acks("c", V::V5).unwrap();
    match out(&mut m, V::V5).as_slice() {
        [Packet::PubRel(rel)] => assert_eq!(rel.packet_id, packet_id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn drain_keeps_to_the_clients_receive_maximum() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "rm", V::V5);
    c.client_receive_max = 1;
    m.handle(&mut c, subscribe(&[("w", QoS::AtLeastOnce)]))
        .unwrap();
    let (mut pm, mut p) = attach(&b, "pub", V::V5);
    for id in 1..=2 {
        pm.handle(&mut p, publish("w", b"x", QoS::AtLeastOnce, id))
            .unwrap();
    }
    assert!(m.drain(&mut c));
    let sent = out(&mut m, V::V5);
    let Some(Packet::Publish(first)) = sent.last() else {
        panic!("{sent:?}")
    };
    assert_eq!(sent.len(), 2, "SUBACK and one PUBLISH: {sent:?}");
    assert!(m.drain(&mut c));
    assert!(out(&mut m, V::V5).is_empty(), "the window is full");
    m.handle(&mut c, Packet::PubAck(Ack::new(first.packet_id)))
        .unwrap();
    assert!(m.drain(&mut c));
    assert!(matches!(&out(&mut m, V::V5)[..], [Packet::Publish(_)]));
}

#[tokio::test]
async fn a_message_above_the_clients_maximum_packet_size_is_dropped() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "small", V::V5);
    c.client_max_packet = 32;
    m.handle(&mut c, subscribe(&[("big", QoS::AtMostOnce)]))
        .unwrap();
    out(&mut m, V::V5);
    let (mut pm, mut p) = attach(&b, "pub", V::V5);
    pm.handle(&mut p, publish("big", &[b'x'; 64], QoS::AtMostOnce, 0))
        .unwrap();
    pm.handle(&mut p, publish("big", b"fits", QoS::AtMostOnce, 0))
        .unwrap();
    assert!(m.drain(&mut c));
    assert!(matches!(&out(&mut m, V::V5)[..], [Packet::Publish(p)] if &p.payload[..] == b"fits"));
    assert_eq!(b.metrics.messages_dropped(), 1);
}

#[tokio::test]
async fn the_final_disconnect_is_for_mqtt5_clients() {
    let b = broker(Config::default());
    let (mut m, c) = attach(&b, "bye5", V::V5);
    m.disconnect(&c, &Close::KeepAlive);
    assert!(
        matches!(&out(&mut m, V::V5)[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
    m.disconnect(&c, &Close::Normal);
    assert!(
        out(&mut m, V::V5).is_empty(),
        "a client's own DISCONNECT gets none"
    );
    let (mut m, c) = attach(&b, "bye3", V::V3_1_1);
    m.disconnect(&c, &Close::Protocol(ReasonCode::PROTOCOL_ERROR, "x".into()));
    assert!(out(&mut m, V::V3_1_1).is_empty());
}

#[tokio::test]
async fn a_taken_over_session_stops_the_drain() {
    let b = broker(Config::default());
    let (mut m, mut c) = attach(&b, "same", V::V5);
    let (_m2, _c2) = attach(&b, "same", V::V5);
    assert!(!m.drain(&mut c));
}

#[tokio::test]
async fn subscriptions_past_the_quota_are_refused_and_counted() {
    let b = broker(Config {
        max_subscriptions_per_client: 2,
        ..Config::default()
    });
    for v in [V::V5, V::V3_1_1] {
        let (mut m, mut c) = attach(&b, &format!("quota{}", v.level()), v);
        m.handle(
            &mut c,
            subscribe(&[
                ("a", QoS::AtMostOnce),
                ("b", QoS::AtMostOnce),
                ("c", QoS::AtMostOnce),
            ]),
        )
        .unwrap();
        // Replacing a subscription it holds is not a new one.
        m.handle(&mut c, subscribe(&[("a", QoS::AtLeastOnce)]))
            .unwrap();
        let codes: Vec<Vec<u8>> = out(&mut m, v)
            .into_iter()
            .map(|p| match p {
                Packet::SubAck(a) => a.reason_codes.iter().map(|r| r.0).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        let refused = if v.is_v5() { 0x97 } else { 0x80 };
        assert_eq!(codes, vec![vec![0, 0, refused], vec![1]], "{v}");
        assert_eq!(c.session.filters().len(), 2);
    }
    let quota = crate::metrics::SubscribeRefusal::QuotaExceeded as usize;
    assert_eq!(b.metrics.subscribe_refusals.get(quota), 2);
}

/// A cluster seam whose copy of every session stands where the test says.
struct Lagging(parking_lot::Mutex<crate::cluster::ReplicaLag>);

impl crate::cluster::Cluster for Lagging {
    fn forward(
        &self,
        _: &Arc<crate::message::Message>,
        _: Option<(u64, u64)>,
        _: bool,
    ) -> Option<oneshot::Receiver<()>> {
        None
    }
    fn interest(&self, _: &str, _: bool) {}
    fn claim(&self, _: &str, _: bool) -> crate::cluster::ClusterFuture<crate::cluster::Ownership> {
        Box::pin(async { crate::cluster::Ownership::Local })
    }
    fn release(&self, _: &str) {}
    fn replica_lag(&self, _: &str) -> crate::cluster::ReplicaLag {
        *self.0.lock()
    }
}

#[tokio::test]
async fn a_qos_2_publish_and_pubrel_wait_for_the_clusters_copy_of_the_session() {
    use crate::cluster::ReplicaLag;
    let b = broker(Config::default());
    let lag = Arc::new(Lagging(parking_lot::Mutex::new(ReplicaLag::Behind)));
    assert!(b.set_cluster(lag.clone()));
    let (mut m, _c) = attach(&b, "q2", V::V5);
    // Held for the store: a QoS 1 PUBLISH goes once written, a QoS 2 one
    // (and the PUBREL, and what follows them) once the copy is current.
    m.journal.forget(&"q2".into(), 1);
    m.send_ack(publish("t", b"1", QoS::AtLeastOnce, 1), true, V::V5);
    m.send_ack(publish("t", b"2", QoS::ExactlyOnce, 2), true, V::V5);
    m.send_ack(Packet::PubRel(Ack::new(3)), true, V::V5);
    m.send_ack(Packet::PubAck(Ack::new(4)), false, V::V5);
    assert!(m.take_journal().is_some());
    let (done, wait) = oneshot::channel();
    m.awaiting(wait);
    done.send(()).unwrap();
    m.release_acks("q2", V::V5).unwrap();
    let sent = out(&mut m, V::V5);
    assert!(
        matches!(&sent[..], [Packet::Publish(p)] if p.packet_id == 1),
        "{sent:?}"
    );
    assert!(m.replica_retry.is_some(), "looked at again later");
    // Still behind: nothing more.
    m.release_acks("q2", V::V5).unwrap();
    assert!(out(&mut m, V::V5).is_empty());
    *lag.0.lock() = ReplicaLag::Current;
    m.release_acks("q2", V::V5).unwrap();
    let sent = out(&mut m, V::V5);
    assert!(
        matches!(
            &sent[..],
            [Packet::Publish(p), Packet::PubRel(r), Packet::PubAck(a)]
                if p.packet_id == 2 && r.packet_id == 3 && a.packet_id == 4
        ),
        "{sent:?}"
    );
    assert!(m.replica_retry.is_none());
    // This node lost the cluster: the client goes to another node, and the
    // PUBREL does not go.
    *lag.0.lock() = ReplicaLag::Lost;
    m.journal.forget(&"q2".into(), 2);
    m.send_ack(Packet::PubRel(Ack::new(5)), true, V::V5);
    assert!(m.take_journal().is_some());
    let (done, wait) = oneshot::channel();
    m.awaiting(wait);
    done.send(()).unwrap();
    assert_eq!(m.release_acks("q2", V::V5), Err(Close::Fenced));
    assert!(out(&mut m, V::V5).is_empty());
}

//! Publish/subscribe: QoS flows, filters, retained messages, shared
//! subscriptions and the MQTT 5 features that shape delivery.

mod common;

use bytes::Bytes;
use common::{Raw, TestBroker};
use starling_broker::Config;
use starling_codec::{
    Ack, Packet, Properties, ProtocolVersion as V, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

async fn suback(raw: &mut Raw, filters: &[(&str, SubscriptionOptions)], id: Option<u32>) -> SubAck {
    let mut properties = Properties::default();
    properties.subscription_identifiers.extend(id);
    raw.send(Packet::Subscribe(Subscribe {
        packet_id: 7,
        properties,
        subscriptions: filters
            .iter()
            .map(|(f, o)| Subscription {
                filter: (*f).into(),
                options: *o,
            })
            .collect(),
    }))
    .await;
    match raw.recv().await {
        Packet::SubAck(a) => a,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish(topic: &str, payload: &'static [u8], qos: QoS, id: u16) -> Publish {
    let mut p = Publish::new(topic, Bytes::from_static(payload));
    p.qos = qos;
    p.packet_id = if qos == QoS::AtMostOnce { 0 } else { id };
    p
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_published_and_granted() {
    let b = TestBroker::default().await;
    for v in [V::V3_1_1, V::V5] {
        for granted in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("q/{}/{}", v.level(), granted as u8);
            let mut sub = Raw::client(b.addr, v, "sub").await;
            sub.subscribe(&topic, granted).await;
            let mut publ = Raw::client(b.addr, v, "pub").await;
            for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .into_iter()
                .enumerate()
            {
                publ.publish(&topic, b"m", qos, i as u16 + 1).await;
                let p = sub.expect_publish().await;
                assert_eq!(
                    p.qos,
                    qos.min(granted),
                    "{v} published {qos:?} granted {granted:?}"
                );
                match p.qos {
                    QoS::AtLeastOnce => sub.send(Packet::PubAck(Ack::new(p.packet_id))).await,
                    QoS::ExactlyOnce => {
                        sub.send(Packet::PubRec(Ack::new(p.packet_id))).await;
                        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
                        sub.send(Packet::PubComp(Ack::new(p.packet_id))).await;
                    }
                    QoS::AtMostOnce => {}
                }
            }
        }
    }
}

#[tokio::test]
async fn qos2_is_delivered_exactly_once_when_the_publisher_resends() {
    let b = TestBroker::default().await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    sub.subscribe("x2", QoS::ExactlyOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    let p = publish("x2", b"once", QoS::ExactlyOnce, 9);
    publ.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    let mut dup = p.clone();
    dup.dup = true;
    publ.send(Packet::Publish(dup.clone())).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    publ.send(Packet::PubRel(Ack::new(9))).await;
    assert!(matches!(publ.recv().await, Packet::PubComp(_)));
    let got = sub.expect_publish().await;
    assert_eq!(&got.payload[..], b"once");
    sub.send(Packet::PubRec(Ack::new(got.packet_id))).await;
    assert!(matches!(sub.recv().await, Packet::PubRel(_)));
    sub.send(Packet::PubComp(Ack::new(got.packet_id))).await;
    assert!(sub.sync().await.is_empty(), "no second copy");
    // After PUBCOMP the id is free: the same id is a new message.
    publ.publish("x2", b"again", QoS::ExactlyOnce, 9).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"again");
}

#[tokio::test]
async fn invalid_filters_get_a_failure_code_not_a_close() {
    let b = TestBroker::default().await;
    for v in [V::V3_1_1, V::V5] {
        let mut raw = Raw::client(b.addr, v, "filters").await;
        let ack = suback(
            &mut raw,
            &[
                ("a/#/b", opts(QoS::AtMostOnce)),
                ("a+", opts(QoS::AtMostOnce)),
                ("", opts(QoS::AtMostOnce)),
                ("$share/g", opts(QoS::AtMostOnce)),
                ("ok/+", opts(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
        let expected_fail = if v.is_v5() { 0x8F } else { 0x80 };
        let codes: Vec<u8> = ack.reason_codes.iter().map(|c| c.0).collect();
        assert_eq!(
            codes,
            [
                expected_fail,
                expected_fail,
                expected_fail,
                expected_fail,
                1
            ],
            "{v}"
        );
        assert!(raw.sync().await.is_empty(), "still connected");
    }
}

#[tokio::test]
async fn dollar_topics_do_not_match_leading_wildcards() {
    let b = TestBroker::default().await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    sub.subscribe("+/x", QoS::AtMostOnce).await;
    let mut sys = Raw::client(b.addr, V::V5, "sys").await;
    sys.subscribe("$app/#", QoS::AtMostOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("$app/x", b"d", QoS::AtLeastOnce, 1).await;
    publ.publish("plain/x", b"p", QoS::AtLeastOnce, 2).await;
    assert_eq!(&sys.expect_publish().await.payload[..], b"d");
    let p = sub.expect_publish().await;
    assert_eq!(&p.topic[..], "plain/x");
    assert!(
        sub.sync().await.is_empty(),
        "one copy for two matching filters; none for $app/x"
    );
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_with_every_identifier() {
    let b = TestBroker::default().await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    suback(&mut sub, &[("o/+", opts(QoS::AtMostOnce))], Some(1)).await;
    suback(&mut sub, &[("o/#", opts(QoS::AtLeastOnce))], Some(2)).await;
    suback(&mut sub, &[("o/x", opts(QoS::AtMostOnce))], None).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("o/x", b"1", QoS::ExactlyOnce, 1).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce, "the highest granted QoS");
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
    assert!(sub.sync().await.is_empty());
}

#[tokio::test]
async fn retained_messages() {
    let b = TestBroker::default().await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    let mut p = publish("r/a", b"old", QoS::AtLeastOnce, 1);
    p.retain = true;
    publ.send(Packet::Publish(p.clone())).await;
    publ.recv().await;
    p.payload = Bytes::from_static(b"new");
    publ.send(Packet::Publish(p.clone())).await;
    publ.recv().await;
    let mut other = publish("r/b", b"b", QoS::AtMostOnce, 0);
    other.retain = true;
    publ.send(Packet::Publish(other)).await;
    publ.sync().await;
    // The latest per topic, with the retain flag set.
    let mut sub = Raw::client(b.addr, V::V3_1_1, "sub").await;
    sub.subscribe("r/+", QoS::AtLeastOnce).await;
    let mut got: Vec<(String, Bytes, bool)> = Vec::new();
    for packet in sub.sync().await {
        if let Packet::Publish(p) = packet {
            got.push((p.topic.to_string(), p.payload.clone(), p.retain));
            if p.qos == QoS::AtLeastOnce {
                sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
            }
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("r/a".to_string(), Bytes::from_static(b"new"), true),
            ("r/b".to_string(), Bytes::from_static(b"b"), true)
        ]
    );
    // A live message is forwarded with retain 0 to existing subscribers ([MQTT-3.3.1-9]).
    publ.send(Packet::Publish(p.clone())).await;
    publ.recv().await;
    let live = sub.expect_publish().await;
    assert!(!live.retain);
    sub.send(Packet::PubAck(Ack::new(live.packet_id))).await;
    // An empty payload deletes it.
    let mut del = publish("r/a", b"", QoS::AtLeastOnce, 2);
    del.retain = true;
    publ.send(Packet::Publish(del)).await;
    publ.recv().await;
    let mut later = Raw::client(b.addr, V::V3_1_1, "later").await;
    later.subscribe("r/a", QoS::AtLeastOnce).await;
    assert!(later.sync().await.is_empty());
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    let b = TestBroker::default().await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    let mut p = publish("rh", b"kept", QoS::AtMostOnce, 0);
    p.retain = true;
    publ.send(Packet::Publish(p.clone())).await;
    publ.sync().await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    let with = |rh| SubscriptionOptions {
        retain_handling: rh,
        ..opts(QoS::AtMostOnce)
    };
    // 2: never.
    suback(&mut sub, &[("rh", with(RetainHandling::DoNotSend))], None).await;
    assert!(sub.sync().await.is_empty());
    // 1: only for a new subscription; this one exists already.
    suback(&mut sub, &[("rh", with(RetainHandling::SendIfNew))], None).await;
    assert!(sub.sync().await.is_empty());
    // 0: always.
    suback(
        &mut sub,
        &[("rh", with(RetainHandling::SendAtSubscribe))],
        None,
    )
    .await;
    assert_eq!(sub.sync().await.len(), 1);
    // 1 on a new subscription sends.
    let mut fresh = Raw::client(b.addr, V::V5, "fresh").await;
    suback(&mut fresh, &[("rh", with(RetainHandling::SendIfNew))], None).await;
    assert_eq!(fresh.sync().await.len(), 1);
    // Retain As Published keeps the flag on live messages.
    let mut rap = Raw::client(b.addr, V::V5, "rap").await;
    let o = SubscriptionOptions {
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
        ..opts(QoS::AtMostOnce)
    };
    suback(&mut rap, &[("rh", o)], None).await;
    publ.send(Packet::Publish(p)).await;
    assert!(rap.expect_publish().await.retain);
}

#[tokio::test(start_paused = true)]
async fn expired_retained_messages_are_not_delivered() {
    let b = TestBroker::default().await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    let mut p = publish("exp/r", b"soon gone", QoS::AtMostOnce, 0);
    p.retain = true;
    p.properties.message_expiry_interval = Some(5);
    publ.send(Packet::Publish(p)).await;
    publ.sync().await;
    let mut early = Raw::client(b.addr, V::V5, "early").await;
    early.subscribe("exp/r", QoS::AtMostOnce).await;
    let got = early.expect_publish().await;
    assert!(got
        .properties
        .message_expiry_interval
        .is_some_and(|s| s <= 5));
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let mut late = Raw::client(b.addr, V::V5, "late").await;
    late.subscribe("exp/r", QoS::AtMostOnce).await;
    assert!(late.sync().await.is_empty());
}

#[tokio::test]
async fn shared_subscriptions_round_robin_and_get_no_retained() {
    let b = TestBroker::default().await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    let mut r = publish("s/1", b"retained", QoS::AtMostOnce, 0);
    r.retain = true;
    publ.send(Packet::Publish(r)).await;
    publ.sync().await;
    let mut m1 = Raw::client(b.addr, V::V5, "m1").await;
    let mut m2 = Raw::client(b.addr, V::V3_1_1, "m2").await;
    m1.subscribe("$share/g/s/+", QoS::AtLeastOnce).await;
    m2.subscribe("$share/g/s/+", QoS::AtLeastOnce).await;
    assert!(
        m1.sync().await.is_empty() && m2.sync().await.is_empty(),
        "no retained"
    );
    for i in 0..10u16 {
        publ.publish("s/1", b"x", QoS::AtLeastOnce, i + 1).await;
    }
    let count = |packets: Vec<Packet>| {
        packets
            .iter()
            .filter(|p| matches!(p, Packet::Publish(_)))
            .count()
    };
    let (c1, c2) = (count(m1.sync().await), count(m2.sync().await));
    assert_eq!((c1, c2), (5, 5), "each member gets every other message");
}

#[tokio::test]
async fn topic_aliases_from_the_client() {
    let b = TestBroker::start(Config {
        topic_alias_maximum: 5,
        ..Config::default()
    })
    .await;
    let mut sub = Raw::client(b.addr, V::V5, "sub").await;
    sub.subscribe("alias/topic", QoS::AtMostOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    let mut first = publish("alias/topic", b"1", QoS::AtMostOnce, 0);
    first.properties.topic_alias = Some(3);
    publ.send(Packet::Publish(first)).await;
    let mut second = publish("", b"2", QoS::AtMostOnce, 0);
    second.properties.topic_alias = Some(3);
    publ.send(Packet::Publish(second)).await;
    for payload in [b"1", b"2"] {
        let p = sub.expect_publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            ("alias/topic", &payload[..])
        );
        assert_eq!(p.properties.topic_alias, None);
    }
    // Above the maximum: DISCONNECT 0x94.
    let mut bad = publish("t", b"x", QoS::AtMostOnce, 0);
    bad.properties.topic_alias = Some(6);
    publ.send(Packet::Publish(bad)).await;
    let got = publ.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::TOPIC_ALIAS_INVALID),
        "{got:?}"
    );
    // An alias never set: protocol error.
    let mut other = Raw::client(b.addr, V::V5, "other").await;
    let mut unknown = publish("", b"x", QoS::AtMostOnce, 0);
    unknown.properties.topic_alias = Some(1);
    other.send(Packet::Publish(unknown)).await;
    let got = other.closed().await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PROTOCOL_ERROR),
        "{got:?}"
    );
}

#[tokio::test]
async fn client_receive_maximum_caps_inflight() {
    let b = TestBroker::default().await;
    let mut c = starling_codec::Connect::new(V::V5, "slow");
    c.properties.receive_maximum = Some(2);
    let (mut sub, _) = Raw::connect(b.addr, c).await;
    sub.subscribe("rm", QoS::AtLeastOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    for i in 0..5u16 {
        publ.publish("rm", b"x", QoS::AtLeastOnce, i + 1).await;
    }
    let first = sub.sync().await;
    assert_eq!(first.len(), 2, "only the receive maximum is in flight");
    let mut total = 0;
    let mut pending = first;
    while !pending.is_empty() {
        for p in &pending {
            if let Packet::Publish(p) = p {
                total += 1;
                sub.send(Packet::PubAck(Ack::new(p.packet_id))).await;
            }
        }
        pending = sub.sync().await;
        assert!(pending.len() <= 2);
    }
    assert_eq!(total, 5);
}

#[tokio::test]
async fn exceeding_the_brokers_receive_maximum_is_disconnected() {
    let b = TestBroker::start(Config {
        receive_maximum: 2,
        ..Config::default()
    })
    .await;
    let mut publ = Raw::client(b.addr, V::V5, "greedy").await;
    for id in 1..=3u16 {
        publ.send(Packet::Publish(publish("rm2", b"x", QoS::ExactlyOnce, id)))
            .await;
    }
    let got = publ.closed().await;
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_v311_client_is_not_held_to_a_receive_maximum_it_was_never_told() {
    let b = TestBroker::start(Config {
        receive_maximum: 2,
        ..Config::default()
    })
    .await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "older").await;
    for id in 1..=3u16 {
        publ.send(Packet::Publish(publish("rm3", b"x", QoS::ExactlyOnce, id)))
            .await;
        assert!(matches!(publ.recv().await, Packet::PubRec(a) if a.packet_id == id));
    }
    for id in 1..=3u16 {
        publ.send(Packet::PubRel(Ack::new(id))).await;
        assert!(matches!(publ.recv().await, Packet::PubComp(a) if a.packet_id == id));
    }
}

#[tokio::test]
async fn messages_above_the_clients_maximum_packet_size_are_not_sent() {
    let b = TestBroker::default().await;
    let mut c = starling_codec::Connect::new(V::V5, "small");
    c.properties.maximum_packet_size = Some(64);
    let (mut sub, _) = Raw::connect(b.addr, c).await;
    sub.subscribe("mp", QoS::AtMostOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("mp", &[b'x'; 100], QoS::AtLeastOnce, 1).await;
    publ.publish("mp", b"small", QoS::AtLeastOnce, 2).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"small");
    let dropped = b.state.metrics.messages_dropped();
    assert_eq!(dropped, 1);
}

#[tokio::test]
async fn no_local_and_pass_through_properties() {
    let b = TestBroker::default().await;
    let mut me = Raw::client(b.addr, V::V5, "me").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    suback(&mut me, &[("nl", no_local)], None).await;
    let mut other = Raw::client(b.addr, V::V5, "other").await;
    other.subscribe("nl", QoS::AtMostOnce).await;
    let mut p = publish("nl", b"{}", QoS::AtLeastOnce, 1);
    p.properties.user_properties.push(("k".into(), "v".into()));
    p.properties.content_type = Some("application/json".into());
    p.properties.response_topic = Some("reply/here".into());
    p.properties.correlation_data = Some(Bytes::from_static(b"corr"));
    p.properties.payload_format_indicator = Some(true);
    me.send(Packet::Publish(p.clone())).await;
    assert!(matches!(me.recv().await, Packet::PubAck(_)));
    let got = other.expect_publish().await;
    assert_eq!(got.properties.user_properties, p.properties.user_properties);
    assert_eq!(got.properties.content_type, p.properties.content_type);
    assert_eq!(got.properties.response_topic, p.properties.response_topic);
    assert_eq!(
        got.properties.correlation_data,
        p.properties.correlation_data
    );
    assert_eq!(got.properties.payload_format_indicator, Some(true));
    assert!(
        me.sync().await.is_empty(),
        "No Local: not sent back to its publisher"
    );
}

#[tokio::test]
async fn invalid_utf8_payload_with_format_indicator_is_refused() {
    let b = TestBroker::default().await;
    let mut publ = Raw::client(b.addr, V::V5, "pfi").await;
    let mut p = publish("pfi", &[0xFF, 0xFE], QoS::AtLeastOnce, 1);
    p.properties.payload_format_indicator = Some(true);
    publ.send(Packet::Publish(p)).await;
    match publ.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::PAYLOAD_FORMAT_INVALID),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn puback_reports_no_matching_subscribers() {
    let b = TestBroker::default().await;
    let mut publ = Raw::client(b.addr, V::V5, "lonely").await;
    publ.send(Packet::Publish(publish(
        "nobody",
        b"x",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    match publ.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unsubscribe_reports_each_filter() {
    let b = TestBroker::default().await;
    let mut raw = Raw::client(b.addr, V::V5, "unsub").await;
    raw.subscribe("u/1", QoS::AtMostOnce).await;
    raw.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        properties: Default::default(),
        filters: vec!["u/1".into(), "u/2".into()],
    }))
    .await;
    match raw.recv().await {
        Packet::UnsubAck(UnsubAck { reason_codes, .. }) => {
            assert_eq!(
                reason_codes,
                [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            )
        }
        other => panic!("{other:?}"),
    }
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("u/1", b"x", QoS::AtLeastOnce, 1).await;
    assert!(raw.sync().await.is_empty());
}

#[tokio::test]
async fn acl_denies_publish_and_subscribe() {
    let path = std::env::temp_dir().join(format!("starling-acl-{}", std::process::id()));
    std::fs::write(
        &path,
        "topic readwrite open/#\ntopic read ro/#\npattern readwrite own/%c/#\n",
    )
    .unwrap();
    let b = TestBroker::start(Config {
        acl_file: Some(path),
        ..Config::default()
    })
    .await;
    let mut raw = Raw::client(b.addr, V::V5, "c1").await;
    let ack = suback(
        &mut raw,
        &[
            ("open/a", opts(QoS::AtMostOnce)),
            ("secret/a", opts(QoS::AtMostOnce)),
            ("own/c1/x", opts(QoS::AtMostOnce)),
            ("own/c2/x", opts(QoS::AtMostOnce)),
        ],
        None,
    )
    .await;
    let codes: Vec<u8> = ack.reason_codes.iter().map(|c| c.0).collect();
    assert_eq!(codes, [0, 0x87, 0, 0x87]);
    raw.send(Packet::Publish(publish("ro/x", b"x", QoS::AtLeastOnce, 1)))
        .await;
    match raw.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    let mut v3 = Raw::client(b.addr, V::V3_1_1, "c3").await;
    let ack = suback(&mut v3, &[("secret/a", opts(QoS::AtMostOnce))], None).await;
    assert_eq!(ack.reason_codes[0].0, 0x80);
}

#[tokio::test]
async fn an_acl_installed_while_running_applies_to_the_next_delivery() {
    let b = TestBroker::default().await;
    let mut sub = Raw::client(b.addr, V::V3_1_1, "reader").await;
    sub.subscribe("t/#", QoS::AtMostOnce).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "writer").await;
    publ.publish("t/a", b"before", QoS::AtLeastOnce, 1).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"before");
    // Writing stays allowed; reading t/# does not.
    let acl =
        starling_broker::auth::Acl::parse("topic write t/#\n", std::path::Path::new("runtime.acl"))
            .unwrap();
    b.state.set_acl(Some(acl));
    publ.publish("t/b", b"denied", QoS::AtLeastOnce, 2).await;
    assert!(sub.sync().await.is_empty(), "read access was taken away");
    b.state.set_acl(None);
    publ.publish("t/c", b"after", QoS::AtLeastOnce, 3).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_only_fills_its_own_queue() {
    let b = TestBroker::start(Config {
        max_queued_messages: 100,
        ..Config::default()
    })
    .await;
    // A subscriber that never reads its socket.
    let mut stalled = Raw::client(b.addr, V::V3_1_1, "stalled").await;
    stalled.subscribe("flood", QoS::AtLeastOnce).await;
    let mut fast = Raw::client(b.addr, V::V3_1_1, "fast").await;
    fast.subscribe("flood", QoS::AtLeastOnce).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "pub").await;
    let payload = Bytes::from(vec![b'x'; 4096]);
    let total = 3_000u32;
    // How many the fast subscriber has received: the publisher keeps at most
    // 50 ahead of it, so the fast subscriber's own queue (100) never
    // overflows however slowly a loaded machine runs its task; the stalled
    // one falls behind by thousands.
    let (progress, mut received) = tokio::sync::watch::channel(0u32);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            if let Packet::Publish(p) = fast.recv().await {
                fast.send(Packet::PubAck(Ack::new(p.packet_id))).await;
                n += 1;
                let _ = progress.send(n);
            }
        }
        n
    });
    for i in 0..total {
        if i >= 50 {
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                received.wait_for(|n| *n >= i - 50),
            )
            .await
            .expect("the fast subscriber keeps receiving")
            .expect("the reader runs");
        }
        let mut p = Publish::new("flood", payload.clone());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = (i % 60_000) as u16 + 1;
        publ.send(Packet::Publish(p)).await;
        assert!(
            matches!(publ.recv().await, Packet::PubAck(_)),
            "the publisher is never blocked"
        );
    }
    assert_eq!(
        reader.await.unwrap(),
        total,
        "the fast subscriber gets everything"
    );
    {
        let stalled = b.state.session("stalled").unwrap();
        let (queued, in_flight) = (stalled.queued(), stalled.in_flight());
        assert!(queued <= 100, "bounded queue: {queued}");
        // What left the queue is in the socket: bounded by the kernel buffers and
        // the connection's high-water mark, not by the number of messages sent.
        assert!(in_flight < total as usize, "in flight: {in_flight}");
    }
    let dropped = b.state.metrics.messages_dropped();
    assert!(
        dropped > 0,
        "the stalled subscriber's overflow was dropped and counted"
    );
    drop(stalled);
}

#[tokio::test]
async fn sys_topics_are_published() {
    let b = TestBroker::default().await;
    let mut sub = Raw::client(b.addr, V::V3_1_1, "sys").await;
    sub.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    starling_broker_sys_tick(&b);
    let topics: Vec<String> = sub
        .sync()
        .await
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.to_string()),
            _ => None,
        })
        .collect();
    for t in [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/clients/disconnected",
        "$SYS/broker/messages/stored",
        "$SYS/broker/store/messages/bytes",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
    ] {
        assert!(topics.iter().any(|x| x == t), "{t} in {topics:?}");
    }
}

fn starling_broker_sys_tick(b: &TestBroker) {
    starling_broker::publish_sys(&b.state);
}

#[tokio::test]
async fn shared_member_leaving_hands_its_unacked_messages_to_another() {
    let b = TestBroker::default().await;
    let mut m1 = Raw::client(b.addr, V::V5, "sm1").await;
    m1.subscribe("$share/g/sh", QoS::AtLeastOnce).await;
    let mut m2 = Raw::client(b.addr, V::V5, "sm2").await;
    m2.subscribe("$share/g/sh", QoS::AtLeastOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    publ.publish("sh", b"a", QoS::AtLeastOnce, 1).await;
    publ.publish("sh", b"b", QoS::AtLeastOnce, 2).await;
    // Each member has one unacknowledged message; m1 leaves without acking.
    let got1 = m1.expect_publish().await;
    drop(m1);
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let p = m2.expect_publish().await;
        m2.send(Packet::PubAck(Ack::new(p.packet_id))).await;
        payloads.push(p.payload.clone());
    }
    assert!(
        payloads.contains(&got1.payload),
        "m1's message went to m2: {payloads:?}"
    );
    payloads.sort();
    assert_eq!(
        payloads,
        [Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
}

#[tokio::test]
async fn topic_aliases_towards_the_client() {
    let b = TestBroker::default().await;
    let mut c = starling_codec::Connect::new(V::V5, "aliased");
    c.properties.topic_alias_maximum = Some(2);
    let (mut sub, _) = Raw::connect(b.addr, c).await;
    sub.subscribe("al/#", QoS::AtMostOnce).await;
    let mut publ = Raw::client(b.addr, V::V5, "pub").await;
    for t in ["al/a", "al/a", "al/b", "al/c", "al/b"] {
        publ.publish(t, b"x", QoS::AtLeastOnce, 1).await;
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let p = sub.expect_publish().await;
        seen.push((p.topic.to_string(), p.properties.topic_alias));
    }
    assert_eq!(
        seen,
        [
            ("al/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("al/b".to_string(), Some(2)),
            ("al/c".to_string(), None),
            (String::new(), Some(2)),
        ],
        "aliases within the client's maximum, then full topics"
    );
}

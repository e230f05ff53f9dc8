//! The event seam: an observer sees clients connect and disconnect, sessions
//! begin and end, and messages published, delivered and dropped.

mod common;

use common::{Raw, TestBroker};
use starling_broker::events::{DropReason, Event, Observer};
use starling_broker::Config;
use starling_codec::{Disconnect, Packet, ProtocolVersion as V, QoS};

/// Events until one matches `done`, bounded in count and time.
async fn until(obs: &mut Observer, done: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let event = tokio::time::timeout(common::WAIT, obs.recv())
            .await
            .expect("an event in time")
            .expect("no lag");
        let last = done(&event);
        seen.push(event);
        if last {
            return seen;
        }
    }
    panic!("not seen in 1000 events: {seen:?}");
}

#[tokio::test]
async fn an_observer_sees_the_life_of_a_client_and_a_message() {
    let b = TestBroker::start(Config {
        max_queued_messages: 1,
        ..Config::default()
    })
    .await;
    let mut obs = b.state.events.subscribe();
    let mut sub = Raw::client(b.addr, V::V5, "watcher").await;
    let seen = until(&mut obs, |e| matches!(e, Event::ClientConnected { .. })).await;
    assert!(matches!(&seen[0], Event::SessionCreated { client_id } if &**client_id == "watcher"));
    match &seen[1] {
        Event::ClientConnected {
            client_id,
            protocol,
            session_present,
            ..
        } => {
            assert_eq!(&**client_id, "watcher");
            assert_eq!(*protocol, V::V5);
            assert!(!session_present);
        }
        other => panic!("{other:?}"),
    }
    sub.subscribe("ev/+", QoS::AtLeastOnce).await;
    let mut publ = Raw::client(b.addr, V::V3_1_1, "talker").await;
    publ.publish("ev/1", b"hello", QoS::AtLeastOnce, 1).await;
    let seen = until(&mut obs, |e| matches!(e, Event::MessageDelivered { .. })).await;
    let published = seen.iter().find_map(|e| match e {
        Event::MessagePublished { message, receivers } => Some((message.clone(), *receivers)),
        _ => None,
    });
    let (message, receivers) = published.expect("published");
    assert_eq!(
        (&*message.topic, &message.payload[..], receivers),
        ("ev/1", &b"hello"[..], 1)
    );
    assert!(
        matches!(seen.last(), Some(Event::MessageDelivered { client_id, qos: QoS::AtLeastOnce, .. }) if &**client_id == "watcher")
    );
    // A subscriber that does not read: its one-message queue overflows.
    let _ = sub.expect_publish().await;
    let mut slow = Raw::client(b.addr, V::V5, "slow").await;
    slow.subscribe("ev/+", QoS::AtMostOnce).await;
    drop(slow);
    let mut stuck = starling_codec::Connect::new(V::V5, "stuck");
    stuck.clean_start = false;
    stuck.properties.session_expiry_interval = Some(60);
    let (mut s, _) = Raw::connect(b.addr, stuck).await;
    s.subscribe("ev/+", QoS::AtLeastOnce).await;
    s.send(Packet::Disconnect(Disconnect::default())).await;
    s.closed().await;
    for i in 0..3 {
        publ.publish("ev/2", b"more", QoS::AtLeastOnce, 2 + i).await;
    }
    let seen = until(&mut obs, |e| matches!(e, Event::MessageDropped { .. })).await;
    assert!(
        matches!(seen.last(), Some(Event::MessageDropped { client_id, reason: DropReason::QueueFull, .. }) if &**client_id == "stuck")
    );
    // Disconnecting ends the clean session.
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    sub.closed().await;
    let seen = until(
        &mut obs,
        |e| matches!(e, Event::SessionEnded { client_id } if &**client_id == "watcher"),
    )
    .await;
    assert!(seen.iter().any(
        |e| matches!(e, Event::ClientDisconnected { client_id, .. } if &**client_id == "watcher")
    ));
    drop(obs);
    assert!(!b.state.events.observed());
    b.stop().await;
}

#[tokio::test]
async fn a_refused_login_is_an_event_and_a_count() {
    let b = TestBroker::start(Config {
        allow_anonymous: false,
        ..Config::default()
    })
    .await;
    let mut obs = b.state.events.subscribe();
    let (_c, ack) = Raw::connect(b.addr, starling_codec::Connect::new(V::V5, "nobody")).await;
    assert_eq!(ack.reason_code.0, 0x87);
    let seen = until(&mut obs, |e| matches!(e, Event::AuthFailed { .. })).await;
    match seen.last() {
        Some(Event::AuthFailed {
            client_id,
            username,
            reason,
            ..
        }) => {
            assert_eq!(&**client_id, "nobody");
            assert!(username.is_none());
            assert_eq!(reason.0, 0x87);
        }
        other => panic!("{other:?}"),
    }
    let failures = starling_broker::metrics::Metrics::get(&b.state.metrics.auth_failures);
    assert_eq!(failures, 1);
    b.stop().await;
}

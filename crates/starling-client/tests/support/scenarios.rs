//! Client scenarios run against more than one broker (Starling in-process,
//! a real Mosquitto) and transport. Each takes an [`Opts`]: the connection
//! options for a protocol version and client id on the broker under test.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use starling_client::{
    Client, ConnectOptions, ConnectionStatus, LastWill, Message, ProtocolVersion, QoS, ReasonCode,
    ReconnectOptions,
};

/// How long a scenario waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Connection options for a protocol version and client id.
pub type Opts<'a> = &'a (dyn Fn(ProtocolVersion, &str) -> ConnectOptions + Sync);

/// A connected client.
pub async fn connect(opts: Opts<'_>, v: ProtocolVersion, id: &str) -> Client {
    Client::connect(opts(v, id))
        .await
        .unwrap_or_else(|e| panic!("connect {id}: {e}"))
        .0
}

/// The next message, within [`WAIT`].
pub async fn recv(c: &Client) -> Message {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("client closed")
}

/// Waits until the client's connection status satisfies `f`.
pub async fn wait_status(c: &Client, f: impl FnMut(&ConnectionStatus) -> bool) {
    let mut rx = c.status();
    tokio::time::timeout(WAIT, rx.wait_for(f))
        .await
        .expect("timed out waiting for the status")
        .expect("status channel closed");
}

/// Quick reconnection, for tests that drop the connection.
pub fn reconnecting(o: &mut ConnectOptions) {
    o.reconnect = Some(ReconnectOptions {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_attempts: Some(50),
    });
}

/// Waits until a reconnected client is connected for the second time, with
/// `session_present` as given.
async fn reconnected(c: &Client, session_present: bool) {
    wait_status(c, |s| {
        matches!(
            s,
            ConnectionStatus::Connected { connects: 2, session_present: p } if *p == session_present
        )
    })
    .await;
}

/// One message, then 50 in a row in order, at `qos` over `v`; a subscription at
/// QoS 0 gets the same message downgraded.
pub async fn round_trip(opts: Opts<'_>, v: ProtocolVersion, qos: QoS) {
    let sub = connect(opts, v, &format!("sub-{v}-{qos:?}")).await;
    let publ = connect(opts, v, &format!("pub-{v}-{qos:?}")).await;
    let granted = sub.subscribe("rt/+", qos).await.unwrap();
    assert_eq!(granted, ReasonCode(qos as u8), "{v} {qos:?}");
    let code = publ.publish("rt/one", "hello", qos, false).await.unwrap();
    assert!(!code.is_error());
    let msg = recv(&sub).await;
    assert_eq!(&*msg.topic, "rt/one");
    assert_eq!(&msg.payload[..], b"hello");
    assert_eq!(msg.qos, qos);
    assert!(!msg.retain);
    assert!(!msg.dup);
    for i in 0..50 {
        publ.publish("rt/seq", format!("{i}"), qos, false)
            .await
            .unwrap();
    }
    for i in 0..50 {
        let msg = recv(&sub).await;
        assert_eq!(msg.payload, Bytes::from(format!("{i}")));
    }
    let low = connect(opts, v, &format!("low-{v}-{qos:?}")).await;
    low.subscribe("rt/one", QoS::AtMostOnce).await.unwrap();
    publ.publish("rt/one", "down", qos, false).await.unwrap();
    let msg = recv(&low).await;
    assert_eq!(msg.qos, QoS::AtMostOnce);
    publ.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
    low.disconnect().await.unwrap();
}

/// A subscriber that reads only after 300 QoS 1 messages were published gets
/// them all, in order.
pub async fn slow_reader_loses_nothing(opts: Opts<'_>) {
    let mut o = opts(ProtocolVersion::V5, "slow");
    o.message_capacity = 4;
    let (sub, _) = Client::connect(o).await.unwrap();
    sub.subscribe("slow/t", QoS::AtLeastOnce).await.unwrap();
    let publ = connect(opts, ProtocolVersion::V5, "slow-pub").await;
    const N: usize = 300;
    for i in 0..N {
        publ.publish("slow/t", format!("{i}"), QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    for i in 0..N {
        let msg = recv(&sub).await;
        assert_eq!(msg.payload, Bytes::from(format!("{i}")));
    }
}

/// A will, with MQTT 5 properties, is published when its owner's connection
/// drops.
pub async fn will_fires_on_abrupt_drop(opts: Opts<'_>) {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let watcher = connect(opts, v, &format!("will-watch-{v}")).await;
        watcher.subscribe("will/#", QoS::AtLeastOnce).await.unwrap();
        let mut o = opts(v, &format!("will-owner-{v}"));
        let mut will = LastWill::new(format!("will/{v}"), "owner died");
        will.qos = QoS::AtLeastOnce;
        if v.is_v5() {
            will.properties.content_type = Some("text/plain".into());
            will.properties.user_properties = vec![("why".into(), "test".into())];
        }
        o.will = Some(will);
        let (owner, _) = Client::connect(o).await.unwrap();
        owner.drop_connection().await.unwrap();
        let msg = recv(&watcher).await;
        assert_eq!(&*msg.topic, format!("will/{v}"));
        assert_eq!(&msg.payload[..], b"owner died");
        assert_eq!(msg.qos, QoS::AtLeastOnce);
        if v.is_v5() {
            assert_eq!(msg.properties.content_type.as_deref(), Some("text/plain"));
            let props: Vec<(String, String)> = msg
                .properties
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(props, [("why".to_string(), "test".to_string())]);
        }
        // The owner is closed (no reconnect configured).
        assert!(owner.recv().await.is_none());
        watcher.disconnect().await.unwrap();
    }
}

/// Messages published while a persistent session is offline wait for it.
pub async fn offline_messages_wait_in_a_persistent_session(opts: Opts<'_>) {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let id = format!("persist-{v}");
        let mut o = opts(v, &id);
        o.clean_start = false;
        o.session_expiry = Some(300);
        let (c, _) = Client::connect(o.clone()).await.unwrap();
        c.subscribe("persist/t", QoS::AtLeastOnce).await.unwrap();
        c.disconnect().await.unwrap();
        let publ = connect(opts, v, &format!("persist-pub-{v}")).await;
        for i in 0..5 {
            publ.publish("persist/t", format!("away {i}"), QoS::AtLeastOnce, false)
                .await
                .unwrap();
        }
        let (c, ack) = Client::connect(o).await.unwrap();
        assert!(ack.session_present);
        for i in 0..5 {
            assert_eq!(recv(&c).await.payload, Bytes::from(format!("away {i}")));
        }
        c.disconnect().await.unwrap();
    }
}

/// A dropped connection reconnects by itself and resumes its session over
/// each of `versions`: subscriptions hold, and publishing works again.
pub async fn reconnect_resumes_the_session(opts: Opts<'_>, versions: &[ProtocolVersion]) {
    for &v in versions {
        let mut o = opts(v, &format!("resume-{v}"));
        o.clean_start = false;
        o.session_expiry = Some(300);
        reconnecting(&mut o);
        let (c, _) = Client::connect(o).await.unwrap();
        c.subscribe("resume/t", QoS::AtLeastOnce).await.unwrap();
        c.drop_connection().await.unwrap();
        reconnected(&c, true).await;
        let publ = connect(opts, v, &format!("resume-pub-{v}")).await;
        publ.publish("resume/t", "after", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(&recv(&c).await.payload[..], b"after");
        c.publish("resume/t", "own", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        assert_eq!(&recv(&c).await.payload[..], b"own");
        c.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
    }
}

/// A clean session that reconnects subscribes again by itself.
pub async fn reconnect_without_session_resubscribes(opts: Opts<'_>) {
    let mut o = opts(ProtocolVersion::V3_1_1, "resub");
    reconnecting(&mut o);
    let (c, _) = Client::connect(o).await.unwrap();
    c.subscribe("resub/t", QoS::AtLeastOnce).await.unwrap();
    c.drop_connection().await.unwrap();
    reconnected(&c, false).await;
    // The restoring SUBSCRIBE is in flight; publish from a second client until it lands.
    let publ = connect(opts, ProtocolVersion::V3_1_1, "resub-pub").await;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            publ.publish("resub/t", "again", QoS::AtLeastOnce, false)
                .await
                .unwrap();
            if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await
            {
                return msg;
            }
        }
    })
    .await
    .expect("resubscribed");
    assert_eq!(&got.payload[..], b"again");
    c.disconnect().await.unwrap();
}

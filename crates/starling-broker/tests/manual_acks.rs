//! `starling-client` with manual acknowledgements against the broker: a
//! QoS 1 message not acknowledged by the application comes again after a
//! reconnection; once acknowledged, it does not.

mod common;

use std::time::Duration;

use common::TestBroker;
use starling_client::{Client, ConnectOptions, QoS, ReconnectOptions};

#[tokio::test]
async fn an_unacknowledged_message_comes_again_and_an_acknowledged_one_does_not() {
    let b = TestBroker::default().await;
    let mut o = ConnectOptions::new("127.0.0.1", b.tcp.port());
    o.client_id = "manual".into();
    o.clean_start = false;
    o.session_expiry = Some(600);
    o.manual_acks = true;
    o.reconnect = Some(ReconnectOptions {
        initial_delay: Duration::from_millis(10),
        ..ReconnectOptions::default()
    });
    let (sub, _) = Client::connect(o).await.unwrap();
    sub.subscribe("m/#", QoS::AtLeastOnce).await.unwrap();
    let (publisher, _) = Client::connect(ConnectOptions::new("127.0.0.1", b.tcp.port()))
        .await
        .unwrap();
    publisher
        .publish("m/1", &b"one"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let first = tokio::time::timeout(common::WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first.payload[..], b"one");
    assert!(first.packet_id != 0);
    // Not acknowledged: after a reconnection the broker sends it again.
    sub.drop_connection().await.unwrap();
    let again = tokio::time::timeout(common::WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&again.payload[..], b"one");
    assert!(again.dup);
    sub.ack(&again).await.unwrap();
    // A round trip after the PUBACK: the broker has read it.
    sub.subscribe("sync", QoS::AtMostOnce).await.unwrap();
    // Acknowledged: a second message is the next thing after a reconnection.
    sub.drop_connection().await.unwrap();
    publisher
        .publish("m/2", &b"two"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let next = tokio::time::timeout(common::WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&next.payload[..], b"two");
    b.stop().await;
}

//! The client against a real Mosquitto broker, started on a free port per test.

mod common;
#[path = "support/scenarios.rs"]
mod scenarios;
#[path = "support/ws_bridge.rs"]
mod ws_bridge;

use std::time::Duration;

use bytes::Bytes;
use common::Mosquitto;
use scenarios::recv;
use starling_client::{
    Client, ClientError, ConnectCode, ConnectError, ConnectOptions, ConnectReturnCode, LastWill,
    Properties, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions,
};

fn opts(m: &Mosquitto, version: ProtocolVersion, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::from_url(&m.url()).expect("url");
    o.version = version;
    o.client_id = id.to_owned();
    o
}

async fn connect(m: &Mosquitto, version: ProtocolVersion, id: &str) -> Client {
    Client::connect(opts(m, version, id))
        .await
        .expect("connect")
        .0
}

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

#[tokio::test]
async fn connects_with_each_version() {
    let m = Mosquitto::start();
    for v in VERSIONS {
        let (c, ack) = Client::connect(opts(&m, v, &format!("ver-{v}")))
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(!ack.session_present);
        assert!(ack.code.is_success());
        assert_eq!(ack.version, v);
        assert_eq!(ack.client_id, format!("ver-{v}"));
        match v {
            ProtocolVersion::V5 => {
                assert_eq!(ack.code, ConnectCode::V5(ReasonCode::SUCCESS))
            }
            _ => assert_eq!(ack.code, ConnectCode::V3(ConnectReturnCode::Accepted)),
        }
        c.disconnect().await.unwrap();
        // After DISCONNECT, operations fail with a typed error and recv ends.
        assert!(matches!(
            c.publish("a", "b", QoS::AtMostOnce, false).await,
            Err(ClientError::Closed(_))
        ));
        assert!(c.recv().await.is_none());
    }
}

#[tokio::test]
async fn v5_empty_client_id_gets_an_assigned_one() {
    let m = Mosquitto::start();
    let (c, ack) = Client::connect(opts(&m, ProtocolVersion::V5, ""))
        .await
        .unwrap();
    let assigned = ack.assigned_client_id.expect("assigned id");
    assert!(!assigned.is_empty());
    assert_eq!(ack.client_id, assigned);
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session() {
    let m = Mosquitto::start();
    let (c, ack) = Client::connect(opts(&m, ProtocolVersion::V3_1_1, ""))
        .await
        .unwrap();
    assert_eq!(ack.assigned_client_id, None);
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn connects_with_every_option() {
    let m = Mosquitto::start_with_password("alice", "s3cret");
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut o = opts(&m, v, &format!("every-{v}"));
        o.clean_start = false;
        o.session_expiry = Some(60);
        o.username = Some("alice".into());
        o.password = Some(Bytes::from_static(b"s3cret"));
        let mut will = LastWill::new("wills/every", "gone");
        will.qos = QoS::AtLeastOnce;
        will.retain = false;
        will.properties.will_delay_interval = Some(0);
        will.properties.content_type = Some("text/plain".into());
        will.properties.user_properties = vec![("k".into(), "v".into())];
        o.will = Some(will);
        o.keep_alive = Duration::from_secs(30);
        o.connect_timeout = Duration::from_secs(5);
        o.receive_maximum = Some(10);
        o.maximum_packet_size = Some(64 * 1024);
        o.topic_alias_maximum = Some(5);
        o.user_properties = vec![("app".into(), "starling-test".into())];
        let (c, ack) = Client::connect(o)
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(ack.code.is_success());
        if v.is_v5() {
            // Mosquitto announces its limits in CONNACK.
            assert!(ack.limits.receive_maximum > 0);
        }
        // The session survives: a second connection finds it.
        c.disconnect().await.unwrap();
        let mut o = opts(&m, v, &format!("every-{v}"));
        o.clean_start = false;
        o.session_expiry = Some(60);
        o.username = Some("alice".into());
        o.password = Some(Bytes::from_static(b"s3cret"));
        let (c, ack) = Client::connect(o).await.unwrap();
        assert!(ack.session_present, "{v}: session present");
        c.disconnect().await.unwrap();
    }
}

async fn refusal(o: ConnectOptions) -> (ConnectCode, String) {
    match Client::connect(o).await {
        Err(ConnectError::Refused(r)) => {
            let text = ConnectError::Refused(r.clone()).to_string();
            (r.code, text)
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[tokio::test]
async fn refusals_name_their_reason() {
    let m = Mosquitto::start_with_password("alice", "s3cret");
    // Bad password.
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut o = opts(&m, v, "bad-pass");
        o.username = Some("alice".into());
        o.password = Some(Bytes::from_static(b"wrong"));
        let (code, text) = refusal(o).await;
        assert!(text.starts_with("connection refused: "), "{text}");
        match v {
            ProtocolVersion::V5 => {
                // Mosquitto 2.0 answers a wrong password with "not authorized".
                assert!(
                    matches!(
                        code,
                        ConnectCode::V5(
                            ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::NOT_AUTHORIZED
                        )
                    ),
                    "{code:?}"
                );
                assert!(text.contains(code.reason_code().name().unwrap()), "{text}");
            }
            _ => {
                assert!(
                    matches!(
                        code,
                        ConnectCode::V3(
                            ConnectReturnCode::BadUserNameOrPassword
                                | ConnectReturnCode::NotAuthorized
                        )
                    ),
                    "{code:?}"
                );
                assert!(text.contains(&code.to_string()), "{text}");
            }
        }
    }
    // No credentials at all.
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (code, text) = refusal(opts(&m, v, "anon")).await;
        match v {
            ProtocolVersion::V5 => assert_eq!(code, ConnectCode::V5(ReasonCode::NOT_AUTHORIZED)),
            _ => assert_eq!(code, ConnectCode::V3(ConnectReturnCode::NotAuthorized)),
        }
        assert!(text.contains("not authorized"), "{text}");
    }
}

#[tokio::test]
async fn refusal_identifier_rejected() {
    let m = Mosquitto::start();
    // 3.1 has no empty client ids; 3.1.1 allows one only with a clean session ([MQTT-3.1.3-8]).
    for (v, clean) in [
        (ProtocolVersion::V3_1, true),
        (ProtocolVersion::V3_1_1, false),
    ] {
        let mut o = opts(&m, v, "");
        o.clean_start = clean;
        let (code, text) = refusal(o).await;
        assert_eq!(code, ConnectCode::V3(ConnectReturnCode::IdentifierRejected));
        assert_eq!(
            text,
            "connection refused: identifier rejected (return code 2)"
        );
    }
    // 5.0: a server that assigns no identifiers.
    let m = Mosquitto::start_with(
        "allow_anonymous true\nallow_zero_length_clientid false\n",
        |_| {},
    );
    // Mosquitto 2.0.11 answers with "unspecified error" here; 0x85 is what the spec suggests.
    let (code, text) = refusal(opts(&m, ProtocolVersion::V5, "")).await;
    assert!(
        matches!(
            code,
            ConnectCode::V5(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID | ReasonCode::UNSPECIFIED_ERROR
            )
        ),
        "{code:?}"
    );
    assert!(text.contains(code.reason_code().name().unwrap()), "{text}");
}

async fn round_trip(v: ProtocolVersion, qos: QoS) {
    let m = Mosquitto::start();
    scenarios::round_trip(&|v, id| opts(&m, v, id), v, qos).await;
}

#[tokio::test]
async fn qos0_round_trip_v311() {
    round_trip(ProtocolVersion::V3_1_1, QoS::AtMostOnce).await;
}

#[tokio::test]
async fn qos1_round_trip_v311() {
    round_trip(ProtocolVersion::V3_1_1, QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos2_round_trip_v311() {
    round_trip(ProtocolVersion::V3_1_1, QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn qos0_round_trip_v5() {
    round_trip(ProtocolVersion::V5, QoS::AtMostOnce).await;
}

#[tokio::test]
async fn qos1_round_trip_v5() {
    round_trip(ProtocolVersion::V5, QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos2_round_trip_v5() {
    round_trip(ProtocolVersion::V5, QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn qos2_round_trip_v31() {
    round_trip(ProtocolVersion::V3_1, QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn retained_messages_and_properties_v5() {
    let m = Mosquitto::start();
    let publ = connect(&m, ProtocolVersion::V5, "ret-pub").await;
    let props = Properties {
        content_type: Some("application/json".into()),
        user_properties: vec![("a".into(), "1".into())],
        ..Properties::default()
    };
    publ.publish_with_properties("ret/x", "{}", QoS::AtLeastOnce, true, props)
        .await
        .unwrap();
    let sub = connect(&m, ProtocolVersion::V5, "ret-sub").await;
    let codes = sub
        .subscribe_many(
            [(
                "ret/#",
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            Properties {
                subscription_identifiers: vec![7],
                ..Properties::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(codes, vec![ReasonCode::GRANTED_QOS_1]);
    let msg = recv(&sub).await;
    assert!(msg.retain);
    assert_eq!(
        msg.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(msg.properties.subscription_identifiers, vec![7]);
    assert_eq!(msg.properties.user_properties.len(), 1);
    let codes = sub
        .unsubscribe(["ret/#", "never/subscribed"])
        .await
        .unwrap();
    assert_eq!(
        codes,
        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    // Clear the retained message.
    publ.publish("ret/x", "", QoS::AtLeastOnce, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn invalid_topics_fail_locally() {
    let m = Mosquitto::start();
    let c = connect(&m, ProtocolVersion::V5, "invalid").await;
    assert!(matches!(
        c.publish("a/+", "x", QoS::AtMostOnce, false).await,
        Err(ClientError::InvalidTopic(_))
    ));
    assert!(matches!(
        c.subscribe("a/#/b", QoS::AtMostOnce).await,
        Err(ClientError::InvalidTopic(_))
    ));
    // The connection is still fine.
    c.publish("a/b", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn will_fires_on_abrupt_drop() {
    let m = Mosquitto::start();
    scenarios::will_fires_on_abrupt_drop(&|v, id| opts(&m, v, id)).await;
}

#[tokio::test]
async fn will_not_sent_on_clean_disconnect() {
    let m = Mosquitto::start();
    let watcher = connect(&m, ProtocolVersion::V5, "nowill-watch").await;
    watcher
        .subscribe("nowill/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut o = opts(&m, ProtocolVersion::V5, "nowill-owner");
    o.will = Some(LastWill::new("nowill/w", "should not appear"));
    let (owner, _) = Client::connect(o).await.unwrap();
    owner.disconnect().await.unwrap();
    // A marker published after the disconnect arrives first: no will came before it.
    let marker = connect(&m, ProtocolVersion::V5, "nowill-marker").await;
    marker
        .publish("nowill/marker", "m", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let msg = recv(&watcher).await;
    assert_eq!(&*msg.topic, "nowill/marker");
}

#[tokio::test]
async fn offline_messages_wait_in_a_persistent_session() {
    let m = Mosquitto::start();
    scenarios::offline_messages_wait_in_a_persistent_session(&|v, id| opts(&m, v, id)).await;
}

#[tokio::test]
async fn reconnect_resumes_the_session() {
    let m = Mosquitto::start();
    scenarios::reconnect_resumes_the_session(&|v, id| opts(&m, v, id), &[ProtocolVersion::V5])
        .await;
}

#[tokio::test]
async fn reconnect_without_session_resubscribes() {
    let m = Mosquitto::start();
    scenarios::reconnect_without_session_resubscribes(&|v, id| opts(&m, v, id)).await;
}

#[tokio::test]
async fn slow_reader_loses_nothing() {
    let m = Mosquitto::start();
    scenarios::slow_reader_loses_nothing(&|v, id| opts(&m, v, id)).await;
}

#[tokio::test]
async fn many_publishes_in_flight_at_once() {
    let m = Mosquitto::start();
    let c = connect(&m, ProtocolVersion::V5, "burst").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        tasks.push(tokio::spawn(async move {
            c.publish(format!("burst/{i}"), "x", qos, false).await
        }));
    }
    for t in tasks {
        assert!(!t.await.unwrap().unwrap().is_error());
    }
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn websocket_round_trip() {
    let m = Mosquitto::start();
    let ws_port = ws_bridge::websocket_bridge(m.port, None).await;
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let url = format!("ws://127.0.0.1:{ws_port}/mqtt");
        let mut o = ConnectOptions::from_url(&url).unwrap();
        o.version = v;
        o.client_id = format!("ws-{v}");
        let (c, ack) = Client::connect(o)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
        assert!(ack.code.is_success());
        c.subscribe("ws/t", QoS::ExactlyOnce).await.unwrap();
        c.publish("ws/t", "over websocket", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        let msg = recv(&c).await;
        assert_eq!(&msg.payload[..], b"over websocket");
        c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn v5_disconnect_with_session_expiry_and_will() {
    let m = Mosquitto::start();
    // DISCONNECT with session expiry 0 ends a session that would have lasted.
    let mut o = opts(&m, ProtocolVersion::V5, "expiry");
    o.clean_start = false;
    o.session_expiry = Some(300);
    let (c, _) = Client::connect(o.clone()).await.unwrap();
    c.subscribe("expiry/t", QoS::AtLeastOnce).await.unwrap();
    c.disconnect_with(ReasonCode::NORMAL_DISCONNECTION, Some(0))
        .await
        .unwrap();
    let (c, ack) = Client::connect(o.clone()).await.unwrap();
    assert!(
        !ack.session_present,
        "the session ended with the connection"
    );
    // Without the override, the session is kept.
    c.disconnect().await.unwrap();
    let (c, ack) = Client::connect(o).await.unwrap();
    assert!(ack.session_present);
    c.disconnect().await.unwrap();

    // DISCONNECT "with will message" makes the server publish the will.
    let watcher = connect(&m, ProtocolVersion::V5, "dww-watch").await;
    watcher.subscribe("dww/#", QoS::AtLeastOnce).await.unwrap();
    let mut o = opts(&m, ProtocolVersion::V5, "dww-owner");
    o.will = Some(LastWill::new("dww/w", "asked for it"));
    let (owner, _) = Client::connect(o).await.unwrap();
    owner
        .disconnect_with(ReasonCode::DISCONNECT_WITH_WILL, None)
        .await
        .unwrap();
    let msg = recv(&watcher).await;
    assert_eq!(&msg.payload[..], b"asked for it");
}

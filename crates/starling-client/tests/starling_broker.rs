//! The client against our own broker, started in-process on port 0 per test.
//!
//! The same ground as `mosquitto.rs` (versions, every option, each refusal
//! code, QoS round trips, wills, session resumption, reconnection) plus the
//! MQTT 5 features Starling implements: subscription identifiers, user
//! properties and other PUBLISH properties passed through, topic aliases,
//! Receive Maximum and Maximum Packet Size.

#[path = "support/scenarios.rs"]
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use starling_broker::auth::{hash_password, PasswordFile};
use starling_broker::store::Durability;
use starling_broker::{Broker, Config, ShutdownHandle};
use starling_client::{
    Client, ClientError, ConnectCode, ConnectError, ConnectOptions, ConnectReturnCode,
    ConnectionStatus, LastWill, Message, Properties, ProtocolVersion, QoS, ReasonCode,
    SubscriptionOptions,
};
use starling_codec::{Connect, Decoder, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use scenarios::{recv, wait_status, WAIT};

/// A broker running in this test's runtime; shut down on drop.
struct Starling {
    addr: SocketAddr,
    handle: ShutdownHandle,
    dir: PathBuf,
}

impl Drop for Starling {
    fn drop(&mut self) {
        self.handle.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "starling-client-vs-broker-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl Starling {
    async fn start() -> Starling {
        Self::start_with(|_, _| {}).await
    }

    /// Starts a broker after `edit` has adjusted the configuration (it gets the
    /// broker's own temporary directory for files it needs).
    async fn start_with(edit: impl FnOnce(&mut Config, &std::path::Path)) -> Starling {
        let dir = temp_dir();
        let mut config = Config {
            listen: vec!["mqtt://127.0.0.1:0".to_string()],
            data_dir: dir.join("data"),
            sys_interval: 0,
            // Memory only: these tests are about the wire, not the disk.
            durability: Durability::None,
            ..Config::default()
        };
        edit(&mut config, &dir);
        let broker = Broker::bind(config).await.expect("broker binds");
        let addr = broker.local_addrs()[0];
        let handle = broker.shutdown_handle();
        tokio::spawn(broker.run());
        Starling { addr, handle, dir }
    }

    /// A broker that knows `alice` / `s3cret` and refuses anonymous clients.
    async fn with_password() -> Starling {
        Self::start_with(|c, dir| {
            let mut file = PasswordFile::default();
            file.set("alice", hash_password("s3cret").expect("hash"));
            let path = dir.join("passwd");
            std::fs::write(&path, file.to_text()).expect("write password file");
            c.password_file = Some(path);
            c.allow_anonymous = false;
        })
        .await
    }

    fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    fn opts(&self, version: ProtocolVersion, id: &str) -> ConnectOptions {
        let mut o = ConnectOptions::from_url(&self.url()).expect("url");
        o.version = version;
        o.client_id = id.to_owned();
        o.connect_timeout = WAIT;
        o
    }

    async fn connect(&self, version: ProtocolVersion, id: &str) -> Client {
        Client::connect(self.opts(version, id))
            .await
            .unwrap_or_else(|e| panic!("connect {id}: {e}"))
            .0
    }
}

/// Publishes a marker on `topic` and returns every message that arrived before it.
async fn until_marker(publ: &Client, sub: &Client, topic: &str) -> Vec<Message> {
    publ.publish(topic, "marker", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let mut before = Vec::new();
    loop {
        let m = recv(sub).await;
        if &*m.topic == topic && &m.payload[..] == b"marker" {
            return before;
        }
        before.push(m);
    }
}

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

#[tokio::test]
async fn connects_with_each_version() {
    let b = Starling::start().await;
    for v in VERSIONS {
        let (c, ack) = Client::connect(b.opts(v, &format!("ver-{v}")))
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(!ack.session_present);
        assert_eq!(ack.version, v);
        assert_eq!(ack.client_id, format!("ver-{v}"));
        match v {
            ProtocolVersion::V5 => {
                assert_eq!(ack.code, ConnectCode::V5(ReasonCode::SUCCESS));
                // Starling announces what it supports.
                assert!(ack.limits.retain_available);
                assert!(ack.limits.wildcard_subscription_available);
                assert!(ack.limits.subscription_identifiers_available);
                assert!(ack.limits.shared_subscription_available);
                assert_eq!(ack.limits.maximum_qos, QoS::ExactlyOnce);
            }
            _ => assert_eq!(ack.code, ConnectCode::V3(ConnectReturnCode::Accepted)),
        }
        c.disconnect().await.unwrap();
        assert!(matches!(
            c.publish("a", "b", QoS::AtMostOnce, false).await,
            Err(ClientError::Closed(_))
        ));
        assert!(c.recv().await.is_none());
    }
}

#[tokio::test]
async fn empty_client_ids() {
    let b = Starling::start().await;
    // MQTT 5: the server assigns one and says which.
    let (c, ack) = Client::connect(b.opts(ProtocolVersion::V5, ""))
        .await
        .unwrap();
    let assigned = ack.assigned_client_id.expect("assigned id");
    assert!(!assigned.is_empty());
    assert_eq!(ack.client_id, assigned);
    c.disconnect().await.unwrap();
    // 3.1.1 with a clean session: accepted, nothing to announce.
    let (c, ack) = Client::connect(b.opts(ProtocolVersion::V3_1_1, ""))
        .await
        .unwrap();
    assert_eq!(ack.assigned_client_id, None);
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn connects_with_every_option() {
    let b = Starling::with_password().await;
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let every = |o: &mut ConnectOptions| {
            o.clean_start = false;
            o.session_expiry = Some(60);
            o.username = Some("alice".into());
            o.password = Some(Bytes::from_static(b"s3cret"));
        };
        let mut o = b.opts(v, &format!("every-{v}"));
        every(&mut o);
        let mut will = LastWill::new("wills/every", "gone");
        will.qos = QoS::AtLeastOnce;
        will.properties.will_delay_interval = Some(0);
        will.properties.content_type = Some("text/plain".into());
        will.properties.user_properties = vec![("k".into(), "v".into())];
        o.will = Some(will);
        o.keep_alive = Duration::from_secs(30);
        o.receive_maximum = Some(10);
        o.maximum_packet_size = Some(64 * 1024);
        o.topic_alias_maximum = Some(5);
        o.user_properties = vec![("app".into(), "starling-test".into())];
        let (c, ack) = Client::connect(o)
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(ack.code.is_success());
        assert!(!ack.session_present);
        c.subscribe("every/t", QoS::AtLeastOnce).await.unwrap();
        c.disconnect().await.unwrap();
        // The session survives the connection: the next one finds it, with its
        // subscription.
        let mut o = b.opts(v, &format!("every-{v}"));
        every(&mut o);
        let (c, ack) = Client::connect(o).await.unwrap();
        assert!(ack.session_present, "{v}: session present");
        c.publish("every/t", "still subscribed", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(&recv(&c).await.payload[..], b"still subscribed");
        c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn keep_alive_holds_an_idle_connection() {
    let b = Starling::start().await;
    let mut o = b.opts(ProtocolVersion::V3_1_1, "idle");
    o.keep_alive = Duration::from_secs(1);
    let (c, _) = Client::connect(o).await.unwrap();
    c.subscribe("idle/t", QoS::AtLeastOnce).await.unwrap();
    // Idle for more than one and a half keep-alive periods: PINGREQs keep it open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(matches!(
        &*c.status().borrow(),
        ConnectionStatus::Connected { connects: 1, .. }
    ));
    c.publish("idle/t", "awake", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(&recv(&c).await.payload[..], b"awake");
    c.disconnect().await.unwrap();
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
async fn refusal_bad_credentials_and_not_authorized() {
    let b = Starling::with_password().await;
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        // Wrong password, and a user the file does not know.
        for (user, pass) in [("alice", "wrong"), ("mallory", "s3cret")] {
            let mut o = b.opts(v, "bad-pass");
            o.username = Some(user.into());
            o.password = Some(Bytes::from(pass));
            let (code, text) = refusal(o).await;
            match v {
                ProtocolVersion::V5 => {
                    assert_eq!(code, ConnectCode::V5(ReasonCode::BAD_USER_NAME_OR_PASSWORD))
                }
                _ => assert_eq!(
                    code,
                    ConnectCode::V3(ConnectReturnCode::BadUserNameOrPassword)
                ),
            }
            assert!(text.contains("bad user name or password"), "{text}");
        }
        // No user name where anonymous clients are not allowed.
        let (code, text) = refusal(b.opts(v, "anon")).await;
        match v {
            ProtocolVersion::V5 => assert_eq!(code, ConnectCode::V5(ReasonCode::NOT_AUTHORIZED)),
            _ => assert_eq!(code, ConnectCode::V3(ConnectReturnCode::NotAuthorized)),
        }
        assert!(text.contains("not authorized"), "{text}");
        // And the right password gets in.
        let mut o = b.opts(v, "good");
        o.username = Some("alice".into());
        o.password = Some(Bytes::from_static(b"s3cret"));
        let (c, _) = Client::connect(o).await.unwrap();
        c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn refusal_identifier_rejected() {
    let b = Starling::start_with(|c, _| c.max_client_id_len = 30).await;
    // 3.1: 1 to 23 characters; 3.1.1: empty only with a clean session ([MQTT-3.1.3-8]).
    let long = "x".repeat(24);
    for (v, id, clean) in [
        (ProtocolVersion::V3_1, "", true),
        (ProtocolVersion::V3_1, long.as_str(), true),
        (ProtocolVersion::V3_1_1, "", false),
    ] {
        let mut o = b.opts(v, id);
        o.clean_start = clean;
        let (code, text) = refusal(o).await;
        assert_eq!(code, ConnectCode::V3(ConnectReturnCode::IdentifierRejected));
        assert_eq!(
            text,
            "connection refused: identifier rejected (return code 2)"
        );
    }
    // Longer than the configured maximum.
    let too_long = "y".repeat(31);
    let (code, _) = refusal(b.opts(ProtocolVersion::V3_1_1, &too_long)).await;
    assert_eq!(code, ConnectCode::V3(ConnectReturnCode::IdentifierRejected));
    let (code, text) = refusal(b.opts(ProtocolVersion::V5, &too_long)).await;
    assert_eq!(
        code,
        ConnectCode::V5(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
    );
    assert!(text.contains("(reason code 0x85)"), "{text}");
}

#[tokio::test]
async fn refusal_server_unavailable_when_full() {
    let b = Starling::start_with(|c, _| c.max_connections = 1).await;
    let first = b.connect(ProtocolVersion::V5, "first").await;
    let (code, _) = refusal(b.opts(ProtocolVersion::V3_1_1, "second")).await;
    assert_eq!(code, ConnectCode::V3(ConnectReturnCode::ServerUnavailable));
    let (code, text) = refusal(b.opts(ProtocolVersion::V5, "second")).await;
    assert_eq!(code, ConnectCode::V5(ReasonCode::QUOTA_EXCEEDED));
    assert!(text.contains("0x97"), "{text}");
    first.disconnect().await.unwrap();
}

/// Sends raw CONNECT bytes and returns the CONNACK's code byte (a 3.x return
/// code or a 5.0 reason code, by `version`).
async fn raw_connack(b: &Starling, connect: &[u8], version: ProtocolVersion) -> Option<u8> {
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    s.write_all(connect).await.unwrap();
    let mut buf = BytesMut::new();
    let mut d = Decoder::with_version(version);
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(p) = d.decode(&mut buf).expect("broker sends a valid packet") {
                return match p {
                    // The codec maps a 3.x return code to its reason code; undo that.
                    Packet::ConnAck(a) if version.is_v5() => Some(a.reason_code.0),
                    Packet::ConnAck(a) => Some(a.return_code() as u8),
                    other => panic!("expected CONNACK, got {other:?}"),
                };
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
    .expect("broker answers or closes")
}

/// The refusals the client library cannot provoke (it only speaks valid
/// versions and has no AUTH support), checked on raw sockets.
#[tokio::test]
async fn refusal_protocol_version_and_auth_method() {
    let b = Starling::start().await;
    // "MQTT" level 3: 3.1.1 form, return code 1 ([MQTT-3.1.2-2]).
    let level3 = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x01, b'x',
    ];
    assert_eq!(
        raw_connack(&b, &level3, ProtocolVersion::V3_1_1).await,
        Some(1)
    );
    // "MQTT" level 6: answered in the 5.0 form with 0x84.
    let level6 = [
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x01,
        b'x',
    ];
    assert_eq!(
        raw_connack(&b, &level6, ProtocolVersion::V5).await,
        Some(0x84)
    );
    // MQTT 5 with an authentication method Starling does not offer: 0x8C.
    let mut c = Connect::new(ProtocolVersion::V5, "auth");
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(c))
        .encode(ProtocolVersion::V5, &mut buf)
        .unwrap();
    assert_eq!(raw_connack(&b, &buf, ProtocolVersion::V5).await, Some(0x8C));
}

async fn round_trip(v: ProtocolVersion, qos: QoS) {
    let b = Starling::start().await;
    scenarios::round_trip(&|v, id| b.opts(v, id), v, qos).await;
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
async fn many_publishes_in_flight_at_once() {
    // A small Receive Maximum on the broker: the client must respect it.
    let b = Starling::start_with(|c, _| c.receive_maximum = 5).await;
    let (c, ack) = Client::connect(b.opts(ProtocolVersion::V5, "burst"))
        .await
        .unwrap();
    assert_eq!(ack.limits.receive_maximum, 5);
    c.subscribe("burst/#", QoS::ExactlyOnce).await.unwrap();
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
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                recv(&c).await;
            }
        })
    };
    for t in tasks {
        assert!(!t.await.unwrap().unwrap().is_error());
    }
    reader.await.unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn slow_reader_loses_nothing() {
    let b = Starling::start().await;
    scenarios::slow_reader_loses_nothing(&|v, id| b.opts(v, id)).await;
}

#[tokio::test]
async fn will_fires_on_abrupt_drop() {
    let b = Starling::start().await;
    scenarios::will_fires_on_abrupt_drop(&|v, id| b.opts(v, id)).await;
}

#[tokio::test]
async fn retained_will_and_clean_disconnect() {
    let b = Starling::start().await;
    let watcher = b.connect(ProtocolVersion::V5, "nowill-watch").await;
    watcher
        .subscribe("nowill/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    // A clean DISCONNECT discards the will.
    let mut o = b.opts(ProtocolVersion::V5, "nowill-owner");
    o.will = Some(LastWill::new("nowill/w", "should not appear"));
    let (owner, _) = Client::connect(o).await.unwrap();
    owner.disconnect().await.unwrap();
    let marker = b.connect(ProtocolVersion::V5, "nowill-marker").await;
    let before = until_marker(&marker, &watcher, "nowill/marker").await;
    assert!(before.is_empty(), "no will: {before:?}");
    // A retained will is kept for later subscribers.
    let mut o = b.opts(ProtocolVersion::V3_1_1, "retained-owner");
    let mut will = LastWill::new("lastwords/owner", "bye");
    will.retain = true;
    o.will = Some(will);
    let (owner, _) = Client::connect(o).await.unwrap();
    owner.drop_connection().await.unwrap();
    let late = tokio::time::timeout(WAIT, async {
        loop {
            let c = b.connect(ProtocolVersion::V3_1_1, "late").await;
            c.subscribe("lastwords/#", QoS::AtLeastOnce).await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), c.recv()).await {
                return m;
            }
            c.disconnect().await.unwrap();
        }
    })
    .await
    .expect("retained will arrives");
    assert!(late.retain);
    assert_eq!(&late.payload[..], b"bye");
}

#[tokio::test]
async fn offline_messages_wait_in_a_persistent_session() {
    let b = Starling::start().await;
    scenarios::offline_messages_wait_in_a_persistent_session(&|v, id| b.opts(v, id)).await;
}

#[tokio::test]
async fn reconnect_resumes_the_session() {
    let b = Starling::start().await;
    let versions = [ProtocolVersion::V3_1_1, ProtocolVersion::V5];
    scenarios::reconnect_resumes_the_session(&|v, id| b.opts(v, id), &versions).await;
}

#[tokio::test]
async fn reconnect_without_session_resubscribes() {
    let b = Starling::start().await;
    scenarios::reconnect_without_session_resubscribes(&|v, id| b.opts(v, id)).await;
}

#[tokio::test]
async fn session_takeover_closes_the_old_connection() {
    let b = Starling::start().await;
    let old = b.connect(ProtocolVersion::V5, "twin").await;
    let new = b.connect(ProtocolVersion::V5, "twin").await;
    wait_status(&old, |s| matches!(s, ConnectionStatus::Closed { .. })).await;
    new.subscribe("twin/t", QoS::AtMostOnce).await.unwrap();
    new.publish("twin/t", "alive", QoS::AtMostOnce, false)
        .await
        .unwrap();
    assert_eq!(&recv(&new).await.payload[..], b"alive");
}

#[tokio::test]
async fn subscription_identifiers_and_properties_pass_through() {
    let b = Starling::start().await;
    let sub = b.connect(ProtocolVersion::V5, "props-sub").await;
    let publ = b.connect(ProtocolVersion::V5, "props-pub").await;
    let with_id = |id: u32| Properties {
        subscription_identifiers: vec![id],
        ..Properties::default()
    };
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    for (filter, id) in [("sid/a", 1), ("sid/+", 2), ("mark/#", 3)] {
        let codes = sub
            .subscribe_many([(filter, opts)], with_id(id))
            .await
            .unwrap();
        assert_eq!(codes, vec![ReasonCode::GRANTED_QOS_1]);
    }
    let props = Properties {
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(3600),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ],
        ..Properties::default()
    };
    publ.publish_with_properties("sid/a", "{}", QoS::AtLeastOnce, false, props)
        .await
        .unwrap();
    let got = until_marker(&publ, &sub, "mark/x").await;
    // One copy per subscription ([MQTT-3.3.4-5]) or one copy with both ids
    // ([MQTT-3.3.4-4]): either way ids 1 and 2, and never 3.
    assert!(!got.is_empty() && got.len() <= 2, "{got:?}");
    let mut ids: Vec<u32> = got
        .iter()
        .flat_map(|m| m.properties.subscription_identifiers.clone())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2], "{got:?}");
    for m in &got {
        assert!(!m.properties.subscription_identifiers.is_empty());
        let p = &m.properties;
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.response_topic.as_deref(), Some("reply/here"));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"corr-1"[..]));
        assert_eq!(p.payload_format_indicator, Some(true));
        // The expiry counts down, but not by much here.
        assert!(
            matches!(p.message_expiry_interval, Some(3590..=3600)),
            "{p:?}"
        );
        // User properties keep their order, duplicates included ([MQTT-3.3.2-18]).
        let user: Vec<(String, String)> = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            user,
            [("a", "1"), ("b", "2"), ("a", "3")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}

#[tokio::test]
async fn retained_messages_and_unsubscribe() {
    let b = Starling::start().await;
    let publ = b.connect(ProtocolVersion::V5, "ret-pub").await;
    let props = Properties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("r".into(), "1".into())],
        ..Properties::default()
    };
    publ.publish_with_properties("ret/x", "kept", QoS::AtLeastOnce, true, props)
        .await
        .unwrap();
    let sub = b.connect(ProtocolVersion::V5, "ret-sub").await;
    sub.subscribe("ret/#", QoS::AtLeastOnce).await.unwrap();
    let msg = recv(&sub).await;
    assert!(msg.retain);
    assert_eq!(&msg.payload[..], b"kept");
    assert_eq!(msg.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(msg.properties.user_properties.len(), 1);
    let codes = sub
        .unsubscribe(["ret/#", "never/subscribed"])
        .await
        .unwrap();
    assert_eq!(
        codes,
        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    // An empty retained payload clears it.
    publ.publish("ret/x", "", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    let late = b.connect(ProtocolVersion::V5, "ret-late").await;
    late.subscribe("ret/#", QoS::AtLeastOnce).await.unwrap();
    let before = until_marker(&publ, &late, "ret/marker").await;
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn inbound_topic_aliases_are_resolved() {
    let b = Starling::start().await;
    let mut o = b.opts(ProtocolVersion::V5, "alias-sub");
    o.topic_alias_maximum = Some(4);
    let (sub, _) = Client::connect(o).await.unwrap();
    sub.subscribe("alias/#", QoS::AtLeastOnce).await.unwrap();
    let publ = b.connect(ProtocolVersion::V5, "alias-pub").await;
    for i in 0..30 {
        let topic = format!("alias/{}", i % 6);
        publ.publish(topic.as_str(), format!("{i}"), QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let m = recv(&sub).await;
        assert_eq!(&*m.topic, topic);
        assert_eq!(m.payload, Bytes::from(format!("{i}")));
    }
}

#[tokio::test]
async fn oversized_messages_are_not_sent_to_a_small_client() {
    let b = Starling::start().await;
    let mut o = b.opts(ProtocolVersion::V5, "small");
    o.maximum_packet_size = Some(512);
    let (sub, _) = Client::connect(o).await.unwrap();
    sub.subscribe("size/#", QoS::AtLeastOnce).await.unwrap();
    let publ = b.connect(ProtocolVersion::V5, "size-pub").await;
    publ.publish("size/big", vec![b'x'; 2000], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    // [MQTT-3.1.2-25]: the server discards what the client cannot take, and the
    // connection goes on.
    let before = until_marker(&publ, &sub, "size/marker").await;
    assert!(before.is_empty(), "{before:?}");
}

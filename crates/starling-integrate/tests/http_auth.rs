//! `[auth.http]` against an HTTP backend written here (axum on 127.0.0.1:0):
//! allow, deny, ignore, `acl` answers, superusers, cache hits, `acl-url`, a
//! backend that hangs and one that fails, with `on-error` both ways.

#[path = "../../starling-broker/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use common::{Raw, TestBroker};
use serde_json::{json, Value};
use starling_broker::auth::{hash_password, PasswordFile};
use starling_broker::config::{HttpAuthConfig, OnError};
use starling_broker::{Broker, Config};
use starling_codec::{
    Connect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode, Subscribe, Subscription,
};
use tokio::sync::Notify;

/// What the backend saw.
#[derive(Default)]
struct Seen {
    connects: AtomicUsize,
    acls: AtomicUsize,
    /// Told when the hanging user's request arrives.
    hanging: Notify,
    last_connect: parking_lot::Mutex<Option<Value>>,
}

/// The backend: decides by user name.
async fn auth(State(seen): State<Arc<Seen>>, Json(body): Json<Value>) -> Response {
    seen.connects.fetch_add(1, Ordering::SeqCst);
    *seen.last_connect.lock() = Some(body.clone());
    let user = body["username"].as_str().unwrap_or("").to_string();
    let password = body["password"].as_str().unwrap_or("");
    let answer = match user.as_str() {
        "alice" if password == "pw" => json!({"result": "allow"}),
        "alice" | "bob" => json!({"result": "deny"}),
        "dave" => json!({"result": "allow", "acl": [
            {"permission": "deny", "action": "all", "topic": "dave/%c/secret"},
            {"permission": "allow", "action": "publish", "topic": "dave/%c/#"},
            {"permission": "allow", "action": "subscribe", "topic": "in/#"}
        ]}),
        "root" => json!({"result": "allow", "is_superuser": true, "acl": []}),
        "checked" => json!({"result": "allow"}),
        "slow" => {
            seen.hanging.notify_one();
            std::future::pending::<()>().await;
            unreachable!()
        }
        "broken" => return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "nonsense" => json!({"result": "maybe"}),
        "empty" => return StatusCode::NO_CONTENT.into_response(),
        _ => json!({"result": "ignore"}),
    };
    Json(answer).into_response()
}

/// The `acl-url` backend: allows topics under `ok/`.
async fn acl(State(seen): State<Arc<Seen>>, Json(body): Json<Value>) -> Json<Value> {
    seen.acls.fetch_add(1, Ordering::SeqCst);
    let topic = body["topic"].as_str().unwrap_or("");
    let retained = body["retain"].as_bool() == Some(true);
    let allowed = topic.starts_with("ok/") && !retained;
    Json(json!({"result": if allowed { "allow" } else { "deny" }}))
}

async fn backend() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/auth", post(auth))
        .route("/acl", post(acl))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn http_config(addr: SocketAddr) -> HttpAuthConfig {
    HttpAuthConfig {
        url: format!("http://{addr}/auth"),
        acl_url: Some(format!("http://{addr}/acl")),
        timeout_ms: 2000,
        headers: BTreeMap::from([("x-api-key".to_string(), "k".to_string())]),
        ..HttpAuthConfig::default()
    }
}

/// A broker with `[auth.http]` and a password file holding carol/pw.
async fn broker(http: HttpAuthConfig, chain: Option<&[&str]>) -> (TestBroker, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let mut file = PasswordFile::default();
    file.set("carol", hash_password("pw").unwrap());
    file.set("broken", hash_password("pw").unwrap());
    let path = dir.path().join("passwd");
    std::fs::write(&path, file.to_text()).unwrap();
    let mut config = Config {
        allow_anonymous: false,
        password_file: Some(path),
        auth_chain: chain.map(|c| c.iter().map(|s| s.to_string()).collect()),
        ..Config::default()
    };
    config.auth.http = Some(http);
    config.listen = vec!["mqtt://127.0.0.1:0".into()];
    config.sys_interval = 0;
    config.durability = starling_broker::store::Durability::None;
    config.validate("test").expect("valid config");
    let mut builder = Broker::builder(config.clone());
    for source in starling_integrate::sources(&config).unwrap() {
        builder = builder.authenticate(source);
    }
    (TestBroker::run(builder.bind().await.unwrap()), dir)
}

fn login(v: V, id: &str, user: &str, password: &str) -> Connect {
    let mut c = Connect::new(v, id);
    c.username = Some(user.into());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn code(b: &TestBroker, c: Connect) -> u8 {
    Raw::connect(b.addr, c).await.1.reason_code.0
}

#[tokio::test]
async fn allow_deny_and_ignore_then_the_next_source() {
    let (addr, seen) = backend().await;
    let (b, _dir) = broker(http_config(addr), Some(&["http", "password-file"])).await;
    assert_eq!(code(&b, login(V::V5, "a", "alice", "pw")).await, 0);
    assert_eq!(
        code(&b, login(V::V5, "a", "alice", "wrong")).await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD.0
    );
    // 3.1.1: return code 4, which the test's decoder reads as 0x86.
    assert_eq!(
        code(&b, login(V::V3_1_1, "b", "bob", "x")).await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD.0
    );
    // Ignored by the backend, then found in the password file.
    assert_eq!(code(&b, login(V::V5, "c", "carol", "pw")).await, 0);
    assert_eq!(
        code(&b, login(V::V5, "c", "carol", "no")).await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD.0
    );
    // Ignored by both: an unknown user.
    assert_eq!(
        code(&b, login(V::V5, "e", "eve", "pw")).await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD.0
    );
    // A 204 allows; an answer that is not one of the three is an error
    // (on-error = deny).
    assert_eq!(code(&b, login(V::V5, "f", "empty", "x")).await, 0);
    assert_eq!(
        code(&b, login(V::V5, "g", "nonsense", "x")).await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD.0
    );
    // What the backend was told.
    let body = seen.last_connect.lock().clone().unwrap();
    assert_eq!(body["clientid"], "g");
    assert_eq!(body["password"], "x");
    assert_eq!(body["peerhost"], "127.0.0.1");
    assert_eq!(body["protocol"], 5);
    assert!(body["listener"].as_str().unwrap().starts_with("mqtt://"));
    assert!(body.get("cert_common_name").is_some());
    b.stop().await;
}

#[tokio::test]
async fn answers_are_cached() {
    let (addr, seen) = backend().await;
    let (b, _dir) = broker(http_config(addr), None).await;
    for _ in 0..3 {
        assert_eq!(code(&b, login(V::V5, "a", "alice", "pw")).await, 0);
    }
    assert_eq!(seen.connects.load(Ordering::SeqCst), 1);
    // Another password is another question.
    code(&b, login(V::V5, "a", "alice", "other")).await;
    assert_eq!(seen.connects.load(Ordering::SeqCst), 2);
    b.stop().await;
}

fn publish(topic: &str, id: u16, retain: bool) -> Packet {
    let mut p = Publish::new(topic, &b"x"[..]);
    p.qos = QoS::AtLeastOnce;
    p.packet_id = id;
    p.retain = retain;
    Packet::Publish(p)
}

async fn puback(raw: &mut Raw, packet: Packet) -> u8 {
    raw.send(packet).await;
    match raw.recv().await {
        Packet::PubAck(ack) => ack.reason_code.0,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn suback(raw: &mut Raw, filter: &str) -> u8 {
    raw.send(Packet::Subscribe(Subscribe {
        packet_id: 7,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: filter.into(),
            options: Default::default(),
        }],
    }))
    .await;
    match raw.recv().await {
        Packet::SubAck(ack) => ack.reason_codes[0].0,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn an_acl_answer_is_the_clients_own_rules() {
    let (addr, seen) = backend().await;
    let (b, _dir) = broker(http_config(addr), None).await;
    let (mut dave, ack) = Raw::connect(b.addr, login(V::V5, "d1", "dave", "x")).await;
    assert_eq!(ack.reason_code.0, 0);
    // Allowed: 0x10 No matching subscribers (nobody listens).
    assert_eq!(
        puback(&mut dave, publish("dave/d1/t", 1, false)).await,
        0x10
    );
    let denied = ReasonCode::NOT_AUTHORIZED.0;
    assert_eq!(
        puback(&mut dave, publish("dave/d2/t", 2, false)).await,
        denied
    );
    assert_eq!(
        puback(&mut dave, publish("dave/d1/secret", 3, false)).await,
        denied
    );
    assert_eq!(suback(&mut dave, "in/+").await, 0);
    assert_eq!(suback(&mut dave, "dave/#").await, denied);
    // The rules came with the CONNECT answer: acl-url was never asked.
    assert_eq!(seen.acls.load(Ordering::SeqCst), 0);
    // A superuser may do anything, whatever its (empty) list says.
    let (mut root, _) = Raw::connect(b.addr, login(V::V5, "r", "root", "x")).await;
    assert_eq!(puback(&mut root, publish("anything", 1, false)).await, 0x10);
    assert_eq!(suback(&mut root, "#").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn without_an_acl_answer_checks_go_to_the_acl_url_and_are_cached() {
    let (addr, seen) = backend().await;
    let (b, _dir) = broker(http_config(addr), None).await;
    let (mut c, ack) = Raw::connect(b.addr, login(V::V5, "k", "checked", "x")).await;
    assert_eq!(ack.reason_code.0, 0);
    assert_eq!(suback(&mut c, "ok/#").await, 0);
    // The delivery (QoS 0: the subscription's) and the PUBACK, in any order.
    c.send(publish("ok/1", 1, false)).await;
    let mut got = [c.recv().await, c.recv().await];
    got.sort_by_key(|p| matches!(p, Packet::PubAck(_)));
    match &got[..] {
        [Packet::Publish(p), Packet::PubAck(ack)] => {
            assert_eq!(&*p.topic, "ok/1");
            assert_eq!(ack.reason_code.0, 0);
        }
        other => panic!("expected the delivery and the PUBACK, got {other:?}"),
    }
    let asked = seen.acls.load(Ordering::SeqCst);
    assert_eq!(asked, 2, "one subscribe check, one publish check");
    // Cached: the same publish again is not asked about.
    c.send(publish("ok/1", 2, false)).await;
    c.sync().await;
    assert_eq!(seen.acls.load(Ordering::SeqCst), asked);
    // The backend sees QoS and retain: it refuses retained messages.
    let denied = ReasonCode::NOT_AUTHORIZED.0;
    assert_eq!(puback(&mut c, publish("ok/1", 3, true)).await, denied);
    assert_eq!(puback(&mut c, publish("no/1", 4, false)).await, denied);
    assert_eq!(suback(&mut c, "no/#").await, denied);
    b.stop().await;
}

#[tokio::test]
async fn a_hanging_backend_costs_a_connect_its_timeout_and_nobody_else_anything() {
    let (addr, seen) = backend().await;
    let mut http = http_config(addr);
    // Long enough that the others' logins (password hashing included) fit
    // in it on a loaded machine.
    http.timeout_ms = 5000;
    let (b, _dir) = broker(http, Some(&["password-file", "http"])).await;
    let addr_b = b.addr;
    let started = tokio::time::Instant::now();
    let slow = tokio::spawn(async move { code_at(addr_b, login(V::V5, "s", "slow", "x")).await });
    seen.hanging.notified().await;
    // While the backend hangs, others connect (through the password file
    // and through the backend) and publish.
    assert_eq!(code(&b, login(V::V5, "c", "carol", "pw")).await, 0);
    let (mut alice, ack) = Raw::connect(b.addr, login(V::V5, "a", "alice", "pw")).await;
    assert_eq!(ack.reason_code.0, 0);
    alice.sync().await;
    assert!(!slow.is_finished(), "the hanging connect is still waiting");
    assert!(started.elapsed() < Duration::from_millis(5000));
    // on-error = deny: refused after its timeout.
    assert_eq!(slow.await.unwrap(), ReasonCode::BAD_USER_NAME_OR_PASSWORD.0);
    assert!(started.elapsed() >= Duration::from_millis(4900));
    b.stop().await;
}

async fn code_at(addr: &common::Addr, c: Connect) -> u8 {
    Raw::connect(addr, c).await.1.reason_code.0
}

#[tokio::test]
async fn on_error_ignore_passes_a_failing_backend_to_the_next_source() {
    let (addr, _seen) = backend().await;
    let mut http = http_config(addr);
    http.on_error = OnError::Ignore;
    let (b, _dir) = broker(http, Some(&["http", "password-file"])).await;
    // 500 from the backend: ignored, and the password file knows "broken".
    assert_eq!(code(&b, login(V::V5, "x", "broken", "pw")).await, 0);
    b.stop().await;
    let (addr, _seen) = backend().await;
    let (b, _dir) = broker(http_config(addr), Some(&["http", "password-file"])).await;
    assert_eq!(
        code(&b, login(V::V5, "x", "broken", "pw")).await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD.0
    );
    b.stop().await;
}

/// A temporary directory removed on drop.
mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "starling-integrate-{}-{:x}",
                std::process::id(),
                rand_u64()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        h.finish()
    }
}

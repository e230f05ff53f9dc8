//! `[auth.jwt]`: tokens signed here (HS256 with a secret, RS256 with a PEM
//! key, RS256 and ES256 through a JWKS file and a JWKS URL), presented by a
//! raw MQTT peer, by `starling-client` and by paho-mqtt (Python): valid,
//! expired, not yet valid, wrongly signed, of the wrong algorithm family,
//! with topics their `acl` claim allows and denies, and a connection closed
//! when its token expires. The keys in `tests/keys` were made for these
//! tests only.

#[path = "../../starling-broker/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Raw, TestBroker};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use starling_broker::config::JwtAuthConfig;
use starling_broker::{Broker, Config};
use starling_codec::{
    Connect, Packet, ProtocolVersion as V, Publish, QoS, ReasonCode, Subscribe, Subscription,
};

const SECRET: &str = "a shared secret of the tests";

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: Option<&str>, pem_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(keys().join(pem_file)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}

/// Claims valid for an hour, with topic rules.
fn claims() -> Value {
    json!({
        "sub": "device",
        "exp": now() + 3600,
        "acl": {"pub": ["dev/%c/#"], "sub": ["cmd/%u/#"], "all": ["both/#"]}
    })
}

async fn broker(jwt: JwtAuthConfig) -> TestBroker {
    let mut config = Config {
        allow_anonymous: false,
        ..Config::default()
    };
    config.auth.jwt = Some(jwt);
    config.listen = vec!["mqtt://127.0.0.1:0".into()];
    config.sys_interval = 0;
    config.durability = starling_broker::store::Durability::None;
    config.validate("test").expect("valid config");
    let mut builder = Broker::builder(config.clone());
    for source in starling_integrate::sources(&config).unwrap() {
        builder = builder.authenticate(source);
    }
    TestBroker::run(builder.bind().await.unwrap())
}

fn secret_config() -> JwtAuthConfig {
    JwtAuthConfig {
        secret: Some(SECRET.into()),
        ..JwtAuthConfig::default()
    }
}

fn login(v: V, id: &str, user: Option<&str>, token: &str) -> Connect {
    let mut c = Connect::new(v, id);
    c.username = user.map(Into::into);
    c.password = Some(Bytes::copy_from_slice(token.as_bytes()));
    c
}

async fn code(b: &TestBroker, c: Connect) -> u8 {
    Raw::connect(b.addr, c).await.1.reason_code.0
}

async fn puback(raw: &mut Raw, topic: &str, id: u16) -> u8 {
    let mut p = Publish::new(topic, &b"x"[..]);
    p.qos = QoS::AtLeastOnce;
    p.packet_id = id;
    raw.send(Packet::Publish(p)).await;
    match raw.recv().await {
        Packet::PubAck(ack) => ack.reason_code.0,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn suback(raw: &mut Raw, filter: &str) -> u8 {
    raw.send(Packet::Subscribe(Subscribe {
        packet_id: 3,
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

const NO_SUBSCRIBERS: u8 = 0x10;
const DENIED: u8 = ReasonCode::NOT_AUTHORIZED.0;
const BAD_LOGIN: u8 = ReasonCode::BAD_USER_NAME_OR_PASSWORD.0;

#[tokio::test]
async fn an_hs256_token_lets_in_and_its_acl_claim_decides_topics() {
    let b = broker(secret_config()).await;
    let token = hs256(&claims(), SECRET);
    for v in [V::V3_1_1, V::V5] {
        let (mut c, ack) = Raw::connect(b.addr, login(v, "c1", Some("u1"), &token)).await;
        assert_eq!(ack.reason_code.0, 0, "{v:?}");
        if v.is_v5() {
            assert_eq!(puback(&mut c, "dev/c1/t", 1).await, NO_SUBSCRIBERS);
            assert_eq!(puback(&mut c, "dev/c2/t", 2).await, DENIED);
            assert_eq!(puback(&mut c, "cmd/u1/x", 3).await, DENIED);
            assert_eq!(puback(&mut c, "both/x", 4).await, NO_SUBSCRIBERS);
        }
        assert_eq!(suback(&mut c, "cmd/u1/#").await, 0);
        assert_eq!(suback(&mut c, "both/+").await, 0);
        let refused = if v.is_v5() { DENIED } else { 0x80 };
        assert_eq!(suback(&mut c, "cmd/u2/#").await, refused);
        assert_eq!(suback(&mut c, "dev/c1/#").await, refused);
    }
    b.stop().await;
}

#[tokio::test]
async fn expired_early_and_wrongly_signed_tokens_are_refused() {
    let b = broker(secret_config()).await;
    let mut expired = claims();
    expired["exp"] = json!(now() - 5);
    let mut early = claims();
    early["nbf"] = json!(now() + 600);
    for token in [
        hs256(&expired, SECRET),
        hs256(&early, SECRET),
        hs256(&claims(), "another secret"),
        // Tampered: the payload of one token with the signature of another.
        {
            let good = hs256(&claims(), SECRET);
            let other = hs256(&json!({"exp": now() + 60, "acl": {"all": ["#"]}}), SECRET);
            let mut parts: Vec<&str> = good.split('.').collect();
            parts[1] = other.split('.').nth(1).unwrap();
            parts.join(".")
        },
    ] {
        assert_eq!(
            code(&b, login(V::V5, "c", Some("u"), &token)).await,
            BAD_LOGIN
        );
        // Without a user name (MQTT 5 allows a password alone): 0x87.
        assert_eq!(code(&b, login(V::V5, "c", None, &token)).await, DENIED);
    }
    // Not a JWT at all: not the JWT source's business; nobody else knows
    // the user.
    assert_eq!(
        code(&b, login(V::V5, "c", Some("u"), "hunter2")).await,
        BAD_LOGIN
    );
    // A good token still works.
    assert_eq!(
        code(&b, login(V::V5, "c", None, &hs256(&claims(), SECRET))).await,
        0
    );
    b.stop().await;
}

#[tokio::test]
async fn an_rs256_token_is_checked_with_the_public_key_and_no_other_algorithm() {
    let b = broker(JwtAuthConfig {
        public_key_file: Some(keys().join("rsa-public.pem")),
        ..JwtAuthConfig::default()
    })
    .await;
    let token = signed(Algorithm::RS256, None, "rsa-private.pem", &claims());
    assert_eq!(code(&b, login(V::V5, "c", Some("u"), &token)).await, 0);
    // The public key used as an HMAC secret (the classic algorithm
    // confusion) is refused.
    let public = std::fs::read_to_string(keys().join("rsa-public.pem")).unwrap();
    let confused = hs256(&claims(), &public);
    assert_eq!(
        code(&b, login(V::V5, "c", Some("u"), &confused)).await,
        BAD_LOGIN
    );
    // Signed with another key.
    let other = signed(Algorithm::ES256, None, "ec-private.pem", &claims());
    assert_eq!(
        code(&b, login(V::V5, "c", Some("u"), &other)).await,
        BAD_LOGIN
    );
    b.stop().await;
}

#[tokio::test]
async fn a_jwks_file_picks_the_key_by_kid() {
    let b = broker(JwtAuthConfig {
        jwks_file: Some(keys().join("jwks.json")),
        issuer: Some("https://issuer.example".into()),
        audience: Some("starling".into()),
        ..JwtAuthConfig::default()
    })
    .await;
    let mut c = claims();
    c["iss"] = json!("https://issuer.example");
    c["aud"] = json!("starling");
    let rs = signed(Algorithm::RS256, Some("rsa-1"), "rsa-private.pem", &c);
    let es = signed(Algorithm::ES256, Some("ec-1"), "ec-private.pem", &c);
    assert_eq!(code(&b, login(V::V5, "c", Some("u"), &rs)).await, 0);
    assert_eq!(code(&b, login(V::V5, "c", Some("u"), &es)).await, 0);
    // An unknown kid, a kid naming the other key, a wrong issuer or audience.
    let unknown = signed(Algorithm::RS256, Some("nope"), "rsa-private.pem", &c);
    let swapped = signed(Algorithm::RS256, Some("ec-1"), "rsa-private.pem", &c);
    let mut wrong_iss = c.clone();
    wrong_iss["iss"] = json!("https://elsewhere.example");
    let mut wrong_aud = c.clone();
    wrong_aud["aud"] = json!("another");
    for token in [
        unknown,
        swapped,
        signed(
            Algorithm::RS256,
            Some("rsa-1"),
            "rsa-private.pem",
            &wrong_iss,
        ),
        signed(
            Algorithm::RS256,
            Some("rsa-1"),
            "rsa-private.pem",
            &wrong_aud,
        ),
    ] {
        assert_eq!(
            code(&b, login(V::V5, "c", Some("u"), &token)).await,
            BAD_LOGIN
        );
    }
    b.stop().await;
}

/// Serves `tests/keys/jwks.json` on 127.0.0.1:0.
async fn jwks_server() -> SocketAddr {
    let body = std::fs::read_to_string(keys().join("jwks.json")).unwrap();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_jwks_url_is_fetched() {
    let addr = jwks_server().await;
    let b = broker(JwtAuthConfig {
        jwks_url: Some(format!("http://{addr}/jwks")),
        ..JwtAuthConfig::default()
    })
    .await;
    let es = signed(Algorithm::ES256, Some("ec-1"), "ec-private.pem", &claims());
    assert_eq!(code(&b, login(V::V5, "c", Some("u"), &es)).await, 0);
    b.stop().await;
}

#[tokio::test]
async fn the_connection_closes_when_its_token_expires() {
    let b = broker(secret_config()).await;
    let mut short = claims();
    short["exp"] = json!(now() + 2);
    let token = hs256(&short, SECRET);
    let (mut v5, ack) = Raw::connect(b.addr, login(V::V5, "v5", Some("u"), &token)).await;
    assert_eq!(ack.reason_code.0, 0);
    let (mut v3, ack) = Raw::connect(b.addr, login(V::V3_1_1, "v3", Some("u"), &token)).await;
    assert_eq!(ack.reason_code.0, 0);
    // Within the harness's bound (60 s); the token has about 2 s left.
    match v5.closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code.0, DENIED),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(v3.closed().await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn starling_client_connects_with_a_token() {
    let b = broker(secret_config()).await;
    let mut opts = starling_client::ConnectOptions::new("127.0.0.1", b.tcp.port());
    opts.client_id = "c1".into();
    opts.username = Some("u1".into());
    opts.password = Some(Bytes::from(hs256(&claims(), SECRET)));
    let (client, _) = starling_client::Client::connect(opts.clone())
        .await
        .expect("the token is accepted");
    let allowed = client
        .publish("dev/c1/t", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(!allowed.is_error());
    let denied = client
        .publish("elsewhere", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(denied, ReasonCode::NOT_AUTHORIZED);
    client.disconnect().await.unwrap();
    opts.password = Some(Bytes::from(hs256(&claims(), "wrong")));
    let refused = starling_client::Client::connect(opts).await;
    assert!(
        matches!(refused, Err(starling_client::ConnectError::Refused(_))),
        "{refused:?}"
    );
    b.stop().await;
}

const PAHO_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_jwt.py");

#[tokio::test]
async fn paho_connects_with_a_token_and_is_refused_with_a_bad_one() {
    let b = broker(secret_config()).await;
    let good = hs256(&claims(), SECRET);
    let bad = hs256(&claims(), "wrong");
    let mut child = tokio::process::Command::new("python3")
        .arg(PAHO_SCRIPT)
        .arg(b.tcp.port().to_string())
        .arg(&good)
        .arg(&bad)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("paho finishes within 60 s")
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        status.success(),
        "paho: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    b.stop().await;
}

//! Authentication: anonymous access, the password file (argon2id and
//! Mosquitto's hashes), and the return codes for each refusal.

mod common;

use common::{Raw, TestBroker};
use starling_broker::auth::{hash_password, PasswordFile};
use starling_broker::Config;
use starling_codec::{Connect, ProtocolVersion as V, ReasonCode};

fn password_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("starling-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("passwd");
    let mut f = PasswordFile::default();
    f.set("alice", hash_password("wonderland").unwrap());
    std::fs::write(&path, f.to_text()).unwrap();
    path
}

fn login(v: V, user: Option<&str>, pass: Option<&'static [u8]>) -> Connect {
    let mut c = Connect::new(v, "auth-client");
    c.username = user.map(Into::into);
    c.password = pass.map(bytes::Bytes::from_static);
    c
}

#[tokio::test]
async fn password_file_accepts_and_refuses_with_exact_codes() {
    let b = TestBroker::start(Config {
        allow_anonymous: false,
        password_file: Some(password_file("codes")),
        ..Config::default()
    })
    .await;
    for v in [V::V3_1_1, V::V5] {
        let (_raw, ack) = Raw::connect(b.addr, login(v, Some("alice"), Some(b"wonderland"))).await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        // Wrong password and unknown user get the same answer.
        let (mut raw, wrong) = Raw::connect(b.addr, login(v, Some("alice"), Some(b"nope"))).await;
        let (_r, unknown) =
            Raw::connect(b.addr, login(v, Some("mallory"), Some(b"wonderland"))).await;
        assert_eq!(wrong, unknown);
        if v.is_v5() {
            assert_eq!(wrong.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        } else {
            assert_eq!(wrong.return_code() as u8, 4);
        }
        assert!(
            raw.closed().await.is_empty(),
            "refused connections are closed"
        );
        // Anonymous access is off: not authorized.
        let (_raw, anon) = Raw::connect(b.addr, login(v, None, None)).await;
        if v.is_v5() {
            assert_eq!(anon.reason_code, ReasonCode::NOT_AUTHORIZED);
        } else {
            assert_eq!(anon.return_code() as u8, 5);
        }
    }
}

#[tokio::test]
async fn anonymous_access_can_be_on_with_a_password_file() {
    let b = TestBroker::start(Config {
        allow_anonymous: true,
        password_file: Some(password_file("anon")),
        ..Config::default()
    })
    .await;
    let (_raw, ack) = Raw::connect(b.addr, login(V::V5, None, None)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_raw, ack) = Raw::connect(b.addr, login(V::V5, Some("alice"), Some(b"bad"))).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
}

#[tokio::test]
async fn mosquitto_sha512_password_file_is_read() {
    use base64::Engine;
    use sha2::Digest;
    let salt = b"saltsaltsalt";
    let mut h = sha2::Sha512::new();
    h.update(b"pw");
    h.update(salt);
    let b64 = base64::engine::general_purpose::STANDARD;
    let line = format!("bob:$6${}${}\n", b64.encode(salt), b64.encode(h.finalize()));
    let path = std::env::temp_dir().join(format!("starling-mosq-pw-{}", std::process::id()));
    std::fs::write(&path, line).unwrap();
    let b = TestBroker::start(Config {
        allow_anonymous: false,
        password_file: Some(path),
        ..Config::default()
    })
    .await;
    let (_raw, ack) = Raw::connect(b.addr, login(V::V3_1_1, Some("bob"), Some(b"pw"))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn bad_password_file_is_a_one_line_error() {
    let path = std::env::temp_dir().join(format!("starling-bad-pw-{}", std::process::id()));
    std::fs::write(&path, "alice:$argon2id$x\nbroken line\n").unwrap();
    let err = starling_broker::Broker::bind(Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        password_file: Some(path.clone()),
        ..Config::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(err, format!("{}:2: expected user:hash", path.display()));
}

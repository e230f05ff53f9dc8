//! MQTT 5 enhanced authentication with SCRAM-SHA-256, `starling-client`
//! against the broker: good and bad passwords, unknown users, a broker
//! without credentials, re-authentication that succeeds and one that fails
//! after the credentials changed.

mod common;

use std::path::PathBuf;

use common::TestBroker;
use starling_broker::auth::ScramFile;
use starling_broker::{Broker, Config};
use starling_client::{Client, ConnectCode, ConnectError, ConnectOptions, QoS, ReasonCode, Scram};
use starling_scram::Credential;

fn scram_file(dir: &str, users: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("starling-scram-{dir}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = ScramFile::default();
    for (user, password) in users {
        file.set(user, Credential::new(password, 4096));
    }
    let path = dir.join("scram");
    std::fs::write(&path, file.to_text()).unwrap();
    path
}

async fn broker(scram: Option<PathBuf>) -> (TestBroker, starling_broker::ReloadHandle) {
    let acl = std::env::temp_dir().join(format!("starling-scram-acl-{}", std::process::id()));
    std::fs::write(&acl, "pattern readwrite users/%u/#\ntopic readwrite t\n").unwrap();
    let config = Config {
        scram_file: scram,
        acl_file: Some(acl),
        allow_anonymous: false,
        listen: vec!["mqtt://127.0.0.1:0".into()],
        sys_interval: 0,
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.unwrap();
    let reload = broker.reload_handle();
    (TestBroker::run(broker), reload)
}

fn options(b: &TestBroker, user: &str, password: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", b.tcp.port());
    o.client_id = format!("scram-{user}");
    o.authentication = Some(Scram::new(user, password));
    o
}

fn refused_with(
    result: Result<(Client, starling_client::ConnAckInfo), ConnectError>,
) -> ReasonCode {
    match result {
        Err(ConnectError::Refused(r)) => match r.code {
            ConnectCode::V5(code) => code,
            other => panic!("{other:?}"),
        },
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got connected"),
    }
}

#[tokio::test]
async fn good_and_bad_passwords() {
    let path = scram_file("pw", &[("alice", "wonderland")]);
    let (b, _) = broker(Some(path)).await;
    let (client, info) = Client::connect(options(&b, "alice", "wonderland"))
        .await
        .expect("the right password is accepted");
    assert_eq!(
        info.properties.authentication_method.as_deref(),
        Some("SCRAM-SHA-256")
    );
    // The user name is the one SCRAM proved: the ACL's %u sees it.
    let own = client
        .publish("users/alice/x", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(!own.is_error(), "{own:?}");
    let other = client
        .publish("users/bob/x", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(other, ReasonCode::NOT_AUTHORIZED);
    client.disconnect().await.unwrap();
    let bad = ReasonCode::BAD_USER_NAME_OR_PASSWORD;
    assert_eq!(
        refused_with(Client::connect(options(&b, "alice", "nope")).await),
        bad
    );
    assert_eq!(
        refused_with(Client::connect(options(&b, "bob", "x")).await),
        bad
    );
    b.stop().await;
}

#[tokio::test]
async fn without_credentials_the_method_is_refused() {
    let (b, _) = broker(None).await;
    assert_eq!(
        refused_with(Client::connect(options(&b, "alice", "wonderland")).await),
        ReasonCode::BAD_AUTHENTICATION_METHOD
    );
    b.stop().await;
}

#[tokio::test]
async fn re_authentication_succeeds_and_fails_when_the_credentials_change() {
    let path = scram_file("reauth", &[("alice", "wonderland")]);
    let (b, reload) = broker(Some(path.clone())).await;
    let (client, _) = Client::connect(options(&b, "alice", "wonderland"))
        .await
        .unwrap();
    client.reauthenticate().await.expect("re-authenticated");
    client.reauthenticate().await.expect("and again");
    client
        .publish("t", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .expect("still connected");
    // The password changes; the connection's next re-authentication fails
    // and the broker ends it (DISCONNECT 0x87).
    let mut file = ScramFile::default();
    file.set("alice", Credential::new("looking-glass", 4096));
    std::fs::write(&path, file.to_text()).unwrap();
    reload.reload().unwrap();
    assert!(client.reauthenticate().await.is_err());
    assert!(client
        .publish("t", &b"x"[..], QoS::AtLeastOnce, false)
        .await
        .is_err());
    b.stop().await;
}

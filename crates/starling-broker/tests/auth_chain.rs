//! The authentication and authorization seams: a custom source in the chain
//! after the password file, and an authorizer asked before the ACL file.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{Raw, TestBroker};
use starling_broker::auth::chain::{AnswerFuture, Client};
use starling_broker::auth::{
    Access, Acl, AuthChain, AuthnSource, AuthzSource, Credentials, Login, PasswordFile,
    PasswordFileSource, Verdict,
};
use starling_broker::{Broker, Config};
use starling_codec::{Connect, Packet, ProtocolVersion as V, QoS, Subscribe, Subscription};

/// Takes "token-ok" as a password for anyone, refuses "token-bad", ignores the rest.
struct Tokens;
impl AuthnSource for Tokens {
    fn name(&self) -> &str {
        "tokens"
    }
    fn authenticate(&self, c: &Credentials<'_>) -> Verdict {
        match c.password {
            Some(b"token-ok") => Verdict::Allow,
            Some(b"token-bad") => Verdict::Deny,
            _ => Verdict::Ignore,
        }
    }
}

/// Asks "a directory service": allows carol after a wait, on the
/// connection's task (no thread is held), ignores anyone else.
struct Directory;
impl AuthnSource for Directory {
    fn name(&self) -> &str {
        "directory"
    }
    fn authenticate(&self, _: &Credentials<'_>) -> Verdict {
        Verdict::Deny
    }
    fn authenticate_async(&self, login: &Login) -> Option<AnswerFuture> {
        let carol = login.username.as_deref() == Some("carol")
            && login.password.as_deref() == Some(&b"remote"[..]);
        Some(Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            if carol {
                Verdict::Allow.into()
            } else {
                Verdict::Ignore.into()
            }
        }))
    }
}

/// Denies everything under `vault/`, allows `open/` to everyone.
struct Vault;
impl AuthzSource for Vault {
    fn name(&self) -> &str {
        "vault"
    }
    fn authorize(&self, _: &Client<'_>, topic: &str, _: Access) -> Verdict {
        if topic.starts_with("vault/") {
            Verdict::Deny
        } else if topic.starts_with("open/") {
            Verdict::Allow
        } else {
            Verdict::Ignore
        }
    }
}

fn login(id: &str, user: &str, password: &str) -> Connect {
    let mut c = Connect::new(V::V5, id);
    c.username = Some(user.into());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    c
}

#[tokio::test]
async fn chain_and_authorizers_decide_before_the_files() {
    let mut file = PasswordFile::default();
    file.set("alice", starling_broker::auth::hash_password("pw").unwrap());
    let file = PasswordFile::parse(&file.to_text(), Path::new("p")).unwrap();
    let chain = AuthChain::new(
        vec![
            Arc::new(PasswordFileSource(Arc::new(file))),
            Arc::new(Tokens),
            Arc::new(Directory),
        ],
        false,
    );
    // The ACL file grants alice only alice/#.
    let acl = Acl::parse("user alice\ntopic readwrite alice/#\n", Path::new("acl")).unwrap();
    let mut config = Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        sys_interval: 0,
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    };
    config.allow_anonymous = false;
    let broker = Broker::bind_with(config, Arc::new(chain), Some(acl))
        .await
        .unwrap();
    broker.state().add_authorizer(Arc::new(Vault));
    let b = TestBroker::run(broker);
    let code = |c: Connect| async { Raw::connect(b.addr, c).await.1.reason_code.0 };
    assert_eq!(code(login("a1", "alice", "pw")).await, 0, "password file");
    assert_eq!(
        code(login("a2", "alice", "nope")).await,
        0x86,
        "file denies: decided"
    );
    assert_eq!(
        code(login("a3", "alice", "token-ok")).await,
        0x86,
        "file decided first"
    );
    assert_eq!(
        code(login("b1", "bob", "token-ok")).await,
        0,
        "unknown to the file: next source"
    );
    assert_eq!(code(login("b2", "bob", "token-bad")).await, 0x86);
    assert_eq!(
        code(login("b3", "bob", "other")).await,
        0x86,
        "all ignore: refused"
    );
    assert_eq!(
        code(login("c1", "carol", "remote")).await,
        0,
        "asynchronous source"
    );
    assert_eq!(code(login("c2", "carol", "wrong")).await, 0x86);

    let (mut alice, _) = Raw::connect(b.addr, login("alice", "alice", "pw")).await;
    alice
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            subscriptions: ["alice/x", "vault/x", "open/x", "other/x"]
                .iter()
                .map(|f| Subscription {
                    filter: (*f).into(),
                    options: Default::default(),
                })
                .collect(),
        }))
        .await;
    match alice.recv().await {
        Packet::SubAck(ack) => {
            let codes: Vec<u8> = ack.reason_codes.iter().map(|c| c.0).collect();
            // ACL file; authorizer deny; authorizer allow; all ignore -> ACL file denies.
            assert_eq!(codes, [0x00, 0x87, 0x00, 0x87]);
        }
        other => panic!("{other:?}"),
    }
    // Delivery is checked too: alice gets open/x, published by bob.
    let (mut bob, _) = Raw::connect(b.addr, login("bob", "bob", "token-ok")).await;
    bob.publish("open/x", b"hi", QoS::AtLeastOnce, 1).await;
    assert_eq!(&alice.expect_publish().await.payload[..], b"hi");
    b.stop().await;
}

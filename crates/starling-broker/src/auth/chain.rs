//! The authentication and authorization chains: sources asked in order, each
//! answering allow, deny, or ignore ("not mine: ask the next one").
//!
//! Authentication: the password file is one [`AuthnSource`]; the integration
//! work adds JWT and HTTP. [`AuthChain`] asks its sources in order; the first
//! allow or deny decides. When every source ignores the credentials, it
//! decides as the broker always has: a client without a user name by
//! `allow-anonymous`, one with a user name is refused when any source was
//! configured (an unknown user), else treated as anonymous (as Mosquitto does).
//!
//! Authorization: [`AuthzSource`]s registered on the broker
//! ([`crate::BrokerState::add_authorizer`]) are asked before the ACL file; the
//! first allow or deny decides; when all ignore, the ACL file (the listener's
//! own, else the broker's) decides as before, and without one, everything is
//! allowed. Sources are synchronous: they run on the publish path and must
//! answer from memory.
//!
//! A source that must ask another system (HTTP, a JWKS endpoint) answers
//! through [`AuthnSource::authenticate_async`]: the connection's task awaits
//! its future, so it never holds a thread; a slow synchronous source runs on
//! the broker's authentication pool.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use starling_codec::ProtocolVersion;

use super::{
    Access, Answer, AuthDecision, AuthPool, Authenticator, Credentials, Grant, PasswordFile,
};

/// The answer of an asynchronous source.
pub type AnswerFuture = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// What a client presents, owned, so that an asynchronous source can keep it
/// across its awaits.
#[derive(Debug, Clone)]
pub struct Login {
    /// Client identifier.
    pub client_id: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<Bytes>,
    /// Remote address.
    pub peer: SocketAddr,
    /// The protocol version of the CONNECT.
    pub protocol: ProtocolVersion,
    /// The URL of the listener it came through (empty when unknown).
    pub listener: String,
    /// The verified client certificate's identity (CN, else first SAN), on
    /// a listener that reads it (`use-identity-as-username`).
    pub cert_common_name: Option<String>,
}

impl Login {
    /// The same, borrowed.
    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            peer: self.peer,
        }
    }
}

/// A source's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
    /// Not this source's business: ask the next one.
    Ignore,
}

/// A source of authentication answers.
pub trait AuthnSource: Send + Sync + 'static {
    /// The source's name (as `auth-chain` lists it).
    fn name(&self) -> &str;
    /// Checks a client's credentials. May block when [`AuthnSource::is_slow`]
    /// says so: it then runs on the broker's authentication pool.
    fn authenticate(&self, credentials: &Credentials<'_>) -> Verdict;
    /// Whether checking these credentials may be slow. Defaults to `true`.
    fn is_slow(&self, _credentials: &Credentials<'_>) -> bool {
        true
    }
    /// An asynchronous check, for sources that ask another system: when it
    /// returns a future, the broker awaits it instead of calling
    /// [`AuthnSource::authenticate`]. Its [`Answer`] may carry a [`Grant`]
    /// (superuser, the client's own topic rules, an expiry). Defaults to none.
    fn authenticate_async(&self, _login: &Login) -> Option<AnswerFuture> {
        None
    }
    /// Reads the source's files again (SIGHUP): `Err` with a one-line reason
    /// leaves the source as it was. Defaults to nothing to read.
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Who asks for access, for [`AuthzSource`]s.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// The user name, if any.
    pub username: Option<&'a str>,
}

/// A source of authorization answers.
pub trait AuthzSource: Send + Sync + 'static {
    /// The source's name.
    fn name(&self) -> &str;
    /// Whether `client` may read or write `topic` (a filter when subscribing).
    fn authorize(&self, client: &Client<'_>, topic: &str, access: Access) -> Verdict;
}

/// Authentication sources asked in order.
#[derive(Clone)]
pub struct AuthChain {
    sources: Vec<Arc<dyn AuthnSource>>,
    allow_anonymous: bool,
}

impl std::fmt::Debug for AuthChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name()).collect();
        f.debug_struct("AuthChain")
            .field("sources", &names)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl AuthChain {
    /// A chain of `sources`, in the order they are asked.
    pub fn new(sources: Vec<Arc<dyn AuthnSource>>, allow_anonymous: bool) -> AuthChain {
        AuthChain {
            sources,
            allow_anonymous,
        }
    }

    /// The names of the sources, in order.
    pub fn names(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.name()).collect()
    }

    /// Asks the sources in order: an asynchronous one is awaited, a slow one
    /// runs on `pool`, a quick one right here. The broker uses this rather
    /// than [`Authenticator::authenticate`], so that no source holds a thread
    /// while it waits for another system. With an allow, what the deciding
    /// source granted.
    pub async fn decide(&self, login: &Login, pool: &AuthPool) -> (AuthDecision, Option<Grant>) {
        for source in &self.sources {
            let answer = if let Some(answer) = source.authenticate_async(login) {
                answer.await
            } else if source.is_slow(&login.credentials()) {
                let (source, login) = (source.clone(), login.clone());
                pool.run(move || source.authenticate(&login.credentials()))
                    .await
                    .unwrap_or(Verdict::Deny)
                    .into()
            } else {
                source.authenticate(&login.credentials()).into()
            };
            match answer.verdict {
                Verdict::Allow => return (AuthDecision::Allow, answer.grant),
                Verdict::Deny => return (self.refused(login.username.is_some()), None),
                Verdict::Ignore => {}
            }
        }
        (self.unanswered(login.username.is_some()), None)
    }

    fn refused(&self, with_username: bool) -> AuthDecision {
        if with_username {
            AuthDecision::BadCredentials
        } else {
            AuthDecision::NotAuthorized
        }
    }

    /// The decision when every source ignored the client.
    fn unanswered(&self, with_username: bool) -> AuthDecision {
        match with_username {
            false if self.allow_anonymous => AuthDecision::Allow,
            false => AuthDecision::NotAuthorized,
            true if self.sources.is_empty() && self.allow_anonymous => AuthDecision::Allow,
            true => AuthDecision::BadCredentials,
        }
    }
}

impl Authenticator for AuthChain {
    /// Synchronously, for callers outside the broker: an asynchronous
    /// source's `authenticate` is called (the broker uses [`AuthChain::decide`]).
    fn authenticate(&self, c: &Credentials<'_>) -> AuthDecision {
        for source in &self.sources {
            match source.authenticate(c) {
                Verdict::Allow => return AuthDecision::Allow,
                Verdict::Deny => return self.refused(c.username.is_some()),
                Verdict::Ignore => {}
            }
        }
        self.unanswered(c.username.is_some())
    }

    fn is_slow(&self, c: &Credentials<'_>) -> bool {
        self.sources.iter().any(|s| s.is_slow(c))
    }

    fn chain(&self) -> Option<&AuthChain> {
        Some(self)
    }
}

/// The password file as an authentication source: a known user is allowed
/// or denied by the password; an unknown one (checked against a dummy hash,
/// so that it costs the same) or a client without a user name is ignored.
#[derive(Debug, Clone)]
pub struct PasswordFileSource(pub Arc<PasswordFile>);

impl AuthnSource for PasswordFileSource {
    fn name(&self) -> &str {
        "password-file"
    }

    fn authenticate(&self, c: &Credentials<'_>) -> Verdict {
        let Some(user) = c.username else {
            return Verdict::Ignore;
        };
        match self.0.check(user, c.password.unwrap_or_default()) {
            Some(true) => Verdict::Allow,
            Some(false) => Verdict::Deny,
            None => Verdict::Ignore,
        }
    }

    fn is_slow(&self, c: &Credentials<'_>) -> bool {
        c.username.is_some()
    }
}

/// Asks `sources` in order; `None` when all ignore.
pub(crate) fn authorize(
    sources: &[Arc<dyn AuthzSource>],
    client: &Client<'_>,
    topic: &str,
    access: Access,
) -> Option<bool> {
    sources
        .iter()
        .map(|s| s.authorize(client, topic, access))
        .find(|v| *v != Verdict::Ignore)
        .map(|v| v == Verdict::Allow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct Fixed(&'static str, Verdict);
    impl AuthnSource for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn authenticate(&self, _: &Credentials<'_>) -> Verdict {
            self.1
        }
        fn is_slow(&self, _: &Credentials<'_>) -> bool {
            false
        }
    }

    fn creds<'a>(user: Option<&'a str>, password: &'a [u8]) -> Credentials<'a> {
        Credentials {
            client_id: "c",
            username: user,
            password: Some(password),
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn the_first_allow_or_deny_decides_and_ignore_asks_the_next() {
        let ignore: Arc<dyn AuthnSource> = Arc::new(Fixed("a", Verdict::Ignore));
        let allow: Arc<dyn AuthnSource> = Arc::new(Fixed("b", Verdict::Allow));
        let deny: Arc<dyn AuthnSource> = Arc::new(Fixed("c", Verdict::Deny));
        let c = creds(Some("u"), b"p");
        let chain = |s: &[&Arc<dyn AuthnSource>], anon| {
            AuthChain::new(s.iter().map(|s| (*s).clone()).collect(), anon)
        };
        assert_eq!(
            chain(&[&ignore, &allow, &deny], false).authenticate(&c),
            AuthDecision::Allow
        );
        assert_eq!(
            chain(&[&ignore, &deny, &allow], true).authenticate(&c),
            AuthDecision::BadCredentials
        );
        assert_eq!(
            chain(&[&deny], true).authenticate(&creds(None, b"")),
            AuthDecision::NotAuthorized
        );
        // All ignore: as before the chain existed.
        assert_eq!(
            chain(&[&ignore], true).authenticate(&c),
            AuthDecision::BadCredentials
        );
        assert_eq!(chain(&[], true).authenticate(&c), AuthDecision::Allow);
        assert_eq!(
            chain(&[], false).authenticate(&c),
            AuthDecision::BadCredentials
        );
        assert_eq!(
            chain(&[&ignore], true).authenticate(&creds(None, b"")),
            AuthDecision::Allow
        );
        assert_eq!(
            chain(&[&ignore], false).authenticate(&creds(None, b"")),
            AuthDecision::NotAuthorized
        );
        assert_eq!(chain(&[&ignore, &allow], false).names(), ["a", "b"]);
    }

    #[test]
    fn the_password_file_ignores_users_it_does_not_know() {
        let mut file = PasswordFile::default();
        file.set("alice", super::super::hash_password("pw").unwrap());
        let file = PasswordFile::parse(&file.to_text(), Path::new("p")).unwrap();
        let source = PasswordFileSource(Arc::new(file));
        assert_eq!(
            source.authenticate(&creds(Some("alice"), b"pw")),
            Verdict::Allow
        );
        assert_eq!(
            source.authenticate(&creds(Some("alice"), b"no")),
            Verdict::Deny
        );
        assert_eq!(
            source.authenticate(&creds(Some("bob"), b"pw")),
            Verdict::Ignore
        );
        assert_eq!(source.authenticate(&creds(None, b"")), Verdict::Ignore);
        // After it, another source can take bob.
        let jwt_like: Arc<dyn AuthnSource> = Arc::new(Fixed("jwt", Verdict::Allow));
        let chain = AuthChain::new(vec![Arc::new(source), jwt_like], false);
        assert_eq!(
            chain.authenticate(&creds(Some("bob"), b"token")),
            AuthDecision::Allow
        );
        assert_eq!(
            chain.authenticate(&creds(Some("alice"), b"no")),
            AuthDecision::BadCredentials
        );
    }

    /// Asks "another system": answers after a wait, without a thread.
    struct Remote;
    impl AuthnSource for Remote {
        fn name(&self) -> &str {
            "remote"
        }
        fn authenticate(&self, _: &Credentials<'_>) -> Verdict {
            panic!("an asynchronous source is awaited, not called")
        }
        fn authenticate_async(&self, login: &Login) -> Option<AnswerFuture> {
            let known = login.username.as_deref() == Some("carol");
            Some(Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if known {
                    Answer::allow(Grant {
                        superuser: true,
                        ..Grant::default()
                    })
                } else {
                    Verdict::Ignore.into()
                }
            }))
        }
    }

    #[tokio::test]
    async fn decide_awaits_asynchronous_sources_and_pools_slow_ones() {
        let pool = AuthPool::new(1);
        let slow: Arc<dyn AuthnSource> = Arc::new(Fixed("fixed", Verdict::Ignore));
        let chain = AuthChain::new(vec![slow, Arc::new(Remote)], false);
        let login = |user: &str| Login {
            client_id: "c".into(),
            username: Some(user.into()),
            password: Some(Bytes::from_static(b"pw")),
            peer: "127.0.0.1:1".parse().unwrap(),
            protocol: ProtocolVersion::V5,
            listener: String::new(),
            cert_common_name: None,
        };
        let (decision, grant) = chain.decide(&login("carol"), &pool).await;
        assert_eq!(decision, AuthDecision::Allow);
        assert!(grant.is_some_and(|g| g.superuser));
        assert_eq!(
            chain.decide(&login("dave"), &pool).await.0,
            AuthDecision::BadCredentials
        );
        let deny: Arc<dyn AuthnSource> = Arc::new(Fixed("deny", Verdict::Deny));
        let chain = AuthChain::new(vec![deny, Arc::new(Remote)], false);
        assert_eq!(
            chain.decide(&login("carol"), &pool).await.0,
            AuthDecision::BadCredentials
        );
        assert!(chain.chain().is_some());
    }

    struct Prefix(&'static str, Verdict);
    impl AuthzSource for Prefix {
        fn name(&self) -> &str {
            "prefix"
        }
        fn authorize(&self, _: &Client<'_>, topic: &str, _: Access) -> Verdict {
            if topic.starts_with(self.0) {
                self.1
            } else {
                Verdict::Ignore
            }
        }
    }

    #[test]
    fn authorizers_in_order() {
        let sources: Vec<Arc<dyn AuthzSource>> = vec![
            Arc::new(Prefix("secret/", Verdict::Deny)),
            Arc::new(Prefix("s", Verdict::Allow)),
        ];
        let client = Client {
            client_id: "c",
            username: None,
        };
        assert_eq!(
            authorize(&sources, &client, "secret/x", Access::Read),
            Some(false)
        );
        assert_eq!(
            authorize(&sources, &client, "sensors/x", Access::Write),
            Some(true)
        );
        assert_eq!(authorize(&sources, &client, "other", Access::Write), None);
    }
}

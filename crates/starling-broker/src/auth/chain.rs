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

use std::sync::Arc;

use super::{Access, AuthDecision, Authenticator, Credentials, PasswordFile};

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
}

impl Authenticator for AuthChain {
    fn authenticate(&self, c: &Credentials<'_>) -> AuthDecision {
        let refused = if c.username.is_some() {
            AuthDecision::BadCredentials
        } else {
            AuthDecision::NotAuthorized
        };
        for source in &self.sources {
            match source.authenticate(c) {
                Verdict::Allow => return AuthDecision::Allow,
                Verdict::Deny => return refused,
                Verdict::Ignore => {}
            }
        }
        match c.username {
            None if self.allow_anonymous => AuthDecision::Allow,
            None => AuthDecision::NotAuthorized,
            Some(_) if self.sources.is_empty() && self.allow_anonymous => AuthDecision::Allow,
            Some(_) => AuthDecision::BadCredentials,
        }
    }

    fn is_slow(&self, c: &Credentials<'_>) -> bool {
        self.sources.iter().any(|s| s.is_slow(c))
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

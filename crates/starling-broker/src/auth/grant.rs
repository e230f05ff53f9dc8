//! What an authentication source grants a client it lets in, beyond being
//! let in: superuser rights, the client's own topic rules (an HTTP backend's
//! `acl` answer, a JWT's `acl` claim), and when its credentials expire.
//!
//! A [`Grant`] travels with the connection (and the session, for the read
//! check at delivery). Its rules are asked before the broker's authorization
//! sources and ACL files: the first answer that is not
//! [`Verdict::Ignore`] decides.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use starling_codec::QoS;

use super::{Access, Verdict};

/// A future that makes a [`ClientRules`] able to answer from memory.
pub type PrepareFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a packet asks to do, for rules that ask another system.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The topic (a filter when subscribing), as the broker sees it.
    pub topic: &'a str,
    /// Publish (write) or subscribe (read).
    pub access: Access,
    /// The QoS of the PUBLISH, or the one asked for in the SUBSCRIBE.
    pub qos: QoS,
    /// The PUBLISH's retain flag (`false` for a SUBSCRIBE).
    pub retain: bool,
}

/// One client's own topic rules.
pub trait ClientRules: Send + Sync + fmt::Debug + 'static {
    /// Whether the client may read or write `topic` (a filter when
    /// subscribing). `Ignore` leaves it to the broker's authorization sources
    /// and ACL files. Called on the publish path: answers from memory.
    fn check(&self, topic: &str, access: Access) -> Verdict;

    /// For rules that ask another system (an HTTP `acl-url`): a future that
    /// fetches the answer to `check` so that [`ClientRules::check`] of its
    /// topic and access then has it. The connection awaits it before it
    /// handles the packet, reading nothing else from that client meanwhile.
    /// `None` when `check` can answer now (the default).
    fn prepare(&self, _check: &Check<'_>) -> Option<PrepareFuture> {
        None
    }
}

/// What a source grants a client it lets in.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Every topic is allowed, whatever the rules and ACLs say.
    pub superuser: bool,
    /// The client's own rules, asked before the broker's.
    pub rules: Option<Arc<dyn ClientRules>>,
    /// When the credentials stop being valid (a token's `exp`): the
    /// connection is closed then (MQTT 5: DISCONNECT 0x87 Not authorized).
    pub expires_at: Option<SystemTime>,
}

impl Grant {
    /// What the grant says of `topic`: `None` when it leaves it to the broker.
    pub fn check(&self, topic: &str, access: Access) -> Option<bool> {
        if self.superuser {
            return Some(true);
        }
        match self.rules.as_ref()?.check(topic, access) {
            Verdict::Allow => Some(true),
            Verdict::Deny => Some(false),
            Verdict::Ignore => None,
        }
    }

    /// Whether the grant says anything at all (else it need not be kept).
    pub fn is_empty(&self) -> bool {
        !self.superuser && self.rules.is_none() && self.expires_at.is_none()
    }
}

/// A source's answer to a login.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Allow, deny or ignore.
    pub verdict: Verdict,
    /// With [`Verdict::Allow`]: what the client is granted.
    pub grant: Option<Grant>,
}

impl From<Verdict> for Answer {
    fn from(verdict: Verdict) -> Answer {
        Answer {
            verdict,
            grant: None,
        }
    }
}

impl Answer {
    /// Allows the client with `grant`.
    pub fn allow(grant: Grant) -> Answer {
        Answer {
            verdict: Verdict::Allow,
            grant: (!grant.is_empty()).then_some(grant),
        }
    }
}

/// One rule of a client's own list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// Allow (else deny) what it covers.
    pub allow: bool,
    /// What it is about; `None`: both reading and writing.
    pub access: Option<Access>,
    /// The topic filter, with `%u` and `%c` already replaced.
    pub filter: String,
}

/// A client's own topic rules, in order: the first rule that covers a topic
/// (and is about the access asked for) decides, and a topic no rule covers
/// is denied. What a JWT's `acl` claim and an HTTP backend's `acl` answer
/// become.
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    /// The rules, in the order they are tried.
    pub rules: Vec<TopicRule>,
}

impl TopicRules {
    /// Adds a rule whose filter may hold `%u` (the user name) and `%c` (the
    /// client id). An allow rule whose placeholders would be replaced by a
    /// value with a wildcard (`clients/%c/#` for the client id `#`) is left
    /// out: it would widen what it allows.
    pub fn push(
        &mut self,
        allow: bool,
        access: Option<Access>,
        pattern: &str,
        client_id: &str,
        username: Option<&str>,
    ) {
        let wild = |s: &str| s.contains(['+', '#']);
        let placeholders = pattern.contains("%c") || pattern.contains("%u");
        let widening = wild(client_id) || username.is_some_and(wild);
        if allow && placeholders && widening {
            return;
        }
        self.rules.push(TopicRule {
            allow,
            access,
            filter: super::acl::substitute(pattern, client_id, username.unwrap_or("")),
        });
    }
}

impl ClientRules for TopicRules {
    fn check(&self, topic: &str, access: Access) -> Verdict {
        let rule = self
            .rules
            .iter()
            .find(|r| r.access.is_none_or(|a| a == access) && super::acl::covers(&r.filter, topic));
        match rule {
            Some(r) if r.allow => Verdict::Allow,
            _ => Verdict::Deny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_rule_that_covers_a_topic_decides_and_the_rest_is_denied() {
        let mut rules = TopicRules::default();
        rules.push(false, None, "devices/%c/secret", "d1", None);
        rules.push(true, Some(Access::Write), "devices/%c/#", "d1", None);
        rules.push(true, Some(Access::Read), "cmd/%u/+", "d1", Some("u1"));
        rules.push(true, None, "shared/#", "d1", None);
        assert_eq!(rules.check("devices/d1/t", Access::Write), Verdict::Allow);
        assert_eq!(rules.check("devices/d1/t", Access::Read), Verdict::Deny);
        assert_eq!(
            rules.check("devices/d1/secret", Access::Write),
            Verdict::Deny
        );
        assert_eq!(rules.check("cmd/u1/+", Access::Read), Verdict::Allow);
        assert_eq!(rules.check("cmd/#", Access::Read), Verdict::Deny);
        assert_eq!(rules.check("shared/x", Access::Read), Verdict::Allow);
        assert_eq!(rules.check("other", Access::Write), Verdict::Deny);
        // A wildcard client id gets no allow rule with a placeholder.
        let mut wild = TopicRules::default();
        wild.push(true, None, "devices/%c/#", "#", None);
        wild.push(false, None, "x/%c", "#", None);
        assert_eq!(wild.rules.len(), 1);
        assert_eq!(wild.check("devices/d2/t", Access::Write), Verdict::Deny);
        let grant = Grant {
            rules: Some(Arc::new(rules)),
            ..Grant::default()
        };
        assert_eq!(grant.check("other", Access::Write), Some(false));
        let superuser = Grant {
            superuser: true,
            ..grant
        };
        assert_eq!(superuser.check("other", Access::Write), Some(true));
        assert_eq!(Grant::default().check("x", Access::Read), None);
        assert!(Answer::allow(Grant::default()).grant.is_none());
    }
}

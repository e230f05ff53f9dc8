//! ACLs in Mosquitto's file format.
//!
//! ```text
//! # topic lines before any `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! # pattern lines apply to everyone; %u is the user name, %c the client id
//! pattern readwrite clients/%c/#
//! ```
//! With an ACL file, anything not granted is denied.

use std::collections::HashMap;
use std::path::Path;

use super::AuthFileError;

/// The kind of access asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receive messages (subscribe and delivery).
    Read,
    /// Publish.
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    topic: String,
}

/// A parsed ACL file.
#[derive(Debug, Default, Clone)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    /// Reads an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses ACL text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Acl, AuthFileError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: &str| AuthFileError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message: message.to_string(),
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("user needs a name"));
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let (grant, topic) = match rest.split_once(char::is_whitespace) {
                        Some(("read", t)) => (Grant::Read, t),
                        Some(("write", t)) => (Grant::Write, t),
                        Some(("readwrite", t)) => (Grant::ReadWrite, t),
                        Some(("deny", t)) => (Grant::Deny, t),
                        _ => (Grant::ReadWrite, rest),
                    };
                    let topic = topic.trim();
                    if topic.is_empty() {
                        return Err(err("missing topic"));
                    }
                    let rule = Rule {
                        grant,
                        topic: topic.to_string(),
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => return Err(err(&format!("unknown keyword {other:?}"))),
            }
        }
        Ok(acl)
    }

    /// Whether the client may read or write `topic`. For [`Access::Read`] at
    /// subscribe time, `topic` may be a filter: it is allowed when a rule covers it.
    pub fn check(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        let direct = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or_default(),
            None => &self.anonymous,
        };
        // A client id or user name with a wildcard would widen a pattern it
        // is substituted into ("clients/%c/#" with the id "#"): such a client
        // gets no grant from patterns, while deny patterns still apply.
        let wild = |s: &str| s.contains(['+', '#']);
        let widening = wild(client_id) || username.is_some_and(wild);
        let substituted: Vec<(Grant, String)> = self
            .patterns
            .iter()
            .filter(|r| !widening || r.grant == Grant::Deny)
            .map(|r| {
                (
                    r.grant,
                    substitute(&r.topic, client_id, username.unwrap_or("")),
                )
            })
            .collect();
        let rules = direct
            .iter()
            .map(|r| (r.grant, r.topic.as_str()))
            .chain(substituted.iter().map(|(g, t)| (*g, t.as_str())));
        let mut allowed = false;
        for (grant, rule) in rules {
            if covers(rule, topic) {
                if grant == Grant::Deny {
                    return false;
                }
                allowed |= grant.allows(access);
            }
        }
        allowed
    }
}

/// `pattern` with `%c` and `%u` replaced in one pass (so that a client id
/// holding `%u` is not substituted again).
pub fn substitute(pattern: &str, client_id: &str, username: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("%c") {
            out.push_str(client_id);
            rest = r;
        } else if let Some(r) = after.strip_prefix("%u") {
            out.push_str(username);
            rest = r;
        } else {
            out.push('%');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether the ACL filter `rule` covers `topic` (a topic, or a subscription
/// filter whose wildcards must be matched by wildcards at least as wide).
pub fn covers(rule: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut r = rule.split('/');
    let mut t = topic.split('/');
    loop {
        match (r.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "topic read public/#\n\nuser alice\ntopic readwrite alice/#\ntopic deny alice/secret\ntopic write in\n\npattern readwrite clients/%c/#\npattern read users/%u\n";

    #[test]
    fn rules() {
        let acl = Acl::parse(FILE, Path::new("acl")).unwrap();
        let cases: &[(Option<&str>, &str, &str, Access, bool)] = &[
            (None, "c1", "public/x", Access::Read, true),
            (None, "c1", "public/x", Access::Write, false),
            (None, "c1", "alice/x", Access::Read, false),
            (Some("alice"), "c2", "alice/x", Access::Write, true),
            (Some("alice"), "c2", "alice/secret", Access::Read, false),
            (Some("alice"), "c2", "public/x", Access::Read, false),
            (Some("alice"), "c2", "in", Access::Write, true),
            (Some("alice"), "c2", "in", Access::Read, false),
            (Some("alice"), "c2", "clients/c2/a", Access::Write, true),
            (Some("alice"), "c2", "clients/c3/a", Access::Write, false),
            (Some("bob"), "c3", "users/bob", Access::Read, true),
            (Some("bob"), "c3", "users/alice", Access::Read, false),
            (None, "c1", "public/#", Access::Read, true),
            (Some("alice"), "c2", "alice/+", Access::Read, true),
            (Some("alice"), "c2", "#", Access::Read, false),
            (Some("alice"), "c2", "+/x", Access::Read, false),
        ];
        for (user, client, topic, access, ok) in cases {
            assert_eq!(
                acl.check(*user, client, topic, *access),
                *ok,
                "{user:?} {client} {topic} {access:?}"
            );
        }
    }

    #[test]
    fn wildcards_in_a_client_id_or_user_name_do_not_widen_patterns() {
        let acl = Acl::parse(
            "pattern readwrite clients/%c/#\npattern read users/%u\npattern deny clients/%c/secret\n",
            Path::new("acl"),
        )
        .unwrap();
        // "#" as client id would make the rule clients/#/#.
        assert!(!acl.check(None, "#", "clients/other/x", Access::Write));
        assert!(!acl.check(None, "+", "clients/other/x", Access::Read));
        assert!(!acl.check(Some("#"), "c", "users/alice", Access::Read));
        assert!(acl.check(None, "c1", "clients/c1/x", Access::Write));
        // A client id holding "%u" is not substituted again.
        assert!(acl.check(Some("bob"), "%u", "clients/%u/x", Access::Write));
        assert!(!acl.check(Some("bob"), "%u", "clients/bob/x", Access::Write));
        assert_eq!(substitute("a/%c/%u/%x%", "id", "u"), "a/id/u/%x%");
    }

    #[test]
    fn bad_keyword_names_the_line() {
        let err = Acl::parse("user a\nfoo bar\n", Path::new("acl")).unwrap_err();
        assert_eq!(err.to_string(), "acl:2: unknown keyword \"foo\"");
    }
}

//! The configuration of what connects the broker to other systems: the
//! authentication chain (`auth-chain`, `[auth.http]`, `[auth.jwt]`). The
//! broker only carries these settings; the sources that use them live in
//! the `starling-integrate` crate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The names `auth-chain` may list.
pub const AUTH_SOURCES: [&str; 3] = ["password-file", "jwt", "http"];

/// `[auth]`: the authentication sources that ask other systems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthConfig {
    /// `[auth.http]`: ask an HTTP backend.
    pub http: Option<HttpAuthConfig>,
    /// `[auth.jwt]`: a JSON Web Token in the password field.
    pub jwt: Option<JwtAuthConfig>,
}

/// What an HTTP source does when its backend cannot be asked (it does not
/// answer in time, answers with an error status, or answers nonsense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Refuse the client (or the publish or subscription).
    #[default]
    Deny,
    /// Leave it to the next source in the chain (or the ACL file).
    Ignore,
}

/// `[auth.http]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpAuthConfig {
    /// Where CONNECTs are posted (`http://` or `https://`).
    pub url: String,
    /// Where publish and subscribe checks are posted, for clients whose
    /// CONNECT answer had no `acl` list. Without it they are left to the ACL
    /// file.
    pub acl_url: Option<String>,
    /// How long one request may take, in milliseconds.
    pub timeout_ms: u64,
    /// How long answers are kept, in seconds (0: not kept).
    pub cache_ttl_s: u64,
    /// Most answers kept (CONNECT answers broker-wide; topic answers per client).
    pub cache_max_entries: usize,
    /// Headers sent with every request (an API key, say).
    pub headers: BTreeMap<String, String>,
    /// PEM CA certificates that an `https://` backend is verified against,
    /// instead of the public ones.
    pub tls_ca: Option<PathBuf>,
    /// What happens when the backend cannot be asked.
    pub on_error: OnError,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        HttpAuthConfig {
            url: String::new(),
            acl_url: None,
            timeout_ms: 5000,
            cache_ttl_s: 60,
            cache_max_entries: 100_000,
            headers: BTreeMap::new(),
            tls_ca: None,
            on_error: OnError::Deny,
        }
    }
}

/// `[auth.jwt]`: exactly one of `secret`, `secret-file`, `public-key-file`,
/// `jwks-file` and `jwks-url` says how tokens are verified.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct JwtAuthConfig {
    /// The shared secret of HS256, HS384 and HS512 tokens.
    pub secret: Option<String>,
    /// A file holding the shared secret (its whole content, a final newline
    /// removed). Reloads on SIGHUP.
    pub secret_file: Option<PathBuf>,
    /// A PEM public key (RSA, EC or Ed25519) for RS*, PS*, ES* and EdDSA
    /// tokens. Reloads on SIGHUP.
    pub public_key_file: Option<PathBuf>,
    /// A JSON Web Key Set file; a token's `kid` picks the key. Reloads on SIGHUP.
    pub jwks_file: Option<PathBuf>,
    /// A JSON Web Key Set fetched over HTTP(S), refreshed every
    /// `jwks-refresh-s` and when a token names an unknown `kid`.
    pub jwks_url: Option<String>,
    /// Seconds between JWKS refreshes.
    pub jwks_refresh_s: u64,
    /// The `iss` a token must have, if set.
    pub issuer: Option<String>,
    /// The `aud` a token must have, if set.
    pub audience: Option<String>,
    /// Seconds of clock difference allowed for `exp` and `nbf`.
    pub leeway_s: u64,
    /// The claim that holds the client's topic rules.
    pub acl_claim: String,
    /// Whether a token without an `exp` claim is refused.
    pub require_exp: bool,
}

impl Default for JwtAuthConfig {
    fn default() -> Self {
        JwtAuthConfig {
            secret: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_s: 300,
            issuer: None,
            audience: None,
            leeway_s: 0,
            acl_claim: "acl".into(),
            require_exp: false,
        }
    }
}

impl JwtAuthConfig {
    /// How many ways to verify are set (exactly one is valid).
    pub fn key_sources(&self) -> usize {
        [
            self.secret.is_some(),
            self.secret_file.is_some(),
            self.public_key_file.is_some(),
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }
}

/// The events a `[[webhook]]` may name.
pub const WEBHOOK_EVENTS: [&str; 9] = [
    "client.connected",
    "client.disconnected",
    "client.auth_failed",
    "session.created",
    "session.terminated",
    "message.publish",
    "message.delivered",
    "message.acked",
    "message.dropped",
];

/// A `[[webhook]]` table: events posted as JSON batches to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebhookConfig {
    /// Where batches are posted (`http://` or `https://`).
    pub url: String,
    /// The events posted (default: all of them).
    pub events: Vec<String>,
    /// Topic filters that `message.*` events must match (default: all
    /// topics; `$SYS` topics only when a filter names them).
    pub topics: Vec<String>,
    /// Headers sent with every request.
    pub headers: BTreeMap<String, String>,
    /// Most events in one request.
    pub batch_max: usize,
    /// Most events waiting to be posted; past it new events are dropped
    /// and counted.
    pub queue_max: usize,
    /// How long one request may take, in milliseconds.
    pub timeout_ms: u64,
    /// How many times a failed batch is posted again (with backoff) before
    /// it is dropped and counted.
    pub retries: u32,
    /// PEM CA certificates an `https://` endpoint is verified against.
    pub tls_ca: Option<PathBuf>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            events: WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect(),
            topics: Vec::new(),
            headers: BTreeMap::new(),
            batch_max: 100,
            queue_max: 10_000,
            timeout_ms: 5000,
            retries: 3,
            tls_ca: None,
        }
    }
}

/// Checks the `[[webhook]]` tables: `Err((key, message))`.
pub(super) fn validate_webhooks(hooks: &[WebhookConfig]) -> Result<(), (&'static str, String)> {
    for (i, hook) in hooks.iter().enumerate() {
        let at = |what: &str| format!("webhook #{} ({}): {what}", i + 1, hook.url);
        if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
            return Err(("webhook.url", at("must be an http:// or https:// URL")));
        }
        if let Some(bad) = hook
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err((
                "webhook.events",
                at(&format!(
                    "unknown event {bad:?} (known: {})",
                    WEBHOOK_EVENTS.join(", ")
                )),
            ));
        }
        if let Some(bad) = hook
            .topics
            .iter()
            .find(|t| starling_codec::topic::validate_filter(t).is_err())
        {
            return Err((
                "webhook.topics",
                at(&format!("{bad:?} is not a topic filter")),
            ));
        }
        if hook.batch_max == 0 || hook.queue_max == 0 {
            return Err((
                "webhook.batch-max",
                at("batch-max and queue-max must be at least 1"),
            ));
        }
        if !(1..=60_000).contains(&hook.timeout_ms) {
            return Err(("webhook.timeout-ms", at("must be between 1 and 60000")));
        }
    }
    Ok(())
}

/// Which way a `[[bridge.topic]]` carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From this broker to the remote one.
    #[default]
    Out,
    /// From the remote broker to this one.
    In,
    /// Both ways.
    Both,
}

/// A `[[bridge.topic]]`: what a bridge carries. A message on the local
/// topic `local-prefix` + T (T matching `filter`) goes out as
/// `remote-prefix` + T, and the other way for `in`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BridgeTopic {
    /// Which way.
    pub direction: Direction,
    /// The topic filter, without the prefixes.
    pub filter: String,
    /// The QoS of the subscriptions (and so the most a message keeps).
    pub qos: u8,
    /// Put before the filter on this broker.
    pub local_prefix: String,
    /// Put before the filter on the remote broker.
    pub remote_prefix: String,
}

impl Default for BridgeTopic {
    fn default() -> Self {
        BridgeTopic {
            direction: Direction::Out,
            filter: "#".into(),
            qos: 1,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }
}

/// A `[[bridge]]` table: a store-and-forward link to another MQTT broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BridgeConfig {
    /// The bridge's name (unique; in logs, metrics and the loop marker).
    pub name: String,
    /// The remote broker: `mqtt://`, `mqtts://`, `ws://`, `wss://` or `quic://`.
    pub url: String,
    /// The client id on the remote broker (default `starling-bridge-NAME`).
    pub client_id: Option<String>,
    /// User name on the remote broker.
    pub username: Option<String>,
    /// Password on the remote broker.
    pub password: Option<String>,
    /// PEM CA certificates the remote broker is verified against.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS).
    pub tls_cert: Option<PathBuf>,
    /// PEM client key (mutual TLS).
    pub tls_key: Option<PathBuf>,
    /// `"5"` (default) or `"3.1.1"`.
    pub protocol: String,
    /// Most messages per second sent to the remote broker (0: no limit):
    /// a backlog after an outage drains at this rate.
    pub max_rate: u64,
    /// What it carries.
    pub topic: Vec<BridgeTopic>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: String::new(),
            url: String::new(),
            client_id: None,
            username: None,
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            protocol: "5".into(),
            max_rate: 0,
            topic: Vec::new(),
        }
    }
}

/// Checks the `[[bridge]]` tables: `Err((key, message))`.
pub(super) fn validate_bridges(bridges: &[BridgeConfig]) -> Result<(), (&'static str, String)> {
    for (i, b) in bridges.iter().enumerate() {
        let at = |what: &str| format!("bridge #{} ({:?}): {what}", i + 1, b.name);
        if b.name.is_empty()
            || !b
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                "bridge.name",
                at("needs a name of letters, digits, '-', '_' or '.'"),
            ));
        }
        if bridges[..i].iter().any(|o| o.name == b.name) {
            return Err(("bridge.name", at("the name is used twice")));
        }
        let schemes = ["mqtt://", "mqtts://", "ws://", "wss://", "quic://"];
        if !schemes.iter().any(|s| b.url.starts_with(s)) {
            return Err((
                "bridge.url",
                at("must be an mqtt://, mqtts://, ws://, wss:// or quic:// URL"),
            ));
        }
        if !["5", "3.1.1"].contains(&b.protocol.as_str()) {
            return Err(("bridge.protocol", at("must be \"5\" or \"3.1.1\"")));
        }
        if b.topic.is_empty() {
            return Err(("bridge.topic", at("needs at least one [[bridge.topic]]")));
        }
        for t in &b.topic {
            if t.qos > 2 {
                return Err(("bridge.topic.qos", at("qos must be 0, 1 or 2")));
            }
            for filter in [
                format!("{}{}", t.local_prefix, t.filter),
                format!("{}{}", t.remote_prefix, t.filter),
            ] {
                if starling_codec::topic::validate_filter(&filter).is_err() {
                    return Err((
                        "bridge.topic.filter",
                        at(&format!("{filter:?} is not a topic filter")),
                    ));
                }
            }
            if [&t.local_prefix, &t.remote_prefix]
                .iter()
                .any(|p| p.contains(['+', '#']))
            {
                return Err(("bridge.topic", at("a prefix may not hold a wildcard")));
            }
        }
    }
    Ok(())
}

/// Checks the integration settings: `Err((key, message))`.
pub(super) fn validate(
    chain: Option<&[String]>,
    auth: &AuthConfig,
    has_password_file: bool,
) -> Result<(), (&'static str, String)> {
    if let Some(http) = &auth.http {
        let scheme_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if !scheme_ok(&http.url) {
            return Err(("auth.http.url", "must be an http:// or https:// URL".into()));
        }
        if http.acl_url.as_deref().is_some_and(|u| !scheme_ok(u)) {
            return Err((
                "auth.http.acl-url",
                "must be an http:// or https:// URL".into(),
            ));
        }
        if !(1..=60_000).contains(&http.timeout_ms) {
            return Err(("auth.http.timeout-ms", "must be between 1 and 60000".into()));
        }
    }
    if let Some(jwt) = &auth.jwt {
        if jwt.key_sources() != 1 {
            return Err((
                "auth.jwt",
                "needs exactly one of secret, secret-file, public-key-file, jwks-file, jwks-url"
                    .into(),
            ));
        }
        if jwt.jwks_refresh_s == 0 {
            return Err(("auth.jwt.jwks-refresh-s", "must be at least 1".into()));
        }
    }
    let Some(chain) = chain else {
        return Ok(());
    };
    for (i, name) in chain.iter().enumerate() {
        let configured = match name.as_str() {
            "password-file" => has_password_file,
            "jwt" => auth.jwt.is_some(),
            "http" => auth.http.is_some(),
            other => {
                return Err((
                    "auth-chain",
                    format!(
                        "unknown source {other:?} (known: {})",
                        AUTH_SOURCES.join(", ")
                    ),
                ))
            }
        };
        if !configured {
            let table = match name.as_str() {
                "password-file" => "password-file",
                "jwt" => "[auth.jwt]",
                _ => "[auth.http]",
            };
            return Err((
                "auth-chain",
                format!("{name:?} is listed but {table} is not configured"),
            ));
        }
        if chain[..i].contains(name) {
            return Err(("auth-chain", format!("{name:?} is listed twice")));
        }
    }
    Ok(())
}

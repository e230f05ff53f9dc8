//! `[auth.http]`: an authentication source that asks an HTTP backend.
//!
//! A CONNECT is posted to `url` as JSON:
//! `{"clientid", "username", "password", "peerhost", "listener", "protocol",
//! "cert_common_name"}`. The backend answers
//! `{"result": "allow" | "deny" | "ignore", "is_superuser": bool,
//! "acl": [{"permission": "allow" | "deny", "action": "publish" |
//! "subscribe" | "all", "topic": "..."}]}` (a 204 with no body allows).
//! An `acl` list becomes the client's own rules: the first rule that covers
//! a topic decides, and what none covers is denied. Without one, publish and
//! subscribe checks are posted to `acl-url` (when set) as
//! `{"clientid", "username", "action", "topic", "qos", "retain"}`, answered
//! with `{"result": "allow" | "deny" | "ignore"}`.
//!
//! Requests share one connection pool, are bounded by `timeout-ms`, and run
//! on the connection's task (no thread waits for them). Answers are cached
//! for `cache-ttl-s`. A backend that cannot be asked (no answer in time, an
//! error status, an answer that is not one of the above) gets `on-error`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use starling_broker::auth::{
    Access, Answer, AnswerFuture, AuthnSource, Check, ClientRules, Credentials, Grant, Login,
    PrepareFuture, TopicRules, Verdict,
};
use starling_broker::config::{HttpAuthConfig, OnError};
use starling_codec::QoS;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::IntegrateError;

/// Largest answer body read from the backend.
const MAX_BODY: usize = 1024 * 1024;
/// Most topic answers kept per client.
const CLIENT_ANSWERS: usize = 1024;

/// The `[auth.http]` source.
#[derive(Debug, Clone)]
pub struct HttpAuth {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: reqwest::Client,
    url: String,
    acl_url: Option<String>,
    on_error: OnError,
    ttl: Duration,
    connects: Cache<[u8; 32], Answer>,
    /// When a backend failure was last logged (failures are logged at most
    /// every 10 s).
    last_warned: Mutex<Option<Instant>>,
}

/// What is posted for a CONNECT.
#[derive(Debug, Serialize)]
struct ConnectRequest<'a> {
    clientid: &'a str,
    username: Option<&'a str>,
    password: Option<String>,
    peerhost: String,
    listener: &'a str,
    protocol: u8,
    cert_common_name: Option<&'a str>,
}

/// One rule of an `acl` answer.
#[derive(Debug, Deserialize)]
struct AclEntry {
    #[serde(default = "allow")]
    permission: String,
    #[serde(default = "all")]
    action: String,
    topic: String,
}

fn allow() -> String {
    "allow".into()
}

fn all() -> String {
    "all".into()
}

/// The backend's answer.
#[derive(Debug, Deserialize)]
struct Reply {
    result: String,
    #[serde(default)]
    is_superuser: bool,
    acl: Option<Vec<AclEntry>>,
}

/// What is posted for a publish or subscribe check.
#[derive(Debug, Serialize)]
struct AclRequest<'a> {
    clientid: &'a str,
    username: Option<&'a str>,
    action: &'static str,
    topic: &'a str,
    qos: u8,
    retain: bool,
}

/// Why the backend could not be asked.
#[derive(Debug)]
enum Failure {
    Request(reqwest::Error),
    Status(reqwest::StatusCode),
    TooLarge,
    Answer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Request(e) => write!(f, "request failed: {e}"),
            Failure::Status(s) => write!(f, "answered {s}"),
            Failure::TooLarge => write!(f, "answer larger than {MAX_BODY} bytes"),
            Failure::Answer(why) => write!(f, "bad answer: {why}"),
        }
    }
}

impl HttpAuth {
    /// The source for `config`.
    pub fn new(config: &HttpAuthConfig) -> Result<HttpAuth, IntegrateError> {
        let client = client(
            "auth.http",
            &config.headers,
            Duration::from_millis(config.timeout_ms),
            config.tls_ca.as_deref(),
        )?;
        let ttl = Duration::from_secs(config.cache_ttl_s);
        Ok(HttpAuth {
            shared: Arc::new(Shared {
                client,
                url: config.url.clone(),
                acl_url: config.acl_url.clone(),
                on_error: config.on_error,
                ttl,
                connects: Cache::new(ttl, config.cache_max_entries),
                last_warned: Mutex::new(None),
            }),
        })
    }

    /// How many CONNECT answers are cached now.
    pub fn cached(&self) -> usize {
        self.shared.connects.len()
    }
}

/// An HTTP client for `what` (a setting's name, for errors): pooled, each
/// request bounded by `timeout`, sending `headers`, and verifying `https://`
/// servers against `tls_ca` when given (else the public CAs).
pub(crate) fn client(
    what: &'static str,
    headers: &BTreeMap<String, String>,
    timeout: Duration,
    tls_ca: Option<&Path>,
) -> Result<reqwest::Client, IntegrateError> {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let bad = |message: String| IntegrateError::Key {
            what: format!("{what}.headers.{name}"),
            message,
        };
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let value =
            reqwest::header::HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
        map.insert(name, value);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .default_headers(map)
        .pool_max_idle_per_host(64);
    if let Some(path) = tls_ca {
        let pem = std::fs::read(path).map_err(|source| IntegrateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| IntegrateError::Key {
                what: path.display().to_string(),
                message: e.to_string(),
            })?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|source| IntegrateError::Http { what, source })
}

impl Shared {
    /// The verdict when the backend could not be asked.
    fn failed(&self, what: &str, failure: &Failure) -> Verdict {
        let mut last = self.last_warned.lock();
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                backend = what,
                "auth.http backend: {failure}; on-error applies"
            );
        }
        match self.on_error {
            OnError::Deny => Verdict::Deny,
            OnError::Ignore => Verdict::Ignore,
        }
    }

    /// Posts `body` to `url` and reads the JSON answer.
    async fn post<T: Serialize>(&self, url: &str, body: &T) -> Result<Option<Reply>, Failure> {
        let mut response = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(Failure::Request)?;
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Failure::Status(status));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Failure::Request)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(Failure::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Failure::Answer(e.to_string()))
    }

    /// Asks the backend about a CONNECT.
    async fn connect(self: Arc<Self>, login: Login) -> Answer {
        let key = connect_key(&login);
        if let Some(answer) = self.connects.get(&key) {
            return answer;
        }
        let request = ConnectRequest {
            clientid: &login.client_id,
            username: login.username.as_deref(),
            password: login
                .password
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            peerhost: login.peer.ip().to_string(),
            listener: &login.listener,
            protocol: login.protocol.level(),
            cert_common_name: login.cert_common_name.as_deref(),
        };
        let reply = match self.post(&self.url, &request).await {
            Ok(reply) => reply,
            Err(failure) => return self.failed("url", &failure).into(),
        };
        let answer = match reply {
            None => Answer::allow(self.acl_fallback(&login)),
            Some(reply) => match self.answer(reply, &login) {
                Ok(answer) => answer,
                Err(failure) => return self.failed("url", &failure).into(),
            },
        };
        self.connects.put(key, answer.clone());
        answer
    }

    /// The backend's CONNECT answer as the broker takes it.
    fn answer(self: &Arc<Self>, reply: Reply, login: &Login) -> Result<Answer, Failure> {
        match reply.result.as_str() {
            "allow" => {}
            "deny" => return Ok(Verdict::Deny.into()),
            "ignore" => return Ok(Verdict::Ignore.into()),
            other => return Err(Failure::Answer(format!("result {other:?}"))),
        }
        let mut grant = match reply.acl {
            Some(entries) => Grant {
                rules: Some(Arc::new(rules(&entries, login)?)),
                ..Grant::default()
            },
            None => self.acl_fallback(login),
        };
        grant.superuser = reply.is_superuser;
        Ok(Answer::allow(grant))
    }

    /// The grant of a client whose answer had no `acl` list: its checks go
    /// to `acl-url`, if there is one.
    fn acl_fallback(self: &Arc<Self>, login: &Login) -> Grant {
        let Some(url) = &self.acl_url else {
            return Grant::default();
        };
        Grant {
            rules: Some(Arc::new(AclUrl {
                inner: Arc::new(AclInner {
                    shared: self.clone(),
                    url: url.clone(),
                    client_id: login.client_id.clone(),
                    username: login.username.clone(),
                    answers: Mutex::new(HashMap::new()),
                }),
            })),
            ..Grant::default()
        }
    }
}

/// The cache key of a CONNECT: a digest of everything the backend is told
/// (so that the password is not kept).
fn connect_key(login: &Login) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        login.client_id.as_bytes(),
        login.username.as_deref().unwrap_or("\u{0}none").as_bytes(),
        login.password.as_deref().unwrap_or(b"\x00none"),
        login.peer.ip().to_string().as_bytes(),
        login.listener.as_bytes(),
        login.cert_common_name.as_deref().unwrap_or("").as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update([login.protocol.level()]);
    h.finalize().into()
}

/// An `acl` answer as topic rules.
fn rules(entries: &[AclEntry], login: &Login) -> Result<TopicRules, Failure> {
    let mut rules = TopicRules::default();
    for e in entries {
        let allow = match e.permission.as_str() {
            "allow" => true,
            "deny" => false,
            other => return Err(Failure::Answer(format!("acl permission {other:?}"))),
        };
        let access = match e.action.as_str() {
            "publish" => Some(Access::Write),
            "subscribe" => Some(Access::Read),
            "all" => None,
            other => return Err(Failure::Answer(format!("acl action {other:?}"))),
        };
        rules.push(
            allow,
            access,
            &e.topic,
            &login.client_id,
            login.username.as_deref(),
        );
    }
    Ok(rules)
}

impl AuthnSource for HttpAuth {
    fn name(&self) -> &str {
        "http"
    }

    /// Never called by the broker (it awaits [`AuthnSource::authenticate_async`]):
    /// a synchronous caller gets what `on-error` says.
    fn authenticate(&self, _: &Credentials<'_>) -> Verdict {
        match self.shared.on_error {
            OnError::Deny => Verdict::Deny,
            OnError::Ignore => Verdict::Ignore,
        }
    }

    fn authenticate_async(&self, login: &Login) -> Option<AnswerFuture> {
        Some(Box::pin(self.shared.clone().connect(login.clone())))
    }
}

/// A client's checks posted to `acl-url`.
#[derive(Debug)]
struct AclUrl {
    inner: Arc<AclInner>,
}

#[derive(Debug)]
struct AclInner {
    shared: Arc<Shared>,
    url: String,
    client_id: String,
    username: Option<String>,
    /// By access and topic: the answer last prepared, and every answer
    /// fetched with its QoS, retain flag and time.
    answers: Mutex<HashMap<(Access, String), Answers>>,
}

#[derive(Debug, Default)]
struct Answers {
    last: Option<Verdict>,
    fetched: Vec<(QoS, bool, Verdict, Instant)>,
}

impl AclInner {
    /// A fresh answer to `check`, made the one `check` returns next.
    fn use_cached(&self, check: &Check<'_>) -> bool {
        let mut answers = self.answers.lock();
        let Some(entry) = answers.get_mut(&(check.access, check.topic.to_string())) else {
            return false;
        };
        let ttl = self.shared.ttl;
        let fresh = entry
            .fetched
            .iter()
            .find(|(q, r, _, at)| *q == check.qos && *r == check.retain && at.elapsed() < ttl)
            .map(|(_, _, v, _)| *v);
        if let Some(v) = fresh {
            entry.last = Some(v);
        }
        fresh.is_some()
    }

    fn store(&self, access: Access, topic: String, qos: QoS, retain: bool, verdict: Verdict) {
        let mut answers = self.answers.lock();
        if answers.len() >= CLIENT_ANSWERS && !answers.contains_key(&(access, topic.clone())) {
            answers.clear();
        }
        let entry = answers.entry((access, topic)).or_default();
        entry.fetched.retain(|(q, r, ..)| (*q, *r) != (qos, retain));
        entry.fetched.push((qos, retain, verdict, Instant::now()));
        entry.last = Some(verdict);
    }

    async fn fetch(self: Arc<Self>, access: Access, topic: String, qos: QoS, retain: bool) {
        let request = AclRequest {
            clientid: &self.client_id,
            username: self.username.as_deref(),
            action: match access {
                Access::Write => "publish",
                Access::Read => "subscribe",
            },
            topic: &topic,
            qos: qos as u8,
            retain,
        };
        let verdict = match self.shared.post(&self.url, &request).await {
            Ok(None) => Verdict::Allow,
            Ok(Some(reply)) => match reply.result.as_str() {
                "allow" => Verdict::Allow,
                "deny" => Verdict::Deny,
                "ignore" => Verdict::Ignore,
                other => self
                    .shared
                    .failed("acl-url", &Failure::Answer(format!("result {other:?}"))),
            },
            Err(failure) => self.shared.failed("acl-url", &failure),
        };
        self.store(access, topic, qos, retain, verdict);
    }
}

impl ClientRules for AclUrl {
    fn check(&self, topic: &str, access: Access) -> Verdict {
        let answers = self.inner.answers.lock();
        match answers
            .get(&(access, topic.to_string()))
            .and_then(|a| a.last)
        {
            Some(v) => v,
            // A publish is always prepared first, so an unknown one is a
            // will whose answer was dropped: denied. A delivery of a topic
            // never asked about is covered by the subscription's answer.
            None if access == Access::Write => Verdict::Deny,
            None => Verdict::Ignore,
        }
    }

    fn prepare(&self, check: &Check<'_>) -> Option<PrepareFuture> {
        if self.inner.use_cached(check) {
            return None;
        }
        Some(Box::pin(self.inner.clone().fetch(
            check.access,
            check.topic.to_string(),
            check.qos,
            check.retain,
        )))
    }
}

//! `[auth.jwt]`: a JSON Web Token in the CONNECT's password field.
//!
//! A password that is not a JWT (three base64url parts with a readable
//! header) is not this source's business: the next source is asked. A JWT
//! is verified with the configured key: a shared secret (HS256/384/512), a
//! PEM public key (RSA: RS*/PS*, EC: ES256/384, Ed25519: EdDSA), or a JSON
//! Web Key Set (a file, or a URL refreshed every `jwks-refresh-s` and when a
//! token names an unknown `kid`). The algorithm must be one of the key's
//! family, so a public key can never be used as an HMAC secret. `exp` and
//! `nbf` are enforced (with `leeway-s`), `iss` and `aud` when configured; a
//! token that fails any of this is denied.
//!
//! The token's `exp` becomes the connection's end: the broker closes it
//! when the token expires (MQTT 5: DISCONNECT 0x87). Its `acl` claim,
//! `{"pub": [...], "sub": [...], "all": [...]}` with `%u` and `%c`
//! placeholders, becomes the client's own rules: what they list is
//! allowed, the rest denied. Without the claim the ACL file decides.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use starling_broker::auth::{
    Access, Answer, AnswerFuture, AuthnSource, Credentials, Grant, Login, TopicRules, Verdict,
};
use starling_broker::config::JwtAuthConfig;
use tokio::time::Instant;

use crate::IntegrateError;

/// How often an unknown `kid` may make a JWKS URL be fetched again.
const KID_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long a JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];
const ED: [Algorithm; 1] = [Algorithm::EdDSA];

/// One verification key, with the algorithms of its family.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: &'static [Algorithm],
}

/// The `[auth.jwt]` source.
#[derive(Clone)]
pub struct JwtAuth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("keys", &self.inner.keys.read().len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: JwtAuthConfig,
    keys: RwLock<Arc<Vec<Key>>>,
    /// With `jwks-url`: the client, and when the set was last fetched.
    remote: Option<Remote>,
}

struct Remote {
    client: reqwest::Client,
    url: String,
    last_fetch: Mutex<Option<Instant>>,
    /// Serialises fetches.
    fetching: tokio::sync::Mutex<()>,
}

impl JwtAuth {
    /// The source for `config`. With `jwks-url`, must be called inside a
    /// tokio runtime: the set is fetched on a task, now and every
    /// `jwks-refresh-s`.
    pub fn new(config: &JwtAuthConfig) -> Result<JwtAuth, IntegrateError> {
        let remote = match &config.jwks_url {
            Some(url) => Some(Remote {
                client: reqwest::Client::builder()
                    .timeout(JWKS_TIMEOUT)
                    .build()
                    .map_err(|source| IntegrateError::Http {
                        what: "auth.jwt.jwks-url",
                        source,
                    })?,
                url: url.clone(),
                last_fetch: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
            }),
            None => None,
        };
        let keys = if remote.is_some() {
            Vec::new()
        } else {
            load_keys(config)?
        };
        let inner = Arc::new(Inner {
            config: config.clone(),
            keys: RwLock::new(Arc::new(keys)),
            remote,
        });
        if inner.remote.is_some() {
            let weak = Arc::downgrade(&inner);
            let every = Duration::from_secs(config.jwks_refresh_s);
            tokio::spawn(async move {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.fetch_jwks().await;
                    drop(inner);
                    tokio::time::sleep(every).await;
                }
            });
        }
        Ok(JwtAuth { inner })
    }

    /// Checks `token` as the broker would for `client_id` and `username`.
    pub fn verify(&self, token: &str, client_id: &str, username: Option<&str>) -> Answer {
        match self.inner.verify(token, client_id, username) {
            Ok(answer) => answer,
            Err(why) => {
                tracing::debug!(client_id, "JWT refused: {why}");
                Verdict::Deny.into()
            }
        }
    }
}

/// Reads the key files (or the secret) of `config`.
fn load_keys(config: &JwtAuthConfig) -> Result<Vec<Key>, IntegrateError> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| IntegrateError::Read {
            path: path.clone(),
            source,
        })
    };
    let bad = |what: String, message: String| IntegrateError::Key { what, message };
    if let Some(secret) = &config.secret {
        return Ok(vec![hmac(secret.as_bytes())]);
    }
    if let Some(path) = &config.secret_file {
        let mut secret = read(path)?;
        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            secret.pop();
        }
        if secret.is_empty() {
            return Err(bad(
                path.display().to_string(),
                "the secret is empty".into(),
            ));
        }
        return Ok(vec![hmac(&secret)]);
    }
    if let Some(path) = &config.public_key_file {
        let pem = read(path)?;
        let key = public_key(&pem).ok_or_else(|| {
            bad(
                path.display().to_string(),
                "not an RSA, EC or Ed25519 PEM public key".into(),
            )
        })?;
        return Ok(vec![key]);
    }
    if let Some(path) = &config.jwks_file {
        let text = read(path)?;
        return jwks(&text).map_err(|m| bad(path.display().to_string(), m));
    }
    Ok(Vec::new())
}

fn hmac(secret: &[u8]) -> Key {
    Key {
        kid: None,
        key: DecodingKey::from_secret(secret),
        algorithms: &HMAC,
    }
}

/// A PEM public key of any family `jsonwebtoken` verifies.
fn public_key(pem: &[u8]) -> Option<Key> {
    let key = |key, algorithms| Key {
        kid: None,
        key,
        algorithms,
    };
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some(key(k, &RSA[..]));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some(key(k, &EC[..]));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Some(key(k, &ED[..]));
    }
    None
}

/// The keys of a JSON Web Key Set.
fn jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithms: &'static [Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &RSA,
            AlgorithmParameters::EllipticCurve(_) => &EC,
            AlgorithmParameters::OctetKeyPair(_) => &ED,
            AlgorithmParameters::OctetKey(_) => &HMAC,
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            key,
            algorithms,
        });
    }
    Ok(keys)
}

/// Whether `password` has the shape of a JWT, and its header if so.
fn header_of(password: &[u8]) -> Option<(jsonwebtoken::Header, &str)> {
    let token = std::str::from_utf8(password).ok()?;
    if token.split('.').count() != 3 {
        return None;
    }
    Some((jsonwebtoken::decode_header(token).ok()?, token))
}

impl Inner {
    fn validation(&self, alg: Algorithm) -> Validation {
        let c = &self.config;
        let mut v = Validation::new(alg);
        v.leeway = c.leeway_s;
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        if c.require_exp {
            v.required_spec_claims.insert("exp".into());
        }
        if let Some(iss) = &c.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        match &c.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        v
    }

    /// Whether a key for this header is known (else a JWKS URL may be
    /// fetched again).
    fn knows(&self, header: &jsonwebtoken::Header) -> bool {
        self.candidates(header).next().is_some()
    }

    fn candidates<'a>(
        &'a self,
        header: &'a jsonwebtoken::Header,
    ) -> impl Iterator<Item = Key> + 'a {
        let keys = self.keys.read().clone();
        (0..keys.len()).filter_map(move |i| {
            let k = &keys[i];
            let kid_ok = match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            };
            (kid_ok && k.algorithms.contains(&header.alg)).then(|| k.clone())
        })
    }

    fn verify(
        &self,
        token: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> Result<Answer, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let validation = self.validation(header.alg);
        let mut last = String::from("no key for this token's algorithm or kid");
        for key in self.candidates(&header) {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => return self.grant(&data.claims, client_id, username),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// What a verified token's claims grant.
    fn grant(
        &self,
        claims: &Value,
        client_id: &str,
        username: Option<&str>,
    ) -> Result<Answer, String> {
        let expires_at = match claims.get("exp") {
            None => None,
            Some(exp) => {
                let secs = exp.as_u64().ok_or("exp is not a number of seconds")?;
                Some(UNIX_EPOCH + Duration::from_secs(secs.saturating_add(self.config.leeway_s)))
            }
        };
        if expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Err("expired".into());
        }
        let rules = match claims.get(&self.config.acl_claim) {
            None => None,
            Some(acl) => Some(Arc::new(acl_rules(acl, client_id, username)?)),
        };
        Ok(Answer::allow(Grant {
            superuser: false,
            rules: rules.map(|r| r as Arc<dyn starling_broker::auth::ClientRules>),
            expires_at,
        }))
    }

    /// Fetches the key set of `jwks-url`; keeps the old one on failure.
    async fn fetch_jwks(&self) {
        let Some(remote) = &self.remote else { return };
        let _one = remote.fetching.lock().await;
        *remote.last_fetch.lock() = Some(Instant::now());
        let fetched = async {
            let response = remote
                .client
                .get(&remote.url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            jwks(&body)
        }
        .await;
        match fetched {
            Ok(keys) => {
                tracing::debug!(url = %remote.url, keys = keys.len(), "JWKS fetched");
                *self.keys.write() = Arc::new(keys);
            }
            Err(why) => tracing::warn!(url = %remote.url, "JWKS not fetched: {why}"),
        }
    }

    /// Fetches the JWKS again for an unknown `kid`, at most every
    /// [`KID_REFRESH_EVERY`].
    async fn refresh_for_unknown_kid(&self) {
        let Some(remote) = &self.remote else { return };
        let due = remote
            .last_fetch
            .lock()
            .is_none_or(|at| at.elapsed() >= KID_REFRESH_EVERY);
        if due {
            self.fetch_jwks().await;
        } else {
            // A fetch under way (the first one, say) is waited for.
            drop(remote.fetching.lock().await);
        }
    }
}

/// An `acl` claim as the client's rules.
fn acl_rules(acl: &Value, client_id: &str, username: Option<&str>) -> Result<TopicRules, String> {
    let object = acl.as_object().ok_or("the acl claim is not an object")?;
    let mut rules = TopicRules::default();
    for (name, access) in [
        ("pub", Some(Access::Write)),
        ("sub", Some(Access::Read)),
        ("all", None),
    ] {
        let Some(list) = object.get(name) else {
            continue;
        };
        let list = list.as_array().ok_or(format!("acl.{name} is not a list"))?;
        for topic in list {
            let topic = topic
                .as_str()
                .ok_or(format!("acl.{name} holds a non-string"))?;
            rules.push(true, access, topic, client_id, username);
        }
    }
    Ok(rules)
}

impl AuthnSource for JwtAuth {
    fn name(&self) -> &str {
        "jwt"
    }

    fn authenticate(&self, c: &Credentials<'_>) -> Verdict {
        match c.password.and_then(header_of) {
            Some((_, token)) => self.verify(token, c.client_id, c.username).verdict,
            None => Verdict::Ignore,
        }
    }

    fn is_slow(&self, _: &Credentials<'_>) -> bool {
        true
    }

    fn authenticate_async(&self, login: &Login) -> Option<AnswerFuture> {
        let source = self.clone();
        let login = login.clone();
        Some(Box::pin(async move {
            let Some((header, token)) = login.password.as_deref().and_then(header_of) else {
                return Verdict::Ignore.into();
            };
            if !source.inner.knows(&header) {
                source.inner.refresh_for_unknown_kid().await;
            }
            source.verify(token, &login.client_id, login.username.as_deref())
        }))
    }

    fn reload(&self) -> Result<(), String> {
        if self.inner.remote.is_some() {
            return Ok(());
        }
        let keys = load_keys(&self.inner.config).map_err(|e| e.to_string())?;
        *self.inner.keys.write() = Arc::new(keys);
        Ok(())
    }
}

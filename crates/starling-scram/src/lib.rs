//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), as MQTT 5 enhanced
//! authentication carries it: the Authentication Method is
//! [`METHOD`], and the Authentication Data of CONNECT, AUTH and CONNACK
//! are the four SCRAM messages in turn:
//!
//! 1. client-first (CONNECT, or AUTH 0x19 to re-authenticate): `n,,n=USER,r=CNONCE`
//! 2. server-first (AUTH 0x18): `r=CNONCE SNONCE,s=SALT,i=ITERATIONS`
//! 3. client-final (AUTH 0x18): `c=biws,r=NONCE,p=PROOF`
//! 4. server-final (CONNACK 0x00, or AUTH 0x00): `v=SIGNATURE`
//!
//! The server keeps only a [`Credential`] (salt, iterations, StoredKey,
//! ServerKey), never the password; both sides prove they know it. Channel
//! binding is not offered (`n,,`). Comparisons of proofs are constant-time.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-256";
/// Iterations of new credentials (RFC 7677 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Most iterations a stored credential may ask for (bounds the server's
/// work per attempt).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Longest SCRAM message accepted.
pub const MAX_MESSAGE: usize = 4096;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The nonce was not extended from ours.
    #[error("the nonce does not continue the exchange")]
    Nonce,
    /// The client's proof is wrong (wrong password, or unknown user).
    #[error("authentication failed")]
    Failed,
    /// The server's signature is wrong: it does not know the password.
    #[error("the server's signature is wrong")]
    ServerSignature,
    /// A stored credential cannot be read.
    #[error("bad credential: {0}")]
    Credential(&'static str),
}

/// What the server keeps of a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn salted(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// Constant-time equality of two 32-byte values.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    B64.encode(bytes)
}

impl Credential {
    /// The credential of `password` with a random salt.
    pub fn new(password: &str, iterations: u32) -> Credential {
        let salt: [u8; 16] = rand::random();
        Self::with_salt(password, &salt, iterations)
    }

    /// The credential of `password` with `salt`.
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Credential {
        let salted = salted(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Credential {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// As stored in a credentials file (PostgreSQL's form):
    /// `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY`, base64.
    pub fn to_text(&self) -> String {
        format!(
            "{METHOD}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Reads [`Credential::to_text`]'s form.
    pub fn parse(text: &str) -> Result<Credential, ScramError> {
        let bad = ScramError::Credential;
        let rest = text
            .strip_prefix(METHOD)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or(bad("does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest.split_once('$').ok_or(bad("missing keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(bad("missing salt"))?;
        let (stored, server) = keys.split_once(':').ok_or(bad("missing server key"))?;
        let iterations: u32 = iterations.parse().map_err(|_| bad("bad iterations"))?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(bad("iterations out of range"));
        }
        let key = |s: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(s)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or(bad("a key is not 32 bytes of base64"))
        };
        Ok(Credential {
            iterations,
            salt: B64.decode(salt).map_err(|_| bad("bad salt"))?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

/// `name=value` attributes of a SCRAM message, in order.
fn attributes(message: &str) -> Result<Vec<(char, &str)>, ScramError> {
    if message.len() > MAX_MESSAGE {
        return Err(ScramError::Malformed("too long"));
    }
    message
        .split(',')
        .map(|part| {
            let mut chars = part.chars();
            match (chars.next(), chars.next()) {
                (Some(k), Some('=')) => Ok((k, &part[2..])),
                _ => Err(ScramError::Malformed("an attribute is not name=value")),
            }
        })
        .collect()
}

fn attribute<'a>(attrs: &[(char, &'a str)], name: char) -> Result<&'a str, ScramError> {
    attrs
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .ok_or(ScramError::Malformed("a required attribute is missing"))
}

/// RFC 5802 user names escape `=` and `,`.
fn escape(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn unescape(user: &str) -> Result<String, ScramError> {
    let out = user.replace("=2C", ",").replace("=3D", "=");
    if out.contains('=') && !user.contains("=3D") {
        return Err(ScramError::Malformed("bad escape in the user name"));
    }
    Ok(out)
}

/// The client's side of one exchange.
#[derive(Debug, Clone)]
pub struct ClientExchange {
    user: String,
    password: String,
    nonce: String,
    /// `client-first-bare` and `server-first`, kept for the signatures.
    first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl ClientExchange {
    /// Starts an exchange for `user` with `password`.
    pub fn new(user: &str, password: &str) -> ClientExchange {
        let nonce = nonce();
        ClientExchange {
            first_bare: format!("n={},r={nonce}", escape(user)),
            user: user.to_string(),
            password: password.to_string(),
            nonce,
            server_signature: None,
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Message 1: client-first.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// Message 3 (client-final) in answer to message 2 (server-first).
    pub fn client_final(&mut self, server_first: &str) -> Result<String, ScramError> {
        let attrs = attributes(server_first)?;
        let nonce = attribute(&attrs, 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = B64
            .decode(attribute(&attrs, 's')?)
            .map_err(|_| ScramError::Malformed("bad salt"))?;
        let iterations: u32 = attribute(&attrs, 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Malformed("iteration count out of range"));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let salted = salted(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let proof = xor(&client_key, &hmac(&stored_key, auth_message.as_bytes()));
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks message 4 (server-final): the server knew the password.
    pub fn verify_server(&self, server_final: &str) -> Result<(), ScramError> {
        let attrs = attributes(server_final)?;
        if attrs.iter().any(|(k, _)| *k == 'e') {
            return Err(ScramError::Failed);
        }
        let signature = B64
            .decode(attribute(&attrs, 'v')?)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or(ScramError::Malformed("bad server signature"))?;
        match &self.server_signature {
            Some(expected) if same(expected, &signature) => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

/// The server's side of one exchange, after message 1.
#[derive(Debug, Clone)]
pub struct ServerExchange {
    user: String,
    nonce: String,
    first_bare: String,
    server_first: String,
    credential: Credential,
    /// Whether the user is unknown (the exchange goes on with a made-up
    /// credential, so that it looks the same, and fails at the proof).
    unknown: bool,
}

/// The user name a client-first message names, so that its credential can
/// be looked up before [`ServerExchange::start`].
pub fn client_first_user(client_first: &str) -> Result<String, ScramError> {
    let bare = client_first_bare(client_first)?;
    unescape(attribute(&attributes(bare)?, 'n')?)
}

fn client_first_bare(client_first: &str) -> Result<&str, ScramError> {
    // GS2 header: no channel binding ("n") or not supported by the server
    // ("y"), no authzid.
    client_first
        .strip_prefix("n,,")
        .or_else(|| client_first.strip_prefix("y,,"))
        .ok_or(ScramError::Malformed(
            "client-first must start with n,, (no channel binding, no authzid)",
        ))
}

impl ServerExchange {
    /// Answers message 1 (client-first) with message 2 (server-first), given
    /// the user's credential (`None`: unknown user).
    pub fn start(
        client_first: &str,
        credential: Option<Credential>,
    ) -> Result<(ServerExchange, String), ScramError> {
        let bare = client_first_bare(client_first)?;
        let attrs = attributes(bare)?;
        let user = unescape(attribute(&attrs, 'n')?)?;
        let client_nonce = attribute(&attrs, 'r')?;
        if client_nonce.is_empty() {
            return Err(ScramError::Malformed("empty nonce"));
        }
        let unknown = credential.is_none();
        // An unknown user gets the same shape of answer as a known one (a
        // salt that is always the same for that name), without the cost of
        // deriving a key; no proof can match it.
        let credential = credential.unwrap_or_else(|| {
            let digest: [u8; 32] = Sha256::digest(user.as_bytes()).into();
            Credential {
                iterations: DEFAULT_ITERATIONS,
                salt: digest[..16].to_vec(),
                stored_key: digest,
                server_key: digest,
            }
        });
        let nonce = format!("{client_nonce}{}", nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        Ok((
            ServerExchange {
                user,
                nonce,
                first_bare: bare.to_string(),
                server_first: server_first.clone(),
                credential,
                unknown,
            },
            server_first,
        ))
    }

    /// The user being authenticated.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks message 3 (client-final); on success, message 4 (server-final).
    pub fn finish(&self, client_final: &str) -> Result<String, ScramError> {
        let attrs = attributes(client_final)?;
        if attribute(&attrs, 'c')? != "biws" && attribute(&attrs, 'c')? != "eSws" {
            return Err(ScramError::Malformed("channel binding is not supported"));
        }
        if attribute(&attrs, 'r')? != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(attribute(&attrs, 'p')?)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let without_proof = client_final
            .rsplit_once(",p=")
            .map(|(w, _)| w)
            .ok_or(ScramError::Malformed("the proof must come last"))?;
        let auth_message = format!("{},{},{without_proof}", self.first_bare, self.server_first);
        let signature = hmac(&self.credential.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &signature);
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if self.unknown || !same(&stored, &self.credential.stored_key) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_exchange_with_the_right_password() {
        let credential = Credential::new("pencil", 4096);
        let stored = Credential::parse(&credential.to_text()).unwrap();
        assert_eq!(stored, credential);
        let mut client = ClientExchange::new("us,er=", "pencil");
        let first = client.client_first();
        assert_eq!(client_first_user(&first).unwrap(), "us,er=");
        let (server, server_first) = ServerExchange::start(&first, Some(stored)).unwrap();
        let client_final = client.client_final(&server_first).unwrap();
        let server_final = server.finish(&client_final).unwrap();
        client.verify_server(&server_final).unwrap();
        assert_eq!(server.user(), "us,er=");
    }

    #[test]
    fn wrong_passwords_unknown_users_and_false_servers_fail() {
        let credential = Credential::new("pencil", 4096);
        let mut client = ClientExchange::new("user", "wrong");
        let (server, sf) =
            ServerExchange::start(&client.client_first(), Some(credential.clone())).unwrap();
        let cf = client.client_final(&sf).unwrap();
        assert_eq!(server.finish(&cf), Err(ScramError::Failed));
        let mut client = ClientExchange::new("nobody", "pencil");
        let (server, sf) = ServerExchange::start(&client.client_first(), None).unwrap();
        let cf = client.client_final(&sf).unwrap();
        assert_eq!(server.finish(&cf), Err(ScramError::Failed));
        // A server that does not know the password cannot sign.
        let mut client = ClientExchange::new("user", "pencil");
        let (server, sf) = ServerExchange::start(&client.client_first(), Some(credential)).unwrap();
        client.client_final(&sf).unwrap();
        assert_eq!(
            client.verify_server("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::ServerSignature)
        );
        drop(server);
    }

    #[test]
    fn the_rfc_7677_example() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = Credential::with_salt("pencil", &salt, 4096);
        let first = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let server = ServerExchange {
            user: "user".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            first_bare: first[3..].into(),
            server_first: server_first.into(),
            credential,
            unknown: false,
        };
        assert_eq!(
            server.finish(client_final).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(ServerExchange::start("p=tls,,n=u,r=x", None).is_err());
        assert!(ServerExchange::start("n,,n=u", None).is_err());
        assert!(ServerExchange::start(&"n,,n=u,r=".repeat(1000), None).is_err());
        assert!(Credential::parse("SCRAM-SHA-256$0:AA==$AA==:AA==").is_err());
        let mut c = ClientExchange::new("u", "p");
        assert_eq!(
            c.client_final("r=other,s=AA==,i=4096"),
            Err(ScramError::Nonce)
        );
    }
}

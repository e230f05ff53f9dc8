//! The password file: `user:hash` lines. Hashes are argon2id PHC strings written
//! by `starling passwd`, or Mosquitto's `$6$` (salted SHA-512) and `$7$`
//! (PBKDF2-SHA512) hashes, so a Mosquitto password file works as it is.
//!
//! Cost: new hashes use OWASP's argon2id setting of 7 MiB and 5 passes
//! ([`HASH_PARAMS`]), a few milliseconds. Existing hashes are verified at the
//! parameters they were stored with. Verification reuses one block of hashing
//! memory per thread instead of allocating it per attempt; the broker
//! verifies only on its small [`super::AuthPool`], so hashing memory is
//! bounded by that pool's size. An unknown user is verified against a dummy
//! hash of the same cost, so the answer's timing does not tell which part
//! failed.

use std::collections::HashMap;
use std::path::Path;

use std::cell::RefCell;
use std::sync::LazyLock;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha512};

use super::AuthFileError;

/// Users and their password hashes.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

/// The argon2id cost of new hashes: memory in KiB, passes, lanes. OWASP's
/// Password Storage Cheat Sheet lists m=7168 KiB, t=5, p=1 as equivalent in
/// strength to its other argon2id settings, with the least memory.
pub const HASH_PARAMS: (u32, u32, u32) = (7 * 1024, 5, 1);

fn hasher() -> Argon2<'static> {
    let (m, t, p) = HASH_PARAMS;
    let params = Params::new(m, t, p, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password as an argon2id PHC string at [`HASH_PARAMS`].
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// What an unknown user's password is checked against: as costly as a real
/// hash, and never matching a password anyone can send in time to matter.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let secret: [u8; 16] = rand::random();
    hash_password(&format!("{secret:02x?}")).unwrap_or_default()
});

thread_local! {
    /// Argon2 working memory, kept by the thread between verifications.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

impl PasswordFile {
    /// Reads a password file.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses password file text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthFileError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line.split_once(':').ok_or_else(|| AuthFileError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message: "expected user:hash".to_string(),
            })?;
            if !(hash.starts_with("$argon2") || hash.starts_with("$6$") || hash.starts_with("$7$"))
            {
                return Err(AuthFileError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("unsupported hash for user {user:?} (use starling passwd)"),
                });
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(PasswordFile { users })
    }

    /// Adds or replaces a user (for `starling passwd`).
    pub fn set(&mut self, user: &str, hash: String) {
        self.users.insert(user.to_string(), hash);
    }

    /// The file's text, users sorted.
    pub fn to_text(&self) -> String {
        let mut users: Vec<_> = self.users.iter().collect();
        users.sort();
        users.iter().map(|(u, h)| format!("{u}:{h}\n")).collect()
    }

    /// Whether `password` is right for `user`. Unknown users and malformed hashes fail.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.check(user, password) == Some(true)
    }

    /// Whether `password` is right for `user`; `None` for a user the file
    /// does not know (checked against a dummy hash all the same, so that the
    /// time taken does not tell which part failed).
    pub fn check(&self, user: &str, password: &[u8]) -> Option<bool> {
        let Some(hash) = self.users.get(user) else {
            let _ = verify_hash(&DUMMY_HASH, password);
            return None;
        };
        Some(verify_hash(hash, password))
    }
}

fn verify_hash(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$argon2") {
        return verify_argon2(hash, password).unwrap_or(false);
    }
    let parts: Vec<&str> = hash.split('$').collect();
    match parts.as_slice() {
        ["", "6", salt, expected] => {
            let (Ok(salt), Ok(expected)) = (STANDARD.decode(salt), STANDARD.decode(expected))
            else {
                return false;
            };
            let mut h = Sha512::new();
            h.update(password);
            h.update(&salt);
            constant_eq(&h.finalize(), &expected)
        }
        ["", "7", iterations, salt, expected] => {
            let (Ok(iterations), Ok(salt), Ok(expected)) = (
                iterations.parse::<u32>(),
                STANDARD.decode(salt),
                STANDARD.decode(expected),
            ) else {
                return false;
            };
            if iterations == 0 || expected.is_empty() || expected.len() > 64 {
                return false;
            }
            let mut out = vec![0u8; expected.len()];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut out);
            constant_eq(&out, &expected)
        }
        _ => false,
    }
}

/// Verifies an argon2 PHC string at its own parameters, in this thread's
/// reused working memory. `None` for a malformed hash.
fn verify_argon2(hash: &str, password: &[u8]) -> Option<bool> {
    let parsed = PasswordHash::new(hash).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).ok()?;
    let expected = parsed.hash?;
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = [0u8; 64];
    let out = out.get_mut(..expected.len())?;
    ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, Block::new());
        }
        argon2
            .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
            .ok()
    })?;
    Some(constant_eq(out, expected.as_bytes()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let mut f = PasswordFile::default();
        f.set("alice", hash_password("secret").unwrap());
        let f = PasswordFile::parse(&f.to_text(), Path::new("p")).unwrap();
        assert!(f.verify("alice", b"secret"));
        assert!(!f.verify("alice", b"wrong"));
        assert!(!f.verify("bob", b"secret"));
    }

    #[test]
    fn new_hashes_use_the_documented_cost_and_old_ones_still_verify() {
        let h = hash_password("pw").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{h}");
        // A hash written with the argon2 crate's defaults (19 MiB, 2 passes),
        // as `starling passwd` did before.
        let salt = SaltString::generate(&mut OsRng);
        let old = Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(old.contains("m=19456,t=2"), "{old}");
        assert!(verify_hash(&old, b"pw"));
        assert!(!verify_hash(&old, b"px"));
        assert!(verify_hash(&h, b"pw"));
        assert!(!verify_hash(&h, b"px"));
        // Malformed: never a match, never a panic.
        for bad in [
            "$argon2id$",
            "$argon2id$v=19$m=8,t=1,p=1$",
            "$argon2x$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        ] {
            assert!(!verify_hash(bad, b"pw"), "{bad}");
        }
    }

    #[test]
    fn mosquitto_hashes() {
        // $6$: SHA-512 over password then salt, both base64.
        let salt = b"0123456789ab";
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(salt);
        let six = format!(
            "$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(h.finalize())
        );
        assert!(verify_hash(&six, b"pw"));
        assert!(!verify_hash(&six, b"px"));
        // $7$: PBKDF2-HMAC-SHA512, 101 iterations, 64-byte key.
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"pw", salt, 101, &mut out);
        let seven = format!("$7$101${}${}", STANDARD.encode(salt), STANDARD.encode(out));
        assert!(verify_hash(&seven, b"pw"));
        assert!(!verify_hash(&seven, b"px"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = PasswordFile::parse("a:$6$x$y\nnocolon\n", Path::new("pw")).unwrap_err();
        assert_eq!(err.to_string(), "pw:2: expected user:hash");
    }
}

//! The password file: `user:hash` lines. Hashes are argon2id PHC strings written
//! by `starling passwd`, or Mosquitto's `$6$` (salted SHA-512) and `$7$`
//! (PBKDF2-SHA512) hashes, so a Mosquitto password file works as it is.

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha512};

use super::AuthFileError;

/// Users and their password hashes.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

/// Hashes a password as an argon2id PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
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
        let Some(hash) = self.users.get(user) else {
            // Spend comparable time, so the answer does not tell which part failed.
            let _ = hash_password("timing-equaliser");
            return false;
        };
        verify_hash(hash, password)
    }
}

fn verify_hash(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$argon2") {
        return PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(password, &h).is_ok())
            .unwrap_or(false);
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

//! The SCRAM-SHA-256 credentials file (`scram-file`), written by
//! `starling passwd --scram`: one `user:SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY`
//! line per user. The broker never sees the passwords, only these keys.

use std::collections::BTreeMap;
use std::path::Path;

use starling_scram::Credential;

use super::AuthFileError;

/// Users and their SCRAM credentials.
#[derive(Debug, Default, Clone)]
pub struct ScramFile {
    users: BTreeMap<String, Credential>,
}

impl ScramFile {
    /// Reads a credentials file.
    pub fn load(path: &Path) -> Result<ScramFile, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a credentials file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ScramFile, AuthFileError> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AuthFileError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let (user, credential) = line
                .split_once(':')
                .ok_or_else(|| err("expected user:SCRAM-SHA-256$...".into()))?;
            let credential = Credential::parse(credential).map_err(|e| err(e.to_string()))?;
            users.insert(user.to_string(), credential);
        }
        Ok(ScramFile { users })
    }

    /// The credential of `user`.
    pub fn get(&self, user: &str) -> Option<&Credential> {
        self.users.get(user)
    }

    /// Adds or replaces a user.
    pub fn set(&mut self, user: &str, credential: Credential) {
        self.users.insert(user.to_string(), credential);
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.users
            .iter()
            .map(|(u, c)| format!("{u}:{}\n", c.to_text()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_line() {
        let mut file = ScramFile::default();
        file.set("alice", Credential::new("pw", 4096));
        let back = ScramFile::parse(&file.to_text(), Path::new("f")).unwrap();
        assert_eq!(back.get("alice"), file.get("alice"));
        let err = ScramFile::parse("# c\nbob:plain\n", Path::new("f")).unwrap_err();
        assert!(err.to_string().starts_with("f:2: "), "{err}");
    }
}

//! Authentication and authorization: the pluggable [`Authenticator`], the
//! password file, and Mosquitto-format ACLs.

mod acl;
mod build;
pub mod chain;
mod grant;
mod limiter;
mod password;
mod pool;
mod scram;

pub use acl::{covers, substitute, Access, Acl};
pub use build::{configured, load_files, load_scram};
pub use chain::{
    AnswerFuture, AuthChain, AuthnSource, AuthzSource, Login, PasswordFileSource, Verdict,
};
pub use grant::{Answer, Check, ClientRules, Grant, PrepareFuture, TopicRule, TopicRules};
pub(crate) use limiter::{Admission, AuthLimiter};
pub use password::{hash_password, PasswordFile, HASH_PARAMS};
pub use pool::AuthPool;
pub use scram::ScramFile;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

/// What a client presents in CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// User name, if any.
    pub username: Option<&'a str>,
    /// Password, if any.
    pub password: Option<&'a [u8]>,
    /// Remote address.
    pub peer: SocketAddr,
}

/// The outcome of authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in.
    Allow,
    /// Unknown user or wrong password: 3.x code 4, MQTT 5 0x86. Which one is never told.
    BadCredentials,
    /// Authenticated (or anonymous) but not allowed: 3.x code 5, MQTT 5 0x87.
    NotAuthorized,
}

/// Decides whether a client may connect. Implementations may block (hashing is
/// slow on purpose); the broker calls them on a blocking thread.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a client's credentials.
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision;

    /// Whether [`Authenticator::authenticate`] may be slow for these credentials
    /// and so must run on a blocking thread. Defaults to `true`.
    fn is_slow(&self, _credentials: &Credentials<'_>) -> bool {
        true
    }

    /// The chain of sources behind this authenticator, if it is one: the
    /// broker then asks them one by one ([`AuthChain::decide`]).
    fn chain(&self) -> Option<&AuthChain> {
        None
    }
}

/// Errors loading the password or ACL file. One line, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line could not be understood.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The default authenticator: anonymous access on or off, and an optional password file.
#[derive(Debug)]
pub struct FileAuthenticator {
    /// Whether clients without a user name are let in.
    pub allow_anonymous: bool,
    /// Users and password hashes.
    pub passwords: Option<PasswordFile>,
}

impl Authenticator for FileAuthenticator {
    fn authenticate(&self, c: &Credentials<'_>) -> AuthDecision {
        decide(self.allow_anonymous, self.passwords.as_ref(), c)
    }

    fn is_slow(&self, c: &Credentials<'_>) -> bool {
        c.username.is_some() && self.passwords.is_some()
    }
}

/// The file-based decision, as the chain of one password-file source makes it.
fn decide(
    allow_anonymous: bool,
    passwords: Option<&PasswordFile>,
    c: &Credentials<'_>,
) -> AuthDecision {
    // A client without a user name never reaches the file.
    let Some(user) = c.username else {
        return AuthChain::new(Vec::new(), allow_anonymous).authenticate(c);
    };
    match passwords {
        Some(file) => match file.check(user, c.password.unwrap_or_default()) {
            Some(true) => AuthDecision::Allow,
            _ => AuthDecision::BadCredentials,
        },
        // A user name but no password file: treated as anonymous, like Mosquitto.
        None => AuthChain::new(Vec::new(), allow_anonymous).authenticate(c),
    }
}

/// A password or ACL file of one listener (`password-file`, `acl-file` in a
/// `[[listener]]` table), which a reload reads again. Connections and sessions
/// hold the handle and use what is current at each check.
#[derive(Debug)]
pub struct ListenerFile<T> {
    path: PathBuf,
    load: fn(&Path) -> Result<T, AuthFileError>,
    current: RwLock<Arc<T>>,
}

impl<T> ListenerFile<T> {
    /// Loads the file at `path` with `load` ([`PasswordFile::load`], [`Acl::load`]).
    pub fn open(
        path: &Path,
        load: fn(&Path) -> Result<T, AuthFileError>,
    ) -> Result<ListenerFile<T>, AuthFileError> {
        Ok(ListenerFile {
            path: path.to_path_buf(),
            load,
            current: RwLock::new(Arc::new(load(path)?)),
        })
    }

    /// Reads the file again, without installing it.
    pub(crate) fn read(&self) -> Result<T, AuthFileError> {
        (self.load)(&self.path)
    }

    /// The file's contents as last loaded.
    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the contents (after a reload).
    pub(crate) fn install(&self, value: T) {
        *self.current.write() = Arc::new(value);
    }
}

/// Authentication against a listener's own password file.
#[derive(Debug)]
pub(crate) struct ListenerAuthenticator {
    /// Whether clients without a user name are let in.
    pub allow_anonymous: bool,
    /// The listener's password file as it is now.
    pub passwords: Arc<PasswordFile>,
}

impl Authenticator for ListenerAuthenticator {
    fn authenticate(&self, c: &Credentials<'_>) -> AuthDecision {
        decide(self.allow_anonymous, Some(&self.passwords), c)
    }

    fn is_slow(&self, c: &Credentials<'_>) -> bool {
        c.username.is_some()
    }
}

//! Reloading a running broker's certificates, password and ACL files (what
//! SIGHUP does): all of them load, or nothing changes.

use std::sync::Arc;

use crate::auth::{Acl, AuthFileError, AuthnSource, ListenerFile, PasswordFile};
use crate::broker::BrokerState;
use crate::transport;
use crate::transport::tls::Reloadable;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A TLS listener's files could not be loaded.
    #[error("listener {url:?}: {message}")]
    Tls {
        /// The listener.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The password or ACL file is bad.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// An authentication source could not read its files.
    #[error("auth source {name}: {message}")]
    Source {
        /// The source.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Re-reads certificates and auth files of a running broker (what SIGHUP does).
///
/// [`ReloadHandle::reload`] loads everything first and installs it only if all
/// of it loaded, so a bad file changes nothing. Connections stay up: TLS
/// sessions already established keep their keys, and connected clients are
/// checked against the new ACL from their next PUBLISH or SUBSCRIBE on.
#[derive(Clone)]
pub struct ReloadHandle {
    pub(super) state: Arc<BrokerState>,
    pub(super) tls: Vec<TlsListener>,
    /// The listeners' own password and ACL files.
    pub(super) listener_files: Vec<ListenerFiles>,
    /// Whether the authenticator and ACL come from the configured files (bound
    /// with [`Broker::bind`], not [`Broker::bind_with`]).
    pub(super) files: bool,
    /// The authentication sources beside the password file, rebuilt into
    /// the chain with it (and asked to reload their own files).
    pub(super) sources: Vec<Arc<dyn AuthnSource>>,
}

impl std::fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadHandle")
            .field("tls_listeners", &self.tls.len())
            .field("files", &self.files)
            .finish()
    }
}

/// A listener's own password and ACL files.
#[derive(Clone, Default)]
pub(super) struct ListenerFiles {
    pub(super) passwords: Option<Arc<ListenerFile<PasswordFile>>>,
    pub(super) acl: Option<Arc<ListenerFile<Acl>>>,
}

/// A TLS listener's reloadable configuration (and its QUIC endpoint, if QUIC).
#[derive(Clone)]
pub(super) struct TlsListener {
    pub(super) url: String,
    pub(super) config: Arc<Reloadable>,
    pub(super) quic: Option<quinn::Endpoint>,
}

impl ReloadHandle {
    /// Re-reads every TLS listener's certificate, key and CA file, and the
    /// password and ACL files (the broker's and the listeners' own); installs
    /// them all, or nothing on error.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let mut tls = Vec::new();
        for l in &self.tls {
            let err = |message: String| ReloadError::Tls {
                url: l.url.clone(),
                message,
            };
            let config = transport::tls::server_config(l.config.settings()).map_err(err)?;
            let quic = match &l.quic {
                Some(_) => Some(transport::quic::server_config(config.clone()).map_err(err)?),
                None => None,
            };
            tls.push((l, config, quic));
        }
        let files = if self.files {
            let (passwords, acl) = crate::auth::load_files(&self.state.config)?;
            Some((passwords, acl, crate::auth::load_scram(&self.state.config)?))
        } else {
            None
        };
        let mut listener_files = Vec::new();
        for f in &self.listener_files {
            let passwords = f.passwords.as_ref().map(|p| p.read()).transpose()?;
            let acl = f.acl.as_ref().map(|a| a.read()).transpose()?;
            listener_files.push((f, passwords, acl));
        }
        // Last of what can fail: a source installs what it read.
        for source in &self.sources {
            source.reload().map_err(|message| ReloadError::Source {
                name: source.name().to_string(),
                message,
            })?;
        }
        for (f, passwords, acl) in listener_files {
            if let (Some(file), Some(passwords)) = (&f.passwords, passwords) {
                file.install(passwords);
            }
            if let (Some(file), Some(acl)) = (&f.acl, acl) {
                file.install(acl);
            }
        }
        for (l, config, quic) in tls {
            l.config.install(config);
            if let (Some(endpoint), Some(quic)) = (&l.quic, quic) {
                endpoint.set_server_config(Some(quic));
            }
        }
        if let Some((passwords, acl, scram)) = files {
            self.state.set_scram(scram);
            *self.state.authenticator.write() =
                crate::auth::configured(&self.state.config, passwords, &self.sources);
            self.state.set_acl(acl);
        }
        tracing::info!(
            tls_listeners = self.tls.len(),
            auth_files = self.files,
            listener_auth_files = self.listener_files.len(),
            "reloaded"
        );
        Ok(())
    }
}

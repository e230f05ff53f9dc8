//! The broker's authenticator as its configuration orders it: the password
//! file alone (Mosquitto's behaviour) when nothing else authenticates, else
//! an [`AuthChain`] in the order of `auth-chain`.

use std::sync::Arc;

use super::PasswordFileSource;
use super::{AuthChain, Authenticator, AuthnSource, FileAuthenticator, PasswordFile};
use crate::config::Config;

/// The broker's password and ACL files (`password-file`, `acl-file`), loaded.
pub fn load_files(
    config: &Config,
) -> Result<(Option<PasswordFile>, Option<super::Acl>), super::AuthFileError> {
    let passwords = config
        .password_file
        .as_deref()
        .map(PasswordFile::load)
        .transpose()?;
    let acl = config
        .acl_file
        .as_deref()
        .map(super::Acl::load)
        .transpose()?;
    Ok((passwords, acl))
}

/// The SCRAM credentials file (`scram-file`), loaded.
pub fn load_scram(config: &Config) -> Result<Option<super::ScramFile>, super::AuthFileError> {
    config
        .scram_file
        .as_deref()
        .map(super::ScramFile::load)
        .transpose()
}

/// The authenticator for `config`, its password file (loaded) and the
/// sources beside it (`[auth.jwt]`, `[auth.http]`, an embedder's own).
///
/// Without other sources and without `auth-chain`: the password file
/// alone. Otherwise the chain lists `auth-chain`'s sources in its order
/// (default: the password file, then the other sources in the order given);
/// sources whose names `auth-chain` cannot list (an embedder's) come last.
pub fn configured(
    config: &Config,
    passwords: Option<PasswordFile>,
    sources: &[Arc<dyn AuthnSource>],
) -> Arc<dyn Authenticator> {
    if sources.is_empty() && config.auth_chain.is_none() {
        return Arc::new(FileAuthenticator {
            allow_anonymous: config.allow_anonymous,
            passwords,
        });
    }
    let listable = |name: &str| crate::config::integrate::AUTH_SOURCES.contains(&name);
    let order: Vec<String> = match &config.auth_chain {
        Some(names) => names.clone(),
        None => {
            let mut names = Vec::new();
            if passwords.is_some() {
                names.push("password-file".to_string());
            }
            names.extend(
                sources
                    .iter()
                    .map(|s| s.name().to_string())
                    .filter(|n| listable(n)),
            );
            names
        }
    };
    let passwords = passwords.map(Arc::new);
    let mut chain: Vec<Arc<dyn AuthnSource>> = Vec::new();
    for name in &order {
        if name == "password-file" {
            if let Some(file) = &passwords {
                chain.push(Arc::new(PasswordFileSource(file.clone())));
            }
        } else if let Some(source) = sources.iter().find(|s| s.name() == name) {
            chain.push(source.clone());
        }
    }
    for source in sources {
        if !listable(source.name()) {
            chain.push(source.clone());
        } else if !order.iter().any(|n| n == source.name()) {
            tracing::warn!(
                source = source.name(),
                "configured but not in auth-chain: not asked"
            );
        }
    }
    Arc::new(AuthChain::new(chain, config.allow_anonymous))
}

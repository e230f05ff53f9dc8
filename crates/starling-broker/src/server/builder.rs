//! The embedding API: a broker built with custom parts.
//!
//! ```no_run
//! # async fn run() -> Result<(), starling_broker::StartError> {
//! use starling_broker::{Broker, Config};
//! let broker = Broker::builder(Config::default())
//!     // .authenticate(Arc::new(MyDirectory))  an AuthnSource, asked after auth-chain's
//!     // .authorize(Arc::new(MyPolicy))        an AuthzSource, asked before the ACL file
//!     // .observe(Arc::new(MyAuditLog))        an EventObserver, on a task of its own
//!     .bind()
//!     .await?;
//! broker.run().await;
//! # Ok(()) }
//! ```
//! `examples/embedded.rs` shows each part.

use std::sync::Arc;

use super::{Broker, StartError};
use crate::auth::{AuthnSource, AuthzSource};
use crate::config::Config;
use crate::events::{spawn_observer, EventObserver};
use crate::store::Store;

/// Builds a [`Broker`] with custom authentication and authorization sources,
/// event observers and store. [`Broker::bind`] is `Broker::builder(config).bind()`.
#[must_use]
pub struct BrokerBuilder {
    config: Config,
    sources: Vec<Arc<dyn AuthnSource>>,
    authorizers: Vec<Arc<dyn AuthzSource>>,
    observers: Vec<Arc<dyn EventObserver>>,
    store: Option<Box<dyn Store>>,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name()).collect();
        f.debug_struct("BrokerBuilder")
            .field("sources", &names)
            .field("authorizers", &self.authorizers.len())
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

impl BrokerBuilder {
    pub(super) fn new(config: Config) -> BrokerBuilder {
        BrokerBuilder {
            config,
            sources: Vec::new(),
            authorizers: Vec::new(),
            observers: Vec::new(),
            store: None,
        }
    }

    /// Adds an authentication source. One named `jwt` or `http` takes that
    /// place in `auth-chain`; others are asked after the chain's sources, in
    /// the order added.
    pub fn authenticate(mut self, source: Arc<dyn AuthnSource>) -> Self {
        self.sources.push(source);
        self
    }

    /// Adds an authorization source, asked (in the order added) before the
    /// ACL files.
    pub fn authorize(mut self, source: Arc<dyn AuthzSource>) -> Self {
        self.authorizers.push(source);
        self
    }

    /// Adds an event observer.
    pub fn observe(mut self, observer: Arc<dyn EventObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Keeps sessions in `store` instead of the embedded store.
    pub fn store(mut self, store: Box<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Loads the password and ACL files and binds every listener. The reload
    /// handle reloads the files and the sources (SIGHUP).
    pub async fn bind(self) -> Result<Broker, StartError> {
        let config = self.config;
        let (passwords, acl) = crate::auth::load_files(&config)?;
        let scram = crate::auth::load_scram(&config)?;
        let authenticator = crate::auth::configured(&config, passwords, &self.sources);
        let mut broker = Broker::bind_with_store(config, authenticator, acl, self.store).await?;
        broker.reload.files = true;
        broker.reload.sources = self.sources;
        let state = broker.state();
        state.set_scram(scram);
        for source in self.authorizers {
            state.add_authorizer(source);
        }
        for observer in self.observers {
            spawn_observer(&state.events, observer);
        }
        Ok(broker)
    }
}

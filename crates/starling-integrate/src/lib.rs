//! Starling's connections to other systems.
//!
//! - [`http::HttpAuth`]: `[auth.http]`, an authentication source that asks
//!   an HTTP backend, with per-client topic rules from its answer or from
//!   `acl-url`.
//! - [`jwt::JwtAuth`]: `[auth.jwt]`, a JSON Web Token in the password field,
//!   verified with a shared secret, a public key or a JSON Web Key Set, its
//!   `acl` claim becoming the client's topic rules and its `exp` closing the
//!   connection.
//!
//! - [`webhook`]: `[[webhook]]`, broker events posted to HTTP endpoints.
//! - [`bridge`]: `[[bridge]]`, store-and-forward links to other brokers.
//!
//! [`sources`] builds the authentication sources a configuration asks for,
//! to hand to [`starling_broker::Broker::builder`]; [`webhook::start`] starts
//! its webhooks on a bound broker.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bridge;
pub mod cache;
pub mod error;
pub mod http;
pub mod jwt;
pub mod webhook;

use std::sync::Arc;

use starling_broker::auth::AuthnSource;
use starling_broker::Config;

pub use error::IntegrateError;

/// The authentication sources `config` configures (`[auth.jwt]`,
/// `[auth.http]`), in that order. Must be called inside a tokio runtime
/// (a JWKS URL is refreshed on a task).
pub fn sources(config: &Config) -> Result<Vec<Arc<dyn AuthnSource>>, IntegrateError> {
    let mut out: Vec<Arc<dyn AuthnSource>> = Vec::new();
    if let Some(jwt) = &config.auth.jwt {
        out.push(Arc::new(jwt::JwtAuth::new(jwt)?));
    }
    if let Some(http) = &config.auth.http {
        out.push(Arc::new(http::HttpAuth::new(http)?));
    }
    Ok(out)
}

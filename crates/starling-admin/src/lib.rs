//! The broker's HTTP side, on one listener that is off unless asked for
//! (`http-listen`): Prometheus metrics (`/metrics`), health checks
//! (`/healthz`, `/readyz`), and the admin REST API under `/api/v1`, described
//! by an OpenAPI 3 document (`/api/v1/openapi.json`).
//!
//! It reads the broker through [`starling_broker::BrokerState`]'s views and
//! acts through its operator actions; it never holds a broker lock across an
//! `.await`. The counters it serves are the broker's own relaxed atomics, read
//! at scrape time: serving them costs the publish path nothing.
#![forbid(unsafe_code)]

mod access;
mod api;
mod dashboard;
mod error;
mod health;
mod process;
mod prom;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use starling_broker::{BrokerState, ReloadHandle, ShutdownHandle};

pub use access::{TokenError, Tokens};
pub use api::ApiDoc;

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `http-listen` is not an `http://` or `https://` URL with a host and port.
    #[error("http-listen {url:?}: {message}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The address could not be bound.
    #[error("http-listen {url:?}: cannot bind: {source}")]
    Bind {
        /// The URL as given.
        url: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS certificate or key of an `https://` listener.
    #[error("http-listen {url:?}: {message}")]
    Tls {
        /// The URL as given.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The token file could not be read.
    #[error(transparent)]
    Tokens(#[from] TokenError),
}

/// How the HTTP listener is set up.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` (port 0 picks a free port).
    pub listen: String,
    /// Bearer tokens for `/api/v1`, one per line; without it the API answers
    /// loopback clients only.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain for `https://`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `https://`.
    pub tls_key: Option<PathBuf>,
}

/// What every request handler reaches the broker through.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub state: Arc<BrokerState>,
    pub reload: ReloadHandle,
    pub shutdown: ShutdownHandle,
    pub tokens: Arc<Tokens>,
    pub registry: Arc<prometheus_client::registry::Registry>,
}

/// The client's address, as handlers see it (plain or TLS).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A bound HTTP listener, not serving yet.
pub struct AdminServer {
    router: Router,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    local_addr: SocketAddr,
    tokens: Arc<Tokens>,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("local_addr", &self.local_addr)
            .field("https", &self.tls.is_some())
            .finish()
    }
}

impl AdminServer {
    /// Binds the listener of `config` for the broker behind `state`.
    pub async fn bind(
        config: &AdminConfig,
        state: Arc<BrokerState>,
        reload: ReloadHandle,
        shutdown: ShutdownHandle,
    ) -> Result<AdminServer, AdminError> {
        let (https, addr) = parse_listen(&config.listen)?;
        let tls = if https {
            Some(tls::acceptor(config).map_err(|message| AdminError::Tls {
                url: config.listen.clone(),
                message,
            })?)
        } else {
            None
        };
        let tokens = Arc::new(Tokens::load(config.token_file.clone())?);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| AdminError::Bind {
                url: config.listen.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| AdminError::Bind {
            url: config.listen.clone(),
            source,
        })?;
        let registry = Arc::new(prom::registry(state.clone()));
        let ctx = Ctx {
            state,
            reload,
            shutdown: shutdown.clone(),
            tokens: tokens.clone(),
            registry,
        };
        tracing::info!(%local_addr, https, "HTTP listener bound (metrics, health, admin API)");
        Ok(AdminServer {
            router: router(ctx),
            listener,
            tls,
            local_addr,
            tokens,
            shutdown,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The API tokens, to reload (on SIGHUP).
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.clone()
    }

    /// Serves until the broker shuts down.
    pub async fn run(self) {
        let shutdown = self.shutdown.clone();
        let service = self
            .router
            .into_make_service_with_connect_info::<PeerAddr>();
        let result = match self.tls {
            None => {
                axum::serve(self.listener, service)
                    .with_graceful_shutdown(async move { shutdown.wait().await })
                    .await
            }
            Some(acceptor) => {
                let listener = tls::TlsListener::new(self.listener, acceptor);
                axum::serve(listener, service)
                    .with_graceful_shutdown(async move { shutdown.wait().await })
                    .await
            }
        };
        if let Err(err) = result {
            tracing::error!("HTTP listener failed: {err}");
        }
    }
}

/// The routes: public health and metrics, and the API behind its access check.
fn router(ctx: Ctx) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(prom::routes())
        .merge(dashboard::routes())
        .nest("/api/v1", api::routes(ctx.clone()))
        .with_state(ctx)
}

/// Checks an `http-listen` URL without binding it (`starling check-config`).
pub fn check_listen(url: &str) -> Result<(), AdminError> {
    parse_listen(url).map(|_| ())
}

/// `http://HOST:PORT` or `https://HOST:PORT`: whether TLS, and the address.
fn parse_listen(url: &str) -> Result<(bool, String), AdminError> {
    let bad = |message: &str| AdminError::BadUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(bad("must not have a path"));
    }
    let port_ok = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(bad(
            "must name a host and a port, e.g. http://127.0.0.1:8081",
        ));
    }
    Ok((https, rest.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_urls() {
        assert_eq!(
            parse_listen("http://127.0.0.1:0").unwrap(),
            (false, "127.0.0.1:0".into())
        );
        assert_eq!(
            parse_listen("https://[::1]:8443/").unwrap(),
            (true, "[::1]:8443".into())
        );
        for bad in [
            "127.0.0.1:80",
            "http://host",
            "http://:80",
            "ftp://a:1",
            "http://a:1/x",
            "http://a:99999",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}

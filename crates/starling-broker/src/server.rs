//! Listeners, the accept loops, the connection limit, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::auth::{Acl, AuthFileError, Authenticator, FileAuthenticator, PasswordFile};
use crate::broker::BrokerState;
use crate::config::Config;
use crate::metrics::Metrics;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener URL is malformed or uses an unsupported scheme.
    #[error("listener {url:?}: {message}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// A listener could not bind (port in use, no permission, ...).
    #[error("listener {url:?}: cannot bind {addr}: {source}")]
    Bind {
        /// The URL as given.
        url: String,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The password or ACL file is bad.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
}

/// A parsed listener URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUrl {
    /// The scheme (`mqtt`, `tcp`, ...).
    pub scheme: String,
    /// `host:port`.
    pub addr: String,
}

impl ListenerUrl {
    /// Parses `mqtt://HOST:PORT` (or `tcp://`).
    pub fn parse(url: &str) -> Result<ListenerUrl, StartError> {
        let bad = |message: &str| StartError::BadUrl {
            url: url.to_string(),
            message: message.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = parsed.scheme().to_string();
        match scheme.as_str() {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" | "ws" | "wss" | "quic" => {
                return Err(bad(&format!(
                    "the {scheme}:// transport is not available yet"
                )))
            }
            _ => {
                return Err(bad(
                    "unknown scheme (expected mqtt://, tcp://, mqtts://, ws://, wss:// or quic://)",
                ))
            }
        }
        let host = parsed.host_str().ok_or_else(|| bad("missing host"))?;
        let port = parsed.port().unwrap_or(1883);
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Ok(ListenerUrl {
            scheme,
            addr: format!("{host}:{port}"),
        })
    }
}

/// Tells a running broker to shut down.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// Opens in-memory connections to a broker (see [`Broker::local_connector`]).
#[derive(Debug, Clone)]
pub struct LocalConnector {
    state: Arc<BrokerState>,
    shutdown: watch::Receiver<bool>,
}

impl LocalConnector {
    /// Opens a connection; the returned stream is the client's end.
    pub fn connect(&self) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        tokio::spawn(crate::connection::serve(
            server, peer, state, shutdown, false,
        ));
        client
    }
}

/// A broker with its listeners bound, ready to run.
pub struct Broker {
    state: Arc<BrokerState>,
    listeners: Vec<(String, TcpListener)>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("listeners", &self.local_addrs())
            .finish()
    }
}

impl Broker {
    /// Loads the auth files and binds every listener of `config`.
    pub async fn bind(config: Config) -> Result<Broker, StartError> {
        let passwords = config
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        let acl = config.acl_file.as_deref().map(Acl::load).transpose()?;
        let authenticator: Arc<dyn Authenticator> = Arc::new(FileAuthenticator {
            allow_anonymous: config.allow_anonymous,
            passwords,
        });
        Self::bind_with(config, authenticator, acl).await
    }

    /// Like [`Broker::bind`], with a custom authenticator.
    pub async fn bind_with(
        config: Config,
        authenticator: Arc<dyn Authenticator>,
        acl: Option<Acl>,
    ) -> Result<Broker, StartError> {
        let mut listeners = Vec::new();
        for url in &config.listen {
            let parsed = ListenerUrl::parse(url)?;
            let listener =
                TcpListener::bind(&parsed.addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        url: url.clone(),
                        addr: parsed.addr.clone(),
                        source,
                    })?;
            listeners.push((url.clone(), listener));
        }
        let (tx, _rx) = watch::channel(false);
        Ok(Broker {
            state: Arc::new(BrokerState::new(config, authenticator, acl)),
            listeners,
            shutdown: Arc::new(tx),
        })
    }

    /// The bound address of each listener, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect()
    }

    /// The shared state (for metrics and tests).
    pub fn state(&self) -> Arc<BrokerState> {
        self.state.clone()
    }

    /// A connector that opens in-memory connections to this broker, for tests
    /// and embedding. They behave like TCP connections from `0.0.0.0:0`.
    pub fn local_connector(&self) -> LocalConnector {
        LocalConnector {
            state: self.state.clone(),
            shutdown: self.shutdown.subscribe(),
        }
    }

    /// A handle that stops the broker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Accepts and serves connections until shutdown, then waits for every
    /// connection to send its final DISCONNECT and close.
    pub async fn run(self) {
        let Broker {
            state,
            listeners,
            shutdown,
        } = self;
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let limit = match state.config.max_connections {
            0 => None,
            n => Some(Arc::new(Semaphore::new(n))),
        };
        for (url, listener) in listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%url, %addr, "listening");
                if !addr.ip().is_loopback() && state.config.allow_anonymous {
                    tracing::warn!(%url, "listener is reachable from the network and allows anonymous clients");
                }
            }
            tokio::spawn(accept_loop(
                listener,
                state.clone(),
                shutdown.subscribe(),
                limit.clone(),
                done_tx.clone(),
            ));
        }
        tokio::spawn(crate::sys::run(state.clone(), shutdown.subscribe()));
        let mut rx = shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
        tracing::info!("shutting down");
        drop(done_tx);
        // Every connection task holds a sender; when the last is dropped, all are done.
        let _ = done_rx.recv().await;
        tracing::info!("shut down");
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
    limit: Option<Arc<Semaphore>>,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(err) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(?err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        Metrics::add(&state.metrics.connections_total, 1);
        let permit = limit
            .as_ref()
            .and_then(|sem| sem.clone().try_acquire_owned().ok());
        let over_limit = limit.is_some() && permit.is_none();
        let state = state.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            crate::connection::serve(stream, peer, state, shutdown, over_limit).await;
            drop(permit);
            drop(done);
        });
    }
}

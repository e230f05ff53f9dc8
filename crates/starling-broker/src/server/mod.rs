//! Listeners, the accept loops, the connection limits, certificate and auth-file
//! reload, and graceful shutdown.
//!
//! Every listener turns what it accepts into a byte stream (see
//! [`crate::transport`]) and hands it to [`crate::connection::serve`]: plain TCP
//! as is; TLS, WebSocket and WSS after their handshakes, which run in the
//! connection's own task under `handshake-timeout`; QUIC one bidirectional
//! stream per MQTT connection. A TCP-based listener with `proxy-protocol` first
//! reads the PROXY header ([`crate::transport::proxy`]), under the same timeout,
//! and serves the connection as coming from the client address it names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_codec::ByteString;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::auth::{Acl, AuthFileError, Authenticator, ListenerFile, PasswordFile};
use crate::broker::BrokerState;
use crate::config::{Config, ListenerConfig};
use crate::metrics::ListenerStats;
use crate::transport::tls::{Reloadable, TlsSettings};
use crate::transport::{self, ConnContext};

mod accept;
mod builder;
mod reload;
mod url;

use accept::{accept_loop, quic_accept_loop, Shared};
pub use builder::BrokerBuilder;
use reload::{ListenerFiles, TlsListener};
pub use reload::{ReloadError, ReloadHandle};
pub use url::{ListenerUrl, Transport};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener URL is malformed, uses an unsupported scheme, or has
    /// settings that do not fit its transport.
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
    /// A TLS listener's certificate, key or CA file is missing or bad.
    #[error("listener {url:?}: {message}")]
    Tls {
        /// The URL as given.
        url: String,
        /// What is wrong (naming the file, never its contents).
        message: String,
    },
    /// The password or ACL file is bad.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// The persistent store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Tells a running broker to shut down.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }

    /// Whether a shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once a shutdown has started.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|down| *down).await;
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
        self.open(ConnContext::default())
    }

    /// Opens a connection for a part of the broker itself (a bridge): it
    /// is let in as user `name` whatever the authentication settings, and
    /// may publish and subscribe to every topic.
    pub fn connect_internal(&self, name: &str) -> tokio::io::DuplexStream {
        self.open(ConnContext {
            identity: Some(name.to_string()),
            internal: true,
            ..ConnContext::default()
        })
    }

    fn open(&self, ctx: ConnContext) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        tokio::spawn(transport::with_context(
            ctx,
            crate::connection::serve(server, peer, state, shutdown, false),
        ));
        client
    }
}

/// What a listener's connections share.
struct ListenerInfo {
    /// Index in [`BrokerState::listeners`].
    index: u16,
    /// Most connections accepted per second (0: no limit); see `rate.rs`.
    connection_rate: u32,
    url: String,
    transport: Transport,
    ws_path: String,
    tls: Option<Arc<Reloadable>>,
    use_identity: bool,
    allow_anonymous: Option<bool>,
    limit: Option<Arc<Semaphore>>,
    /// Connections start with a PROXY protocol header.
    proxy_protocol: bool,
    /// The listener's own password and ACL files.
    files: ListenerFiles,
    /// The listener's mountpoint.
    mountpoint: Option<ByteString>,
}

enum Socket {
    Tcp(TcpListener),
    Quic(quinn::Endpoint),
}

struct Listener {
    info: Arc<ListenerInfo>,
    socket: Socket,
}

impl Listener {
    fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Quic(e) => e.local_addr().ok(),
        }
    }
}

/// A broker with its listeners bound, ready to run.
pub struct Broker {
    state: Arc<BrokerState>,
    listeners: Vec<Listener>,
    shutdown: Arc<watch::Sender<bool>>,
    reload: ReloadHandle,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("listeners", &self.local_addrs())
            .finish()
    }
}

/// The listeners of `config`: `listen` URLs with the top-level settings, then
/// the `[[listener]]` tables.
fn listener_configs(config: &Config) -> Vec<(ListenerConfig, bool)> {
    let plain = config.listen.iter().map(|url| {
        let lc = ListenerConfig {
            url: url.clone(),
            ..ListenerConfig::default()
        };
        (lc, false)
    });
    plain
        .chain(config.listener.iter().map(|lc| (lc.clone(), true)))
        .collect()
}

async fn bind_listener(
    config: &Config,
    lc: &ListenerConfig,
    table: bool,
    index: u16,
) -> Result<Listener, StartError> {
    let url = &lc.url;
    let parsed = ListenerUrl::parse(url)?;
    let bad = |message: &str| StartError::BadUrl {
        url: url.clone(),
        message: message.to_string(),
    };
    let transport = parsed.transport;
    let tls_keys_given = lc.tls_cert.is_some()
        || lc.tls_key.is_some()
        || lc.tls_ca.is_some()
        || lc.require_client_cert.is_some()
        || lc.use_identity_as_username.is_some();
    if table && tls_keys_given && !transport.is_tls() {
        return Err(bad(
            "TLS settings need a TLS listener (mqtts://, wss:// or quic://)",
        ));
    }
    let files = ListenerFiles {
        passwords: lc
            .password_file
            .as_deref()
            .map(|p| ListenerFile::open(p, PasswordFile::load))
            .transpose()?
            .map(Arc::new),
        acl: lc
            .acl_file
            .as_deref()
            .map(|p| ListenerFile::open(p, Acl::load))
            .transpose()?
            .map(Arc::new),
    };
    let mountpoint = lc.mountpoint.as_deref().filter(|m| !m.is_empty());
    if let Some(m) = mountpoint {
        if m.contains(['+', '#', '\0']) || m.starts_with('$') {
            return Err(bad(
                "a mountpoint has no wildcards (+, #) and does not start with $",
            ));
        }
    }
    let mountpoint = mountpoint.map(ByteString::from);
    let proxy_protocol = lc.proxy_protocol || parsed.proxy_protocol;
    if proxy_protocol && transport == Transport::Quic {
        return Err(bad("the PROXY protocol needs a TCP-based listener"));
    }
    let is_ws = matches!(transport, Transport::Ws | Transport::Wss);
    if lc.path.is_some() && !is_ws {
        return Err(bad("only ws:// and wss:// listeners have a path"));
    }
    let mut ws_path = lc
        .path
        .clone()
        .or(parsed.path.clone())
        .unwrap_or_else(|| transport::ws::DEFAULT_PATH.to_string());
    if !ws_path.starts_with('/') {
        ws_path.insert(0, '/');
    }
    let use_identity = lc
        .use_identity_as_username
        .unwrap_or(config.use_identity_as_username);
    let tls = if transport.is_tls() {
        let (Some(cert), Some(key)) = (
            lc.tls_cert.clone().or(config.tls_cert.clone()),
            lc.tls_key.clone().or(config.tls_key.clone()),
        ) else {
            return Err(StartError::Tls {
                url: url.clone(),
                message: "a TLS listener needs tls-cert and tls-key".to_string(),
            });
        };
        let ca = lc.tls_ca.clone().or(config.tls_ca.clone());
        if use_identity && ca.is_none() {
            return Err(StartError::Tls {
                url: url.clone(),
                message: "use-identity-as-username needs a CA file (tls-ca)".to_string(),
            });
        }
        let settings = TlsSettings {
            cert,
            key,
            ca,
            require_client_cert: use_identity
                || lc.require_client_cert.unwrap_or(config.require_client_cert),
            quic: transport == Transport::Quic,
        };
        let loaded = Reloadable::load(settings).map_err(|message| StartError::Tls {
            url: url.clone(),
            message,
        })?;
        Some(Arc::new(loaded))
    } else {
        None
    };
    let bind_err = |source| StartError::Bind {
        url: url.clone(),
        addr: parsed.addr.clone(),
        source,
    };
    let socket = match (transport, &tls) {
        (Transport::Quic, Some(tls)) => {
            let server = transport::quic::server_config(tls.current()).map_err(|message| {
                StartError::Tls {
                    url: url.clone(),
                    message,
                }
            })?;
            let addr = tokio::net::lookup_host(&parsed.addr)
                .await
                .map_err(bind_err)?
                .next()
                .ok_or_else(|| bind_err(std::io::ErrorKind::NotFound.into()))?;
            Socket::Quic(quinn::Endpoint::server(server, addr).map_err(bind_err)?)
        }
        _ => Socket::Tcp(TcpListener::bind(&parsed.addr).await.map_err(bind_err)?),
    };
    Ok(Listener {
        info: Arc::new(ListenerInfo {
            index,
            connection_rate: lc.max_connection_rate.unwrap_or(config.max_connection_rate),
            url: url.clone(),
            transport,
            ws_path,
            tls,
            use_identity: use_identity && transport.is_tls(),
            allow_anonymous: lc.allow_anonymous,
            limit: (lc.max_connections > 0).then(|| Arc::new(Semaphore::new(lc.max_connections))),
            proxy_protocol,
            files,
            mountpoint,
        }),
        socket,
    })
}

impl Broker {
    /// Loads the auth files and binds every listener of `config`.
    pub async fn bind(config: Config) -> Result<Broker, StartError> {
        Self::builder(config).bind().await
    }

    /// A broker with custom authentication, authorization, observers or
    /// store: the embedding API (see [`BrokerBuilder`]).
    pub fn builder(config: Config) -> BrokerBuilder {
        BrokerBuilder::new(config)
    }

    /// Like [`Broker::bind`], with a custom authenticator. Its reload handle
    /// reloads certificates only.
    pub async fn bind_with(
        config: Config,
        authenticator: Arc<dyn Authenticator>,
        acl: Option<Acl>,
    ) -> Result<Broker, StartError> {
        Self::bind_with_store(config, authenticator, acl, None).await
    }

    /// Like [`Broker::bind_with`], keeping sessions in `store` instead of the
    /// embedded store in the data directory (unless durability is `none`).
    pub async fn bind_with_store(
        config: Config,
        authenticator: Arc<dyn Authenticator>,
        acl: Option<Acl>,
        store: Option<Box<dyn crate::store::Store>>,
    ) -> Result<Broker, StartError> {
        for weaker in config.weaker_than_defaults() {
            tracing::warn!("below the defaults' guarantees: {weaker}");
        }
        let mut listeners = Vec::new();
        for (i, (lc, table)) in listener_configs(&config).into_iter().enumerate() {
            let index = u16::try_from(i).unwrap_or(u16::MAX - 1);
            listeners.push(bind_listener(&config, &lc, table, index).await?);
        }
        let (tx, _rx) = watch::channel(false);
        let state = BrokerState::open_with_store(config, authenticator, acl, store)?;
        state.set_listeners(
            listeners
                .iter()
                .map(|l| ListenerStats::new(&l.info.url, l.info.transport.label(), l.local_addr()))
                .collect(),
        );
        let tls = listeners
            .iter()
            .filter_map(|l| {
                Some(TlsListener {
                    url: l.info.url.clone(),
                    config: l.info.tls.clone()?,
                    quic: match &l.socket {
                        Socket::Quic(e) => Some(e.clone()),
                        Socket::Tcp(_) => None,
                    },
                })
            })
            .collect();
        Ok(Broker {
            reload: ReloadHandle {
                state: state.clone(),
                tls,
                listener_files: listeners
                    .iter()
                    .map(|l| l.info.files.clone())
                    .filter(|f| f.passwords.is_some() || f.acl.is_some())
                    .collect(),
                files: false,
                sources: Vec::new(),
            },
            state,
            listeners,
            shutdown: Arc::new(tx),
        })
    }

    /// The bound address of each listener, in configuration order (`listen`
    /// first, then `[[listener]]` tables).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(Listener::local_addr)
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

    /// A handle that reloads certificates and auth files (wire SIGHUP to it).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Accepts and serves connections until shutdown, then waits for every
    /// connection to send its final DISCONNECT and close.
    pub async fn run(self) {
        let Broker {
            state,
            listeners,
            shutdown,
            reload: _,
        } = self;
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let global = match state.config.max_connections {
            0 => None,
            n => Some(Arc::new(Semaphore::new(n))),
        };
        let mut shared = Shared {
            state: state.clone(),
            shutdown: shutdown.subscribe(),
            _done: done_tx,
            global,
            reactor: None,
        };
        // Before the listeners: wills and expiries restored from the store
        // (and any scheduled from now on) run from the start.
        state
            .timers
            .start(shutdown.subscribe(), shared._done.clone());
        // Before the listeners: every connection can park from the start.
        if state.config.hibernate_after_ms > 0 {
            let broker = state.clone();
            let resume: crate::connection::hibernate::Resume =
                Arc::new(move |reactor, parked, shutdown, done| {
                    tokio::spawn(crate::connection::resume(
                        broker.clone(),
                        reactor,
                        parked,
                        shutdown,
                        done,
                    ));
                });
            match crate::connection::hibernate::Reactor::start(
                resume,
                state.parked.clone(),
                shutdown.subscribe(),
                shared._done.clone(),
            ) {
                Ok(reactor) => shared.reactor = Some(reactor),
                Err(err) => tracing::warn!(?err, "idle connections will not park"),
            }
        }
        let mut endpoints = Vec::new();
        for Listener { info, socket } in listeners {
            let addr = match &socket {
                Socket::Tcp(l) => l.local_addr().ok(),
                Socket::Quic(e) => e.local_addr().ok(),
            };
            if let Some(addr) = addr {
                let url = &info.url;
                tracing::info!(%url, %addr, transport = ?info.transport, "listening");
                let anonymous = info.allow_anonymous.unwrap_or(state.config.allow_anonymous)
                    && !info.use_identity;
                if !addr.ip().is_loopback() && anonymous {
                    tracing::warn!(%url, "listener is reachable from the network and allows anonymous clients");
                }
            }
            match socket {
                Socket::Tcp(listener) => {
                    tokio::spawn(accept_loop(listener, info, shared.clone()));
                }
                Socket::Quic(endpoint) => {
                    endpoints.push(endpoint.clone());
                    tokio::spawn(quic_accept_loop(endpoint, info, shared.clone()));
                }
            }
        }
        tokio::spawn(crate::sys::run(state.clone(), shutdown.subscribe()));
        let mut rx = shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
        tracing::info!("shutting down");
        drop(shared);
        // Every connection task holds a sender; when the last is dropped, all are done.
        let _ = done_rx.recv().await;
        for endpoint in endpoints {
            endpoint.close(0u32.into(), b"shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        tracing::info!("shut down");
    }
}

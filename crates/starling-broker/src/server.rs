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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::ByteString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::auth::{
    Acl, AuthFileError, Authenticator, FileAuthenticator, ListenerFile, PasswordFile,
};
use crate::broker::BrokerState;
use crate::config::{Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::transport::tls::{Reloadable, TlsSettings};
use crate::transport::ws::Rewind;
use crate::transport::{self, AuthLimiter, ConnContext, Flushing};

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
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://`, `tcp://`: plain TCP.
    Tcp,
    /// `mqtts://`, `ssl://`, `tls://`: TLS over TCP.
    Tls,
    /// `ws://`: WebSocket.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
    /// `quic://`: QUIC.
    Quic,
}

impl Transport {
    /// Whether the transport runs TLS (and so needs a certificate and key).
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::Quic)
    }

    /// The port used when a URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 8080,
            Transport::Wss => 8443,
            Transport::Quic => 14567,
        }
    }
}

/// A parsed listener URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUrl {
    /// The scheme (`mqtt`, `tcp`, `mqtts`, `ws`, ...).
    pub scheme: String,
    /// `host:port`.
    pub addr: String,
    /// The transport the scheme names.
    pub transport: Transport,
    /// The URL's path, when it has one other than `/` (WebSocket endpoints).
    pub path: Option<String>,
    /// `?proxy-protocol=true`: connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl ListenerUrl {
    /// Parses `mqtt://HOST:PORT` (or `tcp://`), `mqtts://HOST:PORT` (or `ssl://`,
    /// `tls://`), `ws://HOST:PORT/PATH`, `wss://HOST:PORT/PATH` or `quic://HOST:PORT`.
    /// The one query parameter is `proxy-protocol=true|false` (TCP-based listeners).
    pub fn parse(url: &str) -> Result<ListenerUrl, StartError> {
        let bad = |message: &str| StartError::BadUrl {
            url: url.to_string(),
            message: message.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = parsed.scheme().to_string();
        let transport =
            match scheme.as_str() {
                "mqtt" | "tcp" => Transport::Tcp,
                "mqtts" | "ssl" | "tls" => Transport::Tls,
                "ws" => Transport::Ws,
                "wss" => Transport::Wss,
                "quic" => Transport::Quic,
                _ => return Err(bad(
                    "unknown scheme (expected mqtt://, tcp://, mqtts://, ws://, wss:// or quic://)",
                )),
            };
        let host = parsed.host_str().ok_or_else(|| bad("missing host"))?;
        let port = parsed.port().unwrap_or(transport.default_port());
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let path = match parsed.path() {
            "" | "/" => None,
            p => Some(p.to_string()),
        };
        if path.is_some() && !matches!(transport, Transport::Ws | Transport::Wss) {
            return Err(bad("only ws:// and wss:// listeners have a path"));
        }
        let mut proxy_protocol = false;
        for (key, value) in parsed.query_pairs() {
            match (&*key, &*value) {
                ("proxy-protocol", "true" | "1" | "") => proxy_protocol = true,
                ("proxy-protocol", "false" | "0") => proxy_protocol = false,
                ("proxy-protocol", _) => return Err(bad("proxy-protocol is true or false")),
                _ => return Err(bad(&format!("unknown URL parameter {key:?}"))),
            }
        }
        if proxy_protocol && transport == Transport::Quic {
            return Err(bad("the PROXY protocol needs a TCP-based listener"));
        }
        Ok(ListenerUrl {
            scheme,
            addr: format!("{host}:{port}"),
            transport,
            path,
            proxy_protocol,
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

/// Re-reads certificates and auth files of a running broker (what SIGHUP does).
///
/// [`ReloadHandle::reload`] loads everything first and installs it only if all
/// of it loaded, so a bad file changes nothing. Connections stay up: TLS
/// sessions already established keep their keys, and connected clients are
/// checked against the new ACL from their next PUBLISH or SUBSCRIBE on.
#[derive(Clone)]
pub struct ReloadHandle {
    state: Arc<BrokerState>,
    tls: Vec<TlsListener>,
    /// The listeners' own password and ACL files.
    listener_files: Vec<ListenerFiles>,
    /// Whether the authenticator and ACL come from the configured files (bound
    /// with [`Broker::bind`], not [`Broker::bind_with`]).
    files: bool,
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
struct ListenerFiles {
    passwords: Option<Arc<ListenerFile<PasswordFile>>>,
    acl: Option<Arc<ListenerFile<Acl>>>,
}

/// A TLS listener's reloadable configuration (and its QUIC endpoint, if QUIC).
#[derive(Clone)]
struct TlsListener {
    url: String,
    config: Arc<Reloadable>,
    quic: Option<quinn::Endpoint>,
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
            let config = &self.state.config;
            let passwords = config
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?;
            let acl = config.acl_file.as_deref().map(Acl::load).transpose()?;
            Some((passwords, acl))
        } else {
            None
        };
        let mut listener_files = Vec::new();
        for f in &self.listener_files {
            let passwords = f.passwords.as_ref().map(|p| p.read()).transpose()?;
            let acl = f.acl.as_ref().map(|a| a.read()).transpose()?;
            listener_files.push((f, passwords, acl));
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
        if let Some((passwords, acl)) = files {
            *self.state.authenticator.write() = Arc::new(FileAuthenticator {
                allow_anonymous: self.state.config.allow_anonymous,
                passwords,
            });
            *self.state.acl.write() = acl.map(Arc::new);
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

/// Opens in-memory connections to a broker (see [`Broker::local_connector`]).
#[derive(Debug, Clone)]
pub struct LocalConnector {
    state: Arc<BrokerState>,
    shutdown: watch::Receiver<bool>,
    limiter: Arc<AuthLimiter>,
}

impl LocalConnector {
    /// Opens a connection; the returned stream is the client's end.
    pub fn connect(&self) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        let ctx = ConnContext {
            limiter: Some(self.limiter.clone()),
            ..ConnContext::default()
        };
        tokio::spawn(transport::with_context(
            ctx,
            crate::connection::serve(server, peer, state, shutdown, false),
        ));
        client
    }
}

/// What a listener's connections share.
struct ListenerInfo {
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
    limiter: Arc<AuthLimiter>,
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
        let mut broker = Self::bind_with(config, authenticator, acl).await?;
        broker.reload.files = true;
        Ok(broker)
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
        let mut listeners = Vec::new();
        for (lc, table) in listener_configs(&config) {
            listeners.push(bind_listener(&config, &lc, table).await?);
        }
        let (tx, _rx) = watch::channel(false);
        let limiter = Arc::new(AuthLimiter::new(config.auth_failure_limit));
        let state = BrokerState::open_with_store(config, authenticator, acl, store)?;
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
            },
            state,
            listeners,
            shutdown: Arc::new(tx),
            limiter,
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
            limiter: self.limiter.clone(),
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
            limiter,
            reload: _,
        } = self;
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let global = match state.config.max_connections {
            0 => None,
            n => Some(Arc::new(Semaphore::new(n))),
        };
        let shared = Shared {
            state: state.clone(),
            shutdown: shutdown.subscribe(),
            _done: done_tx,
            global,
            limiter,
        };
        // Before the listeners: every connection can park from the start.
        if state.config.hibernate_after_ms > 0 && state.reactor.get().is_none() {
            match crate::hibernate::Reactor::start(
                &state,
                shutdown.subscribe(),
                shared._done.clone(),
            ) {
                Ok(reactor) => {
                    let _ = state.reactor.set(reactor);
                }
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

/// What every connection task of a running broker holds.
#[derive(Clone)]
struct Shared {
    state: Arc<BrokerState>,
    shutdown: watch::Receiver<bool>,
    /// Dropped by each connection task when it ends; shutdown waits for all.
    _done: mpsc::Sender<()>,
    global: Option<Arc<Semaphore>>,
    limiter: Arc<AuthLimiter>,
}

use crate::connection::Slots as Permits;

impl Shared {
    /// Takes a slot in the broker's and the listener's limits. The flag is true
    /// when either is full: the connection is then refused with its CONNACK.
    fn admit(&self, info: &ListenerInfo) -> (Permits, bool) {
        let take = |sem: &Option<Arc<Semaphore>>| match sem {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => (Some(p), false),
                Err(_) => (None, true),
            },
            None => (None, false),
        };
        let (global, over_global) = take(&self.global);
        let (listener, over_listener) = take(&info.limit);
        let permits = Permits {
            _global: global,
            _listener: listener,
        };
        (permits, over_global || over_listener)
    }

    fn context(&self, info: &ListenerInfo, identity: Option<String>) -> ConnContext {
        ConnContext {
            identity: identity.filter(|_| info.use_identity),
            allow_anonymous: info.allow_anonymous,
            limiter: Some(self.limiter.clone()),
            passwords: info.files.passwords.clone(),
            acl: info.files.acl.clone(),
            mountpoint: info.mountpoint.clone(),
        }
    }

    /// Serves one MQTT connection over `stream`.
    async fn serve<S>(&self, ctx: ConnContext, stream: S, peer: SocketAddr, over_limit: bool)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let serve = crate::connection::serve(
            stream,
            peer,
            self.state.clone(),
            self.shutdown.clone(),
            over_limit,
        );
        // Boxed, like the handshakes: the task of a plain TCP connection must
        // not be as large as the largest transport's state (rustls,
        // tungstenite); idle connections are meant to be cheap.
        transport::with_context(ctx, Box::pin(serve)).await;
    }

    /// Runs a transport handshake under the handshake timeout; `None` if it
    /// failed, timed out, or the broker is shutting down.
    async fn handshake<T, E, F>(&self, info: &ListenerInfo, peer: SocketAddr, fut: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let fut = Box::pin(fut);
        let limit = Duration::from_secs(self.state.config.handshake_timeout);
        let mut shutdown = self.shutdown.clone();
        let url = &info.url;
        tokio::select! {
            r = tokio::time::timeout(limit, fut) => match r {
                Ok(Ok(v)) => Some(v),
                Ok(Err(err)) => {
                    tracing::info!(%peer, %url, error = %err, "handshake failed");
                    None
                }
                Err(_) => {
                    tracing::info!(%peer, %url, "no handshake within {limit:?}; closing");
                    None
                }
            },
            _ = shutdown.changed() => None,
        }
    }

    /// Handles one accepted TCP connection of a TCP, TLS, WS or WSS listener.
    /// Serves a plain TCP connection (no TLS, no PROXY header).
    async fn plain_connection(&self, info: &ListenerInfo, stream: TcpStream, peer: SocketAddr) {
        let (permits, over) = self.admit(info);
        let ctx = self.context(info, None);
        // The connection keeps its slots and the shutdown barrier while parked.
        let keep = crate::connection::Keep {
            done: self._done.clone(),
            slots: (permits._global.is_some() || permits._listener.is_some())
                .then(|| Box::new(permits)),
        };
        let serve = crate::connection::serve_tcp(
            stream,
            peer,
            self.state.clone(),
            self.shutdown.clone(),
            over,
            keep,
        );
        transport::with_context(ctx, Box::pin(serve)).await;
    }

    async fn tcp_connection(&self, info: &ListenerInfo, stream: TcpStream, mut peer: SocketAddr) {
        // With the PROXY protocol, the header comes first and names the client.
        let stream = if info.proxy_protocol {
            let Some((stream, client)) = self
                .handshake(info, peer, transport::proxy::accept(stream))
                .await
            else {
                return;
            };
            if let Some(client) = client {
                tracing::debug!(%client, proxy = %peer, url = %info.url, "PROXY header");
                peer = client;
            }
            stream
        } else {
            Rewind::new(Bytes::new(), stream)
        };
        let (permits, over) = self.admit(info);
        let max_message = (self.state.config.max_packet_size as usize)
            .saturating_mul(2)
            .max(64 * 1024);
        let tls_config = info.tls.as_ref().map(|t| t.current());
        match (info.transport, tls_config) {
            (Transport::Tls, Some(config)) => {
                let hs = transport::tls::accept(config, stream);
                let Some((tls, identity)) = self.handshake(info, peer, hs).await else {
                    return;
                };
                if !self.identity_ok(info, &identity, peer) {
                    return;
                }
                let ctx = self.context(info, identity);
                self.serve(ctx, Flushing::new(tls), peer, over).await;
            }
            (Transport::Ws, _) => {
                let hs = transport::ws::accept(stream, &info.ws_path, max_message);
                let Some(ws) = self.handshake(info, peer, hs).await else {
                    return;
                };
                let ctx = self.context(info, None);
                self.serve(ctx, Flushing::new(ws), peer, over).await;
            }
            (Transport::Wss, Some(config)) => {
                let hs = async {
                    let (tls, identity) = transport::tls::accept(config, stream)
                        .await
                        .map_err(|e| e.to_string())?;
                    let ws = transport::ws::accept(tls, &info.ws_path, max_message)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((ws, identity))
                };
                let Some((ws, identity)) = self.handshake(info, peer, hs).await else {
                    return;
                };
                if !self.identity_ok(info, &identity, peer) {
                    return;
                }
                let ctx = self.context(info, identity);
                self.serve(ctx, Flushing::new(ws), peer, over).await;
            }
            _ => {
                let ctx = self.context(info, None);
                self.serve(ctx, stream, peer, over).await;
            }
        }
        drop(permits);
    }

    /// With `use-identity-as-username`, a certificate without a usable name is refused.
    fn identity_ok(
        &self,
        info: &ListenerInfo,
        identity: &Option<String>,
        peer: SocketAddr,
    ) -> bool {
        if info.use_identity && identity.is_none() {
            tracing::info!(%peer, url = %info.url, "client certificate has no CN or SAN to use as the user name; closing");
            return false;
        }
        true
    }
}

async fn accept_loop(listener: TcpListener, info: Arc<ListenerInfo>, shared: Shared) {
    let mut shutdown = shared.shutdown.clone();
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
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        Metrics::add(&shared.state.metrics.connections_total, 1);
        let shared = shared.clone();
        let info = info.clone();
        tokio::spawn(async move {
            // The common case, plain TCP, gets a small task of its own: the
            // other transports' state is boxed behind `tcp_connection`.
            if info.transport == Transport::Tcp && !info.proxy_protocol {
                shared.plain_connection(&info, stream, peer).await;
            } else {
                Box::pin(shared.tcp_connection(&info, stream, peer)).await;
            }
        });
    }
}

async fn quic_accept_loop(endpoint: quinn::Endpoint, info: Arc<ListenerInfo>, shared: Shared) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let info = info.clone();
        tokio::spawn(async move {
            quic_connection(incoming, &info, shared).await;
        });
    }
}

/// Serves one QUIC connection: each bidirectional stream the client opens is
/// an MQTT connection. The QUIC connection is closed when its last MQTT
/// connection ends.
async fn quic_connection(incoming: quinn::Incoming, info: &Arc<ListenerInfo>, shared: Shared) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(err) => {
            tracing::info!(%peer, url = %info.url, error = %err, "QUIC connection refused");
            return;
        }
    };
    let Some(conn) = shared.handshake(info, peer, connecting).await else {
        return;
    };
    let identity = transport::quic::identity(&conn);
    if !shared.identity_ok(info, &identity, peer) {
        conn.close(0u32.into(), b"no identity");
        return;
    }
    let active = Arc::new(AtomicUsize::new(0));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (send, recv) = tokio::select! {
            r = conn.accept_bi() => match r {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        Metrics::add(&shared.state.metrics.connections_total, 1);
        active.fetch_add(1, Ordering::SeqCst);
        let (permits, over) = shared.admit(info);
        let ctx = shared.context(info, identity.clone());
        let shared = shared.clone();
        let active = active.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let io = starling_io::quic::QuicIo::new(conn.clone(), send, recv);
            shared.serve(ctx, io, peer, over).await;
            drop(permits);
            if active.fetch_sub(1, Ordering::SeqCst) == 1 {
                conn.close(0u32.into(), b"");
            }
        });
    }
}

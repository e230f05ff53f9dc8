//! The accept loops (TCP-based and QUIC) and what every connection task of a
//! running broker shares: admission against the connection limits, the
//! handshakes of each transport, and the hand-off to [`crate::connection`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::broker::BrokerState;
use crate::metrics::Metrics;
use crate::transport::ws::Rewind;
use crate::transport::{self, ConnContext, Flushing};

use super::{ListenerInfo, Transport};
use crate::rate::TokenBucket;

/// What every connection task of a running broker holds.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) state: Arc<BrokerState>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// Dropped by each connection task when it ends; shutdown waits for all.
    pub(super) _done: mpsc::Sender<()>,
    pub(super) global: Option<Arc<Semaphore>>,
    /// Where idle plain-TCP connections park (unless `hibernate-after-ms` is 0).
    pub(super) reactor: Option<Arc<crate::connection::hibernate::Reactor>>,
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
            listener: info.index,
            identity: identity.filter(|_| info.use_identity),
            allow_anonymous: info.allow_anonymous,
            passwords: info.files.passwords.clone(),
            acl: info.files.acl.clone(),
            mountpoint: info.mountpoint.clone(),
            internal: false,
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
            reactor: self.reactor.clone(),
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

pub(super) async fn accept_loop(listener: TcpListener, info: Arc<ListenerInfo>, shared: Shared) {
    let mut shutdown = shared.shutdown.clone();
    let mut rate = (info.connection_rate > 0)
        .then(|| TokenBucket::new(u64::from(info.connection_rate), tokio::time::Instant::now()));
    loop {
        if let Some(rate) = rate.as_mut() {
            if !throttle(rate, &info, &shared, &mut shutdown).await {
                return;
            }
        }
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

/// Waits for the listener's next accept token; `false` when the broker
/// shuts down meanwhile.
async fn throttle(
    rate: &mut TokenBucket,
    info: &ListenerInfo,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let wait = rate.take(tokio::time::Instant::now());
    if wait.is_zero() {
        return true;
    }
    if let Some(l) = shared.state.listener(info.index) {
        Metrics::add(&l.throttled, 1);
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.changed() => false,
    }
}

pub(super) async fn quic_accept_loop(
    endpoint: quinn::Endpoint,
    info: Arc<ListenerInfo>,
    shared: Shared,
) {
    let mut shutdown = shared.shutdown.clone();
    let mut rate = (info.connection_rate > 0)
        .then(|| TokenBucket::new(u64::from(info.connection_rate), tokio::time::Instant::now()));
    loop {
        if let Some(rate) = rate.as_mut() {
            if !throttle(rate, &info, &shared, &mut shutdown).await {
                return;
            }
        }
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

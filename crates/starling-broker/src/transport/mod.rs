//! Transports: what turns an accepted socket into the byte stream that
//! [`crate::connection::serve`] reads MQTT from.
//!
//! - [`tls`]: rustls (TLS 1.2 and 1.3), optional and mandatory client
//!   certificates, the certificate identity, and reloadable server configurations.
//! - [`ws`]: MQTT over WebSocket (`ws://` and, over [`tls`], `wss://`).
//! - [`quic`]: MQTT over QUIC through quinn, one bidirectional stream per MQTT
//!   connection.
//! - [`proxy`]: the PROXY protocol header (v1 and v2) that a load balancer
//!   puts in front of a TCP connection, naming the client's real address.
//!
//! The connection code does not know which transport it runs on. What it needs
//! from the listener (the certificate identity, the listener's anonymous
//! setting, its own password and ACL files, its mountpoint, the
//! failed-authentication limiter) travels in a task-local [`ConnContext`], set
//! by the accept loop around the connection task.

pub(crate) mod proxy;
pub(crate) mod quic;
pub(crate) mod tls;
pub(crate) mod ws;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use starling_codec::ByteString;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::auth::{Acl, ListenerFile, PasswordFile};

/// What a connection task knows about the listener that accepted it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnContext {
    /// The client certificate's identity (CN, else first SAN), when the listener
    /// uses it as the user name. The client is then authenticated by its certificate.
    pub identity: Option<String>,
    /// The listener's own anonymous setting; `None` leaves it to the authenticator.
    pub allow_anonymous: Option<bool>,
    /// The broker's failed-authentication limiter.
    pub limiter: Option<Arc<AuthLimiter>>,
    /// The listener's own password file, used instead of the broker's authenticator.
    pub passwords: Option<Arc<ListenerFile<PasswordFile>>>,
    /// The listener's own ACL, used instead of the broker's.
    pub acl: Option<Arc<ListenerFile<Acl>>>,
    /// The listener's mountpoint (a topic prefix).
    pub mountpoint: Option<ByteString>,
}

tokio::task_local! {
    static CONTEXT: ConnContext;
}

/// The context of the current connection task (the default outside of one).
pub(crate) fn context() -> ConnContext {
    CONTEXT.try_with(|c| c.clone()).unwrap_or_default()
}

/// Runs `fut` (a connection task) with `ctx` as its [`context`].
pub(crate) async fn with_context<F: std::future::Future>(ctx: ConnContext, fut: F) -> F::Output {
    CONTEXT.scope(ctx, fut).await
}

/// Counts failed authentications per source address over a sliding minute.
/// Past the limit, the address is refused (CONNACK 0x9F, 3.x code 3) until its
/// oldest failure is a minute old.
#[derive(Debug)]
pub(crate) struct AuthLimiter {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// Above this many tracked addresses, stale entries are swept on the next failure.
const LIMITER_SWEEP: usize = 4096;

impl AuthLimiter {
    /// A limiter allowing `limit` failures a minute per address; 0 disables it.
    pub(crate) fn new(limit: u32) -> AuthLimiter {
        AuthLimiter {
            limit: limit as usize,
            window: Duration::from_secs(60),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has used up its failures.
    pub(crate) fn is_blocked(&self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = Instant::now();
        let mut map = self.failures.lock();
        let Some(times) = map.get_mut(&ip) else {
            return false;
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.is_empty() {
            map.remove(&ip);
            return false;
        }
        times.len() >= self.limit
    }

    /// Records a failure of `ip`. Returns true when this failure reaches the limit.
    pub(crate) fn record_failure(&self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = Instant::now();
        let mut map = self.failures.lock();
        if map.len() >= LIMITER_SWEEP {
            let window = self.window;
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let times = map.entry(ip).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        while times.len() > self.limit {
            times.pop_front();
        }
        times.len() == self.limit
    }
}

/// Makes every write reach the transport before it completes.
///
/// TLS and WebSocket streams buffer what is written and send it on flush; the
/// connection loop writes but never flushes, and would leave the tail of its
/// output in that buffer. `Flushing` completes a write only once the bytes have
/// been flushed: the write is accepted into the inner stream once, then
/// `poll_write` stays pending until the flush is done and reports the accepted
/// length. The caller must retry with the same (or a longer) buffer, which the
/// connection loop does: it only appends to its buffer and advances it by what
/// writes report.
#[derive(Debug)]
pub(crate) struct Flushing<S> {
    inner: S,
    accepted: Option<usize>,
}

impl<S> Flushing<S> {
    pub(crate) fn new(inner: S) -> Self {
        Flushing {
            inner,
            accepted: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Flushing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Flushing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = match self.accepted {
            Some(n) => n.min(buf.len()),
            None => {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
                self.accepted = Some(n);
                n
            }
        };
        let flushed = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.accepted = None;
        flushed.map(|()| n).into()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limiter_blocks_past_the_limit_for_a_minute() {
        let l = AuthLimiter::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!l.record_failure(ip));
        assert!(!l.record_failure(ip));
        assert!(!l.is_blocked(ip));
        assert!(l.record_failure(ip));
        assert!(l.is_blocked(ip));
        assert!(!l.is_blocked(other));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!l.is_blocked(ip));
        assert!(!AuthLimiter::new(0).record_failure(ip));
    }
}

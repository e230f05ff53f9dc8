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
//! setting, its own password and ACL files, its mountpoint) travels in a task-local [`ConnContext`], set
//! by the accept loop around the connection task.

pub(crate) mod proxy;
pub(crate) mod quic;
pub(crate) mod tls;
pub(crate) mod ws;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use starling_codec::ByteString;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::auth::{Acl, ListenerFile, PasswordFile};

/// What a connection task knows about the listener that accepted it.
#[derive(Debug, Clone)]
pub(crate) struct ConnContext {
    /// The listener's index in [`crate::broker::BrokerState::listeners`]
    /// (`u16::MAX`: none, the in-memory connector).
    pub listener: u16,
    /// The client certificate's identity (CN, else first SAN), when the listener
    /// uses it as the user name. The client is then authenticated by its certificate.
    pub identity: Option<String>,
    /// The listener's own anonymous setting; `None` leaves it to the authenticator.
    pub allow_anonymous: Option<bool>,
    /// The listener's own password file, used instead of the broker's authenticator.
    pub passwords: Option<Arc<ListenerFile<PasswordFile>>>,
    /// The listener's own ACL, used instead of the broker's.
    pub acl: Option<Arc<ListenerFile<Acl>>>,
    /// The listener's mountpoint (a topic prefix).
    pub mountpoint: Option<ByteString>,
    /// A part of the broker itself (a bridge) connecting in memory: let in
    /// as `identity`, and every topic allowed.
    pub internal: bool,
}

impl Default for ConnContext {
    fn default() -> Self {
        ConnContext {
            listener: u16::MAX,
            identity: None,
            allow_anonymous: None,
            passwords: None,
            acl: None,
            mountpoint: None,
            internal: false,
        }
    }
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

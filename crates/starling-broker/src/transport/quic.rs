//! MQTT over QUIC (`quic://HOST:PORT`) through quinn, as EMQX 5 and NanoMQ
//! offer it.
//!
//! - TLS 1.3 with ALPN `mqtt`; certificates, CA and client certificates as for
//!   `mqtts://` (see [`super::tls`]).
//! - Each bidirectional stream a client opens is one MQTT connection;
//!   [`QuicIo`] joins its two halves into one byte stream.
//! - Reloading swaps the endpoint's server configuration; established QUIC
//!   connections keep theirs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a QUIC connection may stay silent; clients keep it alive with their
/// MQTT keep alive (and QUIC's own pings).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A quinn server configuration from a rustls one built for QUIC.
pub(crate) fn server_config(tls: Arc<rustls::ServerConfig>) -> Result<quinn::ServerConfig, String> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The identity (CN, else first SAN) of the client certificate of `conn`.
pub(crate) fn identity(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(super::tls::identity)
}

type Stopped = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// One bidirectional QUIC stream as a byte stream. Shutting it down finishes the
/// send side and waits until the peer has acknowledged everything sent, so a
/// final DISCONNECT is not lost when the connection closes right after.
pub(crate) struct QuicIo {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    stopped: Option<Stopped>,
}

impl QuicIo {
    pub(crate) fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> QuicIo {
        QuicIo {
            send,
            recv,
            stopped: None,
        }
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stopped.is_none() {
            // Already finished or reset: nothing left to wait for.
            if self.send.finish().is_err() {
                return Poll::Ready(Ok(()));
            }
            let stopped = self.send.stopped();
            self.stopped = Some(Box::pin(async move {
                let _ = stopped.await;
            }));
        }
        if let Some(stopped) = self.stopped.as_mut() {
            ready!(stopped.as_mut().poll(cx));
        }
        Poll::Ready(Ok(()))
    }
}

//! One bidirectional QUIC stream as a byte stream: MQTT over QUIC, as EMQX 5
//! and NanoMQ offer it, runs one MQTT connection per stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Stopped = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A QUIC stream's two halves joined into one byte stream.
///
/// Shutting it down finishes the send side and waits until the peer has read
/// everything (or stopped reading), so that a final DISCONNECT is not lost to
/// the connection close that follows. An error is told with the connection's
/// close reason when there is one: a stream alone says only "connection lost",
/// the connection knows it was a TLS alert, an idle timeout or the peer
/// closing it.
pub struct QuicIo {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    stopped: Option<Stopped>,
    conn: quinn::Connection,
    /// Kept open as long as the stream, when the stream owns it (a client's).
    _endpoint: Option<quinn::Endpoint>,
}

impl QuicIo {
    /// The byte stream over `send` and `recv`, two halves of one stream of `conn`.
    pub fn new(conn: quinn::Connection, send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        QuicIo {
            send,
            recv,
            stopped: None,
            conn,
            _endpoint: None,
        }
    }

    /// Keeps `endpoint` open as long as the stream: a client's endpoint serves
    /// this one connection and closes when it is dropped.
    pub fn owning(mut self, endpoint: quinn::Endpoint) -> Self {
        self._endpoint = Some(endpoint);
        self
    }

    fn explain<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(Err(e)) => Poll::Ready(Err(match self.conn.close_reason() {
                Some(reason) => io::Error::new(e.kind(), format!("QUIC connection lost: {reason}")),
                None => e,
            })),
            other => other,
        }
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf);
        self.explain(poll)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf);
        self.explain(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = AsyncWrite::poll_flush(Pin::new(&mut self.send), cx);
        self.explain(poll)
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

//! MQTT over WebSocket (`ws://HOST:PORT/PATH`, and `wss://` over [`super::tls`]),
//! through tokio-tungstenite on the broker's runtime.
//!
//! - The HTTP request head is read first: a request for another path than the
//!   listener's (default `/mqtt`) gets `404 Not Found` and the connection is
//!   closed cleanly, whether or not it asked for an upgrade.
//! - The subprotocols `mqtt` and `mqttv3.1` are negotiated: the first one the
//!   client offers is returned. A client offering none is accepted as well.
//! - [`WsIo`] (from `starling-io`, shared with the client) turns the
//!   WebSocket into a byte stream: binary messages are concatenated, so a
//!   packet may span frames and a frame may carry several packets. Each write
//!   is one binary message. A text message closes the connection
//!   ([MQTT-6.0.0-1]). Writes are sent on flush; wrap it in
//!   [`super::Flushing`] for the connection loop.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
pub(crate) use starling_io::ws::WsIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The path served when a listener names none.
pub(crate) const DEFAULT_PATH: &str = "/mqtt";
/// The subprotocols MQTT over WebSocket uses, in our order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Largest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Why a WebSocket handshake did not produce a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The request was for another path; 404 was sent.
    #[error("no WebSocket endpoint at {0:?} (404 sent)")]
    NotFound(String),
    /// The request was not a valid WebSocket upgrade.
    #[error("WebSocket handshake: {0}")]
    Handshake(String),
}

/// Reads the request head, checks the path, and completes the WebSocket handshake.
pub(crate) async fn accept<S>(
    mut stream: S,
    path: &str,
    max_message: usize,
) -> Result<WsIo<Rewind<S>>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = BytesMut::with_capacity(1024);
    loop {
        if head.len() >= MAX_HEAD {
            let _ = stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
            return Err(WsError::Handshake("request head too large".into()));
        }
        if stream.read_buf(&mut head).await? == 0 {
            return Err(WsError::Handshake("closed before the request head".into()));
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let requested = request_path(&head).unwrap_or_default();
    if requested != path {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        let _ = stream.shutdown().await;
        return Err(WsError::NotFound(requested));
    }
    let rewind = Rewind {
        prefix: head.freeze(),
        inner: stream,
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(rewind, negotiate, Some(config))
        .await
        .map_err(|e| WsError::Handshake(e.to_string()))?;
    Ok(WsIo::new(ws))
}

/// Returns the first subprotocol the client offers that MQTT uses.
// The error type is tungstenite's (an HTTP response); it is never built here.
#[allow(clippy::result_large_err)]
fn negotiate(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| SUBPROTOCOLS.iter().any(|s| s.eq_ignore_ascii_case(p)))
        .map(str::to_owned);
    if let Some(p) = offered.and_then(|p| HeaderValue::from_str(&p).ok()) {
        resp.headers_mut().insert("Sec-WebSocket-Protocol", p);
    }
    Ok(resp)
}

/// The path of the request line `GET /path?query HTTP/1.1`, without its query.
fn request_path(head: &[u8]) -> Option<String> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let target = line.split(' ').nth(1)?;
    let target = match target.find("://") {
        // absolute-form: http://host/path
        Some(i) => target[i + 3..]
            .find('/')
            .map_or("/", |j| &target[i + 3 + j..]),
        None => target,
    };
    Some(target.split(['?', '#']).next()?.to_string())
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// A stream that yields `prefix`, then what `inner` reads.
    pub(crate) fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    #[test]
    fn request_paths() {
        let p = |s: &str| request_path(s.as_bytes());
        assert_eq!(
            p("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("/mqtt")
        );
        assert_eq!(
            p("GET /mqtt?a=b HTTP/1.1\r\n\r\n").as_deref(),
            Some("/mqtt")
        );
        assert_eq!(
            p("GET http://h:1/ws HTTP/1.1\r\n\r\n").as_deref(),
            Some("/ws")
        );
        assert_eq!(p("GET / HTTP/1.1\r\n\r\n").as_deref(), Some("/"));
        assert_eq!(p("garbage"), None);
    }
}

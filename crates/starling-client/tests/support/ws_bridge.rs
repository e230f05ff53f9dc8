//! A WebSocket (optionally over TLS) front for mosquitto's TCP listener, for tests.
#![allow(dead_code)]

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A WebSocket front for mosquitto's TCP listener (Debian's mosquitto cannot
/// open a websockets listener): accepts `ws://` with subprotocol `mqtt` and
/// relays binary frames. Returns the port it listens on.
#[allow(clippy::collapsible_match)]
pub async fn websocket_bridge(tcp_port: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> u16 {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{handshake::server, Message as WsMessage};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let stream: Box<dyn Io> = match tls {
                    Some(acceptor) => Box::new(acceptor.accept(stream).await.expect("TLS accept")),
                    None => Box::new(stream),
                };
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let callback = |req: &server::Request, mut resp: server::Response| {
                    let proto = req.headers().get("Sec-WebSocket-Protocol").cloned();
                    assert_eq!(proto.as_ref().and_then(|p| p.to_str().ok()), Some("mqtt"));
                    resp.headers_mut()
                        .insert("Sec-WebSocket-Protocol", proto.unwrap());
                    Ok(resp)
                };
                let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
                    .await
                    .expect("ws handshake");
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port))
                    .await
                    .expect("mosquitto");
                let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
                let (mut ws_tx, mut ws_rx) = ws.split();
                let up = async move {
                    while let Some(Ok(msg)) = ws_rx.next().await {
                        match msg {
                            WsMessage::Binary(data) => {
                                if tcp_wr.write_all(&data).await.is_err() {
                                    break;
                                }
                            }
                            WsMessage::Close(_) => break,
                            WsMessage::Text(_) => {
                                panic!("MQTT over WebSocket must use binary frames")
                            }
                            _ => {}
                        }
                    }
                    let _ = tcp_wr.shutdown().await;
                };
                let down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match tcp_rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let data = Bytes::copy_from_slice(&buf[..n]);
                                if ws_tx.send(WsMessage::Binary(data)).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = ws_tx.close().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    port
}

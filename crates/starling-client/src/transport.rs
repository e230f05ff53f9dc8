//! Transports: TCP, TLS, WebSocket, WebSocket over TLS and QUIC, all seen by
//! the driver as one byte stream ([`BoxIo`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};
use tokio_tungstenite::WebSocketStream;

use crate::error::ConnectError;
use crate::options::{ClientTlsConfig, ConnectOptions, TransportKind};

mod quic;

/// A bidirectional byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The transport of one connection, whatever it is.
pub(crate) type BoxIo = Box<dyn Io>;

/// Opens the transport `opts` asks for, handshakes included.
pub(crate) async fn connect(opts: &ConnectOptions) -> Result<BoxIo, ConnectError> {
    if opts.transport == TransportKind::Quic {
        return Ok(Box::new(quic::connect(opts).await?));
    }
    let address = opts.address();
    // Build the TLS configuration first: a bad certificate file fails before any traffic.
    let tls = if opts.transport.is_tls() {
        Some(Arc::new(tls_config(&opts.tls)?))
    } else {
        None
    };
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|source| ConnectError::Io {
            address: address.clone(),
            source,
        })?;
    // MQTT packets are small and latency-sensitive; the driver batches writes itself.
    let _ = tcp.set_nodelay(true);
    tracing::debug!(%address, transport = ?opts.transport, "TCP connected");
    match (opts.transport, tls) {
        (TransportKind::Ws, _) => Ok(Box::new(ws_handshake(opts, "ws", tcp).await?)),
        (TransportKind::Tls, Some(config)) => Ok(Box::new(tls_handshake(opts, config, tcp).await?)),
        (TransportKind::Wss, Some(config)) => {
            let tls = tls_handshake(opts, config, tcp).await?;
            Ok(Box::new(ws_handshake(opts, "wss", tls).await?))
        }
        _ => Ok(Box::new(tcp)),
    }
}

async fn tls_handshake(
    opts: &ConnectOptions,
    config: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let name = opts.tls.server_name.clone().unwrap_or(opts.host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| ConnectError::Tls(format!("invalid server name {name:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| ConnectError::Tls(format!("handshake with {}: {e}", opts.address())))?;
    tracing::debug!("TLS handshake done");
    Ok(stream)
}

/// Builds the rustls configuration for `tls` (TLS 1.2 and 1.3).
pub(crate) fn tls_config(tls: &ClientTlsConfig) -> Result<rustls::ClientConfig, ConnectError> {
    tls_config_with(tls, rustls::DEFAULT_VERSIONS)
}

/// Builds the rustls configuration for `tls`, offering the protocol `versions`.
pub(crate) fn tls_config_with(
    tls: &ClientTlsConfig,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, ConnectError> {
    let err = |e: &dyn std::fmt::Display| ConnectError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| err(&e))?;
    let builder = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        ConnectError::Tls(format!("reading CA file {}: {e}", path.display()))
                    })?;
                if certs.is_empty() {
                    return Err(ConnectError::Tls(format!(
                        "no certificate in CA file {}",
                        path.display()
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| err(&e))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ConnectError::Tls(format!("reading certificate {}: {e}", cert.display()))
                })?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ConnectError::Tls(format!("reading key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err(&e))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(ConnectError::Tls(
            "a client certificate needs both a certificate and a key file".into(),
        )),
    }
}

/// Accepts any certificate, but still checks that the handshake signatures are
/// made with the certificate's key.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn ws_handshake<S>(
    opts: &ConnectOptions,
    scheme: &str,
    stream: S,
) -> Result<WsIo<S>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let path = if opts.ws_path.starts_with('/') {
        opts.ws_path.clone()
    } else {
        format!("/{}", opts.ws_path)
    };
    let url = format!("{scheme}://{}{path}", opts.address());
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::WebSocket(format!("{url}: {e}")))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| ConnectError::WebSocket(format!("handshake with {url}: {e}")))?;
    tracing::debug!(%url, "WebSocket handshake done");
    Ok(WsIo {
        inner: ws,
        read: Bytes::new(),
    })
}

/// A WebSocket carrying MQTT as binary messages, seen as a byte stream. Each
/// write becomes one binary message; pings are answered by tungstenite.
pub(crate) struct WsIo<S> {
    inner: WebSocketStream<S>,
    read: Bytes,
}

fn ws_err(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(tungstenite::Message::Binary(data))) => self.read = data,
                Some(Ok(tungstenite::Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(tungstenite::Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "[MQTT-6.0.0-1] text WebSocket frame",
                    )))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut self.inner)
            .start_send(tungstenite::Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(ws_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(ws_err)
    }
}

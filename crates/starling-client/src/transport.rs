//! Transports: TCP, TLS, WebSocket, WebSocket over TLS and QUIC, all seen by
//! the driver as one byte stream ([`BoxIo`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use starling_io::ws::WsIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

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
    Ok(WsIo::new(ws))
}

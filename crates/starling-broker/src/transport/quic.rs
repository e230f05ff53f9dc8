//! MQTT over QUIC (`quic://HOST:PORT`) through quinn, as EMQX 5 and NanoMQ
//! offer it.
//!
//! - TLS 1.3 with ALPN `mqtt`; certificates, CA and client certificates as for
//!   `mqtts://` (see [`super::tls`]).
//! - Each bidirectional stream a client opens is one MQTT connection;
//!   `starling_io::quic::QuicIo` joins its two halves into one byte stream.
//! - Reloading swaps the endpoint's server configuration; established QUIC
//!   connections keep theirs.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::CertificateDer;

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

//! MQTT over QUIC (`quic://HOST:PORT`) through quinn, as EMQX 5, NanoMQ and the
//! Starling broker offer it.
//!
//! - TLS 1.3 with ALPN `mqtt`; CA file, client certificate, `insecure` and
//!   server name as for `mqtts://` (see [`super::tls_config_with`]).
//! - Each connection attempt has its own QUIC connection (and UDP socket) with
//!   one bidirectional stream; `QuicIo` (from `starling-io`) joins the stream's two halves into
//!   the byte stream the driver reads and writes, and keeps the connection
//!   alive as long as it lives.
//! - A host name that resolves to several addresses is tried on all of them at
//!   once: UDP gives no "connection refused", so trying them in turn would wait
//!   for a handshake timeout on each dead address. The first handshake that
//!   succeeds wins; an answer from a server that refuses (a certificate error,
//!   say) ends the attempt at once.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use quinn::crypto::rustls::QuicClientConfig;
use starling_io::quic::QuicIo;

use crate::error::ConnectError;
use crate::options::ConnectOptions;

/// The ALPN protocol of MQTT over QUIC.
const ALPN: &[u8] = b"mqtt";

/// How long the QUIC connection may stay silent before it counts as lost.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// QUIC PINGs keep the connection (and NAT bindings) alive whatever the MQTT
/// keep alive is, even when it is zero or longer than the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Opens a QUIC connection to the server of `opts` and one bidirectional
/// stream on it.
pub(crate) async fn connect(opts: &ConnectOptions) -> Result<QuicIo, ConnectError> {
    let address = opts.address();
    // The TLS configuration first: a bad certificate file fails before any traffic.
    let mut tls = super::tls_config_with(&opts.tls, &[&rustls::version::TLS13])?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    let server_name = opts.tls.server_name.as_deref().unwrap_or(&opts.host);
    rustls_pki_types::ServerName::try_from(server_name)
        .map_err(|e| ConnectError::Tls(format!("invalid server name {server_name:?}: {e}")))?;

    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((opts.host.as_str(), opts.port))
        .await
        .map_err(|source| ConnectError::Io {
            address: address.clone(),
            source,
        })?
        .collect();
    let mut attempts: FuturesUnordered<_> = addrs
        .iter()
        .map(|&addr| dial(addr, config.clone(), server_name))
        .collect();
    let mut first_error = None;
    let (endpoint, conn) = loop {
        match attempts.next().await {
            Some(Ok(found)) => break found,
            Some(Err(failure)) if failure.decisive => return Err(failure.error),
            Some(Err(failure)) => {
                first_error.get_or_insert(failure.error);
            }
            None => {
                return Err(first_error.unwrap_or_else(|| ConnectError::Io {
                    address,
                    source: io::Error::new(io::ErrorKind::NotFound, "no address"),
                }))
            }
        }
    };
    // The other attempts end (and close their connections) here.
    drop(attempts);
    let remote = conn.remote_address();
    tracing::debug!(%address, %remote, "QUIC handshake done");
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnectError::Quic(format!("opening a stream to {remote}: {e}")))?;
    Ok(QuicIo::new(conn, send, recv).owning(endpoint))
}

/// Why one address failed; `decisive` when a server answered, so other
/// addresses are not worth waiting for.
struct Failure {
    decisive: bool,
    error: ConnectError,
}

/// Handshakes with `addr` from a new UDP socket of the same family.
async fn dial(
    addr: SocketAddr,
    config: quinn::ClientConfig,
    server_name: &str,
) -> Result<(quinn::Endpoint, quinn::Connection), Failure> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A host without IPv6 fails here: not decisive, another address may do.
    let endpoint = quinn::Endpoint::client(local).map_err(|source| Failure {
        decisive: false,
        error: ConnectError::Io {
            address: addr.to_string(),
            source,
        },
    })?;
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| Failure {
            decisive: false,
            error: ConnectError::Quic(format!("cannot connect to {addr}: {e}")),
        })?;
    let conn = connecting.await.map_err(|e| handshake_failure(addr, e))?;
    Ok((endpoint, conn))
}

fn handshake_failure(addr: SocketAddr, e: quinn::ConnectionError) -> Failure {
    use quinn::ConnectionError as E;
    // QUIC carries TLS alerts as the error codes 0x100..=0x1ff.
    let is_tls = |code: quinn::TransportErrorCode| u64::from(code) & !0xff == 0x100;
    let (decisive, error) = match &e {
        E::TransportError(t) if is_tls(t.code) => (
            true,
            ConnectError::Tls(format!("QUIC handshake with {addr}: {e}")),
        ),
        E::ConnectionClosed(c) if is_tls(c.error_code) => (
            true,
            ConnectError::Tls(format!("{addr} refused the QUIC handshake: {e}")),
        ),
        E::TimedOut => (
            false,
            ConnectError::Quic(format!("no QUIC answer from {addr}")),
        ),
        _ => (
            true,
            ConnectError::Quic(format!("handshake with {addr}: {e}")),
        ),
    };
    Failure { decisive, error }
}

//! The PROXY protocol (v1 text and v2 binary, as HAProxy defines it) in front of
//! a TCP listener (`proxy-protocol = true`): a load balancer opens each
//! connection with a header naming the client's real address, and that address
//! becomes the connection's peer (logs, the failed-authentication limit, ACLs).
//!
//! - The header is read (through the `ppp` crate) before anything else, under
//!   the listener's handshake timeout; bytes read past it are handed on to the
//!   transport through [`Rewind`].
//! - A missing or malformed header closes the connection.
//! - A v2 `LOCAL` command (a health check by the proxy itself), a v1 `UNKNOWN`
//!   address, and address families other than IPv4 and IPv6 keep the socket's
//!   own address.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::ws::Rewind;

/// The largest header: a v2 header of the greatest length its length field allows.
const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// Why a PROXY header could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The socket failed.
    #[error("PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The peer closed before a whole header arrived.
    #[error("PROXY header: connection closed before a complete header")]
    Closed,
    /// What arrived is not a PROXY protocol header.
    #[error("PROXY header: {0}")]
    Malformed(String),
}

/// Reads a PROXY protocol header from `stream`. Returns the stream (yielding
/// whatever followed the header) and the client address the header names, if
/// it names one.
pub(crate) async fn accept<S>(mut stream: S) -> Result<(Rewind<S>, Option<SocketAddr>), ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if !buf.is_empty() {
            let parsed = HeaderResult::parse(&buf);
            if parsed.is_complete() {
                let (len, addr) = match parsed {
                    HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
                    HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h)),
                    HeaderResult::V1(Err(e)) => return Err(ProxyError::Malformed(e.to_string())),
                    HeaderResult::V2(Err(e)) => return Err(ProxyError::Malformed(e.to_string())),
                };
                let rest = buf.split_off(len).freeze();
                return Ok((Rewind::new(rest, stream), addr));
            }
        }
        if buf.len() >= MAX_HEADER {
            return Err(ProxyError::Malformed("header too long".into()));
        }
        buf.reserve(256);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ProxyError::Closed);
        }
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match &header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn parse(input: &[u8]) -> Result<(Vec<u8>, Option<SocketAddr>), ProxyError> {
        let (mut rest, addr) = accept(input).await?;
        let mut tail = Vec::new();
        rest.read_to_end(&mut tail).await.unwrap();
        Ok((tail, addr))
    }

    #[tokio::test]
    async fn v1_and_v2_headers() {
        let (tail, addr) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n\x10\x00")
            .await
            .unwrap();
        assert_eq!(addr, Some("192.0.2.7:51000".parse().unwrap()));
        assert_eq!(tail, b"\x10\x00");
        let (_, addr) = parse(b"PROXY TCP6 2001:db8::1 ::1 4000 1883\r\n")
            .await
            .unwrap();
        assert_eq!(addr, Some("[2001:db8::1]:4000".parse().unwrap()));
        let (tail, addr) = parse(b"PROXY UNKNOWN\r\nx").await.unwrap();
        assert_eq!((tail.as_slice(), addr), (&b"x"[..], None));

        let src: SocketAddr = "198.51.100.4:6000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:1883".parse().unwrap();
        let mut header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .unwrap();
        header.extend_from_slice(b"rest");
        let (tail, addr) = parse(&header).await.unwrap();
        assert_eq!((tail.as_slice(), addr), (&b"rest"[..], Some(src)));
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(parse(&local).await.unwrap().1, None);
    }

    #[tokio::test]
    async fn missing_truncated_and_malformed_headers_fail() {
        // An MQTT CONNECT where the header should be.
        assert!(matches!(
            parse(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00").await,
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.7").await,
            Err(ProxyError::Closed)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense 10.0.0.1 1 2\r\n").await,
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"\r\n\r\n\x00\r\nQUIT\n\x99\x11\x00\x0c").await,
            Err(ProxyError::Malformed(_))
        ));
    }
}

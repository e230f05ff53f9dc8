//! Errors of connecting and of operations on a connection.

use std::fmt;
use std::time::Duration;

use starling_codec::{ConnectReturnCode, DecodeError, EncodeError, ReasonCode};

use crate::state::StateError;

/// Why the server refused a connection: the MQTT 3.x return code or the MQTT 5
/// reason code of its CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    /// An MQTT 3.1 / 3.1.1 CONNACK return code.
    V3(ConnectReturnCode),
    /// An MQTT 5 CONNACK reason code.
    V5(ReasonCode),
}

impl ConnectCode {
    /// The code as an MQTT 5 reason code (3.x codes are mapped).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Self::V3(c) => c.to_reason_code(),
            Self::V5(c) => c,
        }
    }

    /// True when the connection was accepted.
    pub fn is_success(self) -> bool {
        !self.reason_code().is_error()
    }
}

impl fmt::Display for ConnectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V3(c) => write!(f, "{c} (return code {})", *c as u8),
            Self::V5(c) => match c.name() {
                Some(name) => write!(f, "{name} (reason code 0x{:02X})", c.0),
                None => write!(f, "reason code 0x{:02X}", c.0),
            },
        }
    }
}

/// A refused connection: the CONNACK's code and, in MQTT 5, its reason string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The return or reason code.
    pub code: ConnectCode,
    /// The MQTT 5 Reason String, if the server sent one.
    pub reason_string: Option<String>,
    /// The MQTT 5 Server Reference, if the server named another server to use.
    pub server_reference: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection refused: {}", self.code)?;
        if let Some(r) = &self.reason_string {
            write!(f, ": {r}")?;
        }
        if let Some(r) = &self.server_reference {
            write!(f, " (use server {r})")?;
        }
        Ok(())
    }
}

/// Why [`crate::Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL cannot be used.
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    /// A feature this build does not have.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The server refused the connection.
    #[error("{0}")]
    Refused(Refusal),
    /// Enhanced authentication failed on our side (the server could not
    /// prove itself, or sent what the method cannot read).
    #[error("enhanced authentication: {0}")]
    Authentication(String),
    /// No CONNACK within the connect timeout.
    #[error("connect to {address} timed out after {timeout:?} without a CONNACK")]
    Timeout {
        /// The server address.
        address: String,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {address}: {source}")]
    Io {
        /// The server address.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The WebSocket handshake failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The QUIC connection or its stream could not be opened (no answer, wrong
    /// ALPN, closed by the server, ...). Certificate problems are [`Self::Tls`].
    #[error("QUIC: {0}")]
    Quic(String),
    /// The server closed the connection before answering CONNECT.
    #[error("the server closed the connection before sending CONNACK")]
    ClosedBeforeConnAck,
    /// The server sent something other than CONNACK first.
    #[error("[MQTT-3.2.0-1] expected CONNACK, got {0}")]
    UnexpectedPacket(String),
    /// The server's bytes break the protocol.
    #[error("malformed packet from the server: {0}")]
    Decode(#[from] DecodeError),
    /// CONNECT could not be encoded (a field too long, ...).
    #[error("cannot encode CONNECT: {0}")]
    Encode(#[from] EncodeError),
}

impl ConnectError {
    /// The refusal, if the server refused the connection.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Why an operation on a connected [`crate::Client`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection is closed (after `disconnect`, a failure without
    /// reconnection, or when reconnection gave up).
    #[error("the connection is closed: {0}")]
    Closed(String),
    /// The connection was lost while the operation was in flight and will not be
    /// retried (automatic reconnection is off).
    #[error("the connection was lost: {0}")]
    ConnectionLost(String),
    /// The packet cannot be encoded.
    #[error("cannot encode the packet: {0}")]
    Encode(#[from] EncodeError),
    /// The packet is larger than the server's Maximum Packet Size.
    #[error("packet of {size} bytes exceeds the server's maximum packet size of {max}")]
    PacketTooLarge {
        /// Size of the encoded packet.
        size: usize,
        /// The server's limit.
        max: u32,
    },
    /// The topic name or filter is invalid.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// The protocol state refused the operation.
    #[error(transparent)]
    State(#[from] StateError),
    /// Enhanced authentication failed, or there is none to renew.
    #[error("enhanced authentication: {0}")]
    Authentication(String),
}

//! Byte-stream adapters shared by the broker and the client.
//!
//! MQTT runs over a byte stream, but two of its transports are not one: a
//! WebSocket carries messages, and a QUIC connection carries separate send
//! and receive streams. [`ws::WsIo`] and [`quic::QuicIo`] make each an
//! `AsyncRead + AsyncWrite`, so that the same codec loop serves every
//! transport on both sides of the connection.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod quic;
pub mod ws;

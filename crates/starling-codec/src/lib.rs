//! The MQTT wire format for Starling: MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (level 4)
//! and 5.0 (level 5).
//!
//! This crate owns the packet model, incremental decoding from a [`bytes::BytesMut`],
//! encoding into one, and every validation rule the specifications put on the wire
//! format. It does no I/O and keeps no clock.
//!
//! - [`Decoder`] frames and decodes packets incrementally. The first packet it sees
//!   must be CONNECT, and that packet fixes the protocol version for the rest of the
//!   stream. The maximum packet size is enforced from the fixed header, before the
//!   body is buffered.
//! - [`Packet::encode`] writes a packet for a given [`ProtocolVersion`].
//! - Payloads, topics and strings are zero-copy slices of the receive buffer
//!   ([`bytes::Bytes`] / [`bytestring::ByteString`]).
//! - Every error is a [`DecodeError`] whose message begins with the numbered
//!   statement of the specification it enforces, and which maps to an MQTT 5
//!   [`ReasonCode`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decoder;
mod error;
mod kind;
pub mod packet;
mod property;
mod reason;
pub mod topic;
mod version;
mod wire;

pub use bytestring::ByteString;
pub use decoder::{Decoder, DEFAULT_MAX_PACKET_SIZE};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Publish, PublishRef, QoS,
    RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will,
};
pub use property::{Properties, PropertyContext, PropertyId};
pub use reason::{ConnectReturnCode, ReasonCode};
pub use version::ProtocolVersion;
pub use wire::{varint_len, MAX_REMAINING_LENGTH};

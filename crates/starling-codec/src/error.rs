//! Typed decode and encode errors.
//!
//! Each decode error names, at the start of its message, the numbered statement of
//! the specification it enforces (MQTT 5.0 numbering unless the rule exists only in
//! 3.1.1), and maps to the MQTT 5 reason code a server or client sends before it
//! closes the connection.

use crate::kind::{PacketType, PropertyId};
use crate::reason::ReasonCode;

/// A packet that breaks a rule of the wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A variable byte integer ran past four bytes or used more bytes than needed.
    #[error("[MQTT-1.5.5-1] malformed variable byte integer")]
    MalformedVarInt,
    /// The packet declared a size above the receiver's maximum.
    #[error("[MQTT-3.2.2-15] packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// Total size of the packet, fixed header included.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// Packet type 0 (or 15 before MQTT 5) is reserved.
    #[error("[MQTT-2.1.2-1] reserved packet type {0}")]
    ReservedPacketType(u8),
    /// The low nibble of the fixed header has the wrong value for this packet type.
    #[error("[MQTT-2.1.3-1] invalid fixed header flags 0x{flags:X} for {packet:?}")]
    InvalidFixedHeaderFlags {
        /// The packet type.
        packet: PacketType,
        /// The flags found.
        flags: u8,
    },
    /// PUBLISH with both QoS bits set.
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    InvalidQoS,
    /// PUBLISH with QoS 0 and DUP set.
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// The first packet on a connection is not CONNECT.
    #[error("[MQTT-3.1.0-1] first packet is {0:?}, not CONNECT")]
    FirstPacketNotConnect(PacketType),
    /// A second CONNECT arrived on the same connection.
    #[error("[MQTT-3.1.0-2] second CONNECT on one connection")]
    SecondConnect,
    /// The protocol name of CONNECT is neither `MQTT` nor `MQIsdp`.
    #[error("[MQTT-3.1.2-1] invalid protocol name {0:?}")]
    InvalidProtocolName(String),
    /// The protocol name is known but the level is not one Starling speaks.
    #[error("[MQTT-3.1.2-2] unsupported protocol level {level} for {name:?}")]
    UnsupportedProtocolLevel {
        /// Protocol name from CONNECT.
        name: String,
        /// Protocol level from CONNECT.
        level: u8,
    },
    /// CONNECT flag bit 0 is set.
    #[error("[MQTT-3.1.2-3] reserved CONNECT flag is set")]
    ConnectReservedFlag,
    /// Will QoS is non-zero while the will flag is 0.
    #[error("[MQTT-3.1.2-11] will QoS set without the will flag")]
    WillQoSWithoutWill,
    /// Will QoS is 3.
    #[error("[MQTT-3.1.2-12] will QoS 3")]
    InvalidWillQoS,
    /// Will retain is set while the will flag is 0.
    #[error("[MQTT-3.1.2-13] will retain set without the will flag")]
    WillRetainWithoutWill,
    /// MQTT 3.1/3.1.1: the password flag is set without the user name flag.
    #[error("[MQTT-3.1.2-22] password flag set without the user name flag")]
    PasswordWithoutUsername,
    /// A string is not well-formed UTF-8 (this includes encoded surrogates).
    #[error("[MQTT-1.5.4-1] invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    /// A string contains U+0000.
    #[error("[MQTT-1.5.4-2] U+0000 in {0}")]
    NullCharacter(&'static str),
    /// The packet ends before a field it must contain.
    #[error("[MQTT-1.5] packet ends inside {0}")]
    UnexpectedEnd(&'static str),
    /// Bytes remain after the last field of the packet.
    #[error("[MQTT-2.1.4] {0} unexpected bytes at the end of the packet")]
    TrailingBytes(usize),
    /// A property appears twice where the specification allows it once.
    #[error("[MQTT-2.2.2-2] duplicate property {0:?}")]
    DuplicateProperty(PropertyId),
    /// A property identifier that MQTT 5 does not define.
    #[error("[MQTT-2.2.2-2] unknown property identifier 0x{0:02X}")]
    UnknownProperty(u8),
    /// A defined property in a packet that may not carry it.
    #[error("[MQTT-2.2.2-2] property {property:?} is not allowed in {context}")]
    PropertyNotAllowed {
        /// The property.
        property: PropertyId,
        /// Where it appeared.
        context: &'static str,
    },
    /// A property whose value is outside its allowed range.
    #[error("[MQTT-3.1.2] invalid value for property {0:?}")]
    InvalidPropertyValue(PropertyId),
    /// Authentication Data without an Authentication Method.
    #[error("[MQTT-3.1.2] authentication data without an authentication method")]
    AuthDataWithoutMethod,
    /// A packet identifier of 0 where a non-zero one is required.
    #[error("[MQTT-2.2.1-3] packet identifier 0 in {0:?}")]
    ZeroPacketId(PacketType),
    /// A topic name containing `+` or `#`.
    #[error("[MQTT-3.3.2-2] wildcard in topic name")]
    WildcardInTopicName,
    /// An empty topic name where one is required.
    #[error("[MQTT-4.7.3-1] empty topic name")]
    EmptyTopicName,
    /// A Topic Alias of 0.
    #[error("[MQTT-3.3.2-8] topic alias 0")]
    TopicAliasZero,
    /// SUBSCRIBE with no topic filter.
    #[error("[MQTT-3.8.3-2] SUBSCRIBE without a topic filter")]
    EmptySubscribe,
    /// UNSUBSCRIBE with no topic filter.
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter")]
    EmptyUnsubscribe,
    /// Reserved bits of a subscription options byte are set.
    #[error("[MQTT-3.8.3-5] reserved bits set in subscription options")]
    SubscriptionOptionsReserved,
    /// Retain Handling 3.
    #[error("[MQTT-3.8.3-5] retain handling 3")]
    InvalidRetainHandling,
    /// No Local on a shared subscription.
    #[error("[MQTT-3.8.3-4] no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A reason code this packet type may not carry.
    #[error("[MQTT-2.4] reason code 0x{code:02X} is not valid in {packet:?}")]
    InvalidReasonCode {
        /// The packet type.
        packet: PacketType,
        /// The code.
        code: u8,
    },
    /// Reserved CONNACK acknowledge flags are set.
    #[error("[MQTT-3.2.2-1] reserved CONNACK flags set")]
    ConnAckReservedFlags,
    /// Session present set on a refused CONNACK.
    #[error("[MQTT-3.2.2-6] session present set on a refused CONNACK")]
    SessionPresentOnError,
    /// A packet that does not exist in the negotiated protocol version.
    #[error("[MQTT-2.1.2-1] {0:?} does not exist before MQTT 5")]
    NotInVersion(PacketType),
}

impl DecodeError {
    /// The MQTT 5 reason code to send when closing the connection for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolLevel { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            InvalidProtocolName(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            WildcardInTopicName => ReasonCode::TOPIC_NAME_INVALID,
            TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            FirstPacketNotConnect(_)
            | SecondConnect
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthDataWithoutMethod
            | EmptySubscribe
            | EmptyUnsubscribe
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | SessionPresentOnError
            | EmptyTopicName => ReasonCode::PROTOCOL_ERROR,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// A packet that cannot be put on the wire as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes.
    #[error("[MQTT-2.1.4] remaining length {0} exceeds 268435455")]
    PacketTooLarge(usize),
    /// A string or binary field exceeds 65,535 bytes.
    #[error("[MQTT-1.5.4] {0} is longer than 65535 bytes")]
    FieldTooLong(&'static str),
    /// The packet type does not exist in this protocol version (AUTH before MQTT 5).
    #[error("{0:?} does not exist before MQTT 5")]
    NotInVersion(PacketType),
    /// A value that the wire format cannot carry (packet id 0, subscription id 0, ...).
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
}

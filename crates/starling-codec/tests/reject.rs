//! Table-driven rejection tests: one row per wire-format rule, each with the
//! decoding context, the raw bytes, the expected [`DecodeError`] and the MQTT 5
//! reason code a receiver closes the connection with.

use bytes::BytesMut;
use starling_codec::{
    DecodeError, Decoder, Packet, PacketType, PropertyId, ProtocolVersion, ReasonCode,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

// ---------------------------------------------------------------------------
// Byte builders
// ---------------------------------------------------------------------------

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A variable byte integer, written independently of the crate.
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A length-prefixed string or binary field.
fn str16(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("short field");
    cat(&[&len.to_be_bytes(), data])
}

/// A whole packet: fixed header byte, remaining length, body.
fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    cat(&[&[header], &varint(body.len()), body])
}

/// A property list with its length prefix.
fn props(list: &[u8]) -> Vec<u8> {
    cat(&[&varint(list.len()), list])
}

/// CONNECT with any protocol name and level; keep alive 60.
fn connect_with(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[&str16(name), &[level, flags, 0x00, 0x3C], rest]),
    )
}

/// MQTT 3.1.1 CONNECT; `payload` starts at the client identifier.
fn connect311(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect_with(b"MQTT", 4, flags, payload)
}

/// MQTT 5 CONNECT with the given property list.
fn connect5(flags: u8, list: &[u8], payload: &[u8]) -> Vec<u8> {
    connect_with(b"MQTT", 5, flags, &cat(&[&props(list), payload]))
}

/// A valid 3.1.1 CONNECT with client id "c".
fn valid_connect311() -> Vec<u8> {
    connect311(0x02, &str16(b"c"))
}

/// An MQTT 5 QoS 0 PUBLISH to "t" with the given property list and payload "p".
fn publish5(list: &[u8]) -> Vec<u8> {
    frame(0x30, &cat(&[&str16(b"t"), &props(list), b"p"]))
}

/// A 3.1.1 QoS 0 PUBLISH with a raw topic.
fn publish311(topic: &[u8]) -> Vec<u8> {
    frame(0x30, &cat(&[&str16(topic), b"p"]))
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// Which decoder a row is fed to.
#[derive(Debug, Clone, Copy)]
enum Ctx {
    /// `Decoder::new()`: the server side, expecting CONNECT first.
    Server,
    /// `Decoder::with_version(v)`.
    Client(ProtocolVersion),
    /// `Decoder::with_version(v)` with a maximum packet size.
    ClientMax(ProtocolVersion, usize),
}

impl Ctx {
    fn decoder(self) -> Decoder {
        match self {
            Ctx::Server => Decoder::new(),
            Ctx::Client(v) => Decoder::with_version(v),
            Ctx::ClientMax(v, max) => {
                let mut d = Decoder::with_version(v);
                d.set_max_packet_size(max);
                d
            }
        }
    }
}

struct Row {
    name: &'static str,
    ctx: Ctx,
    bytes: Vec<u8>,
    check: fn(&DecodeError) -> bool,
    pattern: &'static str,
    reason: ReasonCode,
}

macro_rules! row {
    ($name:expr, $ctx:expr, $bytes:expr, $pat:pat $(if $guard:expr)?, $reason:expr) => {
        Row {
            name: $name,
            ctx: $ctx,
            bytes: $bytes,
            check: |e| matches!(e, $pat $(if $guard)?),
            pattern: stringify!($pat $(if $guard)?),
            reason: $reason,
        }
    };
}

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL: ReasonCode = ReasonCode::PROTOCOL_ERROR;

use Ctx::{Client, ClientMax, Server};
use DecodeError as E;
use PacketType as T;

fn rows() -> Vec<Row> {
    let c = str16(b"c");
    let sub_a = |opts: u8| cat(&[&str16(b"a"), &[opts]]);
    vec![
        // --- Fixed header flags (MQTT-2.1.3-1), one row per non-PUBLISH type ---
        row!(
            "CONNECT flags 0001",
            Server,
            {
                let mut b = valid_connect311();
                b[0] = 0x11;
                b
            },
            E::InvalidFixedHeaderFlags {
                packet: T::Connect,
                flags: 1
            },
            MALFORMED
        ),
        row!(
            "CONNACK flags 0001",
            Client(V3_1_1),
            vec![0x21, 0x02, 0x00, 0x00],
            E::InvalidFixedHeaderFlags {
                packet: T::ConnAck,
                flags: 1
            },
            MALFORMED
        ),
        row!(
            "PUBACK flags 0010",
            Client(V3_1_1),
            vec![0x42, 0x02, 0x00, 0x01],
            E::InvalidFixedHeaderFlags {
                packet: T::PubAck,
                flags: 2
            },
            MALFORMED
        ),
        row!(
            "PUBREC flags 1000",
            Client(V5),
            vec![0x58, 0x02, 0x00, 0x01],
            E::InvalidFixedHeaderFlags {
                packet: T::PubRec,
                flags: 8
            },
            MALFORMED
        ),
        row!(
            "PUBREL flags 0000",
            Client(V3_1_1),
            vec![0x60, 0x02, 0x00, 0x01],
            E::InvalidFixedHeaderFlags {
                packet: T::PubRel,
                flags: 0
            },
            MALFORMED
        ),
        row!(
            "PUBREL flags 0011",
            Client(V5),
            vec![0x63, 0x02, 0x00, 0x01],
            E::InvalidFixedHeaderFlags {
                packet: T::PubRel,
                flags: 3
            },
            MALFORMED
        ),
        row!(
            "PUBCOMP flags 0001",
            Client(V3_1_1),
            vec![0x71, 0x02, 0x00, 0x01],
            E::InvalidFixedHeaderFlags {
                packet: T::PubComp,
                flags: 1
            },
            MALFORMED
        ),
        row!(
            "SUBSCRIBE flags 0000",
            Client(V3_1_1),
            frame(0x80, &cat(&[&[0x00, 0x01], &sub_a(0)])),
            E::InvalidFixedHeaderFlags {
                packet: T::Subscribe,
                flags: 0
            },
            MALFORMED
        ),
        row!(
            "SUBACK flags 0010",
            Client(V3_1_1),
            vec![0x92, 0x03, 0x00, 0x01, 0x00],
            E::InvalidFixedHeaderFlags {
                packet: T::SubAck,
                flags: 2
            },
            MALFORMED
        ),
        row!(
            "UNSUBSCRIBE flags 0000",
            Client(V3_1_1),
            frame(0xA0, &cat(&[&[0x00, 0x01], &str16(b"a")])),
            E::InvalidFixedHeaderFlags {
                packet: T::Unsubscribe,
                flags: 0
            },
            MALFORMED
        ),
        row!(
            "UNSUBACK flags 0100",
            Client(V3_1_1),
            vec![0xB4, 0x02, 0x00, 0x01],
            E::InvalidFixedHeaderFlags {
                packet: T::UnsubAck,
                flags: 4
            },
            MALFORMED
        ),
        row!(
            "PINGREQ flags 0001",
            Client(V3_1_1),
            vec![0xC1, 0x00],
            E::InvalidFixedHeaderFlags {
                packet: T::PingReq,
                flags: 1
            },
            MALFORMED
        ),
        row!(
            "PINGRESP flags 0010",
            Client(V3_1),
            vec![0xD2, 0x00],
            E::InvalidFixedHeaderFlags {
                packet: T::PingResp,
                flags: 2
            },
            MALFORMED
        ),
        row!(
            "DISCONNECT flags 1111",
            Client(V5),
            vec![0xEF, 0x00],
            E::InvalidFixedHeaderFlags {
                packet: T::Disconnect,
                flags: 15
            },
            MALFORMED
        ),
        row!(
            "AUTH flags 0001",
            Client(V5),
            vec![0xF1, 0x00],
            E::InvalidFixedHeaderFlags {
                packet: T::Auth,
                flags: 1
            },
            MALFORMED
        ),
        // --- Packet types ---
        row!(
            "reserved packet type 0",
            Client(V3_1_1),
            vec![0x00, 0x00],
            E::ReservedPacketType(0),
            MALFORMED
        ),
        row!(
            "reserved packet type 0 as the first packet",
            Server,
            vec![0x00, 0x00],
            E::ReservedPacketType(0),
            MALFORMED
        ),
        row!(
            "reserved packet type 0 in 5.0",
            Client(V5),
            vec![0x00, 0x00],
            E::ReservedPacketType(0),
            MALFORMED
        ),
        row!(
            "AUTH in 3.1.1",
            Client(V3_1_1),
            vec![0xF0, 0x00],
            E::ReservedPacketType(15),
            MALFORMED
        ),
        row!(
            "AUTH in 3.1",
            Client(V3_1),
            vec![0xF0, 0x00],
            E::ReservedPacketType(15),
            MALFORMED
        ),
        row!(
            "AUTH after a 3.1.1 CONNECT",
            Server,
            cat(&[&valid_connect311(), &[0xF0, 0x00]]),
            E::ReservedPacketType(15),
            MALFORMED
        ),
        // --- PUBLISH flags ---
        row!(
            "PUBLISH QoS 3",
            Client(V3_1_1),
            vec![0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
            E::InvalidQoS,
            MALFORMED
        ),
        row!(
            "DUP on QoS 0",
            Client(V3_1_1),
            vec![0x38, 0x03, 0x00, 0x01, b't'],
            E::DupOnQoS0,
            MALFORMED
        ),
        // --- Connection order ---
        row!(
            "first packet PINGREQ",
            Server,
            vec![0xC0, 0x00],
            E::FirstPacketNotConnect(T::PingReq),
            PROTOCOL
        ),
        row!(
            "first packet PUBLISH",
            Server,
            publish311(b"t"),
            E::FirstPacketNotConnect(T::Publish),
            PROTOCOL
        ),
        row!(
            "second CONNECT",
            Server,
            cat(&[&valid_connect311(), &valid_connect311()]),
            E::SecondConnect,
            PROTOCOL
        ),
        row!(
            "CONNECT to a client-side decoder",
            Client(V5),
            connect5(0x02, &[], &c),
            E::SecondConnect,
            PROTOCOL
        ),
        // --- CONNECT variable header ---
        row!(
            "bad protocol name",
            Server,
            connect_with(b"MQTX", 4, 0x02, &c),
            E::InvalidProtocolName(name) if name == "MQTX",
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
        ),
        row!(
            "protocol name in lower case",
            Server,
            connect_with(b"mqtt", 4, 0x02, &c),
            E::InvalidProtocolName(_),
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
        ),
        row!(
            "unsupported protocol level 6",
            Server,
            connect_with(b"MQTT", 6, 0x02, &c),
            E::UnsupportedProtocolLevel { level: 6, .. },
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
        ),
        row!(
            "MQTT with level 3",
            Server,
            connect_with(b"MQTT", 3, 0x02, &c),
            E::UnsupportedProtocolLevel { level: 3, .. },
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
        ),
        row!(
            "MQIsdp with level 4",
            Server,
            connect_with(b"MQIsdp", 4, 0x02, &c),
            E::UnsupportedProtocolLevel { level: 4, .. },
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
        ),
        row!(
            "CONNECT reserved flag",
            Server,
            connect311(0x03, &c),
            E::ConnectReservedFlag,
            MALFORMED
        ),
        row!(
            "will flag 0 with will QoS 1",
            Server,
            connect311(0x0A, &c),
            E::WillQoSWithoutWill,
            MALFORMED
        ),
        row!(
            "will flag 0 with will QoS 2",
            Server,
            connect5(0x12, &[], &c),
            E::WillQoSWithoutWill,
            MALFORMED
        ),
        row!(
            "will flag 0 with will retain",
            Server,
            connect311(0x22, &c),
            E::WillRetainWithoutWill,
            MALFORMED
        ),
        row!(
            "will QoS 3",
            Server,
            connect311(0x1E, &cat(&[&c, &str16(b"w"), &str16(b"x")])),
            E::InvalidWillQoS,
            MALFORMED
        ),
        row!(
            "password without user name in 3.1.1",
            Server,
            connect311(0x42, &cat(&[&c, &str16(b"pw")])),
            E::PasswordWithoutUsername,
            MALFORMED
        ),
        row!(
            "password without user name in 3.1",
            Server,
            connect_with(b"MQIsdp", 3, 0x42, &cat(&[&c, &str16(b"pw")])),
            E::PasswordWithoutUsername,
            MALFORMED
        ),
        // --- Strings ---
        row!(
            "invalid UTF-8 in the client id",
            Server,
            connect311(0x02, &str16(&[0xFF])),
            E::InvalidUtf8(_),
            MALFORMED
        ),
        row!(
            "invalid UTF-8 in a topic (lone lead byte)",
            Client(V3_1_1),
            publish311(&[0xC3, 0x28]),
            E::InvalidUtf8(_),
            MALFORMED
        ),
        row!(
            "overlong encoding of '/'",
            Client(V3_1_1),
            publish311(&[b'a', 0xC0, 0xAF]),
            E::InvalidUtf8(_),
            MALFORMED
        ),
        row!(
            "invalid UTF-8 in a user property",
            Client(V5),
            publish5(&cat(&[&[0x26], &str16(b"k"), &str16(&[0xFE])])),
            E::InvalidUtf8(_),
            MALFORMED
        ),
        row!(
            "U+0000 in a topic",
            Client(V3_1_1),
            publish311(b"a\0b"),
            E::NullCharacter(_),
            MALFORMED
        ),
        row!(
            "U+0000 in the user name",
            Server,
            connect311(0x82, &cat(&[&c, &str16(b"\0")])),
            E::NullCharacter(_),
            MALFORMED
        ),
        row!(
            "surrogate U+D800 in a topic",
            Client(V3_1_1),
            publish311(&[0xED, 0xA0, 0x80]),
            E::InvalidUtf8(_),
            MALFORMED
        ),
        row!(
            "surrogate U+DFFF in a topic filter",
            Client(V3_1_1),
            frame(0xA2, &cat(&[&[0x00, 0x01], &str16(&[0xED, 0xBF, 0xBF])])),
            E::InvalidUtf8(_),
            MALFORMED
        ),
        // --- Properties ---
        row!(
            "duplicate payload format indicator",
            Client(V5),
            publish5(&[0x01, 0x00, 0x01, 0x01]),
            E::DuplicateProperty(PropertyId::PayloadFormatIndicator),
            PROTOCOL
        ),
        row!(
            "duplicate session expiry interval",
            Server,
            connect5(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &c),
            E::DuplicateProperty(PropertyId::SessionExpiryInterval),
            PROTOCOL
        ),
        row!(
            "two subscription identifiers in SUBSCRIBE",
            Client(V5),
            frame(
                0x82,
                &cat(&[&[0x00, 0x01], &props(&[0x0B, 0x01, 0x0B, 0x02]), &sub_a(0)])
            ),
            E::DuplicateProperty(PropertyId::SubscriptionIdentifier),
            PROTOCOL
        ),
        row!(
            "unknown property 0x05",
            Client(V5),
            publish5(&[0x05, 0x00]),
            E::UnknownProperty(0x05),
            MALFORMED
        ),
        row!(
            "unknown property 0x00",
            Client(V5),
            publish5(&[0x00, 0x00]),
            E::UnknownProperty(0x00),
            MALFORMED
        ),
        row!(
            "session expiry in PUBLISH",
            Client(V5),
            publish5(&[0x11, 0, 0, 0, 1]),
            E::PropertyNotAllowed {
                property: PropertyId::SessionExpiryInterval,
                ..
            },
            MALFORMED
        ),
        row!(
            "topic alias in CONNECT",
            Server,
            connect5(0x02, &[0x23, 0x00, 0x01], &c),
            E::PropertyNotAllowed {
                property: PropertyId::TopicAlias,
                ..
            },
            MALFORMED
        ),
        row!(
            "session expiry in will properties",
            Server,
            connect5(
                0x06,
                &[],
                &cat(&[&c, &props(&[0x11, 0, 0, 0, 1]), &str16(b"w"), &str16(b"x")])
            ),
            E::PropertyNotAllowed {
                property: PropertyId::SessionExpiryInterval,
                ..
            },
            MALFORMED
        ),
        row!(
            "reason string in SUBSCRIBE",
            Client(V5),
            frame(
                0x82,
                &cat(&[&[0x00, 0x01], &props(&[0x1F, 0x00, 0x00]), &sub_a(0)])
            ),
            E::PropertyNotAllowed {
                property: PropertyId::ReasonString,
                ..
            },
            MALFORMED
        ),
        row!(
            "receive maximum 0",
            Server,
            connect5(0x02, &[0x21, 0x00, 0x00], &c),
            E::InvalidPropertyValue(PropertyId::ReceiveMaximum),
            PROTOCOL
        ),
        row!(
            "maximum packet size 0",
            Server,
            connect5(0x02, &[0x27, 0, 0, 0, 0], &c),
            E::InvalidPropertyValue(PropertyId::MaximumPacketSize),
            PROTOCOL
        ),
        row!(
            "payload format indicator 2",
            Client(V5),
            publish5(&[0x01, 0x02]),
            E::InvalidPropertyValue(PropertyId::PayloadFormatIndicator),
            PROTOCOL
        ),
        row!(
            "request problem information 2",
            Server,
            connect5(0x02, &[0x17, 0x02], &c),
            E::InvalidPropertyValue(PropertyId::RequestProblemInformation),
            PROTOCOL
        ),
        row!(
            "request response information 2",
            Server,
            connect5(0x02, &[0x19, 0x02], &c),
            E::InvalidPropertyValue(PropertyId::RequestResponseInformation),
            PROTOCOL
        ),
        row!(
            "maximum QoS 2",
            Client(V5),
            frame(0x20, &cat(&[&[0x00, 0x00], &props(&[0x24, 0x02])])),
            E::InvalidPropertyValue(PropertyId::MaximumQoS),
            PROTOCOL
        ),
        row!(
            "subscription identifier 0",
            Client(V5),
            frame(
                0x82,
                &cat(&[&[0x00, 0x01], &props(&[0x0B, 0x00]), &sub_a(0)])
            ),
            E::InvalidPropertyValue(PropertyId::SubscriptionIdentifier),
            PROTOCOL
        ),
        row!(
            "response topic with a wildcard",
            Client(V5),
            publish5(&cat(&[&[0x08], &str16(b"r/#")])),
            E::InvalidPropertyValue(PropertyId::ResponseTopic),
            PROTOCOL
        ),
        row!(
            "authentication data without method",
            Server,
            connect5(0x02, &[0x16, 0x00, 0x01, 0xAA], &c),
            E::AuthDataWithoutMethod,
            PROTOCOL
        ),
        row!(
            "authentication data without method in AUTH",
            Client(V5),
            frame(0xF0, &cat(&[&[0x18], &props(&[0x16, 0x00, 0x00])])),
            E::AuthDataWithoutMethod,
            PROTOCOL
        ),
        // --- Variable byte integers ---
        row!(
            "remaining length of five bytes",
            Client(V3_1_1),
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            E::MalformedVarInt,
            MALFORMED
        ),
        row!(
            "property length of five bytes",
            Client(V5),
            frame(0x30, &cat(&[&str16(b"t"), &[0x80, 0x80, 0x80, 0x80, 0x01]])),
            E::MalformedVarInt,
            MALFORMED
        ),
        row!(
            "non-minimal remaining length 0",
            Client(V3_1_1),
            vec![0xC0, 0x80, 0x00],
            E::MalformedVarInt,
            MALFORMED
        ),
        row!(
            "non-minimal remaining length 2",
            Client(V3_1_1),
            vec![0x40, 0x82, 0x00, 0x00, 0x01],
            E::MalformedVarInt,
            MALFORMED
        ),
        row!(
            "non-minimal subscription identifier",
            Client(V5),
            frame(
                0x82,
                &cat(&[&[0x00, 0x01], &props(&[0x0B, 0x81, 0x00]), &sub_a(0)])
            ),
            E::MalformedVarInt,
            MALFORMED
        ),
        // --- Sizes ---
        row!(
            "packet too large (header only, 256 MB declared)",
            ClientMax(V5, 1024),
            vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F],
            E::PacketTooLarge {
                size: 268_435_460,
                max: 1024
            },
            ReasonCode::PACKET_TOO_LARGE
        ),
        row!(
            "packet one byte too large",
            ClientMax(V3_1_1, 4),
            vec![0x40, 0x03],
            E::PacketTooLarge { size: 5, max: 4 },
            ReasonCode::PACKET_TOO_LARGE
        ),
        row!(
            "trailing byte after PUBACK",
            Client(V3_1_1),
            vec![0x40, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes(1),
            MALFORMED
        ),
        row!(
            "trailing bytes after PINGREQ",
            Client(V5),
            vec![0xC0, 0x02, 0x00, 0x00],
            E::TrailingBytes(2),
            MALFORMED
        ),
        row!(
            "trailing byte after CONNECT",
            Server,
            connect311(0x02, &cat(&[&c, &[0x00]])),
            E::TrailingBytes(1),
            MALFORMED
        ),
        row!(
            "3.1.1 DISCONNECT with a body",
            Client(V3_1_1),
            vec![0xE0, 0x01, 0x00],
            E::TrailingBytes(1),
            MALFORMED
        ),
        row!(
            "3.1.1 UNSUBACK with a reason code",
            Client(V3_1_1),
            vec![0xB0, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes(1),
            MALFORMED
        ),
        row!(
            "truncated topic",
            Client(V3_1_1),
            vec![0x30, 0x03, 0x00, 0x05, b'a'],
            E::UnexpectedEnd(_),
            MALFORMED
        ),
        row!(
            "truncated packet id",
            Client(V3_1_1),
            vec![0x40, 0x01, 0x00],
            E::UnexpectedEnd(_),
            MALFORMED
        ),
        row!(
            "CONNECT ends inside the will",
            Server,
            connect311(0x06, &cat(&[&c, &str16(b"w")])),
            E::UnexpectedEnd(_),
            MALFORMED
        ),
        row!(
            "property value past the property length",
            Client(V5),
            publish5(&[0x02, 0x00]),
            E::UnexpectedEnd(_),
            MALFORMED
        ),
        row!(
            "property length past the packet",
            Client(V5),
            frame(0x30, &cat(&[&str16(b"t"), &[0x05, 0x01]])),
            E::UnexpectedEnd(_),
            MALFORMED
        ),
        row!(
            "5.0 CONNACK without properties",
            Client(V5),
            vec![0x20, 0x02, 0x00, 0x00],
            E::UnexpectedEnd(_),
            MALFORMED
        ),
        // --- Packet identifiers ---
        row!(
            "PUBACK packet id 0",
            Client(V3_1_1),
            vec![0x40, 0x02, 0x00, 0x00],
            E::ZeroPacketId(T::PubAck),
            MALFORMED
        ),
        row!(
            "PUBREC packet id 0",
            Client(V5),
            vec![0x50, 0x02, 0x00, 0x00],
            E::ZeroPacketId(T::PubRec),
            MALFORMED
        ),
        row!(
            "PUBREL packet id 0",
            Client(V3_1),
            vec![0x62, 0x02, 0x00, 0x00],
            E::ZeroPacketId(T::PubRel),
            MALFORMED
        ),
        row!(
            "PUBCOMP packet id 0",
            Client(V3_1_1),
            vec![0x70, 0x02, 0x00, 0x00],
            E::ZeroPacketId(T::PubComp),
            MALFORMED
        ),
        row!(
            "QoS 1 PUBLISH packet id 0",
            Client(V3_1_1),
            vec![0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
            E::ZeroPacketId(T::Publish),
            MALFORMED
        ),
        row!(
            "SUBSCRIBE packet id 0",
            Client(V3_1_1),
            frame(0x82, &cat(&[&[0x00, 0x00], &sub_a(0)])),
            E::ZeroPacketId(T::Subscribe),
            MALFORMED
        ),
        row!(
            "SUBACK packet id 0",
            Client(V3_1_1),
            vec![0x90, 0x03, 0x00, 0x00, 0x00],
            E::ZeroPacketId(T::SubAck),
            MALFORMED
        ),
        row!(
            "UNSUBSCRIBE packet id 0",
            Client(V5),
            frame(0xA2, &cat(&[&[0x00, 0x00, 0x00], &str16(b"a")])),
            E::ZeroPacketId(T::Unsubscribe),
            MALFORMED
        ),
        row!(
            "UNSUBACK packet id 0",
            Client(V3_1_1),
            vec![0xB0, 0x02, 0x00, 0x00],
            E::ZeroPacketId(T::UnsubAck),
            MALFORMED
        ),
        // --- Topics ---
        row!(
            "'+' in a PUBLISH topic",
            Client(V3_1_1),
            publish311(b"a/+"),
            E::WildcardInTopicName,
            ReasonCode::TOPIC_NAME_INVALID
        ),
        row!(
            "'#' in a PUBLISH topic",
            Client(V5),
            frame(0x30, &cat(&[&str16(b"#"), &[0x00]])),
            E::WildcardInTopicName,
            ReasonCode::TOPIC_NAME_INVALID
        ),
        row!(
            "wildcard in the will topic",
            Server,
            connect311(0x06, &cat(&[&c, &str16(b"w/+"), &str16(b"x")])),
            E::WildcardInTopicName,
            ReasonCode::TOPIC_NAME_INVALID
        ),
        row!(
            "empty topic in 3.1.1",
            Client(V3_1_1),
            vec![0x30, 0x02, 0x00, 0x00],
            E::EmptyTopicName,
            PROTOCOL
        ),
        row!(
            "empty topic without an alias in 5.0",
            Client(V5),
            vec![0x30, 0x03, 0x00, 0x00, 0x00],
            E::EmptyTopicName,
            PROTOCOL
        ),
        row!(
            "empty will topic",
            Server,
            connect311(0x06, &cat(&[&c, &str16(b""), &str16(b"x")])),
            E::EmptyTopicName,
            PROTOCOL
        ),
        row!(
            "topic alias 0",
            Client(V5),
            publish5(&[0x23, 0x00, 0x00]),
            E::TopicAliasZero,
            ReasonCode::TOPIC_ALIAS_INVALID
        ),
        // --- SUBSCRIBE and UNSUBSCRIBE ---
        row!(
            "empty SUBSCRIBE in 3.1.1",
            Client(V3_1_1),
            vec![0x82, 0x02, 0x00, 0x01],
            E::EmptySubscribe,
            PROTOCOL
        ),
        row!(
            "empty SUBSCRIBE in 5.0",
            Client(V5),
            vec![0x82, 0x03, 0x00, 0x01, 0x00],
            E::EmptySubscribe,
            PROTOCOL
        ),
        row!(
            "empty UNSUBSCRIBE in 3.1.1",
            Client(V3_1_1),
            vec![0xA2, 0x02, 0x00, 0x01],
            E::EmptyUnsubscribe,
            PROTOCOL
        ),
        row!(
            "empty UNSUBSCRIBE in 5.0",
            Client(V5),
            vec![0xA2, 0x03, 0x00, 0x01, 0x00],
            E::EmptyUnsubscribe,
            PROTOCOL
        ),
        row!(
            "3.1.1 subscription options: No Local bit is reserved",
            Client(V3_1_1),
            frame(0x82, &cat(&[&[0x00, 0x01], &sub_a(0x04)])),
            E::SubscriptionOptionsReserved,
            MALFORMED
        ),
        row!(
            "3.1.1 subscription options: bit 7",
            Client(V3_1_1),
            frame(0x82, &cat(&[&[0x00, 0x01], &sub_a(0x80)])),
            E::SubscriptionOptionsReserved,
            MALFORMED
        ),
        row!(
            "5.0 subscription options: bit 6",
            Client(V5),
            frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &sub_a(0x40)])),
            E::SubscriptionOptionsReserved,
            MALFORMED
        ),
        row!(
            "5.0 subscription options: bit 7",
            Client(V5),
            frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &sub_a(0x81)])),
            E::SubscriptionOptionsReserved,
            MALFORMED
        ),
        row!(
            "subscription QoS 3",
            Client(V3_1_1),
            frame(0x82, &cat(&[&[0x00, 0x01], &sub_a(0x03)])),
            E::InvalidQoS,
            MALFORMED
        ),
        row!(
            "retain handling 3",
            Client(V5),
            frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &sub_a(0x30)])),
            E::InvalidRetainHandling,
            PROTOCOL
        ),
        row!(
            "No Local on $share",
            Client(V5),
            frame(
                0x82,
                &cat(&[&[0x00, 0x01, 0x00], &str16(b"$share/g/a"), &[0x04]])
            ),
            E::NoLocalOnSharedSubscription,
            PROTOCOL
        ),
        // --- Reason codes ---
        row!(
            "PUBACK reason code 0x05",
            Client(V5),
            vec![0x40, 0x03, 0x00, 0x01, 0x05],
            E::InvalidReasonCode {
                packet: T::PubAck,
                code: 0x05
            },
            MALFORMED
        ),
        row!(
            "PUBREC reason code 0x92 (a PUBREL code)",
            Client(V5),
            vec![0x50, 0x03, 0x00, 0x01, 0x92],
            E::InvalidReasonCode {
                packet: T::PubRec,
                code: 0x92
            },
            MALFORMED
        ),
        row!(
            "PUBREL reason code 0x10 (a PUBACK code)",
            Client(V5),
            vec![0x62, 0x03, 0x00, 0x01, 0x10],
            E::InvalidReasonCode {
                packet: T::PubRel,
                code: 0x10
            },
            MALFORMED
        ),
        row!(
            "PUBCOMP reason code 0x80",
            Client(V5),
            vec![0x70, 0x03, 0x00, 0x01, 0x80],
            E::InvalidReasonCode {
                packet: T::PubComp,
                code: 0x80
            },
            MALFORMED
        ),
        row!(
            "3.1.1 SUBACK return code 0x03",
            Client(V3_1_1),
            vec![0x90, 0x03, 0x00, 0x01, 0x03],
            E::InvalidReasonCode {
                packet: T::SubAck,
                code: 0x03
            },
            MALFORMED
        ),
        row!(
            "3.1.1 SUBACK return code 0x87 (5.0 only)",
            Client(V3_1_1),
            vec![0x90, 0x03, 0x00, 0x01, 0x87],
            E::InvalidReasonCode {
                packet: T::SubAck,
                code: 0x87
            },
            MALFORMED
        ),
        row!(
            "5.0 SUBACK reason code 0x03",
            Client(V5),
            vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x03],
            E::InvalidReasonCode {
                packet: T::SubAck,
                code: 0x03
            },
            MALFORMED
        ),
        row!(
            "UNSUBACK reason code 0x02",
            Client(V5),
            vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x02],
            E::InvalidReasonCode {
                packet: T::UnsubAck,
                code: 0x02
            },
            MALFORMED
        ),
        row!(
            "DISCONNECT reason code 0x05",
            Client(V5),
            vec![0xE0, 0x01, 0x05],
            E::InvalidReasonCode {
                packet: T::Disconnect,
                code: 0x05
            },
            MALFORMED
        ),
        row!(
            "AUTH reason code 0x01",
            Client(V5),
            vec![0xF0, 0x01, 0x01],
            E::InvalidReasonCode {
                packet: T::Auth,
                code: 0x01
            },
            MALFORMED
        ),
        row!(
            "5.0 CONNACK reason code 0x01",
            Client(V5),
            vec![0x20, 0x03, 0x00, 0x01, 0x00],
            E::InvalidReasonCode {
                packet: T::ConnAck,
                code: 0x01
            },
            MALFORMED
        ),
        row!(
            "3.1.1 CONNACK return code 6",
            Client(V3_1_1),
            vec![0x20, 0x02, 0x00, 0x06],
            E::InvalidReasonCode {
                packet: T::ConnAck,
                code: 0x06
            },
            MALFORMED
        ),
        // --- CONNACK flags ---
        row!(
            "3.1.1 CONNACK reserved flag bit 1",
            Client(V3_1_1),
            vec![0x20, 0x02, 0x02, 0x00],
            E::ConnAckReservedFlags,
            MALFORMED
        ),
        row!(
            "5.0 CONNACK reserved flag bit 7",
            Client(V5),
            vec![0x20, 0x03, 0x80, 0x00, 0x00],
            E::ConnAckReservedFlags,
            MALFORMED
        ),
        row!(
            "3.1 CONNACK: the first byte is reserved, no session present",
            Client(V3_1),
            vec![0x20, 0x02, 0x01, 0x00],
            E::ConnAckReservedFlags,
            MALFORMED
        ),
        row!(
            "3.1.1 session present with return code 5",
            Client(V3_1_1),
            vec![0x20, 0x02, 0x01, 0x05],
            E::SessionPresentOnError,
            PROTOCOL
        ),
        row!(
            "5.0 session present with reason code 0x87",
            Client(V5),
            vec![0x20, 0x03, 0x01, 0x87, 0x00],
            E::SessionPresentOnError,
            PROTOCOL
        ),
    ]
}

/// Feeds a row's bytes to its decoder and returns the first error.
fn first_error(row: &Row) -> Result<DecodeError, String> {
    let mut dec = row.ctx.decoder();
    let mut buf = BytesMut::from(&row.bytes[..]);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(format!(
                    "no error; waiting for more bytes with {} buffered",
                    buf.len()
                ))
            }
            Err(e) => return Ok(e),
        }
    }
}

#[test]
fn every_rule_is_enforced() {
    let rows = rows();
    let mut failures = Vec::new();
    for row in &rows {
        match first_error(row) {
            Err(why) => failures.push(format!("{} ({:?}): {why}", row.name, row.ctx)),
            Ok(e) if !(row.check)(&e) => failures.push(format!(
                "{} ({:?}): got {e:?}, expected {}",
                row.name, row.ctx, row.pattern
            )),
            Ok(e) if e.reason_code() != row.reason => failures.push(format!(
                "{} ({:?}): {e:?} maps to {:?}, expected {:?}",
                row.name,
                row.ctx,
                e.reason_code(),
                row.reason
            )),
            Ok(e) if !e.to_string().starts_with("[MQTT-") => failures.push(format!(
                "{}: message {:?} does not name the rule",
                row.name,
                e.to_string()
            )),
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn row_names_are_unique() {
    let rows = rows();
    let mut names: Vec<_> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len());
}

// ---------------------------------------------------------------------------
// Controls: the same shapes, valid, decode. They show the rows fail for the
// rule they name and not for a mistake in the builders.
// ---------------------------------------------------------------------------

fn decode_all(ctx: Ctx, bytes: &[u8]) -> Vec<Packet> {
    let mut dec = ctx.decoder();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = dec
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{ctx:?}: {bytes:02X?}: {e}"))
    {
        out.push(p);
    }
    assert!(buf.is_empty(), "{ctx:?}: {bytes:02X?}: bytes left over");
    out
}

#[test]
fn controls_decode() {
    let c = str16(b"c");
    let sub_a = |opts: u8| cat(&[&str16(b"a"), &[opts]]);
    let cases: Vec<(Ctx, Vec<u8>)> = vec![
        (Server, valid_connect311()),
        (Server, connect_with(b"MQIsdp", 3, 0x02, &c)),
        (Server, connect5(0x02, &[], &c)),
        (
            Server,
            connect311(0x0E, &cat(&[&c, &str16(b"w"), &str16(b"x")])),
        ),
        (
            Server,
            connect311(0x26, &cat(&[&c, &str16(b"w"), &str16(b"x")])),
        ),
        (
            Server,
            connect311(0xC2, &cat(&[&c, &str16(b"u"), &str16(b"pw")])),
        ),
        (
            Server,
            connect5(0x02, &[0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x01, 0xAA], &c),
        ),
        (
            Server,
            connect5(0x02, &[0x21, 0x00, 0x01, 0x27, 0, 0, 0, 1, 0x17, 0x01], &c),
        ),
        (Server, cat(&[&valid_connect311(), &[0xC0, 0x00]])),
        (Client(V3_1_1), vec![0x40, 0x02, 0x00, 0x01]),
        (Client(V3_1_1), vec![0x62, 0x02, 0x00, 0x01]),
        (
            Client(V3_1_1),
            vec![0x34, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
        ),
        (
            Client(V3_1_1),
            vec![0x3A, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
        ),
        (Client(V3_1_1), publish311("a/\u{e9}/\u{1F600}".as_bytes())),
        (Client(V5), publish5(&[0x01, 0x01, 0x23, 0x00, 0x01])),
        (
            Client(V5),
            vec![0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01],
        ),
        (
            Client(V3_1_1),
            frame(0x82, &cat(&[&[0x00, 0x01], &sub_a(0x02)])),
        ),
        (
            Client(V5),
            frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &sub_a(0x2E)])),
        ),
        (
            Client(V5),
            frame(
                0x82,
                &cat(&[&[0x00, 0x01, 0x00], &str16(b"$share/g/a"), &[0x08]]),
            ),
        ),
        (
            Client(V5),
            frame(
                0x82,
                &cat(&[&[0x00, 0x01], &props(&[0x0B, 0x80, 0x01]), &sub_a(0)]),
            ),
        ),
        (Client(V5), vec![0x40, 0x03, 0x00, 0x01, 0x10]),
        (Client(V5), vec![0x62, 0x03, 0x00, 0x01, 0x92]),
        (Client(V3_1_1), vec![0x20, 0x02, 0x01, 0x00]),
        (Client(V3_1_1), vec![0x20, 0x02, 0x00, 0x05]),
        (Client(V5), vec![0x20, 0x03, 0x00, 0x87, 0x00]),
        (Client(V3_1), vec![0x20, 0x02, 0x00, 0x00]),
        (ClientMax(V3_1_1, 4), vec![0x40, 0x02, 0x00, 0x01]),
        (Client(V5), vec![0xF0, 0x00]),
    ];
    for (ctx, bytes) in cases {
        assert!(!decode_all(ctx, &bytes).is_empty(), "{ctx:?}: {bytes:02X?}");
    }
}

/// MQTT 5 drops the 3.1.1 rule that a password needs a user name.
#[test]
fn v5_allows_password_without_user_name() {
    let wire = connect5(0x42, &[], &cat(&[&str16(b"c"), &str16(b"secret")]));
    let packets = decode_all(Server, &wire);
    let [Packet::Connect(c)] = &packets[..] else {
        panic!("expected one CONNECT, got {packets:?}");
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));
}

// ---------------------------------------------------------------------------
// Packet size
// ---------------------------------------------------------------------------

/// The maximum is enforced from the fixed header alone: five bytes that declare
/// a 256 MB packet are refused without waiting for, or buffering, the body.
#[test]
fn packet_too_large_is_refused_before_the_body_arrives() {
    for (ctx, first) in [(Server, 0x10), (Client(V3_1_1), 0x30), (Client(V5), 0x30)] {
        let mut dec = ctx.decoder();
        dec.set_max_packet_size(64 * 1024);
        let mut buf = BytesMut::from(&[first, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        let err = dec.decode(&mut buf).expect_err("too large");
        assert!(
            matches!(
                err,
                DecodeError::PacketTooLarge {
                    size: 268_435_460,
                    max: 65_536
                }
            ),
            "{ctx:?}: {err:?}"
        );
        assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
        assert!(
            buf.capacity() < 1024,
            "{ctx:?}: buffer grew to {}",
            buf.capacity()
        );
    }
}

/// A packet of exactly the maximum size is accepted; one byte more is not.
#[test]
fn maximum_packet_size_is_inclusive() {
    // PUBLISH "t" with 100 bytes of payload: 2 + 3 + 100 = 105 bytes in all.
    let wire = frame(0x30, &cat(&[&str16(b"t"), &[0u8; 100]]));
    assert_eq!(wire.len(), 105);
    let mut dec = Decoder::with_version(V3_1_1);
    dec.set_max_packet_size(105);
    assert_eq!(dec.max_packet_size(), 105);
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(dec.decode(&mut buf), Ok(Some(Packet::Publish(_)))));
    dec.set_max_packet_size(104);
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 105,
            max: 104
        })
    ));
}

/// With the default maximum (the largest the wire format allows), a header that
/// declares a huge packet waits for the body, but does not make the decoder
/// allocate the whole declared size up front.
#[test]
fn huge_declared_size_does_not_allocate_it() {
    let mut dec = Decoder::with_version(V3_1_1);
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 5);
    assert!(
        buf.capacity() <= 1024 * 1024,
        "reserved {} bytes for a body that has not arrived",
        buf.capacity()
    );
}

/// A frame that is cut short is not an error: the decoder waits.
#[test]
fn truncated_frame_waits() {
    for cut in 0..7 {
        let wire = [0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x01];
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(
            Decoder::with_version(V3_1_1).decode(&mut buf),
            Ok(None),
            "cut at {cut}"
        );
        assert_eq!(buf.len(), cut);
    }
}

// ---------------------------------------------------------------------------
// U+FEFF
// ---------------------------------------------------------------------------

/// [MQTT-1.5.4-3]: a leading U+FEFF is kept by default; `set_strip_bom(true)`
/// strips it (only at the start of a string).
#[test]
fn byte_order_mark_is_kept_by_default_and_stripped_on_request() {
    let topic = "\u{FEFF}a/\u{FEFF}b";
    let wire = publish311(topic.as_bytes());

    let mut dec = Decoder::with_version(V3_1_1);
    let mut buf = BytesMut::from(&wire[..]);
    let Ok(Some(Packet::Publish(p))) = dec.decode(&mut buf) else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(&*p.topic, "\u{FEFF}a/\u{FEFF}b");

    let mut dec = Decoder::with_version(V3_1_1);
    dec.set_strip_bom(true);
    let mut buf = BytesMut::from(&wire[..]);
    let Ok(Some(Packet::Publish(p))) = dec.decode(&mut buf) else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(&*p.topic, "a/\u{FEFF}b");

    // Stripping applies to every string, the client id of CONNECT included.
    let wire = connect311(0x02, &str16("\u{FEFF}id".as_bytes()));
    let mut dec = Decoder::new();
    dec.set_strip_bom(true);
    let mut buf = BytesMut::from(&wire[..]);
    let Ok(Some(Packet::Connect(c))) = dec.decode(&mut buf) else {
        panic!("expected a CONNECT");
    };
    assert_eq!(&*c.client_id, "id");
}

/// A topic that is only a BOM becomes empty when stripped, and an empty topic
/// without an alias is refused.
#[test]
fn stripped_bom_only_topic_is_empty() {
    let wire = publish311("\u{FEFF}".as_bytes());
    let mut dec = Decoder::with_version(V3_1_1);
    dec.set_strip_bom(true);
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::EmptyTopicName));
}

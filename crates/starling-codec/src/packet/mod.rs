//! The packet model shared by MQTT 3.1, 3.1.1 and 5.0.
//!
//! One type per packet, not one per version: MQTT 5 fields (properties, reason
//! codes) are present on every type and simply stay empty, or map to the 3.x
//! return codes, when another version is on the wire.

mod ack;
mod connect;
mod control;
mod publish;
mod subscribe;

pub use ack::Ack;
pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use publish::{Publish, PublishRef};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::version::ProtocolVersion;
use crate::wire::{put_varint, varint_len, Reader, MAX_REMAINING_LENGTH};

pub use crate::kind::{PacketType, QoS};

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The first byte of the fixed header.
    fn header_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(p) => p.header_flags(),
            other => other.packet_type().fixed_flags(),
        };
        (self.packet_type() as u8) << 4 | flags
    }

    /// The remaining length: the size of the packet after its fixed header.
    pub fn remaining_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let v = version;
        match self {
            Packet::Connect(p) => p.body_len(),
            Packet::ConnAck(p) => p.body_len(v),
            Packet::Publish(p) => p.body_len(v),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.body_len(v)
            }
            Packet::Subscribe(p) => p.body_len(v),
            Packet::SubAck(p) => p.body_len(v),
            Packet::Unsubscribe(p) => p.body_len(v),
            Packet::UnsubAck(p) => p.body_len(v),
            Packet::PingReq | Packet::PingResp => Ok(0),
            Packet::Disconnect(p) => p.body_len(v),
            Packet::Auth(p) => p.body_len(v),
        }
    }

    /// The whole size of the encoded packet, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = self.remaining_len(version)?;
        Ok(1 + varint_len(remaining) + remaining)
    }

    /// Appends the packet, encoded for `version`, to `buf`.
    ///
    /// CONNECT is always encoded for its own [`Connect::protocol`]. On error
    /// nothing is written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let v = version;
        if matches!(self, Packet::Auth(_)) && !v.is_v5() {
            return Err(EncodeError::NotInVersion(PacketType::Auth));
        }
        let remaining = self.remaining_len(v)?;
        if remaining > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge(remaining));
        }
        buf.reserve(1 + varint_len(remaining) + remaining);
        buf.put_u8(self.header_byte());
        put_varint(buf, remaining);
        match self {
            Packet::Connect(p) => p.write(buf),
            Packet::ConnAck(p) => p.write(v, buf),
            Packet::Publish(p) => p.write(v, buf),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.write(v, buf)
            }
            Packet::Subscribe(p) => p.write(v, buf),
            Packet::SubAck(p) => p.write(v, buf),
            Packet::Unsubscribe(p) => p.write(v, buf),
            Packet::UnsubAck(p) => p.write(v, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.write(v, buf),
            Packet::Auth(p) => p.write(buf),
        }
        Ok(())
    }

    /// Decodes the body of a packet other than CONNECT, once the version is known.
    pub(crate) fn decode_body(
        ptype: PacketType,
        flags: u8,
        mut r: Reader,
        v: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        if ptype != PacketType::Publish && flags != ptype.fixed_flags() {
            return Err(DecodeError::InvalidFixedHeaderFlags {
                packet: ptype,
                flags,
            });
        }
        let packet = match ptype {
            PacketType::Connect => return Err(DecodeError::SecondConnect),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(&mut r, v)?),
            PacketType::Publish => Packet::Publish(Publish::decode(flags, &mut r, v)?),
            PacketType::PubAck => Packet::PubAck(Ack::decode(ptype, &mut r, v)?),
            PacketType::PubRec => Packet::PubRec(Ack::decode(ptype, &mut r, v)?),
            PacketType::PubRel => Packet::PubRel(Ack::decode(ptype, &mut r, v)?),
            PacketType::PubComp => Packet::PubComp(Ack::decode(ptype, &mut r, v)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(&mut r, v)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(&mut r, v)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(&mut r, v)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(&mut r, v)?),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(&mut r, v)?),
            PacketType::Auth => {
                if !v.is_v5() {
                    return Err(DecodeError::NotInVersion(PacketType::Auth));
                }
                Packet::Auth(Auth::decode(&mut r)?)
            }
        };
        r.finish()?;
        Ok(packet)
    }
}

/// Reads a packet identifier that must not be 0.
pub(crate) fn read_packet_id(r: &mut Reader, ptype: PacketType) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId(ptype)),
        id => Ok(id),
    }
}

/// Reads a reason code and checks it against the codes `ptype` may carry.
pub(crate) fn read_reason(
    r: &mut Reader,
    ptype: PacketType,
    allowed: &[u8],
) -> Result<crate::ReasonCode, DecodeError> {
    let code = r.u8("reason code")?;
    if allowed.contains(&code) {
        Ok(crate::ReasonCode(code))
    } else {
        Err(DecodeError::InvalidReasonCode {
            packet: ptype,
            code,
        })
    }
}

/// Length of a property list on the wire, its length prefix included.
pub(crate) fn props_len(
    props: &crate::Properties,
    ctx: crate::PropertyContext,
) -> Result<(usize, usize), EncodeError> {
    let len = props.wire_len(ctx)?;
    Ok((len, varint_len(len) + len))
}

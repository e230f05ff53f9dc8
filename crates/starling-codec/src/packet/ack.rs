//! PUBACK, PUBREC, PUBREL and PUBCOMP (spec 3.4 to 3.7): one shape, four types.

use bytes::{BufMut, BytesMut};

use super::connect::write_props;
use super::{props_len, read_packet_id, read_reason, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::property::{Properties, PropertyContext};
use crate::reason::{allowed, ReasonCode};
use crate::version::ProtocolVersion;
use crate::wire::Reader;

/// The body of PUBACK, PUBREC, PUBREL or PUBCOMP; the [`super::Packet`] variant says which.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    /// Packet identifier of the PUBLISH being acknowledged.
    pub packet_id: u16,
    /// MQTT 5 reason code; always success in 3.x.
    pub reason_code: ReasonCode,
    /// MQTT 5 properties (reason string, user properties).
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`.
    pub fn new(packet_id: u16) -> Self {
        Ack {
            packet_id,
            ..Ack::default()
        }
    }

    pub(crate) fn decode(
        ptype: PacketType,
        r: &mut Reader,
        v: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r, ptype)?;
        let mut ack = Ack::new(packet_id);
        // MQTT 5: reason code and properties may be omitted (spec 3.4.2.1).
        if v.is_v5() && !r.is_empty() {
            let codes = match ptype {
                PacketType::PubAck | PacketType::PubRec => allowed::PUBACK,
                _ => allowed::PUBREL,
            };
            ack.reason_code = read_reason(r, ptype, codes)?;
            if !r.is_empty() {
                ack.properties = Properties::decode(r, PropertyContext::Ack)?;
            }
        }
        Ok(ack)
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.packet_id == 0 {
            return Err(EncodeError::InvalidValue("packet identifier 0"));
        }
        if !v.is_v5() {
            return Ok(2);
        }
        let (plen, total) = props_len(&self.properties, PropertyContext::Ack)?;
        Ok(match (self.reason_code == ReasonCode::SUCCESS, plen) {
            (true, 0) => 2,
            (false, 0) => 3,
            _ => 3 + total,
        })
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if !v.is_v5() {
            return;
        }
        let has_props = !self.properties.is_empty();
        if self.reason_code != ReasonCode::SUCCESS || has_props {
            buf.put_u8(self.reason_code.0);
        }
        if has_props {
            write_props(&self.properties, PropertyContext::Ack, buf);
        }
    }
}

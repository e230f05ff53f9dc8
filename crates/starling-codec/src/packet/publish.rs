//! PUBLISH (spec 3.3).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::connect::write_props;
use super::{props_len, read_packet_id, PacketType, QoS};
use crate::error::{DecodeError, EncodeError};
use crate::property::{Properties, PropertyContext};
use crate::topic::has_wildcard;
use crate::version::ProtocolVersion;
use crate::wire::{check_len, put_binary, Reader};

/// PUBLISH: an application message, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// DUP: this is a resend of an earlier attempt.
    pub dup: bool,
    /// Quality of service.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; may be empty in MQTT 5 when a topic alias stands for it.
    pub topic: ByteString,
    /// Packet identifier; 0 for QoS 0.
    pub packet_id: u16,
    /// MQTT 5 PUBLISH properties.
    pub properties: Properties,
    /// Application payload, shared with the receive buffer.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 message with no properties.
    pub fn new(topic: impl Into<ByteString>, payload: impl Into<Bytes>) -> Self {
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            ..Publish::default()
        }
    }

    pub(crate) fn header_flags(&self) -> u8 {
        u8::from(self.dup) << 3 | (self.qos as u8) << 1 | u8::from(self.retain)
    }

    pub(crate) fn decode(
        flags: u8,
        r: &mut Reader,
        v: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let dup = flags & 0x08 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let retain = flags & 0x01 != 0;
        let topic = r.string("topic name")?;
        if has_wildcard(&topic) {
            return Err(DecodeError::WildcardInTopicName);
        }
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            read_packet_id(r, PacketType::Publish)?
        };
        let properties = if v.is_v5() {
            Properties::decode(r, PropertyContext::Publish)?
        } else {
            Properties::default()
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicName);
        }
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        check_len(self.topic.len(), "topic name")?;
        let mut len = 2 + self.topic.len() + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            if self.packet_id == 0 {
                return Err(EncodeError::InvalidValue("packet identifier 0"));
            }
            len += 2;
        }
        if v.is_v5() {
            len += props_len(&self.properties, PropertyContext::Publish)?.1;
        }
        Ok(len)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        put_binary(buf, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if v.is_v5() {
            write_props(&self.properties, PropertyContext::Publish, buf);
        }
        buf.put_slice(&self.payload);
    }
}

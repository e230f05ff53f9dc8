//! PUBLISH (spec 3.3).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::connect::write_props;
use super::{props_len, read_packet_id, PacketType, QoS};
use crate::error::{DecodeError, EncodeError};
use crate::property::{Properties, PropertyContext};
use crate::topic::has_wildcard;
use crate::version::ProtocolVersion;
use crate::wire::{check_len, put_binary, put_varint, varint_len, Reader, MAX_REMAINING_LENGTH};

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

    /// The same PUBLISH, borrowed.
    pub fn borrowed(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            properties: &self.properties,
            payload: &self.payload,
        }
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        self.borrowed().body_len(v)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        self.borrowed().write(v, buf);
    }
}

/// A PUBLISH to encode from borrowed parts: a broker sends a stored message
/// this way without building a [`Publish`] (no reference counts touched, no
/// properties copied).
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// DUP: this is a resend of an earlier attempt.
    pub dup: bool,
    /// Quality of service.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name.
    pub topic: &'a str,
    /// Packet identifier; 0 for QoS 0.
    pub packet_id: u16,
    /// MQTT 5 PUBLISH properties (ignored in 3.x).
    pub properties: &'a Properties,
    /// Application payload.
    pub payload: &'a [u8],
}

impl PublishRef<'_> {
    fn header_byte(&self) -> u8 {
        (PacketType::Publish as u8) << 4
            | u8::from(self.dup) << 3
            | (self.qos as u8) << 1
            | u8::from(self.retain)
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
            len += props_len(self.properties, PropertyContext::Publish)?.1;
        }
        Ok(len)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        put_binary(buf, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if v.is_v5() {
            write_props(self.properties, PropertyContext::Publish, buf);
        }
        buf.put_slice(self.payload);
    }

    /// The size of the whole packet, fixed header included.
    pub fn encoded_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = self.body_len(v)?;
        Ok(1 + varint_len(remaining) + remaining)
    }

    /// Appends the packet to `buf`, exactly as [`crate::Packet::encode`]
    /// would the equivalent [`Publish`].
    pub fn encode(&self, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let remaining = self.body_len(v)?;
        if remaining > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge(remaining));
        }
        buf.reserve(1 + varint_len(remaining) + remaining);
        buf.put_u8(self.header_byte());
        put_varint(buf, remaining);
        self.write(v, buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Packet;

    #[test]
    fn a_borrowed_publish_encodes_as_the_owned_one() {
        let mut p = Publish::new("a/b", Bytes::from_static(b"payload"));
        let mut with_props = p.clone();
        with_props.qos = QoS::ExactlyOnce;
        with_props.packet_id = 7;
        with_props.retain = true;
        with_props.dup = true;
        with_props.properties.user_properties = vec![("k".into(), "v".into())];
        with_props.properties.content_type = Some("text/plain".into());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = 1;
        for publish in [Publish::new("t", Bytes::new()), p, with_props] {
            for v in [
                ProtocolVersion::V3_1,
                ProtocolVersion::V3_1_1,
                ProtocolVersion::V5,
            ] {
                let mut owned = BytesMut::new();
                Packet::Publish(publish.clone())
                    .encode(v, &mut owned)
                    .expect("encodes");
                let mut borrowed = BytesMut::new();
                let r = publish.borrowed();
                r.encode(v, &mut borrowed).expect("encodes");
                assert_eq!(owned, borrowed, "{v:?} {publish:?}");
                assert_eq!(r.encoded_len(v).ok(), Some(owned.len()));
            }
        }
        let mut zero = Publish::new("t", Bytes::new());
        zero.qos = QoS::AtLeastOnce;
        assert!(zero
            .borrowed()
            .encode(ProtocolVersion::V5, &mut BytesMut::new())
            .is_err());
    }
}

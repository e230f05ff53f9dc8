//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (spec 3.8 to 3.11).

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::connect::write_props;
use super::{props_len, read_packet_id, read_reason, PacketType, QoS};
use crate::error::{DecodeError, EncodeError};
use crate::property::{Properties, PropertyContext};
use crate::reason::{allowed, ReasonCode};
use crate::version::ProtocolVersion;
use crate::wire::{check_len, put_binary, Reader};

/// When retained messages are sent for a new subscription (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// 2: never send them for this subscribe.
    DoNotSend = 2,
}

/// The subscription options byte (spec 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// MQTT 5 No Local: do not deliver the client's own publications.
    pub no_local: bool,
    /// MQTT 5 Retain As Published: keep the RETAIN flag as the publisher set it.
    pub retain_as_published: bool,
    /// MQTT 5 Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn to_byte(self) -> u8 {
        self.qos as u8
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | (self.retain_handling as u8) << 4
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter as sent; validated by the receiver, not by the codec, so
    /// that an invalid filter earns a SUBACK failure code rather than a close.
    pub filter: ByteString,
    /// Subscription options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// MQTT 5 properties (subscription identifier, user properties).
    pub properties: Properties,
    /// At least one filter.
    pub subscriptions: Vec<Subscription>,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r, PacketType::Subscribe)?;
        let properties = if v.is_v5() {
            Properties::decode(r, PropertyContext::Subscribe)?
        } else {
            Properties::default()
        };
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = r.string("topic filter")?;
            let byte = r.u8("subscription options")?;
            let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
            if byte & reserved != 0 {
                return Err(DecodeError::SubscriptionOptionsReserved);
            }
            let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidQoS)?;
            let retain_handling = match (byte >> 4) & 0x03 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(DecodeError::InvalidRetainHandling),
            };
            let options = SubscriptionOptions {
                qos,
                no_local: byte & 0x04 != 0,
                retain_as_published: byte & 0x08 != 0,
                retain_handling,
            };
            if options.no_local && filter.starts_with("$share/") {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(DecodeError::EmptySubscribe);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.packet_id == 0 {
            return Err(EncodeError::InvalidValue("packet identifier 0"));
        }
        if self.subscriptions.is_empty() {
            return Err(EncodeError::InvalidValue(
                "SUBSCRIBE without a topic filter",
            ));
        }
        let mut len = 2;
        if v.is_v5() {
            len += props_len(&self.properties, PropertyContext::Subscribe)?.1;
        }
        for s in &self.subscriptions {
            check_len(s.filter.len(), "topic filter")?;
            len += 3 + s.filter.len();
        }
        Ok(len)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            write_props(&self.properties, PropertyContext::Subscribe, buf);
        }
        for s in &self.subscriptions {
            put_binary(buf, s.filter.as_bytes());
            let byte = if v.is_v5() {
                s.options.to_byte()
            } else {
                s.options.qos as u8
            };
            buf.put_u8(byte);
        }
    }
}

/// SUBACK: one reason code per filter of the SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// MQTT 5 properties (reason string, user properties).
    pub properties: Properties,
    /// Granted QoS or failure, per filter. In 3.x every failure is sent as 0x80.
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r, PacketType::SubAck)?;
        let properties = if v.is_v5() {
            Properties::decode(r, PropertyContext::SubAck)?
        } else {
            Properties::default()
        };
        let codes = if v.is_v5() {
            allowed::SUBACK
        } else {
            allowed::SUBACK_V3
        };
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            reason_codes.push(read_reason(r, PacketType::SubAck, codes)?);
        }
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.packet_id == 0 {
            return Err(EncodeError::InvalidValue("packet identifier 0"));
        }
        let mut len = 2 + self.reason_codes.len();
        if v.is_v5() {
            len += props_len(&self.properties, PropertyContext::SubAck)?.1;
        }
        Ok(len)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            write_props(&self.properties, PropertyContext::SubAck, buf);
            buf.extend(self.reason_codes.iter().map(|c| c.0));
        } else {
            buf.extend(
                self.reason_codes
                    .iter()
                    .map(|c| if c.is_error() { 0x80 } else { c.0 }),
            );
        }
    }
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// MQTT 5 properties (user properties).
    pub properties: Properties,
    /// At least one filter.
    pub filters: Vec<ByteString>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r, PacketType::Unsubscribe)?;
        let properties = if v.is_v5() {
            Properties::decode(r, PropertyContext::Unsubscribe)?
        } else {
            Properties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.string("topic filter")?);
        }
        if filters.is_empty() {
            return Err(DecodeError::EmptyUnsubscribe);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.packet_id == 0 {
            return Err(EncodeError::InvalidValue("packet identifier 0"));
        }
        if self.filters.is_empty() {
            return Err(EncodeError::InvalidValue(
                "UNSUBSCRIBE without a topic filter",
            ));
        }
        let mut len = 2;
        if v.is_v5() {
            len += props_len(&self.properties, PropertyContext::Unsubscribe)?.1;
        }
        for f in &self.filters {
            check_len(f.len(), "topic filter")?;
            len += 2 + f.len();
        }
        Ok(len)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            write_props(&self.properties, PropertyContext::Unsubscribe, buf);
        }
        for f in &self.filters {
            put_binary(buf, f.as_bytes());
        }
    }
}

/// UNSUBACK. MQTT 3.x carries only the packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// MQTT 5 properties (reason string, user properties).
    pub properties: Properties,
    /// MQTT 5: one reason code per filter. Empty in 3.x.
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r, PacketType::UnsubAck)?;
        let mut ack = UnsubAck {
            packet_id,
            properties: Properties::default(),
            reason_codes: Vec::new(),
        };
        if v.is_v5() {
            ack.properties = Properties::decode(r, PropertyContext::UnsubAck)?;
            while !r.is_empty() {
                ack.reason_codes
                    .push(read_reason(r, PacketType::UnsubAck, allowed::UNSUBACK)?);
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
        Ok(2 + props_len(&self.properties, PropertyContext::UnsubAck)?.1 + self.reason_codes.len())
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if v.is_v5() {
            write_props(&self.properties, PropertyContext::UnsubAck, buf);
            buf.extend(self.reason_codes.iter().map(|c| c.0));
        }
    }
}

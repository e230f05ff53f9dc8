//! MQTT 5 properties (spec section 2.2.2): every property with its type, the packets
//! that may carry it, and the range rules on its value.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::kind::QoS;
use crate::wire::{check_len, put_binary, put_varint, varint_len, Reader};

pub use crate::kind::PropertyId;

/// The place a property list appears: a packet type, or the will in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Will => "will properties",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::Ack => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }
}

impl PropertyId {
    /// The property with this identifier, if MQTT 5 defines one.
    pub fn from_u8(id: u8) -> Option<Self> {
        use PropertyId::*;
        Some(match id {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQoS,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// Whether this property may appear in `ctx` (spec table 2-4).
    pub fn allowed_in(self, ctx: PropertyContext) -> bool {
        use PropertyContext as C;
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData => matches!(ctx, C::Publish | C::Will),
            SubscriptionIdentifier => matches!(ctx, C::Publish | C::Subscribe),
            SessionExpiryInterval => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQoS
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => ctx == C::ConnAck,
            AuthenticationMethod | AuthenticationData => {
                matches!(ctx, C::Connect | C::ConnAck | C::Auth)
            }
            RequestProblemInformation | RequestResponseInformation => ctx == C::Connect,
            WillDelayInterval => ctx == C::Will,
            ServerReference => matches!(ctx, C::ConnAck | C::Disconnect),
            ReasonString => !matches!(
                ctx,
                C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe
            ),
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => {
                matches!(ctx, C::Connect | C::ConnAck)
            }
            TopicAlias => ctx == C::Publish,
            UserProperty => true,
        }
    }
}

/// The property list of an MQTT 5 packet or will. Every field is optional; an
/// MQTT 3.x packet always has an empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Properties {
    /// `true` when the payload is UTF-8 text.
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    /// One in SUBSCRIBE; one per matching subscription in PUBLISH.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub reason_string: Option<ByteString>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

/// One property value as it goes on the wire.
enum Value<'a> {
    Byte(u8),
    Two(u16),
    Four(u32),
    VarInt(u32),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::Byte(_) => 1,
            Value::Two(_) => 2,
            Value::Four(_) => 4,
            Value::VarInt(v) => varint_len(*v as usize),
            Value::Str(s) => 2 + s.len(),
            Value::Bin(b) => 2 + b.len(),
            Value::Pair(k, v) => 4 + k.len() + v.len(),
        }
    }
}

fn set<T>(slot: &mut Option<T>, id: PropertyId, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader, id: PropertyId) -> Result<bool, DecodeError> {
    match r.u8("property value")? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

/// The largest subscription identifier (a variable byte integer).
pub const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Decodes a property length and the list it covers.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        use PropertyId::*;
        let len = r.varint("property length")? as usize;
        let mut r = r.sub(len, "properties")?;
        let mut p = Properties::default();
        while !r.is_empty() {
            let raw = r.varint("property identifier")?;
            let id = u8::try_from(raw)
                .ok()
                .and_then(PropertyId::from_u8)
                .ok_or(DecodeError::UnknownProperty(raw.min(255) as u8))?;
            if !id.allowed_in(ctx) {
                return Err(DecodeError::PropertyNotAllowed {
                    property: id,
                    context: ctx.name(),
                });
            }
            const V: &str = "property value";
            match id {
                PayloadFormatIndicator => {
                    set(&mut p.payload_format_indicator, id, flag(&mut r, id)?)?
                }
                MessageExpiryInterval => set(&mut p.message_expiry_interval, id, r.u32(V)?)?,
                ContentType => set(&mut p.content_type, id, r.string("content type")?)?,
                ResponseTopic => {
                    let topic = r.string("response topic")?;
                    if topic.is_empty() || topic.contains(['+', '#']) {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set(&mut p.response_topic, id, topic)?
                }
                CorrelationData => set(&mut p.correlation_data, id, r.binary(V)?)?,
                SubscriptionIdentifier => {
                    let v = r.varint(V)?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    if ctx == PropertyContext::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::DuplicateProperty(id));
                    }
                    p.subscription_identifiers.push(v);
                }
                SessionExpiryInterval => set(&mut p.session_expiry_interval, id, r.u32(V)?)?,
                AssignedClientIdentifier => set(
                    &mut p.assigned_client_identifier,
                    id,
                    r.string("assigned client identifier")?,
                )?,
                ServerKeepAlive => set(&mut p.server_keep_alive, id, r.u16(V)?)?,
                AuthenticationMethod => set(
                    &mut p.authentication_method,
                    id,
                    r.string("authentication method")?,
                )?,
                AuthenticationData => set(&mut p.authentication_data, id, r.binary(V)?)?,
                RequestProblemInformation => {
                    set(&mut p.request_problem_information, id, flag(&mut r, id)?)?
                }
                WillDelayInterval => set(&mut p.will_delay_interval, id, r.u32(V)?)?,
                RequestResponseInformation => {
                    set(&mut p.request_response_information, id, flag(&mut r, id)?)?
                }
                ResponseInformation => set(
                    &mut p.response_information,
                    id,
                    r.string("response information")?,
                )?,
                ServerReference => set(&mut p.server_reference, id, r.string("server reference")?)?,
                ReasonString => set(&mut p.reason_string, id, r.string("reason string")?)?,
                ReceiveMaximum => {
                    let v = r.u16(V)?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set(&mut p.receive_maximum, id, v)?
                }
                TopicAliasMaximum => set(&mut p.topic_alias_maximum, id, r.u16(V)?)?,
                TopicAlias => {
                    let v = r.u16(V)?;
                    if v == 0 {
                        return Err(DecodeError::TopicAliasZero);
                    }
                    set(&mut p.topic_alias, id, v)?
                }
                MaximumQoS => {
                    let qos = match r.u8(V)? {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => return Err(DecodeError::InvalidPropertyValue(id)),
                    };
                    set(&mut p.maximum_qos, id, qos)?
                }
                RetainAvailable => set(&mut p.retain_available, id, flag(&mut r, id)?)?,
                UserProperty => {
                    let key = r.string("user property name")?;
                    let value = r.string("user property value")?;
                    p.user_properties.push((key, value));
                }
                MaximumPacketSize => {
                    let v = r.u32(V)?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set(&mut p.maximum_packet_size, id, v)?
                }
                WildcardSubscriptionAvailable => set(
                    &mut p.wildcard_subscription_available,
                    id,
                    flag(&mut r, id)?,
                )?,
                SubscriptionIdentifierAvailable => set(
                    &mut p.subscription_identifier_available,
                    id,
                    flag(&mut r, id)?,
                )?,
                SharedSubscriptionAvailable => {
                    set(&mut p.shared_subscription_available, id, flag(&mut r, id)?)?
                }
            }
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(p)
    }

    /// Calls `f` with each property that is set, in identifier order.
    fn visit<E>(&self, mut f: impl FnMut(PropertyId, Value<'_>) -> Result<(), E>) -> Result<(), E> {
        use PropertyId::*;
        fn b(v: bool) -> u8 {
            u8::from(v)
        }
        if let Some(v) = self.payload_format_indicator {
            f(PayloadFormatIndicator, Value::Byte(b(v)))?;
        }
        if let Some(v) = self.message_expiry_interval {
            f(MessageExpiryInterval, Value::Four(v))?;
        }
        if let Some(v) = &self.content_type {
            f(ContentType, Value::Str(v))?;
        }
        if let Some(v) = &self.response_topic {
            f(ResponseTopic, Value::Str(v))?;
        }
        if let Some(v) = &self.correlation_data {
            f(CorrelationData, Value::Bin(v))?;
        }
        for v in &self.subscription_identifiers {
            f(SubscriptionIdentifier, Value::VarInt(*v))?;
        }
        if let Some(v) = self.session_expiry_interval {
            f(SessionExpiryInterval, Value::Four(v))?;
        }
        if let Some(v) = &self.assigned_client_identifier {
            f(AssignedClientIdentifier, Value::Str(v))?;
        }
        if let Some(v) = self.server_keep_alive {
            f(ServerKeepAlive, Value::Two(v))?;
        }
        if let Some(v) = &self.authentication_method {
            f(AuthenticationMethod, Value::Str(v))?;
        }
        if let Some(v) = &self.authentication_data {
            f(AuthenticationData, Value::Bin(v))?;
        }
        if let Some(v) = self.request_problem_information {
            f(RequestProblemInformation, Value::Byte(b(v)))?;
        }
        if let Some(v) = self.will_delay_interval {
            f(WillDelayInterval, Value::Four(v))?;
        }
        if let Some(v) = self.request_response_information {
            f(RequestResponseInformation, Value::Byte(b(v)))?;
        }
        if let Some(v) = &self.response_information {
            f(ResponseInformation, Value::Str(v))?;
        }
        if let Some(v) = &self.server_reference {
            f(ServerReference, Value::Str(v))?;
        }
        if let Some(v) = &self.reason_string {
            f(ReasonString, Value::Str(v))?;
        }
        if let Some(v) = self.receive_maximum {
            f(ReceiveMaximum, Value::Two(v))?;
        }
        if let Some(v) = self.topic_alias_maximum {
            f(TopicAliasMaximum, Value::Two(v))?;
        }
        if let Some(v) = self.topic_alias {
            f(TopicAlias, Value::Two(v))?;
        }
        if let Some(v) = self.maximum_qos {
            f(MaximumQoS, Value::Byte(v as u8))?;
        }
        if let Some(v) = self.retain_available {
            f(RetainAvailable, Value::Byte(b(v)))?;
        }
        for (k, v) in &self.user_properties {
            f(UserProperty, Value::Pair(k, v))?;
        }
        if let Some(v) = self.maximum_packet_size {
            f(MaximumPacketSize, Value::Four(v))?;
        }
        if let Some(v) = self.wildcard_subscription_available {
            f(WildcardSubscriptionAvailable, Value::Byte(b(v)))?;
        }
        if let Some(v) = self.subscription_identifier_available {
            f(SubscriptionIdentifierAvailable, Value::Byte(b(v)))?;
        }
        if let Some(v) = self.shared_subscription_available {
            f(SharedSubscriptionAvailable, Value::Byte(b(v)))?;
        }
        Ok(())
    }

    /// Length of the property list on the wire, without its length prefix. Checks
    /// that every property is allowed in `ctx` and that every field fits.
    pub(crate) fn wire_len(&self, ctx: PropertyContext) -> Result<usize, EncodeError> {
        let mut total = 0;
        self.visit(|id, value| {
            if !id.allowed_in(ctx) {
                return Err(EncodeError::InvalidValue(ctx.name()));
            }
            match value {
                Value::Str(s) => check_len(s.len(), "property")?,
                Value::Bin(s) => check_len(s.len(), "property")?,
                Value::Pair(k, v) => {
                    check_len(k.len(), "user property")?;
                    check_len(v.len(), "user property")?;
                }
                Value::VarInt(0) => {
                    return Err(EncodeError::InvalidValue("subscription identifier"))
                }
                Value::VarInt(v) if v > MAX_SUBSCRIPTION_IDENTIFIER => {
                    return Err(EncodeError::InvalidValue("subscription identifier"))
                }
                _ => {}
            }
            total += 1 + value.len();
            Ok(())
        })?;
        Ok(total)
    }

    /// Writes the property length and the list; `len` comes from [`Self::wire_len`].
    pub(crate) fn encode(&self, len: usize, buf: &mut BytesMut) {
        put_varint(buf, len);
        let _ = self.visit(|id, value| -> Result<(), ()> {
            buf.put_u8(id as u8);
            match value {
                Value::Byte(v) => buf.put_u8(v),
                Value::Two(v) => buf.put_u16(v),
                Value::Four(v) => buf.put_u32(v),
                Value::VarInt(v) => put_varint(buf, v as usize),
                Value::Str(s) => put_binary(buf, s.as_bytes()),
                Value::Bin(s) => put_binary(buf, s),
                Value::Pair(k, v) => {
                    put_binary(buf, k.as_bytes());
                    put_binary(buf, v.as_bytes());
                }
            }
            Ok(())
        });
    }
}

//! CONNECT (spec 3.1) and CONNACK (spec 3.2).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{props_len, read_reason, PacketType, QoS};
use crate::error::{DecodeError, EncodeError};
use crate::property::{Properties, PropertyContext};
use crate::reason::{allowed, ConnectReturnCode, ReasonCode};
use crate::topic::has_wildcard;
use crate::version::ProtocolVersion;
use crate::wire::{check_len, put_binary, Reader};

/// The will message a client leaves in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: ByteString,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will publication.
    pub qos: QoS,
    /// Whether the will is published retained.
    pub retain: bool,
    /// MQTT 5 will properties (delay interval, expiry, content type, ...).
    pub properties: Properties,
}

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version named by the protocol name and level.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// MQTT 5 CONNECT properties.
    pub properties: Properties,
    /// Client identifier; may be empty.
    pub client_id: ByteString,
    /// The will, if the will flag is set.
    pub will: Option<Will>,
    /// User name, if the user name flag is set.
    pub username: Option<ByteString>,
    /// Password, if the password flag is set.
    pub password: Option<Bytes>,
}

impl Connect {
    /// A CONNECT with the given version and client id and every other field at its default.
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<ByteString>) -> Self {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// Reads the protocol name and level that open CONNECT's variable header.
    pub(crate) fn read_protocol(r: &mut Reader) -> Result<ProtocolVersion, DecodeError> {
        let name = r.binary("protocol name")?;
        let level = r.u8("protocol level")?;
        let name_str = String::from_utf8_lossy(&name).into_owned();
        ProtocolVersion::from_name_and_level(&name_str, level).ok_or_else(|| {
            if name_str == "MQTT" || name_str == "MQIsdp" {
                DecodeError::UnsupportedProtocolLevel {
                    name: name_str,
                    level,
                }
            } else {
                DecodeError::InvalidProtocolName(name_str)
            }
        })
    }

    /// Decodes the rest of CONNECT, after [`Self::read_protocol`].
    pub(crate) fn decode_rest(v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let flags = r.u8("connect flags")?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        if !will_flag && will_qos != 0 {
            return Err(DecodeError::WillQoSWithoutWill);
        }
        if !will_flag && will_retain {
            return Err(DecodeError::WillRetainWithoutWill);
        }
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillQoS)?;
        if !v.is_v5() && password_flag && !username_flag {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if v.is_v5() {
            Properties::decode(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string("client identifier")?;
        let will = if will_flag {
            let properties = if v.is_v5() {
                Properties::decode(r, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = r.string("will topic")?;
            if topic.is_empty() {
                return Err(DecodeError::EmptyTopicName);
            }
            if has_wildcard(&topic) {
                return Err(DecodeError::WildcardInTopicName);
            }
            let payload = r.binary("will payload")?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if username_flag {
            Some(r.string("user name")?)
        } else {
            None
        };
        let password = if password_flag {
            Some(r.binary("password")?)
        } else {
            None
        };
        r.finish()?;
        Ok(Connect {
            protocol: v,
            clean_start,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos as u8) << 3;
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        flags
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v = self.protocol;
        let mut len = 2 + v.protocol_name().len() + 1 + 1 + 2;
        if v.is_v5() {
            len += props_len(&self.properties, PropertyContext::Connect)?.1;
        }
        check_len(self.client_id.len(), "client identifier")?;
        len += 2 + self.client_id.len();
        if let Some(will) = &self.will {
            if v.is_v5() {
                len += props_len(&will.properties, PropertyContext::Will)?.1;
            }
            check_len(will.topic.len(), "will topic")?;
            check_len(will.payload.len(), "will payload")?;
            len += 4 + will.topic.len() + will.payload.len();
        }
        if let Some(username) = &self.username {
            check_len(username.len(), "user name")?;
            len += 2 + username.len();
        }
        if let Some(password) = &self.password {
            check_len(password.len(), "password")?;
            len += 2 + password.len();
        }
        if !v.is_v5() && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::InvalidValue("password without user name"));
        }
        Ok(len)
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        let v = self.protocol;
        put_binary(buf, v.protocol_name().as_bytes());
        buf.put_u8(v.level());
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        if v.is_v5() {
            write_props(&self.properties, PropertyContext::Connect, buf);
        }
        put_binary(buf, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v.is_v5() {
                write_props(&will.properties, PropertyContext::Will, buf);
            }
            put_binary(buf, will.topic.as_bytes());
            put_binary(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_binary(buf, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_binary(buf, password);
        }
    }
}

/// Writes a property list whose length was already validated by `body_len`.
pub(crate) fn write_props(props: &Properties, ctx: PropertyContext, buf: &mut BytesMut) {
    let len = props.wire_len(ctx).unwrap_or(0);
    props.encode(len, buf);
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// The MQTT 5 reason code; 3.x return codes map to and from it.
    pub reason_code: ReasonCode,
    /// MQTT 5 CONNACK properties.
    pub properties: Properties,
}

impl Default for ReasonCode {
    fn default() -> Self {
        ReasonCode::SUCCESS
    }
}

impl ConnAck {
    /// The 3.x return code this CONNACK carries.
    pub fn return_code(&self) -> ConnectReturnCode {
        ConnectReturnCode::from_reason_code(self.reason_code)
    }

    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8("acknowledge flags")?;
        // MQTT 3.1 has no session present flag: the whole byte is reserved.
        let reserved = if v == ProtocolVersion::V3_1 {
            0xFF
        } else {
            0xFE
        };
        if flags & reserved != 0 {
            return Err(DecodeError::ConnAckReservedFlags);
        }
        let session_present = flags & 0x01 != 0;
        let (reason_code, properties) = if v.is_v5() {
            let code = read_reason(r, PacketType::ConnAck, allowed::CONNACK)?;
            (code, Properties::decode(r, PropertyContext::ConnAck)?)
        } else {
            let raw = r.u8("return code")?;
            let code = ConnectReturnCode::from_u8(raw).ok_or(DecodeError::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: raw,
            })?;
            (code.to_reason_code(), Properties::default())
        };
        if session_present && reason_code.is_error() {
            return Err(DecodeError::SessionPresentOnError);
        }
        Ok(ConnAck {
            session_present,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if v.is_v5() {
            Ok(2 + props_len(&self.properties, PropertyContext::ConnAck)?.1)
        } else {
            Ok(2)
        }
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        // MQTT 3.1 has no session present flag: the byte is reserved.
        let present = self.session_present && v != ProtocolVersion::V3_1;
        buf.put_u8(u8::from(present));
        if v.is_v5() {
            buf.put_u8(self.reason_code.0);
            write_props(&self.properties, PropertyContext::ConnAck, buf);
        } else {
            buf.put_u8(self.return_code() as u8);
        }
    }
}

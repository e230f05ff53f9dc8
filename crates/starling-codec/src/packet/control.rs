//! DISCONNECT (spec 3.14) and AUTH (spec 3.15).

use bytes::{BufMut, BytesMut};

use super::connect::write_props;
use super::{props_len, read_reason, PacketType};
use crate::error::{DecodeError, EncodeError};
use crate::property::{Properties, PropertyContext};
use crate::reason::{allowed, ReasonCode};
use crate::version::ProtocolVersion;
use crate::wire::Reader;

/// DISCONNECT. In 3.x it has no body; MQTT 5 adds a reason code and properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Why the connection ends.
    pub reason_code: ReasonCode,
    /// MQTT 5 properties (session expiry, reason string, server reference, user properties).
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with this reason and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Disconnect {
            reason_code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let mut d = Disconnect::default();
        if v.is_v5() && !r.is_empty() {
            d.reason_code = read_reason(r, PacketType::Disconnect, allowed::DISCONNECT)?;
            if !r.is_empty() {
                d.properties = Properties::decode(r, PropertyContext::Disconnect)?;
            }
        }
        Ok(d)
    }

    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() {
            return Ok(0);
        }
        let (plen, total) = props_len(&self.properties, PropertyContext::Disconnect)?;
        Ok(match (self.reason_code == ReasonCode::SUCCESS, plen) {
            (true, 0) => 0,
            (false, 0) => 1,
            _ => 1 + total,
        })
    }

    pub(crate) fn write(&self, v: ProtocolVersion, buf: &mut BytesMut) {
        if !v.is_v5() {
            return;
        }
        let has_props = !self.properties.is_empty();
        if self.reason_code != ReasonCode::SUCCESS || has_props {
            buf.put_u8(self.reason_code.0);
        }
        if has_props {
            write_props(&self.properties, PropertyContext::Disconnect, buf);
        }
    }
}

/// AUTH: an exchange of extended authentication (MQTT 5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success, continue authentication, or re-authenticate.
    pub reason_code: ReasonCode,
    /// Authentication method and data, reason string, user properties.
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut a = Auth::default();
        if !r.is_empty() {
            a.reason_code = read_reason(r, PacketType::Auth, allowed::AUTH)?;
            if !r.is_empty() {
                a.properties = Properties::decode(r, PropertyContext::Auth)?;
            }
        }
        Ok(a)
    }

    pub(crate) fn body_len(&self, _v: ProtocolVersion) -> Result<usize, EncodeError> {
        let (plen, total) = props_len(&self.properties, PropertyContext::Auth)?;
        Ok(match (self.reason_code == ReasonCode::SUCCESS, plen) {
            (true, 0) => 0,
            _ => 1 + total,
        })
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        if self.reason_code != ReasonCode::SUCCESS || !self.properties.is_empty() {
            buf.put_u8(self.reason_code.0);
            write_props(&self.properties, PropertyContext::Auth, buf);
        }
    }
}

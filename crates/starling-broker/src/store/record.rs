//! The store's record format: each value is a version byte, its fields, and a
//! CRC-32 of everything before it, so a torn or corrupt record is detected on
//! load and skipped instead of stopping the broker.
//!
//! Messages are kept as MQTT 5 PUBLISH packets encoded by our own codec, so the
//! store needs no second serialisation of topics, payloads and properties.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use starling_codec::{Decoder, Packet, ProtocolVersion, Publish, QoS, SubscriptionOptions};

const VERSION: u8 = 1;

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its fixed fields.
    #[error("record truncated")]
    Truncated,
    /// The checksum does not match.
    #[error("record checksum mismatch")]
    Checksum,
    /// A format version this build does not know.
    #[error("unknown record version {0}")]
    Version(u8),
    /// The embedded packet is not a valid PUBLISH.
    #[error("bad embedded packet: {0}")]
    Packet(String),
}

fn seal(mut buf: BytesMut) -> Bytes {
    let crc = crc32fast::hash(&buf);
    buf.put_u32(crc);
    buf.freeze()
}

/// Checks the CRC and version; returns the fields after the version byte.
fn open(raw: &[u8]) -> Result<&[u8], RecordError> {
    if raw.len() < 5 {
        return Err(RecordError::Truncated);
    }
    let (body, crc) = raw.split_at(raw.len() - 4);
    let crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err(RecordError::Checksum);
    }
    match body[0] {
        VERSION => Ok(&body[1..]),
        v => Err(RecordError::Version(v)),
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), RecordError> {
    if buf.len() < n {
        Err(RecordError::Truncated)
    } else {
        Ok(())
    }
}

fn encode_publish(publish: &Publish, buf: &mut BytesMut) -> Result<(), RecordError> {
    Packet::Publish(publish.clone())
        .encode(ProtocolVersion::V5, buf)
        .map_err(|e| RecordError::Packet(e.to_string()))
}

fn decode_publish(raw: &[u8]) -> Result<Publish, RecordError> {
    let mut buf = BytesMut::from(raw);
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    match decoder.decode(&mut buf) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => Ok(p),
        Ok(_) => Err(RecordError::Packet("not exactly one PUBLISH".into())),
        Err(e) => Err(RecordError::Packet(e.to_string())),
    }
}

/// A queued or in-flight message of a session, or a retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// The PUBLISH as it is delivered (QoS, retain flag, subscription ids).
    pub publish: Publish,
    /// Packet identifier used when it was sent; 0 if not sent yet.
    pub packet_id: u16,
    /// QoS 2: PUBREC received, PUBREL pending.
    pub released: bool,
    /// Wall-clock expiry in milliseconds since the Unix epoch; 0 for none.
    pub expires_at_ms: u64,
}

impl MessageRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Result<Bytes, RecordError> {
        let mut buf =
            BytesMut::with_capacity(32 + self.publish.payload.len() + self.publish.topic.len());
        buf.put_u8(VERSION);
        buf.put_u8(u8::from(self.released));
        buf.put_u16(self.packet_id);
        buf.put_u64(self.expires_at_ms);
        let mut publish = self.publish.clone();
        // The codec refuses packet id 0 for QoS > 0; the real id is the field above.
        if publish.qos != QoS::AtMostOnce {
            publish.packet_id = 1;
        }
        publish.dup = false;
        encode_publish(&publish, &mut buf)?;
        Ok(seal(buf))
    }

    /// Decodes a record.
    pub fn decode(raw: &[u8]) -> Result<Self, RecordError> {
        let mut b = open(raw)?;
        need(b, 11)?;
        let released = b.get_u8() != 0;
        let packet_id = b.get_u16();
        let expires_at_ms = b.get_u64();
        let mut publish = decode_publish(b)?;
        publish.packet_id = packet_id;
        Ok(MessageRecord {
            publish,
            packet_id,
            released,
            expires_at_ms,
        })
    }
}

/// A persistent session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// When its connection ended, ms since the Unix epoch; 0 while connected.
    pub disconnected_at_ms: u64,
}

impl SessionRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(17);
        buf.put_u8(VERSION);
        buf.put_u32(self.expiry_interval);
        buf.put_u64(self.disconnected_at_ms);
        seal(buf)
    }

    /// Decodes a record.
    pub fn decode(raw: &[u8]) -> Result<Self, RecordError> {
        let mut b = open(raw)?;
        need(b, 12)?;
        Ok(SessionRecord {
            expiry_interval: b.get_u32(),
            disconnected_at_ms: b.get_u64(),
        })
    }
}

/// A subscription of a persistent session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription identifier.
    pub id: Option<u32>,
}

impl SubscriptionRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Bytes {
        let o = self.options;
        let byte = o.qos as u8
            | u8::from(o.no_local) << 2
            | u8::from(o.retain_as_published) << 3
            | (o.retain_handling as u8) << 4;
        let mut buf = BytesMut::with_capacity(11);
        buf.put_u8(VERSION);
        buf.put_u8(byte);
        buf.put_u32(self.id.unwrap_or(0));
        seal(buf)
    }

    /// Decodes a record.
    pub fn decode(raw: &[u8]) -> Result<Self, RecordError> {
        use starling_codec::RetainHandling as R;
        let mut b = open(raw)?;
        need(b, 5)?;
        let byte = b.get_u8();
        let id = b.get_u32();
        let options = SubscriptionOptions {
            qos: QoS::from_u8(byte & 3).ok_or(RecordError::Truncated)?,
            no_local: byte & 4 != 0,
            retain_as_published: byte & 8 != 0,
            retain_handling: match (byte >> 4) & 3 {
                0 => R::SendAtSubscribe,
                1 => R::SendIfNew,
                _ => R::DoNotSend,
            },
        };
        Ok(SubscriptionRecord {
            options,
            id: (id != 0).then_some(id),
        })
    }
}

/// A will waiting for its delay to run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillRecord {
    /// The will as a PUBLISH.
    pub publish: Publish,
    /// When to publish it, ms since the Unix epoch.
    pub deadline_ms: u64,
    /// User name of its client, for the ACL check.
    pub username: Option<String>,
}

impl WillRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Result<Bytes, RecordError> {
        let mut buf = BytesMut::new();
        buf.put_u8(VERSION);
        buf.put_u64(self.deadline_ms);
        let user = self.username.as_deref().unwrap_or("");
        buf.put_u8(u8::from(self.username.is_some()));
        buf.put_u16(user.len().min(u16::MAX as usize) as u16);
        buf.put_slice(&user.as_bytes()[..user.len().min(u16::MAX as usize)]);
        let mut publish = self.publish.clone();
        if publish.qos != QoS::AtMostOnce {
            publish.packet_id = 1;
        }
        encode_publish(&publish, &mut buf)?;
        Ok(seal(buf))
    }

    /// Decodes a record.
    pub fn decode(raw: &[u8]) -> Result<Self, RecordError> {
        let mut b = open(raw)?;
        need(b, 11)?;
        let deadline_ms = b.get_u64();
        let has_user = b.get_u8() != 0;
        let len = b.get_u16() as usize;
        need(b, len)?;
        let user = String::from_utf8_lossy(&b[..len]).into_owned();
        b.advance(len);
        Ok(WillRecord {
            publish: decode_publish(b)?,
            deadline_ms,
            username: has_user.then_some(user),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Publish {
        let mut p = Publish::new("a/b", Bytes::from_static(b"payload"));
        p.qos = QoS::ExactlyOnce;
        p.packet_id = 7;
        p.retain = true;
        p.properties.subscription_identifiers = vec![3, 9];
        p.properties.user_properties.push(("k".into(), "v".into()));
        p
    }

    #[test]
    fn round_trips() {
        let m = MessageRecord {
            publish: publish(),
            packet_id: 7,
            released: true,
            expires_at_ms: 123,
        };
        assert_eq!(MessageRecord::decode(&m.encode().unwrap()).unwrap(), m);
        let s = SessionRecord {
            expiry_interval: 60,
            disconnected_at_ms: 99,
        };
        assert_eq!(SessionRecord::decode(&s.encode()).unwrap(), s);
        let sub = SubscriptionRecord {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: starling_codec::RetainHandling::SendIfNew,
            },
            id: Some(5),
        };
        assert_eq!(SubscriptionRecord::decode(&sub.encode()).unwrap(), sub);
        let mut will_pub = publish();
        will_pub.packet_id = 1;
        let w = WillRecord {
            publish: will_pub,
            deadline_ms: 5,
            username: Some("u".into()),
        };
        assert_eq!(WillRecord::decode(&w.encode().unwrap()).unwrap(), w);
    }

    #[test]
    fn corruption_is_detected() {
        let m = MessageRecord {
            publish: publish(),
            packet_id: 7,
            released: false,
            expires_at_ms: 0,
        };
        let good = m.encode().unwrap();
        for i in 0..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x40;
            assert!(MessageRecord::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..good.len() {
            assert!(
                MessageRecord::decode(&good[..n]).is_err(),
                "truncated to {n}"
            );
        }
    }
}

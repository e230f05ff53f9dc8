//! How a message crosses to another node: one NATS payload holding where it
//! came from (for de-duplication), who published it (for No Local) and the
//! message itself as an MQTT 5 PUBLISH, written and read by Starling's own
//! codec, so every property crosses and nothing unchecked comes in.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use starling_broker::message::Message;
use starling_codec::{ByteString, Decoder, Packet, ProtocolVersion, Publish, QoS};
use tokio::time::Instant;

/// The first byte of an envelope: its format (2: with the time it was
/// sent; 1, still read: without).
const VERSION: u8 = 2;
const VERSION_1: u8 = 1;

/// Where a message came from: a node's run (`origin`, random per start) and
/// its place in that run's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The sending node's run.
    pub origin: u64,
    /// Its number in that run, from 1.
    pub seq: u64,
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than its header, or an unknown version.
    #[error("not a Starling envelope")]
    Malformed,
    /// The PUBLISH inside did not decode.
    #[error("the message inside is malformed: {0}")]
    Packet(#[from] starling_codec::DecodeError),
}

/// The envelope of `msg`, stamped.
pub fn encode(msg: &Message, stamp: Stamp, now: Instant) -> Bytes {
    let mut properties = msg.properties.clone();
    properties.message_expiry_interval = msg.remaining_expiry(now);
    let publish = Publish {
        dup: false,
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        packet_id: if msg.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties,
        payload: msg.payload.clone(),
    };
    let publisher = msg.publisher.as_deref().unwrap_or("");
    let mut buf = BytesMut::with_capacity(msg.payload.len() + msg.topic.len() + 64);
    buf.put_u8(VERSION);
    buf.put_u64(stamp.origin);
    buf.put_u64(stamp.seq);
    buf.put_u64(starling_broker::store::unix_ms());
    buf.put_u8(u8::from(msg.publisher.is_some()));
    // A client id is at most 65,535 bytes (it came in a CONNECT).
    let len = u16::try_from(publisher.len()).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(&publisher.as_bytes()[..usize::from(len)]);
    // Encoding fails only past the largest packet MQTT allows, which the
    // message (accepted from a client) is not.
    if Packet::Publish(publish)
        .encode(ProtocolVersion::V5, &mut buf)
        .is_err()
    {
        tracing::warn!(topic = %msg.topic, "a message could not be encoded for the cluster");
    }
    buf.freeze()
}

/// An envelope's stamp and when its node sent it (ms since the epoch;
/// `None` for the first format), without reading the message.
pub fn header(raw: &[u8]) -> Option<(Stamp, Option<u64>)> {
    let mut head = raw;
    let version = *head.first()?;
    let need = match version {
        VERSION => 25,
        VERSION_1 => 17,
        _ => return None,
    };
    if head.len() < need {
        return None;
    }
    head.advance(1);
    let stamp = Stamp {
        origin: head.get_u64(),
        seq: head.get_u64(),
    };
    Some((stamp, (version == VERSION).then(|| head.get_u64())))
}

/// The stamp and message an envelope holds.
pub fn decode(mut raw: Bytes, now: Instant) -> Result<(Stamp, Arc<Message>), EnvelopeError> {
    let (stamp, sent) = header(&raw).ok_or(EnvelopeError::Malformed)?;
    let head = if sent.is_some() { 25 } else { 17 };
    if raw.len() < head + 3 {
        return Err(EnvelopeError::Malformed);
    }
    raw.advance(head);
    let has_publisher = raw.get_u8() == 1;
    let len = usize::from(raw.get_u16());
    if raw.len() < len {
        return Err(EnvelopeError::Malformed);
    }
    let publisher = raw.split_to(len);
    let publisher = if has_publisher {
        Some(ByteString::try_from(publisher).map_err(|_| EnvelopeError::Malformed)?)
    } else {
        None
    };
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    decoder.set_max_packet_size(starling_codec::MAX_REMAINING_LENGTH + 5);
    let mut buf = BytesMut::from(raw);
    match decoder.decode(&mut buf)? {
        Some(Packet::Publish(p)) if buf.is_empty() => {
            Ok((stamp, Arc::new(Message::from_publish(p, publisher, now))))
        }
        _ => Err(EnvelopeError::Malformed),
    }
}

/// The first bytes of a payload, for debug logs (which message a stamp is).
pub fn head(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(16)]).into_owned()
}

/// The envelope of a plain QoS 1 message on `topic`, for tests.
#[cfg(test)]
pub fn sample(topic: &str, stamp: Stamp) -> Bytes {
    let m = Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"p"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        publisher: None,
    };
    encode(&m, stamp, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_codec::Properties;

    fn message(publisher: Option<&str>, now: Instant) -> Message {
        let properties = Properties {
            user_properties: vec![("k:ey".into(), "välue".into())],
            content_type: Some("text/plain".into()),
            response_topic: Some("r/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            message_expiry_interval: Some(30),
            ..Properties::default()
        };
        Message {
            topic: "a/b c/ü".into(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties,
            expires_at: Some(now + std::time::Duration::from_secs(30)),
            publisher: publisher.map(ByteString::from),
        }
    }

    #[tokio::test]
    async fn a_message_crosses_whole() {
        let now = Instant::now();
        for publisher in [Some("pub-1"), None] {
            let m = message(publisher, now);
            let stamp = Stamp { origin: 7, seq: 42 };
            let raw = encode(&m, stamp, now);
            let (s, sent) = header(&raw).unwrap();
            assert_eq!(s, stamp);
            let sent = sent.expect("the time it was sent");
            assert!(starling_broker::store::unix_ms().abs_diff(sent) < 60_000);
            let (s, back) = decode(raw, now).unwrap();
            assert_eq!(s, stamp);
            assert_eq!(back.topic, m.topic);
            assert_eq!(back.payload, m.payload);
            assert_eq!(back.qos, m.qos);
            assert!(back.retain);
            assert_eq!(back.publisher, m.publisher);
            assert_eq!(
                back.properties.user_properties,
                m.properties.user_properties
            );
            assert_eq!(back.properties.content_type, m.properties.content_type);
            assert_eq!(
                back.properties.correlation_data,
                m.properties.correlation_data
            );
            assert_eq!(back.remaining_expiry(now), Some(30));
        }
    }

    #[tokio::test]
    async fn the_first_format_is_still_read() {
        let now = Instant::now();
        let m = message(Some("p"), now);
        let v2 = encode(&m, Stamp { origin: 3, seq: 4 }, now);
        // Version 1: the same without the 8 bytes of the time sent.
        let mut v1 = BytesMut::new();
        v1.put_u8(VERSION_1);
        v1.put_slice(&v2[1..17]);
        v1.put_slice(&v2[25..]);
        let v1 = v1.freeze();
        assert_eq!(header(&v1), Some((Stamp { origin: 3, seq: 4 }, None)));
        let (s, back) = decode(v1, now).unwrap();
        assert_eq!(s, Stamp { origin: 3, seq: 4 });
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.publisher, m.publisher);
    }

    #[tokio::test]
    async fn garbage_is_refused_not_trusted() {
        let now = Instant::now();
        let good = encode(&message(Some("p"), now), Stamp { origin: 1, seq: 1 }, now);
        for cut in 0..good.len() {
            assert!(decode(good.slice(..cut), now).is_err(), "cut at {cut}");
        }
        let mut bad = BytesMut::from(&good[..]);
        bad[0] = 9;
        assert!(decode(bad.freeze(), now).is_err());
        let mut trailing = BytesMut::from(&good[..]);
        trailing.put_u8(0);
        assert!(decode(trailing.freeze(), now).is_err());
    }
}

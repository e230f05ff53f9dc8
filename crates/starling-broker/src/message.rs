//! An application message as the broker routes it: stored once, shared by every
//! subscriber's queue through an `Arc`.

use std::sync::Arc;

use bytes::Bytes;
use starling_codec::{ByteString, Properties, Publish, QoS};
use tokio::time::Instant;

/// A copy of `s` in an allocation of its own. Long-lived strings (client ids,
/// filters, alias topics) are copied out of the receive buffer so that they do
/// not keep the whole buffer they were sliced from alive.
pub fn owned(s: &ByteString) -> ByteString {
    ByteString::from(&**s)
}

/// A message accepted from a publisher (or a will), ready to route.
#[derive(Debug)]
pub struct Message {
    /// Topic name (aliases already resolved).
    pub topic: ByteString,
    /// Payload, shared with the publisher's receive buffer.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// RETAIN flag the publisher set.
    pub retain: bool,
    /// Properties forwarded to subscribers (topic alias and subscription ids removed).
    pub properties: Properties,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for No Local. `None` for broker-made messages.
    pub publisher: Option<ByteString>,
}

impl Message {
    /// A copy of the message without its RETAIN flag (its payload shared).
    pub fn unretained(&self) -> Message {
        Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: false,
            properties: self.properties.clone(),
            expires_at: self.expires_at,
            publisher: self.publisher.clone(),
        }
    }

    /// Builds a message from a PUBLISH whose topic alias has been resolved.
    pub fn from_publish(publish: Publish, publisher: Option<ByteString>, now: Instant) -> Message {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| now + std::time::Duration::from_secs(u64::from(secs)));
        Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            publisher,
        }
    }

    /// What the message costs in memory, charged to every queue that holds
    /// it: payload, topic and properties, each user property with the
    /// headers of its two strings. Linear in the properties: computed once
    /// per message and kept in each [`Delivery`].
    pub fn weight(&self) -> u32 {
        const PAIR: usize = 64;
        let p = &self.properties;
        let user: usize = p
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + PAIR)
            .sum();
        let all = self.payload.len()
            + self.topic.len()
            + user
            + p.correlation_data.as_ref().map_or(0, |d| d.len())
            + p.response_topic.as_ref().map_or(0, |t| t.len())
            + p.content_type.as_ref().map_or(0, |t| t.len());
        u32::try_from(all).unwrap_or(u32::MAX)
    }

    /// True once the message expiry interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whole seconds of expiry left, rounded up, for the forwarded property.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// One message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS for this subscriber: min(published, granted).
    pub qos: QoS,
    /// RETAIN flag as this subscriber sees it.
    pub retain: bool,
    /// Identifiers of the subscriptions that matched (MQTT 5).
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/group/filter`) that chose this session,
    /// so the message can go to another member if this one leaves unacknowledged.
    pub share: Option<Arc<str>>,
    /// Where it is in the store, if it is.
    pub stored: Stored,
    /// Bytes charged to the queue that holds it ([`Message::weight`]); a
    /// `u32` keeps a delivery at 64 bytes (a packet is at most 256 MiB).
    pub weight: u32,
}

impl Delivery {
    /// The PUBLISH to send for this delivery.
    pub fn to_publish(&self, packet_id: u16, dup: bool, now: Instant) -> Publish {
        self.to_publish_for(true, packet_id, dup, now)
    }

    /// The PUBLISH to send; without MQTT 5 there are no properties to copy.
    pub fn to_publish_for(&self, v5: bool, packet_id: u16, dup: bool, now: Instant) -> Publish {
        let properties = if v5 {
            let mut properties = self.msg.properties.clone();
            properties
                .subscription_identifiers
                .clone_from(&self.subscription_ids);
            properties.message_expiry_interval = self.msg.remaining_expiry(now);
            properties
        } else {
            starling_codec::Properties::default()
        };
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.msg.topic.clone(),
            packet_id,
            properties,
            payload: self.msg.payload.clone(),
        }
    }
}

/// An outgoing QoS 1/2 message waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet identifier used.
    pub packet_id: u16,
    /// The delivery, kept for resending.
    pub delivery: Delivery,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub released: bool,
}

/// Where a delivery is in the store: its per-session sequence number, or not
/// stored at all (clean sessions, QoS 0, durability `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored(Option<std::num::NonZeroU64>);

impl Stored {
    /// Not in the store.
    pub const NOT: Stored = Stored(None);

    /// Stored under sequence number `seq` (sequence numbers start at 1).
    pub fn at(seq: u64) -> Stored {
        Stored(std::num::NonZeroU64::new(seq))
    }

    /// The sequence number, if stored.
    pub fn seq(self) -> Option<u64> {
        self.0.map(std::num::NonZeroU64::get)
    }
}

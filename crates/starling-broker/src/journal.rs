//! Every store record and operation the broker writes, built in one place
//! from live state: queued and in-flight deliveries, retained messages,
//! wills, sessions and subscriptions. (Reading them back is `persist`.)

use bytes::Bytes;
use starling_codec::{ByteString, QoS, SubscriptionOptions, Will};
use tokio::time::Instant;

use crate::message::{Delivery, Inflight, Message};
use crate::store::{unix_ms, MessageRecord, Op, SessionRecord, SubscriptionRecord, WillRecord};

/// Wall-clock milliseconds for a `tokio` deadline.
pub fn deadline_ms(at: Option<Instant>) -> u64 {
    match at {
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            unix_ms() + left.as_millis() as u64
        }
        None => 0,
    }
}

/// The store record of a queued delivery.
pub fn message_record(d: &Delivery) -> Option<Bytes> {
    let mut publish = d.to_publish(0, false, Instant::now());
    publish.properties.message_expiry_interval = None;
    MessageRecord {
        publish,
        packet_id: 0,
        released: false,
        expires_at_ms: deadline_ms(d.msg.expires_at),
    }
    .encode()
    .map_or_else(|e| not_stored("queued message", &e), Some)
}

/// The store record of an in-flight delivery (sent with `packet_id`).
pub fn inflight_record(i: &Inflight) -> Option<Bytes> {
    let mut publish = i.delivery.to_publish(i.packet_id, false, Instant::now());
    publish.properties.message_expiry_interval = None;
    MessageRecord {
        publish,
        packet_id: i.packet_id,
        released: i.released,
        expires_at_ms: deadline_ms(i.delivery.msg.expires_at),
    }
    .encode()
    .map_or_else(|e| not_stored("in-flight message", &e), Some)
}

/// The store record of a retained message.
pub fn retained_record(msg: &Message) -> Option<Bytes> {
    let mut publish = starling_codec::Publish::new(msg.topic.clone(), msg.payload.clone());
    publish.qos = msg.qos;
    publish.packet_id = u16::from(msg.qos != QoS::AtMostOnce);
    publish.retain = true;
    publish.properties = msg.properties.clone();
    MessageRecord {
        publish,
        packet_id: 0,
        released: false,
        expires_at_ms: deadline_ms(msg.expires_at),
    }
    .encode()
    .map_or_else(|e| not_stored("retained message", &e), Some)
}

/// The store record of a will waiting `delay` seconds.
pub fn will_record(will: &Will, delay: u32, username: Option<&str>) -> Option<Bytes> {
    let mut publish = starling_codec::Publish::new(will.topic.clone(), will.payload.clone());
    publish.qos = will.qos;
    publish.packet_id = u16::from(will.qos != QoS::AtMostOnce);
    publish.retain = will.retain;
    publish.properties = will.properties.clone();
    WillRecord {
        publish,
        deadline_ms: unix_ms() + u64::from(delay) * 1000,
        username: username.map(str::to_string),
    }
    .encode()
    .map_or_else(|e| not_stored("will", &e), Some)
}

/// Logs a record that could not be encoded (and so is kept in memory only).
fn not_stored(what: &str, err: &dyn std::fmt::Display) -> Option<Bytes> {
    tracing::warn!(record = what, "not stored: {err}");
    None
}

/// The record of a session; `connected` sessions have no disconnect time yet.
pub fn session_op(client_id: &ByteString, expiry_interval: u32, connected: bool) -> Op {
    Op::Session(
        client_id.clone(),
        SessionRecord {
            expiry_interval,
            disconnected_at_ms: if connected { 0 } else { unix_ms() },
        },
    )
}

/// The subscription record for a session's subscription.
pub fn subscription_op(
    client: &ByteString,
    filter: &ByteString,
    options: SubscriptionOptions,
    id: Option<u32>,
) -> Op {
    Op::Subscribe(
        client.clone(),
        filter.clone(),
        SubscriptionRecord { options, id },
    )
}

//! The glue between live broker state and the store: turning deliveries and
//! sessions into records, and rebuilding sessions, subscriptions, queues,
//! retained messages and waiting wills from the store at startup.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::{ByteString, QoS, Will};
use tokio::time::Instant;

use crate::broker::{split_share, BrokerState};
use crate::message::{Delivery, Message};
use crate::session::{Inflight, Session, SubEntry};
use crate::store::{
    unix_ms, Loaded, MessageRecord, Op, SessionRecord, SubscriptionRecord, WillRecord,
};
use crate::topic_tree::Subscriber;

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

/// A `tokio` deadline for wall-clock milliseconds (0: none).
fn instant_for(ms: u64) -> Option<Instant> {
    (ms != 0).then(|| Instant::now() + Duration::from_millis(ms.saturating_sub(unix_ms())))
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

fn message_from(record: &MessageRecord) -> Message {
    let mut properties = record.publish.properties.clone();
    properties.subscription_identifiers.clear();
    properties.message_expiry_interval = None;
    properties.topic_alias = None;
    Message {
        topic: record.publish.topic.clone(),
        payload: record.publish.payload.clone(),
        qos: record.publish.qos,
        retain: record.publish.retain,
        properties,
        expires_at: instant_for(record.expires_at_ms),
        publisher: None,
    }
}

/// Rebuilds the broker's state from what the store held.
pub fn restore(state: &Arc<BrokerState>, loaded: Loaded) {
    let now_ms = unix_ms();
    let now = Instant::now();
    let mut ops = Vec::new();
    let mut sessions: HashMap<ByteString, Arc<Session>> = HashMap::new();
    // Records deeper than `max-topic-levels` (written before the limit, or
    // under a higher one) are left in the store but not loaded.
    let max_levels = state.config.max_topic_levels;
    let mut too_deep_count = 0usize;
    for (client, rec) in loaded.sessions {
        let disconnected = if rec.disconnected_at_ms == 0 {
            now_ms
        } else {
            rec.disconnected_at_ms
        };
        let elapsed = now_ms.saturating_sub(disconnected) / 1000;
        if rec.expiry_interval != u32::MAX && elapsed >= u64::from(rec.expiry_interval) {
            ops.push(Op::DeleteSession(client));
            continue;
        }
        let session = Arc::new(Session::new(
            client.clone(),
            rec.expiry_interval,
            state.queue_limits(),
        ));
        session.persistent.store(true, Ordering::Relaxed);
        session.state.lock().generation = 1;
        if rec.disconnected_at_ms == 0 {
            ops.push(session_op(&client, rec.expiry_interval, false));
        }
        if rec.expiry_interval != u32::MAX {
            let left = u64::from(rec.expiry_interval) - elapsed;
            crate::lifecycle::schedule_expiry(state, session.clone(), 1, Duration::from_secs(left));
        }
        sessions.insert(client, session);
    }
    let mut granted = Vec::with_capacity(loaded.subscriptions.len());
    {
        let mut tree = state.topics.write();
        for (client, filter, rec) in loaded.subscriptions {
            let Some(session) = sessions.get(&client) else {
                ops.push(Op::Unsubscribe(client, filter));
                continue;
            };
            let (share, inner) = split_share(&filter);
            if too_deep(inner, max_levels, "subscription", &client) {
                too_deep_count += 1;
                continue;
            }
            tree.subscribe(
                share,
                inner,
                Subscriber {
                    session: session.clone(),
                    options: rec.options,
                    id: rec.id,
                },
            );
            granted.push((session.clone(), filter, rec));
        }
    }
    // A session's lock is never taken while `topics` is write-locked.
    for (session, filter, rec) in granted {
        session.state.lock().subscriptions.insert(
            filter,
            SubEntry {
                options: rec.options,
                id: rec.id,
            },
        );
    }
    let mut restored = 0usize;
    for (client, seq, rec) in loaded.messages {
        let Some(session) = sessions.get(&client) else {
            ops.push(Op::DeleteMessage(client, seq));
            continue;
        };
        let msg = Arc::new(message_from(&rec));
        if msg.is_expired(now) {
            ops.push(Op::DeleteMessage(client, seq));
            continue;
        }
        let delivery = Delivery {
            qos: rec.publish.qos,
            retain: rec.publish.retain,
            subscription_ids: rec.publish.properties.subscription_identifiers.clone(),
            share: None,
            seq,
            msg,
        };
        let mut st = session.state.lock();
        st.next_seq = st.next_seq.max(seq + 1);
        if rec.packet_id != 0 && rec.publish.qos == QoS::ExactlyOnce {
            st.inflight.push_back(Inflight {
                packet_id: rec.packet_id,
                delivery,
                released: rec.released,
            });
        } else {
            st.queued_bytes += delivery.msg.payload.len();
            st.queue.push_back(delivery);
        }
        restored += 1;
    }
    for (client, id) in loaded.incoming_qos2 {
        match sessions.get(&client) {
            Some(s) => {
                s.state.lock().incoming_qos2.insert(id);
            }
            None => ops.push(Op::DeleteIncomingQos2(client, id)),
        }
    }
    {
        let mut retained = state.retained.write();
        for rec in loaded.retained {
            let msg = message_from(&rec);
            if too_deep(&msg.topic, max_levels, "retained message", &msg.topic) {
                too_deep_count += 1;
            } else if msg.is_expired(now) {
                ops.push(Op::DeleteRetained(msg.topic.clone()));
            } else {
                retained.set(Arc::new(msg));
            }
        }
    }
    for (client, rec) in loaded.wills {
        if too_deep(&rec.publish.topic, max_levels, "will", &client) {
            too_deep_count += 1;
            continue;
        }
        let will = Will {
            topic: rec.publish.topic.clone(),
            payload: rec.publish.payload.clone(),
            qos: rec.publish.qos,
            retain: rec.publish.retain,
            properties: rec.publish.properties.clone(),
        };
        let wait = Duration::from_millis(rec.deadline_ms.saturating_sub(now_ms));
        crate::lifecycle::schedule_will(
            state,
            sessions.get(&client).cloned(),
            client,
            rec.username.map(ByteString::from),
            will,
            1,
            wait,
        );
    }
    let count = sessions.len();
    state.sessions.lock().extend(sessions.into_values());
    if let Some(store) = &state.store {
        store.submit(ops);
    }
    tracing::info!(
        sessions = count,
        messages = restored,
        skipped = loaded.skipped,
        too_deep = too_deep_count,
        "restored persistent state"
    );
}

/// Whether a stored topic or filter is deeper than `max` levels; logs the
/// record it skips (`what` of `whose`).
fn too_deep(topic: &str, max: usize, what: &str, whose: &str) -> bool {
    let levels = starling_codec::topic::levels(topic);
    let deep = levels > max;
    if deep {
        // A topic of thousands of levels does not belong in a log line whole.
        let end = (0..=whose.len().min(64))
            .rev()
            .find(|&i| whose.is_char_boundary(i))
            .unwrap_or(0);
        tracing::warn!(
            record = what,
            of = &whose[..end],
            levels,
            max_topic_levels = max,
            "stored record skipped: its topic is deeper than max-topic-levels"
        );
    }
    deep
}

/// The subscription record for a session's subscription.
pub fn subscription_op(client: &ByteString, filter: &ByteString, entry: &SubEntry) -> Op {
    Op::Subscribe(
        client.clone(),
        filter.clone(),
        SubscriptionRecord {
            options: entry.options,
            id: entry.id,
        },
    )
}

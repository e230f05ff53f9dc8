//! Every store record and operation the broker writes, built in one place
//! from live state: queued and in-flight deliveries, retained messages,
//! wills, sessions and subscriptions. (Reading them back is `persist`.)
//!
//! A [`Journal`] collects what changed during one step (a packet, a
//! disconnect, a sweep); [`commit`] and [`commit_and_wait`] are the only
//! places that hand changes to the store.

use bytes::Bytes;
use starling_codec::{ByteString, QoS, SubscriptionOptions, Will};
use tokio::time::Instant;

use crate::message::{Delivery, Inflight, Message, Stored};
use crate::store::{
    unix_ms, MessageRecord, Op, Persistence, SessionRecord, SubscriptionRecord, WillRecord,
};

/// What changed, in the order it happened, for the store.
///
/// Changes to a session's queue are the exception: they are handed to the
/// store at once, while the session's lock is held (see
/// [`Journal::queue_changed`]), so that the store sees a queued message
/// before anything its subscriber does with it. The journal counts them, so
/// that an acknowledgement still waits for a write that follows them.
#[derive(Debug, Default)]
pub struct Journal {
    ops: Vec<Op>,
    /// Changes already handed to the store during this step.
    submitted: usize,
    /// The number of the first store request they went in.
    first_request: Option<u64>,
    /// The stamp of the message being routed, labelling its queued copies
    /// (see [`Op::CameWith`]).
    stamp: Option<(u64, u64)>,
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Journal {
        Journal::default()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many changes it holds, those already submitted included.
    pub fn len(&self) -> usize {
        self.ops.len() + self.submitted
    }

    /// Hands changes to a session's queue to the store now, in the order
    /// made under the session's lock (which the caller holds). A queued
    /// message thus reaches the store's writer before its subscriber, which
    /// may run on another thread as soon as the lock is released, can send it
    /// and record its in-flight state or its removal: a restart can neither
    /// resurrect a delivered message nor lose the in-flight record of a QoS 2
    /// one.
    pub fn queue_changed(&mut self, store: &Persistence, mut ops: Vec<Op>) {
        if let Some((origin, seq)) = self.stamp {
            // In the same request as the copy: the label never parts from it.
            if let Some(i) = ops.iter().position(|op| matches!(op, Op::Message(..))) {
                ops.insert(i + 1, Op::CameWith(origin, seq));
            }
        }
        self.submitted += ops.len();
        let number = store.submit(ops);
        self.first_request.get_or_insert(number);
    }

    /// An in-flight delivery changed (sent with a packet id, or released).
    pub fn in_flight(&mut self, client: &ByteString, seq: u64, i: &Inflight) {
        if let Some(r) = inflight_record(i) {
            self.ops.push(Op::Message(client.clone(), seq, r));
        }
    }

    /// The message stored under `seq` is done with (delivered, expired,
    /// dropped or moved to another session).
    pub fn forget(&mut self, client: &ByteString, seq: u64) {
        self.ops.push(Op::DeleteMessage(client.clone(), seq));
    }

    /// A retained message was set (or, with an empty payload, cleared).
    pub fn retained(&mut self, msg: &Message) {
        if msg.payload.is_empty() {
            self.ops.push(Op::DeleteRetained(msg.topic.clone()));
        } else if let Some(r) = retained_record(msg) {
            self.ops.push(Op::Retained(msg.topic.clone(), r));
        }
    }

    /// The retained message on `topic` is gone.
    pub fn retained_gone(&mut self, topic: ByteString) {
        self.ops.push(Op::DeleteRetained(topic));
    }

    /// A persistent session's record: its expiry, and whether connected now.
    pub fn session(&mut self, client: &ByteString, expiry_interval: u32, connected: bool) {
        self.ops
            .push(session_op(client, expiry_interval, connected));
    }

    /// A session ended: everything stored for it goes.
    pub fn session_ended(&mut self, client: ByteString) {
        self.ops.push(Op::DeleteSession(client));
    }

    /// A persistent session subscribed.
    pub fn subscribed(
        &mut self,
        client: &ByteString,
        filter: &ByteString,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) {
        self.ops.push(subscription_op(client, filter, options, id));
    }

    /// A persistent session unsubscribed.
    pub fn unsubscribed(&mut self, client: ByteString, filter: ByteString) {
        self.ops.push(Op::Unsubscribe(client, filter));
    }

    /// A will waits `delay` seconds.
    pub fn will(&mut self, client: &ByteString, will: &Will, delay: u32, username: Option<&str>) {
        if let Some(r) = will_record(will, delay, username) {
            self.ops.push(Op::Will(client.clone(), r));
        }
    }

    /// A waiting will was published or cancelled.
    pub fn will_done(&mut self, client: ByteString) {
        self.ops.push(Op::DeleteWill(client));
    }

    /// The message routed from now on (until set again) is numbered
    /// `stamp`: each of its queued copies is labelled with it.
    pub fn set_stamp(&mut self, stamp: Option<(u64, u64)>) {
        self.stamp = stamp;
    }

    /// The writes so far came with a message from another node.
    pub fn received(&mut self, origin: u64, seq: u64) {
        self.ops.push(Op::Received(origin, seq));
    }

    /// A QoS 2 PUBLISH was received (its PUBREC is on its way).
    pub fn qos2_received(&mut self, client: ByteString, packet_id: u16) {
        self.ops.push(Op::IncomingQos2(client, packet_id));
    }

    /// A QoS 2 exchange from the client ended with PUBREL.
    pub fn qos2_released(&mut self, client: ByteString, packet_id: u16) {
        self.ops.push(Op::DeleteIncomingQos2(client, packet_id));
    }
}

/// Hands `journal` to the store, without waiting. Without a store
/// (`durability = none`) it is dropped.
pub fn commit(store: Option<&Persistence>, journal: Journal) {
    if let Some(store) = store {
        store.submit(journal.ops);
    }
}

/// Hands `journal` to the store; the receiver completes once it is written
/// (durable with `durability = always`) and fails if it could not be.
pub fn commit_and_wait(
    store: &Persistence,
    journal: Journal,
) -> tokio::sync::oneshot::Receiver<()> {
    store.submit_and_wait_from(journal.ops, journal.first_request)
}

/// A `tokio` deadline for wall-clock milliseconds (0: none). A deadline
/// already past is a moment ago, so that it counts as expired now.
fn instant_for(ms: u64) -> Option<Instant> {
    if ms == 0 {
        return None;
    }
    let now = Instant::now();
    let wall = unix_ms();
    Some(match ms.checked_sub(wall) {
        Some(left) if left > 0 => now + std::time::Duration::from_millis(left),
        _ => now
            .checked_sub(std::time::Duration::from_millis(1))
            .unwrap_or(now),
    })
}

/// A message read back from the store.
pub(crate) fn message_from_record(record: &MessageRecord) -> Message {
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

/// A queued delivery read back from the store, where it was kept under `seq`.
pub(crate) fn delivery_from_record(seq: u64, record: &MessageRecord) -> Delivery {
    let msg = std::sync::Arc::new(message_from_record(record));
    Delivery {
        qos: record.publish.qos,
        retain: record.publish.retain,
        subscription_ids: record.publish.properties.subscription_identifiers.clone(),
        share: None,
        stored: Stored::at(seq),
        weight: msg.weight(),
        msg,
    }
}

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
pub(crate) fn message_record(d: &Delivery) -> Option<Bytes> {
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
pub(crate) fn inflight_record(i: &Inflight) -> Option<Bytes> {
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
pub(crate) fn retained_record(msg: &Message) -> Option<Bytes> {
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
pub(crate) fn will_record(will: &Will, delay: u32, username: Option<&str>) -> Option<Bytes> {
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
fn session_op(client_id: &ByteString, expiry_interval: u32, connected: bool) -> Op {
    Op::Session(
        client_id.clone(),
        SessionRecord {
            expiry_interval,
            disconnected_at_ms: if connected { 0 } else { unix_ms() },
        },
    )
}

/// The subscription record for a session's subscription.
fn subscription_op(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::WillRecord;

    fn delivery(qos: QoS, expires_in: Option<std::time::Duration>) -> Delivery {
        let now = Instant::now();
        let properties = starling_codec::Properties {
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        Delivery {
            msg: Arc::new(Message {
                topic: "j/t".into(),
                payload: Bytes::from_static(b"payload"),
                qos,
                retain: false,
                properties,
                expires_at: expires_in.map(|d| now + d),
                publisher: Some("pub".into()),
            }),
            qos,
            retain: false,
            subscription_ids: vec![3],
            share: None,
            stored: crate::message::Stored::at(9),
            weight: 8,
        }
    }

    #[tokio::test]
    async fn a_queued_delivery_round_trips_with_its_deadline() {
        let d = delivery(QoS::AtLeastOnce, Some(std::time::Duration::from_secs(60)));
        let record = MessageRecord::decode(&message_record(&d).unwrap()).unwrap();
        assert_eq!(&*record.publish.topic, "j/t");
        assert_eq!(&record.publish.payload[..], b"payload");
        assert_eq!(record.publish.qos, QoS::AtLeastOnce);
        assert_eq!(record.publish.properties.subscription_identifiers, [3]);
        assert_eq!(record.packet_id, 0);
        // The expiry is kept as a wall-clock deadline, not an interval.
        assert_eq!(record.publish.properties.message_expiry_interval, None);
        let left = record.expires_at_ms.saturating_sub(unix_ms());
        assert!((59_000..=60_000).contains(&left), "{left}");
        assert_eq!(deadline_ms(None), 0);
    }

    #[tokio::test]
    async fn an_inflight_record_keeps_its_packet_id_and_release() {
        let i = Inflight {
            packet_id: 42,
            delivery: delivery(QoS::ExactlyOnce, None),
            released: true,
        };
        let record = MessageRecord::decode(&inflight_record(&i).unwrap()).unwrap();
        assert_eq!((record.packet_id, record.released), (42, true));
        assert_eq!(record.expires_at_ms, 0);
    }

    #[tokio::test]
    async fn wills_retained_messages_sessions_and_subscriptions() {
        let will = Will {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
        };
        let record = WillRecord::decode(&will_record(&will, 30, Some("u")).unwrap()).unwrap();
        assert_eq!(record.username.as_deref(), Some("u"));
        assert!(record.publish.retain);
        let left = record.deadline_ms.saturating_sub(unix_ms());
        assert!((29_000..=30_000).contains(&left), "{left}");
        let d = delivery(QoS::AtMostOnce, None);
        let r = MessageRecord::decode(&retained_record(&d.msg).unwrap()).unwrap();
        assert!(r.publish.retain);
        assert!(matches!(
            session_op(&"c".into(), 60, true),
            Op::Session(
                _,
                SessionRecord {
                    expiry_interval: 60,
                    disconnected_at_ms: 0
                }
            )
        ));
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            ..Default::default()
        };
        match subscription_op(&"c".into(), &"a/#".into(), options, Some(7)) {
            Op::Subscribe(c, f, rec) => {
                assert_eq!(
                    (&*c, &*f, rec.id, rec.options.qos),
                    ("c", "a/#", Some(7), QoS::ExactlyOnce)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Records what it is given.
    struct Recorder(Arc<parking_lot::Mutex<Vec<Op>>>);

    impl crate::store::Store for Recorder {
        fn apply(&mut self, ops: &[Op], _: bool) -> Result<(), crate::store::StoreError> {
            self.0.lock().extend_from_slice(ops);
            Ok(())
        }
        fn sync(&mut self) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
        fn load(&mut self) -> Result<crate::store::Loaded, crate::store::StoreError> {
            Ok(Default::default())
        }
    }

    #[tokio::test]
    async fn a_queued_copy_goes_to_the_store_with_its_stamp() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let store = Persistence::start(
            Box::new(Recorder(seen.clone())),
            crate::store::Durability::Always,
            std::time::Duration::from_millis(100),
        )
        .unwrap();
        let c = ByteString::from("c");
        let copy = |seq| {
            vec![
                Op::Message(c.clone(), seq, Bytes::new()),
                Op::DeleteMessage(c.clone(), seq - 1),
            ]
        };
        let mut journal = Journal::new();
        journal.set_stamp(Some((7, 505)));
        journal.queue_changed(&store, copy(2));
        journal.set_stamp(None);
        journal.queue_changed(&store, copy(3));
        assert_eq!(journal.len(), 5);
        store.submit_and_wait(Vec::new()).await.unwrap();
        let seen = seen.lock();
        let labels: Vec<_> = seen
            .iter()
            .map(|op| match op {
                Op::Message(_, seq, _) => format!("m{seq}"),
                Op::CameWith(o, s) => format!("l{o}-{s}"),
                Op::DeleteMessage(_, seq) => format!("d{seq}"),
                other => format!("{other:?}"),
            })
            .collect();
        // The label is in the copy's own request, right after it.
        assert_eq!(labels, ["m2", "l7-505", "d1", "m3", "d2"]);
    }
}

//! A session: the state that outlives a connection. Its subscriptions, its queue
//! of messages not yet sent, its in-flight QoS 1/2 messages in both directions,
//! and the link to the connection attached to it, if any.
//!
//! Locking: `state` is a `parking_lot::Mutex`, held only for short, synchronous
//! updates and never across an `.await`. Publishers take it to push a delivery;
//! the attached connection takes it to drain the queue and record acks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use starling_codec::{ByteString, QoS, SubscriptionOptions};
use tokio::sync::Notify;

use crate::auth::{Acl, ListenerFile};
use crate::config::OverflowPolicy;
use crate::journal::Journal;
use crate::message::{Delivery, Stored};

/// The attached connection, as the session sees it. Taking the link away
/// tells the connection to close: it checks whether it is still attached each
/// time it wakes, and [`Link::taken_over`] wakes it.
#[derive(Debug)]
pub struct Link {
    /// Broker-wide id of the connection.
    pub conn_id: u64,
    /// Set while the connection is parked (see [`crate::connection::hibernate`]).
    pub(crate) parked: Option<ParkedAt>,
}

impl Link {
    /// A link to connection `conn_id`.
    pub fn new(conn_id: u64) -> Link {
        Link {
            conn_id,
            parked: None,
        }
    }

    /// Wakes the connection of a link just taken from `session`, so that it
    /// sees it is detached and closes.
    pub fn taken_over(self, session: &Session) {
        match &self.parked {
            Some(p) => p.wake(self.conn_id),
            None => session.notify.notify_waiters(),
        }
    }
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubEntry {
    /// Options granted.
    pub options: SubscriptionOptions,
    /// MQTT 5 subscription identifier.
    pub id: Option<u32>,
}

pub use crate::message::Inflight;

/// Wakes a parked connection: the hibernation reactor implements it (this
/// module does not know the reactor).
pub(crate) trait WakeParked: Send + Sync {
    /// Gives connection `conn_id`, parked at `index`, its task back.
    fn wake(&self, index: usize, conn_id: u64);
}

/// Where a session's parked connection is, so that whoever queues a message
/// for it, or takes it over, can wake it.
#[derive(Clone)]
pub(crate) struct ParkedAt {
    pub reactor: Arc<dyn WakeParked>,
    pub index: usize,
}

impl std::fmt::Debug for ParkedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParkedAt({})", self.index)
    }
}

impl ParkedAt {
    /// Asks the reactor to give connection `conn_id` its task back.
    pub fn wake(&self, conn_id: u64) {
        self.reactor.wake(self.index, conn_id);
    }
}

/// A collection allocated on first insert: an empty one costs one pointer in
/// the session instead of its whole header (48 bytes for a hash map), which
/// matters for the many sessions of idle clients. Reads see an empty
/// collection until then.
#[derive(Debug)]
pub struct Lazy<T>(Option<Box<T>>);

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(None)
    }
}

impl<T: Default> Lazy<T> {
    /// The collection, allocating it if needed.
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<K: Eq + std::hash::Hash, V> Lazy<HashMap<K, V>> {
    /// See [`HashMap::insert`].
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.get_mut().insert(k, v)
    }

    /// See [`HashMap::get`].
    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.as_ref()?.get(k)
    }

    /// See [`HashMap::contains_key`].
    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.get(k).is_some()
    }

    /// See [`HashMap::remove`]; the last removal frees the map.
    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let map = self.0.as_mut()?;
        let v = map.remove(k);
        if map.is_empty() {
            self.0 = None;
        }
        v
    }

    /// See [`HashMap::keys`].
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().flat_map(|m| m.keys())
    }

    /// See [`HashMap::iter`].
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    /// See [`HashMap::len`].
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// See [`HashMap::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + std::hash::Hash> Lazy<HashSet<K>> {
    /// See [`HashSet::insert`].
    pub fn insert(&mut self, k: K) -> bool {
        self.get_mut().insert(k)
    }

    /// See [`HashSet::contains`].
    pub fn contains(&self, k: &K) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(k))
    }

    /// See [`HashSet::remove`]; the last removal frees the set.
    pub fn remove(&mut self, k: &K) -> bool {
        let Some(set) = self.0.as_mut() else {
            return false;
        };
        let found = set.remove(k);
        if set.is_empty() {
            self.0 = None;
        }
        found
    }

    /// See [`HashSet::len`].
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    /// See [`HashSet::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bounds of one session's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most messages.
    pub max_messages: usize,
    /// Most payload bytes.
    pub max_bytes: usize,
    /// What a full queue drops.
    pub policy: OverflowPolicy,
    /// Whether QoS 0 messages are queued while no connection is attached.
    pub qos0_offline: bool,
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionState {
    /// Messages not yet sent, oldest first.
    queue: VecDeque<Delivery>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    /// Outgoing QoS 1/2 messages sent and not yet fully acknowledged, in send order.
    pub inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Incoming QoS 2 packet ids for which PUBREC was sent and PUBREL is awaited.
    pub incoming_qos2: Lazy<HashSet<u16>>,
    /// Subscriptions by filter.
    pub subscriptions: Lazy<HashMap<ByteString, SubEntry>>,
    /// The connection attached now.
    link: Option<Link>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// Counts attachments; timers compare it to know whether the session was resumed.
    generation: u64,
    /// Queue bounds (shared by every session of the broker).
    pub limits: Arc<QueueLimits>,
    /// User name of the last connection, for read ACL checks at delivery.
    pub username: Option<ByteString>,
    /// Next store sequence number for a queued message.
    pub next_seq: u64,
    /// The ACL of the listener the last connection came through, when it has
    /// its own (`acl-file` in `[[listener]]`); `None` uses the broker's.
    pub acl: Option<Arc<ListenerFile<Acl>>>,
}

/// A session, shared between the registry, the topic index and its connection.
#[derive(Debug)]
pub struct Session {
    /// The client identifier.
    pub client_id: ByteString,
    /// Mutable state; see the module docs for the locking rule.
    pub state: Mutex<SessionState>,
    /// Wakes the attached connection when the queue gains a message.
    pub notify: Notify,
    /// Messages dropped because the queue was full, or too large for the client.
    pub dropped: AtomicU64,
    /// Whether the session is kept in the store (it outlives its connection and
    /// the broker persists).
    pub persistent: AtomicBool,
}

/// What happened to a delivery offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued.
    Queued,
    /// Queued after dropping the oldest message.
    DroppedOldest,
    /// Not queued.
    Dropped,
    /// Not queued: QoS 0 to an offline session is not kept.
    Skipped,
}

impl Session {
    /// Whether a connection is attached to the session now.
    pub fn is_connected(&self) -> bool {
        self.state.lock().link.is_some()
    }

    /// The session's subscription filters (as the broker routes them), sorted.
    pub fn filters(&self) -> Vec<ByteString> {
        let mut f: Vec<ByteString> = self.state.lock().subscriptions.keys().cloned().collect();
        f.sort();
        f
    }

    /// Whether the session holds a subscription to `filter`.
    pub fn is_subscribed(&self, filter: &str) -> bool {
        self.state.lock().subscriptions.contains_key(filter)
    }

    /// Messages queued for the session, not yet sent.
    pub fn queued(&self) -> usize {
        self.state.lock().queue_len()
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.state.lock().inflight.len()
    }

    /// A new, empty session.
    pub fn new(client_id: ByteString, expiry_interval: u32, limits: Arc<QueueLimits>) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState {
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: VecDeque::new(),
                next_packet_id: 1,
                incoming_qos2: Lazy::default(),
                subscriptions: Lazy::default(),
                link: None,
                expiry_interval,
                generation: 0,
                limits,
                username: None,
                next_seq: 1,
                acl: None,
            }),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            persistent: AtomicBool::new(false),
        }
    }

    /// Offers a delivery to the session's queue, applying its bounds, and wakes
    /// the attached connection. With a journal, a QoS 1/2 delivery to a
    /// persistent session is given a sequence number and written to it, as is
    /// the removal of any message the bound evicted.
    pub fn enqueue(&self, mut delivery: Delivery, journal: Option<&mut Journal>) -> Enqueued {
        let stored = journal.is_some()
            && delivery.qos != QoS::AtMostOnce
            && self.persistent.load(Ordering::Relaxed);
        let (outcome, evicted, parked) = {
            let mut st = self.state.lock();
            if stored {
                delivery.stored = Stored::at(st.next_seq);
                st.next_seq += 1;
            }
            let (outcome, evicted) = st.push(delivery);
            if let Some(journal) = journal {
                if let Enqueued::Queued | Enqueued::DroppedOldest = outcome {
                    // Queued: it is at the back now.
                    if let Some(d) = st.queue.back() {
                        if let Some(seq) = d.stored.seq() {
                            journal.queued(&self.client_id, seq, d);
                        }
                    }
                }
                for e in &evicted {
                    journal.forget(&self.client_id, *e);
                }
            }
            // A parked connection is woken through the reactor, an active one
            // through `notify`.
            let parked = match (&outcome, &st.link) {
                (Enqueued::Queued | Enqueued::DroppedOldest, Some(link)) => {
                    link.parked.as_ref().map(|p| (p.clone(), link.conn_id))
                }
                _ => None,
            };
            (outcome, evicted, parked)
        };
        drop(evicted);
        let wake = || match &parked {
            Some((at, conn_id)) => at.wake(*conn_id),
            None => self.notify.notify_one(),
        };
        match outcome {
            Enqueued::Queued => wake(),
            Enqueued::DroppedOldest => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                wake();
            }
            Enqueued::Dropped => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Enqueued::Skipped => {}
        }
        outcome
    }
}

impl SessionState {
    /// Queues a delivery within the bounds. Returns the outcome and the store
    /// sequence numbers of messages evicted to make room.
    fn push(&mut self, delivery: Delivery) -> (Enqueued, Vec<u64>) {
        let mut evicted = Vec::new();
        if delivery.qos == QoS::AtMostOnce && self.link.is_none() && !self.limits.qos0_offline {
            return (Enqueued::Skipped, evicted);
        }
        let size = delivery.weight as usize;
        let full = self.queue.len() >= self.limits.max_messages
            || self.queued_bytes + size > self.limits.max_bytes;
        let mut outcome = Enqueued::Queued;
        if full {
            if delivery.qos == QoS::AtMostOnce || self.limits.policy == OverflowPolicy::DropNewest {
                return (Enqueued::Dropped, evicted);
            }
            // Drop the oldest until the new message fits.
            while !self.queue.is_empty()
                && (self.queue.len() >= self.limits.max_messages
                    || self.queued_bytes + size > self.limits.max_bytes)
            {
                if let Some(old) = self.queue.pop_front() {
                    self.queued_bytes -= old.weight as usize;
                    evicted.extend(old.stored.seq());
                }
            }
            if size > self.limits.max_bytes {
                return (Enqueued::Dropped, evicted);
            }
            outcome = Enqueued::DroppedOldest;
        }
        self.queued_bytes += size;
        self.queue.push_back(delivery);
        (outcome, evicted)
    }

    /// Takes the next queued delivery.
    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.weight as usize;
        Some(d)
    }

    /// Puts a delivery back at the front of the queue (it could not be sent yet).
    pub fn unpop(&mut self, delivery: Delivery) {
        self.queued_bytes += delivery.weight as usize;
        self.queue.push_front(delivery);
    }

    /// Appends a delivery read back from the store, outside the bounds (what
    /// was stored was accepted within them).
    pub fn restore(&mut self, delivery: Delivery) {
        self.queued_bytes += delivery.weight as usize;
        self.queue.push_back(delivery);
    }

    /// Removes and returns the queued deliveries `take` picks, keeping the
    /// others in order.
    pub fn take_queued(&mut self, mut take: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let mut taken = Vec::new();
        let queue = std::mem::take(&mut self.queue);
        for d in queue {
            if take(&d) {
                self.queued_bytes -= d.weight as usize;
                taken.push(d);
            } else {
                self.queue.push_back(d);
            }
        }
        taken
    }

    /// How many deliveries are queued.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Payload bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// A session restored from the store: its first generation, before any
    /// connection attaches.
    pub(crate) fn restored(&mut self) {
        self.generation = 1;
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// Attaches connection `link`, as a new generation of the session (a
    /// resume or a first connection); returns what was attached before.
    pub fn attach(&mut self, link: Link) -> Option<Link> {
        self.generation += 1;
        self.link.replace(link)
    }

    /// Takes the attached connection's link away (a takeover).
    pub fn take_link(&mut self) -> Option<Link> {
        self.link.take()
    }

    /// Detaches connection `conn_id` if it is the one attached, with the
    /// session expiry it ended with. Returns the generation it ends, which
    /// later steps (will, expiry) check against a resume.
    pub fn detach(&mut self, conn_id: u64, expiry_interval: u32) -> Option<u64> {
        if !self.is_attached_to(conn_id) {
            return None;
        }
        self.link = None;
        self.expiry_interval = expiry_interval;
        Some(self.generation)
    }

    /// Whether the session was resumed (or is attached) since `generation`.
    pub fn resumed_since(&self, generation: u64) -> bool {
        self.generation != generation || self.link.is_some()
    }

    /// The link of connection `conn_id`, if it is the one attached.
    pub(crate) fn link_of(&mut self, conn_id: u64) -> Option<&mut Link> {
        self.link.as_mut().filter(|l| l.conn_id == conn_id)
    }

    /// A packet identifier not used by any in-flight outgoing message.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1).max(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// Removes the in-flight message with this id, if any.
    pub fn take_inflight(&mut self, packet_id: u16) -> Option<Inflight> {
        let pos = self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id)?;
        self.inflight.remove(pos)
    }

    /// Whether the attached connection is `conn_id`.
    pub fn is_attached_to(&self, conn_id: u64) -> bool {
        self.link.as_ref().is_some_and(|l| l.conn_id == conn_id)
    }
}

/// The broker's sessions by client id. The key is the session's own
/// `client_id`, so an entry costs one pointer (a map from id to session would
/// hold a second copy of the id in every entry).
#[derive(Debug, Default)]
pub struct Sessions(HashSet<ById>);

/// A session in [`Sessions`], hashed and compared by its client id.
#[derive(Debug, Clone)]
struct ById(Arc<Session>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // As `str` hashes: lookups borrow the key as `&str`.
        <str as std::hash::Hash>::hash(&self.0.client_id, h);
    }
}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

impl Sessions {
    /// The session of `client_id`.
    pub fn get(&self, client_id: &str) -> Option<&Arc<Session>> {
        self.0.get(client_id).map(|s| &s.0)
    }

    /// Adds a session, replacing one with the same client id (returned).
    pub fn insert(&mut self, session: Arc<Session>) -> Option<Arc<Session>> {
        self.0.replace(ById(session)).map(|s| s.0)
    }

    /// Removes the session of `client_id`.
    pub fn remove(&mut self, client_id: &str) -> Option<Arc<Session>> {
        self.0.take(client_id).map(|s| s.0)
    }

    /// Every session.
    pub fn values(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.0.iter().map(|s| &s.0)
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Extend<Arc<Session>> for Sessions {
    fn extend<I: IntoIterator<Item = Arc<Session>>>(&mut self, iter: I) {
        self.0.extend(iter.into_iter().map(ById));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, Stored};
    use bytes::Bytes;

    fn session(max_messages: usize, max_bytes: usize, policy: OverflowPolicy) -> Session {
        let limits = QueueLimits {
            max_messages,
            max_bytes,
            policy,
            qos0_offline: false,
        };
        Session::new("s".into(), 0, Arc::new(limits))
    }

    fn delivery(payload: &'static str, qos: QoS, seq: u64) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(payload.as_bytes()),
                qos,
                retain: false,
                properties: Default::default(),
                expires_at: None,
                publisher: None,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            share: None,
            stored: Stored::at(seq),
            weight: payload.len() as u32,
        }
    }

    fn payloads(st: &mut SessionState) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = st.pop() {
            out.push(String::from_utf8_lossy(&d.msg.payload).into_owned());
        }
        out
    }

    #[test]
    fn the_queue_keeps_its_bounds_and_its_byte_count() {
        let s = session(2, 1000, OverflowPolicy::DropOldest);
        let mut st = s.state.lock();
        st.link = Some(Link::new(1));
        assert_eq!(
            st.push(delivery("aa", QoS::AtLeastOnce, 1)).0,
            Enqueued::Queued
        );
        assert_eq!(
            st.push(delivery("bbb", QoS::AtLeastOnce, 2)).0,
            Enqueued::Queued
        );
        assert_eq!(st.queued_bytes(), 5);
        // Full: the oldest goes, and its store record with it.
        let (outcome, evicted) = st.push(delivery("c", QoS::AtLeastOnce, 3));
        assert_eq!((outcome, evicted), (Enqueued::DroppedOldest, vec![1]));
        assert_eq!(st.queued_bytes(), 4);
        // QoS 0 is never queued past the bound.
        assert_eq!(
            st.push(delivery("d", QoS::AtMostOnce, 0)).0,
            Enqueued::Dropped
        );
        assert_eq!(payloads(&mut st), ["bbb", "c"]);
        assert_eq!(st.queued_bytes(), 0);
    }

    #[test]
    fn drop_newest_and_the_byte_bound() {
        let s = session(10, 4, OverflowPolicy::DropNewest);
        let mut st = s.state.lock();
        st.link = Some(Link::new(1));
        assert_eq!(
            st.push(delivery("abc", QoS::AtLeastOnce, 1)).0,
            Enqueued::Queued
        );
        assert_eq!(
            st.push(delivery("de", QoS::AtLeastOnce, 2)).0,
            Enqueued::Dropped
        );
        let s = session(10, 4, OverflowPolicy::DropOldest);
        let mut st = s.state.lock();
        st.link = Some(Link::new(1));
        st.push(delivery("abc", QoS::AtLeastOnce, 1));
        // Larger than the whole bound: dropped, after making room in vain.
        assert_eq!(
            st.push(delivery("abcde", QoS::AtLeastOnce, 2)).0,
            Enqueued::Dropped
        );
    }

    #[test]
    fn a_delivery_stays_64_bytes() {
        assert!(
            std::mem::size_of::<Delivery>() <= 64,
            "{}",
            std::mem::size_of::<Delivery>()
        );
    }

    #[test]
    fn properties_count_against_the_byte_bound() {
        let big = "x".repeat(1000);
        let mut properties = starling_codec::Properties::default();
        properties
            .user_properties
            .push(("k".into(), big.as_str().into()));
        properties.correlation_data = Some(Bytes::from_static(b"0123456789"));
        let msg = Message {
            topic: "topic".into(),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties,
            expires_at: None,
            publisher: None,
        };
        // Payload, topic, correlation data, and the pair with its headers.
        assert_eq!(msg.weight(), 1 + 5 + 10 + 1 + 1000 + 64);
        let s = session(10, 500, OverflowPolicy::DropOldest);
        let mut st = s.state.lock();
        st.link = Some(Link::new(1));
        let d = Delivery {
            weight: msg.weight(),
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            share: None,
            stored: Stored::NOT,
        };
        // A one-byte payload, but more than the bound in all.
        assert_eq!(st.push(d).0, Enqueued::Dropped);
        assert_eq!(st.queued_bytes(), 0);
    }

    #[test]
    fn qos0_for_an_offline_session_is_skipped() {
        let s = session(10, 100, OverflowPolicy::DropOldest);
        let mut st = s.state.lock();
        assert_eq!(
            st.push(delivery("x", QoS::AtMostOnce, 0)).0,
            Enqueued::Skipped
        );
        assert_eq!(
            st.push(delivery("y", QoS::AtLeastOnce, 1)).0,
            Enqueued::Queued
        );
    }

    #[test]
    fn generations_tell_a_resume_from_a_stale_timer() {
        let s = session(10, 100, OverflowPolicy::DropOldest);
        let mut st = s.state.lock();
        assert!(st.attach(Link::new(1)).is_none());
        // Another connection of the same session has not ended it.
        assert_eq!(st.detach(2, 60), None);
        let ended = st.detach(1, 60).expect("detached");
        assert!(
            !st.resumed_since(ended),
            "a timer of this generation may act"
        );
        st.attach(Link::new(3));
        assert!(st.resumed_since(ended), "resumed: the old timer must not");
        assert!(st.link_of(3).is_some() && st.link_of(1).is_none());
        assert!(st.take_link().is_some());
        assert!(!st.is_connected());
    }

    #[test]
    fn take_unpop_and_restore_keep_the_byte_count() {
        let s = session(10, 100, OverflowPolicy::DropOldest);
        let mut st = s.state.lock();
        st.restore(delivery("one", QoS::AtLeastOnce, 1));
        st.restore(delivery("two", QoS::AtLeastOnce, 2));
        st.restore(delivery("three", QoS::AtLeastOnce, 3));
        let taken = st.take_queued(|d| d.stored == Stored::at(2));
        assert_eq!(taken.len(), 1);
        assert_eq!(st.queued_bytes(), 8);
        let first = st.pop().unwrap();
        st.unpop(first);
        assert_eq!((st.queue_len(), st.queued_bytes()), (2, 8));
        assert_eq!(payloads(&mut st), ["one", "three"]);
    }
}

//! A session: the state that outlives a connection. Its subscriptions, its queue
//! of messages not yet sent, its in-flight QoS 1/2 messages in both directions,
//! and the link to the connection attached to it, if any.
//!
//! Locking: `state` is a `parking_lot::Mutex`, held only for short, synchronous
//! updates and never across an `.await`. Publishers take it to push a delivery;
//! the attached connection takes it to drain the queue and record acks.

mod state;
mod walks;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use starling_codec::{ByteString, QoS};
use tokio::sync::Notify;

use crate::journal::Journal;
use crate::message::Delivery;
use crate::store::Persistence;

pub use crate::message::Inflight;
pub(crate) use state::{earliest, ParkedAt, WakeParked};
pub use state::{
    ConnInfo, Enqueued, Kick, Lazy, Link, PageRequest, QueueLimits, SessionState, SpillCensus,
    SubEntry,
};
pub use walks::{RetainedWalk, Walks};

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
    /// The minute (since the Unix epoch) a drop was last logged for this
    /// session: drops are logged at most once a minute per session.
    drop_logged: AtomicU32,
    /// Set by the first [`crate::BrokerState::hand_over`] of the session:
    /// it is written out once (a second, racing it, would write out the
    /// queue the first took, empty, and the new node would install that).
    pub(crate) handed_over: AtomicBool,
}

impl Session {
    /// Whether a connection is attached to the session now.
    pub fn is_connected(&self) -> bool {
        self.state.lock().is_connected()
    }

    /// The session's subscription filters (as the broker routes them), sorted.
    pub fn filters(&self) -> Vec<ByteString> {
        let st = self.state.lock();
        let mut f: Vec<ByteString> = st.subscriptions().map(|(f, _)| f.clone()).collect();
        drop(st);
        f.sort();
        f
    }

    /// Whether the session holds a subscription to `filter`.
    pub fn is_subscribed(&self, filter: &str) -> bool {
        self.state.lock().subscription(filter).is_some()
    }

    /// Messages queued for the session, not yet sent.
    pub fn queued(&self) -> usize {
        self.state.lock().queue_len()
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.state.lock().inflight_len()
    }

    /// A new, empty session.
    pub fn new(client_id: ByteString, expiry_interval: u32, limits: Arc<QueueLimits>) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState::new(expiry_interval, limits)),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            persistent: AtomicBool::new(false),
            drop_logged: AtomicU32::new(0),
            handed_over: AtomicBool::new(false),
        }
    }

    /// Offers a delivery to the session's queue, applying its bounds, and wakes
    /// the attached connection. With a store, a QoS 1/2 delivery to a
    /// persistent session is given a sequence number and handed to the store
    /// at once (counted in `journal`), as is the removal of any message the
    /// bound evicted.
    pub fn enqueue(
        &self,
        delivery: Delivery,
        store: Option<(&Persistence, &mut Journal)>,
    ) -> Enqueued {
        let stored = store.is_some()
            && delivery.qos != QoS::AtMostOnce
            && self.persistent.load(Ordering::Relaxed);
        let (outcome, evicted, parked, was_empty) = {
            let mut st = self.state.lock();
            let was_empty = !st.has_queued();
            let (outcome, evicted, parked) = st.enqueue(delivery, stored, &self.client_id, store);
            (outcome, evicted, parked, was_empty)
        };
        drop(evicted);
        // The attached connection drains its queue to empty (or until its
        // socket, its Receive Maximum or the store holds it, each of which
        // wakes it again), so only a message into an empty queue needs to
        // wake it: under a flood most enqueues skip the wake-up.
        let wake = || match &parked {
            Some((at, conn_id)) => at.wake(*conn_id),
            None if was_empty => self.notify.notify_one(),
            None => {}
        };
        match outcome {
            Enqueued::Queued | Enqueued::Congested => wake(),
            Enqueued::DroppedOldest => {
                self.note_drop();
                wake();
            }
            Enqueued::Dropped => self.note_drop(),
            Enqueued::Skipped => {}
        }
        outcome
    }

    /// Counts a message the queue's bounds dropped, and logs it unless one
    /// was logged for this session in the same minute.
    fn note_drop(&self) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let minute = u32::try_from(crate::store::unix_ms() / 60_000).unwrap_or(u32::MAX);
        let last = self.drop_logged.load(Ordering::Relaxed);
        if last != minute
            && self
                .drop_logged
                .compare_exchange(last, minute, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                client_id = %self.client_id,
                dropped = total,
                "queue full: messages dropped for this session (logged at most once a minute)"
            );
        }
    }

    /// Waits until the queue has drained to half its high-water mark, or
    /// no longer holds publishers back (the connection went, or stalled).
    /// The caller bounds the wait (see `slow-consumer-timeout-ms`).
    pub async fn wait_drained(&self) {
        let notify = {
            let mut st = self.state.lock();
            if !st.holds_publishers() {
                return;
            }
            st.publisher_waits()
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Drained between the check and `enable`: no wakeup would come.
        if !self.state.lock().holds_publishers() {
            return;
        }
        notified.await;
    }

    /// Reads the next page of the session's spilled queue back from the
    /// store, if one is due (see [`SessionState::page_request`]). Returns
    /// the packet ids of QoS 2 messages it found in flight from before a
    /// restart, which the connection resends.
    pub(crate) async fn read_page(&self, store: &Persistence) -> Vec<u16> {
        let Some(req) = self.state.lock().page_request() else {
            return Vec::new();
        };
        self.read_requested(store, req).await
    }

    /// Reads the page `req` asked for (see [`Session::read_page`]).
    pub(crate) async fn read_requested(&self, store: &Persistence, req: PageRequest) -> Vec<u16> {
        let client = self.client_id.clone();
        match store
            .read_queue(client, req.from, req.end, req.limit, req.max_bytes)
            .await
        {
            Ok((records, complete)) => {
                let now = tokio::time::Instant::now();
                let (resend, expired) = self.state.lock().page_read(req, records, complete, now);
                if !expired.is_empty() {
                    let c = &self.client_id;
                    store.submit(
                        expired
                            .into_iter()
                            .map(|seq| crate::store::Op::DeleteMessage(c.clone(), seq))
                            .collect(),
                    );
                }
                resend
            }
            Err(e) => {
                tracing::error!(client_id = %self.client_id, "could not read the stored queue: {e}");
                // Asked for again after a pause, not in a loop.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                self.state.lock().page_failed();
                Vec::new()
            }
        }
    }

    /// The attached connection did not drain in time (see
    /// `SessionState::stall`); with `disconnect`, it is also told to
    /// close as a slow consumer. Returns whether it was newly stalled.
    pub fn stall(&self, disconnect: bool) -> bool {
        let mut st = self.state.lock();
        let stalled = st.stall();
        if stalled && disconnect {
            st.kick_slow_consumer(&self.notify);
        }
        stalled
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
    use crate::config::OverflowPolicy;
    use crate::message::{Message, Stored};
    use bytes::Bytes;

    fn session(max_messages: usize, max_bytes: usize, policy: OverflowPolicy) -> Session {
        let limits = QueueLimits {
            max_messages,
            max_bytes,
            max_memory_bytes: max_bytes,
            spilled: Default::default(),
            max_spilled: 0,
            high_water: max_messages,
            high_water_bytes: max_bytes,
            policy,
            qos0_offline: false,
            spill: false,
            first_seq: 1,
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
        st.attach(Link::new(1));
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
        st.attach(Link::new(1));
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
        st.attach(Link::new(1));
        st.push(delivery("abc", QoS::AtLeastOnce, 1));
        // Larger than the whole bound: dropped, after making room in vain.
        assert_eq!(
            st.push(delivery("abcde", QoS::AtLeastOnce, 2)).0,
            Enqueued::Dropped
        );
    }

    /// A session whose stored messages past one in memory spill to disk
    /// (no store here: the records are not written, the bookkeeping is the same).
    fn spilling(max_messages: usize, max_spilled: u64) -> Session {
        spilling_above(max_messages, max_spilled, 1)
    }

    /// As `spilling`, with `high_water` messages in memory while connected.
    fn spilling_above(max_messages: usize, max_spilled: u64, high_water: usize) -> Session {
        let limits = QueueLimits {
            max_messages,
            max_bytes: 1_000,
            max_memory_bytes: 1_000,
            spilled: Default::default(),
            max_spilled,
            high_water,
            high_water_bytes: 1_000,
            policy: OverflowPolicy::DropOldest,
            qos0_offline: false,
            spill: true,
            first_seq: 1,
        };
        Session::new("s".into(), 0, Arc::new(limits))
    }

    fn stored(st: &mut SessionState, payload: &'static str) -> (Enqueued, Vec<u64>) {
        let (outcome, evicted, _) = st.enqueue(
            delivery(payload, QoS::AtLeastOnce, 0),
            true,
            &"s".into(),
            None,
        );
        (outcome, evicted)
    }

    #[test]
    fn a_page_whose_front_was_evicted_is_asked_for_again() {
        let s = spilling(3, 0);
        let mut st = s.state.lock();
        st.attach(Link::new(1));
        for p in ["a", "b", "c"] {
            stored(&mut st, p);
        }
        // "a" in memory, "b" and "c" (2 and 3) spilled.
        assert_eq!(payloads(&mut st), ["a"]);
        let req = st.page_request().expect("a page is due");
        assert_eq!(req.from, 2);
        // Full while the page is read: the oldest spilled message goes.
        assert_eq!(stored(&mut st, "d").0, Enqueued::Queued);
        assert_eq!(stored(&mut st, "e"), (Enqueued::DroppedOldest, vec![2]));
        let (resend, expired) = st.page_read(req, Vec::new(), false, tokio::time::Instant::now());
        assert!(resend.is_empty() && expired.is_empty());
        // Not stuck: the next page starts after the evicted one.
        assert_eq!(st.page_request().map(|r| r.from), Some(3));
    }

    #[test]
    fn the_sweeper_reads_a_spill_once_its_earliest_expiry_has_passed() {
        let s = spilling(100, 0);
        let mut st = s.state.lock();
        let now = tokio::time::Instant::now();
        let hour = std::time::Duration::from_secs(3600);
        let mut d = delivery("x", QoS::AtLeastOnce, 0);
        Arc::get_mut(&mut d.msg).unwrap().expires_at = Some(now + hour);
        // No connection: spilled at once, with its expiry noted.
        st.enqueue(d, true, &"s".into(), None);
        assert!(
            st.sweep_request(now).is_none(),
            "counted, nothing expired yet"
        );
        let req = st
            .sweep_request(now + 2 * hour)
            .expect("due once it expired");
        // A census that finds nothing left: no further sweep is due.
        st.swept(req, Some(SpillCensus::default()));
        assert!(st.sweep_request(now + 3 * hour).is_none());
    }

    #[test]
    fn the_disk_quota_evicts_only_what_makes_room() {
        // Room for three one-byte messages on disk, broker-wide.
        let s = spilling(100, 3);
        let mut st = s.state.lock();
        st.attach(Link::new(1));
        stored(&mut st, "a"); // in memory
        for p in ["b", "c", "d"] {
            assert_eq!(stored(&mut st, p).0, Enqueued::Queued);
        }
        // The quota is full: one more evicts the oldest in memory first,
        // then the oldest on disk, one each.
        assert_eq!(stored(&mut st, "e"), (Enqueued::DroppedOldest, vec![1, 2]));
        assert_eq!(st.queue_len(), 3);
    }

    #[test]
    fn an_offline_session_keeps_its_stored_queue_on_disk_only() {
        // Ten in memory while connected.
        let s = spilling_above(100, 0, 10);
        let mut st = s.state.lock();
        st.attach(Link::new(1));
        for p in ["a", "b", "c", "d"] {
            stored(&mut st, p);
        }
        let sent = st.pop().expect("a");
        st.push_inflight(Inflight {
            packet_id: 1,
            delivery: sent,
            released: false,
        });
        let mut qos0 = delivery("q0", QoS::AtMostOnce, 0);
        qos0.stored = Stored::NOT;
        st.push(qos0);
        assert_eq!(st.queue_len(), 4);
        st.detach(1, 60).expect("detached");
        assert_eq!(st.park_queue(), 3, "b, c and d");
        assert_eq!(st.queued_bytes(), 0, "nothing in memory");
        assert_eq!(st.queue_len(), 3, "counted on disk; QoS 0 dropped");
        assert_eq!(st.inflight_len(), 1, "the window stays");
        // Back: read from the first parked one, after the one in flight.
        st.attach(Link::new(2));
        let req = st.page_request().expect("a page is due");
        assert_eq!((req.from, req.end), (2, 5));
        // A message newer than every one in flight is parked even when an
        // older stored one stays (in-flight numbers must not be re-read).
        st.page_failed();
        let older = delivery("old", QoS::AtLeastOnce, 1);
        st.detach(2, 60).expect("detached");
        st.restore(older);
        assert_eq!(st.park_queue(), 0, "seq 1 is not above the one in flight");
        assert_eq!(st.queued_bytes(), 3, "kept in memory");
    }

    #[test]
    fn an_offline_session_with_only_qos0_queued_keeps_none_of_it() {
        let s = spilling_above(100, 0, 10);
        let mut st = s.state.lock();
        st.attach(Link::new(1));
        let mut qos0 = delivery("q0", QoS::AtMostOnce, 0);
        qos0.stored = Stored::NOT;
        st.push(qos0);
        st.detach(1, 60).expect("detached");
        assert_eq!(st.park_queue(), 0, "nothing stored to park");
        assert_eq!((st.queue_len(), st.queued_bytes()), (0, 0));
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
        st.attach(Link::new(1));
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

//! The mutable part of a session ([`SessionState`], behind the session's
//! lock) and what it is made of: the link to the attached connection, the
//! subscriptions, the queue within its bounds, the in-flight messages both
//! ways. Its fields are private: its methods keep the queue's byte count, the
//! generation and the packet identifiers right.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use starling_codec::{ByteString, QoS, SubscriptionOptions};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::{Acl, Grant, ListenerFile};
use crate::config::OverflowPolicy;
use crate::journal::{message_record, Journal};
use crate::message::{Delivery, Inflight, Stored};
use crate::store::{MessageRecord, Op, Persistence};

/// The attached connection, as the session sees it. Taking the link away
/// tells the connection to close: it checks whether it is still attached each
/// time it wakes, and [`Link::taken_over`] wakes it.
#[derive(Debug)]
pub struct Link {
    /// Broker-wide id of the connection.
    pub conn_id: u64,
    /// Set while the connection is parked (see [`crate::connection::hibernate`]).
    pub(crate) parked: Option<ParkedAt>,
    /// What the admin API shows of the connection.
    pub info: ConnInfo,
    /// An operator asked the connection to close (the admin API); with
    /// `EndSession` the session ends with it.
    kick: Kick,
}

/// Why the attached connection was told to close, other than a takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Not told.
    No,
    /// An operator closed it.
    Close,
    /// An operator closed it and ended its session.
    EndSession,
    /// It did not drain its queue in time (`slow-consumer = "disconnect"`).
    SlowConsumer,
    /// Another node of the cluster took the session over; it ends here.
    TakenOver,
    /// This node cannot keep the session for the cluster (it lost NATS, or
    /// another node owns the session now): the client is sent to another
    /// node, and its will is the cluster's to publish, not this node's.
    Fenced,
    /// This node is stopping (a graceful restart of a cluster node): the
    /// client is sent to another node; its will is published as for any
    /// connection the server closes.
    Draining,
}

/// What the admin API shows of an attached connection. Compact (28 bytes):
/// every connected session holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address (as the PROXY protocol gave it, if used).
    ip: std::net::IpAddr,
    port: u16,
    /// The index of the listener it came through (see
    /// [`crate::broker::BrokerState::listeners`]); `u16::MAX` when none.
    pub listener: u16,
    /// The protocol version.
    pub protocol: starling_codec::ProtocolVersion,
    /// The keep alive in force, in seconds.
    pub keep_alive: u16,
    /// When it connected, in seconds since the Unix epoch.
    connected_at: u32,
}

impl ConnInfo {
    /// A connection from `peer` through listener `listener`, connected now.
    pub fn new(
        peer: std::net::SocketAddr,
        listener: u16,
        protocol: starling_codec::ProtocolVersion,
        keep_alive: u16,
    ) -> ConnInfo {
        ConnInfo {
            ip: peer.ip(),
            port: peer.port(),
            listener,
            protocol,
            keep_alive,
            connected_at: u32::try_from(crate::store::unix_ms() / 1000).unwrap_or(u32::MAX),
        }
    }

    /// Info for a connection that has none to give (tests, the in-memory connector).
    pub fn unknown() -> ConnInfo {
        ConnInfo {
            ip: std::net::IpAddr::from([0, 0, 0, 0]),
            port: 0,
            listener: u16::MAX,
            protocol: starling_codec::ProtocolVersion::V5,
            keep_alive: 0,
            connected_at: 0,
        }
    }

    /// The client's address.
    pub fn peer(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }

    /// When it connected, in seconds since the Unix epoch.
    pub fn connected_at(&self) -> u64 {
        u64::from(self.connected_at)
    }
}

impl Link {
    /// A link to connection `conn_id`.
    pub fn new(conn_id: u64) -> Link {
        Link::with_info(conn_id, ConnInfo::unknown())
    }

    /// A link to connection `conn_id`, described by `info`.
    pub fn with_info(conn_id: u64, info: ConnInfo) -> Link {
        Link {
            conn_id,
            parked: None,
            info,
            kick: Kick::No,
        }
    }

    /// Wakes the connection (parked or not), so that it looks at its session.
    fn wake(&self, notify: &Notify) {
        match &self.parked {
            Some(p) => p.wake(self.conn_id),
            None => notify.notify_waiters(),
        }
    }

    /// Wakes the connection of a link just taken from `session`, so that it
    /// sees it is detached and closes.
    pub fn taken_over(self, notify: &Notify) {
        self.wake(notify);
    }
}

/// What happened to a delivery offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued.
    Queued,
    /// Queued, and the queue of the attached connection is past its
    /// high-water mark: the publisher should stop reading until it drains
    /// (see [`super::Session::wait_drained`]).
    Congested,
    /// Queued after dropping the oldest message.
    DroppedOldest,
    /// Not queued.
    Dropped,
    /// Not queued: QoS 0 to an offline session is not kept.
    Skipped,
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubEntry {
    /// Options granted.
    pub options: SubscriptionOptions,
    /// MQTT 5 subscription identifier.
    pub id: Option<u32>,
}

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
#[derive(Debug, Clone)]
pub struct QueueLimits {
    /// Most messages.
    pub max_messages: usize,
    /// Most payload bytes, in memory and on disk.
    pub max_bytes: usize,
    /// Most bytes in memory.
    pub max_memory_bytes: usize,
    /// Bytes spilled to disk by every session together, and their bound
    /// (0: none).
    pub spilled: Arc<std::sync::atomic::AtomicU64>,
    /// See `spilled`.
    pub max_spilled: u64,
    /// Past this many messages (or `high_water_bytes`) the queue of an
    /// attached connection holds its publishers back; they go on once it is
    /// down to half.
    pub high_water: usize,
    /// See `high_water`.
    pub high_water_bytes: usize,
    /// What a full queue drops.
    pub policy: OverflowPolicy,
    /// Whether QoS 0 messages are queued while no connection is attached.
    pub qos0_offline: bool,
    /// Whether a persistent session's stored messages beyond `high_water`
    /// (all of them while no connection is attached) stay on disk only,
    /// read back page by page (see `Spill`).
    pub spill: bool,
    /// The first store sequence number of this run (see [`crate::store::Loaded::first_seq`]).
    pub first_seq: u64,
}

/// The part of a persistent session's queue kept only in the store: the
/// messages with sequence numbers from `next` up, all newer than any stored
/// message in memory. The attached connection reads it back a page at a
/// time as it drains its queue; a session restored at startup starts with
/// its whole queue here (`next` = 0), uncounted until read.
#[derive(Debug)]
pub struct Spill {
    /// The first sequence number not read back yet.
    next: u64,
    /// Messages spilled since the count started (a restored queue is not
    /// counted until read).
    count: usize,
    /// Their size, as `Delivery::weight` counts it.
    bytes: usize,
    /// The earliest expiry among them, as far as known (the sweeper reads
    /// the spill of an offline session once it has passed, not every time
    /// some message in it has an expiry).
    next_expiry: Option<Instant>,
    /// Whether `count` and `bytes` cover the whole spill (a restored queue's
    /// are not known until the sweeper or the client has read it).
    counted: bool,
    /// A page is being read, or the sweeper reads the spill.
    loading: bool,
    /// `count`, `bytes` and `next_expiry` when the sweeper started reading.
    at_sweep: (usize, usize, Option<Instant>),
}

impl Spill {
    fn new(next: u64, counted: bool) -> Box<Spill> {
        Box::new(Spill {
            next,
            count: 0,
            bytes: 0,
            next_expiry: None,
            counted,
            loading: false,
            at_sweep: (0, 0, None),
        })
    }
}

/// What the sweeper found in a spill it read whole (see
/// `SessionState::swept`): what remains after the expired were deleted.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpillCensus {
    /// Messages.
    pub count: usize,
    /// Their size.
    pub bytes: usize,
    /// The earliest expiry among them.
    pub next_expiry: Option<Instant>,
    /// The first sequence number found: the spill starts there (a restored
    /// one is known to start at 0 only), so that evicting its oldest
    /// message deletes a record that exists.
    pub first: Option<u64>,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        // The session's records go with it: its spill no longer counts
        // towards the disk quota.
        if let Some(spill) = self.spill.take() {
            self.note_spilled(0, spill.bytes);
        }
    }
}

/// The earlier of two optional deadlines (none: no deadline).
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A page of a spilled queue to read back: sequence numbers `from..end`, at
/// most `limit` messages or about `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// The first sequence number to read.
    pub from: u64,
    /// Every message spilled before the request is below this.
    pub end: u64,
    /// Most messages.
    pub limit: usize,
    /// About this many bytes at most.
    pub max_bytes: usize,
    /// The session's generation when asked: a page read for a connection
    /// since replaced is not used.
    pub generation: u64,
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionState {
    /// Messages not yet sent, oldest first.
    queue: VecDeque<Delivery>,
    /// What follows `queue` on disk only (persistent sessions).
    spill: Option<Box<Spill>>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    /// Outgoing QoS 1/2 messages sent and not yet fully acknowledged, in send order.
    inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Incoming QoS 2 packet ids for which PUBREC was sent and PUBREL is awaited.
    incoming_qos2: Lazy<HashSet<u16>>,
    /// Subscriptions by filter.
    subscriptions: Lazy<HashMap<ByteString, SubEntry>>,
    /// The connection attached now.
    link: Option<Link>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    expiry_interval: u32,
    /// Counts attachments; timers compare it to know whether the session was resumed.
    generation: u64,
    /// Queue bounds (shared by every session of the broker).
    limits: Arc<QueueLimits>,
    /// User name of the last connection, for read ACL checks at delivery.
    username: Option<ByteString>,
    /// Next store sequence number for a queued message.
    next_seq: u64,
    /// The ACL of the listener the last connection came through, when it has
    /// its own (`acl-file` in `[[listener]]`; else the broker's is used),
    /// and what its authentication source granted (its own topic rules,
    /// superuser): for read checks at delivery. Boxed, and `None` when
    /// neither is set (the usual case).
    rights: Option<Box<Rights>>,
    /// Wakes publishers held back by this queue when it drains (allocated
    /// the first time one waits).
    drained: Option<Arc<Notify>>,
    /// Whether a publisher waits on `drained`.
    publishers_waiting: bool,
    /// The attached connection did not drain its queue within the
    /// backpressure bound: publishers no longer wait for it, and its QoS 0
    /// messages past the high-water mark are dropped, until it catches up.
    stalled: bool,
    /// New subscriptions' retained messages still to send.
    retained: super::Walks,
}

/// A session's listener ACL and grant (see `SessionState::rights`).
#[derive(Debug)]
struct Rights {
    acl: Option<Arc<ListenerFile<Acl>>>,
    grant: Option<Arc<Grant>>,
}

impl SessionState {
    /// The state of a new session.
    pub fn new(expiry_interval: u32, limits: Arc<QueueLimits>) -> SessionState {
        let next_seq = limits.first_seq.max(1);
        SessionState {
            queue: VecDeque::new(),
            spill: None,
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
            next_seq,
            rights: None,
            drained: None,
            publishers_waiting: false,
            stalled: false,
            retained: super::Walks::default(),
        }
    }

    /// Queues a delivery for session `client_id` within the bounds (see
    /// [`super::Session::enqueue`]): numbered for the store when `stored`, and
    /// then handed to the store with what the bounds evicted, through
    /// `journal`, before the lock is released. Returns the outcome, the
    /// evicted deliveries, and the parked connection to wake, if the
    /// connection is parked.
    pub(crate) fn enqueue(
        &mut self,
        mut delivery: Delivery,
        stored: bool,
        client_id: &ByteString,
        store: Option<(&Persistence, &mut Journal)>,
    ) -> (Enqueued, Vec<u64>, Option<(ParkedAt, u64)>) {
        if stored {
            delivery.stored = Stored::at(self.next_seq);
            self.next_seq += 1;
            let spills = self.spill.is_some()
                || self.link.is_none()
                || self.queue.len() >= self.limits.high_water;
            if self.limits.spill && spills {
                return self.spill(delivery, client_id, store);
            }
        }
        let (mut outcome, evicted) = self.push(delivery);
        let queued = matches!(outcome, Enqueued::Queued | Enqueued::DroppedOldest);
        if outcome == Enqueued::Queued && self.congested() {
            outcome = Enqueued::Congested;
        }
        if let Some((store, journal)) = store {
            let mut ops = Vec::new();
            // Queued: it is at the back now.
            if let Some((record, seq)) = self
                .queue
                .back()
                .filter(|_| queued)
                // The sequence number first: a delivery not stored (QoS 0, a
                // clean session) must not cost a record's encoding.
                .and_then(|d| {
                    let seq = d.stored.seq()?;
                    Some((message_record(d)?, seq))
                })
            {
                ops.push(Op::Message(client_id.clone(), seq, record));
            }
            for e in &evicted {
                ops.push(Op::DeleteMessage(client_id.clone(), *e));
            }
            if !ops.is_empty() {
                journal.queue_changed(store, ops);
            }
        }
        // A parked connection is woken through the reactor, an active one
        // through `notify`.
        let parked = match &self.link {
            Some(link) if queued => link.parked.as_ref().map(|p| (p.clone(), link.conn_id)),
            _ => None,
        };
        (outcome, evicted, parked)
    }

    /// Keeps a stored delivery on disk only, at the end of the spill, within
    /// the queue's bounds (what `DropOldest` evicts comes from memory first,
    /// then from the front of the spill).
    fn spill(
        &mut self,
        delivery: Delivery,
        client_id: &ByteString,
        store: Option<(&Persistence, &mut Journal)>,
    ) -> (Enqueued, Vec<u64>, Option<(ParkedAt, u64)>) {
        let size = delivery.weight as usize;
        let mut evicted = Vec::new();
        let mut outcome = Enqueued::Queued;
        let mut freed = 0usize;
        if self.is_full(size) || self.quota_full(size) {
            if self.limits.policy != OverflowPolicy::DropOldest {
                return (Enqueued::Dropped, evicted, None);
            }
            while self.is_full(size) || self.quota_full_after(size, freed) {
                if let Some(old) = self.queue.pop_front() {
                    self.queued_bytes -= old.weight as usize;
                    evicted.extend(old.stored.seq());
                } else if let Some(spill) = self.spill.as_mut().filter(|s| s.count > 0) {
                    evicted.push(spill.next);
                    let gone = spill.bytes / spill.count;
                    freed += gone;
                    spill.bytes -= gone;
                    spill.count -= 1;
                    spill.next += 1;
                } else {
                    break;
                }
            }
            self.note_spilled(0, freed);
            if size > self.limits.max_bytes || self.quota_full(size) {
                return (Enqueued::Dropped, evicted, None);
            }
            outcome = Enqueued::DroppedOldest;
        }
        let seq = delivery.stored.seq().unwrap_or(0);
        let spill = self.spill.get_or_insert_with(|| Spill::new(seq, true));
        spill.count += 1;
        spill.bytes += size;
        spill.next_expiry = earliest(spill.next_expiry, delivery.msg.expires_at);
        self.note_spilled(size, 0);
        if let Some((store, journal)) = store {
            let mut ops: Vec<Op> = message_record(&delivery)
                .map(|r| Op::Message(client_id.clone(), seq, r))
                .into_iter()
                .collect();
            ops.extend(
                evicted
                    .iter()
                    .map(|e| Op::DeleteMessage(client_id.clone(), *e)),
            );
            journal.queue_changed(store, ops);
        }
        let parked = self
            .link
            .as_ref()
            .and_then(|link| link.parked.as_ref().map(|p| (p.clone(), link.conn_id)));
        (outcome, evicted, parked)
    }

    /// Whether a message of `size` does not fit within the queue's bounds,
    /// its spill included.
    fn is_full(&self, size: usize) -> bool {
        let (count, bytes) = self.spill.as_ref().map_or((0, 0), |s| (s.count, s.bytes));
        self.queue.len() + count >= self.limits.max_messages
            || self.queued_bytes + bytes + size > self.limits.max_bytes
    }

    /// Whether a message of `size` does not fit in memory.
    fn memory_full(&self, size: usize) -> bool {
        self.is_full(size) || self.queued_bytes + size > self.limits.max_memory_bytes
    }

    /// Whether the broker's disk quota for queues has no room for `size`
    /// more bytes.
    fn quota_full(&self, size: usize) -> bool {
        self.quota_full_after(size, 0)
    }

    /// As `quota_full`, once `freed` bytes (evicted, not yet noted) are gone.
    fn quota_full_after(&self, size: usize, freed: usize) -> bool {
        let used = self
            .limits
            .spilled
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(freed as u64);
        self.limits.max_spilled != 0 && used + size as u64 > self.limits.max_spilled
    }

    /// Whether a QoS 1/2 message of `size` would be refused by a full queue
    /// under `queue-overflow = "reject"` (only persistent sessions refuse:
    /// their queues are what an acknowledgement promises).
    pub fn refuses(&self, size: usize) -> bool {
        self.limits.policy == OverflowPolicy::Reject
            && (self.is_full(size) || (self.limits.spill && self.quota_full(size)))
    }

    /// Notes `delta` bytes more (or fewer) spilled, broker-wide.
    fn note_spilled(&self, more: usize, fewer: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if more > 0 {
            self.limits.spilled.fetch_add(more as u64, Relaxed);
        }
        if fewer > 0 {
            let _ = self
                .limits
                .spilled
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(fewer as u64)));
        }
    }

    /// A session restored from a store that reads queues lazily: its whole
    /// stored queue is spilled, uncounted until read.
    pub(crate) fn restored_spilled(&mut self) {
        self.spill = Some(Spill::new(0, false));
    }

    /// For the sweeper: the whole spill of a session with no connection,
    /// if it may hold expired messages or is not counted yet; marks it
    /// being read.
    pub(crate) fn sweep_request(&mut self, now: Instant) -> Option<PageRequest> {
        if self.link.is_some() {
            return None;
        }
        let due = |s: &Spill| !s.counted || s.next_expiry.is_some_and(|t| t <= now);
        let spill = self.spill.as_mut().filter(|s| !s.loading && due(s))?;
        spill.loading = true;
        // Spilled during the sweep: their expiries gather afresh.
        spill.at_sweep = (spill.count, spill.bytes, spill.next_expiry.take());
        let from = spill.next;
        Some(self.page_from(from))
    }

    /// A page of the spill from `from` on: everything spilled so far is
    /// below `end`; a memory window's worth at most.
    fn page_from(&self, from: u64) -> PageRequest {
        PageRequest {
            from,
            end: self.next_seq,
            limit: self.limits.high_water.max(1),
            max_bytes: (self.limits.high_water_bytes / 2).max(1),
            generation: self.generation,
        }
    }

    /// The sweeper read the spill of `req` whole (`None`: it failed) and
    /// deleted what had expired: the spill is counted from what remains,
    /// plus what was spilled meanwhile. Nothing changes if a connection
    /// attached or the front of the spill moved in between.
    pub(crate) fn swept(&mut self, req: PageRequest, census: Option<SpillCensus>) {
        let generation = self.generation;
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        if req.generation != generation || !spill.loading {
            return;
        }
        spill.loading = false;
        let (count, bytes, expiry) = spill.at_sweep;
        // Its front was evicted meanwhile, the census may count records that
        // are gone, so it is not used (the next sweep counts again); nor is
        // a failed one.
        let Some(c) = census.filter(|_| spill.next == req.from) else {
            spill.next_expiry = earliest(spill.next_expiry, expiry);
            return;
        };
        let before = spill.bytes;
        spill.count = c.count + spill.count.saturating_sub(count);
        spill.bytes = c.bytes + spill.bytes.saturating_sub(bytes);
        let after = spill.bytes;
        spill.next_expiry = earliest(spill.next_expiry, c.next_expiry);
        spill.counted = true;
        if let Some(first) = c.first {
            spill.next = spill.next.max(first);
        }
        // A restored queue's bytes count towards the quota once counted.
        self.note_spilled(after.saturating_sub(before), before.saturating_sub(after));
    }

    /// The next page to read back, if the attached connection has drained
    /// its queue to half its high-water mark and a spill remains; marks it
    /// being read.
    pub(crate) fn page_request(&mut self) -> Option<PageRequest> {
        let low = self.queue.len() <= self.limits.high_water / 2;
        let spill = self.spill.as_mut().filter(|s| !s.loading)?;
        if !low || self.link.is_none() {
            return None;
        }
        spill.loading = true;
        let from = spill.next;
        Some(self.page_from(from))
    }

    /// A page asked for with `req` was read (`complete`: up to `req.end`).
    /// Its messages join the queue; QoS 2 messages that were in flight
    /// before a restart join the in-flight window, and their packet ids are
    /// returned, to be resent. Expired messages are returned for deletion.
    pub(crate) fn page_read(
        &mut self,
        req: PageRequest,
        records: Vec<(u64, MessageRecord)>,
        complete: bool,
        now: tokio::time::Instant,
    ) -> (Vec<u16>, Vec<u64>) {
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        if req.generation != self.generation {
            return (resend, expired);
        }
        let Some(spill) = self.spill.as_mut().filter(|s| s.loading) else {
            return (resend, expired);
        };
        spill.loading = false;
        // Its front was evicted meanwhile: the page may hold records that
        // are gone; the connection asks for the next one afresh.
        if spill.next != req.from {
            return (resend, expired);
        }
        let mut read = 0usize;
        let mut read_bytes = 0usize;
        let mut last = None;
        let mut restored = Vec::new();
        for (seq, rec) in records {
            last = Some(seq);
            let delivery = crate::journal::delivery_from_record(seq, &rec);
            // A QoS 2 exchange under way is finished even if the message
            // expired: the receiver holds its packet id (as the sweeper does).
            let in_flight = rec.packet_id != 0 && rec.publish.qos == QoS::ExactlyOnce;
            if !in_flight
                && delivery
                    .msg
                    .is_expired(now.max(tokio::time::Instant::now()))
            {
                expired.push(seq);
                continue;
            }
            if in_flight {
                resend.push(rec.packet_id);
                restored.push(Inflight {
                    packet_id: rec.packet_id,
                    delivery,
                    released: rec.released,
                });
                continue;
            }
            read += 1;
            read_bytes += delivery.weight as usize;
            self.queued_bytes += delivery.weight as usize;
            self.queue.push_back(delivery);
        }
        spill.count = spill.count.saturating_sub(read + expired.len());
        let before = spill.bytes;
        spill.bytes = spill.bytes.saturating_sub(read_bytes);
        let fewer = before - spill.bytes;
        spill.next = match (complete, last) {
            (true, _) => req.end,
            (false, Some(last)) => last + 1,
            (false, None) => spill.next,
        };
        // Nothing spilled since the request: the spill is all read.
        if complete && self.next_seq == req.end {
            let rest = self.spill.take().map_or(0, |s| s.bytes);
            self.note_spilled(0, fewer + rest);
        } else {
            self.note_spilled(0, fewer);
        }
        for i in restored {
            self.inflight.push_back(i);
        }
        (resend, expired)
    }

    /// Takes the whole spill off the session (a handover reads it): the
    /// store sequence range it covers, `[from, end)`.
    pub(crate) fn take_spill(&mut self) -> Option<(u64, u64)> {
        let spill = self.spill.take()?;
        let bytes = spill.bytes;
        self.note_spilled(0, bytes);
        Some((spill.next, self.next_seq))
    }

    /// A page could not be read: it is asked for again later.
    pub(crate) fn page_failed(&mut self) {
        if let Some(spill) = self.spill.as_mut() {
            spill.loading = false;
        }
    }

    /// Queues a delivery within the bounds. Returns the outcome and the store
    /// sequence numbers of messages evicted to make room.
    pub(crate) fn push(&mut self, delivery: Delivery) -> (Enqueued, Vec<u64>) {
        let mut evicted = Vec::new();
        if delivery.qos == QoS::AtMostOnce && self.link.is_none() && !self.limits.qos0_offline {
            return (Enqueued::Skipped, evicted);
        }
        let size = delivery.weight as usize;
        // A stalled connection's QoS 0 overflow goes first: it must not
        // fill the queue up to its bound (see `stalled`).
        let full = self.memory_full(size)
            || (self.stalled && delivery.qos == QoS::AtMostOnce && self.above_high_water());
        let mut outcome = Enqueued::Queued;
        if full {
            if delivery.qos == QoS::AtMostOnce || self.limits.policy != OverflowPolicy::DropOldest {
                return (Enqueued::Dropped, evicted);
            }
            // Drop the oldest until the new message fits.
            while !self.queue.is_empty() && self.memory_full(size) {
                if let Some(old) = self.queue.pop_front() {
                    self.queued_bytes -= old.weight as usize;
                    evicted.extend(old.stored.seq());
                }
            }
            if self.memory_full(size) {
                return (Enqueued::Dropped, evicted);
            }
            outcome = Enqueued::DroppedOldest;
        }
        self.queued_bytes += size;
        self.queue.push_back(delivery);
        (outcome, evicted)
    }

    /// Takes the next queued delivery. Once the queue is down to half its
    /// high-water mark, held publishers go on and a stall ends.
    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.weight as usize;
        if (self.publishers_waiting || self.stalled) && self.drained_enough() {
            self.release_publishers();
        }
        Some(d)
    }

    /// The queue's high-water mark: messages, bytes.
    pub(crate) fn high_water(&self) -> (usize, usize) {
        (self.limits.high_water, self.limits.high_water_bytes)
    }

    /// The walks of the retained tree under way for new subscriptions.
    pub fn retained_walks(&mut self) -> &mut super::Walks {
        &mut self.retained
    }

    /// Whether the queue is at or past its high-water mark.
    fn above_high_water(&self) -> bool {
        self.queue.len() >= self.limits.high_water
            || self.queued_bytes >= self.limits.high_water_bytes
    }

    /// Whether the queue is down to half its high-water mark.
    fn drained_enough(&self) -> bool {
        self.queue.len() <= self.limits.high_water / 2
            && self.queued_bytes <= self.limits.high_water_bytes / 2
    }

    /// Whether a publisher that queued here should wait for the queue to
    /// drain: a connection is attached to drain it, it is not stalled, and
    /// the queue is past its high-water mark.
    pub fn congested(&self) -> bool {
        self.link.is_some() && !self.stalled && self.above_high_water()
    }

    /// Whether a waiting publisher must go on waiting (the queue has not
    /// drained to half its high-water mark, and may still).
    pub(crate) fn holds_publishers(&self) -> bool {
        self.link.is_some() && !self.stalled && !self.drained_enough()
    }

    /// A publisher is about to wait: the notification it waits on.
    pub(crate) fn publisher_waits(&mut self) -> Arc<Notify> {
        self.publishers_waiting = true;
        self.drained.get_or_insert_with(Default::default).clone()
    }

    /// Ends a stall and wakes the held publishers.
    fn release_publishers(&mut self) {
        self.stalled = false;
        if std::mem::take(&mut self.publishers_waiting) {
            if let Some(n) = &self.drained {
                n.notify_waiters();
            }
        }
    }

    /// The connection did not drain its queue within the backpressure bound:
    /// marks it stalled (publishers stop waiting for it) and wakes those
    /// waiting. Returns whether it was newly marked.
    pub(crate) fn stall(&mut self) -> bool {
        if !self.holds_publishers() {
            return false;
        }
        self.release_publishers();
        self.stalled = true;
        true
    }

    /// Whether the attached connection is stalled (a slow consumer).
    pub fn is_stalled(&self) -> bool {
        self.stalled
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

    /// How many deliveries are queued, in memory and (as far as counted)
    /// spilled to disk.
    pub fn queue_len(&self) -> usize {
        self.queue.len() + self.spill.as_ref().map_or(0, |s| s.count)
    }

    /// Whether anything is queued, on disk included (a restored queue not
    /// read yet counts).
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty() || self.spill.is_some()
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
        self.page_failed();
        self.link.replace(link)
    }

    /// Takes the attached connection's link away (a takeover).
    pub fn take_link(&mut self) -> Option<Link> {
        self.release_publishers();
        self.link.take()
    }

    /// Detaches connection `conn_id` if it is the one attached, with the
    /// session expiry it ended with. Returns the generation it ends, which
    /// later steps (will, expiry) check against a resume.
    pub fn detach(&mut self, conn_id: u64, expiry_interval: u32) -> Option<u64> {
        if !self.is_attached_to(conn_id) {
            return None;
        }
        self.release_publishers();
        self.link = None;
        self.expiry_interval = expiry_interval;
        Some(self.generation)
    }

    /// A session left without a connection keeps no queue in memory when
    /// its store reads queues back page by page: its stored messages join
    /// the front of the spill (their records are in the store already), and
    /// its QoS 0 messages are dropped unless `queue-qos0-offline` (as those
    /// published while it is offline are). What is not stored otherwise
    /// (rare: a retained message queued by a walk) stays, as do stored
    /// messages older than one in flight (rare: after a restart). So an
    /// offline session costs its subscriptions and in-flight window, not a
    /// queue.
    /// Returns how many messages were moved to the spill.
    ///
    /// A gap in the moved sequence numbers (a message taken off by
    /// `take_queued`) makes the spill's count an estimate, as a restored
    /// spill's is, until it is read back or swept.
    pub(crate) fn park_queue(&mut self) -> usize {
        if !self.limits.spill || self.link.is_some() {
            return 0;
        }
        // The spill is read back from its first sequence number up: a
        // message in flight must not be in that range (it would be read
        // back a second time), so only those above every one in flight go.
        let floor = (self.inflight.iter())
            .filter_map(|i| i.delivery.stored.seq())
            .max()
            .unwrap_or(0);
        let parked = |d: &Delivery| d.stored.seq().filter(|seq| *seq > floor);
        let (mut first, mut count, mut bytes, mut expiry) = (None, 0usize, 0usize, None);
        let keep_qos0 = self.limits.qos0_offline;
        let queue = std::mem::take(&mut self.queue);
        self.queued_bytes = 0;
        for d in queue {
            if let Some(seq) = parked(&d) {
                first = Some(first.map_or(seq, |f: u64| f.min(seq)));
                count += 1;
                bytes += d.weight as usize;
                expiry = earliest(expiry, d.msg.expires_at);
            } else if d.stored.seq().is_some() || d.qos != QoS::AtMostOnce || keep_qos0 {
                self.queued_bytes += d.weight as usize;
                self.queue.push_back(d);
            }
        }
        let Some(first) = first else {
            return 0;
        };
        let spill = self.spill.get_or_insert_with(|| Spill::new(first, true));
        spill.next = first;
        spill.count += count;
        spill.bytes += bytes;
        spill.next_expiry = earliest(spill.next_expiry, expiry);
        self.note_spilled(bytes, 0);
        count
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

    /// The attached connection's link, if one is attached.
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }

    /// Asks the attached connection to close (DISCONNECT 0x98), ending the
    /// session with it when `end_session`; wakes it. `false` when no
    /// connection is attached.
    pub fn kick(&mut self, end_session: bool, notify: &Notify) -> bool {
        let Some(link) = &mut self.link else {
            return false;
        };
        link.kick = if end_session {
            Kick::EndSession
        } else {
            Kick::Close
        };
        link.wake(notify);
        true
    }

    /// Tells the attached connection that another node took its session
    /// over (it closes with 0x8E and the session ends here); wakes it.
    /// `false` when no connection is attached.
    pub fn kick_taken_over(&mut self, notify: &Notify) -> bool {
        self.kick_as(Kick::TakenOver, notify)
    }

    /// Tells the attached connection to close as [`Kick::Fenced`]; wakes
    /// it. `false` when no connection is attached.
    pub fn kick_fenced(&mut self, notify: &Notify) -> bool {
        self.kick_as(Kick::Fenced, notify)
    }

    /// The id of the attached connection, if any.
    pub fn attached_conn(&self) -> Option<u64> {
        self.link.as_ref().map(|l| l.conn_id)
    }

    /// As [`SessionState::kick_fenced`], only if connection `conn_id` is the
    /// one attached.
    pub fn kick_fenced_conn(&mut self, conn_id: u64, notify: &Notify) -> bool {
        if self.link.as_ref().is_some_and(|l| l.conn_id == conn_id) {
            self.kick_as(Kick::Fenced, notify)
        } else {
            false
        }
    }

    /// Tells the attached connection to close as [`Kick::Draining`]; wakes
    /// it. `false` when no connection is attached.
    pub fn kick_draining(&mut self, notify: &Notify) -> bool {
        self.kick_as(Kick::Draining, notify)
    }

    fn kick_as(&mut self, kick: Kick, notify: &Notify) -> bool {
        let Some(link) = &mut self.link else {
            return false;
        };
        link.kick = kick;
        link.wake(notify);
        true
    }

    /// Why connection `conn_id` was told to close, if it was.
    pub fn kicked(&self, conn_id: u64) -> Option<Kick> {
        match self.link.as_ref().filter(|l| l.conn_id == conn_id)?.kick {
            Kick::No => None,
            kick => Some(kick),
        }
    }

    /// Tells the attached connection to close as a slow consumer; wakes it.
    pub(crate) fn kick_slow_consumer(&mut self, notify: &Notify) {
        if let Some(link) = &mut self.link {
            link.kick = Kick::SlowConsumer;
            link.wake(notify);
        }
    }

    /// The generation of the session (see [`SessionState::resumed_since`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Ends this generation without a connection (an operator ended the
    /// session): timers set for it see it as resumed and do nothing.
    pub(crate) fn next_generation(&mut self) {
        self.generation += 1;
    }

    /// Whether the attached connection is `conn_id`.
    pub fn is_attached_to(&self, conn_id: u64) -> bool {
        self.link.as_ref().is_some_and(|l| l.conn_id == conn_id)
    }

    /// How many outgoing QoS 1/2 messages await their acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// The outgoing QoS 1/2 messages awaiting acknowledgement, in send order.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// A message was sent with a packet identifier and awaits its acknowledgement.
    pub fn push_inflight(&mut self, inflight: Inflight) {
        self.inflight.push_back(inflight);
    }

    /// A sequence number for the store, as queueing takes
    /// one (for an in-flight message installed from elsewhere).
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// PUBACK: removes the QoS 1 (unreleased) in-flight message with this id.
    pub fn acknowledge(&mut self, packet_id: u16) -> Option<Inflight> {
        let pos = self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && !i.released)?;
        self.inflight.remove(pos)
    }

    /// The in-flight message with this id (PUBREC updates it).
    pub fn inflight_mut(&mut self, packet_id: u16) -> Option<&mut Inflight> {
        self.inflight.iter_mut().find(|i| i.packet_id == packet_id)
    }

    /// Takes every in-flight message (a takeover moves them, or requeues them).
    pub fn take_all_inflight(&mut self) -> VecDeque<Inflight> {
        std::mem::take(&mut self.inflight)
    }

    /// Whether a QoS 2 PUBLISH with this id was received and its PUBREL not yet.
    pub fn awaits_release(&self, packet_id: u16) -> bool {
        self.incoming_qos2.contains(&packet_id)
    }

    /// The incoming QoS 2 packet ids that await their PUBREL.
    pub fn incoming_qos2(&self) -> Vec<u16> {
        self.incoming_qos2
            .0
            .as_ref()
            .map_or_else(Vec::new, |s| s.iter().copied().collect())
    }

    /// How many QoS 2 packet ids from the client await their PUBREL.
    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// A QoS 2 PUBLISH with this id was received (its PUBREC goes out).
    pub fn received_qos2(&mut self, packet_id: u16) {
        self.incoming_qos2.insert(packet_id);
    }

    /// PUBREL: ends the incoming exchange; `false` when none had this id.
    pub fn released_qos2(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2.remove(&packet_id)
    }

    /// The subscription to `filter` (as the broker routes it), if any.
    pub fn subscription(&self, filter: &str) -> Option<&SubEntry> {
        self.subscriptions.get(filter)
    }

    /// How many subscriptions the session holds.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Every subscription, by filter.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&ByteString, &SubEntry)> {
        self.subscriptions.iter()
    }

    /// Subscribes (or replaces the subscription) to `filter`.
    pub fn subscribe(&mut self, filter: ByteString, entry: SubEntry) {
        self.subscriptions.insert(filter, entry);
    }

    /// Removes the subscription to `filter`; `false` when there was none.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        self.retained.stop(filter);
        self.subscriptions.remove(filter).is_some()
    }

    /// The Session Expiry Interval in seconds (`u32::MAX`: never).
    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    /// The user name and listener ACL of the last connection, which read
    /// checks at delivery use.
    pub fn owner(&self) -> (Option<&ByteString>, Option<&Arc<ListenerFile<Acl>>>) {
        let acl = self.rights.as_ref().and_then(|r| r.acl.as_ref());
        (self.username.as_ref(), acl)
    }

    /// What the last connection's authentication source granted.
    pub fn grant(&self) -> Option<&Arc<Grant>> {
        self.rights.as_ref().and_then(|r| r.grant.as_ref())
    }

    /// A connection attached: its user name, listener ACL and grant.
    pub fn set_owner(
        &mut self,
        username: Option<ByteString>,
        acl: Option<Arc<ListenerFile<Acl>>>,
        grant: Option<Arc<Grant>>,
    ) {
        self.username = username;
        self.rights = (acl.is_some() || grant.is_some()).then(|| Box::new(Rights { acl, grant }));
    }

    /// A connection started the session anew with this expiry interval.
    pub fn set_expiry_interval(&mut self, expiry_interval: u32) {
        self.expiry_interval = expiry_interval;
    }

    /// A message stored under `seq` was read back: new ones are numbered after it.
    pub fn note_stored_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }
}

//! The state every connection shares: the session registry, the subscription
//! index, retained messages, auth, and counters; and the routing of one message
//! to its subscribers, done by the task that received it.
//!
//! Locking: `sessions` (a `parking_lot::Mutex`) is taken only when a client
//! connects or a session ends. `topics` and `retained` are `parking_lot::RwLock`s:
//! publishers take the read side in parallel, subscribe and unsubscribe the write
//! side. No lock is held across an `.await`, and a session's own lock is never
//! taken while `topics` is write-locked.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use starling_codec::topic::parse_shared;
use starling_codec::{ByteString, QoS};
use tokio::time::Instant;

use crate::auth::{
    Access, Acl, AuthLimiter, AuthPool, Authenticator, AuthzSource, Grant, ListenerFile,
};
use crate::cluster::{Cluster, SingleNode};
use crate::config::{Config, SharedStrategy};
use crate::events::{DropReason, Event};
use crate::journal::{commit, Journal};
use crate::message::{Delivery, Message, Stored};
use crate::metrics::Metrics;
use crate::retained::{RetainedLimits, RetainedTree};
use crate::session::{QueueLimits, Session, Sessions};
use crate::store::Persistence;
use crate::topic_tree::{Matches, TopicTree};

/// No session: the scope of a message held from every session here (see
/// `Cluster::holds_local`).
static NOBODY: std::sync::LazyLock<std::collections::HashSet<ByteString>> =
    std::sync::LazyLock::new(std::collections::HashSet::new);

/// Shared broker state.
pub struct BrokerState {
    /// The configuration in force.
    pub config: Config,
    /// Sessions by client id.
    pub(crate) sessions: Mutex<Sessions>,
    /// The subscription index.
    pub(crate) topics: RwLock<TopicTree>,
    /// Retained messages.
    pub(crate) retained: RwLock<RetainedTree>,
    /// Decides who may connect.
    pub authenticator: RwLock<Arc<dyn Authenticator>>,
    /// The threads slow authentication runs on (see [`AuthPool`]).
    pub auth_pool: AuthPool,
    /// Counts password attempts per source and slows down guessing.
    pub(crate) auth_limiter: Arc<AuthLimiter>,
    /// Who may read and write what; `None` allows everything. Set it with
    /// [`BrokerState::set_acl`].
    acl: RwLock<Option<Arc<Acl>>>,
    /// Whether `acl` is set, read without its lock on every message.
    has_acl: std::sync::atomic::AtomicBool,
    /// Authorization sources asked before the ACL (see [`crate::auth::chain`]).
    authorizers: RwLock<Arc<[Arc<dyn AuthzSource>]>>,
    /// Whether `authorizers` has any, read without its lock on every message.
    has_authz: std::sync::atomic::AtomicBool,
    /// SCRAM-SHA-256 credentials (`scram-file`), when configured.
    pub(crate) scram: RwLock<Option<Arc<crate::auth::ScramFile>>>,
    /// Whether a session was ever given a [`Grant`] (its own topic rules):
    /// from then on, deliveries are checked against the subscriber's grant.
    pub(crate) grants_seen: std::sync::atomic::AtomicBool,
    /// Counters.
    pub metrics: Metrics,
    /// What happens, for observers (see [`crate::events`]).
    pub events: crate::events::Events,
    /// The other nodes (see [`crate::cluster`]); [`SingleNode`] while unset.
    /// Set once, before serving: read on every publish without a lock.
    cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
    /// Source of connection ids.
    pub next_conn_id: AtomicU64,
    /// When the broker started.
    pub started: Instant,
    /// How many connections are parked now (kept by the hibernation reactor).
    pub(crate) parked: Arc<std::sync::atomic::AtomicUsize>,
    /// The node is handing its sessions to other nodes before it stops
    /// (see [`BrokerState::start_draining`]).
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Queue bounds, from the configuration, shared by every session.
    pub(crate) limits: Arc<QueueLimits>,
    /// Whether a listener has an ACL file of its own (read once, not per
    /// message: the listeners do not change while the broker runs).
    listener_acls: bool,
    /// The store's writer, unless `durability = "none"`.
    pub(crate) store: Option<Persistence>,
    /// Wills waiting for their delay and sessions waiting to expire.
    pub(crate) timers: crate::timers::Timers,
    /// The listeners, in configuration order, with their connection counts.
    listeners: std::sync::OnceLock<Vec<crate::metrics::ListenerStats>>,
}

impl std::fmt::Debug for BrokerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerState").finish_non_exhaustive()
    }
}

impl BrokerState {
    /// New state for `config`, with no store.
    pub fn new(config: Config, authenticator: Arc<dyn Authenticator>, acl: Option<Acl>) -> Self {
        BrokerState {
            store: None,
            timers: crate::timers::Timers::default(),
            listeners: std::sync::OnceLock::new(),
            sessions: Mutex::new(Sessions::default()),
            topics: RwLock::new(TopicTree::default()),
            retained: RwLock::new(RetainedTree::default()),
            authenticator: RwLock::new(authenticator),
            auth_pool: AuthPool::new(config.auth_threads),
            auth_limiter: Arc::new(AuthLimiter::new(config.auth_failure_limit)),
            has_acl: std::sync::atomic::AtomicBool::new(acl.is_some()),
            acl: RwLock::new(acl.map(Arc::new)),
            authorizers: RwLock::new(Arc::from(Vec::new())),
            has_authz: std::sync::atomic::AtomicBool::new(false),
            grants_seen: std::sync::atomic::AtomicBool::new(false),
            scram: RwLock::new(None),
            metrics: Metrics::default(),
            events: crate::events::Events::default(),
            cluster: std::sync::OnceLock::new(),
            next_conn_id: AtomicU64::new(1),
            started: Instant::now(),
            parked: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            draining: std::sync::atomic::AtomicBool::new(false),
            listener_acls: config.listener.iter().any(|l| l.acl_file.is_some()),
            limits: Arc::new(QueueLimits {
                max_messages: config.max_queued_messages,
                max_bytes: config.max_queued_bytes,
                max_memory_bytes: config.max_queued_memory_bytes,
                spilled: Default::default(),
                max_spilled: config.max_store_queue_bytes,
                high_water: (config.max_queued_messages / 4).clamp(1, 1000),
                high_water_bytes: (config.max_queued_memory_bytes.min(config.max_queued_bytes) / 4)
                    .max(1),
                policy: config.queue_overflow,
                qos0_offline: config.queue_qos0_offline,
                // Set when a store that reads queues lazily is opened.
                spill: false,
                first_seq: 1,
            }),
            config,
        }
    }

    /// How many connected clients are parked (idle, without a task of their
    /// own; see `hibernate`). They are counted in `clients_connected` too.
    pub fn parked_connections(&self) -> usize {
        self.parked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queue bounds for new sessions.
    pub fn queue_limits(&self) -> Arc<QueueLimits> {
        self.limits.clone()
    }

    /// The session of `client_id`, if the broker holds one.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Every session the broker holds (the registry's lock is released
    /// before the caller locks any of them).
    pub(crate) fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// Whether a CONNECT of `client_id` may have a session: the broker
    /// holds one for it already, or holds fewer than `max-sessions`.
    /// Checked before the session is made, so CONNECTs racing each other
    /// may pass the limit by as many as run at once.
    pub(crate) fn has_room_for_session(&self, client_id: &str) -> bool {
        let max = self.config.max_sessions;
        let sessions = self.sessions.lock();
        max == 0 || sessions.len() < max || sessions.get(client_id).is_some()
    }

    /// How many sessions the broker holds (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// How many messages are queued across every session.
    pub fn queued_count(&self) -> usize {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        sessions.iter().map(|s| s.queued()).sum()
    }

    /// How many subscriptions exist (shared group members included).
    pub fn subscription_count(&self) -> usize {
        self.topics.read().len()
    }

    /// How many retained messages are held.
    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// What the retained messages held cost, as `max-retained-bytes` counts.
    pub fn retained_bytes(&self) -> usize {
        self.retained.read().bytes()
    }

    /// Deletes every retained message, from memory and from the store.
    /// Returns how many there were.
    pub fn clear_retained(&self) -> usize {
        let old = std::mem::take(&mut *self.retained.write());
        let n = old.len();
        if self.store.is_some() {
            let mut journal = Journal::new();
            for m in old.all() {
                journal.retained_gone(m.topic.clone());
            }
            commit(self.store.as_ref(), journal);
        }
        n
    }

    /// The listeners, in configuration order (empty until bound).
    pub fn listeners(&self) -> &[crate::metrics::ListenerStats] {
        self.listeners.get().map_or(&[], Vec::as_slice)
    }

    /// Records the bound listeners (once: later calls are ignored).
    pub(crate) fn set_listeners(&self, listeners: Vec<crate::metrics::ListenerStats>) {
        let _ = self.listeners.set(listeners);
    }

    /// The listener with index `index`, if there is one.
    pub(crate) fn listener(&self, index: u16) -> Option<&crate::metrics::ListenerStats> {
        self.listeners().get(usize::from(index))
    }

    /// The store's writer, unless durability is `none`.
    pub fn store(&self) -> Option<&Persistence> {
        self.store.as_ref()
    }

    /// Replaces the single-node seam with a cluster implementation, once,
    /// before the broker serves clients. Returns false if one was set already.
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) -> bool {
        self.cluster.set(cluster).is_ok()
    }

    /// The cluster seam in force.
    pub fn cluster(&self) -> &dyn Cluster {
        match self.cluster.get() {
            Some(c) => &**c,
            None => &SingleNode,
        }
    }

    /// Accepts a message from a client or a will: retains it if it says so,
    /// routes it to this node's subscribers (store writes for persistent ones
    /// written to `journal`) and forwards it to the other nodes. Returns how many
    /// local sessions it was offered to.
    pub fn publish(&self, msg: &Arc<Message>, journal: &mut Journal) -> usize {
        self.publish_from_client(msg, journal, None)
    }

    /// As [`BrokerState::publish`], for a client's PUBLISH: adds to
    /// `congested` the sessions whose queues the message took past their
    /// high-water mark, which the publisher's connection then waits for.
    pub(crate) fn publish_from_client(
        &self,
        msg: &Arc<Message>,
        journal: &mut Journal,
        mut routed: Option<&mut Routed>,
    ) -> usize {
        if let Some(r) = routed.as_deref_mut() {
            if r.may_refuse && self.refused(msg) {
                r.refused = Some(Refusal::QueueFull);
                return 0;
            }
        }
        let unretained;
        let msg = match msg.retain && !self.retain_within_limits(msg, journal) {
            false => msg,
            true => {
                Metrics::add(&self.metrics.retained_refused, 1);
                if let Some(r) = routed.as_deref_mut().filter(|r| r.may_refuse) {
                    r.refused = Some(Refusal::RetainedFull);
                    return 0;
                }
                tracing::debug!(topic = %msg.topic, "delivered without being retained: the retained-message limit is reached");
                // Nor retained by the other nodes of a cluster.
                unretained = Arc::new(msg.unretained());
                &unretained
            }
        };
        let cluster = self.cluster();
        // In a cluster a shared group is served through it, which picks one
        // member cluster-wide (this node's included).
        // Sessions in a replay get it after their older, replayed messages.
        // A publisher that came while this node was away from the others
        // reaches its sessions once the node is back (see `holds_local`).
        let across = cluster.shares_across_nodes();
        let held = across && cluster.holds_local(msg);
        let parked = if across && !held {
            cluster.parked_sessions()
        } else {
            None
        };
        let scope = match (&parked, across) {
            _ if held => Scope::Clients(&NOBODY),
            (Some(sessions), _) => Scope::PlainExcept(sessions),
            (None, true) => Scope::Plain,
            (None, false) => Scope::All,
        };
        let mut stamp = None;
        let before = journal.len();
        let mut offered = self.route_to(
            msg,
            scope,
            Some(journal),
            routed.as_deref_mut().map(|r| &mut r.congested),
            Some(&mut stamp),
        );
        journal.set_stamp(None);
        if let (Some(sessions), None) = (&parked, stamp) {
            // Not numbered: nothing to park it by; theirs now.
            offered += self.route_to(msg, Scope::Clients(sessions), Some(journal), None, None);
        }
        // The copies kept here say which message they are (see `next_stamp`).
        if let (Some((origin, seq)), true) = (stamp, journal.len() > before) {
            journal.received(origin, seq);
        }
        if held {
            match stamp {
                Some(stamp) => cluster.hold_local(msg, stamp),
                // Not numbered: nothing to hold it by; theirs now.
                None => offered += self.route_to(msg, Scope::Plain, Some(journal), None, None),
            }
        }
        let withdrawable = routed.as_deref().is_some_and(|r| r.withdrawable);
        let kept = cluster.forward(msg, stamp, withdrawable);
        if let (Some(sessions), Some(stamp)) = (parked, stamp) {
            cluster.park_local(msg, stamp, sessions);
        }
        if let Some(r) = routed {
            r.cluster_wait = kept;
        }
        offered
    }

    /// Installs (or, with `None`, removes) the broker-wide ACL.
    pub fn set_acl(&self, acl: Option<Acl>) {
        let mut slot = self.acl.write();
        self.has_acl
            .store(acl.is_some(), std::sync::atomic::Ordering::Release);
        *slot = acl.map(Arc::new);
    }

    /// Whether the ACL lets a client read or write a topic (or filter).
    pub fn allowed(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        match &*self.acl.read() {
            Some(acl) => acl.check(username, client_id, topic, access),
            None => true,
        }
    }

    /// Installs the SCRAM credentials (at start and on reload).
    pub fn set_scram(&self, file: Option<crate::auth::ScramFile>) {
        *self.scram.write() = file.map(Arc::new);
    }

    /// Adds an authorization source, asked after those added before it and
    /// before the ACL file.
    pub fn add_authorizer(&self, source: Arc<dyn AuthzSource>) {
        let mut slot = self.authorizers.write();
        let mut all: Vec<Arc<dyn AuthzSource>> = slot.iter().cloned().collect();
        all.push(source);
        *slot = Arc::from(all);
        self.has_authz
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// What the authorization sources say, if any has an answer.
    fn authorized(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> Option<bool> {
        if !self.has_authz.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let sources = self.authorizers.read().clone();
        let client = crate::auth::chain::Client {
            client_id,
            username,
        };
        crate::auth::chain::authorize(&sources, &client, topic, access)
    }

    /// Like [`BrokerState::allowed`], with a listener's own ACL in place of the
    /// broker's when `own` is given. What the client's authentication source
    /// granted (`grant`) is asked first, then the authorization sources.
    pub fn allowed_with(
        &self,
        own: Option<&ListenerFile<Acl>>,
        grant: Option<&Grant>,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        if let Some(answer) = grant.and_then(|g| g.check(topic, access)) {
            return answer;
        }
        if let Some(answer) = self.authorized(username, client_id, topic, access) {
            return answer;
        }
        match own {
            Some(acl) => acl.current().check(username, client_id, topic, access),
            None => self.allowed(username, client_id, topic, access),
        }
    }

    /// The read check at delivery: the authorization sources, then the ACL
    /// of the listener the session's client came through, if it has one, else
    /// the broker's (`acl`).
    fn may_read(
        &self,
        session: &Session,
        acl: Option<&Arc<Acl>>,
        topic: &str,
        has_authz: bool,
    ) -> bool {
        let (own, user, grant) = {
            let st = session.state.lock();
            let (user, acl) = st.owner();
            (acl.map(|a| a.current()), user.cloned(), st.grant().cloned())
        };
        if let Some(answer) = grant.and_then(|g| g.check(topic, Access::Read)) {
            return answer;
        }
        if has_authz {
            if let Some(answer) =
                self.authorized(user.as_deref(), &session.client_id, topic, Access::Read)
            {
                return answer;
            }
        }
        match own.as_ref().or(acl) {
            Some(acl) => acl.check(user.as_deref(), &session.client_id, topic, Access::Read),
            None => true,
        }
    }

    /// Stores a retained message (or deletes one, for an empty payload), adding
    /// the store write to `journal`. `$SYS` topics are not persisted.
    pub fn retain(&self, msg: &Arc<Message>, journal: &mut Journal) {
        self.retain_within(msg, journal, RetainedLimits::NONE);
    }

    /// As [`BrokerState::retain`], within `max-retained-messages` and
    /// `max-retained-bytes` (`$SYS` topics, the broker's own, aside); `false`
    /// when they refused it.
    fn retain_within_limits(&self, msg: &Arc<Message>, journal: &mut Journal) -> bool {
        let limits = RetainedLimits {
            messages: self.config.max_retained_messages,
            bytes: self.config.max_retained_bytes,
        };
        self.retain_within(msg, journal, limits)
    }

    fn retain_within(
        &self,
        msg: &Arc<Message>,
        journal: &mut Journal,
        limits: RetainedLimits,
    ) -> bool {
        if !self.config.retain_available {
            return true;
        }
        if !self.retained.write().set_within(msg.clone(), limits) {
            return false;
        }
        if self.store.is_some() && !msg.topic.starts_with("$SYS") {
            journal.retained(msg);
        }
        true
    }

    /// Whether `queue-overflow = "reject"` refuses `msg`: a persistent
    /// session it would be queued for has a full queue (or the disk quota
    /// is used up).
    fn refused(&self, msg: &Arc<Message>) -> bool {
        use crate::config::OverflowPolicy;
        if msg.qos == QoS::AtMostOnce || self.config.queue_overflow != OverflowPolicy::Reject {
            return false;
        }
        // Collected under the index's lock, checked after it (a session's
        // lock is not taken under the index's).
        let (single, groups): (Vec<Arc<Session>>, Vec<Vec<Arc<Session>>>) = {
            let tree = self.topics.read();
            let mut m = Matches::default();
            tree.matches(&msg.topic, &mut m);
            let single = m.subscribers.iter().map(|s| s.session.clone()).collect();
            let groups = m
                .groups
                .iter()
                .map(|g| g.members.iter().map(|s| s.session.clone()).collect())
                .collect();
            (single, groups)
        };
        let weight = msg.weight() as usize;
        let full = |s: &Arc<Session>| {
            s.persistent.load(std::sync::atomic::Ordering::Relaxed)
                && s.state.lock().refuses(weight)
        };
        // A shared group refuses only when every member would.
        single.iter().any(full) || groups.iter().any(|g| !g.is_empty() && g.iter().all(full))
    }

    /// Hands `msg` to every matching subscriber's queue; with `journal`, the store
    /// writes for persistent subscribers are added to it. Returns how many
    /// sessions it was offered to.
    pub fn route(&self, msg: &Arc<Message>, journal: Option<&mut Journal>) -> usize {
        self.route_to(msg, Scope::All, journal, None, None)
    }

    /// Routes a message that came from another node to this node's
    /// subscribers in `scope`, committing the store writes (each copy
    /// labelled with `stamp`, the node's run and the message's number
    /// there), followed (when there are some) by
    /// [`crate::store::Op::Received`]. Never forwarded.
    pub fn route_from_cluster(
        &self,
        msg: &Arc<Message>,
        scope: Scope<'_>,
        stamp: (u64, u64),
    ) -> usize {
        let mut journal = Journal::new();
        journal.set_stamp(Some(stamp));
        let offered = self.route_to(msg, scope, Some(&mut journal), None, None);
        if !journal.is_empty() {
            journal.received(stamp.0, stamp.1);
        }
        commit(self.store.as_ref(), journal);
        offered
    }

    /// Sets (or, with an empty payload, clears) a retained message that
    /// another node accepted, as [`BrokerState::retain`] does, committing the
    /// store write. Never forwarded.
    pub fn retain_from_cluster(&self, msg: &Arc<Message>) {
        let mut journal = Journal::new();
        self.retain(msg, &mut journal);
        commit(self.store.as_ref(), journal);
    }

    /// [`BrokerState::route`], adding to `congested` the sessions whose
    /// queues are past their high-water mark after it.
    fn route_to(
        &self,
        msg: &Arc<Message>,
        scope: Scope<'_>,
        mut journal: Option<&mut Journal>,
        mut congested: Option<&mut Vec<Arc<Session>>>,
        stamp: Option<&mut Option<(u64, u64)>>,
    ) -> usize {
        let store = self.store.as_ref();
        // No clock read for a message without an expiry (most of them).
        if msg.expires_at.is_some() && msg.is_expired(Instant::now()) {
            if let Some(stamp) = stamp {
                *stamp = self.cluster().next_stamp();
            }
            self.metrics.drops.inc(DropReason::Expired as usize);
            return 0;
        }
        // Collect targets under the read lock, enqueue after releasing it.
        let mut targets: Vec<Target> = Vec::new();
        {
            let tree = self.topics.read();
            // Numbered while the index is held: see `Cluster::last_stamp`.
            if let Some(stamp) = stamp {
                *stamp = self.cluster().next_stamp();
                if let Some(journal) = journal.as_deref_mut() {
                    journal.set_stamp(*stamp);
                }
            }
            let mut m = Matches::default();
            tree.matches(&msg.topic, &mut m);
            let (plain, groups) = match scope {
                Scope::All => (true, None),
                Scope::Plain => (true, Some(None)),
                Scope::Group(key) => (false, Some(Some(key))),
                Scope::Clients(only) => {
                    m.subscribers
                        .retain(|s| only.contains(&s.session.client_id));
                    m.groups.clear();
                    (true, None)
                }
                Scope::PlainExcept(not) => {
                    m.subscribers
                        .retain(|s| !not.contains(&s.session.client_id));
                    (true, Some(None))
                }
            };
            if !plain {
                m.subscribers.clear();
            }
            for s in m.subscribers {
                if s.options.no_local && msg.publisher.as_ref() == Some(&s.session.client_id) {
                    continue;
                }
                targets.push((
                    s.session.clone(),
                    s.options.qos,
                    s.options.retain_as_published,
                    s.id,
                    None,
                ));
            }
            for group in m.groups {
                if let Some(only) = groups {
                    if only.is_none() || group.key.as_deref() != only {
                        continue;
                    }
                }
                let seed = match self.config.shared_subscription_strategy {
                    SharedStrategy::RoundRobin => None,
                    SharedStrategy::Random => Some(rand::random::<usize>()),
                    SharedStrategy::HashClientId => {
                        Some(hash_str(msg.publisher.as_deref().unwrap_or("")))
                    }
                };
                if let Some(s) = group.pick(seed) {
                    targets.push((
                        s.session.clone(),
                        s.options.qos,
                        s.options.retain_as_published,
                        s.id,
                        group.key.clone(),
                    ));
                }
            }
        }
        if targets.is_empty() {
            self.events
                .emit(crate::events::EventKind::MessagePublished, || {
                    Event::MessagePublished {
                        message: msg.clone(),
                        receivers: 0,
                    }
                });
            return 0;
        }
        // What each copy costs its queue, computed once for every target.
        let weight = msg.weight();
        // One copy per session: the highest granted QoS and every subscription id.
        targets.sort_by_key(|t| Arc::as_ptr(&t.0) as usize);
        // No global ACL (the usual case): no shared lock per message.
        let acl = if self.has_acl.load(std::sync::atomic::Ordering::Acquire) {
            self.acl.read().clone()
        } else {
            None
        };
        let has_authz = self.has_authz.load(std::sync::atomic::Ordering::Acquire);
        let grants = self.grants_seen.load(std::sync::atomic::Ordering::Acquire);
        let check_acl = acl.is_some() || self.listener_acls || has_authz || grants;
        let mut offered = 0;
        let mut i = 0;
        while i < targets.len() {
            // Borrowed, not cloned: every publisher to a subscriber would
            // otherwise touch its session's reference count once more.
            let first = i;
            let mut granted = QoS::AtMostOnce;
            let mut rap = false;
            let mut ids = Vec::new();
            let mut share = None;
            while i < targets.len() && Arc::ptr_eq(&targets[i].0, &targets[first].0) {
                if share.is_none() {
                    share = targets[i].4.take();
                }
                granted = granted.max(targets[i].1);
                rap |= targets[i].2;
                if let Some(id) = targets[i].3 {
                    ids.push(id);
                }
                i += 1;
            }
            let session = &targets[first].0;
            // The read check at delivery: the ACL of the listener the session's
            // client came through, if it has one, else the broker's.
            if check_acl && !self.may_read(session, acl.as_ref(), &msg.topic, has_authz) {
                continue;
            }
            let delivery = Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(granted),
                retain: rap && msg.retain,
                subscription_ids: ids,
                share,
                stored: Stored::NOT,
                weight,
            };
            let outcome = session.enqueue(delivery, store.zip(journal.as_deref_mut()));
            if outcome == crate::session::Enqueued::Congested {
                if let Some(c) = congested.as_deref_mut() {
                    c.push(session.clone());
                }
            }
            if matches!(
                outcome,
                crate::session::Enqueued::Dropped | crate::session::Enqueued::DroppedOldest
            ) {
                self.metrics.drops.inc(DropReason::QueueFull as usize);
                self.events
                    .emit(crate::events::EventKind::MessageDropped, || {
                        Event::MessageDropped {
                            client_id: session.client_id.clone(),
                            topic: msg.topic.clone(),
                            reason: DropReason::QueueFull,
                        }
                    });
            }
            offered += 1;
        }
        self.events
            .emit(crate::events::EventKind::MessagePublished, || {
                Event::MessagePublished {
                    message: msg.clone(),
                    receivers: offered,
                }
            });
        offered
    }

    /// Hands the unacknowledged messages that a shared subscription gave to
    /// `session` to other members of their groups (spec 4.8.2: a member that
    /// leaves does not keep the group's messages). Messages whose group has no
    /// other member stay with the session.
    pub fn redistribute_shared(&self, session: &Arc<Session>) {
        let mut journal = Journal::new();
        let taken: Vec<Delivery> = {
            let mut st = session.state.lock();
            let mut taken = Vec::new();
            let inflight = st.take_all_inflight();
            for i in inflight {
                if i.delivery.share.is_some() && !i.released {
                    if let Some(seq) = i.delivery.stored.seq() {
                        journal.forget(&session.client_id, seq);
                    }
                    taken.push(i.delivery);
                } else {
                    st.push_inflight(i);
                }
            }
            for d in st.take_queued(|d| d.share.is_some()) {
                if let Some(seq) = d.stored.seq() {
                    journal.forget(&session.client_id, seq);
                }
                taken.push(d);
            }
            taken
        };
        for mut d in taken {
            d.stored = Stored::NOT;
            let Some(key) = d.share.clone() else { continue };
            let (group, filter) = split_share(&key);
            let other = {
                let tree = self.topics.read();
                group
                    .and_then(|g| tree.shared_group(g, filter))
                    .and_then(|g| {
                        g.members
                            .iter()
                            .filter(|m| !Arc::ptr_eq(&m.session, session))
                            .find(|m| m.session.state.lock().is_connected())
                            .or_else(|| {
                                g.members.iter().find(|m| !Arc::ptr_eq(&m.session, session))
                            })
                            .map(|m| (m.session.clone(), m.options.qos, m.id))
                    })
            };
            match other {
                Some((member, granted, id)) => {
                    d.qos = d.msg.qos.min(granted);
                    d.subscription_ids = id.into_iter().collect();
                    member.enqueue(d, self.store.as_ref().map(|s| (s, &mut journal)));
                }
                None => {
                    // Nobody else in the group: keep it for this session.
                    let _ = session.enqueue(d, self.store.as_ref().map(|s| (s, &mut journal)));
                }
            }
        }
        commit(self.store.as_ref(), journal);
    }

    /// Removes every subscription of `session` from the index.
    /// Returns [`Cluster::last_stamp`] as read while the index was held.
    pub fn unsubscribe_all(&self, session: &Arc<Session>) -> u64 {
        let filters: Vec<ByteString> = session
            .state
            .lock()
            .subscriptions()
            .map(|(f, _)| f.clone())
            .collect();
        let mut removed = Vec::new();
        let cluster = self.cluster();
        let mark = {
            let mut tree = self.topics.write();
            for f in filters {
                let (share, filter) = split_share(&f);
                if tree.unsubscribe(share, filter, session) {
                    removed.push(f);
                }
            }
            cluster.last_stamp()
        };
        for f in removed {
            cluster.interest(&f, false);
        }
        mark
    }
}

/// Why a PUBLISH was refused (MQTT 5: 0x97 Quota exceeded); nobody got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `queue-overflow = "reject"`: a persistent subscriber's queue is full.
    QueueFull,
    /// A retained message past `max-retained-messages` or `max-retained-bytes`.
    RetainedFull,
}

/// What routing a client's PUBLISH found, for its connection.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// Sessions whose queues it took past their high-water mark.
    pub congested: Vec<Arc<Session>>,
    /// Whether the client can be told the message was refused (MQTT 5).
    pub may_refuse: bool,
    /// It was refused, and why: nobody got it.
    pub refused: Option<Refusal>,
    /// What its acknowledgement waits for in a cluster (see
    /// [`Cluster::forward`]).
    pub cluster_wait: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The other nodes may go without it if the publisher's connection ends
    /// before its acknowledgement (see [`Cluster::forward`]).
    pub withdrawable: bool,
}

/// Which of this node's subscriptions a message is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every matching subscription (a single node).
    All,
    /// The subscriptions that are not shared (a cluster serves shared
    /// groups through itself).
    Plain,
    /// Only the shared group `$share/group/filter` with this key.
    Group(&'a str),
    /// Only these clients' subscriptions that are not shared (a message
    /// recovered for sessions rebuilt on this node).
    Clients(&'a std::collections::HashSet<ByteString>),
    /// As [`Scope::Plain`], except these clients' (they had the message
    /// already).
    PlainExcept(&'a std::collections::HashSet<ByteString>),
}

/// A session chosen for a message: granted QoS, Retain As Published, the
/// subscription identifier, and the shared subscription that chose it.
type Target = (Arc<Session>, QoS, bool, Option<u32>, Option<Arc<str>>);

/// Splits `$share/group/filter` into its group and filter.
pub fn split_share(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Ok(Some(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}

fn hash_str(s: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish() as usize
}

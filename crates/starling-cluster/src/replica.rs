//! Persistent sessions kept in JetStream, so that they outlive their node:
//! [`ReplicatedStore`] wraps the node's embedded store and writes every
//! change to a session (its record, subscriptions, queued and in-flight
//! messages, incoming QoS 2 ids) to a replicated stream as well, before the
//! store's writer completes the batch: an acknowledgement that waits for
//! the store (PUBACK with `durability = always`) waits for the replicas.
//! When a node dies, the node its client comes back to rebuilds the
//! session from them ([`recover`]).
//!
//! The sessions are spread over [`PARTITIONS`] streams (a few Raft groups,
//! whatever the number of sessions). Subjects, under `starling.s.<p>.<client>`
//! (the client id's hash): `.s` the session, `.f.<filter hash>` a
//! subscription, `.m.<node hash>.<seq>` a message, `.q.<id>` a QoS 2 id,
//! each the latest of its subject (the streams keep one message per
//! subject: a plain publish replaces the one before, as in a key-value
//! bucket; a rollup, which makes the server purge the subject, cost a
//! QoS 2 exchange about 1 ms of JetStream's time, one after another);
//! an empty payload is a removal (a delivered
//! message becomes such a tombstone, pipelined with the rest, not a purge
//! request, which JetStream serves one at a time).
//! A session's messages are purged whole once none of them is left (and a
//! session when it ends).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use starling_broker::store::{
    Loaded, MessageRecord, Op, QueueReader, SessionRecord, Store, StoreError, SubscriptionRecord,
};
use starling_broker::HandoverBuilder;

use crate::backlog::{client_of, Hold};
use crate::keys;
use crate::receipt::Receipt;

/// Streams the sessions are spread over.
pub const PARTITIONS: usize = 8;

/// Publishes whose acknowledgements are awaited together, at most.
const ACK_WINDOW: usize = 1024;

/// Messages of one recovered session at most (the queue limits of the node
/// that held it bound it below this).
const RECOVER_LIMIT: usize = 1_000_000;

/// What replication counts.
#[derive(Debug, Default)]
pub struct ReplicaCounters {
    /// Changes written to JetStream.
    pub written: AtomicU64,
    /// Batches not replicated (NATS or JetStream away): kept on this node
    /// only.
    pub failed: AtomicU64,
    /// Sessions rebuilt from JetStream after their node died.
    pub recovered: AtomicU64,
}

/// The link from a store to JetStream, set once the cluster is ready.
#[derive(Clone, Default)]
pub struct Replica {
    link: Arc<OnceLock<Link>>,
    /// What it counted.
    pub counters: Arc<ReplicaCounters>,
    /// The changes held back, and the sessions fenced (see `backlog`).
    pub(crate) hold: Arc<parking_lot::Mutex<Hold>>,
}

#[derive(Clone)]
struct Link {
    js: jetstream::Context,
    client: async_nats::Client,
    streams: Vec<stream::Stream>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    node: String,
    /// This node's run (see `transit`).
    origin: u64,
    /// Where this node's receipt is written.
    receipt_subject: String,
    /// What the node's previous run stored (its receipt's newest stamps),
    /// which this run holds too: every receipt of this run claims it.
    carried: HashMap<u64, u64>,
}

impl Replica {
    /// A replica not yet linked: changes stay local until
    /// [`crate::NatsCluster::start`] links it.
    pub fn new() -> Replica {
        Replica::default()
    }

    /// `local`, replicated.
    pub fn wrap(&self, local: Box<dyn Store>) -> ReplicatedStore {
        ReplicatedStore {
            local,
            replica: self.clone(),
            queues: Queues::default(),
            received: HashMap::new(),
        }
    }

    /// Opens (creating if needed) the session streams and links them.
    #[allow(clippy::too_many_arguments)] // each is the node's, passed once
    pub(crate) async fn link(
        &self,
        js: &jetstream::Context,
        client: async_nats::Client,
        replicas: usize,
        timeout: Duration,
        node: &str,
        origin: u64,
        carried: HashMap<u64, u64>,
        restored: bool,
    ) -> Result<(), async_nats::Error> {
        let mut streams = Vec::with_capacity(PARTITIONS);
        for p in 0..PARTITIONS {
            let config = stream::Config {
                name: format!("STARLING_SESSIONS_{p}"),
                subjects: vec![format!("starling.s.{p}.>")],
                allow_rollup: true,
                max_messages_per_subject: 1,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            let mut stream = js.get_or_create_stream(config.clone()).await?;
            // Made by an earlier version (every message of a subject kept,
            // the records written as rollups): one per subject from now on.
            if stream.cached_info().config.max_messages_per_subject != 1 {
                let mut config = stream.cached_info().config.clone();
                config.max_messages_per_subject = 1;
                js.update_stream(config).await?;
                stream = js.get_stream(format!("STARLING_SESSIONS_{p}")).await?;
            }
            streams.push(stream);
        }
        let link = Link {
            js: js.clone(),
            client,
            streams,
            runtime: tokio::runtime::Handle::current(),
            timeout,
            node: keys::of(node)[..12].to_string(),
            origin,
            receipt_subject: format!("$KV.{}.{}", keys::RECEIPTS, keys::node(node)),
            carried: carried.clone(),
        };
        // The node stores from now on, and holds what its previous run
        // stored (restored from its own store).
        let first = Receipt {
            at_ms: starling_broker::store::unix_ms(),
            own: origin,
            high: carried.clone(),
        };
        js.publish(link.receipt_subject.clone(), first.encode())
            .await?
            .await?;
        // The sessions restored from the local store may be another node's
        // by now: held until the first audit says whose they are. (None
        // restored, as after a drain: nothing to hold, and a session
        // claimed meanwhile is this node's.)
        if restored {
            self.hold.lock().turn_suspect();
        }
        let _ = self.link.set(link);
        Ok(())
    }

    /// Whether sessions are replicated now.
    pub fn linked(&self) -> bool {
        self.link.get().is_some()
    }
}

/// The subject prefix of `client`'s session, and its stream's index.
fn base(client: &str) -> (String, usize) {
    let key = keys::of(client);
    let p = usize::from_str_radix(&key[..2], 16).unwrap_or(0) % PARTITIONS;
    (format!("starling.s.{p}.{key}"), p)
}

/// A store whose session changes are replicated in JetStream.
pub struct ReplicatedStore {
    local: Box<dyn Store>,
    replica: Replica,
    queues: Queues,
    /// The newest stamp stored per origin, and when it last advanced.
    received: HashMap<u64, (u64, std::time::Instant)>,
}

/// The messages of each session this process replicated and that are not
/// yet removed, to know when a session's message subjects can be purged
/// whole. A session whose queue was written before this process started
/// is not known whole: it is only purged when it ends.
#[derive(Default)]
struct Queues {
    /// Per session, its messages' sequence numbers and the stamp each
    /// came with from another node (kept for its rewrites: in flight).
    live: HashMap<String, HashMap<u64, Option<(u64, u64)>>>,
    unknown: HashSet<String>,
    /// Tombstones written since the session's last purge.
    dead: HashMap<String, u64>,
}

impl Queues {
    /// Whether the replica may hold message `seq` of `client` (written by
    /// this process, or by an earlier one).
    fn may_hold(&self, client: &str, seq: u64) -> bool {
        self.unknown.contains(client) || self.live.get(client).is_some_and(|l| l.contains_key(&seq))
    }
}

/// Tombstones a session gathers before its messages are purged (when its
/// queue is empty).
const COMPACT_AFTER: u64 = 4096;

impl Store for ReplicatedStore {
    fn queue_reader(&self) -> Option<Arc<dyn QueueReader>> {
        self.local.queue_reader()
    }

    fn apply(&mut self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        self.local.apply(ops, durable)?;
        let Some(link) = self.replica.link.get() else {
            return Ok(());
        };
        let (direct, receipts) = self.sort(link, ops);
        // Nothing to write: no change, and no receipt that may be written
        // (while suspect, a batch of `Received` alone is not a failed one).
        let only_received = direct.iter().all(|op| matches!(op, Op::Received(..)));
        if direct.is_empty() || (only_received && receipts.is_none()) {
            return Ok(());
        }
        let counters = &self.replica.counters;
        let started = std::time::Instant::now();
        let sent = link.runtime.block_on(replicate(
            link,
            &direct,
            &mut self.queues,
            &mut self.received,
            receipts,
        ));
        match sent {
            Ok(n) => {
                tracing::trace!(changes = n, took = ?started.elapsed(), "replicated");
                counters.written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                // Held here: the sessions are behind until NATS is back
                // (lost only if the node dies before; counted in $SYS).
                self.hold_back(&direct);
                if counters
                    .failed
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::warn!("session changes not replicated (held on this node): {e}");
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.local.sync()
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        self.local.load()
    }
}

impl Drop for ReplicatedStore {
    /// The store closes (the broker shuts down): what was handed to NATS
    /// (the last receipt, which is not awaited) goes out first, so that a
    /// replay elsewhere does not hand the sessions again what they had.
    fn drop(&mut self) {
        // On the runtime's own task, waited for here: this thread is not
        // the runtime's, and the runtime may be shutting down already (the
        // task is then dropped, and so is its answer).
        if let Some(link) = self.replica.link.get() {
            let (tx, rx) = std::sync::mpsc::channel();
            let (client, limit) = (link.client.clone(), link.timeout);
            link.runtime.spawn(async move {
                let flushed = tokio::time::timeout(limit, client.flush()).await;
                let _ = tx.send(matches!(flushed, Ok(Ok(()))));
            });
            let wait = limit + Duration::from_millis(100);
            if !rx.recv_timeout(wait).unwrap_or(false) {
                tracing::debug!("the last session changes were not flushed to NATS");
            }
        }
    }
}

impl ReplicatedStore {
    /// Sorts a batch: the changes to write now (after the backlogs found
    /// due), with each message's stamp right after it, and the bounds of a
    /// receipt (`None`: none may be written; else per origin the lowest
    /// stamp held, which it must not claim). Fenced sessions' changes are dropped,
    /// those of sessions behind (or all, while suspect) held.
    fn sort(&self, link: &Link, ops: &[Op]) -> (Vec<Op>, Option<Bounds>) {
        let came = came_with(ops);
        let mut direct = Vec::with_capacity(ops.len() * 2);
        let mut hold = self.replica.hold.lock();
        if link.client.connection_state() != async_nats::connection::State::Connected {
            hold.turn_suspect();
        }
        for c in std::mem::take(&mut hold.due) {
            if let Some(b) = hold.backlogs.remove(&c) {
                direct.extend(b.ops(&c));
            }
        }
        let suspect = hold.suspect;
        for (i, op) in ops.iter().enumerate() {
            let Some(c) = client_of(op) else {
                // Labels go again with their messages, below.
                if !matches!(op, Op::CameWith(..)) {
                    direct.push(op.clone());
                }
                continue;
            };
            if hold.fenced.contains(&**c) {
                if matches!(op, Op::DeleteSession(_)) {
                    hold.fenced.remove(&**c);
                }
                continue;
            }
            if hold.holds(c) {
                let written = |seq| self.queues.may_hold(c, seq);
                hold.backlogs
                    .entry(c.to_string())
                    .or_default()
                    .add(op, came[i], written, !suspect);
                continue;
            }
            direct.push(op.clone());
            if let (Op::Message(..), Some((origin, seq))) = (op, came[i]) {
                direct.push(Op::CameWith(origin, seq));
            }
        }
        // A receipt claims no held message: per origin, it stops below the
        // lowest held; while suspect none is written.
        let receipts = (!suspect).then(|| {
            let mut low = HashMap::new();
            for b in hold.backlogs.values() {
                b.low_stamps(&mut low);
            }
            for (origin, seq) in &hold.routing_low {
                let l = low.entry(*origin).or_insert(*seq);
                *l = (*l).min(*seq);
            }
            low
        });
        let complete_from_ms = hold.complete_from_ms();
        let receipts = receipts.map(|low| Bounds {
            low,
            complete_from_ms,
            owed: hold.owed.clone(),
        });
        (direct, receipts)
    }

    /// A batch the replica did not take: its sessions are behind.
    fn hold_back(&self, direct: &[Op]) {
        let came = came_with(direct);
        let mut hold = self.replica.hold.lock();
        let early = !hold.suspect;
        for (i, op) in direct.iter().enumerate() {
            let Some(c) = client_of(op) else { continue };
            if hold.fenced.contains(&**c) {
                continue;
            }
            let written = |seq| self.queues.may_hold(c, seq);
            hold.backlogs
                .entry(c.to_string())
                .or_default()
                .add(op, came[i], written, early);
        }
    }
}

/// What a receipt written after a batch may claim: per origin, below the
/// lowest stamp held back and nothing the replays here still owe their
/// sessions; and since when the node's routing is complete.
struct Bounds {
    low: HashMap<u64, u64>,
    complete_from_ms: Option<u64>,
    owed: crate::backlog::Owed,
}

/// What one batch asks of JetStream, in order: publishes are pipelined,
/// purges follow them, a session's removal waits for both.
#[derive(Default)]
struct Batch {
    acks: Vec<jetstream::context::PublishAckFuture>,
    purges: Vec<(usize, String)>,
}

async fn replicate(
    link: &Link,
    ops: &[Op],
    queues: &mut Queues,
    received: &mut HashMap<u64, (u64, std::time::Instant)>,
    receipts: Option<Bounds>,
) -> Result<u64, String> {
    if link.client.connection_state() != async_nats::connection::State::Connected {
        return Err("not connected to NATS".into());
    }
    // The receipt is written after the batch, when it stored messages from
    // other nodes or a subscription (then its time says the node stored).
    let mut receipt_due = false;
    let mut stamps = Vec::new();
    let came_with = came_with(ops);
    let mut batch = Batch::default();
    let mut emptied = HashSet::new();
    let mut n = 0u64;
    for (i, op) in ops.iter().enumerate() {
        // Each a plain publish: the stream keeps the last of a subject.
        let mut stamp = None;
        let (subject, payload) = match op {
            Op::Session(c, rec) => (format!("{}.s", base(c).0), rec.encode()),
            Op::Subscribe(c, f, rec) => {
                receipt_due = true;
                (filter_subject(c, f), subscription(f, rec))
            }
            Op::Received(origin, seq) => {
                stamps.push((*origin, *seq));
                receipt_due = true;
                continue;
            }
            Op::CameWith(..) => continue,
            Op::Unsubscribe(c, f) => (filter_subject(c, f), Bytes::new()),
            Op::Message(c, seq, raw) => {
                // A rewrite (in flight now) keeps the stamp of the first.
                let stamps = queues.live.entry(c.to_string()).or_default();
                stamp = *stamps.entry(*seq).or_insert(came_with[i]);
                (message_subject(link, c, *seq), raw.clone())
            }
            Op::DeleteMessage(c, seq) => {
                let removed = queues.live.get_mut(&**c).and_then(|live| live.remove(seq));
                let known = removed.is_some();
                // The tombstone keeps the stamp: a session rebuilt from
                // here had that message (delivered, or gone elsewhere), and
                // a replay from a receipt that does not name it yet (the
                // node died before writing it) must not give it again.
                stamp = removed.flatten();
                if !known {
                    queues.unknown.insert(c.to_string());
                }
                *queues.dead.entry(c.to_string()).or_default() += 1;
                emptied.insert(c.to_string());
                (message_subject(link, c, *seq), Bytes::new())
            }
            Op::IncomingQos2(c, id) => (format!("{}.q.{id}", base(c).0), Bytes::from_static(b"1")),
            Op::DeleteIncomingQos2(c, id) => (format!("{}.q.{id}", base(c).0), Bytes::new()),
            Op::DeleteSession(c) => {
                flush(link, &mut batch).await?;
                let (prefix, p) = base(c);
                purge(link, p, format!("{prefix}.>")).await?;
                queues.live.remove(&**c);
                queues.unknown.remove(&**c);
                queues.dead.remove(&**c);
                emptied.remove(&**c);
                n += 1;
                continue;
            }
            // Retained messages have their own bucket; waiting wills are
            // the cluster's (see `wills`).
            Op::Retained(..) | Op::DeleteRetained(..) | Op::Will(..) | Op::DeleteWill(..) => {
                continue
            }
        };
        let ack = if let Some((origin, seq)) = stamp {
            let mut headers = HeaderMap::new();
            headers.insert(STAMP, format!("{origin:x}-{seq}").as_str());
            link.js
                .publish_with_headers(subject, headers, payload)
                .await
        } else {
            link.js.publish(subject, payload).await
        }
        .map_err(|e| e.to_string())?;
        batch.acks.push(ack);
        n += 1;
        // The client holds back publishes past a number of acknowledgements
        // not yet awaited: await them in windows.
        if batch.acks.len() >= ACK_WINDOW {
            await_acks(link, &mut batch).await?;
        }
    }
    // Sessions whose every message is removed now: their messages and
    // tombstones go, now and then (a purge is costly for the server).
    for c in emptied {
        let whole =
            !queues.unknown.contains(&c) && queues.live.get(&c).is_some_and(HashMap::is_empty);
        let due = queues.dead.get(&c).is_some_and(|d| *d >= COMPACT_AFTER);
        if whole && due {
            queues.live.remove(&c);
            queues.dead.remove(&c);
            let (prefix, p) = base(&c);
            batch.purges.push((p, format!("{prefix}.m.>")));
        }
    }
    flush(link, &mut batch).await?;
    if let (true, Some(bounds)) = (receipt_due, receipts) {
        write_receipt(link, received, &stamps, &bounds).await;
    }
    Ok(n)
}

/// The header of a replicated message that came from another node: the
/// stamp (`<origin hex>-<seq>`) it came with.
const STAMP: &str = "Starling-Stamp";

/// For each op, the stamp of the message it came with: a message op takes
/// the label ([`Op::CameWith`]) right after it, which the broker submits
/// with the copy. (A label is never looked for further on: a rewrite of a
/// message, in flight now, is not labelled, and would otherwise take
/// another message's stamp, even another session's.)
fn came_with(ops: &[Op]) -> Vec<Option<(u64, u64)>> {
    let mut out = vec![None; ops.len()];
    for (i, pair) in ops.windows(2).enumerate() {
        if let [Op::Message(..), Op::CameWith(origin, seq)] = pair {
            out[i] = Some((*origin, *seq));
        }
    }
    out
}

fn parse_stamp(value: &str) -> Option<(u64, u64)> {
    let (origin, seq) = value.split_once('-')?;
    Some((u64::from_str_radix(origin, 16).ok()?, seq.parse().ok()?))
}

/// Writes this node's receipt, counting `stamps` (whose messages are
/// replicated now). Its acknowledgement is not awaited: a receipt lost
/// only makes a replay read more.
async fn write_receipt(
    link: &Link,
    received: &mut HashMap<u64, (u64, std::time::Instant)>,
    stamps: &[(u64, u64)],
    Bounds {
        low,
        complete_from_ms,
        owed,
    }: &Bounds,
) {
    let now = std::time::Instant::now();
    for (origin, seq) in stamps {
        let e = received.entry(*origin).or_insert((0, now));
        if *seq > e.0 {
            *e = (*seq, now);
        }
    }
    received.retain(|_, (_, at)| now - *at < crate::receipt::FORGET_ORIGIN);
    let now_ms = starling_broker::store::unix_ms();
    // After a gap, complete only from its beginning (see
    // `backlog::Hold::complete_from_ms`), and from where the replays here
    // read (with one that has not said what it owes: not known, 0).
    let complete = [*complete_from_ms, owed.from_ms]
        .into_iter()
        .flatten()
        .fold(now_ms, u64::min);
    let receipt = Receipt {
        at_ms: if owed.unknown { 0 } else { complete },
        own: link.origin,
        high: link
            .carried
            .iter()
            .map(|(o, s)| (*o, *s))
            .chain(received.iter().map(|(o, (s, _))| (*o, *s)))
            .fold(HashMap::new(), |mut high, (o, s)| {
                let h = high.entry(o).or_insert(s);
                *h = (*h).max(s);
                high
            })
            .into_iter()
            .map(|(o, s)| match low.get(&o) {
                Some(l) => (o, owed.claim(o, s.min(l.saturating_sub(1)))),
                None => (o, owed.claim(o, s)),
            })
            .collect(),
    };
    tracing::trace!(at_ms = receipt.at_ms, high = ?receipt.high, "receipt");
    if let Err(e) = link
        .js
        .publish(link.receipt_subject.clone(), receipt.encode())
        .await
    {
        tracing::debug!("the receipt was not written: {e}");
    }
}

/// Waits for the batch's publishes, then runs its purges.
async fn flush(link: &Link, batch: &mut Batch) -> Result<(), String> {
    await_acks(link, batch).await?;
    let purges = std::mem::take(&mut batch.purges);
    for chunk in purges.chunks(256) {
        let all = chunk
            .iter()
            .map(|(p, subject)| purge(link, *p, subject.clone()));
        for result in futures_util::future::join_all(all).await {
            result?;
        }
    }
    Ok(())
}

async fn await_acks(link: &Link, batch: &mut Batch) -> Result<(), String> {
    for ack in std::mem::take(&mut batch.acks) {
        match tokio::time::timeout(link.timeout, ack).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("JetStream did not acknowledge in time".into()),
        }
    }
    Ok(())
}

async fn purge(link: &Link, p: usize, filter: String) -> Result<(), String> {
    let purged = link.streams[p].purge().filter(filter);
    match tokio::time::timeout(link.timeout, purged).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("JetStream did not purge in time".into()),
    }
}

fn filter_subject(client: &str, filter: &str) -> String {
    format!("{}.f.{}", base(client).0, &keys::of(filter)[..32])
}

fn message_subject(link: &Link, client: &str, seq: u64) -> String {
    format!("{}.m.{}.{seq}", base(client).0, link.node)
}

/// A subscription as replicated: the filter's length and bytes, the record.
fn subscription(filter: &str, rec: &SubscriptionRecord) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(u16::try_from(filter.len()).unwrap_or(u16::MAX));
    b.put_slice(filter.as_bytes());
    b.put_slice(&rec.encode());
    b.freeze()
}

/// A session rebuilt from its replica.
pub struct Recovered {
    /// The session, as a handover.
    pub chunks: Vec<Bytes>,
    /// The subjects of its messages (to remove once written again).
    pub subjects: Vec<String>,
    /// The stamps its messages came with, those still queued and those
    /// it was done with (their tombstones keep them): a replay does not
    /// give it those again.
    pub stamps: HashSet<(u64, u64)>,
}

/// The replicated session of `client_id`, as a handover (see
/// [`starling_broker::BrokerState::take_handover`]), with the subjects of
/// its messages (to purge once the new owner has written them again).
/// `Ok(None)`: there is none; `Err`: it could not be read (JetStream is
/// away or electing a leader): the caller must not go on without it.
pub async fn recover(replica: &Replica, client_id: &str) -> Result<Option<Recovered>, String> {
    use jetstream::stream::LastRawMessageErrorKind;
    let link = replica
        .link
        .get()
        .ok_or("sessions are not replicated yet")?;
    let (prefix, p) = base(client_id);
    let stream = &link.streams[p];
    // No session record: nothing to read.
    let session_subject = format!("{prefix}.s");
    let last = stream.get_last_raw_message_by_subject(&session_subject);
    match tokio::time::timeout(link.timeout, last).await {
        Ok(Ok(m)) if !m.payload.is_empty() => {}
        Ok(Ok(_)) => return Ok(None),
        Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("JetStream did not answer in time".into()),
    }
    read_session(link, stream, &prefix)
        .await
        .map(Some)
        .ok_or_else(|| "the replicated session was not read whole".to_string())
}

/// Reads the session under `prefix` whole (see [`recover`]).
async fn read_session(link: &Link, stream: &stream::Stream, prefix: &str) -> Option<Recovered> {
    let entries = read_all(link, stream, &format!("{prefix}.>")).await?;
    let prefix = prefix.to_string();
    let mut session = None;
    let mut filters = BTreeMap::new();
    let mut messages = BTreeMap::new();
    let mut qos2 = BTreeMap::new();
    for (subject, payload, stamp) in entries {
        let Some(rest) = subject.strip_prefix(&prefix) else {
            continue;
        };
        if rest == ".s" {
            session = SessionRecord::decode(&payload).ok();
        } else if rest.starts_with(".f.") {
            filters.insert(rest.to_string(), payload);
        } else if let Some(m) = rest.strip_prefix(".m.") {
            // Per node, in order of their sequence numbers.
            let (node, seq) = m.split_once('.')?;
            let seq: u64 = seq.parse().ok()?;
            messages.insert((node.to_string(), seq), (subject, payload, stamp));
        } else if let Some(id) = rest.strip_prefix(".q.") {
            qos2.insert(id.parse::<u16>().ok()?, payload);
        }
    }
    let mut builder = HandoverBuilder::new(&session?);
    for raw in filters.values().filter(|p| p.len() > 2) {
        let len = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
        let Some(filter) = raw.get(2..2 + len) else {
            continue;
        };
        let (Ok(filter), Ok(rec)) = (
            std::str::from_utf8(filter),
            SubscriptionRecord::decode(&raw[2 + len..]),
        ) else {
            continue;
        };
        builder.subscription(filter, &rec);
    }
    let mut subjects = Vec::with_capacity(messages.len());
    let mut stamps = HashSet::new();
    for (subject, raw, stamp) in messages.into_values() {
        // (A tombstone's stamp too: the session had that message.)
        stamps.extend(stamp);
        if raw.is_empty() {
            continue;
        }
        if let Ok(rec) = MessageRecord::decode(&raw) {
            builder.message(&rec, &raw);
        }
        subjects.push(subject);
    }
    for (id, p) in qos2 {
        if !p.is_empty() {
            builder.qos2_received(id);
        }
    }
    Some(Recovered {
        chunks: builder.finish(),
        subjects,
        stamps,
    })
}

/// A replicated record: its subject, payload and stamp (if it came from
/// another node).
type Entry = (String, Bytes, Option<(u64, u64)>);

/// Every message of `filter` in `stream`, with its subject, in order
/// (removals, with an empty payload, included: the last of a subject counts).
async fn read_all(link: &Link, stream: &stream::Stream, filter: &str) -> Option<Vec<Entry>> {
    use jetstream::consumer::pull::OrderedConfig;
    // Its leader now (see `placement`).
    let mut stream = stream.clone();
    tokio::time::timeout(link.timeout, stream.info())
        .await
        .ok()?
        .ok()?;
    let config = OrderedConfig {
        filter_subject: filter.to_string(),
        ..Default::default()
    };
    let consumer = crate::placement::on_leader(&stream, config).await.ok()?;
    // How many there are, as the stream's leader says: the consumer may
    // sit on a replica still catching up (a server just back).
    let expected = tokio::time::timeout(link.timeout, count_matching(&stream, filter))
        .await
        .ok()
        .and_then(Result::ok);
    let mut messages = consumer.messages().await.ok()?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + link.timeout * 10;
    while out.len() < RECOVER_LIMIT {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let Ok(Some(Ok(m))) = next else {
            tracing::warn!(%filter, "a replicated session was not read whole");
            return None;
        };
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        let stamp = m
            .headers
            .as_ref()
            .and_then(|h| h.get(STAMP))
            .and_then(|v| parse_stamp(v.as_str()));
        out.push((m.subject.to_string(), m.payload.clone(), stamp));
        if pending == 0 && expected.is_none_or(|e| out.len() >= e) {
            break;
        }
    }
    Some(out)
}

/// How many messages of `stream` match `filter`, as its leader counts.
async fn count_matching(stream: &stream::Stream, filter: &str) -> Result<usize, String> {
    let mut subjects = stream
        .info_with_subjects(filter)
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0usize;
    while let Some(entry) = subjects.next().await {
        let (_, count) = entry.map_err(|e| e.to_string())?;
        n += count;
    }
    Ok(n)
}

/// How often, and how many times at most, a recovered session's old copies
/// are tried to be removed (see [`forget`]).
const FORGET_EVERY: Duration = Duration::from_secs(1);
const FORGET_TRIES: usize = 60;

/// Removes the replicated messages that a recovered session's new owner
/// has written again under its own subjects (tombstones, pipelined); tried
/// again while JetStream does not take them, and not before the session's
/// new copies are in the replica (held on this node, the replica would
/// have neither).
pub async fn forget(replica: &Replica, client_id: &str, subjects: Vec<String>) {
    let mut last = String::new();
    for _ in 0..FORGET_TRIES {
        if replica.hold.lock().holds(client_id) {
            last = "the session's new copies are held on this node".into();
        } else {
            match forget_once(replica, &subjects).await {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(FORGET_EVERY).await;
    }
    tracing::warn!(%client_id, "old copies of a recovered session not removed: {last}");
}

async fn forget_once(replica: &Replica, subjects: &[String]) -> Result<(), String> {
    let Some(link) = replica.link.get() else {
        return Ok(());
    };
    let mut batch = Batch::default();
    for subject in subjects {
        let ack = link
            .js
            .publish(subject.clone(), Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        batch.acks.push(ack);
        if batch.acks.len() >= ACK_WINDOW {
            await_acks(link, &mut batch).await?;
        }
    }
    flush(link, &mut batch).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_codec::ByteString;

    #[test]
    fn a_message_takes_the_label_right_after_it() {
        let c = ByteString::from("c");
        let ops = [
            Op::Message(c.clone(), 1, Bytes::new()),
            Op::CameWith(7, 1),
            Op::DeleteMessage(c.clone(), 1),
            // A rewrite (in flight), then another copy's label: not its own.
            Op::Message(c.clone(), 2, Bytes::new()),
            Op::Message(c.clone(), 3, Bytes::new()),
            Op::CameWith(7, 2),
            Op::Received(7, 2),
            Op::Message(c, 4, Bytes::new()),
        ];
        let got = came_with(&ops);
        assert_eq!(
            got,
            [
                Some((7, 1)),
                None,
                None,
                None,
                Some((7, 2)),
                None,
                None,
                None
            ]
        );
        assert_eq!(parse_stamp("ff-12"), Some((255, 12)));
        assert_eq!(parse_stamp("zz-1"), None);
    }
}

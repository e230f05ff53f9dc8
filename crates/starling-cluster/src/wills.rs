//! Wills across nodes, and the death of a node. Each node keeps the wills of its connected clients
//! in a bucket (one key per connection, `<node>.<client>.<run>-<connection>`,
//! written again until it is written) and beats in another each second.
//! When a node stops beating for [`DEAD_AFTER`] and does not answer over
//! core NATS either (JetStream may take no heartbeat of a live node for a
//! while), the live node with the
//! lowest id takes its wills (a delete fenced on the revision read, so a
//! will goes once) and publishes each after its delay, unless its session
//! was resumed on another node within it, and adopts the dead node's
//! persistent sessions (`owners::adopt_sessions_of`). A node that starts publishes
//! what it left itself (its clients' connections ended with it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use starling_broker::store::WillRecord;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::buckets::Buckets;
use crate::keys;
use crate::shared::{Inner, WillCommand};

/// How often a node beats.
const BEAT: Duration = Duration::from_secs(1);

/// A node silent this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// Runs the wills of this node: its stale ones first, then the broker's
/// changes, the heartbeat and the watch over the other nodes.
pub async fn run(inner: Arc<Inner>, buckets: Buckets, rx: mpsc::UnboundedReceiver<WillCommand>) {
    let me = keys::node(&inner.node_id);
    tokio::spawn(beat(inner.clone(), buckets.nodes.clone()));
    tokio::spawn(watch_nodes(inner.clone(), buckets.clone()));
    // The wills the previous run left, alongside: this run's clients'
    // wills are shared from the start (a client connected here now keeps
    // its own).
    let (stale, b) = (inner.clone(), buckets.clone());
    tokio::spawn(async move { take_wills_of(&stale, &b, &me, true).await });
    keep(inner, buckets, rx).await;
}

/// The key of one connection's will: `<node>.<client>.<run>-<connection>`,
/// so that a run's connections never share one (a connection sent away
/// while NATS was unreachable keeps its will there whatever the client's
/// next connection does, and a restarted node's startup sweep publishes
/// every will its previous run left).
fn key(node: &str, client_id: &str, origin: u64, conn: u64) -> String {
    format!("{node}.{}.{origin:x}-{conn}", keys::of(client_id))
}

/// Writes the broker's changes, in order. A write that fails (NATS or
/// JetStream away) is tried again each [`BEAT`] until a later change of the
/// same connection replaces it.
async fn keep(inner: Arc<Inner>, buckets: Buckets, mut rx: mpsc::UnboundedReceiver<WillCommand>) {
    let me = keys::node(&inner.node_id);
    // Per connection, the value its key must get (`None`: no key).
    let mut failed: HashMap<(String, u64), Option<Bytes>> = HashMap::new();
    let mut retry = tokio::time::interval(BEAT);
    loop {
        let command = tokio::select! {
            command = rx.recv() => match command {
                Some(c) => c,
                None => return,
            },
            _ = retry.tick() => {
                // One write that fails ends the round (each may take a
                // timeout): the broker's changes are not held up longer.
                if !inner.connected() {
                    continue;
                }
                let due: Vec<_> = failed.drain().collect();
                let mut due = due.into_iter();
                while let Some(((client_id, conn), value)) = due.next() {
                    let again = (conn, value.clone());
                    if !write_will(&inner, &buckets, &me, &client_id, again, false).await {
                        failed.insert((client_id, conn), value);
                        failed.extend(due);
                        break;
                    }
                }
                continue;
            }
        };
        let (client_id, conn, value) = match command {
            WillCommand::Set(client_id, conn, record) => {
                let mut value = BytesMut::with_capacity(2 + client_id.len() + record.len());
                value.put_u16(u16::try_from(client_id.len()).unwrap_or(u16::MAX));
                value.put_slice(client_id.as_bytes());
                value.put_slice(&record);
                (client_id, conn, Some(value.freeze()))
            }
            WillCommand::Clear(client_id, conn) => (client_id, conn, None),
            WillCommand::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let id = (client_id, conn);
        // A later change replaces one not written yet (a removal is still
        // written: the failed write may have reached the bucket).
        failed.remove(&id);
        let written = inner.connected()
            && write_will(&inner, &buckets, &me, &id.0, (conn, value.clone()), true).await;
        if !written {
            failed.insert(id, value);
        }
    }
}

/// Writes (`Some`) or removes the shared will of `client_id`'s connection
/// `conn`, and records which connections' wills the cluster holds; false
/// when the bucket could not be written (`loud`: said at warn level).
async fn write_will(
    inner: &Inner,
    buckets: &Buckets,
    me: &str,
    client_id: &str,
    (conn, value): (u64, Option<Bytes>),
    loud: bool,
) -> bool {
    let k = key(me, client_id, inner.origin, conn);
    let done = match &value {
        Some(v) => create(&buckets.wills, k, v.clone()).await,
        None => buckets.wills.purge(k).await.map_err(|e| e.to_string()),
    };
    match done {
        Ok(()) => {
            let mut shared = inner.shared_wills.lock();
            let id = (client_id.to_string(), conn);
            match value {
                Some(_) => shared.insert(id),
                None => {
                    inner.clearing.lock().remove(&id);
                    shared.remove(&id)
                }
            };
            tracing::debug!("a will change shared with the cluster");
            true
        }
        Err(e) if loud => {
            tracing::warn!(%client_id, "a will was not shared with the cluster (tried again): {e}");
            false
        }
        Err(_) => false,
    }
}

/// Writes a connection's will under `key` only if the key never had one:
/// each key is one connection's, written once. A write that timed out may
/// still be taken by JetStream later (held in a route cut off from the
/// stream's leader, delivered once the link is back), after the
/// connection's removal: it is refused then, and the will of a connection
/// that ended cleanly is not published. Refused because the key has an
/// entry is written: an earlier try of this write that was taken, or the
/// will taken since by another node (publishing it is that node's).
async fn create(wills: &kv::Store, key: String, value: Bytes) -> Result<(), String> {
    match wills.update(&key, value, 0).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
            tracing::debug!(%key, "a will already written (an earlier try was taken)");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Puts this node's heartbeat each [`BEAT`].
async fn beat(inner: Arc<Inner>, nodes: kv::Store) {
    let me = keys::node(&inner.node_id);
    let mut tick = tokio::time::interval(BEAT);
    while inner.broker().is_some() {
        tick.tick().await;
        if inner.connected() {
            let beat = format!("{} {}", starling_broker::store::unix_ms(), inner.node_id);
            if nodes.put(&me, Bytes::from(beat)).await.is_ok() {
                crate::cutoff::beat_taken(&inner);
            }
        }
    }
}

/// Watches the heartbeats; takes the wills of a node silent for
/// [`DEAD_AFTER`] when this is the lowest live node. Silent means: this
/// node's own beats kept coming back through the bucket meanwhile (at least
/// [`DEAD_AFTER`] worth of them), so a JetStream that could take no beat
/// for a while (a leader being elected) makes no node look dead.
async fn watch_nodes(inner: Arc<Inner>, buckets: Buckets) {
    let me = keys::node(&inner.node_id);
    // Per node: its id, when its beat was last heard, and how many of this
    // node's own beats had been heard by then.
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut own: u64 = 0;
    let mut own_ms: u64 = 0;
    let own_needed = DEAD_AFTER.as_millis() as u64 / BEAT.as_millis() as u64;
    let mut tick = tokio::time::interval(BEAT);
    let mut watch = match buckets.nodes.watch_with_history(">").await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("the other nodes cannot be watched (their wills are not taken): {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            entry = watch.next() => match entry {
                Some(Ok(e)) if e.operation == Operation::Put => {
                    // "<ms since the epoch> <node id>": an old beat (a node
                    // long gone, read back from the bucket) is not life.
                    let text = String::from_utf8_lossy(&e.value);
                    let Some((ms, id)) = text.split_once(' ') else { continue };
                    let age = starling_broker::store::unix_ms().saturating_sub(ms.parse().unwrap_or(0));
                    if age > DEAD_AFTER.as_millis() as u64 {
                        continue;
                    }
                    let ms: u64 = ms.parse().unwrap_or(0);
                    if e.key == me {
                        if ms > own_ms {
                            own_ms = ms;
                            own += 1;
                        }
                        continue;
                    }
                    if inner.live.lock().insert(id.to_string(), Instant::now()).is_none() {
                        tracing::info!(node = %id, "a node is in the cluster");
                    }
                    let fresh = seen.get(&e.key).is_none_or(|v| ms > v.3);
                    if fresh {
                        seen.insert(e.key, (id.to_string(), Instant::now(), own, ms));
                    }
                }
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => {
                if inner.broker().is_none() {
                    return;
                }
                // The watch (a push consumer) may stall while a leader is
                // elected: the beats are read directly as well (any replica
                // answers).
                refresh(&buckets, &me, &mut seen, &mut own, &mut own_ms).await;
                let now = Instant::now();
                let silent = |(_, at, mark, _): &Seen| {
                    now - *at > DEAD_AFTER && own.saturating_sub(*mark) >= own_needed
                };
                let mut dead: Vec<String> = seen
                    .iter()
                    .filter(|(_, v)| silent(v))
                    .map(|(k, _)| k.clone())
                    .collect();
                if dead.is_empty() {
                    continue;
                }
                // Silent but alive (JetStream took none of its heartbeats
                // for a while): watched on, as if heard now.
                for node in std::mem::take(&mut dead) {
                    let Some(v) = seen.get_mut(&node) else { continue };
                    if crate::cutoff::answers(&inner, &v.0).await {
                        tracing::info!(node = %v.0, "a node whose heartbeats stopped answers: not dead");
                        (v.1, v.2) = (Instant::now(), own);
                    } else {
                        dead.push(node);
                    }
                }
                if dead.is_empty() {
                    continue;
                }
                let lowest = seen
                    .values()
                    .filter(|v| !silent(v))
                    .all(|(id, ..)| inner.node_id < *id);
                for node in dead {
                    let id = seen.remove(&node).map(|(id, ..)| id).unwrap_or_default();
                    inner.live.lock().remove(&id);
                    if lowest {
                        tracing::warn!(node = %id, "a node stopped beating: publishing its clients' wills");
                        // On its own task: the watch goes on meanwhile (the
                        // other nodes' beats must still be heard).
                        tokio::spawn(settle_death(inner.clone(), buckets.clone(), node, id));
                    }
                }
            }
        }
    }
}

/// Another node as heard: its id, when its newest beat was heard, how many
/// of this node's own beats had been heard by then, and the beat's time.
type Seen = (String, Instant, u64, u64);

/// Reads each known node's beat (and this node's own) directly.
async fn refresh(
    buckets: &Buckets,
    me: &str,
    seen: &mut HashMap<String, Seen>,
    own: &mut u64,
    own_ms: &mut u64,
) {
    let beat_ms = |v: &Bytes| {
        let text = String::from_utf8_lossy(v);
        text.split_once(' ')
            .and_then(|(ms, _)| ms.parse::<u64>().ok())
            .unwrap_or(0)
    };
    if let Ok(Ok(Some(v))) = tokio::time::timeout(BEAT, buckets.nodes.get(me)).await {
        let ms = beat_ms(&v);
        if ms > *own_ms {
            *own_ms = ms;
            *own += 1;
        }
    }
    for (key, v) in seen.iter_mut() {
        if let Ok(Ok(Some(value))) = tokio::time::timeout(BEAT, buckets.nodes.get(key)).await {
            let ms = beat_ms(&value);
            if ms > v.3 {
                *v = (v.0.clone(), Instant::now(), *own, ms);
            }
        }
    }
}

/// Times a dead node's wills and sessions are tried (a second apart) while
/// JetStream cannot answer (a leader being elected after a server died).
const DEATH_TRIES: usize = 30;

/// Publishes dead node `id`'s wills (under `key`) and adopts its sessions,
/// trying again what JetStream could not answer, unless the node is heard
/// again or answers over core NATS.
async fn settle_death(inner: Arc<Inner>, buckets: Buckets, key: String, id: String) {
    let (mut wills, mut sessions) = (false, false);
    for _ in 0..DEATH_TRIES {
        if inner.live.lock().contains_key(&id) {
            return;
        }
        // Its heartbeats may stop while it lives: JetStream took none of
        // them for a while (seen in a partition of another node's server:
        // its clients' wills were published while they were connected).
        if crate::cutoff::answers(&inner, &id).await {
            tracing::info!(node = %id, "a node whose heartbeats stopped answers: not dead");
            return;
        }
        if !wills {
            wills = take_wills_of(&inner, &buckets, &key, false).await;
        }
        if wills && !sessions {
            sessions = crate::owners::adopt_sessions_of(&inner, &id).await;
        }
        if wills && sessions {
            return;
        }
        tokio::time::sleep(BEAT).await;
    }
    tracing::warn!(node = %id, wills, sessions, "a dead node's wills or sessions were not all settled");
}

/// Takes every will left under `node` and publishes each after its delay;
/// with `live_here`, not those of clients connected to this node now, nor
/// those of connections that ended here cleanly (the
/// node's own wills after it lost NATS: the clients still here keep theirs).
/// Returns whether they could be read.
pub async fn take_wills_of(
    inner: &Arc<Inner>,
    buckets: &Buckets,
    node: &str,
    live_here: bool,
) -> bool {
    let mut watch = match buckets.wills.watch_with_history(format!("{node}.>")).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("the wills of a dead node could not be read: {e}");
            return false;
        }
    };
    // The entries there now, then nothing more comes.
    let mut seen = 0usize;
    let mut untaken = false;
    while let Ok(Some(Ok(entry))) = tokio::time::timeout(inner.timeout, watch.next()).await {
        seen += 1;
        let last = entry.delta == 0;
        tracing::debug!(key = %entry.key, op = ?entry.operation, delta = entry.delta, "a will left");
        let here = live_here && ended_here(inner, &entry.key, &entry.value);
        if entry.operation == Operation::Put && !here {
            let fenced = buckets
                .wills
                .delete_expect_revision(&entry.key, Some(entry.revision))
                .await;
            match fenced {
                Ok(()) => publish_later(inner.clone(), buckets.clone(), entry.value),
                // Another node took it first.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                // JetStream did not answer: the will stays, read again.
                Err(e) => {
                    tracing::debug!(key = %entry.key, "a will not taken: {e}");
                    untaken = true;
                }
            }
        }
        if last {
            break;
        }
    }
    if untaken {
        return false;
    }
    if live_here {
        // This node's own wills, once back: those it left to the cluster
        // (connections it sent away, or that ended meanwhile) are in the
        // bucket unless another node took them. A replica still catching
        // up (its server just restarted) shows none: read again later.
        let broker = inner.broker();
        let mut shared = inner.shared_wills.lock();
        let here = |(c, conn): &(String, u64)| {
            broker
                .as_ref()
                .is_some_and(|b| b.connection_of(c) == Some(*conn))
        };
        if seen == 0 && !shared.iter().all(here) {
            tracing::info!("this node's wills not seen in the bucket yet: read again");
            return false;
        }
        shared.retain(|id| here(id));
    }
    true
}

/// Whether the will under `key` is this node's to keep: that of a
/// connection of this run still attached here, or one that ended here
/// cleanly (its removal from the bucket not written yet: a write of the
/// will that timed out may have been taken after all).
fn ended_here(inner: &Inner, key: &str, value: &Bytes) -> bool {
    let Some((origin, conn)) = key.rsplit('.').next().and_then(|last| last.split_once('-')) else {
        return false;
    };
    let (Ok(origin), Ok(conn)) = (u64::from_str_radix(origin, 16), conn.parse::<u64>()) else {
        return false;
    };
    let mut v = value.clone();
    if origin != inner.origin || v.len() < 2 {
        return false;
    }
    let len = usize::from(v.get_u16());
    if v.len() < len {
        return false;
    }
    let id = String::from_utf8_lossy(&v[..len]).into_owned();
    let attached = inner
        .broker()
        .is_some_and(|b| b.connection_of(&id) == Some(conn));
    attached || inner.clearing.lock().contains(&(id, conn))
}

/// Publishes a taken will after its delay, unless its client's session was
/// resumed meanwhile (its owner is another node now).
fn publish_later(inner: Arc<Inner>, buckets: Buckets, mut value: Bytes) {
    if value.len() < 2 {
        return;
    }
    let len = usize::from(value.get_u16());
    if value.len() < len {
        return;
    }
    let client_id = String::from_utf8_lossy(&value.split_to(len)).into_owned();
    let delay = WillRecord::decode(&value).map_or(0, |r| r.deadline_ms);
    tokio::spawn(async move {
        if delay > 0 {
            let owner = owner_of(&buckets, &client_id).await;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if owner_of(&buckets, &client_id).await != owner {
                tracing::info!(%client_id, "will not published: the session was resumed");
                return;
            }
        }
        if let Some(broker) = inner.broker() {
            if broker.publish_lost_will(&client_id, &value) {
                tracing::info!(%client_id, "published the will of a client of a dead node");
            }
        }
    });
}

async fn owner_of(buckets: &Buckets, client_id: &str) -> Option<u64> {
    match buckets.owners.entry(keys::of(client_id)).await {
        Ok(Some(e)) if e.operation == Operation::Put => Some(e.revision),
        _ => None,
    }
}

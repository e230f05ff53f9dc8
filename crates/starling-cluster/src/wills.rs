//! Wills across nodes, and the death of a node. Each node keeps the wills of its connected clients
//! in a bucket (under `<node>.<client>`) and beats in another each second.
//! When a node stops beating for [`DEAD_AFTER`], the live node with the
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

/// Client ids whose stale will this run looked for, at most (then it
/// starts over: a look is one read of the bucket).
const KNOWN_LIMIT: usize = 1_000_000;

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

fn key(node: &str, client_id: &str) -> String {
    format!("{node}.{}", keys::of(client_id))
}

/// Writes the broker's changes, in order; a clear for a connection that
/// is not the last one set is ignored.
async fn keep(inner: Arc<Inner>, buckets: Buckets, mut rx: mpsc::UnboundedReceiver<WillCommand>) {
    let me = keys::node(&inner.node_id);
    let wills = buckets.wills.clone();
    let mut current: HashMap<String, u64> = HashMap::new();
    let mut known: std::collections::HashSet<String> = Default::default();
    while let Some(command) = rx.recv().await {
        let done = match command {
            WillCommand::Set(client_id, conn, record) => {
                // A client back on this node after its restart: the will its
                // previous connection left (that connection ended with the
                // node) goes first, once, before this one replaces it.
                if known.len() >= KNOWN_LIMIT {
                    known.clear();
                }
                if known.insert(client_id.clone()) {
                    let k = key(&me, &client_id);
                    if let Ok(Ok(Some(e))) =
                        tokio::time::timeout(inner.timeout, wills.entry(k.clone())).await
                    {
                        if e.operation == Operation::Put
                            && wills
                                .delete_expect_revision(&k, Some(e.revision))
                                .await
                                .is_ok()
                        {
                            publish_later(inner.clone(), buckets.clone(), e.value);
                        }
                    }
                }
                current.insert(client_id.clone(), conn);
                let mut value = BytesMut::with_capacity(2 + client_id.len() + record.len());
                value.put_u16(u16::try_from(client_id.len()).unwrap_or(u16::MAX));
                value.put_slice(client_id.as_bytes());
                value.put_slice(&record);
                wills
                    .put(key(&me, &client_id), value.freeze())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            WillCommand::Clear(client_id, conn) => {
                if current.get(&client_id) != Some(&conn) {
                    continue;
                }
                current.remove(&client_id);
                wills
                    .purge(key(&me, &client_id))
                    .await
                    .map_err(|e| e.to_string())
            }
            WillCommand::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        match done {
            Ok(()) => tracing::debug!("a will change shared with the cluster"),
            Err(e) => tracing::warn!("a will was not shared with the cluster: {e}"),
        }
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
            let _ = nodes.put(&me, Bytes::from(beat)).await;
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
                let dead: Vec<String> = seen
                    .iter()
                    .filter(|(_, v)| silent(v))
                    .map(|(k, _)| k.clone())
                    .collect();
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
/// again.
async fn settle_death(inner: Arc<Inner>, buckets: Buckets, key: String, id: String) {
    let (mut wills, mut sessions) = (false, false);
    for _ in 0..DEATH_TRIES {
        if inner.live.lock().contains_key(&id) {
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
/// with `live_here`, not those of clients connected to this node now (the
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
    while let Ok(Some(Ok(entry))) = tokio::time::timeout(inner.timeout, watch.next()).await {
        let last = entry.delta == 0;
        tracing::debug!(key = %entry.key, op = ?entry.operation, delta = entry.delta, "a will left");
        let here = live_here && connected_here(inner, &entry.value);
        if entry.operation == Operation::Put && !here {
            let fenced = buckets
                .wills
                .delete_expect_revision(&entry.key, Some(entry.revision))
                .await;
            if fenced.is_ok() {
                publish_later(inner.clone(), buckets.clone(), entry.value);
            }
        }
        if last {
            break;
        }
    }
    true
}

/// Whether the client of will entry `value` is connected to this node.
fn connected_here(inner: &Inner, value: &Bytes) -> bool {
    let mut v = value.clone();
    if v.len() < 2 {
        return false;
    }
    let len = usize::from(v.get_u16());
    if v.len() < len {
        return false;
    }
    let id = String::from_utf8_lossy(&v[..len]).into_owned();
    inner.broker().is_some_and(|b| b.is_connected(&id))
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

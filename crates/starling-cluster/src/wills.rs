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

/// A node silent this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// Runs the wills of this node: its stale ones first, then the broker's
/// changes, the heartbeat and the watch over the other nodes.
pub async fn run(inner: Arc<Inner>, buckets: Buckets, rx: mpsc::UnboundedReceiver<WillCommand>) {
    let me = keys::node(&inner.node_id);
    tokio::spawn(beat(inner.clone(), buckets.nodes.clone()));
    tokio::spawn(watch_nodes(inner.clone(), buckets.clone()));
    take_wills_of(&inner, &buckets, &me).await;
    keep(inner, buckets.wills, rx).await;
}

fn key(node: &str, client_id: &str) -> String {
    format!("{node}.{}", keys::of(client_id))
}

/// Writes the broker's changes, in order; a clear for a connection that
/// is not the last one set is ignored.
async fn keep(inner: Arc<Inner>, wills: kv::Store, mut rx: mpsc::UnboundedReceiver<WillCommand>) {
    let me = keys::node(&inner.node_id);
    let mut current: HashMap<String, u64> = HashMap::new();
    while let Some(command) = rx.recv().await {
        let done = match command {
            WillCommand::Set(client_id, conn, record) => {
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
        };
        if let Err(e) = done {
            tracing::warn!("a will was not shared with the cluster: {e}");
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
/// [`DEAD_AFTER`] when this is the lowest live node.
async fn watch_nodes(inner: Arc<Inner>, buckets: Buckets) {
    let me = keys::node(&inner.node_id);
    let mut seen: HashMap<String, (String, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(BEAT);
    let mut heard_since: Option<Instant> = None;
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
                Some(Ok(e)) if e.operation == Operation::Put && e.key != me => {
                    // "<ms since the epoch> <node id>": an old beat (a node
                    // long gone, read back from the bucket) is not life.
                    let text = String::from_utf8_lossy(&e.value);
                    let Some((ms, id)) = text.split_once(' ') else { continue };
                    let age = starling_broker::store::unix_ms().saturating_sub(ms.parse().unwrap_or(0));
                    if age > DEAD_AFTER.as_millis() as u64 {
                        continue;
                    }
                    if inner.live.lock().insert(id.to_string(), Instant::now()).is_none() {
                        tracing::info!(node = %id, "a node is in the cluster");
                    }
                    seen.insert(e.key, (id.to_string(), Instant::now()));
                }
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => {
                if inner.broker().is_none() {
                    return;
                }
                // Only while this node hears NATS, and once it has heard it
                // for DEAD_AFTER: after an outage every beat it knows is old
                // (the others were cut off too, or it was).
                let now = Instant::now();
                if !inner.connected() {
                    heard_since = None;
                    continue;
                }
                let since = *heard_since.get_or_insert(now);
                if now - since <= DEAD_AFTER {
                    continue;
                }
                let dead: Vec<String> = seen
                    .iter()
                    .filter(|(_, (_, at))| now - *at > DEAD_AFTER)
                    .map(|(k, _)| k.clone())
                    .collect();
                if dead.is_empty() {
                    continue;
                }
                let lowest = seen
                    .values()
                    .filter(|(_, at)| now - *at <= DEAD_AFTER)
                    .all(|(id, _)| inner.node_id < *id);
                for node in dead {
                    let id = seen.remove(&node).map(|(id, _)| id).unwrap_or_default();
                    inner.live.lock().remove(&id);
                    if lowest {
                        tracing::warn!(node = %id, "a node stopped beating: publishing its clients' wills");
                        take_wills_of(&inner, &buckets, &node).await;
                        crate::owners::adopt_sessions_of(&inner, &id).await;
                    }
                }
            }
        }
    }
}

/// Takes every will left under `node` and publishes each after its delay.
async fn take_wills_of(inner: &Arc<Inner>, buckets: &Buckets, node: &str) {
    let mut watch = match buckets.wills.watch_with_history(format!("{node}.>")).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("the wills of a dead node could not be read: {e}");
            return;
        }
    };
    // The entries there now, then nothing more comes.
    while let Ok(Some(Ok(entry))) = tokio::time::timeout(inner.timeout, watch.next()).await {
        let last = entry.delta == 0;
        if entry.operation == Operation::Put {
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

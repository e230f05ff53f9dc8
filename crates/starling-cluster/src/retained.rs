//! Retained messages cluster-wide: a key-value bucket keyed by a hash of the
//! topic, written by the node that accepted the message and watched by every
//! node into its own retained store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use starling_broker::message::Message;
use starling_codec::{Properties, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::shared::Inner;
use crate::{envelope, keys};

/// How often writes the bucket did not take are tried again, and how many
/// at most each time (a round holds up the new writes meanwhile).
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const RETRY_BATCH: usize = 256;
/// Topics whose write waits to be tried again, and their bytes, at most
/// (past either, a new one is not shared with the cluster).
const WAITING_LIMIT: usize = 100_000;
const WAITING_BYTES: usize = 64 << 20;

/// Writes what this node retains, and applies what any node retained, until
/// the broker is gone. A write the bucket did not take (NATS or JetStream
/// away) is tried again each second, the latest per topic, unless another
/// node wrote that topic after this node took the message.
pub async fn run(inner: Arc<Inner>, store: kv::Store, mut writes: mpsc::Receiver<(String, Bytes)>) {
    let watcher = tokio::spawn(watch(inner.clone(), store.clone()));
    // Per key: the topic and the latest envelope the bucket did not take.
    let mut waiting: HashMap<String, (String, Bytes)> = HashMap::new();
    let mut waiting_bytes = 0usize;
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            write = writes.recv() => {
                let Some((topic, envelope)) = write else { break };
                let key = keys::of(&topic);
                // A later write replaces one not taken yet.
                if let Some((_, old)) = waiting.remove(&key) {
                    waiting_bytes -= old.len();
                }
                let done = match inner.connected() {
                    true => put(&store, &key, envelope.clone()).await,
                    false => Err("not connected to NATS".to_string()),
                };
                if let Err(e) = done {
                    // Said once per outage (each one would flood the log).
                    if waiting.is_empty() {
                        tracing::warn!(%topic, "retained message not shared with the cluster yet (tried again): {e}");
                    }
                    let room = waiting.len() < WAITING_LIMIT
                        && waiting_bytes + envelope.len() <= WAITING_BYTES;
                    if room {
                        waiting_bytes += envelope.len();
                        waiting.insert(key, (topic, envelope));
                    } else {
                        tracing::debug!(%topic, "retained message not shared with the cluster: too many waiting");
                    }
                }
            }
            _ = retry.tick() => {
                if waiting.is_empty() || !inner.connected() {
                    continue;
                }
                let keys: Vec<String> = waiting.keys().take(RETRY_BATCH).cloned().collect();
                for key in keys {
                    let Some((topic, envelope)) = waiting.get(&key).cloned() else { continue };
                    match put_unless_newer(&store, &key, envelope).await {
                        Ok(written) => {
                            if let Some((_, done)) = waiting.remove(&key) {
                                waiting_bytes -= done.len();
                            }
                            if !written {
                                tracing::info!(%topic, "a retained message not shared: another node retained its topic since");
                            }
                        }
                        // Still away: the rest wait for the next round.
                        Err(_) => break,
                    }
                }
            }
        }
        if inner.broker().is_none() {
            break;
        }
    }
    watcher.abort();
}

/// Writes `envelope` (an empty payload clears the topic) under `key`.
async fn put(store: &kv::Store, key: &str, envelope: Bytes) -> Result<(), String> {
    let empty = envelope::decode(envelope.clone(), Instant::now())
        .map(|(_, m)| m.payload.is_empty())
        .unwrap_or(false);
    if empty {
        store.delete(key).await.map_err(|e| e.to_string())
    } else {
        store
            .put(key, envelope)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// As [`put`], for a write tried again: not if the key was written (or
/// cleared) after the message was sent, and fenced on the revision read.
/// `Ok(false)`: a newer write stands.
async fn put_unless_newer(store: &kv::Store, key: &str, envelope: Bytes) -> Result<bool, String> {
    let sent_ms = envelope::header(&envelope).and_then(|(_, sent)| sent);
    let current = store.entry(key).await.map_err(|e| e.to_string())?;
    if let Some(entry) = &current {
        let written_ms = (entry.created.unix_timestamp_nanos() / 1_000_000) as u64;
        if sent_ms.is_none_or(|sent| written_ms > sent) {
            return Ok(false);
        }
    }
    let empty = envelope::decode(envelope.clone(), Instant::now())
        .map(|(_, m)| m.payload.is_empty())
        .unwrap_or(false);
    let revision = current.as_ref().map_or(0, |e| e.revision);
    let done = match (empty, revision) {
        (true, 0) => return Ok(true),
        (true, r) => store
            .delete_expect_revision(key, Some(r))
            .await
            .map_err(|e| e.to_string()),
        (false, 0) => store
            .create(key, envelope)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        (false, r) => store
            .update(key, envelope, r)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    done.map(|()| true)
}

/// Applies every retained message in the bucket, then every change, to this
/// node's store. Restarts from where it was when the watch ends, or reads
/// the bucket whole again when this node was away from it for longer than
/// removal markers are kept (see [`Seen`]).
async fn watch(inner: Arc<Inner>, store: kv::Store) {
    // Which topic each key stands for, to clear it when its key is deleted.
    let mut topics: HashMap<String, starling_codec::ByteString> = HashMap::new();
    // Those this node kept from before (its store): a removal made while
    // it was away arrives as a delete marker of their key.
    let mut seen = Seen::default();
    if let Some(broker) = inner.broker() {
        for topic in broker.retained_topics() {
            topics.insert(keys::of(&topic), topic);
        }
        seen.file = Some(broker.config.data_dir.join(SEEN_FILE));
    }
    let mut next = 0u64;
    loop {
        // Away too long, markers of removals made meanwhile may be gone:
        // the keys the bucket no longer holds are cleared once it is read
        // whole.
        let mut unheld: Option<HashSet<String>> = seen
            .away_too_long()
            .then(|| topics.keys().cloned().collect());
        if unheld.is_some() {
            next = 0;
        }
        // (An empty bucket brings no entry to tell a whole read by.)
        if next == 0 && bucket_is_empty(&store).await {
            clear_unheld(&inner, &mut topics, unheld.take());
            seen.note(true);
        }
        let started = if next == 0 {
            store.watch_with_history(">").await
        } else {
            store.watch_all_from_revision(next).await
        };
        let mut entries = match started {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("retained watch not started: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(NOTE_EVERY);
        loop {
            let entry = tokio::select! {
                entry = entries.next() => entry,
                _ = tick.tick() => {
                    seen.note(false);
                    continue;
                }
            };
            let Some(broker) = inner.broker() else { return };
            let Some(Ok(entry)) = entry else { break };
            next = entry.revision + 1;
            if let Some(keys) = unheld.as_mut() {
                keys.remove(&entry.key);
            }
            match entry.operation {
                Operation::Put => match envelope::decode(entry.value, Instant::now()) {
                    Ok((_, msg)) => {
                        topics.insert(entry.key, msg.topic.clone());
                        broker.retain_from_cluster(&msg);
                    }
                    Err(e) => tracing::debug!("a retained entry was not readable: {e}"),
                },
                Operation::Delete | Operation::Purge => {
                    if let Some(topic) = topics.remove(&entry.key) {
                        broker.retain_from_cluster(&Arc::new(clear(topic)));
                    }
                }
            }
            // The bucket read whole (what follows is new): this node is
            // current with it.
            if entry.delta == 0 {
                clear_unheld(&inner, &mut topics, unheld.take());
                seen.note(true);
            } else {
                seen.note(false);
            }
        }
        seen.current = false;
        if inner.broker().is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Where, in the data directory, a node notes when it was last current
/// with the retained bucket (milliseconds since the epoch).
const SEEN_FILE: &str = "cluster-retained-seen";
/// How often that note is written while the node is current.
const NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// When this node was last current with the bucket. A removal leaves a
/// marker that the watch brings, but `markers` sweeps markers older than
/// [`crate::markers::KEPT`]: a node away from the bucket longer (down, or
/// cut off) could keep a retained message cleared meanwhile for good. So
/// then the bucket is read whole, and the retained messages this node has
/// whose key it no longer holds are cleared. A node that never noted it
/// (its first time in a cluster: a single node's store made a cluster
/// node) keeps what it has, as before.
#[derive(Default)]
struct Seen {
    file: Option<std::path::PathBuf>,
    /// The watch read the bucket whole and follows it.
    current: bool,
    /// When the note was last written.
    noted: Option<Instant>,
}

impl Seen {
    /// Whether this node was not current with the bucket for longer than
    /// markers are kept (as noted, or since it stopped being current).
    fn away_too_long(&self) -> bool {
        let Some(file) = &self.file else { return false };
        let Some(at) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            return false;
        };
        let now = starling_broker::store::unix_ms();
        now.saturating_sub(at) >= crate::markers::KEPT.as_millis() as u64
    }

    /// An entry came, or a minute passed; `whole`: the watch has read the
    /// bucket whole. While current, the time is noted at most once a
    /// [`NOTE_EVERY`].
    fn note(&mut self, whole: bool) {
        self.current |= whole;
        if !self.current || self.noted.is_some_and(|t| t.elapsed() < NOTE_EVERY) {
            return;
        }
        self.write();
    }

    fn write(&mut self) {
        self.noted = Some(Instant::now());
        let Some(file) = &self.file else { return };
        let now = starling_broker::store::unix_ms().to_string();
        if let Err(e) = std::fs::write(file, now) {
            tracing::debug!(file = %file.display(), "when the retained bucket was read not noted: {e}");
        }
    }
}

/// Whether the bucket holds no entry at all (a watch of it then brings
/// nothing to tell its whole read by). `false` when unknown.
async fn bucket_is_empty(store: &kv::Store) -> bool {
    store.status().await.is_ok_and(|s| s.values() == 0)
}

/// The bucket was read whole after this node was away too long (see
/// [`Seen`]): the retained messages whose keys, among `unheld`, it did
/// not hold are cleared here.
fn clear_unheld(
    inner: &Inner,
    topics: &mut HashMap<String, starling_codec::ByteString>,
    unheld: Option<HashSet<String>>,
) {
    let (Some(unheld), Some(broker)) = (unheld, inner.broker()) else {
        return;
    };
    let mut cleared = 0usize;
    for key in unheld {
        if let Some(topic) = topics.remove(&key) {
            broker.retain_from_cluster(&Arc::new(clear(topic)));
            cleared += 1;
        }
    }
    tracing::info!(
        cleared,
        "back after longer than removal markers are kept: the retained messages the cluster no longer holds cleared"
    );
}

/// The message that clears the retained message on `topic`.
fn clear(topic: starling_codec::ByteString) -> Message {
    Message {
        topic,
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Properties::default(),
        expires_at: None,
        publisher: None,
    }
}

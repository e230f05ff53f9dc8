//! Retained messages cluster-wide: a key-value bucket keyed by a hash of the
//! topic, written by the node that accepted the message and watched by every
//! node into its own retained store.

use std::collections::HashMap;
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

/// Writes what this node retains, and applies what any node retained, until
/// the broker is gone.
pub async fn run(inner: Arc<Inner>, store: kv::Store, mut writes: mpsc::Receiver<(String, Bytes)>) {
    let watcher = tokio::spawn(watch(inner.clone(), store.clone()));
    while let Some((topic, envelope)) = writes.recv().await {
        let key = keys::of(&topic);
        let empty = envelope::decode(envelope.clone(), Instant::now())
            .map(|(_, m)| m.payload.is_empty())
            .unwrap_or(false);
        let done = if empty {
            store.delete(&key).await.map_err(|e| e.to_string())
        } else {
            store
                .put(&key, envelope)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        if let Err(e) = done {
            tracing::warn!(%topic, "retained message not shared with the cluster: {e}");
        }
        if inner.broker().is_none() {
            break;
        }
    }
    watcher.abort();
}

/// Applies every retained message in the bucket, then every change, to this
/// node's store. Restarts from where it was when the watch ends.
async fn watch(inner: Arc<Inner>, store: kv::Store) {
    // Which topic each key stands for, to clear it when its key is deleted.
    let mut topics: HashMap<String, starling_codec::ByteString> = HashMap::new();
    // Those this node kept from before (its store): a removal made while
    // it was away arrives as a delete marker of their key.
    if let Some(broker) = inner.broker() {
        for topic in broker.retained_topics() {
            topics.insert(keys::of(&topic), topic);
        }
    }
    let mut next = 0u64;
    loop {
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
        while let Some(entry) = entries.next().await {
            let Some(broker) = inner.broker() else { return };
            let Ok(entry) = entry else { break };
            next = entry.revision + 1;
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
        }
        if inner.broker().is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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

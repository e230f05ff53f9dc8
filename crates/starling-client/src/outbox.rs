//! A persistent outbox: QoS 1/2 messages kept on disk (the embedded store,
//! fjall) until the server acknowledged them, so that what a device
//! publishes while it is offline, or just before its process crashes, is
//! sent when it comes back.
//!
//! [`Outbox::publish`] returns once the message is on disk (fsynced). It
//! needs no connection. [`Outbox::attach`] sends what the outbox holds
//! through a [`Client`], in the order it was stored, now and as more is
//! stored, keeping up to [`IN_FLIGHT`] messages unacknowledged; each is
//! removed when the server acknowledged it. A message sent but not yet
//! acknowledged when the process dies is sent again after the restart:
//! delivery is at least once. MQTT 5 properties are not kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use futures_util::stream::{FuturesOrdered, StreamExt};
use starling_codec::{Properties, QoS};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::Client;

/// Most messages sent and not yet acknowledged.
pub const IN_FLIGHT: usize = 64;

/// Why the outbox could not store or read.
#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {source}")]
pub struct OutboxError {
    /// The outbox directory.
    pub path: PathBuf,
    /// The store's error.
    #[source]
    pub source: fjall::Error,
}

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its place in the outbox.
    pub seq: u64,
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// QoS 1 or 2.
    pub qos: QoS,
    /// The retain flag.
    pub retain: bool,
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(4 + self.topic.len() + self.payload.len());
        b.put_u8(self.qos as u8);
        b.put_u8(u8::from(self.retain));
        b.put_u16(self.topic.len() as u16);
        b.put_slice(self.topic.as_bytes());
        b.put_slice(&self.payload);
        b.to_vec()
    }

    fn decode(seq: u64, v: &[u8]) -> Option<Stored> {
        let (&q, rest) = v.split_first()?;
        let (&retain, rest) = rest.split_first()?;
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        let topic = std::str::from_utf8(rest.get(2..2 + len)?).ok()?.to_string();
        let qos = match q {
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return None,
        };
        Some(Stored {
            seq,
            topic,
            payload: Bytes::copy_from_slice(&rest[2 + len..]),
            qos,
            retain: retain != 0,
        })
    }
}

/// The outbox (cheap to clone; clones share it).
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Database,
    messages: Keyspace,
    next: AtomicU64,
    stored: Notify,
    removed: Notify,
    sender: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.sender.get_mut().take() {
            task.abort();
        }
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        let path = dir.to_path_buf();
        let err = |source| OutboxError {
            path: path.clone(),
            source,
        };
        let db = Database::builder(dir).open().map_err(err)?;
        let messages = db
            .keyspace("outbox", KeyspaceCreateOptions::default)
            .map_err(err)?;
        let last = match messages.last_key_value() {
            Some(g) => {
                let k = g.key().map_err(err)?;
                <[u8; 8]>::try_from(&k[..]).map_or(0, u64::from_be_bytes)
            }
            None => 0,
        };
        Ok(Outbox {
            inner: Arc::new(Inner {
                db,
                messages,
                next: AtomicU64::new(last + 1),
                stored: Notify::new(),
                removed: Notify::new(),
                sender: parking_lot::Mutex::new(None),
                path,
            }),
        })
    }

    fn err(&self, source: fjall::Error) -> OutboxError {
        OutboxError {
            path: self.inner.path.clone(),
            source,
        }
    }

    /// Stores a message; returns when it is on disk. QoS 0 is stored as QoS 1
    /// (an outbox exists to deliver).
    pub fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<u64, OutboxError> {
        let seq = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let stored = Stored {
            seq,
            topic: topic.into(),
            payload: payload.into(),
            qos: qos.max(QoS::AtLeastOnce),
            retain,
        };
        self.inner
            .messages
            .insert(seq.to_be_bytes(), stored.encode())
            .map_err(|e| self.err(e))?;
        self.inner
            .db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.err(e))?;
        self.inner.stored.notify_one();
        Ok(seq)
    }

    /// The messages waiting, oldest first, from `after` on.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<Stored>, OutboxError> {
        let mut out = Vec::new();
        for g in self.inner.messages.range((after + 1).to_be_bytes()..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = g.into_inner().map_err(|e| self.err(e))?;
            let seq = <[u8; 8]>::try_from(&k[..]).map_or(0, u64::from_be_bytes);
            if let Some(s) = Stored::decode(seq, &v) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.inner.messages.len().unwrap_or(0)
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.inner.messages.is_empty().unwrap_or(true)
    }

    /// Waits until every stored message was acknowledged (with a client
    /// attached).
    pub async fn flushed(&self) {
        loop {
            let removed = self.inner.removed.notified();
            if self.is_empty() {
                return;
            }
            removed.await;
        }
    }

    /// Sends the outbox through `client` from now on (replacing any client
    /// attached before).
    pub fn attach(&self, client: Arc<Client>) {
        let outbox = self.clone();
        let task = tokio::spawn(async move { outbox.send_through(client).await });
        if let Some(old) = self.inner.sender.lock().replace(task) {
            old.abort();
        }
    }

    async fn send_through(&self, client: Arc<Client>) {
        let mut sent_up_to = 0u64;
        let mut acks = FuturesOrdered::new();
        loop {
            let stored = self.inner.stored.notified();
            let room = IN_FLIGHT - acks.len();
            let batch = match self.pending(sent_up_to, room) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("outbox: {e}");
                    return;
                }
            };
            for m in batch {
                sent_up_to = m.seq;
                match client
                    .publish_queued(m.topic, m.payload, m.qos, m.retain, Properties::default())
                    .await
                {
                    Ok(ack) => acks.push_back(async move { (m.seq, ack.await) }),
                    // Closed: what is left stays for the next client.
                    Err(_) => return,
                }
            }
            tokio::select! {
                Some((seq, result)) = acks.next(), if !acks.is_empty() => match result {
                    Ok(_) => {
                        if let Err(e) = self.inner.messages.remove(seq.to_be_bytes()) {
                            tracing::error!("outbox: {e}");
                        }
                        self.inner.removed.notify_waiters();
                    }
                    Err(_) => return,
                },
                _ = stored, if acks.len() < IN_FLIGHT => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_reopening_in_order() {
        let dir = std::env::temp_dir().join(format!("starling-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let o = Outbox::open(&dir).unwrap();
            o.publish("a", &b"1"[..], QoS::AtLeastOnce, false).unwrap();
            o.publish("b", &b"2"[..], QoS::ExactlyOnce, true).unwrap();
        }
        let o = Outbox::open(&dir).unwrap();
        let p = o.pending(0, 10).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].topic.as_str(), p[1].qos, p[1].retain),
            ("a", QoS::ExactlyOnce, true)
        );
        assert_eq!(
            o.publish("c", &b"3"[..], QoS::AtMostOnce, false).unwrap(),
            3
        );
        assert_eq!(o.pending(2, 10).unwrap()[0].qos, QoS::AtLeastOnce);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The embedded default store: a fjall database (an LSM tree with a journal) in
//! `DATA_DIR/fjall`, chosen over redb because group-committed durable appends
//! and deletes, the broker's hot path, are several times faster (see
//! BENCHMARKS.md, "Store choice"). One keyspace per kind of record; keys of a
//! session's records start with its client id and a 0 byte (client ids never
//! contain U+0000).

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use starling_codec::ByteString;

use super::{
    Loaded, MessageRecord, Op, QueuePage, QueueReader, SessionRecord, Store, StoreError,
    SubscriptionRecord, WillRecord,
};

/// Sequence numbers of one run of the broker: `epoch << EPOCH_SHIFT`
/// upwards, so every run numbers above the last without reading its queues.
const EPOCH_SHIFT: u32 = 40;

/// Reads sessions' queues from the store's `messages` keyspace while the
/// writer writes (see [`QueueReader`]).
///
/// It lets go of the database when the store closes: reads then fail.
#[derive(Clone)]
pub struct FjallQueues {
    messages: std::sync::Arc<parking_lot::RwLock<Option<Keyspace>>>,
    path: String,
}

impl std::fmt::Debug for FjallQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallQueues")
            .field("path", &self.path)
            .finish()
    }
}

impl QueueReader for FjallQueues {
    fn read_queue(
        &self,
        client: &str,
        from: u64,
        end: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<QueuePage, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if from >= end {
            return Ok((out, true));
        }
        let Some(messages) = self.messages.read().clone() else {
            return Err(StoreError {
                path: self.path.clone(),
                message: "the store is closed".into(),
                source: None,
            });
        };
        let range = key(client, &from.to_be_bytes())..key(client, &end.to_be_bytes());
        for g in messages.range(range) {
            if out.len() >= limit || bytes >= max_bytes {
                return Ok((out, false));
            }
            let (k, v) = g
                .into_inner()
                .map_err(|e| StoreError::caused_by(self.path.clone(), e))?;
            let seq = split_key(&k)
                .and_then(|(_, s)| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_be_bytes);
            match (seq, MessageRecord::decode(&v)) {
                (Some(seq), Ok(r)) => {
                    bytes += v.len();
                    out.push((seq, r));
                }
                (_, r) => tracing::warn!(
                    store = %self.path,
                    key = ?String::from_utf8_lossy(&k),
                    "skipping corrupt queued message: {:?}",
                    r.err()
                ),
            }
        }
        Ok((out, true))
    }
}

/// A fjall-backed [`Store`].
pub struct FjallStore {
    db: Database,
    /// What [`FjallQueues`] reads through; emptied when the store closes.
    queues: std::sync::Arc<parking_lot::RwLock<Option<Keyspace>>>,
    /// Store-wide settings: the sequence-number epoch.
    meta: Keyspace,
    sessions: Keyspace,
    subscriptions: Keyspace,
    messages: Keyspace,
    retained: Keyspace,
    qos2: Keyspace,
    wills: Keyspace,
    path: PathBuf,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .finish()
    }
}

fn key(client: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 1 + rest.len());
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

fn split_key(k: &[u8]) -> Option<(ByteString, &[u8])> {
    let pos = k.iter().position(|&b| b == 0)?;
    let client = ByteString::try_from(bytes::Bytes::copy_from_slice(&k[..pos])).ok()?;
    Some((client, &k[pos + 1..]))
}

fn string(k: &[u8]) -> Option<ByteString> {
    ByteString::try_from(bytes::Bytes::copy_from_slice(k)).ok()
}

/// The memtable size of the keyspaces whose records only accumulate.
const SMALL_MEMTABLE: u64 = 4 * 1024 * 1024;

impl FjallStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FjallStore, StoreError> {
        let path = dir.join("fjall");
        let shown = path.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::caused_by(shown.clone(), e))?;
        let err = |e: fjall::Error| StoreError::caused_by(shown.clone(), e);
        let db = Database::builder(&path)
            // Bounds the journal replayed at startup.
            .max_journaling_size(64 * 1024 * 1024)
            .open()
            .map_err(err)?;
        // A keyspace's memtable holds its latest writes in memory until it
        // is flushed (fjall's default: 64 MiB each). Queued messages come and
        // go fast and keep the default; the keyspaces that only grow
        // (retained messages, sessions, subscriptions, wills) flush at
        // `SMALL_MEMTABLE`, so their records cost disk, not resident memory.
        let ks = |name: &str| {
            let small = !matches!(name, "messages" | "incoming_qos2");
            db.keyspace(name, move || {
                let options = KeyspaceCreateOptions::default();
                if small {
                    options.max_memtable_size(SMALL_MEMTABLE)
                } else {
                    options
                }
            })
            .map_err(err)
        };
        let messages = ks("messages")?;
        Ok(FjallStore {
            queues: std::sync::Arc::new(parking_lot::RwLock::new(Some(messages.clone()))),
            meta: ks("meta")?,
            sessions: ks("sessions")?,
            subscriptions: ks("subscriptions")?,
            messages,
            retained: ks("retained")?,
            qos2: ks("incoming_qos2")?,
            wills: ks("wills")?,
            db,
            path,
        })
    }

    fn err(&self, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::caused_by(self.path.display().to_string(), e)
    }

    /// Every key of `ks` that starts with `client` and a 0 byte.
    fn session_keys(&self, ks: &Keyspace, client: &str) -> Result<Vec<Vec<u8>>, fjall::Error> {
        ks.prefix(key(client, &[]))
            .map(|g| g.key().map(|k| k.to_vec()))
            .collect()
    }

    fn write(&mut self, ops: &[Op], durable: bool) -> Result<(), fjall::Error> {
        let mut batch = self
            .db
            .batch()
            .durability(durable.then_some(PersistMode::SyncAll));
        for op in ops {
            match op {
                Op::Session(c, r) => {
                    batch.insert(&self.sessions, c.as_bytes().to_vec(), r.encode().to_vec())
                }
                Op::DeleteSession(c) => {
                    batch.remove(&self.sessions, c.as_bytes().to_vec());
                    batch.remove(&self.wills, c.as_bytes().to_vec());
                    for ks in [&self.subscriptions, &self.messages, &self.qos2] {
                        for k in self.session_keys(ks, c)? {
                            batch.remove(ks, k);
                        }
                    }
                }
                Op::Subscribe(c, f, r) => batch.insert(
                    &self.subscriptions,
                    key(c, f.as_bytes()),
                    r.encode().to_vec(),
                ),
                Op::Unsubscribe(c, f) => batch.remove(&self.subscriptions, key(c, f.as_bytes())),
                Op::Message(c, seq, r) => {
                    batch.insert(&self.messages, key(c, &seq.to_be_bytes()), r.to_vec())
                }
                Op::DeleteMessage(c, seq) => {
                    batch.remove(&self.messages, key(c, &seq.to_be_bytes()))
                }
                Op::Retained(t, r) => {
                    batch.insert(&self.retained, t.as_bytes().to_vec(), r.to_vec())
                }
                Op::DeleteRetained(t) => batch.remove(&self.retained, t.as_bytes().to_vec()),
                Op::IncomingQos2(c, id) => {
                    batch.insert(&self.qos2, key(c, &id.to_be_bytes()), Vec::new())
                }
                Op::DeleteIncomingQos2(c, id) => {
                    batch.remove(&self.qos2, key(c, &id.to_be_bytes()))
                }
                Op::Will(c, r) => batch.insert(&self.wills, c.as_bytes().to_vec(), r.to_vec()),
                Op::DeleteWill(c) => batch.remove(&self.wills, c.as_bytes().to_vec()),
                Op::Received(..) | Op::CameWith(..) => {}
            }
        }
        batch.commit()
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        // Readers must not keep the database open once the store closes.
        *self.queues.write() = None;
    }
}

impl FjallStore {
    /// Counts this run in the store, durably: its sequence numbers start
    /// above every earlier run's.
    fn next_epoch(&mut self) -> Result<u64, fjall::Error> {
        let epoch = match self.meta.get("seq-epoch")? {
            Some(v) => <[u8; 8]>::try_from(&v[..]).map_or(0, u64::from_be_bytes),
            None => 0,
        } + 1;
        self.meta.insert("seq-epoch", epoch.to_be_bytes())?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(epoch)
    }
}

impl Store for FjallStore {
    fn queue_reader(&self) -> Option<std::sync::Arc<dyn QueueReader>> {
        Some(std::sync::Arc::new(FjallQueues {
            messages: self.queues.clone(),
            path: self.path.display().to_string(),
        }))
    }

    fn apply(&mut self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        if ops.is_empty() && !durable {
            return Ok(());
        }
        self.write(ops, durable).map_err(|e| self.err(e))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.err(e))
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut out = Loaded::default();
        let path = self.path.display().to_string();
        let mut skipped = 0usize;
        let mut skip = |table: &str, k: &[u8], e: &dyn std::fmt::Display| {
            tracing::warn!(store = %path, table, key = ?String::from_utf8_lossy(k), "skipping corrupt record: {e}");
            skipped += 1;
        };
        for g in self.sessions.iter() {
            let (k, v) = g.into_inner().map_err(|e| self.err(e))?;
            match (string(&k), SessionRecord::decode(&v)) {
                (Some(c), Ok(r)) => out.sessions.push((c, r)),
                (_, r) => skip("sessions", &k, &format!("{:?}", r.err())),
            }
        }
        for g in self.subscriptions.iter() {
            let (k, v) = g.into_inner().map_err(|e| self.err(e))?;
            let filter = split_key(&k).and_then(|(c, f)| string(f).map(|f| (c, f)));
            match (filter, SubscriptionRecord::decode(&v)) {
                (Some((c, f)), Ok(r)) => out.subscriptions.push((c, f, r)),
                (_, r) => skip("subscriptions", &k, &format!("{:?}", r.err())),
            }
        }
        // Queues stay on disk: a session's is read when its client
        // reconnects (see `FjallQueues`).
        out.lazy_queues = true;
        out.first_seq = self.next_epoch().map_err(|e| self.err(e))? << EPOCH_SHIFT;
        for g in self.retained.iter() {
            let (k, v) = g.into_inner().map_err(|e| self.err(e))?;
            match MessageRecord::decode(&v) {
                Ok(r) => out.retained.push(r),
                Err(e) => skip("retained", &k, &e),
            }
        }
        for g in self.qos2.iter() {
            let (k, _) = g.into_inner().map_err(|e| self.err(e))?;
            match split_key(&k).and_then(|(c, s)| {
                <[u8; 2]>::try_from(s)
                    .ok()
                    .map(|s| (c, u16::from_be_bytes(s)))
            }) {
                Some(x) => out.incoming_qos2.push(x),
                None => skip("incoming_qos2", &k, &"bad key"),
            }
        }
        for g in self.wills.iter() {
            let (k, v) = g.into_inner().map_err(|e| self.err(e))?;
            match (string(&k), WillRecord::decode(&v)) {
                (Some(c), Ok(r)) => out.wills.push((c, r)),
                (_, r) => skip("wills", &k, &format!("{:?}", r.err())),
            }
        }
        out.skipped = skipped;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use starling_codec::{Publish, QoS};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("starling-fjall-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn msg(payload: &'static [u8]) -> Bytes {
        let mut p = Publish::new("t", Bytes::from_static(payload));
        p.qos = QoS::AtLeastOnce;
        MessageRecord {
            publish: p,
            packet_id: 0,
            released: false,
            expires_at_ms: 0,
        }
        .encode()
        .unwrap()
    }

    /// The sequence numbers of `client`'s stored queue, read through the reader.
    fn seqs(s: &FjallStore, client: &str) -> Vec<u64> {
        let reader = s.queue_reader().unwrap();
        let (page, complete) = reader
            .read_queue(client, 0, u64::MAX, 100, usize::MAX)
            .unwrap();
        assert!(complete);
        page.into_iter().map(|(seq, _)| seq).collect()
    }

    #[test]
    fn pages_keep_to_their_range_count_and_size() {
        let d = dir("pages");
        let c: ByteString = "c".into();
        let mut s = FjallStore::open(&d).unwrap();
        let ops: Vec<Op> = (1..=10)
            .map(|i| Op::Message(c.clone(), i, msg(b"0123456789")))
            .collect();
        s.apply(&ops, true).unwrap();
        s.apply(&[Op::Message("c2".into(), 1, msg(b"other"))], true)
            .unwrap();
        let r = s.queue_reader().unwrap();
        let (page, complete) = r.read_queue("c", 3, 8, 100, usize::MAX).unwrap();
        let got: Vec<u64> = page.iter().map(|p| p.0).collect();
        assert_eq!((got, complete), (vec![3, 4, 5, 6, 7], true));
        let (page, complete) = r.read_queue("c", 1, u64::MAX, 4, usize::MAX).unwrap();
        assert_eq!((page.len(), complete), (4, false));
        // The byte bound stops after the record that reaches it.
        let (page, complete) = r.read_queue("c", 1, u64::MAX, 100, 1).unwrap();
        assert_eq!((page.len(), complete), (1, false));
        drop(s);
        assert!(r.read_queue("c", 1, u64::MAX, 100, 1).is_err(), "closed");
    }

    #[test]
    fn every_operation_survives_reopen() {
        let d = dir("ops");
        let c: ByteString = "client".into();
        let other: ByteString = "client2".into();
        {
            let mut s = FjallStore::open(&d).unwrap();
            let sub = SubscriptionRecord {
                options: Default::default(),
                id: Some(4),
            };
            s.apply(
                &[
                    Op::Session(
                        c.clone(),
                        SessionRecord {
                            expiry_interval: 60,
                            disconnected_at_ms: 1,
                        },
                    ),
                    Op::Session(
                        other.clone(),
                        SessionRecord {
                            expiry_interval: 60,
                            disconnected_at_ms: 1,
                        },
                    ),
                    Op::Subscribe(c.clone(), "a/+".into(), sub),
                    Op::Subscribe(c.clone(), "b".into(), sub),
                    Op::Subscribe(other.clone(), "b".into(), sub),
                    Op::Message(c.clone(), 1, msg(b"one")),
                    Op::Message(c.clone(), 2, msg(b"two")),
                    Op::Message(c.clone(), 3, msg(b"three")),
                    Op::Message(other.clone(), 1, msg(b"x")),
                    Op::Retained("r".into(), msg(b"ret")),
                    Op::IncomingQos2(c.clone(), 9),
                ],
                true,
            )
            .unwrap();
            s.apply(
                &[
                    Op::Unsubscribe(c.clone(), "b".into()),
                    Op::DeleteMessage(c.clone(), 2),
                    Op::IncomingQos2(c.clone(), 10),
                    Op::DeleteIncomingQos2(c.clone(), 9),
                ],
                true,
            )
            .unwrap();
        }
        let mut s = FjallStore::open(&d).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.sessions.len(), 2);
        assert_eq!(l.subscriptions.len(), 2);
        // Queues stay on disk, read through the reader; each run numbers
        // above the last.
        assert!(l.lazy_queues && l.messages.is_empty());
        assert_eq!(l.first_seq, 1 << EPOCH_SHIFT, "the first load");
        assert_eq!(seqs(&s, "client"), [1, 3]);
        assert_eq!(seqs(&s, "client2"), [1]);
        assert_eq!(l.retained.len(), 1);
        assert_eq!(l.incoming_qos2, vec![(c.clone(), 10)]);
        // Deleting a session deletes everything it owns, and nothing of another
        // session whose id it is a prefix of.
        s.apply(&[Op::DeleteSession(c.clone())], true).unwrap();
        drop(s);
        let mut s = FjallStore::open(&d).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.first_seq, 2 << EPOCH_SHIFT, "the next load numbers above");
        assert_eq!(l.sessions.len(), 1);
        assert_eq!(l.subscriptions.len(), 1);
        assert!(seqs(&s, "client").is_empty());
        assert_eq!(seqs(&s, "client2"), [1]);
        assert!(l.incoming_qos2.is_empty());
        assert_eq!(l.retained.len(), 1);
    }

    #[tokio::test]
    async fn close_releases_the_store() {
        let d = dir("close");
        let s = FjallStore::open(&d).unwrap();
        let p = crate::store::Persistence::start(
            Box::new(s),
            crate::store::Durability::Always,
            std::time::Duration::from_millis(100),
        )
        .unwrap();
        p.submit(vec![Op::Retained("t".into(), msg(b"x"))]);
        p.close().await;
        let l = FjallStore::open(&d).unwrap().load().unwrap();
        assert_eq!(l.retained.len(), 1);
    }

    #[test]
    fn corrupt_records_are_skipped_and_the_rest_loads() {
        let d = dir("corrupt");
        let c: ByteString = "c".into();
        {
            let mut s = FjallStore::open(&d).unwrap();
            s.apply(
                &[
                    Op::Message(c.clone(), 1, msg(b"good")),
                    Op::Message(c.clone(), 2, Bytes::from_static(b"\x01garbage!")),
                    Op::Message(c.clone(), 3, msg(b"also good")),
                    Op::Session(
                        "bad".into(),
                        SessionRecord {
                            expiry_interval: 1,
                            disconnected_at_ms: 0,
                        },
                    ),
                ],
                true,
            )
            .unwrap();
            // A torn session record.
            s.sessions.insert("torn", [1u8, 0, 0]).unwrap();
        }
        let mut s = FjallStore::open(&d).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.skipped, 1);
        // The corrupt queued message is skipped when the queue is read.
        assert_eq!(seqs(&s, "c"), [1, 3]);
        assert_eq!(l.sessions.len(), 1);
    }
}

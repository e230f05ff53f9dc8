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
    Loaded, MessageRecord, Op, SessionRecord, Store, StoreError, SubscriptionRecord, WillRecord,
};

/// A fjall-backed [`Store`].
pub struct FjallStore {
    db: Database,
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
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(err)
        };
        Ok(FjallStore {
            sessions: ks("sessions")?,
            subscriptions: ks("subscriptions")?,
            messages: ks("messages")?,
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
            }
        }
        batch.commit()
    }
}

impl Store for FjallStore {
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
        for g in self.messages.iter() {
            let (k, v) = g.into_inner().map_err(|e| self.err(e))?;
            let seq = split_key(&k).and_then(|(c, s)| {
                <[u8; 8]>::try_from(s)
                    .ok()
                    .map(|s| (c, u64::from_be_bytes(s)))
            });
            match (seq, MessageRecord::decode(&v)) {
                (Some((c, s)), Ok(r)) => out.messages.push((c, s, r)),
                (_, r) => skip("messages", &k, &format!("{:?}", r.err())),
            }
        }
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
        let seqs: Vec<(String, u64)> = l.messages.iter().map(|m| (m.0.to_string(), m.1)).collect();
        assert_eq!(
            seqs,
            [
                ("client".into(), 1),
                ("client".into(), 3),
                ("client2".into(), 1)
            ]
        );
        assert_eq!(l.retained.len(), 1);
        assert_eq!(l.incoming_qos2, vec![(c.clone(), 10)]);
        // Deleting a session deletes everything it owns, and nothing of another
        // session whose id it is a prefix of.
        s.apply(&[Op::DeleteSession(c.clone())], true).unwrap();
        drop(s);
        let l = FjallStore::open(&d).unwrap().load().unwrap();
        assert_eq!(l.sessions.len(), 1);
        assert_eq!(l.subscriptions.len(), 1);
        assert_eq!(l.messages.len(), 1);
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
        let l = FjallStore::open(&d).unwrap().load().unwrap();
        assert_eq!(l.skipped, 2);
        let seqs: Vec<u64> = l.messages.iter().map(|m| m.1).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(l.sessions.len(), 1);
    }
}

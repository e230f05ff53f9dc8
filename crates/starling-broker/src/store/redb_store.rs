//! The embedded default store: one redb file, `starling.redb`, in the data
//! directory. One table per kind of record; keys of a session's records start
//! with its client id and a 0 byte (client ids never contain U+0000).

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability as RedbDurability, ReadableDatabase, ReadableTable, TableDefinition,
};
use starling_codec::ByteString;

use super::{
    Loaded, MessageRecord, Op, SessionRecord, Store, StoreError, SubscriptionRecord, WillRecord,
};

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;
const SESSIONS: Table = TableDefinition::new("sessions");
const SUBSCRIPTIONS: Table = TableDefinition::new("subscriptions");
const MESSAGES: Table = TableDefinition::new("messages");
const RETAINED: Table = TableDefinition::new("retained");
const QOS2: Table = TableDefinition::new("incoming_qos2");
const WILLS: Table = TableDefinition::new("wills");

/// A redb-backed [`Store`].
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
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

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let path = dir.join("starling.redb");
        let err = |message: String| StoreError {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
        for t in [SESSIONS, SUBSCRIPTIONS, MESSAGES, RETAINED, QOS2, WILLS] {
            txn.open_table(t).map_err(|e| err(e.to_string()))?;
        }
        txn.commit().map_err(|e| err(e.to_string()))?;
        Ok(RedbStore { db, path })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn write(&mut self, ops: &[Op], durable: bool) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            RedbDurability::Immediate
        } else {
            RedbDurability::None
        })
        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut subs = txn.open_table(SUBSCRIPTIONS)?;
            let mut messages = txn.open_table(MESSAGES)?;
            let mut retained = txn.open_table(RETAINED)?;
            let mut qos2 = txn.open_table(QOS2)?;
            let mut wills = txn.open_table(WILLS)?;
            for op in ops {
                match op {
                    Op::Session(c, r) => {
                        sessions.insert(&c.as_bytes()[..], &r.encode()[..])?;
                    }
                    Op::DeleteSession(c) => {
                        sessions.remove(&c.as_bytes()[..])?;
                        wills.remove(&c.as_bytes()[..])?;
                        let lo = key(c, &[]);
                        let hi = {
                            let mut h = c.as_bytes().to_vec();
                            h.push(1);
                            h
                        };
                        for t in [&mut subs, &mut messages, &mut qos2] {
                            t.retain_in(&lo[..]..&hi[..], |_, _| false)?;
                        }
                    }
                    Op::Subscribe(c, f, r) => {
                        subs.insert(&key(c, f.as_bytes())[..], &r.encode()[..])?;
                    }
                    Op::Unsubscribe(c, f) => {
                        subs.remove(&key(c, f.as_bytes())[..])?;
                    }
                    Op::Message(c, seq, r) => {
                        messages.insert(&key(c, &seq.to_be_bytes())[..], &r[..])?;
                    }
                    Op::DeleteMessage(c, seq) => {
                        messages.remove(&key(c, &seq.to_be_bytes())[..])?;
                    }
                    Op::Retained(t, r) => {
                        retained.insert(&t.as_bytes()[..], &r[..])?;
                    }
                    Op::DeleteRetained(t) => {
                        retained.remove(&t.as_bytes()[..])?;
                    }
                    Op::IncomingQos2(c, id) => {
                        qos2.insert(&key(c, &id.to_be_bytes())[..], &[][..])?;
                    }
                    Op::DeleteIncomingQos2(c, id) => {
                        qos2.remove(&key(c, &id.to_be_bytes())[..])?;
                    }
                    Op::Will(c, r) => {
                        wills.insert(&c.as_bytes()[..], &r[..])?;
                    }
                    Op::DeleteWill(c) => {
                        wills.remove(&c.as_bytes()[..])?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn apply(&mut self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        self.write(ops, durable).map_err(|e| self.err(e))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.write(&[], true).map_err(|e| self.err(e))
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut out = Loaded::default();
        let path = self.path.display().to_string();
        let skip = |table: &str, k: &[u8], e: &dyn std::fmt::Display| {
            tracing::warn!(store = %path, table, key = ?String::from_utf8_lossy(k), "skipping corrupt record: {e}");
        };
        macro_rules! each {
            ($table:expr, |$k:ident, $v:ident| $body:block) => {{
                let t = txn.open_table($table).map_err(|e| self.err(e))?;
                for entry in t.iter().map_err(|e| self.err(e))? {
                    let (k, v) = entry.map_err(|e| self.err(e))?;
                    let ($k, $v) = (k.value(), v.value());
                    $body
                }
            }};
        }
        let mut skipped = 0;
        each!(SESSIONS, |k, v| {
            match (
                ByteString::try_from(bytes::Bytes::copy_from_slice(k)),
                SessionRecord::decode(v),
            ) {
                (Ok(c), Ok(r)) => out.sessions.push((c, r)),
                (_, Err(e)) => {
                    skip("sessions", k, &e);
                    skipped += 1;
                }
                (Err(e), _) => {
                    skip("sessions", k, &e);
                    skipped += 1;
                }
            }
        });
        each!(SUBSCRIPTIONS, |k, v| {
            let filter = split_key(k).and_then(|(c, f)| {
                ByteString::try_from(bytes::Bytes::copy_from_slice(f))
                    .ok()
                    .map(|f| (c, f))
            });
            match (filter, SubscriptionRecord::decode(v)) {
                (Some((c, f)), Ok(r)) => out.subscriptions.push((c, f, r)),
                (_, r) => {
                    skip("subscriptions", k, &format!("{:?}", r.err()));
                    skipped += 1;
                }
            }
        });
        each!(MESSAGES, |k, v| {
            let seq = split_key(k).and_then(|(c, s)| {
                <[u8; 8]>::try_from(s)
                    .ok()
                    .map(|s| (c, u64::from_be_bytes(s)))
            });
            match (seq, MessageRecord::decode(v)) {
                (Some((c, s)), Ok(r)) => out.messages.push((c, s, r)),
                (_, r) => {
                    skip("messages", k, &format!("{:?}", r.err()));
                    skipped += 1;
                }
            }
        });
        each!(RETAINED, |k, v| {
            match MessageRecord::decode(v) {
                Ok(r) => out.retained.push(r),
                Err(e) => {
                    skip("retained", k, &e);
                    skipped += 1;
                }
            }
        });
        each!(QOS2, |k, _v| {
            match split_key(k).and_then(|(c, s)| {
                <[u8; 2]>::try_from(s)
                    .ok()
                    .map(|s| (c, u16::from_be_bytes(s)))
            }) {
                Some(x) => out.incoming_qos2.push(x),
                None => {
                    skip("incoming_qos2", k, &"bad key");
                    skipped += 1;
                }
            }
        });
        each!(WILLS, |k, v| {
            match (
                ByteString::try_from(bytes::Bytes::copy_from_slice(k)),
                WillRecord::decode(v),
            ) {
                (Ok(c), Ok(r)) => out.wills.push((c, r)),
                (_, r) => {
                    skip("wills", k, &format!("{:?}", r.err()));
                    skipped += 1;
                }
            }
        });
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
        let d = std::env::temp_dir().join(format!("starling-store-{}-{name}", std::process::id()));
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
        {
            let mut s = RedbStore::open(&d).unwrap();
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
                    Op::Subscribe(c.clone(), "a/+".into(), sub),
                    Op::Subscribe(c.clone(), "b".into(), sub),
                    Op::Message(c.clone(), 1, msg(b"one")),
                    Op::Message(c.clone(), 2, msg(b"two")),
                    Op::Message(c.clone(), 3, msg(b"three")),
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
        let mut s = RedbStore::open(&d).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.sessions.len(), 1);
        assert_eq!(l.subscriptions.len(), 1);
        assert_eq!(&l.subscriptions[0].1[..], "a/+");
        let seqs: Vec<u64> = l.messages.iter().map(|m| m.1).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(l.retained.len(), 1);
        assert_eq!(l.incoming_qos2, vec![(c.clone(), 10)]);
        // Deleting the session deletes everything it owns, and nothing else.
        s.apply(&[Op::DeleteSession(c.clone())], true).unwrap();
        drop(s);
        let l = RedbStore::open(&d).unwrap().load().unwrap();
        assert!(l.sessions.is_empty() && l.subscriptions.is_empty() && l.messages.is_empty());
        assert!(l.incoming_qos2.is_empty());
        assert_eq!(l.retained.len(), 1);
    }

    #[test]
    fn corrupt_records_are_skipped_and_the_rest_loads() {
        let d = dir("corrupt");
        let c: ByteString = "c".into();
        {
            let mut s = RedbStore::open(&d).unwrap();
            s.apply(
                &[
                    Op::Message(c.clone(), 1, msg(b"good")),
                    Op::Message(c.clone(), 2, Bytes::from_static(b"\x01garbage!")),
                    Op::Message(c.clone(), 3, msg(b"also good")),
                ],
                true,
            )
            .unwrap();
        }
        let l = RedbStore::open(&d).unwrap().load().unwrap();
        assert_eq!(l.skipped, 1);
        let seqs: Vec<u64> = l.messages.iter().map(|m| m.1).collect();
        assert_eq!(seqs, [1, 3]);
    }
}

#[cfg(test)]
mod close_tests {
    use super::*;

    #[tokio::test]
    async fn close_releases_the_file() {
        let d = std::env::temp_dir().join(format!("starling-store-close-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = RedbStore::open(&d).unwrap();
        let p = crate::store::Persistence::start(
            Box::new(s),
            crate::store::Durability::Always,
            std::time::Duration::from_millis(100),
        );
        p.close().await;
        RedbStore::open(&d).unwrap();
    }
}

//! Session changes held back from the replica, and the fence against a
//! session another node owns.
//!
//! A batch the replica could not take (NATS or JetStream away) leaves the
//! sessions it touched *behind*: their later changes are held here too, in
//! order, and folded to what the replica needs to catch up (the last record
//! of each subject; a message added and removed while held is dropped
//! whole). While the node is *suspect* (it lost NATS: the other nodes may
//! have taken its sessions meanwhile) every change is held. Once the node
//! is back, `rejoin` asks who owns each session: a session this node still
//! owns has its backlog written out; one another node owns is *fenced*
//! (nothing of it is written any more) and dropped here, the messages it
//! got before the cut and never replicated going to the owner.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use starling_broker::cluster::ReplicaLag;
use starling_broker::store::{Op, SessionRecord, SubscriptionRecord};
use starling_codec::ByteString;

/// What the replicating store holds back, shared with `rejoin`.
#[derive(Default)]
pub struct Hold {
    /// Every change is held (the node lost NATS, or restarted with
    /// sessions from its store, and has not been audited), but for the
    /// sessions in `settled`.
    pub suspect: bool,
    /// Sessions whose owner this node read as itself (a client's claim)
    /// since it turned suspect: their changes are not held for it.
    pub settled: HashSet<String>,
    /// The sessions behind, by client id.
    pub backlogs: HashMap<String, Backlog>,
    /// Sessions another node owns: their changes are not written.
    pub fenced: HashSet<String>,
    /// Sessions found this node's: their backlogs are written out with the
    /// next batch.
    pub due: HashSet<String>,
    /// Per origin, the lowest stamp the routing task holds back from the
    /// sessions (a gap's hold, a replay's parking): stored by none of them
    /// yet, so no receipt may claim it (a death now would lose it).
    pub routing_low: HashMap<u64, u64>,
    /// What the replays running here may still give the sessions they are
    /// for: no receipt claims it.
    pub owed: Owed,
    /// This node's last gap (its own, or another node's run it was asked to
    /// repair): since when (ms since the epoch) its routing may have missed
    /// messages, and when that was noted.
    pub gap: Option<(u64, std::time::Instant)>,
}

/// What replays to sessions installed here (rebuilt from a replica,
/// adopted, or handed over with a cut) may still give them, until they
/// end: the node's receipt must not claim it. It names what every session
/// here stored, and a node that rebuilt one of this node's sessions (this
/// node dead, or not answering in time) would replay only what the
/// receipt does not claim: seen, a session rebuilt elsewhere from a node
/// whose replay to it was still running lost 2,954 acknowledged messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owed {
    /// A replay has not yet said what its sessions had: it may owe them
    /// anything, and the receipt claims nothing.
    pub unknown: bool,
    /// Per run, the sessions had its messages up to this one (the lowest
    /// among the replays): the receipt claims no more of that run.
    pub above: HashMap<u64, u64>,
    /// The earliest time (ms since the epoch) a replay reads transit from:
    /// the receipt is complete only from there, and claims nothing of runs
    /// not in `above` (a replay gives their messages since then).
    pub from_ms: Option<u64>,
}

impl Owed {
    /// The receipt's claim of run `origin`, up to `high` as stored here.
    pub fn claim(&self, origin: u64, high: u64) -> u64 {
        if self.unknown {
            return 0;
        }
        match (self.above.get(&origin), self.from_ms) {
            (Some(above), _) => high.min(*above),
            (None, Some(_)) => 0,
            (None, None) => high,
        }
    }
}

/// How long after a gap this node's routing counts as complete only from
/// its beginning: as long as the transit stream keeps messages (its `AGE`;
/// a replay cannot read further back anyway).
pub const GAP_KEPT: std::time::Duration = std::time::Duration::from_secs(120);

impl Hold {
    /// Every change is held from now on, until an audit.
    pub fn turn_suspect(&mut self) {
        self.suspect = true;
        self.settled.clear();
    }

    /// An audit found every session's owner.
    pub fn audited(&mut self) {
        self.suspect = false;
        self.settled.clear();
    }

    /// A claim read this node as the owner of `client`'s session: while
    /// suspect, its changes are no longer held (what was held of it goes
    /// out with the next batch), as an audit would have found.
    pub fn settle(&mut self, client: &str) {
        if !self.suspect || self.fenced.contains(client) {
            return;
        }
        self.settled.insert(client.to_string());
        if self.backlogs.contains_key(client) {
            self.due.insert(client.to_string());
        }
    }

    /// Whether the changes to `client`'s session are held now.
    pub fn holds(&self, client: &str) -> bool {
        (self.suspect && !self.settled.contains(client)) || self.backlogs.contains_key(client)
    }

    /// Notes a gap from `from_ms` on (see [`Hold::complete_from_ms`]).
    pub fn note_gap(&mut self, from_ms: u64) {
        let from = match self.complete_from_ms() {
            Some(earlier) => earlier.min(from_ms),
            None => from_ms,
        };
        self.gap = Some((from, std::time::Instant::now()));
    }

    /// Since when this node's routing is complete, if a gap was repaired
    /// less than [`GAP_KEPT`] ago: its receipts and the cuts of
    /// its handovers say so, and the replays they start read transit from
    /// there, not from the moment they were written. A gap's repair can
    /// read a stale copy of transit (seen: nats-server 2.9 answered a
    /// stream's last sequence as 2,004 right after a partition healed,
    /// where the others had 4,167); the session then left with a cut that
    /// named numbers far below what transit held, and the new node's
    /// replay, reading only the last seconds, lost 2,162 acknowledged
    /// messages.
    pub fn complete_from_ms(&self) -> Option<u64> {
        self.gap
            .filter(|(_, at)| at.elapsed() < GAP_KEPT)
            .map(|(ms, _)| ms)
    }

    /// Where `client`'s session stands in the replica: behind while its
    /// changes are held here, lost if meanwhile this node lost NATS (the
    /// others may rebuild the session without them) or another node owns
    /// it.
    pub fn lag(&self, client: &str) -> ReplicaLag {
        if self.fenced.contains(client) {
            ReplicaLag::Lost
        } else if !self.backlogs.contains_key(client) {
            ReplicaLag::Current
        } else if self.suspect && !self.settled.contains(client) {
            ReplicaLag::Lost
        } else {
            ReplicaLag::Behind
        }
    }
}

/// A message record of a session, with the stamp it came with (see
/// [`Backlog::early_messages`]).
pub type Early = (Bytes, Option<(u64, u64)>);

/// One held message: its record (`None`: removed), the stamp it came
/// with from another node, whether the replica never had it (`fresh`) and
/// whether it was held before the node turned suspect (`early`: it came
/// before the cut, so nothing else brings it to another owner).
struct Held {
    raw: Option<Bytes>,
    stamp: Option<(u64, u64)>,
    fresh: bool,
    early: bool,
}

/// The changes to one session the replica lacks, folded.
#[derive(Default)]
pub struct Backlog {
    /// The session ended while held: the replica's copy goes first.
    purge: bool,
    session: Option<SessionRecord>,
    filters: BTreeMap<ByteString, Option<SubscriptionRecord>>,
    messages: BTreeMap<u64, Held>,
    qos2: BTreeMap<u16, bool>,
}

impl Backlog {
    /// Folds in `op`; `stamp` is the one its message came with, `written`
    /// whether the replica may hold message `seq` already, `early` whether
    /// the node was not suspect yet.
    pub fn add(
        &mut self,
        op: &Op,
        stamp: Option<(u64, u64)>,
        written: impl Fn(u64) -> bool,
        early: bool,
    ) {
        match op {
            Op::Session(_, rec) => self.session = Some(*rec),
            Op::DeleteSession(_) => {
                *self = Backlog {
                    purge: true,
                    ..Backlog::default()
                }
            }
            Op::Subscribe(_, f, rec) => {
                self.filters.insert(f.clone(), Some(*rec));
            }
            Op::Unsubscribe(_, f) => {
                self.filters.insert(f.clone(), None);
            }
            Op::Message(_, seq, raw) => {
                let fresh = self
                    .messages
                    .get(seq)
                    .map_or_else(|| !written(*seq), |h| h.fresh);
                let early = self.messages.get(seq).map_or(early, |h| h.early);
                let stamp = self.messages.get(seq).and_then(|h| h.stamp).or(stamp);
                self.messages.insert(
                    *seq,
                    Held {
                        raw: Some(raw.clone()),
                        stamp,
                        fresh,
                        early,
                    },
                );
            }
            Op::DeleteMessage(_, seq) => {
                let fresh = self
                    .messages
                    .get(seq)
                    .map_or_else(|| !written(*seq), |h| h.fresh);
                if fresh {
                    self.messages.remove(seq);
                } else {
                    self.messages.insert(
                        *seq,
                        Held {
                            raw: None,
                            stamp: None,
                            fresh: false,
                            early,
                        },
                    );
                }
            }
            Op::IncomingQos2(_, id) => {
                self.qos2.insert(*id, true);
            }
            Op::DeleteIncomingQos2(_, id) => {
                self.qos2.insert(*id, false);
            }
            Op::Retained(..)
            | Op::DeleteRetained(..)
            | Op::Will(..)
            | Op::DeleteWill(..)
            | Op::Received(..)
            | Op::CameWith(..) => {}
        }
    }

    /// The changes that bring the replica up to date, in an order it
    /// takes (a message followed by the stamp it came with).
    pub fn ops(&self, client: &str) -> Vec<Op> {
        let c = ByteString::from(client);
        let mut ops = Vec::new();
        if self.purge {
            ops.push(Op::DeleteSession(c.clone()));
        }
        if let Some(rec) = self.session {
            ops.push(Op::Session(c.clone(), rec));
        }
        for (f, rec) in &self.filters {
            ops.push(match rec {
                Some(rec) => Op::Subscribe(c.clone(), f.clone(), *rec),
                None => Op::Unsubscribe(c.clone(), f.clone()),
            });
        }
        for (seq, held) in &self.messages {
            match &held.raw {
                Some(raw) => {
                    ops.push(Op::Message(c.clone(), *seq, raw.clone()));
                    if let Some((origin, n)) = held.stamp {
                        ops.push(Op::CameWith(origin, n));
                    }
                }
                None => ops.push(Op::DeleteMessage(c.clone(), *seq)),
            }
        }
        for (id, kept) in &self.qos2 {
            ops.push(if *kept {
                Op::IncomingQos2(c.clone(), *id)
            } else {
                Op::DeleteIncomingQos2(c.clone(), *id)
            });
        }
        ops
    }

    /// Adds to `low` the lowest stamp per origin among the messages held
    /// (a receipt must not claim them).
    pub fn low_stamps(&self, low: &mut HashMap<u64, u64>) {
        for (origin, seq) in self.messages.values().filter_map(|h| h.stamp) {
            let l = low.entry(origin).or_insert(seq);
            *l = (*l).min(seq);
        }
    }

    /// The messages held since before the cut that the replica never had:
    /// what another owner of the session lacks; those `withdrawn` says
    /// were withdrawn (by stamp) left out.
    pub fn early_messages(&self, withdrawn: impl Fn((u64, u64)) -> bool) -> Vec<Early> {
        self.messages
            .values()
            .filter(|h| h.fresh && h.early)
            .filter(|h| !h.stamp.is_some_and(&withdrawn))
            .filter_map(|h| Some((h.raw.clone()?, h.stamp)))
            .collect()
    }
}

/// The client id an op is about, if any.
pub fn client_of(op: &Op) -> Option<&ByteString> {
    match op {
        Op::Session(c, _)
        | Op::DeleteSession(c)
        | Op::Subscribe(c, ..)
        | Op::Unsubscribe(c, _)
        | Op::Message(c, ..)
        | Op::DeleteMessage(c, _)
        | Op::IncomingQos2(c, _)
        | Op::DeleteIncomingQos2(c, _) => Some(c),
        Op::Retained(..)
        | Op::DeleteRetained(..)
        | Op::Will(..)
        | Op::DeleteWill(..)
        | Op::Received(..)
        | Op::CameWith(..) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_gap_routing_is_complete_only_from_its_earliest_beginning() {
        let mut hold = Hold::default();
        assert_eq!(hold.complete_from_ms(), None);
        hold.note_gap(5_000);
        hold.note_gap(9_000);
        assert_eq!(
            hold.complete_from_ms(),
            Some(5_000),
            "the earlier gap still counts"
        );
        hold.gap = Some((5_000, std::time::Instant::now() - GAP_KEPT));
        assert_eq!(
            hold.complete_from_ms(),
            None,
            "older than transit keeps messages"
        );
        hold.note_gap(9_000);
        assert_eq!(hold.complete_from_ms(), Some(9_000));
    }

    #[test]
    fn a_session_is_behind_while_held_and_lost_once_the_node_is_suspect_or_fenced() {
        let mut hold = Hold::default();
        assert_eq!(hold.lag("c"), ReplicaLag::Current);
        hold.backlogs.insert("c".into(), Backlog::default());
        assert_eq!(hold.lag("c"), ReplicaLag::Behind);
        assert_eq!(hold.lag("d"), ReplicaLag::Current);
        hold.suspect = true;
        assert_eq!(hold.lag("c"), ReplicaLag::Lost);
        // Nothing of it held since the node turned suspect: written before.
        assert_eq!(hold.lag("d"), ReplicaLag::Current);
        hold.fenced.insert("d".into());
        assert_eq!(hold.lag("d"), ReplicaLag::Lost);
    }

    #[test]
    fn a_session_claimed_while_suspect_is_no_longer_held() {
        let mut hold = Hold::default();
        hold.settle("c");
        assert!(hold.settled.is_empty(), "nothing to settle: not suspect");
        hold.turn_suspect();
        hold.backlogs.insert("c".into(), Backlog::default());
        hold.fenced.insert("f".into());
        assert!(hold.holds("c") && hold.holds("d"));
        hold.settle("c");
        hold.settle("d");
        hold.settle("f");
        // What was held of it goes out with the next batch: behind until
        // then, not lost.
        assert!(hold.due.contains("c"));
        assert_eq!(hold.lag("c"), ReplicaLag::Behind);
        assert!(!hold.holds("d"));
        assert_eq!(hold.lag("d"), ReplicaLag::Current);
        assert_eq!(hold.lag("f"), ReplicaLag::Lost);
        assert!(hold.holds("e"));
        // A new cut, or the audit, starts over.
        hold.turn_suspect();
        assert!(hold.holds("d"));
        hold.settle("d");
        hold.audited();
        assert!(!hold.suspect && hold.settled.is_empty());
    }

    #[test]
    fn a_message_added_and_removed_while_held_leaves_nothing() {
        let c = ByteString::from("c");
        let mut b = Backlog::default();
        let written = |seq: u64| seq < 10;
        b.add(
            &Op::Message(c.clone(), 11, Bytes::from_static(b"m")),
            Some((1, 2)),
            written,
            true,
        );
        b.add(&Op::DeleteMessage(c.clone(), 11), None, written, true);
        b.add(&Op::DeleteMessage(c.clone(), 5), None, written, true);
        b.add(
            &Op::Message(c.clone(), 12, Bytes::from_static(b"n")),
            Some((1, 3)),
            written,
            false,
        );
        let ops = b.ops("c");
        assert!(matches!(ops[0], Op::DeleteMessage(_, 5)), "{ops:?}");
        assert!(matches!(ops[1], Op::Message(_, 12, _)), "{ops:?}");
        assert!(matches!(ops[2], Op::CameWith(1, 3)), "{ops:?}");
        assert_eq!(ops.len(), 3);
        assert!(b.early_messages(|_| false).is_empty());
    }

    #[test]
    fn a_session_ended_while_held_is_purged_first() {
        let c = ByteString::from("c");
        let mut b = Backlog::default();
        let rec = SessionRecord {
            expiry_interval: 60,
            disconnected_at_ms: 0,
        };
        b.add(
            &Op::Message(c.clone(), 1, Bytes::from_static(b"m")),
            None,
            |_| false,
            true,
        );
        b.add(&Op::DeleteSession(c.clone()), None, |_| false, true);
        b.add(&Op::Session(c.clone(), rec), None, |_| false, true);
        let ops = b.ops("c");
        assert!(matches!(ops[0], Op::DeleteSession(_)), "{ops:?}");
        assert!(matches!(ops[1], Op::Session(..)), "{ops:?}");
        assert_eq!(ops.len(), 2);
    }
}

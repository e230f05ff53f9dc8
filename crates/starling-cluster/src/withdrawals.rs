//! This node's withdrawn messages (see `withdrawn`): their numbers in this
//! run, remembered for as long as transit keeps messages, and the answer
//! that carries them to another node.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::time::Instant;

/// How long a withdrawn stamp is remembered: as long as transit keeps
/// messages (its `AGE`; not named here, which would make the modules
/// depend on each other in a circle: a test checks they are equal).
const KEPT: Duration = Duration::from_secs(120);
/// Withdrawn stamps remembered at most (the oldest forgotten first); an
/// answer carries them all in one NATS message (8 bytes each).
const LIMIT: usize = 65_536;

/// This node's withdrawn messages (their numbers in this run), newest last.
#[derive(Default)]
pub struct Withdrawn {
    seqs: HashSet<u64>,
    order: VecDeque<(Instant, u64)>,
}

impl Withdrawn {
    pub fn add(&mut self, seq: u64) {
        self.forget_old();
        if self.order.len() >= LIMIT {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.seqs.remove(&oldest);
            }
        }
        if self.seqs.insert(seq) {
            self.order.push_back((Instant::now(), seq));
        }
    }

    fn forget_old(&mut self) {
        while let Some((at, seq)) = self.order.front().copied() {
            if at.elapsed() < KEPT {
                break;
            }
            self.order.pop_front();
            self.seqs.remove(&seq);
        }
    }

    /// Whether this node withdrew its message `seq`.
    pub fn contains(&self, seq: u64) -> bool {
        self.seqs.contains(&seq)
    }

    /// The numbers remembered.
    pub fn numbers(&self) -> &HashSet<u64> {
        &self.seqs
    }

    /// The numbers remembered, as an answer to another node.
    pub fn encode(&mut self) -> Bytes {
        self.forget_old();
        let mut out = BytesMut::with_capacity(self.seqs.len() * 8);
        for seq in &self.seqs {
            out.put_u64(*seq);
        }
        out.freeze()
    }
}

/// The numbers in an answer (8 bytes each; a short tail is ignored).
pub fn decode(mut payload: Bytes) -> HashSet<u64> {
    let mut seqs = HashSet::with_capacity(payload.len() / 8);
    while payload.remaining() >= 8 {
        seqs.insert(payload.get_u64());
    }
    seqs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawn_stamps_are_kept_as_long_as_transit_keeps_messages() {
        assert_eq!(KEPT, crate::transit::AGE);
    }

    #[test]
    fn remembers_at_most_the_limit_newest_kept() {
        let mut w = Withdrawn::default();
        for seq in 0..(LIMIT as u64 + 10) {
            w.add(seq);
        }
        assert_eq!(w.seqs.len(), LIMIT);
        assert!(!w.contains(9));
        assert!(w.contains(10));
        assert!(w.contains(LIMIT as u64 + 9));
        assert_eq!(decode(w.encode()), w.seqs);
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_what_transit_no_longer_keeps() {
        let mut w = Withdrawn::default();
        w.add(1);
        tokio::time::advance(KEPT + Duration::from_secs(1)).await;
        w.add(2);
        assert!(!w.contains(1));
        assert!(w.contains(2));
    }

    #[test]
    fn a_short_answer_decodes_what_it_has() {
        let mut b = BytesMut::new();
        b.put_u64(7);
        b.put_slice(&[1, 2, 3]);
        assert_eq!(decode(b.freeze()), HashSet::from([7]));
    }
}

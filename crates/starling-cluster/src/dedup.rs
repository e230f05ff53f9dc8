//! Each message once: a node with overlapping subscriptions (`a/+` and
//! `a/#`) gets a message once per matching NATS subscription; the copies
//! carry one stamp, and only the first is routed.

use std::collections::HashMap;

use crate::envelope::Stamp;

/// How many of one run's latest sequence numbers are remembered. Copies of
/// one message arrive one after the other on a connection; a copy later than
/// this many newer messages from the same node is dropped as seen.
const WINDOW: u64 = 1 << 16;
const WORDS: usize = (WINDOW / 64) as usize;
/// Runs remembered at most (each node's restart is a new run); the oldest
/// one seen is forgotten past it.
const MAX_ORIGINS: usize = 256;

/// What was seen of one run.
struct Window {
    high: u64,
    bits: Box<[u64; WORDS]>,
    touched: u64,
}

impl Window {
    fn new() -> Self {
        Window {
            high: 0,
            bits: Box::new([0; WORDS]),
            touched: 0,
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Records `seq`; true when it was not seen before.
    fn first(&mut self, seq: u64) -> bool {
        if seq > self.high {
            if seq - self.high >= WINDOW {
                self.bits.fill(0);
            } else {
                for s in self.high + 1..seq {
                    let (w, b) = Self::slot(s);
                    self.bits[w] &= !b;
                }
            }
            self.high = seq;
            let (w, b) = Self::slot(seq);
            self.bits[w] |= b;
            return true;
        }
        if self.high - seq >= WINDOW {
            return false;
        }
        let (w, b) = Self::slot(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

/// The runs seen and what of each.
#[derive(Default)]
pub struct Seen {
    runs: HashMap<u64, Window>,
    clock: u64,
}

impl Seen {
    /// Per run, the newest message number seen.
    pub fn highs(&self) -> std::collections::HashMap<u64, u64> {
        self.runs.iter().map(|(o, w)| (*o, w.high)).collect()
    }

    /// Records a stamp; true the first time it is seen.
    pub fn first(&mut self, stamp: Stamp) -> bool {
        self.clock += 1;
        if !self.runs.contains_key(&stamp.origin) && self.runs.len() >= MAX_ORIGINS {
            if let Some(oldest) = self
                .runs
                .iter()
                .min_by_key(|(_, w)| w.touched)
                .map(|(k, _)| *k)
            {
                self.runs.remove(&oldest);
            }
        }
        let window = self.runs.entry(stamp.origin).or_insert_with(Window::new);
        window.touched = self.clock;
        window.first(stamp.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(origin: u64, seq: u64) -> Stamp {
        Stamp { origin, seq }
    }

    #[test]
    fn copies_are_dropped_and_new_messages_pass() {
        let mut seen = Seen::default();
        assert!(seen.first(s(1, 1)));
        assert!(!seen.first(s(1, 1)));
        assert!(seen.first(s(1, 3)));
        assert!(seen.first(s(1, 2)), "late but new");
        assert!(!seen.first(s(1, 2)));
        assert!(seen.first(s(2, 1)), "another run");
        // A jump past the window forgets what was before it.
        assert!(seen.first(s(1, 3 + WINDOW)));
        assert!(!seen.first(s(1, 3)), "too old: dropped as seen");
        assert!(seen.first(s(1, 4 + WINDOW)));
    }

    #[test]
    fn a_slot_reused_by_the_window_starts_clear() {
        let mut seen = Seen::default();
        for seq in 1..=WINDOW * 3 {
            assert!(seen.first(s(9, seq)), "{seq}");
            if seq % 7 == 0 {
                assert!(!seen.first(s(9, seq)));
            }
        }
    }

    #[test]
    fn runs_are_bounded() {
        let mut seen = Seen::default();
        for origin in 0..(MAX_ORIGINS as u64 * 2) {
            assert!(seen.first(s(origin, 1)));
        }
        assert_eq!(seen.runs.len(), MAX_ORIGINS);
    }
}

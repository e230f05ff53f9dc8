//! The forwarding queue put back in stamp order. A message's stamp is taken
//! while the broker routes it here, before it enters the outbox; two
//! publishers' threads can take stamps 1955 and 1956 and enter the outbox
//! the other way round. The other nodes rely on this node's messages
//! coming in stamp order: a session that leaves a node's index records the
//! newest stamp routed to it per run (the *cut*), a node's receipt the
//! newest it stored, and the node that takes over replays only what is
//! newer. So the forwarding task hands messages on in stamp order: one
//! that comes before its predecessor waits for it (at most [`GAP_WAIT`]).
//!
//! A stamp that never enters the outbox (a `$SYS` topic, a QoS 0 message
//! while NATS is away, an outbox that is full) is told by
//! [`Skipped::skip`], so that nothing waits for it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A message with its number on this node.
pub trait Numbered {
    /// Its stamp's `seq`.
    fn seq(&self) -> u64;
}

/// How long a message waits for one with a lower stamp, at most: the
/// stamp is taken and the message enters the outbox in one synchronous
/// step of its publisher's task, so a gap closes within a thread's
/// scheduling delay or not at all (a skip that was not told).
pub const GAP_WAIT: Duration = Duration::from_millis(250);
/// Messages held back at once, at most: past it the gap is passed over.
const MAX_WAITING: usize = 8192;
/// Skipped stamps remembered until the forwarding task takes them, at
/// most: past it, a gap they leave is passed over after [`GAP_WAIT`].
const MAX_SKIPPED: usize = 65_536;

/// Stamps that will not enter the outbox, told by the publishers' tasks.
#[derive(Default)]
pub struct Skipped(Mutex<Vec<u64>>);

impl Skipped {
    /// Notes that the message numbered `seq` will not be forwarded.
    pub fn skip(&self, seq: u64) {
        let mut v = self.0.lock();
        if v.len() < MAX_SKIPPED {
            v.push(seq);
        }
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Messages taken from the outbox, handed on in stamp order.
pub struct InOrder<T> {
    /// The stamp handed on next.
    next: u64,
    waiting: BTreeMap<u64, T>,
    /// Skipped stamps not reached yet.
    skips: BTreeSet<u64>,
    /// Since when the lowest waiting message waits for a lower stamp.
    gap_since: Option<Instant>,
    /// Messages that came after their place was passed over.
    late: VecDeque<T>,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        InOrder {
            next: 1,
            waiting: BTreeMap::new(),
            skips: BTreeSet::new(),
            gap_since: None,
            late: VecDeque::new(),
        }
    }
}

impl<T: Numbered> InOrder<T> {
    /// Takes a message from the outbox: back at once if its turn has come
    /// and nothing waits (as nearly always).
    pub fn arrive(&mut self, out: T) -> Option<T> {
        if out.seq() == self.next && self.is_empty() {
            self.next += 1;
            return Some(out);
        }
        self.push(out);
        None
    }

    fn push(&mut self, out: T) {
        if out.seq() < self.next {
            self.late.push_back(out);
        } else {
            self.waiting.insert(out.seq(), out);
        }
    }

    /// The next message to hand on, if its turn has come.
    pub fn pop(&mut self, skipped: &Skipped) -> Option<T> {
        if let Some(out) = self.late.pop_front() {
            return Some(out);
        }
        let &first = self.waiting.keys().next()?;
        if first != self.next {
            self.skips.extend(skipped.take());
            while self.skips.remove(&self.next) {
                self.next += 1;
            }
            self.skips = self.skips.split_off(&self.next);
            if first > self.next && self.waiting.len() < MAX_WAITING {
                self.gap_since.get_or_insert_with(Instant::now);
                return None;
            }
            if first > self.next {
                self.pass_over();
            }
        }
        self.gap_since = None;
        self.next = first + 1;
        self.waiting.remove(&first)
    }

    /// Until when the lowest waiting message waits, if one does.
    pub fn deadline(&self) -> Option<Instant> {
        self.gap_since.map(|since| since + GAP_WAIT)
    }

    /// Gives up waiting for the gap before the lowest waiting message.
    pub fn pass_over(&mut self) {
        if let Some(&first) = self.waiting.keys().next() {
            tracing::warn!(
                from = self.next,
                to = first,
                "forwarding: stamps passed over (a message may reach the other nodes out of order)"
            );
            self.next = first;
            self.gap_since = None;
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.late.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Out(u64);

    impl Numbered for Out {
        fn seq(&self) -> u64 {
            self.0
        }
    }

    fn out(seq: u64) -> Out {
        Out(seq)
    }

    fn drain(q: &mut InOrder<Out>, skipped: &Skipped) -> Vec<u64> {
        let mut v = Vec::new();
        for _ in 0..100 {
            match q.pop(skipped) {
                Some(o) => v.push(o.0),
                None => break,
            }
        }
        v
    }

    #[test]
    fn messages_that_overtook_wait_for_their_predecessor() {
        let skipped = Skipped::default();
        let mut q = InOrder::<Out>::default();
        q.push(out(1));
        assert_eq!(drain(&mut q, &skipped), vec![1]);
        q.push(out(3));
        assert_eq!(drain(&mut q, &skipped), Vec::<u64>::new());
        assert!(q.deadline().is_some());
        q.push(out(2));
        assert_eq!(drain(&mut q, &skipped), vec![2, 3]);
        assert!(q.deadline().is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn skipped_stamps_are_not_waited_for() {
        let skipped = Skipped::default();
        let mut q = InOrder::<Out>::default();
        q.push(out(3));
        assert_eq!(drain(&mut q, &skipped), Vec::<u64>::new());
        skipped.skip(1);
        skipped.skip(2);
        assert_eq!(drain(&mut q, &skipped), vec![3]);
    }

    #[test]
    fn a_gap_passed_over_lets_the_rest_go_and_the_late_one_after() {
        let skipped = Skipped::default();
        let mut q = InOrder::<Out>::default();
        q.push(out(2));
        q.push(out(3));
        assert_eq!(drain(&mut q, &skipped), Vec::<u64>::new());
        q.pass_over();
        assert_eq!(drain(&mut q, &skipped), vec![2, 3]);
        q.push(out(1));
        assert_eq!(drain(&mut q, &skipped), vec![1]);
        q.push(out(4));
        assert_eq!(drain(&mut q, &skipped), vec![4]);
    }

    #[test]
    fn too_many_waiting_pass_the_gap_over() {
        let skipped = Skipped::default();
        let mut q = InOrder::<Out>::default();
        for seq in 2..(MAX_WAITING as u64 + 2) {
            q.push(out(seq));
        }
        let first = q.pop(&skipped).map(|o| o.0);
        assert_eq!(first, Some(2));
    }
}

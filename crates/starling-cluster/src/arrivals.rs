//! The clients that connected while this node was away from the others.
//!
//! A client sent away from a node that lost NATS (or a client that moved
//! for any reason during this node's gap) may have published through
//! another node just before: those messages reach this node only with the
//! gap's repair. Its QoS 1/2 messages published here are therefore held
//! with the gap's live messages (see `gap`) instead of reaching this
//! node's sessions at once, ahead of its older ones. Their
//! acknowledgements wait for NATS anyway; QoS 0 messages go at once.
//!
//! Read on the publish path: two atomic loads while no gap is open (is one
//! open; are any held messages still on their way to the routing task).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Client ids remembered during one gap at most: past it, a newcomer's
/// messages are not held (a flood of CONNECTs during a gap costs bounded
/// memory; those clients' order is then not guarded).
const MAX_ARRIVALS: usize = 100_000;

/// Client ids that connected here during the open gap, each with its held
/// messages the routing task has not taken yet.
#[derive(Default)]
pub struct Arrivals {
    open: AtomicBool,
    /// Held messages not taken yet, all clients together.
    pending: AtomicUsize,
    clients: Mutex<HashMap<String, usize>>,
}

impl Arrivals {
    /// A gap's hold opens (`true`) or is over: its clients are forgotten
    /// then, but for those whose held messages the routing task has not
    /// taken yet (see [`Arrivals::holds`]).
    pub fn set_open(&self, open: bool) {
        if self.open.swap(open, Ordering::AcqRel) && !open {
            self.clients.lock().retain(|_, n| *n > 0);
        }
    }

    /// `client_id` connects here.
    pub fn connects(&self, client_id: &str) {
        if self.open.load(Ordering::Acquire) {
            let mut clients = self.clients.lock();
            if clients.len() < MAX_ARRIVALS {
                clients.entry(client_id.to_string()).or_default();
            }
        }
    }

    /// Whether the messages `publisher` publishes here are held: it came
    /// during the open gap, or (the gap just over) messages it published
    /// before are still on their way to the routing task: the next goes
    /// the same way, behind them, not straight to the sessions ahead of
    /// them.
    pub fn holds(&self, publisher: &str) -> bool {
        let open = self.open.load(Ordering::Acquire);
        if !open && self.pending.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.clients
            .lock()
            .get(publisher)
            .is_some_and(|n| open || *n > 0)
    }

    /// A message of `publisher` is sent to the routing task to be held.
    /// (Called only after [`Arrivals::holds`] said so: bounded as they.)
    pub fn sent(&self, publisher: &str) {
        *self
            .clients
            .lock()
            .entry(publisher.to_string())
            .or_default() += 1;
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// The routing task took a held message of `publisher` (or it went
    /// straight to the sessions).
    pub fn taken(&self, publisher: &str) {
        let mut clients = self.clients.lock();
        if let Some(n) = clients.get_mut(publisher) {
            if *n > 0 {
                *n -= 1;
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
            if *n == 0 && !self.open.load(Ordering::Acquire) {
                clients.remove(publisher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_that_came_during_the_gap_are_held_and_only_while_it_is_open() {
        let a = Arrivals::default();
        a.connects("before");
        a.set_open(true);
        a.connects("during");
        assert!(a.holds("during"));
        assert!(!a.holds("before"));
        a.set_open(false);
        assert!(!a.holds("during"));
        a.set_open(true);
        assert!(!a.holds("during"), "forgotten when the gap was over");
    }

    #[test]
    fn a_client_with_held_messages_on_their_way_is_held_until_they_are_taken() {
        let a = Arrivals::default();
        a.set_open(true);
        a.connects("c");
        a.sent("c");
        a.set_open(false);
        assert!(a.holds("c"), "one is on its way: the next goes behind it");
        a.taken("c");
        assert!(!a.holds("c"));
        a.set_open(true);
        assert!(!a.holds("c"), "forgotten once taken");
    }
}

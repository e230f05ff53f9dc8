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
//! Read on the publish path: one atomic load while no gap is open.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Client ids remembered during one gap at most: past it, a newcomer's
/// messages are not held (a flood of CONNECTs during a gap costs bounded
/// memory; those clients' order is then not guarded).
const MAX_ARRIVALS: usize = 100_000;

/// Client ids that connected here during the open gap.
#[derive(Default)]
pub struct Arrivals {
    open: AtomicBool,
    clients: Mutex<HashSet<String>>,
}

impl Arrivals {
    /// A gap's hold opens (`true`) or is over: its clients are forgotten
    /// then.
    pub fn set_open(&self, open: bool) {
        if self.open.swap(open, Ordering::AcqRel) && !open {
            self.clients.lock().clear();
        }
    }

    /// `client_id` connects here.
    pub fn connects(&self, client_id: &str) {
        if self.open.load(Ordering::Acquire) {
            let mut clients = self.clients.lock();
            if clients.len() < MAX_ARRIVALS {
                clients.insert(client_id.to_string());
            }
        }
    }

    /// Whether the messages `publisher` publishes here are held.
    pub fn holds(&self, publisher: &str) -> bool {
        self.open.load(Ordering::Acquire) && self.clients.lock().contains(publisher)
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
}

//! Live messages held back across a gap, until its repair is done.
//!
//! When this node was away from NATS (a new connection, the end of a cut),
//! or another node was and asks for it, a repair reads the messages core
//! NATS may have dropped meanwhile from transit and routes them
//! ([`crate::transit::repair`]). What core NATS brings while it reads is
//! newer: delivered at once, it would reach the sessions before the older
//! messages the repair finds, out of their publishers' order. So it is
//! *held* here: each held message goes out when the repair reaches it in
//! transit (its place in its publisher's order), the rest (QoS 0, or not
//! read by then) when the repair ends.
//!
//! The same holds for the QoS 1/2 messages published here by the clients
//! that connected while this node was away ([`Arrivals`]): such a client
//! may come from a node it was sent away from, whose last messages reach
//! this node only with the repair (their acknowledgements wait for NATS
//! anyway; QoS 0 messages, ordered apart, go at once). A hold for this node's own gap begins with
//! the gap ([`Hold::pending`]) and is taken over by its repair.
//!
//! Bounded like a replay's parking: past [`HOLD_LIMIT`] payload bytes or
//! [`HOLD_FOR`], everything held goes out and nothing more is held.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use starling_broker::message::Message;
use tokio::time::Instant;

use crate::envelope::Stamp;

/// Payload bytes held at most.
pub const HOLD_LIMIT: usize = 64 << 20;
/// How long live messages are held at most.
pub const HOLD_FOR: Duration = Duration::from_secs(20);

/// The live messages one repair holds back.
pub struct Hold {
    /// The repair's token (`None`: the gap's repair has not begun).
    token: Option<u64>,
    /// Only messages of this run are held (a repair of one run's gap).
    only: Option<u64>,
    held: Vec<(Stamp, Arc<Message>)>,
    /// The stamps in `held` not yet sent out.
    waiting: HashSet<Stamp>,
    bytes: usize,
    began: Instant,
    /// Whether it still holds (false once past its limits).
    holding: bool,
}

impl Hold {
    pub fn new(token: u64, only: Option<u64>) -> Hold {
        Hold {
            token: Some(token),
            ..Hold::pending()
        }
        .only(only)
    }

    /// A hold for this node's gap, begun with it: its repair takes it over.
    pub fn pending() -> Hold {
        Hold {
            token: None,
            only: None,
            held: Vec::new(),
            waiting: HashSet::new(),
            bytes: 0,
            began: Instant::now(),
            holding: true,
        }
    }

    fn only(mut self, only: Option<u64>) -> Hold {
        self.only = only;
        self
    }

    /// Whether it is repair `token`'s.
    pub fn is_for(&self, token: u64) -> bool {
        self.token == Some(token)
    }

    /// Whether it waits for its gap's repair to begin.
    pub fn is_pending(&self) -> bool {
        self.token.is_none()
    }

    /// The gap's repair begins: it holds for that repair from now on.
    pub fn taken_by(&mut self, token: u64) {
        self.token = Some(token);
    }

    /// Whether it held for longer than [`HOLD_FOR`].
    pub fn expired(&self) -> bool {
        self.began.elapsed() > HOLD_FOR
    }

    /// Holds a live message: `Ok(true)` held, `Ok(false)` not one to hold
    /// (it goes out now), `Err(())` past the limits (everything held goes
    /// out first, then it).
    pub fn hold(&mut self, stamp: Stamp, msg: &Arc<Message>) -> Result<bool, ()> {
        if !self.holding || self.only.is_some_and(|o| o != stamp.origin) {
            return Ok(false);
        }
        let full = self.bytes + msg.payload.len() > HOLD_LIMIT;
        if full || self.began.elapsed() > HOLD_FOR {
            self.holding = false;
            return Err(());
        }
        if self.waiting.insert(stamp) {
            self.bytes += msg.payload.len();
            self.held.push((stamp, msg.clone()));
        }
        Ok(true)
    }

    /// The repair reached `stamp` in transit: the held message, if any,
    /// goes out now.
    pub fn reached(&mut self, stamp: Stamp) -> Option<Arc<Message>> {
        if !self.waiting.remove(&stamp) {
            return None;
        }
        let at = self.held.iter().position(|(s, _)| *s == stamp)?;
        let (_, msg) = self.held.remove(at);
        self.bytes = self.bytes.saturating_sub(msg.payload.len());
        Some(msg)
    }

    /// Everything still held, in the order it came; the hold is empty then.
    pub fn release(&mut self) -> Vec<(Stamp, Arc<Message>)> {
        self.waiting.clear();
        self.bytes = 0;
        std::mem::take(&mut self.held)
    }
}

/// The clients that connected while a hold for this node's gap was open
/// (their messages published here are held with it); read on the publish
/// path, one atomic load when no gap is open.
#[derive(Default)]
pub struct Arrivals {
    open: std::sync::atomic::AtomicBool,
    clients: parking_lot::Mutex<HashSet<String>>,
}

impl Arrivals {
    /// A gap's hold opens (`true`) or ends: the clients are forgotten then.
    pub fn set_open(&self, open: bool) {
        use std::sync::atomic::Ordering;
        if self.open.swap(open, Ordering::AcqRel) && !open {
            self.clients.lock().clear();
        }
    }

    /// `client_id` connects here.
    pub fn connects(&self, client_id: &str) {
        if self.open.load(std::sync::atomic::Ordering::Acquire) {
            self.clients.lock().insert(client_id.to_string());
        }
    }

    /// Whether `publisher`'s messages are held (see the module's doc).
    pub fn holds(&self, publisher: &str) -> bool {
        self.open.load(std::sync::atomic::Ordering::Acquire)
            && self.clients.lock().contains(publisher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(payload: bytes::Bytes) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload,
            qos: starling_codec::QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
        })
    }

    fn msg(payload: &'static [u8]) -> Arc<Message> {
        with(bytes::Bytes::from_static(payload))
    }

    fn stamp(origin: u64, seq: u64) -> Stamp {
        Stamp { origin, seq }
    }

    #[test]
    fn held_messages_go_out_where_the_repair_reaches_them_and_the_rest_at_its_end() {
        let mut h = Hold::new(1, None);
        for seq in 1..=3 {
            assert_eq!(h.hold(stamp(7, seq), &msg(b"x")), Ok(true));
        }
        assert!(h.reached(stamp(7, 2)).is_some());
        assert!(h.reached(stamp(7, 2)).is_none(), "sent out once");
        assert!(h.reached(stamp(8, 1)).is_none(), "never held");
        let rest: Vec<u64> = h.release().iter().map(|(s, _)| s.seq).collect();
        assert_eq!(rest, vec![1, 3]);
        assert!(h.release().is_empty());
    }

    #[test]
    fn a_repair_of_one_run_holds_only_that_runs_messages() {
        let mut h = Hold::new(1, Some(7));
        assert_eq!(h.hold(stamp(7, 1), &msg(b"x")), Ok(true));
        assert_eq!(h.hold(stamp(8, 1), &msg(b"x")), Ok(false));
    }

    #[test]
    fn past_its_limits_it_stops_holding() {
        let mut h = Hold::new(1, None);
        let big = with(bytes::Bytes::from(vec![0u8; HOLD_LIMIT]));
        assert_eq!(h.hold(stamp(7, 1), &big), Ok(true));
        assert_eq!(h.hold(stamp(7, 2), &msg(b"x")), Err(()));
        assert_eq!(h.hold(stamp(7, 3), &msg(b"x")), Ok(false), "not again");
        assert_eq!(h.release().len(), 1);
    }

    #[test]
    fn a_gaps_hold_is_taken_over_by_its_repair() {
        let mut h = Hold::pending();
        assert!(h.is_pending() && !h.is_for(5));
        assert_eq!(h.hold(stamp(7, 1), &msg(b"x")), Ok(true));
        h.taken_by(5);
        assert!(h.is_for(5) && !h.is_pending());
        assert_eq!(h.release().len(), 1);
    }

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
        assert!(!a.holds("during"), "forgotten when the gap ended");
    }

    #[tokio::test(start_paused = true)]
    async fn it_holds_for_a_bounded_time() {
        let mut h = Hold::new(1, None);
        assert_eq!(h.hold(stamp(7, 1), &msg(b"x")), Ok(true));
        assert!(!h.expired());
        tokio::time::advance(HOLD_FOR + Duration::from_millis(1)).await;
        assert!(h.expired());
        assert_eq!(h.hold(stamp(7, 2), &msg(b"x")), Err(()));
    }
}

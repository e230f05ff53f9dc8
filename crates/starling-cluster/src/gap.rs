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
//! read by then) when the repair is over: after its last try, not when one
//! try fails (JetStream electing a leader), since the next may still find
//! older messages.
//!
//! The same holds for the QoS 1/2 messages published here by the clients
//! that connected while this node was away (see `arrivals`): such a client
//! may come from a node it was sent away from, whose last messages reach
//! this node only with the repair. A hold for this node's own gap begins
//! with the gap ([`Hold::pending`]) and is taken over by its repair.
//!
//! Bounded: past [`HOLD_LIMIT`] bytes (each message charged its whole
//! weight and its place here, so a flood of empty payloads is bounded too)
//! or [`HOLD_FOR`], everything held goes out and nothing more is held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use starling_broker::message::Message;
use tokio::time::Instant;

use crate::envelope::Stamp;

/// Bytes held at most (see [`cost`]).
pub const HOLD_LIMIT: usize = 64 << 20;
/// What holding one message costs beyond its weight: its slot and index
/// entry, about.
const ENTRY: usize = 96;

/// What holding `msg` is charged.
pub fn cost(msg: &Message) -> usize {
    msg.weight() as usize + ENTRY
}
/// How long live messages are held at most: as long as a replay parks
/// them (`running::PARK_FOR`), for JetStream to come back after a
/// partition heals.
pub const HOLD_FOR: Duration = Duration::from_secs(60);

/// How long a hold for another run waits for that run's repair to begin
/// here (it waits for the repair running, if any: `repairs::serve`
/// tries as long).
pub const PENDING_FOR: Duration = Duration::from_secs(10);

/// The live messages one repair holds back.
pub struct Hold {
    /// The repair's token (`None`: this node's gap, whose repair has not
    /// begun).
    token: Option<u64>,
    /// Only messages of this run are held (a repair of one run's gap).
    only: Option<u64>,
    /// In the order they came; `None` once sent out where the repair
    /// reached it.
    held: Vec<Option<(Stamp, Arc<Message>)>>,
    /// Where each message still held is in `held`.
    waiting: HashMap<Stamp, usize>,
    bytes: usize,
    /// Per origin, the lowest stamp held since the last release (see
    /// `backlog::Hold::routing_low`).
    low: HashMap<u64, u64>,
    began: Instant,
    /// Whether it still holds (false once past its limits).
    holding: bool,
}

impl Hold {
    pub fn new(token: u64, only: Option<u64>) -> Hold {
        Hold {
            token: Some(token),
            only,
            ..Hold::pending()
        }
    }

    /// A hold for this node's gap, begun with it: its repair takes it over
    /// ([`Hold::taken_by`]).
    pub fn pending() -> Hold {
        Hold {
            token: None,
            only: None,
            held: Vec::new(),
            waiting: HashMap::new(),
            bytes: 0,
            low: HashMap::new(),
            began: Instant::now(),
            holding: true,
        }
    }

    /// A hold for the run `origin`, back from a gap of its own, begun as
    /// it asks for its repair here: that repair takes it over.
    pub fn pending_for(origin: u64) -> Hold {
        Hold {
            only: Some(origin),
            ..Hold::pending()
        }
    }

    /// Whether it waits for a repair of the run `only` (`None`: this
    /// node's own gap's) to take it over.
    pub fn pending_for_run(&self, only: Option<u64>) -> bool {
        self.is_pending() && self.only == only
    }

    /// This node's own gap begins while it holds for another run's: it
    /// holds every run's messages from now on, for this node's repair.
    pub fn widen(&mut self) {
        self.only = None;
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

    /// Whether it has held for longer than [`HOLD_FOR`], or, held for
    /// another run whose repair has not begun, longer than
    /// [`PENDING_FOR`].
    pub fn expired(&self) -> bool {
        let limit = match (self.token, self.only) {
            (None, Some(_)) => PENDING_FOR,
            _ => HOLD_FOR,
        };
        self.began.elapsed() > limit
    }

    /// Holds a live message: `Ok(true)` held, `Ok(false)` not one to hold
    /// (it goes out now), `Err(())` past the limits (everything held goes
    /// out first, then it).
    pub fn hold(&mut self, stamp: Stamp, msg: &Arc<Message>) -> Result<bool, ()> {
        if !self.holding || self.only.is_some_and(|o| o != stamp.origin) {
            return Ok(false);
        }
        let full = self.bytes + cost(msg) > HOLD_LIMIT;
        if full || self.began.elapsed() > HOLD_FOR {
            self.holding = false;
            return Err(());
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.waiting.entry(stamp) {
            e.insert(self.held.len());
            self.bytes += cost(msg);
            self.held.push(Some((stamp, msg.clone())));
            let low = self.low.entry(stamp.origin).or_insert(stamp.seq);
            *low = (*low).min(stamp.seq);
        }
        Ok(true)
    }

    /// The repair reached `stamp` in transit: the held message, if any,
    /// goes out now.
    pub fn reached(&mut self, stamp: Stamp) -> Option<Arc<Message>> {
        let at = self.waiting.remove(&stamp)?;
        let (_, msg) = self.held.get_mut(at)?.take()?;
        self.bytes = self.bytes.saturating_sub(cost(&msg));
        Some(msg)
    }

    /// Per origin, the lowest stamp held since the last release (one sent
    /// out where the repair reached it still counts: a receipt then
    /// claims less, and a replay reads more).
    pub fn low(&self) -> &HashMap<u64, u64> {
        &self.low
    }

    /// Everything still held, in the order it came; the hold is empty then.
    pub fn release(&mut self) -> Vec<(Stamp, Arc<Message>)> {
        self.waiting.clear();
        self.low.clear();
        self.bytes = 0;
        std::mem::take(&mut self.held)
            .into_iter()
            .flatten()
            .collect()
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
        // (Charged exactly the limit: an empty one's cost plus its payload.)
        let big = with(bytes::Bytes::from(vec![0u8; HOLD_LIMIT - cost(&msg(b""))]));
        assert_eq!(cost(&big), HOLD_LIMIT);
        assert_eq!(h.hold(stamp(7, 1), &big), Ok(true));
        assert_eq!(h.hold(stamp(7, 2), &msg(b"x")), Err(()));
        assert_eq!(h.hold(stamp(7, 3), &msg(b"x")), Ok(false), "not again");
        assert_eq!(h.release().len(), 1);
    }

    #[test]
    fn empty_payloads_are_bounded_too() {
        let mut h = Hold::new(1, None);
        let per = cost(&msg(b""));
        let fit = (HOLD_LIMIT / per) as u64;
        for seq in 1..=fit {
            assert_eq!(h.hold(stamp(7, seq), &msg(b"")), Ok(true));
        }
        assert_eq!(h.hold(stamp(7, fit + 1), &msg(b"")), Err(()));
        assert_eq!(h.release().len() as u64, fit);
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

    #[tokio::test(start_paused = true)]
    async fn a_hold_for_another_run_holds_its_messages_until_its_repair_takes_it_over() {
        let mut h = Hold::pending_for(7);
        assert!(h.pending_for_run(Some(7)) && !h.pending_for_run(None));
        assert_eq!(h.hold(stamp(7, 1), &msg(b"x")), Ok(true));
        assert_eq!(h.hold(stamp(8, 1), &msg(b"x")), Ok(false), "another run's");
        h.taken_by(5);
        assert!(h.is_for(5));
        assert!(h.reached(stamp(7, 1)).is_some());
        // Not taken over in time: it expires sooner than a repair's hold.
        let waiting = Hold::pending_for(7);
        let mut taken = Hold::pending_for(7);
        taken.taken_by(5);
        tokio::time::advance(PENDING_FOR + Duration::from_millis(1)).await;
        assert!(waiting.expired());
        assert!(!taken.expired());
    }

    #[test]
    fn this_nodes_gap_widens_a_hold_for_another_run() {
        let mut h = Hold::pending_for(7);
        h.widen();
        assert!(h.pending_for_run(None));
        assert_eq!(h.hold(stamp(8, 1), &msg(b"x")), Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_expires() {
        let h = Hold::pending();
        assert!(!h.expired());
        tokio::time::advance(HOLD_FOR + Duration::from_millis(1)).await;
        assert!(h.expired());
    }

    #[tokio::test(start_paused = true)]
    async fn it_holds_for_a_bounded_time() {
        let mut h = Hold::new(1, None);
        assert_eq!(h.hold(stamp(7, 1), &msg(b"x")), Ok(true));
        tokio::time::advance(HOLD_FOR + Duration::from_millis(1)).await;
        assert_eq!(h.hold(stamp(7, 2), &msg(b"x")), Err(()));
    }
}

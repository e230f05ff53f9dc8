//! Live messages held back while a repair after a gap runs.
//!
//! When this node was away from NATS (a new connection, the end of a cut),
//! or another node was and asks for it, a repair reads the messages core
//! NATS may have dropped meanwhile from transit and routes them
//! ([`crate::transit::repair`]). What core NATS brings while it reads is
//! newer: delivered at once, it would reach the sessions before the older
//! messages the repair finds, out of their publishers' order. So it is
//! *held* here: each held message goes out when the repair reaches it in
//! transit (its place in its publisher's order), the rest (QoS 0, or not
//! read by then) when the repair ends: after its last try, when a try
//! fails (JetStream electing a leader), since the next try may find older
//! messages still. Bounded: past [`HOLD_LIMIT`] bytes
//! (each message charged its whole weight and its place here, so a flood
//! of empty payloads is bounded too) or [`HOLD_FOR`], everything held goes
//! out and the rest of the repair's live messages are not held.

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
/// How long live messages are held at most.
pub const HOLD_FOR: Duration = Duration::from_secs(20);

/// The live messages one repair holds back.
pub struct Hold {
    /// The repair's token.
    pub token: u64,
    /// Only messages of this run are held (a repair of one run's gap).
    only: Option<u64>,
    /// In the order they came; `None` once sent out where the repair
    /// reached it.
    held: Vec<Option<(Stamp, Arc<Message>)>>,
    /// Where each message still held is in `held`.
    waiting: HashMap<Stamp, usize>,
    bytes: usize,
    began: Instant,
    /// Whether it still holds (false once past its limits).
    holding: bool,
}

impl Hold {
    pub fn new(token: u64, only: Option<u64>) -> Hold {
        Hold {
            token,
            only,
            held: Vec::new(),
            waiting: HashMap::new(),
            bytes: 0,
            began: Instant::now(),
            holding: true,
        }
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

    /// Everything still held, in the order it came; the hold is empty then.
    pub fn release(&mut self) -> Vec<(Stamp, Arc<Message>)> {
        self.waiting.clear();
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

    #[tokio::test(start_paused = true)]
    async fn it_holds_for_a_bounded_time() {
        let mut h = Hold::new(1, None);
        assert_eq!(h.hold(stamp(7, 1), &msg(b"x")), Ok(true));
        tokio::time::advance(HOLD_FOR + Duration::from_millis(1)).await;
        assert_eq!(h.hold(stamp(7, 2), &msg(b"x")), Err(()));
    }
}

//! One replay in progress, as the routing task keeps it: its sessions, the
//! stamps core NATS brought them since it began, those it routed itself,
//! and the live messages it parks.
//!
//! What reaches its sessions live while it runs (from core NATS, or
//! published on this node) is *parked*, not delivered: the replay hands
//! them the older messages first. A parked message goes out where the
//! replay reaches it in transit (its place in its publisher's order, which
//! may go on at another node: a publisher that moved publishes its later
//! messages under that node's run), the rest (QoS 0, or not read by then)
//! when the replay ends. Past [`PARK_LIMIT`] (each message charged its
//! whole weight and its slot, as in [`crate::gap`]) or [`PARK_FOR`] they
//! are delivered at once (and noted in `core`, which the replay then
//! skips).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use starling_broker::message::Message;
use starling_broker::Scope;
use tokio::time::Instant;

use crate::envelope::Stamp;

/// Bytes of the live messages one replay parks at most (past it, they
/// reach the sessions at once, before older replayed ones).
pub const PARK_LIMIT: usize = 64 << 20;
/// How long a replay parks live messages at most (a replay that takes
/// longer, or is never ended, lets them through then, ahead of the older
/// ones it has still to give). Long enough for JetStream to come back
/// after a partition heals (its transit stream answered nothing for 22 s
/// in one run: 20 s let 2,889 live messages out first).
pub const PARK_FOR: Duration = Duration::from_secs(60);

/// One replay (see the module's documentation).
pub struct Running {
    /// `None`: a repair of this node's routing. Else the sessions, and
    /// per session this node's message number after its install.
    pub clients: Option<crate::shared::ReplayClients>,
    /// What core NATS brought its sessions meanwhile (not replayed).
    pub core: HashSet<Stamp>,
    /// What it routed (or let core NATS's copy through for) itself.
    pub replayed: HashSet<Stamp>,
    /// What the sessions' stores held as they were rebuilt (see
    /// `ReplayCommand::Covers`).
    pub held: HashSet<Stamp>,
    /// What the sessions had at their install, per run (see
    /// `ReplayCommand::Covers`).
    pub covered: HashMap<u64, u64>,
    /// Since when the replay reads transit, once it said what its sessions
    /// had (`covered`): until then nothing is known of what it owes them.
    pub covered_from_ms: Option<u64>,
    /// In the order they came; `None` once sent out where the replay
    /// reached it.
    parked: Vec<Option<(Stamp, Arc<Message>)>>,
    /// Where each message still parked is in `parked`.
    parked_at: HashMap<Stamp, usize>,
    parked_bytes: usize,
    /// Per origin, the lowest stamp parked since the replay began (see
    /// `backlog::Hold::routing_low`).
    pub low: HashMap<u64, u64>,
    /// This node's own newest message number the replay has passed in
    /// transit: one of its own published later than that is parked, one
    /// before goes out at once (its place is behind).
    own_reached: u64,
    /// Whether live messages are parked still, and since when.
    parking: bool,
    began: Instant,
}

impl Running {
    pub fn new(clients: Option<crate::shared::ReplayClients>) -> Running {
        Running {
            clients,
            core: HashSet::new(),
            replayed: HashSet::new(),
            held: HashSet::new(),
            covered: HashMap::new(),
            covered_from_ms: None,
            parked: Vec::new(),
            parked_at: HashMap::new(),
            parked_bytes: 0,
            low: HashMap::new(),
            own_reached: 0,
            parking: true,
            began: Instant::now(),
        }
    }

    /// Whether its sessions have `stamp`: it replayed it, or they had it
    /// at their install (a late core copy of it must not reach them again).
    pub fn had(&self, stamp: Stamp) -> bool {
        self.replayed.contains(&stamp)
            || self.held.contains(&stamp)
            || self
                .covered
                .get(&stamp.origin)
                .is_some_and(|h| stamp.seq <= *h)
    }

    /// Whether `stamp`, just parked, is the lowest parked of its origin.
    pub fn lowest(&self, stamp: Stamp) -> bool {
        self.low.get(&stamp.origin) == Some(&stamp.seq)
    }

    /// Whether the replay has passed the place in transit of this node's
    /// own message `seq` (it goes to the sessions now, not parked).
    pub fn passed_own(&self, seq: u64) -> bool {
        seq <= self.own_reached
    }

    /// Parks a live message for the sessions; `false` past the limits
    /// (what was parked then goes to the sessions at once).
    pub fn park(
        &mut self,
        stamp: Stamp,
        msg: &Arc<Message>,
        broker: &starling_broker::BrokerState,
    ) -> bool {
        let cost = crate::gap::cost(msg);
        let full = self.parked_bytes + cost > PARK_LIMIT;
        if self.parking && (full || self.began.elapsed() > PARK_FOR) {
            self.parking = false;
            let n = self.unpark(broker);
            tracing::info!(
                messages = n,
                "a replay runs long: the live messages it held back delivered"
            );
        }
        let empty = self.clients.as_ref().is_none_or(|(c, _)| c.is_empty());
        if !self.parking || empty {
            return false;
        }
        self.parked_bytes += cost;
        self.parked_at.insert(stamp, self.parked.len());
        self.parked.push(Some((stamp, msg.clone())));
        let low = self.low.entry(stamp.origin).or_insert(stamp.seq);
        *low = (*low).min(stamp.seq);
        true
    }

    /// The replay read `stamp` in transit and hands the sessions nothing
    /// for it (see `ReplayCommand::Reached`; `own`: this node's own). A
    /// parked copy goes to them now, at its place, unless they `have` it.
    /// Returns the deliveries made.
    pub fn reached(
        &mut self,
        stamp: Stamp,
        own: bool,
        have: bool,
        broker: &starling_broker::BrokerState,
    ) -> usize {
        if own {
            self.own_reached = self.own_reached.max(stamp.seq);
        }
        let Some(i) = self.parked_at.remove(&stamp) else {
            return 0;
        };
        let Some((stamp, msg)) = self.parked.get_mut(i).and_then(Option::take) else {
            return 0;
        };
        self.parked_bytes = self.parked_bytes.saturating_sub(crate::gap::cost(&msg));
        if have {
            return 0;
        }
        self.deliver(stamp, &msg, broker)
    }

    /// Hands a parked message to the sessions, unless they have it: the
    /// replay gave it them, or they had it at their install (the old
    /// node's cut or the dead one's receipt, known after it was parked).
    fn deliver(
        &mut self,
        stamp: Stamp,
        msg: &Arc<Message>,
        broker: &starling_broker::BrokerState,
    ) -> usize {
        if self.had(stamp) {
            return 0;
        }
        let Some((clients, _)) = &self.clients else {
            return 0;
        };
        self.replayed.insert(stamp);
        let scope = Scope::Clients(clients);
        let n = broker.route_from_cluster(msg, scope, (stamp.origin, stamp.seq));
        tracing::debug!(target: "starling_cluster::transit", ?stamp, topic = %msg.topic, head = %crate::envelope::head(&msg.payload), n, "unparked");
        n
    }

    /// The replay ended (or parks no more): the parked messages it did not
    /// hand the sessions go to them now, in the order they came.
    pub fn unpark(&mut self, broker: &starling_broker::BrokerState) -> usize {
        self.parked_at.clear();
        self.low.clear();
        self.parked_bytes = 0;
        let mut routed = 0;
        for (stamp, msg) in std::mem::take(&mut self.parked).into_iter().flatten() {
            routed += self.deliver(stamp, &msg, broker);
        }
        routed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_codec::ByteString;

    fn broker() -> starling_broker::BrokerState {
        let auth = Arc::new(starling_broker::auth::FileAuthenticator {
            allow_anonymous: true,
            passwords: None,
        });
        starling_broker::BrokerState::new(starling_broker::Config::default(), auth, None)
    }

    fn msg(payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(payload),
            qos: starling_codec::QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
        })
    }

    fn for_one_session() -> Running {
        let clients: HashSet<ByteString> = [ByteString::from("s")].into_iter().collect();
        Running::new(Some((Arc::new(clients), Arc::new(HashMap::new()))))
    }

    fn stamp(seq: u64) -> Stamp {
        Stamp { origin: 7, seq }
    }

    #[test]
    fn what_the_rebuilt_stores_held_counts_as_had() {
        let mut r = Running::new(None);
        r.covered.insert(7, 3);
        r.held.insert(stamp(9));
        assert!(r.had(stamp(3)), "covered");
        assert!(r.had(stamp(9)), "held by the store");
        assert!(!r.had(stamp(8)), "neither");
    }

    #[test]
    fn a_parked_own_message_goes_out_where_the_replay_reaches_it() {
        let b = broker();
        let mut r = for_one_session();
        for seq in 1..=3 {
            assert!(r.park(stamp(seq), &msg(b"x"), &b));
        }
        assert!(!r.passed_own(2));
        r.reached(stamp(2), true, false, &b);
        assert!(r.had(stamp(2)), "sent out at its place");
        assert!(!r.had(stamp(1)) && !r.had(stamp(3)), "the others wait");
        assert!(r.passed_own(2) && !r.passed_own(3));
        r.unpark(&b);
        assert!(r.had(stamp(1)) && r.had(stamp(3)), "the rest at the end");
    }

    #[test]
    fn the_lowest_parked_stamp_is_known_until_the_replay_ends() {
        let b = broker();
        let mut r = for_one_session();
        assert!(r.park(stamp(5), &msg(b"x"), &b));
        assert!(r.lowest(stamp(5)));
        assert!(r.park(stamp(6), &msg(b"x"), &b));
        assert!(!r.lowest(stamp(6)));
        assert!(r.park(stamp(3), &msg(b"x"), &b));
        assert!(r.lowest(stamp(3)));
        r.unpark(&b);
        assert!(r.low.is_empty());
    }

    #[test]
    fn empty_payloads_are_bounded_too() {
        let b = broker();
        let mut r = for_one_session();
        let fit = (PARK_LIMIT / crate::gap::cost(&msg(b""))) as u64;
        for seq in 1..=fit {
            assert!(r.park(stamp(seq), &msg(b""), &b));
        }
        assert!(!r.park(stamp(fit + 1), &msg(b""), &b), "past the limit");
        assert!(!r.park(stamp(fit + 2), &msg(b""), &b), "and parks no more");
    }

    #[test]
    fn a_parked_message_the_sessions_had_at_their_install_is_not_sent_again() {
        let b = broker();
        let mut r = for_one_session();
        assert!(r.park(stamp(4), &msg(b"x"), &b));
        assert!(r.park(stamp(9), &msg(b"x"), &b));
        r.covered.insert(7, 5);
        r.unpark(&b);
        assert!(!r.replayed.contains(&stamp(4)), "covered: not delivered");
        assert!(r.replayed.contains(&stamp(9)));
    }

    #[test]
    fn a_repairs_running_parks_nothing() {
        let b = broker();
        let mut r = Running::new(None);
        assert!(!r.park(stamp(1), &msg(b"x"), &b));
    }
}

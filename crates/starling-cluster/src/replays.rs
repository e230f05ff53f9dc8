//! The replays and repairs in progress, as the routing task keeps them
//! ([`Replays`]): what each replay routed, parked and was told, the live
//! messages a gap's repair holds back, and the replays that ended lately
//! (a late core copy of what one gave must not reach its sessions again).
//! `transit` reads the stream and sends what it finds here as
//! [`ReplayCommand`]s.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use starling_broker::Scope;
use starling_codec::ByteString;
use tokio::time::Instant;

use crate::envelope::{self, Stamp};
use crate::running::Running;
use crate::shared::{Inner, ReplayCommand};
use crate::transit::AGE;

/// Stamps a replay remembers of core NATS deliveries at most (past it,
/// a message core NATS brought may be replayed to the sessions again).
const RECORD_LIMIT: usize = 1_000_000;

/// The replays in progress, as the routing task keeps them.
#[derive(Default)]
pub struct Replays {
    running: HashMap<u64, Running>,
    /// Replays that ended lately: a core copy of a message one of them
    /// handed its sessions, arriving late, must not reach them again.
    ended: std::collections::VecDeque<(Instant, Running)>,
    /// Replays that ended longer ago than [`ENDED_KEPT`], kept only for
    /// merges (see [`Replays::merge`]) up to [`GAVE_KEPT`]: a session's
    /// copy on a node cut off for longer than transit keeps messages comes
    /// back as a merge, and the stamps a replay gave the session then are
    /// still not to be given again. Nothing else reads them.
    gave: std::collections::VecDeque<(Instant, Running)>,
    /// What core NATS brought while a repair after a gap runs.
    gap: Option<crate::gap::Hold>,
    /// This node (`None` in unit tests).
    inner: Option<Arc<Inner>>,
    /// What is held back from the sessions changed its lowest stamps:
    /// they are to be told to the replica (see [`Replays::publish_low`]).
    low_dirty: bool,
}

/// How long an ended replay's messages are kept from its sessions' core
/// copies and from repairs: as long as transit keeps messages (a repair
/// reads no older ones), and at most [`ENDED_STAMPS`] stamps in all.
const ENDED_KEPT: Duration = AGE;
const ENDED_STAMPS: usize = 1_000_000;
/// How long an ended replay's stamps are kept for merges (see
/// [`Replays::gave`]); their stamps and the recent replays' count against
/// [`ENDED_STAMPS`] together, the oldest dropped first.
const GAVE_KEPT: Duration = Duration::from_secs(3600);

impl Replays {
    /// The replays of `inner`'s routing task.
    pub fn of(inner: Arc<Inner>) -> Replays {
        Replays {
            inner: Some(inner),
            ..Replays::default()
        }
    }

    /// Whether no replay is in progress.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.ended.is_empty()
    }

    /// Per run, the newest message number a replay (in progress, or ended
    /// within [`ENDED_KEPT`]) gave `client_id`'s session: a live handover's
    /// cut counts those with what core NATS brought.
    pub fn replayed_highs(&self, client_id: &str) -> HashMap<u64, u64> {
        let mut high: HashMap<u64, u64> = HashMap::new();
        let ended = self.ended.iter().map(|(_, r)| r);
        for r in ended.chain(self.running.values()) {
            let Some((clients, _)) = &r.clients else {
                continue;
            };
            if !clients.iter().any(|c| &**c == client_id) {
                continue;
            }
            for s in &r.replayed {
                let h = high.entry(s.origin).or_default();
                *h = (*h).max(s.seq);
            }
        }
        high
    }

    /// A session left this node (handed over): the replays still running
    /// here (none should: a takeover waits for its session's replays) no
    /// longer route or park for it.
    pub fn leave(&mut self, client_id: &str) {
        for r in self.running.values_mut() {
            if let Some((clients, _)) = &mut r.clients {
                if clients.contains(client_id) {
                    let mut rest = (**clients).clone();
                    rest.remove(client_id);
                    *clients = Arc::new(rest);
                }
            }
        }
    }

    /// The sessions of the replays running now, if any.
    pub fn parking_clients(&self) -> Option<Arc<HashSet<ByteString>>> {
        let all: HashSet<ByteString> = self
            .running
            .values()
            .filter_map(|r| r.clients.as_ref())
            .flat_map(|(clients, _)| clients.iter().cloned())
            .collect();
        (!all.is_empty()).then(|| Arc::new(all))
    }

    /// Routes a message core NATS brought (new to this node), or holds it
    /// back while a repair after a gap runs.
    pub fn live(
        &mut self,
        stamp: Stamp,
        msg: &Arc<starling_broker::message::Message>,
        broker: &starling_broker::BrokerState,
    ) {
        if let Some(gap) = &mut self.gap {
            match gap.hold(stamp, msg) {
                Ok(true) => {
                    if gap.low().get(&stamp.origin) == Some(&stamp.seq) {
                        self.low_dirty = true;
                        self.publish_low();
                    }
                    return;
                }
                Ok(false) => {}
                Err(()) => {
                    let n = self.release_gap(broker);
                    tracing::info!(
                        messages = n,
                        "a repair runs long: the live messages it held back delivered"
                    );
                }
            }
        }
        self.route_live(stamp, msg, broker);
    }

    /// Routes a live message now, past the sessions a replay gave it.
    fn route_live(
        &mut self,
        stamp: Stamp,
        msg: &Arc<starling_broker::message::Message>,
        broker: &starling_broker::BrokerState,
    ) -> usize {
        let had = if self.is_empty() {
            None
        } else {
            self.routing(stamp, msg, broker)
        };
        let scope = match &had {
            Some(not) => Scope::PlainExcept(not),
            None => Scope::Plain,
        };
        broker.route_from_cluster(msg, scope, (stamp.origin, stamp.seq))
    }

    /// This node's gap begins: live messages are held from now on until
    /// its repair is over.
    pub fn begin_gap(&mut self) {
        match &mut self.gap {
            None => self.gap = Some(crate::gap::Hold::pending()),
            // Held for another run's repair, not begun yet: for this one's.
            Some(g) if g.is_pending() => g.widen(),
            Some(_) => {}
        }
    }

    /// The node of run `origin` is back from a gap and asks for a repair:
    /// its live messages are held until that repair takes the hold over
    /// (one already held for holds on).
    pub fn hold_for(&mut self, origin: u64) {
        if self.gap.is_none() {
            self.gap = Some(crate::gap::Hold::pending_for(origin));
        }
    }

    /// Whether live messages are held for a gap (see [`crate::gap`]).
    pub fn gap_open(&self) -> bool {
        self.gap.is_some()
    }

    /// A gap's hold past its time goes out; one whose repair never began
    /// is over.
    pub fn expire_gap(&mut self, broker: &starling_broker::BrokerState) {
        if !self.gap.as_ref().is_some_and(|g| g.expired()) {
            return;
        }
        let n = self.release_gap(broker);
        if self.gap.as_ref().is_some_and(|g| g.is_pending()) {
            self.gap = None;
        }
        if n > 0 {
            tracing::info!(
                deliveries = n,
                "a gap runs long: the live messages held back for its repair delivered"
            );
        }
    }

    /// Routes what a repair holds back now (it goes on holding, if within
    /// its limits); returns how many deliveries that made.
    pub fn release_gap(&mut self, broker: &starling_broker::BrokerState) -> usize {
        let held = self.gap.as_mut().map(|g| g.release()).unwrap_or_default();
        self.low_dirty = true;
        let mut routed = 0;
        for (stamp, msg) in held {
            // (One of this node's own whose publisher left unacknowledged
            // meanwhile: withdrawn, it goes nowhere, as its copy to NATS.)
            if !self.withdrawn_here(stamp) {
                routed += self.route_live(stamp, &msg, broker);
            }
        }
        routed
    }

    /// Tells the replica, when it changed, the lowest stamp per origin held
    /// back from the sessions here (a gap's hold, the replays' parking):
    /// no receipt claims it before it is stored.
    pub fn publish_low(&mut self) {
        if !std::mem::take(&mut self.low_dirty) {
            return;
        }
        let Some(inner) = &self.inner else { return };
        let mut low: HashMap<u64, u64> = HashMap::new();
        let gap = self.gap.iter().map(|g| g.low());
        for l in gap.chain(self.running.values().map(|r| &r.low)) {
            for (origin, seq) in l {
                let e = low.entry(*origin).or_insert(*seq);
                *e = (*e).min(*seq);
            }
        }
        let owed = self.owed();
        let mut hold = inner.replica.hold.lock();
        hold.routing_low = low;
        hold.owed = owed;
    }

    /// What the replays to sessions installed here may still give them
    /// (see [`crate::backlog::Owed`]).
    pub fn owed(&self) -> crate::backlog::Owed {
        let mut owed = crate::backlog::Owed::default();
        for r in self.running.values().filter(|r| r.clients.is_some()) {
            let Some(from_ms) = r.covered_from_ms else {
                owed.unknown = true;
                continue;
            };
            owed.from_ms = Some(owed.from_ms.map_or(from_ms, |f: u64| f.min(from_ms)));
            for (origin, high) in &r.covered {
                let above = owed.above.entry(*origin).or_insert(*high);
                *above = (*above).min(*high);
            }
        }
        owed
    }

    /// Adds to session `client`'s queue the messages another node had of
    /// it (see `merges`), but those a replay, running or ended within
    /// [`GAVE_KEPT`], gave it already; a running one does not give it those
    /// it adds. Returns how many the session has now (added, or had).
    pub fn merge(&mut self, client: &str, records: Vec<(bytes::Bytes, Option<Stamp>)>) -> usize {
        self.forget_ended();
        let mine = |r: &Running| {
            r.clients
                .as_ref()
                .is_some_and(|(c, _)| c.iter().any(|c| &**c == client))
        };
        let mut had = 0;
        let mut add = Vec::with_capacity(records.len());
        for (raw, stamp) in records {
            if let Some(stamp) = stamp {
                let ended = self.gave.iter().chain(self.ended.iter());
                if ended
                    .map(|(_, r)| r)
                    .chain(self.running.values())
                    .any(|r| mine(r) && r.had(stamp))
                {
                    tracing::debug!(client_id = %client, ?stamp, "a merged message the session had from a replay: left out");
                    had += 1;
                    continue;
                }
                for r in self.running.values_mut().filter(|r| mine(r)) {
                    r.held.insert(stamp);
                }
            }
            add.push(raw);
        }
        let broker = self.inner.as_ref().and_then(|i| i.broker());
        had + broker.map_or(0, |b| b.merge_queued(client, &add))
    }

    /// Moves the ended replays older than [`ENDED_KEPT`] to those kept
    /// for merges, and forgets those older than [`GAVE_KEPT`].
    fn forget_ended(&mut self) {
        let now = Instant::now();
        while self
            .ended
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > ENDED_KEPT)
        {
            if let Some(old) = self.ended.pop_front() {
                self.gave.push_back(old);
            }
        }
        while self
            .gave
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > GAVE_KEPT)
        {
            self.gave.pop_front();
        }
    }

    /// Drops the oldest ended replays until their stamps are within `cap`
    /// (the last one ended is kept whatever its size).
    fn bound_ended(&mut self, cap: usize) {
        let stamps = |r: &Running| r.replayed.len() + r.held.len();
        let all = self.gave.iter().chain(self.ended.iter());
        let mut kept: usize = all.map(|(_, r)| stamps(r)).sum();
        while kept > cap && self.gave.len() + self.ended.len() > 1 {
            let old = match self.gave.pop_front() {
                Some(old) => old,
                None => match self.ended.pop_front() {
                    Some(old) => old,
                    None => break,
                },
            };
            kept -= stamps(&old.1);
        }
    }

    /// Whether this node withdrew `stamp` (one of its own).
    fn withdrawn_here(&self, stamp: Stamp) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| crate::withdrawn::by_this_node(i, (stamp.origin, stamp.seq)))
    }

    /// Before a message core NATS brought is routed: the sessions that a
    /// replay gave it already (if any), which it must not reach again.
    /// Only a session installed here by now gets it: a replay begun before
    /// its sessions were installed records it for those that are.
    pub fn routing(
        &mut self,
        stamp: Stamp,
        msg: &Arc<starling_broker::message::Message>,
        broker: &starling_broker::BrokerState,
    ) -> Option<HashSet<ByteString>> {
        let mut had: Option<HashSet<ByteString>> = None;
        self.forget_ended();
        for (_, r) in &self.ended {
            if let (Some((clients, _)), true) = (&r.clients, r.had(stamp)) {
                had.get_or_insert_with(HashSet::new)
                    .extend(clients.iter().cloned());
            }
        }
        for r in self.running.values_mut() {
            let Some((clients, _)) = r.clients.clone() else {
                continue;
            };
            // Replayed already, or parked until the replay reaches it or
            // ends (by one replay per session: one some of whose sessions
            // have it or wait for it already leaves it to core NATS, or
            // they would get it twice).
            let replayed = r.had(stamp);
            let overlaps = had
                .as_ref()
                .is_some_and(|h| clients.iter().any(|c| h.contains(c)));
            let parked = !replayed && !overlaps && r.park(stamp, msg, broker);
            tracing::debug!(?stamp, topic = %msg.topic, head = %envelope::head(&msg.payload), replayed, overlaps, parked, clients = ?clients, "live during a replay");
            self.low_dirty |= parked && r.lowest(stamp);
            if replayed || parked {
                had.get_or_insert_with(HashSet::new)
                    .extend(clients.iter().cloned());
            } else if r.core.len() < RECORD_LIMIT
                && clients.iter().any(|c| broker.session(c).is_some())
            {
                r.core.insert(stamp);
            }
        }
        had
    }

    /// Serves one command; returns whether a message was routed. A repair
    /// routes what `seen` (the stamps core NATS brought) lacks.
    pub fn serve(
        &mut self,
        broker: &starling_broker::BrokerState,
        seen: &mut crate::dedup::Seen,
        origin: u64,
        command: ReplayCommand,
    ) -> bool {
        match command {
            ReplayCommand::Start(token, clients) => {
                // The receipt's bounds change (see `publish_low`).
                self.low_dirty = true;
                match self.running.get_mut(&token) {
                    // Begun before the sessions were installed: now it
                    // knows them.
                    Some(r) => r.clients = clients,
                    None => {
                        self.running.insert(token, Running::new(clients));
                    }
                }
            }
            ReplayCommand::Message(token, stamp, msg) => {
                let Some(repair) = self.running.get(&token).map(|r| r.clients.is_none()) else {
                    return false;
                };
                if repair {
                    // This node's own gap waits for its repair (this one
                    // repairs another node's run): what this one finds is
                    // held with the gap's live messages, and what the gap
                    // holds stays held. The gap's repair, which reads every
                    // run, places them: a publisher that moved between
                    // nodes has older messages in another run, which only
                    // that repair routes.
                    let gap_waits = self.gap.as_ref().is_some_and(|g| g.is_pending());
                    if gap_waits {
                        if seen.first(stamp) {
                            self.live(stamp, &msg, broker);
                        }
                        tracing::debug!(?stamp, topic = %msg.topic, head = %envelope::head(&msg.payload), "repair leaves it to the gap's repair");
                        return false;
                    }
                    // What core NATS did not bring goes out as a live
                    // message would: to every session here but those a
                    // replay gave it already, and parked for those a replay
                    // runs for (which places it: its sessions may have
                    // moved here from another node, whose older messages
                    // that replay still gives). What core NATS brought and
                    // this repair held back goes out at its place.
                    if !seen.first(stamp) {
                        return match self.gap.as_mut().and_then(|g| g.reached(stamp)) {
                            Some(msg) => {
                                let n = self.route_live(stamp, &msg, broker);
                                tracing::debug!(?stamp, topic = %msg.topic, head = %envelope::head(&msg.payload), n, "held released at its place");
                                n > 0
                            }
                            None => false,
                        };
                    }
                    let n = self.route_live(stamp, &msg, broker);
                    tracing::debug!(?stamp, topic = %msg.topic, head = %envelope::head(&msg.payload), n, "repair routes");
                    return n > 0;
                }
                let Some(r) = self.running.get_mut(&token) else {
                    return false;
                };
                let Some(clients) = &r.clients else {
                    return false;
                };
                // Not what core NATS brought, nor what the sessions hold
                // (their replicas, or a merge that came while this replay
                // was still to read it).
                let had = r.core.contains(&stamp) || r.held.contains(&stamp);
                if !had && r.replayed.insert(stamp) {
                    let (all, own_before) = clients;
                    // This node's own messages reached a session installed
                    // before they were numbered.
                    let some: HashSet<ByteString>;
                    let clients = if stamp.origin == origin {
                        some = all
                            .iter()
                            .filter(|c| own_before.get(*c).is_none_or(|b| stamp.seq <= *b))
                            .cloned()
                            .collect();
                        &some
                    } else {
                        &**all
                    };
                    let scope = Scope::Clients(clients);
                    let n = broker.route_from_cluster(&msg, scope, (stamp.origin, stamp.seq));
                    tracing::debug!(?stamp, topic = %msg.topic, head = %envelope::head(&msg.payload), routed = n, "replayed");
                    return n > 0;
                }
                tracing::debug!(?stamp, topic = %msg.topic, head = %envelope::head(&msg.payload), "not replayed: core NATS brought it, or the session holds it");
            }
            ReplayCommand::ParkLocal(stamp, msg, sessions) => {
                // Parked by the replays running for them; the others'
                // now (their replay ended meanwhile: in order still).
                let mut rest: HashSet<ByteString> = (*sessions).clone();
                for r in self.running.values_mut() {
                    let Some((clients, _)) = r.clients.clone() else {
                        continue;
                    };
                    // Parked by one replay per session: a replay some of
                    // whose sessions another one parked it for already
                    // leaves it (delivered now), or they would get it twice.
                    if !clients.iter().all(|c| rest.contains(c)) {
                        continue;
                    }
                    // (A replay past its place in transit lets it go now.)
                    let passed = r.passed_own(stamp.seq);
                    let parked =
                        !passed && !r.replayed.contains(&stamp) && r.park(stamp, &msg, broker);
                    self.low_dirty |= parked && r.lowest(stamp);
                    if r.replayed.contains(&stamp) || parked {
                        for c in clients.iter() {
                            rest.remove(c);
                        }
                    }
                }
                tracing::debug!(?stamp, topic = %msg.topic, head = %envelope::head(&msg.payload), rest = ?rest, "park local");
                if !rest.is_empty() {
                    let scope = Scope::Clients(&rest);
                    return broker.route_from_cluster(&msg, scope, (stamp.origin, stamp.seq)) > 0;
                }
            }
            ReplayCommand::Repair { token, only } => {
                match &mut self.gap {
                    // The same repair tried again holds on (its next try
                    // reads what the failed one did not reach).
                    Some(g) if g.is_for(token) => {}
                    // The repair a hold waits for takes it over (this
                    // node's gap's, or the run's that asked for it).
                    Some(g) if g.pending_for_run(only) => g.taken_by(token),
                    // This node's gap's repair, while held for another
                    // run's: it holds every run's messages now.
                    Some(g) if g.is_pending() && only.is_none() => {
                        g.widen();
                        g.taken_by(token);
                    }
                    // Another run's: the hold waits for its own.
                    Some(g) if g.is_pending() => {}
                    _ => {
                        self.release_gap(broker);
                        self.gap = Some(crate::gap::Hold::new(token, only));
                    }
                }
                self.running.insert(token, Running::new(None));
            }
            ReplayCommand::GapBegins => self.begin_gap(),
            ReplayCommand::HoldLocal(stamp, msg) => {
                self.live(stamp, &msg, broker);
                if let (Some(inner), Some(p)) = (&self.inner, &msg.publisher) {
                    inner.arrivals.taken(p);
                }
            }
            ReplayCommand::GapEnds(token, done) => {
                let mut released = 0;
                if self.gap.as_ref().is_some_and(|g| g.is_for(token)) {
                    released = self.release_gap(broker);
                    self.gap = None;
                    tracing::debug!(
                        deliveries = released,
                        "live messages held back during a repair delivered"
                    );
                }
                let _ = done.send(());
                return released > 0;
            }
            ReplayCommand::Reached(token, stamp, have) => {
                if have {
                    if let Some(g) = self.gap.as_mut().filter(|g| g.is_for(token)) {
                        if g.reached(stamp).is_some() {
                            tracing::debug!(?stamp, "a held copy of a withdrawn message dropped");
                        }
                    }
                }
                let own = stamp.origin == origin;
                return self
                    .running
                    .get_mut(&token)
                    .is_some_and(|r| r.reached(stamp, own, have, broker) > 0);
            }
            ReplayCommand::Covers(token, high, held, from_ms) => {
                if let Some(r) = self.running.get_mut(&token) {
                    self.low_dirty = true;
                    r.covered = high;
                    r.covered_from_ms = Some(from_ms);
                    r.held
                        .extend(held.into_iter().map(|(origin, seq)| Stamp { origin, seq }));
                }
            }
            ReplayCommand::Merge(client, records, done) => {
                let _ = done.send(self.merge(&client, records));
            }
            ReplayCommand::Barrier(done) => {
                let _ = done.send(());
            }
            ReplayCommand::End(token, done) => {
                self.low_dirty = true;
                let mut routed = false;
                if let Some(mut r) = self.running.remove(&token) {
                    let unparked = r.unpark(broker);
                    if unparked > 0 {
                        tracing::debug!(
                            messages = unparked,
                            "live messages parked during a replay delivered"
                        );
                        routed = true;
                    }
                    let keep =
                        !(r.replayed.is_empty() && r.held.is_empty() && r.covered.is_empty());
                    if r.clients.is_some() && keep {
                        r.core = HashSet::new();
                        self.ended.push_back((Instant::now(), r));
                        self.bound_ended(ENDED_STAMPS);
                    }
                }
                let _ = done.send(());
                return routed;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dedup::Seen;

    fn clients(ids: &[&str]) -> crate::shared::ReplayClients {
        let ids = ids.iter().map(|c| ByteString::from(*c)).collect();
        (Arc::new(ids), Arc::new(HashMap::new()))
    }

    #[test]
    fn a_merge_leaves_out_what_a_replay_gave_the_session() {
        let s = |seq| Stamp { origin: 9, seq };
        let mut replays = Replays::default();
        let mut gave_a = Running::new(Some(clients(&["a"])));
        gave_a.replayed.insert(s(1));
        replays.ended.push_back((Instant::now(), gave_a));
        let mut gave_b = Running::new(Some(clients(&["b"])));
        gave_b.replayed.insert(s(2));
        replays.ended.push_back((Instant::now(), gave_b));
        replays
            .running
            .insert(7, Running::new(Some(clients(&["a"]))));
        replays
            .running
            .insert(8, Running::new(Some(clients(&["b"]))));
        let m = Bytes::from_static(b"m");
        let records = vec![(m.clone(), Some(s(1))), (m.clone(), Some(s(2))), (m, None)];
        // No broker in this test: only the one the session had counts.
        assert_eq!(replays.merge("a", records), 1);
        // The replay running for "a" does not give it the merged one again;
        // the one for "b" is not told.
        assert!(replays.running[&7].had(s(2)));
        assert!(!replays.running[&7].had(s(1)));
        assert!(!replays.running[&8].held.contains(&s(2)));
    }

    /// A broker with the default configuration and no store.
    fn broker() -> starling_broker::BrokerState {
        let auth = Arc::new(starling_broker::auth::FileAuthenticator {
            allow_anonymous: true,
            passwords: None,
        });
        starling_broker::BrokerState::new(starling_broker::Config::default(), auth, None)
    }

    /// Seen in a partition run: the replay for a rebuilt session kept
    /// failing (JetStream unavailable) until after the cut node merged its
    /// early messages into the session; the replay then gave them again.
    #[test]
    fn a_replay_does_not_give_what_a_merge_gave_while_it_ran() {
        let s = |seq| Stamp { origin: 9, seq };
        let broker = broker();
        let mut seen = Seen::default();
        let mut replays = Replays::default();
        let start = ReplayCommand::Start(7, Some(clients(&["a"])));
        replays.serve(&broker, &mut seen, 1, start);
        let m = Bytes::from_static(b"m");
        replays.merge("a", vec![(m, Some(s(1)))]);
        let msg = Arc::new(starling_broker::message::Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"p"),
            qos: starling_codec::QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
        });
        replays.serve(
            &broker,
            &mut seen,
            1,
            ReplayCommand::Message(7, s(1), msg.clone()),
        );
        assert!(!replays.running[&7].replayed.contains(&s(1)), "given again");
        replays.serve(&broker, &mut seen, 1, ReplayCommand::Message(7, s(2), msg));
        assert!(replays.running[&7].replayed.contains(&s(2)));
    }

    /// While a replay to sessions installed here runs, the node's receipt
    /// claims nothing it may still give them: before it said what they
    /// had, nothing at all; then, per run, no more than they had, nothing
    /// of runs they never had, and complete only from where it reads.
    /// Once it ends, the receipt claims what the node stored again. A
    /// repair (no sessions) leaves the receipt alone.
    #[test]
    fn a_receipt_claims_nothing_a_running_replay_may_still_give() {
        let broker = broker();
        let mut seen = Seen::default();
        let mut replays = Replays::default();
        replays.serve(&broker, &mut seen, 1, ReplayCommand::Start(3, None));
        assert_eq!(replays.owed(), crate::backlog::Owed::default(), "a repair");
        replays.serve(
            &broker,
            &mut seen,
            1,
            ReplayCommand::Start(7, Some(clients(&["a"]))),
        );
        let owed = replays.owed();
        assert!(owed.unknown);
        assert_eq!((owed.claim(9, 500), owed.claim(4, 80)), (0, 0));
        let covers = ReplayCommand::Covers(7, HashMap::from([(9, 100)]), vec![], 5_000);
        replays.serve(&broker, &mut seen, 1, covers);
        let owed = replays.owed();
        assert!(!owed.unknown);
        assert_eq!(owed.from_ms, Some(5_000));
        assert_eq!(owed.claim(9, 500), 100, "no more than the sessions had");
        assert_eq!(owed.claim(9, 60), 60);
        assert_eq!(owed.claim(4, 80), 0, "a run the sessions never had");
        let (done, _) = tokio::sync::oneshot::channel();
        replays.serve(&broker, &mut seen, 1, ReplayCommand::End(7, done));
        let owed = replays.owed();
        assert_eq!((owed.claim(9, 500), owed.claim(4, 80)), (500, 80));
        assert_eq!(owed.from_ms, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_merge_after_a_long_cut_still_leaves_out_what_a_replay_gave() {
        let s = |seq| Stamp { origin: 9, seq };
        let mut replays = Replays::default();
        let mut gave = Running::new(Some(clients(&["a"])));
        gave.replayed.insert(s(1));
        replays.ended.push_back((Instant::now(), gave));
        let m = Bytes::from_static(b"m");
        // Past transit's age the replay no longer filters core copies, but
        // a merge still leaves out what it gave.
        tokio::time::advance(ENDED_KEPT * 5).await;
        assert_eq!(replays.merge("a", vec![(m.clone(), Some(s(1)))]), 1);
        assert!(
            replays.ended.is_empty(),
            "core copies: the replay is forgotten"
        );
        assert_eq!(replays.gave.len(), 1);
        // Past an hour, it is forgotten for merges too.
        tokio::time::advance(GAVE_KEPT).await;
        assert_eq!(replays.merge("a", vec![(m, Some(s(1)))]), 0);
        assert!(replays.gave.is_empty() && replays.ended.is_empty());
    }

    #[test]
    fn the_stamps_kept_for_merges_and_lately_are_bounded_together() {
        let mut replays = Replays::default();
        for origin in 0..3u64 {
            let mut r = Running::new(Some(clients(&["a"])));
            for seq in 0..5 {
                r.replayed.insert(Stamp { origin, seq });
            }
            replays.gave.push_back((Instant::now(), r));
        }
        replays.bound_ended(10);
        assert_eq!(replays.gave.len(), 2, "the oldest dropped");
        assert_eq!(
            replays.gave[0].1.replayed.iter().next().map(|s| s.origin),
            Some(1)
        );
    }
}

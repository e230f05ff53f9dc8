//! Interest routing: the NATS subscriptions for this node's MQTT
//! subscriptions (one per distinct filter, counted by [`crate::NatsCluster`]),
//! and the one task that routes what they bring to this node's subscribers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::{abortable, AbortHandle, Abortable, SelectAll};
use futures_util::StreamExt;
use starling_broker::{BrokerState, Scope};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::dedup::Seen;
use crate::replays::Replays;
use crate::shared::ReplayCommand;
use crate::shared::{Command, Inner};
use crate::{envelope, keys, probe, subject};

/// A NATS subscription of this node: plain, or serving one shared group;
/// aborting it ends (and unsubscribes) its stream.
struct Route {
    share: Option<Arc<str>>,
    stop: AbortHandle,
}

/// A subscription's messages, tagged with its key.
type Tagged = Abortable<
    futures_util::stream::Map<
        async_nats::Subscriber,
        Box<dyn FnMut(async_nats::Message) -> (u64, async_nats::Message) + Send>,
    >,
>;

fn tagged(key: u64, subscriber: async_nats::Subscriber) -> (Tagged, AbortHandle) {
    let tag: Box<dyn FnMut(async_nats::Message) -> (u64, async_nats::Message) + Send> =
        Box::new(move |m| (key, m));
    abortable(subscriber.map(tag))
}

/// Runs until the broker is gone.
pub async fn run(
    inner: Arc<Inner>,
    queues: async_nats::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    (mut replay_rx, mut local_rx): (
        mpsc::Receiver<ReplayCommand>,
        mpsc::UnboundedReceiver<ReplayCommand>,
    ),
) {
    // A `SelectAll` wakes on the subscription that has a message (a
    // `StreamMap` polls every one of them for each message: with many
    // distinct filters routing crawled). Removal aborts the stream.
    let mut subs: SelectAll<Tagged> = SelectAll::new();
    let mut routes: HashMap<u64, Route> = HashMap::new();
    let mut by_filter: HashMap<String, Vec<u64>> = HashMap::new();
    let mut next_key = 0u64;
    let mut seen = Seen::default();
    let mut ready = Readiness::default();
    let mut replays = Replays::of(inner.clone());
    // A new NATS connection is a gap (what came meanwhile was lost): the
    // first message after it begins holding for its repair, sooner than
    // the connection watcher can tell.
    let stats = inner.client.statistics();
    let mut connects = stats.connects.load(Ordering::Relaxed);
    let mut slow_seen = 0u64;
    let (mut holding, mut checked) = crate::late::Holding::start(inner.clone());
    let mut check = tokio::time::interval(crate::transit::REPAIR_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Add(filter)) => {
                    let (share, inner_filter) = starling_broker_split(&filter);
                    let mut ids = Vec::new();
                    if share.is_none() {
                        ready.adds += 1;
                    }
                    for subj in subject::of_filter(inner_filter) {
                        if share.is_none() {
                            ready.last_subject = Some(subj.clone());
                        }
                        let made = match share {
                            Some(_) => queues.queue_subscribe(subj, keys::queue(&filter)).await,
                            None => inner.client.subscribe(subj).await,
                        };
                        match made {
                            Ok(s) => {
                                next_key += 1;
                                let (stream, stop) = tagged(next_key, s);
                                subs.push(stream);
                                routes.insert(next_key, Route {
                                    share: share.map(|_| Arc::from(filter.as_str())),
                                    stop,
                                });
                                ids.push(next_key);
                            }
                            Err(e) => tracing::warn!(%filter, "NATS subscription failed: {e}"),
                        }
                    }
                    by_filter.insert(filter, ids);
                }
                Some(Command::Remove(filter)) => {
                    for id in by_filter.remove(&filter).unwrap_or_default() {
                        // The aborted stream ends; dropping its subscriber
                        // unsubscribes it.
                        if let Some(route) = routes.remove(&id) {
                            route.stop.abort();
                        }
                    }
                }
                Some(Command::Ready(done)) => ready.wait(&inner, done),
                Some(Command::Probed(seq)) => ready.probed(&inner, seq),
                Some(Command::Cut(client_id, done)) => {
                    let Some(broker) = inner.broker() else { return };
                    // The messages parked or held for it already sent here
                    // are served first, and what a repair holds back (in
                    // `seen`) goes out: in the session's queue before it
                    // leaves the index.
                    while let Ok(command) = local_rx.try_recv() {
                        taken_local(&inner, &command);
                        serve_replay(&inner, &broker, &mut seen, &mut replays, command);
                    }
                    while let Ok(command) = replay_rx.try_recv() {
                        serve_replay(&inner, &broker, &mut seen, &mut replays, command);
                    }
                    replays.release_gap(&broker);
                    replays.publish_low();
                    // This node's own messages are routed on their
                    // publishers' tasks: their number is read as the
                    // session leaves the index.
                    let cut = broker.leave_index(&client_id).map(|own| {
                        let mut high = seen.highs();
                        for (o, s) in replays.replayed_highs(&client_id) {
                            let h = high.entry(o).or_default();
                            *h = (*h).max(s);
                        }
                        high.insert(inner.origin, own);
                        high
                    });
                    if cut.is_some() {
                        replays.leave(&client_id);
                        set_parking(&inner, replays.parking_clients());
                    }
                    let _ = done.send(cut);
                }
                Some(Command::HoldFor(origin, done)) => {
                    replays.hold_for(origin);
                    let _ = done.send(());
                }
                Some(Command::Flush(done)) => {
                    let ok = inner.client.flush().await.is_ok() && queues.flush().await.is_ok();
                    let _ = done.send(ok);
                }
            },
            _ = check.tick() => {
                if let Some(broker) = inner.broker() {
                    replays.expire_gap(&broker);
                    replays.publish_low();
                    inner.arrivals.set_open(replays.gap_open());
                }
                // NATS dropped messages for a subscription here: read the
                // QoS 1/2 ones again from transit.
                let slow = inner.counters.slow.load(Ordering::Relaxed);
                if slow != slow_seen {
                    let from = starling_broker::store::unix_ms()
                        .saturating_sub(crate::transit::REPAIR_BACK.as_millis() as u64);
                    if crate::transit::repair(&inner, from, None, false) {
                        slow_seen = slow;
                    }
                }
            }
            Some(command) = local_rx.recv() => {
                let Some(broker) = inner.broker() else { return };
                taken_local(&inner, &command);
                serve_replay(&inner, &broker, &mut seen, &mut replays, command);
            }
            Some(command) = replay_rx.recv() => {
                let Some(broker) = inner.broker() else { return };
                serve_replay(&inner, &broker, &mut seen, &mut replays, command);
            }
            Some(first) = subs.next(), if !subs.is_empty() => {
                let Some(broker) = inner.broker() else { return };
                // Everything the subscriptions hold, each node's messages
                // in the order it sent them (see `wire`).
                for (id, msg) in crate::wire::batch(first, &mut subs) {
                    if let Some(value) = msg.headers.as_ref().and_then(|h| h.get(probe::HEADER)) {
                        probe::arrived(&inner, value.as_str());
                        continue;
                    }
                    let c = stats.connects.load(Ordering::Relaxed);
                    if c != connects {
                        if connects > 0 {
                            replays.begin_gap();
                            inner.arrivals.set_open(true);
                        }
                        connects = c;
                    }
                    let share = routes.get(&id).and_then(|r| r.share.clone());
                    if let Some(payload) = holding.take(share.clone(), msg.payload) {
                        deliver(&inner, &broker, &mut seen, &mut replays, share.as_deref(), payload);
                        replays.publish_low();
                    }
                }
            }
            Some(copy) = checked.recv() => {
                let Some(broker) = inner.broker() else { return };
                holding.returned(&copy);
                if !copy.withdrawn {
                    let share = copy.share.as_deref();
                    deliver(&inner, &broker, &mut seen, &mut replays, share, copy.payload);
                    replays.publish_low();
                }
            }
        }
    }
}

/// A command from [`Inner::local`] is taken: its message no longer counts
/// in [`Inner::local_bytes`].
fn taken_local(inner: &Inner, command: &ReplayCommand) {
    if let ReplayCommand::ParkLocal(_, msg, _) | ReplayCommand::HoldLocal(_, msg) = command {
        inner
            .local_bytes
            .fetch_sub(crate::gap::cost(msg), Ordering::Relaxed);
    }
}

/// Serves one replay command in the routing task.
fn serve_replay(
    inner: &Arc<Inner>,
    broker: &starling_broker::BrokerState,
    seen: &mut Seen,
    replays: &mut Replays,
    command: ReplayCommand,
) {
    let reshaped = matches!(command, ReplayCommand::Start(..) | ReplayCommand::End(..));
    if replays.serve(broker, seen, inner.origin, command) {
        inner.counters.replayed.fetch_add(1, Ordering::Relaxed);
    }
    replays.publish_low();
    // After a Start, before its sessions are installed (its sender waits
    // for a barrier after it); after an End, once its parked messages were
    // delivered.
    if reshaped {
        set_parking(inner, replays.parking_clients());
    }
    inner.arrivals.set_open(replays.gap_open());
}

/// Which interest changes the other nodes' servers are known to have, and
/// the SUBACKs waiting for more (see [`probe`]).
#[derive(Default)]
struct Readiness {
    /// Plain subscriptions made so far.
    adds: u64,
    /// Of them, those known to have reached the other nodes.
    confirmed: u64,
    /// The NATS subject of the newest.
    last_subject: Option<String>,
    probing: bool,
    waiters: Vec<(u64, tokio::sync::oneshot::Sender<()>)>,
}

impl Readiness {
    fn wait(&mut self, inner: &Arc<Inner>, done: tokio::sync::oneshot::Sender<()>) {
        if self.confirmed >= self.adds {
            let _ = done.send(());
            return;
        }
        self.waiters.push((self.adds, done));
        self.probe(inner);
    }

    fn probed(&mut self, inner: &Arc<Inner>, seq: u64) {
        self.probing = false;
        self.confirmed = self.confirmed.max(seq);
        let confirmed = self.confirmed;
        for (_, done) in self
            .waiters
            .extract_if(.., |(target, _)| *target <= confirmed)
        {
            let _ = done.send(());
        }
        if !self.waiters.is_empty() {
            self.probe(inner);
        }
    }

    fn probe(&mut self, inner: &Arc<Inner>) {
        if self.probing {
            return;
        }
        match self.last_subject.clone() {
            Some(subject) => {
                self.probing = true;
                probe::start(inner.clone(), subject, self.adds);
            }
            None => self.probed(inner, self.adds),
        }
    }
}

/// Tells the publish path which sessions' messages are parked now.
fn set_parking(
    inner: &Inner,
    sessions: Option<Arc<std::collections::HashSet<starling_codec::ByteString>>>,
) {
    let any = sessions.is_some();
    *inner.parking.write() = sessions;
    inner.parking_any.store(any, Ordering::Relaxed);
}

/// Routes one message from another node to this node's subscribers.
fn deliver(
    inner: &Inner,
    broker: &BrokerState,
    seen: &mut Seen,
    replays: &mut Replays,
    share: Option<&str>,
    payload: bytes::Bytes,
) {
    let counters = &inner.counters;
    let (stamp, msg) = match envelope::decode(payload, Instant::now()) {
        Ok(m) => m,
        Err(e) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("a NATS message was not a Starling message: {e}");
            return;
        }
    };
    match share {
        Some(key) => {
            broker.route_from_cluster(&msg, Scope::Group(key), (stamp.origin, stamp.seq));
        }
        None => {
            if !seen.first(stamp) {
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            replays.live(stamp, &msg, broker);
        }
    }
    counters.received.fetch_add(1, Ordering::Relaxed);
}

/// `$share/group/filter` as (group, filter); a plain filter as (None, it).
fn starling_broker_split(filter: &str) -> (Option<&str>, &str) {
    match starling_codec::topic::parse_shared(filter) {
        Ok(Some(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}

//! Messages in transit, so that no node's death loses an acknowledged one.
//!
//! Core NATS carries a message to the nodes that want it, and keeps
//! nothing: a QoS 1/2 message acknowledged to its publisher would be lost if
//! the subscriber's node died before storing it, or while no node held its
//! session (between the death and the session's rebuild). So every QoS 1/2
//! message is also appended to one replicated stream, [`STREAM`], kept for
//! [`AGE`], and its publisher is acknowledged once JetStream has it.
//!
//! Each node says which messages it has stored: its *receipt*, which its
//! replicating store writes to a bucket with each batch that stored
//! messages from other nodes (after them, so it never counts one that is
//! not replicated), holds per origin (a node's run) the newest stamp stored
//! there. A node that rebuilds a dead node's sessions replays the transit
//! messages from shortly before that node's last receipt whose stamps are
//! newer than it, to those sessions only ([`replay`]), skipping what reached
//! them meanwhile through core NATS.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use starling_codec::ByteString;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::envelope::{self, Stamp};
use crate::keys;
use crate::receipt::Receipt;
use crate::shared::{Command, Inner, ReplayCommand, ReplayRequest};

/// The stream of messages in transit.
pub const STREAM: &str = "STARLING_TRANSIT";
/// How long a message stays in transit: longer than a node's death takes
/// to be noticed and its sessions rebuilt.
pub const AGE: Duration = crate::backlog::GAP_KEPT;
/// The stream's size at most (the oldest messages go first past it).
const MAX_BYTES: i64 = 1 << 30;
/// How long before a dead node's last receipt its replay starts (what it
/// routed just before may not be in the receipt; clocks differ a little).
const MARGIN: Duration = Duration::from_secs(5);
/// How long a read of transit goes on after it reached the stream's last
/// message as it began: an append that was on its way when this node's
/// interest reached the other nodes.
const TAIL: Duration = Duration::from_millis(300);
/// How long a message may still be on its way to a node through core NATS
/// (see [`crate::shared::ReplayRequest::live`]).
pub const ON_THE_WAY: Duration = Duration::from_secs(2);
/// How often the routing task checks for messages NATS dropped.
pub const REPAIR_CHECK: Duration = Duration::from_millis(250);
/// How far before the check that noticed a drop its repair reads.
pub const REPAIR_BACK: Duration = Duration::from_secs(2);
/// Messages one replay reads at most.
const REPLAY_LIMIT: usize = 2_000_000;
/// Replays at once at most: each reads the whole transit window and
/// records what core NATS brings, so a crowd of clients coming back after a
/// node's death waits in line instead of multiplying that cost.
const MAX_REPLAYS: usize = 8;

/// The transit subject of a message subject.
pub fn subject(message_subject: &str) -> String {
    format!("starling.t.{message_subject}")
}

/// Opens (creating if needed) the transit stream.
pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<(), async_nats::Error> {
    let config = stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["starling.t.>".to_string()],
        max_age: AGE,
        max_bytes: MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    js.get_or_create_stream(config).await?;
    Ok(())
}

/// Serves replay requests, each on its own task, [`MAX_REPLAYS`] at once.
pub async fn serve_replays(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<ReplayRequest>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_REPLAYS));
    while let Some(request) = rx.recv().await {
        if inner.broker().is_none() {
            return;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            replay_and_report(inner, request).await;
            drop(slot);
        });
    }
}

/// Times a replay is tried (a second apart) before an origin that does not
/// say what it withdrew no longer fails its read (and a repair's tries in
/// all).
const REPLAY_TRIES: usize = 15;
/// Times a silent node's repair (see `moved`) is tried.
const SILENT_TRIES: usize = 1;
/// How long a replay is tried at most: as long as transit keeps messages
/// (seen: JetStream "temporarily unavailable" for 20 s after a partition
/// healed). Its sessions do not move meanwhile: the node they would move
/// to would not know what the replay owes them (a session that moved after
/// 15 tries lost 2,443 acknowledged messages), so a client connecting
/// elsewhere is refused, and served here. The live messages for its
/// sessions stay parked (at most [`crate::running::PARK_FOR`] and
/// [`crate::running::PARK_LIMIT`]): let out before the replay read, they
/// came ahead of older ones (2,269 out of order in a partition run).
const REPLAY_FOR: Duration = AGE;

async fn replay_and_report(inner: Arc<Inner>, mut request: ReplayRequest) {
    let clients = request.clients.len();
    let ids: Vec<ByteString> = request.clients.iter().cloned().collect();
    let began = Instant::now();
    let mut replayed = Err(String::new());
    for n in 1.. {
        // From the last of the waited tries on, an origin that does not
        // say what it withdrew no longer fails a read.
        let last_try = n >= REPLAY_TRIES;
        // What an earlier try handed the sessions, they hold now.
        let mut handed = HashSet::new();
        replayed = replay(&inner, &mut request, &mut handed, last_try).await;
        request.held.extend(handed);
        // A session that ended meanwhile is left out.
        let Some(broker) = inner.broker() else { break };
        request.clients.retain(|id| broker.session(id).is_some());
        if replayed.is_ok() || request.clients.is_empty() || began.elapsed() >= REPLAY_FOR {
            break;
        }
        tracing::info!(
            sessions = clients,
            "replay not done, trying again: {:?}",
            replayed
        );
        if n == REPLAY_TRIES {
            tracing::warn!(
                sessions = clients,
                "a replay still cannot read transit: tried again for at most {REPLAY_FOR:?}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    end(&inner.replays, request.token).await;
    release(&inner, &ids);
    match replayed {
        Ok(n) => tracing::info!(
            sessions = clients,
            messages = n,
            "messages in transit replayed to rebuilt sessions"
        ),
        Err(e) => tracing::warn!(
            sessions = clients,
            "messages in transit not replayed (some acknowledged messages may be missing): {e}"
        ),
    }
}

/// The takeovers of `ids` no longer wait for a replay of theirs (one
/// fewer is running).
fn release(inner: &Inner, ids: &[ByteString]) {
    {
        let mut replaying = inner.replaying.lock();
        for id in ids {
            if let Some(n) = replaying.get_mut(&**id) {
                *n -= 1;
                if *n == 0 {
                    replaying.remove(&**id);
                }
            }
        }
    }
    inner.replay_done.notify_waiters();
}

/// NATS dropped messages for this node's subscriptions (a slow consumer):
/// the QoS 1/2 ones among those in transit since `from_ms` that this node
/// has not routed are routed now. One repair at a time: false when one
/// is in progress (or there is no transit stream yet).
/// `only`: the messages of that run alone (another node's, whose core
/// copies may have been lost while it was away from NATS). `gap`: a repair
/// after a gap, which holds back the live messages core NATS brings
/// meanwhile (see [`crate::gap`]; after a slow consumer's drops, order is
/// lost already and nothing is held).
pub fn repair(inner: &Arc<Inner>, from_ms: u64, only: Option<u64>, gap: bool) -> bool {
    start_repair(inner, from_ms, (only, None), gap, None)
}

/// Repairs run `run`, of a node that does not answer, from `from_ms` (see
/// `moved`): its messages this node did not receive are routed here, as
/// [`repair`] does, up to its first append that landed late, which only
/// that node can say it withdrew (its own repair, once it is back, places
/// it and what follows). `done` says whether it read transit; `false`
/// (and nothing done) while another repair runs here.
pub fn repair_silent(
    inner: &Arc<Inner>,
    from_ms: u64,
    run: u64,
    done: oneshot::Sender<bool>,
) -> bool {
    start_repair(inner, from_ms, (Some(run), Some(run)), false, Some(done))
}

/// [`repair`] of the runs `only` (all: `None`), that of a silent node
/// `.1` not asked what it withdrew; `done` told when it ends.
fn start_repair(
    inner: &Arc<Inner>,
    from_ms: u64,
    (only, silent): (Option<u64>, Option<u64>),
    gap: bool,
    done: Option<oneshot::Sender<bool>>,
) -> bool {
    if inner.transit.get().is_none() || inner.repairing.swap(true, Ordering::AcqRel) {
        return false;
    }
    if gap {
        inner.replica.hold.lock().note_gap(from_ms);
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        // JetStream may be electing leaders (the reason NATS dropped them):
        // tried again, a second apart (what was routed is not routed twice).
        // One token for all tries: a gap's hold lasts until the last one.
        let token: u64 = rand::random();
        let mut repaired = Err(String::new());
        // (A silent node's repair is waited for by CONNACKs: fewer tries.)
        let tries = match silent {
            Some(_) => SILENT_TRIES,
            None => REPLAY_TRIES,
        };
        for n in 1..=tries {
            let last_try = n == REPLAY_TRIES;
            repaired = repair_from(&inner, token, from_ms, (only, silent), gap, last_try).await;
            if repaired.is_ok() || inner.broker().is_none() || n == tries {
                break;
            }
            if let Err(e) = &repaired {
                tracing::info!(try_ = n, "a repair's read failed (tried again): {e}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if gap {
            let (done, served) = oneshot::channel();
            let ends = ReplayCommand::GapEnds(token, done);
            if inner.replays.send(ends).await.is_ok() {
                let _ = served.await;
            }
        }
        // Transit keeps messages for `AGE`: repairs that failed for longer
        // than that can no longer bring what the gap missed, and trying
        // again for good would keep this node's sessions from moving
        // (their takeovers wait for the repair).
        let gone_by = gap && failing_for(&inner.gap_failing_since, repaired.is_ok()) > AGE;
        if gap && repaired.is_err() && gone_by {
            // A later gap's repairs are timed afresh.
            *inner.gap_failing_since.lock() = None;
            tracing::error!(
                from_ms,
                "a gap's repair failed for as long as transit keeps messages: given up (what NATS \
                 did not bring this node meanwhile is missing from its sessions)"
            );
        } else if gap && repaired.is_err() {
            // Due again (see `Inner::gap_unrepaired`), before a takeover
            // can see no repair running.
            inner.repair_due.store(true, Ordering::Release);
            let _ = inner
                .gap_unrepaired
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                    Some(if f == 0 { from_ms } else { f.min(from_ms) })
                });
        }
        inner.repairing.store(false, Ordering::Release);
        if let Some(done) = done {
            let _ = done.send(repaired.is_ok());
        }
        match (repaired, silent) {
            (Ok(n), None) => tracing::info!(
                messages = n,
                "messages NATS dropped for this node read again from transit"
            ),
            (Err(e), None) if gap && !gone_by => tracing::warn!(
                "a gap's repair failed every try (due again; sessions are not handed over \
                 until it is done): {e}"
            ),
            (Err(e), None) => {
                tracing::warn!("messages NATS dropped for this node not repaired: {e}")
            }
            (Ok(n), Some(run)) => {
                tracing::info!(run, messages = n, "a silent node's run read from transit")
            }
            // (Its own repair, once it is back, still places them.)
            (Err(e), Some(run)) => {
                tracing::info!(run, "a silent node's run not read from transit: {e}")
            }
        }
    });
    true
}

/// How long this node's gap repairs have failed, one after another, once
/// this one `succeeded` or not (zero after a success); `since` is
/// [`Inner::gap_failing_since`].
fn failing_for(since: &parking_lot::Mutex<Option<Instant>>, succeeded: bool) -> Duration {
    let mut since = since.lock();
    if succeeded {
        *since = None;
        return Duration::ZERO;
    }
    since.get_or_insert_with(Instant::now).elapsed()
}

async fn repair_from(
    inner: &Arc<Inner>,
    token: u64,
    from_ms: u64,
    (only, silent): (Option<u64>, Option<u64>),
    gap: bool,
    last_try: bool,
) -> Result<usize, String> {
    let Some(js) = inner.transit.get() else {
        return Err("the transit stream is not open".into());
    };
    let routes = &inner.replays;
    let start = match gap {
        true => ReplayCommand::Repair { token, only },
        false => ReplayCommand::Start(token, None),
    };
    routes
        .send(start)
        .await
        .map_err(|_| "the routing task is gone")?;
    // Everything but this node's own messages (never brought by core NATS).
    let mine = Receipt {
        own: inner.origin,
        high: HashMap::from([(inner.origin, u64::MAX)]),
        ..Receipt::default()
    };
    let none = HashSet::new();
    let skip = Skip {
        receipt: &mine,
        own_before: 0,
        held: &none,
        only,
        unknown_from_ms: None,
        last_try,
        gone: silent,
        ask_gone: silent.is_none(),
        own_places: false,
        settle: gap && only.is_none(),
    };
    let read = read_since(inner, js, from_ms, token, &skip, &mut HashSet::new()).await;
    end(routes, token).await;
    read
}

/// Ends replay `token` once the routing task has served all it was sent.
async fn end(routes: &mpsc::Sender<ReplayCommand>, token: u64) {
    let (done, served) = oneshot::channel();
    if routes.send(ReplayCommand::End(token, done)).await.is_ok() {
        let _ = served.await;
    }
}

/// Waits until no replay to `client_id`'s session is in progress, at most
/// `limit` (a session handed over meanwhile would miss the rest), and none
/// parks its live messages: one begun for it that has not installed it
/// yet (a rebuild tried again while the session is here already) parks
/// them too, and a session handed over meanwhile would leave them behind
/// (seen: 255 acknowledged messages, parked while such a rebuild failed to
/// read the replica, let out after the session had moved to nobody).
/// Whether it ended.
pub async fn await_replay(inner: &Inner, client_id: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let id = ByteString::from(client_id);
    loop {
        let done = inner.replay_done.notified();
        let parked = inner
            .parking
            .read()
            .as_ref()
            .is_some_and(|p| p.contains(&id));
        if !parked && !inner.replaying.lock().contains_key(client_id) {
            return true;
        }
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            return false;
        }
    }
}

/// Replays to the rebuilt sessions the messages in transit that their dead
/// node may not have stored; returns how many were read for them.
async fn replay(
    inner: &Arc<Inner>,
    request: &mut ReplayRequest,
    handed: &mut HashSet<(u64, u64)>,
    last_try: bool,
) -> Result<usize, String> {
    let clients = Arc::new(request.clients.clone());
    let own_before = Arc::new(request.own_before.clone());
    inner
        .replays
        .send(ReplayCommand::Start(
            request.token,
            Some((clients, own_before)),
        ))
        .await
        .map_err(|_| "the routing task is gone")?;
    replay_read(inner, request.token, request, handed, last_try).await
}

/// Begins a replay for `clients` before they are installed: from the moment
/// the routing task has taken this, what core NATS brings to those of them
/// installed by then is recorded (they have it), so the replay will not
/// hand it to them again. Returns the replay's token (for
/// [`crate::owners::request_replay_from`], or [`abandon`] when no session
/// was installed).
pub async fn begin(inner: &Inner, clients: HashSet<ByteString>) -> u64 {
    let token: u64 = rand::random();
    extend(inner, token, clients).await;
    token
}

/// Replay `token` is for `clients` (all so far) from now on: sent before
/// another of them is installed.
pub async fn extend(inner: &Inner, token: u64, clients: HashSet<ByteString>) {
    let clients = Some((Arc::new(clients), Arc::default()));
    if inner
        .replays
        .send(ReplayCommand::Start(token, clients))
        .await
        .is_ok()
    {
        // Taken once a command sent after it is served.
        let (done, served) = oneshot::channel();
        if inner
            .replays
            .send(ReplayCommand::Barrier(done))
            .await
            .is_ok()
        {
            let _ = served.await;
        }
    }
}

/// Ends a replay begun for sessions none of which was installed.
pub async fn abandon(inner: &Inner, token: u64) {
    end(&inner.replays, token).await;
    // What it parked is let out: a handover waiting for that goes on.
    inner.replay_done.notify_waiters();
}

async fn replay_read(
    inner: &Arc<Inner>,
    token: u64,
    request: &mut ReplayRequest,
    handed: &mut HashSet<(u64, u64)>,
    last_try: bool,
) -> Result<usize, String> {
    let (dead, held) = (&request.dead, &request.held);
    let own_before = request.own_before.values().copied().max().unwrap_or(0);
    let Some(js) = inner.transit.get() else {
        return Err("the transit stream is not open".into());
    };
    let Some(buckets) = inner.buckets.get() else {
        return Err("the buckets are not open".into());
    };
    let receipt = match &request.receipt {
        Some(r) => r.clone(),
        None => match buckets.receipts.get(keys::node(dead)).await {
            Ok(Some(raw)) => Receipt::decode(&raw).unwrap_or_default(),
            Ok(None) => Receipt::default(),
            Err(e) => return Err(format!("the dead node's receipt could not be read: {e}")),
        },
    };
    // Kept for the next tries: the dead node may come back meanwhile and
    // write a newer receipt, which names what it stored since, not what
    // the sessions rebuilt here have.
    request.receipt = Some(receipt.clone());
    let from_ms = if receipt.at_ms == 0 {
        starling_broker::store::unix_ms().saturating_sub(AGE.as_millis() as u64)
    } else {
        receipt.at_ms.saturating_sub(MARGIN.as_millis() as u64)
    };
    // Once the sessions' interest has reached the other nodes, what they
    // publish comes through core NATS: the replay reads up to then.
    let (ready, wait) = oneshot::channel();
    if inner.commands.send(Command::Ready(ready)).is_ok() {
        let _ = tokio::time::timeout(inner.timeout, wait).await;
    }
    tracing::debug!(
        %dead,
        receipt_at_ms = receipt.at_ms,
        high = ?receipt.high,
        from_ms,
        "replaying transit from the dead node's receipt"
    );
    let held_stamps = held.iter().copied().collect();
    let covers = ReplayCommand::Covers(token, receipt.high.clone(), held_stamps, from_ms);
    inner
        .replays
        .send(covers)
        .await
        .map_err(|_| "the routing task is gone")?;
    let unknown_from_ms = request
        .live
        .then(|| receipt.at_ms.saturating_sub(ON_THE_WAY.as_millis() as u64));
    let skip = Skip {
        receipt: &receipt,
        own_before,
        held,
        only: None,
        unknown_from_ms,
        last_try,
        gone: (!request.live).then_some(receipt.own),
        ask_gone: true,
        own_places: true,
        settle: false,
    };
    read_since(inner, js, from_ms, token, &skip, handed).await
}

/// Which transit messages a replay leaves out.
struct Skip<'a> {
    /// Only this run's messages, if set.
    only: Option<u64>,
    /// Those the dead node stored (its own included).
    receipt: &'a Receipt,
    /// This node's own after this number (routed here directly).
    own_before: u64,
    /// Those the rebuilt sessions hold.
    held: &'a HashSet<(u64, u64)>,
    /// Those of runs the receipt does not name stored before this (ms).
    unknown_from_ms: Option<u64>,
    /// The read's last try: an origin that does not say which messages it
    /// withdrew no longer fails it.
    last_try: bool,
    /// The run of the dead node whose sessions a replay rebuilds (or of a
    /// silent node whose run a repair reads).
    gone: Option<u64>,
    /// Whether that node is asked what it withdrew, for an append that
    /// landed late; if not, the read ends at such an append (it and what
    /// follows are left to that node's own repair once it is back).
    ask_gone: bool,
    /// A replay, whose sessions this node's own later messages reached
    /// live (parked): the places of those are told to the routing task.
    own_places: bool,
    /// This node's own gap repair: it waits (a little) for the stream's
    /// replicas to be current (see [`settle`]).
    settle: bool,
}

impl Skip<'_> {
    /// Whether the sessions have `stamp` (the receipt claims it, or their
    /// store holds it).
    fn have(&self, stamp: Stamp) -> bool {
        !self.receipt.missed(stamp) || self.held.contains(&(stamp.origin, stamp.seq))
    }

    fn wanted(&self, inner: &Inner, stamp: Stamp, stored_ms: u64) -> bool {
        if self.only.is_some_and(|o| o != stamp.origin) {
            return false;
        }
        if self
            .unknown_from_ms
            .is_some_and(|from| stored_ms < from && !self.receipt.high.contains_key(&stamp.origin))
        {
            return false;
        }
        let own_later = stamp.origin == inner.origin && stamp.seq > self.own_before;
        self.receipt.missed(stamp) && !own_later && !self.held.contains(&(stamp.origin, stamp.seq))
    }
}

/// How long a gap's repair waits at most for the stream's replicas to be
/// current (see [`settle`]).
const SETTLE: Duration = Duration::from_secs(3);

/// Waits, at most [`SETTLE`], until every replica of the stream that is
/// online is current. For this node's own gap repair: when a cut ends, the
/// cut server's replica may still hold entries it took alone while it led
/// cut off, never committed, and a consumer placed there reads them in
/// place of the committed ones (seen: one sequence read as two different
/// messages half a second apart), so the repair would miss a message and
/// send it out at its end, after newer ones. (Only there: a replay that
/// waited would hold up the takeovers that wait for it.)
async fn settle(stream: &mut stream::Stream) -> Result<(), String> {
    let current = |info: &stream::Info| {
        info.cluster
            .as_ref()
            .is_none_or(|c| c.replicas.iter().all(|p| p.current || p.offline))
    };
    let until = Instant::now() + SETTLE;
    while !current(stream.cached_info()) {
        if Instant::now() >= until {
            tracing::debug!("a gap's repair reads transit with replicas not current");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.info().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads the transit stream from `from_ms` and hands the messages the
/// dead node may have missed to the routing task.
async fn read_since(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    from_ms: u64,
    token: u64,
    skip: &Skip<'_>,
    handed_stamps: &mut HashSet<(u64, u64)>,
) -> Result<usize, String> {
    let began = Instant::now();
    let mut stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    if skip.settle {
        settle(&mut stream).await?;
    }
    // The leader's last message: the consumer may sit on a replica that is
    // still catching up (a server just back), whose "nothing pending"
    // would end the read early.
    let state = &stream.cached_info().state;
    let mut last = state.last_sequence;
    let nanos = i128::from(from_ms) * 1_000_000;
    let start_time =
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| e.to_string())?;
    // Nothing stored since: a consumer would wait for a first message until
    // the deadline.
    if last == 0 || state.last_timestamp < start_time {
        return Ok(0);
    }
    let config = consumer::pull::OrderedConfig {
        filter_subject: "starling.t.>".to_string(),
        deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
        ..Default::default()
    };
    let consumer = crate::placement::on_leader(&stream, config).await?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    tracing::debug!(
        token,
        took_ms = began.elapsed().as_millis() as u64,
        last,
        "transit read begins"
    );
    let deadline = Instant::now() + inner.timeout * 20;
    // Read until the stream's last message as the read began, then for
    // [`TAIL`] more (at least [`TAIL`] in all). Not until the consumer
    // says nothing is pending: its count can stay above zero with nothing
    // more to come (seen after JetStream lost quorum), and the read would
    // wait for its deadline, holding a gap's live messages all that time.
    let mut tail_end = Instant::now() + TAIL;
    let mut reached = false;
    let (mut read, mut handed) = (0usize, 0usize);
    // The highest stream sequence read, and the times the stream's last
    // one was asked again at the end of the tail (see [`longer`]).
    let (mut highest, mut asked_again) = (0u64, 0usize);
    // Per origin, the messages its node withdrew (asked once per read).
    let mut withdrawn: HashMap<u64, HashSet<u64>> = HashMap::new();
    while read < REPLAY_LIMIT {
        let until = if reached { tail_end } else { deadline };
        let next = match tokio::time::timeout_at(until, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => break,
            Err(_) if reached => {
                match longer(&mut stream, highest, &mut asked_again, inner.timeout).await {
                    Some(now_last) => {
                        (last, reached) = (now_last, false);
                        continue;
                    }
                    None => break,
                }
            }
            Err(_) => return Err("the transit stream was not read in time".into()),
        };
        read += 1;
        let sseq = next.info().map(|i| i.stream_sequence).unwrap_or(0);
        highest = highest.max(sseq);
        if !reached && sseq >= last {
            reached = true;
            tail_end = tail_end.max(Instant::now() + TAIL);
        }
        let Ok((stamp, msg)) = envelope::decode(next.payload.clone(), Instant::now()) else {
            continue;
        };
        // Twice in transit (an append tried again that had made it).
        let stored_ms = next
            .info()
            .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as u64)
            .unwrap_or(u64::MAX);
        let mut wanted = skip.wanted(inner, stamp, stored_ms);
        let mut was_withdrawn = false;
        if wanted {
            // The dead node of a replay is asked only for an append that
            // landed late (it may have been cut off, not dead: seen, a
            // publisher's message appended after the heal, which it never
            // acknowledged, replayed after the publisher's later ones).
            let gone = skip.gone == Some(stamp.origin);
            let late = gone && landed_late(&next.payload, stored_ms);
            if late && !skip.ask_gone {
                // Not known to be deliverable: the read ends there, so
                // that this one and the run's later ones keep their order
                // (that node's own repair, once it is back, places them).
                tracing::debug!(
                    ?stamp,
                    "a silent node's repair ends at an append that landed late"
                );
                break;
            } else if !withdrawn.contains_key(&stamp.origin) && (!gone || late) {
                let asked = if gone {
                    crate::withdrawn::for_late_append(inner, stamp.origin, skip.last_try).await?
                } else {
                    crate::withdrawn::for_reader(inner, stamp.origin, skip.last_try).await?
                };
                withdrawn.insert(stamp.origin, asked);
            }
            was_withdrawn = withdrawn
                .get(&stamp.origin)
                .is_some_and(|w| w.contains(&stamp.seq));
            wanted &= !was_withdrawn;
        }
        tracing::debug!(?stamp, wanted, sseq, topic = %msg.topic, head = %envelope::head(&msg.payload), "read from transit");
        let own_later = stamp.origin == inner.origin && stamp.seq > skip.own_before;
        let handed_before = handed_stamps.contains(&(stamp.origin, stamp.seq));
        if wanted && !own_later && !handed_before {
            handed += 1;
            handed_stamps.insert((stamp.origin, stamp.seq));
            inner
                .replays
                .send(ReplayCommand::Message(token, stamp, msg))
                .await
                .map_err(|_| "the routing task is gone")?;
        } else if skip.own_places || was_withdrawn {
            // (A withdrawn one is not theirs to have: a copy of it goes
            // nowhere, nor does a gap's held copy of it, which core NATS
            // brought late while the node that withdrew it did not answer.)
            let have = !own_later && (handed_before || was_withdrawn || skip.have(stamp));
            inner
                .replays
                .send(ReplayCommand::Reached(token, stamp, have))
                .await
                .map_err(|_| "the routing task is gone")?;
        }
        if reached && Instant::now() >= tail_end {
            match longer(&mut stream, highest, &mut asked_again, inner.timeout).await {
                Some(now_last) => (last, reached) = (now_last, false),
                None => break,
            }
        }
    }
    tracing::debug!(token, read, handed, "transit read ends");
    Ok(handed)
}

/// Times a read asks again for the stream's last message at its end.
const ASK_LAST_AGAIN: usize = 5;
/// How far the stream may be past the last message read when a read ends:
/// the appends of the last moment, which core NATS brings live.
const BEHIND: u64 = 256;

/// At the end of a read's tail: asks the stream again for its last
/// message, and returns it if it is more than [`BEHIND`] past `highest`,
/// the last one read (at most [`ASK_LAST_AGAIN`] times a read). The first
/// answer can be stale (a server just back from a cut can still answer for
/// a stream it no longer leads), and a consumer on a loaded machine can
/// deliver slower than the tail allows for (seen: a gap's repair that was
/// told the stream ended at 2,008 of 6,684 stopped short, and what the
/// node had missed past it was lost to it). `timeout` bounds the ask.
async fn longer(
    stream: &mut stream::Stream,
    highest: u64,
    asked: &mut usize,
    timeout: Duration,
) -> Option<u64> {
    if *asked >= ASK_LAST_AGAIN {
        return None;
    }
    *asked += 1;
    let info = tokio::time::timeout(timeout, stream.info()).await;
    let last = info.ok()?.ok()?.state.last_sequence;
    if last > highest + BEHIND {
        tracing::info!(
            read_to = highest,
            last,
            "a transit read goes on: the stream holds more than it said at the start"
        );
        return Some(last);
    }
    None
}

/// Whether JetStream stored a transit message more than [`ON_THE_WAY`]
/// after its node sent it (an append held in a cut NATS route, or tried
/// again while JetStream could not take it).
fn landed_late(payload: &[u8], stored_ms: u64) -> bool {
    envelope::header(payload)
        .and_then(|(_, sent)| sent)
        .is_some_and(|sent| stored_ms.saturating_sub(sent) > ON_THE_WAY.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gap_repairs_failing_one_after_another_are_timed_until_one_succeeds() {
        let since = parking_lot::Mutex::new(None);
        assert_eq!(failing_for(&since, false), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(failing_for(&since, false), Duration::from_secs(90));
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(
            failing_for(&since, false) > AGE,
            "given up past transit's age"
        );
        assert_eq!(failing_for(&since, true), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(failing_for(&since, false), Duration::ZERO, "counted afresh");
    }

    #[test]
    fn an_append_stored_long_after_it_was_sent_landed_late() {
        let sent = starling_broker::store::unix_ms();
        let raw = envelope::sample("t", Stamp { origin: 1, seq: 2 });
        assert!(!landed_late(&raw, sent + 500));
        assert!(landed_late(&raw, sent + 60_000));
        assert!(!landed_late(b"not an envelope", sent + 60_000));
    }
}

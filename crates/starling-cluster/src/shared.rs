//! What the node's tasks share: [`Inner`], the commands of the routing
//! task, the sessions waiting to be fetched, the counters.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use starling_broker::BrokerState;
use tokio::sync::{mpsc, oneshot};

use crate::buckets::Buckets;
use crate::envelope::Stamp;
use starling_codec::ByteString;
use std::collections::HashSet;

/// What the cluster counts.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages handed to NATS.
    pub forwarded: AtomicU64,
    /// Messages that could not be (the outbox was full).
    pub forward_dropped: AtomicU64,
    /// Messages from other nodes routed here.
    pub received: AtomicU64,
    /// Copies of one message dropped (overlapping subscriptions).
    pub duplicates: AtomicU64,
    /// NATS payloads that were not Starling envelopes.
    pub malformed: AtomicU64,
    /// QoS 1/2 messages acknowledged without a copy in transit.
    pub transit_failed: AtomicU64,
    /// QoS 1/2 messages that waited for NATS and were withdrawn: their
    /// publishers' connections ended unacknowledged meanwhile.
    pub withdrawn: AtomicU64,
    /// Core NATS copies that came late (see `late`).
    pub late: AtomicU64,
    /// Of them, those their origin had withdrawn (not routed).
    pub late_withdrawn: AtomicU64,
    /// Messages in transit replayed to sessions rebuilt here.
    pub replayed: AtomicU64,
    /// Times the NATS client dropped messages for a subscription of this
    /// node that did not keep up (slow consumer).
    pub slow: Arc<AtomicU64>,
}

/// What the routing task is asked.
pub enum Command {
    /// The first local subscription to this filter was made.
    Add(String),
    /// The last local subscription to this filter went.
    Remove(String),
    /// Answer once every earlier change has reached the NATS server.
    Flush(oneshot::Sender<bool>),
    /// Answer once every earlier change has reached the other nodes'
    /// servers (see `probe`).
    Ready(oneshot::Sender<()>),
    /// The probe for the changes up to this number is done.
    Probed(u64),
    /// Take this client's session out of the subscription index and answer
    /// with the newest message number routed so far per run (this node's
    /// own included); `None` if it was not there to leave.
    Cut(String, oneshot::Sender<Option<HashMap<u64, u64>>>),
    /// The node of run `.0` is back from a gap and asks for a repair of
    /// its run: its live messages are held from now on, until that repair
    /// takes the hold over (see `gap`). Answered once served. (Here, not
    /// with the replay commands: behind a replay's thousands of messages
    /// it was seen to take more than the asker waits.)
    HoldFor(u64, oneshot::Sender<()>),
}

/// A probe waiting for the nodes that have not answered yet.
pub struct Probe {
    pub waiting: std::collections::HashSet<String>,
    pub done: Option<oneshot::Sender<()>>,
}

/// What the broker tells of its clients' wills.
pub enum WillCommand {
    /// Connection `.1` of client `.0` has this will.
    Set(String, u64, Bytes),
    /// Connection `.1` of client `.0` ended here.
    Clear(String, u64),
    /// Answer once every change sent before is written.
    Barrier(oneshot::Sender<()>),
}

/// Sessions written out for another node, until it fetched them.
#[derive(Default)]
pub struct Outgoing {
    pub by_client: HashMap<String, (Vec<Bytes>, tokio::time::Instant)>,
}

/// A claim of a client id by this node, from its start until the client
/// is attached (or it is clearly not coming).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Reading, writing the owner, fetching a session from the old owner.
    InProgress,
    /// Another node took the id while the claim was in progress: the claim
    /// must not be answered Local.
    Lost,
    /// Won at this instant: the client attaches shortly.
    Won(tokio::time::Instant),
}

/// The state of this node that its tasks share.
pub(crate) struct Inner {
    pub node_id: String,
    pub origin: u64,
    pub seq: AtomicU64,
    pub client: async_nats::Client,
    pub broker: Weak<BrokerState>,
    pub buckets: OnceLock<Buckets>,
    pub timeout: Duration,
    pub counters: Counters,
    pub outbox: mpsc::Sender<ToNats>,
    /// Bytes of the messages in the outbox.
    pub outbox_bytes: std::sync::atomic::AtomicUsize,
    /// Stamps that will not enter the outbox (see `inorder`).
    pub skipped: crate::inorder::Skipped,
    /// JetStream, once the transit stream is open.
    pub transit: OnceLock<async_nats::jetstream::Context>,
    /// Replays, to the routing task.
    pub replays: mpsc::Sender<ReplayCommand>,
    /// What the publish path and the connection watcher tell the routing
    /// task (a message parked or held, a gap begun): never dropped because
    /// replays fill [`Inner::replays`]; bounded by [`Inner::local_bytes`].
    pub local: mpsc::UnboundedSender<ReplayCommand>,
    /// Bytes of the messages in [`Inner::local`].
    pub local_bytes: std::sync::atomic::AtomicUsize,
    /// Sessions rebuilt here, to the task that replays their messages.
    pub replay_requests: mpsc::UnboundedSender<ReplayRequest>,
    /// Client ids whose sessions wait for a replay (a handover waits for
    /// it), and the signal that one ended.
    pub replaying: Mutex<HashMap<String, usize>>,
    /// The sessions of the replays running now (set by the routing task):
    /// messages published here are parked for them too. `parking_any`
    /// says whether there are any, read first on every publish.
    pub parking: parking_lot::RwLock<Option<Arc<HashSet<ByteString>>>>,
    pub parking_any: std::sync::atomic::AtomicBool,
    pub replay_done: tokio::sync::Notify,
    /// Whether a repair of this node's routing is in progress.
    pub repairing: std::sync::atomic::AtomicBool,
    /// Whether one is due after a new NATS connection (or the end of a
    /// cut): a handover waits for it, as its cut (the newest message
    /// routed per run) would pass over what the repair brings.
    pub repair_due: std::sync::atomic::AtomicBool,
    /// Where a gap's repair that failed every try was to read from (ms
    /// since the epoch; 0: none failed): the gap is due again, since a
    /// session handed over before its repair would lack what the gap lost
    /// (seen: JetStream answering 503 for the 15 s the repair was tried,
    /// and a session handed over then lost 1,773 acknowledged messages).
    pub gap_unrepaired: std::sync::atomic::AtomicU64,
    /// Since when gap repairs have failed every try, one after another
    /// (cleared by one that succeeds): given up after transit's `AGE`.
    pub gap_failing_since: Mutex<Option<tokio::time::Instant>>,
    /// While true, nothing goes from the outbox to NATS (see
    /// `appends::forward`): from the start of a gap of this node's until
    /// the other nodes said they hold its live messages back for the
    /// repair it asks of them (`repairs::ask`), so that none of them
    /// reaches a session there before the older ones the repair brings.
    pub outbox_paused: tokio::sync::watch::Sender<bool>,
    pub retained: mpsc::Sender<(String, bytes::Bytes)>,
    pub interest: Mutex<std::collections::HashMap<String, usize>>,
    pub commands: mpsc::UnboundedSender<Command>,
    /// Client ids whose session here ends because another node took it:
    /// their release must not clear the new owner's claim.
    pub handing_over: Mutex<std::collections::HashSet<String>>,
    /// Client ids whose session an earlier claim here took, then lost the
    /// race for the id (see `owners::took_it_lately`), and when.
    pub lost_with_session: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Client ids whose takeover request is being served here: another
    /// request for one of them meanwhile is told to ask again.
    pub serving_takeover: Mutex<std::collections::HashSet<String>>,
    /// Client ids this node is claiming or just claimed: a takeover request
    /// for one of them waits for the client to attach before it is kicked.
    pub claims: Mutex<HashMap<String, Claim>>,
    /// Per persistent session held here, the revision of this node's last
    /// write of its owner: an owner read older than that is stale (a
    /// server just back answering for a moment), and nothing is given up
    /// on it (see `rejoin`).
    pub owned_at: Mutex<HashMap<String, u64>>,
    /// The clients that connected during this node's gap (see `arrivals`).
    pub arrivals: crate::arrivals::Arrivals,
    /// Sessions not here whose holder this node knows, with that node and
    /// since when: a claim here could not get the session from it, or this
    /// node handed the session over to it (see `holder`).
    pub known_holders: Mutex<HashMap<String, (String, tokio::time::Instant)>>,
    /// This node's messages withdrawn (see `withdrawn`).
    pub withdrawn: Mutex<crate::withdrawals::Withdrawn>,
    /// The wills of this node's clients, to the task that shares them.
    pub wills: mpsc::UnboundedSender<WillCommand>,
    /// The connections whose will the cluster has a copy of (client id,
    /// connection): a node cut off from NATS sends those clients away
    /// before the others take its wills (see `rejoin`).
    pub shared_wills: Mutex<std::collections::HashSet<(String, u64)>>,
    /// The connections that ended here without their will (a clean
    /// DISCONNECT) whose copy in the cluster is not removed yet: this
    /// node's sweep of its own wills, once it is back on NATS, leaves
    /// theirs alone (see `wills`).
    pub clearing: Mutex<std::collections::HashSet<(String, u64)>>,
    /// The other nodes heard beating, and when last.
    pub live: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The repairs of silent nodes' runs asked lately, by node, and
    /// whether each is over (see `moved`).
    pub moved: Mutex<HashMap<String, (tokio::time::Instant, tokio::sync::watch::Receiver<bool>)>>,
    /// The repairs of silent nodes' runs begun here lately (this node's
    /// own ask and the others' share one), by run, and how each ended.
    pub moved_repairs: MovedRepairs,
    /// When the nodes bucket last took this node's heartbeat (ms since the
    /// epoch; 0: never), and whether the node is cut from the others
    /// though connected to NATS (see `cutoff`).
    pub beat_ms: AtomicU64,
    pub isolated: std::sync::atomic::AtomicBool,
    /// Probes in flight, by token.
    pub probes: Mutex<HashMap<u64, Probe>>,
    /// The replica of this node's persistent sessions.
    pub replica: crate::replica::Replica,
    /// A replay begun when the node started, for the sessions it restored
    /// (see `rejoin`).
    pub restart_token: u64,
    /// The persistent sessions restored from the local store as the node
    /// started (the restart replay's; those claimed later are not).
    pub restored: Arc<HashSet<ByteString>>,
    /// The receipt this node's previous run left (it ended without its
    /// sessions being adopted: what it missed is replayed to them here).
    pub previous_run: Mutex<Option<crate::receipt::Receipt>>,
    /// The cut each session handed over to this node came with (see
    /// `carried`).
    pub carried: Mutex<crate::carried::Carried>,
    /// Sessions handed over, until the new owner fetched them.
    pub outgoing: Mutex<Outgoing>,
}

impl Inner {
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Connected to NATS, and through it to the other nodes.
    pub fn reachable(&self) -> bool {
        self.connected() && !self.isolated.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn broker(&self) -> Option<Arc<BrokerState>> {
        self.broker.upgrade()
    }
}

/// A message for the other nodes: its subject, its envelope, whether it is
/// kept in transit (QoS 1/2), and the sender its acknowledgement waits for
/// (if it does).
pub struct ToNats {
    pub subject: String,
    pub payload: Bytes,
    pub keep: bool,
    pub kept: Option<oneshot::Sender<()>>,
    /// Withdrawn if `kept`'s receiver is gone while the message waits for
    /// NATS (see `starling_broker::cluster::Cluster::forward`).
    pub withdrawable: bool,
    /// Its number on this node (its stamp's `seq`).
    pub seq: u64,
}

impl crate::inorder::Numbered for ToNats {
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl ToNats {
    /// Whether it is withdrawn: its publisher's connection ended before the
    /// acknowledgement, and the publisher owes it nothing or sends it again.
    pub fn withdrawn(&self) -> bool {
        self.withdrawable && self.kept.as_ref().is_some_and(|k| k.is_closed())
    }
}

/// The sessions of a replay, and per session this node's message number
/// right after it was installed.
pub type ReplayClients = (Arc<HashSet<ByteString>>, Arc<HashMap<ByteString, u64>>);

/// What the routing task is asked during a replay.
pub enum ReplayCommand {
    /// A replay to these sessions (`None`: a repair of this node's own
    /// routing after NATS dropped messages for it) begins: note the stamps core NATS brings
    /// from now on (they reached the sessions).
    Start(u64, Option<ReplayClients>),
    /// This node's gap begins (NATS lost, or cut off, or a new
    /// connection): live messages are held from now on until its repair is
    /// over (see `gap`).
    GapBegins,
    /// A message published here by a client that connected during the gap
    /// (see `arrivals`), routed to no session here yet: held with the
    /// gap's live messages, or routed now.
    HoldLocal(Stamp, Arc<starling_broker::message::Message>),
    /// The repair after a gap (`.0`, all its tries) is over: what it held
    /// goes out. Answered once served.
    GapEnds(u64, tokio::sync::oneshot::Sender<()>),
    /// A repair after a gap begins (`token`): while it runs, the live
    /// messages core NATS brings (of run `only`, or of every run) are held
    /// back until it reaches them (see `gap`).
    Repair { token: u64, only: Option<u64> },
    /// The sessions of replay `.0` had, as they were installed here, every
    /// message up to these numbers (per run; the dead node's receipt or
    /// the old node's cut): a repair does not give them those again; nor
    /// those in `.2`, which their stores held as they were rebuilt here
    /// (a repair of another node's run, later, routed one of them to a
    /// rebuilt session again: QoS 2 twice). `.3`: since when (ms since the
    /// epoch) the replay reads transit.
    Covers(u64, HashMap<u64, u64>, Vec<(u64, u64)>, u64),
    /// A message published on this node (stamp, message) that was kept
    /// from these sessions, in replays: parked for them, or theirs now.
    ParkLocal(
        Stamp,
        Arc<starling_broker::message::Message>,
        Arc<HashSet<ByteString>>,
    ),
    /// Replay `.0` read message `.1` in transit and hands it nothing: one
    /// of this node's own (it reached the sessions live), one they have
    /// (`.2`: the receipt or their store holds it), or one the replay
    /// leaves to core NATS (a run the cut does not name). If a copy of it
    /// is parked for them, it goes to them now, at its place (not if they
    /// have it). A repair sends it for the withdrawn messages it reads
    /// (`.2` true): its gap's held copy of one is dropped.
    Reached(u64, Stamp, bool),
    /// A message for the sessions of replay `.0`, unless it came meanwhile.
    Message(u64, Stamp, Arc<starling_broker::message::Message>),
    /// Messages another node had of session `.0`, which this node owns
    /// now (see `merges`): added to its queue, but those a replay gave it.
    /// Answered with how many are in the session now (added, or had).
    Merge(
        String,
        Vec<(bytes::Bytes, Option<Stamp>)>,
        tokio::sync::oneshot::Sender<usize>,
    ),
    /// Answered once every earlier command is served.
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// The replay is over.
    /// Answered once every earlier command is served (a handover waits for
    /// the replayed messages to be in the sessions' queues).
    End(u64, tokio::sync::oneshot::Sender<()>),
}

/// See [`Inner::moved_repairs`].
pub type MovedRepairs = Mutex<
    HashMap<
        u64,
        (
            tokio::time::Instant,
            tokio::sync::watch::Receiver<Option<bool>>,
        ),
    >,
>;

/// Sessions of dead node `dead` rebuilt here: asks for their replay.
#[derive(Clone)]
pub struct ReplayRequest {
    pub dead: String,
    pub clients: HashSet<ByteString>,
    /// Per session, this node's message number as its subscriptions
    /// entered the index here: its own messages after it were routed to it
    /// here, the others were not.
    pub own_before: HashMap<ByteString, u64>,
    /// The stamps of the messages the rebuilt sessions hold already.
    pub held: HashSet<(u64, u64)>,
    /// The receipt to replay from (this node's previous run's, read before
    /// this run wrote its own); `None`: the dead node's, read then.
    pub receipt: Option<crate::receipt::Receipt>,
    /// The receipt is a live handover's cut: a run it does not name sent
    /// the old node nothing the sessions wanted, so only its messages still
    /// on their way then (the last [`crate::transit::ON_THE_WAY`]) are
    /// replayed.
    pub live: bool,
    /// The replay's token, started ([`crate::transit::begin`]) before the
    /// sessions were installed: what core NATS brought them since counts.
    pub token: u64,
}

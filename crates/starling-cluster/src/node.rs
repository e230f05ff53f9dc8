//! [`NatsCluster`]: this node's part of the cluster, the broker's
//! [`Cluster`] seam implemented on NATS. Two NATS connections: one that
//! publishes, holds the plain subscriptions (without echo, so a node never
//! hears its own messages) and talks to JetStream; one for the queue groups
//! of shared subscriptions, which does hear this node's messages, so that a
//! shared group's member here competes with the other nodes' members.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use parking_lot::Mutex;
use starling_broker::cluster::{Cluster, ClusterFuture, Ownership, ReplicaLag};
use starling_broker::config::ClusterConfig;
use starling_broker::message::Message;
use starling_broker::{BrokerState, Scope};
use starling_codec::ByteString;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::buckets;
use crate::envelope::{self, Stamp};
use crate::routes;
pub use crate::shared::Counters;
use crate::shared::ToNats;
use crate::shared::{Command, Inner};
use crate::transit;
use crate::{keys, owners, retained, subject, ClusterError};

/// Messages waiting to be handed to NATS at most; past it a message is not
/// forwarded (and counted), as core NATS would drop it for a slow consumer.
const OUTBOX: usize = 65_536;
/// Bytes of messages waiting to be handed to NATS at most (they wait there
/// while NATS is away).
const OUTBOX_BYTES: usize = 256 << 20;
/// Bytes of the messages parked or held on the publish path that may wait
/// for the routing task at most (past it they go to their sessions at once,
/// in order or not).
const LOCAL_BYTES: usize = 64 << 20;

/// This node in a cluster over NATS.
pub struct NatsCluster {
    pub(crate) inner: Arc<Inner>,
}

impl NatsCluster {
    /// Hands a message parked or held on the publish path to the routing
    /// task, unless [`LOCAL_BYTES`] of them wait already (given back).
    fn to_routing(
        &self,
        command: crate::shared::ReplayCommand,
        msg: &Message,
    ) -> Result<(), crate::shared::ReplayCommand> {
        let cost = crate::gap::cost(msg);
        let inner = &self.inner;
        if inner.local_bytes.fetch_add(cost, Ordering::Relaxed) + cost > LOCAL_BYTES {
            inner.local_bytes.fetch_sub(cost, Ordering::Relaxed);
            return Err(command);
        }
        inner.local.send(command).map_err(|e| {
            inner.local_bytes.fetch_sub(cost, Ordering::Relaxed);
            e.0
        })
    }

    /// Connects to NATS for `broker` and starts the node's tasks; `replica`
    /// (the one wrapping the broker's store, if any) is linked once
    /// JetStream is ready. Returns
    /// once the connections are made (or being retried: a node starts while
    /// NATS is away, serving clean sessions, and joins when it is back).
    /// The caller installs it with [`BrokerState::set_cluster`] and
    /// [`BrokerState::announce_interest`].
    pub async fn start(
        config: &ClusterConfig,
        broker: &Arc<BrokerState>,
        replica: Option<crate::replica::Replica>,
    ) -> Result<Arc<NatsCluster>, ClusterError> {
        let counters = Counters::default();
        let client = connect(config, false, counters.slow.clone()).await?;
        let queue_client = connect(config, true, counters.slow.clone()).await?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (retained_tx, retained_rx) = mpsc::channel(OUTBOX);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (wills, wills_rx) = mpsc::unbounded_channel();
        let (replays, replays_rx) = mpsc::channel(1024);
        let (local, local_rx) = mpsc::unbounded_channel();
        let (replay_requests, replay_requests_rx) = mpsc::unbounded_channel();
        // Before any session is claimed: those restored from the store.
        let restored: Arc<std::collections::HashSet<starling_codec::ByteString>> = Arc::new(
            broker
                .persistent_ids()
                .into_iter()
                .map(|id| starling_codec::ByteString::from(id.as_str()))
                .collect(),
        );
        let inner = Arc::new(Inner {
            node_id: config.node_id.clone(),
            origin: rand::random(),
            seq: AtomicU64::new(0),
            client: client.clone(),
            broker: Arc::downgrade(broker),
            buckets: OnceLock::new(),
            timeout: Duration::from_millis(config.timeout_ms),
            counters,
            outbox,
            outbox_bytes: Default::default(),
            skipped: Default::default(),
            transit: OnceLock::new(),
            replays,
            local,
            local_bytes: Default::default(),
            replay_requests,
            replaying: Mutex::new(Default::default()),
            replay_done: tokio::sync::Notify::new(),
            parking: Default::default(),
            parking_any: Default::default(),
            repairing: Default::default(),
            repair_due: Default::default(),
            gap_unrepaired: Default::default(),
            gap_failing_since: Mutex::new(None),
            outbox_paused: tokio::sync::watch::channel(false).0,
            retained: retained_tx,
            interest: Mutex::new(Default::default()),
            commands,
            handing_over: Mutex::new(Default::default()),
            serving_takeover: Mutex::new(Default::default()),
            lost_with_session: Mutex::new(Default::default()),
            claims: Mutex::new(Default::default()),
            owned_at: Default::default(),
            arrivals: Default::default(),
            replica: replica.unwrap_or_default(),
            previous_run: Mutex::new(None),
            restart_token: rand::random(),
            restored: restored.clone(),
            live: Mutex::new(Default::default()),
            moved: Mutex::new(Default::default()),
            moved_repairs: Mutex::new(Default::default()),
            beat_ms: Default::default(),
            isolated: Default::default(),
            probes: Mutex::new(Default::default()),
            wills,
            shared_wills: Default::default(),
            clearing: Default::default(),
            known_holders: Default::default(),
            withdrawn: Default::default(),
            carried: Mutex::new(Default::default()),
            outgoing: Mutex::new(Default::default()),
        });
        // Before any message is routed: the sessions restored from the
        // store get what the previous run missed, without what core NATS
        // brings them from now on.
        let _ = inner.replays.try_send(crate::shared::ReplayCommand::Start(
            inner.restart_token,
            Some((restored, Arc::default())),
        ));
        tokio::spawn(crate::appends::forward(inner.clone(), outbox_rx));
        tokio::spawn(transit::serve_replays(inner.clone(), replay_requests_rx));
        tokio::spawn(routes::run(
            inner.clone(),
            queue_client,
            commands_rx,
            (replays_rx, local_rx),
        ));
        tokio::spawn(crate::handover::serve_takeovers(inner.clone()));
        tokio::spawn(crate::handover::serve_handovers(inner.clone()));
        tokio::spawn(crate::holder::serve(inner.clone()));
        tokio::spawn(crate::withdrawn::serve(inner.clone()));
        tokio::spawn(crate::probe::serve(inner.clone()));
        tokio::spawn(crate::rejoin::run(inner.clone()));
        tokio::spawn(crate::merges::serve(inner.clone()));
        tokio::spawn(crate::markers::run(inner.clone()));
        tokio::spawn(crate::rejoin::watch_owners(inner.clone()));
        tokio::spawn(crate::repairs::serve(inner.clone()));
        tokio::spawn(crate::moved::serve(inner.clone()));
        tokio::spawn(open_buckets(
            inner.clone(),
            config.replicas,
            retained_rx,
            wills_rx,
        ));
        tracing::info!(
            node = %config.node_id,
            nats = %config.nats.join(","),
            "joining the cluster"
        );
        Ok(Arc::new(NatsCluster { inner }))
    }

    /// Whether the buckets are open (JetStream answered at least once).
    pub fn ready(&self) -> bool {
        self.inner.buckets.get().is_some()
    }

    /// Waits until [`NatsCluster::ready`], at most `limit`; whether it is.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.ready() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.ready()
    }

    /// Whether the NATS connection is up now.
    pub fn connected(&self) -> bool {
        self.inner.connected()
    }

    /// The NATS server this node is connected to (`host:port`).
    pub fn server(&self) -> String {
        let info = self.inner.client.server_info();
        format!("{}:{}", info.host, info.port)
    }

    /// What the cluster counted.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Before the node stops (SIGTERM): hands its sessions to the other
    /// nodes. `/readyz` answers 503 and new sessions are refused (0x88), so
    /// the load balancer and the clients go elsewhere; every client is sent
    /// away (DISCONNECT 0x9C; the wills are the cluster's to publish once
    /// the node is gone) and the persistent sessions move, whole, to
    /// the node each reconnects to (the takeovers are served meanwhile),
    /// for at most `grace`. A session whose client does not come back stays
    /// here (the others adopt it if the node is not back in time).
    pub async fn drain(&self, grace: Duration) {
        let Some(broker) = self.inner.broker() else {
            return;
        };
        if !self.connected() || !self.ready() {
            return;
        }
        broker.start_draining();
        // The sessions whose clients come back elsewhere: those connected now.
        let connected: Vec<String> = broker
            .persistent_ids()
            .into_iter()
            .filter(|id| broker.is_connected(id))
            .collect();
        broker.drain_all();
        tracing::info!(
            clients = connected.len(),
            "stopping: clients sent to other nodes, persistent sessions follow them"
        );
        let deadline = Instant::now() + grace;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let left = connected
                .iter()
                .filter(|id| broker.session(id).is_some())
                .count();
            let attached = broker.connected_count();
            // A session written out waits here until its new node fetched it.
            let moving =
                self.inner.handing_over.lock().len() + self.inner.outgoing.lock().by_client.len();
            if (left == 0 && attached == 0 && moving == 0) || Instant::now() >= deadline {
                tracing::info!(
                    not_moved = left,
                    still_connected = attached,
                    still_moving = moving,
                    "stopping: the sessions not taken over stay with this node"
                );
                break;
            }
        }
        // The wills of the clients sent away, and the messages before them,
        // reach NATS before the process ends, and the cluster's copies of
        // those wills are gone (else this node's next run or the others
        // would publish them again).
        let (written, wills) = tokio::sync::oneshot::channel();
        if self
            .inner
            .wills
            .send(crate::shared::WillCommand::Barrier(written))
            .is_ok()
        {
            let _ = tokio::time::timeout(grace, wills).await;
        }
        let deadline = Instant::now() + grace;
        while self.inner.outbox_bytes.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tick.tick().await;
        }
        if tokio::time::timeout(grace, self.flush()).await.is_err() {
            tracing::warn!("stopping: NATS did not confirm the last messages in time");
        }
    }

    /// Waits until every interest change asked of this node so far has
    /// reached its NATS server (a SUBACK sent after it means other nodes'
    /// messages arrive, once NATS has passed the interest on).
    pub async fn flush(&self) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.commands.send(Command::Flush(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

impl Cluster for NatsCluster {
    fn next_stamp(&self) -> Option<(u64, u64)> {
        let seq = self.inner.seq.fetch_add(1, Ordering::SeqCst) + 1;
        Some((self.inner.origin, seq))
    }

    fn last_stamp(&self) -> u64 {
        self.inner.seq.load(Ordering::SeqCst)
    }

    fn forward(
        &self,
        message: &Arc<Message>,
        stamp: Option<(u64, u64)>,
        withdrawable: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let inner = &self.inner;
        if message.topic.starts_with("$SYS") {
            if let Some((_, seq)) = stamp {
                inner.skipped.skip(seq);
            }
            return None;
        }
        let (origin, seq) = stamp.or_else(|| self.next_stamp())?;
        let stamp = Stamp { origin, seq };
        let payload = envelope::encode(message, stamp, Instant::now());
        if message.retain
            && inner
                .retained
                .try_send((message.topic.to_string(), payload.clone()))
                .is_err()
        {
            tracing::warn!(topic = %message.topic, "retained message not shared: too many waiting");
        }
        let subject = subject::of_topic(&message.topic);
        // A QoS 1/2 message is kept in transit (once the stream is open),
        // and its acknowledgement waits for that, NATS away or not (the
        // message waits in the outbox meanwhile). The outbox is bounded:
        // past it a message is not forwarded (counted), and a QoS 1/2 one is
        // not acknowledged either: its sender is dropped with it, which
        // closes the publisher's connection (0x80) and the client sends it
        // again. A QoS 0 message has nowhere to go while NATS is away, nor
        // while the outbox is paused for a repair (`repairs`): it would
        // only fill the outbox and hold this node's publishers back.
        let connected = inner.connected() && !crate::repairs::paused(inner);
        let qos = message.qos != starling_codec::QoS::AtMostOnce;
        if !connected && !qos {
            inner.skipped.skip(seq);
            return None;
        }
        let keep = qos && inner.transit.get().is_some();
        let (kept, wait) = if keep {
            let (kept, wait) = tokio::sync::oneshot::channel();
            (Some(kept), Some(wait))
        } else {
            (None, None)
        };
        let out = ToNats {
            subject,
            payload,
            keep,
            kept,
            withdrawable,
            seq,
        };
        let size = out.payload.len();
        let queued = inner.outbox_bytes.fetch_add(size, Ordering::Relaxed);
        let sent = if queued + size > OUTBOX_BYTES {
            Err(())
        } else {
            inner.outbox.try_send(out).map_err(|_| ())
        };
        if sent.is_err() {
            inner.outbox_bytes.fetch_sub(size, Ordering::Relaxed);
            inner.skipped.skip(seq);
        }
        match sent {
            Ok(()) => {
                inner.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                wait
            }
            Err(_) => {
                let dropped = inner
                    .counters
                    .forward_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if dropped.is_multiple_of(10_000) {
                    tracing::warn!(
                        "messages not forwarded to other nodes: NATS does not take them as \
                         fast as they come (counted in $SYS/.../forward-dropped; QoS 1/2 \
                         publishers are sent away unacknowledged)"
                    );
                }
                wait
            }
        }
    }

    fn interest(&self, filter: &str, added: bool) {
        let mut map = self.inner.interest.lock();
        let changed = if added {
            let n = map.entry(filter.to_string()).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            match map.get_mut(filter) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    map.remove(filter);
                    true
                }
                None => false,
            }
        };
        if changed {
            let command = if added {
                Command::Add(filter.to_string())
            } else {
                Command::Remove(filter.to_string())
            };
            let _ = self.inner.commands.send(command);
        }
    }

    fn claim(&self, client_id: &str, persistent: bool) -> ClusterFuture<Ownership> {
        let inner = self.inner.clone();
        // Stopping: the client goes to another node.
        if inner.broker().is_some_and(|b| b.is_draining()) {
            return Box::pin(async { Ownership::Unavailable });
        }
        inner.arrivals.connects(client_id);
        let client_id = client_id.to_string();
        Box::pin(async move { owners::claim(&inner, &client_id, persistent).await })
    }

    fn await_turn(&self, client_id: &str) -> ClusterFuture<bool> {
        let inner = self.inner.clone();
        let client_id = client_id.to_string();
        Box::pin(async move { owners::await_turn(&inner, &client_id).await })
    }

    fn release(&self, client_id: &str) {
        let inner = self.inner.clone();
        let client_id = client_id.to_string();
        tokio::spawn(async move { owners::release(&inner, &client_id).await });
    }

    fn will(
        &self,
        client_id: &str,
        conn: u64,
        will: Option<(&starling_codec::Will, Option<&str>)>,
    ) {
        use crate::shared::WillCommand;
        let command = match will {
            Some((will, username)) => {
                let Some(record) = starling_broker::cluster::will_record(will, username) else {
                    return;
                };
                WillCommand::Set(client_id.to_string(), conn, record)
            }
            None => {
                let ended = (client_id.to_string(), conn);
                self.inner.clearing.lock().insert(ended);
                WillCommand::Clear(client_id.to_string(), conn)
            }
        };
        let _ = self.inner.wills.send(command);
    }

    fn replica_lag(&self, client_id: &str) -> ReplicaLag {
        self.inner.replica.hold.lock().lag(client_id)
    }

    fn unavailable(&self) -> Option<String> {
        if !self.inner.connected() {
            return Some(
                "no connection to NATS: the other nodes cannot be reached (persistent \
                 sessions and QoS 1/2 acknowledgements wait for it)"
                    .to_string(),
            );
        }
        (!self.inner.reachable()).then(|| {
            "cut off: the NATS server this node uses reaches no other node \
             (persistent sessions and QoS 1/2 acknowledgements wait for it)"
                .to_string()
        })
    }

    fn congested(&self) -> bool {
        // Without NATS the outbox holds what waits for it: publishers here
        // are not held back for that (their QoS 1/2 acknowledgements wait).
        let full = self.inner.outbox.capacity() < OUTBOX / 4
            || self.inner.outbox_bytes.load(Ordering::Relaxed) > OUTBOX_BYTES / 4 * 3;
        full && self.inner.connected()
    }

    fn interest_ready(&self) -> Option<ClusterFuture<()>> {
        if !self.inner.connected() {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.commands.send(Command::Ready(tx)).ok()?;
        let limit = self.inner.timeout;
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(limit, rx).await;
        }))
    }

    fn shares_across_nodes(&self) -> bool {
        true
    }

    fn parked_sessions(&self) -> Option<Arc<HashSet<ByteString>>> {
        if !self.inner.parking_any.load(Ordering::Relaxed) {
            return None;
        }
        self.inner.parking.read().clone()
    }

    fn park_local(
        &self,
        msg: &Arc<starling_broker::message::Message>,
        (origin, seq): (u64, u64),
        sessions: Arc<HashSet<ByteString>>,
    ) {
        let stamp = Stamp { origin, seq };
        let command = crate::shared::ReplayCommand::ParkLocal(stamp, msg.clone(), sessions);
        // The routing task is far behind: theirs now (in order or not).
        if let Err(crate::shared::ReplayCommand::ParkLocal(_, msg, sessions)) =
            self.to_routing(command, msg)
        {
            if let Some(broker) = self.inner.broker() {
                broker.route_from_cluster(&msg, Scope::Clients(&sessions), (origin, seq));
            }
        }
    }

    fn holds_local(&self, msg: &Message) -> bool {
        msg.qos != starling_codec::QoS::AtMostOnce
            && msg
                .publisher
                .as_ref()
                .is_some_and(|p| self.inner.arrivals.holds(p))
    }

    fn hold_local(&self, msg: &Arc<Message>, (origin, seq): (u64, u64)) {
        let command = crate::shared::ReplayCommand::HoldLocal(Stamp { origin, seq }, msg.clone());
        if let Some(p) = &msg.publisher {
            self.inner.arrivals.sent(p);
        }
        // The routing task is far behind: routed now (in order or not).
        if let Err(crate::shared::ReplayCommand::HoldLocal(_, msg)) = self.to_routing(command, msg)
        {
            if let Some(p) = &msg.publisher {
                self.inner.arrivals.taken(p);
            }
            if let Some(broker) = self.inner.broker() {
                broker.route_from_cluster(&msg, Scope::Plain, (origin, seq));
            }
        }
    }

    fn status(&self) -> Vec<(&'static str, String)> {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let state = match (self.connected(), self.ready()) {
            (true, true) => "ready",
            (true, false) => "waiting for JetStream",
            (false, _) => "disconnected from NATS",
        };
        vec![
            ("node", self.inner.node_id.clone()),
            ("nats-server", self.server()),
            ("state", state.to_string()),
            ("messages/forwarded", get(&c.forwarded)),
            ("messages/forward-dropped", get(&c.forward_dropped)),
            ("messages/received", get(&c.received)),
            ("messages/duplicates", get(&c.duplicates)),
            ("messages/slow-consumer-drops", get(&c.slow)),
            ("messages/transit-failures", get(&c.transit_failed)),
            ("messages/withdrawn", get(&c.withdrawn)),
            ("messages/late", get(&c.late)),
            ("messages/late-withdrawn", get(&c.late_withdrawn)),
            ("messages/replayed", get(&c.replayed)),
            (
                "sessions/replicated-changes",
                get(&self.inner.replica.counters.written),
            ),
            (
                "sessions/replication-failures",
                get(&self.inner.replica.counters.failed),
            ),
            (
                "sessions/recovered",
                get(&self.inner.replica.counters.recovered),
            ),
        ]
    }
}

/// One NATS connection with the node's options.
async fn connect(
    config: &ClusterConfig,
    queues: bool,
    slow: Arc<AtomicU64>,
) -> Result<async_nats::Client, ClusterError> {
    let role = if queues { "queues" } else { "main" };
    let node = config.node_id.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("starling-{}-{role}", config.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_millis(config.timeout_ms))
        .request_timeout(Some(Duration::from_millis(config.timeout_ms)))
        .subscription_capacity(config.subscription_capacity)
        .event_callback(move |event| {
            let node = node.clone();
            let slow = slow.clone();
            async move {
                use async_nats::Event;
                match event {
                    Event::Connected => tracing::info!(%node, role, "connected to NATS"),
                    Event::Disconnected => tracing::warn!(%node, role, "lost the NATS connection"),
                    Event::SlowConsumer(_) => {
                        if slow.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                            tracing::warn!(
                                %node,
                                "messages from other nodes dropped: this node's routing \
                                 does not keep up (NATS slow consumer)"
                            );
                        }
                    }
                    other => tracing::debug!(%node, role, "NATS: {other}"),
                }
            }
        });
    if !queues {
        options = options.no_echo();
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| ClusterError::Credentials(path.clone(), e))?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .nats
        .iter()
        .map(|s| s.parse().map_err(|_| ClusterError::Address(s.clone())))
        .collect::<Result<_, _>>()?;
    Ok(options.connect(servers).await?)
}

/// Opens the buckets, retrying while JetStream cannot answer, then serves
/// the retained messages.
async fn open_buckets(
    inner: Arc<Inner>,
    replicas: usize,
    retained_rx: mpsc::Receiver<(String, bytes::Bytes)>,
    wills_rx: mpsc::UnboundedReceiver<crate::shared::WillCommand>,
) {
    let mut js = jetstream::new(inner.client.clone());
    js.set_timeout(inner.timeout);
    let mut logged = false;
    let opened = loop {
        match buckets::open(&js, replicas).await {
            Ok(b) => break b,
            Err(e) => {
                if !logged {
                    tracing::warn!(
                        "JetStream is not ready (retrying each second; persistent sessions \
                         are refused meanwhile): {e}"
                    );
                    logged = true;
                }
                if inner.broker().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // What this node's previous run stored (its receipt, before this run
    // writes its own): the sessions it restores get what it missed.
    if let Ok(Ok(Some(raw))) = tokio::time::timeout(
        inner.timeout,
        opened.receipts.get(keys::node(&inner.node_id)),
    )
    .await
    {
        *inner.previous_run.lock() = crate::receipt::Receipt::decode(&raw);
    }
    let carried = inner
        .previous_run
        .lock()
        .as_ref()
        .map(|r| r.high.clone())
        .unwrap_or_default();
    // Session streams before the buckets count as ready: a persistent
    // session is claimed only once it can be replicated.
    let mut logged = false;
    loop {
        let linked = inner
            .replica
            .link(
                &js,
                inner.client.clone(),
                replicas,
                inner.timeout,
                &inner.node_id,
                inner.origin,
                carried.clone(),
                !inner.restored.is_empty(),
            )
            .await;
        match linked {
            Ok(()) => {
                // No session restored: no audit of them, nothing of the
                // previous run to replay (a session claimed since is this
                // run's own).
                if inner.restored.is_empty() {
                    inner.previous_run.lock().take();
                    transit::abandon(&inner, inner.restart_token).await;
                }
                break;
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(
                        "session streams not ready (retrying each second; persistent \
                         sessions are refused meanwhile): {e}"
                    );
                    logged = true;
                }
                if inner.broker().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let mut logged = false;
    while let Err(e) = transit::open(&js, replicas).await {
        if !logged {
            tracing::warn!("the transit stream is not ready (retrying each second): {e}");
            logged = true;
        }
        if inner.broker().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = inner.transit.set(js.clone());
    let _ = inner.buckets.set(opened.clone());
    tokio::spawn(crate::wills::run(inner.clone(), opened.clone(), wills_rx));
    tracing::info!(node = %inner.node_id, "cluster state ready (JetStream buckets open)");
    retained::run(inner, opened.retained, retained_rx).await;
}

//! The fault harness (issue 19): clients driven through HAProxy while a
//! fault is injected, a history of what they saw, and its checker. Used by
//! `faults.rs` (Starling) and `anchor.rs` (NATS's own MQTT listener).
//!
//! Each test starts three `nats-server`s, three Starling nodes and HAProxy
//! in front of them (TCP, PROXY v2, `/readyz` checks), and drives clients
//! through HAProxy only, as users would:
//! - publishers, half QoS 1 and half QoS 2, each publishing its own topic
//!   `h/<n>` with a sequence number, each with a will (`will/pub<n>`);
//! - persistent subscribers (`h/+` at QoS 2), which reconnect through
//!   HAProxy whenever their connection ends and expect their session back;
//! - a persistent watcher of the wills.
//!
//! While they run, a fault is injected. Every acknowledged publish, every
//! delivery, every will and every connection a client lost is recorded (the
//! history), and the nodes' logs say when each client id was connected
//! where. The checker then requires:
//! - every QoS 1/2 message acknowledged to its publisher at every
//!   persistent subscriber;
//! - no QoS 2 message delivered twice (a copy marked DUP is a redelivery),
//!   whenever its first delivery was (those first delivered before the
//!   fault are also reported apart; the fault's instant is when it took
//!   effect, the last server stopped or the link cut, as each test marks
//!   it);
//! - one publisher's messages in order at each subscriber (counting the
//!   first delivery of each): live messages wait while a rebuilt session's
//!   replay runs, and a message held for NATS whose publisher left
//!   unacknowledged (sent away from a cut-off node) is withdrawn rather
//!   than sent after the publisher's later ones; the messages of clients
//!   that came to a node during its gap wait for its repair. Required of
//!   every fault;
//! - no client id connected on two nodes at once;
//! - each publisher's will published once per connection it lost.
//!
//! The counts are small for CI; `FAULT_SCALE=10` runs ten times as many
//! messages by hand, and `FAULT_CONNECT_TIMEOUT_MS` shortens how long the
//! clients wait for a CONNACK before they connect again.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster_support::{self, options, Cluster};
use starling_client::{Client, ConnAckInfo, ConnectOptions, LastWill, QoS};
use starling_codec::ProtocolVersion;

/// What the clients run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Three Starling nodes behind HAProxy.
    Starling,
    /// The same, NATS server 3 in a network namespace of its own.
    Partitionable,
    /// NATS's own MQTT listener on the same three servers behind HAProxy
    /// (the anchor): MQTT 3.1.1 and QoS 1 only (nats-server 2.9 has no QoS
    /// 2); its figures are reported, not asserted.
    Anchor { partitionable: bool },
}

/// Set once per test process (nextest runs each test in its own): the
/// clients speak MQTT 3.1.1 at QoS 1 for the anchor.
static ANCHOR: AtomicBool = AtomicBool::new(false);

fn anchor() -> bool {
    ANCHOR.load(Ordering::Relaxed)
}

/// Publishers (even: QoS 1, odd: QoS 2) and persistent subscribers.
pub const PUBLISHERS: usize = 4;
pub const SUBSCRIBERS: usize = 2;
/// Acknowledged messages before the fault, and after it, per run (times
/// `FAULT_SCALE`).
pub const BEFORE: usize = 400;
pub const AFTER: usize = 400;
/// Messages per second per publisher.
pub const RATE: u64 = 100;
/// How long a fault test may run, its cluster's start excluded.
pub const LIMIT: Duration = Duration::from_secs(170);
/// How long the subscribers have to receive everything after the load.
pub const DRAIN: Duration = Duration::from_secs(40);

fn scale() -> usize {
    std::env::var("FAULT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// What the clients saw.
#[derive(Default)]
struct History {
    /// (publisher, seq) acknowledged, with its QoS.
    acked: Vec<(usize, u64, QoS)>,
    /// Per subscriber, each delivery.
    delivered: Vec<Vec<Delivery>>,
    /// Wills seen, per client id (each connection's will names it: a QoS 1
    /// copy of one will is counted once).
    wills: HashMap<String, usize>,
    /// Wills already counted, and the copies seen again.
    will_payloads: std::collections::HashSet<(String, bytes::Bytes)>,
    will_copies: usize,
    /// Connections each client lost (not ended by its own DISCONNECT).
    lost: HashMap<String, usize>,
    /// Reconnects whose session was not there any more.
    sessions_lost: Vec<String>,
    /// CONNECTs refused (0x88 while the cluster recovers, ...).
    refused: usize,
    /// Per (re)connection: the client, when it began trying, and how long
    /// until it was served.
    waits: Vec<(String, std::time::Instant, Duration)>,
}

/// One delivery: publisher, seq, QoS, DUP, when.
type Delivery = (usize, u64, QoS, bool, std::time::Instant);

type Shared = Arc<Mutex<History>>;

pub fn client_options(port: u16, id: &str, persistent: bool) -> ConnectOptions {
    let mut o = options(port, id);
    if persistent {
        o.session_expiry = Some(3600);
    }
    if anchor() {
        o.version = ProtocolVersion::V3_1_1;
        o.session_expiry = None;
        o.clean_start = !persistent;
    }
    o.keep_alive = Duration::from_secs(5);
    if let Some(ms) = connect_timeout_ms() {
        o.connect_timeout = Duration::from_millis(ms);
    }
    o
}

/// `FAULT_CONNECT_TIMEOUT_MS`: how long the clients wait for a CONNACK
/// before they give up and connect again (by hand: a client with a short
/// timeout connects again while its first claim still runs). Default 10 s.
fn connect_timeout_ms() -> Option<u64> {
    std::env::var("FAULT_CONNECT_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Connects through the proxy, trying again (every 100 ms) until `stop`
/// or the limit: a node going away is seen as refused or failed CONNECTs.
async fn connect_again(
    o: &ConnectOptions,
    history: &Shared,
    stop: &AtomicBool,
) -> Option<(Client, ConnAckInfo)> {
    connect_within(o, history, stop, LIMIT).await
}

async fn connect_within(
    o: &ConnectOptions,
    history: &Shared,
    stop: &AtomicBool,
    limit: Duration,
) -> Option<(Client, ConnAckInfo)> {
    let deadline = tokio::time::Instant::now() + limit;
    let began = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while tokio::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        match Client::connect(o.clone()).await {
            Ok(ok) => {
                let id = o.client_id.to_string();
                history
                    .lock()
                    .unwrap()
                    .waits
                    .push((id, began, began.elapsed()));
                return Some(ok);
            }
            Err(_) => history.lock().unwrap().refused += 1,
        }
    }
    None
}

/// A publisher: its own topic, a sequence number per message, a will.
async fn publisher(n: usize, port: u16, history: Shared, stop: Arc<AtomicBool>) {
    let id = format!("pub{n}");
    let qos = if n.is_multiple_of(2) || anchor() {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    };
    let mut o = client_options(port, &id, false);
    let mut will = LastWill::new(format!("will/{id}"), "gone");
    will.qos = QoS::AtLeastOnce;
    o.will = Some(will);
    let mut seq = 0u64;
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut connections = 0u64;
    'connection: while !stop.load(Ordering::Relaxed) {
        connections += 1;
        if let Some(will) = o.will.as_mut() {
            will.payload = format!("gone {connections}").into();
        }
        let Some((client, _)) = connect_again(&o, &history, &stop).await else {
            return;
        };
        loop {
            pace.tick().await;
            if stop.load(Ordering::Relaxed) {
                if client.disconnect().await.is_err() {
                    *history.lock().unwrap().lost.entry(id.clone()).or_default() += 1;
                }
                return;
            }
            seq += 1;
            let sent = client
                .publish(format!("h/{n}"), seq.to_string(), qos, false)
                .await;
            match sent {
                Ok(code) if !code.is_error() => {
                    history.lock().unwrap().acked.push((n, seq, qos));
                }
                // Refused (not acknowledged): nothing is owed.
                Ok(_) => {}
                // The connection went: this message is not acknowledged
                // (it may arrive or not); the next one goes on a new one.
                Err(_) => {
                    *history.lock().unwrap().lost.entry(id.clone()).or_default() += 1;
                    continue 'connection;
                }
            }
        }
    }
}

/// A persistent subscriber of every publisher's topic.
async fn subscriber(n: usize, port: u16, history: Shared, stop: Arc<AtomicBool>) {
    let id = format!("sub{n}");
    let mut o = client_options(port, &id, true);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        // (MQTT 3.1.1: a clean first session would end with its connection.)
        o.clean_start = first && !anchor();
        let Some((client, ack)) = connect_again(&o, &history, &stop).await else {
            return;
        };
        if first {
            client
                .subscribe(
                    "h/+",
                    if anchor() {
                        QoS::AtLeastOnce
                    } else {
                        QoS::ExactlyOnce
                    },
                )
                .await
                .expect("the subscription is made");
            first = false;
        } else if !ack.session_present {
            history.lock().unwrap().sessions_lost.push(id.clone());
        }
        while let Some(m) = client.recv().await {
            let Some(Ok(p)) = m.topic.strip_prefix("h/").map(str::parse::<usize>) else {
                continue;
            };
            let Ok(seq) = std::str::from_utf8(&m.payload).unwrap_or("").parse::<u64>() else {
                continue;
            };
            history.lock().unwrap().delivered[n].push((
                p,
                seq,
                m.qos,
                m.dup,
                std::time::Instant::now(),
            ));
        }
        *history.lock().unwrap().lost.entry(id.clone()).or_default() += 1;
    }
}

/// The persistent watcher of the wills.
async fn will_watcher(port: u16, history: Shared, stop: Arc<AtomicBool>, ready: Arc<AtomicBool>) {
    let mut o = client_options(port, "willwatch", true);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        o.clean_start = first && !anchor();
        let Some((client, _)) = connect_again(&o, &history, &stop).await else {
            return;
        };
        if first {
            client
                .subscribe("will/#", QoS::AtLeastOnce)
                .await
                .expect("the subscription is made");
            first = false;
            ready.store(true, Ordering::Relaxed);
        }
        while let Some(m) = client.recv().await {
            if let Some(id) = m.topic.strip_prefix("will/") {
                let mut h = history.lock().unwrap();
                if h.will_payloads.insert((id.to_string(), m.payload.clone())) {
                    *h.wills.entry(id.to_string()).or_default() += 1;
                } else {
                    h.will_copies += 1;
                }
            }
        }
    }
}

/// The clients of one run.
struct Load {
    history: Shared,
    stop_publishing: Arc<AtomicBool>,
    stop_all: Arc<AtomicBool>,
    publishers: Vec<tokio::task::JoinHandle<()>>,
    others: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(port: u16) -> Load {
        let history: Shared = Arc::new(Mutex::new(History {
            delivered: vec![Vec::new(); SUBSCRIBERS],
            ..History::default()
        }));
        let stop_publishing = Arc::new(AtomicBool::new(false));
        let stop_all = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let mut others = Vec::new();
        others.push(tokio::spawn(will_watcher(
            port,
            history.clone(),
            stop_all.clone(),
            ready.clone(),
        )));
        for n in 0..SUBSCRIBERS {
            others.push(tokio::spawn(subscriber(
                n,
                port,
                history.clone(),
                stop_all.clone(),
            )));
        }
        // The subscriptions exist (and reached every node) before anything
        // is published: a probe publisher's messages reach every subscriber.
        // (HAProxy sends clients on once its checks found the nodes up.)
        let (probe, _) = connect_within(
            &client_options(port, "probe", false),
            &history,
            &stop_all,
            cluster_support::WAIT,
        )
        .await
        .expect("a client connects through HAProxy");
        let deadline = tokio::time::Instant::now() + cluster_support::WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut i = 0u64;
        loop {
            tick.tick().await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "the subscribers do not receive within {:?}",
                cluster_support::WAIT
            );
            i += 1;
            probe
                .publish("h/999", i.to_string(), QoS::AtMostOnce, false)
                .await
                .expect("the probe is sent");
            let h = history.lock().unwrap();
            if ready.load(Ordering::Relaxed) && h.delivered.iter().all(|d| !d.is_empty()) {
                break;
            }
        }
        let _ = probe.disconnect().await;
        history
            .lock()
            .unwrap()
            .delivered
            .iter_mut()
            .for_each(Vec::clear);
        let publishers = (0..PUBLISHERS)
            .map(|n| tokio::spawn(publisher(n, port, history.clone(), stop_publishing.clone())))
            .collect();
        Load {
            history,
            stop_publishing,
            stop_all,
            publishers,
            others,
        }
    }

    fn acked(&self) -> usize {
        self.history.lock().unwrap().acked.len()
    }

    /// Waits until `n` messages in all were acknowledged.
    async fn until_acked(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while self.acked() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} acknowledged within {limit:?}",
                self.acked()
            );
            tick.tick().await;
        }
    }

    /// Stops publishing, then waits until every acknowledged message
    /// reached every subscriber (at most [`DRAIN`]) and the wills settled.
    async fn finish(self) -> History {
        self.stop_publishing.store(true, Ordering::Relaxed);
        for p in self.publishers {
            let _ = tokio::time::timeout(cluster_support::WAIT, p).await;
        }
        let deadline = tokio::time::Instant::now() + DRAIN;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let done = {
                let h = self.history.lock().unwrap();
                let all = h.delivered.iter().all(|d| {
                    let got: std::collections::HashSet<(usize, u64)> =
                        d.iter().map(|(p, s, ..)| (*p, *s)).collect();
                    h.acked.iter().all(|(p, s, _)| got.contains(&(*p, *s)))
                });
                let wills = h
                    .lost
                    .iter()
                    .filter(|(id, _)| id.starts_with("pub"))
                    .all(|(id, n)| h.wills.get(id).copied().unwrap_or(0) >= *n);
                all && wills
            };
            if done || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // Copies and wills still on their way.
        let quiet = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < quiet {
            tick.tick().await;
        }
        self.stop_all.store(true, Ordering::Relaxed);
        for t in self.others {
            t.abort();
        }
        Arc::try_unwrap(self.history)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|shared| std::mem::take(&mut *shared.lock().unwrap()))
    }
}

/// What the checker found.
#[derive(Debug, Default)]
struct Verdict {
    acked: usize,
    missing: usize,
    /// Some of them: (subscriber, publisher, seq, the newest seq that
    /// subscriber had of that publisher).
    missing_some: Vec<(usize, usize, u64, u64)>,
    qos2_twice: usize,
    /// Some of them: (subscriber, publisher, seq, ms after the fault began
    /// of the first and of the second delivery).
    qos2_twice_some: Vec<(usize, usize, u64, i128, i128)>,
    /// Of `qos2_twice`, those first delivered before the fault.
    qos2_again_after_kill: usize,
    duplicates: usize,
    /// Of them, those without DUP (not a redelivery by the same session
    /// state after a reconnect).
    copies_not_dup: usize,
    out_of_order: usize,
    /// Some of them: (subscriber, publisher, seq, the newest seq before
    /// it, ms after the fault began).
    out_of_order_some: Vec<(usize, usize, u64, u64, i128)>,
    overlaps: Vec<String>,
    /// Node log lines that say a thread panicked.
    panics: Vec<String>,
    wills_wrong: Vec<String>,
    sessions_lost: Vec<String>,
}

fn check(h: &History, logs: &[Vec<String>], fault_at: std::time::Instant) -> Verdict {
    let mut v = Verdict {
        acked: h.acked.len(),
        sessions_lost: h.sessions_lost.clone(),
        ..Verdict::default()
    };
    let since = |at: std::time::Instant| -> i128 {
        if at >= fault_at {
            at.duration_since(fault_at).as_millis() as i128
        } else {
            -(fault_at.duration_since(at).as_millis() as i128)
        }
    };
    for (sub, d) in h.delivered.iter().enumerate() {
        let mut seen: HashMap<(usize, u64), usize> = HashMap::new();
        let mut first_at: HashMap<(usize, u64), std::time::Instant> = HashMap::new();
        let mut last: HashMap<usize, u64> = HashMap::new();
        for (p, s, qos, dup, at) in d {
            let n = seen.entry((*p, *s)).or_default();
            *n += 1;
            let first = *first_at.entry((*p, *s)).or_insert(*at);
            if *n > 1 {
                v.duplicates += 1;
                if !dup {
                    v.copies_not_dup += 1;
                }
                if *qos == QoS::ExactlyOnce && !dup {
                    // Counted apart too: first delivered before the fault.
                    if first < fault_at {
                        v.qos2_again_after_kill += 1;
                    }
                    v.qos2_twice += 1;
                    if v.qos2_twice_some.len() < 20 {
                        v.qos2_twice_some
                            .push((sub, *p, *s, since(first), since(*at)));
                    }
                }
                continue;
            }
            let l = last.entry(*p).or_default();
            if *s < *l {
                v.out_of_order += 1;
                if v.out_of_order_some.len() < 10 {
                    v.out_of_order_some.push((sub, *p, *s, *l, since(*at)));
                }
            }
            *l = (*l).max(*s);
        }
        for (p, s, _) in h
            .acked
            .iter()
            .filter(|(p, s, _)| !seen.contains_key(&(*p, *s)))
        {
            v.missing += 1;
            if v.missing_some.len() < 20 {
                v.missing_some
                    .push((sub, *p, *s, last.get(p).copied().unwrap_or(0)));
            }
        }
    }
    for (id, lost) in h.lost.iter().filter(|(id, _)| id.starts_with("pub")) {
        let wills = h.wills.get(id).copied().unwrap_or(0);
        if wills != *lost {
            v.wills_wrong
                .push(format!("{id}: {lost} connections lost, {wills} wills"));
        }
    }
    for (id, wills) in &h.wills {
        if !h.lost.contains_key(id) {
            v.wills_wrong
                .push(format!("{id}: no connection lost, {wills} wills"));
        }
    }
    v.overlaps = overlaps(logs);
    v.panics = logs
        .iter()
        .flatten()
        .filter(|l| l.contains("panicked at"))
        .take(5)
        .cloned()
        .collect();
    v
}

/// Client ids connected on two nodes at once, from the nodes' logs: each
/// node incarnation's "client connected" / "client disconnected" lines; a
/// connection of a node killed without its disconnect line ends with the
/// node's last line.
fn overlaps(logs: &[Vec<String>]) -> Vec<String> {
    // Per client id: (start, end, incarnation).
    let mut spans: BTreeMap<String, Vec<(String, String, usize)>> = BTreeMap::new();
    for (inc, lines) in logs.iter().enumerate() {
        let mut open: HashMap<String, String> = HashMap::new();
        let end_of_log = lines
            .iter()
            .rev()
            .find_map(|l| timestamp(l))
            .unwrap_or_default();
        for l in lines {
            let (Some(at), Some(id)) = (timestamp(l), field(l, "client_id=")) else {
                continue;
            };
            if l.contains("client connected") {
                open.insert(id, at);
            } else if l.contains("client disconnected") {
                if let Some(start) = open.remove(&id) {
                    spans.entry(id).or_default().push((start, at, inc));
                }
            }
        }
        for (id, start) in open {
            spans
                .entry(id)
                .or_default()
                .push((start, end_of_log.clone(), inc));
        }
    }
    let mut found = Vec::new();
    for (id, mut s) in spans {
        s.sort();
        for w in s.windows(2) {
            let ((_, end_a, inc_a), (start_b, _, inc_b)) = (&w[0], &w[1]);
            if inc_a != inc_b && start_b < end_a {
                found.push(format!("{id}: on two nodes from {start_b} to {end_a}"));
            }
        }
    }
    found
}

/// The RFC 3339 time a node's log line starts with (fixed width: sorts as
/// time does).
fn timestamp(line: &str) -> Option<String> {
    let t = line.split_whitespace().next()?;
    (t.len() >= 27 && t.as_bytes()[4] == b'-' && t.ends_with('Z')).then(|| t.to_string())
}

fn field(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split_whitespace().next()?.to_string())
}

/// With `FAULT_LOGS=DIR`, every node run's log is written there (one file
/// per run, the killed and restarted ones included), for reading a failure.
fn keep_logs(tag: &str, logs: &[Vec<String>]) {
    let Some(dir) = std::env::var_os("FAULT_LOGS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join(tag);
    std::fs::create_dir_all(&dir).expect("the log directory");
    for (i, run) in logs.iter().enumerate() {
        std::fs::write(dir.join(format!("run{i}.log")), run.join("\n")).expect("a log written");
    }
    eprintln!("{tag}: node logs in {}", dir.display());
}

/// Runs `fault` under load through HAProxy against Starling and checks
/// the history.
pub fn under_load(tag: &str, fault: impl FnOnce(&mut Cluster) + Send) {
    under_load_on(tag, Target::Starling, fault);
}

/// As [`under_load`], against `target`.
pub fn under_load_on(tag: &str, target: Target, fault: impl FnOnce(&mut Cluster) + Send) {
    let started = match target {
        Target::Starling => Cluster::start_behind_proxy_with(tag, false),
        Target::Partitionable => Cluster::start_behind_proxy_with(tag, true),
        Target::Anchor { partitionable } => {
            ANCHOR.store(true, Ordering::Relaxed);
            Cluster::start_anchor(tag, partitionable)
        }
    };
    let Some(mut c) = started else {
        return;
    };
    let port = c.proxy_port;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let fault_at = Arc::new(Mutex::new(std::time::Instant::now()));
    let history = rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let load = Load::start(port).await;
            let before = BEFORE * scale();
            load.until_acked(before, Duration::from_secs(60)).await;
            let started = std::time::Instant::now();
            *fault_at.lock().unwrap() = started;
            // (To match the nodes' logs: the ms in the checker's samples
            // count from here.)
            eprintln!(
                "{tag}: fault begins at {:?} since the Unix epoch",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
            );
            tokio::task::block_in_place(|| fault(&mut c));
            eprintln!("{tag}: fault injected in {:?}", started.elapsed());
            load.until_acked(before + AFTER * scale(), Duration::from_secs(90))
                .await;
            load.finish().await
        })
        .await
        .unwrap_or_else(|_| panic!("{tag} did not finish within {LIMIT:?}"))
    });
    let logs = c.node_logs();
    keep_logs(tag, &logs);
    let at = c.fault_at.unwrap_or(*fault_at.lock().unwrap());
    let v = check(&history, &logs, at);
    if v.missing > 0 {
        // Where the missing messages wait, if in a session's queue.
        for n in 1..=c.nodes.len() {
            let sessions = c.sessions(n, "sub");
            eprintln!("{tag}: node {n}'s subscriber sessions: {sessions:?}");
        }
    }
    let (waited, who) = history
        .waits
        .iter()
        // Reconnects still going on when the fault was marked (a client
        // may see a killed node before the mark) or begun after it.
        .filter(|(_, began, d)| *began + *d >= at)
        .map(|(id, _, d)| (*d, id.as_str()))
        .max()
        .unwrap_or_default();
    eprintln!("{tag}: every client served again: the longest wait was {waited:?} ({who})");
    eprintln!(
        "{tag}: {} acknowledged; missing {}, QoS 2 twice {} ({} of them first delivered before \
         the fault), copies {} ({} without DUP), out of order {}, sessions lost {:?}, refused CONNECTs {}, \
         connections lost {:?}, wills {:?} (+{} copies)",
        v.acked,
        v.missing,
        v.qos2_twice,
        v.qos2_again_after_kill,
        v.duplicates,
        v.copies_not_dup,
        v.out_of_order,
        v.sessions_lost,
        history.refused,
        history.lost,
        history.wills,
        history.will_copies
    );
    if anchor() {
        eprintln!("{tag}: the anchor's figures (not asserted): {v:?}");
        return;
    }
    assert_eq!(v.missing, 0, "{tag}: acknowledged messages missing: {v:?}");
    assert_eq!(v.qos2_twice, 0, "{tag}: QoS 2 delivered twice: {v:?}");
    assert!(v.sessions_lost.is_empty(), "{tag}: sessions lost: {v:?}");
    assert!(v.overlaps.is_empty(), "{tag}: a client on two nodes: {v:?}");
    assert!(
        v.panics.is_empty(),
        "{tag}: a node panicked: {:?}",
        v.panics
    );
    assert_eq!(
        v.out_of_order, 0,
        "{tag}: first deliveries out of order: {v:?}"
    );
    assert!(v.wills_wrong.is_empty(), "{tag}: wills: {v:?}");
}

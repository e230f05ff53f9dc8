//! `starling bench`: a load generator in the style of emqtt-bench.
//!
//! Scenarios:
//! - `conn`: open N connections at a rate and hold them (with keep alive);
//! - `pub`: N publishers, at an interval or flat out, QoS 0/1/2 with a
//!   pipelined in-flight window;
//! - `sub`: N subscribers on a filter;
//! - `pubsub`: publishers and subscribers in one run (fan-in, fan-out or
//!   pairs), with end-to-end latency from a timestamp in the payload and the
//!   number of messages lost.
//!
//! `mqtt://` connections run on raw sockets through the codec (see
//! [`worker`]); TLS and WebSocket transports go through `starling-client`.
//! Progress goes to stderr once a second; the summary goes to stdout, as text
//! or, with `--json`, as one JSON object.

mod net;
mod report;
mod subs;
mod worker;

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use starling_client::{ConnectOptions, QoS};
use tokio::sync::watch;
use tokio::task::JoinSet;

use net::{Conn, Launch, NetConfig};
use report::{Counters, Latency, LatencySummary, ProgressKind, Summary};
use worker::{Ctx, PubPlan, Stops};

/// Arguments of `starling bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Subcommand, Debug)]
enum Scenario {
    /// Open connections at a rate and hold them until --hold expires or Ctrl-C.
    Conn(ConnBench),
    /// Publish from N connections, at an interval or flat out.
    Pub(PubBench),
    /// Subscribe from N connections and count (and time) what arrives.
    Sub(SubBench),
    /// Publishers and subscribers in one run: throughput, end-to-end latency, loss.
    Pubsub(PubSubBench),
    /// Many subscriptions per connection (mixed exact and wildcard), held idle.
    Subs(subs::SubsBench),
}

/// Connection and run flags shared by every scenario. Only `mqtt://` (plain
/// TCP) uses the load generator's raw fast path.
#[derive(clap::Args, Debug, Clone)]
struct NetArgs {
    /// User name.
    #[arg(short = 'u', long = "username")]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// Keep alive in seconds (0 disables it).
    #[arg(short = 'k', long = "keepalive", default_value_t = 300)]
    keepalive: u16,
    #[command(flatten)]
    server: super::ServerArgs,
    /// Seconds to wait for each connection's CONNACK.
    #[arg(long = "connect-timeout", default_value_t = 30)]
    connect_timeout: u64,
    /// Persistent sessions: clean session / Clean Start off, and (MQTT 5) this
    /// Session Expiry Interval in seconds. Use a fresh --prefix per run.
    #[arg(short = 'x', long = "session-expiry")]
    session_expiry: Option<u32>,
    /// Connections opened per second (0: as fast as --connect-concurrency allows).
    #[arg(short = 'R', long = "conn-rate", default_value_t = 0.0)]
    conn_rate: f64,
    /// Connection handshakes in progress at once.
    #[arg(long = "connect-concurrency", default_value_t = 100)]
    connect_concurrency: usize,
    /// Local addresses to connect from, round-robin (comma-separated), to open
    /// more connections than one source address has ports.
    #[arg(long = "ifaddr", value_delimiter = ',')]
    ifaddr: Vec<IpAddr>,
    /// Client id prefix; ids are PREFIX-pN (publishers), PREFIX-sN (subscribers), PREFIX-cN.
    #[arg(long = "prefix")]
    prefix: Option<String>,
    /// Worker threads (default: one per CPU).
    #[arg(long = "threads")]
    threads: Option<usize>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long = "json")]
    json: bool,
    /// No progress lines on stderr.
    #[arg(short = 'Q', long = "quiet")]
    quiet: bool,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl NetArgs {
    fn options(&self) -> anyhow::Result<ConnectOptions> {
        let mut o = super::base_options(&self.server)?;
        if let Some(u) = &self.username {
            o.username = Some(u.clone());
        }
        if let Some(p) = &self.password {
            o.password = Some(Bytes::from(p.clone()));
        }
        o.keep_alive = Duration::from_secs(self.keepalive.into());
        if let Some(expiry) = self.session_expiry {
            o.clean_start = false;
            o.session_expiry = Some(expiry);
        }
        o.connect_timeout = Duration::from_secs(self.connect_timeout.max(1));
        o.message_capacity = 1024;
        o.request_capacity = 256;
        Ok(o)
    }

    fn prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("bench-{}", std::process::id()))
    }
}

/// Flags of `starling bench conn`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
struct ConnBench {
    #[command(flatten)]
    net: NetArgs,
    /// Number of connections.
    #[arg(short = 'c', long = "count", default_value_t = 100)]
    count: usize,
    /// Seconds to hold the connections once all are open (default: until Ctrl-C).
    #[arg(long = "hold")]
    hold: Option<f64>,
}

/// What publishers send: shared by `pub` and `pubsub`.
#[derive(clap::Args, Debug, Clone)]
struct LoadArgs {
    /// Milliseconds between two messages of one publisher (default: flat out).
    #[arg(short = 'I', long = "interval", conflicts_with = "rate")]
    interval: Option<f64>,
    /// Total messages per second over all publishers (default: flat out).
    #[arg(long = "rate")]
    rate: Option<f64>,
    /// QoS of the messages (and of the subscriptions in pubsub).
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes; the first 8 carry the send time.
    #[arg(short = 's', long = "size", default_value_t = 64)]
    size: usize,
    /// Topic; %i stands for the publisher's index.
    #[arg(short = 't', long = "topic", default_value = "bench/%i")]
    topic: String,
    /// Messages to publish in all (split between the publishers).
    #[arg(short = 'n', long = "messages")]
    messages: Option<u64>,
    /// Seconds to publish for.
    #[arg(long = "duration")]
    duration: Option<f64>,
    /// QoS 1/2 messages each publisher keeps in flight.
    #[arg(long = "inflight", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
}

impl LoadArgs {
    fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }

    fn interval(&self, publishers: usize) -> anyhow::Result<Option<Duration>> {
        let secs = match (self.interval, self.rate) {
            (Some(ms), _) if ms > 0.0 => ms / 1000.0,
            (_, Some(rate)) if rate > 0.0 => publishers as f64 / rate,
            (Some(_), _) | (_, Some(_)) => bail!("-I and --rate must be positive"),
            _ => return Ok(None),
        };
        Ok(Some(Duration::from_secs_f64(secs)))
    }

    fn plans(&self, publishers: usize) -> anyhow::Result<Vec<PubPlan>> {
        let interval = self.interval(publishers)?;
        Ok((0..publishers)
            .map(|i| PubPlan {
                index: i,
                topic: topic_for(&self.topic, i),
                qos: self.qos(),
                payload_size: self.size,
                interval,
                quota: self.messages.map(|n| {
                    let p = publishers as u64;
                    n / p + u64::from((i as u64) < n % p)
                }),
                inflight: self.inflight.into(),
            })
            .collect())
    }
}

/// Flags of `starling bench pub`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
struct PubBench {
    #[command(flatten)]
    net: NetArgs,
    /// Number of publishers.
    #[arg(short = 'c', long = "count", default_value_t = 1)]
    count: usize,
    #[command(flatten)]
    load: LoadArgs,
}

/// Flags of `starling bench sub`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
struct SubBench {
    #[command(flatten)]
    net: NetArgs,
    /// Number of subscribers.
    #[arg(short = 'c', long = "count", default_value_t = 1)]
    count: usize,
    /// Topic filter; %i stands for the subscriber's index.
    #[arg(short = 't', long = "topic", default_value = "bench/#")]
    topic: String,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Stop once this many messages have arrived (over all subscribers).
    #[arg(short = 'n', long = "messages")]
    messages: Option<u64>,
    /// Seconds to run for.
    #[arg(long = "duration")]
    duration: Option<f64>,
}

/// How `pubsub` connects publishers to subscribers.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// -c publishers on their own topics, one subscriber on a wildcard.
    #[value(alias = "fanin")]
    FanIn,
    /// One publisher, -c subscribers on its topic.
    #[value(alias = "fanout")]
    FanOut,
    /// -c publisher/subscriber pairs, each pair on its own topic.
    #[value(alias = "1:1", alias = "one-to-one")]
    Pairs,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::FanIn => "fan-in",
            Mode::FanOut => "fan-out",
            Mode::Pairs => "pairs",
        }
    }
}

/// Flags of `starling bench pubsub`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
struct PubSubBench {
    #[command(flatten)]
    net: NetArgs,
    /// fan-in, fan-out or pairs (1:1).
    #[arg(long = "mode", value_enum, default_value = "fan-in")]
    mode: Mode,
    /// Publishers (fan-in), subscribers (fan-out) or pairs.
    #[arg(short = 'c', long = "count", default_value_t = 10)]
    count: usize,
    #[command(flatten)]
    load: LoadArgs,
    /// The subscription filter (default: the topic with %i as `+` for fan-in,
    /// the publisher's topic for fan-out).
    #[arg(long = "filter")]
    filter: Option<String>,
    /// Once publishing ends, seconds to wait without progress for the rest.
    #[arg(long = "drain-timeout", default_value_t = 5.0)]
    drain_timeout: f64,
    /// Subscribers connect to this port (same host) instead: publishers on
    /// one node of a cluster, subscribers on another.
    #[arg(long = "sub-port")]
    sub_port: Option<u16>,
}

fn topic_for(pattern: &str, i: usize) -> String {
    if pattern.contains("%i") {
        pattern.replace("%i", &i.to_string())
    } else {
        pattern.to_owned()
    }
}

/// The fan-in filter: each `%i` level becomes `+`.
fn wildcard_filter(pattern: &str) -> anyhow::Result<String> {
    let levels: Vec<&str> = pattern
        .split('/')
        .map(|l| match l {
            "%i" => Ok("+"),
            l if l.contains("%i") => bail!(
                "cannot derive a subscription filter from {pattern:?}: %i is not a whole level; give --filter"
            ),
            l => Ok(l),
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(levels.join("/"))
}

/// Runs `starling bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let net = match &args.scenario {
        Scenario::Conn(a) => &a.net,
        Scenario::Pub(a) => &a.net,
        Scenario::Sub(a) => &a.net,
        Scenario::Pubsub(a) => &a.net,
        Scenario::Subs(a) => a.net(),
    };
    let threads = net.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("bench")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let wall = Instant::now();
    let cpu0 = report::cpu_time().unwrap_or_default();
    let (mut summary, json) = rt.block_on(async move {
        match args.scenario {
            Scenario::Conn(a) => {
                let json = a.net.json;
                conn_main(a).await.map(|s| (s, json))
            }
            Scenario::Pub(a) => {
                let json = a.net.json;
                pub_main(a).await.map(|s| (s, json))
            }
            Scenario::Sub(a) => {
                let json = a.net.json;
                sub_main(a).await.map(|s| (s, json))
            }
            Scenario::Pubsub(a) => {
                let json = a.net.json;
                pubsub_main(a).await.map(|s| (s, json))
            }
            Scenario::Subs(a) => {
                let json = a.net().json;
                subs::subs_main(a).await.map(|s| (s, json))
            }
        }
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let wall = wall.elapsed().as_secs_f64();
    summary.cpu_secs = report::cpu_time()
        .unwrap_or_default()
        .saturating_sub(cpu0)
        .as_secs_f64();
    if json {
        println!("{}", summary.json(wall));
    } else {
        println!("{}", summary.text(wall));
    }
    Ok(ExitCode::SUCCESS)
}

/// State shared by the scenario drivers.
struct Harness {
    net: Arc<NetConfig>,
    counters: Arc<Counters>,
    connect_latency: Arc<Latency>,
    ctx: Arc<Ctx>,
    stop_pub: watch::Sender<bool>,
    stop_all: watch::Sender<bool>,
    stops: Stops,
    launch_rate: f64,
    launch_concurrency: usize,
    prefix: String,
    quiet: bool,
    progress: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn new(net: &NetArgs) -> anyhow::Result<Harness> {
        let opts = net.options()?;
        let keep_alive = opts.keep_alive;
        let config = NetConfig::new(opts, net.ifaddr.clone()).await?;
        let shards = 4 * std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let counters = Arc::new(Counters::default());
        let (stop_pub, pub_rx) = watch::channel(false);
        let (stop_all, all_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            counters: counters.clone(),
            latency: Arc::new(Latency::new(shards)),
            ack_latency: Arc::new(Latency::new(shards)),
            start: Instant::now(),
            keep_alive,
        });
        // Ctrl-C ends the run: the summary is still printed.
        let (tx_pub, tx_all) = (stop_pub.clone(), stop_all.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted");
                let _ = tx_pub.send(true);
                let _ = tx_all.send(true);
            }
        });
        Ok(Harness {
            net: Arc::new(config),
            counters,
            connect_latency: Arc::new(Latency::new(shards)),
            ctx,
            stop_pub,
            stop_all,
            stops: Stops {
                publish: pub_rx,
                all: all_rx,
            },
            launch_rate: net.conn_rate,
            launch_concurrency: net.connect_concurrency,
            prefix: net.prefix(),
            quiet: net.quiet,
            progress: None,
        })
    }

    /// Starts the measured phase (after connecting): workers spawned from now
    /// on time themselves from here.
    fn start_phase(&mut self) {
        self.ctx = Arc::new(Ctx {
            counters: self.counters.clone(),
            latency: self.ctx.latency.clone(),
            ack_latency: self.ctx.ack_latency.clone(),
            start: Instant::now(),
            keep_alive: self.ctx.keep_alive,
        });
    }

    fn interrupted(&self) -> bool {
        *self.stop_all.borrow()
    }

    fn start_progress(&mut self, kind: ProgressKind, target: u64) {
        if !self.quiet {
            self.progress = Some(tokio::spawn(report::progress(
                kind,
                self.counters.clone(),
                target,
                Instant::now(),
            )));
        }
    }

    fn stop_progress(&mut self) {
        if let Some(p) = self.progress.take() {
            p.abort();
        }
    }

    /// Opens `count` connections named `PREFIX-<role><i>`, running `setup` on each.
    async fn open<T, F, Fut>(
        &self,
        role: &'static str,
        count: usize,
        setup: F,
    ) -> (Vec<Option<T>>, f64)
    where
        T: Send + 'static,
        F: Fn(usize, Conn) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let launch = Launch {
            count,
            rate: self.launch_rate,
            concurrency: self.launch_concurrency,
        };
        let prefix = self.prefix.clone();
        let t0 = Instant::now();
        let conns = net::open_all(
            &self.net,
            &launch,
            |i| format!("{prefix}-{role}{i}"),
            setup,
            &self.counters,
            &self.connect_latency,
            &self.stops.all,
        )
        .await;
        (conns, t0.elapsed().as_secs_f64())
    }

    /// Fails when any connection could not be opened (for the scenarios whose
    /// figures would be meaningless without all of them).
    fn require_all<T>(&self, conns: Vec<Option<T>>, what: &str) -> anyhow::Result<Vec<T>> {
        let total = conns.len();
        let ok: Vec<T> = conns.into_iter().flatten().collect();
        if self.interrupted() {
            bail!("interrupted while connecting");
        }
        if ok.len() < total {
            bail!(
                "{} of {total} {what} could not connect: {}",
                total - ok.len(),
                self.counters.first_error().unwrap_or_default()
            );
        }
        Ok(ok)
    }

    fn summary(&self, scenario: &'static str) -> Summary {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            scenario,
            version: self.net.version().to_string(),
            connect_errors: get(&c.connect_errors),
            connect_latency: LatencySummary::of(&self.connect_latency.merged()),
            sent: get(&c.sent),
            acked: get(&c.acked),
            received: get(&c.received),
            errors: get(&c.errors),
            first_error: c.first_error(),
            send_secs: get(&c.last_sent_ns) as f64 / 1e9,
            recv_secs: get(&c.last_recv_ns) as f64 / 1e9,
            latency: LatencySummary::of(&self.ctx.latency.merged()),
            ack_latency: LatencySummary::of(&self.ctx.ack_latency.merged()),
            ..Summary::default()
        }
    }

    /// Waits until the set is empty, or until `stop_all` is set.
    async fn join(&self, set: &mut JoinSet<()>) {
        let mut all = self.stops.all.clone();
        loop {
            tokio::select! {
                r = set.join_next() => if r.is_none() { return },
                _ = all.changed() => if *all.borrow() { return },
            }
        }
    }

    /// Holds the connections that `holders` serve for `secs` seconds (until
    /// interrupted when `None`), then stops them and waits for them to close.
    /// Returns how long they were held, in seconds.
    async fn hold<T: Send + 'static>(
        &mut self,
        secs: Option<f64>,
        holders: Vec<Option<tokio::task::JoinHandle<T>>>,
    ) -> f64 {
        let hold_start = Instant::now();
        let mut all = self.stops.all.clone();
        let hold = async {
            match secs {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await,
                None => std::future::pending().await,
            }
        };
        if !self.interrupted() {
            tokio::select! {
                _ = hold => {}
                _ = all.changed() => {}
            }
        }
        let held = hold_start.elapsed().as_secs_f64();
        let mut set = JoinSet::new();
        for handle in holders.into_iter().flatten() {
            set.spawn(async move {
                let _ = handle.await;
            });
        }
        self.finish(&mut [&mut set]).await;
        held
    }

    /// Stops everything and waits (boundedly) for the workers to close.
    async fn finish(&mut self, sets: &mut [&mut JoinSet<()>]) {
        let _ = self.stop_pub.send(true);
        let _ = self.stop_all.send(true);
        for set in sets.iter_mut() {
            let drained = tokio::time::timeout(Duration::from_secs(5), async {
                while set.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                set.abort_all();
            }
        }
        self.stop_progress();
    }
}

async fn conn_main(a: ConnBench) -> anyhow::Result<Summary> {
    let mut h = Harness::new(&a.net).await?;
    h.start_progress(ProgressKind::Conn, a.count as u64);
    let (ctx, stops) = (h.ctx.clone(), h.stops.clone());
    let (holders, connect_secs) = h
        .open("c", a.count, move |i, conn| {
            let (ctx, stops) = (ctx.clone(), stops.clone());
            async move { Ok(tokio::spawn(worker::holder(conn, i, ctx, stops))) }
        })
        .await;
    let connected = holders.iter().flatten().count() as u64;
    let held = h.hold(a.hold, holders).await;
    Ok(Summary {
        connections: a.count as u64,
        connected,
        connect_secs,
        duration_secs: held,
        ..h.summary("conn")
    })
}

async fn pub_main(a: PubBench) -> anyhow::Result<Summary> {
    let mut h = Harness::new(&a.net).await?;
    let plans = a.load.plans(a.count)?;
    h.start_progress(ProgressKind::Pub, a.count as u64);
    let (conns, connect_secs) = h
        .open("p", a.count, |_, conn| async move { Ok(conn) })
        .await;
    let conns = h.require_all(conns, "publishers")?;
    h.start_phase();
    let started = Instant::now();
    let mut pubs = JoinSet::new();
    for (conn, plan) in conns.into_iter().zip(plans) {
        pubs.spawn(worker::publisher(
            conn,
            plan,
            h.ctx.clone(),
            h.stops.clone(),
        ));
    }
    run_publishers(&h, &mut pubs, a.load.duration).await;
    let duration = started.elapsed().as_secs_f64();
    h.finish(&mut [&mut pubs]).await;
    Ok(Summary {
        qos: a.load.qos,
        payload_size: a.load.size,
        publishers: a.count as u64,
        connections: a.count as u64,
        connected: a.count as u64,
        connect_secs,
        duration_secs: duration,
        ..h.summary("pub")
    })
}

/// Waits for the publishers to finish their quota, or for `duration` (then
/// lets them drain their acknowledgements), or for Ctrl-C.
async fn run_publishers(h: &Harness, pubs: &mut JoinSet<()>, duration: Option<f64>) {
    let deadline = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = h.join(pubs) => return,
        _ = deadline => {}
    }
    let _ = h.stop_pub.send(true);
    // Outstanding QoS 1/2 acknowledgements get a bounded time to arrive.
    let _ = tokio::time::timeout(Duration::from_secs(10), h.join(pubs)).await;
}

async fn sub_main(a: SubBench) -> anyhow::Result<Summary> {
    let mut h = Harness::new(&a.net).await?;
    let qos = QoS::from_u8(a.qos).unwrap_or(QoS::AtMostOnce);
    h.start_progress(ProgressKind::Sub, a.count as u64);
    let pattern = a.topic.clone();
    let (conns, connect_secs) = h
        .open("s", a.count, move |i, mut conn| {
            let filter = topic_for(&pattern, i);
            async move {
                conn.subscribe(&filter, qos).await?;
                Ok(conn)
            }
        })
        .await;
    let conns = h.require_all(conns, "subscribers")?;
    h.start_phase();
    let started = Instant::now();
    let mut subs = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        subs.spawn(worker::subscriber(conn, i, h.ctx.clone(), h.stops.clone()));
    }
    let deadline = async {
        match a.duration {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    let enough = async {
        let Some(n) = a.messages else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while h.counters.received.load(Ordering::Relaxed) < n {
            tick.tick().await;
        }
    };
    tokio::select! {
        _ = deadline => {}
        _ = enough => {}
        _ = h.join(&mut subs) => {}
    }
    let duration = started.elapsed().as_secs_f64();
    h.finish(&mut [&mut subs]).await;
    let mut s = h.summary("sub");
    // With outside publishers, the receive rate is over the measured phase.
    s.recv_secs = duration;
    Ok(Summary {
        qos: a.qos,
        subscribers: a.count as u64,
        connections: a.count as u64,
        connected: a.count as u64,
        connect_secs,
        duration_secs: duration,
        ..s
    })
}

async fn pubsub_main(a: PubSubBench) -> anyhow::Result<Summary> {
    if a.load.size < 8 {
        bail!("pubsub needs payloads of at least 8 bytes (-s) to carry the send time");
    }
    if a.count == 0 {
        bail!("-c must be at least 1");
    }
    let (publishers, subscribers) = match a.mode {
        Mode::FanIn => (a.count, 1),
        Mode::FanOut => (1, a.count),
        Mode::Pairs => (a.count, a.count),
    };
    let filters: Vec<String> = match (a.mode, &a.filter) {
        (Mode::Pairs, Some(_)) => bail!("--filter does not apply to pairs"),
        (Mode::Pairs, None) => (0..a.count).map(|i| topic_for(&a.load.topic, i)).collect(),
        (_, Some(f)) => vec![f.clone(); subscribers],
        (Mode::FanIn, None) => vec![wildcard_filter(&a.load.topic)?],
        (Mode::FanOut, None) => vec![topic_for(&a.load.topic, 0); subscribers],
    };
    let plans = a.load.plans(publishers)?;
    let qos = a.load.qos();
    let mut h = Harness::new(&a.net).await?;
    h.start_progress(ProgressKind::PubSub, (publishers + subscribers) as u64);
    let filters = Arc::new(filters);
    let pub_net = h.net.clone();
    if let Some(port) = a.sub_port {
        let mut opts = pub_net.opts.clone();
        opts.port = port;
        h.net = Arc::new(NetConfig::new(opts, a.net.ifaddr.clone()).await?);
    }
    let (subs, sub_secs) = h
        .open("s", subscribers, move |i, mut conn| {
            let filters = filters.clone();
            async move {
                conn.subscribe(&filters[i], qos).await?;
                Ok(conn)
            }
        })
        .await;
    let subs = h.require_all(subs, "subscribers")?;
    h.net = pub_net;
    let (pubs, pub_secs) = h
        .open("p", publishers, |_, conn| async move { Ok(conn) })
        .await;
    let pubs = h.require_all(pubs, "publishers")?;
    h.start_phase();
    let started = Instant::now();
    let mut sub_set = JoinSet::new();
    for (i, conn) in subs.into_iter().enumerate() {
        sub_set.spawn(worker::subscriber(conn, i, h.ctx.clone(), h.stops.clone()));
    }
    let mut pub_set = JoinSet::new();
    for (conn, plan) in pubs.into_iter().zip(plans) {
        pub_set.spawn(worker::publisher(
            conn,
            plan,
            h.ctx.clone(),
            h.stops.clone(),
        ));
    }
    run_publishers(&h, &mut pub_set, a.load.duration).await;
    let factor = match a.mode {
        Mode::FanOut => subscribers as u64,
        Mode::FanIn | Mode::Pairs => 1,
    };
    let expected = h.counters.sent.load(Ordering::Relaxed) * factor;
    // Drain: wait for everything sent to arrive, or for progress to stop.
    let drain = Duration::from_secs_f64(a.drain_timeout.max(0.0));
    let mut last = (h.counters.received.load(Ordering::Relaxed), Instant::now());
    while !h.interrupted() {
        let received = h.counters.received.load(Ordering::Relaxed);
        if received >= expected {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() >= drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duration = started.elapsed().as_secs_f64();
    h.finish(&mut [&mut pub_set, &mut sub_set]).await;
    Ok(Summary {
        mode: Some(a.mode.name()),
        qos: a.load.qos,
        payload_size: a.load.size,
        publishers: publishers as u64,
        subscribers: subscribers as u64,
        connections: (publishers + subscribers) as u64,
        connected: (publishers + subscribers) as u64,
        connect_secs: sub_secs + pub_secs,
        duration_secs: duration,
        expected: Some(expected),
        ..h.summary("pubsub")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_valid() {
        use clap::Args;
        BenchArgs::augment_args(clap::Command::new("bench")).debug_assert();
    }

    #[test]
    fn topics_and_filters() {
        assert_eq!(topic_for("bench/%i", 3), "bench/3");
        assert_eq!(topic_for("fixed", 3), "fixed");
        assert_eq!(wildcard_filter("bench/%i").unwrap(), "bench/+");
        assert_eq!(wildcard_filter("a/%i/b").unwrap(), "a/+/b");
        assert_eq!(wildcard_filter("a/b").unwrap(), "a/b");
        assert!(wildcard_filter("a/x%i").is_err());
    }

    #[test]
    fn quotas_add_up() {
        let load = LoadArgs {
            interval: None,
            rate: Some(1000.0),
            qos: 1,
            size: 64,
            topic: "t/%i".into(),
            messages: Some(10),
            duration: None,
            inflight: 100,
        };
        let plans = load.plans(3).unwrap();
        let quotas: Vec<u64> = plans.iter().map(|p| p.quota.unwrap()).collect();
        assert_eq!(quotas, [4, 3, 3]);
        assert_eq!(plans[2].topic, "t/2");
        assert_eq!(plans[0].interval, Some(Duration::from_millis(3)));
    }
}

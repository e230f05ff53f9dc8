//! Opening connections: raw TCP through the codec for `mqtt://` (the fast
//! path), or `starling-client` for TLS and WebSocket transports. Also the
//! launcher that opens N connections at a rate with bounded concurrency.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use starling_client::{Client, ConnectCode, ConnectOptions, ProtocolVersion, TransportKind};
use starling_codec::{
    ByteString, Connect, Decoder, Packet, QoS, Subscribe, Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::report::{self, Counters, Latency};

/// Where and how to connect.
pub struct NetConfig {
    /// Options for the client library path (and the source of every setting).
    pub opts: ConnectOptions,
    /// The resolved address, for raw TCP connections.
    pub addr: Option<SocketAddr>,
    /// Local addresses to bind, round-robin (for more than ~28k connections
    /// from one address).
    pub ifaddrs: Vec<IpAddr>,
    /// Next source port to try (see [`NetConfig::connect_from_own_port`]).
    next_port: AtomicUsize,
    /// The ephemeral port range, from `/proc/sys/net/ipv4/ip_local_port_range`.
    ports: (u16, u16),
}

/// How many source ports to try before letting the kernel choose.
const PORT_TRIES: usize = 16;

/// A TCP socket of `local`'s address family.
fn new_socket(local: IpAddr) -> std::io::Result<TcpSocket> {
    if local.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// The kernel's ephemeral port range, or Linux's default.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(lo, hi)| lo < hi)
        .unwrap_or((32768, 60999))
}

impl NetConfig {
    /// Resolves the host for the raw TCP path.
    pub async fn new(opts: ConnectOptions, ifaddrs: Vec<IpAddr>) -> anyhow::Result<NetConfig> {
        let addr = if opts.transport == TransportKind::Tcp {
            let addr = tokio::net::lookup_host((opts.host.as_str(), opts.port))
                .await
                .with_context(|| format!("cannot resolve {}", opts.address()))?
                .next()
                .ok_or_else(|| anyhow!("{} resolves to no address", opts.address()))?;
            Some(addr)
        } else {
            if !ifaddrs.is_empty() {
                bail!("--ifaddr works with mqtt:// only");
            }
            None
        };
        let ports = ephemeral_ports();
        // Start somewhere random, so that back-to-back runs do not reuse the
        // ports that the last one left in TIME_WAIT.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
        Ok(NetConfig {
            opts,
            addr,
            ifaddrs,
            next_port: AtomicUsize::new(start),
            ports,
        })
    }

    /// Connects from a source port picked here, round-robin over the
    /// ephemeral range. Left to itself, `connect` searches the range for a free
    /// port under a kernel lock, and with tens of thousands of connections that
    /// search dominates the load generator's time (perf: `__inet_hash_connect`,
    /// `__inet_check_established`) and caps the connection rate whatever the
    /// broker. A port that cannot be bound, or whose 4-tuple is taken (another
    /// process connected from it, or TIME_WAIT), is skipped; `None` after a
    /// few misses, and the caller lets the kernel choose after all.
    async fn connect_from_own_port(
        &self,
        local: IpAddr,
        addr: SocketAddr,
    ) -> Option<std::io::Result<TcpStream>> {
        let (lo, hi) = self.ports;
        let span = usize::from(hi - lo) + 1;
        for _ in 0..PORT_TRIES {
            let socket = match new_socket(local) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = socket.set_reuseaddr(true) {
                return Some(Err(e));
            }
            let n = self.next_port.fetch_add(1, Ordering::Relaxed);
            let port = lo + (n % span) as u16;
            if socket.bind(SocketAddr::new(local, port)).is_err() {
                continue;
            }
            match socket.connect(addr).await {
                Ok(stream) => return Some(Ok(stream)),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                    ) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    pub fn version(&self) -> ProtocolVersion {
        self.opts.version
    }

    /// Opens one connection and waits for a successful CONNACK.
    pub async fn connect(&self, client_id: String, index: usize) -> anyhow::Result<Conn> {
        match self.addr {
            Some(addr) => {
                let fut = self.connect_raw(addr, client_id, index);
                match tokio::time::timeout(self.opts.connect_timeout, fut).await {
                    Ok(r) => r.map(Conn::Raw),
                    Err(_) => bail!(
                        "connect to {} timed out after {:?} without a CONNACK",
                        self.opts.address(),
                        self.opts.connect_timeout
                    ),
                }
            }
            None => {
                let mut o = self.opts.clone();
                o.client_id = client_id;
                let (client, _) = Client::connect(o).await?;
                Ok(Conn::Client(client))
            }
        }
    }

    async fn connect_raw(
        &self,
        addr: SocketAddr,
        client_id: String,
        index: usize,
    ) -> anyhow::Result<RawConn> {
        let local = if self.ifaddrs.is_empty() {
            match addr {
                SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            }
        } else {
            self.ifaddrs[index % self.ifaddrs.len()]
        };
        let stream = match self.connect_from_own_port(local, addr).await {
            Some(result) => result,
            None if self.ifaddrs.is_empty() => TcpStream::connect(addr).await,
            None => {
                let socket = new_socket(local)?;
                socket
                    .bind(SocketAddr::new(local, 0))
                    .with_context(|| format!("cannot bind {local}"))?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("cannot connect to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let o = &self.opts;
        let mut c = Connect::new(o.version, client_id.as_str());
        c.clean_start = o.clean_start;
        if o.version.is_v5() {
            c.properties.session_expiry_interval = o.session_expiry;
        }
        c.keep_alive = u16::try_from(o.keep_alive.as_secs()).unwrap_or(u16::MAX);
        c.username = o.username.as_deref().map(ByteString::from);
        c.password = o.password.clone();
        let mut conn = RawConn {
            stream,
            rbuf: BytesMut::with_capacity(256),
            decoder: Decoder::with_version(o.version),
            version: o.version,
            receive_maximum: u16::MAX,
        };
        conn.send(&Packet::Connect(Box::new(c))).await?;
        match conn.recv().await? {
            Packet::ConnAck(ack) if ack.reason_code.is_error() => {
                let code = if o.version.is_v5() {
                    ConnectCode::V5(ack.reason_code)
                } else {
                    ConnectCode::V3(ack.return_code())
                };
                bail!("connection refused: {code}")
            }
            Packet::ConnAck(ack) => {
                conn.receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
                Ok(conn)
            }
            other => bail!("expected CONNACK, got {:?}", other.packet_type()),
        }
    }
}

/// An open connection.
pub enum Conn {
    /// Raw TCP, driven through the codec by the bench's own loops.
    Raw(RawConn),
    /// A `starling-client` connection (TLS, WebSocket).
    Client(Client),
}

impl Conn {
    /// Subscribes to one filter and checks the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let code = match self {
            Conn::Raw(raw) => {
                let sub = Subscribe {
                    packet_id: 1,
                    properties: Default::default(),
                    subscriptions: vec![Subscription {
                        filter: ByteString::from(filter),
                        options: SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    }],
                };
                raw.send(&Packet::Subscribe(sub)).await?;
                match raw.recv().await? {
                    Packet::SubAck(ack) => ack
                        .reason_codes
                        .first()
                        .copied()
                        .ok_or_else(|| anyhow!("SUBACK without a code"))?,
                    other => bail!("expected SUBACK, got {:?}", other.packet_type()),
                }
            }
            Conn::Client(c) => c.subscribe(filter, qos).await?,
        };
        if code.is_error() {
            bail!("subscription to {filter} refused: {code}");
        }
        Ok(())
    }

    /// Closes the connection politely.
    pub async fn disconnect(self) {
        match self {
            Conn::Raw(mut raw) => {
                // DISCONNECT, normal disconnection: two bytes in every version.
                let _ = raw.stream.write_all(&[0xE0, 0x00]).await;
                let _ = raw.stream.shutdown().await;
            }
            Conn::Client(c) => {
                let _ = c.disconnect().await;
            }
        }
    }
}

/// A raw connection: socket, receive buffer and decoder.
pub struct RawConn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub decoder: Decoder,
    pub version: ProtocolVersion,
    /// The server's Receive Maximum (how many QoS 1/2 publishes we may have in flight).
    pub receive_maximum: u16,
}

impl RawConn {
    pub async fn send(&mut self, p: &Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        p.encode(self.version, &mut buf)?;
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    /// The next packet; an error if the connection closes first.
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}

/// How many connections to open, how fast, and what to do with each once open.
pub struct Launch {
    pub count: usize,
    /// Connections per second; 0 for as fast as `concurrency` allows.
    pub rate: f64,
    /// Connection attempts in progress at once.
    pub concurrency: usize,
}

/// Opens `launch.count` connections with ids from `id(i)`, runs `setup` on each
/// (subscribing, or spawning the task that holds it), and returns what `setup`
/// made, in index order (`None` where it failed; failures are counted in
/// `counters`). Records CONNECT→CONNACK times
/// in `latency`. Stops early when `stop` is set.
pub async fn open_all<T, F, Fut>(
    net: &Arc<NetConfig>,
    launch: &Launch,
    id: impl Fn(usize) -> String,
    setup: F,
    counters: &Arc<Counters>,
    latency: &Arc<Latency>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize, Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(launch.concurrency.max(1)));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(launch.count);
    for i in 0..launch.count {
        if *stop.borrow() {
            break;
        }
        if launch.rate > 0.0 {
            let at = started + Duration::from_secs_f64(i as f64 / launch.rate);
            tokio::time::sleep_until(at).await;
        }
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let net = net.clone();
        let counters = counters.clone();
        let latency = latency.clone();
        let setup = setup.clone();
        let client_id = id(i);
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = match net.connect(client_id, i).await {
                Ok(conn) => {
                    report::record(
                        &mut latency.shard(i),
                        t0.elapsed().as_nanos().try_into().unwrap_or(u64::MAX),
                    );
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    let made = setup(i, conn).await;
                    if made.is_err() {
                        counters.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    made
                }
                Err(e) => Err(e),
            };
            drop(permit);
            match result {
                Ok(made) => Some(made),
                Err(e) => {
                    counters.connect_error(format!("{e:#}"));
                    None
                }
            }
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(t.await.ok().flatten());
    }
    conns
}

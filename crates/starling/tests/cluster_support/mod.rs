//! The cluster harness: three `nats-server`s with JetStream in one NATS
//! cluster, and three Starling nodes (`starling broker --cluster`), node i
//! connected to NATS server i, each in its own temporary directory.
//!
//! - Ports: NATS client ports and Starling's MQTT ports are chosen by the
//!   programs themselves (`-1` and `:0`) and read from their logs; NATS
//!   cluster ports must be known up front (each server lists the others'
//!   routes), so they are picked free and the start is retried if one was
//!   taken meanwhile.
//! - Readiness is read from the children's stderr, through a pipe read on
//!   its own thread: a NATS server is up once it listens for routes and
//!   knows the JetStream metadata leader; a node once it listens and has
//!   logged "cluster state ready" (JetStream answered). Every wait has a deadline; nothing sleeps to
//!   wait.
//! - Every child is killed (SIGKILL) when the cluster is dropped; if the
//!   test is failing, the last lines of each child's log are printed first.
//! - Without `nats-server` the cluster tests are skipped, unless `CI` is
//!   set: then they fail.
//!
//! `CLUSTER_TEST_LOG=debug` (any `--log-level` value that keeps `info`
//! lines) makes the nodes log more; `CLUSTER_TEST_TAIL=N` prints the last N
//! lines of each log (25) when a test fails; `CLUSTER_TEST_KEEP=1` keeps the
//! temporary directories.
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_client::{Client, ConnectOptions};
use starling_codec::{ConnAck, Connect, Decoder, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a NATS server or a node may take to be ready.
pub const STARTUP: Duration = Duration::from_secs(30);
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// The longest a whole test may run, its cluster's start excluded.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Whether this is a CI run (`CI` set, and not to `false` or `0`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    })
}

/// Debian's `haproxy`, or the first on `PATH`.
pub fn haproxy_binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/sbin/haproxy");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("haproxy"))
            .find(|p| p.is_file())
    })
}

/// The `nats-server` binary: `NATS_SERVER` if set (when it names no file,
/// there is none), else the Debian package's `/usr/sbin/nats-server` or the
/// first on `PATH`.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> = vec!["/usr/sbin".into(), "/usr/local/bin".into()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// Children and their logs

/// A child's stderr, line by line, read on its own thread (so a full pipe
/// never stalls the child), with a condition variable to wait on.
#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<LogLines>, Condvar)>);

#[derive(Default)]
struct LogLines {
    lines: Vec<String>,
    closed: bool,
}

impl Log {
    fn follow(pipe: impl Read + Send + 'static) -> Log {
        let log = Log::default();
        let shared = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        let (lock, cv) = &*shared.0;
                        lock.lock().unwrap().lines.push(text);
                        cv.notify_all();
                    }
                }
            }
            let (lock, cv) = &*shared.0;
            lock.lock().unwrap().closed = true;
            cv.notify_all();
        });
        log
    }

    /// The first line that satisfies `pred`, waiting for it at most
    /// `limit`. `Err` says why not: the child closed its stderr (it ended),
    /// or the time ran out.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        self.wait_for_after(0, limit, pred)
    }

    /// As [`Log::wait_for`], among the lines after the first `skip` (those
    /// logged after [`Log::len`] said `skip`).
    pub fn wait_for_after(
        &self,
        skip: usize,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.0;
        let mut st = lock.lock().unwrap();
        let mut checked = skip.min(st.lines.len());
        loop {
            if let Some(line) = st.lines[checked..].iter().find(|l| pred(l)) {
                return Ok(line.clone());
            }
            checked = st.lines.len();
            if st.closed {
                return Err("the process ended".into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("not within {limit:?}"));
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.0 .0.lock().unwrap().lines.len()
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// Whether a line contains `needle` now.
    pub fn contains(&self, needle: &str) -> bool {
        self.0
             .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .any(|l| l.contains(needle))
    }

    /// The last `n` lines, without the storage engine's chatter.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let st = self.0 .0.lock().unwrap();
        let lines: Vec<&String> = st
            .lines
            .iter()
            .filter(|l| !l.contains("lsm_tree::"))
            .collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: Log,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let log = Log::follow(child.stderr.take().expect("piped stderr"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process stops answering (sockets stay open) until the
    /// returned guard is dropped, which sends SIGCONT.
    pub fn stop(&self) -> Stopped {
        let pid = self.pid().to_string();
        let stopped = Command::new("kill").args(["-STOP", &pid]).status();
        assert!(
            stopped.is_ok_and(|s| s.success()),
            "{} not stopped",
            self.name
        );
        Stopped(pid)
    }

    /// SIGTERM, then waits for the exit, at most `limit` (then SIGKILL).
    pub fn terminate(&mut self, limit: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What went wrong, with the end of the log.
    fn failure(&self, what: &str, why: &str) -> String {
        format!(
            "{} {what}: {why}; its log ends with:\n  {}",
            self.name,
            self.log.tail(30).join("\n  ")
        )
    }
}

/// A process stopped by [`Proc::stop`]; dropping this continues it.
pub struct Stopped(String);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// The cluster

/// One NATS server of the cluster.
pub struct NatsServer {
    pub proc: Proc,
    /// Its client address (127.0.0.1, or in its namespace) and port.
    pub host: String,
    pub port: u16,
    /// Its MQTT listener's port (the anchor), on `host`.
    pub mqtt: Option<u16>,
    /// Its configuration file.
    conf: PathBuf,
}

/// One Starling node.
pub struct Node {
    pub proc: Proc,
    /// Its node id (`node1`, ...).
    pub id: String,
    /// Its MQTT port on 127.0.0.1.
    pub port: u16,
    /// Behind the load balancer: its MQTT port (PROXY protocol only) and
    /// HTTP port, the same across restarts.
    pub pinned: Option<(u16, u16)>,
}

/// Three NATS servers and three Starling nodes (`nodes[i]` on `nats[i]`).
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub nats: Vec<NatsServer>,
    pub dir: PathBuf,
    started: Instant,
    /// HAProxy in front of the nodes, if started ([`Cluster::start_behind_proxy`]).
    pub proxy: Option<Proc>,
    /// The logs of the nodes' earlier runs (before a restart).
    retired: Vec<Vec<String>>,
    /// Its MQTT port.
    pub proxy_port: u16,
    /// NATS server 3's namespace, when it has one (dropped after the
    /// servers).
    pub partition: Option<netns::Partition>,
    /// When a fault test's fault took effect, if it marked it
    /// ([`Cluster::mark_fault`]).
    pub fault_at: Option<Instant>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn free_ports(n: usize) -> Vec<u16> {
    // Held together, so they differ from one another.
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("its address").port())
        .collect()
}

/// The port at the end of a log line such as `... on 127.0.0.1:4222`, or
/// after `addr=127.0.0.1:`.
fn port_in(line: &str, after: &str) -> Option<u16> {
    let rest = &line[line.find(after)? + after.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl Cluster {
    /// Starts a cluster for the test `tag`; `None` (after saying so) when
    /// `nats-server` is not installed and this is not CI.
    pub fn start(tag: &str) -> Option<Cluster> {
        Cluster::start_with(tag, false, false, false)
    }

    /// A cluster behind HAProxy (Debian's `haproxy`) in TCP mode: the
    /// nodes listen on fixed ports with the PROXY protocol, HAProxy sends
    /// PROXY v2 and checks each node's `/readyz`. `None` (after saying so)
    /// without `nats-server` or `haproxy`, unless this is CI.
    pub fn start_behind_proxy(tag: &str) -> Option<Cluster> {
        Cluster::start_behind_proxy_with(tag, false)
    }

    /// As [`Cluster::start_behind_proxy`], with NATS server 3 in a network
    /// namespace of its own when `partitionable` and namespaces can be made
    /// here (see `netns`; `Cluster::partition` says whether it is).
    pub fn start_behind_proxy_with(tag: &str, partitionable: bool) -> Option<Cluster> {
        let haproxy = haproxy_or_skip(tag)?;
        let mut cluster = Cluster::start_with(tag, true, partitionable, false)?;
        let servers: String = cluster
            .nodes
            .iter()
            .map(|n| {
                let (mqtt, http) = n.pinned.expect("pinned ports");
                format!("    server {} 127.0.0.1:{mqtt} port {http}\n", n.id)
            })
            .collect();
        let checks = "    option httpchk GET /readyz\n\
                      \x20   default-server send-proxy-v2 check inter 500ms fall 2 rise 2\n";
        cluster.start_proxy(&haproxy, checks, &servers);
        Some(cluster)
    }

    /// NATS's own MQTT listener (`mqtt { }`) on the three servers, behind
    /// HAProxy checking each MQTT port over TCP, and no Starling node: the
    /// anchor the fault tests compare with. Server 3 in a namespace when
    /// `partitionable` (and one can be made).
    pub fn start_anchor(tag: &str, partitionable: bool) -> Option<Cluster> {
        let haproxy = haproxy_or_skip(tag)?;
        let mut cluster = Cluster::start_with(tag, true, partitionable, true)?;
        let servers: String = cluster
            .nats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mqtt = s.mqtt.expect("an MQTT port");
                format!("    server n{} {}:{mqtt}\n", i + 1, s.host)
            })
            .collect();
        let checks = "    default-server check inter 500ms fall 2 rise 2\n";
        cluster.start_proxy(&haproxy, checks, &servers);
        Some(cluster)
    }

    /// Starts HAProxy in front of `servers` (its `server` lines) with
    /// `checks` (the backend's check lines); waits until it listens.
    fn start_proxy(&mut self, haproxy: &Path, checks: &str, servers: &str) {
        self.proxy_port = free_ports(1)[0];
        let conf = self.dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n    maxconn 5000\n\
                 defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n\
                 \x20   timeout server 1h\n    timeout check 1s\n\
                 frontend mqtt\n    bind 127.0.0.1:{}\n    default_backend starling\n\
                 backend starling\n    balance roundrobin\n{checks}{servers}",
                self.proxy_port
            ),
        )
        .expect("the HAProxy configuration is written");
        let mut cmd = Command::new(haproxy);
        cmd.args(["-W", "-db", "-f"]).arg(&conf);
        self.proxy = Some(Proc::spawn("haproxy", cmd));
        let deadline = Instant::now() + STARTUP;
        while std::net::TcpStream::connect(("127.0.0.1", self.proxy_port)).is_err() {
            assert!(Instant::now() < deadline, "HAProxy does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `anchor`: NATS servers with their MQTT listener, and no node.
    fn start_with(tag: &str, proxied: bool, partitionable: bool, anchor: bool) -> Option<Cluster> {
        let Some(nats_bin) = nats_server_binary() else {
            if ci() {
                panic!(
                    "no nats-server (apt-get install nats-server, or \
                     NATS_SERVER=/path/to/nats-server) and CI is set: the cluster tests \
                     cannot run"
                );
            }
            eprintln!(
                "SKIPPED cluster test {tag}: no nats-server (apt-get install nats-server, \
                 or NATS_SERVER=/path/to/nats-server); under CI=true this fails instead"
            );
            return None;
        };
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "starling-cluster-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            nats: Vec::new(),
            dir,
            started,
            proxy: None,
            proxy_port: 0,
            retired: Vec::new(),
            partition: None,
            fault_at: None,
        };
        if partitionable {
            match netns::Partition::create() {
                Ok(p) => cluster.partition = Some(p),
                Err(e) => eprintln!(
                    "cluster {tag}: no network namespace could be made ({e}): the \
                     partition is made by stopping the NATS server instead"
                ),
            }
        }
        // A cluster port picked free may be taken before its server binds
        // it: that server exits, and the servers start again on new ports.
        let mut last = String::new();
        for attempt in 0..3 {
            let mqtt = anchor.then(|| free_ports(3));
            let net = cluster.partition.as_ref();
            match start_nats(&nats_bin, &cluster.dir, attempt, net, mqtt.as_deref()) {
                Ok(servers) => {
                    cluster.nats = servers;
                    break;
                }
                Err(e) => last = e,
            }
        }
        assert!(
            !cluster.nats.is_empty(),
            "the NATS servers did not start: {last}"
        );
        if anchor {
            eprintln!(
                "anchor {tag}: 3 NATS servers with MQTT listeners on {:?}, ready in {:?}",
                cluster.nats.iter().map(|s| s.mqtt).collect::<Vec<_>>(),
                started.elapsed()
            );
            return Some(cluster);
        }
        let pins: Vec<Option<(u16, u16)>> = if proxied {
            let p = free_ports(6);
            (0..3).map(|i| Some((p[2 * i], p[2 * i + 1]))).collect()
        } else {
            vec![None; 3]
        };
        for (i, server) in cluster.nats.iter().enumerate() {
            let nats = format!("{}:{}", server.host, server.port);
            let node = start_node(&cluster.dir, i + 1, &nats, "", pins[i]);
            cluster.nodes.push(node);
        }
        for node in &mut cluster.nodes {
            node.port = wait_node(&node.proc, node.pinned);
        }
        eprintln!(
            "cluster {tag}: 3 NATS servers (client ports {:?}) and nodes on MQTT ports {:?}, \
             ready in {:?}",
            cluster.nats.iter().map(|s| s.port).collect::<Vec<_>>(),
            cluster.nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
            started.elapsed()
        );
        Some(cluster)
    }

    /// The MQTT port of node `n` (1, 2 or 3).
    pub fn port(&self, n: usize) -> u16 {
        self.nodes[n - 1].port
    }

    /// Starts node `n` again (after its process was killed), on its data
    /// directory and NATS server; waits until it is ready.
    pub fn restart_node(&mut self, n: usize) {
        self.restart_node_with(n, "");
    }

    /// Kills node `n` if it runs and starts it again with `cluster` added
    /// to its `[cluster]` table (TOML lines).
    pub fn restart_node_with(&mut self, n: usize, cluster: &str) {
        self.nodes[n - 1].proc.kill();
        self.retired.push(self.nodes[n - 1].proc.log.all());
        let nats = format!("{}:{}", self.nats[n - 1].host, self.nats[n - 1].port);
        let pinned = self.nodes[n - 1].pinned;
        let mut node = start_node(&self.dir, n, &nats, cluster, pinned);
        node.port = wait_node(&node.proc, pinned);
        self.nodes[n - 1] = node;
    }

    /// Stops node `n` as an operator does (SIGTERM) and waits, at most
    /// [`STARTUP`], for it to exit; then starts it again on its data
    /// directory and ports, and waits until it is ready.
    pub fn restart_node_gracefully(&mut self, n: usize) {
        self.nodes[n - 1].proc.terminate(STARTUP);
        self.restart_node(n);
    }

    /// Kills NATS server `n` (1, 2 or 3).
    pub fn stop_nats(&mut self, n: usize) {
        self.nats[n - 1].proc.kill();
    }

    /// Starts NATS server `n` again, on its client port and store.
    pub fn restart_nats(&mut self, n: usize) {
        let server = &mut self.nats[n - 1];
        let conf = std::fs::read_to_string(&server.conf).expect("its configuration");
        let conf = conf.replace(
            &format!("listen: {}:-1", server.host),
            &format!("listen: {}:{}", server.host, server.port),
        );
        std::fs::write(&server.conf, conf).expect("its configuration is written");
        let bin = nats_server_binary().expect("nats-server");
        let mut cmd = match (&self.partition, n) {
            (Some(p), 3) => p.command(&bin),
            _ => Command::new(bin),
        };
        cmd.arg("-c").arg(&server.conf);
        let name = server.proc.name.clone();
        server.proc = Proc::spawn(&name, cmd);
        server
            .proc
            .log
            .wait_for(STARTUP, |l| {
                l.contains("Listening for client connections on")
            })
            .unwrap_or_else(|e| panic!("{}", server.proc.failure("did not restart", &e)));
    }

    /// Every node run's log lines: the earlier runs', then the current.
    pub fn node_logs(&self) -> Vec<Vec<String>> {
        let mut logs = self.retired.clone();
        logs.extend(self.nodes.iter().map(|n| n.proc.log.all()));
        logs
    }

    /// The NATS server (1, 2 or 3) that last logged becoming the leader of
    /// stream `name`.
    pub fn leader_of(&self, name: &str) -> Option<usize> {
        let needle = format!("new stream leader for '$G > {name}'");
        self.nats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let lines = s.proc.log.all();
                let last = lines.iter().rev().find(|l| l.contains(&needle))?;
                // "[pid] 2026/12/04 17:32:26.837596 [INF] ...": date and time.
                let mut words = last.split_whitespace().skip(1);
                let at = format!("{} {}", words.next()?, words.next()?);
                Some((at, i + 1))
            })
            .max()
            .map(|(_, n)| n)
    }

    /// Marks now as the instant the fault took effect (the last server
    /// stopped, the link cut): a node's deliveries before it count as made
    /// before the fault.
    pub fn mark_fault(&mut self) {
        self.fault_at = Some(Instant::now());
    }

    /// How long the cluster has run.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until node `n` (1-based) logged that it adopted all the
    /// sessions of a node it found dead.
    pub fn wait_adopted(&self, n: usize, limit: Duration) -> Result<String, String> {
        self.nodes[n - 1].proc.log.wait_for(limit, |l| {
            l.contains("adopted the persistent sessions of a dead node")
                && l.contains("complete=true")
        })
    }

    /// What node `n` (1-based) says of the sessions whose client ids
    /// start with `prefix` (the admin API's answer, body only; for a
    /// failed check's report). Only for a cluster behind the proxy.
    pub fn sessions(&self, n: usize, prefix: &str) -> Option<String> {
        let (_, http) = self.nodes[n - 1].pinned?;
        let answer = http_get(http, &format!("/api/v1/sessions?client_id_prefix={prefix}"))?;
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
    }

    /// Waits (polling every 100 ms, at most `limit`) until node `n`'s
    /// `/readyz` answers with `status` in its body (`"ok"`, `"degraded"`),
    /// as HAProxy's check would see it. Only for a cluster behind the
    /// proxy (the nodes' HTTP ports are pinned there).
    pub fn wait_readyz(&self, n: usize, status: &str, limit: Duration) -> Result<(), String> {
        let (_, http) = self.nodes[n - 1]
            .pinned
            .expect("node HTTP ports are pinned");
        let want = format!("\"status\":\"{status}\"");
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            last = readyz(http);
            if last.as_deref().is_some_and(|r| r.contains(&want)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "node {n}'s /readyz answered {last:?}, not {want}, for {limit:?}"
        ))
    }
}

/// The whole answer (status line, headers, body) of `GET /readyz` on
/// 127.0.0.1:`port` (`None`: none within a second).
fn readyz(port: u16) -> Option<String> {
    http_get(port, "/readyz")
}

/// The whole answer of `GET path` on 127.0.0.1:`port` (`None`: none within
/// a second).
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let limit = Some(Duration::from_secs(1));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(limit).ok()?;
    s.set_write_timeout(limit).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    s.take(64 * 1024).read_to_string(&mut answer).ok()?;
    Some(answer)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = std::env::var("CLUSTER_TEST_TAIL")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(25);
            let procs = self
                .nodes
                .iter()
                .map(|n| &n.proc)
                .chain(self.nats.iter().map(|s| &s.proc))
                .chain(self.proxy.iter());
            for p in procs {
                eprintln!(
                    "---- last lines of {} (pid {}):\n  {}",
                    p.name,
                    p.pid(),
                    p.log.tail(lines).join("\n  ")
                );
            }
        }
        // The nodes first, so that they do not log the servers going away.
        self.proxy = None;
        self.nodes.clear();
        self.nats.clear();
        if std::env::var_os("CLUSTER_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

/// HAProxy's binary; `None` (after saying so) outside CI without it.
fn haproxy_or_skip(tag: &str) -> Option<PathBuf> {
    let found = haproxy_binary();
    if found.is_none() {
        assert!(
            !ci(),
            "no haproxy (apt-get install haproxy) and CI is set: the fault tests cannot run"
        );
        eprintln!("SKIPPED {tag}: no haproxy (apt-get install haproxy)");
    }
    found
}

/// Three NATS servers with JetStream, routed to one another; each is ready
/// once it listens for routes.
/// With `net`, server 3 runs in its namespace and the routes go over its
/// route link.
fn start_nats(
    bin: &Path,
    dir: &Path,
    attempt: usize,
    net: Option<&netns::Partition>,
    mqtt: Option<&[u16]>,
) -> Result<Vec<NatsServer>, String> {
    let cluster_ports = free_ports(3);
    // (client address, route address) of each server.
    let addrs: Vec<(String, String)> = (0..3)
        .map(|i| match net {
            Some(p) if i == 2 => (p.client_addr.clone(), p.route_ns.clone()),
            Some(p) => ("127.0.0.1".to_string(), p.route_host.clone()),
            None => ("127.0.0.1".to_string(), "127.0.0.1".to_string()),
        })
        .collect();
    // A name of its own: should a port picked here be taken by another
    // test's server, the routes to it are refused rather than joining the
    // two clusters.
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cluster_name = format!("{dir_name}-{attempt}");
    let routes = cluster_ports
        .iter()
        .zip(&addrs)
        .map(|(p, (_, route))| format!("nats://{route}:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut procs = Vec::new();
    for (i, cport) in cluster_ports.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let store = dir.join(format!("{name}-{attempt}"));
        let conf = dir.join(format!("{name}-{attempt}.conf"));
        let (host, route) = &addrs[i];
        let mqtt_block = match mqtt {
            Some(ports) => format!("mqtt {{ listen: {host}:{} }}\n", ports[i]),
            None => String::new(),
        };
        std::fs::write(
            &conf,
            format!(
                "server_name: {name}\n\
                 listen: {host}:-1\n\
                 max_payload: 8MB\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{ name: {cluster_name:?}, listen: {route}:{cport}, routes: [{routes}], no_advertise: true }}\n\
                 {mqtt_block}"
            ),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut cmd = match net {
            Some(p) if i == 2 => p.command(bin),
            _ => Command::new(bin),
        };
        cmd.arg("-c").arg(&conf);
        procs.push(Proc::spawn(&format!("nats-server {name}"), cmd));
    }
    let mut servers = Vec::new();
    for (i, (proc, (host, _))) in procs.into_iter().zip(addrs).enumerate() {
        let line = proc
            .log
            .wait_for(STARTUP, |l| {
                l.contains("Listening for client connections on")
            })
            .map_err(|e| proc.failure("did not listen for clients", &e))?;
        let port = port_in(&line, &format!("client connections on {host}:"))
            .ok_or_else(|| proc.failure("logged no client port", &line))?;
        proc.log
            .wait_for(STARTUP, |l| {
                l.contains("Listening for route connections on")
            })
            .map_err(|e| proc.failure("did not listen for routes", &e))?;
        let conf = dir.join(format!(
            "{}-{attempt}.conf",
            &proc.name["nats-server ".len()..]
        ));
        servers.push(NatsServer {
            proc,
            host,
            port,
            mqtt: mqtt.map(|m| m[i]),
            conf,
        });
    }
    // JetStream answers once the servers have elected a metadata leader:
    // the nodes started before that would wait for their first request to
    // time out.
    for s in &servers {
        s.proc
            .log
            .wait_for(STARTUP, |l| l.contains("metadata leader"))
            .map_err(|e| s.proc.failure("knows no JetStream leader", &e))?;
    }
    Ok(servers)
}

fn start_node(dir: &Path, n: usize, nats: &str, cluster: &str, pinned: Option<(u16, u16)>) -> Node {
    let id = format!("node{n}");
    let config = dir.join(format!("{id}.toml"));
    let toml = format!("[cluster]\nnats = [\"nats://{nats}\"]\nnode-id = \"{id}\"\n{cluster}\n");
    std::fs::write(&config, toml).expect("the node's configuration is written");
    let level = std::env::var("CLUSTER_TEST_LOG").unwrap_or_else(|_| "info".into());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starling"));
    cmd.arg("broker");
    match pinned {
        Some((mqtt, http)) => cmd
            .args([
                "--listen",
                &format!("mqtt://127.0.0.1:{mqtt}?proxy-protocol=true"),
            ])
            .args(["--http-listen", &format!("http://127.0.0.1:{http}")]),
        None => cmd.args(["--listen", "mqtt://127.0.0.1:0"]),
    };
    cmd.arg("--data-dir")
        .arg(dir.join(&id))
        .arg("--config")
        .arg(&config)
        .args(["--log-level", &level, "--log-format", "text"])
        .env_remove("RUST_LOG");
    Node {
        proc: Proc::spawn(&format!("starling {id}"), cmd),
        id,
        port: 0,
        pinned,
    }
}

/// Waits until a node listens and its cluster state is ready; its port.
fn wait_node(proc: &Proc, pinned: Option<(u16, u16)>) -> u16 {
    if let Some((mqtt, _)) = pinned {
        proc.log
            .wait_for(STARTUP, |l| l.contains("cluster state ready"))
            .unwrap_or_else(|e| panic!("{}", proc.failure("has no cluster state", &e)));
        return mqtt;
    }
    let line = proc
        .log
        .wait_for(STARTUP, |l| l.contains("listening") && l.contains("addr="))
        .unwrap_or_else(|e| panic!("{}", proc.failure("did not listen", &e)));
    let port = port_in(&line, "addr=127.0.0.1:")
        .unwrap_or_else(|| panic!("{}", proc.failure("logged no port", &line)));
    // It listens after waiting up to 10 s for JetStream; it may still be
    // waiting for it (then it serves clean sessions only).
    proc.log
        .wait_for(STARTUP, |l| l.contains("cluster state ready"))
        .unwrap_or_else(|e| panic!("{}", proc.failure("has no cluster state", &e)));
    port
}

// ---------------------------------------------------------------------------
// Running a test

/// Runs the body of a test on a two-thread runtime, within [`TEST_LIMIT`].
pub fn run<F: std::future::Future<Output = ()>>(body: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        tokio::time::timeout(TEST_LIMIT, body)
            .await
            .unwrap_or_else(|_| panic!("the test did not finish within {TEST_LIMIT:?}"))
    });
}

/// Options for a starling-client connection to `port` (MQTT 5, clean).
pub fn options(port: u16, client_id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.client_id = client_id.into();
    o.message_capacity = 1024;
    o.connect_timeout = WAIT;
    o
}

/// Connects a starling-client; panics if it cannot.
pub async fn connect(port: u16, client_id: &str) -> Client {
    Client::connect(options(port, client_id))
        .await
        .unwrap_or_else(|e| panic!("{client_id} connects to port {port}: {e}"))
        .0
}

/// Subscriptions travel between nodes asynchronously (NATS passes interest
/// on from server to server): publishes `probe` (QoS 0) on `publisher`
/// every 25 ms until `subscriber` receives it, within [`WAIT`]. Other
/// messages arriving meanwhile fail the test.
pub async fn until_routed(publisher: &Client, probe: &str, subscriber: &Client) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message on {probe} crossed to the subscriber within {WAIT:?}"
        );
        publisher
            .publish(probe, &b"probe"[..], starling_codec::QoS::AtMostOnce, false)
            .await
            .expect("the probe is sent");
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(25), subscriber.recv()).await {
            let m = m.expect("the subscriber is connected");
            assert_eq!(&*m.topic, probe, "unexpected message {m:?}");
            break;
        }
    }
    // Probes still on their way.
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(100), subscriber.recv()).await
    {
        assert_eq!(&*m.topic, probe, "unexpected message {m:?}");
    }
}

// ---------------------------------------------------------------------------
// A raw MQTT peer, for exact packets (CONNACK and DISCONNECT reason codes)

/// What a raw peer read next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a few values per test
pub enum Next {
    Packet(Packet),
    /// The broker closed the connection.
    Closed,
    /// Nothing within the time given.
    Nothing,
}

/// A connection to a node that speaks MQTT through the codec.
#[derive(Debug)]
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
}

impl Raw {
    /// Connects and sends `connect`; the CONNACK, or `Err` if the broker
    /// closed the connection or sent something else first.
    pub async fn connect(port: u16, connect: Connect) -> Result<(Raw, ConnAck), String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot connect to {port}: {e}"))?;
        stream.set_nodelay(true).ok();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(connect.protocol),
            version: connect.protocol,
        };
        raw.send(Packet::Connect(Box::new(connect)))
            .await
            .map_err(|e| format!("CONNECT not sent: {e}"))?;
        match raw.next(WAIT).await {
            Next::Packet(Packet::ConnAck(ack)) => Ok((raw, ack)),
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
    }

    /// Sends a packet; `Err` if the connection is closed.
    pub async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encodes");
        self.stream.write_all(&out).await
    }

    /// The next packet within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Next {
        let read = async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(p)) => return Next::Packet(p),
                    Ok(None) => {}
                    Err(e) => panic!("the broker sent a bad packet: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .unwrap_or(Next::Nothing)
    }

    /// Whether the connection is alive: it answers PINGREQ with PINGRESP.
    /// Otherwise what came instead (a DISCONNECT, or the close).
    pub async fn ping(&mut self) -> Result<(), Next> {
        if self.send(Packet::PingReq).await.is_err() {
            return Err(Next::Closed);
        }
        match self.next(WAIT).await {
            Next::Packet(Packet::PingResp) => Ok(()),
            other => Err(other),
        }
    }
}

//! Interoperability: real third-party clients against the in-process broker.
//!
//! - mosquitto_pub / mosquitto_sub (apt `mosquitto-clients`), spawned with
//!   `-h 127.0.0.1 -p PORT -V mqttv311|mqttv5`;
//! - paho-mqtt 2.x for Python, through `tests/interop/paho_interop.py`, whose
//!   scenarios exit 0 on success and print `FAIL: why` otherwise.
//!
//! Both are installed by `scripts/install-test-deps.d/interop.sh`; when one is
//! missing the tests fail and say so, they never skip. Every child process is
//! bounded by [`PROC_TIMEOUT`] and killed when it runs over (or when its test
//! panics: `kill_on_drop`). A test never sleeps to let a subscriber get ready:
//! it polls the broker's subscription count, or waits for the paho script's
//! `SUBSCRIBED` line.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestBroker;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// The longest any child process may run.
const PROC_TIMEOUT: Duration = Duration::from_secs(60);
const PAHO_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_interop.py");
const INSTALL_HINT: &str = "install the interoperability test dependencies with \
     scripts/install-test-deps.d/interop.sh (apt mosquitto-clients, pip 'paho-mqtt>=2,<3')";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V {
    V31,
    V311,
    V5,
}

const VERSIONS: [V; 2] = [V::V311, V::V5];
/// With MQTT 3.1 too, for the basic publish/subscribe tests.
const ALL_VERSIONS: [V; 3] = [V::V31, V::V311, V::V5];

impl V {
    fn mosquitto(self) -> &'static str {
        match self {
            V::V31 => "mqttv31",
            V::V311 => "mqttv311",
            V::V5 => "mqttv5",
        }
    }

    fn paho(self) -> &'static str {
        match self {
            V::V31 => "3.1",
            V::V311 => "3.1.1",
            V::V5 => "5",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            V::V31 => "v31",
            V::V311 => "v311",
            V::V5 => "v5",
        }
    }
}

/// A child process with its stdout read line by line and its stderr collected.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    lines: Vec<String>,
    stderr: JoinHandle<String>,
}

impl Proc {
    fn spawn<S: AsRef<str>>(program: &str, args: &[S]) -> Proc {
        Self::spawn_with(program, args, Stdio::null())
    }

    fn spawn_with<S: AsRef<str>>(program: &str, args: &[S], stdin: Stdio) -> Proc {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let name = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(&args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Proc {
            name,
            stdin: child.stdin.take(),
            child,
            stdout,
            lines: Vec::new(),
            stderr,
        }
    }

    /// Kills the process and panics with everything it printed.
    async fn fail<T>(&mut self, why: &str) -> T {
        let _ = self.child.start_kill();
        let status = timeout(Duration::from_secs(5), self.child.wait()).await;
        let stderr = timeout(Duration::from_secs(5), &mut self.stderr)
            .await
            .map(|r| r.unwrap_or_default())
            .unwrap_or_default();
        panic!(
            "`{}`: {why}\nexit: {status:?}\nstdout:\n{}\nstderr:\n{stderr}",
            self.name,
            self.lines.join("\n")
        );
    }

    /// The next stdout line, `None` at the end of the output.
    async fn next_line(&mut self) -> Option<String> {
        match timeout(PROC_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) => {
                self.lines.push(l.clone());
                Some(l)
            }
            Ok(_) => None,
            Err(_) => self.fail("printed nothing for too long").await,
        }
    }

    async fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("piped stdin");
        if let Err(e) = stdin.write_all(format!("{line}\n").as_bytes()).await {
            self.fail(&format!("cannot write to stdin: {e}")).await
        }
    }

    /// Reads stdout until a line equals `line`.
    async fn wait_line(&mut self, line: &str) {
        let found = timeout(PROC_TIMEOUT, async {
            while let Ok(Some(l)) = self.stdout.next_line().await {
                let hit = l == line;
                self.lines.push(l);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        match found {
            Ok(true) => {}
            Ok(false) => self.fail(&format!("ended before printing {line:?}")).await,
            Err(_) => self.fail(&format!("timed out waiting for {line:?}")).await,
        }
    }

    /// Polls until the broker has `client_id` connected with a subscription to
    /// `filter`; fails early if the process exits first. A bounded poll, not a
    /// fixed wait.
    async fn until_subscribed(&mut self, b: &TestBroker, client_id: &str, filter: &str) {
        let deadline = Instant::now() + PROC_TIMEOUT;
        while !subscribed(b, client_id, filter) {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("exited ({status}) before subscribing"))
                    .await
            }
            if Instant::now() > deadline {
                self.fail(&format!("{client_id} never subscribed to {filter}"))
                    .await
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for a successful exit; returns every stdout line.
    async fn success(mut self) -> Vec<String> {
        let done = timeout(PROC_TIMEOUT, async {
            while let Ok(Some(l)) = self.stdout.next_line().await {
                self.lines.push(l);
            }
            self.child.wait().await
        })
        .await;
        match done {
            Ok(Ok(status)) if status.success() => self.lines,
            Ok(Ok(status)) => self.fail(&format!("exited with {status}")).await,
            Ok(Err(e)) => self.fail(&format!("wait failed: {e}")).await,
            Err(_) => {
                self.fail(&format!("still running after {PROC_TIMEOUT:?}"))
                    .await
            }
        }
    }

    /// SIGKILL, as a crash would.
    async fn kill(&mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// Whether `client_id` is connected and subscribed to `filter`. The broker
/// adds a subscription to its index before recording it in the session.
fn subscribed(b: &TestBroker, client_id: &str, filter: &str) -> bool {
    let session = b.state.session(client_id);
    session.is_some_and(|s| s.is_connected() && s.is_subscribed(filter))
}

/// Whether a connection of `client_id` is attached to the broker.
fn attached(b: &TestBroker, client_id: &str) -> bool {
    let session = b.state.session(client_id);
    session.is_some_and(|s| s.is_connected())
}

/// Fails (with the install hint) unless mosquitto_pub and mosquitto_sub run.
async fn need_mosquitto() {
    for tool in ["mosquitto_pub", "mosquitto_sub"] {
        let out = timeout(
            PROC_TIMEOUT,
            Command::new(tool).arg("--help").kill_on_drop(true).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{tool} --help hangs"))
        .unwrap_or_else(|e| panic!("{tool} is missing ({e}); {INSTALL_HINT}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(tool), "{tool} --help: {text}; {INSTALL_HINT}");
    }
}

/// Fails (with the install hint) unless python3 imports paho-mqtt 2.x.
async fn need_paho() {
    let check = "import paho.mqtt, sys; v = paho.mqtt.__version__; \
                 sys.exit(0 if v.split('.')[0] == '2' else 'paho-mqtt ' + v + ' is not 2.x')";
    let out = timeout(
        PROC_TIMEOUT,
        Command::new("python3")
            .args(["-c", check])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("python3 -c 'import paho.mqtt' hangs"))
    .unwrap_or_else(|e| panic!("python3 is missing ({e}); {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "python3 cannot import paho-mqtt 2.x: {}; {INSTALL_HINT}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn mosquitto_args(b: &TestBroker, v: V) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        b.tcp.port().to_string(),
        "-V".into(),
        v.mosquitto().into(),
    ]
}

/// mosquitto_sub with client id `id` and `extra` arguments.
fn mosquitto_sub(b: &TestBroker, v: V, id: &str, extra: &[&str]) -> Proc {
    let mut args = mosquitto_args(b, v);
    args.extend(["-i".to_string(), id.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn("mosquitto_sub", &args)
}

/// Runs mosquitto_pub to completion.
async fn mosquitto_pub(b: &TestBroker, v: V, extra: &[&str]) {
    let mut args = mosquitto_args(b, v);
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn("mosquitto_pub", &args).success().await;
}

/// The paho script running `scenario` against `b`.
fn paho(b: &TestBroker, scenario: &str, v: V, extra: &[&str]) -> Proc {
    let port = b.tcp.port().to_string();
    let mut args = vec!["-u", PAHO_SCRIPT, scenario, &port, v.paho()];
    args.extend_from_slice(extra);
    Proc::spawn_with("python3", &args, Stdio::piped())
}

/// Runs a paho scenario that checks everything itself. When it prints
/// `DETACHED <client id>`, answers `GO` once the broker has no connection of
/// that client attached (bounded polling).
async fn paho_ok(b: &TestBroker, scenario: &str, v: V) {
    let mut p = paho(b, scenario, v, &[]);
    while let Some(line) = p.next_line().await {
        if let Some(id) = line.strip_prefix("DETACHED ") {
            let deadline = Instant::now() + PROC_TIMEOUT;
            while attached(b, id) {
                if Instant::now() > deadline {
                    p.fail(&format!("{id} is still attached")).await
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            p.write_line("GO").await;
        }
    }
    let out = p.success().await;
    let ok = format!("OK {scenario} {}", v.paho());
    assert_eq!(out.last(), Some(&ok), "{out:?}");
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

// 1. mosquitto_pub -> mosquitto_sub ------------------------------------------

/// QoS 0, 1 and 2 from mosquitto_pub reach two mosquitto_subs (MQTT 3.1,
/// 3.1.1 and 5.0): one at QoS 2
/// printing `-v` (topic payload), one at QoS 1 printing QoS and retain flag,
/// so the delivered QoS is the lower of the published and the granted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_sub_qos_0_1_2() {
    need_mosquitto().await;
    for v in ALL_VERSIONS {
        let b = TestBroker::default().await;
        let filter = format!("mq/{}/#", v.tag());
        let mut verbose = mosquitto_sub(
            &b,
            v,
            "verbose",
            &["-q", "2", "-C", "3", "-v", "-t", &filter],
        );
        verbose.until_subscribed(&b, "verbose", &filter).await;
        let mut formatted = mosquitto_sub(
            &b,
            v,
            "formatted",
            &["-q", "1", "-C", "3", "-F", "%q %r %t %p", "-t", &filter],
        );
        formatted.until_subscribed(&b, "formatted", &filter).await;
        let mut expected = Vec::new();
        let mut expected_qos = Vec::new();
        for qos in 0..=2u8 {
            let topic = format!("mq/{}/q{qos}", v.tag());
            let payload = format!("hello qos {qos}");
            mosquitto_pub(
                &b,
                v,
                &["-q", &qos.to_string(), "-t", &topic, "-m", &payload],
            )
            .await;
            expected.push(format!("{topic} {payload}"));
            expected_qos.push(format!("{} 0 {topic} {payload}", qos.min(1)));
        }
        assert_eq!(sorted(verbose.success().await), sorted(expected), "{v:?}");
        assert_eq!(
            sorted(formatted.success().await),
            sorted(expected_qos),
            "{v:?}"
        );
        b.stop().await;
    }
}

/// A retained message from mosquitto_pub `-r` reaches a later mosquitto_sub
/// with the retain flag; over MQTT 5, user properties, content type, response
/// topic and correlation data set with `-D publish` arrive unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_retained_and_v5_properties() {
    need_mosquitto().await;
    for v in VERSIONS {
        let b = TestBroker::default().await;
        let topic = format!("mr/{}/state", v.tag());
        mosquitto_pub(&b, v, &["-q", "1", "-r", "-t", &topic, "-m", "on"]).await;
        let late = mosquitto_sub(
            &b,
            v,
            "late",
            &["-q", "2", "-C", "1", "-F", "%r %q %t %p", "-t", &topic],
        );
        assert_eq!(late.success().await, [format!("1 1 {topic} on")], "{v:?}");
        // Delete it so the next subscriber sees only the live message.
        mosquitto_pub(&b, v, &["-q", "1", "-r", "-t", &topic, "-n"]).await;
        if v == V::V5 {
            let mut sub = mosquitto_sub(
                &b,
                v,
                "props",
                &[
                    "-q",
                    "1",
                    "-C",
                    "1",
                    "-F",
                    "%t|%p|%P|%C|%R|%D|%F|%r",
                    "-t",
                    &topic,
                ],
            );
            sub.until_subscribed(&b, "props", &topic).await;
            #[rustfmt::skip]
            mosquitto_pub(&b, v, &[
                "-q", "1", "-t", &topic, "-m", "{\"on\":true}",
                "-D", "publish", "user-property", "origin", "mosquitto",
                "-D", "publish", "content-type", "application/json",
                "-D", "publish", "response-topic", "mr/reply",
                "-D", "publish", "correlation-data", "req-17",
                "-D", "publish", "payload-format-indicator", "1",
            ])
            .await;
            assert_eq!(
                sub.success().await,
                [format!(
                    "{topic}|{{\"on\":true}}|origin:mosquitto|application/json|mr/reply|req-17|1|0"
                )]
            );
        }
        b.stop().await;
    }
}

/// A persistent mosquitto_sub session (`-c -i ID`, MQTT 5 with `-x`) keeps its
/// subscription while offline, and the next connection gets the queued QoS 1
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_persistent_session_gets_queued_message() {
    need_mosquitto().await;
    for v in VERSIONS {
        let b = TestBroker::default().await;
        let id = format!("mosq-persist-{}", v.tag());
        let topic = format!("mp/{}", v.tag());
        // -E: exit once the subscription is acknowledged.
        let session = ["-c", "-x", "300"];
        let session = if v == V::V5 {
            &session[..]
        } else {
            &session[..1]
        };
        let mut args = session.to_vec();
        args.extend(["-q", "1", "-E", "-t", &topic]);
        mosquitto_sub(&b, v, &id, &args).success().await;
        mosquitto_pub(&b, v, &["-q", "1", "-t", &topic, "-m", "while-offline"]).await;
        let mut args = session.to_vec();
        args.extend(["-q", "1", "-C", "1", "-F", "%q %t %p", "-t", &topic]);
        let out = mosquitto_sub(&b, v, &id, &args).success().await;
        assert_eq!(out, [format!("1 {topic} while-offline")], "{v:?}");
        b.stop().await;
    }
}

// 2. paho-mqtt -----------------------------------------------------------------

/// Two paho clients (MQTT 3.1, 3.1.1 and 5.0) publish at QoS 0, 1 and 2 to
/// themselves and to each other, with QoS downgrade, a 16 KiB binary payload and unsubscribe; the
/// CONNACK reason code and session present flag are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_pubsub_qos_0_1_2() {
    need_paho().await;
    let b = TestBroker::default().await;
    for v in ALL_VERSIONS {
        paho_ok(&b, "pubsub", v).await;
    }
    b.stop().await;
}

/// MQTT 5 properties through the broker between paho clients: user properties
/// (order and duplicates kept, UTF-8), content type, response topic,
/// correlation data (binary) used for a request/response round trip, payload
/// format indicator, message expiry (counted down), subscription identifier,
/// topic alias, and an assigned client identifier for an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_properties_pass_through() {
    need_paho().await;
    let b = TestBroker::default().await;
    paho_ok(&b, "properties", V::V5).await;
    b.stop().await;
}

/// Retained messages with paho: a later subscriber gets them with the retain
/// flag, existing subscribers get live ones without it, an empty payload
/// deletes; over MQTT 5, Retain As Published and Retain Handling 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_retained_messages() {
    need_paho().await;
    let b = TestBroker::default().await;
    for v in VERSIONS {
        paho_ok(&b, "retained", v).await;
    }
    b.stop().await;
}

/// `max-retained-messages` with paho: past it, an MQTT 5 QoS 1 retained
/// PUBLISH gets PUBACK 0x97 and is not delivered; a 3.1.1 one, and QoS 0,
/// are delivered without being retained; replacing and clearing still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_retained_limit() {
    need_paho().await;
    for v in VERSIONS {
        let b = TestBroker::start(starling_broker::Config {
            max_retained_messages: 2,
            ..starling_broker::Config::default()
        })
        .await;
        paho_ok(&b, "retained-limit", v).await;
        assert_eq!(b.state.retained_count(), 0, "{v:?}");
        assert_eq!(b.state.retained_bytes(), 0, "{v:?}");
        let refused = b
            .state
            .metrics
            .retained_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(refused, 2, "{v:?}: the third topic and the QoS 0 one");
        b.stop().await;
    }
}

/// `max-sessions` with paho: past it a new client id is refused (MQTT 5:
/// CONNACK 0x97; 3.x: return code 3), and a session held resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_session_limit() {
    need_paho().await;
    for v in VERSIONS {
        let b = TestBroker::start(starling_broker::Config {
            max_sessions: 2,
            ..starling_broker::Config::default()
        })
        .await;
        paho_ok(&b, "session-limit", v).await;
        let refused = b
            .state
            .metrics
            .sessions_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(refused >= 1, "{v:?}: the third client id was refused");
        b.stop().await;
    }
}

/// Persistent sessions with paho: MQTT 5 clean start 0 with session expiry
/// 300 (3.1.1: clean session 0) resumes with session present 1, its
/// subscription, and the QoS 1 and 2 messages queued while offline; DISCONNECT
/// with expiry 0 (3.1.1: a clean session) ends it; a 1 s expiry lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_persistent_session_resumes() {
    need_paho().await;
    let b = TestBroker::default().await;
    for v in VERSIONS {
        paho_ok(&b, "session", v).await;
    }
    b.stop().await;
}

/// A persistent connection (3.1.1 clean session 0; 5.0 clean start 0 with
/// session expiry 300) takes over a client id whose connection is clean (3.1.1
/// clean session 1; 5.0 session expiry 0). That session ends with the old
/// connection, so CONNACK must say session present 0 and the new session must
/// not inherit its subscriptions ([MQTT-3.1.2-6]; MQTT 5 section 3.1.2.11.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_takeover_of_clean_session_starts_fresh() {
    need_paho().await;
    let b = TestBroker::default().await;
    for v in VERSIONS {
        paho_ok(&b, "takeover", v).await;
    }
    b.stop().await;
}

/// A paho client with a will (MQTT 5: with user property and content type) is
/// killed with SIGKILL; a paho subscriber and a mosquitto_sub both get the
/// will. Then a mosquitto_sub with `--will-topic` is killed and its will
/// reaches another mosquitto_sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_fires_when_client_is_killed() {
    need_paho().await;
    need_mosquitto().await;
    for v in VERSIONS {
        let b = TestBroker::default().await;
        let topic = format!("will/{}/paho", v.tag());
        let payload = format!("paho {} died", v.tag());
        let mut watcher = paho(&b, "will-watch", v, &[&topic, &payload]);
        watcher.wait_line("SUBSCRIBED").await;
        let mut msub = mosquitto_sub(&b, v, "msub", &["-q", "1", "-C", "1", "-v", "-t", &topic]);
        msub.until_subscribed(&b, "msub", &topic).await;
        let mut victim = paho(&b, "will-victim", v, &[&topic, &payload]);
        victim.wait_line("CONNECTED").await;
        victim.kill().await;
        watcher.success().await;
        assert_eq!(msub.success().await, [format!("{topic} {payload}")]);

        let topic = format!("will/{}/mosquitto", v.tag());
        let mut watch = mosquitto_sub(
            &b,
            v,
            "watch",
            &["-q", "1", "-C", "1", "-F", "%q %t %p", "-t", &topic],
        );
        watch.until_subscribed(&b, "watch", &topic).await;
        #[rustfmt::skip]
        let mut victim = mosquitto_sub(&b, v, "victim", &[
            "-t", "will/unrelated",
            "--will-topic", &topic, "--will-payload", "mosquitto died", "--will-qos", "1",
        ]);
        victim
            .until_subscribed(&b, "victim", "will/unrelated")
            .await;
        victim.kill().await;
        assert_eq!(watch.success().await, [format!("1 {topic} mosquitto died")]);
        b.stop().await;
    }
}

/// A will is not published after a normal DISCONNECT (checked against a
/// marker published later), and over MQTT 5 is after DISCONNECT 0x04.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_will_not_sent_on_normal_disconnect() {
    need_paho().await;
    let b = TestBroker::default().await;
    for v in VERSIONS {
        paho_ok(&b, "will-graceful", v).await;
    }
    b.stop().await;
}

// 3. paho <-> mosquitto ----------------------------------------------------------

/// paho publishes at QoS 0, 1 and 2; mosquitto_sub receives, for every pair
/// of protocol versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_publishes_mosquitto_sub_receives() {
    need_paho().await;
    need_mosquitto().await;
    let b = TestBroker::default().await;
    for pub_v in VERSIONS {
        for sub_v in VERSIONS {
            let prefix = format!("x/paho-{}/mosq-{}", pub_v.tag(), sub_v.tag());
            let filter = format!("{prefix}/#");
            let id = format!("mosq-sub-{}-{}", pub_v.tag(), sub_v.tag());
            let mut sub = mosquitto_sub(
                &b,
                sub_v,
                &id,
                &["-q", "2", "-C", "3", "-F", "%q %t %p", "-t", &filter],
            );
            sub.until_subscribed(&b, &id, &filter).await;
            paho(&b, "publish", pub_v, &[&prefix]).success().await;
            let expected: Vec<String> = (0..=2)
                .map(|q| format!("{q} {prefix}/q{q} paho-q{q}"))
                .collect();
            assert_eq!(
                sorted(sub.success().await),
                expected,
                "{pub_v:?} -> {sub_v:?}"
            );
        }
    }
    b.stop().await;
}

/// mosquitto_pub publishes at QoS 0, 1 and 2; a paho subscriber receives, for
/// every pair of protocol versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_publishes_paho_receives() {
    need_paho().await;
    need_mosquitto().await;
    let b = TestBroker::default().await;
    for pub_v in VERSIONS {
        for sub_v in VERSIONS {
            let prefix = format!("x/mosq-{}/paho-{}", pub_v.tag(), sub_v.tag());
            let filter = format!("{prefix}/#");
            let mut sub = paho(&b, "subscribe", sub_v, &[&filter, "3"]);
            sub.wait_line("SUBSCRIBED").await;
            let mut expected = Vec::new();
            for qos in 0..=2u8 {
                let topic = format!("{prefix}/q{qos}");
                let payload = format!("mosquitto-q{qos}");
                mosquitto_pub(
                    &b,
                    pub_v,
                    &["-q", &qos.to_string(), "-t", &topic, "-m", &payload],
                )
                .await;
                expected.push(format!("q{qos} r0 {topic} {payload}"));
            }
            let out = sub.success().await;
            let received: Vec<String> = out.into_iter().filter(|l| l.starts_with('q')).collect();
            assert_eq!(sorted(received), expected, "{pub_v:?} -> {sub_v:?}");
        }
    }
    b.stop().await;
}

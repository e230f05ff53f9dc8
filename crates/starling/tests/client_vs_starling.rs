//! `starling pub` and `starling sub` against our own broker, started in-process
//! on a free port (the Mosquitto versions are in `cli_pubsub.rs`).

#[path = "support/process.rs"]
mod process;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use process::{starling, wait_with_limit};
use starling_broker::auth::{hash_password, PasswordFile};
use starling_broker::store::Durability;
use starling_broker::{Broker, Config, ShutdownHandle};

const LIMIT: Duration = Duration::from_secs(20);

/// A broker on its own runtime; shut down on drop.
struct Starling {
    addr: SocketAddr,
    handle: ShutdownHandle,
    dir: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Starling {
    fn drop(&mut self) {
        self.handle.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Starling {
    fn start(tag: &str, edit: impl FnOnce(&mut Config, &std::path::Path)) -> Starling {
        let dir = std::env::temp_dir().join(format!("starling-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config {
            listen: vec!["mqtt://127.0.0.1:0".to_string()],
            data_dir: dir.join("data"),
            sys_interval: 0,
            // Memory only: these tests are about the wire, not the disk.
            durability: Durability::None,
            ..Config::default()
        };
        edit(&mut config, &dir);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let broker = rt.block_on(Broker::bind(config)).expect("broker binds");
        let addr = broker.local_addrs()[0];
        let handle = broker.shutdown_handle();
        rt.spawn(broker.run());
        Starling {
            addr,
            handle,
            dir,
            _rt: rt,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.addr.port().to_string(),
        ]
    }
}

fn run(b: &Starling, sub: &str, extra: &[&str]) -> Output {
    let mut child = starling()
        .arg(sub)
        .args(b.args())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn starling");
    wait_with_limit(&mut child, LIMIT)
}

fn publish(b: &Starling, extra: &[&str]) {
    let out = run(b, "pub", extra);
    assert!(
        out.status.success(),
        "pub {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines printed by a `starling sub`, read on a thread so that a test waits for
/// one with a time limit instead of blocking forever.
struct Lines(std::sync::mpsc::Receiver<String>);

fn spawn_sub(b: &Starling, extra: &[&str]) -> (Child, Lines) {
    let mut child = starling()
        .arg("sub")
        .args(b.args())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn starling sub");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || loop {
        let mut line = String::new();
        match out.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    (child, Lines(rx))
}

fn read_line(lines: &mut Lines) -> String {
    lines
        .0
        .recv_timeout(LIMIT)
        .expect("starling sub printed a line in time")
}

/// Publishes a retained marker on `topic` and reads lines until the sub prints
/// it: from then on its subscription is active.
fn wait_subscribed(b: &Starling, out: &mut Lines, topic: &str, version: &str) {
    publish(b, &["-t", topic, "-m", "ready", "-r", "-V", version]);
    assert!(read_line(out).contains("ready"));
}

#[test]
fn pub_and_sub_round_trip() {
    let b = Starling::start("rt", |_, _| {});
    for version in ["311", "5", "31"] {
        let topic = format!("cli/rt/{version}");
        let (mut child, mut out) = spawn_sub(
            &b,
            &["-t", &topic, "-C", "3", "-v", "-q", "2", "-V", version],
        );
        wait_subscribed(&b, &mut out, &topic, version);
        for (qos, msg) in [("1", "one"), ("2", "two")] {
            publish(&b, &["-t", &topic, "-m", msg, "-q", qos, "-V", version]);
            assert_eq!(read_line(&mut out), format!("{topic} {msg}\n"));
        }
        let done = wait_with_limit(&mut child, LIMIT);
        assert!(done.status.success(), "{version}: -C 3 exits 0");
        // Clear the retained marker.
        publish(&b, &["-t", &topic, "-n", "-r", "-V", version]);
    }
}

#[test]
fn sub_formats_and_exit_codes() {
    let b = Starling::start("fmt", |_, _| {});
    publish(&b, &["-t", "cli/fmt", "-m", "hello", "-r", "-q", "1"]);
    let out = run(
        &b,
        "sub",
        &[
            "-t",
            "cli/fmt",
            "-q",
            "1",
            "-C",
            "1",
            "-F",
            "%t|%q|%r|%l|%p",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cli/fmt|1|1|5|hello\n"
    );
    let out = run(&b, "sub", &["-t", "cli/fmt", "-C", "1", "-F", "%j"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"topic\":\"cli/fmt\"") && text.contains("\"payload\":\"hello\""),
        "{text}"
    );
    // -R skips retained messages, so -W expires: exit code 27.
    let start = Instant::now();
    let out = run(&b, "sub", &["-t", "cli/fmt", "-R", "-W", "1"]);
    assert_eq!(out.status.code(), Some(27));
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(out.stdout.is_empty());
    // -C reached before -W: exit 0.
    let out = run(&b, "sub", &["-t", "cli/fmt", "-C", "1", "-W", "10"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello\n");
}

#[test]
fn pub_line_mode_and_file() {
    let b = Starling::start("lines", |_, _| {});
    let (mut child, mut out) = spawn_sub(&b, &["-t", "cli/l/#", "-C", "4", "-F", "%t:%p"]);
    wait_subscribed(&b, &mut out, "cli/l/ready", "311");
    let mut p = starling()
        .arg("pub")
        .args(b.args())
        .args(["-t", "cli/l/lines", "-l", "-q", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin
        .take()
        .unwrap()
        .write_all(b"first\n\nsecond\r\n")
        .unwrap();
    assert!(wait_with_limit(&mut p, LIMIT).status.success());
    assert_eq!(read_line(&mut out), "cli/l/lines:first\n");
    assert_eq!(read_line(&mut out), "cli/l/lines:second\n");
    let file = b.dir.join("payload.txt");
    std::fs::write(&file, "from a file").unwrap();
    publish(&b, &["-t", "cli/l/file", "-f", file.to_str().unwrap()]);
    assert_eq!(read_line(&mut out), "cli/l/file:from a file\n");
    assert!(wait_with_limit(&mut child, LIMIT).status.success());
}

#[test]
fn refused_connections_print_the_reason() {
    let b = Starling::start("auth", |c, dir| {
        let mut file = PasswordFile::default();
        file.set("alice", hash_password("s3cret").unwrap());
        let path = dir.join("passwd");
        std::fs::write(&path, file.to_text()).unwrap();
        c.password_file = Some(path);
        c.allow_anonymous = false;
    });
    for version in ["311", "5"] {
        let out = run(
            &b,
            "pub",
            &[
                "-t", "a", "-m", "x", "-u", "alice", "-P", "nope", "-V", version,
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad user name or password"), "{err}");
        let out = run(&b, "sub", &["-t", "a", "-V", version]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not authorized"), "{err}");
    }
    publish(&b, &["-t", "a", "-m", "x", "-u", "alice", "-P", "s3cret"]);
}

#[test]
fn will_fires_when_sub_is_killed() {
    let b = Starling::start("will", |_, _| {});
    let (mut watcher, mut out) = spawn_sub(&b, &["-t", "cli/will/#", "-v", "-q", "1"]);
    wait_subscribed(&b, &mut out, "cli/will/ready", "311");
    let (mut owner, mut owner_out) = spawn_sub(
        &b,
        &[
            "-t",
            "cli/owner",
            "--will-topic",
            "cli/will/gone",
            "--will-payload",
            "owner died",
            "--will-qos",
            "1",
            "-V",
            "5",
        ],
    );
    // The owner is subscribed once it prints its own (retained) marker.
    publish(&b, &["-t", "cli/owner", "-m", "up", "-r"]);
    assert_eq!(read_line(&mut owner_out), "up\n");
    publish(&b, &["-t", "cli/owner", "-n", "-r"]);
    owner.kill().unwrap();
    let _ = owner.wait();
    assert_eq!(read_line(&mut out), "cli/will/gone owner died\n");
    watcher.kill().unwrap();
    let _ = watcher.wait();
}

#[test]
fn persistent_session_keeps_messages_for_sub() {
    let b = Starling::start("persist", |_, _| {});
    for version in ["311", "5"] {
        let id = format!("cli-persist-{version}");
        let topic = format!("cli/persist/{version}");
        // First visit: subscribe with a persistent session, leave at once.
        let (mut child, mut out) = spawn_sub(
            &b,
            &[
                "-t", &topic, "-q", "1", "-c", "-i", &id, "-x", "300", "-C", "1", "-V", version,
            ],
        );
        wait_subscribed(&b, &mut out, &topic, version);
        assert!(wait_with_limit(&mut child, LIMIT).status.success());
        publish(&b, &["-t", &topic, "-m", "while away", "-q", "1"]);
        // Second visit: the queued message is delivered (-R skips the retained marker).
        let out = run(
            &b,
            "sub",
            &[
                "-t", &topic, "-q", "1", "-c", "-i", &id, "-x", "300", "-C", "1", "-R", "-V",
                version,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "while away\n");
        publish(&b, &["-t", &topic, "-n", "-r", "-V", version]);
    }
}

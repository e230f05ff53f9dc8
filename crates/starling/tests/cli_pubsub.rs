//! `starling pub` and `starling sub` against a real Mosquitto broker.

#[path = "../../starling-client/tests/common/mod.rs"]
mod common;

#[path = "support/process.rs"]
mod process;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Mosquitto;
use process::{starling, wait_with_limit};

fn port_args(m: &Mosquitto) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        m.port.to_string(),
    ]
}

/// Runs a command to completion, failing the test if it takes longer than `limit`.
fn run_with_limit(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn starling");
    wait_with_limit(&mut child, limit)
}

fn publish(m: &Mosquitto, extra: &[&str]) {
    let mut cmd = starling();
    cmd.arg("pub").args(port_args(m)).args(extra);
    let out = run_with_limit(cmd, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "pub {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `starling sub`; returns the child and a reader of its stdout lines.
fn spawn_sub(m: &Mosquitto, extra: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = starling()
        .arg("sub")
        .args(port_args(m))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn starling sub");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

fn read_line(r: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read sub output");
    line
}

#[test]
fn pub_and_sub_round_trip() {
    let m = Mosquitto::start();
    for version in ["311", "5", "mqttv31"] {
        let topic = format!("cli/rt/{version}");
        // A retained message first: once sub prints it, its subscription is active.
        publish(&m, &["-t", &topic, "-m", "retained", "-r", "-V", version]);
        let (mut child, mut out) = spawn_sub(
            &m,
            &["-t", &topic, "-C", "2", "-v", "-q", "1", "-V", version],
        );
        assert_eq!(read_line(&mut out), format!("{topic} retained\n"));
        publish(&m, &["-t", &topic, "-m", "live", "-q", "1", "-V", version]);
        assert_eq!(read_line(&mut out), format!("{topic} live\n"));
        let done = wait_with_limit(&mut child, Duration::from_secs(10));
        assert!(
            done.status.success(),
            "{version}: -C 2 exits 0 after two messages"
        );
        // Clear the retained message.
        publish(&m, &["-t", &topic, "-n", "-r", "-V", version]);
    }
}

#[test]
fn sub_count_exits_zero_and_format() {
    let m = Mosquitto::start();
    publish(&m, &["-t", "cli/fmt", "-m", "hello", "-r", "-q", "2"]);
    let mut cmd = starling();
    cmd.arg("sub").args(port_args(&m)).args([
        "-t",
        "cli/fmt",
        "-q",
        "2",
        "-C",
        "1",
        "-F",
        "%t|%q|%r|%l|%p",
    ]);
    let out = run_with_limit(cmd, Duration::from_secs(10));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cli/fmt|2|1|5|hello\n"
    );
    let mut cmd = starling();
    cmd.arg("sub")
        .args(port_args(&m))
        .args(["-t", "cli/fmt", "-C", "1", "-F", "%j"]);
    let out = run_with_limit(cmd, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"topic\":\"cli/fmt\"") && text.contains("\"payload\":\"hello\""),
        "{text}"
    );
}

#[test]
fn sub_timeout_exits_27() {
    let m = Mosquitto::start();
    let mut cmd = starling();
    cmd.arg("sub")
        .args(port_args(&m))
        .args(["-t", "cli/nothing", "-W", "1"]);
    let start = Instant::now();
    let out = run_with_limit(cmd, Duration::from_secs(15));
    assert_eq!(
        out.status.code(),
        Some(27),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn sub_count_reached_before_timeout_exits_zero() {
    let m = Mosquitto::start();
    publish(&m, &["-t", "cli/cw", "-m", "x", "-r"]);
    let mut cmd = starling();
    cmd.arg("sub")
        .args(port_args(&m))
        .args(["-t", "cli/cw", "-C", "1", "-W", "10"]);
    let out = run_with_limit(cmd, Duration::from_secs(15));
    assert!(out.status.success());
    assert_eq!(out.stdout, b"x\n");
}

#[test]
fn pub_line_mode_file_stdin_and_null() {
    let m = Mosquitto::start();
    let (mut child, mut out) = spawn_sub(
        &m,
        &[
            "-t",
            "cli/lines",
            "-t",
            "cli/ready",
            "-C",
            "6",
            "-F",
            "%t:%p",
            "-q",
            "1",
        ],
    );
    // Wait for the subscription: retained marker on a second topic.
    publish(&m, &["-t", "cli/ready", "-m", "go", "-r"]);
    assert_eq!(read_line(&mut out), "cli/ready:go\n");
    // -l: one message per line, blank lines skipped.
    let mut p = starling()
        .arg("pub")
        .args(port_args(&m))
        .args(["-t", "cli/lines", "-l", "-q", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"one\n\ntwo\n").unwrap();
    let done = wait_with_limit(&mut p, Duration::from_secs(10));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(read_line(&mut out), "cli/lines:one\n");
    assert_eq!(read_line(&mut out), "cli/lines:two\n");
    // -s: all of stdin as one message.
    let mut p = starling()
        .arg("pub")
        .args(port_args(&m))
        .args(["-t", "cli/lines", "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"whole stdin").unwrap();
    assert!(wait_with_limit(&mut p, Duration::from_secs(10))
        .status
        .success());
    assert_eq!(read_line(&mut out), "cli/lines:whole stdin\n");
    // -f: a file.
    let dir = common::temp_dir("cli");
    let file = dir.join("payload.txt");
    std::fs::write(&file, "from a file").unwrap();
    publish(&m, &["-t", "cli/lines", "-f", file.to_str().unwrap()]);
    assert_eq!(read_line(&mut out), "cli/lines:from a file\n");
    // -n: zero-length.
    publish(&m, &["-t", "cli/lines", "-n"]);
    assert_eq!(read_line(&mut out), "cli/lines:\n");
    assert!(wait_with_limit(&mut child, Duration::from_secs(10))
        .status
        .success());
    publish(&m, &["-t", "cli/ready", "-n", "-r"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn refused_connection_prints_the_reason() {
    let m = Mosquitto::start_with_password("alice", "s3cret");
    for version in ["311", "5"] {
        let mut cmd = starling();
        cmd.arg("pub").args(port_args(&m)).args([
            "-t", "x", "-m", "y", "-u", "alice", "-P", "wrong", "-V", version,
        ]);
        let out = run_with_limit(cmd, Duration::from_secs(10));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("connection refused: not authorized"), "{err}");
    }
    // Right credentials work.
    publish(&m, &["-t", "x", "-m", "y", "-u", "alice", "-P", "s3cret"]);
}

#[test]
fn will_flags_and_url() {
    let m = Mosquitto::start();
    let (mut child, mut out) = spawn_sub(&m, &["-t", "cli/will/#", "-C", "2", "-v"]);
    publish(&m, &["-t", "cli/will/ready", "-m", "go", "-r"]);
    assert_eq!(read_line(&mut out), "cli/will/ready go\n");
    // A sub with a will, killed without DISCONNECT: the broker publishes the will.
    let url = format!("mqtt://127.0.0.1:{}", m.port);
    let mut owner = starling()
        .args([
            "sub",
            "-L",
            &url,
            "-t",
            "cli/nothing",
            "-V",
            "5",
            "-i",
            "will-owner",
        ])
        .args([
            "--will-topic",
            "cli/will/gone",
            "--will-payload",
            "bye",
            "--will-qos",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the owner is connected: its client id shows in the broker log.
    let start = Instant::now();
    while !m.log().contains("will-owner") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "owner never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    owner.kill().unwrap();
    let _ = owner.wait();
    assert_eq!(read_line(&mut out), "cli/will/gone bye\n");
    assert!(wait_with_limit(&mut child, Duration::from_secs(10))
        .status
        .success());
    publish(&m, &["-t", "cli/will/ready", "-n", "-r"]);
}

#[test]
fn bad_flags_fail() {
    let out = run_with_limit(
        {
            let mut c = starling();
            c.args(["pub", "-t", "x"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "pub needs a message source");
    let out = run_with_limit(
        {
            let mut c = starling();
            c.args(["sub", "-t", "x", "-V", "7"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("protocol version"));
    let out = run_with_limit(
        {
            let mut c = starling();
            c.args(["sub", "--help"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--topic"));
}

//! `starling bench` against an in-process Starling broker on a free port: short
//! bounded runs whose `--json` summary must be complete and show no loss.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use starling_broker::store::Durability;
use starling_broker::{Broker, Config, ShutdownHandle};
use tokio::process::Command;

/// The longest a bounded bench run may take here (debug builds, a busy machine).
const LIMIT: Duration = Duration::from_secs(120);

struct Starling {
    addr: SocketAddr,
    handle: ShutdownHandle,
    dir: std::path::PathBuf,
}

impl Drop for Starling {
    fn drop(&mut self) {
        self.handle.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker whose queues are deep enough that a burst from the bench is never
/// dropped for a slow subscriber (the default bound is 1,000 messages).
async fn start_broker(tag: &str) -> Starling {
    let dir = std::env::temp_dir().join(format!("starling-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:0".to_string()],
        data_dir: dir.join("data"),
        sys_interval: 0,
        // Memory only: these tests are about the wire, not the disk.
        durability: Durability::None,
        max_queued_messages: 1_000_000,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.expect("broker binds");
    let addr = broker.local_addrs()[0];
    let handle = broker.shutdown_handle();
    tokio::spawn(broker.run());
    Starling { addr, handle, dir }
}

fn bench(b: &Starling, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starling"));
    cmd.arg("bench")
        .arg(args[0])
        .args(["-h", "127.0.0.1", "-p", &b.addr.port().to_string()])
        .args(["--json", "--threads", "2"])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a bench to completion and returns its JSON summary.
async fn run(b: &Starling, args: &[&str]) -> Value {
    let out = tokio::time::timeout(LIMIT, bench(b, args).output())
        .await
        .unwrap_or_else(|_| panic!("starling bench {args:?} did not finish in {LIMIT:?}"))
        .expect("run starling bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stderr}",
        out.status
    );
    parse(&stdout, &stderr)
}

fn parse(stdout: &str, stderr: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON line on stdout:\n{stdout}\n{stderr}"
    );
    let v: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\n{stderr}", lines[0]));
    check_complete(&v);
    v
}

const KEYS: [&str; 28] = [
    "scenario",
    "mode",
    "protocol_version",
    "qos",
    "payload_size",
    "publishers",
    "subscribers",
    "connections",
    "connected",
    "connect_errors",
    "connect_secs",
    "connect_rate",
    "connect_latency_us",
    "duration_secs",
    "sent",
    "acked",
    "received",
    "expected",
    "lost",
    "errors",
    "first_error",
    "send_rate",
    "ack_rate",
    "recv_rate",
    "latency_us",
    "ack_latency_us",
    "cpu_secs",
    "cpu_percent",
];

const LATENCY_KEYS: [&str; 8] = ["samples", "min", "mean", "p50", "p90", "p99", "p999", "max"];

fn check_complete(v: &Value) {
    let obj = v.as_object().expect("a JSON object");
    for key in KEYS {
        assert!(obj.contains_key(key), "missing {key:?} in {v}");
    }
    for key in ["latency_us", "ack_latency_us", "connect_latency_us"] {
        let l = v[key].as_object().expect("latency object");
        for k in LATENCY_KEYS {
            assert!(l[k].is_number(), "{key}.{k} in {v}");
        }
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// A pubsub summary that delivered everything, with real latencies.
fn check_pubsub(v: &Value, mode: &str, qos: u64, sent: u64, expected: u64) {
    assert_eq!(v["scenario"], "pubsub", "{v}");
    assert_eq!(v["mode"], mode, "{v}");
    assert_eq!(u(v, "qos"), qos, "{v}");
    assert_eq!(u(v, "sent"), sent, "{v}");
    assert_eq!(u(v, "expected"), expected, "{v}");
    assert_eq!(u(v, "received"), expected, "{v}");
    assert_eq!(u(v, "lost"), 0, "{v}");
    assert_eq!(u(v, "errors"), 0, "{v}");
    assert_eq!(u(v, "connect_errors"), 0, "{v}");
    assert!(v["first_error"].is_null(), "{v}");
    if qos > 0 {
        assert_eq!(u(v, "acked"), sent, "{v}");
        assert!(f(&v["ack_latency_us"], "p50") > 0.0, "{v}");
    }
    assert!(f(v, "send_rate") > 0.0, "{v}");
    assert!(f(v, "recv_rate") > 0.0, "{v}");
    assert!(f(v, "duration_secs") > 0.0, "{v}");
    let lat = &v["latency_us"];
    assert_eq!(u(lat, "samples"), expected, "{v}");
    for k in LATENCY_KEYS {
        assert!(f(lat, k) > 0.0, "latency_us.{k} in {v}");
    }
    assert!(f(lat, "p50") <= f(lat, "p99") && f(lat, "p99") <= f(lat, "max"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_fan_in_qos0() {
    let b = start_broker("fanin0").await;
    let v = run(
        &b,
        &[
            "pubsub", "--mode", "fan-in", "-c", "5", "-n", "3000", "-q", "0",
        ],
    )
    .await;
    check_pubsub(&v, "fan-in", 0, 3000, 3000);
    assert_eq!(u(&v, "publishers"), 5);
    assert_eq!(u(&v, "subscribers"), 1);
    assert_eq!(v["protocol_version"], "3.1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_fan_in_qos1() {
    let b = start_broker("fanin1").await;
    let v = run(
        &b,
        &[
            "pubsub", "--mode", "fan-in", "-c", "5", "-n", "3000", "-q", "1", "-V", "5",
        ],
    )
    .await;
    check_pubsub(&v, "fan-in", 1, 3000, 3000);
    assert_eq!(v["protocol_version"], "5.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_fan_out_qos0() {
    let b = start_broker("fanout0").await;
    let v = run(
        &b,
        &[
            "pubsub", "--mode", "fan-out", "-c", "10", "-n", "300", "-q", "0",
        ],
    )
    .await;
    check_pubsub(&v, "fan-out", 0, 300, 3000);
    assert_eq!(u(&v, "publishers"), 1);
    assert_eq!(u(&v, "subscribers"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_fan_out_qos1() {
    let b = start_broker("fanout1").await;
    let v = run(
        &b,
        &[
            "pubsub", "--mode", "fan-out", "-c", "10", "-n", "300", "-q", "1", "-V", "5",
        ],
    )
    .await;
    check_pubsub(&v, "fan-out", 1, 300, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_pairs_qos2_with_rate_and_small_window() {
    let b = start_broker("pairs2").await;
    let v = run(
        &b,
        &[
            "pubsub",
            "--mode",
            "pairs",
            "-c",
            "3",
            "-n",
            "600",
            "-q",
            "2",
            "--inflight",
            "4",
            "--rate",
            "3000",
            "-t",
            "pairs/%i/x",
        ],
    )
    .await;
    check_pubsub(&v, "pairs", 2, 600, 600);
    assert_eq!(u(&v, "connections"), 6);
}

/// Other transports than mqtt:// go through starling-client: same figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_over_websocket() {
    let dir = std::env::temp_dir().join(format!("starling-bench-ws-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config {
        listen: vec![
            "mqtt://127.0.0.1:0".to_string(),
            "ws://127.0.0.1:0/mqtt".to_string(),
        ],
        data_dir: dir.join("data"),
        sys_interval: 0,
        // Memory only: these tests are about the wire, not the disk.
        durability: Durability::None,
        max_queued_messages: 1_000_000,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.expect("broker binds");
    let ws = broker.local_addrs()[1];
    let b = Starling {
        addr: broker.local_addrs()[0],
        handle: broker.shutdown_handle(),
        dir,
    };
    tokio::spawn(broker.run());
    let url = format!("ws://{ws}/mqtt");
    for (qos, mode, n, expected) in [("1", "fan-in", "2000", 2000), ("0", "fan-out", "200", 1000)] {
        let v = run(
            &b,
            &[
                "pubsub", "-L", &url, "--mode", mode, "-c", "5", "-n", n, "-q", qos, "-V", "5",
            ],
        )
        .await;
        let sent = n.parse().unwrap();
        check_pubsub(&v, mode, qos.parse().unwrap(), sent, expected);
    }
    let v = run(&b, &["conn", "-L", &url, "-c", "20", "--hold", "0"]).await;
    assert_eq!(u(&v, "connected"), 20, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_opens_and_holds_50_connections() {
    let b = start_broker("conn").await;
    let v = run(&b, &["conn", "-c", "50", "--hold", "0.2", "-R", "500"]).await;
    assert_eq!(v["scenario"], "conn");
    assert_eq!(u(&v, "connections"), 50);
    assert_eq!(u(&v, "connected"), 50, "{v}");
    assert_eq!(u(&v, "connect_errors"), 0, "{v}");
    assert_eq!(u(&v, "errors"), 0, "{v}");
    assert!(f(&v, "connect_rate") > 0.0, "{v}");
    let lat = &v["connect_latency_us"];
    assert_eq!(u(lat, "samples"), 50, "{v}");
    assert!(f(lat, "p50") > 0.0 && f(lat, "max") > 0.0, "{v}");
    // At 500/s the 50 connections take about 0.1 s.
    assert!(f(&v, "connect_secs") >= 0.09, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_alone_counts_acknowledgements() {
    let b = start_broker("pub").await;
    let v = run(
        &b,
        &["pub", "-c", "3", "-n", "2000", "-q", "1", "-s", "200"],
    )
    .await;
    assert_eq!(v["scenario"], "pub");
    assert_eq!(u(&v, "sent"), 2000, "{v}");
    assert_eq!(u(&v, "acked"), 2000, "{v}");
    assert_eq!(u(&v, "payload_size"), 200);
    assert!(v["expected"].is_null() && v["lost"].is_null(), "{v}");
    assert!(f(&v["ack_latency_us"], "p99") > 0.0, "{v}");
}

/// `bench sub` in one process, `bench pub` in another: the subscriber stops at
/// -n and measures latency from the publisher's timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_and_pub_in_separate_processes() {
    let b = start_broker("subpub").await;
    let sub = bench(
        &b,
        &["sub", "-c", "2", "-t", "sp/#", "-q", "1", "-n", "2000"],
    )
    .spawn()
    .expect("spawn bench sub");
    // Publish until the subscribers have what they wait for: they may still be
    // subscribing when the first messages go out.
    let mut publisher = bench(
        &b,
        &[
            "pub",
            "-c",
            "2",
            "-t",
            "sp/%i",
            "-q",
            "1",
            "--rate",
            "4000",
            "--duration",
            "100",
        ],
    )
    .spawn()
    .expect("spawn bench pub");
    let out = tokio::time::timeout(LIMIT, sub.wait_with_output())
        .await
        .expect("bench sub finishes")
        .expect("bench sub runs");
    let _ = publisher.kill().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v = parse(&String::from_utf8_lossy(&out.stdout), &stderr);
    assert_eq!(v["scenario"], "sub");
    assert_eq!(u(&v, "subscribers"), 2);
    // Each message reaches both subscribers; the run stops at 2,000 or a little past.
    assert!(u(&v, "received") >= 2000, "{v}");
    assert_eq!(u(&v, "errors"), 0, "{v}");
    assert!(u(&v["latency_us"], "samples") >= 2000, "{v}");
    assert!(f(&v["latency_us"], "p50") > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_fail_the_run_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("starling-bench-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:0".to_string()],
        data_dir: dir.join("data"),
        sys_interval: 0,
        // Memory only: these tests are about the wire, not the disk.
        durability: Durability::None,
        allow_anonymous: false,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.expect("broker binds");
    let b = Starling {
        addr: broker.local_addrs()[0],
        handle: broker.shutdown_handle(),
        dir,
    };
    tokio::spawn(broker.run());
    let out = tokio::time::timeout(LIMIT, bench(&b, &["pub", "-c", "2", "-n", "10"]).output())
        .await
        .expect("finishes")
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not authorized"), "{stderr}");
    // `conn` counts refusals instead.
    let v = run(&b, &["conn", "-c", "5", "--hold", "0"]).await;
    assert_eq!(u(&v, "connected"), 0, "{v}");
    assert_eq!(u(&v, "connect_errors"), 5, "{v}");
    assert!(
        v["first_error"]
            .as_str()
            .is_some_and(|e| e.contains("not authorized")),
        "{v}"
    );
}

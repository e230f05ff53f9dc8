//! `[[bridge]]` against a real Mosquitto (`/usr/sbin/mosquitto`, apt
//! `mosquitto`), with Starling as a child process:
//! - both directions, with `mosquitto_sub` and `mosquitto_pub` on the remote;
//! - store and forward: a publisher sends QoS 1 messages to Starling while
//!   Mosquitto is killed with SIGKILL and restarted, then Starling is killed
//!   with SIGKILL and restarted; every message acknowledged to the publisher
//!   reaches the subscriber on Mosquitto.
//!
//! Every wait is bounded; readiness is polled (a connection attempt every
//! 10 ms, at most 30 s), never slept for.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_client::{Client, ConnectOptions, QoS, ReconnectOptions};

const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proc(Child);

impl Proc {
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn listening(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..3000 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens on {addr}");
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "starling-bridge-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Mosquitto on `port`, keeping sessions in `dir` (saved after each change)
/// and queueing up to 100,000 messages per offline client.
async fn mosquitto(dir: &Path, port: u16) -> Proc {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nautosave_interval 1\nautosave_on_changes true\n\
             max_queued_messages 100000\nmax_inflight_messages 100\n",
            dir.display()
        ),
    )
    .unwrap();
    let bin = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto runs (apt mosquitto)");
    let p = Proc(child);
    listening(port).await;
    p
}

/// Starling on `port` with `dir` as its data directory and a bridge to
/// Mosquitto on `remote`: `data/#` out, `cmd/#` in.
async fn starling(dir: &Path, port: u16, remote: u16) -> Proc {
    let conf = dir.join("starling.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = [\"mqtt://127.0.0.1:{port}\"]\nsys-interval = 0\n\n\
             [[bridge]]\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{remote}\"\n\n\
             [[bridge.topic]]\ndirection = \"out\"\nfilter = \"data/#\"\nqos = 1\n\n\
             [[bridge.topic]]\ndirection = \"in\"\nfilter = \"cmd/#\"\nqos = 1\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("broker")
        .arg("--config")
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starling runs");
    let p = Proc(child);
    listening(port).await;
    p
}

fn options(port: u16, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.client_id = id.into();
    o.clean_start = false;
    o.session_expiry = Some(3600);
    o.reconnect = Some(ReconnectOptions {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_attempts: None,
    });
    o
}

/// Runs `cmd` to completion within 30 s.
async fn run(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(30), cmd.kill_on_drop(true).output())
        .await
        .expect("finishes within 30 s")
        .expect("runs")
}

#[tokio::test]
async fn both_directions_with_mosquitto_clients() {
    let dir = tempdir("both");
    let (m_port, s_port) = (free_port(), free_port());
    let _m = mosquitto(&dir, m_port).await;
    let _s = starling(&dir, s_port, m_port).await;
    // Out: published here, received by mosquitto_sub on Mosquitto. The
    // subscriber waits for one message; the publish repeats until it gets
    // there (the bridge connects in the background).
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &m_port.to_string(), "-t", "data/#"])
        .args(["-C", "1", "-W", "30", "-q", "1", "-v"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs (apt mosquitto-clients)");
    let (local, _) = Client::connect(options(s_port, "local")).await.unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            local
                .publish("data/t1", &b"out-hello"[..], QoS::AtLeastOnce, false)
                .await
                .unwrap();
            if let Ok(Some(status)) = sub.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("mosquitto_sub gets the message");
    assert!(got.success());
    let out = sub.wait_with_output().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "data/t1 out-hello"
    );
    // In: published on Mosquitto by mosquitto_pub, received here.
    local.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();
    let received = tokio::time::timeout(WAIT, async {
        loop {
            let status = run(tokio::process::Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &m_port.to_string(),
                "-t",
                "cmd/c1",
                "-m",
                "in-hello",
                "-q",
                "1",
            ]))
            .await;
            assert!(status.status.success());
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), local.recv()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("the message comes in");
    assert_eq!(&*received.topic, "cmd/c1");
    assert_eq!(&received.payload[..], b"in-hello");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_when_either_broker_is_killed() {
    // Small for CI; `BRIDGE_KILL_N=50000` runs it longer by hand.
    let n_env = std::env::var("BRIDGE_KILL_N")
        .ok()
        .and_then(|v| v.parse().ok());
    let n: u32 = n_env.unwrap_or(3000);
    let dir = tempdir("kill");
    let (m_port, s_port) = (free_port(), free_port());
    let mut m = mosquitto(&dir, m_port).await;
    // The subscriber on Mosquitto: a persistent session, reconnecting.
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let (sub, _) = Client::connect(options(m_port, "remote-sub"))
        .await
        .unwrap();
    sub.subscribe("data/#", QoS::AtLeastOnce).await.unwrap();
    let sub = Arc::new(sub);
    let collector = {
        let (sub, received) = (sub.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                if let Ok(n) = std::str::from_utf8(&m.payload).unwrap_or("").parse::<u32>() {
                    received.lock().unwrap().insert(n);
                }
            }
        })
    };
    let mut s = starling(&dir, s_port, m_port).await;
    let (publisher, _) = Client::connect(options(s_port, "local-pub")).await.unwrap();
    let mut acked = BTreeSet::new();
    for i in 0..n {
        if i == n / 3 {
            m.kill9();
            m = mosquitto(&dir, m_port).await;
        }
        if i == 2 * n / 3 {
            s.kill9();
            s = starling(&dir, s_port, m_port).await;
        }
        let payload = i.to_string();
        let ack = tokio::time::timeout(
            WAIT,
            publisher.publish(format!("data/{}", i % 7), payload, QoS::AtLeastOnce, false),
        )
        .await
        .expect("the publish ends within 60 s");
        if ack.is_ok_and(|code| !code.is_error()) {
            acked.insert(i);
        }
    }
    assert!(
        acked.len() as u32 >= n - 10,
        "most publishes were acknowledged"
    );
    // Every acknowledged message arrives at the remote subscriber.
    tokio::time::timeout(WAIT, async {
        loop {
            let missing = acked.difference(&received.lock().unwrap()).count();
            if missing == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let got = received.lock().unwrap();
        let missing: Vec<&u32> = acked.difference(&got).take(20).collect();
        panic!(
            "{} of {} acknowledged messages missing at the remote subscriber, such as {missing:?}",
            acked.difference(&got).count(),
            acked.len()
        )
    });
    collector.abort();
    drop((s, m));
    let _ = std::fs::remove_dir_all(&dir);
}

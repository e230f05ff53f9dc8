//! The client's persistent outbox across a `kill -9` of the client's
//! process: `starling pub --outbox` stores 500 QoS 1 messages while the
//! broker cannot be reached and is killed with SIGKILL; a second run, with
//! the broker up, sends them all to a persistent subscriber.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use starling_broker::{Broker, Config};
use starling_client::{Client, ConnectOptions, QoS};

const N: usize = 500;

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_kill_of_the_client() {
    let dir = std::env::temp_dir().join(format!("starling-outbox-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Run 1: nothing listens; every line is stored, then the process keeps
    // trying to connect until it is killed.
    let nobody = closed_port();
    let mut first = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["pub", "-h", "127.0.0.1", "-p", &nobody.to_string()])
        .args(["-t", "outbox/t", "-q", "1", "-l", "-d", "--outbox"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starling pub runs");
    {
        let mut stdin = first.stdin.take().unwrap();
        for i in 0..N {
            writeln!(stdin, "{i}").unwrap();
        }
    }
    let stderr = first.stderr.take().unwrap();
    let stored = tokio::task::spawn_blocking(move || {
        let mut stored = 0;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.starts_with("Stored") {
                stored += 1;
            }
            if line.starts_with("Not connected") {
                return stored;
            }
        }
        stored
    });
    let stored = tokio::time::timeout(Duration::from_secs(60), stored)
        .await
        .expect("the messages are stored within 60 s")
        .unwrap();
    assert_eq!(stored, N);
    first.kill().unwrap();
    first.wait().unwrap();

    // The broker and a persistent subscriber.
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:0".into()],
        sys_interval: 0,
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    };
    let broker = Broker::bind(config).await.unwrap();
    let port = broker.local_addrs()[0].port();
    let handle = broker.shutdown_handle();
    let running = tokio::spawn(broker.run());
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.client_id = "outbox-sub".into();
    o.message_capacity = N + 10;
    let (sub, _) = Client::connect(o).await.unwrap();
    sub.subscribe("outbox/#", QoS::AtLeastOnce).await.unwrap();

    // Run 2: nothing new to store; it sends what run 1 left and exits.
    let mut second = tokio::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["pub", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "outbox/t", "-q", "1", "-l", "--outbox"])
        .arg(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("the second run exits once the outbox is empty")
        .unwrap();
    assert!(status.success());
    let mut got = std::collections::BTreeSet::new();
    while got.len() < N {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("every stored message arrives")
            .unwrap();
        got.insert(
            String::from_utf8_lossy(&m.payload)
                .parse::<usize>()
                .unwrap(),
        );
    }
    assert_eq!(got, (0..N).collect());
    handle.shutdown();
    let _ = running.await;
    let _ = std::fs::remove_dir_all(&dir);
}

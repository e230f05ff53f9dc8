//! A real Prometheus server (Debian's `prometheus`, started by the test on
//! loopback) scrapes a test broker; the test asks Prometheus's HTTP API for
//! the connection count it created. `promtool check metrics` lints what
//! `/metrics` serves. Both tools come from `scripts/install-test-deps.d/observability.sh`;
//! when they are missing the tests fail and say so.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

mod support;

const INSTALL: &str = "run scripts/install-test-deps.d/observability.sh (apt prometheus)";

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A raw MQTT 3.1.1 CONNECT for `id`.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    let c = starling_codec::Connect::new(starling_codec::ProtocolVersion::V3_1_1, id);
    starling_codec::Packet::Connect(Box::new(c))
        .encode(starling_codec::ProtocolVersion::V3_1_1, &mut out)
        .unwrap();
    out.to_vec()
}

#[tokio::test]
async fn prometheus_scrapes_the_connection_count() {
    let s = support::start(None, "scrape").await;
    let (mqtt, http) = (s.mqtt, s.http);
    // Seven connected clients.
    let mut clients = Vec::new();
    for i in 0..7 {
        let mut s = tokio::net::TcpStream::connect(mqtt).await.unwrap();
        s.write_all(&connect_packet(&format!("prom{i}")))
            .await
            .unwrap();
        clients.push(s);
    }
    // Prometheus on a free loopback port, scraping every second.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("starling-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: starling\n    static_configs:\n      - targets: ['{http}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("prometheus: {e}; {INSTALL}"));
    let _prometheus = Killed(child);
    let client = reqwest::Client::new();
    let query = format!("http://127.0.0.1:{port}/api/v1/query");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported 7 connections; last answer: {last}"
        );
        let answer = client
            .get(&query)
            .query(&[("query", "sum(starling_connections{job=\"starling\"})")])
            .send()
            .await;
        if let Ok(r) = answer {
            last = r.text().await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
            if v["data"]["result"][0]["value"][1] == "7" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The scrape itself was healthy.
    let up = client
        .get(&query)
        .query(&[("query", "up{job=\"starling\"}")])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    drop(clients);
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let s = support::start(None, "promtool").await;
    let (mqtt, http) = (s.mqtt, s.http);
    let mut client = tokio::net::TcpStream::connect(mqtt).await.unwrap();
    client.write_all(&connect_packet("lint")).await.unwrap();
    let body = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e}; {INSTALL}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

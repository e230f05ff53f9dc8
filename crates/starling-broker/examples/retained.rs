//! Measures retained messages against any MQTT broker on a TCP port:
//! retains `N` (default 500,000) messages of a 32-byte payload on
//! `bench/retained/{i}`, reads the broker's resident memory before and after
//! (from `/proc/PID/status`), then times a new `#` subscriber receiving
//! them all (MQTT 3.1.1, QoS 0).
//!
//! `N=500000 cargo run --release -p starling-broker --example retained -- HOST:PORT PID`

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use starling_codec::{Connect, Decoder, Packet, ProtocolVersion, Publish, QoS};
use starling_codec::{Subscribe, Subscription, SubscriptionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("broker pid");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Conn {
    async fn open(addr: &str, id: &str) -> Conn {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut out = BytesMut::new();
        let mut connect = Connect::new(V, id);
        connect.keep_alive = 0;
        Packet::Connect(Box::new(connect))
            .encode(V, &mut out)
            .expect("encodes");
        stream.write_all(&out).await.expect("write");
        let mut c = Conn {
            stream,
            buf: BytesMut::with_capacity(1 << 20),
            decoder: Decoder::with_version(V),
        };
        assert!(matches!(c.next().await, Packet::ConnAck(_)));
        c
    }

    async fn next(&mut self) -> Packet {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).expect("decodes") {
                return p;
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "closed");
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(V, &mut out).expect("encodes");
        self.stream.write_all(&out).await.expect("write");
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("HOST:PORT");
    let pid = args.next().expect("broker PID");
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let before = rss_kib(&pid);
    let mut p = Conn::open(&addr, "bench-retainer").await;
    let payload = Bytes::from(vec![b'r'; 32]);
    let t = Instant::now();
    let mut out = BytesMut::new();
    for i in 0..n {
        let mut m = Publish::new(format!("bench/retained/{i}").as_str(), payload.clone());
        m.retain = true;
        Packet::Publish(m).encode(V, &mut out).expect("encodes");
        if out.len() > 256 * 1024 {
            p.stream.write_all(&out).await.expect("write");
            out.clear();
        }
    }
    p.stream.write_all(&out).await.expect("write");
    p.send(Packet::PingReq).await;
    while !matches!(p.next().await, Packet::PingResp) {}
    let stored = t.elapsed();
    // Let the broker settle (store flushes) before reading its memory.
    let settle: u64 = std::env::var("SETTLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let after = rss_kib(&pid);
    let mut s = Conn::open(&addr, "bench-everything").await;
    let t = Instant::now();
    s.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: "#".into(),
            options: SubscriptionOptions {
                qos: QoS::AtMostOnce,
                ..Default::default()
            },
        }],
    }))
    .await;
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < n && Instant::now() < deadline {
        if let Packet::Publish(m) = s.next().await {
            if m.topic.starts_with("bench/retained/") {
                got += 1;
            }
        }
    }
    let delivered = t.elapsed();
    println!(
        "retained {n} in {:.2} s; RSS {} -> {} KiB: {:.0} bytes per message; \
         a new # subscriber received {got} in {:.2} s ({:.0} msg/s)",
        stored.as_secs_f64(),
        before,
        after,
        (after.saturating_sub(before) * 1024) as f64 / n as f64,
        delivered.as_secs_f64(),
        got as f64 / delivered.as_secs_f64()
    );
}

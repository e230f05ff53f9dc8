//! Measures startup recovery: fills a store with 100,000 persistent sessions
//! (one subscription each) and `PER_SESSION` (default 100: 10,000,000 in
//! all) queued QoS 1 messages each, then times how long the broker takes to
//! open the store, rebuild its state and bind its listener, and then how
//! long one client takes to reconnect and receive its queue, and the rate at
//! which a session with 1,000,000 queued messages drains.
//!
//! `PER_SESSION=100 cargo run --release -p starling-broker --example recovery [DIR]`

use std::time::Instant;

use bytes::Bytes;
use starling_broker::store::{
    unix_ms, Durability, FjallStore, MessageRecord, Op, SessionRecord, Store, SubscriptionRecord,
};
use starling_broker::{Broker, Config};
use starling_codec::{
    Ack, ByteString, Connect, Decoder, Packet, ProtocolVersion, Publish, QoS, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SESSIONS: usize = 100_000;
/// Messages queued for the session whose drain rate is measured.
const BIG: u64 = 1_000_000;

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("starling-recovery-bench"));
    let _ = std::fs::remove_dir_all(&dir);
    let per_session: u64 = std::env::var("PER_SESSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let fill = Instant::now();
    {
        let mut store = FjallStore::open(&dir).expect("store opens");
        let mut publish = Publish::new("bench/topic", Bytes::from(vec![b'x'; 64]));
        publish.qos = QoS::AtLeastOnce;
        publish.packet_id = 1;
        let record = MessageRecord {
            publish,
            packet_id: 0,
            released: false,
            expires_at_ms: 0,
        }
        .encode()
        .expect("encodes");
        let mut ops = Vec::new();
        for s in 0..SESSIONS {
            let client: ByteString = format!("client-{s:06}").into();
            ops.push(Op::Session(
                client.clone(),
                SessionRecord {
                    expiry_interval: u32::MAX,
                    disconnected_at_ms: unix_ms(),
                },
            ));
            ops.push(Op::Subscribe(
                client.clone(),
                format!("bench/{s}/#").into(),
                SubscriptionRecord {
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                    id: None,
                },
            ));
            for seq in 1..=per_session {
                ops.push(Op::Message(client.clone(), seq, record.clone()));
            }
            if ops.len() >= 50_000 {
                store.apply(&ops, false).expect("writes");
                ops.clear();
            }
        }
        // One more session with a long queue, for the drain rate.
        let big: ByteString = "big".into();
        ops.push(Op::Session(
            big.clone(),
            SessionRecord {
                expiry_interval: u32::MAX,
                disconnected_at_ms: unix_ms(),
            },
        ));
        for seq in 1..=BIG {
            ops.push(Op::Message(big.clone(), seq, record.clone()));
            if ops.len() >= 50_000 {
                store.apply(&ops, false).expect("writes");
                ops.clear();
            }
        }
        store.apply(&ops, true).expect("writes");
    }
    println!(
        "filled {SESSIONS} sessions and {} messages in {:.1} s",
        SESSIONS as u64 * per_session,
        fill.elapsed().as_secs_f64()
    );
    let config = Config {
        data_dir: dir.clone(),
        durability: Durability::Always,
        listen: vec!["mqtt://127.0.0.1:0".into()],
        sys_interval: 0,
        ..Config::default()
    };
    let start = Instant::now();
    let broker = Broker::bind(config).await.expect("broker binds");
    let addr = broker.local_addrs()[0];
    let state = broker.state();
    let handle = broker.shutdown_handle();
    let run = tokio::spawn(broker.run());
    // Ready: a client connects and gets its CONNACK.
    let mut client = Client::connect(addr, "client-000042").await;
    let ready = start.elapsed();
    println!(
        "started and accepted a connection in {:.2} s: {} sessions, {} subscriptions",
        ready.as_secs_f64(),
        state.session_count(),
        state.subscription_count(),
    );
    let drain = Instant::now();
    client.receive(per_session as usize).await;
    println!(
        "that client's {per_session} queued messages arrived {:.1} ms later",
        drain.elapsed().as_secs_f64() * 1000.0
    );
    let drain = Instant::now();
    let mut big = Client::connect(addr, "big").await;
    big.receive(BIG as usize).await;
    let secs = drain.elapsed().as_secs_f64();
    println!(
        "an offline queue of {BIG} messages drained in {secs:.2} s: {:.0} msg/s",
        BIG as f64 / secs
    );
    handle.shutdown();
    let _ = run.await;
    if let Some(store) = state.store() {
        store.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A persistent MQTT 5 session over TCP, spoken with the codec.
struct Client {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    decoder: Decoder,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, id: &str) -> Client {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let mut c = Client {
            stream,
            buf: bytes::BytesMut::new(),
            decoder: Decoder::with_version(ProtocolVersion::V5),
        };
        let mut connect = Connect::new(ProtocolVersion::V5, id);
        connect.clean_start = false;
        connect.properties.session_expiry_interval = Some(u32::MAX);
        c.send(Packet::Connect(Box::new(connect))).await;
        match c.next().await {
            Packet::ConnAck(a) => assert!(a.session_present, "{a:?}"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, p: Packet) {
        let mut out = bytes::BytesMut::new();
        p.encode(ProtocolVersion::V5, &mut out).expect("encodes");
        self.stream.write_all(&out).await.expect("writes");
    }

    async fn next(&mut self) -> Packet {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).expect("valid") {
                return p;
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("reads");
            assert!(n > 0, "closed");
        }
    }

    async fn receive(&mut self, n: usize) {
        for _ in 0..n {
            match self.next().await {
                Packet::Publish(p) => self.send(Packet::PubAck(Ack::new(p.packet_id))).await,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }
}

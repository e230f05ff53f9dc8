//! The fault test of persistent sessions: the broker runs as a child process
//! with `durability = "always"`, publishers send to a persistent subscriber's
//! offline session, the broker is killed with SIGKILL mid-stream and restarted
//! on the same data directory, and every acknowledged message must arrive
//! (QoS 1: duplicates allowed, no loss; QoS 2: exactly once).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use starling_codec::{
    Ack, Connect, Decoder, Packet, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct BrokerProcess(Child);

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_broker(dir: &Path, port: u16) -> BrokerProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["broker", "--listen", &format!("mqtt://127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(["--durability", "always", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starling broker starts");
    let proc = BrokerProcess(child);
    // Ready when it accepts connections (bounded polling, not a fixed sleep).
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..3000 {
        if TcpStream::connect(addr).await.is_ok() {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("broker did not start listening on {addr}");
}

struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Peer {
    async fn connect(port: u16, id: &str, clean: bool) -> (Peer, bool) {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(ProtocolVersion::V5),
        };
        let mut c = Connect::new(ProtocolVersion::V5, id);
        c.clean_start = clean;
        c.properties.session_expiry_interval = Some(u32::MAX);
        c.properties.receive_maximum = Some(100);
        peer.send(Packet::Connect(Box::new(c)))
            .await
            .expect("send CONNECT");
        match peer.recv().await {
            Some(Packet::ConnAck(a)) => {
                assert!(!a.reason_code.is_error(), "{a:?}");
                (peer, a.session_present)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        p.encode(ProtocolVersion::V5, &mut out).expect("encodes");
        self.stream.write_all(&out).await
    }

    async fn recv(&mut self) -> Option<Packet> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("bad packet from broker: {e}"),
            }
            match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }
}

/// Publishes `name-N` messages with a window of 20 in flight until the
/// connection fails; returns nothing, records what was acknowledged.
async fn publisher(port: u16, name: String, qos: QoS, acked: Arc<Mutex<HashSet<String>>>) {
    let (mut p, _) = Peer::connect(port, &name, true).await;
    let mut inflight: HashMap<u16, String> = HashMap::new();
    let mut n: u32 = 0;
    loop {
        while inflight.len() < 20 {
            n += 1;
            let id = (n % 60_000) as u16 + 1;
            let payload = format!("{name}-{n}");
            let mut publish = Publish::new("k/t", Bytes::from(payload.clone()));
            publish.qos = qos;
            publish.packet_id = id;
            if p.send(Packet::Publish(publish)).await.is_err() {
                return;
            }
            inflight.insert(id, payload);
        }
        match p.recv().await {
            Some(Packet::PubAck(a)) if qos == QoS::AtLeastOnce => {
                if let Some(m) = inflight.remove(&a.packet_id) {
                    acked.lock().unwrap().insert(m);
                }
            }
            Some(Packet::PubRec(a)) => {
                if p.send(Packet::PubRel(Ack::new(a.packet_id))).await.is_err() {
                    return;
                }
            }
            Some(Packet::PubComp(a)) => {
                if let Some(m) = inflight.remove(&a.packet_id) {
                    acked.lock().unwrap().insert(m);
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => return,
        }
    }
}

async fn fault_run(qos: QoS) {
    let dir = std::env::temp_dir().join(format!(
        "starling-kill9-{}-{}",
        std::process::id(),
        qos as u8
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let mut broker = start_broker(&dir, port).await;

    // A persistent subscriber, then offline: everything goes to its stored queue.
    let (mut sub, _) = Peer::connect(port, "durable-sub", false).await;
    sub.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: "k/#".into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
    }))
    .await
    .unwrap();
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    sub.send(Packet::Disconnect(Default::default()))
        .await
        .unwrap();
    drop(sub);

    let acked = Arc::new(Mutex::new(HashSet::new()));
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(publisher(port, format!("pub{i}"), qos, acked.clone())))
        .collect();
    // Kill -9 once a few hundred messages are acknowledged, mid-stream.
    let target = 400;
    for _ in 0..6000 {
        if acked.lock().unwrap().len() >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        acked.lock().unwrap().len() >= target,
        "publishers got acknowledgements"
    );
    broker.0.kill().expect("SIGKILL");
    let _ = broker.0.wait();
    for t in tasks {
        let _ = tokio::time::timeout(WAIT, t).await;
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();

    let _broker = start_broker(&dir, port).await;
    let (mut sub, present) = Peer::connect(port, "durable-sub", false).await;
    assert!(present, "session present after kill -9");
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut missing: HashSet<&String> = acked.iter().collect();
    while !missing.is_empty() {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                let m = String::from_utf8_lossy(&p.payload).into_owned();
                missing.remove(&m);
                *seen.entry(m).or_default() += 1;
                match p.qos {
                    QoS::AtLeastOnce => sub
                        .send(Packet::PubAck(Ack::new(p.packet_id)))
                        .await
                        .unwrap(),
                    QoS::ExactlyOnce => sub
                        .send(Packet::PubRec(Ack::new(p.packet_id)))
                        .await
                        .unwrap(),
                    QoS::AtMostOnce => {}
                }
            }
            Some(Packet::PubRel(r)) => sub
                .send(Packet::PubComp(Ack::new(r.packet_id)))
                .await
                .unwrap(),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!(
                "{} of {} acknowledged messages lost, e.g. {:?}",
                missing.len(),
                acked.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            ),
        }
    }
    println!(
        "{qos:?}: {} acknowledged before kill -9, {} distinct received after restart, {} deliveries",
        acked.len(),
        seen.len(),
        seen.values().sum::<u32>()
    );
    if qos == QoS::ExactlyOnce {
        let dups: Vec<_> = seen
            .iter()
            .filter(|(m, c)| **c > 1 && acked.contains(*m))
            .collect();
        assert!(dups.is_empty(), "QoS 2 duplicates: {dups:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_qos1_message() {
    fault_run(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_qos2_exactly_once() {
    fault_run(QoS::ExactlyOnce).await;
}

/// What an online QoS 2 subscriber delivered, as an MQTT receiver does it:
/// a PUBLISH is delivered unless its packet id awaits a PUBREL (then it is
/// the same message, resent) [MQTT-4.3.3].
#[derive(Default)]
struct Receiver {
    subscribed: bool,
    awaiting_rel: HashSet<u16>,
    delivered: HashMap<String, u32>,
}

/// Keeps a persistent QoS 2 subscriber online across broker restarts until
/// `stop` is set, reconnecting (session present) whenever the broker dies.
async fn online_subscriber(
    port: u16,
    rx: Arc<Mutex<Receiver>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut first = true;
    for _ in 0..10_000 {
        if stop.load(SeqCst) {
            return;
        }
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut sub = Peer {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::with_version(ProtocolVersion::V5),
        };
        let mut c = Connect::new(ProtocolVersion::V5, "online-sub");
        c.clean_start = first;
        c.properties.session_expiry_interval = Some(u32::MAX);
        c.properties.receive_maximum = Some(100);
        if sub.send(Packet::Connect(Box::new(c))).await.is_err() {
            continue;
        }
        match sub.recv().await {
            Some(Packet::ConnAck(a)) if !a.reason_code.is_error() => {
                assert!(first || a.session_present, "session lost: {a:?}");
            }
            _ => continue,
        }
        if first {
            let s = Subscribe {
                packet_id: 1,
                properties: Default::default(),
                subscriptions: vec![Subscription {
                    filter: "k/#".into(),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..Default::default()
                    },
                }],
            };
            sub.send(Packet::Subscribe(s)).await.unwrap();
            assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
            rx.lock().unwrap().subscribed = true;
            first = false;
        }
        while let Some(p) = sub.recv().await {
            let reply = match p {
                Packet::Publish(p) => {
                    let mut r = rx.lock().unwrap();
                    if r.awaiting_rel.insert(p.packet_id) {
                        let m = String::from_utf8_lossy(&p.payload).into_owned();
                        *r.delivered.entry(m).or_default() += 1;
                    }
                    Packet::PubRec(Ack::new(p.packet_id))
                }
                Packet::PubRel(r) => {
                    rx.lock().unwrap().awaiting_rel.remove(&r.packet_id);
                    Packet::PubComp(Ack::new(r.packet_id))
                }
                other => panic!("unexpected {other:?}"),
            };
            if sub.send(reply).await.is_err() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_an_online_subscriber_delivers_qos2_exactly_once() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let dir = std::env::temp_dir().join(format!("starling-kill9-online-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let rx = Arc::new(Mutex::new(Receiver::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut broker = start_broker(&dir, port).await;
    let sub = tokio::spawn(online_subscriber(port, rx.clone(), stop.clone()));
    for _ in 0..3000 {
        if rx.lock().unwrap().subscribed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(rx.lock().unwrap().subscribed, "the subscriber subscribed");
    for cycle in 0..3 {
        let before = acked.lock().unwrap().len();
        let tasks: Vec<_> = (0..2)
            .map(|i| {
                let name = format!("pub{i}-c{cycle}");
                tokio::spawn(publisher(port, name, QoS::ExactlyOnce, acked.clone()))
            })
            .collect();
        // Kill -9 mid-stream, once the subscriber has been receiving.
        for _ in 0..6000 {
            if acked.lock().unwrap().len() >= before + 300 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(acked.lock().unwrap().len() >= before + 300, "cycle {cycle}");
        broker.0.kill().expect("SIGKILL");
        let _ = broker.0.wait();
        for t in tasks {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
        broker = start_broker(&dir, port).await;
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    // Every acknowledged message arrives (bounded wait).
    for _ in 0..6000 {
        let all = {
            let r = rx.lock().unwrap();
            acked.iter().all(|m| r.delivered.contains_key(m))
        };
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, SeqCst);
    drop(broker);
    let _ = tokio::time::timeout(WAIT, sub).await;
    let r = rx.lock().unwrap();
    let missing: Vec<_> = acked
        .iter()
        .filter(|m| !r.delivered.contains_key(*m))
        .collect();
    let dups: Vec<_> = r.delivered.iter().filter(|(_, c)| **c > 1).collect();
    println!(
        "online QoS 2, 3 x kill -9: {} acknowledged, {} delivered, {} duplicates",
        acked.len(),
        r.delivered.len(),
        dups.len()
    );
    assert!(
        missing.is_empty(),
        "lost: {} e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    assert!(dups.is_empty(), "QoS 2 delivered twice: {dups:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `n` QoS 1 messages `name-N` with a window of 100 in flight;
/// returns how many were acknowledged.
async fn publish_n(port: u16, name: &str, n: u32) -> u32 {
    let (mut p, _) = Peer::connect(port, name, true).await;
    let (mut sent, mut acked) = (0u32, 0u32);
    while acked < n {
        while sent < n && sent - acked < 100 {
            sent += 1;
            let mut publish = Publish::new("k/t", Bytes::from(format!("{name}-{sent}")));
            publish.qos = QoS::AtLeastOnce;
            publish.packet_id = (sent % 60_000) as u16 + 1;
            p.send(Packet::Publish(publish)).await.expect("send");
        }
        match p.recv().await {
            Some(Packet::PubAck(a)) => {
                assert!(!a.reason_code.is_error(), "{a:?}");
                acked += 1;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    acked
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_subscriber_gets_100k_acknowledged_messages_after_kill9_on_the_defaults() {
    let dir = std::env::temp_dir().join(format!("starling-kill9-100k-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let mut broker = start_broker(&dir, port).await;
    let (mut sub, _) = Peer::connect(port, "offline-100k", false).await;
    sub.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: "k/#".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    }))
    .await
    .unwrap();
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    sub.send(Packet::Disconnect(Default::default()))
        .await
        .unwrap();
    drop(sub);
    let rss_before = rss_kb(broker.0.id());
    let each = 25_000u32;
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(async move { publish_n(port, &format!("p{i}"), each).await }))
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("publisher");
    }
    assert_eq!(acked, 4 * each);
    let rss_after = rss_kb(broker.0.id());
    broker.0.kill().expect("SIGKILL");
    let _ = broker.0.wait();
    let _broker = start_broker(&dir, port).await;
    let (mut sub, present) = Peer::connect(port, "offline-100k", false).await;
    assert!(present);
    let mut seen = HashSet::new();
    while seen.len() < (4 * each) as usize {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                seen.insert(p.payload.clone());
                sub.send(Packet::PubAck(Ack::new(p.packet_id)))
                    .await
                    .unwrap();
            }
            other => panic!("{} of {} received, then {other:?}", seen.len(), 4 * each),
        }
    }
    println!(
        "100,000 acknowledged QoS 1 messages to an offline session: broker RSS {rss_before} KB before, {rss_after} KB after; all received after kill -9"
    );
    // The queue lives on disk: the broker does not hold 100,000 messages in
    // memory (each of them would cost well over 100 bytes).
    assert!(
        rss_after < rss_before + 40_000,
        "RSS grew from {rss_before} KB to {rss_after} KB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Fuzzes the broker past the decoder: each input is a short script of MQTT
//! operations (connect, subscribe, unsubscribe, publish, disconnect, drop,
//! raw bytes) that up to four clients send to an in-memory broker. Filters
//! and topics are built from fragments that may repeat up to 70,000 times, so
//! the subscription trie and the retained trie see inputs tens of thousands
//! of levels deep.
//!
//! Two brokers live for the whole run: one with `max-topic-levels = 65536`
//! (the most the config allows, so deep filters and topics reach the tries)
//! and one with the defaults (128: deep ones are refused).
//!
//! Besides "no panic, no hang, no sanitizer report", the target checks:
//! - every packet the broker sends decodes;
//! - a SUBACK refuses every filter the codec's `validate_filter` /
//!   `parse_shared` reject or that is deeper than the limit, and grants the
//!   others;
//! - an MQTT 5 UNSUBACK says success exactly for filters the session holds;
//! - every PUBLISH a client receives matches (reference matcher) a filter its
//!   session was granted;
//! - after the script, with every session of the script discarded, no
//!   subscription is left in the trie; a fresh client still gets its CONNACK.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use starling_broker::{Broker, BrokerState, Config, LocalConnector};
use starling_codec::topic::{levels, matches, parse_shared, validate_filter};
use starling_codec::{
    Ack, Connect, Decoder, Disconnect, Packet, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Subscribe, Subscription, SubscriptionOptions, Unsubscribe, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use tokio::time::timeout;

/// The deep broker's `max-topic-levels`: the largest the config accepts.
const DEEP_LEVELS: usize = 65_536;
/// How many times a fragment repeats, for `times` of 200 and more: one byte
/// of input reaches the deep end.
const DEEP_REPEATS: [usize; 8] = [
    1_000, 10_000, 20_000, 32_767, 32_768, 50_000, 65_535, 70_000,
];
/// Longest MQTT string.
const MAX_STRING: usize = 65_535;
/// Client ids in use.
const CLIENTS: u8 = 4;
/// How long an answer may take before the target gives up on it (the broker
/// answers in microseconds; this only bounds a broken connection).
const ANSWER: Duration = Duration::from_secs(10);
/// How long a fresh client may wait for its CONNACK before the broker is
/// declared dead.
const ALIVE: Duration = Duration::from_secs(30);

struct Target {
    connector: LocalConnector,
    state: Arc<BrokerState>,
    max_levels: usize,
}

struct Harness {
    rt: Runtime,
    /// [deep, default].
    brokers: [Target; 2],
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // Worker threads have tokio's default 2 MiB stack, as in the
        // `starling broker` binary: a walk that recursed per level would
        // overflow there.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let brokers = rt.block_on(async {
            let mut out = Vec::new();
            for max_levels in [DEEP_LEVELS, Config::default().max_topic_levels] {
                let config = Config {
                    listen: vec!["mqtt://127.0.0.1:0".to_string()],
                    durability: starling_broker::store::Durability::None,
                    sys_interval: 0,
                    max_topic_levels: max_levels,
                    // Bounded queues, so that unread deliveries cannot grow
                    // without end across inputs.
                    max_queued_messages: 100,
                    ..Config::default()
                };
                let broker = Broker::bind(config).await.expect("broker binds");
                let target = Target {
                    connector: broker.local_connector(),
                    state: broker.state(),
                    max_levels,
                };
                tokio::spawn(broker.run());
                out.push(target);
            }
            out
        });
        let [deep, default]: [Target; 2] = brokers.try_into().ok().expect("two brokers");
        Harness {
            rt,
            brokers: [deep, default],
        }
    })
}

/// A piece of a filter or topic.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Atom {
    A,
    B,
    Slash,
    Plus,
    Hash,
    PlusSlash,
    ASlash,
    Sys,
    Dollar,
    Share,
    Group,
    Nul,
    Unicode,
}

impl Atom {
    fn text(self) -> &'static str {
        match self {
            Atom::A => "a",
            Atom::B => "b",
            Atom::Slash => "/",
            Atom::Plus => "+",
            Atom::Hash => "#",
            Atom::PlusSlash => "+/",
            Atom::ASlash => "a/",
            Atom::Sys => "$SYS",
            Atom::Dollar => "$",
            Atom::Share => "$share/",
            Atom::Group => "g/",
            Atom::Nul => "\0",
            Atom::Unicode => "é",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Atom(Atom),
    /// A fragment repeated `times` times below 200, else one of `DEEP_REPEATS`.
    Repeat {
        fragment: Vec<Atom>,
        times: u8,
    },
    /// A short literal.
    Lit(String),
}

/// A filter or topic: pieces concatenated, cut at 65,535 bytes.
#[derive(Arbitrary, Debug)]
struct Text(Vec<Piece>);

impl Text {
    fn build(&self) -> String {
        let mut s = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Atom(a) => s.push_str(a.text()),
                Piece::Repeat { fragment, times } => {
                    if fragment.is_empty() {
                        continue;
                    }
                    let times = match *times {
                        t @ 0..200 => usize::from(t),
                        t => DEEP_REPEATS[usize::from(t - 200) % DEEP_REPEATS.len()],
                    };
                    for _ in 0..times {
                        for a in fragment {
                            s.push_str(a.text());
                        }
                        if s.len() > MAX_STRING {
                            break;
                        }
                    }
                }
                Piece::Lit(l) => s.extend(l.chars().take(16)),
            }
            if s.len() > MAX_STRING {
                break;
            }
        }
        if s.len() > MAX_STRING {
            let mut cut = MAX_STRING;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }
}

#[derive(Arbitrary, Debug)]
struct WillSpec {
    topic: Text,
    qos: u8,
    retain: bool,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        client: u8,
        v5: bool,
        clean: bool,
        /// MQTT 5 session expiry, seconds.
        expiry: u8,
        will: Option<WillSpec>,
    },
    Subscribe {
        client: u8,
        filters: Vec<(Text, u8)>,
        sub_id: u8,
    },
    Unsubscribe {
        client: u8,
        filters: Vec<Text>,
    },
    Publish {
        client: u8,
        topic: Text,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
        /// MQTT 5 message expiry, seconds (0: none).
        expiry: u8,
    },
    Disconnect {
        client: u8,
    },
    /// Drops the connection without DISCONNECT (the will, if any, is sent).
    Drop {
        client: u8,
    },
    /// Arbitrary bytes on the connection.
    Raw {
        client: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Script {
    /// 0..=2: the deep broker; 3: the one on defaults.
    broker: u8,
    ops: Vec<Op>,
}

/// The deepest filter granted and topic published so far, for the log: the
/// point is to reach the tries with deep inputs, and coverage alone does not
/// tell how deep they were.
static DEEPEST_FILTER: AtomicUsize = AtomicUsize::new(0);
static DEEPEST_TOPIC: AtomicUsize = AtomicUsize::new(0);
/// Filters granted and topics published with more than 10,000 levels.
static DEEP_OPS: AtomicUsize = AtomicUsize::new(0);

fn record(what: &str, deepest: &AtomicUsize, levels: usize) {
    if levels > 10_000 {
        let n = DEEP_OPS.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            eprintln!(
                "broker target: {n} filters granted / topics published deeper than 10,000 levels"
            );
        }
    }
    if deepest.fetch_max(levels, Ordering::Relaxed) < levels {
        eprintln!("broker target: deepest {what} so far: {levels} levels");
    }
}

/// What the target knows of a session.
#[derive(Default)]
struct Model {
    /// Filters (as sent, `$share/` prefix included) the session holds.
    current: HashSet<String>,
    /// Inner filters granted since the session began: what deliveries must match.
    ever: HashSet<String>,
    /// Raw bytes went to the session: it may hold filters the target does
    /// not know of, so its deliveries and UNSUBACKs are not checked.
    unknown: bool,
}

struct Client {
    stream: DuplexStream,
    buf: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
    next_id: u16,
    open: bool,
}

impl Client {
    fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Writes `packet`; false if it cannot be encoded or the broker has closed.
    async fn send(&mut self, packet: &Packet) -> bool {
        let mut out = BytesMut::new();
        if packet.encode(self.version, &mut out).is_err() {
            return false;
        }
        self.write(&out).await
    }

    /// Writes `bytes`, reading (into the buffer) while the write waits: the
    /// broker may be blocked writing to us while we write a large packet.
    async fn write(&mut self, bytes: &[u8]) -> bool {
        if !self.open {
            return false;
        }
        let (mut r, mut w) = tokio::io::split(&mut self.stream);
        let buf = &mut self.buf;
        let written = timeout(ANSWER, async {
            let write = w.write_all(bytes);
            tokio::pin!(write);
            let mut eof = false;
            loop {
                tokio::select! {
                    res = &mut write => return res.is_ok(),
                    n = r.read_buf(buf), if !eof => eof = !matches!(n, Ok(n) if n > 0),
                }
            }
        })
        .await;
        if written != Ok(true) {
            self.open = false;
        }
        self.open
    }

    /// The next packet within `wait` (zero: only what has arrived), or `None`.
    async fn next(&mut self, wait: Duration) -> Option<Packet> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("the broker sent a packet that does not decode: {e}"),
            }
            if !self.open {
                return None;
            }
            match timeout(wait, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.open = false;
                }
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    }
}

/// What one script runs against.
struct Run<'a> {
    target: &'a Target,
    clients: HashMap<u8, Client>,
    models: HashMap<u8, Model>,
    used: HashSet<u8>,
}

fn qos(q: u8) -> QoS {
    match q % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn client_id(k: u8) -> String {
    format!("fz{k}")
}

/// Whether the broker must grant `filter` (no ACL, no mountpoint).
fn grantable(filter: &str, max_levels: usize) -> bool {
    let inner = match parse_shared(filter) {
        Ok(Some(s)) => s.filter,
        Ok(None) if validate_filter(filter).is_ok() => filter,
        _ => return false,
    };
    levels(inner) <= max_levels
}

fn inner(filter: &str) -> &str {
    match parse_shared(filter) {
        Ok(Some(s)) => s.filter,
        _ => filter,
    }
}

impl Run<'_> {
    /// Connects client `k`; the CONNACK decides whether its session model is kept.
    async fn connect(&mut self, k: u8, connect: Connect) {
        self.used.insert(k);
        let old = self.clients.remove(&k);
        let version = connect.protocol;
        let mut client = Client {
            stream: self.target.connector.connect(),
            buf: BytesMut::new(),
            decoder: Decoder::with_version(version),
            version,
            next_id: 0,
            open: true,
        };
        client.decoder.set_max_packet_size(usize::MAX);
        if !client.send(&Packet::Connect(Box::new(connect))).await {
            return;
        }
        let ack = match client.next(ANSWER).await {
            Some(Packet::ConnAck(ack)) => ack,
            Some(other) => panic!("expected CONNACK, got {other:?}"),
            None => return,
        };
        if let Some(mut old) = old {
            if !ack.reason_code.is_error() && old.open {
                // Taken over: the old connection is closed, after what its
                // session had for it (checked against the old model).
                self.drain(k, &mut old, ANSWER).await;
                assert!(!old.open, "a taken-over connection was not closed");
            }
        }
        if !ack.session_present {
            self.models.insert(k, Model::default());
        }
        if !ack.reason_code.is_error() {
            self.clients.insert(k, client);
        }
    }

    /// The client for `k`, connected with MQTT 5 defaults if it is not.
    async fn client(&mut self, k: u8) -> Option<&mut Client> {
        let k = k % CLIENTS;
        if !self.clients.get(&k).is_some_and(|c| c.open) {
            self.connect(k, Connect::new(ProtocolVersion::V5, client_id(k)))
                .await;
        }
        self.clients.get_mut(&k)
    }

    /// Handles one packet from the broker to client `k`: acknowledges what
    /// needs it and checks deliveries against the session's filters.
    async fn on_packet(&mut self, k: u8, client: &mut Client, packet: Packet) {
        match packet {
            Packet::Publish(p) => {
                let model = self.models.entry(k).or_default();
                assert!(
                    model.unknown || model.ever.iter().any(|f| matches(f, &p.topic)),
                    "client {k} got a PUBLISH on {:?} ({} levels) that none of its {} filters matches",
                    abbrev(&p.topic),
                    levels(&p.topic),
                    model.ever.len(),
                );
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        client.send(&Packet::PubAck(Ack::new(p.packet_id))).await;
                    }
                    QoS::ExactlyOnce => {
                        client.send(&Packet::PubRec(Ack::new(p.packet_id))).await;
                    }
                }
            }
            Packet::PubRel(a) => {
                client.send(&Packet::PubComp(Ack::new(a.packet_id))).await;
            }
            Packet::PubRec(a) if !a.reason_code.is_error() => {
                client.send(&Packet::PubRel(Ack::new(a.packet_id))).await;
            }
            Packet::Disconnect(_) => client.open = false,
            _ => {}
        }
    }

    /// Reads what has arrived for `k` (waiting up to `wait` for more).
    async fn drain(&mut self, k: u8, client: &mut Client, wait: Duration) {
        while let Some(p) = client.next(wait).await {
            self.on_packet(k, client, p).await;
        }
    }

    /// PINGREQ, then everything up to the PINGRESP: the broker has handled
    /// all that was sent before. Returns the packets besides those handled.
    async fn sync(&mut self, k: u8, client: &mut Client) -> Vec<Packet> {
        let mut other = Vec::new();
        if !client.send(&Packet::PingReq).await {
            self.drain(k, client, Duration::ZERO).await;
            return other;
        }
        while let Some(p) = client.next(ANSWER).await {
            match p {
                Packet::PingResp => break,
                Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::ConnAck(_) => other.push(p),
                p => self.on_packet(k, client, p).await,
            }
        }
        other
    }

    /// Sends `packet` from `k` and returns the SUBACK/UNSUBACK it earned, if any.
    async fn request(&mut self, k: u8, packet: Packet) -> Option<Packet> {
        let k = k % CLIENTS;
        let mut client = {
            self.client(k).await?;
            self.clients.remove(&k)?
        };
        let mut answer = None;
        if client.send(&packet).await {
            answer = self.sync(k, &mut client).await.into_iter().next();
        }
        self.clients.insert(k, client);
        answer
    }

    async fn op(&mut self, op: &Op) {
        match op {
            Op::Connect {
                client,
                v5,
                clean,
                expiry,
                will,
            } => {
                let k = client % CLIENTS;
                let version = if *v5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V3_1_1
                };
                let mut c = Connect::new(version, client_id(k));
                c.clean_start = *clean;
                c.keep_alive = 0;
                if *v5 && *expiry > 0 {
                    c.properties.session_expiry_interval = Some(u32::from(*expiry));
                }
                c.will = will.as_ref().map(|w| Will {
                    topic: w.topic.build().into(),
                    payload: Bytes::from(w.payload.iter().copied().take(64).collect::<Vec<_>>()),
                    qos: qos(w.qos),
                    retain: w.retain,
                    properties: Default::default(),
                });
                self.connect(k, c).await;
            }
            Op::Subscribe {
                client,
                filters,
                sub_id,
            } => {
                let v5 = self
                    .clients
                    .get(&(client % CLIENTS))
                    .is_none_or(|c| c.version == ProtocolVersion::V5);
                let subs: Vec<(String, SubscriptionOptions)> = filters
                    .iter()
                    .take(8)
                    .map(|(t, o)| {
                        let filter = t.build();
                        let shared = filter.starts_with("$share/");
                        let options = SubscriptionOptions {
                            qos: qos(*o),
                            // No Local on a shared subscription is a protocol error.
                            no_local: v5 && !shared && o & 0x04 != 0,
                            retain_as_published: v5 && o & 0x08 != 0,
                            retain_handling: match (o >> 4) % 3 {
                                _ if !v5 => RetainHandling::SendAtSubscribe,
                                0 => RetainHandling::SendAtSubscribe,
                                1 => RetainHandling::SendIfNew,
                                _ => RetainHandling::DoNotSend,
                            },
                        };
                        (filter, options)
                    })
                    .collect();
                if subs.is_empty() {
                    return;
                }
                let mut packet = Subscribe {
                    packet_id: 0,
                    properties: Default::default(),
                    subscriptions: subs
                        .iter()
                        .map(|(f, o)| Subscription {
                            filter: f.as_str().into(),
                            options: *o,
                        })
                        .collect(),
                };
                if v5 && *sub_id > 0 {
                    packet
                        .properties
                        .subscription_identifiers
                        .push(u32::from(*sub_id));
                }
                let k = client % CLIENTS;
                let Some(c) = self.client(k).await else {
                    return;
                };
                packet.packet_id = c.packet_id();
                // Retained messages may follow the SUBACK before the target
                // has read it: the filters that must be granted may be
                // matched from now on.
                let max = self.target.max_levels;
                let model = self.models.entry(k).or_default();
                for (filter, _) in &subs {
                    if grantable(filter, max) {
                        model.ever.insert(inner(filter).to_string());
                    }
                }
                let answer = self.request(k, Packet::Subscribe(packet)).await;
                let Some(Packet::SubAck(ack)) = answer else {
                    return;
                };
                assert_eq!(
                    ack.reason_codes.len(),
                    subs.len(),
                    "one SUBACK code per filter"
                );
                let model = self.models.entry(k).or_default();
                for ((filter, _), code) in subs.iter().zip(&ack.reason_codes) {
                    let expect = grantable(filter, max);
                    assert_eq!(
                        !code.is_error(),
                        expect,
                        "SUBACK {code:?} for {:?} ({} levels, limit {max})",
                        abbrev(filter),
                        levels(filter),
                    );
                    if !code.is_error() {
                        record("filter granted", &DEEPEST_FILTER, levels(inner(filter)));
                        model.current.insert(filter.clone());
                        model.ever.insert(inner(filter).to_string());
                    }
                }
            }
            Op::Unsubscribe { client, filters } => {
                let k = client % CLIENTS;
                let list: Vec<String> = filters.iter().take(8).map(Text::build).collect();
                if list.is_empty() {
                    return;
                }
                let Some(c) = self.client(k).await else {
                    return;
                };
                let v5 = c.version == ProtocolVersion::V5;
                let packet = Unsubscribe {
                    packet_id: c.packet_id(),
                    properties: Default::default(),
                    filters: list.iter().map(|f| f.as_str().into()).collect(),
                };
                let answer = self.request(k, Packet::Unsubscribe(packet)).await;
                let Some(Packet::UnsubAck(ack)) = answer else {
                    return;
                };
                let model = self.models.entry(k).or_default();
                if !v5 || model.unknown {
                    for f in &list {
                        model.current.remove(f);
                    }
                    return;
                }
                assert_eq!(
                    ack.reason_codes.len(),
                    list.len(),
                    "one UNSUBACK code per filter"
                );
                for (f, code) in list.iter().zip(&ack.reason_codes) {
                    let held = model.current.remove(f);
                    assert_eq!(
                        *code == ReasonCode::SUCCESS,
                        held,
                        "UNSUBACK {code:?} for {:?}, which the session {} hold",
                        abbrev(f),
                        if held { "did" } else { "did not" },
                    );
                }
            }
            Op::Publish {
                client,
                topic,
                qos: q,
                retain,
                payload,
                expiry,
            } => {
                let k = client % CLIENTS;
                let Some(c) = self.client(k).await else {
                    return;
                };
                let mut p = Publish::new(
                    topic.build(),
                    Bytes::from(payload.iter().copied().take(256).collect::<Vec<_>>()),
                );
                p.qos = qos(*q);
                p.retain = *retain;
                if p.qos != QoS::AtMostOnce {
                    p.packet_id = c.packet_id();
                }
                if c.version == ProtocolVersion::V5 && *expiry > 0 {
                    p.properties.message_expiry_interval = Some(u32::from(*expiry));
                }
                let depth = levels(&p.topic);
                self.request(k, Packet::Publish(p)).await;
                // Still connected after the PINGRESP: the broker took it.
                if self.clients.get(&k).is_some_and(|c| c.open) {
                    record("topic published", &DEEPEST_TOPIC, depth);
                }
            }
            Op::Disconnect { client } => {
                let k = client % CLIENTS;
                if let Some(mut c) = self.clients.remove(&k) {
                    c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
                        .await;
                    self.drain(k, &mut c, Duration::from_millis(20)).await;
                }
            }
            Op::Drop { client } => {
                self.clients.remove(&(client % CLIENTS));
            }
            Op::Raw { client, bytes } => {
                let k = client % CLIENTS;
                if self.client(k).await.is_none() {
                    return;
                }
                let Some(mut c) = self.clients.remove(&k) else {
                    return;
                };
                c.write(&bytes[..bytes.len().min(4096)]).await;
                // What the session holds is unknown from here, and so is
                // where the broker's decoder stands in the stream (a PINGREQ
                // may be taken as the rest of a packet): read what comes for
                // a moment, then close.
                self.models.entry(k).or_default().unknown = true;
                self.drain(k, &mut c, Duration::from_millis(5)).await;
            }
        }
        // Deliveries to the other clients: read what has arrived.
        let keys: Vec<u8> = self.clients.keys().copied().collect();
        for k in keys {
            if let Some(mut c) = self.clients.remove(&k) {
                self.drain(k, &mut c, Duration::ZERO).await;
                if c.open {
                    self.clients.insert(k, c);
                }
            }
        }
    }

    /// Discards every session the script used and checks that the broker
    /// is alive and holds no subscription any more.
    async fn finish(mut self) {
        let keys: Vec<u8> = self.clients.keys().copied().collect();
        for k in keys {
            if let Some(mut c) = self.clients.remove(&k) {
                let _ = self.sync(k, &mut c).await;
            }
        }
        for k in self.used.clone() {
            // Clean start discards the old session; expiry 0 ends the new one
            // at DISCONNECT.
            let mut c = connected(&self.target.connector, ProtocolVersion::V5, &client_id(k)).await;
            c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
                .await;
            while c.next(ANSWER).await.is_some() {}
        }
        // A fresh MQTT 3.1.1 client gets its CONNACK and its PINGRESP.
        let mut c = connected(&self.target.connector, ProtocolVersion::V3_1_1, "fz-alive").await;
        assert!(
            c.send(&Packet::PingReq).await,
            "broker closed the fresh client"
        );
        assert!(
            matches!(c.next(ALIVE).await, Some(Packet::PingResp)),
            "no PINGRESP for a fresh client"
        );
        drop(c);
        // Every session of the script is gone, and so are its subscriptions.
        // (Session removal at DISCONNECT runs as the connection task ends.)
        let state = &self.target.state;
        let mut left = state.subscription_count();
        for _ in 0..200 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = state.subscription_count();
        }
        assert_eq!(
            left, 0,
            "subscriptions left in the trie after every session ended"
        );
        // Retained messages do not outlive the input (the drop of a deep
        // retained trie is exercised here too).
        state.clear_retained();
    }
}

/// Connects a fresh client (clean start) or panics: the broker must answer.
async fn connected(connector: &LocalConnector, version: ProtocolVersion, id: &str) -> Client {
    let mut c = Client {
        stream: connector.connect(),
        buf: BytesMut::new(),
        decoder: Decoder::with_version(version),
        version,
        next_id: 0,
        open: true,
    };
    c.decoder.set_max_packet_size(usize::MAX);
    let mut connect = Connect::new(version, id);
    connect.keep_alive = 0;
    assert!(
        c.send(&Packet::Connect(Box::new(connect))).await,
        "cannot write CONNECT"
    );
    match c.next(ALIVE).await {
        Some(Packet::ConnAck(ack)) => assert!(!ack.reason_code.is_error(), "{ack:?}"),
        other => panic!("the broker is not alive: {other:?} instead of CONNACK"),
    }
    c
}

/// The start of a long string, for messages.
fn abbrev(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut cut = 80;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &s[..cut], s.len())
}

fuzz_target!(|script: Script| {
    let h = harness();
    let target = &h.brokers[usize::from(script.broker % 4 == 3)];
    h.rt.block_on(async {
        let mut run = Run {
            target,
            clients: HashMap::new(),
            models: HashMap::new(),
            used: HashSet::new(),
        };
        for op in script.ops.iter().take(32) {
            run.op(op).await;
        }
        run.finish().await;
    });
});

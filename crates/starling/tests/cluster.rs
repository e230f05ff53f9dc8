//! Starling as a cluster over NATS JetStream: three `nats-server`s in one
//! NATS cluster and three `starling broker --cluster` nodes (see
//! `cluster_support`), one cluster per test.
//!
//! - messages cross nodes at QoS 0, 1 and 2, once per subscriber even with
//!   overlapping wildcard filters, in each publisher's order
//!   (`mosquitto_sub` and `mosquitto_pub`);
//! - a shared subscription with members on two nodes gets each message
//!   exactly once;
//! - No Local holds on the publisher's node, and other nodes still deliver;
//! - a retained message set on one node is seen on another, and cleared
//!   from a third;
//! - a client id connecting to another node takes the session over (MQTT 5:
//!   DISCONNECT 0x8E to the old connection; 3.1.1: it is closed), and two
//!   nodes racing for one client id never both keep it;
//! - paho-mqtt (python3) across nodes, with MQTT 5 properties
//!   (`cluster_paho.py`);
//! - a persistent session, with its subscription and the messages queued
//!   while its client was away, moves to the node the client comes back to;
//! - `kill -9` of a node whose persistent subscriber has 10,000 acknowledged
//!   QoS 1 messages queued: the subscriber resumes on another node with all
//!   of them, and the will of another client of the dead node is published
//!   once, by a survivor;
//! - `kill -9` of the node of two persistent subscribers while another node
//!   publishes QoS 1 and 2 to them: every acknowledged message reaches both,
//!   one back at once, one after the survivors adopted its session, and no
//!   QoS 2 message twice;
//! - QoS 1 messages NATS dropped for a slow node (a tiny subscription
//!   buffer) are read again from the transit stream: all arrive;
//! - NATS away: persistent CONNECTs refused with 0x88 (3.1.1: 3), clean
//!   sessions served, and after NATS is back the persistent session resumes
//!   with what was acknowledged meanwhile.
//!
//! Subscriptions reach the other nodes asynchronously (NATS passes interest
//! from server to server), so each test first publishes probes until one
//! crosses, then counts only its real messages. Skipped without
//! `nats-server` unless `CI` is set.

mod cluster_support;

use std::collections::BTreeMap;

use bytes::Bytes;
use std::process::Stdio;
use std::time::Duration;

use cluster_support::{connect, options, run, until_routed, Cluster, Next, Raw, WAIT};
use starling_client::{Client, ConnectOptions, Properties, QoS, SubscriptionOptions};
use starling_codec::{Connect, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// How long a retained message may take to reach the other nodes (the
/// target the cluster is built for).
const RETAINED_LAG: Duration = Duration::from_secs(1);

/// After the last expected message, how long the tests keep listening for
/// copies that should not come.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// mosquitto_sub and mosquitto_pub

/// `mosquitto_sub` printing `QOS TOPIC PAYLOAD` per message, read line by
/// line on a task; killed on drop.
struct MosquittoSub {
    _child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl MosquittoSub {
    fn start(port: u16, id: &str, filters: &[&str]) -> MosquittoSub {
        let mut cmd = tokio::process::Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", id])
            .args(["-V", "mqttv5", "-q", "2", "-F", "%q %t %p", "-W", "60"]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs (apt mosquitto-clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        MosquittoSub {
            _child: child,
            lines,
        }
    }

    /// The next line within `limit`.
    async fn line(&mut self, limit: Duration) -> Option<String> {
        tokio::time::timeout(limit, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Publishes `probe` (QoS 0) from `publisher` every 25 ms until this
    /// subscriber prints it, then lets the probes in flight arrive.
    async fn until_routed(&mut self, publisher: &Client, probe: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no probe on {probe} reached mosquitto_sub within {WAIT:?}"
            );
            publisher
                .publish(probe, &b"probe"[..], QoS::AtMostOnce, false)
                .await
                .expect("the probe is sent");
            if let Some(line) = self.line(Duration::from_millis(25)).await {
                assert!(line.contains(probe), "unexpected line {line:?}");
                break;
            }
        }
        while let Some(line) = self.line(Duration::from_millis(100)).await {
            assert!(line.contains(probe), "unexpected line {line:?}");
        }
    }
}

/// Runs `mosquitto_pub` (MQTT 3.1.1) to `port` with `args`, feeding it
/// `stdin` (for `-l`); it must succeed within [`WAIT`].
async fn mosquitto_pub(port: u16, args: &[&str], stdin: &str) {
    let mut child = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_pub runs (apt mosquitto-clients)");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).await.expect("stdin");
    drop(input);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("mosquitto_pub {args:?} did not finish within {WAIT:?}"))
        .expect("mosquitto_pub ran");
    assert!(status.success(), "mosquitto_pub {args:?}: {status}");
}

// ---------------------------------------------------------------------------
// 1. QoS 0, 1 and 2 across nodes, overlapping wildcards

#[test]
fn qos_0_1_and_2_cross_nodes_once_per_subscriber_with_overlapping_wildcards() {
    let Some(c) = Cluster::start("qos") else {
        return;
    };
    run(async {
        const N: usize = 50;
        // On node 3; `a/+/c` before `a/#`: the probes on `a/probe` (which
        // only `a/#` matches) cross once both filters have reached node 1,
        // since a NATS server passes a connection's interest on in order.
        let mut sub = MosquittoSub::start(c.port(3), "qos-sub", &["a/+/c", "a/#"]);
        let prober = connect(c.port(1), "qos-prober").await;
        sub.until_routed(&prober, "a/probe").await;

        // On node 1: one mosquitto_pub per QoS, N lines each, one after the
        // other; then single messages to topics that match one filter, both
        // (an empty level too), or none; then an end mark.
        for qos in 0..=2 {
            let lines: String = (0..N).map(|i| format!("q{qos}-{i}\n")).collect();
            let q = qos.to_string();
            mosquitto_pub(c.port(1), &["-t", "a/b/c", "-q", &q, "-l"], &lines).await;
        }
        for topic in ["a", "a/x/y", "a//c", "b/b/c", "a/b"] {
            let m = format!("single {topic}");
            mosquitto_pub(c.port(1), &["-t", topic, "-q", "1", "-m", &m], "").await;
        }
        mosquitto_pub(c.port(1), &["-t", "a/end", "-q", "1", "-m", "end"], "").await;

        let mut got: Vec<(u8, String, String)> = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(line) = sub.line(left).await else {
                panic!(
                    "the end mark did not arrive within {WAIT:?}; got {} lines: {got:?}",
                    got.len()
                );
            };
            let mut parts = line.splitn(3, ' ');
            let qos: u8 = parts.next().unwrap().parse().expect("a QoS first");
            let topic = parts.next().expect("a topic").to_string();
            let payload = parts.next().unwrap_or("").to_string();
            if topic == "a/probe" {
                continue;
            }
            let end = topic == "a/end";
            got.push((qos, topic, payload));
            if end {
                break;
            }
        }
        // Copies of a message would come right after it; listen a little.
        while let Some(line) = sub.line(QUIET).await {
            got.push((9, "after the end mark".into(), line));
        }

        let mut expected = Vec::new();
        for qos in 0..=2u8 {
            for i in 0..N {
                expected.push((qos, "a/b/c".to_string(), format!("q{qos}-{i}")));
            }
        }
        for topic in ["a", "a/x/y", "a//c", "a/b"] {
            expected.push((1, topic.to_string(), format!("single {topic}")));
        }
        expected.push((1, "a/end".to_string(), "end".to_string()));
        // Each publisher's messages in order, at the QoS they were sent with.
        for qos in 0..=2u8 {
            let theirs: Vec<_> = got
                .iter()
                .filter(|(_, t, p)| t == "a/b/c" && p.starts_with(&format!("q{qos}-")))
                .cloned()
                .collect();
            let want: Vec<_> = expected
                .iter()
                .filter(|(q, t, _)| *q == qos && t == "a/b/c")
                .cloned()
                .collect();
            assert_eq!(
                theirs, want,
                "the QoS {qos} publisher's messages, each once, in order"
            );
        }
        // Everything exactly once, nothing else (`b/b/c` matches neither).
        let mut counts: BTreeMap<&(u8, String, String), usize> = BTreeMap::new();
        for m in &got {
            *counts.entry(m).or_default() += 1;
        }
        let wrong: Vec<_> = counts
            .iter()
            .filter(|(m, n)| **n != 1 || !expected.contains(m))
            .collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|m| !counts.contains_key(m))
            .collect();
        assert!(
            wrong.is_empty() && missing.is_empty(),
            "duplicated or unexpected: {wrong:?}; missing: {missing:?}"
        );
        assert_eq!(got.len(), expected.len());
    });
}

// ---------------------------------------------------------------------------
// 2. A shared subscription with members on two nodes

#[test]
fn a_shared_subscription_across_nodes_gets_each_message_once() {
    let Some(c) = Cluster::start("shared") else {
        return;
    };
    run(async {
        const N: usize = 100;
        let m2 = connect(c.port(2), "shared-m2").await;
        let m3 = connect(c.port(3), "shared-m3").await;
        for m in [&m2, &m3] {
            let code = m.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
            assert_eq!(code.unwrap(), ReasonCode(1), "granted QoS 1");
        }
        let publisher = connect(c.port(1), "shared-pub").await;
        // Probes until each member got one: both queue subscriptions have
        // reached node 1's NATS server.
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut probed = [false, false];
        while probed != [true, true] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "probes did not reach both members within {WAIT:?}: {probed:?}"
            );
            publisher
                .publish("work/probe", &b"p"[..], QoS::AtMostOnce, false)
                .await
                .unwrap();
            tokio::select! {
                m = m2.recv() => { assert_eq!(&*m.unwrap().topic, "work/probe"); probed[0] = true; }
                m = m3.recv() => { assert_eq!(&*m.unwrap().topic, "work/probe"); probed[1] = true; }
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
        }

        for i in 0..N {
            let code = publisher
                .publish(format!("work/{i}"), i.to_string(), QoS::AtLeastOnce, false)
                .await
                .unwrap();
            assert!(!code.is_error(), "PUBACK {code}");
        }
        let mut by_member: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let real = |m: starling_client::Message| -> Option<usize> {
            if &*m.topic == "work/probe" {
                return None;
            }
            assert_eq!(m.qos, QoS::AtLeastOnce, "{m:?}");
            Some(std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        };
        let total = |b: &[Vec<usize>; 2]| b[0].len() + b[1].len();
        let deadline = tokio::time::Instant::now() + WAIT;
        while total(&by_member) < N {
            tokio::select! {
                m = m2.recv() => by_member[0].extend(real(m.unwrap())),
                m = m3.recv() => by_member[1].extend(real(m.unwrap())),
                _ = tokio::time::sleep_until(deadline) => panic!(
                    "{} of {N} messages arrived within {WAIT:?}: {by_member:?}",
                    total(&by_member)
                ),
            }
        }
        // Any copy would come soon after.
        let quiet = tokio::time::Instant::now() + QUIET;
        loop {
            tokio::select! {
                m = m2.recv() => by_member[0].extend(real(m.unwrap())),
                m = m3.recv() => by_member[1].extend(real(m.unwrap())),
                _ = tokio::time::sleep_until(quiet) => break,
            }
        }
        let mut all: Vec<usize> = by_member.concat();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..N).collect::<Vec<_>>(),
            "each message exactly once in total: {by_member:?}"
        );
        assert!(
            !by_member[0].is_empty() && !by_member[1].is_empty(),
            "both members got some: node 2 {}, node 3 {}",
            by_member[0].len(),
            by_member[1].len()
        );
        for (member, got) in by_member.iter().enumerate() {
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "member {member} got the publisher's messages out of order: {got:?}"
            );
        }
        eprintln!(
            "shared: node 2 got {}, node 3 got {}",
            by_member[0].len(),
            by_member[1].len()
        );
    });
}

// ---------------------------------------------------------------------------
// 3. No Local

#[test]
fn no_local_holds_on_the_publishers_node_and_other_nodes_still_deliver() {
    let Some(c) = Cluster::start("nolocal") else {
        return;
    };
    run(async {
        let own = connect(c.port(1), "nl-own").await;
        let no_local = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            ..Default::default()
        };
        let codes = own
            .subscribe_many([("nl/#", no_local)], Properties::default())
            .await
            .unwrap();
        assert_eq!(codes, vec![ReasonCode(1)]);
        let remote = connect(c.port(2), "nl-remote").await;
        remote.subscribe("nl/#", QoS::AtLeastOnce).await.unwrap();
        let other = connect(c.port(1), "nl-other").await;
        until_routed(&other, "nl/probe", &remote).await;

        // Its own message, then another client's, both on node 1.
        own.publish("nl/t", &b"own"[..], QoS::AtLeastOnce, false)
            .await
            .unwrap();
        other
            .publish("nl/t", &b"other"[..], QoS::AtLeastOnce, false)
            .await
            .unwrap();

        // The No Local subscriber: the other client's message, never its own
        // (which node 1 routed before the other one).
        let first = tokio::time::timeout(WAIT, async {
            loop {
                let m = own.recv().await.expect("connected");
                if &*m.topic != "nl/probe" {
                    return m;
                }
            }
        })
        .await
        .expect("the other client's message arrives");
        assert_eq!(&first.payload[..], b"other", "{first:?}");
        // The subscriber on node 2: both.
        let mut at_remote = Vec::new();
        while at_remote.len() < 2 {
            let m = tokio::time::timeout(WAIT, remote.recv())
                .await
                .unwrap_or_else(|_| panic!("node 2 got only {at_remote:?}"))
                .unwrap();
            if &*m.topic != "nl/probe" {
                at_remote.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
        }
        assert_eq!(at_remote, ["own", "other"]);
        // And nothing more to either.
        for client in [&own, &remote] {
            if let Ok(Some(m)) = tokio::time::timeout(QUIET, client.recv()).await {
                panic!("unexpected {m:?}");
            }
        }
    });
}

// ---------------------------------------------------------------------------
// 4. Retained messages

/// The retained messages a new subscriber to `filter` on `port` gets. The
/// subscriber then publishes a mark to itself: retained messages come
/// before it, so once the mark is in, there are no more.
async fn retained_at(
    port: u16,
    filter: &str,
    mark: &str,
    attempt: usize,
) -> Vec<(String, Vec<u8>)> {
    let id = format!("retained-{port}-{attempt}");
    let client = connect(port, &id).await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    client
        .publish(mark, id.clone(), QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let mut retained = Vec::new();
    loop {
        let m = tokio::time::timeout(WAIT, client.recv())
            .await
            .expect("the mark comes back")
            .expect("connected");
        if &*m.topic == mark && m.payload == id.as_bytes() {
            break;
        }
        if m.retain {
            retained.push((m.topic.to_string(), m.payload.to_vec()));
        }
    }
    client.disconnect().await.ok();
    retained
}

/// Asks node `port` for its retained messages until they are `want`,
/// failing if that takes [`RETAINED_LAG`] from `since`.
async fn until_retained(
    port: u16,
    want: &[(&str, &[u8])],
    attempt: &mut usize,
    since: tokio::time::Instant,
) {
    let want: Vec<(String, Vec<u8>)> = want
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_vec()))
        .collect();
    loop {
        *attempt += 1;
        let got = retained_at(port, "r/#", "r/mark", *attempt).await;
        if got == want {
            return;
        }
        assert!(
            since.elapsed() < RETAINED_LAG,
            "port {port}: retained {got:?}, not {want:?}, {RETAINED_LAG:?} after the change"
        );
    }
}

#[test]
fn a_retained_message_is_seen_on_other_nodes_and_cleared_from_a_third() {
    let Some(mut c) = Cluster::start("retained") else {
        return;
    };
    run(async {
        let mut attempt = 0;
        let setter = connect(c.port(1), "retained-setter").await;
        setter
            .publish("r/t", &b"v1"[..], QoS::AtLeastOnce, true)
            .await
            .unwrap();
        // A new subscriber on node 3 gets it.
        let set_at = tokio::time::Instant::now();
        until_retained(c.port(3), &[("r/t", b"v1")], &mut attempt, set_at).await;
        eprintln!("retained: on node 3 after {:?}", set_at.elapsed());

        // Cleared from node 2.
        let clearer = connect(c.port(2), "retained-clearer").await;
        clearer
            .publish("r/t", Bytes::new(), QoS::AtLeastOnce, true)
            .await
            .unwrap();
        let cleared_at = tokio::time::Instant::now();
        for node in [1, 3, 2] {
            until_retained(c.port(node), &[], &mut attempt, cleared_at).await;
        }
        eprintln!(
            "retained: cleared everywhere after {:?}",
            cleared_at.elapsed()
        );

        // Cleared while node 3 was down: gone there too once it is back.
        setter
            .publish("r/u", &b"v2"[..], QoS::AtLeastOnce, true)
            .await
            .unwrap();
        let set_at = tokio::time::Instant::now();
        until_retained(c.port(3), &[("r/u", b"v2")], &mut attempt, set_at).await;
        c.nodes[2].proc.kill();
        clearer
            .publish("r/u", Bytes::new(), QoS::AtLeastOnce, true)
            .await
            .unwrap();
        tokio::task::block_in_place(|| c.restart_node(3));
        let back_at = tokio::time::Instant::now();
        until_retained(c.port(3), &[], &mut attempt, back_at).await;

        // The same, away for longer than removal markers are kept (its
        // note of when it last read the bucket made an hour old), the
        // marker swept meanwhile: node 3 reads the bucket whole and clears
        // what it no longer holds.
        setter
            .publish("r/v", &b"v4"[..], QoS::AtLeastOnce, true)
            .await
            .unwrap();
        let set_at = tokio::time::Instant::now();
        until_retained(c.port(3), &[("r/v", b"v4")], &mut attempt, set_at).await;
        c.nodes[2].proc.kill();
        clearer
            .publish("r/v", Bytes::new(), QoS::AtLeastOnce, true)
            .await
            .unwrap();
        let nats = format!("{}:{}", c.nats[0].host, c.nats[0].port);
        let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
        let mut swept = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..100 {
            tick.tick().await;
            let sweep = starling_cluster::markers::sweep(
                &js,
                "starling_retained",
                Duration::ZERO,
                Duration::from_secs(2),
            );
            swept += sweep.await.unwrap_or(0);
            if swept >= 3 {
                break;
            }
        }
        assert_eq!(swept, 3, "r/t's, r/u's and r/v's removal markers swept");
        let hour_ago = starling_broker::store::unix_ms() - 3_601_000;
        let seen = c.dir.join("node3").join("cluster-retained-seen");
        assert!(seen.exists(), "node 3 noted when it read the bucket");
        std::fs::write(&seen, hour_ago.to_string()).unwrap();
        tokio::task::block_in_place(|| c.restart_node(3));
        let back_at = tokio::time::Instant::now();
        until_retained(c.port(3), &[], &mut attempt, back_at).await;
        let cleared = c.nodes[2].proc.log.wait_for(WAIT, |l| {
            l.contains("the retained messages the cluster no longer holds cleared")
        });
        assert!(
            cleared.as_deref().is_ok_and(|l| l.contains("cleared=1")),
            "node 3 cleared r/v: {cleared:?}"
        );

        // Retained on node 1 while its NATS server is down: the other
        // nodes have it once it is back (the write is tried again).
        c.stop_nats(1);
        c.nodes[0]
            .proc
            .log
            .wait_for(WAIT, |l| l.contains("lost the NATS connection"))
            .expect("node 1 notices");
        setter
            .publish("r/w", &b"v3"[..], QoS::AtMostOnce, true)
            .await
            .unwrap();
        c.nodes[0]
            .proc
            .log
            .wait_for(WAIT, |l| {
                l.contains("retained message not shared with the cluster yet")
            })
            .expect("node 1 keeps the write for later");
        c.restart_nats(1);
        let back_at = tokio::time::Instant::now();
        let want = vec![("r/w".to_string(), b"v3".to_vec())];
        loop {
            attempt += 1;
            let got = retained_at(c.port(2), "r/#", "r/mark", attempt).await;
            if got == want {
                break;
            }
            // (Node 1's client reconnects with a backoff: seen up to 7 s.)
            assert!(
                back_at.elapsed() < 3 * WAIT,
                "node 2 retains {got:?}, not {want:?}, {:?} after NATS was back",
                3 * WAIT
            );
        }
        eprintln!(
            "retained: shared {:?} after NATS was back",
            back_at.elapsed()
        );
    });
}

// ---------------------------------------------------------------------------
// 5. Takeover across nodes

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut connect = Connect::new(version, id);
    connect.clean_start = false;
    if version == ProtocolVersion::V5 {
        connect.properties.session_expiry_interval = Some(300);
    }
    connect
}

#[test]
fn a_client_id_connecting_to_another_node_takes_the_session_over() {
    let Some(c) = Cluster::start("takeover") else {
        return;
    };
    run(async {
        // MQTT 5: the first connection gets DISCONNECT 0x8E, then is closed.
        let connect = persistent(ProtocolVersion::V5, "takeover-v5");
        let (mut first, ack) = Raw::connect(c.port(1), connect.clone()).await.unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        let (mut second, ack) = Raw::connect(c.port(2), connect).await.unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        assert!(ack.session_present, "the session came along: {ack:?}");
        match first.next(WAIT).await {
            Next::Packet(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER, "{d:?}")
            }
            other => panic!("expected DISCONNECT 0x8E on node 1, got {other:?}"),
        }
        assert!(matches!(first.next(WAIT).await, Next::Closed));
        second.ping().await.expect("the new connection is alive");

        // MQTT 3.1.1: the first connection is just closed.
        let connect = persistent(ProtocolVersion::V3_1_1, "takeover-v311");
        let (mut first, ack) = Raw::connect(c.port(1), connect.clone()).await.unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        let (mut second, ack) = Raw::connect(c.port(2), connect).await.unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        assert!(ack.session_present, "the session came along: {ack:?}");
        match first.next(WAIT).await {
            Next::Closed => {}
            other => panic!("expected node 1 to close the 3.1.1 connection, got {other:?}"),
        }
        second.ping().await.expect("the new connection is alive");
    });
}

/// A takeover request as a node of this version sends it: when it was
/// sent and the client id, and in headers the asker and the revision of
/// its owner write.
fn takeover_request(asker: &str, revision: u64, client_id: &str) -> (async_nats::HeaderMap, Bytes) {
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut b = vec![0xFF];
    b.extend_from_slice(&sent.to_be_bytes());
    b.extend_from_slice(client_id.as_bytes());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Starling-Asker", asker);
    headers.insert("Starling-Revision", revision.to_string().as_str());
    (headers, Bytes::from(b))
}

/// Asks node 1 to hand `client_id` over, again while it answers "ask
/// again" (a repair or a replay running there), bounded.
async fn ask_node1(
    nats: &async_nats::Client,
    (headers, body): (async_nats::HeaderMap, Bytes),
) -> Bytes {
    for _ in 0..40 {
        let reply = tokio::time::timeout(
            WAIT,
            nats.request_with_headers(
                "starling.node.node1.takeover",
                headers.clone(),
                body.clone(),
            ),
        )
        .await
        .expect("node 1 answers in time")
        .expect("node 1 answers");
        if reply.payload[..4] != u32::MAX.to_be_bytes() {
            return reply.payload;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("node 1 kept answering \"ask again\"");
}

/// The old node's side of a takeover, as another node of the cluster sees
/// it: a claim written before the old node's own claim of the id (it was
/// still asking while the client came back to the old node) is refused,
/// and the client stays; a later claim is handed the session; and a third
/// asking after that is sent where the session went, not told "none here"
/// (it would rebuild the session from its replica, which lacks what was
/// delivered since: seen, 618 QoS 2 messages delivered twice).
#[test]
fn a_takeover_for_an_overtaken_claim_is_refused_and_a_later_asker_is_sent_where_the_session_went() {
    let Some(c) = Cluster::start("overtaken") else {
        return;
    };
    run(async {
        let connect = persistent(ProtocolVersion::V5, "overtaken");
        let (mut first, ack) = Raw::connect(c.port(1), connect).await.unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        let (kv, key) = owner_key(&c, 1, "overtaken").await;
        let mine = kv
            .entry(&key)
            .await
            .unwrap()
            .expect("node 1's write")
            .revision;
        let url = format!("{}:{}", c.nats[0].host, c.nats[0].port);
        let nats = async_nats::connect(&url).await.unwrap();

        let stale = takeover_request("node9", mine - 1, "overtaken");
        let answer = ask_node1(&nats, stale).await;
        assert_eq!(answer[..], (u32::MAX - 2).to_be_bytes(), "overtaken");
        first.ping().await.expect("the client stays on node 1");

        let later = takeover_request("node9", mine + 1, "overtaken");
        let answer = ask_node1(&nats, later).await;
        let parts = u32::from_be_bytes(answer[..4].try_into().unwrap());
        assert!((1..u32::MAX - 2).contains(&parts), "handed over: {parts}");
        match first.next(WAIT).await {
            Next::Packet(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER, "{d:?}")
            }
            other => panic!("expected DISCONNECT 0x8E on node 1, got {other:?}"),
        }

        let third = takeover_request("node8", mine + 2, "overtaken");
        let answer = ask_node1(&nats, third).await;
        let mut elsewhere = (u32::MAX - 1).to_be_bytes().to_vec();
        elsewhere.extend_from_slice(b"node9");
        assert_eq!(answer[..], elsewhere[..], "sent where the session went");
    });
}

/// A node stopping as in a rolling restart sends its MQTT 5 clients away:
/// DISCONNECT 0x9C Use another server with the Server Reference set in
/// `[cluster] server-reference` (the load balancer), or, where none is
/// set, 0x8B Server shutting down.
#[test]
fn a_stopping_node_sends_its_mqtt_5_clients_to_its_server_reference_or_says_it_shuts_down() {
    let Some(mut c) = Cluster::start("drain") else {
        return;
    };
    c.restart_node_with(2, "server-reference = \"lb.example:1883\"");
    run(async {
        let (mut referred, ack) =
            Raw::connect(c.port(2), Connect::new(ProtocolVersion::V5, "referred"))
                .await
                .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        // A client whose maximum packet size the reference would pass gets
        // the DISCONNECT without it ([MQTT-3.1.2-24]).
        let mut small = Connect::new(ProtocolVersion::V5, "small");
        small.properties.maximum_packet_size = Some(20);
        let (mut small, ack) = Raw::connect(c.port(2), small).await.unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        let (mut told, ack) = Raw::connect(c.port(3), Connect::new(ProtocolVersion::V5, "told"))
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        c.nodes[1].proc.terminate(WAIT);
        match referred.next(WAIT).await {
            Next::Packet(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::USE_ANOTHER_SERVER, "{d:?}");
                assert_eq!(
                    d.properties.server_reference.as_deref(),
                    Some("lb.example:1883"),
                    "{d:?}"
                );
            }
            other => panic!("expected DISCONNECT 0x9C from node 2, got {other:?}"),
        }
        match small.next(WAIT).await {
            Next::Packet(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::USE_ANOTHER_SERVER, "{d:?}");
                assert_eq!(d.properties.server_reference, None, "{d:?}");
            }
            other => panic!("expected a short DISCONNECT 0x9C from node 2, got {other:?}"),
        }
        c.nodes[2].proc.terminate(WAIT);
        match told.next(WAIT).await {
            Next::Packet(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN, "{d:?}");
                assert_eq!(d.properties.server_reference, None, "{d:?}");
            }
            other => panic!("expected DISCONNECT 0x8B from node 3, got {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------
// 6. Two nodes racing for one client id

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a few values per test
enum Outcome {
    /// Refused in CONNACK with this code.
    Refused(ReasonCode),
    /// Accepted, and answers PINGREQ.
    Alive(Raw),
    /// Accepted, then ended with this (a DISCONNECT, or the close).
    Ended(Next),
}

/// Connects after `delay`; what came of it (an accepted connection is
/// pinged at once).
async fn racer(port: u16, connect: Connect, delay: Duration) -> Outcome {
    tokio::time::sleep(delay).await;
    let connected = Raw::connect(port, connect).await;
    let (raw, ack) = connected.unwrap_or_else(|e| panic!("no CONNACK from {port}: {e}"));
    if ack.reason_code.is_error() {
        return Outcome::Refused(ack.reason_code);
    }
    alive(raw).await
}

async fn alive(mut raw: Raw) -> Outcome {
    match raw.ping().await {
        Ok(()) => Outcome::Alive(raw),
        Err(what) => Outcome::Ended(what),
    }
}

#[test]
fn two_nodes_racing_for_one_client_id_never_both_keep_it() {
    let Some(c) = Cluster::start("race") else {
        return;
    };
    run(async {
        const RACES: usize = 12;
        let mut results = Vec::new();
        for i in 0..RACES {
            // Persistent and clean sessions in turn; every third id already
            // connected to node 1 (the racers then both update its owner
            // rather than create it); node 3's CONNECT at once or up to
            // 1.5 ms later, to hit the moment node 2 is between its claim
            // and its CONNACK.
            let id = format!("race-{i}");
            let connect = if i % 2 == 0 {
                persistent(ProtocolVersion::V5, &id)
            } else {
                Connect::new(ProtocolVersion::V5, id.as_str())
            };
            let mut outcomes = Vec::new();
            let existing = if i % 3 == 2 {
                let (raw, ack) = Raw::connect(c.port(1), connect.clone()).await.unwrap();
                assert_eq!(
                    ack.reason_code,
                    ReasonCode::SUCCESS,
                    "{id} on node 1: {ack:?}"
                );
                Some(raw)
            } else {
                None
            };
            let stagger = Duration::from_micros(500 * (i % 4) as u64);
            let (a, b) = tokio::join!(
                racer(c.port(2), connect.clone(), Duration::ZERO),
                racer(c.port(3), connect.clone(), stagger)
            );
            if let Some(raw) = existing {
                outcomes.push((1, alive(raw).await));
            }
            outcomes.push((2, a));
            outcomes.push((3, b));
            results.push((id, outcomes));
        }
        // Once more, after every race: the survivors are still the only ones.
        let mut summary = Vec::new();
        for (id, outcomes) in &mut results {
            let mut alive = 0;
            let mut line = Vec::new();
            for (node, o) in outcomes.iter_mut() {
                if let Outcome::Alive(raw) = o {
                    match raw.ping().await {
                        Ok(()) => alive += 1,
                        Err(what) => *o = Outcome::Ended(what),
                    }
                }
                match o {
                    Outcome::Refused(code) => {
                        assert!(
                            *code == ReasonCode::SERVER_BUSY
                                || *code == ReasonCode::SERVER_UNAVAILABLE,
                            "{id} on node {node} refused with {code}, not 0x89 or 0x88"
                        );
                        line.push(format!("node {node}: refused {:#04x}", code.0));
                    }
                    Outcome::Ended(Next::Packet(Packet::Disconnect(d)))
                        if d.reason_code == ReasonCode::SESSION_TAKEN_OVER =>
                    {
                        line.push(format!("node {node}: taken over (0x8E)"));
                    }
                    Outcome::Ended(other) => {
                        panic!("{id} on node {node} was accepted, then ended with {other:?}")
                    }
                    Outcome::Alive(_) => line.push(format!("node {node}: alive")),
                }
            }
            assert!(
                alive <= 1,
                "{id}: {alive} connections alive at once ({line:?})"
            );
            summary.push(format!("{id}: {}", line.join(", ")));
        }
        eprintln!("races:\n  {}", summary.join("\n  "));
    });
}

// ---------------------------------------------------------------------------
// 7. paho-mqtt across nodes

const PAHO_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster_paho.py");

#[test]
fn paho_mqtt_5_properties_cross_nodes() {
    let Some(c) = Cluster::start("paho") else {
        return;
    };
    run(async {
        let out = tokio::time::timeout(
            Duration::from_secs(40),
            tokio::process::Command::new("python3")
                .arg(PAHO_SCRIPT)
                .arg(c.port(3).to_string())
                .arg(c.port(1).to_string())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the paho script finishes within 40 s")
        .expect("python3 runs (with paho-mqtt)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.trim_end().ends_with("OK"),
            "cluster_paho.py: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    });
}

// ---------------------------------------------------------------------------
// 7b. A session moving between nodes while messages keep coming

/// A persistent QoS 2 subscriber moves from node 1 to node 2 and back
/// while node 3 publishes without pause: what was published while its
/// session was on the way (out of the old node's index, not yet in the new
/// one's) still reaches it, once.
#[test]
fn a_session_moving_between_nodes_under_load_loses_nothing() {
    let Some(c) = Cluster::start("moving") else {
        return;
    };
    run(async {
        const N: usize = 1_500;
        let sub_options = |port, id: &str| {
            let mut o = options(port, id);
            o.clean_start = false;
            o.session_expiry = Some(3600);
            o
        };
        let (sub, _) = Client::connect(sub_options(c.port(1), "m-sub"))
            .await
            .unwrap();
        sub.subscribe("t/#", QoS::ExactlyOnce).await.unwrap();
        let publisher = connect(c.port(3), "m-pub").await;
        until_routed(&publisher, "t/probe", &sub).await;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, a) = (publisher.clone(), acked.clone());
        let publishing = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            for i in 0..N {
                pace.tick().await;
                let qos = if i % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let code = p
                    .publish(format!("t/{}", i % 2), i.to_string(), qos, false)
                    .await
                    .unwrap_or_else(|e| panic!("{i} not acknowledged: {e}"));
                assert!(!code.is_error(), "{i} refused: {code}");
                a.lock().unwrap().push((i % 2, i));
            }
        });
        let mut got = Got::default();
        let mut client = sub;
        // Three moves while the publisher goes on.
        for port in [c.port(2), c.port(1), c.port(2)] {
            let until = acked.lock().unwrap().len() + N / 5;
            while acked.lock().unwrap().len() < until {
                if let Ok(Some(m)) = tokio::time::timeout(QUIET, client.recv()).await {
                    got.note(&m);
                }
            }
            let (next, ack) = Client::connect(sub_options(port, "m-sub")).await.unwrap();
            assert!(ack.session_present, "{ack:?}");
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(50), client.recv()).await
            {
                got.note(&m);
            }
            client = next;
        }
        tokio::time::timeout(Duration::from_secs(60), publishing)
            .await
            .expect("every message acknowledged")
            .unwrap();
        let acked: Vec<(usize, usize)> = acked.lock().unwrap().clone();
        got.until_all(&client, &acked, "m-sub").await;
        while let Ok(Some(m)) = tokio::time::timeout(QUIET, client.recv()).await {
            got.note(&m);
        }
        assert!(
            got.qos2_twice.is_empty(),
            "QoS 2 twice: {:?}",
            got.qos2_twice
        );
        eprintln!(
            "{} acknowledged, all delivered across three moves; {} copies",
            acked.len(),
            got.seen.values().filter(|n| **n > 1).count()
        );
    });
}

// ---------------------------------------------------------------------------
// 8. A persistent session moves with its client

#[test]
fn a_persistent_session_and_its_queued_messages_move_to_the_new_node() {
    let Some(c) = Cluster::start("move") else {
        return;
    };
    run(async {
        const N: usize = 5;
        let persistent_options = |port| {
            let mut o = options(port, "mover");
            o.clean_start = false;
            o.session_expiry = Some(300);
            o
        };
        let (first, _) = Client::connect(persistent_options(c.port(1)))
            .await
            .unwrap();
        first.subscribe("mv/#", QoS::AtLeastOnce).await.unwrap();
        let publisher = connect(c.port(3), "mv-pub").await;
        until_routed(&publisher, "mv/probe", &first).await;
        // A witness on node 1: once it has the messages, node 1 has queued
        // them for the offline session too.
        let witness = connect(c.port(1), "mv-witness").await;
        witness.subscribe("mv/#", QoS::AtLeastOnce).await.unwrap();
        first.disconnect().await.unwrap();
        for i in 0..N {
            publisher
                .publish(format!("mv/q{i}"), i.to_string(), QoS::AtLeastOnce, false)
                .await
                .unwrap();
        }
        let mut seen = 0;
        while seen < N {
            let m = tokio::time::timeout(WAIT, witness.recv())
                .await
                .expect("the witness on node 1 gets the messages")
                .unwrap();
            if &*m.topic != "mv/probe" {
                seen += 1;
            }
        }

        // The client comes back on node 2: its session, subscription and
        // queued messages are there.
        let (second, ack) = Client::connect(persistent_options(c.port(2)))
            .await
            .unwrap();
        assert!(ack.session_present, "the session was not moved: {ack:?}");
        let mut got = Vec::new();
        while got.len() < N {
            let m = tokio::time::timeout(WAIT, second.recv())
                .await
                .unwrap_or_else(|_| panic!("queued messages moved with the session: got {got:?}"))
                .unwrap();
            if &*m.topic != "mv/probe" {
                got.push(m.topic.to_string());
            }
        }
        let want: Vec<String> = (0..N).map(|i| format!("mv/q{i}")).collect();
        assert_eq!(got, want);
        until_routed(&publisher, "mv/probe", &second).await;
        publisher
            .publish("mv/after", &b"after"[..], QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let m = tokio::time::timeout(WAIT, second.recv())
            .await
            .expect("a new message reaches the moved subscription")
            .unwrap();
        assert_eq!(&*m.topic, "mv/after");
    });
}

/// A client that gives up on a slow CONNECT and connects again to the same
/// node: the second claim waits for the first, the session is taken from
/// its owner once, and every queued message is there. (Seen in CI before
/// claims waited: both claims took the session, the first copy with the
/// queue, the second, installed over it, without: 200 messages lost.)
/// Node 1, the owner, is stopped while both CONNECTs arrive, so that the
/// first claim's takeover request waits for it.
#[test]
fn a_client_connecting_twice_at_once_takes_its_session_over_once() {
    let Some(c) = Cluster::start("twice") else {
        return;
    };
    run(async {
        const N: usize = 50;
        let mut o = options(c.port(1), "twice");
        o.clean_start = false;
        o.session_expiry = Some(300);
        let (first, _) = Client::connect(o).await.unwrap();
        first.subscribe("tw/#", QoS::AtLeastOnce).await.unwrap();
        first.disconnect().await.unwrap();
        let sub = connect(c.port(1), "tw-sub").await;
        sub.subscribe("tw/#", QoS::AtLeastOnce).await.unwrap();
        let publisher = connect(c.port(3), "tw-pub").await;
        until_routed(&publisher, "tw/probe", &sub).await;
        for i in 0..N {
            let code = publisher
                .publish(format!("tw/{i}"), i.to_string(), QoS::AtLeastOnce, false)
                .await
                .unwrap();
            assert!(!code.is_error(), "{code}");
        }
        // Node 1 has queued them for the offline session once `tw-sub`,
        // there too, has them all.
        let mut seen = 0;
        while seen < N {
            let m = tokio::time::timeout(WAIT, sub.recv())
                .await
                .unwrap()
                .unwrap();
            if &*m.topic != "tw/probe" {
                seen += 1;
            }
        }
        let log = &c.nodes[1].proc.log;
        let asking = |l: &str| l.contains("asking the session's owner") && l.contains("twice");
        let stopped = c.nodes[0].proc.stop();
        let port = c.port(2);
        let slow = tokio::spawn(Raw::connect(port, persistent(ProtocolVersion::V5, "twice")));
        log.wait_for(WAIT, asking)
            .expect("the first claim asks node 1");
        let skip = log.len();
        let retry = tokio::spawn(Raw::connect(port, persistent(ProtocolVersion::V5, "twice")));
        log.wait_for_after(skip, WAIT, |l| {
            asking(l) || l.contains("waits for an earlier claim")
        })
        .expect("the second claim asks too, or waits");
        // The client gave up on its first CONNECT; node 1 answers again.
        slow.abort();
        drop(stopped);
        let (mut raw, ack) = retry
            .await
            .unwrap()
            .expect("the second CONNECT is answered");
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        assert!(ack.session_present, "{ack:?}");
        let mut got = std::collections::BTreeSet::new();
        while got.len() < N {
            match raw.next(WAIT).await {
                Next::Packet(Packet::Publish(p)) => {
                    if p.qos != starling_codec::QoS::AtMostOnce {
                        raw.send(Packet::PubAck(starling_codec::Ack::new(p.packet_id)))
                            .await
                            .unwrap();
                    }
                    if &*p.topic != "tw/probe" {
                        got.insert(p.topic.to_string());
                    }
                }
                other => panic!("{} of {N} queued messages, then {other:?}", got.len()),
            }
        }
        let moved = log
            .all()
            .iter()
            .filter(|l| l.contains("session moved from another node") && l.contains("twice"))
            .count();
        assert_eq!(moved, 1, "the session was taken from node 1 once");
    });
}

/// Messages each owner-key test queues for its offline session.
const QUEUED: usize = 5;

/// Gives `id` a persistent session on node `node` subscribed to
/// `<prefix>/#`, offline, with [`QUEUED`] QoS 1 messages queued (stored on
/// that node: a witness there has them all); returns its options.
async fn queued_session(c: &Cluster, node: usize, id: &str, prefix: &str) -> ConnectOptions {
    let mut o = options(c.port(node), id);
    o.clean_start = false;
    o.session_expiry = Some(300);
    let (first, _) = Client::connect(o.clone()).await.unwrap();
    first
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let other = if node == 1 { 3 } else { 1 };
    let publisher = connect(c.port(other), &format!("{id}-pub")).await;
    until_routed(&publisher, &format!("{prefix}/probe"), &first).await;
    let witness = connect(c.port(node), &format!("{id}-witness")).await;
    witness
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    first.disconnect().await.unwrap();
    for i in 0..QUEUED {
        publisher
            .publish(
                format!("{prefix}/{i}"),
                i.to_string(),
                QoS::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
    }
    let mut seen = 0;
    while seen < QUEUED {
        let m = tokio::time::timeout(WAIT, witness.recv())
            .await
            .unwrap()
            .unwrap();
        if !m.topic.ends_with("/probe") {
            seen += 1;
        }
    }
    o
}

/// The owners bucket (through NATS server `nats`) and `id`'s key in it.
async fn owner_key(
    c: &Cluster,
    nats: usize,
    id: &str,
) -> (async_nats::jetstream::kv::Store, String) {
    let url = format!("{}:{}", c.nats[nats - 1].host, c.nats[nats - 1].port);
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let kv = js.get_key_value("starling_owners").await.unwrap();
    let mut key = None;
    let mut keys = kv.keys().await.unwrap();
    let suffix = format!("\n{id}");
    while let Some(k) = futures_util::StreamExt::next(&mut keys).await {
        let k = k.unwrap();
        let value = kv.get(&k).await.unwrap().unwrap_or_default();
        if value.ends_with(suffix.as_bytes()) {
            key = Some(k);
        }
    }
    (kv, key.expect("the client id's owner key"))
}

/// Receives the [`QUEUED`] messages queued by [`queued_session`].
async fn queued_arrive(client: &Client) {
    let mut got = std::collections::BTreeSet::new();
    while got.len() < QUEUED {
        let m = tokio::time::timeout(WAIT, client.recv())
            .await
            .unwrap_or_else(|_| panic!("the queued messages: got {got:?}"))
            .unwrap();
        if !m.topic.ends_with("/probe") {
            got.insert(m.topic.to_string());
        }
    }
}

/// A node whose own failed claims fill the kept history of a client id's
/// owner key (a client trying again while JetStream cannot give the
/// replica) no longer knows where the session was: it rebuilds it from
/// its replica, with its queued messages, rather than start it empty.
/// Here the history is filled by hand with node 2's writes while node 1
/// holds the session.
#[test]
fn a_claim_that_finds_only_its_own_writes_in_the_history_rebuilds_the_session() {
    let Some(c) = Cluster::start("history") else {
        return;
    };
    run(async {
        let mut o = queued_session(&c, 1, "hist", "hi").await;
        let (kv, key) = owner_key(&c, 2, "hist").await;
        for _ in 0..8 {
            kv.put(&key, Bytes::from_static(b"node2\nhist"))
                .await
                .unwrap();
        }
        o.port = c.port(2);
        let (second, ack) = Client::connect(o).await.unwrap();
        assert!(
            ack.session_present,
            "the session was rebuilt, not started empty: {ack:?}"
        );
        queued_arrive(&second).await;
    });
}

// ---------------------------------------------------------------------------
// 9. kill -9 of the node holding a persistent session with a backlog

/// Waits until node 1 (the lowest id alive) adopted node 2's sessions.
fn until_adopted(c: &Cluster) {
    c.nodes[0]
        .proc
        .log
        .wait_for(Duration::from_secs(20), |l| {
            l.contains("adopted the persistent sessions of a dead node")
        })
        .expect("node 1 adopts node 2's sessions");
}

#[test]
fn a_killed_nodes_session_and_its_acknowledged_backlog_resume_on_another_node() {
    let Some(mut c) = Cluster::start("kill") else {
        return;
    };
    run(async {
        const TASKS: usize = 8;
        const EACH: usize = 1_250; // 10,000 in all
        const LATE: usize = 100; // published after the kill
        let keeper_options = |port| {
            let mut o = options(port, "keeper");
            o.clean_start = false;
            o.session_expiry = Some(3600);
            // A slow consumer: 10 in flight, a small buffer it does not read.
            o.receive_maximum = Some(10);
            o.message_capacity = 16;
            o
        };
        let (keeper, _) = Client::connect(keeper_options(c.port(2))).await.unwrap();
        keeper.subscribe("k/#", QoS::AtLeastOnce).await.unwrap();
        // A second persistent subscriber of node 2, offline, that comes back
        // at once after the kill (before the survivors adopt node 2's
        // sessions): its session is rebuilt where it reconnects.
        let quick_options = |port| {
            let mut o = options(port, "quick");
            o.clean_start = false;
            o.session_expiry = Some(3600);
            o
        };
        let (quick, _) = Client::connect(quick_options(c.port(2))).await.unwrap();
        quick.subscribe("k2/#", QoS::AtLeastOnce).await.unwrap();
        quick.disconnect().await.unwrap();
        // The publisher is on the keeper's node: each PUBACK means the
        // message is queued for the keeper, in the store and its replicas.
        let publisher = connect(c.port(2), "k-pub").await;
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let p = publisher.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let code = p
                        .publish(format!("k/{t}"), i.to_string(), QoS::AtLeastOnce, false)
                        .await
                        .unwrap_or_else(|e| panic!("k/{t} {i} not acknowledged: {e}"));
                    assert!(!code.is_error(), "k/{t} {i} refused: {code}");
                }
            }));
        }
        for i in 0..100 {
            publisher
                .publish("k2/x", i.to_string(), QoS::AtLeastOnce, false)
                .await
                .unwrap();
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("10,000 QoS 1 messages acknowledged within 120 s")
                .unwrap();
        }
        eprintln!(
            "10,000 QoS 1 messages acknowledged in {:?}",
            started.elapsed()
        );

        // A client of node 2 with a will, and a witness of wills on node 3.
        let mut mortal_options = options(c.port(2), "mortal");
        let mut will = starling_client::LastWill::new("kw/mortal", &b"gone"[..]);
        will.qos = QoS::AtLeastOnce;
        mortal_options.will = Some(will);
        let (_mortal, _) = Client::connect(mortal_options).await.unwrap();
        let witness = connect(c.port(3), "kw-witness").await;
        witness.subscribe("kw/#", QoS::AtLeastOnce).await.unwrap();
        let prober = connect(c.port(1), "kw-prober").await;
        until_routed(&prober, "kw/probe", &witness).await;

        c.nodes[1].proc.kill();
        let killed = std::time::Instant::now();

        // What the old connection had received before the kill counts.
        let mut seen: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        let note = |topic: &str, payload: &[u8], seen: &mut BTreeMap<_, _>| {
            let t: usize = match topic.trim_start_matches("k/") {
                "late" => TASKS,
                t => t.parse().unwrap(),
            };
            let i: usize = std::str::from_utf8(payload).unwrap().parse().unwrap();
            *seen.entry((t, i)).or_insert(0) += 1;
        };
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), keeper.recv()).await
        {
            note(&m.topic, &m.payload, &mut seen);
        }
        let before = seen.len();

        let (quick, ack) = Client::connect(quick_options(c.port(3))).await.unwrap();
        assert!(
            ack.session_present,
            "quick's session was not rebuilt: {ack:?}"
        );
        eprintln!(
            "quick's session rebuilt on node 3 {:?} after the kill",
            killed.elapsed()
        );
        for i in 0..100 {
            let m = tokio::time::timeout(WAIT, quick.recv())
                .await
                .unwrap_or_else(|_| panic!("quick got {i} of 100"))
                .unwrap();
            assert_eq!(
                (&*m.topic, std::str::from_utf8(&m.payload).unwrap()),
                ("k2/x", i.to_string().as_str())
            );
        }

        // The will of node 2's client: published once, by a survivor.
        let will = tokio::time::timeout(Duration::from_secs(20), witness.recv())
            .await
            .expect("the will of the dead node's client within 20 s")
            .unwrap();
        assert_eq!(
            (&*will.topic, &will.payload[..]),
            ("kw/mortal", &b"gone"[..])
        );
        eprintln!("the will came {:?} after the kill", killed.elapsed());
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), witness.recv()).await {
            panic!("a second will or another message: {m:?}");
        }
        // Node 1 (the lowest id alive) adopts the keeper's session: what is
        // published to it before its client is back is kept.
        until_adopted(&c);
        let late = connect(c.port(1), "k-late").await;
        for i in 0..LATE {
            late.publish("k/late", i.to_string(), QoS::AtLeastOnce, false)
                .await
                .unwrap();
        }

        let (back, ack) = Client::connect(keeper_options(c.port(3))).await.unwrap();
        assert!(
            ack.session_present,
            "the killed node's session was not resumed: {ack:?}"
        );
        eprintln!(
            "session resumed on node 3 {:?} after the kill",
            killed.elapsed()
        );
        let mut last: BTreeMap<usize, usize> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < TASKS * EACH + LATE {
            let m = tokio::time::timeout_at(deadline, back.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {} messages after 60 s ({before} before the kill)",
                        seen.len(),
                        TASKS * EACH + LATE
                    )
                })
                .expect("the keeper stays connected");
            let t: usize = match m.topic.trim_start_matches("k/") {
                "late" => TASKS,
                t => t.parse().unwrap(),
            };
            let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            // One publisher's messages on one topic arrive in order (a
            // redelivered one may repeat an earlier number).
            if !seen.contains_key(&(t, i)) {
                if let Some(prev) = last.get(&t) {
                    assert!(i > *prev, "k/{t}: {i} after {prev}");
                }
                last.insert(t, i);
            }
            note(&m.topic, &m.payload, &mut seen);
        }
        let dups = seen.values().filter(|n| **n > 1).count();
        eprintln!(
            "all 10,000 and {LATE} published after the kill delivered: {before} before the kill, the rest from node 3; {dups} \
             delivered twice (in flight at the kill)"
        );
    });
}

/// What one persistent subscriber got: per (topic index, number) how many
/// times, and which QoS 2 ones came again without DUP.
#[derive(Default)]
struct Got {
    seen: BTreeMap<(usize, usize), usize>,
    /// QoS 2 messages that came again without DUP.
    qos2_twice: Vec<(usize, usize)>,
}

impl Got {
    fn note(&mut self, m: &starling_client::Message) {
        // Probes ("t/probe") do not count.
        let Some(Ok(t)) = m.topic.strip_prefix("t/").map(str::parse::<usize>) else {
            return;
        };
        let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        let n = self.seen.entry((t, i)).or_insert(0);
        *n += 1;
        if *n > 1 && m.qos == QoS::ExactlyOnce && !m.dup {
            self.qos2_twice.push((t, i));
        }
    }

    /// Reads `client` until every acknowledged message has come, within 20 s.
    async fn until_all(&mut self, client: &Client, acked: &[(usize, usize)], who: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while acked.iter().any(|k| !self.seen.contains_key(k)) {
            let m = tokio::time::timeout_at(deadline, client.recv()).await;
            let Ok(Some(m)) = m else {
                let missing: Vec<_> = acked
                    .iter()
                    .filter(|k| !self.seen.contains_key(k))
                    .collect();
                panic!(
                    "{who}: {} of {} acknowledged messages missing after 20 s, e.g. {:?}",
                    missing.len(),
                    acked.len(),
                    &missing[..missing.len().min(10)]
                );
            };
            self.note(&m);
        }
    }
}

#[test]
fn a_subscribers_node_killed_loses_nothing_acknowledged_on_another_node() {
    let Some(mut c) = Cluster::start("transit") else {
        return;
    };
    run(async {
        const TASKS: usize = 4; // even: QoS 1, odd: QoS 2
        const EACH: usize = 1_000;
        let sub_options = |port, id: &str| {
            let mut o = options(port, id);
            o.clean_start = false;
            o.session_expiry = Some(3600);
            o
        };
        // Two persistent subscribers of node 2: one comes back at once (its
        // session rebuilt where it reconnects), one after the survivors
        // adopted node 2's sessions.
        let mut subs = Vec::new();
        for id in ["t-quick", "t-late"] {
            let (s, _) = Client::connect(sub_options(c.port(2), id)).await.unwrap();
            s.subscribe("t/#", QoS::ExactlyOnce).await.unwrap();
            subs.push(s);
        }
        let publisher = connect(c.port(1), "t-pub").await;
        for s in &subs {
            until_routed(&publisher, "t/probe", s).await;
        }
        // Each publisher acknowledged; the node dies after a quarter of them.
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let halfway = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (p, acked, halfway) = (publisher.clone(), acked.clone(), halfway.clone());
            tasks.push(tokio::spawn(async move {
                let qos = if t % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                for i in 0..EACH {
                    let code = p
                        .publish(format!("t/{t}"), i.to_string(), qos, false)
                        .await
                        .unwrap_or_else(|e| panic!("t/{t} {i} not acknowledged: {e}"));
                    assert!(!code.is_error(), "t/{t} {i} refused: {code}");
                    let mut a = acked.lock().unwrap();
                    a.push((t, i));
                    if a.len() == TASKS * EACH / 4 {
                        halfway.notify_one();
                    }
                }
            }));
        }
        // What the subscribers read before the kill counts.
        let mut got: Vec<Got> = vec![Got::default(), Got::default()];
        let readers: Vec<_> = subs
            .into_iter()
            .map(|s| {
                tokio::spawn(async move {
                    let mut g = Got::default();
                    while let Some(m) = s.recv().await {
                        g.note(&m);
                    }
                    g
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(60), halfway.notified())
            .await
            .expect("a quarter acknowledged within 60 s");
        c.nodes[1].proc.kill();
        let killed = std::time::Instant::now();
        for (g, r) in got.iter_mut().zip(readers) {
            *g = tokio::time::timeout(WAIT, r)
                .await
                .expect("the old connections end")
                .unwrap();
        }
        let before: Vec<usize> = got.iter().map(|g| g.seen.len()).collect();
        let pre: Vec<std::collections::BTreeSet<(usize, usize)>> = got
            .iter()
            .map(|g| g.seen.keys().copied().collect())
            .collect();
        let (quick, ack) = Client::connect(sub_options(c.port(3), "t-quick"))
            .await
            .unwrap();
        assert!(
            ack.session_present,
            "t-quick's session was not rebuilt: {ack:?}"
        );
        eprintln!(
            "t-quick back on node 3 {:?} after the kill",
            killed.elapsed()
        );
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("every message acknowledged within 120 s")
                .unwrap();
        }
        let acked: Vec<(usize, usize)> = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), TASKS * EACH);
        eprintln!(
            "{} acknowledged, {:?} after the kill",
            acked.len(),
            killed.elapsed()
        );
        got[0].until_all(&quick, &acked, "t-quick").await;
        until_adopted(&c);
        let (late, ack) = Client::connect(sub_options(c.port(3), "t-late"))
            .await
            .unwrap();
        assert!(
            ack.session_present,
            "t-late's session was not adopted: {ack:?}"
        );
        got[1].until_all(&late, &acked, "t-late").await;
        // Copies still on their way.
        for (g, client) in got.iter_mut().zip([&quick, &late]) {
            while let Ok(Some(m)) = tokio::time::timeout(QUIET, client.recv()).await {
                g.note(&m);
            }
        }
        for (i, g) in got.iter().enumerate() {
            let who = ["t-quick", "t-late"][i];
            let twice: Vec<_> = g
                .seen
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(k, _)| *k)
                .collect();
            let twice_pre = twice.iter().filter(|k| pre[i].contains(k)).count();
            eprintln!(
                "{who}: all {} acknowledged delivered ({} before the kill); {} twice ({twice_pre} \
                 of them first delivered before the kill), QoS 2 again without DUP: {:?}",
                acked.len(),
                before[i],
                twice.len(),
                g.qos2_twice
            );
            // Delivered before the kill and again from the replica: its
            // delivery was not stored yet (as on one node after kill -9).
            // Any other copy would come from the transit replay.
            let replayed_twice: Vec<_> = g
                .qos2_twice
                .iter()
                .filter(|k| !pre[i].contains(k))
                .collect();
            assert!(
                replayed_twice.is_empty(),
                "{who}: QoS 2 messages replayed twice: {replayed_twice:?}"
            );
        }
    });
}

/// NATS drops messages for a node that does not route them as fast as they
/// come (a slow consumer; here its per-subscription buffer is made small):
/// the node reads the QoS 1/2 ones it missed again from the transit stream,
/// so every acknowledged message still arrives.
///
/// The node is stopped (SIGSTOP) while QoS 0 noise and the QoS 1 messages
/// are published, so that it wakes to a backlog far past its buffer: NATS
/// drops on any machine, not only on a loaded one.
#[test]
fn qos_1_messages_nats_dropped_for_a_slow_node_still_arrive() {
    let Some(mut c) = Cluster::start("repair") else {
        return;
    };
    c.restart_node_with(1, "subscription-capacity = 1024");
    run(async {
        const TASKS: usize = 8;
        const EACH: usize = 500;
        const NOISE: usize = 20_000;
        let sub = connect(c.port(1), "r-sub").await;
        sub.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
        let publisher = connect(c.port(2), "r-pub").await;
        until_routed(&publisher, "r/probe", &sub).await;
        let stopped = c.nodes[0].proc.stop();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let p = publisher.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    p.publish(format!("r/{t}"), i.to_string(), QoS::AtLeastOnce, false)
                        .await
                        .unwrap_or_else(|e| panic!("r/{t} {i} not acknowledged: {e}"));
                }
            }));
        }
        // QoS 0 noise on the same subscription; the QoS 1 fence after it is
        // acknowledged once node 2 has passed the noise on to NATS.
        for i in 0..NOISE {
            publisher
                .publish("r/noise", i.to_string(), QoS::AtMostOnce, false)
                .await
                .unwrap();
        }
        publisher
            .publish("r/fence", "", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        drop(stopped);
        let mut got = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        while got.len() < TASKS * EACH {
            let m = tokio::time::timeout_at(deadline, sub.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {} QoS 1 messages after 40 s",
                        got.len(),
                        TASKS * EACH
                    )
                })
                .expect("the subscriber stays connected");
            let Some(Ok(t)) = m.topic.strip_prefix("r/").map(str::parse::<usize>) else {
                continue;
            };
            let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            got.insert((t, i));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let dropped = c.nodes[0]
        .proc
        .log
        .wait_for(Duration::from_secs(1), |l| l.contains("NATS slow consumer"));
    let repaired = c.nodes[0].proc.log.wait_for(Duration::from_secs(1), |l| {
        l.contains("read again from transit")
    });
    eprintln!("slow consumer: {dropped:?}; repair: {repaired:?}");
    assert!(
        dropped.is_ok(),
        "NATS dropped nothing: the test proves nothing"
    );
    assert!(repaired.is_ok(), "no repair was logged");
}

// ---------------------------------------------------------------------------
// 10. The NATS connection cut and restored

#[test]
fn with_nats_cut_persistent_connects_are_refused_clean_ones_served_and_nothing_is_lost() {
    let Some(mut c) = Cluster::start("cut") else {
        return;
    };
    run(async {
        const N: usize = 100;
        let keeper_options = |port| {
            let mut o = options(port, "cut-keeper");
            o.clean_start = false;
            o.session_expiry = Some(3600);
            o
        };
        let (keeper, _) = Client::connect(keeper_options(c.port(1))).await.unwrap();
        keeper.subscribe("cut/#", QoS::AtLeastOnce).await.unwrap();
        keeper.disconnect().await.unwrap();

        // All of NATS away (a node that loses only its own server moves to
        // another: the client learns the cluster's servers).
        for n in 1..=3 {
            c.stop_nats(n);
        }
        c.nodes[0]
            .proc
            .log
            .wait_for(WAIT, |l| l.contains("lost the NATS connection"))
            .expect("node 1 notices that NATS is away");

        // A persistent session cannot be claimed: 0x88 (3.1.1: code 3).
        for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
            let (_, ack) = Raw::connect(c.port(1), persistent(version, "cut-new"))
                .await
                .unwrap();
            assert_eq!(
                ack.reason_code,
                ReasonCode::SERVER_UNAVAILABLE,
                "a persistent {version:?} CONNECT while NATS is away"
            );
        }
        // A clean session is served; its QoS 1 messages are kept for the
        // offline persistent session of node 1, and acknowledged once they
        // are kept in transit too: not while NATS is away (a message
        // acknowledged then would be lost with the node).
        let publisher = connect(c.port(1), "cut-pub").await;
        let mut sending = tokio::spawn(async move {
            for i in 0..N {
                let code = publisher
                    .publish(format!("cut/{i}"), i.to_string(), QoS::AtLeastOnce, false)
                    .await
                    .unwrap();
                assert!(!code.is_error(), "cut/{i} refused: {code}");
            }
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut sending)
                .await
                .is_err(),
            "QoS 1 messages acknowledged while NATS is away"
        );

        for n in 1..=3 {
            c.restart_nats(n);
        }
        tokio::time::timeout(Duration::from_secs(30), sending)
            .await
            .expect("acknowledged within 30 s of NATS coming back")
            .unwrap();
        // Accepted again once node 1 is back on NATS and JetStream answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (back, ack) = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "persistent CONNECTs still refused 30 s after NATS came back"
            );
            match Client::connect(keeper_options(c.port(1))).await {
                Ok(ok) => break ok,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert!(ack.session_present, "{ack:?}");
        let mut got = Vec::new();
        while got.len() < N {
            let m = tokio::time::timeout(WAIT, back.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {N} messages", got.len()))
                .unwrap();
            got.push(m.topic.to_string());
        }
        let want: Vec<String> = (0..N).map(|i| format!("cut/{i}")).collect();
        assert_eq!(got, want);
    });
}

// ---------------------------------------------------------------------------
// 10b. One node cut from NATS while the others go on

/// Node 1 loses its NATS server (the servers do not advertise one another,
/// so its client cannot move to another: a real cut) while nodes 2 and 3
/// go on. Node 1 sends its persistent clients away at once (DISCONNECT
/// 0x9C); node 2 adopts its sessions; node 1's own publisher's messages
/// wait in its outbox, unacknowledged; once back, node 1 drops the
/// sessions, hands on what it held, and its publisher is acknowledged.
/// Every acknowledged message reaches both subscribers, the QoS 2 one once.
#[test]
fn a_node_cut_from_nats_alone_hands_its_sessions_over_and_loses_nothing() {
    let Some(mut c) = Cluster::start("alone") else {
        return;
    };
    run(async {
        const EACH: usize = 200;
        let sub_options = |port, id: &str| {
            let mut o = options(port, id);
            o.clean_start = false;
            o.session_expiry = Some(3600);
            o
        };
        let (live, _) = Client::connect(sub_options(c.port(1), "a-live"))
            .await
            .unwrap();
        live.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
        let (away, _) = Client::connect(sub_options(c.port(1), "a-away"))
            .await
            .unwrap();
        away.subscribe("t/#", QoS::ExactlyOnce).await.unwrap();
        let (mut raw, ack) = Raw::connect(c.port(1), persistent(ProtocolVersion::V5, "a-raw"))
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
        let p1 = connect(c.port(1), "a-pub1").await;
        let p3 = connect(c.port(3), "a-pub3").await;
        until_routed(&p3, "t/probe", &live).await;
        until_routed(&p3, "t/probe", &away).await;
        away.disconnect().await.unwrap();
        // A subscriber on node 3 only, and a publisher on node 1 that will
        // leave unacknowledged during the cut (see `withdrawn_stays_away`).
        let w_sub = connect(c.port(3), "w-sub").await;
        w_sub.subscribe("w/#", QoS::AtLeastOnce).await.unwrap();
        until_routed(&p1, "w/probe", &w_sub).await;
        let (mut gone, _) = Raw::connect(c.port(1), Connect::new(ProtocolVersion::V5, "w-gone"))
            .await
            .unwrap();

        let mut acked = Vec::new();
        async fn publish(p: &Client, t: usize, i: usize) {
            let code = p
                .publish(format!("t/{t}"), i.to_string(), QoS::ExactlyOnce, false)
                .await
                .unwrap_or_else(|e| panic!("t/{t} {i} not acknowledged: {e}"));
            assert!(!code.is_error(), "t/{t} {i} refused: {code}");
        }
        for i in 0..EACH {
            publish(&p3, 0, i).await;
            acked.push((0, i));
        }
        let reader = tokio::spawn(async move {
            let mut g = Got::default();
            while let Some(m) = live.recv().await {
                g.note(&m);
            }
            g
        });

        c.stop_nats(1);
        let cut = std::time::Instant::now();
        c.nodes[0]
            .proc
            .log
            .wait_for(WAIT, |l| l.contains("lost the NATS connection"))
            .expect("node 1 notices the cut");
        // Its message waits for NATS, unacknowledged, and the publisher goes
        // (a PINGRESP says the PUBLISH before it was read).
        let mut held_publish = starling_codec::Publish::new("w/held", Bytes::from_static(b"x"));
        held_publish.qos = QoS::AtLeastOnce;
        held_publish.packet_id = 1;
        gone.send(Packet::Publish(held_publish)).await.unwrap();
        gone.ping().await.expect("w-gone's PUBLISH was read");
        drop(gone);
        // Both sides take messages: node 3 acknowledges its publisher's
        // (through JetStream); node 1 keeps its own publisher's in its
        // outbox and acknowledges them once NATS is back.
        let held = tokio::spawn(async move {
            for i in 0..EACH {
                publish(&p1, 1, i).await;
            }
            p1
        });
        for i in 0..EACH {
            publish(&p3, 2, i).await;
            acked.push((2, i));
        }
        match raw.next(Duration::from_secs(10)).await {
            Next::Packet(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::USE_ANOTHER_SERVER, "{d:?}")
            }
            other => panic!("expected DISCONNECT 0x9C from the cut node, got {other:?}"),
        }
        eprintln!(
            "persistent client sent away {:?} after the cut",
            cut.elapsed()
        );
        let mut live_got = tokio::time::timeout(WAIT, reader)
            .await
            .expect("the persistent subscriber is sent away too")
            .unwrap();
        c.wait_adopted(2, Duration::from_secs(45))
            .expect("node 2 adopts node 1's sessions");
        // The subscriber comes back to node 3 while node 1 is still cut
        // (refused with 0x88 while its session cannot be had yet, as a
        // client that reconnects would be).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        let (live, ack) = loop {
            match Client::connect(sub_options(c.port(3), "a-live")).await {
                Ok(ok) => break ok,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("a-live refused on node 3 (trying again): {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("a-live refused on node 3 for 40 s: {e}"),
            }
        };
        assert!(ack.session_present, "a-live's session moved: {ack:?}");

        c.restart_nats(1);
        c.nodes[0]
            .proc
            .log
            .wait_for(Duration::from_secs(30), |l| {
                l.contains("back on NATS: sessions audited")
            })
            .expect("node 1, once back, audits its sessions");
        eprintln!("node 1 back and audited {:?} after the cut", cut.elapsed());
        let p1 = tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("node 1's publisher acknowledged within 30 s of NATS coming back")
            .unwrap();
        acked.extend((0..EACH).map(|i| (1, i)));
        withdrawn_stays_away(&c, &p1, &p3, &w_sub).await;
        live_got.until_all(&live, &acked, "a-live").await;
        let (away, ack) = Client::connect(sub_options(c.port(2), "a-away"))
            .await
            .unwrap();
        assert!(ack.session_present, "a-away's session was adopted: {ack:?}");
        let mut away_got = Got::default();
        away_got.until_all(&away, &acked, "a-away").await;
        while let Ok(Some(m)) = tokio::time::timeout(QUIET, away.recv()).await {
            away_got.note(&m);
        }
        let twice: Vec<_> = away_got
            .seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| *k)
            .collect();
        assert!(
            twice.is_empty(),
            "a-away (QoS 2) got these twice: {twice:?}"
        );
        let live_twice = live_got.seen.values().filter(|n| **n > 1).count();
        eprintln!(
            "{} acknowledged: all at both subscribers; a-live (QoS 1) had {live_twice} twice \
             (delivered on node 1 during the cut, then from the cluster)",
            acked.len()
        );
    });
}

/// A message that waited on a node cut from NATS while its publisher left
/// unacknowledged (and published again elsewhere) is withdrawn, not sent
/// after the publisher's later messages: `w-sub` on node 3 gets the
/// publisher's next message, then node 1's marker sent after the withdrawn
/// one, and never the withdrawn one.
async fn withdrawn_stays_away(c: &Cluster, p1: &Client, p3: &Client, w_sub: &Client) {
    let code = p3
        .publish("w/after", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(!code.is_error(), "{code}");
    c.nodes[0]
        .proc
        .log
        .wait_for(WAIT, |l| l.contains("QoS 1/2 messages withdrawn"))
        .expect("node 1 withdraws the message whose publisher left");
    let code = p1
        .publish("w/end", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(!code.is_error(), "{code}");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !got.iter().any(|t| t == "w/end") {
        match tokio::time::timeout_at(deadline, w_sub.recv()).await {
            Ok(Some(m)) if &*m.topic != "w/probe" => got.push(m.topic.to_string()),
            Ok(Some(_)) => {}
            _ => panic!("w-sub did not get node 1's marker in time: {got:?}"),
        }
    }
    assert_eq!(got, ["w/after", "w/end"], "what w-sub got");
}

// ---------------------------------------------------------------------------
// 11. A SUBACK means the other nodes route to the new subscription

#[test]
fn once_its_suback_is_sent_a_subscription_receives_what_other_nodes_publish() {
    let Some(c) = Cluster::start("suback") else {
        return;
    };
    run(async {
        const ROUNDS: usize = 100;
        let subscriber = connect(c.port(1), "sa-sub").await;
        let publishers = [
            connect(c.port(2), "sa-pub2").await,
            connect(c.port(3), "sa-pub3").await,
        ];
        // Node 1 knows the other nodes (it probes them).
        for other in ["node2", "node3"] {
            c.nodes[0]
                .proc
                .log
                .wait_for(WAIT, |l| {
                    l.contains("a node is in the cluster") && l.contains(other)
                })
                .unwrap_or_else(|e| panic!("node 1 does not know {other}: {e}"));
        }
        let mut waits = Vec::with_capacity(ROUNDS);
        for i in 0..ROUNDS {
            // A filter no node subscribed to before: new interest each time.
            let filter = if i % 2 == 0 {
                format!("sa/{i}/+")
            } else {
                format!("sa/{i}/#")
            };
            let asked = std::time::Instant::now();
            subscriber
                .subscribe(&filter, QoS::AtLeastOnce)
                .await
                .unwrap();
            waits.push(asked.elapsed());
            let topic = format!("sa/{i}/x");
            publishers[i % 2]
                .publish(&topic, i.to_string(), QoS::AtLeastOnce, false)
                .await
                .unwrap();
            let m = tokio::time::timeout(WAIT, subscriber.recv())
                .await
                .unwrap_or_else(|_| panic!("round {i}: {topic} did not arrive after the SUBACK"))
                .unwrap();
            assert_eq!(&*m.topic, topic);
        }
        waits.sort();
        eprintln!(
            "SUBSCRIBE to SUBACK with new cross-node interest: p50 {:?}, p99 {:?}, max {:?}",
            waits[ROUNDS / 2],
            waits[ROUNDS * 99 / 100],
            waits[ROUNDS - 1]
        );
    });
}

// ---------------------------------------------------------------------------
// The session streams' configuration

/// The per-subject limit of session stream `name`, as the server has it.
async fn per_subject(js: &async_nats::jetstream::Context, name: &str) -> i64 {
    let mut stream = js.get_stream(name).await.expect("the session stream");
    stream
        .info()
        .await
        .expect("its information")
        .config
        .max_messages_per_subject
}

/// The session streams keep one message per subject (a plain publish
/// replaces the one before, no rollup), and a stream made by an earlier
/// version (every message of a subject kept) is brought to it when a node
/// starts.
#[test]
fn session_streams_keep_one_message_per_subject_even_when_made_by_an_earlier_version() {
    let Some(mut c) = Cluster::start("per-subject") else {
        return;
    };
    let nats = format!("{}:{}", c.nats[0].host, c.nats[0].port);
    const NAME: &str = "STARLING_SESSIONS_0";
    run(async {
        let client = async_nats::connect(&nats).await.unwrap();
        let js = async_nats::jetstream::new(client);
        assert_eq!(per_subject(&js, NAME).await, 1);
        // As an earlier version made it.
        let mut stream = js.get_stream(NAME).await.unwrap();
        let mut config = stream.info().await.unwrap().config.clone();
        config.max_messages_per_subject = -1;
        js.update_stream(config).await.unwrap();
        assert_eq!(per_subject(&js, NAME).await, -1);
    });
    c.restart_node(1);
    run(async {
        let client = async_nats::connect(&nats).await.unwrap();
        let js = async_nats::jetstream::new(client);
        assert_eq!(
            per_subject(&js, NAME).await,
            1,
            "brought to one per subject"
        );
        // And a persistent session works on it.
        let mut o = options(c.port(1), "per-subject");
        o.clean_start = false;
        o.session_expiry = Some(300);
        let (client, _) = Client::connect(o).await.unwrap();
        client.subscribe("ps/#", QoS::ExactlyOnce).await.unwrap();
        let publisher = connect(c.port(2), "ps-pub").await;
        until_routed(&publisher, "ps/probe", &client).await;
        publisher
            .publish("ps/x", &b"x"[..], QoS::ExactlyOnce, false)
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(WAIT, client.recv())
                .await
                .expect("the QoS 2 message arrives")
                .unwrap();
            if &*m.topic == "ps/x" {
                break;
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Old removals leave the buckets whose keys come and go

/// A client that ends cleanly leaves a removal marker under its owner key
/// and its connection's will key; the sweep removes those older than it is
/// told to keep, and nothing of a client still connected.
#[test]
fn old_removal_markers_are_swept_and_live_keys_stay() {
    use futures_util::StreamExt;
    use starling_cluster::markers::sweep;
    let Some(c) = Cluster::start("markers") else {
        return;
    };
    let nats = format!("{}:{}", c.nats[0].host, c.nats[0].port);
    run(async {
        let with_will = |id: &str| {
            let mut o = options(c.port(1), id);
            o.will = Some(starling_client::LastWill::new("mk/will", &b"gone"[..]));
            o
        };
        let (stays, _) = Client::connect(with_will("mk-stays")).await.unwrap();
        let (gone, _) = Client::connect(with_will("mk-gone")).await.unwrap();
        gone.disconnect().await.unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
        let timeout = Duration::from_secs(2);
        let live_keys = |bucket: &'static str| {
            let js = js.clone();
            async move {
                let kv = js.get_key_value(bucket).await.unwrap();
                let keys = kv.keys().await.unwrap();
                keys.filter_map(|k| async move { k.ok() }).count().await
            }
        };
        for bucket in ["starling_wills", "starling_owners"] {
            // Nothing is that old yet.
            let kept = starling_cluster::markers::KEPT;
            assert_eq!(sweep(&js, bucket, kept, timeout).await, Ok(0), "{bucket}");
            // The removal is written a moment after the DISCONNECT.
            let mut swept = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for _ in 0..100 {
                tick.tick().await;
                swept += sweep(&js, bucket, Duration::ZERO, timeout).await.unwrap();
                if swept > 0 {
                    break;
                }
            }
            assert!(swept >= 1, "{bucket}: mk-gone's removal swept");
            assert_eq!(
                sweep(&js, bucket, Duration::ZERO, timeout).await,
                Ok(0),
                "{bucket}: nothing left to sweep"
            );
            assert!(
                live_keys(bucket).await >= 1,
                "{bucket}: mk-stays's key stays"
            );
        }
        // Every entry left in the wills bucket is a live will (mk-stays's).
        let mut wills = js.get_stream("KV_starling_wills").await.unwrap();
        let left = wills.info().await.unwrap().state.messages;
        assert_eq!(left as usize, live_keys("starling_wills").await);
        // The swept client id is served again, and its will kept.
        let (back, _) = Client::connect(with_will("mk-gone")).await.unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..100 {
            tick.tick().await;
            if live_keys("starling_wills").await >= 2 {
                break;
            }
        }
        assert_eq!(
            live_keys("starling_wills").await,
            2,
            "mk-stays's and mk-gone's wills"
        );
        drop((stays, back));
    });
}

// ---------------------------------------------------------------------------
// A client moving off a node that does not answer

#[test]
fn a_client_moving_off_a_silent_node_waits_for_its_run_to_be_repaired_everywhere() {
    let Some(c) = Cluster::start("silent") else {
        return;
    };
    let mut stopped = None;
    run(async {
        // Node 3 stores a message from another node: its receipt (which
        // names its run) is written.
        let mut o = options(c.port(3), "s-sub");
        o.clean_start = false;
        o.session_expiry = Some(3600);
        let (sub, _) = Client::connect(o).await.unwrap();
        sub.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
        let p1 = connect(c.port(1), "s-pub").await;
        until_routed(&p1, "s/probe", &sub).await;
        p1.publish("s/stored", "x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let stored = tokio::time::timeout(WAIT, sub.recv()).await;
        assert!(matches!(stored, Ok(Some(_))), "{stored:?}");
        let mover = connect(c.port(3), "s-mover").await;
        mover
            .publish("s/m", "before", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        // Node 3 stops answering; its client comes back through node 1.
        stopped = Some(c.nodes[2].proc.stop());
        drop(mover);
        let moved = connect(c.port(1), "s-mover").await;
        moved
            .publish("s/m", "after", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    });
    drop(stopped);
    let repaired = c.nodes[0].proc.log.wait_for(WAIT, |l| {
        l.contains("its run repaired here and by the others before its clients' CONNACKs")
    });
    let line = repaired.unwrap_or_else(|e| panic!("no repair of the silent node's run: {e}"));
    assert!(
        line.contains("here=true heard=1 expected=1"),
        "node 1 and node 2 repaired it: {line}"
    );
    let served = c.nodes[1].proc.log.wait_for(WAIT, |l| {
        l.contains("a silent node's run repaired here") && l.contains("repaired=true")
    });
    assert!(served.is_ok(), "node 2 served the repair: {served:?}");
}

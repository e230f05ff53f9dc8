//! Faults injected under load against three Starling nodes behind
//! HAProxy, each with its history checked (issue 19; the harness and the
//! checker are in `fault_support`).

mod cluster_support;
mod fault_support;

use std::time::Duration;

use fault_support::{client_options, under_load, under_load_on, Target};
use starling_client::{Client, QoS};

#[test]
fn kill_9_of_a_node_under_load() {
    under_load("fault-kill", |c| {
        c.nodes[1].proc.kill();
        c.mark_fault();
        // Its clients move through HAProxy; it stays down until node 1
        // (the lowest live node) adopted its sessions, then comes back.
        c.wait_adopted(1, Duration::from_secs(40))
            .expect("node 1 adopts node 2's sessions");
        c.restart_node(2);
    });
}

#[test]
fn rolling_restart_of_every_node_under_load() {
    under_load("fault-rolling", |c| {
        for n in 1..=3 {
            c.restart_node_gracefully(n);
        }
    });
}

/// One NATS server cut from the other two: its route link taken down, in a
/// network namespace the test made (where none can be made here, the
/// server is stopped instead, and the output says so). Node 3 stays
/// connected to it but reaches no other node: it sees that its heartbeats
/// are not taken and no node answers, and sends its persistent clients
/// away; node 1 adopts its sessions and publishes the wills of its
/// clients; once the link is back, node 3 gives up what the others own.
#[test]
fn one_nats_server_cut_from_the_other_two_under_load() {
    under_load_on("fault-partition", Target::Partitionable, |c| {
        match &c.partition {
            Some(p) => p.cut(),
            None => c.stop_nats(3),
        }
        c.mark_fault();
        if c.partition.is_some() {
            c.nodes[2]
                .proc
                .log
                .wait_for(Duration::from_secs(30), |l| {
                    l.contains("cut off from the other nodes")
                })
                .expect("node 3 sees that it is cut off");
            c.wait_readyz(3, "degraded", Duration::from_secs(5))
                .expect("node 3 says it is degraded while cut off");
        }
        c.wait_adopted(1, Duration::from_secs(40))
            .expect("node 1 adopts node 3's sessions");
        match &c.partition {
            Some(p) => p.heal(),
            None => c.restart_nats(3),
        }
        c.wait_readyz(3, "ok", Duration::from_secs(30))
            .expect("node 3 is whole again once NATS is");
    });
}

/// Two of the three NATS servers down (JetStream without quorum; nodes 2
/// and 3 without NATS): persistent CONNECTs are refused with 0x88, clean
/// sessions are served; everything comes back with the servers.
#[test]
fn two_of_three_nats_servers_down_under_load() {
    under_load("fault-quorum", |c| {
        c.stop_nats(2);
        c.stop_nats(3);
        c.mark_fault();
        // Held until nodes 2 and 3 sent their persistent clients away (their
        // lease ran out), so that every client lives through the loss.
        for n in [1, 2] {
            c.nodes[n]
                .proc
                .log
                .wait_for(Duration::from_secs(30), |l| l.contains("no NATS for"))
                .unwrap_or_else(|e| panic!("node {} never saw NATS gone: {e}", n + 1));
            c.wait_readyz(n + 1, "degraded", Duration::from_secs(5))
                .expect("a node without NATS says it is degraded");
        }
        let proxy = c.proxy_port;
        tokio::runtime::Handle::current().block_on(without_quorum(proxy));
        c.restart_nats(2);
        c.restart_nats(3);
    });
}

/// What the cluster answers (through HAProxy) while JetStream has no
/// quorum: 0x88 to a persistent CONNECT (within 20 s: a claim may have to
/// time out first), a clean session served with its QoS 0 messages.
async fn without_quorum(port: u16) {
    use starling_codec::ReasonCode;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let mut o = client_options(port, "q-persistent", true);
        o.clean_start = false;
        match Client::connect(o).await {
            Err(e)
                if e.refusal()
                    .is_some_and(|r| r.code.reason_code() == ReasonCode::SERVER_UNAVAILABLE) =>
            {
                break
            }
            Ok((client, _)) => {
                let _ = client.disconnect().await;
            }
            Err(e) => eprintln!("q-persistent: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "persistent CONNECTs still served 20 s into the quorum loss"
        );
    }
    eprintln!("without quorum: a persistent CONNECT refused with 0x88");
    let (clean, _) = Client::connect(client_options(port, "q-clean", false))
        .await
        .expect("a clean session is served without quorum");
    clean
        .subscribe("q/echo", QoS::AtMostOnce)
        .await
        .expect("subscribed");
    clean
        .publish("q/echo", "x", QoS::AtMostOnce, false)
        .await
        .expect("published");
    let echo = tokio::time::timeout(Duration::from_secs(10), clean.recv())
        .await
        .expect("its own QoS 0 message within 10 s")
        .expect("a message");
    assert_eq!(&echo.payload[..], b"x");
    let _ = clean.disconnect().await;
}

#[test]
fn kill_9_of_the_session_buckets_jetstream_leader_under_load() {
    under_load("fault-leader", |c| {
        let n = c.leader_of("KV_starling_owners").unwrap_or(1);
        eprintln!("the owners bucket's leader is NATS server {n}");
        let rt = tokio::runtime::Handle::current();
        let probing = rt.spawn(owner_writes(c.proxy_port));
        c.stop_nats(n);
        c.mark_fault();
        c.restart_nats(n);
        let (pause, refused, probes) = rt.block_on(probing).expect("the owner-write probe ends");
        eprintln!(
            "fault-leader: owners bucket write pause seen by persistent CONNECTs ({probes} \
             new client ids, one each 50 ms): {pause:?}, {refused} refused"
        );
    });
}

/// The owners bucket's write pause as clients see it: a persistent CONNECT
/// with a new client id (an owner key created before the CONNACK) each
/// 50 ms, until 20 in a row were accepted (bounded: 30 s). Returns the
/// pause (from the first refused or slow one, over 100 ms, to the end of
/// the next accepted one), how many were refused and how many were tried.
async fn owner_writes(port: u16) -> (Duration, usize, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (mut refused, mut accepted_in_a_row, mut tried) = (0, 0, 0);
    let mut troubled_since: Option<std::time::Instant> = None;
    let mut pause = Duration::ZERO;
    while tokio::time::Instant::now() < deadline && accepted_in_a_row < 20 {
        tick.tick().await;
        tried += 1;
        let mut o = client_options(port, &format!("owner-probe-{tried}"), true);
        o.session_expiry = Some(5);
        let began = std::time::Instant::now();
        let answered = Client::connect(o).await;
        let took = began.elapsed();
        let ok = match answered {
            Ok((client, _)) => {
                let _ = client.disconnect().await;
                true
            }
            Err(_) => {
                refused += 1;
                false
            }
        };
        if !ok || took > Duration::from_millis(100) {
            troubled_since.get_or_insert(began);
        }
        if ok {
            accepted_in_a_row += 1;
            if let Some(since) = troubled_since.take() {
                pause = pause.max(since.elapsed());
            }
        } else {
            accepted_in_a_row = 0;
        }
    }
    (pause, refused, tried)
}

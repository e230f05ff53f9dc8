//! The anchor (issue 19): NATS's own MQTT listener on the same three NATS
//! servers, behind the same HAProxy, driven by the same clients through the
//! same faults as Starling in `faults.rs`, wherever it supports the
//! scenario. MQTT 3.1.1 and QoS 1 (nats-server 2.9, Debian's, has no QoS 2);
//! a NATS server is both the broker and the store here, so the faults hit
//! the servers. The figures are printed, not asserted (they are another
//! product's; `BENCHMARKS.md` records them). Run by hand:
//! `CI=true cargo nextest run -p starling --test anchor --run-ignored all --no-capture`.

mod cluster_support;
mod fault_support;

use std::time::Duration;

use fault_support::{client_options, under_load_on, Target};
use starling_client::Client;

/// Waits, at most `limit`, for NATS server `n` to log a JetStream leader
/// election after its first `skip` lines (the servers left settled what
/// the fault took); says which.
fn until_elected(c: &cluster_support::Cluster, n: usize, skip: usize, limit: Duration) {
    let seen = c.nats[n - 1]
        .proc
        .log
        .wait_for_after(skip, limit, |l| l.contains("JetStream cluster new"));
    eprintln!(
        "NATS server {n}: {}",
        seen.unwrap_or_else(|_| "no leader election logged".into())
    );
}

#[test]
#[ignore = "the anchor: NATS's own MQTT listener, measured by hand for BENCHMARKS.md"]
fn anchor_kill_9_of_a_nats_server_under_load() {
    under_load_on(
        "anchor-kill",
        Target::Anchor {
            partitionable: false,
        },
        |c| {
            let skip = c.nats[0].proc.log.len();
            c.stop_nats(2);
            c.mark_fault();
            until_elected(c, 1, skip, Duration::from_secs(20));
            c.restart_nats(2);
        },
    );
}

#[test]
#[ignore = "the anchor: NATS's own MQTT listener, measured by hand for BENCHMARKS.md"]
fn anchor_one_nats_server_cut_from_the_other_two_under_load() {
    under_load_on(
        "anchor-partition",
        Target::Anchor {
            partitionable: true,
        },
        |c| {
            let skip = c.nats[0].proc.log.len();
            match &c.partition {
                Some(p) => p.cut(),
                None => c.stop_nats(3),
            }
            c.mark_fault();
            until_elected(c, 1, skip, Duration::from_secs(20));
            match &c.partition {
                Some(p) => p.heal(),
                None => c.restart_nats(3),
            }
        },
    );
}

#[test]
#[ignore = "the anchor: NATS's own MQTT listener, measured by hand for BENCHMARKS.md"]
fn anchor_two_of_three_nats_servers_down_under_load() {
    under_load_on(
        "anchor-quorum",
        Target::Anchor {
            partitionable: false,
        },
        |c| {
            c.stop_nats(2);
            c.stop_nats(3);
            c.mark_fault();
            let port = c.proxy_port;
            tokio::runtime::Handle::current().block_on(async move {
                for (id, persistent) in [("q-persistent", true), ("q-clean", false)] {
                    let answer = Client::connect(client_options(port, id, persistent)).await;
                    let said = match answer {
                        Ok((client, _)) => {
                            let _ = client.disconnect().await;
                            "served".to_string()
                        }
                        Err(e) => format!("refused: {e}"),
                    };
                    eprintln!("anchor without quorum: a {id} CONNECT {said}");
                }
            });
            c.restart_nats(2);
            c.restart_nats(3);
        },
    );
}

//! `starling bench subs`: many subscriptions per connection, held idle.
//!
//! Each of `-c` clients subscribes to `--per-client` filters, mixed exact and
//! wildcard, under `--topic-prefix` (P), in SUBSCRIBE packets of up to
//! `--batch` filters. Client `c`'s filter `k` has one of four shapes, in turn:
//!
//! - `P/c/k` (exact)
//! - `P/c/+/k` (single-level wildcard)
//! - `P/c/k/#` (multi-level wildcard)
//! - `+/c/k` (a wildcard at the root)
//!
//! None of them matches a two-level topic such as `P/3`, so a fan-in run on
//! `P/%i` (filter `P/+`) beside it walks a trie full of subscriptions without
//! delivering to them: it shows whether routing cost grows with the number of
//! subscriptions. The connections are then held (answering keep alive) until
//! `--hold` expires or Ctrl-C.
//!
//! In the summary, `sent` is the number of filters requested, `acked` the
//! number granted, and `send_rate` subscriptions per second (connecting
//! included).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail};
use starling_codec::{ByteString, Packet, QoS, Subscribe, Subscription, SubscriptionOptions};

use super::net::Conn;
use super::report::{ProgressKind, Summary};
use super::{worker, Harness, NetArgs};

/// Flags of `starling bench subs`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct SubsBench {
    #[command(flatten)]
    net: NetArgs,
    /// Number of clients.
    #[arg(short = 'c', long = "count", default_value_t = 100)]
    count: usize,
    /// Subscriptions per client.
    #[arg(long = "per-client", default_value_t = 100)]
    per_client: usize,
    /// Most filters in one SUBSCRIBE packet.
    #[arg(long = "batch", default_value_t = 100)]
    batch: usize,
    /// First topic level of the filters (P above).
    #[arg(long = "topic-prefix", default_value = "bench")]
    topic_prefix: String,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Seconds to hold the connections once all have subscribed (default: until Ctrl-C).
    #[arg(long = "hold")]
    hold: Option<f64>,
}

impl SubsBench {
    pub fn net(&self) -> &NetArgs {
        &self.net
    }
}

/// Filter `k` of client `c`.
fn filter(prefix: &str, c: usize, k: usize) -> String {
    match k % 4 {
        0 => format!("{prefix}/{c}/{k}"),
        1 => format!("{prefix}/{c}/+/{k}"),
        2 => format!("{prefix}/{c}/{k}/#"),
        _ => format!("+/{c}/{k}"),
    }
}

/// Subscribes `conn` to `filters` in packets of up to `batch`; returns how many were granted.
async fn subscribe_all(
    conn: &mut Conn,
    filters: Vec<String>,
    qos: QoS,
    batch: usize,
) -> anyhow::Result<u64> {
    let mut granted = 0;
    match conn {
        Conn::Raw(raw) => {
            for (n, chunk) in filters.chunks(batch.max(1)).enumerate() {
                let sub = Subscribe {
                    packet_id: (n % 65_535 + 1) as u16,
                    properties: Default::default(),
                    subscriptions: chunk
                        .iter()
                        .map(|f| Subscription {
                            filter: ByteString::from(f.as_str()),
                            options: SubscriptionOptions {
                                qos,
                                ..Default::default()
                            },
                        })
                        .collect(),
                };
                raw.send(&Packet::Subscribe(sub)).await?;
                match raw.recv().await? {
                    Packet::SubAck(ack) => {
                        if ack.reason_codes.len() != chunk.len() {
                            bail!(
                                "SUBACK with {} codes for {} filters",
                                ack.reason_codes.len(),
                                chunk.len()
                            );
                        }
                        if let Some((i, code)) = ack
                            .reason_codes
                            .iter()
                            .enumerate()
                            .find(|(_, c)| c.is_error())
                        {
                            bail!("subscription to {} refused: {code}", chunk[i]);
                        }
                        granted += chunk.len() as u64;
                    }
                    other => bail!("expected SUBACK, got {:?}", other.packet_type()),
                }
            }
        }
        Conn::Client(client) => {
            for f in filters {
                let code = client.subscribe(f.clone(), qos).await?;
                if code.is_error() {
                    return Err(anyhow!("subscription to {f} refused: {code}"));
                }
                granted += 1;
            }
        }
    }
    Ok(granted)
}

pub async fn subs_main(a: SubsBench) -> anyhow::Result<Summary> {
    let mut h = Harness::new(&a.net).await?;
    let qos = QoS::from_u8(a.qos).unwrap_or(QoS::AtMostOnce);
    h.start_progress(ProgressKind::Conn, a.count as u64);
    let granted = Arc::new(AtomicU64::new(0));
    let (ctx, stops) = (h.ctx.clone(), h.stops.clone());
    let (prefix, per_client, batch, g) = (
        Arc::new(a.topic_prefix.clone()),
        a.per_client,
        a.batch,
        granted.clone(),
    );
    let (holders, connect_secs) = h
        .open("c", a.count, move |i, mut conn| {
            let (ctx, stops, prefix, g) = (ctx.clone(), stops.clone(), prefix.clone(), g.clone());
            async move {
                let filters = (0..per_client).map(|k| filter(&prefix, i, k)).collect();
                let n = subscribe_all(&mut conn, filters, qos, batch).await?;
                g.fetch_add(n, Ordering::Relaxed);
                Ok(tokio::spawn(worker::holder(conn, i, ctx, stops)))
            }
        })
        .await;
    let connected = holders.iter().flatten().count() as u64;
    let granted = granted.load(Ordering::Relaxed);
    if !a.net.quiet {
        eprintln!(
            "subscribed: {granted} filters on {connected} connections in {connect_secs:.3} s"
        );
    }
    let held = h.hold(a.hold, holders).await;
    let mut s = h.summary("subs");
    s.sent = (a.count * a.per_client) as u64;
    s.acked = granted;
    s.send_secs = connect_secs;
    Ok(Summary {
        qos: a.qos,
        subscribers: a.count as u64,
        connections: a.count as u64,
        connected,
        connect_secs,
        duration_secs: held,
        ..s
    })
}

#[cfg(test)]
mod tests {
    use super::filter;

    #[test]
    fn filters_are_mixed_and_miss_two_level_topics() {
        let f: Vec<String> = (0..4).map(|k| filter("bench", 7, k)).collect();
        assert_eq!(f, ["bench/7/0", "bench/7/+/1", "bench/7/2/#", "+/7/3"]);
    }
}

//! `$SYS` topics: broker statistics published as retained messages every
//! `sys-interval` seconds, under Mosquitto's names.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::{Properties, QoS};
use tokio::sync::watch;

use crate::broker::BrokerState;
use crate::journal::{commit, Journal};
use crate::message::Message;
use crate::metrics::Metrics;

/// The broker version string published on `$SYS/broker/version`.
pub const VERSION: &str = concat!("starling ", env!("CARGO_PKG_VERSION"));

/// How often expired retained and queued messages are reclaimed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Publishes `$SYS` topics and sweeps expired messages until shutdown.
pub(crate) async fn run(broker: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let secs = broker.config.sys_interval;
    let mut sys_tick = tokio::time::interval(Duration::from_secs(secs.max(1)));
    let mut sweep_tick = tokio::time::interval(SWEEP_INTERVAL);
    let mut loads = Loads::default();
    loop {
        tokio::select! {
            _ = sys_tick.tick(), if secs > 0 => {
                loads.update(&broker, secs);
                publish(&broker);
                publish_values(&broker, loads.values());
            }
            _ = sweep_tick.tick() => {
                sweep(&broker);
                // Queues on disk are read in pages, away from this loop.
                tokio::spawn(sweep_spilled(broker.clone()));
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The counters whose load Mosquitto publishes, under its names.
const LOADED: [&str; 6] = [
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
    "publish/received",
    "connections",
];

/// Mosquitto's `$SYS/broker/load/...`: per-minute rates of counters as
/// exponentially weighted moving averages over 1, 5 and 15 minutes, updated
/// at each `sys-interval`; with the peaks of connected clients and memory.
#[derive(Debug, Default)]
struct Loads {
    /// Each counter's total at the last update.
    last: [u64; LOADED.len()],
    /// Averages per counter, over 1, 5 and 15 minutes.
    averages: [[f64; 3]; LOADED.len()],
    /// Whether `last` holds a reading yet.
    primed: bool,
    /// Most clients connected at once.
    max_clients: u64,
    /// Largest resident memory seen, in bytes.
    max_memory: u64,
    /// Resident memory now, in bytes.
    memory: u64,
}

impl Loads {
    fn totals(broker: &BrokerState) -> [u64; LOADED.len()] {
        let m = &broker.metrics;
        [
            m.received.total(),
            m.sent.total(),
            Metrics::get(&m.bytes_received),
            Metrics::get(&m.bytes_sent),
            m.received.total(),
            Metrics::get(&m.connections_total),
        ]
    }

    /// Folds in the counters' growth over the last `secs` seconds.
    fn update(&mut self, broker: &BrokerState, secs: u64) {
        let now = Self::totals(broker);
        if self.primed {
            for (i, total) in now.iter().enumerate() {
                let per_minute = total.saturating_sub(self.last[i]) as f64 * 60.0 / secs as f64;
                for (j, minutes) in [1.0f64, 5.0, 15.0].iter().enumerate() {
                    let decay = (-(secs as f64) / (60.0 * minutes)).exp();
                    let avg = &mut self.averages[i][j];
                    *avg = per_minute + decay * (*avg - per_minute);
                }
            }
        }
        self.last = now;
        self.primed = true;
        self.max_clients = self
            .max_clients
            .max(Metrics::get(&broker.metrics.clients_connected));
        self.memory = resident_bytes().unwrap_or(0);
        self.max_memory = self.max_memory.max(self.memory);
    }

    fn values(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(LOADED.len() * 3 + 3);
        for (i, name) in LOADED.iter().enumerate() {
            for (j, span) in ["1min", "5min", "15min"].iter().enumerate() {
                out.push((
                    format!("$SYS/broker/load/{name}/{span}"),
                    format!("{:.2}", self.averages[i][j]),
                ));
            }
        }
        out.push((
            "$SYS/broker/clients/maximum".into(),
            self.max_clients.to_string(),
        ));
        out.push(("$SYS/broker/heap/current".into(), self.memory.to_string()));
        out.push((
            "$SYS/broker/heap/maximum".into(),
            self.max_memory.to_string(),
        ));
        out
    }
}

/// The process's resident memory, from `/proc/self/statm` (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Reclaims expired messages: retained ones, and those queued for sessions
/// with no connection (a connected session drops them when it drains), with
/// their store records, so disk use stays bounded.
pub fn sweep(broker: &Arc<BrokerState>) {
    let now = tokio::time::Instant::now();
    let mut journal = Journal::new();
    let expired_retained = broker.retained.write().sweep(now);
    for topic in expired_retained {
        journal.retained_gone(topic);
    }
    let sessions: Vec<_> = broker.sessions.lock().values().cloned().collect();
    let mut expired = 0u64;
    for session in sessions {
        let mut st = session.state.lock();
        if st.is_connected() || st.queue_len() == 0 {
            continue;
        }
        for d in st.take_queued(|d| d.msg.is_expired(now)) {
            expired += 1;
            if let Some(seq) = d.stored.seq() {
                journal.forget(&session.client_id, seq);
            }
        }
    }
    broker
        .metrics
        .drops
        .add(crate::events::DropReason::Expired as usize, expired);
    commit(broker.store(), journal);
}

/// Reads the queues that sessions with no connection keep on disk (see
/// [`crate::session::SpillCensus`]) once their earliest expiry has passed, or
/// were restored at startup and are not counted yet: deletes what has
/// expired and counts what remains, page by page. Returns how many it deleted.
pub async fn sweep_spilled(broker: Arc<BrokerState>) -> u64 {
    let Some(store) = broker.store().filter(|s| s.reads_queues()).cloned() else {
        return 0;
    };
    let sessions: Vec<_> = broker.sessions.lock().values().cloned().collect();
    let mut total = 0u64;
    for session in sessions {
        let now = tokio::time::Instant::now();
        let Some(req) = session.state.lock().sweep_request(now) else {
            continue;
        };
        let census = census(&store, &session.client_id, req).await;
        if let Some((_, expired)) = &census {
            total += expired;
        }
        session.state.lock().swept(req, census.map(|(c, _)| c));
    }
    broker
        .metrics
        .drops
        .add(crate::events::DropReason::Expired as usize, total);
    total
}

/// Reads `client`'s spill `req` whole, deleting the expired messages (not
/// those in flight); `None` when the store failed.
async fn census(
    store: &crate::store::Persistence,
    client: &starling_codec::ByteString,
    req: crate::session::PageRequest,
) -> Option<(crate::session::SpillCensus, u64)> {
    let mut c = crate::session::SpillCensus::default();
    let mut expired = 0u64;
    let mut from = req.from;
    loop {
        let page = store
            .read_queue(client.clone(), from, req.end, req.limit, req.max_bytes)
            .await;
        let (records, complete) = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(client_id = %client, "could not sweep the stored queue: {e}");
                return None;
            }
        };
        let mut gone = Vec::new();
        for (seq, rec) in &records {
            let d = crate::journal::delivery_from_record(*seq, rec);
            if d.msg.is_expired(tokio::time::Instant::now()) && rec.packet_id == 0 {
                gone.push(crate::store::Op::DeleteMessage(client.clone(), *seq));
                continue;
            }
            c.first.get_or_insert(*seq);
            c.count += 1;
            c.bytes += d.weight as usize;
            c.next_expiry = crate::session::earliest(c.next_expiry, d.msg.expires_at);
        }
        expired += gone.len() as u64;
        store.submit(gone);
        // Each page starts after the last: the loop ends with the range.
        match records.last() {
            Some((last, _)) if !complete && *last + 1 > from => from = *last + 1,
            _ => return Some((c, expired)),
        }
    }
}

/// Publishes one round of `$SYS` values.
pub fn publish(broker: &Arc<BrokerState>) {
    let m = &broker.metrics;
    let uptime = broker.started.elapsed().as_secs();
    let subscriptions = broker.topics.read().len();
    let retained = broker.retained.read().len();
    let values: [(&str, String); 13] = [
        ("$SYS/broker/version", VERSION.to_string()),
        ("$SYS/broker/uptime", format!("{uptime} seconds")),
        (
            "$SYS/broker/clients/connected",
            Metrics::get(&m.clients_connected).to_string(),
        ),
        (
            "$SYS/broker/clients/hibernating",
            broker.parked_connections().to_string(),
        ),
        (
            "$SYS/broker/clients/total",
            broker.sessions.lock().len().to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            m.received.total().to_string(),
        ),
        ("$SYS/broker/messages/sent", m.sent.total().to_string()),
        (
            "$SYS/broker/messages/dropped",
            m.messages_dropped().to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            Metrics::get(&m.bytes_received).to_string(),
        ),
        (
            "$SYS/broker/bytes/sent",
            Metrics::get(&m.bytes_sent).to_string(),
        ),
        ("$SYS/broker/subscriptions/count", subscriptions.to_string()),
        ("$SYS/broker/retained messages/count", retained.to_string()),
        (
            "$SYS/broker/connections/total",
            Metrics::get(&m.connections_total).to_string(),
        ),
    ];
    let t = broker.totals();
    let connected = Metrics::get(&m.clients_connected);
    let more = [
        (
            "$SYS/broker/clients/disconnected",
            (t.sessions as u64).saturating_sub(connected).to_string(),
        ),
        (
            "$SYS/broker/clients/expired",
            Metrics::get(&m.sessions_ended).to_string(),
        ),
        ("$SYS/broker/messages/stored", t.queued.to_string()),
        ("$SYS/broker/messages/inflight", t.in_flight.to_string()),
        ("$SYS/broker/store/messages/count", t.queued.to_string()),
        (
            "$SYS/broker/store/messages/bytes",
            t.queued_bytes.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/received",
            m.received.total().to_string(),
        ),
        (
            "$SYS/broker/publish/messages/sent",
            m.sent.total().to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped",
            m.messages_dropped().to_string(),
        ),
    ];
    // In a cluster: which node this is, its NATS server, the cluster's state.
    let cluster = broker
        .cluster()
        .status()
        .into_iter()
        .map(|(name, v)| (format!("$SYS/broker/cluster/{name}"), v));
    publish_values(
        broker,
        values
            .into_iter()
            .chain(more)
            .map(|(t, v)| (t.to_string(), v))
            .chain(cluster),
    );
}

/// Publishes `$SYS` values as retained QoS 0 messages (never stored).
fn publish_values(broker: &Arc<BrokerState>, values: impl IntoIterator<Item = (String, String)>) {
    for (topic, value) in values {
        let msg = Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        });
        // `$SYS` topics are never stored: the journal stays empty.
        broker.retain(&msg, &mut Journal::new());
        broker.route(&msg, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_average_per_minute_rates_like_mosquitto() {
        let auth = Arc::new(crate::auth::FileAuthenticator {
            allow_anonymous: true,
            passwords: None,
        });
        let b = BrokerState::new(crate::config::Config::default(), auth, None);
        let mut loads = Loads::default();
        loads.update(&b, 10);
        assert!(loads
            .values()
            .iter()
            .any(|(t, v)| t == "$SYS/broker/load/messages/received/1min" && v == "0.00"));
        // 100 messages in 10 s: 600 a minute; the 1-minute average moves
        // 1 - e^(-1/6) of the way there, the 15-minute one much less.
        b.metrics.received.add(QoS::AtMostOnce, 100);
        loads.update(&b, 10);
        let get = |name: &str| {
            loads
                .values()
                .into_iter()
                .find(|(t, _)| t == name)
                .map(|(_, v)| v.parse::<f64>().unwrap())
                .unwrap()
        };
        let one = get("$SYS/broker/load/messages/received/1min");
        assert!(
            (one - 600.0 * (1.0 - (-1.0f64 / 6.0).exp())).abs() < 0.01,
            "{one}"
        );
        assert!(get("$SYS/broker/load/messages/received/15min") < one);
        assert!(get("$SYS/broker/heap/current") > 0.0);
    }
}

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
    loop {
        tokio::select! {
            _ = sys_tick.tick(), if secs > 0 => publish(&broker),
            _ = sweep_tick.tick() => sweep(&broker),
            _ = shutdown.changed() => return,
        }
    }
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

//! `$SYS` topics: broker statistics published as retained messages every
//! `sys-interval` seconds, under Mosquitto's names.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::{Properties, QoS};
use tokio::sync::watch;

use crate::broker::BrokerState;
use crate::message::Message;
use crate::metrics::Metrics;

/// The broker version string published on `$SYS/broker/version`.
pub const VERSION: &str = concat!("starling ", env!("CARGO_PKG_VERSION"));

/// Publishes `$SYS` topics until shutdown.
pub(crate) async fn run(broker: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let secs = broker.config.sys_interval;
    if secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(secs));
    loop {
        tokio::select! {
            _ = tick.tick() => publish(&broker),
            _ = shutdown.changed() => return,
        }
    }
}

/// Publishes one round of `$SYS` values.
pub fn publish(broker: &Arc<BrokerState>) {
    let m = &broker.metrics;
    let uptime = broker.started.elapsed().as_secs();
    let subscriptions = broker.topics.read().len();
    let retained = broker.retained.read().len();
    let values: [(&str, String); 12] = [
        ("$SYS/broker/version", VERSION.to_string()),
        ("$SYS/broker/uptime", format!("{uptime} seconds")),
        (
            "$SYS/broker/clients/connected",
            Metrics::get(&m.clients_connected).to_string(),
        ),
        (
            "$SYS/broker/clients/total",
            broker.sessions.lock().len().to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            Metrics::get(&m.messages_received).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            Metrics::get(&m.messages_sent).to_string(),
        ),
        (
            "$SYS/broker/messages/dropped",
            Metrics::get(&m.messages_dropped).to_string(),
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
        broker.retain(&msg, &mut Vec::new());
        broker.route(&msg, None);
    }
}

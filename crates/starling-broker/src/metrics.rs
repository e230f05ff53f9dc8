//! Broker-wide counters. Plain relaxed atomics: cheap on the hot path, read by
//! `$SYS` and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since the broker started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Clients connected now.
    pub clients_connected: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// PUBLISH packets received.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent.
    pub messages_sent: AtomicU64,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// Messages dropped: full queues, or too large for the receiving client.
    pub messages_dropped: AtomicU64,
    /// Messages that expired before delivery.
    pub messages_expired: AtomicU64,
    /// Client takeovers.
    pub takeovers: AtomicU64,
    /// CONNECTs refused for their credentials, or by the failed-login limiter.
    pub auth_failures: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

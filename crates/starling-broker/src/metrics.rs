//! Broker-wide counters. Plain relaxed atomics: cheap on the hot path, read by
//! `$SYS` and by the Prometheus endpoint (`starling-admin`), which names and
//! labels them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since the broker started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Clients connected now.
    pub clients_connected: AtomicU64,
    /// Connections accepted since start (before any handshake).
    pub connections_total: AtomicU64,
    /// CONNECTs accepted (CONNACK 0x00 sent).
    pub connects: AtomicU64,
    /// Connections that ended after their CONNACK, by why.
    pub disconnects: ByReason<{ DisconnectReason::ALL.len() }>,
    /// PUBLISH packets received, by QoS.
    pub received: ByQos,
    /// PUBLISH packets sent, by QoS.
    pub sent: ByQos,
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub received_payload: ByQos,
    /// Payload bytes of the PUBLISH packets sent, by QoS.
    pub sent_payload: ByQos,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// Messages not delivered, by why (see [`crate::events::DropReason`]).
    pub drops: ByReason<3>,
    /// SUBSCRIBE filters refused, by why (see [`SubscribeRefusal`]).
    pub subscribe_refusals: ByReason<3>,
    /// Client takeovers.
    pub takeovers: AtomicU64,
    /// CONNECTs refused for their credentials, or by the failed-login limiter.
    pub auth_failures: AtomicU64,
    /// Wills published.
    pub wills_published: AtomicU64,
    /// Sessions that expired (or ended with their connection).
    pub sessions_ended: AtomicU64,
    /// Times a publisher stopped being read because a subscriber's queue
    /// was past its high-water mark (backpressure).
    pub publisher_waits: AtomicU64,
    /// Subscribers that did not drain their queue within the backpressure
    /// bound (slow consumers).
    pub slow_consumers: AtomicU64,
    /// MQTT 5 PUBLISHes refused with 0x97 Quota exceeded because a
    /// persistent subscriber's queue was full (`queue-overflow = "reject"`).
    pub publishes_refused: AtomicU64,
    /// Retained messages refused by `max-retained-messages` or
    /// `max-retained-bytes`: MQTT 5 QoS 1/2 PUBLISHes refused with 0x97,
    /// and the others, delivered without being retained.
    pub retained_refused: AtomicU64,
    /// CONNECTs refused with 0x97 Quota exceeded because the broker held
    /// `max-sessions` sessions.
    pub sessions_refused: AtomicU64,
    /// Times a connection stopped being read because it published faster
    /// than `max-publish-rate` or `max-publish-bytes-rate`.
    pub publish_throttled: AtomicU64,
    /// Events posted to webhooks (`[[webhook]]`) and acknowledged with a 2xx.
    pub webhook_sent: AtomicU64,
    /// Webhook events dropped: their queue was full (`queue-max`), or their
    /// batch failed every retry.
    pub webhook_dropped: ByReason<2>,
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

    /// Messages dropped: full queues, or too large for the receiving client.
    pub fn messages_dropped(&self) -> u64 {
        use crate::events::DropReason;
        self.drops.get(DropReason::QueueFull as usize)
            + self.drops.get(DropReason::TooLarge as usize)
    }

    /// Messages that expired before delivery.
    pub fn messages_expired(&self) -> u64 {
        self.drops.get(crate::events::DropReason::Expired as usize)
    }
}

/// A listener, as metrics and the admin API show it.
#[derive(Debug)]
pub struct ListenerStats {
    /// Its URL as configured.
    pub url: String,
    /// `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub transport: &'static str,
    /// The bound address.
    pub local_addr: Option<std::net::SocketAddr>,
    /// Clients connected through it now, by protocol version.
    pub connected: ByVersion,
    /// CONNECTs accepted through it, by protocol version.
    pub connects: ByVersion,
    /// Times its accept loop waited for `max-connection-rate`.
    pub throttled: AtomicU64,
}

/// One counter per MQTT version: 3.1, 3.1.1, 5.0.
#[derive(Debug, Default)]
pub struct ByVersion(pub [AtomicU64; 3]);

impl ByVersion {
    /// The label of each index.
    pub const LABELS: [&'static str; 3] = ["3.1", "3.1.1", "5.0"];

    fn index(v: starling_codec::ProtocolVersion) -> usize {
        usize::from(v.level().saturating_sub(3)).min(2)
    }

    /// Adds one for version `v`.
    pub fn inc(&self, v: starling_codec::ProtocolVersion) {
        self.0[Self::index(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away for version `v`.
    pub fn dec(&self, v: starling_codec::ProtocolVersion) {
        self.0[Self::index(v)].fetch_sub(1, Ordering::Relaxed);
    }

    /// The count at index `i` (see [`ByVersion::LABELS`]).
    pub fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The count for every version.
    pub fn total(&self) -> u64 {
        (0..3).map(|i| self.get(i)).sum()
    }
}

impl ListenerStats {
    /// A listener with no connection yet.
    pub fn new(
        url: &str,
        transport: &'static str,
        local_addr: Option<std::net::SocketAddr>,
    ) -> ListenerStats {
        ListenerStats {
            url: url.to_string(),
            transport,
            local_addr,
            connected: ByVersion::default(),
            connects: ByVersion::default(),
            throttled: AtomicU64::new(0),
        }
    }
}

/// One counter per QoS level.
#[derive(Debug, Default)]
pub struct ByQos(pub [AtomicU64; 3]);

impl ByQos {
    /// Adds `n` at QoS `qos`.
    pub fn add(&self, qos: starling_codec::QoS, n: u64) {
        self.0[qos as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` at QoS level `qos` (0, 1 or 2).
    pub fn add_at(&self, qos: usize, n: u64) {
        if let Some(c) = self.0.get(qos) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count at QoS `qos` (0, 1 or 2).
    pub fn get(&self, qos: usize) -> u64 {
        self.0.get(qos).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The count at every QoS.
    pub fn total(&self) -> u64 {
        (0..3).map(|q| self.get(q)).sum()
    }
}

/// One counter per reason (an enum's discriminant).
#[derive(Debug)]
pub struct ByReason<const N: usize>(pub [AtomicU64; N]);

impl<const N: usize> Default for ByReason<N> {
    fn default() -> Self {
        ByReason(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> ByReason<N> {
    /// Adds one for reason `i`.
    pub fn inc(&self, i: usize) {
        self.add(i, 1);
    }

    /// Adds `n` for reason `i`.
    pub fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count for reason `i`.
    pub fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Why a SUBSCRIBE filter was refused, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeRefusal {
    /// Not a valid filter, or deeper than `max-topic-levels` (0x8F).
    Invalid,
    /// The ACL or an authorizer said no (0x87).
    NotAuthorized,
    /// The session holds `max-subscriptions-per-client` already (0x97).
    QuotaExceeded,
}

impl SubscribeRefusal {
    /// Every reason, in discriminant order.
    pub const ALL: [SubscribeRefusal; 3] = [
        SubscribeRefusal::Invalid,
        SubscribeRefusal::NotAuthorized,
        SubscribeRefusal::QuotaExceeded,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            SubscribeRefusal::Invalid => "invalid",
            SubscribeRefusal::NotAuthorized => "not_authorized",
            SubscribeRefusal::QuotaExceeded => "quota_exceeded",
        }
    }
}

/// Why a connection ended, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// DISCONNECT from the client (with or without its will).
    Normal,
    /// The client closed the socket, or it failed.
    PeerClosed,
    /// Nothing arrived within 1.5 times the keep alive.
    KeepAlive,
    /// The client broke the protocol.
    ProtocolError,
    /// Another connection took the client id over.
    TakenOver,
    /// The broker shut down.
    Shutdown,
    /// The store could not write what the client waited on.
    StoreFailed,
    /// An operator disconnected it (the admin API).
    Administrative,
    /// It did not drain its queue in time (`slow-consumer = "disconnect"`).
    SlowConsumer,
    /// Its credentials expired (a token's `exp`).
    CredentialsExpired,
}

impl DisconnectReason {
    /// Every reason, in discriminant order.
    pub const ALL: [DisconnectReason; 10] = [
        DisconnectReason::Normal,
        DisconnectReason::PeerClosed,
        DisconnectReason::KeepAlive,
        DisconnectReason::ProtocolError,
        DisconnectReason::TakenOver,
        DisconnectReason::Shutdown,
        DisconnectReason::StoreFailed,
        DisconnectReason::Administrative,
        DisconnectReason::SlowConsumer,
        DisconnectReason::CredentialsExpired,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::PeerClosed => "peer_closed",
            DisconnectReason::KeepAlive => "keep_alive_timeout",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::TakenOver => "taken_over",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::StoreFailed => "store_failed",
            DisconnectReason::Administrative => "administrative",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::CredentialsExpired => "credentials_expired",
        }
    }
}

/// A histogram with fixed buckets, filled with relaxed atomics (one
/// observation per store commit, not per message).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending (the `+Inf` bucket is implied).
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these upper bounds.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((value * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    /// The sum, the count, and each bucket's upper bound with the cumulative
    /// count at or below it (the last bound is `+Inf`).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, cumulative, buckets)
    }
}

/// Store commit latency buckets, in seconds.
pub const COMMIT_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Store batch size buckets, in operations.
pub const BATCH_OPS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 56.5).abs() < 1e-6);
        assert_eq!(buckets, vec![(1.0, 2), (10.0, 3), (f64::INFINITY, 4)]);
    }

    #[test]
    fn dropped_and_expired_come_from_the_reasons() {
        let m = Metrics::default();
        m.drops.inc(crate::events::DropReason::QueueFull as usize);
        m.drops.inc(crate::events::DropReason::TooLarge as usize);
        m.drops.inc(crate::events::DropReason::Expired as usize);
        assert_eq!((m.messages_dropped(), m.messages_expired()), (2, 1));
    }
}

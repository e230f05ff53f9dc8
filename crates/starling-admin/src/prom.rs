//! `GET /metrics`: the broker's counters and gauges in the Prometheus text
//! format (version 0.0.4), or OpenMetrics when the scraper asks for it
//! through `Accept` (Prometheus does). Names follow Prometheus's conventions:
//! the `starling_` prefix, `_total` counters, base units in the name
//! (`_seconds`, `_bytes`), labels for listener, transport, QoS and reasons.
//!
//! Everything is read at scrape time (a [`Collector`]) from the broker's
//! relaxed atomics and, for the gauges of sessions and queues, one pass over
//! the sessions taking each one's lock in turn.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use starling_broker::events::DropReason;
use starling_broker::metrics::{
    ByVersion, DisconnectReason, Histogram, ListenerStats, Metrics, SubscribeRefusal,
};
use starling_broker::BrokerState;

use crate::Ctx;

pub(crate) fn routes() -> Router<Ctx> {
    Router::new().route("/metrics", get(metrics))
}

/// The registry of the broker behind `state`.
pub(crate) fn registry(state: Arc<BrokerState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector { state }));
    registry
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    if let Err(err) = prometheus_client::encoding::text::encode(&mut body, &ctx.registry) {
        tracing::error!("encoding metrics failed: {err}");
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT)], to_text_format(&body)).into_response()
    }
}

/// OpenMetrics text to the Prometheus text format 0.0.4, for what this
/// collector writes (counters, gauges, histograms; no info, no exemplars):
/// a counter family is named with its `_total` suffix, and the `# UNIT` and
/// `# EOF` lines go.
pub(crate) fn to_text_format(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Reads the broker's figures on each scrape.
#[derive(Debug)]
struct BrokerCollector {
    state: Arc<BrokerState>,
}

/// A counter with no labels.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let m = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(m)
}

/// A gauge with no labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(m)
}

/// A family of counters (or gauges), one per label set.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    members: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut fam = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in members {
        let m = fam.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(m)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(m)?,
        }
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    h: &Histogram,
) -> Result<(), std::fmt::Error> {
    let (sum, count, cumulative) = h.snapshot();
    // The encoder takes per-bucket counts, with `f64::MAX` for `+Inf`.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = cumulative
        .into_iter()
        .map(|(bound, c)| {
            let n = c - previous;
            previous = c;
            (if bound.is_finite() { bound } else { f64::MAX }, n)
        })
        .collect();
    let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.state;
        let m = &s.metrics;
        self.connections(&mut e)?;
        self.messages(&mut e, m)?;
        self.sessions(&mut e, s)?;
        self.store(&mut e, s)?;
        process(&mut e, s)?;
        Ok(())
    }
}

impl BrokerCollector {
    fn connections(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.state;
        let m = &s.metrics;
        // One member per listener and protocol version.
        let per_version = |count: fn(&ListenerStats) -> &ByVersion| {
            s.listeners()
                .iter()
                .flat_map(move |l| {
                    ByVersion::LABELS.iter().enumerate().map(move |(i, v)| {
                        let labels = vec![
                            ("listener", l.url.clone()),
                            ("transport", l.transport.to_string()),
                            ("protocol", (*v).to_string()),
                        ];
                        (labels, count(l).get(i))
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            e,
            "starling_connections",
            "Clients connected now, by listener and protocol version",
            None,
            MetricType::Gauge,
            per_version(|l| &l.connected),
        )?;
        family(
            e,
            "starling_accept_throttled",
            "Times a listener's accept loop waited for its max-connection-rate",
            None,
            MetricType::Counter,
            s.listeners().iter().map(|l| {
                let labels = vec![
                    ("listener", l.url.clone()),
                    ("transport", l.transport.to_string()),
                ];
                (labels, Metrics::get(&l.throttled))
            }),
        )?;
        gauge(
            e,
            "starling_connections_parked",
            "Idle connections parked without a task (counted in starling_connections too)",
            None,
            s.parked_connections() as i64,
        )?;
        counter(
            e,
            "starling_connections_accepted",
            "Sockets accepted, before any handshake",
            None,
            Metrics::get(&m.connections_total),
        )?;
        family(
            e,
            "starling_connects",
            "CONNECTs accepted (CONNACK 0x00), by listener and protocol version",
            None,
            MetricType::Counter,
            per_version(|l| &l.connects),
        )?;
        family(
            e,
            "starling_disconnects",
            "Connections that ended after their CONNACK, by reason",
            None,
            MetricType::Counter,
            DisconnectReason::ALL.iter().map(|r| {
                (
                    vec![("reason", r.label().to_string())],
                    m.disconnects.get(*r as usize),
                )
            }),
        )?;
        counter(
            e,
            "starling_auth_failures",
            "CONNECTs refused for their credentials or by the failed-login limiter",
            None,
            Metrics::get(&m.auth_failures),
        )?;
        family(
            e,
            "starling_subscriptions_refused",
            "SUBSCRIBE filters refused, by reason",
            None,
            MetricType::Counter,
            SubscribeRefusal::ALL.iter().map(|r| {
                (
                    vec![("reason", r.label().to_string())],
                    m.subscribe_refusals.get(*r as usize),
                )
            }),
        )?;
        counter(
            e,
            "starling_webhook_events_sent",
            "Events posted to webhooks and acknowledged with a 2xx",
            None,
            Metrics::get(&m.webhook_sent),
        )?;
        family(
            e,
            "starling_webhook_events_dropped",
            "Webhook events dropped, by reason: the queue was full, or the batch failed every retry",
            None,
            MetricType::Counter,
            ["queue_full", "failed"]
                .iter()
                .enumerate()
                .map(|(i, r)| (vec![("reason", r.to_string())], m.webhook_dropped.get(i))),
        )?;
        counter(
            e,
            "starling_takeovers",
            "Sessions taken over by a new connection with the same client id",
            None,
            Metrics::get(&m.takeovers),
        )?;
        counter(
            e,
            "starling_publisher_waits",
            "Times a publisher stopped being read until a subscriber's queue drained (backpressure)",
            None,
            Metrics::get(&m.publisher_waits),
        )?;
        counter(
            e,
            "starling_slow_consumers",
            "Subscribers that did not drain their queue within slow-consumer-timeout-ms",
            None,
            Metrics::get(&m.slow_consumers),
        )?;
        counter(
            e,
            "starling_publishes_refused",
            "MQTT 5 PUBLISHes refused with 0x97 because a persistent subscriber's queue was full",
            None,
            Metrics::get(&m.publishes_refused),
        )?;
        counter(
            e,
            "starling_retained_refused",
            "Retained messages refused by max-retained-messages or max-retained-bytes (MQTT 5 QoS 1/2: 0x97; others delivered, not retained)",
            None,
            Metrics::get(&m.retained_refused),
        )?;
        counter(
            e,
            "starling_sessions_refused",
            "CONNECTs refused with 0x97 Quota exceeded because the broker held max-sessions sessions",
            None,
            Metrics::get(&m.sessions_refused),
        )?;
        counter(
            e,
            "starling_publish_throttled",
            "Times a connection was not read because it published faster than max-publish-rate or max-publish-bytes-rate",
            None,
            Metrics::get(&m.publish_throttled),
        )
    }

    fn messages(&self, e: &mut DescriptorEncoder, m: &Metrics) -> Result<(), std::fmt::Error> {
        fn qos(c: &starling_broker::metrics::ByQos) -> Vec<(Vec<(&'static str, String)>, u64)> {
            (0..3)
                .map(|q| (vec![("qos", q.to_string())], c.get(q)))
                .collect()
        }
        family(
            e,
            "starling_messages_received",
            "PUBLISH packets received from clients, by QoS",
            None,
            MetricType::Counter,
            qos(&m.received),
        )?;
        family(
            e,
            "starling_messages_sent",
            "PUBLISH packets sent to clients (deliveries), by QoS",
            None,
            MetricType::Counter,
            qos(&m.sent),
        )?;
        counter(
            e,
            "starling_received",
            "Bytes read from clients",
            Some(&Unit::Bytes),
            Metrics::get(&m.bytes_received),
        )?;
        counter(
            e,
            "starling_sent",
            "Bytes written to clients",
            Some(&Unit::Bytes),
            Metrics::get(&m.bytes_sent),
        )?;
        family(
            e,
            "starling_messages_received_payload",
            "Payload bytes of the PUBLISH packets received, by QoS",
            Some(&Unit::Bytes),
            MetricType::Counter,
            qos(&m.received_payload),
        )?;
        family(
            e,
            "starling_messages_sent_payload",
            "Payload bytes of the PUBLISH packets sent, by QoS",
            Some(&Unit::Bytes),
            MetricType::Counter,
            qos(&m.sent_payload),
        )?;
        let reasons = [
            (DropReason::QueueFull, "queue_full"),
            (DropReason::TooLarge, "too_large"),
            (DropReason::Expired, "expired"),
        ];
        family(
            e,
            "starling_messages_dropped",
            "Messages not delivered, by reason",
            None,
            MetricType::Counter,
            reasons.iter().map(|(r, label)| {
                (
                    vec![("reason", (*label).to_string())],
                    m.drops.get(*r as usize),
                )
            }),
        )?;
        counter(
            e,
            "starling_wills_published",
            "Wills published",
            None,
            Metrics::get(&m.wills_published),
        )
    }

    fn sessions(&self, e: &mut DescriptorEncoder, s: &BrokerState) -> Result<(), std::fmt::Error> {
        let t = s.totals();
        let m = &s.metrics;
        gauge(
            e,
            "starling_sessions",
            "Sessions held, connected or not",
            None,
            t.sessions as i64,
        )?;
        gauge(
            e,
            "starling_sessions_persistent",
            "Sessions kept in the store (they outlive their connection)",
            None,
            t.persistent_sessions as i64,
        )?;
        counter(
            e,
            "starling_sessions_ended",
            "Sessions that ended: expired, or ended with their connection",
            None,
            Metrics::get(&m.sessions_ended),
        )?;
        gauge(
            e,
            "starling_queued_messages",
            "Messages queued for sessions, not yet sent",
            None,
            t.queued as i64,
        )?;
        gauge(
            e,
            "starling_queued",
            "Weight of the queued messages",
            Some(&Unit::Bytes),
            t.queued_bytes as i64,
        )?;
        gauge(
            e,
            "starling_inflight_messages",
            "Outgoing QoS 1/2 messages awaiting acknowledgement",
            None,
            t.in_flight as i64,
        )?;
        gauge(
            e,
            "starling_subscriptions",
            "Subscriptions, shared group members included",
            None,
            s.subscription_count() as i64,
        )?;
        gauge(
            e,
            "starling_retained_messages",
            "Retained messages held",
            None,
            s.retained_count() as i64,
        )?;
        gauge(
            e,
            "starling_retained_bytes",
            "Bytes of retained messages, as max-retained-bytes counts them",
            None,
            i64::try_from(s.retained_bytes()).unwrap_or(i64::MAX),
        )
    }

    fn store(&self, e: &mut DescriptorEncoder, s: &BrokerState) -> Result<(), std::fmt::Error> {
        let Some(store) = s.store() else {
            return Ok(());
        };
        let stats = store.stats();
        histogram(
            e,
            "starling_store_commit",
            "Time each store commit took, the fsync included",
            Some(&Unit::Seconds),
            &stats.commit_seconds,
        )?;
        histogram(
            e,
            "starling_store_batch_operations",
            "Operations written per store commit",
            None,
            &stats.batch_ops,
        )?;
        counter(
            e,
            "starling_store_write_failures",
            "Store commits that failed",
            None,
            Metrics::get(&stats.failures),
        )
    }
}

fn process(e: &mut DescriptorEncoder, s: &BrokerState) -> Result<(), std::fmt::Error> {
    gauge(
        e,
        "starling_uptime",
        "Time since the broker started",
        Some(&Unit::Seconds),
        s.started.elapsed().as_secs() as i64,
    )?;
    let Some(p) = crate::process::read() else {
        return Ok(());
    };
    let cpu = ConstCounter::new(p.cpu_seconds);
    let m = e.encode_descriptor(
        "process_cpu",
        "User and system CPU time spent",
        Some(&Unit::Seconds),
        cpu.metric_type(),
    )?;
    cpu.encode(m)?;
    gauge(
        e,
        "process_resident_memory",
        "Resident memory size",
        Some(&Unit::Bytes),
        p.resident_bytes as i64,
    )?;
    gauge(
        e,
        "process_virtual_memory",
        "Virtual memory size",
        Some(&Unit::Bytes),
        p.virtual_bytes as i64,
    )?;
    gauge(
        e,
        "process_open_fds",
        "Open file descriptors",
        None,
        p.open_fds as i64,
    )?;
    if let Some(max) = p.max_fds {
        gauge(
            e,
            "process_max_fds",
            "Most open file descriptors allowed",
            None,
            i64::try_from(max).unwrap_or(i64::MAX),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::to_text_format;

    #[test]
    fn openmetrics_to_text_format() {
        let om = "# HELP a_total_x Things.\n# TYPE a counter\n# HELP a Things.\n# UNIT b_bytes bytes\n# TYPE b_bytes gauge\nb_bytes 3\na_total 2\n# EOF\n";
        let text = to_text_format(om);
        assert_eq!(
            text,
            "# HELP a_total_x Things.\n# TYPE a_total counter\n# HELP a_total Things.\n# TYPE b_bytes gauge\nb_bytes 3\na_total 2\n"
        );
    }
}

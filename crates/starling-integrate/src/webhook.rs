//! `[[webhook]]`: broker events posted to an HTTP endpoint as JSON batches.
//!
//! Each webhook observes the broker's events on a task of its own (see
//! [`starling_broker::events`]), keeps those it was configured for in a
//! bounded queue (`queue-max`) and posts them in batches of up to
//! `batch-max`: a JSON array of objects, each with `"event"` (such as
//! `"client.connected"`) and `"timestamp"` (milliseconds since the Unix
//! epoch) and the event's own fields. A batch that fails (no 2xx answer in
//! `timeout-ms`) is posted again after 0.2 s, 0.4 s, 0.8 s ... (at most 5 s
//! apart) up to `retries` times, then dropped. A slow or dead endpoint
//! never slows the broker: what does not fit the queue (`queue-max` events,
//! and at most [`QUEUE_BYTES`] of them, payloads included) is dropped. Both
//! drops are counted in `starling_webhook_events_dropped_total`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use starling_broker::config::WebhookConfig;
use starling_broker::events::{spawn_observer, DropReason, Event, EventKind, EventObserver};
use starling_broker::metrics::Metrics;
use starling_broker::BrokerState;
use tokio::sync::mpsc;

use crate::IntegrateError;

/// Most bytes of events (payloads included) one webhook keeps waiting,
/// whatever `queue-max` allows: a 1 MiB payload per event must not make a
/// dead endpoint cost gigabytes.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Longest wait between two attempts at one batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const QUEUE_FULL: usize = 0;
const FAILED: usize = 1;

/// One `[[webhook]]`: the observer end (filters and the queue).
pub struct Webhook {
    events: HashSet<String>,
    topics: Vec<String>,
    queue: mpsc::Sender<(Value, usize)>,
    /// Bytes waiting in `queue` (estimated), bounded by [`QUEUE_BYTES`].
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    state: Arc<BrokerState>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("events", &self.events)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// Starts every `[[webhook]]` of the broker's configuration: each observes
/// `state`'s events and posts them from a task of its own.
pub fn start(state: &Arc<BrokerState>) -> Result<Vec<Arc<Webhook>>, IntegrateError> {
    let mut hooks = Vec::new();
    for config in &state.config.webhook {
        let hook = Arc::new(Webhook::start(config, state.clone())?);
        spawn_observer(&state.events, hook.clone());
        hooks.push(hook);
    }
    Ok(hooks)
}

impl Webhook {
    /// The webhook of `config`, with its posting task started (inside a
    /// tokio runtime). Feed it events with [`spawn_observer`].
    pub fn start(
        config: &WebhookConfig,
        state: Arc<BrokerState>,
    ) -> Result<Webhook, IntegrateError> {
        let client = crate::http::client(
            "webhook",
            &config.headers,
            Duration::from_millis(config.timeout_ms),
            config.tls_ca.as_deref(),
        )?;
        let (queue, rx) = mpsc::channel(config.queue_max);
        let queued_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let poster = Poster {
            queued_bytes: queued_bytes.clone(),
            client,
            url: config.url.clone(),
            batch_max: config.batch_max,
            retries: config.retries,
            state: state.clone(),
        };
        tokio::spawn(poster.run(rx));
        Ok(Webhook {
            events: config.events.iter().cloned().collect(),
            topics: config.topics.clone(),
            queue,
            queued_bytes,
            state,
        })
    }

    /// Whether a `message.*` event on `topic` is wanted.
    fn wants_topic(&self, topic: &str) -> bool {
        self.topics.is_empty() && !topic.starts_with('$')
            || self
                .topics
                .iter()
                .any(|f| starling_codec::topic::matches(f, topic))
    }

    /// The event as posted, if this webhook wants it.
    fn render(&self, event: &Event) -> Option<Value> {
        let (name, topic) = name_and_topic(event);
        if !self.events.contains(name) || topic.is_some_and(|t| !self.wants_topic(t)) {
            return None;
        }
        let mut out = Map::new();
        out.insert("event".into(), json!(name));
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        out.insert("timestamp".into(), json!(ms));
        fields(event, &mut out);
        Some(Value::Object(out))
    }
}

/// The name a `[[webhook]]` gives events of `kind`.
fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::ClientConnected => "client.connected",
        EventKind::ClientDisconnected => "client.disconnected",
        EventKind::AuthFailed => "client.auth_failed",
        EventKind::SessionCreated => "session.created",
        EventKind::SessionEnded => "session.terminated",
        EventKind::MessagePublished => "message.publish",
        EventKind::MessageDelivered => "message.delivered",
        EventKind::MessageAcked => "message.acked",
        EventKind::MessageDropped => "message.dropped",
    }
}

/// The event's name, and its topic for `message.*` events.
fn name_and_topic(event: &Event) -> (&'static str, Option<&str>) {
    match event {
        Event::ClientConnected { .. } => ("client.connected", None),
        Event::ClientDisconnected { .. } => ("client.disconnected", None),
        Event::AuthFailed { .. } => ("client.auth_failed", None),
        Event::SessionCreated { .. } => ("session.created", None),
        Event::SessionEnded { .. } => ("session.terminated", None),
        Event::MessagePublished { message, .. } => ("message.publish", Some(&message.topic)),
        Event::MessageDelivered { topic, .. } => ("message.delivered", Some(topic)),
        Event::MessageAcked { topic, .. } => ("message.acked", Some(topic)),
        Event::MessageDropped { topic, .. } => ("message.dropped", Some(topic)),
    }
}

/// The event's own fields.
fn fields(event: &Event, out: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_string(), v);
    };
    match event {
        Event::ClientConnected {
            client_id,
            username,
            peer,
            protocol,
            session_present,
        } => {
            put("clientid", json!(&**client_id));
            put("username", json!(username.as_deref()));
            put("peerhost", json!(peer.ip().to_string()));
            put("protocol", json!(protocol.level()));
            put("session_present", json!(session_present));
        }
        Event::ClientDisconnected { client_id, reason } => {
            put("clientid", json!(&**client_id));
            put("reason", json!(reason));
        }
        Event::AuthFailed {
            client_id,
            username,
            peer,
            reason,
        } => {
            put("clientid", json!(&**client_id));
            put("username", json!(username.as_deref()));
            put("peerhost", json!(peer.ip().to_string()));
            put("reason_code", json!(reason.0));
        }
        Event::SessionCreated { client_id } | Event::SessionEnded { client_id } => {
            put("clientid", json!(&**client_id));
        }
        Event::MessagePublished { message, receivers } => {
            put("topic", json!(&*message.topic));
            put("qos", json!(message.qos as u8));
            put("retain", json!(message.retain));
            put("from_clientid", json!(message.publisher.as_deref()));
            put("receivers", json!(receivers));
            payload(&message.payload, &mut put);
        }
        Event::MessageDelivered {
            client_id,
            topic,
            qos,
        }
        | Event::MessageAcked {
            client_id,
            topic,
            qos,
        } => {
            put("clientid", json!(&**client_id));
            put("topic", json!(&**topic));
            put("qos", json!(*qos as u8));
        }
        Event::MessageDropped {
            client_id,
            topic,
            reason,
        } => {
            put("clientid", json!(&**client_id));
            put("topic", json!(&**topic));
            put(
                "reason",
                json!(match reason {
                    DropReason::QueueFull => "queue_full",
                    DropReason::TooLarge => "too_large",
                    DropReason::Expired => "expired",
                }),
            );
        }
    }
}

/// A payload as text when it is UTF-8, else base64 (`payload_encoding`).
fn payload(bytes: &Bytes, put: &mut impl FnMut(&str, Value)) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            put("payload", json!(text));
            put("payload_encoding", json!("plain"));
        }
        Err(_) => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            put("payload", json!(b64));
            put("payload_encoding", json!("base64"));
        }
    }
}

impl EventObserver for Webhook {
    fn observe(&self, event: &Event) {
        // A full queue (a slow or dead endpoint) drops before the JSON is
        // built: overflow costs a counter, not a rendering.
        use std::sync::atomic::Ordering::Relaxed;
        let size = match event {
            // Base64 of a payload is 4/3 of it; the rest is small.
            Event::MessagePublished { message, .. } => message.payload.len() * 4 / 3 + 512,
            _ => 512,
        };
        let full =
            self.queue.capacity() == 0 || self.queued_bytes.load(Relaxed) + size > QUEUE_BYTES;
        if full {
            let (name, topic) = name_and_topic(event);
            if self.events.contains(name) && topic.is_none_or(|t| self.wants_topic(t)) {
                self.state.metrics.webhook_dropped.inc(QUEUE_FULL);
            }
            return;
        }
        if let Some(value) = self.render(event) {
            self.queued_bytes.fetch_add(size, Relaxed);
            if self.queue.try_send((value, size)).is_err() {
                self.queued_bytes.fetch_sub(size, Relaxed);
                self.state.metrics.webhook_dropped.inc(QUEUE_FULL);
            }
        }
    }

    fn lagged(&self, n: u64) {
        self.state.metrics.webhook_dropped.add(QUEUE_FULL, n);
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(kind_name(kind))
    }
}

/// The posting end: batches from the queue, with retries.
struct Poster {
    client: reqwest::Client,
    url: String,
    batch_max: usize,
    retries: u32,
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    state: Arc<BrokerState>,
}

impl Poster {
    async fn run(self, mut rx: mpsc::Receiver<(Value, usize)>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        while rx.recv_many(&mut batch, self.batch_max).await > 0 {
            let n = batch.len() as u64;
            let size: usize = batch.iter().map(|(_, s)| s).sum();
            let body = Value::Array(batch.drain(..).map(|(v, _)| v).collect());
            self.queued_bytes
                .fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
            if self.post(&body).await {
                Metrics::add(&self.state.metrics.webhook_sent, n);
            } else {
                self.state.metrics.webhook_dropped.add(FAILED, n);
                tracing::warn!(url = %self.url, events = n, "webhook batch dropped after its retries");
            }
        }
    }

    /// Posts one batch, retrying with backoff; whether it got a 2xx.
    async fn post(&self, body: &Value) -> bool {
        let mut backoff = Duration::from_millis(200);
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            match self.client.post(&self.url).json(body).send().await {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    tracing::debug!(url = %self.url, status = %r.status(), "webhook refused a batch")
                }
                Err(e) => tracing::debug!(url = %self.url, "webhook post failed: {e}"),
            }
        }
        false
    }
}

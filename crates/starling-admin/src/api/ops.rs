//! `/api/v1/publish`, `/api/v1/stats`, `/api/v1/listeners` and
//! `/api/v1/reload`: the broker as a whole.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use starling_broker::metrics::Metrics;
use starling_broker::Refusal;
use starling_codec::{Properties, QoS};

use super::{ApiError, Body};
use crate::Ctx;

/// Standard base64 that also takes non-zero trailing bits (`AB==`): the
/// schema's pattern allows them, and they carry no data.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Whether a string fits an MQTT string (65535 bytes) whatever its
/// characters: the API takes at most 16383 characters, as its schema says.
pub(crate) fn short(s: &str) -> bool {
    s.chars().count() <= 16383
}

/// A topic name the broker would accept in a PUBLISH: not empty, no
/// wildcard, no NUL, within 65535 bytes and `max-topic-levels`.
pub(crate) fn check_topic(ctx: &Ctx, topic: &str) -> Result<(), ApiError> {
    let why = if topic.is_empty() {
        Some("is empty")
    } else if starling_codec::topic::has_wildcard(topic) {
        Some("has a wildcard")
    } else if topic.contains('\0') {
        Some("has a NUL character")
    } else if !short(topic) {
        Some("is longer than 16383 characters")
    } else if starling_codec::topic::levels(topic) > ctx.state.config.max_topic_levels {
        Some("is deeper than max-topic-levels")
    } else {
        None
    };
    match why {
        Some(why) => Err(ApiError::bad_request(format!("topic {why}"))),
        None => Ok(()),
    }
}

/// A message to publish.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The topic: no wildcards, no NUL, at most 128 levels (`max-topic-levels`).
    #[schema(
        min_length = 1,
        max_length = 16383,
        pattern = r"^[^#+/\u0000]*(/[^#+/\u0000]*){0,127}$"
    )]
    pub topic: String,
    /// The payload as text (give this or `payload_base64`, not both).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub payload: Option<Option<String>>,
    /// The payload, base64-encoded (standard alphabet, padded).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    pub payload_base64: Option<Option<String>>,
    /// QoS 0, 1 or 2 (default 0).
    #[serde(default, deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 2)]
    pub qos: u8,
    /// Whether the broker retains it (an empty payload clears the retained message).
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5 Message Expiry Interval, in seconds.
    #[serde(default, deserialize_with = "whole")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub message_expiry_interval: Option<u32>,
    /// MQTT 5 Content Type.
    #[serde(default)]
    #[schema(max_length = 16383, pattern = r"^[^\u0000]*$")]
    pub content_type: Option<String>,
    /// MQTT 5 Response Topic (a topic name, as `topic`).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 16383,
        pattern = r"^[^#+/\u0000]*(/[^#+/\u0000]*){0,127}$"
    )]
    pub response_topic: Option<String>,
    /// MQTT 5 Payload Format Indicator: the payload is UTF-8 text (when
    /// true, the payload comes as `payload`, not `payload_base64`).
    #[serde(default)]
    pub payload_format_indicator: Option<bool>,
    /// MQTT 5 User Properties, in order (names may repeat).
    #[serde(default)]
    pub user_properties: Vec<UserProperty>,
}

/// An MQTT 5 User Property.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserProperty {
    /// Its name.
    #[schema(max_length = 16383, pattern = r"^[^\u0000]*$")]
    pub name: String,
    /// Its value.
    #[schema(max_length = 16383, pattern = r"^[^\u0000]*$")]
    pub value: String,
}

/// An integer as JSON Schema has it: `2` or `2.0` (a number with no
/// fraction), within the target type.
fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Whole,
{
    T::from_json(serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// A type [`whole`] reads.
trait Whole: Sized {
    fn from_json(v: serde_json::Value) -> Result<Self, String>;
}

fn integer(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| format!("{n} is not a whole number of the right range")),
        other => Err(format!("expected a whole number, got {other}")),
    }
}

impl Whole for u8 {
    fn from_json(v: serde_json::Value) -> Result<Self, String> {
        u8::try_from(integer(&v)?).map_err(|e| e.to_string())
    }
}

impl Whole for Option<u32> {
    fn from_json(v: serde_json::Value) -> Result<Self, String> {
        if v.is_null() {
            return Ok(None);
        }
        u32::try_from(integer(&v)?)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// A field that, when present, is `Some` even if it is `null`: a publish
/// may name its payload one way only.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// What a publish did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishResult {
    /// How many sessions the message was offered to.
    pub offered: u64,
}

/// Publishes a message as the broker (no client): routed, retained and
/// forwarded as a client's message would be.
#[utoipa::path(
    post, path = "/api/v1/publish", tag = "broker",
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published", body = PublishResult),
        (status = 400, description = "Not valid JSON, or a bad topic, QoS or payload", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
        (status = 409, description = "Refused: a retained-message limit, or a full queue with queue-overflow = \"reject\"", body = ApiError),
        (status = 422, description = "JSON of the wrong shape", body = ApiError),
    )
)]
pub(crate) async fn publish(
    State(ctx): State<Ctx>,
    Body(req): Body<PublishRequest>,
) -> Result<Json<PublishResult>, ApiError> {
    check_topic(&ctx, &req.topic)?;
    let qos = QoS::from_u8(req.qos)
        .filter(|_| req.qos <= 2)
        .ok_or_else(|| ApiError::bad_request("qos must be 0, 1 or 2"))?;
    if req.payload_format_indicator == Some(true) && req.payload_base64.is_some() {
        return Err(ApiError::bad_request(
            "with payload_format_indicator true, give the payload as text (payload)",
        ));
    }
    let payload = match (req.payload, req.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give payload or payload_base64, not both",
            ))
        }
        (Some(text), None) => Bytes::from(text.unwrap_or_default()),
        (None, Some(None)) => Bytes::new(),
        (None, Some(Some(b64))) => LENIENT
            .decode(b64.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("payload_base64: {e}")))?,
        (None, None) => Bytes::new(),
    };
    if payload.len() > ctx.state.config.max_packet_size as usize {
        return Err(ApiError::bad_request("payload larger than max-packet-size"));
    }
    if req.payload_format_indicator == Some(true) && std::str::from_utf8(&payload).is_err() {
        return Err(ApiError::bad_request(
            "payload_format_indicator is true but the payload is not UTF-8",
        ));
    }
    if let Some(rt) = &req.response_topic {
        check_topic(&ctx, rt)
            .map_err(|_| ApiError::bad_request("response_topic is not a valid topic name"))?;
    }
    let text_ok = |s: &str| !s.contains('\0') && short(s);
    let texts = req
        .content_type
        .iter()
        .chain(req.user_properties.iter().flat_map(|p| [&p.name, &p.value]));
    if texts.into_iter().any(|s| !text_ok(s)) {
        return Err(ApiError::bad_request(
            "a property holds a NUL character or is longer than 16383 characters",
        ));
    }
    let properties = Properties {
        payload_format_indicator: req.payload_format_indicator,
        message_expiry_interval: req.message_expiry_interval,
        content_type: req.content_type.map(Into::into),
        response_topic: req.response_topic.map(Into::into),
        user_properties: req
            .user_properties
            .into_iter()
            .map(|p| (p.name.into(), p.value.into()))
            .collect(),
        ..Properties::default()
    };
    let offered = ctx
        .state
        .publish_as_operator(req.topic.into(), payload, qos, req.retain, properties)
        .map_err(|why| {
            let message = match why {
                Refusal::RetainedFull => {
                    "not published: the retained-message limit (max-retained-messages, max-retained-bytes) is reached"
                }
                Refusal::QueueFull => {
                    "not published: a persistent subscriber's queue is full (queue-overflow = \"reject\")"
                }
            };
            ApiError::new(StatusCode::CONFLICT, "quota_exceeded", message)
        })?;
    Ok(Json(PublishResult {
        offered: offered as u64,
    }))
}

/// Broker-wide figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// The broker's version.
    pub version: String,
    /// Seconds since the broker started.
    pub uptime_seconds: u64,
    /// Clients connected now.
    pub connections: u64,
    /// Of those, idle connections parked without a task.
    pub connections_parked: u64,
    /// Sessions held, connected or not.
    pub sessions: u64,
    /// Sessions kept in the store.
    pub persistent_sessions: u64,
    /// Subscriptions, shared group members included.
    pub subscriptions: u64,
    /// Retained messages.
    pub retained: u64,
    /// Messages queued for sessions.
    pub queued: u64,
    /// Weight of the queued messages, in bytes.
    pub queued_bytes: u64,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement.
    pub in_flight: u64,
    /// PUBLISH packets received.
    pub messages_received: u64,
    /// PUBLISH packets sent.
    pub messages_sent: u64,
    /// Messages dropped (full queues, too large for the client).
    pub messages_dropped: u64,
    /// Messages that expired before delivery.
    pub messages_expired: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// CONNECTs accepted.
    pub connects: u64,
    /// CONNECTs refused for their credentials.
    pub auth_failures: u64,
}

/// Broker-wide figures.
#[utoipa::path(
    get, path = "/api/v1/stats", tag = "broker",
    responses(
        (status = 200, description = "The figures", body = Stats),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
    )
)]
pub(crate) async fn stats(State(ctx): State<Ctx>) -> Json<Stats> {
    let s = &ctx.state;
    let m = &s.metrics;
    let t = s.totals();
    Json(Stats {
        version: starling_broker::VERSION.to_string(),
        uptime_seconds: s.started.elapsed().as_secs(),
        connections: Metrics::get(&m.clients_connected),
        connections_parked: s.parked_connections() as u64,
        sessions: t.sessions as u64,
        persistent_sessions: t.persistent_sessions as u64,
        subscriptions: s.subscription_count() as u64,
        retained: s.retained_count() as u64,
        queued: t.queued as u64,
        queued_bytes: t.queued_bytes as u64,
        in_flight: t.in_flight as u64,
        messages_received: m.received.total(),
        messages_sent: m.sent.total(),
        messages_dropped: m.messages_dropped(),
        messages_expired: m.messages_expired(),
        bytes_received: Metrics::get(&m.bytes_received),
        bytes_sent: Metrics::get(&m.bytes_sent),
        connects: Metrics::get(&m.connects),
        auth_failures: Metrics::get(&m.auth_failures),
    })
}

/// An MQTT listener.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listener {
    /// Its URL as configured.
    pub url: String,
    /// `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub transport: String,
    /// The bound address, `ip:port`.
    pub address: Option<String>,
    /// Clients connected through it now.
    pub connections: u64,
    /// CONNECTs accepted through it.
    pub connects: u64,
}

/// The MQTT listeners, in configuration order.
#[utoipa::path(
    get, path = "/api/v1/listeners", tag = "broker",
    responses(
        (status = 200, description = "The listeners", body = [Listener]),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
    )
)]
pub(crate) async fn listeners(State(ctx): State<Ctx>) -> Json<Vec<Listener>> {
    Json(
        ctx.state
            .listeners()
            .iter()
            .map(|l| Listener {
                url: l.url.clone(),
                transport: l.transport.to_string(),
                address: l.local_addr.map(|a| a.to_string()),
                connections: l.connected.total(),
                connects: l.connects.total(),
            })
            .collect(),
    )
}

/// What a reload did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    /// Always true: a failed reload answers 422.
    pub reloaded: bool,
}

/// Reloads what SIGHUP reloads: TLS certificates and keys, the password and
/// ACL files, and the API token file. A reload that fails changes nothing.
#[utoipa::path(
    post, path = "/api/v1/reload", tag = "broker",
    responses(
        (status = 200, description = "Reloaded", body = Reloaded),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
        (status = 422, description = "A file is not valid; the previous ones stay", body = ApiError),
    )
)]
pub(crate) async fn reload(State(ctx): State<Ctx>) -> Result<Json<Reloaded>, ApiError> {
    let reload = ctx.reload.clone();
    let tokens = ctx.tokens.clone();
    let done = tokio::task::spawn_blocking(move || {
        reload.reload().map_err(|e| e.to_string())?;
        tokens.reload().map_err(|e| e.to_string())
    })
    .await;
    match done {
        Ok(Ok(())) => {
            tracing::info!("reloaded through the admin API");
            Ok(Json(Reloaded { reloaded: true }))
        }
        Ok(Err(message)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            message,
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            e.to_string(),
        )),
    }
}

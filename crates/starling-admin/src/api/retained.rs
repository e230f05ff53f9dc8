//! `/api/v1/retained`: browsing retained messages by topic filter, and
//! deleting one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{text, ApiError, Meta, Paging, Path, Query};
use crate::Ctx;

/// Most retained messages one listing looks at (it sorts them by topic to
/// page them): a `#` listing of a broker with millions stays bounded.
const SCAN_LIMIT: usize = 100_000;

/// A retained message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Retained {
    /// Its topic.
    pub topic: String,
    /// Its QoS.
    pub qos: u8,
    /// The payload as text, when it is UTF-8.
    pub payload: Option<String>,
    /// The payload, base64-encoded (always present).
    pub payload_base64: String,
    /// Payload size in bytes.
    pub size: u64,
    /// The publisher's client id, when a client published it.
    pub publisher: Option<String>,
}

/// A page of retained messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetainedPage {
    /// The retained messages of this page, by topic.
    pub data: Vec<Retained>,
    /// Where the page sits (`count` is at most 100000: a listing looks at
    /// no more retained messages than that).
    pub meta: Meta,
}

/// Which retained messages to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RetainedFilter {
    /// A topic filter (wildcards allowed, no shared subscription), at most
    /// 2048 characters and 128 levels; default `#`.
    #[param(
        min_length = 1,
        max_length = 2048,
        pattern = r"^(#|([^#+/\u0000]*|\+)((/([^#+/\u0000]*|\+)){0,127}|(/([^#+/\u0000]*|\+)){0,126}/#))$"
    )]
    pub filter: Option<String>,
}

/// Lists retained messages whose topic matches a filter, by topic.
#[utoipa::path(
    get, path = "/api/v1/retained", tag = "retained",
    params(Paging, RetainedFilter),
    responses(
        (status = 200, description = "A page of retained messages", body = RetainedPage),
        (status = 400, description = "A bad filter or page", body = ApiError),
        (status = 414, description = "The request's URI is too long"),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
    )
)]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    Query(paging): Query<Paging>,
    Query(filter): Query<RetainedFilter>,
) -> Result<Json<RetainedPage>, ApiError> {
    let filter = filter.filter.unwrap_or_else(|| "#".to_string());
    if filter.chars().count() > 2048 || filter.contains('\0') {
        return Err(ApiError::bad_request(
            "filter longer than 2048 characters, or with a NUL",
        ));
    }
    starling_codec::topic::validate_filter(&filter)
        .map_err(|e| ApiError::bad_request(format!("filter {filter:?}: {e}")))?;
    if starling_codec::topic::levels(&filter) > ctx.state.config.max_topic_levels {
        return Err(ApiError::bad_request("filter deeper than max-topic-levels"));
    }
    let mut found = ctx.state.retained_matching(&filter, SCAN_LIMIT);
    found.sort_by(|a, b| a.topic.cmp(&b.topic));
    let messages: Vec<Retained> = found
        .iter()
        .map(|m| Retained {
            topic: text(&m.topic),
            qos: m.qos as u8,
            payload: std::str::from_utf8(&m.payload).ok().map(String::from),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
            size: m.payload.len() as u64,
            publisher: m.publisher.as_ref().map(text),
        })
        .collect();
    let (data, meta) = paging.apply(messages)?;
    Ok(Json(RetainedPage { data, meta }))
}

/// The topic of a retained message, in the path.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct TopicPath {
    /// The topic: no wildcards, no NUL, at most 128 levels (slashes go in
    /// the path as they are).
    #[param(
        min_length = 1,
        max_length = 2048,
        pattern = r"^[^#+/\u0000]*(/[^#+/\u0000]*){0,127}$"
    )]
    topic: String,
}

/// Deletes the retained message on a topic (the path after `/retained/` is
/// the topic, slashes included).
#[utoipa::path(
    delete, path = "/api/v1/retained/{topic}", tag = "retained",
    params(TopicPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a valid topic name", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
        (status = 404, description = "No retained message on this topic", body = ApiError),
    )
)]
pub(crate) async fn delete_one(
    State(ctx): State<Ctx>,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    super::ops::check_topic(&ctx, &topic)?;
    if ctx.state.delete_retained(&topic) {
        tracing::info!(%topic, "retained message deleted through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )))
    }
}

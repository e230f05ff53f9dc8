//! `/api/v1/sessions` (every session, connected or not; ending one) and
//! `/api/v1/subscriptions`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::clients::{client, Client};
use super::{text, ApiError, Meta, Paging, Path, Query};
use crate::Ctx;

/// A page of sessions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionPage {
    /// The sessions of this page, by client id.
    pub data: Vec<Client>,
    /// Where the page sits.
    pub meta: Meta,
}

/// Filters of the session list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionFilter {
    /// Only client ids that start with this.
    pub client_id_prefix: Option<String>,
    /// Only connected (`true`) or offline (`false`) sessions.
    pub connected: Option<bool>,
}

/// Lists every session, connected or not, by client id.
#[utoipa::path(
    get, path = "/api/v1/sessions", tag = "sessions",
    params(Paging, SessionFilter),
    responses(
        (status = 200, description = "A page of sessions", body = SessionPage),
        (status = 400, description = "A bad filter or page", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
    )
)]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    Query(paging): Query<Paging>,
    Query(filter): Query<SessionFilter>,
) -> Result<Json<SessionPage>, ApiError> {
    let sessions: Vec<Client> = ctx
        .state
        .session_views()
        .into_iter()
        .filter(|v| {
            filter
                .client_id_prefix
                .as_ref()
                .is_none_or(|p| v.client_id.starts_with(p.as_str()))
                && filter.connected.is_none_or(|c| c == v.connection.is_some())
        })
        .map(|v| client(&ctx.state, v))
        .collect();
    let (data, meta) = paging.apply(sessions)?;
    Ok(Json(SessionPage { data, meta }))
}

/// Ends a session now, with its queue and subscriptions; a connected client
/// is disconnected first (MQTT 5: DISCONNECT 0x98).
#[utoipa::path(
    delete, path = "/api/v1/sessions/{client_id}", tag = "sessions",
    params(("client_id" = String, Path, description = "The client identifier")),
    responses(
        (status = 204, description = "Ended"),
        (status = 400, description = "A bad path", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
        (status = 404, description = "No session with this client id", body = ApiError),
    )
)]
pub(crate) async fn end(
    State(ctx): State<Ctx>,
    Path(client_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if ctx.state.end_session(&client_id) {
        tracing::info!(%client_id, "session ended through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no session with client id {client_id:?}"
        )))
    }
}

/// One subscription of one session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionRow {
    /// The subscriber's client id.
    pub client_id: String,
    /// The topic filter, with `$share/GROUP/` for a shared subscription.
    pub filter: String,
    /// The granted QoS.
    pub qos: u8,
}

/// A page of subscriptions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionPage {
    /// The subscriptions of this page, by client id then filter.
    pub data: Vec<SubscriptionRow>,
    /// Where the page sits.
    pub meta: Meta,
}

/// Filters of the subscription list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubscriptionFilter {
    /// Only this client's subscriptions.
    pub client_id: Option<String>,
    /// Only subscriptions with exactly this topic filter.
    pub filter: Option<String>,
}

/// Lists subscriptions, by client id then filter.
#[utoipa::path(
    get, path = "/api/v1/subscriptions", tag = "sessions",
    params(Paging, SubscriptionFilter),
    responses(
        (status = 200, description = "A page of subscriptions", body = SubscriptionPage),
        (status = 400, description = "A bad filter or page", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
    )
)]
pub(crate) async fn subscriptions(
    State(ctx): State<Ctx>,
    Query(paging): Query<Paging>,
    Query(filter): Query<SubscriptionFilter>,
) -> Result<Json<SubscriptionPage>, ApiError> {
    let views = match &filter.client_id {
        Some(id) => ctx.state.session_view(id).into_iter().collect(),
        None => ctx.state.session_views(),
    };
    let rows: Vec<SubscriptionRow> = views
        .iter()
        .flat_map(|v| {
            v.subscriptions.iter().map(|(f, q)| SubscriptionRow {
                client_id: text(&v.client_id),
                filter: text(f),
                qos: *q as u8,
            })
        })
        .filter(|r| filter.filter.as_ref().is_none_or(|f| &r.filter == f))
        .collect();
    let (data, meta) = paging.apply(rows)?;
    Ok(Json(SubscriptionPage { data, meta }))
}

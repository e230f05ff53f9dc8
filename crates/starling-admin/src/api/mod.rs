//! The admin REST API under `/api/v1`: JSON in and out, errors as
//! `{"code", "message"}` with a 4xx status, lists paged with `page` and
//! `limit`. [`ApiDoc`] is its OpenAPI 3 document, built from the handlers'
//! annotations and served at `/api/v1/openapi.json`.

mod clients;
mod ops;
mod retained;
mod sessions;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

pub use crate::error::ApiError;
use crate::Ctx;

/// The API's OpenAPI 3 document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Starling admin API",
        description = "Clients, sessions, subscriptions and retained messages of a Starling MQTT broker, and the operator's actions on them."
    ),
    paths(
        clients::list, clients::get_one, clients::kick,
        sessions::list, sessions::end,
        sessions::subscriptions,
        retained::list, retained::delete_one,
        ops::publish, ops::stats, ops::listeners, ops::reload,
    ),
    components(schemas(
        ApiError, Meta,
        clients::Client, clients::ClientPage, clients::Connection, clients::Subscription,
        sessions::SessionPage, sessions::SubscriptionRow, sessions::SubscriptionPage,
        retained::Retained, retained::RetainedPage,
        ops::PublishRequest,
        ops::UserProperty, ops::PublishResult, ops::Stats, ops::Listener, ops::Reloaded,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "clients"), (name = "sessions"), (name = "retained"), (name = "broker")),
)]
pub struct ApiDoc;

/// Declares the bearer token scheme.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub(crate) fn routes(ctx: Ctx) -> Router<Ctx> {
    let protected = Router::new()
        .route("/clients", get(clients::list))
        .route(
            "/clients/{client_id}",
            get(clients::get_one).delete(clients::kick),
        )
        .route("/sessions", get(sessions::list))
        .route("/sessions/{client_id}", delete(sessions::end))
        .route("/subscriptions", get(sessions::subscriptions))
        .route("/retained", get(retained::list))
        .route("/retained/{*topic}", delete(retained::delete_one))
        .route("/publish", post(ops::publish))
        .route("/stats", get(ops::stats))
        .route("/listeners", get(ops::listeners))
        .route("/reload", post(ops::reload))
        .route_layer(axum::middleware::from_fn_with_state(
            ctx,
            crate::access::require,
        ));
    Router::new()
        .route("/openapi.json", get(openapi))
        .merge(protected)
        .fallback(not_found)
}

async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

/// The OpenAPI document as served: what the annotations give, plus what they
/// cannot say: a publish names its payload one way, not both, and a payload
/// marked as UTF-8 comes as text.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(publish) = doc.pointer_mut("/components/schemas/PublishRequest") {
        publish["allOf"] = serde_json::json!([
            {"not": {"required": ["payload", "payload_base64"]}},
            {
                "if": {
                    "properties": {"payload_format_indicator": {"const": true}},
                    "required": ["payload_format_indicator"]
                },
                "then": {"not": {"required": ["payload_base64"]}}
            }
        ]);
    }
    doc
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API path")
}

/// A query string, refused with a JSON 400 when it does not parse.
pub(crate) struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// A path parameter, refused with a JSON 400 when it does not parse.
pub(crate) struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

/// A JSON body, refused with a JSON 400 (bad syntax, wrong content type) or
/// 422 (the wrong shape).
pub(crate) struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|j| Body(j.0))
            .map_err(|e: JsonRejection| match e {
                JsonRejection::JsonDataError(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable",
                    e.body_text(),
                ),
                _ => ApiError::bad_request(e.body_text()),
            })
    }
}

/// Paging of a list: `page` from 1, `limit` from 1 to 1000 (default 100).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Paging {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Where a page sits in its list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Meta {
    /// This page's number, from 1.
    pub page: u32,
    /// Items per page.
    pub limit: u32,
    /// Items in the whole list (after filters).
    pub count: u64,
    /// Whether a later page has items.
    pub hasnext: bool,
}

impl Paging {
    /// The page of `items`, and its [`Meta`]; 400 for a bad page or limit.
    pub(crate) fn apply<T>(&self, items: Vec<T>) -> Result<(Vec<T>, Meta), ApiError> {
        let page = self.page.unwrap_or(1);
        let limit = self.limit.unwrap_or(100);
        if !(1..=1_000_000).contains(&page) {
            return Err(ApiError::bad_request("page must be 1 to 1000000"));
        }
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request("limit must be 1 to 1000"));
        }
        let count = items.len() as u64;
        let start = (u64::from(page) - 1).saturating_mul(u64::from(limit));
        let end = start.saturating_add(u64::from(limit));
        let data: Vec<T> = items
            .into_iter()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(limit as usize)
            .collect();
        Ok((
            data,
            Meta {
                page,
                limit,
                count,
                hasnext: end < count,
            },
        ))
    }
}

/// A UTF-8 string as JSON shows it (client ids, user names and topics are
/// UTF-8 by the MQTT specification).
pub(crate) fn text(s: &starling_codec::ByteString) -> String {
    s.to_string()
}

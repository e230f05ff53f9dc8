//! The API's error answer: a 4xx status with `{"code", "message"}` as JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An API error: a 4xx (or 5xx) status with `{"code", "message"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// A stable, machine-readable code: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `quota_exceeded`, `unprocessable`,
    /// `unavailable`.
    code: &'static str,
    /// What went wrong, for people.
    message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

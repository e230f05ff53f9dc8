//! `/healthz` (the process serves HTTP) and `/readyz` (the broker takes
//! clients: its listeners are bound, its store's writer runs, and it is not
//! shutting down). Both answer JSON; `/readyz` answers 503 with the reason
//! when not ready, so a load balancer stops sending clients, and 200 with
//! `degraded` and the reason while a cluster node is cut from the others.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::Ctx;

/// What the health endpoints answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok`, `degraded` (`/readyz`: serving, but cut from the cluster),
    /// or `unavailable`.
    status: &'static str,
    /// Why not ready, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

pub(crate) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
    })
}

async fn readyz(State(ctx): State<Ctx>) -> (StatusCode, Json<Health>) {
    match not_ready(&ctx) {
        // Cut from the rest of its cluster the node still serves clean
        // sessions (persistent ones are refused or sent away): 200, so that
        // a load balancer whose every node is cut off (all of NATS away)
        // still has somewhere to send clients, with the reason.
        None => {
            let degraded = ctx.state.cluster().unavailable();
            (
                StatusCode::OK,
                Json(Health {
                    status: if degraded.is_some() { "degraded" } else { "ok" },
                    reason: degraded,
                }),
            )
        }
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                reason: Some(reason),
            }),
        ),
    }
}

/// Why the broker does not take clients now, if it does not.
fn not_ready(ctx: &Ctx) -> Option<String> {
    if ctx.shutdown.is_shutting_down() {
        return Some("the broker is shutting down".into());
    }
    if ctx.state.is_draining() {
        return Some("the broker is handing its sessions to other nodes before it stops".into());
    }
    let listeners = ctx.state.listeners();
    if listeners.is_empty() {
        return Some("no MQTT listener is bound".into());
    }
    if let Some(l) = listeners.iter().find(|l| l.local_addr.is_none()) {
        return Some(format!("listener {} is not bound", l.url));
    }
    if ctx.state.store().is_some_and(|s| !s.is_running()) {
        return Some("the store's writer has stopped".into());
    }
    None
}

//! `/api/v1/clients`: the connected clients, one client, and kicking one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use starling_broker::admin::SessionView;
use starling_broker::BrokerState;

use super::{text, ApiError, Meta, Paging, Path, Query};
use crate::Ctx;

/// The connection of a connected client.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Connection {
    /// The client's address, `ip:port` (as the PROXY protocol gave it, if used).
    pub address: String,
    /// The URL of the listener it came through (absent for in-process connections).
    pub listener: Option<String>,
    /// The listener's transport: `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub transport: Option<String>,
    /// The MQTT version: `3.1`, `3.1.1` or `5.0`.
    pub protocol: String,
    /// The protocol level: 3, 4 or 5.
    pub protocol_level: u8,
    /// The keep alive in force, in seconds.
    pub keep_alive: u16,
    /// When it connected, in seconds since the Unix epoch.
    pub connected_at: u64,
}

/// A subscription of a session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    /// The topic filter, with `$share/GROUP/` for a shared subscription.
    pub filter: String,
    /// The granted QoS.
    pub qos: u8,
}

/// A client's session, and its connection when connected.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Client {
    /// The client identifier.
    pub client_id: String,
    /// The user name of its last connection.
    pub username: Option<String>,
    /// Whether a connection is attached.
    pub connected: bool,
    /// The attached connection.
    pub connection: Option<Connection>,
    /// Whether the session is kept in the store and outlives its connection.
    pub persistent: bool,
    /// Session Expiry Interval, in seconds (4294967295: never).
    #[schema(value_type = i64, minimum = 0, maximum = 4294967295_i64)]
    pub expiry_interval: u32,
    /// Messages queued, not yet sent.
    pub queued: u64,
    /// Weight of the queued messages, in bytes.
    pub queued_bytes: u64,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement.
    pub in_flight: u64,
    /// Messages dropped for this session (full queue, too large for the client).
    pub dropped: u64,
    /// Its subscriptions.
    pub subscriptions: Vec<Subscription>,
}

/// A page of clients.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClientPage {
    /// The clients of this page, by client id.
    pub data: Vec<Client>,
    /// Where the page sits.
    pub meta: Meta,
}

/// Filters of the client list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ClientFilter {
    /// Only client ids that start with this.
    pub client_id_prefix: Option<String>,
    /// Only this user name.
    pub username: Option<String>,
    /// Only clients of the listener with this URL.
    pub listener: Option<String>,
    /// Only this protocol level: 3 (3.1), 4 (3.1.1) or 5 (5.0).
    #[param(minimum = 3, maximum = 5)]
    pub protocol: Option<u8>,
}

/// The view of a session, for JSON.
pub(crate) fn client(state: &BrokerState, v: SessionView) -> Client {
    let connection = v.connection.map(|c| {
        let listener = state.listeners().get(usize::from(c.listener));
        Connection {
            address: c.peer().to_string(),
            listener: listener.map(|l| l.url.clone()),
            transport: listener.map(|l| l.transport.to_string()),
            protocol: match c.protocol.level() {
                3 => "3.1".into(),
                4 => "3.1.1".into(),
                _ => "5.0".into(),
            },
            protocol_level: c.protocol.level(),
            keep_alive: c.keep_alive,
            connected_at: c.connected_at(),
        }
    });
    Client {
        client_id: text(&v.client_id),
        username: v.username.as_ref().map(text),
        connected: connection.is_some(),
        connection,
        persistent: v.persistent,
        expiry_interval: v.expiry_interval,
        queued: v.queued as u64,
        queued_bytes: v.queued_bytes as u64,
        in_flight: v.in_flight as u64,
        dropped: v.dropped,
        subscriptions: v
            .subscriptions
            .iter()
            .map(|(f, q)| Subscription {
                filter: text(f),
                qos: *q as u8,
            })
            .collect(),
    }
}

impl ClientFilter {
    fn admits(&self, c: &Client) -> bool {
        let conn = c.connection.as_ref();
        self.client_id_prefix
            .as_ref()
            .is_none_or(|p| c.client_id.starts_with(p.as_str()))
            && self
                .username
                .as_ref()
                .is_none_or(|u| c.username.as_deref() == Some(u.as_str()))
            && self
                .listener
                .as_ref()
                .is_none_or(|l| conn.and_then(|c| c.listener.as_deref()) == Some(l.as_str()))
            && self
                .protocol
                .is_none_or(|p| conn.is_some_and(|c| c.protocol_level == p))
    }
}

/// Lists the connected clients, by client id.
#[utoipa::path(
    get, path = "/api/v1/clients", tag = "clients",
    params(Paging, ClientFilter),
    responses(
        (status = 200, description = "A page of connected clients", body = ClientPage),
        (status = 400, description = "A bad filter or page", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
    )
)]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    Query(paging): Query<Paging>,
    Query(filter): Query<ClientFilter>,
) -> Result<Json<ClientPage>, ApiError> {
    if filter.protocol.is_some_and(|p| !(3..=5).contains(&p)) {
        return Err(ApiError::bad_request("protocol must be 3, 4 or 5"));
    }
    let clients: Vec<Client> = ctx
        .state
        .session_views()
        .into_iter()
        .filter(|v| v.connection.is_some())
        .map(|v| client(&ctx.state, v))
        .filter(|c| filter.admits(c))
        .collect();
    let (data, meta) = paging.apply(clients)?;
    Ok(Json(ClientPage { data, meta }))
}

/// One client (connected or not: its session).
#[utoipa::path(
    get, path = "/api/v1/clients/{client_id}", tag = "clients",
    params(("client_id" = String, Path, description = "The client identifier")),
    responses(
        (status = 200, description = "The client", body = Client),
        (status = 400, description = "A bad path", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
        (status = 404, description = "No session with this client id", body = ApiError),
    )
)]
pub(crate) async fn get_one(
    State(ctx): State<Ctx>,
    Path(client_id): Path<String>,
) -> Result<Json<Client>, ApiError> {
    match ctx.state.session_view(&client_id) {
        Some(v) => Ok(Json(client(&ctx.state, v))),
        None => Err(ApiError::not_found(format!(
            "no session with client id {client_id:?}"
        ))),
    }
}

/// Disconnects a client: MQTT 5 clients get DISCONNECT 0x98 (Administrative
/// action); its will is published and its session stays as its expiry says.
#[utoipa::path(
    delete, path = "/api/v1/clients/{client_id}", tag = "clients",
    params(("client_id" = String, Path, description = "The client identifier")),
    responses(
        (status = 204, description = "Disconnected"),
        (status = 400, description = "A bad path", body = ApiError),
        (status = 401, description = "No or a wrong token", body = ApiError),
        (status = 403, description = "Not from loopback (no token file)", body = ApiError),
        (status = 404, description = "The client is not connected", body = ApiError),
    )
)]
pub(crate) async fn kick(
    State(ctx): State<Ctx>,
    Path(client_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if ctx.state.kick(&client_id) {
        tracing::info!(%client_id, "client disconnected through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "client {client_id:?} is not connected"
        )))
    }
}

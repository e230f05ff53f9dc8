//! The CONNECT handshake: reading the first packet, validating the client id,
//! authenticating, attaching the session and answering with CONNACK.

use std::sync::Arc;
use std::time::Duration;

use starling_codec::{
    topic, ByteString, ConnAck, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{Client, Close, OUT_ALIAS_CAP};
use super::conn::Connection;
use crate::auth::{
    Admission, AuthDecision, Authenticator, Credentials, Grant, ListenerAuthenticator, Login,
};
use crate::cluster::Ownership;
use crate::events::Event;
use crate::lifecycle;
use crate::session::{ConnInfo, Link};

/// A claim that took this long or longer is followed by a look at the
/// connection: a client that closed it meanwhile gave up on its CONNECT.
const GAVE_UP_AFTER: Duration = Duration::from_secs(1);

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    /// Reads the first packet, which must be CONNECT. On a malformed CONNECT the
    /// CONNACK the spec allows is left in the write buffer and an error returned.
    pub(crate) async fn read_connect(&mut self) -> Result<Option<Box<Connect>>, Close> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Packet::Connect(connect))) => return Ok(Some(connect)),
                Ok(Some(other)) => {
                    let msg = format!("first packet {:?}", other.packet_type());
                    return Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, msg));
                }
                Ok(None) => {}
                Err(err) => {
                    self.refuse_malformed(&err);
                    return Err(Close::Protocol(err.reason_code(), err.to_string()));
                }
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Ok(None),
            }
        }
    }

    /// Writes the CONNACK a malformed CONNECT gets, where the spec allows one.
    fn refuse_malformed(&mut self, err: &DecodeError) {
        match err {
            // [MQTT-3.1.2-2]: answer an unsupported level in a form its version reads.
            DecodeError::UnsupportedProtocolLevel { level, .. } if *level < 5 => {
                let ack = ConnAck {
                    reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    ..ConnAck::default()
                };
                self.send(&Packet::ConnAck(ack), ProtocolVersion::V3_1_1);
            }
            DecodeError::UnsupportedProtocolLevel { .. } => {
                self.connack_v5(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
            }
            // A bad protocol name: close without answering ([MQTT-3.1.2-1]).
            DecodeError::InvalidProtocolName(_) => {}
            _ if self.decoder.version() == Some(ProtocolVersion::V5) => {
                self.connack_v5(err.reason_code());
            }
            // 3.1.1 has no return code for a malformed CONNECT: close silently.
            _ => {}
        }
    }

    fn connack_v5(&mut self, code: ReasonCode) {
        let ack = ConnAck {
            reason_code: code,
            ..ConnAck::default()
        };
        self.send(&Packet::ConnAck(ack), ProtocolVersion::V5);
    }

    /// Writes a refusal CONNACK for `connect`'s version.
    pub(super) fn refuse(&mut self, connect: &Connect, code: ReasonCode, why: &str) {
        tracing::info!(
            peer = %self.peer,
            client_id = %connect.client_id,
            reason = %code,
            "connection refused: {why}"
        );
        let ack = ConnAck {
            reason_code: code,
            ..ConnAck::default()
        };
        self.send(&Packet::ConnAck(ack), connect.protocol);
    }

    /// Counts a refused authentication and tells observers.
    pub(super) fn auth_failed(&self, connect: &Connect, reason: ReasonCode) {
        crate::metrics::Metrics::add(&self.broker.metrics.auth_failures, 1);
        self.broker
            .events
            .emit(crate::events::EventKind::AuthFailed, || Event::AuthFailed {
                client_id: connect.client_id.clone(),
                username: connect.username.clone(),
                peer: self.peer,
                reason,
            });
    }

    /// Checks credentials that need the slow path (password hashing): counted
    /// by the failed-login limiter first, delayed as it says, then run on the
    /// broker's authentication pool. `None` when the limiter refuses the
    /// attempt unchecked (a brute-force rate: 0x9F).
    async fn check_slowly(
        &self,
        connect: &Connect,
        authenticator: Arc<dyn Authenticator>,
    ) -> Option<(AuthDecision, Option<Grant>)> {
        let username = connect.username.as_ref().map(|u| u.to_string());
        let limiter = &self.broker.auth_limiter;
        let Admission::Check { delay, ticket } = limiter.admit(self.peer.ip(), username.as_deref())
        else {
            return None;
        };
        if !delay.is_zero() {
            tracing::debug!(peer = %self.peer, ?delay, "authentication slowed down");
            tokio::time::sleep(delay).await;
        }
        let ctx = crate::transport::context();
        let login = Login {
            client_id: connect.client_id.to_string(),
            username,
            password: connect.password.clone(),
            peer: self.peer,
            protocol: connect.protocol,
            listener: self
                .broker
                .listener(ctx.listener)
                .map(|l| l.url.clone())
                .unwrap_or_default(),
            cert_common_name: ctx.identity.clone(),
        };
        let pool = &self.broker.auth_pool;
        let (decision, grant) = match authenticator.chain() {
            Some(chain) => chain.decide(&login, pool).await,
            None => (
                pool.run(move || authenticator.authenticate(&login.credentials()))
                    .await
                    .unwrap_or(AuthDecision::NotAuthorized),
                None,
            ),
        };
        if decision == AuthDecision::Allow {
            ticket.succeeded();
        }
        Some((decision, grant))
    }

    /// Validates, authenticates and attaches a client; writes the CONNACK.
    /// Returns `None` when the connection was refused.
    pub(crate) async fn accept(
        &mut self,
        mut connect: Box<Connect>,
        over_limit: bool,
    ) -> Option<Client> {
        let v = connect.protocol;
        let broker = self.broker.clone();
        let config = &broker.config;
        if over_limit {
            self.refuse(&connect, ReasonCode::QUOTA_EXCEEDED, "too many connections");
            return None;
        }
        // Client identifier rules.
        let id_len = connect.client_id.len();
        let too_long = config.max_client_id_len > 0 && id_len > config.max_client_id_len;
        let v31_bad = v == ProtocolVersion::V3_1 && !(1..=23).contains(&id_len);
        let empty_persistent = v == ProtocolVersion::V3_1_1 && id_len == 0 && !connect.clean_start;
        if too_long || v31_bad || empty_persistent {
            self.refuse(
                &connect,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "client identifier not valid",
            );
            return None;
        }
        // Enhanced authentication: SCRAM-SHA-256, when configured.
        let mut scram_final = None;
        if connect.properties.authentication_method.is_some() {
            let (user, server_final) = self.scram_login(&connect).await?;
            connect.username = Some(ByteString::from(user));
            connect.password = None;
            scram_final = Some(server_final);
        }
        // What outlives the handshake is copied out of the receive buffer.
        connect.client_id = crate::message::owned(&connect.client_id);
        connect.username = connect.username.as_ref().map(crate::message::owned);
        if let Some(will) = connect.will.as_mut() {
            will.topic = crate::message::owned(&will.topic);
            will.payload = bytes::Bytes::copy_from_slice(&will.payload);
        }
        let assigned = id_len == 0;
        if assigned {
            connect.client_id =
                ByteString::from(format!("starling-{:016x}", rand::random::<u64>()));
        }
        // Listener context (crate::transport): a verified certificate identity
        // replaces the user name and password; a listener's own anonymous
        // setting decides for clients without a user name.
        let ctx = crate::transport::context();
        if let Some(will) = &connect.will {
            // Counted as the broker will see it: under the listener's mountpoint.
            let mount = ctx
                .mountpoint
                .as_deref()
                .map_or(0, |m| topic::levels(m) - 1);
            let mount_len = ctx.mountpoint.as_deref().map_or(0, |m| m.len());
            let deep = topic::levels(&will.topic) + mount > config.max_topic_levels
                || will.topic.len() + mount_len > config.max_topic_length;
            if deep {
                // MQTT 5 has a reason code for it; 3.x has none, so the
                // connection is closed without a CONNACK.
                if v.is_v5() {
                    self.refuse(
                        &connect,
                        ReasonCode::TOPIC_NAME_INVALID,
                        "will topic has too many levels, or is too long",
                    );
                } else {
                    tracing::info!(peer = %self.peer, client_id = %connect.client_id, "connection refused: will topic has too many levels");
                }
                return None;
            }
        }
        if let Some(identity) = &ctx.identity {
            connect.username = Some(ByteString::from(identity.as_str()));
            connect.password = None;
        }
        let listener_decision = match (&ctx.identity, &connect.username, ctx.allow_anonymous) {
            (Some(_), _, _) => Some(AuthDecision::Allow),
            (None, None, Some(true)) => Some(AuthDecision::Allow),
            (None, None, Some(false)) => Some(AuthDecision::NotAuthorized),
            _ => None,
        };
        // Authentication runs on a blocking thread: password hashing is slow on
        // purpose. A listener with its own password file uses it instead of the
        // broker's authenticator.
        let authenticator: Arc<dyn Authenticator> = match &ctx.passwords {
            Some(file) => Arc::new(ListenerAuthenticator {
                allow_anonymous: ctx.allow_anonymous.unwrap_or(config.allow_anonymous),
                passwords: file.current(),
            }),
            None => self.broker.authenticator.read().clone(),
        };
        let quick = if listener_decision.is_some() {
            listener_decision
        } else {
            let credentials = Credentials {
                client_id: &connect.client_id,
                username: connect.username.as_deref(),
                password: connect.password.as_deref(),
                peer: self.peer,
            };
            (!authenticator.is_slow(&credentials)).then(|| authenticator.authenticate(&credentials))
        };
        let quick = if scram_final.is_some() {
            Some(AuthDecision::Allow)
        } else {
            quick
        };
        let (decision, grant) = match quick {
            Some(decision) => (decision, None),
            None => match self.check_slowly(&connect, authenticator).await {
                Some(decided) => decided,
                None => {
                    self.refuse(
                        &connect,
                        ReasonCode::CONNECTION_RATE_EXCEEDED,
                        "failed-authentication limit: another attempt is being checked",
                    );
                    self.auth_failed(&connect, ReasonCode::CONNECTION_RATE_EXCEEDED);
                    return None;
                }
            },
        };
        match decision {
            AuthDecision::Allow => {}
            AuthDecision::BadCredentials => {
                self.refuse(
                    &connect,
                    ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                    "bad user name or password",
                );
                self.auth_failed(&connect, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
                return None;
            }
            AuthDecision::NotAuthorized => {
                self.refuse(&connect, ReasonCode::NOT_AUTHORIZED, "not authorized");
                self.auth_failed(&connect, ReasonCode::NOT_AUTHORIZED);
                return None;
            }
        }
        // Rules that ask another system learn the will topic's answer now:
        // the will is checked, from memory, when it is published.
        let rules = grant
            .as_ref()
            .filter(|g| !g.superuser)
            .and_then(|g| g.rules.as_ref());
        if let (Some(rules), Some(will)) = (rules, &connect.will) {
            let topic = match &ctx.mountpoint {
                Some(m) => super::mount::topic(m, &will.topic),
                None => will.topic.clone(),
            };
            let check = crate::auth::Check {
                topic: &topic,
                access: crate::auth::Access::Write,
                qos: will.qos,
                retain: will.retain,
            };
            if let Some(fetch) = rules.prepare(&check) {
                fetch.await;
            }
        }
        // A part of the broker (a bridge) may use every topic.
        let grant = match ctx.internal {
            true => Some(Grant {
                superuser: true,
                ..Grant::default()
            }),
            false => grant,
        };
        let grant = grant.map(Arc::new);
        let broker = self.broker.clone();
        let config = &broker.config;
        // Keep alive: the configured maximum caps it (MQTT 5 is told via Server Keep Alive).
        let max_ka = config.max_keepalive;
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if max_ka > 0 && (keep_alive > max_ka || (keep_alive == 0 && max_ka < u16::MAX)) {
            keep_alive = max_ka;
            if v.is_v5() {
                server_keep_alive = Some(max_ka);
            }
        }
        let expiry_interval = if v.is_v5() {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            config.persistent_session_expiry.unwrap_or(u32::MAX)
        };
        if !self.broker.has_room_for_session(&connect.client_id) {
            crate::metrics::Metrics::add(&self.broker.metrics.sessions_refused, 1);
            self.refuse(
                &connect,
                ReasonCode::QUOTA_EXCEEDED,
                "the broker holds max-sessions sessions",
            );
            return None;
        }
        // The session is this node's to serve (a cluster takes it over from
        // another node first).
        let turn = self.broker.cluster().await_turn(&connect.client_id);
        if turn.await && self.peer_gone().await {
            // The client gave up on this CONNECT while an earlier claim of
            // its id here ran: claimed now, its id would be taken from the
            // connection it made since.
            tracing::info!(client_id = %connect.client_id, peer = %self.peer, "the client left while its CONNECT waited for an earlier one: not served");
            return None;
        }
        let cluster = self.broker.cluster();
        let persistent = expiry_interval > 0;
        let claimed_at = tokio::time::Instant::now();
        match cluster.claim(&connect.client_id, persistent).await {
            Ownership::Local if claimed_at.elapsed() >= GAVE_UP_AFTER && self.peer_gone().await => {
                // The client gave up on this CONNECT while the cluster
                // claimed its id (and may be connected elsewhere by now):
                // nothing attaches, so no will and no second connection.
                tracing::info!(client_id = %connect.client_id, peer = %self.peer, "the client left while its CONNECT was served: not attached");
                return None;
            }
            Ownership::Local => {}
            Ownership::Unavailable => {
                self.refuse(
                    &connect,
                    ReasonCode::SERVER_UNAVAILABLE,
                    "the cluster is unavailable",
                );
                return None;
            }
            Ownership::Busy => {
                self.refuse(
                    &connect,
                    ReasonCode::SERVER_BUSY,
                    "another node is taking this client id over",
                );
                return None;
            }
        }
        let (session, present) = lifecycle::attach(
            &self.broker,
            &connect.client_id,
            connect.clean_start,
            expiry_interval,
            connect.username.clone(),
            ctx.acl.clone(),
            grant.clone(),
            Link::with_info(
                self.conn_id,
                ConnInfo::new(self.peer, ctx.listener, v, keep_alive),
            ),
        );
        let mut ack = ConnAck {
            session_present: present,
            reason_code: ReasonCode::SUCCESS,
            ..ConnAck::default()
        };
        if v.is_v5() {
            let p = &mut ack.properties;
            p.receive_maximum =
                (config.receive_maximum < u16::MAX).then_some(config.receive_maximum);
            p.maximum_packet_size = (config.max_packet_size
                < starling_codec::DEFAULT_MAX_PACKET_SIZE as u32)
                .then_some(config.max_packet_size);
            p.topic_alias_maximum =
                (config.topic_alias_maximum > 0).then_some(config.topic_alias_maximum);
            p.retain_available = (!config.retain_available).then_some(false);
            p.wildcard_subscription_available = Some(true);
            p.subscription_identifier_available = Some(true);
            p.shared_subscription_available = Some(true);
            p.server_keep_alive = server_keep_alive;
            if assigned {
                p.assigned_client_identifier = Some(connect.client_id.clone());
            }
            if let Some(server_final) = scram_final.take() {
                p.authentication_method = Some(starling_scram::METHOD.into());
                p.authentication_data = Some(server_final.into());
            }
            // Only when asked for [MQTT-3.1.2-28]; an empty setting gives none.
            let wants = connect.properties.request_response_information == Some(true);
            if wants && !config.response_information.is_empty() {
                let user = connect.username.as_deref().unwrap_or("");
                let info =
                    crate::auth::substitute(&config.response_information, &connect.client_id, user);
                p.response_information = Some(info.into());
            }
        }
        self.send(&Packet::ConnAck(ack), v);
        // Another node publishes it if this one dies.
        if let Some(will) = &connect.will {
            let conn = self.conn_id;
            self.broker.cluster().will(
                &connect.client_id,
                conn,
                Some((will, connect.username.as_deref())),
            );
        }
        self.broker
            .events
            .emit(crate::events::EventKind::ClientConnected, || {
                Event::ClientConnected {
                    client_id: connect.client_id.clone(),
                    username: connect.username.clone(),
                    peer: self.peer,
                    protocol: v,
                    session_present: present,
                }
            });
        tracing::info!(
            client_id = %connect.client_id,
            peer = %self.peer,
            version = %v,
            clean_start = connect.clean_start,
            session_present = present,
            keep_alive,
            "client connected"
        );
        let alias_max = if v.is_v5() {
            config.topic_alias_maximum
        } else {
            0
        };
        // Under a mountpoint the will topic gets the prefix too.
        let mut will = connect.will.take();
        if let (Some(w), Some(m)) = (will.as_mut(), &ctx.mountpoint) {
            w.topic = super::mount::topic(m, &w.topic);
        }
        let client = Client {
            version: v,
            username: connect.username.clone(),
            session,
            keep_alive: Duration::from_secs(u64::from(keep_alive)),
            will: will.map(Box::new),
            expiry_interval,
            // The window of unacknowledged messages towards the client: its
            // Receive Maximum, capped by `max-inflight-messages`.
            client_receive_max: connect
                .properties
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(config.max_inflight_messages)
                .min(u16::MAX - 1),
            client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            alias_max,
            out_alias_max: if v.is_v5() {
                connect
                    .properties
                    .topic_alias_maximum
                    .unwrap_or(0)
                    .min(OUT_ALIAS_CAP)
            } else {
                0
            },
            aliases: None,
            acl: ctx.acl.clone(),
            grant,
            problem_info: connect.properties.request_problem_information != Some(false),
            enhanced_auth: connect.properties.authentication_method.is_some(),
            mountpoint: ctx.mountpoint.clone().map(Box::new),
            listener: ctx.listener,
        };
        if present {
            // A queue left on disk at startup holds the QoS 2 messages that
            // were in flight: its first page comes back before the resend.
            if let Some(store) = self.broker.store().filter(|s| s.reads_queues()) {
                let store = store.clone();
                client.session.read_page(&store).await;
            }
            self.resend_inflight(&client);
        }
        Some(client)
    }
}

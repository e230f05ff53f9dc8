//! MQTT 5 enhanced authentication with SCRAM-SHA-256 ([`starling_scram`]):
//! the AUTH exchange of a CONNECT (in the handshake), and re-authentication
//! (AUTH 0x19 from a connected client, in the machine).
//!
//! CONNECT carries client-first; the broker answers AUTH 0x18 with
//! server-first; the client sends AUTH 0x18 with client-final; the broker
//! checks the proof and sends CONNACK 0x00 with server-final (or CONNACK
//! 0x86). Re-authentication runs the same exchange after AUTH 0x19 and ends
//! with AUTH 0x00; a failure ends the connection with DISCONNECT 0x87. The
//! user name is the one SCRAM proved; it may not change on re-authentication.

use bytes::Bytes;
use starling_codec::{Auth, Connect, Packet, ProtocolVersion, ReasonCode};
use starling_scram::{client_first_user, ServerExchange, METHOD};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::client::{Client, Close};
use super::conn::Connection;
use super::machine::Machine;
use crate::broker::BrokerState;

/// A refusal: the CONNACK reason and why, for the log.
pub(super) type Refusal = (ReasonCode, &'static str);

/// Starts a server exchange for the client-first message in `data`.
fn start(broker: &BrokerState, data: Option<&Bytes>) -> Result<(ServerExchange, String), Refusal> {
    let malformed = (ReasonCode::NOT_AUTHORIZED, "malformed SCRAM client-first");
    let first = data
        .and_then(|d| std::str::from_utf8(d).ok())
        .ok_or(malformed)?;
    let user = client_first_user(first).map_err(|_| malformed)?;
    let credential = {
        let file = broker.scram.read();
        let file = file.as_ref().ok_or((
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "SCRAM-SHA-256 is not configured (scram-file)",
        ))?;
        file.get(&user).cloned()
    };
    ServerExchange::start(first, credential).map_err(|_| malformed)
}

fn auth(code: ReasonCode, data: String) -> Packet {
    let mut a = Auth {
        reason_code: code,
        ..Auth::default()
    };
    a.properties.authentication_method = Some(METHOD.into());
    a.properties.authentication_data = Some(Bytes::from(data));
    Packet::Auth(a)
}

/// The client-final of an AUTH 0x18 packet for SCRAM.
fn client_final(packet: Packet) -> Result<String, Refusal> {
    let Packet::Auth(a) = packet else {
        return Err((ReasonCode::PROTOCOL_ERROR, "expected AUTH"));
    };
    if a.reason_code != ReasonCode::CONTINUE_AUTHENTICATION
        || a.properties.authentication_method.as_deref() != Some(METHOD)
    {
        // [MQTT-4.12.0-5]: the same method throughout the exchange.
        return Err((
            ReasonCode::PROTOCOL_ERROR,
            "[MQTT-4.12.0-5] AUTH out of the exchange",
        ));
    }
    a.properties
        .authentication_data
        .as_deref()
        .and_then(|d| std::str::from_utf8(d).ok())
        .map(str::to_string)
        .ok_or((ReasonCode::NOT_AUTHORIZED, "malformed SCRAM client-final"))
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    /// Runs the SCRAM exchange of `connect`: the user it proved and the
    /// server-final for the CONNACK, or the refusal.
    pub(super) async fn scram_connect(
        &mut self,
        connect: &Connect,
    ) -> Result<(String, String), Refusal> {
        if connect.properties.authentication_method.as_deref() != Some(METHOD) {
            return Err((
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "unsupported authentication method",
            ));
        }
        let (exchange, server_first) = start(
            &self.broker,
            connect.properties.authentication_data.as_ref(),
        )?;
        self.send(
            &auth(ReasonCode::CONTINUE_AUTHENTICATION, server_first),
            ProtocolVersion::V5,
        );
        let wbuf = std::mem::take(&mut self.m.wbuf);
        let written = async {
            self.wr.write_all(&wbuf).await?;
            self.wr.flush().await
        };
        if written.await.is_err() {
            return Err((ReasonCode::UNSPECIFIED_ERROR, "the client went away"));
        }
        let timeout = self.broker.config.connect_timeout();
        let next = match tokio::time::timeout(timeout, self.read_packet()).await {
            Ok(Some(packet)) => packet,
            _ => return Err((ReasonCode::NOT_AUTHORIZED, "no AUTH in time")),
        };
        let last = client_final(next)?;
        match exchange.finish(&last) {
            Ok(server_final) => Ok((exchange.user().to_string(), server_final)),
            Err(_) => Err((ReasonCode::BAD_USER_NAME_OR_PASSWORD, "SCRAM proof refused")),
        }
    }

    /// Authenticates `connect` with SCRAM, counted by the failed-login
    /// limiter like a password: the user it proved and the server-final, or
    /// `None` when it was refused (its CONNACK written).
    pub(super) async fn scram_login(&mut self, connect: &Connect) -> Option<(String, String)> {
        use crate::auth::Admission;
        let user = connect
            .properties
            .authentication_data
            .as_deref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|first| client_first_user(first).ok());
        let limiter = self.broker.auth_limiter.clone();
        let Admission::Check { delay, ticket } = limiter.admit(self.peer.ip(), user.as_deref())
        else {
            let code = ReasonCode::CONNECTION_RATE_EXCEEDED;
            self.refuse(connect, code, "failed-authentication limit");
            self.auth_failed(connect, code);
            return None;
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = match self.scram_connect(connect).await {
            Ok((user, _)) if connect.username.as_deref().is_some_and(|u| u != user) => Err((
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "the user name is not the SCRAM user",
            )),
            other => other,
        };
        match result {
            Ok(done) => {
                ticket.succeeded();
                Some(done)
            }
            Err((code, why)) => {
                self.refuse(connect, code, why);
                if code == ReasonCode::BAD_USER_NAME_OR_PASSWORD {
                    self.auth_failed(connect, code);
                }
                None
            }
        }
    }

    /// The next packet of the handshake; `None` on a closed or broken stream.
    async fn read_packet(&mut self) -> Option<Packet> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(packet)) => return Some(packet),
                Ok(None) => {}
                Err(_) => return None,
            }
            if !self.fill().await.unwrap_or(false) {
                return None;
            }
        }
    }
}

impl Machine {
    /// AUTH from a connected client: re-authentication [MQTT-4.12.1].
    pub(super) fn on_auth(&mut self, client: &mut Client, a: Auth) -> Result<(), Close> {
        let v = client.version;
        let fail = |why: &str| Close::Protocol(ReasonCode::NOT_AUTHORIZED, why.to_string());
        // [MQTT-4.12.1-1]: only a client that authenticated with a method,
        // and with that method.
        if !client.enhanced_auth || a.properties.authentication_method.as_deref() != Some(METHOD) {
            return Err(Close::Protocol(
                ReasonCode::PROTOCOL_ERROR,
                "[MQTT-4.12.1-1] AUTH without the CONNECT's authentication method".into(),
            ));
        }
        match (a.reason_code, self.reauth.take()) {
            (ReasonCode::RE_AUTHENTICATE, None) => {
                let (exchange, server_first) =
                    start(&self.broker, a.properties.authentication_data.as_ref())
                        .map_err(|(_, why)| fail(why))?;
                if Some(exchange.user()) != client.username.as_deref() {
                    return Err(fail("re-authentication as another user"));
                }
                self.reauth = Some(Box::new(exchange));
                self.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, server_first), v);
                Ok(())
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(exchange)) => {
                let last = client_final(Packet::Auth(a)).map_err(|(_, why)| fail(why))?;
                let server_final = exchange
                    .finish(&last)
                    .map_err(|_| fail("re-authentication failed"))?;
                self.send(&auth(ReasonCode::SUCCESS, server_final), v);
                tracing::info!(client_id = %client.client_id(), "re-authenticated");
                Ok(())
            }
            _ => Err(Close::Protocol(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH out of the re-authentication exchange".into(),
            )),
        }
    }
}

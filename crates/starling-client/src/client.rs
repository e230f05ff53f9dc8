//! The tokio driver: [`Client`] is a cheap handle; one background task owns the
//! connection, the protocol state and the buffers.
//!
//! # Backpressure
//!
//! Every buffer between the application and the socket is bounded:
//! - requests (publish, subscribe, ...) wait in a channel of
//!   [`ConnectOptions::request_capacity`]; when it is full, calls such as
//!   [`Client::publish`] wait. The task also stops taking requests while the
//!   server's Receive Maximum of QoS 1/2 publishes is in flight, or while its
//!   write buffer holds more than 64 KiB.
//! - incoming messages go to a channel of [`ConnectOptions::message_capacity`]
//!   read by [`Client::recv`]. When it is full, the task keeps up to as many
//!   decoded messages aside; past that it stops reading the socket, so TCP flow
//!   control pushes back on the server. Nothing is dropped: QoS 1/2 messages are
//!   acknowledged (PUBACK / PUBREC) only once they are in the channel, so the
//!   server's own flow control holds further ones back.
//!
//! While the task is not reading the socket it cannot see acknowledgements
//! either, so a task that awaits [`Client::publish`] without anyone calling
//! [`Client::recv`] stalls once more than twice the message capacity is waiting.
//! Read messages in their own task (clone the `Client`) when you subscribe to
//! what you publish.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use starling_codec::topic::{has_wildcard, validate_filter};
use starling_codec::{
    ByteString, ConnAck, Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion,
    Publish, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, Unsubscribe, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{ClientError, ConnectCode, ConnectError, Refusal};
use crate::options::ConnectOptions;
use crate::state::{Event, MqttState};
use crate::transport::{self, BoxIo};
use crate::types::{ConnAckInfo, ConnectionStatus, Message};

/// Above this many bytes waiting to be written, the task stops taking requests.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// A connected MQTT client.
///
/// Cloning is cheap and every clone talks to the same connection, so one task
/// can publish while another reads messages. When the last clone is dropped the
/// connection task sends DISCONNECT and ends.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: mpsc::Sender<Request>,
    /// An async mutex: `recv` holds it across `.await` while waiting for a message.
    messages: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    status: watch::Receiver<ConnectionStatus>,
    version: ProtocolVersion,
    /// The server's Maximum Packet Size; 0 when it set none.
    server_max_packet: Arc<AtomicU32>,
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// The acknowledgement of a publish queued with [`Client::publish_queued`]:
/// completes with the reason code of PUBACK or PUBCOMP (success for QoS 0
/// once written).
#[derive(Debug)]
pub struct Acknowledgement {
    rx: oneshot::Receiver<Result<ReasonCode, ClientError>>,
    closed: ClientError,
}

impl std::future::Future for Acknowledgement {
    type Output = Result<ReasonCode, ClientError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match std::pin::Pin::new(&mut self.rx).poll(cx) {
            std::task::Poll::Ready(Ok(result)) => std::task::Poll::Ready(result),
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(Err(self.closed.clone())),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

#[derive(Debug)]
enum Request {
    Publish(Publish, Reply<ReasonCode>),
    Subscribe(Subscribe, Reply<Vec<ReasonCode>>),
    Unsubscribe(Unsubscribe, Reply<Vec<ReasonCode>>),
    Disconnect(Disconnect, Reply<()>),
    DropConnection(Reply<()>),
    Reauthenticate(Reply<()>),
    Ack(u16),
}

/// The token the protocol state carries for each operation in flight.
#[derive(Debug)]
enum Token {
    Publish(Reply<ReasonCode>),
    Subscribe(Reply<Vec<ReasonCode>>),
    Unsubscribe(Reply<Vec<ReasonCode>>, usize),
}

impl Token {
    fn fail(self, err: ClientError) {
        match self {
            Token::Publish(tx) => {
                let _ = tx.send(Err(err));
            }
            Token::Subscribe(tx) | Token::Unsubscribe(tx, _) => {
                let _ = tx.send(Err(err));
            }
        }
    }
}

impl Client {
    /// Connects, waits for the CONNACK and starts the connection task.
    ///
    /// The whole exchange (TCP, TLS, WebSocket, CONNECT/CONNACK) is bounded by
    /// [`ConnectOptions::connect_timeout`]. A refusal is
    /// [`ConnectError::Refused`], whose message names the reason.
    pub async fn connect(opts: ConnectOptions) -> Result<(Client, ConnAckInfo), ConnectError> {
        let (io, connack, rbuf) = establish(&opts).await?;
        let info = ConnAckInfo::new(&connack, opts.version, &opts.client_id);
        tracing::info!(
            address = %opts.address(),
            client_id = %info.client_id,
            session_present = info.session_present,
            "connected"
        );
        let (req_tx, req_rx) = mpsc::channel(opts.request_capacity.max(1));
        let (msg_tx, msg_rx) = mpsc::channel(opts.message_capacity.max(1));
        let (status_tx, status_rx) = watch::channel(ConnectionStatus::Connected {
            connects: 1,
            session_present: connack.session_present,
        });
        let server_max_packet = Arc::new(AtomicU32::new(
            connack.properties.maximum_packet_size.unwrap_or(0),
        ));
        let keep_alive = opts.keep_alive;
        let now = Instant::now();
        let mut state = MqttState::new(
            opts.version,
            keep_alive,
            opts.topic_alias_maximum.unwrap_or(0),
            now,
        );
        let mut out = Vec::new();
        state.on_connack(&connack, now, &mut out);
        let mut reconnect_opts = opts.clone();
        reconnect_opts.client_id = info.client_id.clone();
        let mut decoder = Decoder::with_version(opts.version);
        if let Some(max) = opts.maximum_packet_size {
            decoder.set_max_packet_size(max as usize);
        }
        let driver = Driver {
            opts: reconnect_opts,
            state,
            requests: req_rx,
            messages: msg_tx,
            deliveries: VecDeque::new(),
            out,
            wbuf: BytesMut::with_capacity(8 * 1024),
            rbuf,
            decoder,
            status: status_tx,
            connects: 1,
            server_max_packet: server_max_packet.clone(),
            deferred: VecDeque::new(),
            pending_disconnect: None,
            reauth: None,
            held_acks: std::collections::HashMap::new(),
        };
        tokio::spawn(driver.run(io));
        let client = Client {
            inner: Arc::new(Inner {
                requests: req_tx,
                messages: tokio::sync::Mutex::new(msg_rx),
                status: status_rx,
                version: opts.version,
                server_max_packet,
            }),
        };
        Ok((client, info))
    }

    /// The protocol version of this connection.
    pub fn version(&self) -> ProtocolVersion {
        self.inner.version
    }

    /// A watch on the connection status: connected (and how many times),
    /// reconnecting, or closed.
    pub fn status(&self) -> watch::Receiver<ConnectionStatus> {
        self.inner.status.clone()
    }

    fn closed_error(&self) -> ClientError {
        match &*self.inner.status.borrow() {
            ConnectionStatus::Closed { reason } => ClientError::Closed(reason.clone()),
            _ => ClientError::Closed("the connection task ended".into()),
        }
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.requests.send(make(tx)).await.is_err() {
            return Err(self.closed_error());
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Publishes a message and, for QoS 1 and 2, waits for PUBACK or PUBCOMP.
    ///
    /// Returns the reason code of the final acknowledgement (MQTT 5; always
    /// success in 3.x). QoS 0 returns once the message is queued for writing.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<ReasonCode, ClientError> {
        self.publish_with_properties(topic, payload, qos, retain, Properties::default())
            .await
    }

    /// [`Client::publish`] with MQTT 5 properties (ignored by 3.x servers).
    pub async fn publish_with_properties(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<ReasonCode, ClientError> {
        self.publish_queued(topic, payload, qos, retain, properties)
            .await?
            .await
    }

    /// Queues a publish and returns without waiting for its acknowledgement:
    /// publishes queued one after the other go out in that order, and the
    /// returned [`Acknowledgement`] completes when the server acknowledged
    /// this one. For pipelines such as a bridge, which keep many messages in
    /// flight and must keep their order.
    pub async fn publish_queued(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<Acknowledgement, ClientError> {
        let topic = topic.into();
        if topic.is_empty() || has_wildcard(&topic) {
            return Err(ClientError::InvalidTopic(format!(
                "{topic:?}: [MQTT-3.3.2-2] a topic name is non-empty and has no wildcard"
            )));
        }
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: ByteString::from(topic),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties,
            payload: payload.into(),
        };
        let packet = Packet::Publish(publish);
        self.check_size(&packet)?;
        let Packet::Publish(publish) = packet else {
            unreachable!("built as a PUBLISH above")
        };
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .requests
            .send(Request::Publish(publish, tx))
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        Ok(Acknowledgement {
            rx,
            closed: self.closed_error(),
        })
    }

    /// Checks a packet encodes and fits the server's maximum packet size.
    fn check_size(&self, packet: &Packet) -> Result<(), ClientError> {
        let size = packet.encoded_len(self.inner.version)?;
        let max = self.inner.server_max_packet.load(Ordering::Relaxed);
        if max != 0 && size > max as usize {
            return Err(ClientError::PacketTooLarge { size, max });
        }
        Ok(())
    }

    /// Subscribes to one filter with the given maximum QoS; returns the granted
    /// code (a QoS, or a failure reason).
    pub async fn subscribe(
        &self,
        filter: impl Into<String>,
        qos: QoS,
    ) -> Result<ReasonCode, ClientError> {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        let codes = self
            .subscribe_many([(filter.into(), options)], Properties::default())
            .await?;
        codes
            .first()
            .copied()
            .ok_or_else(|| ClientError::ConnectionLost("SUBACK without a reason code".into()))
    }

    /// Subscribes to several filters, each with its options, in one SUBSCRIBE
    /// (with MQTT 5 properties such as a subscription identifier). Waits for the
    /// SUBACK and returns its codes, one per filter.
    pub async fn subscribe_many<I, S>(
        &self,
        filters: I,
        properties: Properties,
    ) -> Result<Vec<ReasonCode>, ClientError>
    where
        I: IntoIterator<Item = (S, SubscriptionOptions)>,
        S: Into<String>,
    {
        let mut subscriptions = Vec::new();
        for (filter, options) in filters {
            let filter = filter.into();
            validate_filter(&filter)
                .map_err(|e| ClientError::InvalidTopic(format!("{filter:?}: {e}")))?;
            subscriptions.push(Subscription {
                filter: ByteString::from(filter),
                options,
            });
        }
        if subscriptions.is_empty() {
            return Err(ClientError::InvalidTopic(
                "[MQTT-3.8.3-2] SUBSCRIBE needs at least one filter".into(),
            ));
        }
        let subscribe = Subscribe {
            packet_id: 1,
            properties,
            subscriptions,
        };
        let packet = Packet::Subscribe(subscribe);
        self.check_size(&packet)?;
        let Packet::Subscribe(subscribe) = packet else {
            unreachable!("built as a SUBSCRIBE above")
        };
        self.request(|tx| Request::Subscribe(subscribe, tx)).await
    }

    /// Unsubscribes from filters and waits for the UNSUBACK. Returns one code per
    /// filter (MQTT 3.x has none, so they are all success there).
    pub async fn unsubscribe<I, S>(&self, filters: I) -> Result<Vec<ReasonCode>, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let filters: Vec<ByteString> = filters
            .into_iter()
            .map(|f| ByteString::from(f.into()))
            .collect();
        if filters.is_empty() {
            return Err(ClientError::InvalidTopic(
                "[MQTT-3.10.3-2] UNSUBSCRIBE needs at least one filter".into(),
            ));
        }
        let unsubscribe = Unsubscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters,
        };
        let packet = Packet::Unsubscribe(unsubscribe);
        self.check_size(&packet)?;
        let Packet::Unsubscribe(unsubscribe) = packet else {
            unreachable!("built as an UNSUBSCRIBE above")
        };
        self.request(|tx| Request::Unsubscribe(unsubscribe, tx))
            .await
    }

    /// Receives the next message. Returns `None` once the client is closed and
    /// every message received before was read.
    ///
    /// Messages wait in a bounded channel; see the module documentation for
    /// what happens when nobody reads.
    pub async fn recv(&self) -> Option<Message> {
        self.inner.messages.lock().await.recv().await
    }

    /// Acknowledges `message` (PUBACK, or PUBREC for QoS 2), with
    /// [`ConnectOptions::manual_acks`]; does nothing otherwise, for QoS 0, or
    /// for a message of an earlier connection (the server sends it again).
    pub async fn ack(&self, message: &Message) -> Result<(), ClientError> {
        if message.qos == QoS::AtMostOnce {
            return Ok(());
        }
        self.inner
            .requests
            .send(Request::Ack(message.packet_id))
            .await
            .map_err(|_| self.closed_error())
    }

    /// Runs MQTT 5 re-authentication with the connection's enhanced
    /// authentication ([`ConnectOptions::authentication`]): AUTH 0x19, the
    /// exchange, and AUTH 0x00 from the server. A failure on either side
    /// ends the connection.
    pub async fn reauthenticate(&self) -> Result<(), ClientError> {
        self.request(Request::Reauthenticate).await
    }

    /// Sends DISCONNECT (normal disconnection), flushes, and closes the connection.
    /// The will is discarded.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(ReasonCode::NORMAL_DISCONNECTION, None)
            .await
    }

    /// Sends DISCONNECT with an MQTT 5 reason code (for example
    /// [`ReasonCode::DISCONNECT_WITH_WILL`], which makes the server publish the
    /// will) and an optional new session expiry interval, then closes.
    pub async fn disconnect_with(
        &self,
        reason: ReasonCode,
        session_expiry: Option<u32>,
    ) -> Result<(), ClientError> {
        let mut d = Disconnect::new(reason);
        d.properties.session_expiry_interval = session_expiry;
        self.request(|tx| Request::Disconnect(d, tx)).await
    }

    /// Closes the network connection without DISCONNECT, as a network failure
    /// would: the server publishes the will. With automatic reconnection the
    /// client then reconnects; without, it is closed.
    pub async fn drop_connection(&self) -> Result<(), ClientError> {
        self.request(Request::DropConnection).await
    }
}

/// Opens the transport, sends CONNECT and waits for a successful CONNACK, all
/// within the connect timeout. Returns the transport, the CONNACK and any bytes
/// read past it.
async fn establish(opts: &ConnectOptions) -> Result<(BoxIo, ConnAck, BytesMut), ConnectError> {
    match tokio::time::timeout(opts.connect_timeout, establish_inner(opts)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            address: opts.address(),
            timeout: opts.connect_timeout,
        }),
    }
}

/// The CONNECT packet for `opts`.
pub(crate) fn connect_packet(opts: &ConnectOptions) -> Connect {
    let mut c = Connect::new(opts.version, opts.client_id.as_str());
    c.clean_start = opts.clean_start;
    c.keep_alive = u16::try_from(opts.keep_alive.as_secs()).unwrap_or(u16::MAX);
    c.username = opts.username.as_deref().map(ByteString::from);
    c.password = opts.password.clone();
    c.will = opts.will.as_ref().map(|w| Will {
        topic: ByteString::from(w.topic.as_str()),
        payload: w.payload.clone(),
        qos: w.qos,
        retain: w.retain,
        properties: if opts.version.is_v5() {
            w.properties.clone()
        } else {
            Properties::default()
        },
    });
    if opts.version.is_v5() {
        let p = &mut c.properties;
        p.session_expiry_interval = opts.session_expiry;
        p.receive_maximum = opts.receive_maximum;
        p.maximum_packet_size = opts.maximum_packet_size;
        p.topic_alias_maximum = opts.topic_alias_maximum;
        p.user_properties = opts
            .user_properties
            .iter()
            .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
            .collect();
        p.request_response_information = opts.request_response_information.then_some(true);
        p.request_problem_information = opts.request_problem_information;
    }
    c
}

/// The CONNECT for `opts`, with the first Authentication Data of its
/// enhanced authentication, if any.
fn connect_with_auth(opts: &ConnectOptions) -> Result<Connect, ConnectError> {
    let mut c = connect_packet(opts);
    if let (Some(auth), true) = (&opts.authentication, opts.version.is_v5()) {
        c.properties.authentication_method = Some(ByteString::from(auth.method()));
        c.properties.authentication_data = auth.start().map_err(ConnectError::Authentication)?;
    }
    Ok(c)
}

/// An AUTH packet of `auth`'s method.
fn auth_packet(auth: &dyn crate::EnhancedAuth, code: ReasonCode, data: Option<Bytes>) -> Packet {
    let mut a = starling_codec::Auth {
        reason_code: code,
        ..Default::default()
    };
    a.properties.authentication_method = Some(ByteString::from(auth.method()));
    a.properties.authentication_data = data;
    Packet::Auth(a)
}

async fn establish_inner(
    opts: &ConnectOptions,
) -> Result<(BoxIo, ConnAck, BytesMut), ConnectError> {
    let mut io = transport::connect(opts).await?;
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(connect_with_auth(opts)?)).encode(opts.version, &mut buf)?;
    let io_err = |source| ConnectError::Io {
        address: opts.address(),
        source,
    };
    io.write_all(&buf).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let mut decoder = Decoder::with_version(opts.version);
    if let Some(max) = opts.maximum_packet_size {
        decoder.set_max_packet_size(max as usize);
    }
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        if let Some(packet) = decoder.decode(&mut rbuf)? {
            let connack = match packet {
                Packet::ConnAck(c) => c,
                Packet::Auth(a) if a.reason_code == ReasonCode::CONTINUE_AUTHENTICATION => {
                    let auth = opts.authentication.as_deref().ok_or_else(|| {
                        ConnectError::UnexpectedPacket(
                            "AUTH without an authentication method".into(),
                        )
                    })?;
                    let data = auth
                        .step(a.properties.authentication_data.as_deref())
                        .map_err(ConnectError::Authentication)?;
                    let mut out = BytesMut::new();
                    auth_packet(auth, ReasonCode::CONTINUE_AUTHENTICATION, data)
                        .encode(opts.version, &mut out)?;
                    io.write_all(&out).await.map_err(io_err)?;
                    io.flush().await.map_err(io_err)?;
                    continue;
                }
                other => {
                    return Err(ConnectError::UnexpectedPacket(format!(
                        "{:?}",
                        other.packet_type()
                    )))
                }
            };
            if connack.reason_code.is_error() {
                let code = if opts.version.is_v5() {
                    ConnectCode::V5(connack.reason_code)
                } else {
                    ConnectCode::V3(connack.return_code())
                };
                let p = &connack.properties;
                return Err(ConnectError::Refused(Refusal {
                    code,
                    reason_string: p.reason_string.as_ref().map(|s| s.to_string()),
                    server_reference: p.server_reference.as_ref().map(|s| s.to_string()),
                }));
            }
            if let Some(auth) = &opts.authentication {
                auth.finish(connack.properties.authentication_data.as_deref())
                    .map_err(ConnectError::Authentication)?;
            }
            return Ok((io, connack, rbuf));
        }
        let n = io.read_buf(&mut rbuf).await.map_err(io_err)?;
        if n == 0 {
            return Err(ConnectError::ClosedBeforeConnAck);
        }
    }
}

/// How one connection ended.
enum Exit {
    /// The application asked to disconnect, or dropped every handle.
    Closed(String),
    /// The connection failed or was dropped on request; reconnect if enabled.
    Lost(String),
}

struct Driver {
    opts: ConnectOptions,
    state: MqttState<Token>,
    requests: mpsc::Receiver<Request>,
    messages: mpsc::Sender<Message>,
    /// Decoded messages not yet in the channel, with the ack to send once they are.
    deliveries: VecDeque<(Message, Option<Packet>)>,
    /// Packets produced by the state, waiting to be encoded.
    out: Vec<Packet>,
    /// The single write buffer: every packet is encoded here and written in batches.
    wbuf: BytesMut,
    rbuf: BytesMut,
    decoder: Decoder,
    status: watch::Sender<ConnectionStatus>,
    connects: u64,
    server_max_packet: Arc<AtomicU32>,
    /// Requests that arrived while reconnecting, handled once connected.
    deferred: VecDeque<Request>,
    /// The reply to a DISCONNECT request, sent once DISCONNECT is written.
    pending_disconnect: Option<Reply<()>>,
    /// A re-authentication under way, answered when it ends.
    reauth: Option<Reply<()>>,
    /// With manual acknowledgements: the PUBACK or PUBREC of each message
    /// handed to the application, by packet id, until it calls `ack`.
    held_acks: std::collections::HashMap<u16, Packet>,
}

impl Driver {
    fn delivery_capacity(&self) -> usize {
        self.opts.message_capacity.max(1)
    }

    async fn run(mut self, mut io: BoxIo) {
        let reason = loop {
            let exit = self.run_connection(io).await;
            match exit {
                Exit::Closed(reason) => break reason,
                Exit::Lost(reason) => {
                    tracing::warn!(%reason, "connection lost");
                    let Some(reconnect) = self.opts.reconnect.clone() else {
                        break reason;
                    };
                    let _ = self.status.send(ConnectionStatus::Reconnecting {
                        reason: reason.clone(),
                    });
                    match self.reconnect(&reconnect).await {
                        Ok(new_io) => io = new_io,
                        Err(reason) => break reason,
                    }
                }
            }
        };
        tracing::debug!(%reason, "client closed");
        let _ = self.status.send(ConnectionStatus::Closed {
            reason: reason.clone(),
        });
        for token in self.state.drain_pending() {
            token.fail(ClientError::ConnectionLost(reason.clone()));
        }
        // Hand over what was already received, as far as the channel takes it.
        while let Some((msg, _)) = self.deliveries.pop_front() {
            if self.messages.try_send(msg).is_err() {
                break;
            }
        }
        self.requests.close();
        let closed = ClientError::Closed(reason);
        let leftover: Vec<Request> = self.deferred.drain(..).collect();
        for req in leftover {
            fail_request(req, closed.clone());
        }
        while let Ok(req) = self.requests.try_recv() {
            fail_request(req, closed.clone());
        }
    }

    /// Reconnects with jittered exponential backoff. Requests that arrive
    /// meanwhile are kept for later, except DISCONNECT, which ends the client.
    async fn reconnect(&mut self, r: &crate::ReconnectOptions) -> Result<BoxIo, String> {
        let mut delay = r.initial_delay;
        let mut attempts: u32 = 0;
        loop {
            let sleep = tokio::time::sleep(jitter(delay));
            tokio::pin!(sleep);
            // Wait out the backoff while still answering DISCONNECT.
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    req = self.requests.recv() => match req {
                        None => return Err("every client handle was dropped".into()),
                        Some(Request::Disconnect(_, tx)) => {
                            let _ = tx.send(Ok(()));
                            return Err("disconnected by the application".into());
                        }
                        Some(Request::DropConnection(tx)) => { let _ = tx.send(Ok(())); }
                        Some(other) => self.deferred.push_back(other),
                    }
                }
            }
            attempts += 1;
            match establish(&self.opts).await {
                Ok((io, connack, rbuf)) => {
                    self.connects += 1;
                    tracing::info!(
                        session_present = connack.session_present,
                        attempts,
                        "reconnected"
                    );
                    self.rbuf = rbuf;
                    self.wbuf.clear();
                    self.decoder = Decoder::with_version(self.opts.version);
                    if let Some(max) = self.opts.maximum_packet_size {
                        self.decoder.set_max_packet_size(max as usize);
                    }
                    self.server_max_packet.store(
                        connack.properties.maximum_packet_size.unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    // Acks for messages of the old connection are void; the server resends.
                    for (_, ack) in self.deliveries.iter_mut() {
                        *ack = None;
                    }
                    self.held_acks.clear();
                    self.out.clear();
                    self.state
                        .on_connack(&connack, Instant::now(), &mut self.out);
                    let _ = self.status.send(ConnectionStatus::Connected {
                        connects: self.connects,
                        session_present: connack.session_present,
                    });
                    return Ok(io);
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempts, "reconnect failed");
                    if r.max_attempts.is_some_and(|max| attempts >= max) {
                        return Err(format!(
                            "gave up reconnecting after {attempts} attempts: {e}"
                        ));
                    }
                    delay = (delay * 2).min(r.max_delay);
                }
            }
        }
    }

    /// Encodes every packet in `out` into the write buffer.
    fn encode_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let version = self.opts.version;
        for packet in self.out.drain(..) {
            tracing::trace!(packet = ?packet.packet_type(), "send");
            if let Err(e) = packet.encode(version, &mut self.wbuf) {
                // Sizes are checked before requests reach the task; this is a bug.
                tracing::error!(error = %e, packet = ?packet.packet_type(), "cannot encode");
            }
        }
        self.state.note_sent(Instant::now());
    }

    /// Moves deliveries into the channel as long as it has room.
    fn try_deliver(&mut self) {
        while let Some((msg, ack)) = self.deliveries.pop_front() {
            let id = msg.packet_id;
            match self.messages.try_send(msg) {
                Ok(()) => match ack {
                    Some(ack) if self.opts.manual_acks => {
                        self.held_acks.insert(id, ack);
                    }
                    ack => self.out.extend(ack),
                },
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    self.deliveries.push_front((msg, ack));
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // Nobody will ever read: acknowledge and discard.
                    self.out.extend(ack);
                }
            }
        }
    }

    fn handle_packet(&mut self, packet: Packet) -> Result<(), String> {
        tracing::trace!(packet = ?packet.packet_type(), "received");
        let event = self
            .state
            .handle(packet, &mut self.out)
            .map_err(|e| e.to_string())?;
        match event {
            None => {}
            Some(Event::Message { publish, ack }) => {
                self.deliveries.push_back((Message::from(publish), ack));
            }
            Some(Event::PublishDone {
                token: Token::Publish(tx),
                reason,
            }) => {
                let _ = tx.send(Ok(reason));
            }
            Some(Event::SubscribeDone {
                token: Token::Subscribe(tx),
                ack,
            }) => {
                let _ = tx.send(Ok(ack.reason_codes));
            }
            Some(Event::UnsubscribeDone {
                token: Token::Unsubscribe(tx, n),
                ack,
            }) => {
                let codes = if self.opts.version.is_v5() {
                    ack.reason_codes
                } else {
                    vec![ReasonCode::SUCCESS; n]
                };
                let _ = tx.send(Ok(codes));
            }
            Some(Event::PublishDone { token, .. })
            | Some(Event::SubscribeDone { token, .. })
            | Some(Event::UnsubscribeDone { token, .. }) => {
                // The state pairs each acknowledgement with the token of its own kind.
                token.fail(ClientError::ConnectionLost(
                    "mismatched acknowledgement".into(),
                ));
            }
            Some(Event::Auth(a)) => return self.on_auth(a),
            Some(Event::ServerDisconnect(d)) => {
                let mut reason = format!("the server sent DISCONNECT: {}", d.reason_code);
                if let Some(s) = &d.properties.reason_string {
                    reason.push_str(&format!(": {s}"));
                }
                return Err(reason);
            }
        }
        Ok(())
    }

    /// AUTH from the server, during a re-authentication. A server that
    /// cannot prove itself ends the connection.
    fn on_auth(&mut self, a: starling_codec::Auth) -> Result<(), String> {
        let (Some(auth), Some(_)) = (self.opts.authentication.clone(), self.reauth.as_ref()) else {
            return Err("AUTH from the server outside a re-authentication".into());
        };
        let data = a.properties.authentication_data.as_deref();
        let result = match a.reason_code {
            ReasonCode::CONTINUE_AUTHENTICATION => match auth.step(data) {
                Ok(answer) => {
                    self.out.push(auth_packet(
                        &*auth,
                        ReasonCode::CONTINUE_AUTHENTICATION,
                        answer,
                    ));
                    return Ok(());
                }
                Err(e) => Err(e),
            },
            ReasonCode::SUCCESS => auth.finish(data),
            other => Err(format!("re-authentication refused: {other}")),
        };
        if let Some(tx) = self.reauth.take() {
            let _ = tx.send(result.clone().map_err(ClientError::Authentication));
        }
        result.map_err(|e| format!("re-authentication failed: {e}"))
    }

    /// Handles one application request. Returns the exit when it ends the connection.
    fn handle_request(&mut self, req: Request) -> Option<Exit> {
        match req {
            Request::Publish(publish, tx) => {
                match self
                    .state
                    .publish(publish, Token::Publish(tx), &mut self.out)
                {
                    Ok(Some(Token::Publish(tx))) => {
                        let _ = tx.send(Ok(ReasonCode::SUCCESS));
                    }
                    Ok(_) => {}
                    Err((e, token)) => token.fail(e.into()),
                }
            }
            Request::Subscribe(subscribe, tx) => {
                if let Err((e, token)) =
                    self.state
                        .subscribe(subscribe, Token::Subscribe(tx), &mut self.out)
                {
                    token.fail(e.into());
                }
            }
            Request::Unsubscribe(unsubscribe, tx) => {
                let n = unsubscribe.filters.len();
                if let Err((e, token)) =
                    self.state
                        .unsubscribe(unsubscribe, Token::Unsubscribe(tx, n), &mut self.out)
                {
                    token.fail(e.into());
                }
            }
            Request::Disconnect(d, tx) => {
                self.out.push(Packet::Disconnect(d));
                self.pending_disconnect = Some(tx);
                return Some(Exit::Closed("disconnected by the application".into()));
            }
            Request::DropConnection(tx) => {
                let _ = tx.send(Ok(()));
                return Some(Exit::Lost("connection dropped by the application".into()));
            }
            Request::Ack(id) => {
                if let Some(ack) = self.held_acks.remove(&id) {
                    self.out.push(ack);
                }
            }
            Request::Reauthenticate(tx) => {
                let auth = self.opts.authentication.clone();
                let started = match auth.filter(|_| self.opts.version.is_v5()) {
                    _ if self.reauth.is_some() => Err("a re-authentication is under way".into()),
                    None => Err("no enhanced authentication (MQTT 5) to renew".into()),
                    Some(auth) => auth.start().map(|data| (auth, data)),
                };
                match started {
                    Ok((auth, data)) => {
                        self.out
                            .push(auth_packet(&*auth, ReasonCode::RE_AUTHENTICATE, data));
                        self.reauth = Some(tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(ClientError::Authentication(e)));
                    }
                }
            }
        }
        None
    }

    async fn run_connection(&mut self, io: BoxIo) -> Exit {
        let (mut rd, mut wr) = tokio::io::split(io);
        // Requests that waited during reconnection go first.
        while let Some(req) = self.deferred.pop_front() {
            if let Some(exit) = self.handle_request(req) {
                return self.finish(exit, &mut wr).await;
            }
        }
        let mut need_flush = false;
        let mut read_eof = false;
        loop {
            // Decode what is buffered, as far as the delivery queue has room.
            while self.deliveries.len() < self.delivery_capacity() {
                match self.decoder.decode(&mut self.rbuf) {
                    Ok(Some(packet)) => {
                        if let Err(reason) = self.handle_packet(packet) {
                            return self.finish(Exit::Lost(reason), &mut wr).await;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let reason = format!("malformed packet from the server: {e}");
                        if self.opts.version.is_v5() {
                            self.out
                                .push(Packet::Disconnect(Disconnect::new(e.reason_code())));
                        }
                        return self.finish(Exit::Lost(reason), &mut wr).await;
                    }
                }
            }
            if read_eof && self.rbuf.is_empty() {
                return self
                    .finish(
                        Exit::Lost("the server closed the connection".into()),
                        &mut wr,
                    )
                    .await;
            }
            self.try_deliver();
            if let Err(e) = self.state.poll_keep_alive(Instant::now(), &mut self.out) {
                return self.finish(Exit::Lost(e.to_string()), &mut wr).await;
            }
            self.encode_out();

            let can_read = !read_eof && self.deliveries.len() < self.delivery_capacity();
            let can_request = self.state.can_publish() && self.wbuf.len() < WRITE_HIGH_WATER;
            let deadline = self.state.next_keep_alive_deadline();
            let want_write = !self.wbuf.is_empty() || need_flush;
            let has_deliveries = !self.deliveries.is_empty();
            let messages = self.messages.clone();

            tokio::select! {
                res = async {
                    if self.wbuf.is_empty() {
                        wr.flush().await.map(|_| 0)
                    } else {
                        wr.write_buf(&mut self.wbuf).await
                    }
                }, if want_write => match res {
                    Ok(0) if need_flush && self.wbuf.is_empty() => need_flush = false,
                    Ok(0) => return self.finish(Exit::Lost("write returned 0".into()), &mut wr).await,
                    Ok(_) => need_flush = true,
                    Err(e) => return self.finish(Exit::Lost(format!("write failed: {e}")), &mut wr).await,
                },
                res = rd.read_buf(&mut self.rbuf), if can_read => match res {
                    Ok(0) => read_eof = true,
                    Ok(_) => {}
                    Err(e) => return self.finish(Exit::Lost(format!("read failed: {e}")), &mut wr).await,
                },
                permit = messages.reserve(), if has_deliveries => {
                    match permit {
                        Ok(permit) => {
                            if let Some((msg, ack)) = self.deliveries.pop_front() {
                                permit.send(msg);
                                self.out.extend(ack);
                            }
                        }
                        Err(_) => self.try_deliver(),
                    }
                },
                req = self.requests.recv(), if can_request => match req {
                    None => {
                        self.out.push(Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)));
                        return self.finish(Exit::Closed("every client handle was dropped".into()), &mut wr).await;
                    }
                    Some(req) => {
                        if let Some(exit) = self.handle_request(req) {
                            return self.finish(exit, &mut wr).await;
                        }
                        // Take whatever else is queued, to batch it into one write.
                        while self.state.can_publish() && self.wbuf.len() < WRITE_HIGH_WATER {
                            let Ok(req) = self.requests.try_recv() else { break };
                            if let Some(exit) = self.handle_request(req) {
                                return self.finish(exit, &mut wr).await;
                            }
                            self.encode_out();
                        }
                    }
                },
                _ = sleep_until_opt(deadline), if deadline.is_some() => {}
            }
        }
    }

    /// Ends a connection: writes what is buffered (a DISCONNECT, say) when the
    /// application closed it, then shuts the transport down.
    async fn finish(&mut self, exit: Exit, wr: &mut tokio::io::WriteHalf<BoxIo>) -> Exit {
        self.encode_out();
        if let Exit::Closed(_) = exit {
            let flush = async {
                wr.write_all_buf(&mut self.wbuf).await?;
                wr.flush().await?;
                wr.shutdown().await
            };
            // Bounded, so a server that stopped reading cannot hold the close forever.
            let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
            if let Some(tx) = self.pending_disconnect.take() {
                let _ = tx.send(Ok(()));
            }
        } else if let Exit::Lost(reason) = &exit {
            if reason.starts_with("malformed") || reason.starts_with("the server") {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    wr.write_all_buf(&mut self.wbuf).await?;
                    wr.flush().await
                })
                .await;
            }
        }
        self.wbuf.clear();
        exit
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn fail_request(req: Request, err: ClientError) {
    match req {
        Request::Publish(_, tx) => {
            let _ = tx.send(Err(err));
        }
        Request::Subscribe(_, tx) | Request::Unsubscribe(_, tx) => {
            let _ = tx.send(Err(err));
        }
        Request::Disconnect(_, tx) | Request::DropConnection(tx) | Request::Reauthenticate(tx) => {
            let _ = tx.send(Err(err));
        }
        Request::Ack(_) => {}
    }
}

/// A delay between half and all of `delay`, so clients that lost the same server
/// do not all come back at once.
fn jitter(delay: Duration) -> Duration {
    static SEED: Mutex<u64> = Mutex::new(0);
    // A std mutex: held for a few instructions, never across an await.
    let r = {
        let mut s = SEED.lock().unwrap_or_else(|e| e.into_inner());
        if *s == 0 {
            *s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15)
                | 1;
        }
        // xorshift64
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    };
    let half = delay / 2;
    half + Duration::from_nanos(r % (half.as_nanos() as u64 + 1))
}

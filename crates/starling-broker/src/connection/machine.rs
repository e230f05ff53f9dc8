//! The protocol machine of an attached connection: everything an MQTT
//! connection decides, with no socket and no store. It takes decoded packets
//! and the session's queue, and produces its effects: the bytes to write
//! ([`Machine::wbuf`]), what changed for the store ([`Machine::take_journal`]),
//! the acknowledgements waiting for that write, in order, the keep-alive
//! deadline, and the decision to close ([`Close`]). The connection task
//! (`mod.rs`) drives it: reads, decodes, calls it, submits the journal, writes.
//!
//! Packet handling is in `inbound.rs` (`Machine::handle`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_codec::{ByteString, Disconnect, Packet, ProtocolVersion, PublishRef};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::client::{Client, Close};
use super::mount;
use crate::broker::BrokerState;
use crate::cluster::ReplicaLag;
use crate::config::SlowConsumer;
use crate::events::{DropReason, Event};
use crate::journal::Journal;
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::session::{Inflight, Kick, Session};

/// Above this many buffered outgoing bytes the connection stops reading and
/// stops draining its queue until the socket takes some.
pub(crate) const HIGH_WATER: usize = 64 * 1024;

/// Above this many packets held for the store (acknowledgements, and QoS 2
/// deliveries with what follows them) the connection stops draining its
/// queue until the store catches up.
const MAX_HELD: usize = 1024;

/// How long a packet held for the cluster's copy of its session waits
/// before it is looked at again (see [`Machine::release_acks`]).
const REPLICA_RETRY: Duration = Duration::from_millis(100);

/// Whether `packet`, held for the store, must also be in the cluster's
/// copy of the session before it goes: a QoS 2 PUBLISH (its packet id) or
/// a PUBREL (the release).
fn outlives_the_node(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(p) => p.qos == starling_codec::QoS::ExactlyOnce,
        Packet::PubRel(_) => true,
        _ => false,
    }
}

/// An acknowledgement, and the journal it waits for (none: ready).
pub(crate) type PendingAck = (Option<u64>, Packet);

/// The protocol state of one connection (the client's own settings are in
/// [`Client`], which outlives a parked connection's machine).
pub(crate) struct Machine {
    pub broker: Arc<BrokerState>,
    pub peer: SocketAddr,
    pub conn_id: u64,
    /// Bytes to write to the client.
    pub wbuf: BytesMut,
    /// Acknowledgements waiting for the store, in the order they must be sent.
    pub pending_acks: VecDeque<PendingAck>,
    /// What the steps since the last [`Machine::take_journal`] changed.
    pub(super) journal: Journal,
    /// Whether an acknowledgement waits for `journal`'s number.
    journal_awaited: bool,
    /// Whether that wait includes writing `journal` to the store.
    store_awaited: bool,
    /// What acknowledgements wait for besides the store: the cluster
    /// passing a new interest on (a SUBACK, see
    /// [`crate::cluster::Cluster::interest_ready`]) or holding a message
    /// where no node's death loses it (a PUBACK, see
    /// [`crate::cluster::Cluster::forward`]). A dropped sender counts as
    /// a failed write.
    cluster_waits: Vec<oneshot::Receiver<()>>,
    /// The number of the next journal taken.
    next_journal: u64,
    /// Journals below this number are written.
    written: u64,
    /// Store writes that acknowledgements wait for: journal number, receiver.
    pub(super) writes: VecDeque<(u64, oneshot::Receiver<()>)>,
    /// When the client last sent anything; keep alive counts from here.
    pub last_rx: Instant,
    /// Sessions whose queues this client's PUBLISHes took past their
    /// high-water mark: the connection stops reading until they drain, or
    /// until `stall_until` (backpressure).
    pub congested: Vec<Arc<Session>>,
    /// When the wait for `congested` ends, drained or not.
    pub stall_until: Option<Instant>,
    /// The client's publish rate, when limited: messages, payload bytes.
    rates: Option<Box<(Option<TokenBucket>, Option<TokenBucket>)>>,
    /// Until when the connection is not read because of its publish rate.
    pub throttled_until: Option<Instant>,
    /// A re-authentication under way (see [`super::enhanced`]).
    pub(super) reauth: Option<Box<starling_scram::ServerExchange>>,
    /// When held packets look again at the cluster's copy of the session
    /// (see [`Machine::release_acks`]).
    pub replica_retry: Option<Instant>,
}

/// Topic aliases towards the client: a topic seen before goes as its alias
/// with an empty topic name; a new one is given the next free alias (sent once
/// with the full topic) while the client's maximum allows.
fn apply_out_alias(
    client: &Client,
    publish: &mut starling_codec::Publish,
) -> Option<(ByteString, u16)> {
    if client.out_alias_max == 0 {
        return None;
    }
    let assigned = client.aliases.as_ref().map(|a| &a.outbound);
    if let Some(&alias) = assigned.and_then(|m| m.get(&publish.topic)) {
        publish.properties.topic_alias = Some(alias);
        publish.topic = ByteString::new();
        None
    } else if assigned.map_or(0, |m| m.len()) < usize::from(client.out_alias_max) {
        let alias = assigned.map_or(0, |m| m.len()) as u16 + 1;
        publish.properties.topic_alias = Some(alias);
        Some((crate::message::owned(&publish.topic), alias))
    } else {
        None
    }
}

/// Whether a packet of `len` bytes may go to the client: within its
/// Maximum Packet Size ([MQTT-3.1.2-25]; never computed when it set none).
fn fits(client: &Client, len: impl FnOnce() -> Result<usize, starling_codec::EncodeError>) -> bool {
    client.client_max_packet == u32::MAX || len().is_ok_and(|len| client.fits(len))
}

/// Uses the alias already given to the topic, if any, but assigns none.
fn existing_out_alias(client: &Client, publish: &mut starling_codec::Publish) {
    let assigned = client.aliases.as_ref().map(|a| &a.outbound);
    if let Some(&alias) = assigned.and_then(|m| m.get(&publish.topic)) {
        publish.properties.topic_alias = Some(alias);
        publish.topic = ByteString::new();
    }
}

/// Completes when the oldest store write that acknowledgements wait for
/// is done, with its journal's number (taken off the queue), or `None` when
/// it failed. Cancel-safe: until it completes, the write stays queued.
pub(crate) async fn first_write(
    writes: &mut VecDeque<(u64, oneshot::Receiver<()>)>,
) -> Option<u64> {
    let (number, rx) = writes.front_mut()?;
    let number = *number;
    rx.await.ok()?;
    writes.pop_front();
    Some(number)
}

impl Machine {
    /// A machine for a connection from `peer`, whose client last sent
    /// something at `last_rx`.
    pub(crate) fn new(
        broker: Arc<BrokerState>,
        peer: SocketAddr,
        conn_id: u64,
        last_rx: Instant,
    ) -> Machine {
        Machine {
            broker,
            peer,
            conn_id,
            wbuf: BytesMut::new(),
            pending_acks: VecDeque::new(),
            journal: Journal::new(),
            journal_awaited: false,
            store_awaited: false,
            cluster_waits: Vec::new(),
            next_journal: 0,
            written: 0,
            writes: VecDeque::new(),
            last_rx,
            congested: Vec::new(),
            stall_until: None,
            rates: None,
            throttled_until: None,
            reauth: None,
            replica_retry: None,
        }
    }

    /// Counts a PUBLISH of `payload` bytes against the client's publish
    /// rate; past it, the connection is not read until the rate allows
    /// (`throttled_until`).
    pub(crate) fn throttle(&mut self, payload: usize) {
        let (msgs, bytes) = (
            self.broker.config.max_publish_rate,
            self.broker.config.max_publish_bytes_rate,
        );
        if msgs == 0 && bytes == 0 {
            return;
        }
        let now = Instant::now();
        let rates = self.rates.get_or_insert_with(|| {
            Box::new((
                (msgs > 0).then(|| TokenBucket::new(msgs, now)),
                (bytes > 0).then(|| TokenBucket::new(bytes, now)),
            ))
        });
        let wait = [
            rates.0.as_mut().map(|r| r.take(now)),
            rates.1.as_mut().map(|r| r.take_n(payload as u64, now)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default();
        if !wait.is_zero() {
            self.throttled_until = Some(now + wait);
            Metrics::add(&self.broker.metrics.publish_throttled, 1);
        }
    }

    /// After a read: if this client's PUBLISHes congested other sessions'
    /// queues, starts the bounded wait for them (`slow-consumer-timeout-ms`;
    /// 0: no wait). A client never waits for its own session.
    pub(crate) fn hold_for_congestion(&mut self, own: &Arc<Session>) {
        if self.congested.is_empty() {
            return;
        }
        let timeout = self.broker.config.slow_consumer_timeout_ms;
        self.congested.retain(|s| !Arc::ptr_eq(s, own));
        if timeout == 0 || self.congested.is_empty() {
            self.congested.clear();
            return;
        }
        self.congested.sort_by_key(|s| Arc::as_ptr(s) as usize);
        self.congested.dedup_by(|a, b| Arc::ptr_eq(a, b));
        if self.stall_until.is_none() {
            self.stall_until = Some(Instant::now() + Duration::from_millis(timeout));
            Metrics::add(&self.broker.metrics.publisher_waits, 1);
        }
    }

    /// The sessions waited for drained: reading resumes.
    pub(crate) fn congestion_cleared(&mut self) {
        self.congested.clear();
        self.stall_until = None;
    }

    /// The wait for congested sessions reached its bound: those still past
    /// their high-water mark are slow consumers (see [`Session::stall`]), and
    /// reading resumes.
    pub(crate) fn stall_expired(&mut self) {
        let disconnect = self.broker.config.slow_consumer == SlowConsumer::Disconnect;
        for s in self.congested.drain(..) {
            if s.stall(disconnect) {
                Metrics::add(&self.broker.metrics.slow_consumers, 1);
                tracing::info!(client_id = %s.client_id, "slow consumer: its queue did not drain in time");
            }
        }
        self.stall_until = None;
    }

    /// When the client must have sent something by (1.5 times its keep
    /// alive after the last packet), if it has a keep alive.
    pub(crate) fn keep_alive_deadline(&self, client: &Client) -> Option<Instant> {
        let keep_alive = client.keep_alive;
        (!keep_alive.is_zero()).then(|| self.last_rx + keep_alive.mul_f32(1.5))
    }

    /// Encodes a packet into the write buffer.
    pub(crate) fn send(&mut self, packet: &Packet, version: ProtocolVersion) {
        if let Err(err) = packet.encode(version, &mut self.wbuf) {
            tracing::warn!(peer = %self.peer, ?err, "could not encode {:?}", packet.packet_type());
        }
    }

    /// Sends an acknowledgement, after every earlier one ([MQTT-4.6.0-2]:
    /// acknowledgements go out in the order the PUBLISHes came). With
    /// `after_journal`, only once what the journal holds now is written.
    pub(crate) fn send_ack(
        &mut self,
        packet: Packet,
        after_journal: bool,
        version: ProtocolVersion,
    ) {
        if after_journal {
            self.journal_awaited = true;
            self.store_awaited = true;
            self.pending_acks
                .push_back((Some(self.next_journal), packet));
        } else if self.pending_acks.is_empty() {
            self.send(&packet, version);
        } else {
            self.pending_acks.push_back((None, packet));
        }
    }

    /// As [`Machine::send_ack`], and only once `cluster` (if any) is done
    /// as well.
    pub(crate) fn send_ack_after(
        &mut self,
        packet: Packet,
        after_journal: bool,
        cluster: Option<oneshot::Receiver<()>>,
        version: ProtocolVersion,
    ) {
        let Some(wait) = cluster else {
            return self.send_ack(packet, after_journal, version);
        };
        self.cluster_waits.push(wait);
        self.store_awaited |= after_journal;
        self.journal_awaited = true;
        self.pending_acks
            .push_back((Some(self.next_journal), packet));
    }

    /// What the acknowledgements of the journal last taken wait for: its
    /// store write (`true`) and the cluster's receivers.
    pub(crate) fn take_waits(&mut self) -> (bool, Vec<oneshot::Receiver<()>>) {
        (
            std::mem::take(&mut self.store_awaited),
            std::mem::take(&mut self.cluster_waits),
        )
    }

    /// The journal of the store changes made since the last call, if any, and
    /// whether acknowledgements wait for it: then the driver submits it with
    /// a receiver (see [`Machine::take_waits`]) and hands that to
    /// [`Machine::awaiting`].
    pub(crate) fn take_journal(&mut self) -> Option<(Journal, bool)> {
        if self.journal.is_empty() && self.cluster_waits.is_empty() {
            if self.journal_awaited {
                // Nothing to write: what they wait for is done.
                self.journal_awaited = false;
                self.store_awaited = false;
                self.next_journal += 1;
                self.written = self.next_journal;
            }
            return None;
        }
        let awaited = std::mem::take(&mut self.journal_awaited);
        if awaited {
            self.next_journal += 1;
        }
        Some((std::mem::take(&mut self.journal), awaited))
    }

    /// The write of the journal last taken, which acknowledgements wait for.
    pub(crate) fn awaiting(&mut self, write: oneshot::Receiver<()>) {
        self.writes.push_back((self.next_journal - 1, write));
    }

    /// Whether acknowledgements wait for a store write.
    pub(crate) fn awaits_store(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Notes what [`first_write`] returned, and releases the
    /// acknowledgements it allows (see [`Machine::release_acks`]).
    pub(crate) fn write_done(
        &mut self,
        written: Option<u64>,
        client_id: &str,
        version: ProtocolVersion,
    ) -> Result<(), Close> {
        match written {
            Some(number) => {
                self.written = self.written.max(number + 1);
                self.release_acks(client_id, version)
            }
            None => Err(Close::StoreFailed),
        }
    }

    /// Notes finished store writes; `false` when one failed.
    fn poll_writes(&mut self) -> bool {
        while let Some((number, rx)) = self.writes.front_mut() {
            match rx.try_recv() {
                Ok(()) => {
                    self.written = *number + 1;
                    self.writes.pop_front();
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => return false,
            }
        }
        true
    }

    /// Writes the acknowledgements at the front whose store writes are done.
    /// A failed write ends the connection without its acknowledgement, or any
    /// after it (the caller drops them): the client keeps those messages and
    /// sends them again.
    ///
    /// A QoS 2 PUBLISH or PUBREL of a persistent session waits for the
    /// cluster's copy of the session as well (see
    /// [`crate::cluster::Cluster::replica_lag`]): while it is behind, it is
    /// looked at again after [`REPLICA_RETRY`]; if this node lost the
    /// cluster, the client goes to another node (DISCONNECT 0x9C), which
    /// has the message still to send instead of sending it twice.
    pub(crate) fn release_acks(
        &mut self,
        client_id: &str,
        version: ProtocolVersion,
    ) -> Result<(), Close> {
        if !self.poll_writes() {
            return Err(Close::StoreFailed);
        }
        self.replica_retry = None;
        while let Some((wait, packet)) = self.pending_acks.front() {
            if wait.is_some_and(|number| number >= self.written) {
                break;
            }
            if wait.is_some() && outlives_the_node(packet) {
                match self.broker.cluster().replica_lag(client_id) {
                    ReplicaLag::Current => {}
                    ReplicaLag::Behind => {
                        self.replica_retry = Some(Instant::now() + REPLICA_RETRY);
                        break;
                    }
                    ReplicaLag::Lost => return Err(Close::Fenced),
                }
            }
            if let Some((_, packet)) = self.pending_acks.pop_front() {
                self.send(&packet, version);
            }
        }
        Ok(())
    }

    /// Moves queued messages into the write buffer, within the client's receive
    /// maximum and the buffer's high-water mark. `false` when the session is
    /// no longer attached to this connection (it was taken over).
    pub(crate) fn drain(&mut self, client: &mut Client) -> bool {
        let mut st = client.session.state.lock();
        if !st.is_attached_to(self.conn_id) || st.kicked(self.conn_id).is_some() {
            return false;
        }
        if self.wbuf.len() >= HIGH_WATER {
            return true;
        }
        let now = Instant::now();
        let acks_wait = self.broker.store().is_some_and(|s| s.acks_wait());
        // Counted per QoS here, added to the shared counters once per drain.
        let mut sent = [0u64; 3];
        let mut sent_payload = [0u64; 3];
        while self.wbuf.len() < HIGH_WATER && self.pending_acks.len() < MAX_HELD {
            let Some(delivery) = st.pop() else {
                if self.stream_retained(client, &mut st, now) {
                    continue;
                }
                break;
            };
            if delivery.msg.is_expired(now) {
                self.broker.metrics.drops.inc(DropReason::Expired as usize);
                self.broker
                    .events
                    .emit(crate::events::EventKind::MessageDropped, || {
                        Event::MessageDropped {
                            client_id: client.client_id().clone(),
                            topic: delivery.msg.topic.clone(),
                            reason: DropReason::Expired,
                        }
                    });
                if let Some(seq) = delivery.stored.seq() {
                    self.journal.forget(client.client_id(), seq);
                }
                continue;
            }
            // Under a mountpoint the client sees topics without the prefix, and
            // nothing outside it.
            let Some(prefix) =
                mount::stripped_len(client.mountpoint.as_deref(), &delivery.msg.topic)
            else {
                if let Some(seq) = delivery.stored.seq() {
                    self.journal.forget(client.client_id(), seq);
                }
                continue;
            };
            let qos1 = delivery.qos != starling_codec::QoS::AtMostOnce;
            if qos1 && st.inflight_len() >= usize::from(client.client_receive_max) {
                st.unpop(delivery);
                break;
            }
            // A QoS 2 message of a persistent session goes out only once its
            // "sent with this packet id" record is on disk (durability
            // "always"): after a restart it is resent with DUP and the same
            // id, which the receiver recognises [MQTT-4.3.3-1]. Held packets
            // queue with the acknowledgements, and everything after them
            // keeps its place behind them.
            let held = delivery.qos == starling_codec::QoS::ExactlyOnce
                && delivery.stored.seq().is_some()
                && acks_wait;
            let packet_id = if qos1 { st.next_packet_id() } else { 0 };
            let packet = if self.encodes_directly(client, &delivery, held) {
                let publish = PublishRef {
                    dup: false,
                    qos: delivery.qos,
                    retain: delivery.retain,
                    topic: &delivery.msg.topic[prefix..],
                    packet_id,
                    properties: &delivery.msg.properties,
                    payload: &delivery.msg.payload,
                };
                if !fits(client, || publish.encoded_len(client.version)) {
                    self.too_large(client, &delivery);
                    continue;
                }
                if let Err(err) = publish.encode(client.version, &mut self.wbuf) {
                    tracing::warn!(?err, "could not encode PUBLISH");
                }
                None
            } else {
                let mut publish =
                    delivery.to_publish_for(client.version.is_v5(), packet_id, false, now);
                if prefix > 0 {
                    publish.topic = publish.topic.slice_ref(&publish.topic[prefix..]);
                }
                // A held packet takes no new alias: the packets after it would
                // otherwise be written with an alias the client does not know yet.
                let new_alias = if held {
                    existing_out_alias(client, &mut publish);
                    None
                } else {
                    apply_out_alias(client, &mut publish)
                };
                let packet = Packet::Publish(publish);
                if !fits(client, || packet.encoded_len(client.version)) {
                    self.too_large(client, &delivery);
                    continue;
                }
                // The alias counts only once the client has the packet that sets it.
                if let Some((topic, alias)) = new_alias {
                    client
                        .aliases
                        .get_or_insert_with(Default::default)
                        .outbound
                        .insert(topic, alias);
                }
                Some(packet)
            };
            sent[delivery.qos as usize] += 1;
            sent_payload[delivery.qos as usize] += delivery.msg.payload.len() as u64;
            self.broker
                .events
                .emit(crate::events::EventKind::MessageDelivered, || {
                    Event::MessageDelivered {
                        client_id: client.client_id().clone(),
                        topic: delivery.msg.topic.clone(),
                        qos: delivery.qos,
                    }
                });
            if qos1 {
                let inflight = Inflight {
                    packet_id,
                    delivery,
                    released: false,
                };
                // QoS 2: remember the packet id, so a restart resends it with DUP
                // and the receiver can recognise the duplicate.
                let seq = inflight.delivery.stored.seq();
                if let (Some(seq), starling_codec::QoS::ExactlyOnce) = (seq, inflight.delivery.qos)
                {
                    self.journal.in_flight(client.client_id(), seq, &inflight);
                }
                st.push_inflight(inflight);
            }
            match packet {
                Some(packet) if held || !self.pending_acks.is_empty() => {
                    self.send_ack(packet, held, client.version);
                }
                Some(packet) => {
                    if let Err(err) = packet.encode(client.version, &mut self.wbuf) {
                        tracing::warn!(?err, "could not encode PUBLISH");
                    }
                }
                None => {}
            }
        }
        drop(st);
        // One update of the shared counter per drain, not per message.
        for (qos, n) in sent.into_iter().enumerate() {
            if n > 0 {
                self.broker.metrics.sent.add_at(qos, n);
                self.broker
                    .metrics
                    .sent_payload
                    .add_at(qos, sent_payload[qos]);
            }
        }
        true
    }

    /// Whether `delivery` can be encoded straight from the stored message:
    /// nothing in it is rewritten for this client (no topic alias, and in
    /// MQTT 5 no subscription identifier or remaining expiry to set) and it
    /// goes to the write buffer now (not held for the store, nothing held
    /// before it).
    fn encodes_directly(&self, client: &Client, delivery: &Delivery, held: bool) -> bool {
        !held
            && self.pending_acks.is_empty()
            && client.out_alias_max == 0
            && (!client.version.is_v5()
                || (delivery.subscription_ids.is_empty()
                    && delivery.msg.properties.subscription_identifiers.is_empty()
                    && delivery.msg.expires_at.is_none()))
    }

    /// Drops a delivery larger than the client's Maximum Packet Size
    /// [MQTT-3.1.2-25], counted.
    fn too_large(&self, client: &Client, delivery: &Delivery) {
        client
            .session
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.broker.metrics.drops.inc(DropReason::TooLarge as usize);
        self.broker
            .events
            .emit(crate::events::EventKind::MessageDropped, || {
                Event::MessageDropped {
                    client_id: client.client_id().clone(),
                    topic: delivery.msg.topic.clone(),
                    reason: DropReason::TooLarge,
                }
            });
    }

    /// Why the connection must close once [`Machine::drain`] said it is no
    /// longer the session's: an operator's kick (which may end the session),
    /// else a takeover.
    pub(crate) fn detached(&self, client: &mut Client) -> Close {
        match client.session.state.lock().kicked(self.conn_id) {
            Some(Kick::EndSession) => {
                client.expiry_interval = 0;
                Close::Administrative
            }
            Some(Kick::SlowConsumer) => Close::SlowConsumer,
            Some(Kick::TakenOver) => Close::TakenOver,
            Some(Kick::Fenced) => Close::Fenced,
            Some(Kick::Draining) => Close::Draining,
            Some(_) => Close::Administrative,
            None => Close::TakenOver,
        }
    }

    /// Resends in-flight messages after a session resumes: PUBLISH with DUP, or
    /// PUBREL for QoS 2 messages already received by the client.
    pub(crate) fn resend_inflight(&mut self, client: &Client) {
        self.resend_only(client, None);
    }

    /// Resends the in-flight messages with these packet ids (all: `None`),
    /// as [`Machine::resend_inflight`] does.
    pub(crate) fn resend_only(&mut self, client: &Client, ids: Option<&[u16]>) {
        let now = Instant::now();
        let st = client.session.state.lock();
        for inflight in st.inflight() {
            if ids.is_some_and(|ids| !ids.contains(&inflight.packet_id)) {
                continue;
            }
            let packet = if inflight.released {
                Packet::PubRel(starling_codec::Ack::new(inflight.packet_id))
            } else {
                let mut publish = inflight.delivery.to_publish(inflight.packet_id, true, now);
                // A session resumed through a listener with another mountpoint
                // does not show this client what lies outside its own.
                let mount = client.mountpoint.as_deref();
                let Some(topic) = mount::strip(mount, &publish.topic) else {
                    continue;
                };
                publish.topic = topic;
                Packet::Publish(publish)
            };
            if let Err(err) = packet.encode(client.version, &mut self.wbuf) {
                tracing::warn!(?err, "could not encode resend");
            }
        }
    }

    /// Writes the DISCONNECT an MQTT 5 client gets for `close`, if any.
    pub(crate) fn disconnect(&mut self, client: &Client, close: &Close) {
        let version = client.version;
        if version.is_v5() {
            let cluster = self.broker.config.cluster.as_ref();
            let reference = cluster.and_then(|c| c.server_reference.as_deref());
            if let Some(code) = close.server_reason(reference) {
                let mut disconnect = Disconnect::new(code);
                if code == starling_codec::ReasonCode::USE_ANOTHER_SERVER {
                    disconnect.properties.server_reference = reference.map(Into::into);
                }
                // A reason string says which rule was broken, unless it would
                // push the packet over the client's maximum ([MQTT-3.1.2-25]);
                // so does the reference, past that ([MQTT-3.1.2-24]).
                disconnect.properties.reason_string = close.reason_string().map(Into::into);
                let fits = |d: &Disconnect| {
                    Packet::Disconnect(d.clone())
                        .encoded_len(version)
                        .is_ok_and(|n| client.fits(n))
                };
                if !fits(&disconnect) {
                    disconnect.properties.reason_string = None;
                }
                if !fits(&disconnect) {
                    disconnect.properties.server_reference = None;
                }
                self.send(&Packet::Disconnect(disconnect), version);
            }
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;

//! A persistent session moving to another node of a cluster: written out
//! by the node that held it ([`BrokerState::hand_over`]) and installed by
//! the node its client came back to ([`BrokerState::take_handover`]), which
//! then resumes it (session present = 1) with its subscriptions, queued
//! messages, in-flight messages and QoS 2 packet ids.
//!
//! The form is a list of entries (tag, length, a store record), cut into
//! chunks of about [`CHUNK`] bytes so that each fits one NATS message.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use starling_codec::{ByteString, QoS};
use tokio::time::Instant;

use crate::journal::{commit, message_from_record, message_record, Journal};
use crate::message::{Delivery, Inflight, Stored};
use crate::session::{Session, SubEntry};
use crate::store::{MessageRecord, SessionRecord, SubscriptionRecord};
use crate::topic_tree::Subscriber;
use crate::BrokerState;

/// Bytes per chunk, about (one entry may make a chunk longer).
pub const CHUNK: usize = 256 * 1024;

const SESSION: u8 = 1;
const SUBSCRIPTION: u8 = 2;
pub(crate) const QUEUED: u8 = 3;
const IN_FLIGHT: u8 = 4;
const QOS2_RECEIVED: u8 = 5;

/// A handover that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed session handover")]
pub struct HandoverError;

/// Collects entries into chunks.
#[derive(Default)]
struct Writer {
    chunks: Vec<Bytes>,
    buf: BytesMut,
}

impl Writer {
    fn entry(&mut self, tag: u8, record: &[u8]) {
        self.buf.put_u8(tag);
        self.buf
            .put_u32(u32::try_from(record.len()).unwrap_or(u32::MAX));
        self.buf.put_slice(record);
        if self.buf.len() >= CHUNK {
            self.chunks.push(self.buf.split().freeze());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() || self.chunks.is_empty() {
            self.chunks.push(self.buf.freeze());
        }
        self.chunks
    }
}

impl BrokerState {
    /// Another node took `client_id` over: tells its connection here, if
    /// any, to close with 0x8E Session taken over (the session stays, for
    /// [`BrokerState::hand_over`]). `false` when it is not connected.
    pub fn kick_taken_over(&self, client_id: &str) -> bool {
        match self.session(client_id) {
            Some(s) => s.state.lock().kick_taken_over(&s.notify),
            None => false,
        }
    }

    /// Whether `client_id` has a connection attached here.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.session(client_id)
            .is_some_and(|s| s.state.lock().is_connected())
    }

    /// Takes the offline persistent session of `client_id` out of the
    /// subscription index (a message routed from now on is not queued for it
    /// here), ahead of [`BrokerState::hand_over`]. Returns the cluster's
    /// [`crate::cluster::Cluster::last_stamp`] at that moment: the session had this
    /// node's messages up to it. `None` when there is no such session, it is
    /// connected or it is not persistent.
    pub fn leave_index(&self, client_id: &str) -> Option<u64> {
        let session = self.session(client_id)?;
        {
            let st = session.state.lock();
            if st.is_connected() || st.expiry_interval() == 0 {
                return None;
            }
        }
        Some(self.unsubscribe_all(&session))
    }

    /// Writes out the offline session of `client_id` and removes it from this
    /// node (its wills and expiry timers see it as resumed and do nothing;
    /// the store forgets it). `None` when there is no such session or it is
    /// not persistent, or it is being handed over already; a connected
    /// session is left alone.
    pub async fn hand_over(self: &Arc<Self>, client_id: &str) -> Option<Vec<Bytes>> {
        let session = self.session(client_id)?;
        let mut w = Writer::default();
        let spilled;
        let qos2;
        {
            let st = session.state.lock();
            if st.is_connected() || st.expiry_interval() == 0 {
                return None;
            }
            // Once only, decided under the lock: two takeovers served at
            // once (seen: a claim and its client's retry on one node) would
            // otherwise both write it out, the second with an empty queue.
            if session.handed_over.swap(true, Ordering::Relaxed) {
                return None;
            }
        }
        // Out of the index first: a message routed from now on is not
        // queued for it here (it is the new owner's once it subscribed).
        self.unsubscribe_all(&session);
        {
            let mut st = session.state.lock();
            st.next_generation();
            let rec = SessionRecord {
                expiry_interval: st.expiry_interval(),
                disconnected_at_ms: 0,
            };
            w.entry(SESSION, &rec.encode());
            for (filter, entry) in st.subscriptions() {
                let rec = SubscriptionRecord {
                    options: entry.options,
                    id: entry.id,
                };
                let mut b = BytesMut::new();
                b.put_u16(u16::try_from(filter.len()).unwrap_or(u16::MAX));
                b.put_slice(filter.as_bytes());
                b.put_slice(&rec.encode());
                w.entry(SUBSCRIPTION, &b);
            }
            for i in st.take_all_inflight() {
                if let Some(r) = crate::journal::inflight_record(&i) {
                    w.entry(IN_FLIGHT, &r);
                }
            }
            let in_memory = st.take_queued(|_| true);
            spilled = st.take_spill();
            for d in &in_memory {
                if let Some(r) = message_record(d) {
                    w.entry(QUEUED, &r);
                }
            }
            qos2 = st.incoming_qos2();
        }
        // The spilled tail of the queue, read back whole from the store.
        if let (Some((from, end)), Some(store)) = (spilled, self.store()) {
            let id = session.client_id.clone();
            match store
                .read_queue(id, from, end, usize::MAX, usize::MAX)
                .await
            {
                Ok((records, _)) => {
                    for (_, rec) in records {
                        // In flight before a restart: resent with its packet id.
                        let tag = if rec.packet_id != 0 && rec.publish.qos == QoS::ExactlyOnce {
                            IN_FLIGHT
                        } else {
                            QUEUED
                        };
                        if let Ok(raw) = rec.encode() {
                            w.entry(tag, &raw);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(%client_id, "a handover could not read the stored queue: {e}");
                }
            }
        }
        for id in qos2 {
            w.entry(QOS2_RECEIVED, &id.to_be_bytes());
        }
        {
            let mut sessions = self.sessions.lock();
            if sessions
                .get(client_id)
                .is_some_and(|s| Arc::ptr_eq(s, &session))
            {
                sessions.remove(client_id);
            }
        }
        if session.persistent.swap(false, Ordering::Relaxed) {
            let mut journal = Journal::new();
            journal.session_ended(session.client_id.clone());
            // Written before the new node hears of the session: a store
            // that replicates it must not remove it after the new owner
            // wrote it again.
            if let Some(store) = self.store() {
                let _ = crate::journal::commit_and_wait(store, journal).await;
            }
        }
        Some(w.finish())
    }

    /// Installs a session handed over by another node, offline, for the
    /// connection of `client_id` that follows to resume. Any session of that
    /// id here is replaced. Its subscriptions enter the index last, at once;
    /// returns the cluster's [`crate::cluster::Cluster::last_stamp`] at that moment
    /// (this node's messages after it reach the session here).
    pub fn take_handover(
        self: &Arc<Self>,
        client_id: &str,
        chunks: &[Bytes],
    ) -> Result<u64, HandoverError> {
        let entries = read(chunks)?;
        let Some((SESSION, first)) = entries.first() else {
            return Err(HandoverError);
        };
        let rec = SessionRecord::decode(first).map_err(|_| HandoverError)?;
        let id = ByteString::from(client_id);
        let session = Arc::new(Session::new(
            id.clone(),
            rec.expiry_interval,
            self.queue_limits(),
        ));
        let persistent = self.store().is_some();
        session.persistent.store(persistent, Ordering::Relaxed);
        let mut journal = Journal::new();
        if persistent {
            journal.session(&id, rec.expiry_interval, false);
        }
        let old = self.sessions.lock().insert(session.clone());
        if let Some(old) = old {
            self.unsubscribe_all(&old);
        }
        let mut subscriptions = Vec::new();
        for (tag, raw) in &entries[1..] {
            if *tag == SUBSCRIPTION {
                subscriptions.push(raw.clone());
            } else {
                self.install(&session, *tag, raw.clone(), &mut journal)?;
            }
        }
        let mark = self.subscribe_handed(&session, subscriptions, &mut journal)?;
        commit(self.store(), journal);
        Ok(mark)
    }

    /// Puts a handed-over session's subscriptions into the index under one
    /// lock; returns [`crate::cluster::Cluster::last_stamp`] read under it.
    fn subscribe_handed(
        &self,
        session: &Arc<Session>,
        records: Vec<Bytes>,
        journal: &mut Journal,
    ) -> Result<u64, HandoverError> {
        let mut subscriptions = Vec::with_capacity(records.len());
        for mut raw in records {
            if raw.len() < 2 {
                return Err(HandoverError);
            }
            let len = usize::from(raw.get_u16());
            if raw.len() < len {
                return Err(HandoverError);
            }
            let filter = ByteString::try_from(raw.split_to(len)).map_err(|_| HandoverError)?;
            let rec = SubscriptionRecord::decode(&raw).map_err(|_| HandoverError)?;
            subscriptions.push((filter, rec));
        }
        let cluster = self.cluster();
        let mut added = Vec::new();
        let mark = {
            let mut tree = self.topics.write();
            for (filter, rec) in &subscriptions {
                let (share, inner) = crate::broker::split_share(filter);
                let subscriber = Subscriber {
                    session: session.clone(),
                    options: rec.options,
                    id: rec.id,
                };
                if !tree.subscribe(share, inner, subscriber) {
                    added.push(filter.clone());
                }
            }
            cluster.last_stamp()
        };
        for filter in added {
            cluster.interest(&filter, true);
        }
        let persistent = session.persistent.load(Ordering::Relaxed);
        let mut st = session.state.lock();
        for (filter, rec) in subscriptions {
            if persistent {
                journal.subscribed(&session.client_id, &filter, rec.options, rec.id);
            }
            let entry = SubEntry {
                options: rec.options,
                id: rec.id,
            };
            st.subscribe(filter, entry);
        }
        Ok(mark)
    }

    /// Installs a session rebuilt from a copy kept elsewhere as an offline
    /// session here (a dead node's session adopted before its client came
    /// back): as [`BrokerState::take_handover`], and its expiry runs from now.
    pub fn adopt_handover(
        self: &Arc<Self>,
        client_id: &str,
        chunks: &[Bytes],
    ) -> Result<u64, HandoverError> {
        let mark = self.take_handover(client_id, chunks)?;
        if let Some(session) = self.session(client_id) {
            let expiry = {
                let mut st = session.state.lock();
                st.restored();
                st.expiry_interval()
            };
            if expiry != u32::MAX {
                let wait = std::time::Duration::from_secs(u64::from(expiry));
                crate::lifecycle::schedule_expiry(self, session, 1, wait);
            }
        }
        Ok(mark)
    }

    pub(crate) fn install(
        self: &Arc<Self>,
        session: &Arc<Session>,
        tag: u8,
        mut raw: Bytes,
        journal: &mut Journal,
    ) -> Result<(), HandoverError> {
        match tag {
            SUBSCRIPTION => {
                self.subscribe_handed(session, vec![raw], journal)?;
            }
            QUEUED | IN_FLIGHT => {
                let rec = MessageRecord::decode(&raw).map_err(|_| HandoverError)?;
                let msg = Arc::new(message_from_record(&rec));
                if msg.is_expired(Instant::now()) {
                    return Ok(());
                }
                let delivery = Delivery {
                    qos: rec.publish.qos,
                    retain: rec.publish.retain,
                    subscription_ids: rec.publish.properties.subscription_identifiers.clone(),
                    share: None,
                    stored: Stored::NOT,
                    weight: msg.weight(),
                    msg,
                };
                if tag == IN_FLIGHT && rec.packet_id != 0 && rec.publish.qos != QoS::AtMostOnce {
                    let mut inflight = Inflight {
                        packet_id: rec.packet_id,
                        delivery,
                        released: rec.released,
                    };
                    let mut st = session.state.lock();
                    // Stored here too: it survives this node as it did the last.
                    if session.persistent.load(Ordering::Relaxed) {
                        let seq = st.take_seq();
                        inflight.delivery.stored = Stored::at(seq);
                        journal.in_flight(&session.client_id, seq, &inflight);
                    }
                    st.push_inflight(inflight);
                } else {
                    session.enqueue(delivery, self.store().zip(Some(journal)));
                }
            }
            QOS2_RECEIVED => {
                if raw.len() != 2 {
                    return Err(HandoverError);
                }
                session.state.lock().received_qos2(raw.get_u16());
            }
            _ => return Err(HandoverError),
        }
        Ok(())
    }
}

/// Builds a handover from store records (a session recovered from a copy
/// kept elsewhere, such as a cluster's replica of a dead node's sessions),
/// for [`BrokerState::take_handover`].
#[derive(Default)]
pub struct HandoverBuilder {
    w: Writer,
    started: bool,
}

impl HandoverBuilder {
    /// Starts with the session itself (it must come first).
    pub fn new(session: &SessionRecord) -> HandoverBuilder {
        let mut w = Writer::default();
        w.entry(SESSION, &session.encode());
        HandoverBuilder { w, started: true }
    }

    /// A subscription: `filter`, then its record.
    pub fn subscription(&mut self, filter: &str, record: &SubscriptionRecord) {
        let mut b = BytesMut::new();
        b.put_u16(u16::try_from(filter.len()).unwrap_or(u16::MAX));
        b.put_slice(filter.as_bytes());
        b.put_slice(&record.encode());
        self.w.entry(SUBSCRIPTION, &b);
    }

    /// A queued message (an encoded [`MessageRecord`]); one with a packet
    /// id was in flight and is resent with it.
    pub fn message(&mut self, record: &MessageRecord, raw: &[u8]) {
        let tag = if record.packet_id != 0 {
            IN_FLIGHT
        } else {
            QUEUED
        };
        self.w.entry(tag, raw);
    }

    /// An incoming QoS 2 packet id awaiting PUBREL.
    pub fn qos2_received(&mut self, packet_id: u16) {
        self.w.entry(QOS2_RECEIVED, &packet_id.to_be_bytes());
    }

    /// The chunks (empty when no session was given).
    pub fn finish(self) -> Vec<Bytes> {
        if self.started {
            self.w.finish()
        } else {
            Vec::new()
        }
    }
}

/// The entries of a handover, in order.
fn read(chunks: &[Bytes]) -> Result<Vec<(u8, Bytes)>, HandoverError> {
    let mut out = Vec::new();
    for chunk in chunks {
        let mut b = chunk.clone();
        while !b.is_empty() {
            if b.len() < 5 {
                return Err(HandoverError);
            }
            let tag = b.get_u8();
            let len = b.get_u32() as usize;
            if b.len() < len {
                return Err(HandoverError);
            }
            out.push((tag, b.split_to(len)));
        }
    }
    Ok(out)
}

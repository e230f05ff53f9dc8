//! What an operator sees of the broker and may do to it, for the admin API
//! (`starling-admin`): read-only views of sessions, connections,
//! subscriptions and retained messages, and the actions (disconnect a client,
//! end a session, delete a retained message, publish). Views are copies taken
//! under each session's lock in turn, never under the registry's lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use starling_codec::{ByteString, Properties, QoS};
use tokio::time::Instant;

use crate::broker::BrokerState;
use crate::journal::{commit, Journal};
use crate::message::Message;
use crate::session::{ConnInfo, Session};

/// A session as an operator sees it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// The client identifier.
    pub client_id: ByteString,
    /// The attached connection, if any.
    pub connection: Option<ConnInfo>,
    /// The user name of the last connection.
    pub username: Option<ByteString>,
    /// Whether the session is kept in the store (it outlives its connection).
    pub persistent: bool,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// Messages queued, not yet sent.
    pub queued: usize,
    /// Bytes those messages weigh.
    pub queued_bytes: usize,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement.
    pub in_flight: usize,
    /// Messages dropped for this session (full queue, too large).
    pub dropped: u64,
    /// Subscriptions: filter (as the broker routes it) and granted QoS.
    pub subscriptions: Vec<(ByteString, QoS)>,
}

impl SessionView {
    fn of(session: &Session) -> SessionView {
        let st = session.state.lock();
        let (username, _) = st.owner();
        let mut subscriptions: Vec<(ByteString, QoS)> = st
            .subscriptions()
            .map(|(f, e)| (f.clone(), e.options.qos))
            .collect();
        subscriptions.sort();
        SessionView {
            client_id: session.client_id.clone(),
            connection: st.link().map(|l| l.info),
            username: username.cloned(),
            persistent: session.persistent.load(Ordering::Relaxed),
            expiry_interval: st.expiry_interval(),
            queued: st.queue_len(),
            queued_bytes: st.queued_bytes(),
            in_flight: st.inflight_len(),
            dropped: session.dropped.load(Ordering::Relaxed),
            subscriptions,
        }
    }
}

/// Broker-wide figures, as the admin API's stats show them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Sessions held, connected or not.
    pub sessions: usize,
    /// Sessions kept in the store.
    pub persistent_sessions: usize,
    /// Messages queued across every session.
    pub queued: usize,
    /// Bytes those messages weigh.
    pub queued_bytes: usize,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement.
    pub in_flight: usize,
}

impl BrokerState {
    /// Every session, sorted by client id (a copy of each, taken in turn).
    pub fn session_views(&self) -> Vec<SessionView> {
        let mut views: Vec<SessionView> = self
            .all_sessions()
            .iter()
            .map(|s| SessionView::of(s))
            .collect();
        views.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        views
    }

    /// The session of `client_id`, if the broker holds one.
    pub fn session_view(&self, client_id: &str) -> Option<SessionView> {
        self.session(client_id).map(|s| SessionView::of(&s))
    }

    /// Counts across every session, taken under each session's lock in turn.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.all_sessions() {
            let st = s.state.lock();
            t.sessions += 1;
            t.persistent_sessions += usize::from(s.persistent.load(Ordering::Relaxed));
            t.queued += st.queue_len();
            t.queued_bytes += st.queued_bytes();
            t.in_flight += st.inflight_len();
        }
        t
    }

    /// Disconnects the client `client_id` (MQTT 5: DISCONNECT 0x98
    /// Administrative action); its will is published and its session stays
    /// as its expiry says. `false` when it is not connected.
    pub fn kick(&self, client_id: &str) -> bool {
        match self.session(client_id) {
            Some(s) => s.state.lock().kick(false, &s.notify),
            None => false,
        }
    }

    /// Ends the session of `client_id` now: a connected client is
    /// disconnected (0x98) and its session ends with it; an offline session
    /// is discarded with its queue and subscriptions. `false` when there is
    /// no such session.
    pub fn end_session(self: &Arc<Self>, client_id: &str) -> bool {
        let Some(session) = self.session(client_id) else {
            return false;
        };
        let generation = {
            let mut st = session.state.lock();
            if st.kick(true, &session.notify) {
                return true;
            }
            st.next_generation();
            st.generation()
        };
        crate::lifecycle::end_session_now(self, &session, generation);
        true
    }

    /// Retained messages whose topic matches `filter`, at most `limit`.
    pub fn retained_matching(&self, filter: &str, limit: usize) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .matching_at_most(filter, Instant::now(), limit)
    }

    /// Deletes the retained message on `topic` (memory and store); `false`
    /// when there was none.
    pub fn delete_retained(&self, topic: &str) -> bool {
        if self.retained_matching(topic, 1).is_empty() {
            return false;
        }
        let clear = Message {
            topic: topic.into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        };
        let mut journal = Journal::new();
        self.retain(&Arc::new(clear), &mut journal);
        commit(self.store(), journal);
        true
    }

    /// Publishes a message as the broker (no client): routed, retained and
    /// forwarded as a client's would be. Returns how many sessions it was
    /// offered to, or why it was refused, as an MQTT 5 client's QoS 1/2
    /// PUBLISH would be (a retained-message limit, or with
    /// `queue-overflow = "reject"` a full queue).
    pub fn publish_as_operator(
        &self,
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<usize, crate::Refusal> {
        let now = Instant::now();
        let expires_at = properties
            .message_expiry_interval
            .map(|s| now + std::time::Duration::from_secs(u64::from(s)));
        let msg = Arc::new(Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
            publisher: None,
        });
        let mut journal = Journal::new();
        // Refused as a client's MQTT 5 PUBLISH would be, so that the
        // operator is told.
        let mut routed = crate::broker::Routed {
            may_refuse: true,
            ..crate::broker::Routed::default()
        };
        let offered = self.publish_from_client(&msg, &mut journal, Some(&mut routed));
        commit(self.store(), journal);
        match routed.refused {
            Some(why) => Err(why),
            None => Ok(offered),
        }
    }
}

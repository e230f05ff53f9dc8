//! How sessions begin and end: attaching a connection (with takeover), detaching
//! it, the will message with its delay, and session expiry, with the store
//! writes each step implies for persistent sessions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use starling_codec::{ByteString, Will};
use tokio::time::Instant;

use crate::auth::{Access, Acl, Grant, ListenerFile};
use crate::broker::BrokerState;
use crate::events::Event;
use crate::journal::{commit, Journal};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::{Link, Session};

/// Attaches connection `conn_id` to the session of `client_id`, taking it over
/// from another connection if one holds it. A clean start discards any stored
/// session. The session takes the user name and the listener's own ACL (if
/// any) for read checks at delivery. Returns the session and whether a stored
/// one was resumed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attach(
    broker: &Arc<BrokerState>,
    client_id: &ByteString,
    clean_start: bool,
    expiry_interval: u32,
    username: Option<ByteString>,
    acl: Option<Arc<ListenerFile<Acl>>>,
    grant: Option<Arc<Grant>>,
    link: Link,
) -> (Arc<Session>, bool) {
    // Only topic rules change what a delivery may read: a superuser or an
    // expiry alone (a bridge, a JWT without an acl claim) leaves deliveries
    // unchecked, as before.
    if grant.as_ref().is_some_and(|g| g.rules.is_some()) {
        broker.grants_seen.store(true, Ordering::Release);
    }
    let mut link = Some(link);
    let mut discarded = None;
    let result = {
        let mut sessions = broker.sessions.lock();
        let resumed = match sessions.get(client_id) {
            Some(existing) => {
                let mut st = existing.state.lock();
                if let Some(old) = st.take_link() {
                    // The old connection is told to go; it publishes its own will.
                    old.taken_over(&existing.notify);
                    Metrics::add(&broker.metrics.takeovers, 1);
                    tracing::info!(client_id = %client_id, "session taken over");
                }
                // A clean start discards the old session; so does a session that
                // was to end with its connection ([MQTT-3.1.2-6]): it is never resumed.
                if clean_start || st.expiry_interval() == 0 {
                    drop(st);
                    discarded = sessions.remove(client_id);
                    None
                } else {
                    st.set_expiry_interval(expiry_interval);
                    st.set_owner(username.clone(), acl.clone(), grant.clone());
                    if let Some(link) = link.take() {
                        st.attach(link);
                    }
                    drop(st);
                    Some(existing.clone())
                }
            }
            None => None,
        };
        match resumed {
            Some(session) => (session, true),
            None => {
                // A copy of its own, not a clone: cloning would turn the id's
                // buffer into a shared one (a second allocation) that
                // outlives the CONNECT it came from.
                let session = Arc::new(Session::new(
                    ByteString::from(&**client_id),
                    expiry_interval,
                    broker.queue_limits(),
                ));
                {
                    let mut st = session.state.lock();
                    st.set_owner(username, acl, grant);
                    if let Some(link) = link.take() {
                        st.attach(link);
                    }
                }
                sessions.insert(session.clone());
                broker
                    .events
                    .emit(crate::events::EventKind::SessionCreated, || {
                        Event::SessionCreated {
                            client_id: session.client_id.clone(),
                        }
                    });
                (session, false)
            }
        }
    };
    if let Some(store) = &broker.store {
        let (session, resumed) = &result;
        let mut journal = Journal::new();
        if let Some(old) = &discarded {
            if old.persistent.swap(false, Ordering::Relaxed) {
                journal.session_ended(client_id.clone());
            }
        }
        let was = session.persistent.load(Ordering::Relaxed);
        let now = expiry_interval > 0;
        if now {
            journal.session(client_id, expiry_interval, true);
        } else if was {
            // Resumed with expiry 0: the session now ends with this connection.
            journal.session_ended(client_id.clone());
        }
        if *resumed && was {
            // A will waiting for its delay is cancelled by the resume.
            journal.will_done(client_id.clone());
        }
        session.persistent.store(now, Ordering::Relaxed);
        commit(Some(store), journal);
    }
    if let Some(old) = discarded {
        broker
            .events
            .emit(crate::events::EventKind::SessionEnded, || {
                Event::SessionEnded {
                    client_id: old.client_id.clone(),
                }
            });
        broker.unsubscribe_all(&old);
    }
    result
}

/// What a connection leaves behind when it ends.
pub(crate) struct Departure {
    /// The session it was attached to.
    pub session: Arc<Session>,
    /// The will to publish (now or after its delay); `None` when the client
    /// had none or ended normally.
    pub will: Option<Will>,
    /// The connection had a will, which the cluster's copy of is to go
    /// (published here, or discarded by a normal DISCONNECT); not when it
    /// is left to the cluster ([`crate::connection::Close::Fenced`]).
    pub clear_shared_will: bool,
    /// The session expiry in force at the end.
    pub expiry_interval: u32,
    /// The client's user name, for the will's ACL check.
    pub username: Option<ByteString>,
    /// The listener's own ACL, if it has one.
    pub acl: Option<Arc<ListenerFile<Acl>>>,
    /// What its authentication source granted.
    pub grant: Option<Arc<Grant>>,
}

/// Detaches a finished connection from its session and starts what follows: the
/// will (now or after its delay) and the session's expiry.
pub(crate) fn detach(broker: &Arc<BrokerState>, conn_id: u64, client: Departure) {
    let session = client.session;
    let will = client.will;
    if client.clear_shared_will {
        broker.cluster().will(&session.client_id, conn_id, None);
    }
    let will_delay = will
        .as_ref()
        .and_then(|w| w.properties.will_delay_interval)
        .unwrap_or(0);
    let detached = {
        let mut st = session.state.lock();
        st.detach(conn_id, client.expiry_interval)
            .map(|generation| (generation, client.expiry_interval))
    };
    if detached.is_some() {
        broker.redistribute_shared(&session);
        if client.expiry_interval > 0 {
            session.state.lock().park_queue();
        }
    }
    let publish = |will| {
        let (username, acl) = (client.username.as_deref(), client.acl.as_deref());
        let grant = client.grant.as_deref();
        publish_will(broker, &session.client_id, username, acl, grant, will);
    };
    let Some((generation, expiry)) = detached else {
        // Taken over. The will goes now unless the new connection resumed this
        // session and the will has a delay (the resume came within it).
        if let Some(will) = will {
            let resumed = broker
                .sessions
                .lock()
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, &session));
            if will_delay == 0 || !resumed {
                publish(will);
            }
        }
        return;
    };
    if expiry == 0 {
        end_session_unless_resumed(broker, &session, generation);
        if let Some(will) = will {
            publish(will);
        }
        return;
    }
    if let (Some(store), true) = (&broker.store, session.persistent.load(Ordering::Relaxed)) {
        let mut journal = Journal::new();
        journal.session(&session.client_id, expiry, false);
        if let Some(w) = will.as_ref().filter(|_| will_delay > 0) {
            let delay = will_delay.min(expiry);
            journal.will(&session.client_id, w, delay, client.username.as_deref());
        }
        commit(Some(store), journal);
    }
    if let Some(will) = will {
        if will_delay == 0 {
            publish(will);
        } else {
            // The will waits for its delay, or for the end of the session if sooner.
            let wait = Duration::from_secs(u64::from(will_delay.min(expiry)));
            schedule_will(
                broker,
                Some(session.clone()),
                session.client_id.clone(),
                client.username.clone(),
                will,
                generation,
                wait,
            );
        }
    }
    if expiry != u32::MAX {
        schedule_expiry(
            broker,
            session,
            generation,
            Duration::from_secs(u64::from(expiry)),
        );
    }
}

/// Publishes `will` after `wait`, unless `session` was resumed in the meantime
/// (its generation changed or a connection is attached).
pub(crate) fn schedule_will(
    broker: &Arc<BrokerState>,
    session: Option<Arc<Session>>,
    client_id: ByteString,
    username: Option<ByteString>,
    will: Will,
    generation: u64,
    wait: Duration,
) {
    let state = broker.clone();
    broker.timers.schedule(wait, move || {
        let broker = state;
        let resumed = session.as_ref().is_some_and(|s| {
            let st = s.state.lock();
            st.resumed_since(generation)
        });
        let mut journal = Journal::new();
        journal.will_done(client_id.clone());
        commit(broker.store(), journal);
        if !resumed {
            // The ACL of the listener the client came through, if it has one.
            let (acl, grant) = session.as_ref().map_or((None, None), |s| {
                let st = s.state.lock();
                (st.owner().1.cloned(), st.grant().cloned())
            });
            publish_will(
                &broker,
                &client_id,
                username.as_deref(),
                acl.as_deref(),
                grant.as_deref(),
                will,
            );
        }
    });
}

/// Ends `session` after `wait` unless it was resumed in the meantime.
pub(crate) fn schedule_expiry(
    broker: &Arc<BrokerState>,
    session: Arc<Session>,
    generation: u64,
    wait: Duration,
) {
    let state = broker.clone();
    broker.timers.schedule(wait, move || {
        if end_session_unless_resumed(&state, &session, generation) {
            tracing::debug!(client_id = %session.client_id, "session expired");
        }
    });
}

/// Ends `session` unless a connection resumed it since `generation`. The check
/// and the removal from the registry happen under the registry lock (taken
/// before the session's own, as in [`attach`]), so a reconnect cannot slip in
/// between. Returns whether the session ended.
fn end_session_unless_resumed(
    broker: &Arc<BrokerState>,
    session: &Arc<Session>,
    generation: u64,
) -> bool {
    {
        let mut sessions = broker.sessions.lock();
        {
            let st = session.state.lock();
            if st.resumed_since(generation) {
                return false;
            }
        }
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.client_id);
        }
    }
    if session.persistent.swap(false, Ordering::Relaxed) {
        let mut journal = Journal::new();
        journal.session_ended(session.client_id.clone());
        commit(broker.store(), journal);
    }
    broker
        .events
        .emit(crate::events::EventKind::SessionEnded, || {
            Event::SessionEnded {
                client_id: session.client_id.clone(),
            }
        });
    broker.unsubscribe_all(session);
    broker.cluster().release(&session.client_id);
    Metrics::add(&broker.metrics.sessions_ended, 1);
    true
}

/// Ends an offline `session` now (an operator's request), unless a
/// connection resumed it since `generation`.
pub(crate) fn end_session_now(broker: &Arc<BrokerState>, session: &Arc<Session>, generation: u64) {
    if end_session_unless_resumed(broker, session, generation) {
        tracing::info!(client_id = %session.client_id, "session ended by an operator");
    }
}

/// Publishes a will, if the ACL (the listener's own `acl`, else the broker's)
/// lets its client write the topic.
pub(crate) fn publish_will(
    broker: &Arc<BrokerState>,
    client_id: &ByteString,
    username: Option<&str>,
    acl: Option<&ListenerFile<Acl>>,
    grant: Option<&Grant>,
    will: Will,
) {
    if !broker.allowed_with(acl, grant, username, client_id, &will.topic, Access::Write) {
        tracing::info!(client_id = %client_id, topic = %will.topic, "will not published: denied by ACL");
        return;
    }
    let mut properties = will.properties;
    properties.will_delay_interval = None;
    let now = Instant::now();
    let msg = Arc::new(Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        expires_at: properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s))),
        properties,
        publisher: Some(client_id.clone()),
    });
    tracing::debug!(client_id = %client_id, topic = %msg.topic, "publishing will");
    let mut journal = Journal::new();
    broker.publish(&msg, &mut journal);
    commit(broker.store(), journal);
    Metrics::add(&broker.metrics.wills_published, 1);
}

impl crate::BrokerState {
    /// Publishes the will of `client_id`, whose connection was on a node
    /// that died (`record` from [`crate::cluster::will_record`]; its delay has passed). The
    /// broker's ACL is checked with the will's user name.
    pub fn publish_lost_will(self: &std::sync::Arc<Self>, client_id: &str, record: &[u8]) -> bool {
        let Ok(rec) = crate::store::WillRecord::decode(record) else {
            return false;
        };
        let will = Will {
            topic: rec.publish.topic,
            payload: rec.publish.payload,
            qos: rec.publish.qos,
            retain: rec.publish.retain,
            properties: rec.publish.properties,
        };
        publish_will(
            self,
            &ByteString::from(client_id),
            rec.username.as_deref(),
            None,
            None,
            will,
        );
        true
    }
}

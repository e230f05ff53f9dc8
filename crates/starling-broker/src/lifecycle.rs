//! How sessions begin and end: attaching a connection (with takeover), detaching
//! it, the will message with its delay, and session expiry.

use std::sync::Arc;
use std::time::Duration;

use starling_codec::{ByteString, Will};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::auth::Access;
use crate::broker::BrokerState;
use crate::connection::{Client, Close};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::{Kick, Link, Session};

/// Attaches connection `conn_id` to the session of `client_id`, taking it over
/// from another connection if one holds it. A clean start discards any stored
/// session. Returns the session and whether a stored one was resumed.
pub(crate) fn attach(
    broker: &Arc<BrokerState>,
    client_id: &ByteString,
    clean_start: bool,
    expiry_interval: u32,
    username: Option<ByteString>,
    conn_id: u64,
    kick: oneshot::Sender<Kick>,
) -> (Arc<Session>, bool) {
    let mut link = Some(Link { conn_id, kick });
    let mut discarded = None;
    let result = {
        let mut sessions = broker.sessions.lock();
        let resumed = match sessions.get(client_id) {
            Some(existing) => {
                let mut st = existing.state.lock();
                if let Some(old) = st.link.take() {
                    // The old connection is told to go; it publishes its own will.
                    let _ = old.kick.send(Kick::TakenOver);
                    Metrics::add(&broker.metrics.takeovers, 1);
                    tracing::info!(client_id = %client_id, "session taken over");
                }
                if clean_start {
                    drop(st);
                    discarded = sessions.remove(client_id);
                    None
                } else {
                    st.generation += 1;
                    st.expiry_interval = expiry_interval;
                    st.username = username.clone();
                    st.link = link.take();
                    drop(st);
                    Some(existing.clone())
                }
            }
            None => None,
        };
        match resumed {
            Some(session) => (session, true),
            None => {
                let session = Arc::new(Session::new(
                    client_id.clone(),
                    expiry_interval,
                    broker.queue_limits(),
                ));
                {
                    let mut st = session.state.lock();
                    st.username = username;
                    st.generation = 1;
                    st.link = link.take();
                }
                sessions.insert(client_id.clone(), session.clone());
                (session, false)
            }
        }
    };
    if let Some(old) = discarded {
        broker.unsubscribe_all(&old);
    }
    result
}

/// Detaches a finished connection from its session and starts what follows: the
/// will (now or after its delay) and the session's expiry.
pub(crate) fn detach(broker: &Arc<BrokerState>, conn_id: u64, client: Client, close: Close) {
    let session = client.session;
    let will = match close {
        Close::Normal => None,
        _ => client.will,
    };
    let will_delay = will
        .as_ref()
        .and_then(|w| w.properties.will_delay_interval)
        .unwrap_or(0);
    let detached = {
        let mut st = session.state.lock();
        if st.is_attached_to(conn_id) {
            st.link = None;
            st.expiry_interval = client.expiry_interval;
            Some((st.generation, client.expiry_interval))
        } else {
            None
        }
    };
    if detached.is_some() {
        broker.redistribute_shared(&session);
    }
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
                publish_will(broker, &client.client_id, client.username.as_deref(), will);
            }
        }
        return;
    };
    if expiry == 0 {
        end_session(broker, &session);
        if let Some(will) = will {
            publish_will(broker, &client.client_id, client.username.as_deref(), will);
        }
        return;
    }
    if let Some(will) = will {
        if will_delay == 0 {
            publish_will(broker, &client.client_id, client.username.as_deref(), will);
        } else {
            // The will waits for its delay, or for the end of the session if sooner.
            let wait = Duration::from_secs(u64::from(will_delay.min(expiry)));
            let broker = broker.clone();
            let session = session.clone();
            let username = client.username.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let resumed = {
                    let st = session.state.lock();
                    st.generation != generation || st.link.is_some()
                };
                if !resumed {
                    publish_will(&broker, &session.client_id, username.as_deref(), will);
                }
            });
        }
    }
    if expiry != u32::MAX {
        let broker = broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
            let expired = {
                let st = session.state.lock();
                st.generation == generation && st.link.is_none()
            };
            if expired {
                tracing::debug!(client_id = %session.client_id, "session expired");
                end_session(&broker, &session);
            }
        });
    }
}

/// Removes a session from the registry (if it is still the registered one) and
/// its subscriptions from the index.
fn end_session(broker: &Arc<BrokerState>, session: &Arc<Session>) {
    {
        let mut sessions = broker.sessions.lock();
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.client_id);
        }
    }
    broker.unsubscribe_all(session);
}

/// Publishes a will, if the ACL lets its client write the topic.
pub(crate) fn publish_will(
    broker: &Arc<BrokerState>,
    client_id: &ByteString,
    username: Option<&str>,
    will: Will,
) {
    if !broker.allowed(username, client_id, &will.topic, Access::Write) {
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
    if msg.retain {
        broker.retain(&msg);
    }
    broker.route(&msg);
}

//! Startup: opening the store and rebuilding sessions, subscriptions, queues,
//! retained messages and waiting wills from what it holds. (Writing records
//! is `journal`.)

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use starling_codec::{ByteString, QoS, Will};
use tokio::time::Instant;

use crate::auth::{Acl, Authenticator};
use crate::broker::{split_share, BrokerState};
use crate::config::Config;
use crate::journal::{commit, Journal};
use crate::message::{Delivery, Stored};
use crate::session::{Inflight, Session, SubEntry};
use crate::store::{unix_ms, Durability, FjallStore, Loaded, Persistence, Store, StoreError};
use crate::topic_tree::Subscriber;

impl BrokerState {
    /// Opens the store in the data directory (unless durability is `none`),
    /// and restores the persistent sessions and retained messages it holds.
    pub fn open(
        config: Config,
        authenticator: Arc<dyn Authenticator>,
        acl: Option<Acl>,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_with_store(config, authenticator, acl, None)
    }

    /// Like [`BrokerState::open`], with `store` in place of the embedded
    /// store in the data directory (when durability is not `none`).
    pub fn open_with_store(
        config: Config,
        authenticator: Arc<dyn Authenticator>,
        acl: Option<Acl>,
        store: Option<Box<dyn Store>>,
    ) -> Result<Arc<Self>, StoreError> {
        let (store, loaded) = match config.durability {
            Durability::None => (None, None),
            durability => {
                let mut store = match store {
                    Some(store) => store,
                    None => Box::new(FjallStore::open(&config.data_dir)?),
                };
                let loaded = store.load()?;
                let interval = Duration::from_millis(config.durability_interval_ms);
                (
                    Some(Persistence::start(store, durability, interval)?),
                    Some(loaded),
                )
            }
        };
        let mut state = Self::new(config, authenticator, acl);
        if let (Some(store), Some(loaded)) = (&store, &loaded) {
            let mut limits = (*state.limits).clone();
            limits.spill = store.reads_queues() && loaded.lazy_queues;
            limits.first_seq = loaded.first_seq.max(1);
            state.limits = Arc::new(limits);
        }
        state.store = store;
        let state = Arc::new(state);
        if let Some(loaded) = loaded {
            restore(&state, loaded);
        }
        Ok(state)
    }
}

/// Rebuilds the broker's state from what the store held.
pub fn restore(state: &Arc<BrokerState>, loaded: Loaded) {
    let now_ms = unix_ms();
    let now = Instant::now();
    let mut journal = Journal::new();
    let mut sessions: HashMap<ByteString, Arc<Session>> = HashMap::new();
    // Records deeper than `max-topic-levels` (written before the limit, or
    // under a higher one) are left in the store but not loaded.
    let max_levels = state.config.max_topic_levels;
    let mut too_deep_count = 0usize;
    for (client, rec) in loaded.sessions {
        let disconnected = if rec.disconnected_at_ms == 0 {
            now_ms
        } else {
            rec.disconnected_at_ms
        };
        let elapsed = now_ms.saturating_sub(disconnected) / 1000;
        if rec.expiry_interval != u32::MAX && elapsed >= u64::from(rec.expiry_interval) {
            journal.session_ended(client);
            continue;
        }
        let session = Arc::new(Session::new(
            client.clone(),
            rec.expiry_interval,
            state.queue_limits(),
        ));
        session.persistent.store(true, Ordering::Relaxed);
        {
            let mut st = session.state.lock();
            // Generation 1: the restored session, before any connection.
            st.restored();
            // Its queue is read when its client is back.
            if loaded.lazy_queues {
                st.restored_spilled();
            }
        }
        if rec.disconnected_at_ms == 0 {
            journal.session(&client, rec.expiry_interval, false);
        }
        if rec.expiry_interval != u32::MAX {
            let left = u64::from(rec.expiry_interval) - elapsed;
            crate::lifecycle::schedule_expiry(state, session.clone(), 1, Duration::from_secs(left));
        }
        sessions.insert(client, session);
    }
    // All are kept (they were accepted); new client ids wait for room.
    let max = state.config.max_sessions;
    if max != 0 && sessions.len() > max {
        tracing::warn!(
            sessions = sessions.len(),
            max_sessions = max,
            "the sessions restored are past max-sessions: CONNECTs with new client ids are \
             refused until some expire"
        );
    }
    let mut granted = Vec::with_capacity(loaded.subscriptions.len());
    {
        let mut tree = state.topics.write();
        for (client, filter, rec) in loaded.subscriptions {
            let Some(session) = sessions.get(&client) else {
                journal.unsubscribed(client, filter);
                continue;
            };
            let (share, inner) = split_share(&filter);
            if too_deep(inner, max_levels, "subscription", &client) {
                too_deep_count += 1;
                continue;
            }
            tree.subscribe(
                share,
                inner,
                Subscriber {
                    session: session.clone(),
                    options: rec.options,
                    id: rec.id,
                },
            );
            granted.push((session.clone(), filter, rec));
        }
    }
    // A session's lock is never taken while `topics` is write-locked.
    for (session, filter, rec) in granted {
        session.state.lock().subscribe(
            filter,
            SubEntry {
                options: rec.options,
                id: rec.id,
            },
        );
    }
    let mut restored = 0usize;
    for (client, seq, rec) in loaded.messages {
        let Some(session) = sessions.get(&client) else {
            journal.forget(&client, seq);
            continue;
        };
        let msg = Arc::new(crate::journal::message_from_record(&rec));
        if msg.is_expired(now) {
            journal.forget(&client, seq);
            continue;
        }
        let delivery = Delivery {
            qos: rec.publish.qos,
            retain: rec.publish.retain,
            subscription_ids: rec.publish.properties.subscription_identifiers.clone(),
            share: None,
            stored: Stored::at(seq),
            weight: msg.weight(),
            msg,
        };
        let mut st = session.state.lock();
        st.note_stored_seq(seq);
        if rec.packet_id != 0 && rec.publish.qos == QoS::ExactlyOnce {
            st.push_inflight(Inflight {
                packet_id: rec.packet_id,
                delivery,
                released: rec.released,
            });
        } else {
            st.restore(delivery);
        }
        restored += 1;
    }
    for (client, id) in loaded.incoming_qos2 {
        match sessions.get(&client) {
            Some(s) => {
                s.state.lock().received_qos2(id);
            }
            None => journal.qos2_released(client, id),
        }
    }
    {
        let mut retained = state.retained.write();
        for rec in loaded.retained {
            let msg = crate::journal::message_from_record(&rec);
            if too_deep(&msg.topic, max_levels, "retained message", &msg.topic) {
                too_deep_count += 1;
            } else if msg.is_expired(now) {
                journal.retained_gone(msg.topic.clone());
            } else {
                retained.set(Arc::new(msg));
            }
        }
        // All are kept (they were accepted); new topics wait for room.
        let (count, bytes) = (retained.len(), retained.bytes());
        let c = &state.config;
        if (c.max_retained_messages != 0 && count > c.max_retained_messages)
            || (c.max_retained_bytes != 0 && bytes > c.max_retained_bytes)
        {
            tracing::warn!(
                count,
                bytes,
                "the retained messages restored are past max-retained-messages or \
                 max-retained-bytes: retained messages on new topics are refused until some are cleared"
            );
        }
    }
    for (client, rec) in loaded.wills {
        if too_deep(&rec.publish.topic, max_levels, "will", &client) {
            too_deep_count += 1;
            continue;
        }
        let will = Will {
            topic: rec.publish.topic.clone(),
            payload: rec.publish.payload.clone(),
            qos: rec.publish.qos,
            retain: rec.publish.retain,
            properties: rec.publish.properties.clone(),
        };
        let wait = Duration::from_millis(rec.deadline_ms.saturating_sub(now_ms));
        crate::lifecycle::schedule_will(
            state,
            sessions.get(&client).cloned(),
            client,
            rec.username.map(ByteString::from),
            will,
            1,
            wait,
        );
    }
    let count = sessions.len();
    state.sessions.lock().extend(sessions.into_values());
    commit(state.store(), journal);
    tracing::info!(
        sessions = count,
        messages = restored,
        skipped = loaded.skipped,
        too_deep = too_deep_count,
        "restored persistent state"
    );
}

/// Whether a stored topic or filter is deeper than `max` levels; logs the
/// record it skips (`what` of `whose`).
fn too_deep(topic: &str, max: usize, what: &str, whose: &str) -> bool {
    let levels = starling_codec::topic::levels(topic);
    let deep = levels > max;
    if deep {
        // A topic of thousands of levels does not belong in a log line whole.
        let end = (0..=whose.len().min(64))
            .rev()
            .find(|&i| whose.is_char_boundary(i))
            .unwrap_or(0);
        tracing::warn!(
            record = what,
            of = &whose[..end],
            levels,
            max_topic_levels = max,
            "stored record skipped: its topic is deeper than max-topic-levels"
        );
    }
    deep
}

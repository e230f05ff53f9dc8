//! Streaming a new subscription's retained messages: when the session's queue
//! runs empty, the connection takes a step of the first walk under way
//! (`session::Walks`) and queues what it found, so the retained messages go
//! out at the pace of the socket and the client's Receive Maximum, whatever
//! their number.

use tokio::time::Instant;

use super::client::Client;
use super::machine::Machine;
use crate::auth::Access;
use crate::message::{Delivery, Stored};
use crate::retained::StepLimits;
use crate::session::SessionState;

/// Messages queued by one step of a walk at most (and no more than the
/// queue's high-water mark, in messages and bytes).
const STEP_MESSAGES: usize = 256;

/// Nodes one step visits at most (the tree's read lock is held for a step).
const STEP_NODES: usize = 4096;

/// Steps taken at most each time the queue runs empty: a filter that matches
/// little of a large tree goes on at the connection's next turn.
const STEPS: usize = 8;

impl Machine {
    /// Queues the next retained messages owed to the session's new
    /// subscriptions, if any; `true` when something was queued. When steps
    /// found nothing but walks remain, the connection is woken to go on.
    pub(crate) fn stream_retained(
        &self,
        client: &Client,
        st: &mut SessionState,
        now: Instant,
    ) -> bool {
        let (high_water, high_water_bytes) = st.high_water();
        for _ in 0..STEPS {
            let Some(walk) = st.retained_walks().current() else {
                return false;
            };
            let limits = StepLimits {
                messages: STEP_MESSAGES.min(high_water),
                bytes: high_water_bytes,
                nodes: STEP_NODES,
            };
            let step =
                self.broker
                    .retained
                    .read()
                    .walk(&walk.filter, walk.after.as_deref(), now, limits);
            let (granted, sub_id) = (walk.granted, walk.sub_id);
            match step.next {
                Some(next) => walk.after = Some(next),
                None => st.retained_walks().finish_current(),
            }
            let mut queued = false;
            for msg in step.messages {
                let readable = self.broker.allowed_with(
                    client.acl.as_deref(),
                    client.grant.as_deref(),
                    client.username.as_deref(),
                    client.client_id(),
                    &msg.topic,
                    Access::Read,
                );
                if !readable {
                    continue;
                }
                st.push(Delivery {
                    qos: msg.qos.min(granted),
                    retain: true,
                    subscription_ids: sub_id.into_iter().collect(),
                    share: None,
                    stored: Stored::NOT,
                    weight: msg.weight(),
                    msg,
                });
                queued = true;
            }
            if queued {
                return true;
            }
        }
        if !st.retained_walks().is_empty() {
            client.session.notify.notify_one();
        }
        false
    }
}

//! A node of a cluster that cannot keep its sessions for the cluster: it
//! lost NATS long enough for the other nodes to take its sessions, or it
//! finds, once back, that another node owns one. Its persistent clients
//! are sent elsewhere ([`BrokerState::fence_persistent`]), a session
//! another node owns is dropped here ([`BrokerState::drop_fenced`]), and
//! the messages only this node had for it are added to the owner's copy
//! ([`BrokerState::merge_queued`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::journal::{commit, Journal};
use crate::BrokerState;

impl BrokerState {
    /// The node stops soon and hands its sessions to the other nodes
    /// meanwhile: `/readyz` says so (a load balancer sends no new clients)
    /// and the cluster accepts no new session here.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether [`BrokerState::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The client ids of the persistent sessions held here.
    pub fn persistent_ids(&self) -> Vec<String> {
        self.all_sessions()
            .into_iter()
            .filter(|s| s.persistent.load(Ordering::Relaxed))
            .map(|s| s.client_id.to_string())
            .collect()
    }

    /// Tells every connection of a persistent session here to close with
    /// DISCONNECT 0x9C Use another server, its will left to the cluster;
    /// the sessions stay, offline. Returns how many were told.
    pub fn fence_persistent(&self) -> usize {
        self.all_sessions()
            .into_iter()
            .filter(|s| s.persistent.load(Ordering::Relaxed))
            .filter(|s| s.state.lock().kick_fenced(&s.notify))
            .count()
    }

    /// Tells connection `conn_id` of `client_id`, if it is still attached,
    /// to close as in [`BrokerState::fence_persistent`] (its will left to
    /// the cluster, whose copy of it stands). Whether it was told.
    pub fn fence_connection(&self, client_id: &str, conn_id: u64) -> bool {
        self.session(client_id)
            .is_some_and(|s| s.state.lock().kick_fenced_conn(conn_id, &s.notify))
    }

    /// The connection attached to `client_id`'s session here, if any.
    pub fn connection_of(&self, client_id: &str) -> Option<u64> {
        self.session(client_id)
            .and_then(|s| s.state.lock().attached_conn())
    }

    /// Tells every connection to close with DISCONNECT 0x9C Use another
    /// server, this node being about to stop; their wills are published as
    /// for any close by the server. Returns how many were told.
    pub fn drain_all(&self) -> usize {
        self.all_sessions()
            .into_iter()
            .filter(|s| s.state.lock().kick_draining(&s.notify))
            .count()
    }

    /// How many sessions here have a connection attached.
    pub fn connected_count(&self) -> usize {
        self.all_sessions()
            .into_iter()
            .filter(|s| s.state.lock().is_connected())
            .count()
    }

    /// Drops the session of `client_id` here, another node owning it: its
    /// connection (if any) closes as in [`BrokerState::fence_persistent`],
    /// then the session goes without a will or an expiry. The store sees it
    /// end (a replicating store must not pass that on). Returns whether
    /// there was one.
    pub async fn drop_fenced(self: &Arc<Self>, client_id: &str, limit: Duration) -> bool {
        let Some(session) = self.session(client_id) else {
            return false;
        };
        if session.state.lock().kick_fenced(&session.notify) {
            let deadline = tokio::time::Instant::now() + limit;
            while self.is_connected(client_id) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.hand_over(client_id).await.is_some()
    }

    /// Adds `records` (encoded store message records) to the queue of the
    /// session of `client_id` here, as new deliveries (a packet id they had
    /// elsewhere is not kept). Returns how many were added; none when there
    /// is no such session here.
    pub fn merge_queued(self: &Arc<Self>, client_id: &str, records: &[Bytes]) -> usize {
        let Some(session) = self.session(client_id) else {
            return 0;
        };
        let mut journal = Journal::new();
        let mut added = 0;
        for raw in records {
            let queued = self.install(&session, crate::handover::QUEUED, raw.clone(), &mut journal);
            if queued.is_ok() {
                added += 1;
            }
        }
        commit(self.store(), journal);
        added
    }
}

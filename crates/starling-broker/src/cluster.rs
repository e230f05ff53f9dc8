//! The seam to other broker nodes: routing messages to the nodes that want
//! them, and deciding which node owns a client's session.
//!
//! A single node uses [`SingleNode`], which does nothing and owns every
//! session. The cluster work replaces it with an implementation on NATS
//! JetStream: `forward` publishes to the nodes with matching interest,
//! `interest` keeps this node's subscriptions known to the others, `claim`
//! takes a session over from another node before the CONNACK, and `release`
//! gives it up when it ends.
//!
//! The broker calls `forward` once per message it accepts from a client or a
//! will ([`crate::BrokerState::publish`]), never for a message that came from
//! another node ([`crate::BrokerState::route`] alone).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use starling_codec::{ByteString, Will};

use crate::message::Message;
use crate::store::WillRecord;

/// Whether this node may serve a client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// This node owns it now (any other node's copy has been taken over).
    Local,
    /// It could not be claimed (the cluster is unreachable): the client is
    /// refused with 0x88 Server unavailable (3.x: code 3).
    Unavailable,
    /// Another node claimed it at the same time and won: the client is
    /// refused with 0x89 Server busy (3.x: code 3) and may try again.
    Busy,
}

/// Where a persistent session's latest changes stand in what outlives this
/// node (see [`Cluster::replica_lag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLag {
    /// Written where another node rebuilds the session from.
    Current,
    /// Held on this node for now (the cluster's storage did not take them
    /// yet, the node is still in the cluster): they follow.
    Behind,
    /// Held on this node, which lost the cluster: another node may rebuild
    /// the session without them.
    Lost,
}

/// A future a [`Cluster`] returns.
pub type ClusterFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the broker asks of the other nodes.
pub trait Cluster: Send + Sync + 'static {
    /// A message accepted on this node, after it was routed here: hand it to
    /// the nodes whose subscriptions match. Must not block. For a message
    /// that a client's acknowledgement (PUBACK, PUBREC) answers: a receiver
    /// that completes once no node's death can lose it, which the
    /// acknowledgement waits for (a dropped sender fails the connection).
    ///
    /// `stamp` is what [`Cluster::next_stamp`] gave for it before it was
    /// routed here (`None`: the implementation numbers it).
    ///
    /// `withdrawable`: if the receiver is dropped before it completes (the
    /// publisher's connection ended unacknowledged), the message may be
    /// withdrawn from the other nodes: its publisher owes it nothing more
    /// (a clean session) or sends it again (QoS 1, routed anew). Delivered
    /// late instead, after the publisher's later messages sent elsewhere,
    /// it would break their order.
    fn forward(
        &self,
        message: &Arc<Message>,
        stamp: Option<(u64, u64)>,
        withdrawable: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<()>>;
    /// The number the next message accepted on this node carries across
    /// the cluster (this node's run, the message's number there), taken
    /// before the message is routed here, so that the store records it with
    /// the copies this node keeps ([`crate::store::Op::CameWith`]): a node
    /// that rebuilds them elsewhere then knows which it holds. `None` for a
    /// single node.
    fn next_stamp(&self) -> Option<(u64, u64)> {
        None
    }
    /// The number of the newest message [`Cluster::next_stamp`] gave so far
    /// (0 for a single node). The broker takes stamps while it holds its
    /// subscription index for reading and reads this while it holds it for
    /// writing: a session entering or leaving the index then had exactly
    /// this node's messages up to it.
    fn last_stamp(&self) -> u64 {
        0
    }
    /// A local subscription to `filter` was added (`true`) or removed.
    /// Subscriptions are counted by the implementation: each add is matched
    /// by one removal.
    fn interest(&self, filter: &str, added: bool);
    /// Claims the session of `client_id` for this node, taking it over from
    /// any other node, before the client is told it is connected.
    /// `persistent`: the session outlives the connection (a clean session
    /// may be served locally while the cluster is unreachable).
    fn claim(&self, client_id: &str, persistent: bool) -> ClusterFuture<Ownership>;
    /// Before [`Cluster::claim`]: a future that completes once no claim of
    /// `client_id` is running on this node (bounded by the
    /// implementation), with whether it had to wait. A client that gave
    /// up on its CONNECT meanwhile is then not served: its claim would
    /// take the session from the connection it made since.
    fn await_turn(&self, _client_id: &str) -> ClusterFuture<bool> {
        Box::pin(std::future::ready(false))
    }
    /// The session of `client_id` ended on this node.
    fn release(&self, client_id: &str);
    /// After a SUBSCRIBE: a future that completes once every interest
    /// change asked so far has reached the other nodes (bounded by the
    /// implementation); the SUBACK waits for it. `None`: nothing to wait for.
    fn interest_ready(&self) -> Option<ClusterFuture<()>> {
        None
    }
    /// Connection `conn` of `client_id` has a will (`Some`: the will and
    /// the client's user name; [`will_record`] encodes them), to be
    /// published by another node if this one dies; `None`: the connection
    /// ended here and this node handles its will. A `None` for a connection
    /// that is not the last one set is ignored.
    fn will(&self, _client_id: &str, _conn: u64, _will: Option<(&Will, Option<&str>)>) {}
    /// Whether messages wait to be handed to the other nodes past a
    /// high-water mark: a publisher then pauses reading for a moment, as
    /// for a congested subscriber, instead of messages being dropped.
    fn congested(&self) -> bool {
        false
    }
    /// The sessions here whose new messages wait while a replay runs for
    /// them (a rebuilt or moved session gets the older, replayed messages
    /// first): a message published on this node is routed past them and
    /// handed to [`Cluster::park_local`]. `None` (nearly always): none.
    fn parked_sessions(&self) -> Option<Arc<HashSet<ByteString>>> {
        None
    }
    /// A message published here, numbered `stamp`, that was kept from
    /// `sessions` (see [`Cluster::parked_sessions`]): the cluster delivers
    /// it to them after their replay.
    fn park_local(
        &self,
        _msg: &Arc<Message>,
        _stamp: (u64, u64),
        _sessions: Arc<HashSet<ByteString>>,
    ) {
    }
    /// Whether `msg`, published here, waits before it reaches this node's
    /// sessions: a QoS 1/2 message of a client that connected while this
    /// node was away from the other nodes, and may have published through
    /// one of them just before (those messages reach this node only once
    /// it is back). Such a message is routed to no session here and handed
    /// to [`Cluster::hold_local`]. Called on every publish in a cluster.
    fn holds_local(&self, _msg: &Message) -> bool {
        false
    }
    /// A message published here, numbered `stamp`, kept from every session
    /// here (see [`Cluster::holds_local`]): the cluster delivers it to them
    /// once the node's gap is repaired.
    fn hold_local(&self, _msg: &Arc<Message>, _stamp: (u64, u64)) {}
    /// Whether shared subscriptions are served across the nodes: then a
    /// message reaches a shared group only through the cluster, which picks
    /// one member cluster-wide, and [`crate::BrokerState::publish`] routes
    /// only to this node's plain subscriptions.
    fn shares_across_nodes(&self) -> bool {
        false
    }
    /// What `$SYS/broker/cluster/<name>` says: pairs of name and value
    /// (none for a single node).
    fn status(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Whether the changes to `client_id`'s persistent session written so
    /// far are where another node would rebuild the session from if this
    /// one died. A QoS 2 PUBLISH (with its packet id) or PUBREL that waits
    /// for the store goes out only when they are: a session rebuilt without
    /// them would deliver the message again as a new one [MQTT-4.3.3-1].
    /// Called once per such packet.
    fn replica_lag(&self, _client_id: &str) -> ReplicaLag {
        ReplicaLag::Current
    }
    /// Why this node cannot keep sessions for the cluster now, if so: it
    /// serves clean sessions only (its `/readyz` says `degraded` with it).
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// One node alone: nothing to forward, every session is local.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleNode;

impl Cluster for SingleNode {
    fn forward(
        &self,
        _: &Arc<Message>,
        _: Option<(u64, u64)>,
        _: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        None
    }

    fn interest(&self, _: &str, _: bool) {}

    fn claim(&self, _: &str, _: bool) -> ClusterFuture<Ownership> {
        Box::pin(std::future::ready(Ownership::Local))
    }

    fn release(&self, _: &str) {}
}

impl crate::BrokerState {
    /// The topics of the retained messages this node holds (a cluster maps
    /// the removals it learns of, by key, to them).
    pub fn retained_topics(&self) -> Vec<starling_codec::ByteString> {
        self.retained
            .read()
            .all()
            .into_iter()
            .map(|m| m.topic.clone())
            .collect()
    }

    /// Tells every subscription this node holds to `cluster` (those
    /// restored from the store before it was set), once per subscriber, as
    /// the connections do for new ones.
    pub fn announce_interest(&self, cluster: &dyn Cluster) -> usize {
        let mut n = 0;
        for session in self.all_sessions() {
            let filters: Vec<_> = session
                .state
                .lock()
                .subscriptions()
                .map(|(f, _)| f.clone())
                .collect();
            for f in filters {
                cluster.interest(&f, true);
                n += 1;
            }
        }
        n
    }
}

/// A will as another node keeps it: a [`WillRecord`] whose `deadline_ms`
/// is the will's delay in milliseconds (the node that publishes it counts
/// the delay from when it learned the connection was lost).
pub fn will_record(will: &Will, username: Option<&str>) -> Option<Bytes> {
    let delay = will.properties.will_delay_interval.unwrap_or(0);
    let mut publish = starling_codec::Publish::new(will.topic.clone(), will.payload.clone());
    publish.qos = will.qos;
    publish.packet_id = u16::from(will.qos != starling_codec::QoS::AtMostOnce);
    publish.retain = will.retain;
    publish.properties = will.properties.clone();
    WillRecord {
        publish,
        deadline_ms: u64::from(delay) * 1000,
        username: username.map(str::to_string),
    }
    .encode()
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_single_node_owns_everything_and_forwards_nothing() {
        let node: Arc<dyn Cluster> = Arc::new(SingleNode);
        assert_eq!(node.claim("any", true).await, Ownership::Local);
        node.interest("a/#", true);
        node.release("any");
    }
}

//! Starling nodes as one broker over a NATS JetStream cluster.
//!
//! [`NatsCluster`] implements the broker's `cluster` seam: messages cross
//! to the nodes with matching subscriptions as core NATS messages on
//! subjects mapped from their topics ([`subject`]); shared subscriptions are
//! NATS queue groups; retained messages and the owner of each client id are
//! kept in replicated key-value buckets; persistent sessions are
//! replicated in partitioned streams ([`replica`]) so that they outlive
//! their node; QoS 1/2 messages are kept in transit until every node that
//! may have missed them is known to have stored them (`transit`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod appends;
mod arrivals;
mod backlog;
mod buckets;
mod carried;
mod cutoff;
mod dedup;
mod envelope;
mod gap;
mod handover;
mod holder;
mod inorder;
mod keys;
mod late;
pub mod markers;
mod merges;
mod moved;
mod node;
mod owners;
mod placement;
mod probe;
mod receipt;
mod rejoin;
mod repairs;
mod replays;
pub mod replica;
mod retained;
mod routes;
mod running;
mod shared;
pub mod subject;
mod takeover;
mod transit;
mod wills;
mod wire;
mod withdrawals;
mod withdrawn;

pub use envelope::EnvelopeError;
pub use node::{Counters, NatsCluster};
pub use replica::{Replica, ReplicatedStore};

/// Why this node could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A `[cluster] nats` entry is not a server address.
    #[error("not a NATS server address: {0:?}")]
    Address(String),
    /// The credentials file could not be read.
    #[error("NATS credentials file {0}: {1}")]
    Credentials(std::path::PathBuf, #[source] std::io::Error),
    /// The connection could not be set up.
    #[error("NATS connection: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

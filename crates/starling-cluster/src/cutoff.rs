//! Whether this node is cut off from the cluster.
//!
//! Without its NATS connection it plainly is. But a NATS server can be cut
//! from the other servers while this node's connection to it stays up (a
//! network partition): JetStream then takes none of this node's writes, and
//! core NATS reaches none of the other nodes, which soon think it dead. The
//! node tells by its own heartbeats: none taken by the nodes bucket for
//! [`SILENT_FOR`] (one and a half beats), and no other node it knew
//! answering a question over core NATS (a JetStream leader being elected
//! stops the heartbeats too, but the other nodes still answer then). The
//! sooner it knows, the fewer messages it delivers that the node rebuilding
//! its sessions from their replicas (which it cannot write now) delivers
//! again.

/// How long without a heartbeat taken before the other nodes are asked.
pub const SILENT_FOR: Duration = Duration::from_millis(1500);

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::keys;
use crate::shared::Inner;

/// How long each other node is given to answer.
const ASK_FOR: Duration = Duration::from_millis(500);
/// How often the other nodes are asked while the heartbeats fail.
const ASK_EVERY: Duration = Duration::from_millis(500);

/// Records that the nodes bucket took this node's heartbeat now.
pub fn beat_taken(inner: &Inner) {
    inner
        .beat_ms
        .store(starling_broker::store::unix_ms(), Ordering::Relaxed);
}

/// Follows the heartbeats and the answers of the other nodes.
#[derive(Default)]
pub struct Isolation {
    isolated: bool,
    asked: Option<tokio::time::Instant>,
}

impl Isolation {
    /// Whether the node is connected to NATS but cut from the others now.
    pub async fn check(&mut self, inner: &Inner) -> bool {
        let beat = inner.beat_ms.load(Ordering::Relaxed);
        let silent_ms = starling_broker::store::unix_ms().saturating_sub(beat);
        // Before the first heartbeat, or with heartbeats taken: not cut.
        if beat == 0 || silent_ms < SILENT_FOR.as_millis() as u64 || !inner.connected() {
            if self.isolated {
                tracing::info!(
                    heartbeats = silent_ms < SILENT_FOR.as_millis() as u64,
                    connected = inner.connected(),
                    "no longer cut off from the other nodes"
                );
            }
            self.isolated = false;
            self.asked = None;
            return false;
        }
        let due = self.asked.is_none_or(|at| at.elapsed() >= ASK_EVERY);
        if due {
            self.asked = Some(tokio::time::Instant::now());
            let was = self.isolated;
            self.isolated = !any_node_answers(inner).await;
            if was && !self.isolated {
                tracing::info!("no longer cut off from the other nodes: one answers");
            }
            if self.isolated && !was {
                tracing::warn!(
                    silent_ms,
                    "cut off from the other nodes: their NATS servers are not reachable \
                     from this node's, and JetStream takes no heartbeat"
                );
            }
        }
        self.isolated
    }
}

/// Whether any other node heard of lately answers over core NATS.
async fn any_node_answers(inner: &Inner) -> bool {
    let others: Vec<String> = inner.live.lock().keys().cloned().collect();
    let asks = others.iter().map(|node| answers(inner, node));
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .any(|answered| answered)
}

/// Whether node `node` answers a question over core NATS within
/// [`ASK_FOR`]: it is alive and reachable, whatever its heartbeats say.
pub async fn answers(inner: &Inner, node: &str) -> bool {
    let asked = inner.client.request(keys::holds(node), Bytes::new());
    matches!(tokio::time::timeout(ASK_FOR, asked).await, Ok(Ok(_)))
}

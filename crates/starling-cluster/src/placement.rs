//! Reads of a replicated stream served by its leader: an ordered consumer
//! (one replica, placed by JetStream on any server of the stream) reads
//! that server's copy, and a server just back from a cut may still hold
//! entries it took alone while it led cut off, never committed: such a
//! read serves, at one sequence, a message other than the committed one
//! (seen after a partition: the cut server's replica gave its own node's
//! withdrawn message where the others read another node's), and the
//! message it hides is missed. The consumer is made again until it sits
//! on the leader (at most [`TRIES`] times).

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::Consumer;
use async_nats::jetstream::stream;

/// Consumers made at most, per read, to have one on the leader.
const TRIES: usize = 12;

/// An ordered consumer of `stream` made with `config`, on the server that
/// leads the stream as `stream`'s cached info says (if it names one),
/// unless [`TRIES`] consumers in a row were placed elsewhere (then the
/// last, said at debug level).
pub async fn on_leader(
    stream: &stream::Stream,
    config: OrderedConfig,
) -> Result<Consumer<OrderedConfig>, String> {
    let leader = stream
        .cached_info()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone());
    let mut tries = 0;
    loop {
        tries += 1;
        let consumer = stream
            .create_consumer(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let info = consumer.cached_info();
        let at = info.cluster.as_ref().and_then(|c| c.leader.clone());
        if leader.is_none() || at == leader {
            return Ok(consumer);
        }
        if tries >= TRIES {
            tracing::debug!(
                ?leader,
                ?at,
                "a read's consumer is not on the stream's leader"
            );
            return Ok(consumer);
        }
        tracing::debug!(
            ?leader,
            ?at,
            "a read's consumer placed off the leader: made again"
        );
        let _ = stream.delete_consumer(&info.name).await;
    }
}

//! Old removals swept from the buckets whose keys come and go. The owners
//! bucket has a key per client id ever seen, the wills bucket one per
//! connection, the retained bucket one per topic, and a removal leaves a
//! marker (in the owners bucket, with up to eight earlier revisions) that
//! JetStream keeps for good: with client ids made up per connection, as
//! many clients do, or retained messages set and cleared on ever new
//! topics, the buckets would grow without end. (A node away from the
//! retained bucket for longer than a marker is kept reads it whole once
//! back, and clears what it no longer holds: see `retained`.) The lowest
//! live node removes, every 10 minutes, the
//! keys whose latest entry is a removal older than [`KEPT`]: a purge of the
//! key up to that entry's sequence, so a key written again meanwhile keeps
//! its new entry. A marker lives that long for what it guards: a will
//! written late (held in a cut NATS route) is refused by it, and a racing
//! claim reads the owners' history.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use crate::keys;
use crate::shared::Inner;

/// How long a removal marker is kept.
pub const KEPT: Duration = Duration::from_secs(3600);
/// How often the lowest live node sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Keys removed per bucket and sweep at most (the rest wait for the next).
const PER_SWEEP: usize = 100_000;
/// Purges a second at most: each is a write JetStream replicates, and the
/// sweep must not slow the writes clients wait for.
const PER_SECOND: u32 = 200;

/// Sweeps the owners, wills and retained buckets while this node is the
/// lowest live one (see the module's documentation).
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (The first tick is at once: the node has just started.)
    tick.tick().await;
    loop {
        tick.tick().await;
        if inner.broker().is_none() {
            return;
        }
        let lowest = inner.live.lock().keys().all(|id| inner.node_id < *id);
        let Some(js) = inner.transit.get() else {
            continue;
        };
        if !lowest || !inner.connected() {
            continue;
        }
        for bucket in [keys::OWNERS, keys::WILLS, keys::RETAINED] {
            match sweep(js, bucket, KEPT, inner.timeout).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(bucket, removed = n, "old removals swept from a bucket"),
                Err(e) => tracing::debug!(bucket, "old removals not swept (next time): {e}"),
            }
        }
    }
}

/// Removes from key-value bucket `bucket` the keys whose latest entry is a
/// removal (delete or purge) made more than `kept` ago, at most
/// 100,000 of them, 200 a second; returns how many.
/// `timeout` bounds each request.
pub async fn sweep(
    js: &jetstream::Context,
    bucket: &str,
    kept: Duration,
    timeout: Duration,
) -> Result<usize, String> {
    let old = old_removals(js, bucket, kept, timeout).await?;
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| e.to_string())?;
    let mut pace = tokio::time::interval(Duration::from_secs(1) / PER_SECOND);
    let mut removed = 0;
    for (subject, seq) in old {
        pace.tick().await;
        let purge = stream.purge().filter(subject).sequence(seq + 1);
        match tokio::time::timeout(timeout, purge).await {
            Ok(Ok(_)) => removed += 1,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("JetStream did not purge in time".into()),
        }
    }
    Ok(removed)
}

/// The subjects of `bucket` whose latest entry is a removal older than
/// `kept`, with that entry's sequence.
async fn old_removals(
    js: &jetstream::Context,
    bucket: &str,
    kept: Duration,
    timeout: Duration,
) -> Result<Vec<(String, u64)>, String> {
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| e.to_string())?;
    let count = tokio::time::timeout(timeout, stream.info())
        .await
        .map_err(|_| "no stream info in time".to_string())?
        .map_err(|e| e.to_string())?
        .state
        .messages;
    if count == 0 {
        return Ok(Vec::new());
    }
    let config = consumer::pull::OrderedConfig {
        deliver_policy: consumer::DeliverPolicy::LastPerSubject,
        filter_subject: format!("$KV.{bucket}.>"),
        headers_only: true,
        ..Default::default()
    };
    let consumer = crate::placement::on_leader(&stream, config).await?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let before = time::OffsetDateTime::now_utc() - kept;
    let mut old = Vec::new();
    // Every latest entry is read (bounded by the stream's size at most).
    for _ in 0..count {
        let m = match tokio::time::timeout(timeout, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) | Err(_) => return Err("the bucket was not read whole".into()),
        };
        let meta = m.info().map_err(|e| e.to_string())?;
        let removal = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
        if removal && meta.published < before {
            old.push((m.subject.to_string(), meta.stream_sequence));
        }
        if meta.pending == 0 || old.len() >= PER_SWEEP {
            break;
        }
    }
    Ok(old)
}

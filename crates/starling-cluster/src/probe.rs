//! Knowing that the other nodes' NATS servers have a new interest, so that
//! a SUBACK can promise that what any node publishes from then on arrives.
//! This node asks every live node (`starling.probe`) to publish a probe on
//! the subject of its newest subscription; the request travels the same
//! routes as the subscription's interest did, after it, so each probe that
//! comes back proves that its node's server has the interest, and every
//! earlier one this node made.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::shared::{Command, Inner, Probe};
use crate::wills::DEAD_AFTER;

/// Where nodes ask one another for probes.
const SUBJECT: &str = "starling.probe";

/// The header that marks a probe (its value: the token, then the node).
pub const HEADER: &str = "Starling-Probe";

/// A subject that `subject` (a subscription's, maybe with wildcards)
/// matches.
pub fn concrete(subject: &str) -> String {
    subject
        .split('.')
        .map(|t| if t == "*" || t == ">" { "_probe" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// Probes `subject` from every live node; reports `Command::Probed(seq)`
/// once each probe came back or half the cluster timeout passed.
pub fn start(inner: Arc<Inner>, subject: String, seq: u64) {
    tokio::spawn(async move {
        let now = Instant::now();
        let waiting: HashSet<String> = inner
            .live
            .lock()
            .iter()
            .filter(|(_, at)| now - **at <= DEAD_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        if !waiting.is_empty() {
            let token: u64 = rand::random();
            let (done, arrived) = oneshot::channel();
            inner.probes.lock().insert(
                token,
                Probe {
                    waiting,
                    done: Some(done),
                },
            );
            let ask = Bytes::from(format!("{token} {}", concrete(&subject)));
            if inner.client.publish(SUBJECT, ask).await.is_ok() {
                let bound = inner.timeout / 2;
                if tokio::time::timeout(bound, arrived).await.is_err() {
                    tracing::debug!(%subject, "not every node's probe came back in time");
                }
            }
            inner.probes.lock().remove(&token);
        }
        let _ = inner.commands.send(Command::Probed(seq));
    });
}

/// A probe came back (`value`: its header).
pub fn arrived(inner: &Inner, value: &str) {
    let Some((token, node)) = value.split_once(' ') else {
        return;
    };
    let Ok(token) = token.parse::<u64>() else {
        return;
    };
    let mut probes = inner.probes.lock();
    if let Some(probe) = probes.get_mut(&token) {
        probe.waiting.remove(node);
        if probe.waiting.is_empty() {
            if let Some(done) = probe.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// Answers other nodes' probe requests.
pub async fn serve(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("probe requests cannot be served: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let Ok(text) = std::str::from_utf8(&request.payload) else {
            continue;
        };
        let Some((token, subject)) = text.split_once(' ') else {
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER, format!("{token} {}", inner.node_id).as_str());
        let sent = inner
            .client
            .publish_with_headers(subject.to_string(), headers, Bytes::new())
            .await;
        if let Err(e) = sent {
            tracing::debug!("a probe was not sent: {e}");
        }
    }
}

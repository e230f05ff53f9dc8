//! Repairs asked of the other nodes after this node's gap, and theirs
//! served here.
//!
//! Back from a gap (a cut, a new NATS connection), a node asks the others
//! to read its run in transit again: the core copies of what it sent
//! meanwhile may be lost (its NATS server dropped them, having no route to
//! the others' interest). Its live messages after the gap are newer than
//! those: they must not reach a session before the repair brings the
//! older ones. So the node's outbox pauses with the gap
//! ([`pause`]) and goes on only once the others said they hold this run's
//! live messages back for the repair ([`ask`]), or after [`ASK_WAIT`];
//! each node, asked, starts holding before it answers ([`serve`]; it
//! answers after [`ASK_WAIT`] even if its routing task has not taken the
//! hold by then).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::keys;
use crate::shared::{Command, Inner};

/// When, after this node is back, the other nodes are asked (again) to
/// repair its run: the first ask can be lost (a NATS server just back from a
/// partition drops what it routes before the others' interest reaches it
/// again), and so can the core copies of what this node's outbox sends to
/// the transit stream as it empties, after the others' first repair read
/// it.
const REPAIR_ASKS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(2),
    Duration::from_secs(8),
];

/// How long the first ask waits for the other nodes' answers (then the
/// outbox goes on without those not heard).
pub const ASK_WAIT: Duration = Duration::from_secs(2);

/// Within [`ASK_WAIT`], how often the first ask is published again while
/// some node has not answered: right after a partition heals, an ask or
/// its answer can be lost while the NATS routes come back (in fault runs
/// the second node's answer often came with the second ask).
const ASK_AGAIN: Duration = Duration::from_millis(250);

/// How often an asked repair is tried while another one runs here, and
/// how many times: as long as the hold begun for it waits
/// (`gap::PENDING_FOR`).
const RETRY: Duration = Duration::from_millis(100);
const RETRIES: u32 = 100;

/// This node's gap begins: nothing leaves the outbox until [`ask`] (or
/// [`resume`]).
pub fn pause(inner: &Inner) {
    inner.outbox_paused.send_replace(true);
}

/// The outbox goes on.
pub fn resume(inner: &Inner) {
    inner.outbox_paused.send_replace(false);
}

/// Whether the outbox is paused.
pub fn paused(inner: &Inner) -> bool {
    *inner.outbox_paused.borrow()
}

/// Asks the other nodes, at each of [`REPAIR_ASKS`], to repair this node's
/// run from `from_ms` (what was routed already is not routed twice); the
/// outbox goes on once the first ask is answered.
pub async fn ask(inner: Arc<Inner>, from_ms: u64) {
    let ask = encode(from_ms, inner.origin);
    let began = Instant::now();
    for (i, at) in REPAIR_ASKS.into_iter().enumerate() {
        tokio::time::sleep_until(began + at).await;
        if inner.broker().is_none() {
            return;
        }
        if i > 0 {
            let _ = inner.client.publish(keys::REPAIR, ask.clone()).await;
            continue;
        }
        let expected = inner.live.lock().len();
        let asked = Instant::now();
        let heard = answered(&inner, ask.clone(), expected).await;
        tracing::debug!(
            heard,
            expected,
            waited_ms = asked.elapsed().as_millis() as u64,
            paused = paused(&inner),
            "repair asked of the other nodes: the outbox goes on"
        );
        if heard < expected {
            tracing::info!(
                heard,
                expected,
                "not every node said it holds this node's messages for its repair"
            );
        }
        resume(&inner);
    }
}

/// Publishes `ask` with a reply subject, again every [`ASK_AGAIN`], and
/// counts the nodes that answer, until `expected` or [`ASK_WAIT`], each
/// time with a reply subject of its own. (Seen in fault runs: a node got
/// every ask and answered each, on every reply subject, and none of its
/// answers came back within [`ASK_WAIT`]: one direction of a route
/// stalls right after the heal. Its hold was in place; the asker cannot
/// tell.)
async fn answered(inner: &Inner, ask: Bytes, expected: usize) -> usize {
    let deadline = Instant::now() + ASK_WAIT;
    let mut again = tokio::time::interval(ASK_AGAIN);
    let mut answers = futures_util::stream::SelectAll::new();
    let mut heard = Heard::default();
    while heard.count() < expected {
        tokio::select! {
            _ = again.tick() => {
                let inbox = inner.client.new_inbox();
                match inner.client.subscribe(inbox.clone()).await {
                    Ok(s) => answers.push(s),
                    Err(e) => {
                        tracing::debug!("repair not asked: {e}");
                        continue;
                    }
                }
                let asked = inner
                    .client
                    .publish_with_reply(keys::REPAIR, inbox, ask.clone())
                    .await;
                if let Err(e) = asked {
                    tracing::debug!("repair not asked: {e}");
                }
            }
            answer = tokio::time::timeout_at(deadline, answers.next()), if !answers.is_empty() => {
                match answer {
                    Ok(Some(answer)) => heard.add(&answer.payload),
                    _ => break,
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    heard.count()
}

/// The nodes that answered an ask, each counted once however many of its
/// asks it answered (a node of an earlier version answers with nothing,
/// and each of its answers counts).
#[derive(Debug, Default)]
struct Heard {
    nodes: std::collections::HashSet<u64>,
    unnamed: usize,
}

impl Heard {
    fn add(&mut self, answer: &[u8]) {
        match <[u8; 8]>::try_from(answer) {
            Ok(origin) => {
                self.nodes.insert(u64::from_be_bytes(origin));
            }
            Err(_) => self.unnamed += 1,
        }
    }

    fn count(&self) -> usize {
        self.nodes.len() + self.unnamed
    }
}

/// Serves other nodes' asks to read the transit window around their
/// absence again: their live messages are held here from now on (then it
/// answers), and the repair begins (once the one running here, if any, is
/// over).
pub async fn serve(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(keys::REPAIR).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("repair requests cannot be served: {e}");
            return;
        }
    };
    // The asks answered lately: one published again (`ASK_AGAIN`) is
    // answered again, but its repair is not begun twice.
    let mut answered: std::collections::HashMap<(u64, u64), Instant> = Default::default();
    while let Some(request) = requests.next().await {
        let Some((from, origin)) = decode(request.payload) else {
            continue;
        };
        // (This node's own ask.)
        if origin == inner.origin {
            continue;
        }
        answered.retain(|_, at| at.elapsed() < ASK_WAIT * 2);
        let again =
            request.reply.is_some() && answered.insert((from, origin), Instant::now()).is_some();
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Some(reply) = request.reply {
                hold_for(&inner, origin).await;
                tracing::debug!(
                    origin,
                    again,
                    "a node back from a gap asks for a repair: its messages held"
                );
                let me = Bytes::copy_from_slice(&inner.origin.to_be_bytes());
                let _ = inner.client.publish(reply, me).await;
            }
            if again {
                return;
            }
            for _ in 0..RETRIES {
                if crate::transit::repair(&inner, from, Some(origin), true) {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
        });
    }
}

/// Has the routing task hold run `origin`'s live messages from now on.
async fn hold_for(inner: &Inner, origin: u64) {
    let (done, served) = oneshot::channel();
    if inner.commands.send(Command::HoldFor(origin, done)).is_ok() {
        let _ = tokio::time::timeout(ASK_WAIT, served).await;
    }
}

/// An ask (also `moved`'s request): from when (ms since the epoch), and
/// whose run.
pub fn encode(from_ms: u64, run: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u64(from_ms);
    b.put_u64(run);
    b.freeze()
}

/// An ask read back ([`encode`]).
pub fn decode(mut p: Bytes) -> Option<(u64, u64)> {
    (p.len() == 16).then(|| (p.get_u64(), p.get_u64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_that_answers_counts_once() {
        let mut heard = Heard::default();
        heard.add(&7u64.to_be_bytes());
        heard.add(&7u64.to_be_bytes());
        heard.add(&9u64.to_be_bytes());
        assert_eq!(heard.count(), 2);
        heard.add(&[]);
        heard.add(&[]);
        assert_eq!(heard.count(), 4, "an earlier version's answers each count");
    }

    #[test]
    fn an_ask_reads_back() {
        assert_eq!(decode(encode(5, 9)), Some((5, 9)));
        assert_eq!(decode(Bytes::from_static(&[0; 15])), None);
    }
}

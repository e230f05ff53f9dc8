//! A client that moves here from a node that does not answer (cut off
//! from the others, or dead).
//!
//! What that node acknowledged just before it was cut off is in transit,
//! but its core copies may not have reached the other nodes: a cut NATS
//! route holds them until it heals, and a dead node's last ones may never
//! have left it. The client's next messages, published here, would then
//! reach subscribers before its older ones. So before such a client's
//! CONNACK, every node repairs that node's run from transit
//! ([`before_connack`]): what it had not received goes out there, in
//! order, ahead of anything the client publishes next. A repair stops at
//! that run's first append that landed late: only its node can say
//! whether it withdrew it, so it and what follows are left to that node's
//! own repair once it is back.
//!
//! One repair per run at a time, shared by every client that moves off
//! it; the CONNACK waits at most [`WAIT`] for it, once the client's
//! session is installed here. While JetStream elects new leaders for what
//! the silent node's server led (as a partition often makes it), the
//! repair's read fails: it is tried again soon after each failure, within
//! that bound. Past it the CONNACK goes on; that node's own repair, once
//! it is back, still places its messages, but maybe after the client's
//! next ones.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::keys;
use crate::receipt::Receipt;
use crate::repairs::{decode, encode};
use crate::shared::Inner;

/// How long a moving client's CONNACK waits at most for the repairs (a
/// repair that takes longer goes on, without ordering that client's next
/// messages after it). Long enough for JetStream to elect new leaders for
/// what a cut server led: its election timeouts are 4 to 9 s from the
/// cut, and the client comes here about 2.5 s after it (sent away at
/// once, then its takeover request timed out). Seen with 6 s: reads that
/// failed until 6.1 s, in 2 of 3 partition runs. A client that gives up
/// meanwhile and connects here again waits for this claim (see
/// `owners::begin_claim`).
pub const WAIT: Duration = Duration::from_secs(8);

/// How long after a failed read of the silent run the repair tries again.
/// A try that fails has mostly waited for its request to time out
/// (JetStream not answering while it elects a leader): the next one
/// starts soon after, so that the first read JetStream can answer is not
/// long in coming.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// A run repaired this recently is not asked again for a client that
/// moves off it later (all it had acknowledged is in transit by then).
const AGAIN_AFTER: Duration = Duration::from_secs(10);

/// How long before the silent node's last heartbeat the repairs read.
const BACK: Duration = Duration::from_secs(5);

/// Before the CONNACK of a client whose previous node, `node`, did not
/// answer its takeover: has every node repair `node`'s run (at most
/// [`WAIT`]).
pub async fn before_connack(inner: &Arc<Inner>, node: &str) {
    let mut over = {
        let mut asked = inner.moved.lock();
        asked.retain(|_, (at, _)| at.elapsed() < AGAIN_AFTER);
        match asked.get(node) {
            Some((_, over)) => over.clone(),
            None => {
                let (done, over) = watch::channel(false);
                asked.insert(node.to_string(), (Instant::now(), over.clone()));
                tokio::spawn(ask(inner.clone(), node.to_string(), done));
                over
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, over.wait_for(|over| *over)).await;
}

/// The run `node` is in, from the receipt it writes as it stores other
/// nodes' messages.
async fn run_of(inner: &Inner, node: &str) -> Option<u64> {
    let buckets = inner.buckets.get()?;
    let read = buckets.receipts.get(keys::node(node));
    match tokio::time::timeout(inner.timeout, read).await {
        Ok(Ok(Some(raw))) => Receipt::decode(&raw).map(|r| r.own).filter(|r| *r != 0),
        _ => None,
    }
}

/// Repairs `node`'s run here and asks the other nodes to, and waits for
/// their answers, at most [`WAIT`]; then `done`.
async fn ask(inner: Arc<Inner>, node: String, done: watch::Sender<bool>) {
    let Some(run) = run_of(&inner, &node).await else {
        tracing::debug!(%node, "the run of a node that does not answer is not known: not repaired");
        done.send_replace(true);
        return;
    };
    let silent_for = inner.live.lock().get(&node).map(|at| at.elapsed());
    let back = match silent_for {
        Some(silent) => silent + BACK,
        None => crate::transit::AGE,
    };
    let from = starling_broker::store::unix_ms().saturating_sub(back.as_millis() as u64);
    // The others answer; this node's client does not hear its own request.
    let expected = inner.live.lock().keys().filter(|n| **n != node).count();
    let asked = Instant::now();
    let (heard, here) = tokio::join!(
        answers(&inner, encode(from, run), expected),
        repair(&inner, from, run)
    );
    tracing::info!(
        %node,
        run,
        here,
        heard,
        expected,
        waited_ms = asked.elapsed().as_millis() as u64,
        "a node that does not answer: its run repaired here and by the others before its clients' CONNACKs"
    );
    done.send_replace(true);
}

/// Publishes `request` and counts the answers until `expected` or [`WAIT`].
async fn answers(inner: &Inner, request: Bytes, expected: usize) -> usize {
    let inbox = inner.client.new_inbox();
    let Ok(mut answers) = inner.client.subscribe(inbox.clone()).await else {
        return 0;
    };
    let asked = inner
        .client
        .publish_with_reply(keys::REPAIR_RUN, inbox, request)
        .await;
    if let Err(e) = asked {
        tracing::debug!("a run's repair not asked: {e}");
        return 0;
    }
    let deadline = Instant::now() + WAIT;
    let mut heard = 0;
    while heard < expected {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(_)) => heard += 1,
            _ => break,
        }
    }
    heard
}

/// Serves the other nodes' requests of [`before_connack`]: repairs the
/// run, then answers.
pub async fn serve(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(keys::REPAIR_RUN).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("requests to repair a silent node's run cannot be served: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let (Some((from, run)), Some(reply)) = (decode(request.payload), request.reply) else {
            continue;
        };
        // (A run of this node: nothing to repair here, its messages are
        // routed here directly.)
        let inner = inner.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let repaired = run != inner.origin && repair(&inner, from, run).await;
            tracing::info!(
                run,
                repaired,
                took_ms = began.elapsed().as_millis() as u64,
                "a silent node's run repaired here"
            );
            let _ = inner.client.publish(reply, Bytes::new()).await;
        });
    }
}

/// Repairs `run` from `from` (ms since the epoch), once the repair running
/// here, if any, is over; `true` when it was done within [`WAIT`]. Two
/// nodes asking at once (each had clients move off the silent node), this
/// node's own ask and another's share one repair.
async fn repair(inner: &Arc<Inner>, from: u64, run: u64) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut over = {
        let mut repairs = inner.moved_repairs.lock();
        repairs.retain(|_, (at, _)| at.elapsed() < AGAIN_AFTER);
        match repairs.get(&run) {
            Some((_, over)) => over.clone(),
            None => {
                let (done, over) = watch::channel(None);
                repairs.insert(run, (Instant::now(), over.clone()));
                tokio::spawn(repair_once(inner.clone(), from, run, done));
                over
            }
        }
    };
    let done = tokio::time::timeout_at(deadline, over.wait_for(Option::is_some)).await;
    done.is_ok_and(|d| d.is_ok_and(|r| *r == Some(true)))
}

/// The repair of `run`, once no other one runs here, tried again while its
/// read fails (JetStream electing leaders for what the silent node's
/// server led: seen to take several seconds after a partition),
/// [`RETRY_AFTER`] after each failure, for [`WAIT`] in all.
async fn repair_once(inner: Arc<Inner>, from: u64, run: u64, done: watch::Sender<Option<bool>>) {
    let deadline = Instant::now() + WAIT;
    let mut tries = 0;
    let repaired = loop {
        if inner.transit.get().is_none() {
            break false;
        }
        let (finished, repaired) = oneshot::channel();
        let wait = if crate::transit::repair_silent(&inner, from, run, finished) {
            tries += 1;
            if repaired.await.unwrap_or(false) {
                break true;
            }
            RETRY_AFTER
        } else {
            // Another repair runs here.
            Duration::from_millis(100)
        };
        if Instant::now() + wait >= deadline {
            break false;
        }
        tokio::time::sleep(wait).await;
    };
    tracing::debug!(run, tries, repaired, "a silent node's run: repair tries");
    done.send_replace(Some(repaired));
}

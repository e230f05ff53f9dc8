//! Messages withdrawn: held for NATS, their publishers gone unacknowledged.
//!
//! A QoS 1/2 message waits for its transit copy before its PUBACK/PUBREC.
//! While NATS or JetStream is away it waits; if its publisher's connection
//! ends meanwhile (a cut-off node sends its clients away) the publisher
//! sends it again (QoS 1) or owes nothing (a clean session), and goes on
//! through another node. Sent once this node is back, it would reach the
//! other nodes after the publisher's later messages. So it is *withdrawn*:
//! not sent, and its stamp recorded here. JetStream may still hold it (an
//! append taken by a leader without quorum is committed once quorum is
//! back), so the nodes that read transit (repairs, replays) ask its origin
//! for the stamps it withdrew ([`ask`]) and skip them; a node's merges of
//! a session's early messages skip them too.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::shared::Inner;

/// How long another node is given to answer.
const ASK_FOR: Duration = Duration::from_millis(500);

/// Withdraws this node's message `seq`: counted, remembered, logged now
/// and then.
pub fn withdraw(inner: &Inner, seq: u64) {
    inner.withdrawn.lock().add(seq);
    let n = inner.counters.withdrawn.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(1000) {
        tracing::info!(
            "QoS 1/2 messages withdrawn: they waited for NATS while their publishers left \
             unacknowledged (counted in $SYS/.../withdrawn)"
        );
    }
}

/// Whether the message of this stamp is one this node withdrew (a leaf
/// lock: taken under others, never holding one).
pub fn by_this_node(inner: &Inner, (origin, seq): (u64, u64)) -> bool {
    origin == inner.origin && inner.withdrawn.lock().contains(seq)
}

/// The subject on which the node of run `origin` answers [`ask`].
fn subject(origin: u64) -> String {
    format!("starling.withdrawn.{origin}")
}

/// Why a node's withdrawn messages are not known.
#[derive(Debug)]
pub enum Unknown {
    /// No node of that run listens: it is gone, or (just after a partition
    /// healed) its interest has not reached this node's server yet.
    Gone,
    /// It listens but did not answer in time (busy), or NATS failed.
    NoAnswer(String),
}

/// The messages the node of run `origin` withdrew, as it answers now
/// (this node's own without asking).
pub async fn ask(inner: &Inner, origin: u64) -> Result<HashSet<u64>, Unknown> {
    if origin == inner.origin {
        return Ok(inner.withdrawn.lock().numbers().clone());
    }
    let asked = inner.client.request(subject(origin), Bytes::new());
    match tokio::time::timeout(ASK_FOR, asked).await {
        Ok(Ok(reply)) => {
            let seqs = crate::withdrawals::decode(reply.payload);
            tracing::debug!(origin, withdrawn = seqs.len(), "withdrawn messages asked");
            Ok(seqs)
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Err(Unknown::Gone),
        Ok(Err(e)) => Err(Unknown::NoAnswer(format!("the node of run {origin}: {e}"))),
        Err(_) => Err(Unknown::NoAnswer(format!(
            "the node of run {origin} did not answer in time"
        ))),
    }
}

/// Asks a few times, [`AGAIN`] apart, while nobody listens.
const GONE_ASKS: usize = 3;
const AGAIN: Duration = Duration::from_millis(300);

/// What `origin` withdrew, for a reader of transit: a node that is gone
/// (nobody listens, asked [`GONE_ASKS`] times) withdrew nothing it can
/// tell (what JetStream kept of it is delivered, late); one that does not
/// answer fails the read, tried again, but on the `last_try` (delivered
/// rather than not).
pub async fn for_reader(
    inner: &Inner,
    origin: u64,
    last_try: bool,
) -> Result<HashSet<u64>, String> {
    for n in 1..=GONE_ASKS {
        match ask(inner, origin).await {
            Ok(seqs) => return Ok(seqs),
            Err(Unknown::Gone) if n < GONE_ASKS => tokio::time::sleep(AGAIN).await,
            Err(Unknown::Gone) => break,
            Err(Unknown::NoAnswer(e)) if !last_try => return Err(e),
            Err(Unknown::NoAnswer(e)) => {
                tracing::info!("withdrawn messages not known, delivered: {e}");
                return Ok(HashSet::new());
            }
        }
    }
    tracing::debug!(
        origin,
        "withdrawn messages asked: nobody listens for that node"
    );
    Ok(HashSet::new())
}

/// What the dead node of a replay (run `origin`) withdrew, asked for an
/// append of its that JetStream stored late: the node may only have been
/// cut off, its publishers gone unacknowledged meanwhile, and such a node
/// answers some seconds after the heal. Until it answers the read fails
/// (tried again a second later), but on the `last_try` (delivered rather
/// than not).
pub async fn for_late_append(
    inner: &Inner,
    origin: u64,
    last_try: bool,
) -> Result<HashSet<u64>, String> {
    match ask(inner, origin).await {
        Ok(seqs) => Ok(seqs),
        Err(e) if last_try => {
            tracing::info!(origin, "an append that landed late delivered without knowing what its node withdrew: {e:?}");
            Ok(HashSet::new())
        }
        Err(Unknown::Gone) => Err(format!(
            "the node of run {origin}, whose append landed late, does not answer (yet)"
        )),
        Err(Unknown::NoAnswer(e)) => Err(e),
    }
}

/// What `origin` withdrew, for a late copy: asked until [`LATE_ASKING`]
/// has passed (the copy and its origin's later ones wait meanwhile; right
/// after a partition heals, "nobody listens" may only mean its interest
/// has not come back yet).
pub async fn for_late_copy(inner: &Inner, origin: u64) -> HashSet<u64> {
    let deadline = Instant::now() + LATE_ASKING;
    loop {
        match ask(inner, origin).await {
            Ok(seqs) => return seqs,
            Err(e) if Instant::now() + AGAIN < deadline => {
                tracing::debug!(
                    origin,
                    "late copies: withdrawn messages not known yet: {e:?}"
                );
                tokio::time::sleep(AGAIN).await;
            }
            Err(e) => {
                tracing::info!(
                    origin,
                    "late copies routed without knowing what their node withdrew: {e:?}"
                );
                return HashSet::new();
            }
        }
    }
}

/// How long a late copy's origin is asked at most: a node just back from
/// a partition answered only 10 s after the late copies came (with 5 s,
/// two withdrawn messages were routed, out of order).
const LATE_ASKING: Duration = Duration::from_secs(20);

/// Answers the other nodes' [`ask`]s.
pub async fn serve(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(subject(inner.origin)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("questions about withdrawn messages cannot be answered: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let answer = inner.withdrawn.lock().encode();
        if let Err(e) = inner.client.publish(reply, answer).await {
            tracing::debug!("an answer about withdrawn messages was not sent: {e}");
        }
    }
}

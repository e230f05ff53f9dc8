//! The old node's side of a takeover: a request for one of its clients
//! is served ([`serve_takeovers`]) once a claim of it here has settled and
//! its replay is done; the connection closes (0x8E), the session leaves
//! the subscription index inside the routing task, which says what it had
//! of each run's messages (the cut), and is written out in parts that the
//! new node fetches ([`serve_handovers`]).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use starling_broker::BrokerState;

use crate::keys;
use crate::owners::forget;
use crate::shared::{Claim, Inner};
use crate::takeover::Handed;

/// How far two nodes' clocks may differ for a takeover request's age (see
/// [`crate::takeover::request`]).
const CLOCKS_DIFFER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a handed-over session waits to be fetched.
const HANDOVER_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers other nodes' takeover requests for clients of this node: the
/// connection closes with 0x8E, and a persistent session is written out
/// for the new node to fetch. The answer is how many parts it has.
pub async fn serve_takeovers(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(keys::takeover(&inner.node_id)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("takeover requests cannot be served: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let Some(broker) = inner.broker() else { return };
        let Some((client_id, age)) = crate::takeover::read(&request.payload) else {
            continue;
        };
        // Each on its own task: one may wait for a claim to finish.
        let client_id = client_id.to_string();
        let asker = crate::takeover::asker(request.headers.as_ref());
        let inner = inner.clone();
        tokio::spawn(async move {
            let answer = if age > inner.timeout + CLOCKS_DIFFER {
                tracing::info!(%client_id, age_ms = age.as_millis() as u64, "a takeover request came after its asker gave up: not served");
                Handed::Busy
            } else if let Some(_serving) = Serving::begin(&inner, &client_id) {
                let answer = hand_over(&inner, &broker, &client_id, age, asker.as_ref()).await;
                if let (Handed::Parts(1.., _), Some((asker, _))) = (&answer, &asker) {
                    crate::holder::handed_to(&inner, &client_id, asker);
                }
                answer
            } else {
                tracing::info!(%client_id, "a takeover of this client id is being served already: the asker asks again");
                Handed::Busy
            };
            if let Some(reply) = request.reply {
                let _ = inner.client.publish(reply, answer.encode()).await;
            }
        });
    }
}

/// A takeover request being served here ([`Inner::serving_takeover`]),
/// one per client id at a time: two served at once would both write the
/// session out, and the asker that installed the second copy would lose
/// what the first took.
struct Serving<'a> {
    inner: &'a Inner,
    client_id: &'a str,
}

impl<'a> Serving<'a> {
    fn begin(inner: &'a Inner, client_id: &'a str) -> Option<Serving<'a>> {
        let fresh = inner.serving_takeover.lock().insert(client_id.to_string());
        fresh.then_some(Serving { inner, client_id })
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.inner.serving_takeover.lock().remove(self.client_id);
    }
}

/// Before a takeover request for `client_id` is served: waits, until
/// `deadline`, for a claim of it here to finish and its client to attach.
/// A claim still in progress then is marked lost, and `true` returned (it
/// may still be getting the session).
async fn await_claim(
    inner: &Inner,
    broker: &BrokerState,
    client_id: &str,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        let late = tokio::time::Instant::now() >= deadline;
        {
            let mut claims = inner.claims.lock();
            match claims.get(client_id).copied() {
                None => return false,
                Some(Claim::Lost) => return true,
                Some(Claim::InProgress) if late => {
                    claims.insert(client_id.to_string(), Claim::Lost);
                    return true;
                }
                Some(Claim::InProgress) => {}
                Some(Claim::Won(_)) if late || broker.is_connected(client_id) => {
                    claims.remove(client_id);
                    return false;
                }
                Some(Claim::Won(_)) => {}
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Returns how many parts the session has, and what it had of each run's
/// messages when it left this node's subscription index (the new node
/// replays what came after from transit); or that the asker should ask
/// again, or ask another node.
///
/// The asker waits the cluster timeout from its request, `age` ago: past
/// it, it takes this node for gone and rebuilds the session from its
/// replica, while this node would still hold it (seen: this node waited
/// half the timeout for a claim here, then half for a replay, answered
/// too late, and the session's replayed messages were lost with this
/// copy). So the answer goes well within what the asker has left: the
/// waits for a claim and a replay take two fifths of it, the connection's
/// close a fifth and the cut a quarter.
async fn hand_over(
    inner: &Inner,
    broker: &Arc<BrokerState>,
    client_id: &str,
    age: std::time::Duration,
    asker: Option<&(String, u64)>,
) -> Handed {
    let arrived = tokio::time::Instant::now();
    let left = inner
        .timeout
        .saturating_sub(age)
        .clamp(inner.timeout / 4, inner.timeout);
    let waits_until = arrived + left * 2 / 5;
    let cut_short = await_claim(inner, broker, client_id, waits_until).await;
    if broker.session(client_id).is_none() {
        // A claim here that could not get the session: it stayed with the
        // node the claim asked (or is still being fetched from it); or it
        // was handed over from here to the node that asked then.
        if let Some(node) = crate::holder::redirect(inner, client_id) {
            return Handed::Elsewhere(node);
        }
        return if cut_short {
            Handed::Busy
        } else {
            Handed::Parts(0, None)
        };
    }
    if let Some((node, revision)) = asker.filter(|(_, r)| overtaken(inner, client_id, *r)) {
        tracing::info!(%client_id, asker = %node, revision, "a takeover for a claim this node's own later claim overtook: not served");
        return Handed::Superseded;
    }
    // A session whose messages are being replayed moves once they are in
    // its queue, and one whose node reads what NATS may have dropped again
    // once that is routed: until then the new node is told to ask again.
    let replay_for = waits_until.saturating_duration_since(tokio::time::Instant::now());
    if !crate::transit::await_replay(inner, client_id, replay_for).await {
        return Handed::Busy;
    }
    let repairing = inner.repair_due.load(std::sync::atomic::Ordering::Relaxed)
        || inner.repairing.load(std::sync::atomic::Ordering::Relaxed);
    if repairing {
        tracing::debug!(%client_id, "a repair is due or running: the takeover asks again");
        return Handed::Busy;
    }
    // Past the asker's wait, one handed over now would be left unfetched
    // (and gone from here).
    if tokio::time::Instant::now() >= waits_until {
        tracing::info!(%client_id, "a takeover took too long here: the asker asks again");
        return Handed::Busy;
    }
    // Whatever ends here now, the claim is the new owner's: no release.
    inner.handing_over.lock().insert(client_id.to_string());
    if broker.kick_taken_over(client_id) {
        // The connection closes on its own task; wait for it, bounded.
        let deadline = tokio::time::Instant::now() + left / 5;
        while broker.is_connected(client_id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    // A clean session ends with its connection, and its release takes the
    // mark off; a persistent one leaves the index inside this node's routing
    // task (what it had of each run is known exactly), then is written out.
    let cut = cut_from_routing(inner, client_id, left / 4).await;
    let Some(chunks) = broker.hand_over(client_id).await else {
        return Handed::Parts(0, None);
    };
    inner.handing_over.lock().remove(client_id);
    forget(inner, client_id);
    let parts = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    let now = tokio::time::Instant::now();
    let mut out = inner.outgoing.lock();
    out.by_client
        .retain(|_, (_, at)| now.duration_since(*at) < HANDOVER_KEPT);
    out.by_client.insert(client_id.to_string(), (chunks, now));
    Handed::Parts(parts, cut)
}

/// Whether this node's own write of `client_id`'s owner key came after the
/// asker's at `revision`: the asker's claim lost to this node's (it was
/// still asking while the session came back here), and handed the session
/// it would take it from the client connected here now.
fn overtaken(inner: &Inner, client_id: &str, revision: u64) -> bool {
    inner
        .owned_at
        .lock()
        .get(client_id)
        .is_some_and(|mine| *mine > revision)
}

/// Takes `client_id`'s session out of the subscription index inside this
/// node's routing task, which answers with the newest message number it
/// had routed per run (this node's own too): the session had those and
/// everything before them. `None` when the task did not answer in time or
/// the session was not there to leave (then nothing is replayed).
async fn cut_from_routing(
    inner: &Inner,
    client_id: &str,
    limit: std::time::Duration,
) -> Option<crate::receipt::Receipt> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let command = crate::shared::Command::Cut(client_id.to_string(), tx);
    inner.commands.send(command).ok()?;
    let mut high = tokio::time::timeout(limit, rx).await.ok()?.ok()??;
    inner.carried.lock().raise(client_id, &mut high);
    // After a gap, complete only from its beginning (see
    // `backlog::Hold::complete_from_ms`).
    let now = starling_broker::store::unix_ms();
    let complete = inner.replica.hold.lock().complete_from_ms();
    Some(crate::receipt::Receipt {
        at_ms: complete.map_or(now, |from| from.min(now)),
        own: inner.origin,
        high,
    })
}

/// Answers other nodes' requests for the parts of handed-over sessions.
pub async fn serve_handovers(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(keys::handover(&inner.node_id)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("session handovers cannot be served: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let p = &request.payload;
        if p.len() < 4 {
            continue;
        }
        let index = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        let client_id = String::from_utf8_lossy(&p[4..]).into_owned();
        let part = {
            let mut out = inner.outgoing.lock();
            let part = out
                .by_client
                .get(&client_id)
                .and_then(|(chunks, _)| chunks.get(index).cloned());
            // The last part fetched: the session has moved.
            if out
                .by_client
                .get(&client_id)
                .is_some_and(|(c, _)| index + 1 == c.len())
            {
                out.by_client.remove(&client_id);
            }
            part
        };
        let answer = match part {
            Some(chunk) => inner.client.publish(reply, chunk).await,
            None => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Starling-Missing", "1");
                inner
                    .client
                    .publish_with_headers(reply, headers, Bytes::new())
                    .await
            }
        };
        if let Err(e) = answer {
            tracing::debug!("a handover part was not sent: {e}");
        }
    }
}

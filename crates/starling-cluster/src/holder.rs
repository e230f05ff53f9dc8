//! Who really holds a session when the owners bucket says otherwise.
//!
//! A claim writes its node as owner *before* it has the session (so that
//! of two racing nodes only the winner disturbs the old one), and puts the
//! old owner back when it cannot get it. While JetStream or the old node is
//! away, that can leave the bucket naming a node without the session: for
//! the length of the claim, or for good when the write back fails. Two
//! things keep the session from being lost then:
//! - a node whose claim failed remembers where the session stayed, and one
//!   that handed a session over remembers where it went; a takeover asked
//!   of it then is sent there ([`redirect`]);
//! - a node holding a session that another node now owns asks that node
//!   whether it holds it ([`ask`]) before it drops its copy: only a
//!   [`Holding::Held`] answer lets it go; [`Holding::Not`] makes it claim
//!   the session back.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::keys;
use crate::shared::{Claim, Inner};

/// How long a node remembers where a session not here is.
const REMEMBERED: std::time::Duration = std::time::Duration::from_secs(120);

/// What a node answers about a session the owners bucket says it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// It has the session (or is replaying into it).
    Held,
    /// A claim of it is in progress there: ask again.
    Claiming,
    /// It has no session for that client id.
    Not,
    /// It did not answer.
    Unknown,
}

/// Records that this node's claim of `client_id` could not get the session
/// from `from`, which still holds it.
pub fn claim_failed(inner: &Inner, client_id: &str, from: &str) {
    remember(inner, client_id, from);
}

/// Records that this node handed `client_id`'s session over to `to`. A
/// takeover asked here later is sent there, not answered "none here":
/// the asker would rebuild the session from its replica, which lacks what
/// was delivered since it was last written (seen: a node that had handed
/// the session over to a claim that then lost its race answered the
/// winner "none", and 618 QoS 2 messages were delivered again).
pub fn handed_to(inner: &Inner, client_id: &str, to: &str) {
    remember(inner, client_id, to);
}

fn remember(inner: &Inner, client_id: &str, node: &str) {
    let now = tokio::time::Instant::now();
    let mut known = inner.known_holders.lock();
    known.retain(|_, (_, at)| now.duration_since(*at) < REMEMBERED);
    known.insert(client_id.to_string(), (node.to_string(), now));
}

/// Forgets where `client_id`'s session was (a claim here got it).
pub fn claim_succeeded(inner: &Inner, client_id: &str) {
    inner.known_holders.lock().remove(client_id);
}

/// The node a takeover of `client_id`, which this node does not hold,
/// should be asked of instead: the one a failed claim here left it with,
/// or the one this node handed it over to.
pub fn redirect(inner: &Inner, client_id: &str) -> Option<String> {
    let known = inner.known_holders.lock();
    known
        .get(client_id)
        .filter(|(_, at)| at.elapsed() < REMEMBERED)
        .map(|(node, _)| node.clone())
}

/// What this node holds of `client_id`.
fn holding(inner: &Inner, client_id: &str) -> Holding {
    let held = inner
        .broker()
        .is_some_and(|b| b.session(client_id).is_some())
        || inner.replaying.lock().contains_key(client_id);
    if held {
        return Holding::Held;
    }
    match inner.claims.lock().get(client_id) {
        Some(Claim::InProgress) => Holding::Claiming,
        Some(Claim::Won(at)) if at.elapsed() < inner.timeout => Holding::Claiming,
        _ => Holding::Not,
    }
}

/// Asks node `owner` whether it holds `client_id`'s session.
pub async fn ask(inner: &Inner, owner: &str, client_id: &str) -> Holding {
    let asked = inner
        .client
        .request(keys::holds(owner), Bytes::from(client_id.to_string()));
    match tokio::time::timeout(inner.timeout, asked).await {
        Ok(Ok(reply)) => match reply.payload.first() {
            Some(1) => Holding::Held,
            Some(2) => Holding::Claiming,
            Some(0) => Holding::Not,
            _ => Holding::Unknown,
        },
        _ => Holding::Unknown,
    }
}

/// Answers other nodes' [`ask`]s.
pub async fn serve(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(keys::holds(&inner.node_id)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("questions about held sessions cannot be answered: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let Ok(client_id) = std::str::from_utf8(&request.payload) else {
            continue;
        };
        let answer: u8 = match holding(&inner, client_id) {
            Holding::Held => 1,
            Holding::Claiming => 2,
            Holding::Not | Holding::Unknown => 0,
        };
        if let Err(e) = inner.client.publish(reply, Bytes::from(vec![answer])).await {
            tracing::debug!("an answer about a held session was not sent: {e}");
        }
    }
}

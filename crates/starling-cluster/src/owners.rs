//! Which node serves each client id: a key-value bucket whose revision
//! fences the writes. A node claims a client id by reading its key, asking
//! the owner (if another node) to close the client there, and writing itself
//! as owner conditioned on the revision it read: of two nodes racing for
//! one id, exactly one write succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use starling_broker::cluster::Ownership;
use starling_codec::ByteString;

use crate::shared::{Claim, Inner};
use crate::takeover::Handed;
use crate::{keys, replica};

/// Claims `client_id` for this node. A clean session (`persistent` false)
/// is served here when the cluster cannot be asked; a persistent one is not.
///
/// While the claim is in progress (and until the client attaches), another
/// node that takes the id over waits for it here ([`await_claim`]), so that
/// it finds the connection to close; a claim it could not wait for is lost
/// and answered [`Ownership::Busy`].
pub async fn claim(inner: &Arc<Inner>, client_id: &str, persistent: bool) -> Ownership {
    let Some(mut running) = begin_claim(inner, client_id).await else {
        tracing::info!(%client_id, "an earlier claim of this client id here is still running");
        return Ownership::Busy;
    };
    let owned = claim_owner(inner, client_id, persistent).await;
    let mut claims = inner.claims.lock();
    running.ended = true;
    let lost = claims.get(client_id) == Some(&Claim::Lost);
    match owned {
        Ownership::Local if !lost => {
            claims.insert(
                client_id.to_string(),
                Claim::Won(tokio::time::Instant::now()),
            );
            Ownership::Local
        }
        Ownership::Local => {
            claims.remove(client_id);
            drop(claims);
            if inner
                .broker()
                .is_some_and(|b| b.session(client_id).is_some())
            {
                let mut lost = inner.lost_with_session.lock();
                lost.retain(|_, at| at.elapsed() < LOST_KEPT_FOR);
                lost.insert(client_id.to_string(), tokio::time::Instant::now());
            }
            tracing::info!(%client_id, "another node took this client id over during the claim");
            Ownership::Busy
        }
        other => {
            claims.remove(client_id);
            other
        }
    }
}

/// How long a session that a lost claim left here counts as that claim's
/// (see [`took_it_lately`]).
const LOST_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the session of `client_id` is here because an earlier claim
/// here took it, lately, then lost the race for the id (another node's
/// takeover came meanwhile, and will ask for it). A claim here now keeps
/// that copy: it has what its replica has and what its replay brought,
/// and fetching another node's over it would drop that (seen: a copy a
/// node just back from a cut handed over, installed over one rebuilt and
/// replayed here, lost 3,278 acknowledged messages). A session here for
/// another reason (this node cut off meanwhile) is not this claim's: it is
/// fetched from its owner as usual.
fn took_it_lately(inner: &Inner, client_id: &str) -> bool {
    let mut lost = inner.lost_with_session.lock();
    lost.retain(|_, at| at.elapsed() < LOST_KEPT_FOR);
    lost.remove(client_id).is_some()
        && inner
            .broker()
            .is_some_and(|b| b.session(client_id).is_some())
}

/// How long a claim waits at most for an earlier one of its client id
/// here to end: about as long as that one can take (a takeover asked
/// again for [`BUSY_FOR`], then a session fetched or rebuilt).
const EARLIER_CLAIM_FOR: std::time::Duration = std::time::Duration::from_secs(25);

/// A claim in progress here, marked in [`Inner::claims`]: a claim dropped
/// before it ended (its connection's task gone) takes its mark off, so
/// that later claims of its client id do not wait for it.
struct Running<'a> {
    inner: &'a Inner,
    client_id: &'a str,
    /// The claim wrote its outcome (under the lock): nothing to undo.
    ended: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut claims = self.inner.claims.lock();
        if matches!(
            claims.get(self.client_id),
            Some(Claim::InProgress | Claim::Lost)
        ) {
            claims.remove(self.client_id);
        }
    }
}

/// Marks a claim of `client_id` in progress here, once no earlier claim of
/// it here is (waited for, at most [`EARLIER_CLAIM_FOR`]; `None` past it).
/// One at a time: a client that gave up on a slow CONNECT and connects
/// again here would otherwise run a second claim beside the first, both
/// would take the session from its owner, and the second's copy, installed
/// over the first's, would lack the queue the first took (seen: 200
/// acknowledged messages lost). Waited for, the earlier claim leaves the
/// session here and the later one finds it.
async fn begin_claim<'a>(inner: &'a Inner, client_id: &'a str) -> Option<Running<'a>> {
    let deadline = tokio::time::Instant::now() + EARLIER_CLAIM_FOR;
    let mut told = false;
    loop {
        {
            let now = tokio::time::Instant::now();
            let mut claims = inner.claims.lock();
            claims.retain(|_, c| !matches!(c, Claim::Won(at) if now - *at > inner.timeout));
            let running = matches!(claims.get(client_id), Some(Claim::InProgress | Claim::Lost));
            if !running {
                claims.insert(client_id.to_string(), Claim::InProgress);
                return Some(Running {
                    inner,
                    client_id,
                    ended: false,
                });
            }
            if now >= deadline {
                return None;
            }
        }
        if !told {
            tracing::info!(%client_id, "a claim waits for an earlier claim of this client id here");
            told = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits until no claim of `client_id` is running here (at most
/// [`EARLIER_CLAIM_FOR`]); whether it had to. The connection then checks
/// that its client is still there before it claims (a client that gave up
/// on a slow CONNECT may have connected elsewhere since, and a claim queued
/// here for each of its attempts would take its session from there, one
/// after another).
pub async fn await_turn(inner: &Inner, client_id: &str) -> bool {
    let deadline = tokio::time::Instant::now() + EARLIER_CLAIM_FOR;
    let mut waited = false;
    while claim_running(inner, client_id) && tokio::time::Instant::now() < deadline {
        if !waited {
            tracing::info!(%client_id, "a claim waits for an earlier claim of this client id here");
            waited = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    waited
}

/// Whether a claim of `client_id` is in progress here.
fn claim_running(inner: &Inner, client_id: &str) -> bool {
    matches!(
        inner.claims.lock().get(client_id),
        Some(Claim::InProgress | Claim::Lost)
    )
}

/// Reads and writes the owner of `client_id` (see [`claim`]).
async fn claim_owner(inner: &Arc<Inner>, client_id: &str, persistent: bool) -> Ownership {
    let unreachable = if persistent {
        Ownership::Unavailable
    } else {
        Ownership::Local
    };
    let Some(buckets) = inner.buckets.get() else {
        return unreachable;
    };
    if !inner.reachable() {
        return unreachable;
    }
    let store = &buckets.owners;
    let key = keys::of(client_id);
    let me = keys::owner_value(&inner.node_id, client_id);
    let entry = match tokio::time::timeout(inner.timeout, store.entry(key.clone())).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            tracing::warn!(%client_id, "session owner not read: {e}");
            return unreachable;
        }
        Err(_) => return unreachable,
    };
    // The write comes first: of two nodes racing, only the winner disturbs
    // the old owner. The revision read fences the write.
    let mut read = entry.as_ref().map_or(0, |e| e.revision);
    let previous = entry
        .as_ref()
        .filter(|e| e.operation == Operation::Put)
        .map(|e| e.value.clone());
    let written = match entry {
        None => store.create(&key, me).await.map_err(|e| {
            let lost = e.kind() == kv::CreateErrorKind::AlreadyExists;
            (lost, e.to_string())
        }),
        Some(e) if e.operation == Operation::Put && keys::owner_node(&e.value) == inner.node_id => {
            let here = inner
                .broker()
                .is_some_and(|b| b.session(client_id).is_some());
            if here || !persistent {
                if here {
                    settled(inner, client_id);
                }
                return Ownership::Local;
            }
            // Written by an earlier claim here whose answer was lost (a
            // timeout while JetStream elected a leader): the session is
            // still with the owner before that write.
            read = 1;
            Ok(e.revision)
        }
        Some(e) => store.update(&key, me, e.revision).await.map_err(|e| {
            let lost = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
            (lost, e.to_string())
        }),
    };
    match written {
        Ok(revision) if persistent && took_it_lately(inner, client_id) => {
            tracing::info!(%client_id, "the session an earlier claim here took is kept");
            crate::holder::claim_succeeded(inner, client_id);
            wrote(inner, client_id, revision);
            settled(inner, client_id);
            Ownership::Local
        }
        Ok(revision) => {
            let (owner, had) = match predecessor(inner, store, &key, read, revision).await {
                Ok(Earlier::Owner(owner)) => {
                    let Ok(had) = take_from(inner, &owner, client_id, revision).await else {
                        // The key names the old owner again: nothing to
                        // put back, and the client is told to try later.
                        return Ownership::Busy;
                    };
                    (Some(owner), had)
                }
                // This node's failed claims (a client trying again while
                // JetStream could not give the replica) can fill the kept
                // history: where the session was is not known, and a new
                // one would lose it (seen: the wills' watcher's session
                // started empty).
                Ok(Earlier::OwnOnly) if persistent => {
                    tracing::warn!(%client_id, "only this node's own claims are left in the key's history");
                    (None, rebuild_unknown(inner, client_id).await)
                }
                Ok(Earlier::None | Earlier::OwnOnly) => {
                    if read > 0 && persistent {
                        tracing::info!(%client_id, "no earlier owner in the key's history: a new session");
                    }
                    if persistent {
                        wrote(inner, client_id, revision);
                        settled(inner, client_id);
                    }
                    return Ownership::Local;
                }
                Err(()) => {
                    tracing::warn!(%client_id, "the previous owner could not be read");
                    (None, false)
                }
            };
            if had || !persistent {
                crate::holder::claim_succeeded(inner, client_id);
                if persistent {
                    wrote(inner, client_id, revision);
                    settled(inner, client_id);
                }
                return Ownership::Local;
            }
            // The session could not be had (its replica unreadable now):
            // the owner goes back to what it was, for a later try, and a
            // takeover asked here meanwhile is sent where the session is.
            let stayed = owner.or_else(|| previous.as_ref().map(|v| keys::owner_node(v)));
            if let Some(stayed) = stayed.filter(|n| n != &inner.node_id) {
                crate::holder::claim_failed(inner, client_id, &stayed);
            }
            let reverted = match previous {
                Some(value) => store
                    .update(&key, value, revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => store
                    .delete_expect_revision(&key, Some(revision))
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = reverted {
                tracing::warn!(%client_id, "session owner not restored: {e}");
            }
            unreachable
        }
        Err((true, _)) => {
            tracing::info!(%client_id, "another node claimed this client id first");
            Ownership::Busy
        }
        Err((false, e)) => {
            tracing::warn!(%client_id, "session owner not written: {e}");
            // It may have landed after all (a timeout while JetStream had no
            // quorum): a takeover asked here is sent to the owner read.
            let stayed = previous.as_ref().map(|v| keys::owner_node(v));
            if let Some(stayed) = stayed.filter(|n| n != &inner.node_id) {
                crate::holder::claim_failed(inner, client_id, &stayed);
            }
            unreachable
        }
    }
}

/// A claim that the old owner's later claim of the client id overtook.
#[derive(Debug)]
struct Superseded;

/// What the key's history says was before this node's write.
#[derive(Debug, PartialEq, Eq)]
enum Earlier {
    /// That node owned it last.
    Owner(String),
    /// Nobody: the key is new, or its last owner released it.
    None,
    /// Only this node's own earlier writes are left in the kept history.
    OwnOnly,
}

/// The node that owned the key just before this node's write at `written`
/// (read at revision `read`), asked of the stream's leader: the owner read,
/// or another node whose write landed in between. (Before nats-server
/// 2.9.21 the revision fence was checked outside the Raft proposal, so two
/// writes expecting one revision could both succeed, nats-server#4320; each
/// winner then takes the id over from the writer just before it, and only
/// the last keeps it.)
async fn predecessor(
    inner: &Inner,
    store: &kv::Store,
    key: &str,
    read: u64,
    written: u64,
) -> Result<Earlier, ()> {
    let subject = format!("{}{key}", store.prefix);
    let mut last = None;
    let mut own = false;
    let mut from = read.max(1);
    // The history kept per key bounds the walk.
    for _ in 0..crate::buckets::OWNER_HISTORY {
        let next = store
            .stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(subject.clone())
            .send();
        let message = match tokio::time::timeout(inner.timeout, next).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            // Not known: the session may be elsewhere.
            _ => return Err(()),
        };
        if message.sequence >= written {
            break;
        }
        from = message.sequence + 1;
        // This node's own earlier writes are passed over: claims that did
        // not get the session (their answer lost in a timeout while
        // JetStream had no quorum, then landed), or a session it held once
        // and gave to the owner after it.
        let deleted = message.headers.get("KV-Operation").is_some();
        if deleted || keys::owner_node(&message.payload) != inner.node_id {
            last = Some((deleted, message));
        } else {
            own = true;
        }
    }
    Ok(match last {
        Some((false, m)) => Earlier::Owner(keys::owner_node(&m.payload)),
        Some((true, _)) => Earlier::None,
        None if own => Earlier::OwnOnly,
        None => Earlier::None,
    })
}

/// Asks node `owner` to close `client_id` there and hand its session over,
/// and installs what comes. An owner that does not answer (it is gone) is
/// passed over: the session is rebuilt from its replica. `Ok(false)`: the
/// session could not be had; `Err`: the owner's own claim came after this
/// node's write at `revision` (this claim lost).
async fn take_from(
    inner: &Arc<Inner>,
    owner: &str,
    client_id: &str,
    revision: u64,
) -> Result<bool, Superseded> {
    let deadline = tokio::time::Instant::now() + BUSY_FOR;
    let mut owner = owner.to_string();
    let mut hops = 0;
    tracing::info!(%client_id, %owner, "asking the session's owner to hand it over");
    let (count, cut) = loop {
        let asked = inner.client.request_with_headers(
            keys::takeover(&owner),
            crate::takeover::headers(&inner.node_id, revision),
            crate::takeover::request(client_id),
        );
        let answer = match tokio::time::timeout(inner.timeout, asked).await {
            Ok(Ok(reply)) => Handed::decode(&reply.payload).unwrap_or(Handed::Parts(0, None)),
            Ok(Err(e)) => {
                tracing::info!(%client_id, %owner, "the previous owner did not answer: {e}");
                return Ok(rebuild_silent(inner, &owner, client_id).await);
            }
            Err(_) => {
                tracing::info!(%client_id, %owner, "the previous owner did not answer in time");
                return Ok(rebuild_silent(inner, &owner, client_id).await);
            }
        };
        match answer {
            Handed::Parts(count, cut) => break (count, cut),
            // A claim there failed and left the session with `node`.
            Handed::Elsewhere(node) if hops < HOPS => {
                tracing::info!(%client_id, %owner, holder = %node, "the session stayed with the node before: asked there");
                hops += 1;
                if node == inner.node_id {
                    if inner
                        .broker()
                        .is_some_and(|b| b.session(client_id).is_some())
                    {
                        return Ok(true);
                    }
                    return Ok(rebuild_unknown(inner, client_id).await);
                }
                owner = node;
                continue;
            }
            Handed::Elsewhere(_) => {
                return Ok(rebuild_unknown(inner, client_id).await);
            }
            Handed::Busy => {}
            Handed::Superseded => {
                tracing::info!(%client_id, %owner, "a later claim of the owner's took this client id first");
                return Err(Superseded);
            }
        }
        // Its messages are still being replayed there, or a claim there is
        // fetching it: asked again.
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(%client_id, %owner, "the session is still being rebuilt on its node");
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let owner = owner.as_str();
    if count == 0 {
        // Its replica may hold it still (seen: a node just back from a cut
        // answered none for a session its audit had kept a moment before,
        // and the session started empty here): rebuilt from there, as from
        // a node that is gone (none there either: a new session).
        tracing::info!(%client_id, %owner, "no session to move from the other node: rebuilt from its replica");
        return Ok(rebuild(inner, owner, client_id).await);
    }
    let mut chunks = Vec::with_capacity(count as usize);
    for index in 0..count {
        match fetch_chunk(inner, owner, client_id, index).await {
            Some(chunk) => chunks.push(chunk),
            None => {
                tracing::warn!(%client_id, %owner, "the session could not be moved: a part of it did not come");
                return Ok(true);
            }
        }
    }
    let Some(broker) = inner.broker() else {
        return Ok(true);
    };
    let client = ByteString::from(client_id);
    // What reached the session after it left the old node's index (and
    // before it is in this one's) comes from transit.
    let token = match &cut {
        Some(_) => Some(crate::transit::begin(inner, HashSet::from([client.clone()])).await),
        None => None,
    };
    match broker.take_handover(client_id, &chunks) {
        Ok(mark) => {
            tracing::info!(%client_id, %owner, parts = count, "session moved from another node");
            inner.carried.lock().arrived(client_id, cut.as_ref());
            if let (Some(token), Some(cut)) = (token, cut) {
                let clients = HashMap::from([(client, mark)]);
                let cut = (Some(cut), true);
                request_replay(inner, owner, clients, HashSet::new(), cut, token);
            }
        }
        Err(e) => {
            tracing::warn!(%client_id, %owner, "the session could not be moved: {e}");
            if let Some(token) = token {
                crate::transit::abandon(inner, token).await;
            }
        }
    }
    Ok(true)
}

/// A node died (see `wills`): the sessions it owned are adopted here,
/// rebuilt from their replicas, so that their subscriptions keep receiving
/// until their clients come back (to any node, which takes them from
/// here). Each is claimed with a write fenced on the revision read.
/// Returns whether every session was settled (else it is tried again).
pub async fn adopt_sessions_of(inner: &Arc<Inner>, dead: &str) -> bool {
    let Some(buckets) = inner.buckets.get() else {
        return false;
    };
    let mut watch = match buckets.owners.watch_with_history(">").await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(node = %dead, "the sessions of a dead node could not be listed: {e}");
            return false;
        }
    };
    let token = crate::transit::begin(inner, HashSet::new()).await;
    let mut rebuilt = HashMap::new();
    let mut held = HashSet::new();
    let mut adopted = 0usize;
    let mut complete = true;
    loop {
        let entry = match tokio::time::timeout(inner.timeout, watch.next()).await {
            Ok(Some(Ok(entry))) => entry,
            Ok(None) => break,
            _ => {
                complete = false;
                break;
            }
        };
        let last = entry.delta == 0;
        // Heard again: it is not dead (what was adopted so far it finds
        // owned elsewhere and gives up, see `rejoin`).
        if inner.live.lock().contains_key(dead) {
            tracing::info!(node = %dead, "a node thought dead is back: its sessions stay");
            break;
        }
        if entry.operation == Operation::Put && keys::owner_node(&entry.value) == dead {
            if let Some(client_id) = keys::owner_client(&entry.value) {
                let me = keys::owner_value(&inner.node_id, &client_id);
                let claimed = buckets.owners.update(&entry.key, me, entry.revision).await;
                match claimed {
                    Ok(revision) => {
                        // Held here already (its owner moved away and back, or
                        // this node's copy is newer than the replica): kept.
                        let here = inner
                            .broker()
                            .is_some_and(|b| b.session(&client_id).is_some());
                        let outcome = if here {
                            Rebuilt::Installed(0)
                        } else {
                            // The replay knows it before it is installed.
                            let mut clients: HashSet<ByteString> =
                                rebuilt.keys().cloned().collect();
                            clients.insert(ByteString::from(client_id.as_str()));
                            crate::transit::extend(inner, token, clients).await;
                            recover_session(inner, &client_id, true, &mut held).await
                        };
                        match outcome {
                            Rebuilt::Installed(mark) => {
                                wrote(inner, &client_id, revision);
                                tracing::info!(node = %dead, %client_id, held_here = here, revision, "adopted a dead node's session");
                                adopted += 1;
                                if !here {
                                    rebuilt.insert(ByteString::from(client_id.as_str()), mark);
                                }
                            }
                            // A clean session: nothing to keep.
                            Rebuilt::Nothing => {
                                let _ = buckets
                                    .owners
                                    .delete_expect_revision(&entry.key, Some(revision))
                                    .await;
                            }
                            // Back to the dead node, for the next try.
                            Rebuilt::Failed => {
                                complete = false;
                                let _ = buckets
                                    .owners
                                    .update(&entry.key, entry.value.clone(), revision)
                                    .await;
                            }
                        }
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(_) => complete = false,
                }
            }
        }
        if last {
            break;
        }
    }
    tracing::info!(node = %dead, sessions = adopted, complete, "adopted the persistent sessions of a dead node");
    if rebuilt.is_empty() {
        crate::transit::abandon(inner, token).await;
    } else {
        request_replay_from(inner, dead, rebuilt, held, None, token);
    }
    complete
}

/// [`rebuild`], for a previous owner that did not answer: once the session
/// is here, the CONNACK waits for that node's run to be repaired (see
/// `moved`). (Not before: the session would be nowhere meanwhile.)
async fn rebuild_silent(inner: &Arc<Inner>, owner: &str, client_id: &str) -> bool {
    let rebuilt = rebuild(inner, owner, client_id).await;
    if rebuilt {
        crate::moved::before_connack(inner, owner).await;
    }
    rebuilt
}

/// The previous owner of `client_id`, `owner`, did not answer: the session
/// is rebuilt from its replica, and what `owner` may have missed replayed.
/// `false`: the replica could not be read.
async fn rebuild(inner: &Inner, owner: &str, client_id: &str) -> bool {
    rebuild_from(inner, owner, client_id, None).await
}

/// No node along the session's owners holds it (each one's failed claim
/// says another has it; seen after a partition, two nodes naming each
/// other): rebuilt from its replica, and since the node that last held
/// it is not known, what transit kept of the last [`crate::transit::AGE`]
/// is replayed to it but for what the replica holds (its tombstones name
/// the messages it was done with).
async fn rebuild_unknown(inner: &Inner, client_id: &str) -> bool {
    tracing::warn!(%client_id, "the session was not found along its owners: rebuilt from its replica");
    let nobody = crate::receipt::Receipt::default();
    rebuild_from(inner, "", client_id, Some(nobody)).await
}

/// Rebuilds `client_id` from its replica and replays what `owner` (or,
/// with an empty `receipt`, any node) may have missed. (A copy held here
/// is replaced: it may be one this node kept while cut off, older than
/// the replica. One an earlier claim here took lately is kept before it
/// comes to this, see [`took_it_lately`].)
async fn rebuild_from(
    inner: &Inner,
    owner: &str,
    client_id: &str,
    receipt: Option<crate::receipt::Receipt>,
) -> bool {
    let mut held = HashSet::new();
    let token = crate::transit::begin(inner, HashSet::from([ByteString::from(client_id)])).await;
    match recover_session(inner, client_id, false, &mut held).await {
        Rebuilt::Installed(mark) => {
            let clients = HashMap::from([(ByteString::from(client_id), mark)]);
            request_replay_from(inner, owner, clients, held, receipt, token);
            true
        }
        Rebuilt::Nothing => {
            crate::transit::abandon(inner, token).await;
            true
        }
        Rebuilt::Failed => {
            crate::transit::abandon(inner, token).await;
            false
        }
    }
}

/// Asks for the transit messages `dead` (a node, or this node's previous
/// run with its `receipt`) had not stored to be replayed to `clients`
/// (each with this node's message number right after it was installed;
/// their handovers wait meanwhile).
pub fn request_replay_from(
    inner: &Inner,
    dead: &str,
    own_before: HashMap<ByteString, u64>,
    held: HashSet<(u64, u64)>,
    receipt: Option<crate::receipt::Receipt>,
    token: u64,
) {
    request_replay(inner, dead, own_before, held, (receipt, false), token);
}

/// As [`request_replay_from`], `receipt` flagged as a live handover's cut
/// when `.1` (see [`crate::shared::ReplayRequest::live`]).
fn request_replay(
    inner: &Inner,
    dead: &str,
    own_before: HashMap<ByteString, u64>,
    held: HashSet<(u64, u64)>,
    (receipt, live): (Option<crate::receipt::Receipt>, bool),
    token: u64,
) {
    let clients: HashSet<ByteString> = own_before.keys().cloned().collect();
    let mut replaying = inner.replaying.lock();
    for c in &clients {
        *replaying.entry(c.to_string()).or_default() += 1;
    }
    drop(replaying);
    let _ = inner.replay_requests.send(crate::shared::ReplayRequest {
        dead: dead.to_string(),
        clients,
        own_before,
        held,
        receipt,
        live,
        token,
    });
}

/// What became of a session rebuilt from its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuilt {
    /// With this node's message number when its subscriptions entered the
    /// index (its own messages after it reached it here).
    Installed(u64),
    /// There was no persistent session.
    Nothing,
    /// The replica could not be read (or the session not installed).
    Failed,
}

/// The previous owner is gone: its client's session is rebuilt from its
/// replica, if it was persistent.
async fn recover_session(
    inner: &Inner,
    client_id: &str,
    adopt: bool,
    held: &mut HashSet<(u64, u64)>,
) -> Rebuilt {
    let recovered = match replica::recover(&inner.replica, client_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Rebuilt::Nothing,
        Err(e) => {
            tracing::warn!(%client_id, "the replicated session could not be read: {e}");
            return Rebuilt::Failed;
        }
    };
    let (chunks, old) = (recovered.chunks, recovered.subjects);
    held.extend(recovered.stamps);
    let Some(broker) = inner.broker() else {
        return Rebuilt::Failed;
    };
    let installed = if adopt {
        broker.adopt_handover(client_id, &chunks)
    } else {
        broker.take_handover(client_id, &chunks)
    };
    let mark = match installed {
        Ok(mark) => {
            inner.carried.lock().forget(client_id);
            mark
        }
        Err(e) => {
            tracing::warn!(%client_id, "the replicated session could not be installed: {e}");
            return Rebuilt::Failed;
        }
    };
    inner
        .replica
        .counters
        .recovered
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%client_id, messages = old.len(), "session recovered from its replica");
    // Once written again under this node's subjects, the old copies go
    // (after the CONNACK: this is not the client's wait).
    let replica = inner.replica.clone();
    let client_id = client_id.to_string();
    tokio::spawn(async move {
        if let Some(store) = broker.store() {
            store.flush().await;
        }
        replica::forget(&replica, &client_id, old).await;
    });
    Rebuilt::Installed(mark)
}

/// One part of a session being handed over, asked up to three times.
async fn fetch_chunk(inner: &Inner, owner: &str, client_id: &str, index: u32) -> Option<Bytes> {
    let mut ask = Vec::with_capacity(4 + client_id.len());
    ask.extend_from_slice(&index.to_be_bytes());
    ask.extend_from_slice(client_id.as_bytes());
    let ask = Bytes::from(ask);
    for _ in 0..3 {
        let asked = inner.client.request(keys::handover(owner), ask.clone());
        if let Ok(Ok(reply)) = tokio::time::timeout(inner.timeout, asked).await {
            if reply.headers.is_none() {
                return Some(reply.payload);
            }
        }
    }
    None
}

/// This node wrote itself the owner of `client_id`'s session at
/// `revision` (see [`crate::shared::Inner::owned_at`]).
pub fn wrote(inner: &Inner, client_id: &str, revision: u64) {
    let mut owned = inner.owned_at.lock();
    let r = owned.entry(client_id.to_string()).or_default();
    *r = (*r).max(revision);
}

/// A claim found this node the owner of `client_id`'s session: its
/// changes are not held for a restart or a cut not yet audited (see
/// [`crate::backlog::Hold::settle`]), so that its client is not sent away
/// (0x9C) for a QoS 2 message waiting on them.
fn settled(inner: &Inner, client_id: &str) {
    inner.replica.hold.lock().settle(client_id);
}

/// The session of `client_id` is no longer held here.
pub fn forget(inner: &Inner, client_id: &str) {
    inner.owned_at.lock().remove(client_id);
}

/// Whether an owner entry read at `revision` is older than this node's own
/// last write of it (a stale read: nothing is decided on it).
pub fn stale(inner: &Inner, client_id: &str, revision: u64) -> bool {
    inner
        .owned_at
        .lock()
        .get(client_id)
        .is_some_and(|mine| revision < *mine)
}

/// The session of `client_id` ended here: the claim is removed unless
/// another node (or a new connection here) holds it now.
pub async fn release(inner: &Inner, client_id: &str) {
    if inner.handing_over.lock().remove(client_id) {
        return;
    }
    let Some(buckets) = inner.buckets.get() else {
        return;
    };
    let key = keys::of(client_id);
    let Ok(Ok(Some(entry))) =
        tokio::time::timeout(inner.timeout, buckets.owners.entry(key.clone())).await
    else {
        return;
    };
    let ours = entry.operation == Operation::Put && keys::owner_node(&entry.value) == inner.node_id;
    let back = inner
        .broker()
        .is_some_and(|b| b.session(client_id).is_some());
    if !back {
        forget(inner, client_id);
    }
    if ours && !back {
        if let Err(e) = buckets
            .owners
            .delete_expect_revision(&key, Some(entry.revision))
            .await
        {
            tracing::debug!(%client_id, "session owner not cleared: {e}");
        }
    }
}

/// Nodes a takeover follows from one to the next, at most.
const HOPS: usize = 3;
/// How long a takeover asks again while the answer is busy.
const BUSY_FOR: std::time::Duration = std::time::Duration::from_secs(15);

//! A node that lost NATS, and its way back.
//!
//! Cut off, the node sends its persistent clients to other nodes at once
//! (DISCONNECT 0x9C; their wills are left to the cluster): their sessions'
//! changes cannot be replicated now, and a message delivered here would be
//! delivered again by the node that rebuilds the session from its replica.
//! It refuses new persistent sessions until NATS is back, so no session is
//! served by two nodes when the others adopt this node's sessions. After
//! [`LEASE`] (shorter than the others take to declare it dead,
//! `wills::DEAD_AFTER`) the clean clients whose wills the others hold go
//! too.
//!
//! Once back, and whenever some sessions are behind their replica, it asks
//! who owns each of its sessions (the *audit*). A session it still owns
//! has its held changes written out (`backlog`); one another node owns
//! now is fenced, dropped here, and what only this node had of it (the
//! messages it got before the cut and never replicated) goes to the owner
//! (see `merges`).
//! Then the wills of its clients that ended meanwhile are published, each
//! once (a fenced delete in the wills bucket, as a surviving node does).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use starling_broker::BrokerState;
use tokio::time::Instant;

use crate::holder::Holding;
use crate::keys;
use crate::shared::{Claim, Inner};

/// How long a node without NATS keeps the clean clients whose wills the
/// other nodes hold (and its persistent ones, before its sessions are
/// replicated).
pub const LEASE: Duration = Duration::from_secs(3);
/// How often the connection is looked at.
const CHECK: Duration = Duration::from_millis(100);
/// Audits at most this often (one that could not finish is tried again).
const AUDIT_EVERY: Duration = Duration::from_secs(1);
/// Owners read at once during an audit.
const READS: usize = 32;

/// Watches the NATS connection and whether the other nodes are reached
/// through it (see `cutoff`): cut off, sends the persistent clients away
/// at once and the clean ones whose wills the others hold after [`LEASE`];
/// audits the sessions once back.
pub async fn run(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(CHECK);
    let mut lost_at: Option<Instant> = None;
    let mut fenced = false;
    let mut persistent_fenced = false;
    let mut audited = Instant::now() - AUDIT_EVERY;
    let stats = inner.client.statistics();
    let mut connects = stats.connects.load(Ordering::Relaxed);
    // When this node last knew it was connected (ms since the epoch).
    let mut connected_ms = starling_broker::store::unix_ms();
    let mut repair_from: Option<u64> = None;
    let mut isolation = crate::cutoff::Isolation::default();
    // A gap to repair without a new connection: cut off from the others.
    let mut was_isolated = false;
    let mut isolated_gap = false;
    // The gap due is one whose repair failed, not a new one: the others
    // are not asked again.
    let mut retry_only = false;
    // (A node not yet connected has no gap to hold messages for.)
    let mut was_reachable = false;
    // Since when this node is back with its outbox paused, and when it
    // last asked the others for a repair (see `repairs`).
    let mut back_at: Option<Instant> = None;
    let mut asked_at: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(broker) = inner.broker() else { return };
        let now = Instant::now();
        let isolated = isolation.check(&inner).await;
        inner.isolated.store(isolated, Ordering::Relaxed);
        if was_isolated && !isolated {
            let from = connected_ms.saturating_sub(crate::transit::REPAIR_BACK.as_millis() as u64);
            repair_from = Some(repair_from.map_or(from, |f| f.min(from)));
            isolated_gap = true;
            retry_only = false;
        }
        was_isolated = isolated;
        // A gap whose repair failed every try: due again (the others were
        // asked already).
        let failed = inner.gap_unrepaired.swap(0, Ordering::AcqRel);
        if failed != 0 {
            repair_from = Some(repair_from.map_or(failed, |f| f.min(failed)));
            isolated_gap = true;
            retry_only = true;
        }
        // A new connection (however short the gap): what core NATS carried
        // around it may be lost, both ways.
        let c = stats.connects.load(Ordering::Relaxed);
        if c != connects {
            connects = c;
            retry_only = false;
            let from = connected_ms.saturating_sub(crate::transit::REPAIR_BACK.as_millis() as u64);
            repair_from = Some(repair_from.map_or(from, |f| f.min(from)));
        }
        if inner.reachable() {
            was_reachable = true;
            connected_ms = starling_broker::store::unix_ms();
            if let Some(from) = repair_from {
                // (The first connection is no gap.)
                if connects <= 1 && !isolated_gap {
                    repair_from = None;
                } else if crate::transit::repair(&inner, from, None, true) {
                    repair_from = None;
                    isolated_gap = false;
                    if !std::mem::take(&mut retry_only) {
                        asked_at = Some(now);
                        tokio::spawn(crate::repairs::ask(inner.clone(), from));
                    }
                }
            }
            resume_outbox(&inner, now, &mut back_at, repair_from.is_none(), asked_at);
        }
        if !inner.reachable() {
            if lost_at.is_none() && was_reachable {
                // Live messages wait for what this gap loses (see `gap`),
                // and so do this node's for the others (see `repairs`).
                let _ = inner.local.send(crate::shared::ReplayCommand::GapBegins);
                crate::repairs::pause(&inner);
                back_at = None;
                // And from now on this node's cuts and receipts say its
                // routing is complete only from before the gap (a session
                // handed over as the link comes back, before the repair
                // begins, lost 1,571 acknowledged messages without it).
                let from =
                    connected_ms.saturating_sub(crate::transit::REPAIR_BACK.as_millis() as u64);
                inner.replica.hold.lock().note_gap(from);
            }
            let since = *lost_at.get_or_insert(now);
            // Once the sessions are replicated (before, nothing was).
            let linked = inner.replica.linked();
            if linked {
                inner.replica.hold.lock().turn_suspect();
            }
            if !persistent_fenced && (linked || now - since >= LEASE) {
                persistent_fenced = true;
                let n = broker.fence_persistent();
                tracing::warn!(
                    clients = n,
                    "{}: persistent clients sent to other nodes (DISCONNECT 0x9C); \
                     persistent sessions are refused until it is back",
                    if isolated {
                        "cut from the other nodes"
                    } else {
                        "no NATS"
                    }
                );
            }
            // Cut from the others, the lease ran out with the heartbeats.
            if !fenced && (isolated || now - since >= LEASE) {
                fenced = true;
                // The others take this node's wills once they think it dead:
                // the clients whose will they have a copy of go too (those
                // that came since are served on).
                let shared: Vec<(String, u64)> =
                    inner.shared_wills.lock().iter().cloned().collect();
                let n = shared
                    .iter()
                    .filter(|(c, conn)| broker.fence_connection(c, *conn))
                    .count();
                tracing::warn!(
                    clients = n,
                    "{} for {LEASE:?}: the clients whose wills the other nodes hold sent \
                     to them (DISCONNECT 0x9C)",
                    if isolated {
                        "cut from the other nodes"
                    } else {
                        "no NATS"
                    }
                );
            }
            continue;
        }
        lost_at = None;
        fenced = false;
        persistent_fenced = false;
        let failed_since = inner.gap_unrepaired.load(Ordering::Acquire) != 0;
        inner
            .repair_due
            .store(repair_from.is_some() || failed_since, Ordering::Relaxed);
        let (suspect, behind) = {
            let hold = inner.replica.hold.lock();
            (hold.suspect, !hold.backlogs.is_empty())
        };
        let due = (suspect || behind) && now - audited >= AUDIT_EVERY;
        if !due || inner.buckets.get().is_none() || !inner.replica.linked() {
            continue;
        }
        audited = now;
        audit(&inner, &broker, suspect).await;
    }
}

/// How long, once back, this node's outbox stays paused at most (a repair
/// of its own that cannot begin while another runs delays its ask).
const PAUSE_LIMIT: Duration = Duration::from_secs(5);

/// Back on NATS: the outbox paused for the gap goes on at once when no
/// repair is due (nothing to ask the others), after [`PAUSE_LIMIT`] at
/// most, and otherwise when the ask made at `asked_at` is answered
/// (`repairs::ask` resumes it).
fn resume_outbox(
    inner: &Inner,
    now: Instant,
    back_at: &mut Option<Instant>,
    none_due: bool,
    asked_at: Option<Instant>,
) {
    if !crate::repairs::paused(inner) {
        *back_at = None;
        return;
    }
    let back = *back_at.get_or_insert(now);
    let asking = asked_at.is_some_and(|t| now - t <= crate::repairs::ASK_WAIT + CHECK);
    if (none_due && !asking) || now - back >= PAUSE_LIMIT {
        if !none_due {
            tracing::info!(
                "the outbox goes on before the other nodes were asked to repair this node's run"
            );
        }
        crate::repairs::resume(inner);
    }
}

/// Session `id`, held here, is `owner`'s (already fenced here): dropped
/// here, and the messages only this node had of it (`early`) handed on.
async fn give_up(
    inner: &Inner,
    broker: &Arc<BrokerState>,
    id: &str,
    owner: &str,
    early: Vec<crate::backlog::Early>,
) {
    // Handed over meanwhile (a takeover from the owner, once this node was
    // back): the owner has the whole session, these messages included (a
    // merge would deliver them twice).
    if broker.session(id).is_none() {
        tracing::info!(client_id = %id, %owner, "session handed over already: nothing to merge");
        return;
    }
    tracing::info!(client_id = %id, %owner, early = early.len(), "session given up here: another node owns and holds it");
    crate::owners::forget(inner, id);
    broker.drop_fenced(id, inner.timeout / 2).await;
    crate::merges::merge_to(inner, owner, id, early).await;
}

/// Watches who owns the client ids: a session held here that another node
/// now owns, and that is not handed over to it within a moment (as a
/// takeover does), was taken from this node without asking it (it was
/// thought dead): it is given up as the audit does.
pub async fn watch_owners(inner: Arc<Inner>) {
    loop {
        let Some(buckets) = inner.buckets.get() else {
            tokio::time::sleep(AUDIT_EVERY).await;
            continue;
        };
        let mut watch = match buckets.owners.watch(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("owners not watched (trying again): {e}");
                tokio::time::sleep(AUDIT_EVERY).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            let Some(broker) = inner.broker() else { return };
            let Ok(entry) = entry else { continue };
            if entry.operation != Operation::Put {
                continue;
            }
            let owner = keys::owner_node(&entry.value);
            let Some(id) = keys::owner_client(&entry.value) else {
                continue;
            };
            if owner == inner.node_id || broker.session(&id).is_none() {
                continue;
            }
            tokio::spawn(unless_handed_over(inner.clone(), broker, id));
        }
        if inner.broker().is_none() {
            return;
        }
    }
}

/// After a takeover's time: gives up session `id` if it is still here and
/// another node owns and holds it; keeps it if the owner turns out not to
/// hold it (see `holder`). Asked again while the owner's claim is in
/// progress or it does not answer.
async fn unless_handed_over(inner: Arc<Inner>, broker: Arc<BrokerState>, id: String) {
    // A session whose replay is in progress answers takeovers "busy": the
    // new owner asks again until it moves.
    let mut owner = None;
    for _ in 0..SETTLE_TRIES {
        tokio::time::sleep(inner.timeout * 2).await;
        if broker.session(&id).is_none() || claiming(inner.claims.lock().get(&id), inner.timeout) {
            return;
        }
        if inner.replaying.lock().contains_key(&id) {
            continue;
        }
        match verdict(&inner, &broker, &id).await {
            Some(Verdict::Lost(now)) => {
                owner = Some(now);
                break;
            }
            Some(Verdict::Mine) => {
                write_out(&inner, &broker, &id).await;
                return;
            }
            Some(Verdict::Unsettled(_)) | None => {}
        }
    }
    let Some(owner) = owner else {
        tracing::warn!(client_id = %id, "another node owns this session but never said it holds it: kept here");
        return;
    };
    let early = {
        let mut hold = inner.replica.hold.lock();
        hold.fenced.insert(id.clone());
        hold.backlogs
            .remove(&id)
            .map(|b| b.early_messages(|stamp| crate::withdrawn::by_this_node(&inner, stamp)))
            .unwrap_or_default()
    };
    tracing::warn!(client_id = %id, %owner, "another node took this session without asking: given up here");
    give_up(&inner, &broker, &id, &owner, early).await;
}

/// Times a session another node owns is looked at again, `2 × timeout`
/// apart, before it is given up or kept.
const SETTLE_TRIES: usize = 60;

/// Who owns a session held here, as the audit found.
enum Verdict {
    Mine,
    /// Another node owns and holds it.
    Lost(String),
    /// Another node owns it but is still claiming it, or did not answer
    /// whether it holds it: kept here, and asked again.
    Unsettled(String),
}

/// Session `id`, found this node's after all, has its held changes written
/// out.
async fn write_out(inner: &Inner, broker: &BrokerState, id: &str) {
    let due = {
        let mut hold = inner.replica.hold.lock();
        hold.backlogs.contains_key(id) && hold.due.insert(id.to_string())
    };
    if let (true, Some(store)) = (due, broker.store()) {
        let _ = tokio::time::timeout(inner.timeout, store.submit_and_wait(Vec::new())).await;
    }
}

/// Asks who owns each session held here (all of them after a cut; else
/// those behind), and settles each: written out, or fenced and dropped.
async fn audit(inner: &Arc<Inner>, broker: &Arc<BrokerState>, suspect: bool) {
    let mut ids: HashSet<String> = inner.replica.hold.lock().backlogs.keys().cloned().collect();
    if suspect {
        ids.extend(broker.persistent_ids());
    }
    let reads = futures_util::stream::iter(ids)
        .map(|id| async move {
            let verdict = verdict(inner, broker, &id).await;
            (id, verdict)
        })
        .buffer_unordered(READS)
        .collect::<Vec<_>>()
        .await;
    let mut verdicts = Vec::with_capacity(reads.len());
    for (id, verdict) in reads {
        match verdict {
            Some(v) => verdicts.push((id, v)),
            // Not known now: the next audit asks again.
            None => return,
        }
    }
    let mine: Vec<String> = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Mine))
        .map(|(id, _)| id.clone())
        .collect();
    let mut lost = Vec::new();
    for (id, v) in &verdicts {
        if let Verdict::Unsettled(owner) = v {
            tracing::info!(client_id = %id, %owner, "a session another node owns but may not hold: kept for now");
            tokio::spawn(unless_handed_over(
                inner.clone(),
                broker.clone(),
                id.clone(),
            ));
        }
    }
    {
        let claims = inner.claims.lock();
        let mut hold = inner.replica.hold.lock();
        for (id, verdict) in verdicts {
            match verdict {
                // A claim here in progress (or just won) is newer than the
                // owner read.
                Verdict::Lost(owner) if !claiming(claims.get(&id), inner.timeout) => {
                    let early = hold
                        .backlogs
                        .remove(&id)
                        .map(|b| {
                            b.early_messages(|stamp| crate::withdrawn::by_this_node(inner, stamp))
                        })
                        .unwrap_or_default();
                    hold.fenced.insert(id.clone());
                    lost.push((id, owner, early));
                }
                Verdict::Unsettled(_) => {}
                _ => {
                    if hold.backlogs.contains_key(&id) {
                        hold.due.insert(id);
                    }
                }
            }
        }
        if inner.reachable() {
            hold.audited();
        }
    }
    // The backlogs found due go out with the next batch: ask for one.
    if let Some(store) = broker.store() {
        let _ = tokio::time::timeout(inner.timeout, store.submit_and_wait(Vec::new())).await;
    }
    let n = lost.len();
    for (id, owner, early) in lost {
        give_up(inner, broker, &id, &owner, early).await;
    }
    let previous = inner.previous_run.lock().take();
    match previous {
        Some(receipt) => replay_to_restored(inner, broker, mine, receipt).await,
        None if suspect => crate::transit::abandon(inner, inner.restart_token).await,
        None => {}
    }
    if suspect {
        tracing::info!(
            sessions_lost = n,
            "back on NATS: sessions audited (those another node owns now dropped here)"
        );
        // The wills of clients that ended meanwhile (JetStream may still be
        // electing leaders: tried again, a second apart).
        if let Some(buckets) = inner.buckets.get().cloned() {
            let (inner, me) = (inner.clone(), keys::node(&inner.node_id));
            tokio::spawn(async move {
                for _ in 0..WILL_TRIES {
                    if crate::wills::take_wills_of(&inner, &buckets, &me, true).await {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    }
}

/// Times this node's own wills are looked for once it is back on NATS.
const WILL_TRIES: usize = 30;

fn claiming(claim: Option<&Claim>, within: Duration) -> bool {
    match claim {
        Some(Claim::InProgress) => true,
        Some(Claim::Won(at)) => at.elapsed() < within,
        _ => false,
    }
}

/// After a restart: the sessions restored from the local store that are
/// still this node's get what the previous run had not stored, from the
/// transit stream (as a dead node's sessions do where they are rebuilt),
/// skipping what their replicas hold.
async fn replay_to_restored(
    inner: &Arc<Inner>,
    broker: &Arc<BrokerState>,
    mine: Vec<String>,
    receipt: crate::receipt::Receipt,
) {
    let mut clients = std::collections::HashMap::new();
    let mut held = HashSet::new();
    for id in mine {
        // Claimed in this run (moved here since it started): not the
        // previous run's, which may not have had it at all.
        if !inner.restored.contains(id.as_str()) || broker.session(&id).is_none() {
            continue;
        }
        match crate::replica::recover(&inner.replica, &id).await {
            Ok(Some(r)) => {
                held.extend(r.stamps);
                // Restored before this run published anything.
                clients.insert(starling_codec::ByteString::from(id.as_str()), 0);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(client_id = %id, "not replayed after the restart: {e}"),
        }
    }
    // Begun when the node started: what core NATS brought them since.
    let token = inner.restart_token;
    if clients.is_empty() {
        crate::transit::abandon(inner, token).await;
        return;
    }
    tracing::info!(
        sessions = clients.len(),
        "replaying what the previous run missed to its sessions"
    );
    crate::owners::request_replay_from(inner, &inner.node_id, clients, held, Some(receipt), token);
}

/// Who owns `id`; `None` when the bucket could not be read. A session held
/// here that no node owns is claimed again.
async fn verdict(inner: &Inner, broker: &BrokerState, id: &str) -> Option<Verdict> {
    let owners = &inner.buckets.get()?.owners;
    let key = keys::of(id);
    for _ in 0..3 {
        let entry = tokio::time::timeout(inner.timeout, owners.entry(key.clone()))
            .await
            .ok()?
            .ok()?;
        match entry {
            Some(e) if e.operation == Operation::Put => {
                let owner = keys::owner_node(&e.value);
                if owner == inner.node_id {
                    return Some(Verdict::Mine);
                }
                // Older than this node's own claim of it: a stale answer
                // (not known now; asked again later).
                if crate::owners::stale(inner, id, e.revision) {
                    tracing::info!(client_id = %id, %owner, revision = e.revision, "a stale owner read (older than this node's claim): asked again later");
                    return None;
                }
                match crate::holder::ask(inner, &owner, id).await {
                    Holding::Held => return Some(Verdict::Lost(owner)),
                    Holding::Claiming | Holding::Unknown => return Some(Verdict::Unsettled(owner)),
                    // Its claim failed and the owner was not put back:
                    // this node's copy is the session.
                    Holding::Not => {
                        let me = keys::owner_value(&inner.node_id, id);
                        match owners.update(&key, me, e.revision).await {
                            Ok(revision) => {
                                crate::owners::wrote(inner, id, revision);
                                tracing::info!(client_id = %id, %owner, "claimed back a session its owner did not hold");
                                return Some(Verdict::Mine);
                            }
                            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                                continue
                            }
                            Err(_) => return None,
                        }
                    }
                }
            }
            // Ended elsewhere, or never written: only a session held here
            // is claimed again.
            _ if broker.session(id).is_none() => return Some(Verdict::Mine),
            _ => {}
        }
        let me = keys::owner_value(&inner.node_id, id);
        match owners.create(&key, me).await {
            Ok(revision) => {
                crate::owners::wrote(inner, id, revision);
                return Some(Verdict::Mine);
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
            Err(_) => return None,
        }
    }
    None
}

//! QoS 1/2 messages handed to NATS, in the order they were accepted: each
//! appended to the transit stream first (see `transit`), then sent to the
//! nodes that want it (its core copy); its publisher is acknowledged once
//! JetStream has it.
//!
//! While NATS or JetStream is away the appends are tried again and the
//! publishers wait. A message whose publisher leaves unacknowledged
//! meanwhile is *withdrawn* (see `withdrawn`), and as soon as it leaves:
//! a core copy the NATS client buffered while its connection was down
//! reaches the other nodes only when it reconnects, seconds late, and
//! their check of late copies (see `late`) must find it withdrawn by then.
//! So while an append is tried again, the one at the head watches its
//! publisher, and those queued behind it are looked at every
//! [`SWEEP_EVERY`] (at most [`IN_FLIGHT`] of them taken from the queue).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::inorder::InOrder;
use crate::shared::{Inner, ToNats};

/// Appends whose acknowledgements are awaited at once, at most: past it
/// the forwarding task waits, the outbox fills and publishers pause.
const IN_FLIGHT: usize = 8192;
/// How often, while an append is tried again, the ones behind it are
/// looked at for publishers that left.
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// How long appends may wait for JetStream before it is logged that their
/// publishers' acknowledgements are held.
const APPEND_WARN_AFTER: Duration = Duration::from_secs(10);

/// Hands messages to NATS in the order they were accepted: a QoS 1/2
/// message to the transit stream first, then to the nodes that want it.
/// Without NATS, the task waits for it (the messages wait in the outbox,
/// and so do their publishers' acknowledgements: one given before the
/// message is in transit would be lost with this node).
pub async fn forward(inner: Arc<Inner>, mut rx: mpsc::Receiver<ToNats>) {
    let (acks, acks_rx) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(await_appends(inner.clone(), acks_rx));
    // Since NATS was last away, until the outbox is empty again: what
    // waited meanwhile and whose publisher left unacknowledged is withdrawn.
    let mut behind = false;
    let mut order = InOrder::<ToNats>::default();
    let mut paused = inner.outbox_paused.subscribe();
    while let Some(out) = next_in_order(&inner, &mut rx, &mut order).await {
        // Paused for this node's gap (see `Inner::outbox_paused`): what
        // waited meanwhile and whose publisher left is withdrawn, as after
        // a lost connection.
        if *paused.borrow_and_update() {
            if paused.wait_for(|p| !*p).await.is_err() {
                return;
            }
            behind = true;
        }
        inner
            .outbox_bytes
            .fetch_sub(out.payload.len(), Ordering::Relaxed);
        if out.keep {
            if !inner.connected() {
                if !wait_connected(&inner).await {
                    return;
                }
                behind = true;
            }
            if behind && out.withdrawn() {
                crate::withdrawn::withdraw(&inner, out.seq);
                behind = !(rx.is_empty() && order.is_empty());
                continue;
            }
            let transit_subject = crate::transit::subject(&out.subject);
            let ack = match inner.transit.get() {
                Some(js) => js
                    .publish(transit_subject.clone(), out.payload.clone())
                    .await
                    .ok(),
                None => None,
            };
            let append = Append {
                subject: transit_subject,
                payload: out.payload.clone(),
                ack,
                first: Instant::now(),
                sent: Instant::now(),
                tries: 0,
                done: out.kept,
                withdrawable: out.withdrawable,
                seq: out.seq,
                early: false,
            };
            if acks.send(append).await.is_err() {
                return;
            }
        }
        continue_publish(&inner, out.subject, out.payload).await;
        behind = behind && !(rx.is_empty() && order.is_empty());
    }
}

/// The next message of the outbox in stamp order (see `inorder`); `None`
/// once the outbox is closed and empty.
async fn next_in_order(
    inner: &Inner,
    rx: &mut mpsc::Receiver<ToNats>,
    order: &mut InOrder<ToNats>,
) -> Option<ToNats> {
    loop {
        if let Some(out) = order.pop(&inner.skipped) {
            return Some(out);
        }
        let got = match order.deadline() {
            Some(deadline) => tokio::select! {
                got = rx.recv() => got,
                () = tokio::time::sleep_until(deadline) => {
                    order.pass_over();
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match got {
            Some(out) => {
                if let Some(out) = order.arrive(out) {
                    return Some(out);
                }
            }
            None if order.is_empty() => return None,
            None => order.pass_over(),
        }
    }
}

/// Waits until NATS is back; `false` when the broker is gone.
async fn wait_connected(inner: &Inner) -> bool {
    while !inner.connected() {
        if inner.broker().is_none() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

async fn continue_publish(inner: &Inner, subject: String, payload: Bytes) {
    if let Err(e) = inner.client.publish(subject, payload).await {
        tracing::debug!("a message was not forwarded: {e}");
    }
}

/// A message appended to the transit stream, until JetStream has it.
struct Append {
    subject: String,
    payload: Bytes,
    ack: Option<jetstream::context::PublishAckFuture>,
    first: Instant,
    /// When it was last handed to JetStream.
    sent: Instant,
    /// Times it was handed again.
    tries: u32,
    /// The publisher's acknowledgement waits for this.
    done: Option<oneshot::Sender<()>>,
    /// See [`ToNats::withdrawable`].
    withdrawable: bool,
    /// See [`ToNats::seq`].
    seq: u64,
    /// Withdrawn already, its publisher gone while it waited.
    early: bool,
}

impl Append {
    /// Whether its publisher left unacknowledged and it is to be withdrawn
    /// (see `crate::withdrawn`).
    fn left(&self) -> bool {
        self.withdrawable && self.done.as_ref().is_some_and(|d| d.is_closed())
    }

    /// Withdraws it (once) if its publisher left; whether it is withdrawn.
    fn withdraw_if_left(&mut self, inner: &Inner) -> bool {
        if !self.early && self.left() {
            crate::withdrawn::withdraw(inner, self.seq);
            self.early = true;
        }
        self.early
    }
}

/// The appends behind the one being settled: taken from the channel while
/// it is tried again, so that those whose publishers left are withdrawn
/// at once.
struct Queue {
    taken: VecDeque<Append>,
    rx: mpsc::Receiver<Append>,
    /// Since an append was tried again, until none waits: the ones behind
    /// it waited as long (their publishers may have left meanwhile).
    behind: bool,
}

impl Queue {
    async fn next(&mut self) -> Option<Append> {
        match self.taken.pop_front() {
            Some(a) => Some(a),
            None => self.rx.recv().await,
        }
    }

    /// Withdraws the waiting appends whose publishers left.
    fn sweep(&mut self, inner: &Inner) {
        while self.taken.len() < IN_FLIGHT {
            match self.rx.try_recv() {
                Ok(a) => self.taken.push_back(a),
                Err(_) => break,
            }
        }
        for a in &mut self.taken {
            a.withdraw_if_left(inner);
        }
    }

    fn is_empty(&self) -> bool {
        self.taken.is_empty() && self.rx.is_empty()
    }
}

/// Completes the acknowledgements waiting for appends, in order. One that
/// failed is tried again until JetStream takes it (its core copy goes
/// again then: the nodes that were away when it first went get it): an
/// acknowledged message is never left without its copy in transit, so
/// while JetStream cannot take messages (no quorum) the QoS 1/2 publishers
/// of this node wait for their acknowledgements, and past the outbox's
/// limit pause. Only a broker shutting down completes them without it.
async fn await_appends(inner: Arc<Inner>, rx: mpsc::Receiver<Append>) {
    let mut queue = Queue {
        taken: VecDeque::new(),
        rx,
        behind: false,
    };
    while let Some(mut a) = queue.next().await {
        settle(&inner, &mut a, &mut queue).await;
        if let Some(done) = a.done.take() {
            let _ = done.send(());
        }
        queue.behind = queue.behind && !queue.is_empty();
    }
}

/// What became of an append's wait.
enum Answer {
    Taken,
    Failed(String),
    /// Its publisher left while it was tried again (or behind one that was).
    Left,
}

/// Waits for JetStream's answer to `a`; while appends are tried again, its
/// publisher is watched and the queue swept.
async fn answer(inner: &Inner, a: &mut Append, queue: &mut Queue) -> Answer {
    let Some(ack) = a.ack.take() else {
        return Answer::Failed("JetStream did not take the message".to_string());
    };
    let ack = tokio::time::timeout_at(a.sent + inner.timeout, ack);
    let taken = |result: Result<Result<_, _>, _>| match result {
        Ok(Ok(_)) => Answer::Taken,
        Ok(Err(e)) => Answer::Failed(format!("{e}")),
        Err(_) => Answer::Failed("JetStream did not acknowledge in time".to_string()),
    };
    // Nothing tried again: the common case, nothing else to watch.
    if a.tries == 0 && !queue.behind {
        return taken(ack.await);
    }
    tokio::pin!(ack);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let left = async {
            match a.done.as_mut() {
                Some(d) if a.withdrawable => d.closed().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut ack => return taken(result),
            _ = left => return Answer::Left,
            _ = sweep.tick() => queue.sweep(inner),
        }
    }
}

/// Settles one append: taken, withdrawn, or (the broker gone) given up.
async fn settle(inner: &Inner, a: &mut Append, queue: &mut Queue) {
    loop {
        match answer(inner, a, queue).await {
            // Withdrawn: the nodes that read transit skip it (JetStream may
            // still commit what it took without quorum); not tried again.
            Answer::Left => {
                a.withdraw_if_left(inner);
                return;
            }
            Answer::Taken if a.early => return,
            // Taken after it (or one before it) was tried again, its
            // publisher gone meanwhile: withdrawn.
            Answer::Taken if (a.tries > 0 || queue.behind) && a.withdraw_if_left(inner) => return,
            // Tried again: its core copy went while JetStream (and perhaps
            // the connection) was away; it goes again (the nodes drop a
            // copy they had).
            Answer::Taken if a.tries > 0 => {
                let core = a.subject["starling.t.".len()..].to_string();
                let _ = inner.client.publish(core, a.payload.clone()).await;
                return;
            }
            Answer::Taken => return,
            Answer::Failed(_) if a.withdraw_if_left(inner) => return,
            // A stream leader being elected, JetStream without quorum:
            // tried again.
            Answer::Failed(why) if inner.broker().is_some() => {
                tracing::debug!(
                    tries = a.tries,
                    withdrawable = a.withdrawable,
                    publisher_left = a.done.as_ref().map(|d| d.is_closed()),
                    subject = %a.subject,
                    "append tried again: {why}"
                );
                if a.tries.is_multiple_of(50) && a.first.elapsed() >= APPEND_WARN_AFTER {
                    tracing::warn!(
                        waiting = ?a.first.elapsed(),
                        "QoS 1/2 acknowledgements held: the transit stream does not take \
                         messages ({why})"
                    );
                }
                queue.behind = true;
                queue.sweep(inner);
                tokio::time::sleep(Duration::from_millis(200)).await;
                a.tries += 1;
                if let Some(js) = inner.transit.get() {
                    a.ack = js.publish(a.subject.clone(), a.payload.clone()).await.ok();
                    a.sent = Instant::now();
                }
            }
            Answer::Failed(why) => {
                not_kept(inner, &why);
                return;
            }
        }
    }
}

fn not_kept(inner: &Inner, why: &str) {
    let n = inner
        .counters
        .transit_failed
        .fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(1000) {
        tracing::warn!(
            "QoS 1/2 messages acknowledged without a copy in transit (a node's death \
             can lose them; counted in $SYS/.../transit-failures): {why}"
        );
    }
}

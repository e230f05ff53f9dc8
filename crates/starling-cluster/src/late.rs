//! Core NATS copies that arrive late, checked before they are routed.
//!
//! A NATS server cut from the others keeps what its node published in its
//! route connections' buffers, and TCP delivers it when the link comes
//! back: seconds late, after what the publishers sent since through other
//! nodes. Among it may be a message its node withdrew (`withdrawn`): its
//! publisher left unacknowledged and went on elsewhere. So a copy sent more
//! than [`LATE`] ago is routed only once its origin said it did not
//! withdraw it; the copies of that origin arriving while one waits queue
//! behind it (they keep their order). Nothing waits otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::envelope;
use crate::shared::Inner;

/// How old a copy is when it counts as late: longer than core NATS takes
/// between nodes (clocks agree to well within this).
pub const LATE: Duration = crate::transit::ON_THE_WAY;
/// Copies waiting at most, and their payload bytes: past either, a copy
/// is routed at once (possibly before older ones of its origin).
pub const QUEUE: usize = 65_536;
const QUEUE_BYTES: usize = 64 << 20;
/// How long one origin's answer is used before it is asked again.
const ASKED_FOR: Duration = Duration::from_secs(1);

/// One copy from core NATS on its way through the check.
pub struct Copy {
    /// The queue group it came for (`None`: a plain subscription).
    pub share: Option<Arc<str>>,
    pub payload: Bytes,
    origin: u64,
    seq: u64,
    /// Late itself (not only behind a late one of its origin).
    check: bool,
    /// Its origin withdrew it: not routed.
    pub withdrawn: bool,
}

/// What the routing task knows of the copies in the check.
pub struct Holding {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Copy>,
    /// Per origin, its copies in the check.
    pending: HashMap<u64, usize>,
    bytes: usize,
}

impl Holding {
    /// The routing task's side; its check runs on a task of its own, and
    /// the copies come back through the returned receiver.
    pub fn start(inner: Arc<Inner>) -> (Holding, mpsc::Receiver<Copy>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (back_tx, back_rx) = mpsc::channel(QUEUE);
        tokio::spawn(check(inner.clone(), rx, back_tx));
        let holding = Holding {
            inner,
            tx,
            pending: HashMap::new(),
            bytes: 0,
        };
        (holding, back_rx)
    }

    /// Takes `payload` into the check if it is late, or if a copy of its
    /// origin is in the check; otherwise hands it back to be routed now.
    pub fn take(&mut self, share: Option<Arc<str>>, payload: Bytes) -> Option<Bytes> {
        let Some((stamp, sent)) = envelope::header(&payload) else {
            return Some(payload);
        };
        let now = starling_broker::store::unix_ms();
        let late = sent.is_some_and(|sent| now.saturating_sub(sent) > LATE.as_millis() as u64);
        let behind = self.pending.contains_key(&stamp.origin);
        if (!late && !behind) || self.bytes + payload.len() > QUEUE_BYTES {
            return Some(payload);
        }
        let size = payload.len();
        let copy = Copy {
            share,
            payload,
            origin: stamp.origin,
            seq: stamp.seq,
            check: late,
            withdrawn: false,
        };
        match self.tx.try_send(copy) {
            Ok(()) => {
                if late {
                    self.inner.counters.late.fetch_add(1, Ordering::Relaxed);
                }
                *self.pending.entry(stamp.origin).or_default() += 1;
                self.bytes += size;
                None
            }
            Err(e) => Some(e.into_inner().payload),
        }
    }

    /// A copy is back from the check.
    pub fn returned(&mut self, copy: &Copy) {
        self.bytes = self.bytes.saturating_sub(copy.payload.len());
        if let Some(n) = self.pending.get_mut(&copy.origin) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&copy.origin);
            }
        }
    }
}

/// Checks the late copies in order, against what their origins withdrew.
async fn check(inner: Arc<Inner>, mut rx: mpsc::Receiver<Copy>, back: mpsc::Sender<Copy>) {
    let mut known: HashMap<u64, (Instant, HashSet<u64>)> = HashMap::new();
    while let Some(mut copy) = rx.recv().await {
        if copy.check {
            let fresh = known
                .get(&copy.origin)
                .is_some_and(|(at, _)| at.elapsed() < ASKED_FOR);
            if !fresh {
                let withdrawn = crate::withdrawn::for_late_copy(&inner, copy.origin).await;
                known.insert(copy.origin, (Instant::now(), withdrawn));
            }
            copy.withdrawn = known
                .get(&copy.origin)
                .is_some_and(|(_, w)| w.contains(&copy.seq));
            if copy.withdrawn {
                inner
                    .counters
                    .late_withdrawn
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    origin = copy.origin,
                    seq = copy.seq,
                    "a late copy was withdrawn"
                );
            }
        }
        if back.send(copy).await.is_err() {
            return;
        }
    }
}

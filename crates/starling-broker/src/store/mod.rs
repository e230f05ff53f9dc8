//! Persistent sessions: the [`Store`] trait, its embedded default (fjall, in
//! `--data-dir`, picked over redb by the benchmark in BENCHMARKS.md), and [`Persistence`], the writer thread that applies changes in
//! batches so that concurrent publishers share one fsync (group commit).
//!
//! What is stored: persistent sessions with their expiry, their subscriptions,
//! their queued and in-flight QoS 1/2 messages, incoming QoS 2 packet ids
//! awaiting PUBREL, retained messages, and wills waiting for their delay. Clean
//! sessions never touch the disk.

mod fjall_store;
mod record;

pub use fjall_store::{FjallQueues, FjallStore};
pub use record::{MessageRecord, RecordError, SessionRecord, SubscriptionRecord, WillRecord};

use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use starling_codec::ByteString;
use tokio::sync::oneshot;

use crate::metrics::{Histogram, Metrics, BATCH_OPS, COMMIT_SECONDS};

/// How hard the broker works to keep acknowledged messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// A QoS 1/2 message is on disk (fsynced) before its PUBACK/PUBREC is sent.
    #[default]
    Always,
    /// Changes are written at once and fsynced every `durability-interval-ms`.
    Periodic,
    /// Memory only: nothing survives a restart.
    None,
}

/// One change to the store.
#[derive(Debug, Clone)]
pub enum Op {
    /// Creates or updates a session.
    Session(ByteString, SessionRecord),
    /// Deletes a session and everything it owns.
    DeleteSession(ByteString),
    /// Creates or updates a subscription.
    Subscribe(ByteString, ByteString, SubscriptionRecord),
    /// Deletes a subscription.
    Unsubscribe(ByteString, ByteString),
    /// Stores a message of a session's queue under its sequence number.
    Message(ByteString, u64, Bytes),
    /// Deletes a message of a session's queue.
    DeleteMessage(ByteString, u64),
    /// Stores a retained message under its topic.
    Retained(ByteString, Bytes),
    /// Deletes the retained message of a topic.
    DeleteRetained(ByteString),
    /// Records an incoming QoS 2 packet id awaiting PUBREL.
    IncomingQos2(ByteString, u16),
    /// Forgets an incoming QoS 2 packet id.
    DeleteIncomingQos2(ByteString, u16),
    /// Stores a will waiting for its delay.
    Will(ByteString, Bytes),
    /// Deletes a waiting will.
    DeleteWill(ByteString),
    /// Every copy of a message this node keeps was handed to the store
    /// before it: the message's node's run and its number there. The
    /// embedded store keeps nothing of it; a store that replicates the
    /// sessions may now claim the message in its receipt (see the cluster's
    /// transit).
    Received(u64, u64),
    /// Labels the [`Op::Message`] right before it: that message came with
    /// this stamp (the node's run and the message's number there). Unlike
    /// [`Op::Received`] it claims nothing about other copies; the embedded
    /// store keeps nothing of it, a replicating store writes it with the
    /// message, so that a session rebuilt elsewhere knows the message.
    CameWith(u64, u64),
}

/// Everything read back at startup. Records that failed to decode were logged
/// with their location and left out.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Whether the sessions' queues were left in the store, to be read
    /// when needed (see [`QueueReader`]); `messages` is then empty.
    pub lazy_queues: bool,
    /// Sequence numbers of messages queued from now on start here, above
    /// every number used before (0: the store does not say).
    pub first_seq: u64,
    /// Sessions.
    pub sessions: Vec<(ByteString, SessionRecord)>,
    /// Subscriptions: client id, filter, record.
    pub subscriptions: Vec<(ByteString, ByteString, SubscriptionRecord)>,
    /// Queued messages in sequence order per client: client id, sequence, record.
    pub messages: Vec<(ByteString, u64, MessageRecord)>,
    /// Retained messages.
    pub retained: Vec<MessageRecord>,
    /// Incoming QoS 2 packet ids.
    pub incoming_qos2: Vec<(ByteString, u16)>,
    /// Waiting wills.
    pub wills: Vec<(ByteString, WillRecord)>,
    /// Records skipped because they were corrupt.
    pub skipped: usize,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("store {path}: {message}")]
pub struct StoreError {
    /// The store's location.
    pub path: String,
    /// What failed.
    pub message: String,
    /// The underlying error, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure at `path` caused by `source` (whose message it carries).
    pub fn caused_by(
        path: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError {
            path: path.into(),
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// A page of a session's stored queue: `(sequence, record)` in order, and
/// whether it reached the end of the range asked for.
pub type QueuePage = (Vec<(u64, MessageRecord)>, bool);

/// Reads sessions' queues while the writer thread writes (the store's
/// queues are read page by page, when a client needs them, not at startup).
pub trait QueueReader: Send + Sync + std::fmt::Debug + 'static {
    /// The messages of `client`'s queue with sequence numbers in
    /// `from..end`, in order: at most `limit`, and stopping after the one
    /// that brings their size to `max_bytes`. Corrupt records are logged
    /// and skipped.
    fn read_queue(
        &self,
        client: &str,
        from: u64,
        end: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<QueuePage, StoreError>;
}

/// An embedded key-value store for sessions.
pub trait Store: Send + 'static {
    /// A reader of queues, if the store keeps them on disk and reads them
    /// lazily; `None`: [`Store::load`] returns every queued message.
    fn queue_reader(&self) -> Option<Arc<dyn QueueReader>> {
        None
    }
    /// Applies a batch of changes atomically; with `durable`, it is on stable
    /// storage when this returns.
    fn apply(&mut self, ops: &[Op], durable: bool) -> Result<(), StoreError>;
    /// Makes everything applied so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Reads everything back, skipping (and logging) corrupt records.
    fn load(&mut self) -> Result<Loaded, StoreError>;
}

struct Request {
    ops: Vec<Op>,
    /// Numbered as submitted (see [`Persistence::submit`]).
    number: u64,
    /// Completed when written, unless this request or any numbered from
    /// `depends_from` on failed: the waiter depends on those too.
    done: Option<(u64, oneshot::Sender<()>)>,
    /// Make everything durable, whatever the durability setting.
    sync: bool,
    /// Then close the store and end the writer thread.
    close: bool,
}

/// The front of the store: a writer thread that batches what every connection
/// submits, so one fsync covers many publishers.
#[derive(Debug, Clone)]
pub struct Persistence {
    tx: mpsc::Sender<Request>,
    /// Reads queues (see [`QueueReader`]).
    reader: Option<Arc<dyn QueueReader>>,
    /// The number of the next request.
    next: Arc<AtomicU64>,
    durability: Durability,
    stats: Arc<StoreStats>,
}

/// What the writer thread measures of its commits.
#[derive(Debug)]
pub struct StoreStats {
    /// Commits that failed.
    pub failures: AtomicU64,
    /// Whether the writer thread runs.
    running: std::sync::atomic::AtomicBool,
    /// How long each commit took, in seconds (the fsync included when there is one).
    pub commit_seconds: Histogram,
    /// How many operations each commit wrote.
    pub batch_ops: Histogram,
}

impl Persistence {
    /// Starts the writer thread for `store`.
    pub fn start(
        mut store: Box<dyn Store>,
        durability: Durability,
        interval: Duration,
    ) -> Result<Persistence, StoreError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let reader = store.queue_reader();
        let stats = Arc::new(StoreStats {
            failures: AtomicU64::new(0),
            running: std::sync::atomic::AtomicBool::new(true),
            commit_seconds: Histogram::new(COMMIT_SECONDS),
            batch_ops: Histogram::new(BATCH_OPS),
        });
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("starling-store".into())
            .spawn(move || {
                // Clears `running` however the thread ends, a panic included.
                struct Running(Arc<StoreStats>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0
                            .running
                            .store(false, std::sync::atomic::Ordering::Release);
                    }
                }
                let _running = Running(writer_stats.clone());
                let durable = durability == Durability::Always;
                let mut last_sync = std::time::Instant::now();
                let mut last_failed: Option<u64> = None;
                loop {
                    let first = match rx.recv_timeout(interval) {
                        Ok(r) => r,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if durability == Durability::Periodic {
                                if let Err(e) = store.sync() {
                                    tracing::error!("{e}");
                                }
                                last_sync = std::time::Instant::now();
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    // Group commit: everything that queued up while the last
                    // commit ran goes into this one.
                    let mut ops = first.ops;
                    let mut waiters: Vec<(u64, oneshot::Sender<()>)> =
                        first.done.into_iter().collect();
                    let mut sync = first.sync;
                    let mut close = first.close;
                    let mut highest = first.number;
                    while ops.len() < 65_536 {
                        match rx.try_recv() {
                            Ok(r) => {
                                ops.extend(r.ops);
                                waiters.extend(r.done);
                                highest = highest.max(r.number);
                                sync |= r.sync;
                                close |= r.close;
                            }
                            Err(_) => break,
                        }
                    }
                    // A failed write completes nobody's wait: the receivers
                    // see the channel closed, and withhold their acknowledgement.
                    let started = std::time::Instant::now();
                    let applied = store.apply(&ops, durable || sync);
                    writer_stats
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    writer_stats.batch_ops.observe(ops.len() as f64);
                    if let Err(e) = applied {
                        tracing::error!("{e}");
                        Metrics::add(&writer_stats.failures, 1);
                        last_failed = Some(last_failed.unwrap_or(0).max(highest));
                    }
                    // A waiter whose changes, or any submitted after them and
                    // before it, failed is not completed: what it waits for
                    // may be among them.
                    waiters.retain(|(from, _)| last_failed.is_none_or(|f| f < *from));
                    if durability == Durability::Periodic && last_sync.elapsed() >= interval {
                        if let Err(e) = store.sync() {
                            tracing::error!("{e}");
                        }
                        last_sync = std::time::Instant::now();
                    }
                    if close {
                        drop(store);
                        for (_, w) in waiters {
                            let _ = w.send(());
                        }
                        return;
                    }
                    for (_, w) in waiters {
                        let _ = w.send(());
                    }
                }
                if let Err(e) = store.sync() {
                    tracing::error!("{e}");
                }
            })
            .map_err(|e| StoreError::caused_by("store writer thread", e))?;
        Ok(Persistence {
            tx,
            reader,
            next: Arc::new(AtomicU64::new(0)),
            durability,
            stats,
        })
    }

    /// Submits changes without waiting for them. Returns the request's
    /// number, which a later [`Persistence::submit_and_wait_from`] can
    /// depend on.
    pub fn submit(&self, ops: Vec<Op>) -> u64 {
        let number = self.number();
        if !ops.is_empty() {
            self.send(Request {
                ops,
                number,
                done: None,
                sync: false,
                close: false,
            });
        }
        number
    }

    fn number(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands a request to the writer thread. If the thread has ended (after
    /// `close`, or because it failed), the request's writes are lost: that is
    /// logged, and a waiter sees its channel closed.
    fn send(&self, request: Request) {
        if let Err(mpsc::SendError(lost)) = self.tx.send(request) {
            if !lost.ops.is_empty() {
                tracing::error!(
                    ops = lost.ops.len(),
                    "store writer is not running: changes not written"
                );
            }
        }
    }

    /// Submits changes; the receiver completes once they are durable (with
    /// `durability = always`) or written (otherwise). It fails (the sender is
    /// dropped) when the store could not write them.
    pub fn submit_and_wait(&self, ops: Vec<Op>) -> oneshot::Receiver<()> {
        self.submit_and_wait_from(ops, None)
    }

    /// As [`Persistence::submit_and_wait`], and the receiver fails as well
    /// if any request from number `from` on failed (changes this one
    /// depends on were submitted before it).
    pub fn submit_and_wait_from(&self, ops: Vec<Op>, from: Option<u64>) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        let number = self.number();
        self.send(Request {
            ops,
            number,
            done: Some((from.unwrap_or(number).min(number), done)),
            sync: false,
            close: false,
        });
        rx
    }

    /// Whether queues are read from the store when needed (see [`QueueReader`]).
    pub fn reads_queues(&self) -> bool {
        self.reader.is_some()
    }

    /// A page of `client`'s stored queue (see [`QueueReader::read_queue`]),
    /// once everything submitted before the call is written: a message
    /// handed to the store is never missed.
    pub async fn read_queue(
        &self,
        client: ByteString,
        from: u64,
        end: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<QueuePage, StoreError> {
        let Some(reader) = self.reader.clone() else {
            return Ok((Vec::new(), true));
        };
        self.submit_and_wait(Vec::new())
            .await
            .map_err(|_| StoreError {
                path: "store writer".into(),
                message: "a write before the read failed".into(),
                source: None,
            })?;
        tokio::task::spawn_blocking(move || reader.read_queue(&client, from, end, limit, max_bytes))
            .await
            .map_err(|e| StoreError::caused_by("store reader", e))?
    }

    /// What the writer thread measured.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Whether the writer thread is running (it stops after `close`, or
    /// when it panicked).
    pub fn is_running(&self) -> bool {
        self.stats
            .running
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether acknowledgements must wait for the disk.
    pub fn acks_wait(&self) -> bool {
        self.durability == Durability::Always
    }

    /// Waits until everything submitted so far is on stable storage.
    pub async fn flush(&self) {
        let (done, rx) = oneshot::channel();
        let number = self.number();
        self.send(Request {
            ops: Vec::new(),
            number,
            done: Some((number, done)),
            sync: true,
            close: false,
        });
        let _ = rx.await;
    }

    /// Makes everything durable and closes the store; later submissions are
    /// ignored. Returns once the store's files are released.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        let number = self.number();
        self.send(Request {
            ops: Vec::new(),
            number,
            done: Some((number, done)),
            sync: true,
            close: true,
        });
        let _ = rx.await;
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

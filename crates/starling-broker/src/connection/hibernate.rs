//! Hibernation: an idle plain-TCP connection gives up its task.
//!
//! A connection task costs a few kilobytes (the task, its future, tokio's I/O
//! registration). Most connections of a large deployment are idle: sensors that
//! publish once a minute, subscribers waiting for rare events. When a
//! connection has nothing buffered, nothing to acknowledge and nothing queued,
//! and has been quiet for `hibernate-after-ms` (or has just received its
//! CONNACK), it leaves its task and becomes a [`Parked`] entry here: the
//! socket, the client's settings and the keep-alive time, a couple of hundred
//! bytes.
//!
//! One task watches every parked socket through its own `mio` poller (the
//! kernel keeps the interest list, so a parked socket costs nothing in user
//! space beyond its entry) and wakes a connection back into a task of its own
//! (through the [`Resume`] callback the server gives it: the connection
//! module's `resume`) when any of these happens:
//! - the socket becomes readable (a packet, or the peer closing);
//! - the session's queue gains a message ([`crate::session::Session::enqueue`]);
//! - another connection takes the session over;
//! - the keep-alive deadline passes (the resumed task closes it);
//! - the broker shuts down.
//!
//! The resumed task does the work, with the same code as any connection. This
//! module never reads a socket or touches the protocol.
//!
//! Locking: [`Reactor::park`] takes the reactor's lock, then the session's;
//! nothing takes them in the other order. Wakes, which come from under
//! session locks (a takeover holds the registry and the old session), go
//! through a separate lock that is never held while taking another.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use parking_lot::Mutex;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::client::{Client, Slots};
use crate::session::{ParkedAt, WakeParked};

/// Gives a parked connection a task again (the connection module's `resume`,
/// passed in by the server, so that this module never calls into it): the
/// reactor, the connection, the shutdown signal and the shutdown barrier.
pub(crate) type Resume = Arc<
    dyn Fn(Arc<Reactor>, Parked, watch::Receiver<bool>, tokio::sync::mpsc::Sender<()>)
        + Send
        + Sync,
>;

/// A connection without a task.
pub(crate) struct Parked {
    /// The socket, registered with the reactor's poller while parked.
    pub stream: std::net::TcpStream,
    pub conn_id: u64,
    pub client: Client,
    /// When the client last sent anything (keep alive counts from here), in
    /// milliseconds since the reactor started (see [`Reactor::millis`]).
    pub last_rx: u64,
    /// The connection's slots in the broker's and the listener's limits.
    pub slots: Option<Box<Slots>>,
}

/// The parked connections and the task that watches them.
pub(crate) struct Reactor {
    registry: Registry,
    /// The origin of parked connections' times.
    epoch: Instant,
    inner: Mutex<Inner>,
    /// Connections to resume, by index and connection id (an index may have
    /// been reused since; the id tells). A lock of its own, taken with
    /// nothing else held inside it: wakes come from under session locks.
    wakes: Mutex<Vec<(usize, u64)>>,
    /// Wakes the reactor task when wakes are queued.
    notify: Notify,
    /// How many connections are parked, for `$SYS` (the broker's counter).
    count: Arc<std::sync::atomic::AtomicUsize>,
}

struct Inner {
    parked: Slab<Box<Parked>>,
    /// Set at shutdown: nothing parks any more.
    closed: bool,
}

/// How many poller events are handled per system call.
const EVENTS: usize = 256;
/// How often parked connections are checked for an expired keep alive. A
/// client that went silent is closed up to this much later than one and a half
/// times its keep alive; a heap of deadlines would be exact, at 30-50 bytes
/// per parked connection.
const SWEEP: Duration = Duration::from_millis(500);

impl Reactor {
    /// Starts the reactor task on the current runtime.
    /// `done` is the broker's shutdown barrier: the reactor task holds it, and
    /// gives a copy to each connection it resumes.
    pub fn start(
        resume: Resume,
        count: Arc<std::sync::atomic::AtomicUsize>,
        shutdown: watch::Receiver<bool>,
        done: tokio::sync::mpsc::Sender<()>,
    ) -> std::io::Result<Arc<Reactor>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let reactor = Arc::new(Reactor {
            registry,
            epoch: Instant::now(),
            inner: Mutex::new(Inner {
                parked: Slab::new(),
                closed: false,
            }),
            wakes: Mutex::new(Vec::new()),
            notify: Notify::new(),
            count,
        });
        // `AsyncFd` owns the poller, so its descriptor lives exactly as long as
        // the registration: the I/O-safety concern behind the deprecation
        // (a borrowed descriptor closed while registered) does not arise.
        #[allow(deprecated)]
        let poll = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        tokio::spawn(run(reactor.clone(), poll, resume, shutdown, done));
        Ok(reactor)
    }

    /// Parks a connection. Refused (and handed back) when the session's queue
    /// is not empty, the connection is no longer attached, or the broker is
    /// shutting down: the caller then keeps serving it.
    pub fn park(self: &Arc<Self>, p: Box<Parked>) -> Result<(), Box<Parked>> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(p);
        }
        let index = inner.parked.vacant_key();
        let noted = {
            let mut st = p.client.session.state.lock();
            let idle = !st.has_queued();
            match st.link_of(p.conn_id) {
                Some(link) if idle => {
                    link.parked = Some(ParkedAt {
                        reactor: self.clone(),
                        index,
                    });
                    true
                }
                _ => false,
            }
        };
        if !noted {
            return Err(p);
        }
        let fd = p.stream.as_raw_fd();
        if let Err(err) =
            self.registry
                .register(&mut SourceFd(&fd), Token(index), Interest::READABLE)
        {
            tracing::warn!(?err, "could not park a connection");
            unpark_link(&p);
            return Err(p);
        }
        inner.parked.insert(p);
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Queues connection `conn_id` at `index` to be resumed.
    fn queue_wake(&self, index: usize, conn_id: u64) {
        let mut wakes = self.wakes.lock();
        let first = wakes.is_empty();
        wakes.push((index, conn_id));
        drop(wakes);
        if first {
            self.notify.notify_one();
        }
    }

    /// Removes a parked connection from the poller and the table.
    fn take(&self, inner: &mut Inner, index: usize, conn_id: Option<u64>) -> Option<Box<Parked>> {
        match inner.parked.get(index) {
            Some(p) if conn_id.is_none_or(|id| id == p.conn_id) => {}
            _ => return None,
        }
        let p = inner.parked.remove(index);
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let fd = p.stream.as_raw_fd();
        if let Err(err) = self.registry.deregister(&mut SourceFd(&fd)) {
            tracing::debug!(?err, "deregistering a parked socket");
        }
        Some(p)
    }

    /// `t` as milliseconds since the reactor started (a parked connection
    /// keeps its times in 8 bytes rather than 16).
    pub fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `ms` milliseconds after the reactor started.
    pub fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

/// When a parked connection's keep alive runs out, if it has one.
fn keep_alive_deadline(reactor: &Reactor, p: &Parked) -> Option<Instant> {
    let ka = p.client.keep_alive;
    (!ka.is_zero()).then(|| reactor.instant(p.last_rx) + ka.mul_f32(1.5))
}

/// Clears the session's note that `p` is parked (it was not parked after all).
fn unpark_link(p: &Parked) {
    let mut st = p.client.session.state.lock();
    if let Some(link) = st.link_of(p.conn_id) {
        link.parked = None;
    }
}

impl WakeParked for Reactor {
    fn wake(&self, index: usize, conn_id: u64) {
        self.queue_wake(index, conn_id);
    }
}

/// What the reactor task needs to resume connections.
struct Resumer {
    reactor: Arc<Reactor>,
    resume: Resume,
    shutdown: watch::Receiver<bool>,
    done: tokio::sync::mpsc::Sender<()>,
}

impl Resumer {
    /// Gives a parked connection its task back.
    fn resume(&self, p: Parked) {
        (self.resume)(
            self.reactor.clone(),
            p,
            self.shutdown.clone(),
            self.done.clone(),
        );
    }
}

/// The reactor task: waits for parked sockets, wakes and deadlines, and
/// resumes the connections they concern.
async fn run(
    reactor: Arc<Reactor>,
    mut poll: AsyncFd<Poll>,
    resume: Resume,
    mut shutdown: watch::Receiver<bool>,
    done: tokio::sync::mpsc::Sender<()>,
) {
    let resumer = Resumer {
        reactor: reactor.clone(),
        resume,
        shutdown: shutdown.clone(),
        done,
    };
    let mut events = Events::with_capacity(EVENTS);
    let mut ready = Vec::new();
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut swept = false;
        tokio::select! {
            _ = shutdown.changed() => break,
            guard = poll.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                loop {
                    if let Err(err) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        if err.kind() != std::io::ErrorKind::Interrupted {
                            tracing::warn!(?err, "polling parked connections");
                        }
                        break;
                    }
                    let n = events.iter().count();
                    ready.extend(events.iter().map(|e| e.token().0));
                    if n < EVENTS {
                        guard.clear_ready();
                        break;
                    }
                }
            }
            _ = reactor.notify.notified() => {}
            _ = sweep.tick() => swept = true,
        }
        let mut due = Vec::new();
        let wakes = std::mem::take(&mut *reactor.wakes.lock());
        {
            let mut inner = reactor.inner.lock();
            for index in ready.drain(..) {
                due.extend(reactor.take(&mut inner, index, None));
            }
            for (index, conn_id) in wakes {
                due.extend(reactor.take(&mut inner, index, Some(conn_id)));
            }
            if swept {
                let now = Instant::now();
                let expired: Vec<usize> = inner
                    .parked
                    .iter()
                    .filter(|(_, p)| keep_alive_deadline(&reactor, p).is_some_and(|d| d <= now))
                    .map(|(k, _)| k)
                    .collect();
                for index in expired {
                    due.extend(reactor.take(&mut inner, index, None));
                }
            }
        }
        for p in due {
            resumer.resume(*p);
        }
    }
    // Shutting down: every parked connection gets its task back to say goodbye.
    let all: Vec<_> = {
        let mut inner = reactor.inner.lock();
        inner.closed = true;
        let keys: Vec<usize> = inner.parked.iter().map(|(k, _)| k).collect();
        keys.into_iter()
            .filter_map(|k| reactor.take(&mut inner, k, None))
            .collect()
    };
    for p in all {
        resumer.resume(*p);
    }
}

#[cfg(test)]
mod tests {
    /// What an idle connection costs is mostly these two (BENCHMARKS.md,
    /// "memory per idle connection"); a field added to either shows here.
    #[test]
    fn parked_connections_stay_small() {
        use std::mem::size_of;
        // 152 since authentication sources grant rules: the client's grant
        // (a pointer, set only by a source that grants something).
        assert!(
            size_of::<super::Parked>() <= 152,
            "{}",
            size_of::<super::Parked>()
        );
        // 288 before the admin API; its view of the connection (address,
        // listener, protocol, keep alive, since when: `ConnInfo`, 28 bytes)
        // and the operator's kick flag live in the session's link. 320 since
        // backpressure: the notification held publishers wait on (a pointer,
        // allocated the first time one waits) and two flags. 328 since
        // queues on disk: the spill (a pointer, allocated while one exists).
        // 336 since retained messages are streamed: the walks under way (a
        // pointer, allocated while one is).
        let session = size_of::<crate::session::Session>();
        assert!(session <= 336, "{session}");
    }
}

//! One timer service for everything the broker does later: wills waiting for
//! their delay and sessions waiting to expire. A single task keeps the due
//! jobs in time order and runs each when its time comes, instead of one
//! sleeping task per offline session. It runs inside the shutdown barrier:
//! it ends when the broker shuts down (dropping what is not due yet, which the
//! store holds for the next start) and the shutdown waits for it.
//!
//! The service knows nothing of what its jobs do: a job is a closure.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

type Job = Box<dyn FnOnce() + Send>;

/// Schedules jobs; [`Timers::start`] runs them.
pub(crate) struct Timers {
    tx: mpsc::UnboundedSender<(Instant, Job)>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<(Instant, Job)>>>,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers").finish_non_exhaustive()
    }
}

impl Default for Timers {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Timers {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Timers {
    /// Runs `job` after `wait` (once the service has started).
    pub(crate) fn schedule(&self, wait: Duration, job: impl FnOnce() + Send + 'static) {
        let at = Instant::now() + wait;
        if self.tx.send((at, Box::new(job))).is_err() {
            tracing::debug!("timer service stopped; job dropped");
        }
    }

    /// Starts the service's task (once; later calls do nothing). It holds
    /// `done` until it ends, at `shutdown`.
    pub(crate) fn start(&self, shutdown: watch::Receiver<bool>, done: mpsc::Sender<()>) {
        if let Some(rx) = self.rx.lock().take() {
            tokio::spawn(run(rx, shutdown, done));
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<(Instant, Job)>,
    mut shutdown: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) {
    // Due jobs by (time, arrival), so that equal times run in order.
    let mut due: BTreeMap<(Instant, u64), Job> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let next = due.first_key_value().map(|((at, _), _)| *at);
        tokio::select! {
            job = rx.recv() => match job {
                Some((at, job)) => {
                    due.insert((at, seq), job);
                    seq += 1;
                }
                None => return,
            },
            () = sleep_until(next) => {
                let now = Instant::now();
                while let Some(entry) = due.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    (entry.remove())();
                }
            }
            // A dropped sender is a shutdown too (or this would spin).
            changed = shutdown.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn jobs_run_in_time_order_and_stop_at_shutdown() {
        let timers = Timers::default();
        let (stop, shutdown) = watch::channel(false);
        let (done, mut finished) = mpsc::channel(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        for (wait, name) in [(30, "c"), (10, "a"), (20, "b"), (10, "a2"), (90, "late")] {
            let log = log.clone();
            timers.schedule(Duration::from_secs(wait), move || log.lock().push(name));
        }
        timers.start(shutdown, done);
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(*log.lock(), ["a", "a2"]);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(*log.lock(), ["a", "a2", "b", "c"]);
        // Shutdown ends the task (the barrier's sender is dropped) and drops
        // the job not due yet.
        stop.send(true).unwrap();
        assert!(finished.recv().await.is_none());
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(log.lock().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_shutdown_sender_ends_the_task() {
        let timers = Timers::default();
        let (stop, shutdown) = watch::channel(false);
        let (done, mut finished) = mpsc::channel(1);
        timers.schedule(Duration::from_secs(60), || {});
        timers.start(shutdown, done);
        drop(stop);
        assert!(finished.recv().await.is_none());
    }
}

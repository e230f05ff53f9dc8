//! The authentication pool: a few dedicated threads on which every slow
//! authentication (password hashing) runs, so that a burst of CONNECTs can
//! cost no more CPU and memory than those threads do.
//!
//! Callers wait for a permit asynchronously and in order; a caller that goes
//! away while it waits (its client hung up) leaves the queue without costing
//! a hash. With one permit per thread, at most `threads` jobs exist at once,
//! and each thread keeps the hashing memory it needs (see
//! [`super::password`]), so memory is bounded by `threads` times the largest
//! hash's cost and does not grow with the number of attempts.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for slow authentication work.
#[derive(Debug)]
pub struct AuthPool {
    permits: Arc<Semaphore>,
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl AuthPool {
    /// Starts `threads` worker threads (at least one). They end when the
    /// pool is dropped.
    pub fn new(threads: usize) -> AuthPool {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("starling-auth-{i}"))
                .spawn(move || worker(&rx));
            if let Err(err) = spawned {
                tracing::error!(%err, "could not start an authentication thread");
            }
        }
        AuthPool {
            permits: Arc::new(Semaphore::new(threads)),
            jobs: Mutex::new(tx),
        }
    }

    /// Runs `f` on a pool thread once one is free. `None` if the pool is
    /// gone or `f` panicked.
    pub async fn run<T, F>(&self, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let _permit = self.permits.acquire().await.ok()?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.lock().send(job).ok()?;
        rx.await.ok()
    }

    /// How many threads are free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match rx.lock().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A panicking authenticator fails that one attempt, not the thread.
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("an authentication job panicked; the attempt is refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn runs_at_most_threads_jobs_at_once() {
        let pool = Arc::new(AuthPool::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                })
                .await
            }));
        }
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap().unwrap();
        }
        assert_eq!(sum, (0..20).sum::<i32>());
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert_eq!(pool.available(), 2);
    }

    #[tokio::test]
    async fn a_panic_fails_one_job_and_keeps_the_thread() {
        let pool = AuthPool::new(1);
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, None);
        assert_eq!(pool.run(|| 7).await, Some(7));
    }
}

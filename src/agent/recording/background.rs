//! The recordings' background workers: a few threads at the lowest CPU priority, shared
//! by every session's deriver, started when first needed.
//!
//! Deriving (the terminal emulator, the transcript, the asciicast, the stream records)
//! is the only heavy work of a recording, and it must never compete with the output path
//! on a machine with few cores (issue: "the catching-up consumers must not starve the
//! output path"). So it runs here, at nice 19, in bounded steps ([`run`] takes one step
//! of one session; a session that has more to do queues its next step behind the
//! others'), and a session owns no thread: an idle session is a task waiting for its
//! spool to grow.
//!
//! Why not tokio's blocking pool: a thread's nice value stays with the thread, and the
//! blocking pool's threads also run the spool writer's `fdatasync` and everything else
//! that blocks, at normal priority; lowering them for one job and raising them again
//! afterwards needs privileges the daemon may not have. Why not rayon: its work stealing
//! and scoped parallelism are not needed for a FIFO queue of independent steps, and it
//! would add its crossbeam dependencies; this is a queue, a condition variable and a
//! counter, written out below.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most workers: deriving is CPU work, and more threads than cores only add switching.
const MAX_WORKERS: usize = 4;
/// A worker with nothing to do for this long exits (the next step starts another).
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// Stack of a worker (the emulator's work is on the heap; 256 KiB is ample).
const STACK: usize = 256 * 1024;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers alive, and how many of them wait for a job.
    workers: usize,
    idle: usize,
}

struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    max: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        max: std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, MAX_WORKERS),
    })
}

/// Runs `job` on a background worker and returns its result; `None` when it could not
/// run (no worker could be started) or panicked.
pub(super) async fn run<R: Send + 'static>(job: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = oneshot::channel();
    submit(Box::new(move || {
        let _ = tx.send(job());
    }));
    rx.await.ok()
}

fn submit(job: Job) {
    let shared = pool();
    let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
    q.jobs.push_back(job);
    if q.idle > 0 {
        shared.ready.notify_one();
        return;
    }
    if q.workers < shared.max {
        let started = std::thread::Builder::new()
            .name("recording-bg".into())
            .stack_size(STACK)
            .spawn(|| work(pool()));
        match started {
            Ok(_) => q.workers += 1,
            Err(e) if q.workers == 0 => {
                // Nobody will ever take it: drop it, which tells `run` it did not run.
                tracing::error!(error = %e, "Cannot start a thread for the recordings' background work");
                q.jobs.pop_back();
            }
            Err(_) => {} // the running workers will get to it
        }
    }
}

fn work(pool: &'static Pool) {
    lower_priority();
    let mut q = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            // A panicking job drops its result sender; the worker goes on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            q = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        q.idle += 1;
        let (guard, waited) = pool
            .ready
            .wait_timeout(q, IDLE_EXIT)
            .unwrap_or_else(PoisonError::into_inner);
        q = guard;
        q.idle -= 1;
        if waited.timed_out() && q.jobs.is_empty() {
            q.workers -= 1;
            return;
        }
    }
}

/// Nice 19 for this thread (on Linux a thread id names just that thread here).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
            tracing::debug!(error = %e, "Cannot lower the recordings' background priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_run_off_the_runtime_at_the_lowest_priority_and_a_panic_is_a_none() {
        let name = run(|| std::thread::current().name().map(str::to_owned)).await;
        assert_eq!(name, Some(Some("recording-bg".to_owned())));
        #[cfg(target_os = "linux")]
        {
            let nice = run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(nice, 19);
        }
        let panicked: Option<()> = run(|| panic!("a step that fails")).await;
        assert_eq!(panicked, None);
        // The pool still works after a panic, and runs many steps from many tasks.
        let all = futures_util::future::join_all((0..64).map(|i| run(move || i * 2))).await;
        assert_eq!(all, (0..64).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }
}

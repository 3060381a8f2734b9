//! Work that may block on the file system, run off the daemon's one runtime thread, so that
//! nothing a class or a pod puts on a node (a FIFO, a slow mount, a lock) holds up another
//! call.
//!
//! At most [`LANES`] pieces of work run in lanes at once, so a burst of volumes reuses the same
//! few blocking threads: on mimalloc each thread keeps pages of its own, and tokio's pool starts
//! a thread whenever none is idle. Measured with node-bench (static musl `dist` build, 1,000
//! volumes over 8 streams): 13 threads and 21.8 MiB RSS with the pool alone, 5 threads and
//! 16.0 MiB with two lanes, and the burst took no longer (2.2-2.4 s against 1.9-2.3 s side by
//! side): the work is short and the node has few cores.
//!
//! A lane is never worth a wait that a stuck volume could stretch:
//! - work holds its lane at most [`STALL`]; past that it goes on, on its own thread, and the
//!   lane is free;
//! - a call that finds no lane free within [`LANE_WAIT`] runs without one, so whatever is
//!   queued ahead of it, it waits at most that long for its turn;
//! - the lane belongs to the work, not to the caller: a caller that gives up (a cancelled
//!   request) leaves it held until the work ends or stalls.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why blocking work gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// It panicked.
    Panicked,
    /// It did not finish within the deadline. If it had started, it goes on in the background,
    /// owning what it was handed (a claim it holds is released only when it ends).
    TimedOut,
}

/// How many pieces of blocking work run in lanes at once (see the module's documentation).
const LANES: usize = 2;

/// How long work may hold a lane. tmpfs work takes a few milliseconds; work past this is
/// waiting on something else, and the next in line goes.
const STALL: Duration = Duration::from_millis(100);

/// How long a call waits for a lane before it runs without one.
const LANE_WAIT: Duration = Duration::from_millis(50);

/// The lanes every caller shares.
static SHARED: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(LANES)));

/// Runs `work` on a blocking thread, in one of the shared lanes when one is free within
/// [`LANE_WAIT`], and waits at most `deadline` (counted from this call, the wait for a lane
/// included) for its answer.
pub async fn within<T: Send + 'static>(
    deadline: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Late> {
    in_lanes(&SHARED, Timing::SHIPPED, deadline, work).await
}

/// The lane times [`within`] uses; tests choose their own.
#[derive(Clone, Copy)]
struct Timing {
    stall: Duration,
    wait: Duration,
}

impl Timing {
    const SHIPPED: Self = Self {
        stall: STALL,
        wait: LANE_WAIT,
    };
}

/// A lane, held by the work and by a timer; whichever lets go first frees it.
struct Lane(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Lane {
    fn share(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // The lock is held only for this `take`, which cannot panic, so it is never poisoned.
        let permit = self.0.lock().map(|mut held| held.take());
        drop(permit);
    }
}

/// [`within`] over the given lanes and times.
async fn in_lanes<T: Send + 'static>(
    lanes: &Arc<Semaphore>,
    timing: Timing,
    deadline: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Late> {
    let until = Instant::now() + deadline;
    let permit = match tokio::time::timeout_at(
        until.min(Instant::now() + timing.wait),
        Arc::clone(lanes).acquire_owned(),
    )
    .await
    {
        // The semaphore is never closed; were it, the work would run without a lane.
        Ok(permit) => permit.ok(),
        Err(_) if Instant::now() >= until => return Err(Late::TimedOut),
        Err(_) => None,
    };
    let task = match permit {
        None => tokio::task::spawn_blocking(work),
        Some(permit) => {
            let by_work = Lane(Arc::new(Mutex::new(Some(permit))));
            let by_timer = by_work.share();
            tokio::spawn(async move {
                tokio::time::sleep(timing.stall).await;
                drop(by_timer);
            });
            tokio::task::spawn_blocking(move || {
                let done = work();
                drop(by_work);
                done
            })
        }
    };
    match tokio::time::timeout_at(until, task).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(_)) => Err(Late::Panicked),
        Err(_) => Err(Late::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// Far longer than any test runs, so no lane is given up and no wait ends by accident.
    const NEVER: Duration = Duration::from_secs(600);

    const PATIENT: Timing = Timing {
        stall: NEVER,
        wait: NEVER,
    };

    fn lanes(n: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(n))
    }

    /// `f`'s output; a test that would hang fails instead.
    async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the call did not answer within 60 s")
    }

    /// Work that blocks until `release` is sent to, and says on `started` when it has begun.
    fn stuck(
        started: tokio::sync::oneshot::Sender<()>,
    ) -> (mpsc::Sender<()>, impl FnOnce() -> &'static str) {
        let (release, wait) = mpsc::channel::<()>();
        (release, move || {
            started.send(()).ok();
            wait.recv().ok();
            "stuck"
        })
    }

    /// Stuck work started through `in_lanes` in a task of its own, once it has begun: the
    /// sender that releases it and the call's handle.
    async fn start_stuck(
        lanes: &Arc<Semaphore>,
        timing: Timing,
    ) -> (
        mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<&'static str, Late>>,
    ) {
        let (started, begun) = tokio::sync::oneshot::channel();
        let (release, work) = stuck(started);
        let call = tokio::spawn({
            let lanes = lanes.clone();
            async move { in_lanes(&lanes, timing, NEVER, work).await }
        });
        bounded(begun).await.expect("the stuck work starts");
        (release, call)
    }

    #[tokio::test]
    async fn no_more_than_the_lanes_run_at_once_and_threads_are_reused() {
        let lanes = lanes(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let calls = (0..24).map(|_| {
            let (running, most, threads) = (running.clone(), most.clone(), threads.clone());
            in_lanes(&lanes, PATIENT, NEVER, move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                threads
                    .lock()
                    .expect("thread set")
                    .insert(std::thread::current().id());
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for answer in bounded(futures::future::join_all(calls)).await {
            assert_eq!(answer, Ok(()));
        }
        // Two at most (one, if a loaded machine started the second thread late).
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} ran at once in 2 lanes");
        // Tokio may start a thread while another is between tasks, but not one per call, as
        // its pool alone would for 24 calls at once.
        let used = threads.lock().expect("thread set").len();
        assert!(used <= 8, "{used} threads for 24 calls in 2 lanes");
    }

    #[tokio::test]
    async fn stuck_work_gives_its_lane_up_after_its_stall_time() {
        let lanes = lanes(1);
        let short_stall = Timing {
            stall: Duration::from_millis(50),
            wait: NEVER,
        };
        let (release, stalled) = start_stuck(&lanes, short_stall).await;
        // This call waits for the one lane as long as it takes: it gets it once the stuck
        // work's stall time has passed, and answers while that work is still stuck.
        assert_eq!(
            bounded(in_lanes(&lanes, PATIENT, NEVER, || "quick")).await,
            Ok("quick")
        );
        assert!(!stalled.is_finished());
        release.send(()).expect("the stuck work waits");
        assert_eq!(bounded(stalled).await.expect("joined"), Ok("stuck"));
    }

    #[tokio::test]
    async fn a_call_that_finds_no_lane_free_runs_without_one() {
        let lanes = lanes(1);
        let (release, stalled) = start_stuck(&lanes, PATIENT).await;
        // The stuck work never gives its lane up; this call waits 50 ms for it, then runs.
        let impatient = Timing {
            stall: NEVER,
            wait: Duration::from_millis(50),
        };
        assert_eq!(
            bounded(in_lanes(&lanes, impatient, NEVER, || "quick")).await,
            Ok("quick")
        );
        assert_eq!(
            lanes.available_permits(),
            0,
            "the stuck work holds its lane"
        );
        release.send(()).expect("the stuck work waits");
        assert_eq!(bounded(stalled).await.expect("joined"), Ok("stuck"));
    }

    #[tokio::test]
    async fn a_cancelled_call_leaves_its_lane_with_the_work() {
        let lanes = lanes(1);
        let (release, call) = start_stuck(&lanes, PATIENT).await;
        call.abort();
        assert!(bounded(call).await.is_err(), "the call was cancelled");
        // The work goes on and keeps the lane: a caller that gives up frees no place.
        assert_eq!(lanes.available_permits(), 0);
        release.send(()).expect("the stuck work waits");
        let lane = bounded(lanes.acquire()).await;
        assert!(lane.is_ok(), "the lane is free once the work has ended");
    }

    #[tokio::test]
    async fn the_deadline_counts_the_wait_for_a_lane() {
        let lanes = lanes(1);
        let held = lanes.acquire().await.expect("a lane");
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let answer = bounded(in_lanes(
            &lanes,
            PATIENT,
            Duration::from_millis(50),
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        ))
        .await;
        assert_eq!(answer, Err(Late::TimedOut));
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "work started after its deadline"
        );
        drop(held);
    }

    #[tokio::test]
    async fn a_panic_is_reported_and_frees_its_lane() {
        let lanes = lanes(1);
        let answer = bounded(in_lanes(&lanes, PATIENT, NEVER, || -> u8 {
            panic!("boom")
        }))
        .await;
        assert_eq!(answer, Err(Late::Panicked));
        assert_eq!(bounded(in_lanes(&lanes, PATIENT, NEVER, || 7)).await, Ok(7));
    }

    #[tokio::test]
    async fn work_past_its_deadline_times_out_and_goes_on() {
        let lanes = lanes(1);
        let (started, _begun) = tokio::sync::oneshot::channel();
        let (release, work) = stuck(started);
        let (done_tx, done) = mpsc::channel::<&str>();
        let answer = bounded(in_lanes(
            &lanes,
            PATIENT,
            Duration::from_millis(50),
            move || {
                done_tx.send(work()).ok();
            },
        ))
        .await;
        assert_eq!(answer, Err(Late::TimedOut));
        release.send(()).expect("the late work waits");
        assert_eq!(
            done.recv_timeout(Duration::from_secs(60)),
            Ok("stuck"),
            "the late work ends on its own"
        );
    }

    #[test]
    fn the_shipped_lanes_and_times() {
        assert_eq!(SHARED.available_permits(), LANES);
        assert_eq!(LANES, 2);
        assert!(LANE_WAIT < STALL && STALL <= Duration::from_millis(250));
    }
}

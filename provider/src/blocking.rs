//! Work that may block on the file system, run off the daemon's one runtime thread, so that
//! nothing a class or a pod puts on a node (a FIFO, a slow mount, a lock) holds up another
//! call.
//!
//! At most [`LANES`] pieces of work run at once, so a burst of volumes reuses the same few
//! blocking threads. Each thread the allocator sees keeps pages of its own: with tokio's
//! pool unbounded, 1,000 volumes published over 8 streams left 12 threads and 21.2 MiB RSS;
//! with two at a time, 3 threads and 16.1 MiB, and the burst took 1.5 s instead of 1.7
//! (node-bench, static musl `dist` build). tmpfs work gains nothing from more: the kernel
//! serialises mounts. Work that runs past [`STALL`] gives its lane up and goes on, on its own
//! thread, so a stuck file costs one thread, never the other pods' turns.

use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Why blocking work gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// It panicked.
    Panicked,
    /// It did not finish within the deadline; it goes on in the background, owning what it
    /// was handed (a claim it holds is released only when it ends).
    TimedOut,
}

/// How many pieces of blocking work run at once (see the module's documentation).
const LANES: usize = 2;

/// How long work may hold a lane. tmpfs work takes milliseconds (p99 27 ms with 8 streams
/// in node-bench); work past this is waiting on something else, and the next in line goes.
const STALL: Duration = Duration::from_millis(250);

/// The lanes every caller shares.
static SHARED: Semaphore = Semaphore::const_new(LANES);

/// Runs `work` on a blocking thread, in one of the shared lanes, and waits at most
/// `deadline` (counted from this call, the wait for a lane included) for its answer.
pub async fn within<T: Send + 'static>(
    deadline: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Late> {
    in_lanes(&SHARED, STALL, deadline, work).await
}

/// [`within`] over the given lanes and stall time.
async fn in_lanes<T: Send + 'static>(
    lanes: &Semaphore,
    stall: Duration,
    deadline: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Late> {
    let until = Instant::now() + deadline;
    // The semaphore is never closed, so `acquire` fails never; were it closed, the work
    // would run without a lane rather than not at all.
    let lane = match tokio::time::timeout_at(until, lanes.acquire()).await {
        Ok(lane) => lane.ok(),
        Err(_) => return Err(Late::TimedOut),
    };
    let mut task = tokio::task::spawn_blocking(work);
    let answer = tokio::select! {
        answer = &mut task => Some(answer),
        () = tokio::time::sleep_until(until.min(Instant::now() + stall)) => None,
    };
    drop(lane);
    let answer = match answer {
        Some(answer) => answer,
        None => match tokio::time::timeout_at(until, task).await {
            Ok(answer) => answer,
            Err(_) => return Err(Late::TimedOut),
        },
    };
    answer.map_err(|_| Late::Panicked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, mpsc};

    /// Far longer than any quick work here takes, so no lane is given up by accident.
    const NEVER: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn no_more_than_the_lanes_run_at_once_and_threads_are_reused() {
        let lanes = Semaphore::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let calls = (0..24).map(|_| {
            let (running, most, threads) = (running.clone(), most.clone(), threads.clone());
            in_lanes(&lanes, NEVER, NEVER, move || {
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
        for answer in futures::future::join_all(calls).await {
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
    async fn stuck_work_gives_its_lane_up_and_answers_late() {
        let lanes = Semaphore::new(1);
        let (release, stuck) = mpsc::channel::<()>();
        let mut stalled = std::pin::pin!(in_lanes(
            &lanes,
            Duration::from_millis(50),
            NEVER,
            move || {
                stuck.recv().ok();
                "stuck"
            }
        ));
        // Polled first, the stuck work takes the one lane; after its stall time it gives it
        // up, and the next call runs and answers while the first is still stuck.
        let quick = in_lanes(&lanes, NEVER, NEVER, || "quick");
        let raced = async {
            tokio::select! {
                biased;
                answer = &mut stalled => panic!("stuck work answered: {answer:?}"),
                answer = quick => answer,
            }
        };
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), raced).await,
            Ok(Ok("quick"))
        );
        release.send(()).expect("the stuck work waits");
        assert_eq!(stalled.await, Ok("stuck"));
    }

    #[tokio::test]
    async fn the_deadline_counts_the_wait_for_a_lane() {
        let lanes = Semaphore::new(1);
        let held = lanes.acquire().await.expect("a lane");
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let answer = in_lanes(&lanes, NEVER, Duration::from_millis(50), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
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
        let lanes = Semaphore::new(1);
        let answer = in_lanes(&lanes, NEVER, NEVER, || -> u8 { panic!("boom") }).await;
        assert_eq!(answer, Err(Late::Panicked));
        assert_eq!(in_lanes(&lanes, NEVER, NEVER, || 7).await, Ok(7));
    }

    #[tokio::test]
    async fn work_past_its_deadline_times_out_and_goes_on() {
        let lanes = Semaphore::new(1);
        let (release, stuck) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel::<()>();
        let answer = in_lanes(&lanes, NEVER, Duration::from_millis(50), move || {
            stuck.recv().ok();
            done_tx.send(()).ok();
        })
        .await;
        assert_eq!(answer, Err(Late::TimedOut));
        // Its lane is free for the next call at once.
        assert_eq!(in_lanes(&lanes, NEVER, NEVER, || 1).await, Ok(1));
        release.send(()).expect("the stuck work waits");
        done.recv_timeout(Duration::from_secs(60))
            .expect("the late work ends");
    }
}

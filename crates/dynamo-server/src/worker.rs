//! Background workers: one shape for every task a service runs beside its requests
//! (after Garage's `Worker`).
//!
//! A [`Worker`] does one unit of work per [`Worker::work`] call and says what comes next:
//! more at once ([`Next::Busy`]), more after a pause ([`Next::Throttled`], the
//! [`Tranquilizer`]'s answer for work that must yield to foreground traffic), nothing
//! until [`Worker::wait_for_work`] returns ([`Next::Idle`]: a timer, a queue, a
//! notification), or nothing ever again ([`Next::Done`]). The loop around it is written
//! once, in [`Workers`]: the stop token, the pauses, the backoff after a failure (with
//! jitter, the worker's own [`Backoff`]), the logs (the first failure of a run as a
//! warning, the repeats at debug, the recovery), and two metrics per worker.
//!
//! Stopping: [`Workers::shutdown`] cancels the token and waits for every worker. A
//! worker is never dropped inside `work` (it may be between a write and its
//! bookkeeping); `work` gets the token and returns promptly once it is cancelled.
//! Pauses and `wait_for_work` are cut short by it.

use std::future::Future;
use std::time::Duration;

use dynamo_core::backoff::Backoff;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// What a worker does after a call to [`Worker::work`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Call `work` again at once.
    Busy,
    /// Call `work` again after this pause.
    Throttled(Duration),
    /// Call `work` again once [`Worker::wait_for_work`] returns.
    Idle,
    /// Stop this worker.
    Done,
}

/// The retry backoff of a worker that does not choose its own.
pub const DEFAULT_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// A background task, driven by [`Workers`].
pub trait Worker: Send + 'static {
    /// Why a unit of work failed (logged with its causes; the worker retries after its
    /// backoff).
    type Error: std::error::Error + Send + 'static;

    /// The worker's name: its log span and its metrics label.
    fn name(&self) -> &'static str;

    /// Does one unit of work. Returns promptly once `stop` is cancelled.
    ///
    /// # Errors
    /// Whatever stopped the unit; the next call comes after [`Worker::retry`]'s delay.
    fn work(&mut self, stop: &CancellationToken) -> impl Future<Output = Result<Next, Self::Error>> + Send;

    /// Returns when there may be work again (after [`Next::Idle`]).
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;

    /// The backoff between failed calls to `work`.
    fn retry(&self) -> Backoff {
        DEFAULT_RETRY
    }
}

/// Paces work that yields to foreground traffic: after a unit that took `t`, pause for
/// `factor · t` (Garage's tranquility; 2 keeps a worker busy at most a third of the time).
#[derive(Debug, Clone, Copy)]
pub struct Tranquilizer {
    started: Instant,
    factor: u32,
}

impl Tranquilizer {
    /// Starts timing a unit of work.
    pub fn start(factor: u32) -> Tranquilizer {
        Tranquilizer {
            started: Instant::now(),
            factor,
        }
    }

    /// Returns the pause the unit timed since [`Tranquilizer::start`] has earned.
    pub fn pause(&self) -> Duration {
        self.started.elapsed().saturating_mul(self.factor)
    }

    /// Returns [`Next::Throttled`] by that pause.
    pub fn next(&self) -> Next {
        Next::Throttled(self.pause())
    }

    /// Sleeps for that pause inside a longer unit of work; returns `false` (at once) when
    /// `stop` is cancelled first.
    pub async fn rest(&self, stop: &CancellationToken) -> bool {
        sleep_or_stop(self.pause(), stop).await
    }
}

/// Sleeps for `d`; returns `false` when `stop` is cancelled first.
pub async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

/// Counters of every worker of one service, labelled by worker name.
#[derive(Clone)]
struct WorkerMetrics {
    runs: IntCounterVec,
    errors: IntCounterVec,
}

/// The workers of one service: spawns them, and stops them all at shutdown.
#[derive(Clone)]
pub struct Workers {
    tracker: TaskTracker,
    stop: CancellationToken,
    metrics: WorkerMetrics,
}

impl Workers {
    /// Workers that stop when `stop` is cancelled (or at [`Workers::shutdown`]), with
    /// `dynamo_<component>_worker_runs_total{worker}` and
    /// `dynamo_<component>_worker_errors_total{worker}` in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if the names are already registered there.
    pub fn new(
        registry: &Registry,
        component: &str,
        stop: CancellationToken,
    ) -> Result<Workers, prometheus::Error> {
        let runs = IntCounterVec::new(
            Opts::new(
                format!("dynamo_{component}_worker_runs_total"),
                "Units of work done by each background worker",
            ),
            &["worker"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                format!("dynamo_{component}_worker_errors_total"),
                "Units of work of each background worker that failed (and were retried)",
            ),
            &["worker"],
        )?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Workers {
            tracker: TaskTracker::new(),
            stop,
            metrics: WorkerMetrics { runs, errors },
        })
    }

    /// Starts `worker`; it runs until it is done or the workers stop.
    pub fn spawn<W: Worker>(&self, worker: W) {
        self.spawn_until(worker, self.stop.clone());
    }

    /// Starts `worker` with a stop token of its own, which must be a child of
    /// [`Workers::child_stop`] so that shutdown stops it too.
    pub fn spawn_until<W: Worker>(&self, worker: W, stop: CancellationToken) {
        let span = tracing::info_span!("worker", worker = worker.name());
        self.tracker
            .spawn(drive(worker, stop, self.metrics.clone()).instrument(span));
    }

    /// Returns a token cancelled with the workers, and on its own by its holder.
    pub fn child_stop(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// Returns whether the workers were told to stop.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Stops every worker and waits until they all returned.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Returns `e`'s message followed by its causes (`a: b: c`), for one log field.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

async fn drive<W: Worker>(mut worker: W, stop: CancellationToken, metrics: WorkerMetrics) {
    let name = worker.name();
    let runs = metrics.runs.with_label_values(&[name]);
    let errors = metrics.errors.with_label_values(&[name]);
    let mut failures = 0u32;
    let mut next = Next::Busy;
    loop {
        let go = match next {
            Next::Done => break,
            Next::Busy => !stop.is_cancelled(),
            Next::Throttled(d) => sleep_or_stop(d, &stop).await,
            Next::Idle => tokio::select! {
                () = stop.cancelled() => false,
                () = worker.wait_for_work() => true,
            },
        };
        if !go {
            break;
        }
        runs.inc();
        next = match worker.work(&stop).await {
            Ok(next) => {
                if failures > 0 {
                    tracing::info!(failures, "worker recovered");
                    failures = 0;
                }
                next
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                errors.inc();
                let error = with_causes(&e);
                if failures == 1 {
                    tracing::warn!(%error, "worker failed; retrying with backoff");
                } else {
                    tracing::debug!(%error, failures, "worker failed again");
                }
                Next::Throttled(worker.retry().delay(failures, rand::random()))
            }
        };
    }
    tracing::debug!("worker stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// Fails `fail_first` times, then is busy `busy` times, then idles until notified,
    /// then is done. Records each call.
    struct Script {
        fail_first: u32,
        busy: u32,
        calls: Arc<AtomicU32>,
        wake: Arc<Notify>,
        woken: bool,
    }

    impl Worker for Script {
        type Error = std::io::Error;

        fn name(&self) -> &'static str {
            "script"
        }

        async fn work(&mut self, _stop: &CancellationToken) -> Result<Next, std::io::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail_first > 0 {
                self.fail_first -= 1;
                return Err(std::io::Error::other("scripted failure"));
            }
            if self.busy > 0 {
                self.busy -= 1;
                return Ok(Next::Busy);
            }
            Ok(if self.woken { Next::Done } else { Next::Idle })
        }

        async fn wait_for_work(&mut self) {
            self.wake.notified().await;
            self.woken = true;
        }

        fn retry(&self) -> Backoff {
            Backoff::new(Duration::from_secs(1), Duration::from_secs(8))
        }
    }

    fn workers() -> (Workers, Registry) {
        let registry = Registry::new();
        let w = Workers::new(&registry, "test", CancellationToken::new()).expect("metrics");
        (w, registry)
    }

    fn counter(registry: &Registry, name: &str) -> u64 {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .map_or(0, |f| f.get_metric()[0].get_counter().get_value() as u64)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_busy_runs_at_once_idle_waits_and_done_stops() {
        let (w, registry) = workers();
        let calls = Arc::new(AtomicU32::new(0));
        let wake = Arc::new(Notify::new());
        w.spawn(Script {
            fail_first: 2,
            busy: 3,
            calls: calls.clone(),
            wake: wake.clone(),
            woken: false,
        });
        tokio::task::yield_now().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the first call comes at once");
        // The first retry waits at least half a second of the 1 s step, the second at
        // least a second of the 2 s step.
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry before the backoff");
        // Past the step's whole second: a retry drawn at exactly 1 s shares its deadline
        // with this sleep, and timers due at the same instant fire in no set order.
        tokio::time::sleep(Duration::from_millis(502)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        // Retry succeeded, then three busy calls back to back, then one that idles.
        assert_eq!(calls.load(Ordering::SeqCst), 3 + 3);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            6,
            "an idle worker waits for work, not time"
        );
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 7);
        w.shutdown().await;
        assert_eq!(counter(&registry, "dynamo_test_worker_runs_total"), 7);
        assert_eq!(counter(&registry, "dynamo_test_worker_errors_total"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_pauses_and_waits_short() {
        let (w, _registry) = workers();
        let calls = Arc::new(AtomicU32::new(0));
        // One fails and pauses for its backoff; one idles on a notification that never
        // comes; one is throttled for an hour.
        w.spawn(Script {
            fail_first: u32::MAX,
            busy: 0,
            calls: calls.clone(),
            wake: Arc::new(Notify::new()),
            woken: false,
        });
        w.spawn(Script {
            fail_first: 0,
            busy: 0,
            calls: calls.clone(),
            wake: Arc::new(Notify::new()),
            woken: false,
        });
        struct Slow;
        impl Worker for Slow {
            type Error = std::convert::Infallible;
            fn name(&self) -> &'static str {
                "slow"
            }
            async fn work(&mut self, _stop: &CancellationToken) -> Result<Next, Self::Error> {
                Ok(Next::Throttled(Duration::from_secs(3600)))
            }
            async fn wait_for_work(&mut self) {}
        }
        w.spawn(Slow);
        tokio::task::yield_now().await;
        let started = Instant::now();
        w.shutdown().await;
        assert!(w.is_stopping());
        assert_eq!(started.elapsed(), Duration::ZERO, "no pause outlives the stop");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_stop_ends_one_worker_and_shutdown_the_rest() {
        let (w, _registry) = workers();
        let calls = Arc::new(AtomicU32::new(0));
        let one = w.child_stop();
        for stop in [one.clone(), w.child_stop()] {
            w.spawn_until(
                Script {
                    fail_first: 0,
                    busy: 0,
                    calls: calls.clone(),
                    wake: Arc::new(Notify::new()),
                    woken: false,
                },
                stop,
            );
        }
        tokio::task::yield_now().await;
        one.cancel();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            w.tracker.len(),
            1,
            "the cancelled worker returned, the other waits"
        );
        w.shutdown().await;
        assert!(w.tracker.is_empty());
    }

    #[test]
    fn a_logged_error_names_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("round failed")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(with_causes(&e), "round failed: disk full");
    }

    #[tokio::test(start_paused = true)]
    async fn the_tranquilizer_pauses_a_multiple_of_the_work() {
        let t = Tranquilizer::start(2);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(t.next(), Next::Throttled(Duration::from_millis(60)));
        let stop = CancellationToken::new();
        let before = Instant::now();
        assert!(t.rest(&stop).await);
        assert!(before.elapsed() >= Duration::from_millis(60));
        stop.cancel();
        assert!(!t.rest(&stop).await, "a cancelled stop ends the rest at once");
    }
}

//! Work-conserving dynamic batching: a bounded request queue drained by one dedicated
//! inference thread. An idle thread runs at once; a batch is what queued while the previous
//! forward pass ran, up to `max_batch` samples.
//!
//! `batch_timeout` is only an upper bound on extra waiting, spent only when it pays: when
//! more samples were recently in flight (submitted, not yet answered) than the thread holds,
//! the callers of the previous batch are about to come back, so it waits for them — until the
//! batch holds as many as were in flight or the oldest request has waited `batch_timeout`. A
//! lone caller finds nobody else in flight and never waits.

use super::metrics::ModelMetrics;
use super::models::Model;
use super::schema::Sample;
use super::{BatchConfig, ModelKind, ServingError};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why a batch could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InferError {
    pub message: String,
    /// The model rejected the input (e.g. a TorchScript shape it cannot take): a 422, not a 500.
    pub rejected_input: bool,
}

pub type Reply = Result<Vec<Value>, InferError>;

/// One request waiting in the queue.
pub struct Job {
    pub samples: Vec<Sample>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Reply>,
}

/// The longest expected pass a lone caller runs on its own HTTP worker. Holding that worker
/// delays only its other connections (none is an /infer: the caller is alone), and by no more
/// than the default `batch_timeout` a batched caller may be made to wait; a longer pass gains
/// little from skipping the hand-off (tens of µs) anyway.
pub const LONE_PASS_BUDGET: Duration = Duration::from_millis(2);

/// The batching rule, as plain data (no clock, no channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub timeout: Duration,
    /// The longest expected pass a lone caller runs itself ([`LONE_PASS_BUDGET`]; zero: never).
    pub lone_pass: Duration,
}

impl BatchPolicy {
    /// The batch that starts with a request enqueued at `first` closes by this instant.
    pub fn deadline(&self, first: Instant) -> Instant {
        first + self.timeout
    }

    /// Whether a job of `job_rows` samples joins a batch already holding `rows`. The first job
    /// always does, even when larger than `max_batch` (it cannot be split across callers).
    pub fn admits(&self, rows: usize, job_rows: usize) -> bool {
        rows == 0 || rows + job_rows <= self.max_batch
    }

    /// Whether a batch holding `rows` should run now.
    pub fn full(&self, rows: usize) -> bool {
        rows >= self.max_batch
    }

    /// How many samples a batch waits for, given the most samples in flight since the previous
    /// batch started (`peak`, the callers it expects): never more than `max_batch`, at least 1.
    pub fn target(&self, peak: usize) -> usize {
        peak.clamp(1, self.max_batch)
    }

    /// Whether a batch holding `rows`, with `target` expected, waits for more (until the
    /// deadline): only while callers in flight are not yet in it.
    pub fn waits(&self, rows: usize, target: usize) -> bool {
        !self.full(rows) && rows < target && !self.timeout.is_zero()
    }

    /// Whether a caller of `rows` samples runs its own pass instead of queueing: only when
    /// its samples are all those in flight since the thread's last batch started (`peak`):
    /// nobody to batch with now, nothing queued or running, and nobody recently. The last
    /// matters under load: the callers of a batch just answered come back one by one, and
    /// the first back is alone for a moment; were it to run alone, and the next, the herd
    /// would never form a batch again. So they queue, and the thread waits for the rest.
    /// Its pass, at the latest pass's `ns_per_sample`, must be expected within `lone_pass`;
    /// a model never measured yet (`ns_per_sample` 0) goes through the thread.
    pub fn runs_alone(&self, rows: usize, peak: usize, ns_per_sample: u64) -> bool {
        rows > 0
            && rows <= self.max_batch
            && peak <= rows
            && ns_per_sample > 0
            && (ns_per_sample as u128) * (rows as u128) <= self.lone_pass.as_nanos()
    }
}

/// Samples submitted and not yet answered, shared by the async side and the thread: the
/// thread's only evidence of how many callers a batch can expect.
#[derive(Debug)]
pub struct InFlight {
    outstanding: AtomicUsize,
    /// The most `outstanding` reached since the thread last reset it (at each batch start).
    peak: AtomicUsize,
    /// `outstanding`, exported (`warden_model_in_flight_samples`).
    gauge: prometheus::IntGauge,
}

impl InFlight {
    fn new(gauge: prometheus::IntGauge) -> InFlight {
        InFlight {
            outstanding: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            gauge,
        }
    }

    fn add(&self, rows: usize) {
        let now = self.outstanding.fetch_add(rows, Ordering::AcqRel) + rows;
        self.peak.fetch_max(now, Ordering::AcqRel);
        self.gauge.add(rows as i64);
    }

    fn done(&self, rows: usize) {
        self.outstanding.fetch_sub(rows, Ordering::AcqRel);
        self.gauge.sub(rows as i64);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }

    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Starts a new observation window at the current load.
    fn reset_peak(&self) {
        let now = self.outstanding.load(Ordering::Acquire);
        self.peak.store(now, Ordering::Release);
        // A submit between the load and the store raised `outstanding`: keep it seen.
        self.peak
            .fetch_max(self.outstanding.load(Ordering::Acquire), Ordering::AcqRel);
    }
}

/// The loaded model, shared by the inference thread and lone callers: one pass at a time.
pub struct Engine {
    model: OnceLock<Mutex<Box<dyn Model>>>,
    /// The latest pass's time per sample, ns (0 until the warm-up pass): what a lone caller
    /// expects its own pass to cost.
    ns_per_sample: AtomicU64,
}

impl Engine {
    fn new() -> Engine {
        Engine {
            model: OnceLock::new(),
            ns_per_sample: AtomicU64::new(0),
        }
    }

    /// Installs the loaded model (once; the inference thread does it after loading).
    fn install(&self, model: Box<dyn Model>) {
        // Only the inference thread installs, once: a second call cannot happen.
        let _ = self.model.set(Mutex::new(model));
    }

    /// Waits for the model (the inference thread); `None` before it is installed.
    fn lock(&self) -> Option<MutexGuard<'_, Box<dyn Model>>> {
        // A pass's panic is caught inside the guard (`forward_guarded`), so poisoning cannot
        // leave the model half-updated: keep using it.
        let m = self.model.get()?;
        Some(m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The model if it is installed and idle right now (a lone caller never waits for it).
    fn try_lock(&self) -> Option<MutexGuard<'_, Box<dyn Model>>> {
        match self.model.get()?.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn record(&self, elapsed: Duration, samples: usize) {
        let per = elapsed.as_nanos() / samples.max(1) as u128;
        self.ns_per_sample
            .store(per.clamp(1, u64::MAX as u128) as u64, Ordering::Release);
    }

    fn ns_per_sample(&self) -> u64 {
        self.ns_per_sample.load(Ordering::Acquire)
    }
}

/// Splits `0..n` into runs that may share a forward pass: all of them, or by equal keys.
pub fn shape_groups<K: PartialEq>(keys: &[K], split: bool) -> Vec<Vec<usize>> {
    if !split {
        return vec![(0..keys.len()).collect()];
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match groups.iter_mut().find(|g| keys[g[0]] == *k) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `queue_capacity` requests: answer 503 + Retry-After.
    Full,
    /// The inference thread is gone (shutting down or failed).
    Closed,
}

/// The async side's handle on the queue.
#[derive(Clone)]
pub struct BatchQueue {
    tx: SyncSender<Job>,
    metrics: ModelMetrics,
    in_flight: Arc<InFlight>,
    engine: Arc<Engine>,
    policy: BatchPolicy,
}

impl BatchQueue {
    /// Counts a caller whose request is still being read or parsed, so that a batch forming
    /// meanwhile expects it; [`Announced::submit`] turns it into its samples.
    pub fn announce(&self) -> Announced<'_> {
        self.in_flight.add(1);
        Announced {
            queue: self,
            counted: true,
        }
    }

    /// Queues a request without blocking; the receiver resolves when its batch ran.
    pub fn submit(&self, samples: Vec<Sample>) -> Result<oneshot::Receiver<Reply>, SubmitError> {
        self.announce().submit(samples)
    }

    /// Whether a caller of `rows` samples, `counted` of them in flight so far, would run
    /// alone now (see [`BatchPolicy::runs_alone`]).
    fn alone(&self, rows: usize, counted: usize) -> bool {
        // `peak` ≥ samples in flight now, which include this caller's `counted`.
        let seen = self.in_flight.peak().max(self.in_flight.outstanding());
        self.policy.runs_alone(
            rows,
            seen.saturating_sub(counted) + rows,
            self.engine.ns_per_sample(),
        )
    }

    /// Runs `job` as its own pass on the calling thread when it is alone and the model idle
    /// (see [`BatchPolicy::runs_alone`]); gives it back otherwise. The job's samples are
    /// already counted in flight.
    fn run_alone(&self, job: Job) -> Result<(), Job> {
        let rows = job.samples.len();
        if !self.alone(rows, rows) {
            return Err(job);
        }
        // The thread may have just taken a job queued after our check: then queue behind it.
        let Some(model) = self.engine.try_lock() else {
            return Err(job);
        };
        run_batch(
            model.as_ref(),
            vec![job],
            &self.metrics,
            &self.engine,
            || self.in_flight.done(rows),
        );
        Ok(())
    }
}

/// A caller counted in flight before its samples are known; uncounted when dropped unused.
pub struct Announced<'a> {
    queue: &'a BatchQueue,
    counted: bool,
}

impl Announced<'_> {
    /// Whether a request of `rows` samples would run its own pass if submitted now.
    pub fn may_run_alone(&self, rows: usize) -> bool {
        // Until submitted, this caller counts as one sample.
        self.queue.alone(rows, 1)
    }

    /// Queues the request without blocking; the receiver resolves when its batch ran.
    pub fn submit(mut self, samples: Vec<Sample>) -> Result<oneshot::Receiver<Reply>, SubmitError> {
        let queue = self.queue;
        let (reply, rx) = oneshot::channel();
        let rows = samples.len();
        // The caller's one counted sample becomes its `rows`, without ever counting it twice
        // (a lone caller must never look like two).
        self.counted = false;
        match rows {
            0 => queue.in_flight.done(1),
            n => queue.in_flight.add(n - 1),
        }
        let job = Job {
            samples,
            enqueued: Instant::now(),
            reply,
        };
        // Answered already: the receiver resolves without a wake-up.
        let job = match queue.run_alone(job) {
            Ok(()) => return Ok(rx),
            Err(job) => job,
        };
        // Count before sending so the thread's decrement can never run first.
        queue.metrics.queue_depth.inc();
        match queue.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                queue.metrics.queue_depth.dec();
                queue.in_flight.done(rows);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.queue.in_flight.done(1);
        }
    }
}

/// A started inference thread: its queue, its load outcome, and its handle for joining.
pub struct InferenceThread {
    pub queue: BatchQueue,
    /// Resolves once weights are loaded and warmed up, or with the load error.
    pub loaded: oneshot::Receiver<Result<(), ServingError>>,
    pub handle: std::thread::JoinHandle<()>,
}

/// What the inference thread needs to start.
pub struct InferenceSpec {
    pub kind: ModelKind,
    pub weights: PathBuf,
    pub device: tch::Device,
    pub batch: BatchConfig,
    /// TorchScript row shape for the warm-up pass; `None` skips warm-up for TorchScript.
    pub row_shape: Option<Vec<i64>>,
}

/// Starts the inference thread. `loaded` resolves once weights are loaded and warmed up (or
/// failed); the thread exits after the last [`BatchQueue`] is dropped and the queue is drained.
pub fn spawn(
    spec: InferenceSpec,
    metrics: ModelMetrics,
    ready: Arc<AtomicBool>,
) -> Result<InferenceThread, ServingError> {
    let (tx, rx) = mpsc::sync_channel::<Job>(spec.batch.queue_capacity.max(1));
    let (loaded_tx, loaded_rx) = oneshot::channel();
    let thread_metrics = metrics.clone();
    let in_flight = Arc::new(InFlight::new(metrics.in_flight.clone()));
    let thread_in_flight = in_flight.clone();
    let engine = Arc::new(Engine::new());
    let thread_engine = engine.clone();
    let policy = BatchPolicy {
        max_batch: spec.batch.max_batch.max(1),
        timeout: spec.batch.batch_timeout,
        lone_pass: LONE_PASS_BUDGET,
    };
    let handle = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            match load_and_warm_up(&spec, &thread_engine) {
                Ok(model) => thread_engine.install(model),
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                    return;
                }
            };
            ready.store(true, Ordering::SeqCst);
            thread_metrics.ready.set(1);
            let _ = loaded_tx.send(Ok(()));
            run_loop(
                &thread_engine,
                &rx,
                policy,
                &thread_metrics,
                &thread_in_flight,
            );
            tracing::info!("inference queue drained; inference thread exiting");
        })
        .map_err(|source| ServingError::Io {
            context: "spawning the inference thread".into(),
            source,
        })?;
    Ok(InferenceThread {
        queue: BatchQueue {
            tx,
            metrics,
            in_flight,
            engine,
            policy,
        },
        loaded: loaded_rx,
        handle,
    })
}

fn load_and_warm_up(spec: &InferenceSpec, engine: &Engine) -> Result<Box<dyn Model>, ServingError> {
    let started = Instant::now();
    let model = spec.kind.load(&spec.weights, spec.device)?;
    let row_shape = spec.row_shape.clone().unwrap_or_default();
    if spec.kind != ModelKind::TorchScript || spec.row_shape.is_some() {
        let samples = spec
            .kind
            .warm_up_samples(&row_shape)
            .map_err(|e| ServingError::WarmUp(e.to_string()))?;
        let refs: Vec<&Sample> = samples.iter().collect();
        // Twice: the first pass pays one-off set-up, the second is what a pass costs.
        for _ in 0..2 {
            let pass = Instant::now();
            forward_guarded(model.as_ref(), &refs).map_err(|e| ServingError::WarmUp(e.message))?;
            engine.record(pass.elapsed(), refs.len());
        }
    }
    tracing::info!(
        weights = %spec.weights.display(),
        device = ?spec.device,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model loaded and warmed up"
    );
    Ok(model)
}

/// Runs one forward pass; a tch error or panic fails this batch, never the thread.
fn forward_guarded(model: &dyn Model, batch: &[&Sample]) -> Result<Vec<Value>, InferError> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.forward(batch)));
    match result {
        Ok(Ok(outputs)) if outputs.len() == batch.len() => Ok(outputs),
        Ok(Ok(outputs)) => Err(InferError {
            message: format!(
                "model returned {} outputs for {} inputs",
                outputs.len(),
                batch.len()
            ),
            rejected_input: false,
        }),
        Ok(Err(e)) => Err(InferError {
            message: e.to_string(),
            rejected_input: model.same_shape_batches(),
        }),
        Err(_) => Err(InferError {
            message: "the forward pass panicked".into(),
            rejected_input: false,
        }),
    }
}

fn run_loop(
    engine: &Engine,
    rx: &mpsc::Receiver<Job>,
    policy: BatchPolicy,
    metrics: &ModelMetrics,
    in_flight: &InFlight,
) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // every sender dropped and the queue is empty
            },
        };
        let deadline = policy.deadline(first.enqueued);
        let mut rows = first.samples.len();
        let mut jobs = vec![first];
        // What queued while the previous pass ran joins at once; waiting (bounded by the
        // deadline) only while callers recently in flight are not in the batch yet.
        while !policy.full(rows) {
            let next = match rx.try_recv() {
                Ok(job) => Ok(job),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    if wait.is_zero() || !policy.waits(rows, policy.target(in_flight.peak())) {
                        break;
                    }
                    rx.recv_timeout(wait)
                }
            };
            match next {
                Ok(job) if policy.admits(rows, job.samples.len()) => {
                    rows += job.samples.len();
                    jobs.push(job);
                }
                Ok(job) => {
                    carried = Some(job);
                    break;
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // The next batch expects whoever is in flight from now on, this batch's callers too.
        in_flight.reset_peak();
        // A carried job stays counted: it is still waiting for its batch.
        metrics.queue_depth.sub(jobs.len() as i64);
        let Some(model) = engine.lock() else {
            return; // cannot happen: the thread installs the model before its loop
        };
        // Counted out before the replies go: a caller answered and already back must not
        // look like a second caller in flight.
        run_batch(model.as_ref(), jobs, metrics, engine, || {
            in_flight.done(rows)
        });
    }
}

/// Runs `jobs` as one batch (split by shape where the model needs it), calls `answering`, then
/// answers each job.
fn run_batch(
    model: &dyn Model,
    jobs: Vec<Job>,
    metrics: &ModelMetrics,
    engine: &Engine,
    answering: impl FnOnce(),
) {
    // Flatten: sample i belongs to job owner[i].
    let mut owner = Vec::new();
    let mut samples: Vec<&Sample> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for s in &job.samples {
            owner.push(j);
            samples.push(s);
        }
    }
    let keys: Vec<&[i64]> = samples.iter().map(|s| s.shape.as_slice()).collect();
    let mut results: Vec<Option<Result<Value, InferError>>> = vec![None; samples.len()];
    for group in shape_groups(&keys, model.same_shape_batches()) {
        let batch: Vec<&Sample> = group.iter().map(|&i| samples[i]).collect();
        let started = Instant::now();
        let outcome = forward_guarded(model, &batch);
        let elapsed = started.elapsed();
        engine.record(elapsed, batch.len());
        metrics.inference_duration.observe(elapsed.as_secs_f64());
        metrics.batch_size.observe(batch.len() as f64);
        match outcome {
            Ok(outputs) => {
                for (&i, out) in group.iter().zip(outputs) {
                    results[i] = Some(Ok(out));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, samples = batch.len(), "forward pass failed");
                for &i in &group {
                    results[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    answering();
    let mut results = results.into_iter();
    for job in jobs {
        let mine: Vec<Result<Value, InferError>> = results
            .by_ref()
            .take(job.samples.len())
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(InferError {
                        message: "no output".into(),
                        rejected_input: false,
                    })
                })
            })
            .collect();
        let reply: Reply = mine.into_iter().collect();
        // The caller may have gone away (client disconnect): nothing to do then.
        let _ = job.reply.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BatchPolicy {
        BatchPolicy {
            max_batch: 8,
            timeout: Duration::from_millis(2),
            lone_pass: LONE_PASS_BUDGET,
        }
    }

    #[test]
    fn first_job_is_always_admitted_others_only_while_they_fit() {
        let p = policy();
        assert!(p.admits(0, 20));
        assert!(p.admits(5, 3));
        assert!(!p.admits(6, 3));
        assert!(p.full(8));
        assert!(!p.full(7));
    }

    #[test]
    fn deadline_counts_from_the_oldest_request() {
        let t0 = Instant::now();
        assert_eq!(policy().deadline(t0), t0 + Duration::from_millis(2));
    }

    #[test]
    fn a_batch_waits_only_for_callers_in_flight_and_never_beyond_max_batch() {
        let p = policy();
        // (rows held, most samples in flight, waits?)
        let table = [
            (1, 1, false), // a lone caller runs at once
            (1, 0, false),
            (3, 5, true), // two callers in flight are not in the batch yet
            (5, 5, false),
            (7, 64, true),  // the target is capped at max_batch ...
            (8, 64, false), // ... and a full batch always runs
        ];
        for (rows, peak, waits) in table {
            assert_eq!(
                p.waits(rows, p.target(peak)),
                waits,
                "rows {rows}, peak {peak}"
            );
        }
        let no_wait = BatchPolicy {
            timeout: Duration::ZERO,
            ..p
        };
        assert!(!no_wait.waits(1, no_wait.target(8)));
    }

    #[test]
    fn shape_groups_split_only_when_asked() {
        let keys = [vec![3], vec![2], vec![3], vec![2, 1]];
        assert_eq!(shape_groups(&keys, false), vec![vec![0, 1, 2, 3]]);
        assert_eq!(
            shape_groups(&keys, true),
            vec![vec![0, 2], vec![1], vec![3]]
        );
    }

    struct Doubler;
    impl Model for Doubler {
        fn forward(&self, batch: &[&Sample]) -> Result<Vec<Value>, tch::TchError> {
            Ok(batch
                .iter()
                .map(|s| serde_json::json!(s.values[0] * 2.0))
                .collect())
        }
    }

    #[test]
    fn each_job_gets_its_own_outputs_in_order() {
        let metrics = ModelMetrics::new("t").unwrap();
        let mut rxs = Vec::new();
        let mut jobs = Vec::new();
        for j in 0..3 {
            let (tx, rx) = oneshot::channel();
            let samples = (0..=j)
                .map(|k| Sample::dense(vec![(10 * j + k) as f32], vec![1]))
                .collect();
            jobs.push(Job {
                samples,
                enqueued: Instant::now(),
                reply: tx,
            });
            rxs.push(rx);
        }
        run_batch(&Doubler, jobs, &metrics, &Engine::new(), || {});
        let got: Vec<Vec<Value>> = rxs
            .into_iter()
            .map(|mut r| r.try_recv().unwrap().unwrap())
            .collect();
        assert_eq!(got[0], vec![serde_json::json!(0.0)]);
        assert_eq!(
            got[2],
            vec![
                serde_json::json!(40.0),
                serde_json::json!(42.0),
                serde_json::json!(44.0)
            ]
        );
        assert_eq!(metrics.batch_size.get_sample_sum(), 6.0);
    }

    /// A model that blocks inside `forward` on a sample valued -1 until released, and reports
    /// when it got there; it notes which thread ran each pass.
    struct Gate {
        entered: std::sync::Mutex<mpsc::Sender<()>>,
        release: std::sync::Mutex<mpsc::Receiver<()>>,
        ran_on: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    }
    impl Model for Gate {
        fn forward(&self, batch: &[&Sample]) -> Result<Vec<Value>, tch::TchError> {
            let me = std::thread::current().name().map(str::to_string);
            self.ran_on.lock().unwrap().push(me);
            if batch.iter().any(|s| s.values[0] < 0.0) {
                let _ = self.entered.lock().unwrap().send(());
                let _ = self.release.lock().unwrap().recv();
            }
            Ok(batch
                .iter()
                .map(|s| serde_json::json!(s.values[0]))
                .collect())
        }
    }

    struct Running {
        queue: BatchQueue,
        metrics: ModelMetrics,
        entered: mpsc::Receiver<()>,
        release: mpsc::Sender<()>,
        /// Each pass's thread name, in order.
        ran_on: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    }

    /// A running batcher whose callers always hand their requests to the thread.
    fn start(timeout: Duration) -> Running {
        start_with(timeout, Duration::ZERO)
    }

    /// A running batcher over [`Gate`]; `lone_pass` as in [`BatchPolicy`].
    fn start_with(timeout: Duration, lone_pass: Duration) -> Running {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let ran_on = Arc::new(std::sync::Mutex::new(Vec::new()));
        let model = Gate {
            entered: std::sync::Mutex::new(entered_tx),
            release: std::sync::Mutex::new(release_rx),
            ran_on: ran_on.clone(),
        };
        let metrics = ModelMetrics::new("t").unwrap();
        let (tx, rx) = mpsc::sync_channel(64);
        let in_flight = Arc::new(InFlight::new(metrics.in_flight.clone()));
        let engine = Arc::new(Engine::new());
        engine.install(Box::new(model));
        let policy = BatchPolicy {
            max_batch: 16,
            timeout,
            lone_pass,
        };
        let queue = BatchQueue {
            tx,
            metrics: metrics.clone(),
            in_flight: in_flight.clone(),
            engine: engine.clone(),
            policy,
        };
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run_loop(&engine, &rx, policy, &thread_metrics, &in_flight))
            .unwrap();
        Running {
            queue,
            metrics,
            entered,
            release,
            ran_on,
        }
    }

    fn one(v: f32) -> Vec<Sample> {
        vec![Sample::dense(vec![v], vec![1])]
    }

    /// Waits for a reply, at most `bound`.
    fn reply_within(mut rx: oneshot::Receiver<Reply>, bound: Duration) -> Option<Reply> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            match rx.try_recv() {
                Ok(r) => return Some(r),
                Err(oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(oneshot::error::TryRecvError::Closed) => return None,
            }
        }
        None
    }

    fn batches(m: &ModelMetrics) -> (f64, u64) {
        (
            m.batch_size.get_sample_sum(),
            m.batch_size.get_sample_count(),
        )
    }

    #[test]
    fn a_lone_caller_never_waits_for_the_batch_timeout() {
        // The old batcher held each of these for the full minute.
        let timeout = Duration::from_secs(60);
        let r = start(timeout);
        let started = Instant::now();
        for i in 0..5 {
            let rx = r.queue.submit(one(i as f32)).unwrap();
            let got = reply_within(rx, timeout / 4).expect("a lone caller waited for the timeout");
            assert_eq!(got.unwrap(), vec![serde_json::json!(i as f32)]);
        }
        assert!(started.elapsed() < timeout / 4);
        assert_eq!(batches(&r.metrics), (5.0, 5));
    }

    #[test]
    fn what_queued_during_a_pass_is_the_next_batch() {
        let r = start(Duration::from_millis(100));
        let blocker = r.queue.submit(one(-1.0)).unwrap();
        r.entered.recv().unwrap();
        let rxs: Vec<_> = (0..7)
            .map(|i| r.queue.submit(one(i as f32)).unwrap())
            .collect();
        r.release.send(()).unwrap();
        assert!(reply_within(blocker, Duration::from_secs(30)).is_some());
        for (i, rx) in rxs.into_iter().enumerate() {
            let got = reply_within(rx, Duration::from_secs(30)).unwrap().unwrap();
            assert_eq!(got, vec![serde_json::json!(i as f32)]);
        }
        // One pass for the blocker, one for all seven that queued behind it.
        assert_eq!(batches(&r.metrics), (8.0, 2));
    }

    #[test]
    fn callers_in_flight_are_waited_for_and_the_timeout_bounds_the_wait() {
        let r = start(Duration::from_secs(60));
        // Four callers still parsing their requests when the first one is queued.
        let late: Vec<Announced<'_>> = (0..4).map(|_| r.queue.announce()).collect();
        let first = r.queue.submit(one(0.0)).unwrap();
        let mut rxs = vec![first];
        for (i, a) in late.into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(5));
            rxs.push(a.submit(one(1.0 + i as f32)).unwrap());
        }
        for rx in rxs {
            assert!(reply_within(rx, Duration::from_secs(30)).is_some());
        }
        assert_eq!(batches(&r.metrics), (5.0, 1), "all five share one pass");

        // A caller that never comes costs at most the timeout, once.
        let r = start(Duration::from_millis(50));
        let gone = r.queue.announce();
        let rx = r.queue.submit(one(0.0)).unwrap();
        assert!(reply_within(rx, Duration::from_secs(30)).is_some());
        drop(gone);
        assert_eq!(batches(&r.metrics), (1.0, 1));
    }

    #[test]
    fn only_a_caller_alone_in_flight_with_a_short_pass_runs_its_own() {
        let p = BatchPolicy {
            lone_pass: Duration::from_micros(500),
            ..policy()
        };
        // (rows, most samples in flight since the last batch, ns per sample, runs alone?)
        let table = [
            (1, 1, 50_000, true),   // alone, 50 µs pass
            (1, 2, 50_000, false),  // someone else is or was in flight: batch with them
            (3, 3, 100_000, true),  // 300 µs expected
            (3, 3, 200_000, false), // 600 µs expected: too long to hold an HTTP worker
            (1, 1, 0, false),       // never measured: through the thread
            (0, 0, 1, false),       // nothing to run
            (9, 9, 1, false),       // beyond max_batch
        ];
        for (rows, outstanding, ns, alone) in table {
            assert_eq!(
                p.runs_alone(rows, outstanding, ns),
                alone,
                "rows {rows}, peak in flight {outstanding}, {ns} ns/sample"
            );
        }
        let never = BatchPolicy {
            lone_pass: Duration::ZERO,
            ..p
        };
        assert!(!never.runs_alone(1, 1, 1));
    }

    fn names(r: &Running) -> Vec<Option<String>> {
        r.ran_on.lock().unwrap().clone()
    }

    #[test]
    fn a_lone_caller_runs_its_own_pass_without_a_hand_off() {
        let r = start_with(Duration::from_secs(60), Duration::from_secs(3600));
        let me = std::thread::current().name().map(str::to_string);
        // The first pass has no cost measured yet: it goes through the thread.
        let rx = r.queue.submit(one(0.0)).unwrap();
        assert!(reply_within(rx, Duration::from_secs(30)).is_some());
        for i in 1..5 {
            let mut rx = r.queue.submit(one(i as f32)).unwrap();
            // Answered before `submit` returned: no wake-up, no other thread involved.
            let got = rx
                .try_recv()
                .expect("a lone caller's answer was not ready at once");
            assert_eq!(got.unwrap(), vec![serde_json::json!(i as f32)]);
        }
        let mut expected = vec![Some("inference".to_string())];
        expected.extend(std::iter::repeat_n(me, 4));
        assert_eq!(names(&r), expected);
        assert_eq!(batches(&r.metrics), (5.0, 5));
        assert_eq!(r.metrics.in_flight.get(), 0);
        assert_eq!(r.metrics.queue_depth.get(), 0);
    }

    #[test]
    fn a_caller_with_company_or_a_busy_model_goes_through_the_thread() {
        // Long enough that the two callers below share a pass even on a busy machine; the
        // last part waits for it once (the lone runner is still counted in flight).
        let r = start_with(Duration::from_millis(300), Duration::from_secs(3600));
        let rx = r.queue.submit(one(0.0)).unwrap();
        assert!(reply_within(rx, Duration::from_secs(30)).is_some());

        // Another caller is being read: this one queues to share a pass with it.
        let other = r.queue.announce();
        let rx = r.queue.submit(one(1.0)).unwrap();
        let late = other.submit(one(2.0)).unwrap();
        assert!(reply_within(rx, Duration::from_secs(30)).is_some());
        assert!(reply_within(late, Duration::from_secs(30)).is_some());
        assert_eq!(names(&r)[1..], [Some("inference".to_string())]);
        assert_eq!(batches(&r.metrics), (3.0, 2), "the two shared one pass");

        // The first caller after the shared pass queues for its company (and waits the
        // timeout out once); from then on a lone caller runs alone.
        let rx = r.queue.submit(one(2.5)).unwrap();
        assert!(reply_within(rx, Duration::from_secs(30)).is_some());

        // A lone caller holds the model in its own pass; one arriving meanwhile queues, and
        // the thread runs it once the model is free: nothing lost, nobody stuck.
        let queue = r.queue.clone();
        let holder = std::thread::Builder::new()
            .name("http-worker".into())
            .spawn(move || {
                let mut rx = queue.submit(one(-1.0)).unwrap();
                rx.try_recv().map(|r| r.unwrap())
            })
            .unwrap();
        r.entered.recv().unwrap();
        let queued = r.queue.submit(one(3.0)).unwrap();
        r.release.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), Ok(vec![serde_json::json!(-1.0)]));
        let got = reply_within(queued, Duration::from_secs(30)).unwrap();
        assert_eq!(got.unwrap(), vec![serde_json::json!(3.0)]);
        assert_eq!(
            names(&r)[2..],
            [
                Some("inference".to_string()),
                Some("http-worker".to_string()),
                Some("inference".to_string())
            ]
        );
        assert_eq!(r.metrics.in_flight.get(), 0);
    }

    #[test]
    fn callers_back_from_a_shared_batch_queue_to_batch_again() {
        let r = start_with(Duration::from_millis(50), Duration::from_secs(3600));
        let me = std::thread::current().name().map(str::to_string);
        let thread = Some("inference".to_string());
        // Measures the pass (the first goes through the thread).
        let rx = r.queue.submit(one(0.0)).unwrap();
        assert!(reply_within(rx, Duration::from_secs(30)).is_some());
        // Four callers in flight together share one pass.
        let others: Vec<Announced<'_>> = (0..3).map(|_| r.queue.announce()).collect();
        let mut rxs = vec![r.queue.submit(one(1.0)).unwrap()];
        for (i, a) in others.into_iter().enumerate() {
            rxs.push(a.submit(one(2.0 + i as f32)).unwrap());
        }
        for rx in rxs {
            assert!(reply_within(rx, Duration::from_secs(30)).is_some());
        }
        // The first back finds nobody in flight, but three were a moment ago: it queues for
        // them (and, as they never come here, waits out the timeout once).
        let rx = r.queue.submit(one(5.0)).unwrap();
        assert!(reply_within(rx, Duration::from_secs(30)).is_some());
        // Now a lone caller is really alone: it runs its own pass.
        let mut rx = r.queue.submit(one(6.0)).unwrap();
        assert_eq!(
            rx.try_recv().unwrap().unwrap(),
            vec![serde_json::json!(6.0)]
        );
        assert_eq!(
            names(&r),
            vec![thread.clone(), thread.clone(), thread, me],
            "passes: measure, shared, the first back, then alone"
        );
        assert_eq!(batches(&r.metrics), (7.0, 4));
    }
}

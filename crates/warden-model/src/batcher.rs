//! Dynamic batching: a bounded request queue drained by one dedicated inference thread that
//! runs a forward pass over up to `max_batch` samples or whatever arrived within
//! `batch_timeout` of the oldest request, then answers each waiter.

use super::metrics::ModelMetrics;
use super::models::Model;
use super::schema::Sample;
use super::{BatchConfig, ModelKind, ServingError};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
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

/// The batching rule, as plain data (no clock, no channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub timeout: Duration,
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
}

impl BatchQueue {
    /// Queues a request without blocking; the receiver resolves when its batch ran.
    pub fn submit(&self, samples: Vec<Sample>) -> Result<oneshot::Receiver<Reply>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            samples,
            enqueued: Instant::now(),
            reply,
        };
        // Count before sending so the thread's decrement can never run first.
        self.metrics.queue_depth.inc();
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
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
    let handle = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let model = match load_and_warm_up(&spec) {
                Ok(m) => m,
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                    return;
                }
            };
            ready.store(true, Ordering::SeqCst);
            thread_metrics.ready.set(1);
            let _ = loaded_tx.send(Ok(()));
            let policy = BatchPolicy {
                max_batch: spec.batch.max_batch.max(1),
                timeout: spec.batch.batch_timeout,
            };
            run_loop(model.as_ref(), &rx, policy, &thread_metrics);
            tracing::info!("inference queue drained; inference thread exiting");
        })
        .map_err(|source| ServingError::Io {
            context: "spawning the inference thread".into(),
            source,
        })?;
    Ok(InferenceThread {
        queue: BatchQueue { tx, metrics },
        loaded: loaded_rx,
        handle,
    })
}

fn load_and_warm_up(spec: &InferenceSpec) -> Result<Box<dyn Model>, ServingError> {
    let started = Instant::now();
    let model = spec.kind.load(&spec.weights, spec.device)?;
    let row_shape = spec.row_shape.clone().unwrap_or_default();
    if spec.kind != ModelKind::TorchScript || spec.row_shape.is_some() {
        let samples = spec
            .kind
            .warm_up_samples(&row_shape)
            .map_err(|e| ServingError::WarmUp(e.to_string()))?;
        let refs: Vec<&Sample> = samples.iter().collect();
        forward_guarded(model.as_ref(), &refs).map_err(|e| ServingError::WarmUp(e.message))?;
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
    model: &dyn Model,
    rx: &mpsc::Receiver<Job>,
    policy: BatchPolicy,
    metrics: &ModelMetrics,
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
        while !policy.full(rows) {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = if wait.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(wait)
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
                Err(_) => break,
            }
        }
        // A carried job stays counted: it is still waiting for its batch.
        metrics.queue_depth.sub(jobs.len() as i64);
        run_batch(model, jobs, metrics);
    }
}

fn run_batch(model: &dyn Model, jobs: Vec<Job>, metrics: &ModelMetrics) {
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
        metrics
            .inference_duration
            .observe(started.elapsed().as_secs_f64());
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
        run_batch(&Doubler, jobs, &metrics);
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
}

//! `warden bench telemetry`: the sampling loop's own cost with 8 fake GPUs and 5 models.
//!
//! Builds the fake NVML library from the test sources with gcc (a dev-tree benchmark), then
//! measures one sampling round, the loop's CPU % and peak RSS over a bounded period, and the
//! PutMetricData calls per host-hour the resulting series need at the default flush.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use warden::sinks::cloudwatch::request::{batches, datums_from_window};
use warden::telemetry::nvml::NvmlSamplerConfig;
use warden::telemetry::{MetricStore, ModelSample, ModelSource, SamplerConfig, Samplers};
use warden_testkit::nvml::FakeNvml;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Harness(#[from] warden_testkit::HarnessError),
}

/// Benchmark knobs (defaults: the 8 GPUs, 5 models, 1 s sampling, 60 s).
#[derive(Debug, Clone)]
pub struct TelemetryBench {
    pub gpus: usize,
    pub models: usize,
    pub interval: Duration,
    pub duration: Duration,
    pub flush_interval: Duration,
}

/// The fake NVML (the tests' library, through nvml-wrapper's real FFI path) with `gpus` busy
/// GPUs whose compute processes are `pids`.
fn build_fake(gpus: usize, pids: &[u32]) -> Result<FakeNvml, BenchError> {
    // Without model processes yet, the GPUs still show a compute process (pid 1).
    let pids = if pids.is_empty() { &[1][..] } else { pids };
    Ok(FakeNvml::try_new(&crate::agent::gpu_state(gpus, pids))?)
}

impl TelemetryBench {
    /// Runs the benchmark and returns the report text.
    pub async fn run(&self) -> Result<String, BenchError> {
        let state_dir = tempfile::tempdir()?;
        let dir = state_dir.path().to_path_buf();
        let me = std::process::id();
        let fake = build_fake(self.gpus, &[me])?;
        let cfg = SamplerConfig {
            sample_interval: self.interval,
            nvml: NvmlSamplerConfig {
                library: fake.lib_path().to_path_buf(),
                call_timeout: Duration::from_millis(500),
                init_timeout: warden::telemetry::nvml::DEFAULT_INIT_TIMEOUT,
                init_retry: Duration::from_secs(60),
            },
            state_dir: dir.clone(),
        };
        let names: Vec<String> = (0..self.models).map(|i| format!("model-{i}")).collect();
        let source: Arc<dyn ModelSource> = Arc::new(move || {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| ModelSample {
                    name: n.clone(),
                    // Nothing listens there: the scrape fails fast, as for a starting child.
                    port: 9 + i as u16,
                    pid: Some(me),
                    up: true,
                    restarts: 0,
                })
                .collect()
        });
        let store = Arc::new(MetricStore::new("bench-host", 300));
        let (events, _) = tokio::sync::broadcast::channel(64);
        let mut samplers = Samplers::new(&cfg, store.clone(), source, events);

        // Cost of one round, measured back to back after a warm-up (NVML init happens there).
        samplers.sample_once().await;
        let rounds = 50;
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            samplers.sample_once().await;
            times.push(t.elapsed());
        }
        times.sort();
        let median = times[rounds / 2];
        let p95 = times[rounds * 95 / 100];

        // The loop as it runs in the agent: sampling at the interval, plus gateway latencies.
        let (cpu0, _) = warden_testkit::rusage::self_usage();
        let wall0 = Instant::now();
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(samplers.run(self.interval, cancel.clone()));
        while wall0.elapsed() < self.duration {
            tokio::time::sleep(self.interval).await;
            for m in 0..self.models {
                store.record_request(
                    &format!("model-{m}"),
                    5.0 + m as f64,
                    true,
                    SystemTime::now(),
                );
            }
        }
        cancel.cancel();
        let _ = task.await;
        let (cpu1, peak_rss) = warden_testkit::rusage::self_usage();
        let wall = wall0.elapsed();
        let cpu_pct = (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64() * 100.0;

        let window = store.drain_window();
        let datums = datums_from_window(&window, SystemTime::now(), false);
        let calls_per_flush = batches(datums.clone(), SystemTime::now()).len();
        let flushes_per_hour = 3600.0 / self.flush_interval.as_secs_f64();

        let mut out = String::new();
        let _ = writeln!(
            out,
            "telemetry benchmark: {} fake GPUs, {} models, sampling every {:?}",
            self.gpus, self.models, self.interval
        );
        let _ = writeln!(
            out,
            "one sampling round: median {median:?}, p95 {p95:?} ({rounds} rounds)"
        );
        let _ = writeln!(
            out,
            "sampling loop over {:.1} s: CPU {cpu_pct:.3} % of one core (target <= 0.5 %), peak RSS {:.1} MiB (target <= 25 MiB, whole process)",
            wall.as_secs_f64(),
            peak_rss as f64 / (1 << 20) as f64
        );
        let _ = writeln!(
            out,
            "CloudWatch at flush {:?}: {} series, {} datums per flush, {} PutMetricData per flush, {:.0} calls per host-hour (target <= 60)",
            self.flush_interval,
            store.series_count(),
            datums.len(),
            calls_per_flush,
            calls_per_flush as f64 * flushes_per_hour
        );
        Ok(out)
    }
}

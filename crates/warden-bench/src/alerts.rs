//! `warden bench alerts`: alert latency from a GPU going hot to Slack receiving the POST.
//!
//! Real path in one process: fake NVML (built from the test sources with gcc, a dev-tree
//! benchmark) → NVML sampler at 1 s → metric store → alert engine (1 s evaluation) → Slack
//! channel (spool + worker) → a local webhook receiver. Each run rewrites the fake state from
//! util 10 to 95 and times until the "firing" POST arrives, then cools the GPU and waits for
//! "resolved" before the next run.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden::alerts::notify::{Channel, MessageContext, slack::SlackChannel};
use warden::alerts::{AlertsHandle, AlertsSettings, evaluator::Settings, rules};
use warden::config::Secret;
use warden::telemetry::nvml::NvmlSamplerConfig;
use warden::telemetry::{MetricStore, ModelSource, SamplerConfig, Samplers};
use warden_testkit::nvml::{FakeGpu, FakeNvml, FakeState};
use warden_testkit::slack::SlackReceiver;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Harness(#[from] warden_testkit::HarnessError),
    #[error("{0}")]
    Alerts(#[from] warden::alerts::AlertsError),
    #[error("rules: {0}")]
    Rules(#[from] warden::config::ConfigErrors),
    #[error("no Slack POST within {0:?}")]
    Timeout(Duration),
}

/// Benchmark knobs.
#[derive(Debug, Clone)]
pub struct AlertsBench {
    /// Runs with `for = "0s"`.
    pub runs: usize,
    /// Runs with the rule's default `for` (no `for` key: [`rules::DEFAULT_FOR`]).
    pub default_for_runs: usize,
    pub sample_interval: Duration,
}

/// One fake GPU at `util` % (the tests' fake NVML, through nvml-wrapper's real FFI path).
fn gpu_at(util: u32) -> FakeState {
    FakeState::with_gpus(vec![FakeGpu {
        util,
        temp: 50,
        ..FakeGpu::default()
    }])
}

/// Waits for the next webhook POST after the first `seen` that is (or is not) a resolve.
async fn next_post(
    slack: &SlackReceiver,
    seen: &mut usize,
    resolved: bool,
    timeout: Duration,
) -> Result<Instant, BenchError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let posts = slack.timed_posts();
        for (at, body) in &posts[(*seen).min(posts.len())..] {
            *seen += 1;
            if body.contains("[RESOLVED]") == resolved {
                return Ok(*at);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(BenchError::Timeout(timeout))
}

fn stats(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no runs".into();
    }
    v.sort();
    format!(
        "median {:.2} s, min {:.2} s, max {:.2} s ({} runs)",
        v[v.len() / 2].as_secs_f64(),
        v[0].as_secs_f64(),
        v[v.len() - 1].as_secs_f64(),
        v.len()
    )
}

impl AlertsBench {
    async fn measure(&self, for_line: &str, runs: usize) -> Result<Vec<Duration>, BenchError> {
        let state_dir = tempfile::tempdir()?;
        let dir = state_dir.path().to_path_buf();
        let fake = FakeNvml::try_new(&gpu_at(10))?;
        let rule = format!(
            "[[rule]]\nname = \"gpu-hot\"\nmetric = \"GPUUtilization\"\nreducer = \"last\"\nwindow = \"10s\"\nop = \">\"\nthreshold = 90\nclear_threshold = 85\n{for_line}\nseverity = \"warning\"\n"
        );
        let settings = AlertsSettings {
            rules: rules::parse(Path::new("bench.toml"), &rule)?,
            evaluation_interval: Duration::from_secs(1),
            evaluator: Settings {
                repeat_interval: Duration::from_secs(4 * 3600),
                resolved_retention: Duration::from_secs(60),
            },
            context: MessageContext {
                host: "bench-host".into(),
                runbook_url: "https://runbook.example/runbook.md".into(),
            },
        };
        let for_ = settings.rules[0].for_;
        let receiver = SlackReceiver::try_start()?;
        let mut seen = 0;
        let slack = SlackChannel::new(Secret::new(receiver.url()), None, settings.context.clone())
            .map_err(warden::alerts::AlertsError::from)?;
        let store = Arc::new(MetricStore::new("bench-host", 600));
        let (events, telemetry_rx) = tokio::sync::broadcast::channel(64);
        let (_sup, sup_rx) = tokio::sync::broadcast::channel(4);
        let cancel = tokio_util::sync::CancellationToken::new();
        let (_handle, tasks) = AlertsHandle::start_with(
            settings,
            &dir.join("alerts"),
            vec![Channel::Slack(slack)],
            store.clone(),
            sup_rx,
            telemetry_rx,
            warden::alerts::system_clock(),
            cancel.clone(),
        )?;
        let cfg = SamplerConfig {
            sample_interval: self.sample_interval,
            nvml: NvmlSamplerConfig {
                library: fake.lib_path().to_path_buf(),
                call_timeout: Duration::from_millis(500),
                init_timeout: warden::telemetry::nvml::DEFAULT_INIT_TIMEOUT,
                init_retry: Duration::from_secs(60),
            },
            state_dir: dir.clone(),
        };
        let no_models: Arc<dyn ModelSource> = Arc::new(Vec::new);
        let samplers = Samplers::new(&cfg, store, no_models, events);
        let sampling = tokio::spawn(samplers.run(self.sample_interval, cancel.clone()));
        // Let NVML initialise and a few cool samples land first.
        tokio::time::sleep(self.sample_interval * 3).await;
        let timeout = for_ + Duration::from_secs(60);
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            fake.try_set(&gpu_at(95))?;
            let hot = Instant::now();
            let fired = next_post(&receiver, &mut seen, false, timeout).await?;
            out.push(fired.duration_since(hot));
            fake.try_set(&gpu_at(10))?;
            next_post(&receiver, &mut seen, true, Duration::from_secs(60)).await?;
            // Runs start at varied points of the sampling cycle, as real breaches do.
            tokio::time::sleep(Duration::from_millis(1300)).await;
        }
        cancel.cancel();
        let _ = sampling.await;
        for t in tasks {
            let _ = t.await;
        }
        Ok(out)
    }

    /// Runs the benchmark and returns the report text.
    pub async fn run(&self) -> Result<String, BenchError> {
        let zero = self.measure("for = \"0s\"", self.runs).await?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "alert latency, fake NVML util 10 -> 95 until the Slack receiver has the POST (sampling {:?}, evaluation 1s)",
            self.sample_interval
        );
        let _ = writeln!(
            out,
            "for = \"0s\":            {} (target median <= 2 s)",
            stats(zero)
        );
        if self.default_for_runs > 0 {
            let default = self.measure("", self.default_for_runs).await?;
            let _ = writeln!(
                out,
                "default for ({:?}):     {}",
                rules::DEFAULT_FOR,
                stats(default)
            );
        }
        Ok(out)
    }
}

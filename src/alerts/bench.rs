//! `warden bench alerts`: alert latency from a GPU going hot to Slack receiving the POST.
//!
//! Real path in one process: fake NVML (built from the test sources with gcc, a dev-tree
//! benchmark) → NVML sampler at 1 s → metric store → alert engine (1 s evaluation) → Slack
//! channel (spool + worker) → a local webhook receiver. Each run rewrites the fake state from
//! util 10 to 95 and times until the "firing" POST arrives, then cools the GPU and waits for
//! "resolved" before the next run.

use super::notify::{Channel, MessageContext, slack::SlackChannel};
use super::{AlertsHandle, AlertsSettings, evaluator::Settings, rules};
use crate::config::Secret;
use crate::telemetry::nvml::NvmlSamplerConfig;
use crate::telemetry::{MetricStore, ModelSource, SamplerConfig, Samplers};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("gcc failed to build the fake NVML library (is gcc installed?)")]
    Gcc,
    #[error("{0}")]
    Alerts(#[from] super::AlertsError),
    #[error("rules: {0}")]
    Rules(#[from] crate::config::ConfigErrors),
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

fn build_fake(dir: &Path) -> Result<PathBuf, BenchError> {
    let lib = crate::telemetry::bench::compile_fake_nvml(dir)?.ok_or(BenchError::Gcc)?;
    set_util(dir, 10)?;
    Ok(lib)
}

/// Rewrites the fake's state atomically (temp + rename), as the tests do.
fn set_util(dir: &Path, util: u32) -> Result<(), BenchError> {
    let tmp = dir.join("fake_nvml.state.tmp");
    std::fs::write(&tmp, format!("count=1\ngpu0.util={util}\ngpu0.temp=50\n"))?;
    std::fs::rename(&tmp, dir.join("fake_nvml.state"))?;
    Ok(())
}

/// A webhook receiver that reports each POST's arrival and whether it was a resolve.
async fn receiver() -> Result<(String, mpsc::UnboundedReceiver<(Instant, bool)>), BenchError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let tx = tx.clone();
        async move {
            let resolved = String::from_utf8_lossy(&body).contains("[RESOLVED]");
            let _ = tx.send((Instant::now(), resolved));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/services/bench", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, rx))
}

async fn next_post(
    rx: &mut mpsc::UnboundedReceiver<(Instant, bool)>,
    resolved: bool,
    timeout: Duration,
) -> Result<Instant, BenchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, r))) if r == resolved => return Ok(at),
            Ok(Some(_)) => continue,
            _ => return Err(BenchError::Timeout(timeout)),
        }
    }
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
        let dir =
            std::env::temp_dir().join(format!("warden-bench-alerts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let lib = build_fake(&dir)?;
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
        let (url, mut posts) = receiver().await?;
        let slack = SlackChannel::new(Secret::new(url), None, settings.context.clone())
            .map_err(super::AlertsError::from)?;
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
            super::system_clock(),
            cancel.clone(),
        )?;
        let cfg = SamplerConfig {
            sample_interval: self.sample_interval,
            nvml: NvmlSamplerConfig {
                library: lib,
                call_timeout: Duration::from_millis(500),
                init_timeout: crate::telemetry::nvml::DEFAULT_INIT_TIMEOUT,
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
            set_util(&dir, 95)?;
            let hot = Instant::now();
            let fired = next_post(&mut posts, false, timeout).await?;
            out.push(fired.duration_since(hot));
            set_util(&dir, 10)?;
            next_post(&mut posts, true, Duration::from_secs(60)).await?;
            // Runs start at varied points of the sampling cycle, as real breaches do.
            tokio::time::sleep(Duration::from_millis(1300)).await;
        }
        cancel.cancel();
        let _ = sampling.await;
        for t in tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_dir_all(&dir);
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

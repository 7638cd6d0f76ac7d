//! Telemetry: samplers (NVML, host, models) that feed the metric store, and their events.

pub mod catalog;
pub mod drops;
pub mod host;
pub mod models;
pub mod nvml;
pub mod store;

pub use catalog::{CATALOG, Dim, Kind, MetricDef, Unit};
pub use models::{ModelSample, ModelSource, ProcessStat};
pub use store::{MetricStore, RequestSeries, SeriesKey};

/// Something on-call should hear about now, not at the next flush (alerts subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelemetryEvent {
    /// NVML could not initialise (driver missing or broken); retried periodically.
    NvmlUnavailable { reason: String },
    /// NVML initialised (at start or after being unavailable).
    NvmlAvailable { gpus: u32 },
    /// A GPU fell off the bus; the other GPUs keep being sampled.
    GpuLost { gpu: u32 },
    /// A lost GPU answers again.
    GpuRecovered { gpu: u32 },
    /// The driver reported an XID error.
    Xid { gpu: u32, code: u64 },
    /// A sink's AWS call was refused for lack of permission or with rejected credentials
    /// (AccessDenied, UnrecognizedClient, expired token). Its data waits and is retried.
    AwsAccessDenied {
        /// `cloudwatch`, `logs`, `sns` (see `drops::sink`).
        sink: String,
        /// The refused operation, e.g. `PutLogEvents`.
        operation: String,
        /// The IAM permission it needs, e.g. `logs:PutLogEvents`.
        permission: String,
        /// The service's error code and message.
        error: String,
    },
    /// The sink's calls succeed again.
    AwsAccessRestored { sink: String },
}

use crate::config::Config;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Everything the sampling loop needs, usually from [`SamplerConfig::from_config`].
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub sample_interval: Duration,
    pub nvml: nvml::NvmlSamplerConfig,
    pub state_dir: PathBuf,
}

impl SamplerConfig {
    /// `agent.sample_interval`, `gpu.*`, `agent.state_dir`; NVML init retried every minute.
    pub fn from_config(cfg: &Config) -> Self {
        SamplerConfig {
            sample_interval: cfg.agent.sample_interval,
            nvml: nvml::NvmlSamplerConfig {
                library: cfg.gpu.nvml_library.clone(),
                call_timeout: cfg.gpu.call_timeout,
                init_timeout: cfg.gpu.init_timeout,
                init_retry: Duration::from_secs(60),
            },
            state_dir: cfg.state_dir(),
        }
    }
}

/// The samplers of one host, run together once per round.
pub struct Samplers {
    pub nvml: nvml::NvmlSampler,
    pub host: Option<host::HostSampler>,
    pub models: models::ModelSampler,
    store: Arc<MetricStore>,
}

impl Samplers {
    pub fn new(
        cfg: &SamplerConfig,
        store: Arc<MetricStore>,
        source: Arc<dyn ModelSource>,
        events: broadcast::Sender<TelemetryEvent>,
    ) -> Self {
        let nvml = nvml::NvmlSampler::new(cfg.nvml.clone(), store.clone(), events);
        let host = host::HostSampler::new(cfg.state_dir.clone())
            .map_err(|e| tracing::warn!(error = %e, "host metrics disabled"))
            .ok();
        // A child's /metrics must answer well within a round.
        let scrape_timeout = (cfg.sample_interval / 2).max(Duration::from_millis(100));
        let models = models::ModelSampler::new(source, nvml.process_memory(), scrape_timeout);
        Samplers {
            nvml,
            host,
            models,
            store,
        }
    }

    /// One round of every sampler (NVML first, so model GPU memory uses this round's list).
    pub async fn sample_once(&mut self) {
        self.nvml.sample(Instant::now()).await;
        if let Some(h) = &mut self.host {
            h.sample(&self.store, std::time::SystemTime::now());
        }
        self.models.sample(&self.store).await;
    }

    /// Samples every `interval` until cancelled.
    pub async fn run(mut self, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.sample_once().await,
            }
        }
    }
}

/// Starts the sampling loop on the current runtime; events go to `events`.
pub fn spawn_samplers(
    cfg: SamplerConfig,
    store: Arc<MetricStore>,
    source: Arc<dyn ModelSource>,
    events: broadcast::Sender<TelemetryEvent>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let samplers = Samplers::new(&cfg, store, source, events);
    tokio::spawn(samplers.run(cfg.sample_interval, cancel))
}

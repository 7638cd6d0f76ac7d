//! CloudWatch metrics sink settings, derived from `[cloudwatch]` and `[agent]`.

use super::retry::Backoff;
use crate::config::Config;
use std::path::PathBuf;
use std::time::Duration;

/// CloudWatch rejects datums older than two weeks; keep an hour of margin.
pub const MAX_DATUM_AGE: Duration = Duration::from_secs(14 * 24 * 3600 - 3600);

#[derive(Debug, Clone)]
pub struct CloudWatchSinkConfig {
    pub namespace: String,
    pub flush_interval: Duration,
    /// Flush interval is scaled by a random factor in 1 ± this, so hosts do not flush in step.
    pub jitter: f64,
    pub high_resolution: bool,
    pub spool_dir: PathBuf,
    pub max_spool_bytes: u64,
    pub backoff: Backoff,
    pub max_age: Duration,
    /// At shutdown: the one last delivery attempt takes at most this long (the rest stays
    /// spooled for the next run), so the agent exits inside systemd's stop timeout.
    pub shutdown_grace: Duration,
    /// With a group, the scaling metrics are also sent aggregated under `AutoScalingGroupName`.
    pub autoscaling_group: Option<String>,
}

impl CloudWatchSinkConfig {
    pub fn from_config(cfg: &Config) -> Self {
        CloudWatchSinkConfig {
            namespace: cfg.cloudwatch.namespace.clone(),
            flush_interval: cfg.cloudwatch.flush_interval,
            jitter: 0.1,
            high_resolution: cfg.cloudwatch.high_resolution,
            spool_dir: cfg.state_dir().join("spool").join("cloudwatch-metrics"),
            max_spool_bytes: cfg.cloudwatch.max_spool_bytes,
            backoff: Backoff::default(),
            max_age: MAX_DATUM_AGE,
            shutdown_grace: cfg.aws.operation_timeout.min(Duration::from_secs(5)),
            autoscaling_group: cfg.agent.autoscaling_group.clone(),
        }
    }
}

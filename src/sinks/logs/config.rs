//! CloudWatch Logs sink settings, derived from `[logs]` and `[agent]`.

use super::request::AgeWindow;
use super::retry::Backoff;
use crate::config::Config;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct LogsSinkConfig {
    /// `<prefix><model>` is a model's group.
    pub model_group_prefix: String,
    pub api_group: String,
    /// The agent's own tracing output, when shipped.
    pub agent_group: Option<String>,
    /// Stream name in every group: the host id.
    pub stream: String,
    pub retention_days: u32,
    pub flush_interval: Duration,
    /// Parent of the per-group spools.
    pub spool_dir: PathBuf,
    /// Byte bound of each group's spool.
    pub max_spool_bytes_per_group: u64,
    pub backoff: Backoff,
    pub age_window: AgeWindow,
    /// Longest a final flush may take at shutdown (what is left stays spooled).
    pub shutdown_grace: Duration,
}

impl LogsSinkConfig {
    /// The bound `logs.max_spool_bytes` is shared by the groups the config names (each model,
    /// the API, the agent), so the total stays within it; later groups get the same share.
    pub fn from_config(cfg: &Config) -> Self {
        let groups =
            cfg.effective_models().len() as u64 + 1 + cfg.logs.agent_group.is_some() as u64;
        LogsSinkConfig {
            model_group_prefix: cfg.logs.model_group_prefix.clone(),
            api_group: cfg.logs.api_group.clone(),
            agent_group: cfg.logs.agent_group.clone(),
            stream: cfg.agent.host_id(),
            retention_days: cfg.logs.retention_days,
            flush_interval: cfg.logs.flush_interval,
            spool_dir: cfg.state_dir().join("spool").join("logs"),
            max_spool_bytes_per_group: (cfg.logs.max_spool_bytes / groups.max(1)).max(64 << 10),
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(10),
                attempts: 1,
            },
            age_window: AgeWindow::default(),
            shutdown_grace: Duration::from_secs(3),
        }
    }

    pub fn model_group(&self, model: &str) -> String {
        format!("{}{model}", self.model_group_prefix)
    }
}

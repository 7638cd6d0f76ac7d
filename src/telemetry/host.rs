//! Host sampling: CPU %, memory %, load and free disk of the state dir, refreshing only those.

use super::store::MetricStore;
use std::path::PathBuf;
use std::time::SystemTime;
use sysinfo::System;

/// Keeps the sysinfo handle between rounds (CPU % is a difference between two refreshes).
pub struct HostSampler {
    sys: System,
    state_dir: PathBuf,
}

/// Problems opening the host's system information.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read system information: {0}")]
    Sysinfo(String),
}

impl HostSampler {
    pub fn new(state_dir: PathBuf) -> Result<Self, HostError> {
        let sys = System::new().map_err(|e| HostError::Sysinfo(e.to_string()))?;
        Ok(HostSampler { sys, state_dir })
    }

    /// One round into the store.
    pub fn sample(&mut self, store: &MetricStore, at: SystemTime) {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        store.set_gauge(
            "HostCPUUtilization",
            &[],
            f64::from(self.sys.global_cpu_usage()),
            at,
        );
        let total = self.sys.total_memory();
        if total > 0 {
            let pct = self.sys.used_memory() as f64 * 100.0 / total as f64;
            store.set_gauge("HostMemoryUtilization", &[], pct, at);
        }
        if let Ok(load) = System::load_average() {
            store.set_gauge("HostLoad1", &[], load.one, at);
        }
        // statvfs on the state dir: what the spools will actually fill.
        match nix::sys::statvfs::statvfs(&self.state_dir) {
            Ok(v) => {
                let free = v.blocks_available() as f64 * v.fragment_size() as f64;
                store.set_gauge("HostDiskFree", &[], free, at);
                // The alert threshold is a share: a byte figure suits no disk size.
                let size = v.blocks() as f64 * v.fragment_size() as f64;
                if size > 0.0 {
                    store.set_gauge("HostDiskFreePercent", &[], free * 100.0 / size, at);
                }
            }
            Err(e) => {
                tracing::debug!(dir = %self.state_dir.display(), error = %e, "statvfs failed")
            }
        }
    }
}

//! CPU % and RSS of the model processes, refreshing only the children's pids.

use std::collections::HashMap;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// A sampler kept across refreshes (CPU % needs two samples).
pub struct ProcessStats {
    system: Option<System>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    pub cpu_percent: f32,
    pub rss_bytes: u64,
}

impl ProcessStats {
    pub fn new() -> Self {
        ProcessStats {
            system: System::new().ok(),
        }
    }

    /// Refreshes `pids` and returns their samples (dead pids are dropped).
    pub fn refresh(&mut self, pids: &[u32]) -> HashMap<u32, ProcessSample> {
        let Some(system) = self.system.as_mut() else {
            return HashMap::new();
        };
        let wanted: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&wanted),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        pids.iter()
            .filter_map(|pid| {
                system.process(Pid::from_u32(*pid)).map(|p| {
                    (
                        *pid,
                        ProcessSample {
                            cpu_percent: p.cpu_usage(),
                            rss_bytes: p.memory(),
                        },
                    )
                })
            })
            .collect()
    }
}

impl Default for ProcessStats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_our_own_process_and_skips_dead_pids() {
        let mut s = ProcessStats::new();
        let me = std::process::id();
        let got = s.refresh(&[me, u32::MAX - 1]);
        assert!(got.get(&me).is_some_and(|p| p.rss_bytes > 0), "{got:?}");
        assert!(!got.contains_key(&(u32::MAX - 1)));
    }
}

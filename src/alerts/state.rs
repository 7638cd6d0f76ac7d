//! Alert state on disk (`<state_dir>/alerts/state.json`): instances with their episode start
//! times (so dedupe keys survive restarts and a restart while firing sends no second
//! "firing"), silences, and the event conditions last seen.

use super::AlertsError;
use super::evaluator::{Evaluator, Labels, Silence};
use super::rules::EventSource;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An event rule's input: e.g. "model m is down", remembered until the matching "up".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventCondition {
    pub source: EventSource,
    pub labels: Labels,
    pub active: bool,
    /// When the event last happened (point events like XIDs resolve after a quiet time).
    pub last_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    #[serde(default)]
    pub evaluator: Evaluator,
    #[serde(default)]
    pub silences: Vec<Silence>,
    #[serde(default)]
    pub events: Vec<EventCondition>,
}

/// Reads and writes the state file atomically (temp + rename + fsync).
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Self {
        StateFile {
            path: state_dir.join("alerts").join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; a missing file is a fresh start, a corrupt one is logged and set aside.
    pub fn load(&self) -> PersistedState {
        match std::fs::read(&self.path) {
            Err(_) => PersistedState::default(),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    let aside = self.path.with_extension("json.corrupt");
                    tracing::error!(error = %e, file = %self.path.display(),
                        "alert state unreadable; starting fresh (old file kept as .corrupt)");
                    let _ = std::fs::rename(&self.path, aside);
                    PersistedState::default()
                }
            },
        }
    }

    pub fn save(&self, state: &PersistedState) -> Result<(), AlertsError> {
        let io = |source| AlertsError::Io {
            what: format!("saving alert state {}", self.path.display()),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(state).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sets_a_corrupt_file_aside() {
        let dir = std::env::temp_dir().join(format!("warden-alert-state-{}", uuid::Uuid::new_v4()));
        let file = StateFile::new(&dir);
        assert_eq!(
            file.load(),
            PersistedState::default(),
            "missing file: fresh start"
        );
        let mut state = PersistedState::default();
        state.silences.push(Silence {
            id: "s".into(),
            matchers: [("GPU".to_string(), "0".to_string())].into(),
            expires_ms: 42,
            creator: "ops".into(),
            comment: String::new(),
        });
        state.events.push(EventCondition {
            source: EventSource::GpuLost,
            labels: [("GPU".to_string(), "1".to_string())].into(),
            active: true,
            last_ms: 7,
        });
        file.save(&state).unwrap();
        assert_eq!(file.load(), state);
        std::fs::write(file.path(), b"{not json").unwrap();
        assert_eq!(file.load(), PersistedState::default());
        assert!(file.path().with_extension("json.corrupt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Error budgets on disk (`<state_dir>/slo/budgets.json`), so a restart neither resets nor
//! double-counts them.
//!
//! Per objective (keyed `model/name`): its [`Ledger`] and the counter totals last folded
//! into it, stamped with the id of the process that read them. The totals are the agent's
//! own in-memory counters, so a file from another process means counting restarts from
//! zero; a file from this process (the engine rebuilt) continues from the stored totals.
//! Written whole: temp file, fsync, rename, fsync of the directory — on a blocking thread.
//! An unreadable file is set aside as `.corrupt` and budgets start fresh (logged).

use super::budget::Ledger;
use crate::alerts::durable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

/// The counter totals an objective's ledger already holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumed {
    pub good: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveState {
    pub consumed: Consumed,
    pub ledger: Ledger,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SloState {
    pub version: u32,
    /// The process whose counters `consumed` refers to.
    pub process: String,
    /// When it was written (ms since the epoch).
    pub saved_ms: u64,
    pub objectives: BTreeMap<String, ObjectiveState>,
}

pub struct SloFile {
    path: PathBuf,
}

impl SloFile {
    /// The file under `state_dir` (the agent's `state_dir`).
    pub fn new(state_dir: &Path) -> Self {
        SloFile {
            path: state_dir.join("slo").join("budgets.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocking. A missing file is a fresh start; an unreadable one or one of another format
    /// version is logged and set aside.
    pub fn load(&self) -> SloState {
        let state: SloState = durable::read_json(&self.path, "SLO budgets");
        if state.version == FORMAT_VERSION || state == SloState::default() {
            return state;
        }
        tracing::error!(version = state.version, file = %self.path.display(),
            "SLO budgets written by an unknown format version; starting fresh");
        durable::set_aside(&self.path);
        SloState::default()
    }

    /// Blocking: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, state: &SloState) -> std::io::Result<()> {
        durable::write_json(&self.path, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sets_a_corrupt_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = SloFile::new(dir.path());
        assert_eq!(file.load(), SloState::default());
        let mut state = SloState {
            version: FORMAT_VERSION,
            process: "p".into(),
            saved_ms: 5,
            objectives: BTreeMap::new(),
        };
        let mut o = ObjectiveState::default();
        o.ledger.add(60_000, 9, 10);
        o.consumed = Consumed { good: 9, total: 10 };
        state.objectives.insert("m/availability".into(), o);
        file.save(&state).unwrap();
        assert_eq!(file.load(), state);
        std::fs::write(file.path(), b"{not json").unwrap();
        assert_eq!(file.load(), SloState::default());
        assert!(file.path().with_extension("json.corrupt").exists());
    }
}

//! Alert state on disk (`<state_dir>/alerts/state.json`): instances with their episode start
//! times (so dedupe keys survive restarts and a restart while firing sends no second
//! "firing"), silences, and the event conditions last seen.

use super::AlertsError;
use super::evaluator::{Evaluator, Labels, Notification, Silence};
use super::rules::EventSource;
use serde::{Deserialize, Serialize};
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
    /// Notifications a channel's outbox could not take yet (disk full, I/O error): still due,
    /// retried at each evaluation, oldest first.
    #[serde(default)]
    pub unsent: Vec<Unsent>,
}

/// A notification not yet in one channel's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsent {
    /// The outbox's channel name (`sns`, `slack`).
    pub channel: String,
    pub notification: Notification,
    /// Enqueue attempts that failed so far.
    pub attempts: u32,
    pub first_failed_ms: u64,
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
        super::durable::read_json(&self.path, "alert state")
    }

    pub fn save(&self, state: &PersistedState) -> Result<(), AlertsError> {
        let io = |source| AlertsError::Io {
            what: format!("saving alert state {}", self.path.display()),
            source,
        };
        super::durable::write_json(&self.path, state).map_err(io)
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

    fn instance(value: f64, threshold: f64) -> crate::alerts::evaluator::AlertInstance {
        use crate::alerts::evaluator::{AlertInstance, AlertState};
        AlertInstance {
            id: "a".into(),
            rule: "r".into(),
            severity: crate::alerts::rules::Severity::Warning,
            labels: Labels::new(),
            state: AlertState::Firing,
            value,
            threshold,
            pending_since_ms: 1,
            firing_since_ms: Some(2),
            resolved_at_ms: None,
            last_notified_ms: Some(2),
            summary: "s".into(),
            acked_by: None,
        }
    }

    #[test]
    fn nan_and_infinite_values_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let mut state = PersistedState::default();
        for (id, v, t) in [
            ("nan", f64::NAN, 1.0),
            ("inf", f64::INFINITY, f64::NEG_INFINITY),
            ("ok", 2.5, 90.0),
        ] {
            let mut i = instance(v, t);
            i.id = id.into();
            state.evaluator.instances.insert(id.into(), i);
        }
        file.save(&state).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            text.contains("\"NaN\"") && text.contains("\"-inf\""),
            "{text}"
        );
        let loaded = file.load();
        let got = |id: &str| {
            let i = &loaded.evaluator.instances[id];
            (i.value, i.threshold)
        };
        assert!(got("nan").0.is_nan());
        assert_eq!(got("nan").1, 1.0);
        assert_eq!(got("inf"), (f64::INFINITY, f64::NEG_INFINITY));
        assert_eq!(got("ok"), (2.5, 90.0));
        assert!(!file.path().with_extension("json.corrupt").exists());
    }

    #[test]
    fn old_files_with_null_values_load() {
        // What serde_json wrote for NaN/Inf before: `null`, which an f64 field rejected.
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let mut state = PersistedState::default();
        state
            .evaluator
            .instances
            .insert("a".into(), instance(3.0, 4.0));
        let mut json = serde_json::to_value(&state).unwrap();
        json["evaluator"]["instances"]["a"]["value"] = serde_json::Value::Null;
        json["evaluator"]["instances"]["a"]["threshold"] = serde_json::Value::Null;
        std::fs::create_dir_all(file.path().parent().unwrap()).unwrap();
        std::fs::write(file.path(), serde_json::to_vec(&json).unwrap()).unwrap();
        let loaded = file.load();
        let i = &loaded.evaluator.instances["a"];
        assert!(i.value.is_nan() && i.threshold.is_nan(), "{i:?}");
        assert_eq!(
            i.last_notified_ms,
            Some(2),
            "the rest of the alert survives"
        );
        assert!(!file.path().with_extension("json.corrupt").exists());
    }

    #[test]
    fn unsent_notifications_are_part_of_the_state() {
        use crate::alerts::evaluator::{Notification, NotificationKind};
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let mut state = PersistedState::default();
        state.unsent.push(Unsent {
            channel: "slack".into(),
            notification: Notification {
                kind: NotificationKind::Firing,
                dedupe_key: "k".into(),
                alert_id: "a".into(),
                rule: "r".into(),
                severity: crate::alerts::rules::Severity::Critical,
                labels: Labels::new(),
                value: f64::NAN,
                op: ">".into(),
                threshold: 1.0,
                since_ms: 1,
                at_ms: 1,
                summary: "s".into(),
                description: String::new(),
            },
            attempts: 3,
            first_failed_ms: 1,
        });
        file.save(&state).unwrap();
        let loaded = file.load();
        assert_eq!(loaded.unsent.len(), 1);
        assert_eq!(loaded.unsent[0].attempts, 3);
        assert!(loaded.unsent[0].notification.value.is_nan());
    }
}

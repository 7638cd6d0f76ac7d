//! The supervisor's public vocabulary: states, status rows, events and log lines, plain data
//! shared by the control socket, the API, the console, alerts and the log shipper.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a model process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelState {
    Starting,
    Ready,
    Unhealthy,
    Stopping,
    Stopped,
    Backoff,
    CrashLoop,
}

impl ModelState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelState::Starting => "starting",
            ModelState::Ready => "ready",
            ModelState::Unhealthy => "unhealthy",
            ModelState::Stopping => "stopping",
            ModelState::Stopped => "stopped",
            ModelState::Backoff => "backoff",
            ModelState::CrashLoop => "crash-loop",
        }
    }
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a child ended: an exit code or the signal that killed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
    /// The program could not be started at all.
    SpawnFailed(String),
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exit code {c}"),
            ExitInfo::Signal(s) => write!(f, "killed by signal {s}"),
            ExitInfo::SpawnFailed(e) => write!(f, "spawn failed: {e}"),
        }
    }
}

/// One model's row in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub state: ModelState,
    /// Seconds since the current process was spawned (0 when none runs).
    pub uptime_secs: f64,
    /// Times the model was respawned (crashes, health kills, operator restarts).
    pub restarts: u64,
    pub last_exit: Option<ExitInfo>,
    /// Of one core, like `top` (may exceed 100 with several threads).
    pub cpu_percent: Option<f32>,
    pub rss_bytes: Option<u64>,
}

/// Milliseconds since the Unix epoch: how events and log lines carry time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Something that happened to a model; the alerts module turns `CrashLoop` and `ModelDown`
/// into critical alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorEvent {
    pub at_ms: u64,
    pub model: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EventKind {
    /// `delay_ms` is set for `backoff` and `crash-loop`: the wait before the next spawn.
    StateChanged {
        from: ModelState,
        to: ModelState,
        pid: Option<u32>,
        delay_ms: Option<u64>,
    },
    /// A child ended (expected or not).
    Exited {
        pid: u32,
        exit: ExitInfo,
        expected: bool,
    },
    /// `exits` unexpected exits within `window_ms`: retrying at the max delay from now on.
    CrashLoop { exits: u32, window_ms: u64 },
    /// A model that was ready stopped serving without being asked to.
    ModelDown { reason: String },
    /// A model became ready (after starting or recovering).
    ModelUp { pid: Option<u32> },
    /// The model was removed from the configuration.
    Removed,
    /// Self-healing restarted the model on its own (`supervisor::healing`); `reason` says
    /// which bound it passed.
    AutoRestart { reason: String },
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line a model printed, as captured by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub model: String,
    pub stream: LogStream,
    /// Milliseconds since the Unix epoch, when the agent read the line.
    pub timestamp_ms: u64,
    pub line: String,
}

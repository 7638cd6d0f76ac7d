//! The harness warden's integration tests and benchmarks share: ports and bounded waits (`net`),
//! process CPU/RSS (`rusage`), latency statistics (`stats`), the AWS emulator (`moto`), the fake
//! NVML library (`nvml`) and a Slack webhook receiver (`slack`). Everything listens on
//! 127.0.0.1 only.
//!
//! Tests call the panicking conveniences (`Moto::start`, `nvml::build_library`); benchmarks
//! call the `try_` forms and report the error.

pub mod moto;
pub mod net;
pub mod nvml;
pub mod rusage;
pub mod slack;
pub mod stats;

use std::path::PathBuf;

/// Why a peer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Peer(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// The repository root (where `.deps/` and `target/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

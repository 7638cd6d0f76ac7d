//! Real local peers for the integration tests: the AWS emulator (moto), a Slack webhook
//! receiver, and helpers for ports and deadlines. Every peer listens on 127.0.0.1 only.
#![allow(dead_code)] // each test binary uses a different subset

pub mod moto;
pub mod net;
pub mod nvml;
pub mod slack;

use std::path::PathBuf;

/// The repository root (tests run with the package dir as cwd, but be explicit).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `warden` binary built for this test run.
pub fn warden_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

//! Real local peers for the integration tests. The harness shared with the benchmarks (ports,
//! waits, moto, the fake NVML, the Slack receiver) is the `warden-testkit` crate, re-exported
//! here; what only tests need (the `TestAgent` builder, the fault proxy) lives beside it.
//! Every peer listens on 127.0.0.1 only.

pub mod agent;
pub mod fault;
pub mod proxy;
pub mod tmpfs;
pub use warden_testkit::{moto, net, nvml, slack};

use std::path::PathBuf;

/// The repository root (tests run with the package dir as cwd, but be explicit).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `warden` binary built for this test run.
pub fn warden_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

/// A `[[models]]` entry running `tests/support/fake_model.py` (a stdlib stand-in for
/// `warden serve-model`) through the `command` override, with short health checks; `keys` are
/// extra `[[models]]` lines.
pub fn fake_model(name: &str, port: u16, extra_args: &[&str], keys: &str) -> String {
    let script = repo_root().join("tests/integration/support/fake_model.py");
    let mut argv = vec![
        "python3".to_string(),
        script.display().to_string(),
        "--port".into(),
        port.to_string(),
        "--name".into(),
        name.into(),
    ];
    argv.extend(extra_args.iter().map(|s| s.to_string()));
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[models]]\nname = \"{name}\"\nport = {port}\ncommand = [{}]\nhealth_interval = \"200ms\"\nstop_timeout = \"5s\"\n{keys}\n",
        argv.join(", ")
    )
}

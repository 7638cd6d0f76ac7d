//! `warden check-config`: valid files pass, invalid ones print `file:line:col: message`, exit 2.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (i32, String) {
    let out = Command::new(crate::support::warden_bin())
        .arg("check-config")
        .arg(path)
        .env_remove("WARDEN_SLACK_WEBHOOK_URL")
        .output()
        .expect("run warden check-config");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn check_text(text: &str) -> (i32, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out) = check(&path);
    (code, out, path, dir)
}

/// Each invalid config, the `line:col` it must point at, and a fragment of the message.
const INVALID: &[(&str, &str, (usize, usize), &str)] = &[
    (
        "zero repeat_interval",
        "[alerts]\nrepeat_interval = \"0s\"\n",
        (2, 19),
        "repeat_interval must be more than 0s",
    ),
    (
        "repeat_interval shorter than an evaluation",
        "[alerts]\nevaluation_interval = \"10s\"\nrepeat_interval = \"5s\"\n",
        (3, 19),
        "at least evaluation_interval",
    ),
    (
        "zero evaluation_interval",
        "[alerts]\nevaluation_interval = \"0s\"\n",
        (2, 23),
        "evaluation_interval must be at least 100ms",
    ),
    (
        "unknown key",
        "[agent]\nlisten = \"127.0.0.1:8000\"\nlisen = 1\n",
        (3, 1),
        "lisen",
    ),
    (
        "unknown section",
        "[agnet]\nhost_id = \"a\"\n",
        (1, 2),
        "agnet",
    ),
    ("syntax error", "[agent\nhost_id = \"a\"\n", (1, 7), ""),
    ("wrong type", "[agent]\nsample_interval = 5\n", (2, 19), ""),
    (
        "bad duration",
        "[agent]\nsample_interval = \"5 parsecs\"\n",
        (2, 19),
        "duration",
    ),
    (
        "bad listen address",
        "[agent]\nlisten = \"not-an-address\"\n",
        (2, 10),
        "",
    ),
    (
        "duplicate model name",
        "[[models]]\nname = \"clash-detector\"\nport = 9001\n[[models]]\nname = \"clash-detector\"\nport = 9002\n",
        (5, 8),
        "duplicate model name",
    ),
    (
        "duplicate port",
        "[[models]]\nname = \"clash-detector\"\nport = 9001\n[[models]]\nname = \"risk-analyzer\"\nport = 9001\n",
        (6, 8),
        "duplicate port",
    ),
    (
        "max_batch out of range",
        "[[models]]\nname = \"risk-analyzer\"\nport = 9001\nmax_batch = 0\n",
        (4, 13),
        "max_batch",
    ),
    (
        "missing weights file",
        "[[models]]\nname = \"risk-analyzer\"\nport = 9001\nweights = \"nope/model.pt\"\n",
        (4, 11),
        "does not exist",
    ),
    (
        "missing rules file",
        "[alerts]\nrules = [\"missing.toml\"]\n",
        (2, 10),
        "does not exist",
    ),
    (
        "bad retention",
        "[logs]\nretention_days = 42\n",
        (2, 18),
        "retention_days",
    ),
    (
        "bad SNS ARN",
        "[notify.sns]\ncritical_topic_arn = \"topic\"\n",
        (2, 22),
        "ARN",
    ),
    (
        "unknown device",
        "[[models]]\nname = \"risk-analyzer\"\nport = 9001\ndevice = \"tpu\"\n",
        (4, 10),
        "tpu",
    ),
    (
        "model port is the API port",
        "[[models]]\nname = \"risk-analyzer\"\nport = 8000\n",
        (3, 8),
        "API",
    ),
    (
        "auth with no keys",
        "[auth]\nenabled = true\n",
        (2, 11),
        "jwt_public_key",
    ),
    (
        "unknown model without weights",
        "[[models]]\nname = \"my-model\"\nport = 9001\n",
        (2, 8),
        "built-in",
    ),
];

#[test]
fn invalid_configs_are_located_and_exit_2() {
    for (what, text, (line, col), fragment) in INVALID {
        let (code, out, path, _dir) = check_text(text);
        assert_eq!(code, 2, "{what}: expected exit 2, got {code}: {out}");
        let prefix = format!("{}:{line}:{col}: ", path.display());
        assert!(
            out.starts_with(&prefix),
            "{what}: expected {prefix:?}, got {out:?}"
        );
        assert!(
            out.contains(fragment),
            "{what}: expected {fragment:?} in {out:?}"
        );
    }
}

#[test]
fn shipped_and_example_configs_pass() {
    let root = crate::support::repo_root();
    let (code, out) = check(&root.join("config/warden.toml"));
    assert_eq!(code, 0, "config/warden.toml: {out}");
    let (code, out, _, _dir) = check_text("");
    assert_eq!(code, 0, "empty file: {out}");
    let full = r#"
[agent]
host_id = "gpu-host-1"
listen = "127.0.0.1:8100"
sample_interval = "500ms"
[[models]]
name = "connection-designer"
port = 8101
max_batch = 16
batch_timeout = "3ms"
threads = 1
[[models]]
name = "custom"
port = 8102
command = ["/bin/sleep", "1000"]
[aws]
endpoint_url = "http://127.0.0.1:5000"
[cloudwatch]
high_resolution = true
[notify.slack]
webhook_url = "http://127.0.0.1:9/hook"
"#;
    let (code, out, _, _dir) = check_text(full);
    assert_eq!(code, 0, "full example: {out}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let (code, out, _, _dir) = check_text("[notify.slack]\nwebhook_url = \"ftp://sekrit-token\"\n");
    assert_eq!(code, 2);
    assert!(!out.contains("sekrit"), "secret leaked: {out}");
}

#[test]
fn unreadable_file_is_an_error_not_a_panic() {
    let (code, out) = check(Path::new("/nonexistent/warden.toml"));
    assert_eq!(code, 2);
    assert!(
        out.starts_with("/nonexistent/warden.toml:1:1: cannot read"),
        "{out}"
    );
}

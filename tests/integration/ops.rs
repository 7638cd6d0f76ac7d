//! Operations packaging: the systemd unit (systemd-analyze), sd_notify from a real
//! `warden run` over a unix datagram socket, dashboards (committed = rendered, push round trip
//! via moto), install.sh into a temp root, and runbook anchors for every default rule.

use crate::support::fake_model;

use crate::support::net::{free_port, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warden::control::ControlClient;

const LONG: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// systemd unit

fn systemd_version() -> u32 {
    let out = run(Command::new("systemd-analyze").arg("--version"));
    // "systemd 252 (252.38-1~deb12u1)"
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemd-analyze --version (install systemd: scripts/setup.sh)")
}

/// The unit with ExecStart pointed at the binary this test run built (verify wants it to exist).
fn unit_for_built_binary(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(crate::support::repo_root().join("systemd/warden.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/warden run --config /etc/warden/warden.toml"));
    let local = unit.replace(
        "ExecStart=/usr/local/bin/warden",
        &format!("ExecStart={}", crate::support::warden_bin().display()),
    );
    let path = dir.join("warden.service");
    std::fs::write(&path, local).unwrap();
    path
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_built_binary(dir.path());
    let version = systemd_version();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "verify failed:\n{stderr}");
    // RestartSteps/RestartMaxDelaySec exist from systemd 254; older versions ignore them with
    // a warning (the unit still works, with a fixed RestartSec). Anything else is a finding.
    let findings: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !(version < 254
                && (l.contains("Unknown key 'RestartSteps'")
                    || l.contains("Unknown key 'RestartMaxDelaySec'")))
        })
        .collect();
    assert!(
        findings.is_empty(),
        "systemd {version} verify findings:\n{}",
        findings.join("\n")
    );
}

#[test]
fn unit_has_the_required_settings_and_exposure_at_most_2() {
    let unit = std::fs::read_to_string(crate::support::repo_root().join("systemd/warden.service"))
        .unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2s",
        "WatchdogSec=30s",
        "KillMode=mixed",
        "User=warden",
        "StateDirectory=warden",
        "RuntimeDirectory=warden",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallFilter=@system-service",
        "DevicePolicy=closed",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    // Stopping must outlast the children's default stop timeout (10 s).
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| humantime::parse_duration(v).ok())
        .expect("TimeoutStopSec");
    assert!(stop > Duration::from_secs(10));

    let dir = tempfile::tempdir().unwrap();
    let path = unit_for_built_binary(dir.path());
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path));
    let stdout = text(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for warden.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{stdout}\n{}", text(&out.stderr)));
    eprintln!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0");
}

// ---------------------------------------------------------------------------------------------
// sd_notify

/// The test's end of NOTIFY_SOCKET: every datagram, with when it arrived.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&received);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let got = socket.recv(&mut buf);
                let Some(sink) = sink.upgrade() else { return };
                if let Ok(n) = got {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push((Instant::now(), msg));
                }
            }
        });
        NotifySocket { path, received }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.received.lock().unwrap().clone()
    }

    /// Index of the first datagram with the line `line` at or after `from`.
    fn wait_for(&self, from: usize, line: &str, timeout: Duration) -> Option<usize> {
        wait_until(timeout, || {
            self.all()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| m.lines().any(|l| l == line))
                .map(|(i, _)| i)
        })
    }

    fn dump(&self) -> String {
        self.all()
            .iter()
            .map(|(_, m)| m.replace('\n', " | "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key))
}

/// `warden run --config` with NOTIFY_SOCKET and WATCHDOG_USEC set, test hooks on.
struct NotifiedAgent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    notify: NotifySocket,
}

impl NotifiedAgent {
    fn start(models: &str, watchdog: Duration) -> NotifiedAgent {
        let dir = tempfile::tempdir().unwrap();
        let notify = NotifySocket::bind(dir.path());
        let socket = dir.path().join("control.sock");
        let config = dir.path().join("warden.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nlisten = \"127.0.0.1:{}\"\ncontrol_socket = {:?}\nstate_dir = {:?}\nmodels_dir = {:?}\n\n[cloudwatch]\nenabled = false\n[logs]\nenabled = false\n\n{models}",
                free_port(),
                socket.display().to_string(),
                dir.path().join("state").display().to_string(),
                dir.path().join("models").display().to_string(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(crate::support::warden_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env("WARDEN_TEST_HOOKS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        NotifiedAgent {
            child: Some(child),
            dir,
            socket,
            notify,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn context(&self) -> String {
        format!(
            "datagrams:\n{}\nagent log:\n{}",
            self.notify.dump(),
            self.log()
        )
    }

    fn wait_for(&self, from: usize, line: &str) -> usize {
        self.notify
            .wait_for(from, line, LONG)
            .unwrap_or_else(|| panic!("no {line} after datagram {from}\n{}", self.context()))
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let status = wait_until(LONG, || child.try_wait().unwrap());
        let status = status.unwrap_or_else(|| panic!("agent did not exit\n{}", self.context()));
        self.child = None;
        status
    }

    fn watchdog_pings_between(&self, from: Instant, to: Instant) -> usize {
        self.notify
            .all()
            .iter()
            .filter(|(at, m)| *at >= from && *at < to && m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }
}

impl Drop for NotifiedAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_after_models_watchdog_stops_when_wedged_stopping_on_sigterm() {
    let models = format!(
        "{}{}",
        fake_model("alpha", free_port(), &[], ""),
        fake_model("beta", free_port(), &["--load-delay", "2"], "")
    );
    let mut agent = NotifiedAgent::start(&models, Duration::from_secs(1));

    let ready = agent.wait_for(0, "READY=1");
    let all = agent.notify.all();
    let status = field(&all[ready].1, "STATUS=")
        .unwrap_or_default()
        .to_string();
    assert!(
        status.starts_with("2/2 models ready"),
        "READY status {status:?}\n{}",
        agent.context()
    );
    // It waited for beta: an earlier status said so.
    assert!(
        all[..ready].iter().any(|(_, m)| field(m, "STATUS=")
            .is_some_and(|s| s.starts_with("starting: 1/2 models ready"))),
        "no starting status before READY\n{}",
        agent.context()
    );
    // And the supervisor agrees that both are ready.
    let mut control = ControlClient::connect(&agent.socket).await.unwrap();
    let states = control.status().await.unwrap();
    assert!(
        states
            .iter()
            .all(|s| s.state == warden::supervisor::ModelState::Ready),
        "{states:?}"
    );

    // Pings at half of WATCHDOG_USEC (500 ms): expect several in 3 s even on a busy machine.
    let t0 = Instant::now();
    let pinged = wait_until(Duration::from_secs(20), || {
        (agent.watchdog_pings_between(t0, Instant::now()) >= 3).then_some(())
    });
    assert!(pinged.is_some(), "too few WATCHDOG=1\n{}", agent.context());

    // Wedge the main loop for 4 s (the reply comes once it is stalled): the pings stop for
    // those 4 s, then resume.
    let asked = Instant::now();
    let reply = control
        .call("debug.wedge", serde_json::json!({ "seconds": 4 }))
        .await
        .unwrap();
    let stalled = Instant::now();
    assert_eq!(reply["wedged_for_secs"], 4);
    // The stall began between `asked` and `stalled`, so it ends no earlier than asked + 4 s.
    // A ping sent just before it may still be in flight: allow it 300 ms to arrive.
    let quiet_from = stalled + Duration::from_millis(300);
    let quiet_until = asked + Duration::from_secs(4);
    let resumed = wait_until(LONG, || {
        agent
            .notify
            .all()
            .iter()
            .find(|(at, m)| *at > quiet_from && m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| *at)
    })
    .unwrap_or_else(|| panic!("pings never resumed\n{}", agent.context()));
    assert!(
        resumed >= quiet_until,
        "a ping {:?} after the wedge began, before it ended\n{}",
        resumed.duration_since(asked),
        agent.context()
    );

    let before_stop = agent.notify.all().len();
    kill(agent.pid(), Signal::SIGTERM).unwrap();
    let stopping = agent.wait_for(before_stop, "STOPPING=1");
    assert!(stopping >= before_stop);
    let status = agent.wait_exit();
    assert!(status.success(), "exit {status:?}\n{}", agent.context());
}

#[test]
fn sd_notify_ready_after_bounded_wait_and_reload_brackets() {
    // A model that never becomes ready; its start_timeout (2 s) bounds the wait for READY.
    let models = fake_model(
        "slowpoke",
        free_port(),
        &["--load-delay", "1000"],
        "start_timeout = \"2s\"",
    );
    let mut agent = NotifiedAgent::start(&models, Duration::from_secs(2));
    let ready = agent.wait_for(0, "READY=1");
    let msg = agent.notify.all()[ready].1.clone();
    let status = field(&msg, "STATUS=").unwrap_or_default();
    // "ready without all models after Ns: 0/1 models ready ... (not ready: slowpoke)", N ≥ 2
    // (a late tick on a busy machine may make it 3).
    let waited: Option<u64> = status
        .strip_prefix("ready without all models after ")
        .and_then(|rest| rest.split_once("s: "))
        .filter(|(_, summary)| {
            summary.starts_with("0/1 models ready") && summary.contains("not ready: slowpoke")
        })
        .and_then(|(n, _)| n.parse().ok());
    assert!(
        waited.is_some_and(|n| n >= 2),
        "{status:?}\n{}",
        agent.context()
    );

    let before = agent.notify.all().len();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    let reloading = agent.wait_for(before, "RELOADING=1");
    let msg = agent.notify.all()[reloading].1.clone();
    let usec: i128 = field(&msg, "MONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {msg:?}"));
    assert!(usec > 0);
    let ready_again = agent.wait_for(reloading, "READY=1");
    let msg = agent.notify.all()[ready_again].1.clone();
    assert!(
        field(&msg, "STATUS=")
            .is_some_and(|s| s.starts_with("configuration reloaded; 0/1 models ready")),
        "{msg:?}"
    );

    let before = agent.notify.all().len();
    kill(agent.pid(), Signal::SIGTERM).unwrap();
    agent.wait_for(before, "STOPPING=1");
    assert!(agent.wait_exit().success());
}

// ---------------------------------------------------------------------------------------------
// dashboards

/// The arguments the committed `dashboards/warden.json` is rendered with.
const COMMITTED_ARGS: &[&str] = &["--config", "config/warden.toml", "--host", "gpu-host-1"];

fn render(args: &[&str]) -> String {
    let out = run(Command::new(crate::support::warden_bin())
        .current_dir(crate::support::repo_root())
        .args(["dashboards", "render"])
        .args(args));
    assert!(out.status.success(), "render: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn committed_dashboard_equals_the_render() {
    let committed =
        std::fs::read_to_string(crate::support::repo_root().join("dashboards/warden.json"))
            .unwrap();
    let rendered = render(COMMITTED_ARGS);
    assert!(
        committed == rendered,
        "dashboards/warden.json is stale: run `warden dashboards render {}` > dashboards/warden.json",
        COMMITTED_ARGS.join(" ")
    );
    // Deterministic: a second render is byte for byte the same.
    assert_eq!(rendered, render(COMMITTED_ARGS));
    // The flags reach the output.
    let other = render(&[
        "--config",
        "config/warden.toml",
        "--host",
        "gpu-host-9",
        "--namespace",
        "Staging",
        "--gpus",
        "2",
    ]);
    let body: serde_json::Value = serde_json::from_str(&other).unwrap();
    let gpu = body["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["properties"]["title"] == "GPU utilisation")
        .unwrap();
    let rows = gpu["properties"]["metrics"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], "Staging");
    assert_eq!(rows[0][3], "gpu-host-9");
    assert_eq!(body["variables"][0]["defaultValue"], "gpu-host-9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_push_round_trips_through_moto() {
    let moto = crate::support::moto::Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n[cloudwatch]\nnamespace = \"WardenTest\"\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--host",
        "host-a",
        "--gpus",
        "4",
        "--name",
        "warden-test",
    ];
    let out = run(Command::new(crate::support::warden_bin())
        .args(["dashboards", "push"])
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY"));
    assert!(
        out.status.success(),
        "push: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let client = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let got = client
        .get_dashboard()
        .dashboard_name("warden-test")
        .send()
        .await
        .unwrap();
    let pushed: serde_json::Value = serde_json::from_str(got.dashboard_body().unwrap()).unwrap();
    let rendered: serde_json::Value = serde_json::from_str(&render(&args)).unwrap();
    assert_eq!(pushed, rendered);
    assert_eq!(
        pushed["widgets"][0]["properties"]["metrics"][0][0],
        "WardenTest"
    );
    let listed = client.list_dashboards().send().await.unwrap();
    assert!(
        listed
            .dashboard_entries()
            .iter()
            .any(|d| d.dashboard_name() == Some("warden-test"))
    );

    // With AWS gone the push fails with a message, not a hang or a panic.
    drop(moto);
    let out = run(Command::new(crate::support::warden_bin())
        .args(["dashboards", "push"])
        .args(args));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("PutDashboard warden-test"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// install.sh

fn install(args: &[&str]) -> Output {
    run(Command::new("bash")
        .arg(crate::support::repo_root().join("scripts/install.sh"))
        .args(args)
        .arg("--binary")
        .arg(crate::support::warden_bin()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_into_a_temp_root_produces_the_tree() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let out = install(&["--prefix", r.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));

    let bin = r.join("usr/local/bin/warden");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(
        std::fs::metadata(&bin).unwrap().len(),
        std::fs::metadata(crate::support::warden_bin())
            .unwrap()
            .len()
    );
    // The libtorch half (serve-model, models init) sits next to it.
    let model_bin = r.join("usr/local/bin/warden-model");
    assert_eq!(mode(&model_bin), 0o755);
    assert_eq!(
        std::fs::read(&model_bin).unwrap(),
        std::fs::read(crate::support::warden_bin().with_file_name("warden-model")).unwrap()
    );
    let repo = crate::support::repo_root();
    let same = |installed: &str, source: &str| {
        assert_eq!(
            std::fs::read(r.join(installed)).unwrap(),
            std::fs::read(repo.join(source)).unwrap(),
            "{installed}"
        );
    };
    same(
        "etc/systemd/system/warden.service",
        "systemd/warden.service",
    );
    same(
        "usr/local/share/warden/alerts/default.toml",
        "alerts/default.toml",
    );
    same("usr/local/share/doc/warden/runbook.md", "docs/runbook.md");

    // The config: the repo's production example with the rules path at the installed defaults.
    let config_path = r.join("etc/warden/warden.toml");
    assert_eq!(mode(&config_path), 0o640);
    assert_eq!(mode(&r.join("etc/warden")), 0o750);
    let config = std::fs::read_to_string(&config_path).unwrap();
    let example = std::fs::read_to_string(repo.join("config/warden.toml")).unwrap();
    assert!(config.contains("rules = [\"/usr/local/share/warden/alerts/default.toml\"]"));
    assert_eq!(
        config.replace(
            "rules = [\"/usr/local/share/warden/alerts/default.toml\"]",
            ""
        ),
        example.replace("rules = [\"../alerts/default.toml\"]", "")
    );
    // It is a valid config once the absolute rules path is read inside the temp root.
    let rooted = r.join("check.toml");
    std::fs::write(
        &rooted,
        config.replace(
            "/usr/local/share/",
            &format!("{}/usr/local/share/", r.display()),
        ),
    )
    .unwrap();
    let check = run(Command::new(&bin).arg("check-config").arg(&rooted));
    assert!(check.status.success(), "{}", text(&check.stderr));

    // Host-level steps are only echoed under --prefix.
    for skipped in [
        "useradd --system",
        "systemctl daemon-reload",
        "systemctl enable warden.service",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("skipped (--prefix):") && l.contains(skipped)),
            "{skipped} not echoed:\n{stdout}"
        );
    }

    // A second run keeps the operator's config.
    std::fs::write(&config_path, "# edited by the operator\n").unwrap();
    let out = install(&["--prefix", r.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&config_path).unwrap(),
        "# edited by the operator\n"
    );
    assert!(text(&out.stdout).contains("kept existing"));
}

#[test]
fn install_dry_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("never-created");
    let out = install(&["--dry-run", "--prefix", target.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(!target.exists(), "dry run created {}", target.display());
    assert!(stdout.contains("would run: install -m 0755"), "{stdout}");
    assert!(stdout.contains("would write"), "{stdout}");
    assert!(stdout.contains("dry run: nothing was changed"));

    // Bad arguments are refused with a usage message.
    let out = install(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown argument --bogus"));
}

// ---------------------------------------------------------------------------------------------
// runbook

#[test]
fn runbook_has_a_section_per_default_rule() {
    let rules: toml::Table = toml::from_str(
        &std::fs::read_to_string(crate::support::repo_root().join("alerts/default.toml")).unwrap(),
    )
    .unwrap();
    let runbook =
        std::fs::read_to_string(crate::support::repo_root().join("docs/runbook.md")).unwrap();
    let names: Vec<&str> = rules["rule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.len() >= 10);
    for name in names {
        // GitHub's anchor for "## name" is #name when name is lowercase with hyphens.
        assert!(
            runbook.lines().any(|l| l == format!("## {name}")),
            "docs/runbook.md has no '## {name}' section"
        );
        let section = runbook.split(&format!("## {name}\n")).nth(1).unwrap();
        let section = section.split("\n## ").next().unwrap();
        for part in [
            "**Meaning",
            "**First checks in the console.**",
            "**Commands.**",
            "**Escalation.**",
        ] {
            assert!(section.contains(part), "{name}: no {part}");
        }
    }
}

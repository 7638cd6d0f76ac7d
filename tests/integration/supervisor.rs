//! `warden run` as a real process supervising fake models (tests/support/fake_model.py),
//! driven and observed through the control socket, signals and /proc.

use crate::support::fake_model;

use crate::support::net::{free_port, wait_until, wait_until_async};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use warden::control::ControlClient;
use warden::supervisor::{EventKind, ExitInfo, ModelState, ModelStatus, SupervisorEvent};

const LONG: Duration = Duration::from_secs(60);

struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    header: String,
}

impl Agent {
    fn start(models: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let header = format!(
            "[agent]\nlisten = \"127.0.0.1:{}\"\ncontrol_socket = {:?}\nstate_dir = {:?}\nmodels_dir = {:?}\n\n[cloudwatch]\nenabled = false\n[logs]\nenabled = false\n\n",
            free_port(),
            socket.display().to_string(),
            dir.path().join("state").display().to_string(),
            dir.path().join("models").display().to_string(),
        );
        let config = dir.path().join("warden.toml");
        std::fs::write(&config, format!("{header}{models}")).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(crate::support::warden_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let agent = Agent {
            child: Some(child),
            dir,
            config,
            socket,
            header,
        };
        let up = wait_until(LONG, || {
            std::os::unix::net::UnixStream::connect(&agent.socket)
                .ok()
                .map(|_| ())
        });
        assert!(
            up.is_some(),
            "control socket never came up\n{}",
            agent.log()
        );
        agent
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn rewrite(&self, models: &str) {
        std::fs::write(&self.config, format!("{}{models}", self.header)).unwrap();
    }

    async fn client(&self) -> ControlClient {
        ControlClient::connect(&self.socket).await.unwrap()
    }

    async fn status(&self) -> BTreeMap<String, ModelStatus> {
        let mut c = self.client().await;
        c.status()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect()
    }

    /// Waits until every model in `names` is ready; returns their pids.
    async fn wait_ready(&self, names: &[&str]) -> BTreeMap<String, u32> {
        let got = wait_until_async(LONG, || async {
            let status = self.status().await;
            names
                .iter()
                .map(|n| {
                    status
                        .get(*n)
                        .filter(|s| s.state == ModelState::Ready)
                        .and_then(|s| s.pid)
                        .map(|p| (n.to_string(), p))
                })
                .collect::<Option<BTreeMap<_, _>>>()
        })
        .await;
        match got {
            Some(pids) => pids,
            None => panic!(
                "models {names:?} not ready: {:#?}\n{}",
                self.status().await,
                self.log()
            ),
        }
    }

    /// Waits for the agent to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let status = wait_until(timeout, || child.try_wait().unwrap());
        let status = status.unwrap_or_else(|| panic!("agent did not exit\n{}", self.log()));
        self.child = None;
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Gone: no /proc entry, or only a zombie waiting for its new parent to reap it.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_owner_only_and_serves_status_and_logs() {
    let port = free_port();
    let agent = Agent::start(&fake_model("alpha", port, &[], ""));
    let pids = agent.wait_ready(&["alpha"]).await;

    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let status = agent.status().await;
    let alpha = &status["alpha"];
    assert_eq!((alpha.port, alpha.pid), (port, Some(pids["alpha"])));
    assert_eq!(alpha.restarts, 0);

    let logs = wait_until_async(LONG, || async {
        let lines = agent.client().await.logs("alpha", 50).await.unwrap();
        lines
            .iter()
            .any(|l| l.line.contains("listening on"))
            .then_some(lines)
    })
    .await
    .expect("stdout line captured");
    let mut c = agent.client().await;
    assert!(logs.iter().any(|l| l.line.contains("stderr hello")));
    let err = c
        .call("frobnicate", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown_method"), "{err}");
    let err = c.restart("no-such-model").await.unwrap_err();
    assert!(err.to_string().contains("unknown_model"), "{err}");

    // A second agent on the same socket refuses to start and leaves the first alone.
    let second = Command::new(crate::support::warden_bin())
        .args(["run", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already listening"));
    assert_eq!(agent.status().await["alpha"].pid, Some(pids["alpha"]));

    // Another user is refused by the file mode (the directory itself is open to them).
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            ])
            .arg(&agent.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "nobody connected to the control socket"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("PermissionError"), "{stderr}");
    }
}

use std::os::unix::process::CommandExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_child_brings_up_a_new_ready_pid() {
    let names = ["m-one", "m-two", "m-three", "m-four", "m-five"];
    let models: String = names
        .iter()
        .map(|n| fake_model(n, free_port(), &[], ""))
        .collect();
    let agent = Agent::start(&models);
    let before = agent.wait_ready(&names).await;
    for name in names {
        let old = before[name];
        kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
        let new = wait_until_async(LONG, || async {
            agent
                .status()
                .await
                .get(name)
                .filter(|s| s.state == ModelState::Ready && s.pid.is_some_and(|p| p != old))
                .cloned()
        })
        .await
        .unwrap_or_else(|| panic!("{name} not back after kill -9\n{}", agent.log()));
        assert_eq!(new.last_exit, Some(ExitInfo::Signal(9)));
        assert_eq!(new.restarts, 1);
        assert!(process_gone(old));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_child_is_killed_and_restarted_after_the_health_failures() {
    let agent = Agent::start(&fake_model(
        "frozen",
        free_port(),
        &[],
        "health_failures = 3",
    ));
    let old = agent.wait_ready(&["frozen"]).await["frozen"];
    let mut events = agent.client().await;
    events.subscribe().await.unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGSTOP).unwrap();

    let new = wait_until_async(LONG, || async {
        agent
            .status()
            .await
            .get("frozen")
            .filter(|s| s.state == ModelState::Ready && s.pid.is_some_and(|p| p != old))
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("hung child not replaced\n{}", agent.log()));
    assert_eq!(new.last_exit, Some(ExitInfo::Signal(9)));
    assert!(process_gone(old));

    // Unhealthy (with a model-down event) came before the kill.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &SupervisorEvent| matches!(e.kind, EventKind::Exited { pid, .. } if pid == old))
    {
        let e = tokio::time::timeout(LONG, events.next_event())
            .await
            .unwrap()
            .unwrap();
        seen.push(e);
    }
    let kinds: Vec<&EventKind> = seen.iter().map(|e| &e.kind).collect();
    assert!(
        kinds.iter().any(|k| matches!(
            k,
            EventKind::StateChanged {
                to: ModelState::Unhealthy,
                ..
            }
        )),
        "{kinds:#?}"
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::ModelDown { .. })),
        "{kinds:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_exits_at_once_backs_off_with_growing_delays_then_crash_loops() {
    let keys = "restart_initial_backoff = \"200ms\"\nrestart_max_backoff = \"1600ms\"\nrestart_jitter = 0.0\ncrash_loop_exits = 5\ncrash_loop_window = \"5m\"";
    let agent = Agent::start(&fake_model(
        "crashy",
        free_port(),
        &["--exit-code", "3"],
        keys,
    ));
    // Stop it, then watch a clean run from `start` (which forgives earlier failures).
    let mut ctl = agent.client().await;
    ctl.stop("crashy").await.unwrap();
    let mut events = agent.client().await;
    events.subscribe().await.unwrap();
    ctl.start("crashy").await.unwrap();

    let mut seen: Vec<SupervisorEvent> = Vec::new();
    loop {
        let e = tokio::time::timeout(LONG, events.next_event())
            .await
            .unwrap_or_else(|_| panic!("no crash loop; saw {seen:#?}\n{}", agent.log()))
            .unwrap();
        let done = matches!(
            e.kind,
            EventKind::StateChanged {
                to: ModelState::CrashLoop,
                ..
            }
        );
        seen.push(e);
        if done {
            break;
        }
    }
    // Each wait: (delay announced, when announced, when the next child was spawned).
    let mut waits = Vec::new();
    let mut crash_loop_events = 0;
    for (i, e) in seen.iter().enumerate() {
        match &e.kind {
            EventKind::CrashLoop { exits, .. } => {
                assert_eq!(*exits, 5);
                crash_loop_events += 1;
            }
            EventKind::StateChanged {
                to: ModelState::Backoff,
                delay_ms: Some(d),
                ..
            } => {
                let respawn = seen[i..].iter().find(|n| {
                    matches!(
                        n.kind,
                        EventKind::StateChanged {
                            to: ModelState::Starting,
                            ..
                        }
                    )
                });
                let respawn = respawn.expect("a respawn follows each backoff");
                waits.push((*d, respawn.at_ms - e.at_ms));
            }
            _ => {}
        }
    }
    assert_eq!(crash_loop_events, 1, "{seen:#?}");
    let delays: Vec<u64> = waits.iter().map(|w| w.0).collect();
    assert_eq!(delays, vec![0, 200, 400, 800], "{seen:#?}");
    for (delay, waited) in &waits {
        // Timestamps are whole ms; a loaded machine may add latency but never shortens a wait.
        assert!(
            *waited + 1 >= *delay,
            "waited {waited} ms for a {delay} ms backoff"
        );
        assert!(
            *waited < delay + 1500,
            "waited {waited} ms for a {delay} ms backoff"
        );
    }
    assert!(waits[3].1 > waits[1].1, "delays did not grow: {waits:?}");
    match &seen.last().unwrap().kind {
        EventKind::StateChanged { delay_ms, .. } => assert_eq!(*delay_ms, Some(1600)),
        other => panic!("{other:?}"),
    }
    let status = agent.status().await;
    assert_eq!(status["crashy"].state, ModelState::CrashLoop);
    assert_eq!(status["crashy"].last_exit, Some(ExitInfo::Code(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_child_before_the_agent_exits() {
    let mut models = fake_model("calm-a", free_port(), &[], "");
    models += &fake_model("calm-b", free_port(), &[], "");
    // Ignores SIGTERM: the agent must escalate to SIGKILL after stop_timeout.
    models += &fake_model(
        "stubborn",
        free_port(),
        &["--ignore-term"],
        "stop_timeout = \"1s\"",
    )
    .replace("stop_timeout = \"5s\"\n", "");
    let mut agent = Agent::start(&models);
    let pids = agent.wait_ready(&["calm-a", "calm-b", "stubborn"]).await;
    kill(agent.pid(), Signal::SIGTERM).unwrap();
    let status = agent.wait_exit(LONG);
    assert!(status.success(), "agent exit {status:?}\n{}", agent.log());
    for (name, pid) in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) outlived the agent"
        );
    }
    assert!(!agent.socket.exists(), "control socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_agent_takes_the_children_down_within_a_second() {
    let mut models = fake_model("orphan-a", free_port(), &[], "");
    models += &fake_model("orphan-b", free_port(), &["--ignore-term"], "");
    let mut agent = Agent::start(&models);
    let pids = agent.wait_ready(&["orphan-a", "orphan-b"]).await;
    kill(agent.pid(), Signal::SIGKILL).unwrap();
    agent.wait_exit(LONG);
    let all_gone = wait_until(Duration::from_secs(1), || {
        pids.values().all(|p| process_gone(*p)).then_some(())
    });
    assert!(all_gone.is_some(), "children {pids:?} survived the agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_only_the_difference() {
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let keep = fake_model("keep", pa, &[], "");
    let change = |tag: &str| fake_model("change", pb, &["--tag", tag], "");
    let agent = Agent::start(&format!(
        "{keep}{}{}",
        change("one"),
        fake_model("drop", pc, &[], "")
    ));
    let before = agent.wait_ready(&["keep", "change", "drop"]).await;

    agent.rewrite(&format!(
        "{keep}{}{}",
        change("two"),
        fake_model("add", pd, &[], "")
    ));
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    let after = wait_until_async(LONG, || async {
        let status = agent.status().await;
        let names: Vec<&str> = status.keys().map(String::as_str).collect();
        if names != ["add", "change", "keep"] {
            return None;
        }
        let ready = status.values().all(|s| s.state == ModelState::Ready);
        let changed = status["change"].pid != Some(before["change"]);
        (ready && changed).then_some(status)
    })
    .await
    .unwrap_or_else(|| panic!("reload not applied\n{}", agent.log()));
    assert_eq!(
        after["keep"].pid,
        Some(before["keep"]),
        "unchanged model was restarted"
    );
    assert_eq!(after["keep"].restarts, 0);
    assert!(wait_until(LONG, || process_gone(before["drop"]).then_some(())).is_some());
    assert!(wait_until(LONG, || process_gone(before["change"]).then_some(())).is_some());
    let mut c = agent.client().await;
    let lines = c.logs("change", 100).await.unwrap();
    assert!(
        lines.iter().any(|l| l.line.contains("tag=two")),
        "{lines:?}"
    );

    // A broken edit is rejected and everything keeps running.
    agent.rewrite("[[models]]\nname = \"keep\"\nport = \"not a port\"\n");
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    let logged = wait_until(LONG, || agent.log().contains("rejected").then_some(()));
    assert!(logged.is_some(), "{}", agent.log());
    let status = agent.status().await;
    assert_eq!(status.len(), 3);
    assert_eq!(status["keep"].pid, Some(before["keep"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_lines_and_binary_garbage_do_not_hurt_the_agent() {
    let agent = Agent::start(&fake_model("noisy", free_port(), &["--spew"], ""));
    agent.wait_ready(&["noisy"]).await;
    let lines = wait_until_async(LONG, || async {
        let lines = agent.client().await.logs("noisy", 100).await.unwrap();
        lines
            .iter()
            .any(|l| l.line == "after the noise")
            .then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("lines after the noise not captured\n{}", agent.log()));
    let huge = lines.iter().find(|l| l.line.starts_with("huge:")).unwrap();
    assert!(huge.line.len() < 64 * 1024, "huge line kept whole");
    assert!(
        huge.line.contains("truncated"),
        "{}",
        &huge.line[huge.line.len() - 60..]
    );
    assert!(lines.iter().any(|l| l.line.contains('\u{fffd}')));
    // Still serving, and sampling the child.
    let sampled = wait_until_async(LONG, || async {
        agent.status().await["noisy"].rss_bytes.filter(|r| *r > 0)
    })
    .await;
    assert!(sampled.is_some(), "no RSS sampled for the child");
}

/// The embedded default (no config file) supervises the five built-in models on 8001-8005.
/// On a machine with no GPU and no AWS, all five become ready and answer through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_config_supervises_the_five_default_models() {
    let state = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(state.path().join("agent.log")).unwrap();
    let mut child = Command::new(crate::support::warden_bin())
        .arg("run")
        .env("WARDEN_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let socket = state.path().join("control.sock");
    let read_log = || std::fs::read_to_string(state.path().join("agent.log")).unwrap_or_default();
    let status = wait_until_async(LONG, || async {
        let mut c = ControlClient::connect(&socket).await.ok()?;
        c.status().await.ok()
    })
    .await
    .unwrap_or_else(|| panic!("no control socket\n{}", read_log()));
    let got: Vec<(&str, u16)> = status.iter().map(|s| (s.name.as_str(), s.port)).collect();
    let mut want: Vec<(&str, u16)> = warden::config::DEFAULT_MODELS.to_vec();
    want.sort();
    assert_eq!(got, want);
    let ready = wait_until_async(Duration::from_secs(180), || async {
        let mut c = ControlClient::connect(&socket).await.ok()?;
        let s = c.status().await.ok()?;
        s.iter().all(|m| m.state == ModelState::Ready).then_some(())
    })
    .await;
    assert!(ready.is_some(), "default models not ready\n{}", read_log());
    // The embedded API on 127.0.0.1:8000 answers every model's own example, unauthenticated.
    warden::tls::install_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = "http://127.0.0.1:8000";
    let ready = http.get(format!("{api}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", read_log());
    let models: serde_json::Value = http
        .get(format!("{api}/api/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let models = models.as_array().unwrap();
    assert_eq!(models.len(), 5);
    for m in models {
        let name = m["name"].as_str().unwrap();
        let example = &m["metadata"]["example"];
        assert!(example.is_object(), "{name} publishes an example: {m}");
        let r = http
            .post(format!("{api}/api/v1/{name}"))
            .json(example)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await.unwrap());
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let exited = wait_until(LONG, || child.try_wait().unwrap());
    assert!(exited.is_some_and(|s| s.success()), "{}", read_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_becomes_ready_is_killed_after_start_timeout() {
    let keys = "start_timeout = \"500ms\"\nrestart_initial_backoff = \"100ms\"";
    let agent = Agent::start(&fake_model(
        "sleepy",
        free_port(),
        &["--load-delay", "3600"],
        keys,
    ));
    let first = wait_until_async(LONG, || async { agent.status().await["sleepy"].pid }).await;
    let first = first.expect("spawned");
    let replaced = wait_until_async(LONG, || async {
        let s = agent.status().await["sleepy"].clone();
        (s.restarts >= 1 && s.last_exit == Some(ExitInfo::Signal(9))).then_some(s)
    })
    .await;
    assert!(replaced.is_some(), "never killed\n{}", agent.log());
    assert!(wait_until(LONG, || process_gone(first).then_some(())).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_never_ready_within_start_timeout_pages_model_down() {
    // One hangs while loading (killed at start_timeout), one keeps exiting before it is ready
    // (never a crash loop here): both are down once start_timeout passes without a ready.
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"model-down\"\nevent = \"model-down\"\nfor = \"0s\"\nseverity = \"critical\"\nsummary = \"Model {{Model}} is down\"\n",
    )
    .unwrap();
    let models = format!(
        "[alerts]\nrules = [{:?}]\nevaluation_interval = \"200ms\"\n\n{}{}",
        rules.display().to_string(),
        fake_model(
            "sleepy",
            free_port(),
            &["--load-delay", "3600"],
            "start_timeout = \"1s\"\nrestart_initial_backoff = \"100ms\"",
        ),
        fake_model(
            "quitter",
            free_port(),
            &["--exit-code", "3"],
            "start_timeout = \"1s\"\nrestart_initial_backoff = \"100ms\"\nrestart_max_backoff = \"200ms\"\ncrash_loop_exits = 1000",
        ),
    );
    let agent = Agent::start(&models);
    let mut events = agent.client().await;
    events.subscribe().await.unwrap();
    let mut seen: Vec<SupervisorEvent> = Vec::new();
    let down = |seen: &[SupervisorEvent], model: &str| {
        seen.iter().position(|e| {
            e.model == model
                && matches!(&e.kind, EventKind::ModelDown { reason } if reason == "not ready after 1s")
        })
    };
    while down(&seen, "sleepy").is_none() || down(&seen, "quitter").is_none() {
        let e = tokio::time::timeout(LONG, events.next_event())
            .await
            .unwrap_or_else(|_| panic!("no model-down; saw {seen:#?}\n{}", agent.log()))
            .unwrap();
        seen.push(e);
    }
    // The hung one is reported down no later than it is killed for the timeout.
    let sleepy_down = down(&seen, "sleepy").unwrap();
    if let Some(killed) = seen
        .iter()
        .position(|e| e.model == "sleepy" && matches!(e.kind, EventKind::Exited { .. }))
    {
        assert!(sleepy_down < killed, "{seen:#?}");
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CrashLoop { .. })),
        "{seen:#?}"
    );
    // Once per not-ready spell, not once per attempt.
    let quitter_downs = seen
        .iter()
        .filter(|e| e.model == "quitter" && matches!(e.kind, EventKind::ModelDown { .. }))
        .count();
    assert_eq!(quitter_downs, 1, "{seen:#?}");
    // And the model-down rule pages for both.
    let firing = wait_until_async(LONG, || async {
        let mut ctl = agent.client().await;
        let a = ctl.call("alerts", serde_json::json!({})).await.ok()?;
        let mut models: Vec<String> = a["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["rule"] == "model-down" && a["state"] == "firing")
            .filter_map(|a| a["labels"]["Model"].as_str().map(str::to_string))
            .collect();
        models.sort();
        (models.len() == 2).then_some(models)
    })
    .await;
    assert_eq!(
        firing,
        Some(vec!["quitter".to_string(), "sleepy".to_string()]),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_says_which_changed_sections_need_a_restart() {
    let port = free_port();
    let model = fake_model("steady", port, &[], "");
    let agent = Agent::start(&model);
    let before = agent.wait_ready(&["steady"]).await;
    // Sections that cannot change live, beside a model change that can.
    agent.rewrite(&format!(
        "[gpu]\ncall_timeout = \"750ms\"\n[api]\nmax_concurrency = 64\n\n{}",
        fake_model("steady", port, &["--tag", "two"], "")
    ));
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    let warned = wait_until(LONG, || {
        let log = agent.log();
        log.lines()
            .find(|l| l.contains("NOT applied until"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no restart warning\n{}", agent.log()));
    assert!(warned.contains("gpu, api"), "{warned}");
    assert!(!warned.contains("models"), "{warned}");
    // The model change itself was applied.
    let replaced = wait_until_async(LONG, || async {
        let s = agent.status().await["steady"].clone();
        (s.state == ModelState::Ready && s.pid != Some(before["steady"])).then_some(())
    })
    .await;
    assert!(replaced.is_some(), "{}", agent.log());
    let reloaded = agent
        .log()
        .lines()
        .find(|l| l.contains("SIGHUP: configuration reloaded"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(reloaded.contains("applied=[\"models\"]"), "{reloaded}");
}

//! `TestAgent`: a real `warden run` process built from a few builder calls (models, TOML
//! sections, AWS endpoint, state dir), in the spirit of crates.io's `TestApp`; plus fast fake
//! models served by nginx (a real HTTP server at thousands of req/s, with a fixed error share).

use super::net::{free_port, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Builds a config and starts `warden run --config` on it.
pub struct TestAgentBuilder {
    dir: tempfile::TempDir,
    listen: u16,
    state_dir: Option<PathBuf>,
    models: Vec<String>,
    sections: Vec<String>,
    aws: Option<String>,
    cloudwatch: bool,
    logs: bool,
    env: Vec<(String, String)>,
    sample_interval: String,
    agent_keys: Vec<String>,
}

/// A running agent; killed (SIGKILL) when dropped if still running.
pub struct TestAgent {
    /// Holds the config, log and default state dir until the agent is dropped.
    _dir: tempfile::TempDir,
    pub listen: u16,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TestAgentBuilder {
    /// A `[[models]]` entry (see [`nginx_model`], [`super::fake_model`]).
    pub fn model(mut self, toml: String) -> Self {
        self.models.push(toml);
        self
    }

    /// Extra TOML, appended verbatim (whole sections such as `[alerts]` or `[[rule]]` files).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_string());
        self
    }

    /// Points `[aws]` at `endpoint` (moto or a fault proxy in front of it).
    pub fn aws(mut self, endpoint: &str) -> Self {
        self.aws = Some(endpoint.to_string());
        self
    }

    /// Turns the CloudWatch metrics sink on (needs [`Self::aws`]); `[cloudwatch]` extras may
    /// follow in a [`Self::section`] only if this is off, so pass them here instead.
    pub fn cloudwatch(mut self, on: bool) -> Self {
        self.cloudwatch = on;
        self
    }

    /// Turns the CloudWatch Logs sink on (needs [`Self::aws`]).
    pub fn logs(mut self, on: bool) -> Self {
        self.logs = on;
        self
    }

    /// An environment variable for the agent process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `agent.sample_interval` (default 200ms).
    pub fn sample_interval(mut self, interval: &str) -> Self {
        self.sample_interval = interval.to_string();
        self
    }

    /// An extra `key = value` line in `[agent]` (e.g. `autoscaling_group = "g"`).
    pub fn agent_key(mut self, line: &str) -> Self {
        self.agent_keys.push(line.to_string());
        self
    }

    /// The state dir (default: `state/` in the agent's temp dir), e.g. on a small tmpfs.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// The temp dir the config and log live in (for files a model command needs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config and starts the agent (does not wait for readiness).
    pub fn start(self) -> TestAgent {
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("state"));
        let socket = self.dir.path().join("control.sock");
        let mut toml = format!(
            "[agent]\nhost_id = \"test-host\"\nlisten = \"127.0.0.1:{}\"\ncontrol_socket = {:?}\n\
             state_dir = {:?}\nmodels_dir = {:?}\nsample_interval = {:?}\n{}\n",
            self.listen,
            socket.display().to_string(),
            state_dir.display().to_string(),
            self.dir.path().join("models").display().to_string(),
            self.sample_interval,
            self.agent_keys
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
        match &self.aws {
            Some(endpoint) => toml.push_str(&format!(
                "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
                 attempt_timeout = \"2s\"\noperation_timeout = \"5s\"\n\n"
            )),
            None => assert!(!self.cloudwatch && !self.logs, "AWS sinks need an endpoint"),
        }
        toml.push_str(&format!(
            "[cloudwatch]\nenabled = {}\nflush_interval = \"1s\"\n\n[logs]\nenabled = {}\nflush_interval = \"500ms\"\n\n",
            self.cloudwatch, self.logs
        ));
        for s in &self.sections {
            toml.push_str(s);
            toml.push('\n');
        }
        for m in &self.models {
            toml.push_str(m);
            toml.push('\n');
        }
        let config = self.dir.path().join("warden.toml");
        std::fs::write(&config, toml).unwrap();
        let mut agent = TestAgent {
            listen: self.listen,
            config,
            state_dir,
            socket,
            log: self.dir.path().join("agent.log"),
            env: self.env,
            child: None,
            _dir: self.dir,
        };
        agent.spawn();
        agent
    }
}

impl TestAgent {
    pub fn builder() -> TestAgentBuilder {
        TestAgentBuilder {
            dir: tempfile::tempdir().unwrap(),
            listen: free_port(),
            state_dir: None,
            models: Vec::new(),
            sections: Vec::new(),
            aws: None,
            cloudwatch: false,
            logs: false,
            env: Vec::new(),
            sample_interval: "200ms".to_string(),
            agent_keys: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(super::warden_bin());
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Everything the agent printed so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/ready` answers 200; panics with the log otherwise.
    pub fn wait_ready(&self, timeout: Duration) {
        let url = self.url("/ready");
        let ready = wait_until(timeout, || {
            (super::moto::plain_http::status(&url) == Some(200)).then_some(())
        });
        assert!(
            ready.is_some(),
            "agent not ready in {timeout:?}\n{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_until(timeout, || child.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// SIGTERM and a clean exit within `timeout` (panics otherwise).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        match self.wait_exit(timeout) {
            Some(s) => s,
            None => panic!("agent did not stop in {timeout:?}\n{}", self.log()),
        }
    }

    /// SIGKILL, as systemd does after TimeoutStopSec.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same config and state dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `[[models]]` entry served by nginx on `port`: `/health`, `/ready`, `/metadata` answer 200,
/// and `POST /infer` answers 200 `{"outputs": [[0.5]]}` except for `error_percent` % of calls
/// (random per request), which get 500. Files go in `dir`.
pub fn nginx_model(dir: &Path, name: &str, port: u16, error_percent: f64) -> String {
    let prefix = dir.join(format!("nginx-{name}"));
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let split = if error_percent > 0.0 {
        format!("{error_percent}% 1;\n        * 0;")
    } else {
        "* 0;".to_string()
    };
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    split_clients "${{request_id}}" $fail {{
        {split}
    }}
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /health {{ return 200 '{{"status":"ok"}}'; }}
        location = /ready {{ return 200 '{{"ready":true}}'; }}
        location = /metadata {{ return 200 '{{"name":"{name}","version":"nginx"}}'; }}
        location = /infer {{
            if ($fail) {{ return 500 '{{"error":{{"code":"injected","message":"injected failure"}}}}'; }}
            return 200 '{{"outputs":[[0.5]]}}';
        }}
    }}
}}
"#,
        prefix = prefix.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    format!(
        "[[models]]\nname = \"{name}\"\nport = {port}\ncommand = [\"/usr/sbin/nginx\", \"-p\", {:?}, \"-c\", {:?}]\n\
         health_interval = \"200ms\"\nstop_timeout = \"5s\"\n",
        prefix.display().to_string(),
        conf_path.display().to_string()
    )
}

/// Runs wrk against `url` (POST `body` as JSON) and returns its parsed summary.
pub fn wrk_post(url: &str, body: &str, connections: u32, duration: Duration) -> WrkReport {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {body:?}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             done = function(summary, latency, requests)\n  io.write(string.format(\"WARDEN requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\\n\",\n    \
             summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))\nend\n"
        ),
    )
    .unwrap();
    let out = Command::new("wrk")
        .arg(format!("-c{connections}"))
        .arg(format!("-t{}", connections.clamp(1, 2)))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .expect("wrk runs (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    WrkReport::parse(&text).unwrap_or_else(|| panic!("no wrk summary in:\n{text}"))
}

/// What wrk counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkReport {
    pub requests: u64,
    /// Answers with a status outside 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub transport_errors: u64,
}

impl WrkReport {
    fn parse(text: &str) -> Option<WrkReport> {
        let line = text.lines().find(|l| l.starts_with("WARDEN "))?;
        let get = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Some(WrkReport {
            requests: get("requests"),
            non_2xx: get("non2xx"),
            transport_errors: get("connect") + get("read") + get("write") + get("timeout"),
        })
    }
}

//! `warden bench fast`: the fast path's comparisons side by side in one run, as ratios — the
//! same model process straight, behind nginx (keepalive upstream, started here) and behind
//! warden's gateway with auth, audit and metrics on; `/infer` at concurrency 1 against the
//! same server's `/health`; P99 at many concurrent clients through the gateway; the agent's
//! own CPU and peak RSS against node_exporter's when Debian's `prometheus-node-exporter` is
//! installed (`warden bench fast --setup` installs it).
//!
//! Load comes from wrk (the same client for every side); the agent is a real `warden run`
//! supervising one model process on free ports.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The same failures as the API bench: a set-up step, I/O, or the harness.
pub use crate::api::BenchError;

pub struct FastBench {
    /// wrk connections for the direct / nginx / gateway comparison.
    pub connections: u32,
    /// Each wrk measurement's length.
    pub duration: Duration,
    /// Rounds of the direct / nginx / gateway comparison, each side once per round in a
    /// rotating order, so that the machine's drift between measurements falls on every side.
    pub rounds: u32,
    /// Concurrent clients for the gateway's P99.
    pub many: u32,
    pub model: String,
    pub models_dir: Option<PathBuf>,
}

/// One wrk measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkFigures {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Non-2xx answers plus connect/read/write errors and timeouts.
    pub errors: u64,
}

impl WrkFigures {
    /// Reads the line the bench's wrk script prints when done.
    pub fn parse(text: &str) -> Option<WrkFigures> {
        let line = text.lines().find(|l| l.starts_with("WARDEN "))?;
        let mut f = WrkFigures::default();
        let mut seconds = 0.0;
        for kv in line.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=')?;
            let n: f64 = v.parse().ok()?;
            match k {
                "requests" => f.requests = n as u64,
                "errors" => f.errors = n as u64,
                "p50us" => f.p50_ms = n / 1000.0,
                "p99us" => f.p99_ms = n / 1000.0,
                "us" => seconds = n / 1e6,
                _ => {}
            }
        }
        if seconds > 0.0 {
            f.per_second = f.requests as f64 / seconds;
        }
        Some(f)
    }
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) use crate::api::die_with_parent;

pub(crate) fn sibling(name: &str) -> Result<PathBuf, BenchError> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

/// Installs what the comparisons need beyond the dev set-up (Debian's node_exporter).
pub fn setup() -> Result<(), BenchError> {
    if which("prometheus-node-exporter").is_some() {
        println!("prometheus-node-exporter already installed");
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "prometheus-node-exporter",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        return Err(BenchError::Setup(
            "apt-get install prometheus-node-exporter failed".into(),
        ));
    }
    Ok(())
}

/// The models dir a bench was given, or a fresh `warden models init` under `scratch`.
pub(crate) fn models_dir_or_init(
    warden: &Path,
    given: Option<&PathBuf>,
    scratch: &Path,
) -> Result<PathBuf, BenchError> {
    if let Some(dir) = given {
        return Ok(dir.clone());
    }
    let dir = scratch.join("models");
    run_ok(
        Command::new(warden)
            .args(["models", "init", "--dir"])
            .arg(&dir),
        "warden models init",
    )?;
    Ok(dir)
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run_ok(command: &mut Command, what: &str) -> Result<String, BenchError> {
    let out = command.stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The wrk script: a fixed request, and one summary line the bench parses.
pub(crate) fn wrk_script(
    dir: &Path,
    method: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> PathBuf {
    let mut lua = format!("wrk.method = {method:?}\n");
    if let Some(body) = body {
        let _ = writeln!(
            lua,
            "wrk.body = {body:?}\nwrk.headers[\"Content-Type\"] = \"application/json\""
        );
    }
    if let Some(token) = token {
        let _ = writeln!(lua, "wrk.headers[\"Authorization\"] = \"Bearer {token}\"");
    }
    lua.push_str(
        "done = function(summary, latency, requests)\n  \
         local e = summary.errors\n  \
         io.write(string.format(\"WARDEN requests=%d errors=%d us=%d p50us=%d p99us=%d\\n\",\n    \
         summary.requests, e.status + e.connect + e.read + e.write + e.timeout, summary.duration,\n    \
         latency:percentile(50), latency:percentile(99)))\nend\n",
    );
    let path = dir.join(format!(
        "wrk-{method}-{}-{}.lua",
        body.is_some(),
        token.is_some()
    ));
    let _ = std::fs::write(&path, lua);
    path
}

pub(crate) fn wrk(
    script: &Path,
    url: &str,
    connections: u32,
    duration: Duration,
) -> Result<WrkFigures, BenchError> {
    let out = Command::new("wrk")
        .arg(format!("-c{connections}"))
        .arg(format!("-t{}", connections.clamp(1, 2)))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| BenchError::Setup(format!("wrk: {e} (scripts/setup.sh installs it)")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    WrkFigures::parse(&text).ok_or_else(|| BenchError::Setup(format!("no wrk summary in:\n{text}")))
}

/// Waits until `url` answers 2xx to a GET (bounded).
pub(crate) fn wait_http(url: &str, bound: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        let ok = Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", "--max-time", "2", url])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(BenchError::Setup(format!("{url} never answered")))
}

fn nginx(dir: &Path, listen: u16, upstream: u16) -> Result<Proc, BenchError> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let p = prefix.display();
    let conf = format!(
        "worker_processes auto;\ndaemon off;\npid {p}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  \
         fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  \
         keepalive_requests 1000000;\n  \
         upstream model {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n  \
         server {{\n    listen 127.0.0.1:{listen};\n    location / {{\n      proxy_pass http://model;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let bin = which("nginx").ok_or_else(|| BenchError::Setup("nginx not installed".into()))?;
    let mut command = Command::new(bin);
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    die_with_parent(&mut command);
    Ok(Proc(command.spawn()?))
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// The figures `warden bench all` checks against the goals.
#[derive(Debug, Clone, Copy)]
pub struct FastSummary {
    pub gateway_vs_nginx: f64,
    pub nginx_added_p50_ms: f64,
    pub gateway_added_p50_ms: f64,
    /// Each proxy's own CPU per request, microseconds.
    pub gateway_cpu_us: f64,
    pub nginx_cpu_us: f64,
    pub lone_infer_vs_health: f64,
    pub many_p99_ms: f64,
    pub many_errors: u64,
}

impl FastBench {
    pub fn run(&self) -> Result<String, BenchError> {
        Ok(self.run_summary()?.0)
    }

    /// The report, and its figures for the goals table.
    pub fn run_summary(&self) -> Result<(String, FastSummary), BenchError> {
        let dir = tempfile::tempdir()?;
        let warden = sibling("warden")?;
        let models_dir = models_dir_or_init(&warden, self.models_dir.as_ref(), dir.path())?;
        // Keys for auth: the gateway is measured as deployed (bearer token, rate limit, audit).
        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        run_ok(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&private),
            "openssl genpkey",
        )?;
        run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public),
            "openssl rsa -pubout",
        )?;
        std::fs::write(dir.path().join("keys.toml"), "")?;
        let api_port = warden_testkit::net::try_free_port()?;
        let model_port = warden_testkit::net::try_free_port()?;
        let nginx_port = warden_testkit::net::try_free_port()?;
        let d = dir.path();
        let config = format!(
            "[agent]\nlisten = \"127.0.0.1:{api_port}\"\ncontrol_socket = {:?}\nstate_dir = {:?}\n\
             models_dir = {models_dir:?}\n\n[cloudwatch]\nenabled = false\n[logs]\nenabled = false\n\
             [auth]\njwt_public_key = {public:?}\njwt_private_key = {private:?}\napi_keys_file = {:?}\n\
             rate_limit_per_hour = 1000000000\n[api]\nmax_concurrency = {}\n\n\
             [[models]]\nname = \"{}\"\nport = {model_port}\nthreads = 1\n",
            d.join("control.sock"),
            d.join("state"),
            d.join("keys.toml"),
            (self.many as usize * 2).max(1024),
            self.model,
        );
        let config_path = d.join("warden.toml");
        std::fs::write(&config_path, config)?;
        let token = run_ok(
            Command::new(&warden)
                .args(["token", "issue", "--config"])
                .arg(&config_path)
                .args(["--sub", "bench", "--role", "user"]),
            "warden token issue",
        )?
        .trim()
        .to_string();

        let mut agent = Command::new(&warden);
        agent
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        die_with_parent(&mut agent);
        let agent = Proc(agent.spawn()?);
        let nginx_proc = nginx(d, nginx_port, model_port)?;
        let base_model = format!("http://127.0.0.1:{model_port}");
        let base_api = format!("http://127.0.0.1:{api_port}");
        wait_http(&format!("{base_model}/ready"), Duration::from_secs(120))?;
        wait_http(&format!("{base_api}/ready"), Duration::from_secs(120))?;
        wait_http(
            &format!("http://127.0.0.1:{nginx_port}/health"),
            Duration::from_secs(30),
        )?;
        let example = example_body(&base_model)?;

        // The agent's own cost first, before any load has grown its buffers (the issue's
        // setting: sampling, sinks and the idle API).
        let agent_pid = agent.0.id();
        let (cpu, rss) = agent_cost(agent_pid, self.duration);

        let post = wrk_script(d, "POST", Some(&example), None);
        let post_auth = wrk_script(d, "POST", Some(&example), Some(&token));
        let get = wrk_script(d, "GET", None, None);
        let (c, t) = (self.connections, self.duration);
        let warm = Duration::from_secs(2);
        wrk(
            &post_auth,
            &format!("{base_api}/api/v1/{}", self.model),
            c,
            warm,
        )?;
        wrk(&post, &format!("{base_model}/infer"), c, warm)?;

        // Each side's CPU per request, the fair comparison when every process shares 2 cores:
        // the proxy's (nginx's master and workers, or the whole agent) and the model's.
        let model_pid = children(agent_pid).into_iter().next();
        let nginx_pids = [vec![nginx_proc.0.id()], children(nginx_proc.0.id())].concat();
        let model_pids: Vec<u32> = model_pid.into_iter().collect();
        let sides = [
            Side {
                name: "direct (model process)",
                script: &post,
                url: format!("{base_model}/infer"),
                proxies: Vec::new(),
            },
            Side {
                name: "nginx, keepalive upstream",
                script: &post,
                url: format!("http://127.0.0.1:{nginx_port}/infer"),
                proxies: nginx_pids,
            },
            Side {
                name: "warden gateway (auth+audit+metrics)",
                script: &post_auth,
                url: format!("{base_api}/api/v1/{}", self.model),
                proxies: vec![agent_pid],
            },
        ];
        let rounds = self.rounds.max(1) as usize;
        let mut measured: Vec<[(WrkFigures, Cost); 3]> = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let mut this = [(WrkFigures::default(), Cost::default()); 3];
            for k in 0..sides.len() {
                let i = (round + k) % sides.len();
                let side = &sides[i];
                this[i] = costed(&side.proxies, &model_pids, || {
                    wrk(side.script, &side.url, c, t)
                })?;
            }
            measured.push(this);
        }
        let comparison = Comparison::of(&measured);
        let lone_infer = wrk(&post, &format!("{base_model}/infer"), 1, t)?;
        let lone_health = wrk(&get, &format!("{base_model}/health"), 1, t)?;
        let many = wrk(
            &post_auth,
            &format!("{base_api}/api/v1/{}", self.model),
            self.many,
            t,
        )?;
        let after_load = proc_usage(agent_pid).map_or(f64::NAN, |(_, hwm)| hwm as f64 / 1024.0);

        let mut r = String::new();
        let _ = writeln!(
            r,
            "warden bench fast: model {}, wrk -c{c} for {t:?} per side, {rounds} rounds in one run \
             (each side once per round, in a rotating order; ratios are within a round)\n",
            self.model
        );
        let _ = writeln!(
            r,
            "{:<5} {:<34} {:>10} {:>9} {:>9} {:>8} {:>7} {:>10} {:>10}",
            "round",
            "side",
            "req/s",
            "p50 ms",
            "p99 ms",
            "vs direct",
            "errors",
            "proxy CPU",
            "model CPU"
        );
        for (n, round) in measured.iter().enumerate() {
            let direct = round[0].0;
            for (side, (f, cost)) in sides.iter().zip(round) {
                let _ = writeln!(
                    r,
                    "{:<5} {:<34} {:>10.0} {:>9.3} {:>9.3} {:>8.2}x {:>7} {:>7.1} us {:>7.1} us",
                    n + 1,
                    side.name,
                    f.per_second,
                    f.p50_ms,
                    f.p99_ms,
                    ratio(f.per_second, direct.per_second),
                    f.errors,
                    cost.proxy_us(f.requests),
                    cost.model_us(f.requests),
                );
            }
        }
        let _ = writeln!(
            r,
            "(CPU: microseconds of the proxy's and the model process's CPU time per request)"
        );
        let _ = writeln!(
            r,
            "gateway / nginx throughput per round: {}; median {:.2}x",
            comparison
                .gateway_vs_nginx
                .iter()
                .map(|x| format!("{x:.2}x"))
                .collect::<Vec<_>>()
                .join(", "),
            median(&comparison.gateway_vs_nginx)
        );
        let _ = writeln!(
            r,
            "added p50, median of rounds: nginx {:.3} ms, gateway {:.3} ms; \
             proxy CPU per request, all rounds: nginx {:.1} us, gateway {:.1} us",
            median(&comparison.nginx_added_p50_ms),
            median(&comparison.gateway_added_p50_ms),
            comparison.nginx_cpu_us,
            comparison.gateway_cpu_us
        );
        let _ = writeln!(
            r,
            "\nconcurrency 1 on the model: /infer p50 {:.3} ms, /health p50 {:.3} ms: {:.2}x (goal <= 3x)",
            lone_infer.p50_ms,
            lone_health.p50_ms,
            ratio(lone_infer.p50_ms, lone_health.p50_ms)
        );
        let _ = writeln!(
            r,
            "{} clients through the gateway: p99 {:.1} ms, {} errors of {} requests, {:.0} req/s",
            self.many, many.p99_ms, many.errors, many.requests, many.per_second
        );
        let _ = writeln!(
            r,
            "\nagent before any load ({t:?}, 1 model, no AWS): {cpu:.2} % of a core, {rss:.1} MB peak RSS \
             ({after_load:.1} MB peak after the {} -client run)",
            self.many
        );
        match node_exporter_cost(t)? {
            Some((ne_cpu, ne_rss)) => {
                let _ = writeln!(
                    r,
                    "node_exporter scraped every second: {ne_cpu:.2} % of a core, {ne_rss:.1} MB peak RSS; agent/node_exporter CPU {:.2}x, RSS {:.2}x",
                    ratio(cpu, ne_cpu),
                    ratio(rss, ne_rss)
                );
            }
            None => {
                let _ = writeln!(
                    r,
                    "node_exporter: not installed (`warden bench fast --setup`)"
                );
            }
        }
        drop(agent);
        let summary = FastSummary {
            gateway_vs_nginx: median(&comparison.gateway_vs_nginx),
            nginx_added_p50_ms: median(&comparison.nginx_added_p50_ms),
            gateway_added_p50_ms: median(&comparison.gateway_added_p50_ms),
            gateway_cpu_us: comparison.gateway_cpu_us,
            nginx_cpu_us: comparison.nginx_cpu_us,
            lone_infer_vs_health: ratio(lone_infer.p50_ms, lone_health.p50_ms),
            many_p99_ms: many.p99_ms,
            many_errors: many.errors,
        };
        Ok((r, summary))
    }
}

/// One side of the throughput comparison: where wrk sends its load, and whose CPU is counted.
struct Side<'a> {
    name: &'static str,
    script: &'a Path,
    url: String,
    proxies: Vec<u32>,
}

/// The comparison's figures across rounds: each ratio within one round, CPU over all rounds.
struct Comparison {
    gateway_vs_nginx: Vec<f64>,
    nginx_added_p50_ms: Vec<f64>,
    gateway_added_p50_ms: Vec<f64>,
    nginx_cpu_us: f64,
    gateway_cpu_us: f64,
}

impl Comparison {
    /// `rounds` holds, per round, the direct, nginx and gateway measurements in that order.
    fn of(rounds: &[[(WrkFigures, Cost); 3]]) -> Comparison {
        let per_round = |f: fn(&[(WrkFigures, Cost); 3]) -> f64| rounds.iter().map(f).collect();
        let cpu_us = |i: usize| {
            let ticks = rounds.iter().map(|r| r[i].1.proxy_ticks).sum();
            let requests = rounds.iter().map(|r| r[i].0.requests).sum();
            Cost::per_request(ticks, requests)
        };
        Comparison {
            gateway_vs_nginx: per_round(|r| ratio(r[2].0.per_second, r[1].0.per_second)),
            nginx_added_p50_ms: per_round(|r| r[1].0.p50_ms - r[0].0.p50_ms),
            gateway_added_p50_ms: per_round(|r| r[2].0.p50_ms - r[0].0.p50_ms),
            nginx_cpu_us: cpu_us(1),
            gateway_cpu_us: cpu_us(2),
        }
    }
}

/// The middle value (the mean of the middle two for an even count); NaN when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU ticks (USER_HZ) the proxy's and the model's processes spent during one measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    proxy_ticks: u64,
    model_ticks: u64,
}

impl Cost {
    fn per_request(ticks: u64, requests: u64) -> f64 {
        if requests == 0 {
            return f64::NAN;
        }
        ticks as f64 * 1e6 / 100.0 / requests as f64
    }

    fn proxy_us(&self, requests: u64) -> f64 {
        Self::per_request(self.proxy_ticks, requests)
    }

    fn model_us(&self, requests: u64) -> f64 {
        Self::per_request(self.model_ticks, requests)
    }
}

fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| proc_usage(*p))
        .map(|(ticks, _)| ticks)
        .sum()
}

/// Runs `measure`, counting the CPU `proxies` and `models` spend meanwhile.
fn costed<T>(
    proxies: &[u32],
    models: &[u32],
    measure: impl FnOnce() -> Result<T, BenchError>,
) -> Result<(T, Cost), BenchError> {
    let (p0, m0) = (ticks_of(proxies), ticks_of(models));
    let out = measure()?;
    let (p1, m1) = (ticks_of(proxies), ticks_of(models));
    Ok((
        out,
        Cost {
            proxy_ticks: p1.saturating_sub(p0),
            model_ticks: m1.saturating_sub(m0),
        },
    ))
}

/// A process's children (its threads' children, as the kernel lists them).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The model's own `/metadata` example: a request `/infer` accepts.
fn example_body(base: &str) -> Result<String, BenchError> {
    let text = run_ok(
        Command::new("curl").args(["-fsS", "--max-time", "5", &format!("{base}/metadata")]),
        "GET /metadata",
    )?;
    let meta: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BenchError::Setup(format!("metadata: {e}")))?;
    Ok(meta["example"].to_string())
}

/// CPU ticks (utime + stime) and peak RSS (VmHWM, kB) of a process.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, hwm))
}

/// % of one core over `window` and peak RSS in MB.
fn agent_cost(pid: u32, window: Duration) -> (f64, f64) {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let Some((t0, _)) = proc_usage(pid) else {
        return (f64::NAN, f64::NAN);
    };
    std::thread::sleep(window);
    let Some((t1, hwm)) = proc_usage(pid) else {
        return (f64::NAN, f64::NAN);
    };
    let cpu = (t1 - t0) as f64 / ticks_per_s / window.as_secs_f64() * 100.0;
    (cpu, hwm as f64 / 1024.0)
}

/// node_exporter on a free port, scraped every second for `window`.
fn node_exporter_cost(window: Duration) -> Result<Option<(f64, f64)>, BenchError> {
    let Some((ne, url)) = crate::agent::start_node_exporter()? else {
        return Ok(None);
    };
    let pid = ne.0.id();
    let Some((t0, _)) = proc_usage(pid) else {
        return Ok(None);
    };
    let started = Instant::now();
    while started.elapsed() < window {
        let _ = Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", "--max-time", "2", &url])
            .status();
        std::thread::sleep(Duration::from_secs(1));
    }
    let Some((t1, hwm)) = proc_usage(pid) else {
        return Ok(None);
    };
    let cpu = (t1 - t0) as f64 / 100.0 / started.elapsed().as_secs_f64() * 100.0;
    Ok(Some((cpu, hwm as f64 / 1024.0)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_summary_line_parses() {
        let f = super::WrkFigures::parse(
            "Running 1s test\nWARDEN requests=2000 errors=3 us=2000000 p50us=1500 p99us=9000\n",
        )
        .unwrap();
        assert_eq!((f.requests, f.errors), (2000, 3));
        assert_eq!(f.per_second, 1000.0);
        assert_eq!((f.p50_ms, f.p99_ms), (1.5, 9.0));
        assert!(super::WrkFigures::parse("no summary").is_none());
    }

    #[test]
    fn the_median_ignores_missing_figures_and_averages_the_middle_pair() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(&[f64::NAN, 5.0]), 5.0);
        assert!(super::median(&[]).is_nan());
    }

    #[test]
    fn ratios_are_taken_within_a_round_and_cpu_over_all_rounds() {
        use super::{Comparison, Cost, WrkFigures};
        let side = |per_second: f64, p50_ms: f64, requests: u64, proxy_ticks: u64| {
            let f = WrkFigures {
                per_second,
                p50_ms,
                requests,
                ..WrkFigures::default()
            };
            let cost = Cost {
                proxy_ticks,
                model_ticks: 0,
            };
            (f, cost)
        };
        // Round 2 ran on a slower machine: every side halved, the ratio did not move.
        let rounds = [
            [
                side(400.0, 1.0, 4000, 0),
                side(200.0, 1.5, 2000, 10),
                side(300.0, 1.4, 3000, 12),
            ],
            [
                side(200.0, 2.0, 2000, 0),
                side(100.0, 3.0, 1000, 10),
                side(150.0, 2.8, 1500, 12),
            ],
        ];
        let c = Comparison::of(&rounds);
        assert_eq!(c.gateway_vs_nginx, vec![1.5, 1.5]);
        assert_eq!(c.nginx_added_p50_ms, vec![0.5, 1.0]);
        // 20 ticks (0.2 s) over 3,000 requests; 24 ticks over 4,500.
        assert!((c.nginx_cpu_us - 200_000.0 / 3000.0).abs() < 1e-9);
        assert!((c.gateway_cpu_us - 240_000.0 / 4500.0).abs() < 1e-9);
    }
}

//! `warden bench api`: load against a real `warden run` on 127.0.0.1 — many concurrent
//! clients through the gateway, then the same load straight to a model process vs through the
//! gateway, side by side in one run. Bounded by duration; prints a report.

use hdrhistogram::Histogram;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Harness(#[from] warden_testkit::HarnessError),
}

pub struct ApiBench {
    /// Concurrent clients in the load phase.
    pub clients: usize,
    pub duration: Duration,
    /// Concurrency and duration of the overhead comparison.
    pub overhead_clients: usize,
    pub overhead_duration: Duration,
    /// Models dir to reuse (else a temp one is filled by the agent on first run).
    pub models_dir: Option<PathBuf>,
}

/// A `warden run` child on free ports, killed on drop.
struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    base: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM so the agent stops its models; then reap.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(models_dir: Option<&PathBuf>, max_concurrency: usize) -> Result<Agent, BenchError> {
    let dir = tempfile::tempdir()?;
    let port = warden_testkit::net::try_free_port()?;
    let models_dir = match models_dir {
        Some(d) => d.clone(),
        None => dir.path().join("models"),
    };
    let mut toml = format!(
        "[agent]\nlisten = \"127.0.0.1:{port}\"\ncontrol_socket = {:?}\nstate_dir = {:?}\nmodels_dir = {:?}\n\n\
         [cloudwatch]\nenabled = false\n[logs]\nenabled = false\n[api]\nmax_concurrency = {max_concurrency}\n",
        dir.path().join("control.sock"),
        dir.path().join("state"),
        models_dir,
    );
    // The five built-in models on free ports: the bench must not collide with a running agent.
    for (name, _) in warden::config::DEFAULT_MODELS {
        let _ = write!(
            toml,
            "\n[[models]]\nname = \"{name}\"\nport = {}\nthreads = 1\n",
            warden_testkit::net::try_free_port()?
        );
    }
    let config = dir.path().join("warden.toml");
    std::fs::write(&config, toml)?;
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // A bench killed from outside (timeout, Ctrl-C) must not leave its agent and models behind:
    // the agent gets SIGTERM when the bench dies and stops its models itself.
    die_with_parent(&mut command);
    let child = command.spawn()?;
    Ok(Agent {
        child,
        _dir: dir,
        base: format!("http://127.0.0.1:{port}"),
    })
}

/// Per-model target: the gateway route, the model's own `/infer`, and an example body.
struct Target {
    model: String,
    gateway_url: String,
    direct_url: String,
    body: axum::body::Bytes,
}

async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(BenchError::Setup(format!(
        "{base}/ready did not answer 200 within {timeout:?}"
    )))
}

async fn targets(http: &reqwest::Client, base: &str) -> Result<Vec<Target>, BenchError> {
    let models: Vec<Value> = http
        .get(format!("{base}/api/v1/models"))
        .send()
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .json()
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut out = Vec::new();
    for m in models {
        let (Some(name), Some(port)) = (m["name"].as_str(), m["port"].as_u64()) else {
            continue;
        };
        let Some(example) = m["metadata"].get("example") else {
            continue;
        };
        out.push(Target {
            model: name.to_string(),
            gateway_url: format!("{base}/api/v1/{name}"),
            direct_url: format!("http://127.0.0.1:{port}/infer"),
            body: axum::body::Bytes::from(serde_json::to_vec(example).unwrap_or_default()),
        });
    }
    if out.is_empty() {
        return Err(BenchError::Setup(
            "no model publishes an example body in /metadata".into(),
        ));
    }
    Ok(out)
}

#[derive(Default)]
struct LoadResult {
    latency_us: Option<Histogram<u64>>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    elapsed: Duration,
}

impl LoadResult {
    fn ok(&self) -> u64 {
        self.statuses.get(&200).copied().unwrap_or(0)
    }
    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    }
    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `clients` tasks, each looping over `urls` with keep-alive, until `duration` passes.
async fn load(
    urls: Arc<Vec<(String, axum::body::Bytes)>>,
    clients: usize,
    duration: Duration,
) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let urls = urls.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            // One connection per client, as separate callers would have.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).ok();
            let mut statuses = BTreeMap::new();
            let mut transport_errors = 0;
            let Ok(http) = http else {
                return (hist, statuses, 1);
            };
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let (url, body) = &urls[i % urls.len()];
                i += 1;
                let t = Instant::now();
                match http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        *statuses.entry(status).or_insert(0) += 1;
                        if status == 200
                            && let Some(h) = hist.as_mut()
                        {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                    }
                    Err(_) => transport_errors += 1,
                }
            }
            (hist, statuses, transport_errors)
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut result = LoadResult::default();
    while let Some(Ok((hist, statuses, errors))) = tasks.join_next().await {
        if let Some(h) = hist {
            match result.latency_us.as_mut() {
                Some(all) => {
                    let _ = all.add(&h);
                }
                None => result.latency_us = Some(h),
            }
        }
        for (s, n) in statuses {
            *result.statuses.entry(s).or_insert(0) += n;
        }
        result.transport_errors += errors;
    }
    result.elapsed = started.elapsed();
    result
}

fn describe(out: &mut String, label: &str, r: &LoadResult) {
    let _ = writeln!(
        out,
        "{label:<34} {:>9.0} req/s  p50 {:>8.2} ms  p99 {:>8.2} ms  statuses {:?}  transport errors {}",
        r.throughput(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.statuses,
        r.transport_errors
    );
}

impl ApiBench {
    pub async fn run(&self) -> Result<String, BenchError> {
        warden::tls::install_crypto_provider();
        // Room for every client plus headroom: shedding is measured, not configured away.
        let agent = start_agent(self.models_dir.as_ref(), self.clients * 2)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        wait_ready(&http, &agent.base, Duration::from_secs(300)).await?;
        let targets = targets(&http, &agent.base).await?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "warden bench api — agent {} with {} models on CPU",
            agent.base,
            targets.len()
        );

        let all: Arc<Vec<_>> = Arc::new(
            targets
                .iter()
                .map(|t| (t.gateway_url.clone(), t.body.clone()))
                .collect(),
        );
        let heavy = load(all, self.clients, self.duration).await;
        let _ = writeln!(
            out,
            "\n1. {} concurrent clients for {:?}, round-robin over all models:",
            self.clients, self.duration
        );
        describe(&mut out, "through the gateway", &heavy);
        let non_ok: u64 = heavy
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum();
        let _ = writeln!(
            out,
            "   non-200: {non_ok} (429 = rate limit, 503 = shed or model queue full; anything else is an error)"
        );

        // Overhead: one model, same body, direct vs gateway, same concurrency, back to back.
        let t = targets
            .iter()
            .find(|t| t.model == "risk-analyzer")
            .unwrap_or(&targets[0]);
        let direct = load(
            Arc::new(vec![(t.direct_url.clone(), t.body.clone())]),
            self.overhead_clients,
            self.overhead_duration,
        )
        .await;
        let gateway = load(
            Arc::new(vec![(t.gateway_url.clone(), t.body.clone())]),
            self.overhead_clients,
            self.overhead_duration,
        )
        .await;
        let _ = writeln!(
            out,
            "\n2. gateway overhead on {} at concurrency {} for {:?} each:",
            t.model, self.overhead_clients, self.overhead_duration
        );
        describe(&mut out, "straight to the model process", &direct);
        describe(&mut out, "through the gateway", &gateway);
        let _ = writeln!(
            out,
            "   added p50 {:.0} µs, throughput ratio gateway/direct {:.3}",
            (gateway.quantile_ms(0.5) - direct.quantile_ms(0.5)) * 1000.0,
            gateway.throughput() / direct.throughput().max(1e-9)
        );
        drop(agent);
        Ok(out)
    }
}

/// The child gets SIGTERM when the bench dies (timeout, Ctrl-C), so nothing is left behind.
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: only an async-signal-safe libc call between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

//! `warden bench restart`: how fast a SIGKILLed model is back, split into the agent's part
//! (notice the exit, respawn) and the model's part (load until `/ready`).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use warden::config::{Config, ModelConfig};
use warden::supervisor::{
    EventKind, ModelState, SupervisorError, SupervisorHandle, SupervisorOptions,
};

#[derive(Debug, Clone)]
pub struct RestartBench {
    pub model: String,
    pub kills: usize,
    pub models_dir: Option<PathBuf>,
    /// argv to spawn instead of `warden serve-model`; `{port}` is replaced.
    pub command: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

/// Per-kill timings.
#[derive(Debug, Clone, Default)]
pub struct RestartReport {
    pub model: String,
    pub command: Vec<String>,
    pub noticed: Vec<Duration>,
    pub respawned: Vec<Duration>,
    pub model_load: Vec<Duration>,
    pub total: Vec<Duration>,
}

fn stats(samples: &[Duration]) -> (f64, f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    if ms.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.9), ms[0], ms[ms.len() - 1])
}

impl fmt::Display for RestartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "restart bench: model {}, {} kills, command: {}",
            self.model,
            self.total.len(),
            self.command.join(" ")
        )?;
        writeln!(
            f,
            "{:<40} {:>9} {:>9} {:>9} {:>9}",
            "ms", "median", "p90", "min", "max"
        )?;
        for (label, samples) in [
            ("kill -9 → exit noticed (agent)", &self.noticed),
            ("kill -9 → new child spawned (agent)", &self.respawned),
            ("spawned → /ready (model load)", &self.model_load),
            ("kill -9 → /ready (total)", &self.total),
        ] {
            let (p50, p90, min, max) = stats(samples);
            writeln!(f, "{label:<40} {p50:>9.1} {p90:>9.1} {min:>9.1} {max:>9.1}")?;
        }
        let (agent, _, _, _) = stats(&self.respawned);
        let (total, _, _, _) = stats(&self.total);
        if total > 0.0 {
            write!(
                f,
                "agent share of the median: {:.1} %",
                100.0 * agent / total
            )?;
        }
        Ok(())
    }
}

pub fn run_restart(options: RestartBench) -> Result<RestartReport, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(format!("runtime: {e}")))?;
    runtime.block_on(bench(options))
}

async fn bench(options: RestartBench) -> Result<RestartReport, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
    let port =
        warden_testkit::net::try_free_port().map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut config = Config::embedded();
    if let Some(dir) = &options.models_dir {
        config.agent.models_dir = dir.clone();
    }
    let mut model = ModelConfig::new(&options.model, port);
    model.command = options.command.as_ref().map(|argv| {
        argv.iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect()
    });
    model.health_interval = Duration::from_millis(500);
    // Each kill lands on a child that has run for `stable_after`, so the policy restarts it at
    // once, as for a rare crash in production; 20 kills must not count as a crash loop.
    model.stable_after = Duration::from_millis(500);
    model.crash_loop_exits = u32::MAX;
    config.models = vec![model.clone()];
    if model.command.is_none() {
        warden::agent::ensure_models(&config, &exe).await;
    }
    let (supervisor, _logs) =
        SupervisorHandle::start(&config, SupervisorOptions::new(exe.clone()))?;
    let result = measure(&supervisor, &model, &config, &exe, options.kills).await;
    supervisor.shutdown().await;
    result
}

async fn wait_ready_stable(
    supervisor: &SupervisorHandle,
    stable: Duration,
) -> Result<u32, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = supervisor.status().into_iter().next()
            && s.state == ModelState::Ready
            && s.uptime_secs >= stable.as_secs_f64()
            && let Some(pid) = s.pid
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout("the model to become ready"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn answers_ready(client: &reqwest::Client, port: u16) -> bool {
    client
        .get(format!("http://127.0.0.1:{port}/ready"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn measure(
    supervisor: &SupervisorHandle,
    model: &ModelConfig,
    config: &Config,
    exe: &std::path::Path,
    kills: usize,
) -> Result<RestartReport, BenchError> {
    warden::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut report = RestartReport {
        model: model.name.clone(),
        command: warden::supervisor::child::model_argv(model, config, exe),
        ..Default::default()
    };
    for _ in 0..kills {
        let old = wait_ready_stable(supervisor, model.stable_after).await?;
        let mut events = supervisor.subscribe();
        let t0 = Instant::now();
        kill(Pid::from_raw(old as i32), Signal::SIGKILL)
            .map_err(|e| BenchError::Setup(format!("kill {old}: {e}")))?;
        let mut noticed = None;
        let spawned = loop {
            let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
                .await
                .map_err(|_| BenchError::Timeout("the respawn"))?;
            match event {
                Ok(e) => match e.kind {
                    EventKind::Exited { pid, .. } if pid == old => {
                        noticed = Some(t0.elapsed());
                    }
                    EventKind::StateChanged {
                        to: ModelState::Starting,
                        pid: Some(pid),
                        ..
                    } if pid != old => break t0.elapsed(),
                    _ => {}
                },
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err(BenchError::Timeout("events (closed)")),
            }
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !answers_ready(&client, model.port).await {
            if Instant::now() > deadline {
                return Err(BenchError::Timeout("the new child's /ready"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let total = t0.elapsed();
        report.noticed.push(noticed.unwrap_or(spawned));
        report.respawned.push(spawned);
        report.model_load.push(total.saturating_sub(spawned));
        report.total.push(total);
    }
    Ok(report)
}

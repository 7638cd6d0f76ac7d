//! `warden bench agent`: the agent's own CPU and peak RSS in the issue's setting — a real
//! `warden run` with CloudWatch and CloudWatch Logs on (moto in server mode on 127.0.0.1),
//! 8 fake GPUs (the tests' fake NVML), the five real models, 1 s sampling — measured in the
//! same window as Debian's `prometheus-node-exporter` scraped every second, with both figures
//! and their ratios.
//!
//! Only the agent process is counted (`/proc/PID/stat` utime + stime, not its children's), over
//! the window after start-up has settled; peak RSS is VmHWM, start-up included. The report also
//! splits the agent's resident set (anon vs file-backed, from `smaps_rollup`) so a change can
//! be traced to heap, stacks or code pages.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::api::BenchError;
use crate::fast::{Proc, die_with_parent, ratio, sibling, wait_http, which};
use warden_testkit::nvml::{FakeGpu, FakeNvml, FakeState};

/// Linux's USER_HZ: /proc/PID/stat counts CPU time in these ticks.
const TICKS_PER_SECOND: f64 = 100.0;

/// Benchmark knobs; [`AgentBench::issue_setting`] is the issue's (8 GPUs, 1 s, 60 s).
#[derive(Debug, Clone)]
pub struct AgentBench {
    /// The measured window.
    pub duration: Duration,
    /// Waited after every model is ready and before the window opens (start-up settles:
    /// NVML init, first health checks, log groups created).
    pub settle: Duration,
    pub gpus: usize,
    pub sample_interval: Duration,
    /// Weights to reuse; without it `warden models init` fills a temp dir first.
    pub models_dir: Option<PathBuf>,
    /// The `moto_server` to run (the project venv's by default).
    pub moto_server: PathBuf,
}

impl AgentBench {
    pub fn issue_setting() -> AgentBench {
        AgentBench {
            duration: Duration::from_secs(60),
            settle: Duration::from_secs(10),
            gpus: 8,
            sample_interval: Duration::from_secs(1),
            models_dir: None,
            moto_server: warden_testkit::moto::default_server(),
        }
    }
}

/// A process's cost over one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCost {
    /// % of one core (utime + stime over wall time).
    pub cpu_percent: f64,
    /// VmHWM at the end of the window, MB (2^20 bytes).
    pub peak_rss_mb: f64,
    /// VmRSS at the end of the window, MB.
    pub rss_mb: f64,
    /// Resident anonymous memory (heap, stacks), MB, from smaps_rollup.
    pub anon_mb: f64,
    /// Resident file-backed memory (the binary's code and data, shared libraries), MB.
    pub file_mb: f64,
    pub threads: u64,
}

/// Both sides of one run.
#[derive(Debug, Clone)]
pub struct AgentReport {
    pub window: Duration,
    pub gpus: usize,
    pub models: usize,
    pub agent: ProcessCost,
    /// `None` when Debian's prometheus-node-exporter is not installed.
    pub node_exporter: Option<ProcessCost>,
    /// What reached moto during the run, proof the sinks were really on.
    pub cloudwatch_metrics: usize,
    pub log_groups: usize,
}

impl fmt::Display for AgentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "warden bench agent: CloudWatch + Logs on (moto), {} fake GPUs, {} models, 1 s sampling, {:?} window",
            self.gpus, self.models, self.window
        )?;
        writeln!(
            f,
            "moto received {} CloudWatch metrics and {} log groups during the run\n",
            self.cloudwatch_metrics, self.log_groups
        )?;
        writeln!(
            f,
            "{:<34} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "process", "% core", "peak MB", "RSS MB", "anon MB", "file MB", "threads"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, c: &ProcessCost| {
            writeln!(
                f,
                "{name:<34} {:>8.3} {:>10.1} {:>8.1} {:>8.1} {:>8.1} {:>8}",
                c.cpu_percent, c.peak_rss_mb, c.rss_mb, c.anon_mb, c.file_mb, c.threads
            )
        };
        row(f, "warden run (agent only)", &self.agent)?;
        match &self.node_exporter {
            Some(ne) => {
                row(f, "node_exporter, scraped every 1 s", ne)?;
                writeln!(
                    f,
                    "\nagent / node_exporter: CPU {:.2}x, peak RSS {:.2}x",
                    ratio(self.agent.cpu_percent, ne.cpu_percent),
                    ratio(self.agent.peak_rss_mb, ne.peak_rss_mb)
                )?;
            }
            None => writeln!(
                f,
                "node_exporter: not installed (`warden bench fast --setup` installs it)"
            )?,
        }
        writeln!(
            f,
            "goal: agent <= 0.5 % of a core ({}) and <= 25 MB peak RSS ({})",
            if self.agent.cpu_percent <= 0.5 {
                "met"
            } else {
                "NOT met"
            },
            if self.agent.peak_rss_mb <= 25.0 {
                "met"
            } else {
                "NOT met"
            }
        )
    }
}

/// What /proc says about a process at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    /// utime + stime of the process itself (its reaped children are not included).
    ticks: u64,
    hwm_kb: u64,
    rss_kb: u64,
    threads: u64,
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name (which may hold spaces): state is index 0, so
    // utime (field 14) and stime (15) are 11 and 12.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        ticks,
        hwm_kb: status_field(&status, "VmHWM:")?,
        rss_kb: status_field(&status, "VmRSS:")?,
        threads: status_field(&status, "Threads:")?,
    })
}

/// (anonymous, file-backed) resident kB from smaps_rollup.
fn rss_split(pid: u32) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return (0, 0);
    };
    let rss = status_field(&text, "Rss:").unwrap_or(0);
    let anon = status_field(&text, "Anonymous:").unwrap_or(0);
    (anon, rss.saturating_sub(anon))
}

fn cost(pid: u32, start: ProcSample, end: ProcSample, wall: Duration) -> ProcessCost {
    let (anon, file) = rss_split(pid);
    let mb = |kb: u64| kb as f64 / 1024.0;
    ProcessCost {
        cpu_percent: end.ticks.saturating_sub(start.ticks) as f64
            / TICKS_PER_SECOND
            / wall.as_secs_f64()
            * 100.0,
        peak_rss_mb: mb(end.hwm_kb),
        rss_mb: mb(end.rss_kb),
        anon_mb: mb(anon),
        file_mb: mb(file),
        threads: end.threads,
    }
}

/// The agent's children (the model processes), from every thread's `children` list.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `gpus` busy fake GPUs; GPU g runs model process `pids[g % n]` (per-model GPU memory is
/// then computed as on a real host).
pub(crate) fn gpu_state(gpus: usize, pids: &[u32]) -> FakeState {
    FakeState::with_gpus(
        (0..gpus)
            .map(|g| FakeGpu {
                util: 40 + g as u32,
                mem_util: 30,
                mem_used: 8 << 30,
                temp: 60,
                power_mw: 200_000,
                sm_clock: 1400,
                fan: 40,
                procs: pids
                    .get(g % pids.len().max(1))
                    .map(|&p| vec![(p, 1 << 30)])
                    .unwrap_or_default(),
                ..FakeGpu::default()
            })
            .collect(),
    )
}

/// node_exporter on a free port (started now, measured in the agent's window).
pub(crate) fn start_node_exporter() -> Result<Option<(Proc, String)>, BenchError> {
    let Some(bin) = which("prometheus-node-exporter") else {
        return Ok(None);
    };
    let port = warden_testkit::net::try_free_port()?;
    let mut command = Command::new(bin);
    command
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut command);
    let ne = Proc(command.spawn()?);
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_http(&url, Duration::from_secs(20))?;
    Ok(Some((ne, url)))
}

/// One scrape, read to the end (what Prometheus does every scrape interval).
fn scrape(url: &str) {
    let _ = warden_testkit::moto::plain_http::fetch(url);
}

/// Counts what the sinks put into moto: CloudWatch metrics in the namespace and log groups.
fn sink_evidence(endpoint: &str, namespace: &str) -> (usize, usize) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return (0, 0);
    };
    rt.block_on(async {
        let aws = warden::config::AwsConfig {
            endpoint_url: Some(endpoint.to_string()),
            ..warden::config::AwsConfig::default()
        };
        let sdk = warden::sinks::aws::sdk_config(&aws).await;
        let cw = aws_sdk_cloudwatch::Client::new(&sdk);
        let mut metrics = 0;
        let mut token = None;
        while let Ok(r) = cw
            .list_metrics()
            .namespace(namespace)
            .set_next_token(token)
            .send()
            .await
        {
            metrics += r.metrics().len();
            token = r.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
        let groups = logs
            .describe_log_groups()
            .send()
            .await
            .map_or(0, |r| r.log_groups().len());
        (metrics, groups)
    })
}

impl AgentBench {
    pub fn run(&self) -> Result<AgentReport, BenchError> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let warden = sibling("warden")?;
        let models_dir = crate::fast::models_dir_or_init(&warden, self.models_dir.as_ref(), d)?;
        let moto = warden_testkit::moto::Moto::try_start(&self.moto_server)?;
        let fake = FakeNvml::try_new(&gpu_state(self.gpus, &[]))?;
        let api_port = warden_testkit::net::try_free_port()?;
        let namespace = "WardenBench";
        let mut toml = format!(
            "[agent]\nhost_id = \"bench-host\"\nlisten = \"127.0.0.1:{api_port}\"\n\
             control_socket = {:?}\nstate_dir = {:?}\nmodels_dir = {models_dir:?}\n\
             sample_interval = \"{}ms\"\n\n[gpu]\nnvml_library = {:?}\nexpected_count = {}\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n\
             [cloudwatch]\nenabled = true\nnamespace = \"{namespace}\"\n\n[logs]\nenabled = true\n",
            d.join("control.sock"),
            d.join("state"),
            self.sample_interval.as_millis(),
            fake.lib_path(),
            self.gpus,
            moto.endpoint(),
        );
        let mut model_ports = Vec::new();
        for (name, _) in warden::config::DEFAULT_MODELS {
            let port = warden_testkit::net::try_free_port()?;
            model_ports.push(port);
            toml.push_str(&format!(
                "\n[[models]]\nname = \"{name}\"\nport = {port}\nthreads = 1\n"
            ));
        }
        let config = d.join("warden.toml");
        std::fs::write(&config, toml)?;
        let log = std::fs::File::create(d.join("agent.log"))?;

        let mut command = Command::new(&warden);
        command
            .args(["run", "--config"])
            .arg(&config)
            // The production default (info), not whatever the caller's shell has.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut command);
        let agent = Proc(command.spawn()?);
        let pid = agent.0.id();
        let ready = (|| {
            for port in &model_ports {
                wait_http(
                    &format!("http://127.0.0.1:{port}/ready"),
                    Duration::from_secs(300),
                )?;
            }
            wait_http(
                &format!("http://127.0.0.1:{api_port}/ready"),
                Duration::from_secs(60),
            )
        })();
        if let Err(e) = ready {
            let text = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(BenchError::Setup(format!(
                "{e}; agent log tail:\n{}",
                tail.join("\n")
            )));
        }
        // The GPUs now run the model processes, as on a real host.
        fake.try_set(&gpu_state(self.gpus, &children(pid)))?;
        let node_exporter = start_node_exporter()?;
        std::thread::sleep(self.settle);

        let a0 = sample(pid).ok_or_else(|| BenchError::Setup("agent exited".into()))?;
        let n0 = node_exporter.as_ref().and_then(|(p, _)| sample(p.0.id()));
        let started = Instant::now();
        let mut next = started;
        while started.elapsed() < self.duration {
            if let Some((_, url)) = &node_exporter {
                scrape(url);
            }
            next += Duration::from_secs(1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let wall = started.elapsed();
        let a1 = sample(pid).ok_or_else(|| BenchError::Setup("agent exited".into()))?;
        let agent_cost = cost(pid, a0, a1, wall);
        let ne_cost = match (&node_exporter, n0) {
            (Some((p, _)), Some(n0)) => sample(p.0.id()).map(|n1| cost(p.0.id(), n0, n1, wall)),
            _ => None,
        };
        let (cloudwatch_metrics, log_groups) = sink_evidence(&moto.endpoint(), namespace);
        drop(agent);
        Ok(AgentReport {
            window: wall,
            gpus: self.gpus,
            models: model_ports.len(),
            agent: agent_cost,
            node_exporter: ne_cost,
            cloudwatch_metrics,
            log_groups,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process_reads_from_proc() {
        let me = std::process::id();
        let s = super::sample(me).unwrap();
        assert!(s.hwm_kb >= s.rss_kb && s.rss_kb > 0 && s.threads >= 1);
        let (anon, file) = super::rss_split(me);
        assert!(anon > 0 && file > 0);
    }

    #[test]
    fn gpu_state_spreads_gpus_over_the_model_processes() {
        let s = super::gpu_state(8, &[10, 11, 12, 13, 14]);
        assert_eq!(s.gpus.len(), 8);
        assert_eq!(s.gpus[5].procs, vec![(10, 1 << 30)]);
        assert!(super::gpu_state(2, &[]).gpus[0].procs.is_empty());
    }
}

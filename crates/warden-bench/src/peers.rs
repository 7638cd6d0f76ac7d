//! `warden bench peers`: one TorchScript model (a 1-D CNN + attention over a 64×16 input) served
//! by `warden serve-model --weights`, by TorchServe with its own dynamic batching and by
//! FastAPI + uvicorn + torch, loaded by the same wrk script at the same concurrency, one server
//! at a time, printed side by side with the ratios against the goals (≥ 1.5× TorchServe, ≥ 3×
//! FastAPI).
//!
//! `--setup` runs `peers/setup.sh` (a venv with the pinned peers in `~/.cache/warden`, a JRE,
//! the seeded model written by `peers/make_model.py`); the run itself installs nothing.

use crate::fast::{BenchError, WrkFigures, die_with_parent, ratio, sibling, wait_http};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The committed Python, Lua and handler files, found beside the crate's sources.
const PEERS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");
/// Each server's start-up bound (TorchServe's JVM plus two Python workers is the slow one).
const START_BOUND: Duration = Duration::from_secs(180);
/// Load before each measurement so JIT, allocator and the batchers settle.
const WARM_UP: Duration = Duration::from_secs(3);

/// warden's serving throughput over its peers', same model, same run.
#[derive(Debug, Clone, Copy)]
pub struct PeersSummary {
    pub vs_torchserve: f64,
    pub vs_fastapi: f64,
}

pub struct PeersBench {
    pub duration: Duration,
    pub concurrency: u32,
    /// warden-model's tch intra-op threads.
    pub warden_threads: usize,
    /// Override the cache (`~/.cache/warden`).
    pub cache: Option<PathBuf>,
}

/// The cache the set-up step fills: the venv, the wheels, the model.
pub fn cache_dir(over: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(p) = over {
        return Ok(p.to_path_buf());
    }
    let home = std::env::var_os("HOME").ok_or_else(|| BenchError::Setup("HOME is unset".into()))?;
    Ok(PathBuf::from(home).join(".cache/warden"))
}

/// `warden bench peers --setup`: idempotent, see `peers/setup.sh`.
pub fn setup(cache: Option<&Path>) -> Result<(), BenchError> {
    let status = Command::new("bash")
        .arg(Path::new(PEERS_DIR).join("setup.sh"))
        .env("WARDEN_BENCH_CACHE", cache_dir(cache)?)
        .status()?;
    if !status.success() {
        return Err(BenchError::Setup(format!("peers/setup.sh exited {status}")));
    }
    Ok(())
}

/// A server in its own process group: TorchServe's launcher starts a JVM that starts Python
/// workers, so the whole group is signalled (SIGTERM, then SIGKILL) and the leader reaped.
struct Group(Child);

impl Group {
    fn spawn(command: &mut Command) -> Result<Group, BenchError> {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        die_with_parent(command);
        Ok(Group(command.spawn()?))
    }

    fn signal_group(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0.id() as i32), signal);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal_group(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group outlived the leader (JVM, workers) goes too.
        self.signal_group(nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The request body: one 64×16 row, fixed values (the same bytes to every server).
pub fn body() -> String {
    let row: Vec<Vec<f64>> = (0..64)
        .map(|i| {
            (0..16)
                .map(|j| f64::from((i * 7 + j * 3) % 11) / 10.0 - 0.5)
                .collect()
        })
        .collect();
    serde_json::json!({ "inputs": [row] }).to_string()
}

/// POSTs `body` to `url` until it answers 2xx with an `outputs` array (bounded): a server is
/// ready when a real inference succeeds, not when its port opens.
fn wait_infer(
    url: &str,
    body_file: &Path,
    bound: Duration,
    child: &mut Child,
) -> Result<String, BenchError> {
    let deadline = Instant::now() + bound;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Setup(format!(
                "{url}: server exited {status} before it answered"
            )));
        }
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
            ])
            .arg(format!("@{}", body_file.display()))
            .arg(url)
            .stderr(Stdio::null())
            .output()?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && serde_json::from_str::<serde_json::Value>(&last)
                .is_ok_and(|v| v["outputs"].as_array().is_some_and(|a| a.len() == 1))
        {
            return Ok(last);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(BenchError::Setup(format!(
        "{url} never answered an inference (last: {last})"
    )))
}

/// The first output row as numbers, to check the three servers run the same model.
fn first_row(answer: &str) -> Vec<f64> {
    serde_json::from_str::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| {
            v["outputs"][0]
                .as_array()
                .map(|r| r.iter().filter_map(serde_json::Value::as_f64).collect())
        })
        .unwrap_or_default()
}

fn wrk_post(
    url: &str,
    body_file: &Path,
    connections: u32,
    duration: Duration,
) -> Result<WrkFigures, BenchError> {
    let out = Command::new("nice")
        .arg("wrk")
        .arg(format!("-c{connections}"))
        .arg("-t2")
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "10s", "-s"])
        .arg(Path::new(PEERS_DIR).join("post.lua"))
        .arg(url)
        .env("PEERS_BODY", body_file)
        .output()
        .map_err(|e| BenchError::Setup(format!("wrk: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    WrkFigures::parse(&text).ok_or_else(|| {
        BenchError::Setup(format!(
            "no wrk summary in:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// One side's figures and the first output row it answered.
struct Side {
    name: &'static str,
    figures: WrkFigures,
    answer: Vec<f64>,
}

impl PeersBench {
    fn measure(
        &self,
        url: &str,
        body_file: &Path,
        child: &mut Child,
        name: &'static str,
    ) -> Result<Side, BenchError> {
        let answer = first_row(&wait_infer(url, body_file, START_BOUND, child)?);
        wrk_post(url, body_file, self.concurrency, WARM_UP)?;
        let figures = wrk_post(url, body_file, self.concurrency, self.duration)?;
        Ok(Side {
            name,
            figures,
            answer,
        })
    }

    fn warden(&self, model: &Path, body_file: &Path) -> Result<Side, BenchError> {
        let port = warden_testkit::net::try_free_port()?;
        let mut command = Command::new(sibling("warden")?);
        command
            .args(["serve-model", "peer", "--weights"])
            .arg(model)
            .args([
                "--port",
                &port.to_string(),
                "--device",
                "cpu",
                "--input-shape",
                "64,16",
            ])
            .args(["--threads", &self.warden_threads.to_string()])
            .args(["--max-batch", "64", "--batch-timeout", "2ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut server = Group::spawn(&mut command)?;
        wait_http(&format!("http://127.0.0.1:{port}/health"), START_BOUND)?;
        self.measure(
            &format!("http://127.0.0.1:{port}/infer"),
            body_file,
            &mut server.0,
            "warden serve-model",
        )
    }

    fn torchserve(
        &self,
        venv: &Path,
        cache: &Path,
        body_file: &Path,
        dir: &Path,
    ) -> Result<Side, BenchError> {
        let [inference, management, metrics] = [
            warden_testkit::net::try_free_port()?,
            warden_testkit::net::try_free_port()?,
            warden_testkit::net::try_free_port()?,
        ];
        let store = cache.join("peers/model-store");
        // The settings: batch 32, max delay 2 ms, 2 workers (each torch thread 1, set in
        // the handler and by OMP_NUM_THREADS).
        let config = format!(
            "inference_address=http://127.0.0.1:{inference}\nmanagement_address=http://127.0.0.1:{management}\n\
             metrics_address=http://127.0.0.1:{metrics}\nmodel_store={}\nload_models=peer.mar\n\
             disable_token_authorization=true\nenable_envvars_config=false\n\
             models={{\"peer\":{{\"1.0\":{{\"defaultVersion\":true,\"marName\":\"peer.mar\",\"minWorkers\":2,\
             \"maxWorkers\":2,\"batchSize\":32,\"maxBatchDelay\":2,\"responseTimeout\":120}}}}}}\n",
            store.display()
        );
        let ts_dir = dir.join("torchserve");
        std::fs::create_dir_all(&ts_dir)?;
        let config_path = ts_dir.join("config.properties");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(ts_dir.join("torchserve.log"))?;
        let mut command = Command::new(venv.join("bin/torchserve"));
        command
            .args([
                "--start",
                "--foreground",
                "--ncs",
                "--disable-token-auth",
                "--ts-config",
            ])
            .arg(&config_path)
            .current_dir(&ts_dir)
            .env("PATH", path_with(&venv.join("bin")))
            .env("OMP_NUM_THREADS", "1")
            .env("LOG_LOCATION", ts_dir.join("logs"))
            .env("METRICS_LOCATION", ts_dir.join("logs"))
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut server = Group::spawn(&mut command)?;
        self.measure(
            &format!("http://127.0.0.1:{inference}/predictions/peer"),
            body_file,
            &mut server.0,
            "TorchServe",
        )
    }

    fn fastapi(&self, venv: &Path, model: &Path, body_file: &Path) -> Result<Side, BenchError> {
        let port = warden_testkit::net::try_free_port()?;
        let mut command = Command::new(venv.join("bin/uvicorn"));
        command
            .args([
                "fastapi_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["--log-level", "warning", "--no-access-log"])
            .current_dir(PEERS_DIR)
            .env("PEERS_MODEL", model)
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut server = Group::spawn(&mut command)?;
        self.measure(
            &format!("http://127.0.0.1:{port}/infer"),
            body_file,
            &mut server.0,
            "FastAPI+uvicorn",
        )
    }

    pub fn run(&self) -> Result<String, BenchError> {
        Ok(self.run_summary()?.0)
    }

    /// The report, and warden's throughput over TorchServe's and FastAPI's.
    pub fn run_summary(&self) -> Result<(String, PeersSummary), BenchError> {
        let cache = cache_dir(self.cache.as_deref())?;
        let venv = cache.join("bench-venv");
        let model = cache.join("peers/model.pt");
        for need in [
            venv.join("bin/torchserve"),
            venv.join("bin/uvicorn"),
            model.clone(),
            cache.join("peers/model-store/peer.mar"),
        ] {
            if !need.exists() {
                return Err(BenchError::Setup(format!(
                    "{} is missing: run `warden bench peers --setup` first",
                    need.display()
                )));
            }
        }
        let dir = tempfile::tempdir()?;
        let body_file = dir.path().join("body.json");
        std::fs::write(&body_file, body())?;

        // One server at a time: each gets the whole machine while it is measured.
        let sides = [
            self.warden(&model, &body_file)?,
            self.torchserve(&venv, &cache, &body_file, dir.path())?,
            self.fastapi(&venv, &model, &body_file)?,
        ];
        let [w, ts, fa] = [&sides[0].figures, &sides[1].figures, &sides[2].figures];
        let summary = PeersSummary {
            vs_torchserve: ratio(w.per_second, ts.per_second),
            vs_fastapi: ratio(w.per_second, fa.per_second),
        };
        Ok((self.report(&sides), summary))
    }

    fn report(&self, sides: &[Side; 3]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "serving peers: same TorchScript model (1-D CNN + attention, 64x16), wrk c={} over {:?}, 1 row per request",
            self.concurrency, self.duration
        );
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>9} {:>9} {:>8}",
            "server", "req/s", "p50 ms", "p99 ms", "errors"
        );
        for s in sides {
            let f = s.figures;
            let _ = writeln!(
                out,
                "{:<20} {:>10.0} {:>9.2} {:>9.2} {:>8}",
                s.name, f.per_second, f.p50_ms, f.p99_ms, f.errors
            );
        }
        let [w, ts, fa] = [&sides[0].figures, &sides[1].figures, &sides[2].figures];
        let vs_ts = ratio(w.per_second, ts.per_second);
        let vs_fa = ratio(w.per_second, fa.per_second);
        let verdict = |met: bool| if met { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "warden / TorchServe: {vs_ts:.2}x req/s (goal >= 1.5x: {}), p50 {:.2}x, p99 {:.2}x",
            verdict(vs_ts >= 1.5),
            ratio(w.p50_ms, ts.p50_ms),
            ratio(w.p99_ms, ts.p99_ms)
        );
        let _ = writeln!(
            out,
            "warden / FastAPI:    {vs_fa:.2}x req/s (goal >= 3x: {}), p50 {:.2}x, p99 {:.2}x",
            verdict(vs_fa >= 3.0),
            ratio(w.p50_ms, fa.p50_ms),
            ratio(w.p99_ms, fa.p99_ms)
        );
        let spread = max_abs_diff(&sides[0].answer, &sides[1].answer)
            .max(max_abs_diff(&sides[0].answer, &sides[2].answer));
        let _ = writeln!(
            out,
            "same model check: max |output difference| across servers {spread:.2e}"
        );
        out
    }
}

/// Largest element-wise difference; infinite when the rows differ in length (a different model).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut paths = vec![bin.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_one_64_by_16_row() {
        let v: serde_json::Value = serde_json::from_str(&body()).unwrap();
        let rows = v["inputs"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        let row = rows[0].as_array().unwrap();
        assert_eq!(row.len(), 64);
        assert!(row.iter().all(|r| r.as_array().unwrap().len() == 16));
    }

    #[test]
    fn different_models_do_not_pass_the_same_model_check() {
        assert!(max_abs_diff(&[0.5, 1.0], &[0.5, 1.0 + 1e-7]) < 1e-6);
        assert_eq!(max_abs_diff(&[0.5], &[0.5, 1.0]), f64::INFINITY);
        assert!(max_abs_diff(&[0.5, 1.0], &[0.4, 1.0]) > 0.09);
    }

    #[test]
    fn the_committed_peer_files_are_there() {
        for f in [
            "setup.sh",
            "requirements.txt",
            "make_model.py",
            "ts_handler.py",
            "fastapi_app.py",
            "post.lua",
        ] {
            assert!(Path::new(PEERS_DIR).join(f).is_file(), "{f}");
        }
    }
}

//! `warden bench logs`: a child printing lines as fast as it can, captured exactly as the
//! supervisor captures model output, shipped through the spool to CloudWatch Logs (moto);
//! reports lines/s end to end, loss, and the agent side's CPU.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warden::sinks::logs::config::LogsSinkConfig;
use warden::sinks::logs::{LogShipper, Sources};
use warden::supervisor::output::{LogSink, capture};
use warden::supervisor::types::LogStream;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Logs(#[from] warden::sinks::logs::LogsError),
    #[error("timed out after {0:?} with {1} of {2} lines shipped")]
    Timeout(Duration, u64, u64),
}

pub struct LogsBench {
    pub lines: u64,
    /// Bytes per printed line (padding included).
    pub line_bytes: usize,
    /// An emulator to use; otherwise `moto_server` is started on a free port.
    pub endpoint: Option<String>,
    pub moto_server: PathBuf,
    pub timeout: Duration,
}

/// Counts the events moto holds for the bench stream.
async fn count_in_emulator(sdk: &aws_config::SdkConfig, group: &str, stream: &str) -> u64 {
    let client = aws_sdk_cloudwatchlogs::Client::new(sdk);
    let mut n = 0u64;
    let mut token: Option<String> = None;
    loop {
        let Ok(resp) = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .limit(10_000)
            .set_next_token(token.clone())
            .send()
            .await
        else {
            return n;
        };
        if resp.events().is_empty() {
            return n;
        }
        n += resp.events().len() as u64;
        token = resp.next_forward_token().map(str::to_string);
        if token.is_none() {
            return n;
        }
    }
}

impl LogsBench {
    pub async fn run(&self) -> Result<String, BenchError> {
        let emulator = match &self.endpoint {
            Some(_) => None,
            None => Some(
                warden_testkit::moto::Moto::try_start(&self.moto_server)
                    .map_err(|e| BenchError::Setup(e.to_string()))?,
            ),
        };
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| emulator.as_ref().map(|m| m.endpoint()))
            .ok_or_else(|| BenchError::Setup("no AWS endpoint".into()))?;
        let aws = warden::config::AwsConfig {
            endpoint_url: Some(endpoint.clone()),
            ..warden::config::AwsConfig::default()
        };
        let sdk = warden::sinks::aws::sdk_config(&aws).await;
        let dir = std::env::temp_dir().join(format!("warden-bench-logs-{}", uuid::Uuid::new_v4()));
        let mut cfg = LogsSinkConfig::from_config(&warden::config::Config::default());
        cfg.spool_dir = dir.join("spool");
        cfg.stream = "bench-host".into();
        cfg.max_spool_bytes_per_group = 1 << 30;
        cfg.flush_interval = Duration::from_millis(200);
        let group = cfg.model_group("bench");

        // The supervisor's capture path: a bounded channel that drops (and counts) what the
        // shipper cannot take in time.
        let (sink, rx) = LogSink::new(
            warden::supervisor::SupervisorOptions::new(PathBuf::new()).log_channel_capacity,
        );
        let cancel = CancellationToken::new();
        let shipper = LogShipper::start(
            cfg,
            &sdk,
            Sources {
                model_lines: Some(rx),
                ..Sources::default()
            },
            None,
            cancel.clone(),
        )?;
        let stats = shipper.stats();

        let pad = self.line_bytes.saturating_sub(16).max(1);
        let script = format!(
            "import sys\nw = sys.stdout.write\npad = 'x' * {pad}\nfor i in range({}):\n    w(f'{{i:012d}} {{pad}}\\n')\nsys.stdout.flush()\n",
            self.lines
        );
        let cpu0 = warden_testkit::rusage::self_usage().0;
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("python3: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Setup("child stdout".into()))?;
        let reader = tokio::spawn(capture(
            stdout,
            "bench".into(),
            LogStream::Stdout,
            sink.clone(),
        ));
        let _ = reader.await;
        let printed_in = t0.elapsed();
        let _ = child.wait().await;
        let dropped_at_capture = sink.dropped();
        let expected = self.lines - dropped_at_capture;
        let deadline = t0 + self.timeout;
        while stats.events_sent.load(Ordering::Relaxed) < expected {
            if Instant::now() > deadline {
                cancel.cancel();
                return Err(BenchError::Timeout(
                    self.timeout,
                    stats.events_sent.load(Ordering::Relaxed),
                    self.lines,
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = t0.elapsed();
        let cpu = warden_testkit::rusage::self_usage().0 - cpu0;
        cancel.cancel();
        shipper.join().await;
        let in_emulator = count_in_emulator(&sdk, &group, "bench-host").await;
        let _ = std::fs::remove_dir_all(&dir);

        let rate = expected as f64 / wall.as_secs_f64();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "lines printed: {} ({} B each) in {:.2} s by the child",
            self.lines,
            self.line_bytes,
            printed_in.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "shipped end to end (print → capture → spool fsync → PutLogEvents → moto): {expected} in {:.2} s = {rate:.0} lines/s (target >= 50,000)",
            wall.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "loss: {dropped_at_capture} at the capture channel, {} at the spool; moto holds {in_emulator} of {} lines",
            stats.events_dropped.load(Ordering::Relaxed),
            self.lines
        );
        let _ = writeln!(
            out,
            "PutLogEvents calls: {} ({} failed)",
            stats.put_calls.load(Ordering::Relaxed),
            stats.put_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "agent CPU (capture + spool + shipping, whole process): {:.2} s over {:.2} s = {:.0} % of one core; {:.1} µs per line",
            cpu.as_secs_f64(),
            wall.as_secs_f64(),
            cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
            cpu.as_secs_f64() * 1e6 / expected.max(1) as f64
        );
        Ok(out)
    }
}

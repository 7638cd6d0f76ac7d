//! `warden bench serving`: a bare in-process forward loop against the HTTP server with dynamic
//! batching, side by side, for the same model and weights.
//!
//! For each model: (a) forward passes at batch 1, 8, 32 in a loop (inferences/s); (b) the
//! server under 1, 16 and 64 concurrent keep-alive clients (inferences/s, p50/p99 latency,
//! mean batch size from /metrics), and the bare loop re-measured at the batch size the
//! server formed, to give the ratio that says what HTTP + batching cost.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use warden_model::schema::Sample;
use warden_model::server::{ServeOptions, serve};
use warden_model::{BatchConfig, ModelKind, ServingError, weights};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub models: Vec<String>,
    /// How long each measurement runs.
    pub duration: Duration,
    /// tch intra-op threads for both the bare loop and the server.
    pub threads: usize,
    pub batch: BatchConfig,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            models: vec!["risk-analyzer".into(), "connection-designer".into()],
            duration: Duration::from_secs(3),
            threads: 1,
            batch: BatchConfig::default(),
        }
    }
}

/// One HTTP measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResult {
    pub concurrency: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_batch: f64,
    pub errors: u64,
    /// The bare loop's inferences/s at the batch size the server formed.
    pub bare_at_formed_batch: f64,
}

/// Runs the benchmark and returns the printed report.
pub fn run(opts: &BenchOptions) -> Result<String, ServingError> {
    tch::set_num_threads(opts.threads.max(1) as i32);
    let dir = std::env::temp_dir().join(format!("warden-bench-{}", std::process::id()));
    weights::init(&dir)?;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "warden bench serving: threads={} max_batch={} batch_timeout={:?} duration/measurement={:?}",
        opts.threads, opts.batch.max_batch, opts.batch.batch_timeout, opts.duration
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServingError::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    for name in &opts.models {
        let kind = ModelKind::builtin(name).ok_or_else(|| {
            ServingError::UnknownModel(
                name.clone(),
                warden_model::BUILTIN.map(|k| k.name()).join(", "),
            )
        })?;
        let section = bench_model(kind, &dir, opts, &runtime)?;
        report.push_str(&section);
        eprint!("{section}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

fn bare_rate(
    model: &dyn warden_model::models::Model,
    sample: &Sample,
    batch: usize,
    duration: Duration,
) -> Result<f64, ServingError> {
    let samples: Vec<&Sample> = (0..batch).map(|_| sample).collect();
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < duration || done == 0 {
        model.forward(&samples)?;
        done += batch;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

fn bench_model(
    kind: ModelKind,
    dir: &std::path::Path,
    opts: &BenchOptions,
    runtime: &tokio::runtime::Runtime,
) -> Result<String, ServingError> {
    let mut out = String::new();
    let weights: PathBuf = dir.join(kind.weight_file());
    let model = kind.load(&weights, tch::Device::Cpu)?;
    let sample = kind
        .warm_up_samples(&[])
        .map_err(|e| ServingError::Options(e.to_string()))?
        .remove(0);
    let _ = writeln!(out, "\n== {} ==", kind.name());
    let _ = writeln!(out, "bare forward loop (in-process, no HTTP):");
    let mut bare = Vec::new();
    for b in [1usize, 8, 32] {
        let rate = bare_rate(model.as_ref(), &sample, b, opts.duration)?;
        let _ = writeln!(out, "  batch {b:>3}: {rate:>10.0} inferences/s");
        bare.push((b, rate));
    }

    let example =
        serde_json::to_vec(&kind.example(&[])).map_err(|e| ServingError::Options(e.to_string()))?;
    let results = runtime.block_on(http_runs(kind, dir, opts, example))?;
    let _ = writeln!(out, "HTTP server (dynamic batching, keep-alive clients):");
    let _ = writeln!(
        out,
        "  {:>5} {:>12} {:>9} {:>9} {:>10} {:>14} {:>7} {:>6}",
        "conc", "infer/s", "p50 ms", "p99 ms", "mean batch", "bare@batch /s", "ratio", "errors"
    );
    for mut r in results {
        let formed = r.mean_batch.round().max(1.0) as usize;
        r.bare_at_formed_batch = bare_rate(model.as_ref(), &sample, formed, opts.duration)?;
        let _ = writeln!(
            out,
            "  {:>5} {:>12.0} {:>9.2} {:>9.2} {:>10.2} {:>14.0} {:>7.2} {:>6}",
            r.concurrency,
            r.per_second,
            r.p50_ms,
            r.p99_ms,
            r.mean_batch,
            r.bare_at_formed_batch,
            r.per_second / r.bare_at_formed_batch,
            r.errors
        );
    }
    Ok(out)
}

/// Reads `warden_model_batch_size_{sum,count}` from a /metrics text.
pub fn batch_size_totals(metrics: &str) -> (f64, f64) {
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in metrics.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with("warden_model_batch_size_sum") {
            sum = value();
        } else if line.starts_with("warden_model_batch_size_count") {
            count = value();
        }
    }
    (sum, count)
}

async fn http_runs(
    kind: ModelKind,
    dir: &std::path::Path,
    opts: &BenchOptions,
    example: Vec<u8>,
) -> Result<Vec<HttpResult>, ServingError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| ServingError::Bind {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| ServingError::Io {
            context: "local address".into(),
            source,
        })?
        .port();
    let serve_opts = ServeOptions {
        name: kind.name().into(),
        port,
        unix_socket: None,
        models_dir: Some(dir.to_path_buf()),
        weights: None,
        device: warden::config::Device::Cpu,
        threads: Some(opts.threads),
        batch: opts.batch,
        row_shape: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(serve_opts, listener, async {
        let _ = stop_rx.await;
    }));
    let base = format!("http://127.0.0.1:{port}");
    warden::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| ServingError::Client(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        if Instant::now() > deadline {
            return Err(ServingError::Client("server never became ready".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut results = Vec::new();
    for concurrency in [1usize, 16, 64] {
        let before = scrape(&client, &base).await?;
        let until = Instant::now() + opts.duration;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let client = client.clone();
            let url = format!("{base}/infer");
            let body = example.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < until {
                    let t = Instant::now();
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                latencies.extend(l);
                errors += e;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = scrape(&client, &base).await?;
        latencies.sort();
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return f64::NAN;
            }
            let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies[i].as_secs_f64() * 1000.0
        };
        let batches = after.1 - before.1;
        results.push(HttpResult {
            concurrency,
            per_second: latencies.len() as f64 / elapsed,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            mean_batch: if batches > 0.0 {
                (after.0 - before.0) / batches
            } else {
                0.0
            },
            errors,
            bare_at_formed_batch: 0.0,
        });
    }
    let _ = stop_tx.send(());
    match server.await {
        Ok(r) => r?,
        Err(e) => return Err(ServingError::Client(e.to_string())),
    }
    Ok(results)
}

async fn scrape(client: &reqwest::Client, base: &str) -> Result<(f64, f64), ServingError> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| ServingError::Client(e.to_string()))?
        .text()
        .await
        .map_err(|e| ServingError::Client(e.to_string()))?;
    Ok(batch_size_totals(&text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_size_totals_read_the_histogram() {
        let text = "# HELP x\nwarden_model_batch_size_bucket{model=\"m\",le=\"1\"} 2\n\
                    warden_model_batch_size_sum{model=\"m\"} 40\n\
                    warden_model_batch_size_count{model=\"m\"} 5\n";
        assert_eq!(super::batch_size_totals(text), (40.0, 5.0));
    }
}

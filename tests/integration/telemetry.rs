//! Telemetry end to end: fake NVML → samplers → store → CloudWatch (moto) and Prometheus.

use crate::support::moto::Moto;
use crate::support::net::wait_until_async;
use crate::support::nvml::{FakeGpu, FakeNvml, FakeState};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;
use warden::sinks::cloudwatch::CloudWatchSink;
use warden::sinks::cloudwatch::config::CloudWatchSinkConfig;
use warden::sinks::cloudwatch::retry::Backoff;
use warden::telemetry::nvml::NvmlSamplerConfig;
use warden::telemetry::{
    Dim, MetricStore, ModelSample, ModelSource, SamplerConfig, Samplers, TelemetryEvent,
};

const HOST: &str = "test-host";

fn sampler_config(fake: &FakeNvml, state_dir: &Path, call_timeout_ms: u64) -> SamplerConfig {
    SamplerConfig {
        sample_interval: Duration::from_millis(100),
        nvml: NvmlSamplerConfig {
            library: fake.lib_path().to_path_buf(),
            call_timeout: Duration::from_millis(call_timeout_ms),
            init_timeout: warden::telemetry::nvml::DEFAULT_INIT_TIMEOUT,
            init_retry: Duration::from_millis(200),
        },
        state_dir: state_dir.to_path_buf(),
    }
}

fn no_models() -> Arc<dyn ModelSource> {
    Arc::new(Vec::new)
}

fn sink_config(spool_dir: &Path) -> CloudWatchSinkConfig {
    CloudWatchSinkConfig {
        namespace: "Warden".to_string(),
        flush_interval: Duration::from_millis(500),
        jitter: 0.1,
        high_resolution: false,
        spool_dir: spool_dir.to_path_buf(),
        max_spool_bytes: 8 << 20,
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
            attempts: 2,
        },
        max_age: Duration::from_secs(14 * 24 * 3600),
        shutdown_grace: Duration::from_secs(3),
        autoscaling_group: None,
    }
}

fn aws(endpoint: String) -> warden::config::AwsConfig {
    warden::config::AwsConfig {
        region: "us-east-1".to_string(),
        endpoint_url: Some(endpoint),
        attempt_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(10),
    }
}

/// A recording proxy in front of moto: keeps every request body, forwards it unchanged.
struct Recorder {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(upstream: String) -> Recorder {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let rec = bodies.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (client, rec, upstream) = (client.clone(), rec.clone(), upstream.clone());
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap();
                rec.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&bytes).to_string());
                let resp =
                    crate::support::proxy::forward(&client, &upstream, &parts, bytes.to_vec())
                        .await;
                let status = resp.status();
                let ct = resp.headers().get("content-type").cloned();
                let body = resp.bytes().await.unwrap();
                let mut out = axum::response::Response::new(axum::body::Body::from(body));
                *out.status_mut() = status;
                if let Some(ct) = ct {
                    out.headers_mut().insert("content-type", ct);
                }
                out
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { url, bodies }
    }

    fn puts(&self) -> Vec<HashMap<String, String>> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.contains("Action=PutMetricData"))
            .map(|b| form(b))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// (value, count) pairs of every ModelLatency datum for `model` in one PutMetricData form.
fn latency_pairs(put: &HashMap<String, String>, model: &str) -> Vec<(f64, f64)> {
    let mut pairs = Vec::new();
    for n in 1..=1000 {
        let p = format!("MetricData.member.{n}.");
        let Some(name) = put.get(&format!("{p}MetricName")) else {
            break;
        };
        if name != "ModelLatency" {
            continue;
        }
        let dims: Vec<&String> = (1..=5)
            .filter_map(|d| put.get(&format!("{p}Dimensions.member.{d}.Value")))
            .collect();
        if !dims.iter().any(|v| *v == model) {
            continue;
        }
        for k in 1..=150 {
            let Some(v) = put.get(&format!("{p}Values.member.{k}")) else {
                break;
            };
            let c = put.get(&format!("{p}Counts.member.{k}")).unwrap();
            pairs.push((v.parse().unwrap(), c.parse().unwrap()));
        }
    }
    pairs
}

/// (SampleCount, Sum, Maximum) over the last hour for one series, summed across periods.
async fn cw_stats(
    sdk: &aws_config::SdkConfig,
    metric: &str,
    dims: &[(&str, &str)],
) -> (f64, f64, f64) {
    let client = aws_sdk_cloudwatch::Client::new(sdk);
    let now = SystemTime::now();
    let out = client
        .get_metric_statistics()
        .namespace("Warden")
        .metric_name(metric)
        .set_dimensions(Some(
            dims.iter()
                .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
                .collect(),
        ))
        .start_time(DateTime::from(now - Duration::from_secs(3600)))
        .end_time(DateTime::from(now + Duration::from_secs(3600)))
        .period(60)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Sum)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .unwrap();
    out.datapoints()
        .iter()
        .fold((0.0, 0.0, f64::MIN), |(c, s, m), d| {
            (
                c + d.sample_count().unwrap_or(0.0),
                s + d.sum().unwrap_or(0.0),
                m.max(d.maximum().unwrap_or(f64::MIN)),
            )
        })
}

fn two_gpus(test_pid: u32, other_pid: u32) -> FakeState {
    FakeState::with_gpus(vec![
        FakeGpu {
            util: 40,
            mem_used: 4 << 30,
            temp: 61,
            power_mw: 120_000,
            procs: vec![(test_pid, 1 << 30)],
            ..FakeGpu::default()
        },
        FakeGpu {
            util: 90,
            mem_used: 12 << 30,
            temp: 78,
            power_mw: 250_000,
            procs: vec![(other_pid, 2 << 30), (test_pid, 512 << 20)],
            ..FakeGpu::default()
        },
    ])
}

/// A model's own /metrics, as the serving engineer exposes it.
async fn child_metrics_server(text: &'static str) -> u16 {
    let app =
        axum::Router::new().route("/metrics", axum::routing::get(move || async move { text }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gpus_and_latency_reach_cloudwatch_and_prometheus_in_one_call() {
    let moto = Moto::start();
    let recorder = Recorder::start(moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let (me, other) = (std::process::id(), sleeper.id());
    let fake = FakeNvml::new(&two_gpus(me, other));

    let alpha_port = child_metrics_server("# TYPE warden_model_queue_depth gauge\nwarden_model_queue_depth 3\nwarden_model_batch_size 4\n").await;
    let source: Arc<dyn ModelSource> = Arc::new(move || {
        vec![
            ModelSample {
                name: "alpha".into(),
                port: alpha_port,
                pid: Some(me),
                up: true,
                restarts: 0,
            },
            ModelSample {
                name: "beta".into(),
                port: 1,
                pid: Some(other),
                up: false,
                restarts: 2,
            },
        ]
    });
    let store = Arc::new(MetricStore::new(HOST, 60));
    let (events, _) = broadcast::channel(64);
    let mut samplers = Samplers::new(
        &sampler_config(&fake, dir.path(), 2_000),
        store.clone(),
        source,
        events,
    );
    for _ in 0..3 {
        samplers.sample_once().await;
    }
    // 90 fast and 10 slow requests: the shipped Values/Counts must say exactly that.
    for i in 0..100 {
        let ms = if i % 10 == 0 { 200.0 } else { 10.0 };
        store.record_request("alpha", ms, i != 0, SystemTime::now());
    }

    // Per-process GPU memory attributed by pid, summed over GPUs.
    assert_eq!(
        store.latest("ModelGPUMemoryUsed", &[(Dim::Model, "alpha")]),
        Some((1u64 << 30) as f64 + (512u64 << 20) as f64)
    );
    assert_eq!(
        store.latest("ModelGPUMemoryUsed", &[(Dim::Model, "beta")]),
        Some((2u64 << 30) as f64)
    );
    assert_eq!(
        store.latest("ModelQueueDepth", &[(Dim::Model, "alpha")]),
        Some(3.0)
    );
    assert_eq!(
        store.latest("ModelBatchSize", &[(Dim::Model, "alpha")]),
        Some(4.0)
    );
    assert_eq!(store.latest("ModelUp", &[(Dim::Model, "beta")]), Some(0.0));
    assert_eq!(
        store.latest("ModelRestarts", &[(Dim::Model, "beta")]),
        Some(2.0)
    );
    assert!(
        store
            .latest("ModelRSS", &[(Dim::Model, "alpha")])
            .is_some_and(|v| v > 0.0)
    );
    assert!(store.latest("HostMemoryUtilization", &[]).is_some());
    assert!(store.latest("HostDiskFree", &[]).is_some_and(|v| v > 0.0));

    // Bodies over 10 KB are gzipped by the SDK; the recorder reads them plain.
    let sdk = warden::sinks::aws::sdk_config(&aws(recorder.url.clone()))
        .await
        .into_builder()
        .disable_request_compression(true)
        .build();
    let sink =
        CloudWatchSink::new(sink_config(&dir.path().join("spool")), &sdk, store.clone()).unwrap();
    let report = sink.flush_once().await;
    assert_eq!(report.sent_batches, 1, "{report:?}");
    let puts = recorder.puts();
    assert_eq!(puts.len(), 1, "one PutMetricData per flush");

    let mut pairs = latency_pairs(&puts[0], "alpha");
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    assert!(
        (pairs[0].0 - 10.0).abs() < 0.2 && pairs[0].1 == 90.0,
        "{pairs:?}"
    );
    assert!(
        (pairs[1].0 - 200.0).abs() < 2.0 && pairs[1].1 == 10.0,
        "{pairs:?}"
    );

    let read = moto.sdk_config().await;
    for (gpu, util, temp) in [("0", 40.0, 61.0), ("1", 90.0, 78.0)] {
        let dims = [("Host", HOST), ("GPU", gpu)];
        let (count, sum, max) = cw_stats(&read, "GPUUtilization", &dims).await;
        assert_eq!((count, sum / count, max), (3.0, util, util), "GPU {gpu}");
        let (_, _, t) = cw_stats(&read, "GPUTemperature", &dims).await;
        assert_eq!(t, temp);
    }
    let (count, sum, _) = cw_stats(
        &read,
        "ModelRequests",
        &[("Host", HOST), ("Model", "alpha")],
    )
    .await;
    assert_eq!((count, sum), (1.0, 100.0));
    let (_, errors, _) =
        cw_stats(&read, "ModelErrors", &[("Host", HOST), ("Model", "alpha")]).await;
    assert_eq!(errors, 1.0);

    // /metrics carries the same values.
    let text = store.render();
    for line in [
        "warden_gpu_utilization_percent{host=\"test-host\",gpu=\"0\"} 40",
        "warden_gpu_utilization_percent{host=\"test-host\",gpu=\"1\"} 90",
        "warden_gpu_temperature_celsius{host=\"test-host\",gpu=\"1\"} 78",
        "warden_gpu_power_draw_watts{host=\"test-host\",gpu=\"0\"} 120",
        "warden_model_requests_total{host=\"test-host\",model=\"alpha\"} 100",
        "warden_model_latency_seconds_count{host=\"test-host\",model=\"alpha\"} 100",
        "warden_model_latency_seconds_bucket{host=\"test-host\",model=\"alpha\",le=\"0.01\"} 90",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    // The run loop flushes on its own, one call per flush.
    let cancel = tokio_util::sync::CancellationToken::new();
    let before = recorder.puts().len();
    store.set_gauge("GPUUtilization", &[(Dim::Gpu, "0")], 1.0, SystemTime::now());
    let stats = sink.stats();
    let run = tokio::spawn(sink.run(cancel.clone()));
    let flushed = wait_until_async(Duration::from_secs(20), || {
        let stats = stats.clone();
        async move { (stats.flushes.load(std::sync::atomic::Ordering::Relaxed) >= 3).then_some(()) }
    })
    .await;
    assert!(flushed.is_some());
    cancel.cancel();
    run.await.unwrap();
    let flushes = stats.flushes.load(std::sync::atomic::Ordering::Relaxed) as usize;
    let calls = recorder.puts().len() - before;
    assert!(
        calls <= flushes && calls >= 1,
        "{calls} calls for {flushes} flushes"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// Samples rounds until `done` holds or `timeout` passes (bounded, like `wait_until`).
async fn sample_until(samplers: &mut Samplers, timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        samplers.sample_once().await;
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn drain(rx: &mut broadcast::Receiver<TelemetryEvent>) -> Vec<TelemetryEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_lost_gpu_unsupported_fields_slow_calls_and_xids() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = two_gpus(1, 2);
    state.gpus[0].unsupported = vec!["temp", "fan"];
    let fake = FakeNvml::new(&state);
    let store = Arc::new(MetricStore::new(HOST, 60));
    let (events, mut rx) = broadcast::channel(64);
    let mut samplers = Samplers::new(
        &sampler_config(&fake, dir.path(), 400),
        store.clone(),
        no_models(),
        events,
    );
    let util = |g: &str| store.latest("GPUUtilization", &[(Dim::Gpu, g)]);

    samplers.sample_once().await;
    assert_eq!((util("0"), util("1")), (Some(40.0), Some(90.0)));
    assert_eq!(
        store.latest("GPUTemperature", &[(Dim::Gpu, "0")]),
        None,
        "NOT_SUPPORTED skipped"
    );
    assert_eq!(store.latest("GPUFanSpeed", &[(Dim::Gpu, "0")]), None);
    assert_eq!(
        store.latest("GPUTemperature", &[(Dim::Gpu, "1")]),
        Some(78.0)
    );
    assert_eq!(
        store.latest("GPUPowerDraw", &[(Dim::Gpu, "0")]),
        Some(120.0),
        "other fields still read"
    );
    assert!(matches!(
        drain(&mut rx).as_slice(),
        [TelemetryEvent::NvmlAvailable { gpus: 2 }]
    ));

    // Rewriting the state file changes the next samples.
    state.gpus[0].util = 55;
    state.gpus[1].temp = 80;
    fake.set(&state);
    samplers.sample_once().await;
    assert_eq!(util("0"), Some(55.0));
    assert_eq!(
        store.latest("GPUTemperature", &[(Dim::Gpu, "1")]),
        Some(80.0)
    );

    // GPU 1 lost: marked, one event, GPU 0 keeps sampling.
    state.gpus[1].lost = true;
    state.gpus[0].util = 60;
    fake.set(&state);
    samplers.sample_once().await;
    samplers.sample_once().await;
    assert_eq!(store.latest("GPULost", &[(Dim::Gpu, "1")]), Some(1.0));
    assert_eq!(store.latest("GPULost", &[(Dim::Gpu, "0")]), Some(0.0));
    assert_eq!(util("0"), Some(60.0));
    assert_eq!(
        drain(&mut rx),
        vec![TelemetryEvent::GpuLost { gpu: 1 }],
        "reported once"
    );

    // A call slower than the timeout costs that GPU its round, not the agent or GPU 0.
    state.gpus[1].lost = false;
    state.gpus[1].slow_ms = 3_000;
    state.gpus[1].util = 11;
    state.gpus[0].util = 70;
    fake.set(&state);
    let started = Instant::now();
    samplers.sample_once().await;
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "round took {:?}",
        started.elapsed()
    );
    assert_eq!(util("0"), Some(70.0));
    assert_eq!(util("1"), Some(90.0), "slow GPU not updated this round");
    state.gpus[0].util = 75;
    fake.set(&state);
    samplers.sample_once().await; // GPU 1's earlier call is still in flight: skipped, not piled up
    assert_eq!(util("0"), Some(75.0));

    // Once the driver answers quickly again, GPU 1 recovers.
    state.gpus[1].slow_ms = 0;
    fake.set(&state);
    let recovered = sample_until(&mut samplers, Duration::from_secs(15), || {
        util("1") == Some(11.0)
    })
    .await;
    assert!(recovered);
    assert!(drain(&mut rx).contains(&TelemetryEvent::GpuRecovered { gpu: 1 }));

    // XID events become a counter per GPU and code, and events.
    state.gpus[0].xids = vec![79, 79, 13];
    fake.set(&state);
    let xid = |code: &str| store.latest("GPUXidErrors", &[(Dim::Gpu, "0"), (Dim::Code, code)]);
    let counted = sample_until(&mut samplers, Duration::from_secs(15), || {
        xid("79") == Some(2.0) && xid("13") == Some(1.0)
    })
    .await;
    assert!(counted, "79: {:?} 13: {:?}", xid("79"), xid("13"));
    let xids: Vec<_> = drain(&mut rx)
        .into_iter()
        .filter(|e| matches!(e, TelemetryEvent::Xid { .. }))
        .collect();
    assert_eq!(xids.len(), 3);
    assert!(
        store
            .render()
            .contains("warden_gpu_xid_errors_total{host=\"test-host\",gpu=\"0\",code=\"79\"} 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_init_reports_unavailable_retries_and_host_keeps_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = two_gpus(1, 2);
    state.init_error = Some(9);
    let fake = FakeNvml::new(&state);
    let store = Arc::new(MetricStore::new(HOST, 60));
    let (events, mut rx) = broadcast::channel(64);
    let mut samplers = Samplers::new(
        &sampler_config(&fake, dir.path(), 1_000),
        store.clone(),
        no_models(),
        events,
    );

    samplers.sample_once().await;
    samplers.sample_once().await;
    assert_eq!(store.latest("GPUAvailable", &[]), Some(0.0));
    assert!(
        store.latest("HostCPUUtilization", &[]).is_some(),
        "host sampling unaffected"
    );
    let ev = drain(&mut rx);
    assert_eq!(ev.len(), 1, "reported once while down: {ev:?}");
    assert!(
        matches!(&ev[0], TelemetryEvent::NvmlUnavailable { reason } if reason.contains("river")),
        "{ev:?}"
    );

    state.init_error = None;
    fake.set(&state);
    let up = sample_until(&mut samplers, Duration::from_secs(10), || {
        store.latest("GPUAvailable", &[]) == Some(1.0)
    })
    .await;
    assert!(up, "NVML retried after init_retry");
    assert_eq!(
        store.latest("GPUUtilization", &[(Dim::Gpu, "1")]),
        Some(90.0)
    );
    assert!(drain(&mut rx).contains(&TelemetryEvent::NvmlAvailable { gpus: 2 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_spooled_then_delivered_once_also_across_a_sink_restart() {
    let mut moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let store = Arc::new(MetricStore::new(HOST, 60));
    let sdk = warden::sinks::aws::sdk_config(&aws(moto.endpoint())).await;
    let gpu7 = [(Dim::Gpu, "7")];
    let dims = [("Host", HOST), ("GPU", "7")];
    let put = |v: f64| store.set_gauge("GPUUtilization", &gpu7, v, SystemTime::now());

    let sink = CloudWatchSink::new(sink_config(&spool), &sdk, store.clone()).unwrap();
    put(1.0);
    assert_eq!(sink.flush_once().await.sent_batches, 1);

    moto.stop();
    put(11.0);
    let r = sink.flush_once().await;
    assert_eq!((r.sent_batches, r.spooled_batches), (0, 1), "{r:?}");
    put(22.0);
    assert_eq!(sink.flush_once().await.spooled_batches, 1);
    assert_eq!(sink.spooled(), 2);

    moto.restart(); // the emulator comes back empty: what it then holds came from the spool
    put(33.0);
    let r = sink.flush_once().await;
    assert_eq!((r.replayed_batches, r.sent_batches), (2, 1), "{r:?}");
    assert_eq!(sink.spooled(), 0);
    let read = moto.sdk_config().await;
    assert_eq!(
        cw_stats(&read, "GPUUtilization", &dims).await,
        (3.0, 66.0, 33.0),
        "all delivered, none twice"
    );
    assert_eq!(sink.flush_once().await.replayed_batches, 0);

    // The agent restarts while batches are spooled: the next sink delivers them.
    moto.stop();
    put(44.0);
    assert_eq!(sink.flush_once().await.spooled_batches, 1);
    drop(sink);
    moto.restart();
    let sdk = warden::sinks::aws::sdk_config(&aws(moto.endpoint())).await;
    let sink = CloudWatchSink::new(sink_config(&spool), &sdk, store.clone()).unwrap();
    assert_eq!(sink.spooled(), 1);
    put(55.0);
    let r = sink.flush_once().await;
    assert_eq!((r.replayed_batches, r.sent_batches), (1, 1), "{r:?}");
    let read = moto.sdk_config().await;
    assert_eq!(
        cw_stats(&read, "GPUUtilization", &dims).await,
        (2.0, 99.0, 55.0)
    );
    drop(sink);
    let reopened = CloudWatchSink::new(sink_config(&spool), &sdk, store.clone()).unwrap();
    assert_eq!(
        reopened.spooled(),
        0,
        "acknowledged batches are never replayed"
    );
}

/// AWS down and the spool's disk full: the batch waits in memory (not dropped), is spooled
/// once space is back, and delivered once CloudWatch is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_an_outage_keeps_batches_in_memory() {
    let Some(fs) = crate::support::tmpfs::Tmpfs::mount("256k") else {
        return;
    };
    let mut moto = Moto::start();
    let store = Arc::new(MetricStore::new(HOST, 60));
    let sdk = warden::sinks::aws::sdk_config(&aws(moto.endpoint())).await;
    let gpu = [(Dim::Gpu, "3")];
    let put = |v: f64| store.set_gauge("GPUUtilization", &gpu, v, SystemTime::now());
    let sink =
        CloudWatchSink::new(sink_config(&fs.path().join("spool")), &sdk, store.clone()).unwrap();
    fs.fill();
    moto.stop();
    put(10.0);
    let r = sink.flush_once().await;
    assert_eq!(
        (r.sent_batches, r.spooled_batches, r.dropped_batches),
        (0, 0, 0),
        "{r:?}"
    );
    put(20.0);
    let r = sink.flush_once().await;
    assert_eq!((r.spooled_batches, r.dropped_batches), (0, 0), "{r:?}");
    fs.free();
    put(30.0);
    let r = sink.flush_once().await;
    assert_eq!((r.spooled_batches, r.dropped_batches), (3, 0), "{r:?}");
    moto.restart();
    let r = sink.flush_once().await;
    assert_eq!(r.replayed_batches, 3, "{r:?}");
    let read = moto.sdk_config().await;
    assert_eq!(
        cw_stats(&read, "GPUUtilization", &[("Host", HOST), ("GPU", "3")]).await,
        (3.0, 60.0, 30.0),
        "every sample, once"
    );
    assert_eq!(
        warden::telemetry::drops::total(&store, "cloudwatch", "spool_write"),
        0.0
    );
}

/// A refused PutMetricData (AccessDenied): the batch is spooled, not dropped; the sink
/// announces the denial once with the permission, and the restoration after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_keeps_batches_and_announces_the_permission() {
    use crate::support::fault::{Fault, FaultProxy};
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::new(HOST, 60));
    let sdk = warden::sinks::aws::sdk_config(&aws(proxy.url.clone())).await;
    let (tx, mut rx) = broadcast::channel(16);
    let sink = CloudWatchSink::new(sink_config(&dir.path().join("spool")), &sdk, store.clone())
        .unwrap()
        .with_events(tx);
    let gpu = [(Dim::Gpu, "4")];
    let put = |v: f64| store.set_gauge("GPUUtilization", &gpu, v, SystemTime::now());
    proxy.fail_all(Some(Fault::AccessDenied));
    put(5.0);
    let r = sink.flush_once().await;
    assert_eq!((r.spooled_batches, r.dropped_batches), (1, 0), "{r:?}");
    put(6.0);
    let r = sink.flush_once().await;
    assert_eq!((r.spooled_batches, r.dropped_batches), (1, 0), "{r:?}");
    let events = drain(&mut rx);
    let denied: Vec<&TelemetryEvent> = events
        .iter()
        .filter(|e| matches!(e, TelemetryEvent::AwsAccessDenied { .. }))
        .collect();
    assert_eq!(denied.len(), 1, "once per episode: {events:?}");
    assert!(
        matches!(denied[0], TelemetryEvent::AwsAccessDenied { sink, operation, permission, .. }
        if sink == "cloudwatch" && operation == "PutMetricData" && permission == "cloudwatch:PutMetricData")
    );
    proxy.heal();
    // The auth schedule waits ≥ 0.5 s before the next call; flush until it is delivered.
    let mut replayed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while replayed < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        replayed += sink.flush_once().await.replayed_batches;
    }
    assert_eq!(replayed, 2);
    assert!(drain(&mut rx).contains(&TelemetryEvent::AwsAccessRestored {
        sink: "cloudwatch".into()
    }));
    let read = moto.sdk_config().await;
    assert_eq!(
        cw_stats(&read, "GPUUtilization", &[("Host", HOST), ("GPU", "4")]).await,
        (2.0, 11.0, 6.0)
    );
}

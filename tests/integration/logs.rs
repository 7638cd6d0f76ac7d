//! CloudWatch Logs end to end against moto: model lines and audit records reach their groups in
//! order and exactly once, batches keep every PutLogEvents limit, and an outage (a fault proxy
//! answering 503 in front of moto) or an agent restart during it loses nothing.

use crate::support::moto::Moto;
use crate::support::net::{free_port, wait_until_async};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use warden::api::audit::AuditRecord;
use warden::sinks::logs::config::LogsSinkConfig;
use warden::sinks::logs::request::{
    AgeWindow, EVENT_OVERHEAD, LogEvent, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES,
    MAX_SPAN_MS,
};
use warden::sinks::logs::retry::Backoff;
use warden::sinks::logs::{LogEntry, LogShipper, LogsStats, Sources};
use warden::supervisor::{LogLine, LogStream};

const HOST: &str = "test-host";
const LONG: Duration = Duration::from_secs(90);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn aws(endpoint: String) -> warden::config::AwsConfig {
    warden::config::AwsConfig {
        region: "us-east-1".to_string(),
        endpoint_url: Some(endpoint),
        attempt_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(10),
    }
}

fn sink_config(spool: &Path) -> LogsSinkConfig {
    LogsSinkConfig {
        model_group_prefix: "/aws/ec2/models/".into(),
        api_group: "/aws/apigateway/structural-design-api".into(),
        agent_group: None,
        stream: HOST.into(),
        retention_days: 90,
        flush_interval: Duration::from_millis(200),
        spool_dir: spool.to_path_buf(),
        max_spool_bytes_per_group: 64 << 20,
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
            attempts: 1,
        },
        age_window: AgeWindow::default(),
        shutdown_grace: Duration::from_secs(2),
    }
}

/// One PutLogEvents call the proxy forwarded and moto accepted.
#[derive(Debug, Clone)]
struct Put {
    group: String,
    events: Vec<(i64, String)>,
}

/// A proxy in front of moto: forwards requests unchanged, or answers 503 during an outage;
/// records every PutLogEvents moto accepted.
struct FaultProxy {
    url: String,
    down: Arc<AtomicBool>,
    puts: Arc<Mutex<Vec<Put>>>,
    requests: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl FaultProxy {
    async fn start(upstream: String) -> FaultProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let down = Arc::new(AtomicBool::new(false));
        let puts = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let (d, p, r, f) = (
            down.clone(),
            puts.clone(),
            requests.clone(),
            refused.clone(),
        );
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (client, upstream) = (client.clone(), upstream.clone());
            let (down, puts, requests, refused) = (d.clone(), p.clone(), r.clone(), f.clone());
            async move {
                requests.fetch_add(1, Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap();
                if down.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let mut out = axum::response::Response::new(axum::body::Body::from(
                        r#"{"__type":"ServiceUnavailableException","message":"injected outage"}"#,
                    ));
                    *out.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    out.headers_mut().insert(
                        "content-type",
                        "application/x-amz-json-1.1".parse().unwrap(),
                    );
                    return out;
                }
                let target = parts
                    .headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let resp =
                    crate::support::proxy::forward(&client, &upstream, &parts, bytes.to_vec())
                        .await;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap();
                if target.ends_with("PutLogEvents") && status.is_success() {
                    let v: Value = serde_json::from_slice(&bytes).unwrap();
                    let events = v["logEvents"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| {
                            (
                                e["timestamp"].as_i64().unwrap(),
                                e["message"].as_str().unwrap().to_string(),
                            )
                        })
                        .collect();
                    puts.lock().unwrap().push(Put {
                        group: v["logGroupName"].as_str().unwrap().to_string(),
                        events,
                    });
                }
                let mut out = axum::response::Response::new(axum::body::Body::from(body));
                *out.status_mut() = status;
                for (k, v) in headers.iter() {
                    if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                        out.headers_mut().insert(k, v.clone());
                    }
                }
                out
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FaultProxy {
            url,
            down,
            puts,
            requests,
            refused,
        }
    }

    fn outage(&self, on: bool) {
        self.down.store(on, Ordering::SeqCst);
    }

    fn puts(&self) -> Vec<Put> {
        self.puts.lock().unwrap().clone()
    }
}

/// Every event of a group/stream in moto, in stored order (GetLogEvents from the head).
async fn read_events(sdk: &aws_config::SdkConfig, group: &str, stream: &str) -> Vec<(i64, String)> {
    let client = aws_sdk_cloudwatchlogs::Client::new(sdk);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let resp = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .limit(10_000)
            .set_next_token(token.clone())
            .send()
            .await;
        let Ok(resp) = resp else {
            return out; // no such group/stream yet
        };
        let page = resp.events();
        if page.is_empty() {
            return out;
        }
        out.extend(page.iter().map(|e| {
            (
                e.timestamp().unwrap_or(0),
                e.message().unwrap_or("").to_string(),
            )
        }));
        token = resp.next_forward_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

/// Waits until `group` holds at least `n` events; returns them.
async fn wait_for_events(
    sdk: &aws_config::SdkConfig,
    group: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(i64, String)> {
    let got = wait_until_async(timeout, || async {
        let events = read_events(sdk, group, HOST).await;
        (events.len() >= n).then_some(events)
    })
    .await;
    match got {
        Some(e) => e,
        None => {
            let have = read_events(sdk, group, HOST).await.len();
            panic!("{group}: {have} of {n} events arrived within {timeout:?}");
        }
    }
}

fn audit(i: usize) -> AuditRecord {
    AuditRecord {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: format!("req-{i}"),
        interaction_id: format!("req-{i}"),
        session_id: None,
        subject: Some("alice".into()),
        role: Some("user".into()),
        method: "POST".into(),
        route: "/api/v1/{model}".into(),
        model: Some("clash-detector".into()),
        status: 200,
        outcome: "success",
        latency_ms: 3.0,
        bytes_in: 10,
        bytes_out: 20,
        client: "127.0.0.1".into(),
        user_agent: None,
        detail: None,
    }
}

fn line(model: &str, text: String) -> LogLine {
    LogLine {
        model: model.into(),
        stream: LogStream::Stdout,
        timestamp_ms: now_ms() as u64,
        line: text,
    }
}

struct Running {
    shipper: LogShipper,
    store: Arc<warden::telemetry::MetricStore>,
    cancel: tokio_util::sync::CancellationToken,
    lines: mpsc::Sender<LogLine>,
    audits: mpsc::Sender<AuditRecord>,
    entries: mpsc::Sender<LogEntry>,
}

impl Running {
    async fn start(cfg: LogsSinkConfig, endpoint: &str) -> Running {
        let sdk = warden::sinks::aws::sdk_config(&aws(endpoint.to_string())).await;
        let (lines, lr) = mpsc::channel(10_000);
        let (audits, ar) = mpsc::channel(1000);
        let (entries, er) = mpsc::channel(100_000);
        let cancel = tokio_util::sync::CancellationToken::new();
        let sources = Sources {
            model_lines: Some(lr),
            audit: Some(ar),
            entries: Some(er),
        };
        let store = Arc::new(warden::telemetry::MetricStore::new(HOST, 10));
        let shipper =
            LogShipper::start(cfg, &sdk, sources, Some(store.clone()), cancel.clone()).unwrap();
        Running {
            shipper,
            store,
            cancel,
            lines,
            audits,
            entries,
        }
    }

    fn stats(&self) -> Arc<LogsStats> {
        self.shipper.stats()
    }

    async fn stop(self) {
        self.cancel.cancel();
        drop((self.lines, self.audits, self.entries));
        tokio::time::timeout(Duration::from_secs(30), self.shipper.join())
            .await
            .expect("shipper stops within its grace");
    }
}

fn sent(stats: &LogsStats) -> u64 {
    stats.events_sent.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_every_put_log_events_limit_end_to_end() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(sink_config(&dir.path().join("spool")), &proxy.url).await;
    let now = now_ms();
    const H: i64 = 3600 * 1000;
    let (small, huge, spanning) = ("/t/small", "/t/huge", "/t/span");
    let entry = |group: &str, t: i64, m: String| LogEntry {
        group: group.into(),
        event: LogEvent::new(t, m),
    };
    // Many small lines: more than two calls' worth by count.
    for i in 0..25_000 {
        run.entries
            .send(entry(small, now, format!("small {i:05}")))
            .await
            .unwrap();
    }
    // One huge line between two normal ones; ~1,000-byte lines so bytes bind too.
    run.entries
        .send(entry(huge, now, "before".into()))
        .await
        .unwrap();
    run.entries
        .send(entry(huge, now, format!("HUGE{}", "h".repeat(3 << 20))))
        .await
        .unwrap();
    for i in 0..2500 {
        run.entries
            .send(entry(huge, now, format!("{i:05}{}", "k".repeat(1000))))
            .await
            .unwrap();
    }
    // Lines spanning 30 h (out of order), plus one too old and one too far ahead.
    for h in [29, 0, 5, 30, 12, 24, 1] {
        run.entries
            .send(entry(spanning, now - h * H, format!("span -{h}h")))
            .await
            .unwrap();
    }
    run.entries
        .send(entry(spanning, now - 15 * 24 * H, "too old".into()))
        .await
        .unwrap();
    run.entries
        .send(entry(spanning, now + 3 * H, "too new".into()))
        .await
        .unwrap();

    let total = 25_000 + 2 + 2500 + 7;
    let stats = run.stats();
    let done = wait_until_async(LONG, || async { (sent(&stats) >= total).then_some(()) }).await;
    assert!(done.is_some(), "sent {} of {total}", sent(&stats));
    assert_eq!(stats.events_too_old.load(Ordering::SeqCst), 1);
    assert_eq!(stats.events_too_new.load(Ordering::SeqCst), 1);
    assert_eq!(stats.events_truncated.load(Ordering::SeqCst), 1);

    // Every call the proxy saw keeps every limit.
    let puts = proxy.puts();
    for p in &puts {
        assert!(!p.events.is_empty());
        assert!(p.events.len() <= MAX_BATCH_EVENTS, "{}", p.events.len());
        let bytes: usize = p.events.iter().map(|(_, m)| m.len() + EVENT_OVERHEAD).sum();
        assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        assert!(
            p.events
                .iter()
                .all(|(_, m)| m.len() + EVENT_OVERHEAD <= MAX_EVENT_BYTES)
        );
        assert!(
            p.events.windows(2).all(|w| w[0].0 <= w[1].0),
            "chronological"
        );
        let span = p.events.last().unwrap().0 - p.events[0].0;
        assert!(span < MAX_SPAN_MS, "span {span}");
    }
    let calls = |g: &str| puts.iter().filter(|p| p.group == g).count();
    assert!(
        calls(small) >= 3,
        "25,000 events need ≥ 3 calls: {}",
        calls(small)
    );
    assert!(calls(huge) >= 3, "≈2.8 MB needs ≥ 3 calls: {}", calls(huge));
    assert!(
        calls(spanning) >= 2,
        "30 h need ≥ 2 calls: {}",
        calls(spanning)
    );

    let read = moto.sdk_config().await;
    let got = wait_for_events(&read, small, 25_000, LONG).await;
    let want: Vec<String> = (0..25_000).map(|i| format!("small {i:05}")).collect();
    assert_eq!(
        got.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        want,
        "in order, each once"
    );
    assert!(got.iter().all(|(t, _)| *t == now));
    let got = wait_for_events(&read, huge, 2502, LONG).await;
    assert_eq!(got.len(), 2502);
    assert_eq!(got[0].1, "before");
    let cut = &got[1].1;
    assert!(
        cut.starts_with("HUGEhhh") && cut.contains("…[truncated "),
        "marker visible"
    );
    assert!(cut.len() + EVENT_OVERHEAD <= MAX_EVENT_BYTES);
    assert!(got[2].1.starts_with("00000k") && got[2501].1.starts_with("02499k"));
    let got = wait_for_events(&read, spanning, 7, LONG).await;
    let hours: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        hours,
        [
            "span -30h",
            "span -29h",
            "span -24h",
            "span -12h",
            "span -5h",
            "span -1h",
            "span -0h"
        ],
        "chronological, out-of-window events left out"
    );

    // Retention is the configured one.
    let client = aws_sdk_cloudwatchlogs::Client::new(&read);
    let groups = client
        .describe_log_groups()
        .log_group_name_prefix("/t/small")
        .send()
        .await
        .unwrap();
    assert_eq!(groups.log_groups()[0].retention_in_days(), Some(90));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cloudwatch_rejects_are_counted_from_rejected_log_events_info() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = sink_config(&dir.path().join("spool"));
    // Let old events through our own filter so CloudWatch (moto) is the one refusing them.
    cfg.age_window.max_age_ms = 60 * 24 * 3600 * 1000;
    // One put for all three (moto reports a lone too-old event as accepted): the first drain
    // after start comes once all three are spooled.
    cfg.flush_interval = Duration::from_secs(2);
    let run = Running::start(cfg, &moto.endpoint()).await;
    let now = now_ms();
    let day = 24 * 3600 * 1000;
    for (t, m) in [
        (now - 20 * day, "old a"),
        (now - 20 * day + 1, "old b"),
        (now, "fresh"),
    ] {
        run.entries
            .send(LogEntry {
                group: "/t/rejects".into(),
                event: LogEvent::new(t, m),
            })
            .await
            .unwrap();
    }
    let stats = run.stats();
    let done = wait_until_async(LONG, || async {
        (stats.events_rejected.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert!(done.is_some(), "rejectedLogEventsInfo was not counted");
    let got = wait_for_events(&moto.sdk_config().await, "/t/rejects", 1, LONG).await;
    assert_eq!(
        got.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
        ["fresh"]
    );
    // moto reports the last too-old index inclusively where AWS documents it exclusive, so
    // it yields one less than AWS would: at least one of the two is counted either way.
    assert!(stats.events_rejected.load(Ordering::SeqCst) <= 2);
    // PutLogEvents comes first (least privilege): the one failure is the missing group, which
    // the shipper then creates.
    assert!(stats.put_failures.load(Ordering::SeqCst) <= 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_and_restart_during_it_deliver_every_line_and_audit_record_exactly_once() {
    let mut moto = Moto::start();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let model_group = "/aws/ec2/models/clash-detector";
    let api_group = "/aws/apigateway/structural-design-api";
    let start = now_ms();

    let run = Running::start(sink_config(&spool), &proxy.url).await;
    let mut next_line = 0;
    let mut next_audit = 0;
    async fn feed(run: &Running, lines: &mut usize, audits: &mut usize, n: usize, pause: bool) {
        for _ in 0..n {
            run.lines
                .send(line("clash-detector", format!("line {:05}", *lines)))
                .await
                .unwrap();
            *lines += 1;
            if (*lines).is_multiple_of(10) {
                run.audits.send(audit(*audits)).await.unwrap();
                *audits += 1;
            }
            if pause && (*lines).is_multiple_of(50) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    feed(&run, &mut next_line, &mut next_audit, 500, false).await;
    let read = moto.sdk_config().await;
    wait_for_events(&read, model_group, 500, LONG).await;

    // Outage: 30 s (as the issue asks) while lines and requests keep flowing, with an agent
    // restart halfway through.
    let outage_started = tokio::time::Instant::now();
    proxy.outage(true);
    feed(&run, &mut next_line, &mut next_audit, 1000, true).await;
    let refused = wait_until_async(LONG, || async {
        (proxy.refused.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the shipper kept trying during the outage"
    );
    // The agent restarts in the middle of the outage.
    tokio::time::sleep_until(outage_started + Duration::from_secs(15)).await;
    let stats = run.stats();
    run.stop().await;
    assert!(
        sent(&stats) < 1500 + 150,
        "the outage held events back: {}",
        sent(&stats)
    );
    let run = Running::start(sink_config(&spool), &proxy.url).await;
    feed(&run, &mut next_line, &mut next_audit, 500, true).await;
    tokio::time::sleep_until(outage_started + Duration::from_secs(30)).await;
    proxy.outage(false);

    let got = wait_for_events(&read, model_group, 2000, LONG).await;
    let want: Vec<String> = (0..2000).map(|i| format!("line {i:05}")).collect();
    assert_eq!(
        got.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        want,
        "every line, in order, exactly once"
    );
    let end = now_ms();
    assert!(
        got.iter().all(|(t, _)| *t >= start && *t <= end),
        "timestamps are capture times"
    );
    let audits = wait_for_events(&read, api_group, 200, LONG).await;
    let mut ids: Vec<String> = audits
        .iter()
        .map(|(_, m)| {
            let v: Value = serde_json::from_str(m).expect("audit events are JSON lines");
            v["request_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..200).map(|i| format!("req-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "every audit record exactly once");

    // moto restarting empty (groups gone) makes the shipper recreate group and stream.
    moto.restart();
    feed(&run, &mut next_line, &mut next_audit, 10, false).await;
    let got = wait_for_events(&moto.sdk_config().await, model_group, 10, LONG).await;
    assert_eq!(got[0].1, "line 02000");
    run.stop().await;
    let left = warden::sinks::spool::Spool::open(
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().contains("clash-detector"))
            .unwrap()
            .path(),
        1 << 20,
    )
    .unwrap();
    assert_eq!(left.pending(), 0, "delivered events are never replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_oldest_first_and_counts_it() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    proxy.outage(true);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = sink_config(&dir.path().join("spool"));
    cfg.max_spool_bytes_per_group = 64 << 10;
    let run = Running::start(cfg, &proxy.url).await;
    for i in 0..2000 {
        run.lines
            .send(line("m", format!("{i:05} {}", "p".repeat(200))))
            .await
            .unwrap();
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let stats = run.stats();
    let counted = wait_until_async(LONG, || async {
        (stats.events_spooled.load(Ordering::SeqCst) == 2000).then_some(())
    })
    .await;
    assert!(counted.is_some());
    let dropped = stats.events_dropped.load(Ordering::SeqCst);
    assert!(dropped > 0, "a 64 KiB spool cannot hold 400 KB");
    assert_eq!(
        run.store.latest("LogEventsDropped", &[]),
        Some(dropped as f64),
        "LogEventsDropped metric"
    );
    assert!(
        run.store.render().contains(&format!(
            "warden_log_events_dropped_total{{host=\"{HOST}\"}} {dropped}"
        )),
        "{}",
        run.store.render()
    );
    proxy.outage(false);
    let read = moto.sdk_config().await;
    let want = 2000 - dropped as usize;
    let got = wait_for_events(&read, "/aws/ec2/models/m", want, LONG).await;
    assert_eq!(got.len(), want, "delivered + dropped = all");
    assert!(
        got.last().unwrap().1.starts_with("01999"),
        "the newest survive"
    );
    let first: usize = got[0].1[..5].parse().unwrap();
    assert_eq!(first, dropped as usize, "the oldest went first");
    run.stop().await;
}

// ---- `warden run` as a real process ----

struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, log: PathBuf) -> Agent {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(crate::support::warden_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let exited = crate::support::net::wait_until(LONG, || child.try_wait().ok().flatten());
            assert!(exited.is_some(), "agent did not stop\n{}", self.log());
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A model that prints `count` numbered lines (every 100th one JSON) tagged with its pid,
/// then serves as the fake model.
fn printing_model(dir: &Path, name: &str, port: u16, count: usize) -> String {
    let fake = crate::support::repo_root().join("tests/integration/support/fake_model.py");
    let printer = dir.join("printer.py");
    std::fs::write(
        &printer,
        format!(
            "import json, os\nfor i in range({count}):\n    \
             print(json.dumps({{'run': os.getpid(), 'n': i}}) if i % 100 == 0 \
             else f'run {{os.getpid()}} line {{i:05}}')\n"
        ),
    )
    .unwrap();
    let script = format!(
        "python3 {} && exec python3 {} --port {port} --name {name}",
        printer.display(),
        fake.display()
    );
    format!(
        "[[models]]\nname = \"{name}\"\nport = {port}\ncommand = [\"sh\", \"-c\", {script:?}]\nhealth_interval = \"200ms\"\nstop_timeout = \"5s\"\n"
    )
}

#[derive(Default, Debug)]
struct Runs(BTreeMap<u64, Vec<(usize, i64)>>);

/// Parses model lines into (run pid → [(n, timestamp)]); every line must be ours.
fn runs(events: &[(i64, String)]) -> Runs {
    let mut out = Runs::default();
    for (t, m) in events {
        let (run, n) = if m.starts_with('{') {
            let v: Value = serde_json::from_str(m).expect("a JSON line stays JSON");
            (
                v["run"].as_u64().unwrap(),
                v["n"].as_u64().unwrap() as usize,
            )
        } else if let Some(rest) = m.strip_prefix("run ") {
            let (pid, n) = rest.split_once(" line ").unwrap();
            (pid.parse().unwrap(), n.parse().unwrap())
        } else {
            continue; // the fake model's own start-up lines
        };
        out.0.entry(run).or_default().push((n, *t));
    }
    out
}

/// One inference request; an answered one (any status) is noted in `sent` (it is audited).
async fn api_request(
    client: &reqwest::Client,
    listen: u16,
    id: &str,
    sent: &Mutex<Vec<String>>,
) -> u16 {
    let status = client
        .post(format!("http://127.0.0.1:{listen}/api/v1/clash-detector"))
        .header("x-request-id", id)
        .json(&serde_json::json!({"inputs": [1]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    if status != 0 {
        sent.lock().unwrap().push(id.to_string());
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_run_ships_model_lines_and_audit_records_through_an_outage_and_a_restart() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, port) = (free_port(), free_port());
    let lines = 3000;
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nhost_id = \"{HOST}\"\nlisten = \"127.0.0.1:{listen}\"\ncontrol_socket = {:?}\nstate_dir = {:?}\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n[cloudwatch]\nenabled = false\n\n\
             [logs]\nenabled = true\nflush_interval = \"500ms\"\nagent_group = \"/aws/ec2/warden\"\n\n{}",
            dir.path().join("control.sock").display().to_string(),
            dir.path().join("state").display().to_string(),
            proxy.url,
            printing_model(dir.path(), "clash-detector", port, lines),
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let start = now_ms();
    let mut agent = Agent::start(&config, log.clone());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let sent = Mutex::new(Vec::new());
    let attempt = AtomicU64::new(0);
    let ready = wait_until_async(LONG, || async {
        let id = format!("warmup-{}", attempt.fetch_add(1, Ordering::SeqCst));
        (api_request(&client, listen, &id, &sent).await == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "model never served\n{}", agent.log());
    let read = moto.sdk_config().await;
    let group = "/aws/ec2/models/clash-detector";
    let api_group = "/aws/apigateway/structural-design-api";
    wait_for_events(&read, group, lines, LONG).await;

    // Outage: requests keep coming, then the agent restarts, more requests, then AWS is back.
    proxy.outage(true);
    for i in 0..15 {
        let id = format!("during-{i}");
        assert_eq!(api_request(&client, listen, &id, &sent).await, 200);
    }
    agent.stop();
    let mut agent = Agent::start(&config, log.clone());
    let ready = wait_until_async(LONG, || async {
        let id = format!("restart-{}", attempt.fetch_add(1, Ordering::SeqCst));
        (api_request(&client, listen, &id, &sent).await == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "model never served again\n{}", agent.log());
    for i in 0..15 {
        let id = format!("after-{i}");
        assert_eq!(api_request(&client, listen, &id, &sent).await, 200);
    }
    let mut ids = sent.lock().unwrap().clone();
    assert!(
        proxy.refused.load(Ordering::SeqCst) > 0,
        "the outage was felt"
    );
    proxy.outage(false);

    let got = wait_for_events(&read, group, 2 * lines, LONG).await;
    let end = now_ms();
    let runs = runs(&got);
    assert_eq!(
        runs.0.len(),
        2,
        "one run per agent start: {:?}",
        runs.0.keys()
    );
    for (pid, seen) in &runs.0 {
        let ns: Vec<usize> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            ns,
            (0..lines).collect::<Vec<_>>(),
            "run {pid}: in order, exactly once"
        );
        assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(seen.iter().all(|(_, t)| *t >= start && *t <= end));
    }
    let audits = wait_for_events(&read, api_group, ids.len(), LONG).await;
    let mut got_ids: Vec<String> = audits
        .iter()
        .map(|(_, m)| {
            serde_json::from_str::<Value>(m).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    got_ids.sort();
    ids.sort();
    assert_eq!(
        got_ids,
        ids,
        "N requests → exactly N audit records\n{}",
        agent.log()
    );
    // Interaction record fields are there for analytics.
    let v: Value = serde_json::from_str(&audits[0].1).unwrap();
    for k in ["interaction_id", "model", "latency_ms", "outcome", "status"] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    // The agent's own logs, as JSON lines, in the optional agent group.
    let own = wait_until_async(LONG, || async {
        let events = read_events(&read, "/aws/ec2/warden", HOST).await;
        events
            .iter()
            .filter_map(|(_, m)| serde_json::from_str::<Value>(m).ok())
            .find(|v| v["message"] == "model ready" && v["model"] == "clash-detector")
    })
    .await;
    assert!(own.is_some(), "agent log events shipped\n{}", agent.log());
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_logs_disabled_nothing_talks_to_aws_and_lines_stay_in_the_rings() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, port) = (free_port(), free_port());
    let config = dir.path().join("warden.toml");
    let socket = dir.path().join("control.sock");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{listen}\"\ncontrol_socket = {:?}\nstate_dir = {:?}\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n[cloudwatch]\nenabled = false\n\n\
             [logs]\nenabled = false\nflush_interval = \"200ms\"\n\n{}",
            socket.display().to_string(),
            dir.path().join("state").display().to_string(),
            proxy.url,
            printing_model(dir.path(), "clash-detector", port, 50),
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&config, dir.path().join("agent.log"));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let sent = Mutex::new(Vec::new());
    let ready = wait_until_async(LONG, || async {
        (api_request(&client, listen, "x", &sent).await == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "model never served\n{}", agent.log());
    let tail = wait_until_async(LONG, || async {
        let mut c = warden::control::ControlClient::connect(&socket)
            .await
            .ok()?;
        let lines = c.logs("clash-detector", 100).await.ok()?;
        lines
            .iter()
            .any(|l| l.line.ends_with("line 00049"))
            .then_some(lines)
    })
    .await;
    assert!(tail.is_some(), "lines reach the ring buffer");
    tokio::time::sleep(Duration::from_secs(1)).await; // several flush intervals
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 0, "no AWS traffic");
    assert!(!dir.path().join("state/spool/logs").exists());
    agent.stop();
}

/// The spool's disk is full: events are kept in memory (bounded in bytes) and appended once
/// space is back; none is lost or counted as a spool error, and each arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_events_in_memory_until_the_spool_can_take_them() {
    let Some(fs) = crate::support::tmpfs::Tmpfs::mount("512k") else {
        return;
    };
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let run = Running::start(sink_config(&fs.path().join("spool")), &proxy.url).await;
    // Warm up so the group's spool directory exists, then fill the disk to the last byte.
    run.audits.send(audit(0)).await.unwrap();
    let read = moto.sdk_config().await;
    let api_group = "/aws/apigateway/structural-design-api";
    wait_for_events(&read, api_group, 1, LONG).await;
    fs.fill();
    for i in 1..=400 {
        run.audits.send(audit(i)).await.unwrap();
    }
    let stats = run.stats();
    // While the disk is full nothing new can be spooled, so nothing new is shipped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stats.events_spooled.load(Ordering::SeqCst), 1);
    assert_eq!(
        stats.spool_errors.load(Ordering::SeqCst),
        0,
        "kept, not lost"
    );
    fs.free();
    let got = wait_for_events(&read, api_group, 401, LONG).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|(_, m)| {
            serde_json::from_str::<Value>(m).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..=400).map(|i| format!("req-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "every record exactly once");
    assert_eq!(stats.spool_errors.load(Ordering::SeqCst), 0);
    assert_eq!(
        warden::telemetry::drops::total(&run.store, "logs", "spool_write"),
        0.0
    );
    run.stop().await;
}

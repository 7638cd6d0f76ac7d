//! The state dir's file system full for 20 s under traffic (a real 16 MiB tmpfs): afterwards
//! every request answered 2xx has its audit record in the local audit file and in CloudWatch
//! Logs (moto), and every request that could not be audited was answered 503
//! `audit_unavailable` and counted. Needs root (mount); skips itself otherwise.

use crate::support::agent::{TestAgent, nginx_model};
use crate::support::moto::Moto;
use crate::support::net::{free_port, wait_until_async};
use crate::support::tmpfs::Tmpfs;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AUDIT_GROUP: &str = "/aws/apigateway/structural-design-api";
const CLIENTS: usize = 4;
const FULL_FOR: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Outcomes {
    ok: Vec<String>,
    audit_refused: Vec<String>,
    other: Vec<(String, u16, String)>,
    transport: u64,
}

/// Request ids of every audit record in `audit/api.jsonl` and its rotated files.
fn local_audit_ids(state_dir: &Path) -> HashSet<String> {
    let base = state_dir.join("audit/api.jsonl");
    let mut files = vec![base.clone()];
    files.extend((1..=10).map(|n| PathBuf::from(format!("{}.{n}", base.display()))));
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["request_id"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn cloud_audit_ids(sdk: &aws_config::SdkConfig) -> HashSet<String> {
    let client = aws_sdk_cloudwatchlogs::Client::new(sdk);
    let mut out = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let Ok(resp) = client
            .get_log_events()
            .log_group_name(AUDIT_GROUP)
            .log_stream_name("test-host")
            .start_from_head(true)
            .limit(10_000)
            .set_next_token(token.clone())
            .send()
            .await
        else {
            return out;
        };
        if resp.events().is_empty() {
            return out;
        }
        for e in resp.events() {
            if let Some(id) = e
                .message()
                .and_then(|m| serde_json::from_str::<Value>(m).ok())
                .and_then(|v| v["request_id"].as_str().map(str::to_string))
            {
                out.insert(id);
            }
        }
        token = resp.next_forward_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

fn dropped_audit_unavailable(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("warden_records_dropped_total{")
                && l.contains(r#"sink="audit""#)
                && l.contains(r#"reason="audit_unavailable""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_never_serves_an_unaudited_request() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    warden::tls::install_crypto_provider();
    let tmpfs = Tmpfs::mount("16m").expect("mount a 16 MiB tmpfs");
    let moto = Moto::start();
    let builder = TestAgent::builder();
    let dir = builder.dir().to_path_buf();
    let mut agent = builder
        .model(nginx_model(&dir, "alpha", free_port(), 0.0))
        .aws(&moto.endpoint())
        .logs(true)
        .state_dir(tmpfs.path())
        // A small memory buffer, so 20 s of full disk exhausts it and refusals are exercised.
        .section("[api]\naudit_buffer_bytes = 262144\n")
        .start();
    agent.wait_ready(Duration::from_secs(30));

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let url = agent.url("/api/v1/alpha");
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (outcomes, stop, url) = (outcomes.clone(), stop.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let id = format!("disk-{c}-{i}");
                i += 1;
                let sent = http
                    .post(&url)
                    .header("x-request-id", &id)
                    .json(&serde_json::json!({"inputs": [[1.0]]}))
                    .send()
                    .await;
                match sent {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        let code = serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                        let mut o = outcomes.lock().unwrap();
                        match (status, code.as_deref()) {
                            (200..=299, _) => o.ok.push(id),
                            (503, Some("audit_unavailable")) => o.audit_refused.push(id),
                            _ => o.other.push((id, status, body)),
                        }
                    }
                    Err(_) => outcomes.lock().unwrap().transport += 1,
                }
                // Steady, not flat out: the read-back stays a few thousand records.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let tmpfs = tokio::task::spawn_blocking(move || {
        tmpfs.fill();
        tmpfs
    })
    .await
    .unwrap();
    let full_from = Instant::now();
    let ok_before_full = outcomes.lock().unwrap().ok.len();
    tokio::time::sleep(FULL_FOR).await;
    let (ok_during, refused_during) = {
        let o = outcomes.lock().unwrap();
        (o.ok.len() - ok_before_full, o.audit_refused.len())
    };
    tmpfs.free();
    eprintln!("disk full for {:?}", full_from.elapsed());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    for c in clients {
        c.await.unwrap();
    }
    let o = std::mem::take(&mut *outcomes.lock().unwrap());
    eprintln!(
        "disk full: {} answered 2xx ({} while full), {} refused 503 audit_unavailable ({} while full), {} other, {} transport errors",
        o.ok.len(),
        ok_during,
        o.audit_refused.len(),
        refused_during,
        o.other.len(),
        o.transport
    );
    assert!(
        o.other.is_empty(),
        "answers other than 2xx or 503 audit_unavailable: {:?}",
        &o.other[..o.other.len().min(5)]
    );
    assert!(
        refused_during > 0,
        "the buffer never filled: the scenario did not test refusal"
    );
    assert!(
        o.ok.len() > ok_during,
        "traffic was served before and after"
    );

    // The refusals were counted, one each.
    let metrics = crate::support::moto::plain_http::get(&agent.url("/metrics")).unwrap_or_default();
    assert_eq!(
        dropped_audit_unavailable(&metrics),
        o.audit_refused.len() as f64,
        "each refusal counted in warden_records_dropped_total"
    );

    // Local file: every 2xx request, once the held records are written out.
    let state_dir = tmpfs.path().to_path_buf();
    let wanted: HashSet<String> = o.ok.iter().cloned().collect();
    let local = wait_until_async(Duration::from_secs(30), || async {
        let have = local_audit_ids(&state_dir);
        wanted.is_subset(&have).then_some(have)
    })
    .await;
    let local = local.unwrap_or_else(|| {
        let have = local_audit_ids(&state_dir);
        panic!(
            "{} of {} answered requests missing from the local audit file",
            wanted.difference(&have).count(),
            wanted.len()
        )
    });
    assert!(
        o.audit_refused.iter().all(|id| !local.contains(id)),
        "a refused request was not served, so it has no record"
    );

    // CloudWatch Logs: every 2xx request too.
    let sdk = moto.sdk_config().await;
    let cloud = wait_until_async(Duration::from_secs(60), || async {
        let have = cloud_audit_ids(&sdk).await;
        wanted.is_subset(&have).then_some(have)
    })
    .await;
    if cloud.is_none() {
        let have = cloud_audit_ids(&sdk).await;
        panic!(
            "{} of {} answered requests missing from CloudWatch Logs ({} records there)",
            wanted.difference(&have).count(),
            wanted.len(),
            have.len()
        );
    }
    agent.stop(Duration::from_secs(30));
}

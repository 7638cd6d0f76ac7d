//! Signals against a real agent. SIGTERM under load: the agent stops accepting, drains what it
//! accepted while the models still answer, and only then stops them, so no client ever gets a
//! 5xx from a shutdown (requests refused at the socket after the listener closed are not
//! answers: counted apart). SIGHUP: the audit file is reopened, as logrotate needs.

use crate::support::agent::{TestAgent, nginx_model, wrk_post};
use crate::support::net::{free_port, wait_until};
use std::time::{Duration, Instant};

const RUNS: usize = 10;
const CLIENTS: u32 = 16;

struct Run {
    requests: u64,
    non_2xx: u64,
    transport_errors: u64,
    exit_ok: bool,
}

fn one_run() -> Run {
    let builder = TestAgent::builder();
    let dir = builder.dir().to_path_buf();
    let mut agent = builder
        .model(nginx_model(&dir, "alpha", free_port(), 0.0))
        .model(nginx_model(&dir, "beta", free_port(), 0.0))
        .start();
    agent.wait_ready(Duration::from_secs(30));
    let url = agent.url("/api/v1/alpha");
    let load = std::thread::spawn(move || {
        wrk_post(
            &url,
            r#"{"inputs":[[1.0]]}"#,
            CLIENTS,
            Duration::from_secs(4),
        )
    });
    // Mid-load: the signal goes once the gateway is answering steadily. The bar is low enough
    // that a machine busy with other work (a few hundred req/s) still gets there well inside
    // wrk's run, so the signal always lands while requests are in flight.
    let metrics = agent.url("/metrics");
    let busy = wait_until(Duration::from_secs(10), || {
        (answered(&metrics) >= 500.0).then_some(())
    });
    assert!(
        busy.is_some(),
        "load never reached the gateway\n{}",
        agent.log()
    );
    let signalled = Instant::now();
    let status = agent.stop(Duration::from_secs(30));
    let stop_took = signalled.elapsed();
    let report = load.join().expect("wrk thread");
    eprintln!(
        "shutdown run: {} requests, {} non-2xx, {} transport errors after close, exit {status}, stop took {stop_took:?}",
        report.requests, report.non_2xx, report.transport_errors
    );
    Run {
        requests: report.requests,
        non_2xx: report.non_2xx,
        transport_errors: report.transport_errors,
        exit_ok: status.success(),
    }
}

/// Inference requests the gateway has answered so far (any status), from `/metrics`.
fn answered(metrics_url: &str) -> f64 {
    let Some(text) = crate::support::moto::plain_http::get(metrics_url) else {
        return 0.0;
    };
    text.lines()
        .filter(|l| l.starts_with("warden_http_requests_total{") && l.contains("/api/v1/{model}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn sigterm_under_16_client_load_never_answers_non_2xx() {
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(one_run());
    }
    let requests: u64 = runs.iter().map(|r| r.requests).sum();
    let non_2xx: Vec<u64> = runs.iter().map(|r| r.non_2xx).collect();
    let transport: Vec<u64> = runs.iter().map(|r| r.transport_errors).collect();
    eprintln!(
        "{RUNS} runs, {requests} requests; non-2xx per run {non_2xx:?}; transport errors per run {transport:?}"
    );
    assert!(runs.iter().all(|r| r.exit_ok), "every stop exits cleanly");
    // The load was real in every run (not an agent that was already gone).
    assert!(
        runs.iter().all(|r| r.requests > 100),
        "too little load: {:?}",
        runs.iter().map(|r| r.requests).collect::<Vec<_>>()
    );
    assert!(
        non_2xx.iter().all(|&n| n == 0),
        "non-2xx answers during shutdown: {non_2xx:?}"
    );
}

/// Request ids in one audit file.
fn audit_ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_string))
        .collect()
}

fn post_with_id(url: &str, id: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "content-type: application/json", "-H"])
        .arg(format!("x-request-id: {id}"))
        .args(["-d", r#"{"inputs":[[1.0]]}"#, url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[test]
fn sighup_reopens_the_audit_file_after_logrotate_moved_it() {
    let builder = TestAgent::builder();
    let dir = builder.dir().to_path_buf();
    let mut agent = builder
        .model(nginx_model(&dir, "alpha", free_port(), 0.0))
        .start();
    agent.wait_ready(Duration::from_secs(30));
    let url = agent.url("/api/v1/alpha");
    let audit = agent.state_dir.join("audit/api.jsonl");
    let rotated = agent.state_dir.join("audit/api.jsonl.rotated");
    assert_eq!(post_with_id(&url, "before-rotate"), 200);
    let written = wait_until(Duration::from_secs(10), || {
        audit_ids(&audit)
            .contains(&"before-rotate".to_string())
            .then_some(())
    });
    assert!(written.is_some(), "first record never written");
    // What logrotate does (without copytruncate): move the file, then signal.
    std::fs::rename(&audit, &rotated).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let reopened = wait_until(Duration::from_secs(10), || audit.exists().then_some(()));
    assert!(
        reopened.is_some(),
        "no new api.jsonl after SIGHUP\n{}",
        agent.log()
    );
    assert_eq!(post_with_id(&url, "after-rotate"), 200);
    let landed = wait_until(Duration::from_secs(10), || {
        (audit_ids(&audit) == ["after-rotate"]).then_some(())
    });
    assert!(
        landed.is_some(),
        "new records go to the new file: {:?}",
        audit_ids(&audit)
    );
    assert!(!audit_ids(&rotated).contains(&"after-rotate".to_string()));
    assert!(agent.stop(Duration::from_secs(30)).success());
}

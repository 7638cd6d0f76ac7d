//! SLOs end to end on a real `warden run` with no SLO configured (the defaults apply): a model
//! failing 20 % of calls pages the burn-rate alert within two minutes and its budget on
//! `/metrics` and in CloudWatch falls below 1; a 0.05 % model never pages; a restart
//! (SIGTERM, as `systemctl restart`) keeps the budget without double counting; and a bad
//! `[[slo]]` is a `file:line:col` error from `check-config`.

use crate::support::agent::{TestAgent, nginx_model, wrk_post};
use crate::support::moto::{Moto, plain_http};
use crate::support::net::{free_port, wait_until};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"inputs": [[1.0]]}"#;
const READY: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn call(socket: &std::path::Path, method: &str) -> Option<Value> {
    let mut c = warden::control::ControlClient::connect(socket).await.ok()?;
    c.call(method, json!({})).await.ok()
}

/// (rule, Model, state) of every SLO alert the agent lists.
fn slo_alerts(
    rt: &tokio::runtime::Runtime,
    socket: &std::path::Path,
) -> Vec<(String, String, String)> {
    let Some(v) = rt.block_on(call(socket, "alerts")) else {
        return Vec::new();
    };
    v["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["rule"].as_str().is_some_and(|r| r.starts_with("slo-")))
        .map(|a| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&a["rule"]), s(&a["labels"]["Model"]), s(&a["state"]))
        })
        .collect()
}

/// The `slos` status of `model`'s availability SLO.
fn availability(
    rt: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    model: &str,
) -> Option<Value> {
    let v = rt.block_on(call(socket, "slos"))?;
    v["slos"]
        .as_array()?
        .iter()
        .find(|s| s["model"] == model && s["slo"] == "availability")
        .cloned()
}

/// The value of the first sample of `family` whose labels contain all of `want`.
fn sample(text: &str, family: &str, want: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| want.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn default_slos_page_on_a_fast_burn_stay_quiet_inside_the_budget_and_survive_a_restart() {
    let moto = Moto::start();
    let builder = TestAgent::builder();
    let flaky = nginx_model(builder.dir(), "flaky", free_port(), 20.0);
    let steady = nginx_model(builder.dir(), "steady", free_port(), 0.05);
    let mut agent = builder
        .model(flaky)
        .model(steady)
        .aws(&moto.endpoint())
        .cloudwatch(true)
        .start();
    agent.wait_ready(READY);
    let rt = runtime();
    let socket = agent.socket.clone();

    // Load both for 30 s; watch the SLO alerts every half second.
    let started = Instant::now();
    let load = |model: &str| {
        let url = agent.url(&format!("/api/v1/{model}"));
        std::thread::spawn(move || wrk_post(&url, BODY, 8, Duration::from_secs(30)))
    };
    let (wrk_flaky, wrk_steady) = (load("flaky"), load("steady"));
    let mut paged_after = None;
    let mut seen = Vec::new();
    while !(wrk_flaky.is_finished() && wrk_steady.is_finished())
        && started.elapsed() < Duration::from_secs(90)
    {
        let alerts = slo_alerts(&rt, &socket);
        if paged_after.is_none()
            && alerts
                .iter()
                .any(|(r, m, s)| r == "slo-burn-rate-page" && m == "flaky" && s == "firing")
        {
            paged_after = Some(started.elapsed());
        }
        seen.extend(alerts);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (rf, rs) = (wrk_flaky.join().unwrap(), wrk_steady.join().unwrap());
    seen.extend(slo_alerts(&rt, &socket));
    assert!(rf.requests > 1000 && rs.requests > 1000, "{rf:?} {rs:?}");
    assert!(rf.non_2xx > 0, "the flaky model failed nothing: {rf:?}");
    let paged_after =
        paged_after.unwrap_or_else(|| panic!("no page for flaky; saw {seen:?}\n{}", agent.log()));
    assert!(paged_after < Duration::from_secs(120), "{paged_after:?}");
    eprintln!(
        "slo e2e: page for 20 % errors after {:.1}s of load; wrk flaky {} calls ({} non-2xx), steady {} calls ({} non-2xx)",
        paged_after.as_secs_f64(),
        rf.requests,
        rf.non_2xx,
        rs.requests,
        rs.non_2xx
    );
    assert!(
        !seen
            .iter()
            .any(|(r, m, _)| r == "slo-burn-rate-page" && m == "steady"),
        "0.05 % errors paged: {seen:?}"
    );

    // The budget on /metrics.
    let text = plain_http::get(&agent.url("/metrics")).expect("/metrics");
    let left = sample(
        &text,
        "warden_slo_error_budget_remaining_ratio",
        &["model=\"flaky\"", "slo=\"availability\""],
    )
    .unwrap_or_else(|| panic!("no budget gauge for flaky:\n{text}"));
    assert!(left < 1.0, "{left}");
    let burn = sample(
        &text,
        "warden_slo_burn_rate",
        &["model=\"flaky\"", "slo=\"availability\"", "window=\"5m\""],
    )
    .expect("burn-rate gauge");
    assert!(burn > 14.4, "{burn}");
    let steady_burn = sample(
        &text,
        "warden_slo_burn_rate",
        &["model=\"steady\"", "slo=\"availability\"", "window=\"1h\""],
    )
    .expect("steady burn-rate gauge");
    assert!(steady_burn < 6.0, "{steady_burn}");

    // And in CloudWatch, with the DESIGN dimensions.
    let cw_dims = rt.block_on(async {
        let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
        wait_until_async(Duration::from_secs(20), || async {
            let out = cw
                .list_metrics()
                .namespace("Warden")
                .metric_name("SLOErrorBudgetRemaining")
                .send()
                .await
                .ok()?;
            out.metrics()
                .iter()
                .map(|m| {
                    let mut d: Vec<String> = m
                        .dimensions()
                        .iter()
                        .map(|d| format!("{}={}", d.name().unwrap_or(""), d.value().unwrap_or("")))
                        .collect();
                    d.sort();
                    d
                })
                .find(|d| {
                    d.contains(&"Model=flaky".to_string())
                        && d.contains(&"SLO=availability".to_string())
                })
        })
        .await
    });
    let cw_dims = cw_dims.unwrap_or_else(|| {
        panic!(
            "SLOErrorBudgetRemaining never reached CloudWatch\n{}",
            agent.log()
        )
    });
    assert_eq!(
        cw_dims,
        vec!["Host=test-host", "Model=flaky", "SLO=availability"]
    );

    // Restart: every call counted once, before and after.
    let requests = sample(&text, "warden_model_requests_total", &["model=\"flaky\""]).unwrap();
    let consumed = wait_until(Duration::from_secs(10), || {
        let s = availability(&rt, &socket, "flaky")?;
        (s["total"].as_f64()? == requests).then_some(s)
    })
    .unwrap_or_else(|| panic!("the SLO never counted all {requests} calls"));
    agent.stop(Duration::from_secs(30));
    agent.restart();
    agent.wait_ready(READY);
    let after = wait_until(Duration::from_secs(20), || {
        availability(&rt, &socket, "flaky")
    })
    .expect("slos after the restart");
    assert_eq!(after["total"], consumed["total"], "{after} vs {consumed}");
    assert_eq!(after["good"], consumed["good"], "{after} vs {consumed}");
    let (a, b) = (
        after["budget_remaining"].as_f64().unwrap(),
        consumed["budget_remaining"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    eprintln!(
        "slo e2e: flaky availability budget left {b:.3} before and {a:.3} after the restart, {} calls counted both times",
        after["total"]
    );
    // Still paging, and not paging anew: the alert state came back too.
    let alerts = wait_until(Duration::from_secs(10), || {
        let a = slo_alerts(&rt, &socket);
        (!a.is_empty()).then_some(a)
    })
    .unwrap_or_default();
    assert!(
        alerts
            .iter()
            .any(|(r, m, s)| r == "slo-burn-rate-page" && m == "flaky" && s == "firing"),
        "{alerts:?}"
    );
}

async fn wait_until_async<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn check_config_points_into_the_slo_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(&config, "[agent]\nhost_id = \"h\"\n").unwrap();
    std::fs::create_dir(dir.path().join("slos")).unwrap();
    let slo = dir.path().join("slos/api.toml");
    std::fs::write(
        &slo,
        "[[slo]]\nname = \"fast\"\nmodel = \"clash-detector\"\nkind = \"latency\"\nthreshold = \"200ms\"\nobjective = 100\n",
    )
    .unwrap();
    let run = || {
        Command::new(crate::support::warden_bin())
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:6:13:", slo.display())) && err.contains("objective"),
        "{err}"
    );
    std::fs::write(
        &slo,
        "[[slo]]\nname = \"fast\"\nmodel = \"clash-detector\"\nkind = \"latency\"\nthreshold = \"200ms\"\nobjective = 95\n",
    )
    .unwrap();
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

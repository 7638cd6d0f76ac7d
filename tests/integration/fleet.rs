//! The fleet: `warden scaling push` against moto's Auto Scaling and CloudWatch, `/ready` draining
//! on GPU faults from the fake NVML, self-healing restarts of a leaking model while the others
//! keep serving, the audit metric filters `warden alarms push` leaves, 4XX bursts paging, and
//! the scaling metrics published under `AutoScalingGroupName` (group read from a fake IMDS).

use crate::support::agent::{TestAgent, nginx_model};
use crate::support::moto::{Moto, plain_http};
use crate::support::net::{free_port, wait_until, wait_until_async};
use crate::support::nvml::{FakeGpu, FakeNvml, FakeState};
use crate::support::slack::SlackReceiver;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use warden::control::ControlClient;
use warden::supervisor::EventKind;

const LONG: Duration = Duration::from_secs(60);

fn warden(args: &[&str]) -> Output {
    Command::new(crate::support::warden_bin())
        .current_dir(crate::support::repo_root())
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn aws_config_file(dir: &Path, moto: &Moto, extra: &str) -> String {
    let path = dir.join("warden.toml");
    std::fs::write(
        &path,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nattempt_timeout = \"2s\"\noperation_timeout = \"5s\"\n\n{extra}",
            moto.endpoint()
        ),
    )
    .unwrap();
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// scaling

async fn create_group(sdk: &aws_config::SdkConfig, name: &str) {
    let asg = aws_sdk_autoscaling::Client::new(sdk);
    asg.create_launch_configuration()
        .launch_configuration_name(format!("{name}-lc"))
        .image_id("ami-12c6146b")
        .instance_type("g5.xlarge")
        .send()
        .await
        .unwrap();
    // The seed's fleet: min 1, desired 2, max 4.
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(format!("{name}-lc"))
        .min_size(1)
        .desired_capacity(2)
        .max_size(4)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
}

/// (policies, alarms) as the services describe them, debug-printed (timestamps included).
async fn describe(sdk: &aws_config::SdkConfig, group: &str) -> (String, String) {
    let asg = aws_sdk_autoscaling::Client::new(sdk);
    let cw = aws_sdk_cloudwatch::Client::new(sdk);
    let p = asg
        .describe_policies()
        .auto_scaling_group_name(group)
        .send()
        .await
        .unwrap();
    let a = cw
        .describe_alarms()
        .alarm_name_prefix(format!("warden-{group}-"))
        .send()
        .await
        .unwrap();
    (
        format!("{:?}", p.scaling_policies()),
        format!("{:?}", a.metric_alarms()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_push_wires_two_policies_to_alarms_at_70_80_30_and_a_second_push_changes_nothing() {
    let moto = Moto::start();
    let sdk = moto.sdk_config().await;
    create_group(&sdk, "gpu-fleet").await;
    let dir = tempfile::tempdir().unwrap();
    let config = aws_config_file(dir.path(), &moto, "");

    let out = warden(&[
        "scaling",
        "push",
        "--config",
        &config,
        "--group",
        "gpu-fleet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 policies and 3 alarms written, 0 unchanged"),
        "{}",
        text(&out.stdout)
    );

    let asg = aws_sdk_autoscaling::Client::new(&sdk);
    let policies = asg
        .describe_policies()
        .auto_scaling_group_name("gpu-fleet")
        .send()
        .await
        .unwrap();
    let policies = policies.scaling_policies();
    assert!(policies.len() >= 2, "{policies:?}");
    let arn = |suffix: &str| {
        let p = policies
            .iter()
            .find(|p| p.policy_name().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} policy in {policies:?}"));
        assert_eq!(p.policy_type(), Some("StepScaling"));
        // The 5-minute warm-up.
        assert_eq!(p.estimated_instance_warmup(), Some(300));
        p.policy_arn().unwrap().to_string()
    };
    let (out_arn, in_arn) = (arn("-scale-out"), arn("-scale-in"));
    assert_ne!(out_arn, in_arn);
    let adjustment = |arn: &str| {
        policies
            .iter()
            .find(|p| p.policy_arn() == Some(arn))
            .unwrap()
            .step_adjustments()[0]
            .scaling_adjustment()
    };
    assert_eq!(
        (adjustment(&out_arn), adjustment(&in_arn)),
        (Some(1), Some(-1))
    );

    let cw = aws_sdk_cloudwatch::Client::new(&sdk);
    let alarms = cw
        .describe_alarms()
        .alarm_name_prefix("warden-gpu-fleet-")
        .send()
        .await
        .unwrap();
    let mut got: Vec<(String, f64, String, Vec<String>)> = alarms
        .metric_alarms()
        .iter()
        .map(|a| {
            assert_eq!(a.dimensions().len(), 1);
            assert_eq!(a.dimensions()[0].name(), Some("AutoScalingGroupName"));
            assert_eq!(a.dimensions()[0].value(), Some("gpu-fleet"));
            assert_eq!(a.namespace(), Some("Warden"));
            (
                a.metric_name().unwrap().to_string(),
                a.threshold().unwrap(),
                a.comparison_operator().unwrap().as_str().to_string(),
                a.alarm_actions().to_vec(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (
                "HostCPUUtilization".into(),
                30.0,
                "LessThanThreshold".into(),
                vec![in_arn.clone()]
            ),
            (
                "HostCPUUtilization".into(),
                70.0,
                "GreaterThanThreshold".into(),
                vec![out_arn.clone()]
            ),
            (
                "GPUUtilization".into(),
                80.0,
                "GreaterThanThreshold".into(),
                vec![out_arn.clone()]
            ),
        ]
    );

    // Idempotent: nothing written, and what the services hold is unchanged to the timestamp.
    let before = describe(&sdk, "gpu-fleet").await;
    let again = warden(&[
        "scaling",
        "push",
        "--config",
        &config,
        "--group",
        "gpu-fleet",
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("0 policies and 0 alarms written, 5 unchanged"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(describe(&sdk, "gpu-fleet").await, before);

    // Drift is repaired: a hand-edited warm-up is put back, and only that policy is written.
    asg.put_scaling_policy()
        .auto_scaling_group_name("gpu-fleet")
        .policy_name("warden-gpu-fleet-scale-out")
        .policy_type("StepScaling")
        .adjustment_type("ChangeInCapacity")
        .metric_aggregation_type("Average")
        .estimated_instance_warmup(60)
        .step_adjustments(
            aws_sdk_autoscaling::types::StepAdjustment::builder()
                .metric_interval_lower_bound(0.0)
                .scaling_adjustment(1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let repair = warden(&[
        "scaling",
        "push",
        "--config",
        &config,
        "--group",
        "gpu-fleet",
    ]);
    assert!(
        text(&repair.stdout).contains("1 policies and 0 alarms written, 4 unchanged"),
        "{}",
        text(&repair.stdout)
    );
    assert_eq!(describe(&sdk, "gpu-fleet").await.0, before.0);

    // A group that does not exist is a clear error, and nothing is written for it.
    let bad = warden(&[
        "scaling",
        "push",
        "--config",
        &config,
        "--group",
        "no-such-group",
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("\"no-such-group\" does not exist"),
        "{}",
        text(&bad.stderr)
    );
    assert_eq!(describe(&sdk, "no-such-group").await.1, "[]");
}

#[test]
fn committed_scaling_json_equals_the_render() {
    let out = warden(&[
        "scaling",
        "render",
        "--config",
        "config/warden.toml",
        "--group",
        "gpu-fleet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let committed =
        std::fs::read_to_string(crate::support::repo_root().join("alerts/scaling.json")).unwrap();
    assert_eq!(
        text(&out.stdout),
        committed,
        "alerts/scaling.json is stale: warden scaling render --config config/warden.toml --group gpu-fleet > alerts/scaling.json"
    );
    let plan: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(plan["policies"].as_array().unwrap().len(), 2);
    // Without a group there is nothing to render for.
    let none = warden(&["scaling", "render"]);
    assert!(!none.status.success());
    assert!(text(&none.stderr).contains("pass --group or set agent.autoscaling_group"));
}

// ---------------------------------------------------------------------------------------------
// readiness

fn ready(agent: &TestAgent) -> (u16, Value) {
    let (status, body) = plain_http::fetch(&agent.url("/ready")).expect("/ready answers");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits for `/ready` to answer `status`; returns the body and how long it took.
fn wait_ready_status(agent: &TestAgent, status: u16, bound: Duration) -> (Value, Duration) {
    let t0 = Instant::now();
    let body = wait_until(bound, || {
        let (s, b) = ready(agent);
        (s == status).then_some(b)
    })
    .unwrap_or_else(|| {
        panic!(
            "/ready never answered {status}: {:?}\n{}",
            ready(agent),
            agent.log()
        )
    });
    (body, t0.elapsed())
}

fn codes(body: &Value) -> Vec<String> {
    body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn gpu_lost_and_fatal_xid_drain_ready_with_reasons_and_recovery_restores_it() {
    let interval = Duration::from_secs(1);
    let mut state = FakeState::with_gpus(vec![FakeGpu::default(), FakeGpu::default()]);
    let nvml = FakeNvml::new(&state);
    let builder = TestAgent::builder().sample_interval("1s");
    let model = nginx_model(builder.dir(), "clash-detector", free_port(), 0.0);
    let agent = builder
        .model(model)
        .section(&format!(
            "[gpu]\nnvml_library = {:?}\n",
            nvml.lib_path().display().to_string()
        ))
        .start();
    agent.wait_ready(LONG);
    let (_, body) = ready(&agent);
    assert_eq!(body["reasons"], serde_json::json!([]));

    // GPU 1 falls off the bus: drained within two sample intervals, with the reason.
    state.gpus[1].lost = true;
    nvml.set(&state);
    let (body, took) = wait_ready_status(&agent, 503, LONG);
    println!("gpu lost -> /ready 503 after {took:?} (sample interval {interval:?})");
    assert!(took <= 2 * interval, "503 after {took:?}");
    assert_eq!(codes(&body), vec!["gpu-lost"]);
    assert_eq!(body["reasons"][0]["gpu"], 1);
    assert_eq!(body["ready"], false);
    // Liveness is not readiness.
    assert_eq!(plain_http::status(&agent.url("/health")), Some(200));

    state.gpus[1].lost = false;
    nvml.set(&state);
    let (_, took) = wait_ready_status(&agent, 200, LONG);
    println!("gpu recovered -> /ready 200 after {took:?}");
    assert!(took <= 2 * interval, "200 after {took:?}");

    // A non-fatal XID (13, a graphics engine exception: the application's fault) does not
    // drain: once the agent has logged it, /ready still answers 200.
    state.gpus[0].xids = vec![13];
    nvml.set(&state);
    wait_until(LONG, || agent.log().contains("code=13").then_some(()))
        .unwrap_or_else(|| panic!("XID 13 never seen\n{}", agent.log()));
    assert_eq!(ready(&agent).0, 200);

    // XID 79 (fallen off the bus) does, and stays until the GPU is reset.
    state.gpus[0].xids = vec![13, 79];
    nvml.set(&state);
    let (body, took) = wait_ready_status(&agent, 503, LONG);
    assert!(took <= 2 * interval, "503 after {took:?}");
    assert_eq!(codes(&body), vec!["gpu-xid"]);
    assert!(
        body["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("79")
    );

    // A driver reload (the reset): NVML is gone on a GPU host for a moment, then the GPUs are
    // re-read and the host is ready again. The reset GPU reports no XID any more (the fake
    // would otherwise deliver its list again to the new handle).
    state.gpus[0].xids.clear();
    state.driver_generation += 1;
    nvml.set(&state);
    // Until it re-initialises (1 s later), NVML being gone on this GPU host is a reason.
    wait_until(LONG, || {
        let (s, b) = ready(&agent);
        (s == 503 && codes(&b).iter().any(|c| c == "nvml-unavailable")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no nvml-unavailable reason: {:?}\n{}",
            ready(&agent),
            agent.log()
        )
    });
    wait_until(LONG, || {
        let (s, b) = ready(&agent);
        (s == 200 && codes(&b).is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not ready after the reset: {:?}\n{}",
            ready(&agent),
            agent.log()
        )
    });
    assert!(
        agent.log().contains("NVML handle lost"),
        "the reload was seen as NVML going away"
    );
}

// ---------------------------------------------------------------------------------------------
// self-healing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_memory_leak_gets_one_audited_rolling_restart_while_the_others_keep_serving() {
    let mut state = FakeState::with_gpus(vec![FakeGpu::default()]);
    let nvml = FakeNvml::new(&state);
    let slack = SlackReceiver::start();
    let builder = TestAgent::builder();
    let names = ["leaky", "steady-one", "steady-two"];
    let mut models = Vec::new();
    for n in names {
        models.push(nginx_model(builder.dir(), n, free_port(), 0.0));
    }
    let mut builder = builder.section(&format!(
        "[gpu]\nnvml_library = {:?}\n\n[notify.slack]\nwebhook_url = {:?}\n\n\
         [healing]\ngpu_memory_max_bytes = 1073741824\ncooldown = \"1h\"\n",
        nvml.lib_path().display().to_string(),
        slack.url()
    ));
    for m in models {
        builder = builder.model(m);
    }
    let agent = builder.start();
    agent.wait_ready(LONG);
    let mut control = ControlClient::connect(&agent.socket).await.unwrap();
    let pid_of = |status: &[warden::supervisor::ModelStatus], name: &str| {
        status
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.pid)
            .unwrap()
    };
    let before = control.status().await.unwrap();
    let old = pid_of(&before, "leaky");
    let mut events = ControlClient::connect(&agent.socket).await.unwrap();
    events.subscribe().await.unwrap();

    // A client on each of the other two models for the whole episode (started before the
    // leak, stopped after the restart and the cool-down check).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = ["steady-one", "steady-two"]
        .into_iter()
        .map(|n| client_loop(agent.listen, n, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // leaky's process now holds 2 GiB of GPU memory (bound: 1 GiB); the others a little.
    let small = pid_of(&before, "steady-one");
    state.gpus[0].procs = vec![(old, 2 << 30), (small, 100 << 20)];
    nvml.set(&state);

    let restarted = wait_until_async(LONG, || async {
        let s = ControlClient::connect(&agent.socket)
            .await
            .ok()?
            .status()
            .await
            .ok()?;
        let l = s.iter().find(|m| m.name == "leaky")?;
        (l.state == warden::supervisor::ModelState::Ready && l.pid.is_some_and(|p| p != old))
            .then(|| (l.pid.unwrap(), Instant::now()))
    })
    .await;
    let (new_pid, restarted_at) =
        restarted.unwrap_or_else(|| panic!("leaky never restarted\n{}", agent.log()));

    // The console's event stream carries the automatic action.
    let event = tokio::time::timeout(LONG, async {
        loop {
            let e = events.next_event().await.unwrap();
            if let EventKind::AutoRestart { reason } = &e.kind {
                return (e.model.clone(), reason.clone());
            }
        }
    })
    .await
    .expect("an AutoRestart event");
    assert_eq!(event.0, "leaky");
    assert!(
        event.1.contains("GPU memory 2048 MiB > bound 1024 MiB"),
        "{}",
        event.1
    );

    // The leak goes on in the new process: the cool-down holds the next restart back.
    state.gpus[0].procs = vec![(new_pid, 3 << 30)];
    nvml.set(&state);
    wait_until(LONG, || agent.log().contains("deferred").then_some(()))
        .unwrap_or_else(|| panic!("the healer never looked again\n{}", agent.log()));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for handle in load {
        let (statuses, first, last) = handle.join().unwrap();
        let ok = statuses.get(&200).copied().unwrap_or(0);
        let total: usize = statuses.values().sum();
        println!("another model's client during the restart: {ok} of {total} answered 200");
        assert!(ok > 20, "{statuses:?}");
        assert_eq!(
            ok,
            total,
            "a client of another model saw errors: {statuses:?}\n{}",
            agent.log()
        );
        assert!(
            first < restarted_at && restarted_at < last,
            "the client ran across the restart"
        );
    }

    // Exactly one restart, of leaky only, audited once, announced once on Slack.
    let after = control.status().await.unwrap();
    for s in &after {
        let want = u64::from(s.name == "leaky");
        let was = before.iter().find(|b| b.name == s.name).unwrap().restarts;
        assert_eq!(s.restarts - was, want, "{}", s.name);
    }
    let audit = std::fs::read_to_string(agent.state_dir.join("audit/api.jsonl")).unwrap();
    let auto: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["method"] == "AUTO")
        .collect();
    assert_eq!(auto.len(), 1, "{auto:?}");
    assert_eq!(auto[0]["model"], "leaky");
    assert_eq!(auto[0]["status"], 200);
    assert!(auto[0]["detail"].as_str().unwrap().contains("GPU memory"));
    let posts = slack.wait_for_posts(1, LONG);
    let healing: Vec<&String> = posts
        .iter()
        .filter(|p| p.contains("self-healing"))
        .collect();
    assert_eq!(healing.len(), 1, "{posts:?}");
    assert!(healing[0].contains("leaky"));
}

/// One POST to the agent (HTTP/1.0, a new connection each): the status, 0 for a transport error.
fn post_status(port: u16, model: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let body = "{\"inputs\":[[1]]}";
    if write!(
        s,
        "POST /api/v1/{model} HTTP/1.0\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .is_err()
    {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A client calling `model` every 5 ms until `stop`: (status counts, first and last call).
fn client_loop(
    port: u16,
    model: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(std::collections::BTreeMap<u16, usize>, Instant, Instant)> {
    std::thread::spawn(move || {
        let mut statuses = std::collections::BTreeMap::new();
        let first = Instant::now();
        let mut last = first;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            *statuses.entry(post_status(port, model)).or_insert(0) += 1;
            last = Instant::now();
            std::thread::sleep(Duration::from_millis(5));
        }
        (statuses, first, last)
    })
}

// ---------------------------------------------------------------------------------------------
// audit metric filters and 4XX bursts

async fn create_topic(sdk: &aws_config::SdkConfig, name: &str) -> String {
    aws_sdk_sns::Client::new(sdk)
        .create_topic()
        .name(name)
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string()
}

fn sns_messages(moto: &Moto, topic: &str) -> Vec<String> {
    let data = moto.data();
    let mut out = Vec::new();
    for t in data["sns"]["Topic"].as_array().cloned().unwrap_or_default() {
        if t["name"] != topic {
            continue;
        }
        for n in t["sent_notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            out.push(n.to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_bursts_page_and_alarms_push_leaves_audit_filters_that_match_real_lines() {
    let moto = Moto::start();
    let sdk = moto.sdk_config().await;
    let critical = create_topic(&sdk, "structural-design-critical").await;
    let builder = TestAgent::builder().aws(&moto.endpoint()).logs(true);
    let model = nginx_model(builder.dir(), "clash-detector", free_port(), 0.0);
    let agent = builder
        .model(model)
        .section(&format!(
            "[notify.sns]\ncritical_topic_arn = {critical:?}\n"
        ))
        .start();
    agent.wait_ready(LONG);

    // Some good calls, then a burst of requests a broken client sends without a JSON body.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = agent.url("/api/v1/clash-detector");
    for _ in 0..5 {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"inputs\":[[1]]}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url) = (http.clone(), url.clone());
        burst.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..75 {
                let r = http
                    .post(&url)
                    .header("content-type", "text/plain")
                    .body("not json")
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        });
    }
    let mut refused = 0;
    while let Some(s) = burst.join_next().await {
        refused += s.unwrap().iter().filter(|s| **s == 415).count();
    }
    assert_eq!(refused, 600);

    // The default rule pages (the critical topic).
    let page = wait_until(LONG, || {
        sns_messages(&moto, "structural-design-critical")
            .into_iter()
            .find(|m| m.contains("client-error-burst"))
    })
    .unwrap_or_else(|| panic!("no page for the 4XX burst\n{}", agent.log()));
    assert!(page.contains("clash-detector"), "{page}");

    // `warden alarms push` puts the audit group's metric filters; a second push writes none.
    let push = warden(&["alarms", "push", "--config", agent.config.to_str().unwrap()]);
    assert!(push.status.success(), "{}", text(&push.stderr));
    assert!(
        text(&push.stdout).contains("3 metric filters written, 0 unchanged"),
        "{}",
        text(&push.stdout)
    );
    let again = warden(&["alarms", "push", "--config", agent.config.to_str().unwrap()]);
    assert!(
        text(&again.stdout).contains("0 metric filters written, 3 unchanged"),
        "{}",
        text(&again.stdout)
    );
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    let described = logs
        .describe_metric_filters()
        .log_group_name("/aws/apigateway/structural-design-api")
        .send()
        .await
        .unwrap();
    let filters = described.metric_filters();
    let mut names: Vec<&str> = filters.iter().map(|f| f.filter_name().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "warden-audit-4xx",
            "warden-audit-5xx",
            "warden-audit-latency-clash-detector"
        ]
    );
    let pattern = |name: &str| {
        filters
            .iter()
            .find(|f| f.filter_name() == Some(name))
            .unwrap()
            .filter_pattern()
            .unwrap()
            .to_string()
    };
    let four = pattern("warden-audit-4xx");
    let latency = pattern("warden-audit-latency-clash-detector");
    let latency_filter = filters
        .iter()
        .find(|f| f.filter_name() == Some("warden-audit-latency-clash-detector"))
        .unwrap();
    assert_eq!(
        latency_filter.metric_transformations()[0].metric_value(),
        "$.latency_ms"
    );
    // The alarm for the burst rule went out with the others.
    let alarms = aws_sdk_cloudwatch::Client::new(&sdk)
        .describe_alarms()
        .alarm_names("warden-test-host-client-error-burst-clash-detector")
        .send()
        .await
        .unwrap();
    assert_eq!(alarms.metric_alarms().len(), 1);

    // The stored patterns against the agent's real audit lines.
    let audit = std::fs::read_to_string(agent.state_dir.join("audit/api.jsonl")).unwrap();
    let (mut four_hits, mut latency_hits, mut lines) = (0, 0, 0);
    for line in audit.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let status = r["status"].as_u64().unwrap();
        lines += 1;
        let is_four = warden::ops::metric_filters::matches(&four, line).unwrap();
        assert_eq!(is_four, (400..500).contains(&status), "{line}");
        four_hits += usize::from(is_four);
        let is_latency = warden::ops::metric_filters::matches(&latency, line).unwrap();
        assert_eq!(
            is_latency,
            r["model"] == "clash-detector" && r["method"] == "POST",
            "{line}"
        );
        latency_hits += usize::from(is_latency);
    }
    assert!(four_hits >= 600, "{four_hits} of {lines}");
    assert!(latency_hits >= 605, "{latency_hits} of {lines}");
}

// ---------------------------------------------------------------------------------------------
// fleet dimension

/// A fake instance metadata service (IMDSv2): a token, then the instance's group tag.
fn fake_imds(group: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, headers, body) = if req.starts_with("PUT /latest/api/token") {
                (
                    "200 OK",
                    "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                    "fake-token",
                )
            } else if req
                .starts_with("GET /latest/meta-data/tags/instance/aws:autoscaling:groupName")
                && req
                    .to_ascii_lowercase()
                    .contains("x-aws-ec2-metadata-token: fake-token")
            {
                ("200 OK", "", group)
            } else {
                ("404 Not Found", "", "")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\n{headers}content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_metrics_are_published_under_the_group_read_from_imds() {
    let moto = Moto::start();
    let imds = fake_imds("gpu-fleet");
    let nvml = FakeNvml::new(&FakeState::with_gpus(vec![
        FakeGpu {
            util: 60,
            ..FakeGpu::default()
        },
        FakeGpu {
            util: 100,
            ..FakeGpu::default()
        },
    ]));
    let builder = TestAgent::builder()
        .aws(&moto.endpoint())
        .cloudwatch(true)
        .agent_key("autoscaling_group_from_imds = true")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &format!("http://127.0.0.1:{imds}"),
        );
    let model = nginx_model(builder.dir(), "clash-detector", free_port(), 0.0);
    let agent = builder
        .model(model)
        .section(&format!(
            "[gpu]\nnvml_library = {:?}\n",
            nvml.lib_path().display().to_string()
        ))
        .start();
    agent.wait_ready(LONG);

    let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let group_dim = aws_sdk_cloudwatch::types::DimensionFilter::builder()
        .name("AutoScalingGroupName")
        .value("gpu-fleet")
        .build();
    let names = wait_until_async(LONG, || async {
        let out = cw
            .list_metrics()
            .namespace("Warden")
            .dimensions(group_dim.clone())
            .send()
            .await
            .ok()?;
        let mut names: Vec<String> = out
            .metrics()
            .iter()
            .map(|m| {
                assert_eq!(m.dimensions().len(), 1, "{m:?}");
                m.metric_name().unwrap().to_string()
            })
            .collect();
        names.sort();
        names.dedup();
        (names.len() == 2).then_some(names)
    })
    .await
    .unwrap_or_else(|| panic!("no fleet metrics\n{}", agent.log()));
    assert_eq!(names, vec!["GPUUtilization", "HostCPUUtilization"]);
    assert!(
        agent
            .log()
            .contains("Auto Scaling group from the instance tag")
    );

    // The group's GPU datum is the host's two GPUs merged: average 80.
    let now = aws_sdk_cloudwatch::primitives::DateTime::from(std::time::SystemTime::now());
    let start = aws_sdk_cloudwatch::primitives::DateTime::from_secs(now.secs() - 3600);
    let end = aws_sdk_cloudwatch::primitives::DateTime::from_secs(now.secs() + 3600);
    let stats = cw
        .get_metric_statistics()
        .namespace("Warden")
        .metric_name("GPUUtilization")
        .dimensions(
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name("AutoScalingGroupName")
                .value("gpu-fleet")
                .build(),
        )
        .start_time(start)
        .end_time(end)
        .period(7200)
        .statistics(aws_sdk_cloudwatch::types::Statistic::Average)
        .send()
        .await
        .unwrap();
    let avg = stats.datapoints()[0].average().unwrap();
    assert!((avg - 80.0).abs() < 1e-6, "group average {avg}");
}

#[test]
fn a_crash_looping_model_drains_ready_while_health_stays_live() {
    let builder = TestAgent::builder();
    let good = nginx_model(builder.dir(), "clash-detector", free_port(), 0.0);
    let agent = builder
        .model(good)
        .model(format!(
            "[[models]]\nname = \"risk-analyzer\"\nport = {}\ncommand = [\"/bin/false\"]\n\
             restart_initial_backoff = \"50ms\"\nrestart_max_backoff = \"200ms\"\n\
             crash_loop_exits = 3\ncrash_loop_window = \"5m\"\n",
            free_port()
        ))
        .start();
    let body = wait_until(LONG, || {
        let (s, b) = plain_http::fetch(&agent.url("/ready"))?;
        let b: Value = serde_json::from_str(&b).ok()?;
        (s == 503 && codes(&b).iter().any(|c| c == "model-crash-loop")).then_some(b)
    })
    .unwrap_or_else(|| panic!("no crash-loop reason\n{}", agent.log()));
    let reason = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "model-crash-loop")
        .unwrap();
    assert_eq!(reason["model"], "risk-analyzer");
    // Only the failing model is named; the healthy one serves.
    assert!(
        body["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["model"] != "clash-detector")
    );
    assert_eq!(plain_http::status(&agent.url("/health")), Some(200));
}

#[test]
fn a_model_whose_p95_stays_past_the_bound_is_restarted_once_then_held_by_the_cool_down() {
    let builder = TestAgent::builder().section(
        "[healing]\nlatency_p95_max = \"100ms\"\nlatency_window = \"2s\"\nlatency_for = \"1s\"\ncooldown = \"1h\"\n",
    );
    let steady = nginx_model(builder.dir(), "steady", free_port(), 0.0);
    let agent = builder
        .model(crate::support::fake_model(
            "slow",
            free_port(),
            &["--infer-delay", "0.3"],
            "",
        ))
        .model(steady)
        .start();
    agent.wait_ready(LONG);
    let audit_path = agent.state_dir.join("audit/api.jsonl");
    let auto_records = || -> Vec<Value> {
        std::fs::read_to_string(&audit_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["method"] == "AUTO")
            .collect()
    };
    // Every call to `slow` takes 300 ms: its p95 stays above 100 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = client_loop(agent.listen, "slow", stop.clone());
    let first = wait_until(LONG, || auto_records().into_iter().next())
        .unwrap_or_else(|| panic!("no self-healing restart\n{}", agent.log()));
    assert_eq!(first["model"], "slow");
    let detail = first["detail"].as_str().unwrap();
    assert!(
        detail.contains("latency p95") && detail.contains("> bound 100 ms"),
        "{detail}"
    );
    // Still slow after the restart: the cool-down holds the next one back.
    wait_until(LONG, || agent.log().contains("deferred").then_some(()))
        .unwrap_or_else(|| panic!("the healer never looked again\n{}", agent.log()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(auto_records().len(), 1);
}

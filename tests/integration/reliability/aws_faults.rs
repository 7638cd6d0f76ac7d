//! AWS faults against a real `warden run`: least-privilege IAM, a revoked key, SIGTERM while
//! every AWS call hangs, and a burst of 5xx/throttling/resets. Each drives nginx-served models
//! through the agent's API, with moto behind the fault proxy, and reads what arrived back from
//! moto through the SDK: every audit record (by the `x-request-id` the test chose) and every
//! metric sample (the `ModelRequests` sum equals the requests the model answered).

use crate::support::agent::{TestAgent, nginx_model};
use crate::support::fault::{Fault, FaultProxy};
use crate::support::moto::{Moto, plain_http};
use crate::support::net::{free_port, wait_until_async};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

const API_GROUP: &str = "/aws/apigateway/structural-design-api";
const HOST: &str = "test-host";
const MODEL: &str = "m1";
const DELIVERY: Duration = Duration::from_secs(90);

/// An agent with one nginx model (5 % of calls answer 500, so failures are audited too),
/// logs on, metrics as asked, AWS through `proxy`.
fn start_agent(proxy: &FaultProxy, metrics: bool) -> TestAgent {
    let b = TestAgent::builder();
    let model = nginx_model(b.dir(), MODEL, free_port(), 5.0);
    let agent = b
        .model(model)
        .aws(&proxy.url)
        .logs(true)
        .cloudwatch(metrics)
        .start();
    agent.wait_ready(Duration::from_secs(60));
    agent
}

/// Sends `ids` to the model, 8 at a time; returns the ids the API answered with a status
/// from the model (200 or its 500s: both are audited and counted in ModelRequests).
async fn send(agent: &TestAgent, ids: Vec<String>) -> Vec<String> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = agent.url(&format!("/api/v1/{MODEL}"));
    let ids = Arc::new(std::sync::Mutex::new(ids.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, ids) = (client.clone(), url.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            loop {
                let Some(id) = ids.lock().unwrap().next() else {
                    break;
                };
                let status = client
                    .post(&url)
                    .header("x-request-id", &id)
                    .json(&serde_json::json!({"inputs": [[1.0]]}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if status == 200 || status == 500 {
                    answered.push(id);
                }
            }
            answered
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.unwrap());
    }
    out
}

/// Sends requests named `prefix-N` until `stop` is set; returns the answered ids.
async fn traffic_until(agent: &TestAgent, prefix: &str, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut answered = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let ids = (n..n + 40).map(|i| format!("{prefix}-{i}")).collect();
        n += 40;
        answered.extend(send(agent, ids).await);
    }
    answered
}

/// Every `request_id` in the API group's stream, with how often it arrived.
async fn audit_ids(sdk: &aws_config::SdkConfig) -> HashMap<String, usize> {
    let client = aws_sdk_cloudwatchlogs::Client::new(sdk);
    let mut out = HashMap::new();
    let mut token: Option<String> = None;
    for _ in 0..10_000 {
        let Ok(page) = client
            .get_log_events()
            .log_group_name(API_GROUP)
            .log_stream_name(HOST)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
        else {
            return out;
        };
        for e in page.events() {
            let v: serde_json::Value = serde_json::from_str(e.message().unwrap_or("")).unwrap();
            if let Some(id) = v["request_id"].as_str() {
                *out.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        let next = page.next_forward_token().map(str::to_string);
        if page.events().is_empty() || next == token {
            break;
        }
        token = next;
    }
    out
}

/// Waits until every id in `sent` arrived; returns what arrived (for the exactly-once check).
async fn wait_for_audits(
    sdk: &aws_config::SdkConfig,
    sent: &[String],
    agent: &TestAgent,
) -> HashMap<String, usize> {
    let got = wait_until_async(DELIVERY, || async {
        let got = audit_ids(sdk).await;
        sent.iter().all(|id| got.contains_key(id)).then_some(got)
    })
    .await;
    match got {
        Some(g) => g,
        None => {
            let got = audit_ids(sdk).await;
            let missing: Vec<&String> = sent.iter().filter(|id| !got.contains_key(*id)).collect();
            panic!(
                "{} of {} audit records never arrived (e.g. {:?})\n{}",
                missing.len(),
                sent.len(),
                &missing[..missing.len().min(5)],
                agent.log()
            );
        }
    }
}

/// The `ModelRequests` sum CloudWatch (moto) holds for the model.
async fn model_requests_in_cloudwatch(sdk: &aws_config::SdkConfig) -> f64 {
    let client = aws_sdk_cloudwatch::Client::new(sdk);
    let now = SystemTime::now();
    let Ok(out) = client
        .get_metric_statistics()
        .namespace("Warden")
        .metric_name("ModelRequests")
        .dimensions(Dimension::builder().name("Host").value(HOST).build())
        .dimensions(Dimension::builder().name("Model").value(MODEL).build())
        .start_time(DateTime::from(now - Duration::from_secs(3600)))
        .end_time(DateTime::from(now + Duration::from_secs(3600)))
        .period(60)
        .statistics(Statistic::Sum)
        .send()
        .await
    else {
        return 0.0;
    };
    out.datapoints().iter().filter_map(|d| d.sum()).sum()
}

/// Waits until CloudWatch's ModelRequests sum reaches `want`; returns the last sum seen.
async fn wait_for_requests_sum(sdk: &aws_config::SdkConfig, want: f64) -> f64 {
    wait_until_async(DELIVERY, || async {
        let sum = model_requests_in_cloudwatch(sdk).await;
        (sum >= want).then_some(sum)
    })
    .await
    .unwrap_or(model_requests_in_cloudwatch(sdk).await)
}

/// `warden_records_dropped_total` series of the AWS sinks with a non-zero value.
fn aws_drops(agent: &TestAgent) -> Vec<String> {
    let page = plain_http::get(&agent.url("/metrics")).expect("/metrics answers");
    page.lines()
        .filter(|l| l.starts_with("warden_records_dropped_total"))
        .filter(|l| l.contains("sink=\"logs\"") || l.contains("sink=\"cloudwatch\""))
        .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
        .map(str::to_string)
        .collect()
}

fn assert_exactly_once(got: &HashMap<String, usize>, sent: &[String]) {
    let dups: Vec<(&String, &usize)> = got
        .iter()
        .filter(|(id, n)| **n > 1 && sent.contains(id))
        .collect();
    assert!(dups.is_empty(), "audit records delivered twice: {dups:?}");
}

async fn precreate_groups(sdk: &aws_config::SdkConfig) {
    let logs = aws_sdk_cloudwatchlogs::Client::new(sdk);
    for group in [API_GROUP.to_string(), format!("/aws/ec2/models/{MODEL}")] {
        logs.create_log_group()
            .log_group_name(&group)
            .send()
            .await
            .unwrap();
        logs.create_log_stream()
            .log_group_name(&group)
            .log_stream_name(HOST)
            .send()
            .await
            .unwrap();
    }
}

/// Acceptance: log groups made by infrastructure as code, the role may only put events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_pre_created_groups_and_denied_creates_deliver_every_audit_record() {
    let moto = Moto::start();
    let read = moto.sdk_config().await;
    precreate_groups(&read).await;
    let proxy = FaultProxy::start(&moto.endpoint());
    for op in ["CreateLogGroup", "CreateLogStream", "PutRetentionPolicy"] {
        proxy.fail_op(op, Some(Fault::AccessDenied));
    }
    let agent = start_agent(&proxy, false);
    let sent = send(&agent, (0..300).map(|i| format!("lp-{i}")).collect()).await;
    assert!(sent.len() >= 290, "the API answered {} of 300", sent.len());
    let got = wait_for_audits(&read, &sent, &agent).await;
    assert_exactly_once(&got, &sent);
    for op in ["CreateLogGroup", "CreateLogStream", "PutRetentionPolicy"] {
        assert_eq!(
            proxy.count(op).seen,
            0,
            "{op} is never needed: PutLogEvents first"
        );
    }
    assert!(proxy.count("PutLogEvents").ok > 0);
    assert_eq!(aws_drops(&agent), Vec::<String>::new());
    eprintln!(
        "least privilege: {} of {} audit records delivered; Create*/PutRetentionPolicy calls: 0",
        sent.iter().filter(|id| got.contains_key(*id)).count(),
        sent.len()
    );
}

/// A revoked key (UnrecognizedClient on every call) for ~10 s under traffic: nothing is
/// dropped, the denial is logged with the permission it needs, everything arrives after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_under_traffic_loses_nothing_and_names_the_permission() {
    let moto = Moto::start();
    let read = moto.sdk_config().await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let agent = start_agent(&proxy, true);
    let mut sent = send(&agent, (0..50).map(|i| format!("before-{i}")).collect()).await;
    wait_for_audits(&read, &sent, &agent).await;

    proxy.fail_all(Some(Fault::UnrecognizedClient));
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    sent.extend(traffic_until(&agent, "revoked", stop).await);
    timer.await.unwrap();
    let refused_logs = proxy.count("PutLogEvents").faulted;
    // Gzip-compressed PutMetricData bodies (the SDK compresses large ones) carry no readable
    // Action for the proxy: they count under "".
    let refused_metrics = proxy.count("PutMetricData").faulted + proxy.count("").faulted;
    proxy.heal();
    assert!(
        refused_logs > 0 && refused_metrics > 0,
        "the revocation was felt: {:?}",
        proxy.counts()
    );

    let got = wait_for_audits(&read, &sent, &agent).await;
    assert_exactly_once(&got, &sent);
    let sum = wait_for_requests_sum(&read, sent.len() as f64).await;
    assert_eq!(
        sum,
        sent.len() as f64,
        "every ModelRequests sample arrives once"
    );
    assert_eq!(
        aws_drops(&agent),
        Vec::<String>::new(),
        "nothing counted dropped"
    );
    eprintln!(
        "revoked key: {} requests, {} audit records and ModelRequests sum {sum} delivered; \
         {refused_logs} PutLogEvents + {refused_metrics} PutMetricData refused",
        sent.len(),
        sent.iter().filter(|id| got.contains_key(*id)).count()
    );
    let log = agent.log();
    for permission in ["logs:PutLogEvents", "cloudwatch:PutMetricData"] {
        assert!(
            log.contains(permission),
            "{permission} named in the log\n{log}"
        );
    }
    assert!(
        log.contains("AWS accepts the sink's calls again"),
        "the episode's end is logged\n{log}"
    );
}

/// Acceptance: SIGTERM while every AWS call hangs, SIGKILL at 30 s as systemd would. The
/// agent exits by itself well before; after a restart on the same state dir every audit
/// record and every ModelRequests sample taken before the stop arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_aws_hangs_exits_in_time_and_the_restart_delivers_everything() {
    let moto = Moto::start();
    let read = moto.sdk_config().await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let mut agent = start_agent(&proxy, true);
    let mut sent = send(&agent, (0..100).map(|i| format!("early-{i}")).collect()).await;
    proxy.fail_all(Some(Fault::Hang(Duration::from_secs(120))));
    // Traffic for a few flush intervals with AWS hanging: windows pile up unsent.
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    sent.extend(traffic_until(&agent, "hung", stop).await);
    timer.await.unwrap();

    let t0 = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let exited = agent.wait_exit(Duration::from_secs(30));
    let took = t0.elapsed();
    if exited.is_none() {
        agent.kill();
        panic!(
            "still running 30 s after SIGTERM (systemd would SIGKILL)\n{}",
            agent.log()
        );
    }
    // "Well before": under half of TimeoutStopSec even on this noisy machine.
    assert!(
        took < Duration::from_secs(15),
        "exit took {took:?}\n{}",
        agent.log()
    );
    eprintln!("SIGTERM → exit with AWS hanging: {took:?}");

    proxy.heal();
    agent.restart();
    agent.wait_ready(Duration::from_secs(60));
    let got = wait_for_audits(&read, &sent, &agent).await;
    let sum = wait_for_requests_sum(&read, sent.len() as f64).await;
    assert_eq!(
        sum,
        sent.len() as f64,
        "every ModelRequests sample from before the stop arrives\n{}",
        agent.log()
    );
    // Hung calls never reached moto, so nothing was delivered twice either.
    assert_exactly_once(&got, &sent);
    eprintln!(
        "SIGTERM with AWS hanging: exit in {took:?}; after restart {} of {} audit records, \
         ModelRequests sum {sum}",
        sent.iter().filter(|id| got.contains_key(*id)).count(),
        sent.len()
    );
}

/// A burst of 503s, throttling and connection resets under traffic: no loss, no duplicates.
/// (The proxy answers faults itself, so moto never accepted a faulted call; at-least-once
/// duplicates need an accepted call whose answer is lost, which these faults do not make.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_5xx_throttling_and_resets_loses_nothing() {
    let moto = Moto::start();
    let read = moto.sdk_config().await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let agent = start_agent(&proxy, true);
    let mut sent = Vec::new();
    for (i, fault) in [Fault::Unavailable, Fault::Throttle, Fault::Reset]
        .into_iter()
        .enumerate()
    {
        proxy.fail_all(Some(fault));
        let stop = Arc::new(AtomicBool::new(false));
        let timer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                stop.store(true, Ordering::SeqCst);
            })
        };
        sent.extend(traffic_until(&agent, &format!("burst{i}"), stop).await);
        timer.await.unwrap();
    }
    let faulted: u64 = proxy.counts().values().map(|c| c.faulted).sum();
    proxy.heal();
    assert!(faulted > 0, "{:?}", proxy.counts());
    let got = wait_for_audits(&read, &sent, &agent).await;
    assert_exactly_once(&got, &sent);
    let sum = wait_for_requests_sum(&read, sent.len() as f64).await;
    assert_eq!(
        sum,
        sent.len() as f64,
        "every ModelRequests sample arrives once"
    );
    assert_eq!(aws_drops(&agent), Vec::<String>::new());
    eprintln!(
        "5xx/throttle/reset burst: {faulted} calls faulted; {} requests, {} audited once, \
         ModelRequests sum {sum}",
        sent.len(),
        sent.iter().filter(|id| got.contains_key(*id)).count()
    );
}

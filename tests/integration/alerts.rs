//! Alerts end to end: rules → evaluator → SNS (moto, read back through `/moto-api/data.json`)
//! and Slack (local receiver), in process with a manual clock where timing matters, and
//! through `warden run --config` with fake NVML and fake models.

use crate::support::fake_model;

use crate::support::moto::Moto;
use crate::support::net::{free_port, wait_until, wait_until_async};
use crate::support::nvml::{FakeGpu, FakeNvml, FakeState};
use crate::support::slack::SlackReceiver;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use warden::alerts::notify::{Channel, MessageContext, slack::SlackChannel, sns::SnsChannel};
use warden::alerts::{AlertsHandle, AlertsSettings, evaluator::Settings, rules};
use warden::config::{AwsConfig, Secret, SnsConfig};
use warden::control::ControlClient;
use warden::telemetry::{Dim, MetricStore};

const LONG: Duration = Duration::from_secs(60);
const HOST: &str = "alert-host";

// ---------------------------------------------------------------- peers

async fn create_topics(moto: &Moto) -> (String, String) {
    let sns = aws_sdk_sns::Client::new(&moto.sdk_config().await);
    let mut arns = Vec::new();
    for name in ["structural-design-alerts", "structural-design-critical"] {
        let out = sns.create_topic().name(name).send().await.unwrap();
        arns.push(out.topic_arn().unwrap().to_string());
    }
    (arns[0].clone(), arns[1].clone())
}

/// One SNS message moto recorded: topic name, subject, JSON message, attributes.
#[derive(Debug, Clone)]
struct SnsMsg {
    topic: String,
    subject: String,
    message: Value,
    attrs: BTreeMap<String, String>,
}

fn sns_sent(moto: &Moto) -> Vec<SnsMsg> {
    let data = moto.data();
    let mut out = Vec::new();
    for topic in data["sns"]["Topic"].as_array().cloned().unwrap_or_default() {
        let name = topic["name"].as_str().unwrap_or("").to_string();
        for n in topic["sent_notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let attrs = n[3]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v["Value"].as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(SnsMsg {
                topic: name.clone(),
                subject: n[2].as_str().unwrap_or("").to_string(),
                message: serde_json::from_str(n[1].as_str().unwrap_or("null"))
                    .unwrap_or(Value::Null),
                attrs,
            });
        }
    }
    out
}

/// One Slack post: (state, rule, dedupe key, body).
#[derive(Debug, Clone)]
struct SlackMsg {
    state: String,
    rule: String,
    dedupe: String,
    body: Value,
}

fn slack_msgs(slack: &SlackReceiver) -> Vec<SlackMsg> {
    slack
        .posts()
        .iter()
        .map(|p| {
            let body: Value = serde_json::from_str(p).unwrap();
            let text = body["text"].as_str().unwrap().to_string();
            let state = text[1..text.find(']').unwrap()].to_lowercase();
            let ctx = body["attachments"][0]["blocks"][3]["elements"][0]["text"]
                .as_str()
                .unwrap();
            let dedupe = ctx.strip_prefix("dedupe_key: ").unwrap().to_string();
            let rule = dedupe.split('/').next().unwrap().to_string();
            SlackMsg {
                state,
                rule,
                dedupe,
                body,
            }
        })
        .collect()
}

fn states(msgs: &[SlackMsg], rule: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.rule == rule)
        .map(|m| m.state.clone())
        .collect()
}

// ---------------------------------------------------------------- in-process engine

struct Engine {
    handle: AlertsHandle,
    store: Arc<MetricStore>,
    clock: Arc<AtomicU64>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _events: broadcast::Sender<warden::telemetry::TelemetryEvent>,
    _sup: broadcast::Sender<warden::supervisor::SupervisorEvent>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn aws(endpoint: String) -> AwsConfig {
    AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint),
        attempt_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(4),
    }
}

async fn channels(
    moto: Option<&Moto>,
    topics: &(String, String),
    slack: &SlackReceiver,
) -> Vec<Channel> {
    let ctx = MessageContext {
        host: HOST.into(),
        runbook_url: "https://runbook.example/runbook.md".into(),
    };
    let mut out = vec![Channel::Slack(
        SlackChannel::new(Secret::new(slack.url()), None, ctx.clone()).unwrap(),
    )];
    if let Some(moto) = moto {
        let sdk = warden::sinks::aws::sdk_config(&aws(moto.endpoint())).await;
        out.push(Channel::Sns(SnsChannel::new(
            &sdk,
            SnsConfig {
                info_topic_arn: Some(topics.0.clone()),
                warning_topic_arn: Some(topics.0.clone()),
                critical_topic_arn: Some(topics.1.clone()),
            },
            ctx,
        )));
    }
    out
}

impl Engine {
    /// An engine on `rules_text` whose clock only moves when the test says so; the
    /// evaluation loop is slow (1 h), the test calls `eval`.
    fn start(
        rules_text: &str,
        state_dir: &Path,
        channels: Vec<Channel>,
        repeat: Duration,
        start_ms: u64,
    ) -> Engine {
        let rules = rules::parse(Path::new("test-rules.toml"), rules_text).unwrap();
        let settings = AlertsSettings {
            rules,
            evaluation_interval: Duration::from_secs(3600),
            evaluator: Settings {
                repeat_interval: repeat,
                resolved_retention: Duration::from_secs(900),
            },
            context: MessageContext {
                host: HOST.into(),
                runbook_url: "https://runbook.example/runbook.md".into(),
            },
        };
        let store = Arc::new(MetricStore::new(HOST, 600));
        let clock = Arc::new(AtomicU64::new(start_ms));
        let c = clock.clone();
        let (tx, rx) = broadcast::channel(16);
        let (stx, srx) = broadcast::channel(16);
        let cancel = CancellationToken::new();
        let (handle, tasks) = AlertsHandle::start_with(
            settings,
            state_dir,
            channels,
            store.clone(),
            srx,
            rx,
            Arc::new(move || c.load(Ordering::SeqCst)),
            cancel.clone(),
        )
        .unwrap();
        Engine {
            handle,
            store,
            clock,
            cancel,
            tasks,
            _events: tx,
            _sup: stx,
        }
    }

    /// Records GPU `gpu` utilisation `v` at the clock's time plus `dt_ms`, then evaluates there.
    async fn gpu(
        &self,
        gpu: &str,
        v: f64,
        dt_ms: u64,
    ) -> Vec<warden::alerts::evaluator::Notification> {
        self.record("GPUUtilization", gpu, v, dt_ms).await
    }

    async fn record(
        &self,
        metric: &'static str,
        gpu: &str,
        v: f64,
        dt_ms: u64,
    ) -> Vec<warden::alerts::evaluator::Notification> {
        let t = self.clock.fetch_add(dt_ms, Ordering::SeqCst) + dt_ms;
        self.store.set_gauge(
            metric,
            &[(Dim::Gpu, gpu)],
            v,
            UNIX_EPOCH + Duration::from_millis(t),
        );
        self.handle.evaluate_now().await
    }

    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

const GPU_RULES: &str = r#"
[[rule]]
name = "gpu-hot"
metric = "GPUUtilization"
reducer = "last"
window = "1m"
op = ">"
threshold = 90
for = "0s"
clear_threshold = 85
severity = "warning"
summary = "GPU {{GPU}} utilisation {{value}} % > {{threshold}} %"

[[rule]]
name = "gpu-melting"
metric = "GPUTemperature"
reducer = "max"
window = "1m"
op = ">="
threshold = 99
for = "2s"
severity = "critical"
summary = "GPU {{GPU}} at {{value}} C"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_repeat_and_resolve_reach_the_right_topic_and_slack() {
    let moto = Moto::start();
    let topics = create_topics(&moto).await;
    let slack = SlackReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let chans = channels(Some(&moto), &topics, &slack).await;
    let e = Engine::start(
        GPU_RULES,
        &dir.path().join("alerts"),
        chans,
        Duration::from_secs(60),
        now_ms(),
    );

    assert!(e.gpu("0", 50.0, 0).await.is_empty());
    let fired = e.gpu("0", 95.0, 1000).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].rule, "gpu-hot");
    // Still firing, inside the repeat interval: nothing new. 86 is above the clear threshold.
    for v in [96.0, 97.0, 86.0, 92.0] {
        assert!(e.gpu("0", v, 10_000).await.is_empty(), "at {v}");
    }
    // 60 s after the firing message: one repeat.
    let repeat = e.gpu("0", 93.0, 20_000).await;
    assert_eq!(repeat.len(), 1);
    assert_eq!(repeat[0].kind.as_str(), "repeat");
    // Critical rule on GPU 1: pending for 2 s, then firing to the critical topic.
    assert!(e.record("GPUTemperature", "1", 99.5, 0).await.is_empty());
    assert_eq!(e.record("GPUTemperature", "1", 99.5, 2000).await.len(), 1);
    // GPU 0 below the clear threshold: resolved.
    let resolved = e.gpu("0", 80.0, 1000).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].kind.as_str(), "resolved");

    let posts = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (m.len() >= 4).then_some(m)
    })
    .unwrap_or_else(|| panic!("slack got {:?}", slack.posts()));
    assert_eq!(
        states(&posts, "gpu-hot"),
        vec!["firing", "repeat", "resolved"]
    );
    assert_eq!(states(&posts, "gpu-melting"), vec!["firing"]);
    let hot: Vec<&SlackMsg> = posts.iter().filter(|m| m.rule == "gpu-hot").collect();
    assert!(
        hot.iter().all(|m| m.dedupe == hot[0].dedupe),
        "one episode, one dedupe key"
    );
    let text = hot[0].body.to_string();
    for want in [
        HOST,
        "95 (threshold > 90)",
        "https://runbook.example/runbook.md#gpu-hot",
        "#ECB22E",
    ] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
    assert_eq!(
        posts.iter().find(|m| m.rule == "gpu-melting").unwrap().body["attachments"][0]["color"],
        "#E01E5A"
    );
    assert_eq!(hot[2].body["attachments"][0]["color"], "#2EB67D");
    // Slack's ~1 message/s.
    let times: Vec<_> = slack.timed_posts().iter().map(|(t, _)| *t).collect();
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(950),
            "posts {:?} apart",
            w[1] - w[0]
        );
    }

    let sns = wait_until(LONG, || {
        let s = sns_sent(&moto);
        (s.len() >= 4).then_some(s)
    })
    .unwrap_or_else(|| panic!("sns got {:?}", sns_sent(&moto)));
    let warning: Vec<&SnsMsg> = sns
        .iter()
        .filter(|m| m.topic == "structural-design-alerts")
        .collect();
    let critical: Vec<&SnsMsg> = sns
        .iter()
        .filter(|m| m.topic == "structural-design-critical")
        .collect();
    assert_eq!(
        warning
            .iter()
            .map(|m| m.attrs["state"].as_str())
            .collect::<Vec<_>>(),
        vec!["firing", "repeat", "resolved"]
    );
    assert_eq!(critical.len(), 1);
    let c = critical[0];
    assert_eq!(c.attrs["severity"], "critical");
    assert_eq!(c.attrs["rule"], "gpu-melting");
    assert_eq!(c.attrs["host"], HOST);
    assert!(
        c.subject.len() <= 100 && c.subject.starts_with("[FIRING] critical gpu-melting"),
        "{}",
        c.subject
    );
    assert_eq!(c.message["labels"]["GPU"], "1");
    assert_eq!(c.message["value"], 99.5);
    assert_eq!(
        c.message["dedupe_key"].as_str(),
        Some(c.attrs["dedupe_key"].as_str())
    );
    assert_eq!(
        warning[0].message["dedupe_key"],
        warning[2].message["dedupe_key"]
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_pages_every_crossing_without_hysteresis_and_once_with_it() {
    let rules = r#"
[[rule]]
name = "flap-plain"
metric = "GPUUtilization"
where = { GPU = "0" }
op = ">"
threshold = 90
for = "0s"
severity = "info"

[[rule]]
name = "flap-hysteresis"
metric = "GPUUtilization"
where = { GPU = "0" }
op = ">"
threshold = 90
for = "0s"
clear_threshold = 85
severity = "info"
"#;
    let slack = SlackReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let chans = channels(None, &(String::new(), String::new()), &slack).await;
    let e = Engine::start(
        rules,
        &dir.path().join("alerts"),
        chans,
        Duration::from_secs(3600),
        now_ms(),
    );
    for v in [95.0, 89.0, 91.0, 88.0, 92.0, 87.0, 80.0] {
        e.gpu("0", v, 1000).await;
    }
    let msgs = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (m.len() >= 8).then_some(m)
    })
    .unwrap_or_else(|| panic!("{:?}", slack_msgs(&slack)));
    assert_eq!(
        states(&msgs, "flap-plain"),
        vec![
            "firing", "resolved", "firing", "resolved", "firing", "resolved"
        ]
    );
    assert_eq!(states(&msgs, "flap-hysteresis"), vec!["firing", "resolved"]);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silenced_alerts_send_resolved_only_and_acks_show_in_state() {
    let slack = SlackReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let chans = channels(None, &(String::new(), String::new()), &slack).await;
    let e = Engine::start(
        GPU_RULES,
        &dir.path().join("alerts"),
        chans,
        Duration::from_secs(3600),
        now_ms(),
    );
    let sid = e
        .handle
        .silence(
            [
                ("alertname".to_string(), "gpu-hot".to_string()),
                ("GPU".to_string(), "0".to_string()),
            ]
            .into(),
            Duration::from_secs(600),
            "alice",
            "driver upgrade",
        )
        .await;
    assert!(
        e.gpu("0", 95.0, 1000).await.is_empty(),
        "silenced: no firing"
    );
    assert_eq!(e.gpu("3", 95.0, 0).await.len(), 1, "GPU 3 is not silenced");
    let snap = e.handle.snapshot();
    let alerts = snap["alerts"].as_array().unwrap();
    let silenced = alerts.iter().find(|a| a["labels"]["GPU"] == "0").unwrap();
    assert_eq!(silenced["state"], "firing");
    assert_eq!(silenced["silenced"], true);
    assert_eq!(snap["silences"][0]["id"], sid.as_str());
    assert_eq!(snap["silences"][0]["creator"], "alice");
    let id = silenced["id"].as_str().unwrap().to_string();
    assert!(e.handle.ack(&id, "bob").await);
    assert!(!e.handle.ack("nope", "bob").await);
    let snap = e.handle.snapshot();
    let acked = snap["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(acked["acked_by"], "bob");
    assert_eq!(acked["severity"], "warning");
    assert!(acked["since_ms"].as_u64().unwrap() > 0);
    // Prometheus gauge.
    let prom = e.handle.render_prometheus();
    assert!(prom.contains("warden_alerts{alertname=\"gpu-hot\",severity=\"warning\",alertstate=\"firing\",host=\"alert-host\",gpu=\"0\"} 1"), "{prom}");
    let resolved = e.gpu("0", 10.0, 1000).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].kind.as_str(), "resolved");
    let msgs = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (m.len() >= 2).then_some(m)
    })
    .unwrap();
    let gpu0: Vec<(String, String)> = msgs
        .iter()
        .map(|m| {
            (
                m.state.clone(),
                m.body["attachments"][0]["blocks"][1]["fields"][3]["text"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        gpu0.contains(&("resolved".to_string(), "*Labels*\nGPU=0".to_string())),
        "{gpu0:?}"
    );
    assert!(
        !gpu0.contains(&("firing".to_string(), "*Labels*\nGPU=0".to_string())),
        "{gpu0:?}"
    );
    assert!(e.handle.unsilence(&sid).await);
    assert!(!e.handle.unsilence(&sid).await);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_sns_outages_delay_notifications_but_never_drop_them() {
    let mut moto = Moto::start();
    let topics = create_topics(&moto).await;
    let slack = SlackReceiver::start();
    slack.set_status(500);
    moto.stop();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("alerts");
    let t0 = now_ms();
    let e = Engine::start(
        GPU_RULES,
        &state,
        channels(Some(&moto), &topics, &slack).await,
        Duration::from_secs(3600),
        t0,
    );
    let mut keys = Vec::new();
    for (gpu, v) in [("0", 95.0), ("0", 50.0), ("2", 96.0)] {
        keys.extend(
            e.gpu(gpu, v, 1000)
                .await
                .into_iter()
                .map(|n| (n.kind.as_str().to_string(), n.dedupe_key)),
        );
    }
    assert_eq!(keys.len(), 3);
    // Slack is failing: the worker keeps retrying.
    assert!(wait_until(LONG, || (slack.attempts() >= 2).then_some(())).is_some());
    assert!(slack.posts().is_empty());
    // The agent goes away mid-outage; the spool survives it.
    e.stop().await;
    let e = Engine::start(
        GPU_RULES,
        &state,
        channels(Some(&moto), &topics, &slack).await,
        Duration::from_secs(3600),
        t0 + 3000,
    );
    assert!(e.handle.undelivered() >= 6, "{}", e.handle.undelivered());
    slack.set_status(200);
    moto.restart();
    let topics_again = create_topics(&moto).await;
    assert_eq!(topics_again, topics);
    let msgs = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (m.len() >= 3).then_some(m)
    })
    .unwrap_or_else(|| panic!("{:?}", slack_msgs(&slack)));
    let sns = wait_until(LONG, || {
        let s = sns_sent(&moto);
        (s.len() >= 3).then_some(s)
    })
    .unwrap_or_else(|| panic!("{:?}", sns_sent(&moto)));
    for (kind, key) in &keys {
        assert!(
            msgs.iter().any(|m| &m.dedupe == key && &m.state == kind),
            "slack lacks {kind} {key}: {msgs:?}"
        );
        assert!(
            sns.iter()
                .any(|m| &m.attrs["dedupe_key"] == key && &m.attrs["state"] == kind),
            "sns lacks {kind} {key}"
        );
    }
    // In order, and any duplicate repeats the same key for the same message.
    let slack_keys: Vec<(String, String)> = msgs
        .iter()
        .map(|m| (m.state.clone(), m.dedupe.clone()))
        .collect();
    let mut dedup = slack_keys.clone();
    dedup.dedup();
    assert_eq!(dedup, keys, "slack order");
    assert!(wait_until(LONG, || (e.handle.undelivered() == 0).then_some(())).is_some());
    e.stop().await;
}

// ---------------------------------------------------------------- warden run

const E2E_RULES: &str = r#"
[[rule]]
name = "gpu-hot"
metric = "GPUUtilization"
reducer = "last"
window = "10s"
op = ">"
threshold = 90
for = "0s"
clear_threshold = 85
severity = "warning"
summary = "GPU {{GPU}} utilisation {{value}} % > {{threshold}} %"

[[rule]]
name = "model-crash-loop"
event = "model-crash-loop"
for = "0s"
severity = "critical"
summary = "Model {{Model}} is crash-looping"

[[rule]]
name = "gpu-lost"
event = "gpu-lost"
for = "0s"
severity = "critical"
summary = "GPU {{GPU}} fell off the bus"
"#;

struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    listen: u16,
}

impl Agent {
    fn write(
        dir: &Path,
        nvml: &FakeNvml,
        moto: &Moto,
        topics: &(String, String),
        slack: &SlackReceiver,
        models: &str,
    ) -> Agent {
        let rules = dir.join("rules.toml");
        std::fs::write(&rules, E2E_RULES).unwrap();
        let socket = dir.join("control.sock");
        let listen = free_port();
        let text = format!(
            "[agent]\nhost_id = \"{HOST}\"\nlisten = \"127.0.0.1:{listen}\"\ncontrol_socket = {:?}\nstate_dir = {:?}\nmodels_dir = {:?}\nsample_interval = \"200ms\"\n\n\
             [gpu]\nnvml_library = {:?}\n\n[aws]\nendpoint_url = {:?}\nattempt_timeout = \"2s\"\noperation_timeout = \"4s\"\n\n\
             [cloudwatch]\nenabled = false\n[logs]\nenabled = false\n\n\
             [alerts]\nrules = [\"rules.toml\"]\nevaluation_interval = \"200ms\"\nrunbook_url = \"https://runbook.example/r.md\"\n\n\
             [notify.sns]\nwarning_topic_arn = {:?}\ncritical_topic_arn = {:?}\n\n[notify.slack]\nwebhook_url = {:?}\n\n{models}",
            socket.display().to_string(),
            dir.join("state").display().to_string(),
            dir.join("models").display().to_string(),
            nvml.lib_path().display().to_string(),
            moto.endpoint(),
            topics.0,
            topics.1,
            slack.url(),
        );
        let config = dir.join("warden.toml");
        std::fs::write(&config, text).unwrap();
        Agent {
            child: None,
            dir: dir.to_path_buf(),
            config,
            socket,
            listen,
        }
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = Command::new(crate::support::warden_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env_remove("WARDEN_SLACK_WEBHOOK_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let up = wait_until(LONG, || {
            std::os::unix::net::UnixStream::connect(&self.socket)
                .ok()
                .map(|_| ())
        });
        assert!(up.is_some(), "control socket never came up\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let exited = wait_until(LONG, || c.try_wait().unwrap());
            if exited.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    async fn alerts(&self) -> Value {
        let mut c = ControlClient::connect(&self.socket).await.unwrap();
        c.call("alerts", serde_json::json!({})).await.unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn gpus(utils: &[u32], lost: Option<usize>) -> FakeState {
    FakeState::with_gpus(
        utils
            .iter()
            .enumerate()
            .map(|(i, u)| FakeGpu {
                util: *u,
                lost: Some(i) == lost,
                ..FakeGpu::default()
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fires_once_across_a_restart_then_resolves() {
    let moto = Moto::start();
    let topics = create_topics(&moto).await;
    let slack = SlackReceiver::start();
    let nvml = FakeNvml::new(&gpus(&[10, 10], None));
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::write(
        dir.path(),
        &nvml,
        &moto,
        &topics,
        &slack,
        &fake_model("calm", free_port(), &[], ""),
    );
    agent.start();

    nvml.set(&gpus(&[10, 95], None));
    let fired = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        m.iter().find(|m| m.rule == "gpu-hot").cloned()
    })
    .unwrap_or_else(|| panic!("no firing\n{}", agent.log()));
    assert_eq!(fired.state, "firing");
    assert!(fired.body.to_string().contains("GPU=1"));
    // The control API and /metrics show it.
    let snap = agent.alerts().await;
    let a = snap["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "gpu-hot")
        .unwrap()
        .clone();
    assert_eq!(a["state"], "firing");
    assert_eq!(a["labels"]["GPU"], "1");
    let mut ctl = ControlClient::connect(&agent.socket).await.unwrap();
    let acked = ctl
        .call(
            "ack",
            serde_json::json!({"alert_id": a["id"], "by": "carol"}),
        )
        .await
        .unwrap();
    assert_eq!(acked["acked_by"], "carol");
    let sil = ctl
        .call("silence", serde_json::json!({"matchers": {"alertname": "nothing-here"}, "duration_secs": 60, "creator": "carol", "comment": "test"}))
        .await
        .unwrap();
    assert!(sil["id"].is_string());
    let other = ctl
        .call(
            "silence",
            serde_json::json!({"matchers": {"GPU": "7"}, "duration_secs": 60, "creator": "dave"}),
        )
        .await
        .unwrap();
    ctl.call("unsilence", serde_json::json!({"silence_id": other["id"]}))
        .await
        .unwrap();
    let gone = ctl
        .call("unsilence", serde_json::json!({"silence_id": other["id"]}))
        .await;
    assert!(
        matches!(gone, Err(warden::control::ControlError::Remote { ref code, .. }) if code == "not_found"),
        "{gone:?}"
    );
    let bad = ctl
        .call(
            "silence",
            serde_json::json!({"matchers": {}, "creator": "x"}),
        )
        .await;
    assert!(
        matches!(bad, Err(warden::control::ControlError::Remote { ref code, .. }) if code == "bad_params"),
        "{bad:?}"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", agent.listen))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "warden_alerts{alertname=\"gpu-hot\",severity=\"warning\",alertstate=\"firing\""
        ),
        "{metrics}"
    );

    // Restart while firing: state comes back, no second "firing".
    agent.terminate();
    agent.start();
    let back = wait_until_async(LONG, || async {
        let snap = agent.alerts().await;
        let a = snap["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "gpu-hot")?
            .clone();
        (a["state"] == "firing").then_some(a)
    })
    .await
    .unwrap();
    assert_eq!(back["acked_by"], "carol", "ack survives the restart");
    assert_eq!(agent.alerts().await["silences"][0]["creator"], "carol");
    // Let the restarted agent sample and evaluate for a while (≥ 10 evaluations).
    let samples_seen = wait_until(LONG, || {
        agent
            .log()
            .matches("alert state restored")
            .count()
            .ge(&1)
            .then_some(())
    });
    assert!(samples_seen.is_some(), "{}", agent.log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        states(&slack_msgs(&slack), "gpu-hot"),
        vec!["firing"],
        "no second firing after restart"
    );

    nvml.set(&gpus(&[10, 10], None));
    let all = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (states(&m, "gpu-hot").len() >= 2).then_some(m)
    })
    .unwrap_or_else(|| panic!("no resolved\n{}", agent.log()));
    assert_eq!(states(&all, "gpu-hot"), vec!["firing", "resolved"]);
    let hot: Vec<&SlackMsg> = all.iter().filter(|m| m.rule == "gpu-hot").collect();
    assert_eq!(
        hot[0].dedupe, hot[1].dedupe,
        "the restart kept the episode's dedupe key"
    );
    let sns = wait_until(LONG, || {
        let s: Vec<SnsMsg> = sns_sent(&moto)
            .into_iter()
            .filter(|m| m.attrs["rule"] == "gpu-hot")
            .collect();
        (s.len() >= 2).then_some(s)
    })
    .unwrap();
    assert_eq!(
        sns.iter()
            .map(|m| m.attrs["state"].as_str())
            .collect::<Vec<_>>(),
        vec!["firing", "resolved"]
    );
    assert!(sns.iter().all(|m| m.topic == "structural-design-alerts"));
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_and_gpu_lost_page_critical_end_to_end() {
    let moto = Moto::start();
    let topics = create_topics(&moto).await;
    let slack = SlackReceiver::start();
    let nvml = FakeNvml::new(&gpus(&[10, 10], None));
    let dir = tempfile::tempdir().unwrap();
    let keys = "restart_initial_backoff = \"100ms\"\nrestart_max_backoff = \"400ms\"\nrestart_jitter = 0.0\ncrash_loop_exits = 3\ncrash_loop_window = \"5m\"";
    let mut agent = Agent::write(
        dir.path(),
        &nvml,
        &moto,
        &topics,
        &slack,
        &fake_model("crashy", free_port(), &["--exit-code", "3"], keys),
    );
    agent.start();
    nvml.set(&gpus(&[10, 10], Some(1)));
    let msgs = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (m.iter().any(|m| m.rule == "model-crash-loop") && m.iter().any(|m| m.rule == "gpu-lost"))
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", slack_msgs(&slack), agent.log()));
    let crash = msgs.iter().find(|m| m.rule == "model-crash-loop").unwrap();
    assert_eq!(crash.state, "firing");
    assert!(
        crash.body["text"]
            .as_str()
            .unwrap()
            .contains("[FIRING] critical model-crash-loop: Model crashy is crash-looping")
    );
    let lost = msgs.iter().find(|m| m.rule == "gpu-lost").unwrap();
    assert!(
        lost.body["text"]
            .as_str()
            .unwrap()
            .contains("GPU 1 fell off the bus"),
        "{:?}",
        lost.body
    );
    let sns = wait_until(LONG, || {
        let s: Vec<SnsMsg> = sns_sent(&moto)
            .into_iter()
            .filter(|m| m.topic == "structural-design-critical")
            .collect();
        (s.len() >= 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("{:?}", sns_sent(&moto)));
    let rules: Vec<&str> = sns.iter().map(|m| m.attrs["rule"].as_str()).collect();
    assert!(
        rules.contains(&"model-crash-loop") && rules.contains(&"gpu-lost"),
        "{rules:?}"
    );
    assert!(sns.iter().all(|m| m.attrs["severity"] == "critical"));
    // The GPU comes back: gpu-lost resolves.
    nvml.set(&gpus(&[10, 10], None));
    let resolved = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (states(&m, "gpu-lost") == vec!["firing", "resolved"]).then_some(())
    });
    assert!(
        resolved.is_some(),
        "{:?}\n{}",
        slack_msgs(&slack),
        agent.log()
    );
    agent.terminate();
}

// ---------------------------------------------------------------- check-config, alarms

#[test]
fn check_config_points_into_the_rule_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nname = \"gpu\"\nmetric = \"GPUUtilization\"\nop = \">\"\nthreshold = 90\nclear_threshold = 95\nseverity = \"warning\"\n",
    )
    .unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(&config, "[alerts]\nrules = [\"rules.toml\"]\n").unwrap();
    let out = Command::new(crate::support::warden_bin())
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let want = format!(
        "{}:6:19: clear_threshold",
        dir.path().join("rules.toml").display()
    );
    assert!(err.starts_with(&want), "{err}");
    // The shipped production config and its rules pass.
    let ok = Command::new(crate::support::warden_bin())
        .arg("check-config")
        .arg(crate::support::repo_root().join("config/warden.toml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn render_cli(extra: &[&str]) -> String {
    let out = Command::new(crate::support::warden_bin())
        .args(["alarms", "render", "--config"])
        .arg(crate::support::repo_root().join("config/warden.toml"))
        .args(["--host", "gpu-host-1", "--gpus", "2"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn alarms_render_is_deterministic_and_matches_the_committed_file() {
    let a = render_cli(&[]);
    let b = render_cli(&[]);
    assert_eq!(a, b);
    let committed =
        std::fs::read_to_string(crate::support::repo_root().join("alerts/alarms.json")).unwrap();
    assert_eq!(
        a, committed,
        "alerts/alarms.json is stale: warden alarms render --config config/warden.toml --host gpu-host-1 --gpus 2 > alerts/alarms.json"
    );
    let v: Value = serde_json::from_str(&a).unwrap();
    let names: Vec<&str> = v["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["AlarmName"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"warden-gpu-host-1-gpu-utilization-high-gpu1"),
        "{names:?}"
    );
    assert!(names.contains(&"warden-gpu-host-1-api-latency-p95-critical-clash-detector"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_push_round_trips_through_describe_alarms() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nendpoint_url = {:?}\n[notify.sns]\nwarning_topic_arn = \"arn:aws:sns:us-east-1:123456789012:structural-design-alerts\"\ncritical_topic_arn = \"arn:aws:sns:us-east-1:123456789012:structural-design-critical\"\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let run = |cmd: &str| {
        Command::new(crate::support::warden_bin())
            .args(["alarms", cmd, "--config"])
            .arg(&config)
            .args(["--host", "h1", "--gpus", "1"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .output()
            .unwrap()
    };
    let rendered: Value = serde_json::from_slice(&run("render").stdout).unwrap();
    let out = run("push");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = rendered["alarms"].as_array().unwrap();
    let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let got = cw.describe_alarms().max_records(100).send().await.unwrap();
    let got: BTreeMap<String, _> = got
        .metric_alarms()
        .iter()
        .map(|a| (a.alarm_name().unwrap().to_string(), a.clone()))
        .collect();
    assert_eq!(got.len(), want.len(), "{:?}", got.keys());
    for w in want {
        let g = &got[w["AlarmName"].as_str().unwrap()];
        assert_eq!(g.threshold(), w["Threshold"].as_f64());
        assert_eq!(
            g.comparison_operator().map(|c| c.as_str()),
            w["ComparisonOperator"].as_str()
        );
        assert_eq!(
            g.evaluation_periods(),
            w["EvaluationPeriods"].as_i64().map(|p| p as i32)
        );
        assert_eq!(g.treat_missing_data(), w["TreatMissingData"].as_str());
        let actions: Vec<&str> = w["AlarmActions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(g.alarm_actions(), actions.as_slice());
        assert_eq!(g.statistic().map(|s| s.as_str()), w["Statistic"].as_str());
        assert_eq!(g.extended_statistic(), w["ExtendedStatistic"].as_str());
        assert_eq!(g.period(), w["Period"].as_i64().map(|p| p as i32));
        assert_eq!(g.metric_name(), w["MetricName"].as_str());
        if let Some(m) = w["Metrics"].as_array() {
            assert_eq!(g.metrics().len(), m.len(), "{:?}", g);
        }
    }
    let p95 = &got["warden-h1-api-latency-p95-critical-risk-analyzer"];
    assert_eq!(p95.extended_statistic(), Some("p95"));
    assert_eq!(
        p95.alarm_actions(),
        ["arn:aws:sns:us-east-1:123456789012:structural-design-critical"]
    );
}

// ---------------------------------------------------------------- derived metrics, reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_and_latency_p95_come_from_the_gateway_counters_and_window() {
    let rules = r#"
[[rule]]
name = "errors"
metric = "ModelErrorRate"
reducer = "avg"
window = "1m"
op = ">"
threshold = 5
for = "0s"
severity = "critical"
summary = "{{Model}} error rate {{value}} %"

[[rule]]
name = "slow"
metric = "ModelLatency"
where = { Model = "clash-detector" }
reducer = "p95"
window = "1m"
op = ">"
threshold = 1500
for = "0s"
severity = "warning"
"#;
    let slack = SlackReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let chans = channels(None, &(String::new(), String::new()), &slack).await;
    let t0 = now_ms();
    let e = Engine::start(
        rules,
        &dir.path().join("alerts"),
        chans,
        Duration::from_secs(3600),
        t0,
    );
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    for model in ["clash-detector", "risk-analyzer"] {
        for i in 0..100u64 {
            let (ms, ok) = if i % 10 == 9 {
                (2000.0, false)
            } else {
                (100.0, true)
            };
            e.store.record_request(model, ms, ok, at(t0 + i * 10));
        }
    }
    e.clock.store(t0 + 2000, Ordering::SeqCst);
    let mut fired = e.handle.evaluate_now().await;
    fired.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
    let got: Vec<(String, String, f64)> = fired
        .iter()
        .map(|n| (n.rule.clone(), n.labels["Model"].clone(), n.value))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        ("errors", "clash-detector")
    );
    assert!((got[0].2 - 10.0).abs() < 0.5, "error rate {got:?}");
    assert_eq!(
        (got[2].0.as_str(), got[2].1.as_str()),
        ("slow", "clash-detector")
    );
    // Windowed percentiles come from histograms: within their 1 % precision.
    assert!((got[2].2 - 2000.0).abs() / 2000.0 < 0.01, "p95 {got:?}");
    // Two minutes of clean, fast traffic: both resolve (the bad minute left the window).
    for i in 0..100u64 {
        e.store
            .record_request("clash-detector", 50.0, true, at(t0 + 120_000 + i));
        e.store
            .record_request("risk-analyzer", 50.0, true, at(t0 + 120_000 + i));
    }
    e.clock.store(t0 + 121_000, Ordering::SeqCst);
    let resolved = e.handle.evaluate_now().await;
    assert_eq!(resolved.len(), 3, "{resolved:?}");
    assert!(resolved.iter().all(|n| n.kind.as_str() == "resolved"));
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_rules_keeps_alert_state() {
    let slack = SlackReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, GPU_RULES).unwrap();
    let config_path = dir.path().join("warden.toml");
    let config_text =
        format!("[agent]\nhost_id = \"{HOST}\"\n[alerts]\nrules = [\"rules.toml\"]\n");
    std::fs::write(&config_path, &config_text).unwrap();
    let config = warden::config::Config::load(&config_path).unwrap();
    let settings = AlertsSettings::from_config(&config).unwrap();
    let store = Arc::new(MetricStore::new(HOST, 600));
    let clock = Arc::new(AtomicU64::new(now_ms()));
    let c = clock.clone();
    let (_tx, rx) = broadcast::channel(4);
    let (_stx, srx) = broadcast::channel(4);
    let cancel = CancellationToken::new();
    let chans = channels(None, &(String::new(), String::new()), &slack).await;
    let (handle, tasks) = AlertsHandle::start_with(
        settings,
        &dir.path().join("state/alerts"),
        chans,
        store.clone(),
        srx,
        rx,
        Arc::new(move || c.load(Ordering::SeqCst)),
        cancel.clone(),
    )
    .unwrap();
    let t = clock.load(Ordering::SeqCst) + 1000;
    clock.store(t, Ordering::SeqCst);
    store.set_gauge(
        "GPUUtilization",
        &[(Dim::Gpu, "0")],
        95.0,
        UNIX_EPOCH + Duration::from_millis(t),
    );
    assert_eq!(handle.evaluate_now().await.len(), 1);
    // A bad edit is rejected and the old rules stay.
    std::fs::write(&rules_path, "[[rule]]\nname = \"x\"\n").unwrap();
    let bad = warden::config::Config::load(&config_path);
    assert!(bad.is_err());
    // A good edit: a new rule, gpu-hot's threshold moved; gpu-hot stays firing, no new firing.
    std::fs::write(&rules_path, GPU_RULES.replace("threshold = 90", "threshold = 92") + "\n[[rule]]\nname = \"gpu-warm\"\nmetric = \"GPUUtilization\"\nop = \">\"\nthreshold = 50\nfor = \"0s\"\nseverity = \"info\"\n").unwrap();
    let config = warden::config::Config::load(&config_path).unwrap();
    assert_eq!(handle.reload(&config).unwrap(), 3);
    clock.store(t + 1000, Ordering::SeqCst);
    store.set_gauge(
        "GPUUtilization",
        &[(Dim::Gpu, "0")],
        95.0,
        UNIX_EPOCH + Duration::from_millis(t + 1000),
    );
    handle.evaluate_now().await;
    // (The reload itself wakes the loop, which may evaluate first: judge by what was sent.)
    let msgs = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (m.len() >= 2).then_some(m)
    })
    .unwrap();
    assert_eq!(
        states(&msgs, "gpu-hot"),
        vec!["firing"],
        "no second firing after reload"
    );
    assert_eq!(states(&msgs, "gpu-warm"), vec!["firing"]);
    let snap = handle.snapshot();
    let hot = snap["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "gpu-hot")
        .unwrap()
        .clone();
    assert_eq!(hot["state"], "firing");
    assert_eq!(hot["threshold"], 92.0);
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
}

// ---------------------------------------------------------------- outbox on a full disk

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_the_full_disk_refused_is_retried_not_marked_sent() {
    let slack = SlackReceiver::start();
    let disk = crate::support::tmpfs::Tmpfs::mount("512k").expect("mount a tmpfs (needs root)");
    let chans = channels(None, &(String::new(), String::new()), &slack).await;
    let e = Engine::start(
        GPU_RULES,
        &disk.path().join("alerts"),
        chans,
        Duration::from_secs(3600),
        now_ms(),
    );
    disk.fill();
    // Fires while the outbox cannot be written: kept as unsent, nothing can reach Slack.
    let fired = e.gpu("0", 95.0, 1000).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(e.handle.unsent(), 1);
    assert_eq!(e.handle.undelivered(), 0);
    // Still full at the next evaluation: still due, not lost and not duplicated.
    assert!(e.gpu("0", 96.0, 1000).await.is_empty());
    assert_eq!(e.handle.unsent(), 1);
    assert!(slack_msgs(&slack).is_empty());

    // Space is back: the next evaluation spools it, and it is delivered exactly once.
    disk.free();
    e.gpu("0", 96.0, 1000).await;
    assert_eq!(e.handle.unsent(), 0);
    let msgs = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (!m.is_empty()).then_some(m)
    })
    .expect("the refused notification was never delivered");
    assert_eq!(states(&msgs, "gpu-hot"), vec!["firing"]);
    assert_eq!(msgs[0].dedupe, fired[0].dedupe_key, "the original episode");
    assert_eq!(
        warden::telemetry::drops::total(&e.store, "notify", "spool_write"),
        0.0
    );

    // Refused for longer than a day: given up, and counted as a drop. The delivered one is
    // acknowledged first (Slack sees it before the outbox deletes its segment, which would
    // free room on the disk filled next).
    let acked = wait_until(LONG, || (e.handle.undelivered() == 0).then_some(()));
    assert!(
        acked.is_some(),
        "the delivered notification was never acknowledged"
    );
    disk.fill();
    assert_eq!(e.gpu("2", 99.0, 1000).await.len(), 1);
    assert_eq!(e.handle.unsent(), 1);
    e.clock.fetch_add(25 * 3600 * 1000, Ordering::SeqCst);
    disk.top_up();
    e.handle.evaluate_now().await;
    assert_eq!(e.handle.unsent(), 0);
    assert_eq!(
        warden::telemetry::drops::total(&e.store, "notify", "spool_write"),
        1.0
    );
    disk.free();
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_access_denied_event_pages_with_the_shipped_rule_and_resolves() {
    use warden::telemetry::TelemetryEvent;
    let slack = SlackReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let chans = channels(None, &(String::new(), String::new()), &slack).await;
    let e = Engine::start(
        warden::config::DEFAULT_ALERT_RULES,
        &dir.path().join("alerts"),
        chans,
        Duration::from_secs(3600),
        now_ms(),
    );
    // Through the engine's own event loop, as the sinks send it.
    e._events
        .send(TelemetryEvent::AwsAccessDenied {
            sink: "logs".into(),
            operation: "PutLogEvents".into(),
            permission: "logs:PutLogEvents".into(),
            error: "AccessDeniedException: User is not authorized".into(),
        })
        .unwrap();
    let msgs = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (!states(&m, "aws-access-denied").is_empty()).then_some(m)
    })
    .expect("no aws-access-denied page");
    let page = msgs.iter().find(|m| m.rule == "aws-access-denied").unwrap();
    let text = page.body["text"].as_str().unwrap();
    assert!(
        text.contains("[FIRING] critical aws-access-denied"),
        "{text}"
    );
    assert!(text.contains("logs:PutLogEvents"), "{text}");
    assert!(
        page.dedupe.contains("Operation=PutLogEvents")
            && page.dedupe.contains("Permission=logs:PutLogEvents")
            && page.dedupe.contains("Sink=logs"),
        "{}",
        page.dedupe
    );
    e._events
        .send(TelemetryEvent::AwsAccessRestored {
            sink: "logs".into(),
        })
        .unwrap();
    let resolved = wait_until(LONG, || {
        let m = slack_msgs(&slack);
        (states(&m, "aws-access-denied") == vec!["firing", "resolved"]).then_some(())
    });
    assert!(
        resolved.is_some(),
        "{:?}",
        states(&slack_msgs(&slack), "aws-access-denied")
    );
    e.stop().await;
}

//! The agent's configuration: one TOML tree, every key optional, validated once with
//! `file:line:col` errors shared by `warden check-config` and `warden run`.

use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The five models a GPU host serves when `[[models]]` is absent.
pub const DEFAULT_MODELS: [(&str, u16); 5] = [
    ("connection-designer", 8001),
    ("section-optimizer", 8002),
    ("clash-detector", 8003),
    ("compliance-checker", 8004),
    ("risk-analyzer", 8005),
];

/// The default alert rules, shipped inside the binary so the embedded default needs no files.
pub const DEFAULT_ALERT_RULES: &str = include_str!("../alerts/default.toml");

/// A configuration problem located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem found in one configuration file (at least one).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A secret string (webhook URL, key material): never printed by `Debug`.
#[derive(Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub gpu: GpuConfig,
    pub models: Vec<ModelConfig>,
    pub aws: AwsConfig,
    pub cloudwatch: CloudWatchConfig,
    pub logs: LogsConfig,
    pub alerts: AlertsConfig,
    pub notify: NotifyConfig,
    pub auth: Option<AuthConfig>,
    pub api: ApiConfig,
    pub healing: HealingConfig,
    /// Where the file was read from; relative paths inside it resolve against its directory.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub host_id: Option<String>,
    pub listen: SocketAddr,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    pub models_dir: PathBuf,
    #[serde(deserialize_with = "duration")]
    pub sample_interval: Duration,
    /// The Auto Scaling group this host belongs to: the scaling metrics are also published
    /// aggregated under `AutoScalingGroupName` (the fleet view).
    pub autoscaling_group: Option<String>,
    /// When `autoscaling_group` is unset, read the group from the instance's
    /// `aws:autoscaling:groupName` tag through IMDS (EC2 only; needs instance metadata tags on).
    pub autoscaling_group_from_imds: bool,
    /// Bound on the IMDS look-up at start (off EC2 it must fail fast, not hang the start).
    #[serde(deserialize_with = "duration")]
    pub imds_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            host_id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            control_socket: PathBuf::from("/run/warden/control.sock"),
            state_dir: PathBuf::from("/var/lib/warden"),
            models_dir: PathBuf::from("/var/lib/warden/models"),
            sample_interval: Duration::from_secs(1),
            autoscaling_group: None,
            autoscaling_group_from_imds: false,
            imds_timeout: Duration::from_secs(2),
        }
    }
}

impl AgentConfig {
    /// The host id used as a dimension and log stream: configured, else the hostname.
    pub fn host_id(&self) -> String {
        if let Some(id) = &self.host_id {
            return id.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    pub nvml_library: PathBuf,
    /// A blocking NVML call taking longer than this is abandoned for the round.
    #[serde(deserialize_with = "duration")]
    pub call_timeout: Duration,
    /// Loading NVML and attaching to the driver may take this long (far slower than a read).
    #[serde(deserialize_with = "duration")]
    pub init_timeout: Duration,
    /// GPUs this host is built with. When set, `/ready` is 503 while NVML is unavailable or
    /// sees fewer GPUs (without it, only a host where NVML once saw a GPU counts as a GPU host).
    pub expected_count: Option<u32>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            nvml_library: PathBuf::from("libnvidia-ml.so.1"),
            call_timeout: Duration::from_millis(500),
            init_timeout: crate::telemetry::nvml::DEFAULT_INIT_TIMEOUT,
            expected_count: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl Device {
    pub fn as_str(&self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub weights: Option<PathBuf>,
    #[serde(default)]
    pub device: Device,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_batch_timeout", deserialize_with = "duration")]
    pub batch_timeout: Duration,
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "default_health_interval", deserialize_with = "duration")]
    pub health_interval: Duration,
    #[serde(default = "default_health_failures")]
    pub health_failures: u32,
    #[serde(default = "default_stop_timeout", deserialize_with = "duration")]
    pub stop_timeout: Duration,
    /// Overrides what is spawned (argv); default is `warden serve-model NAME --port N ...`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Delay before the second consecutive restart (the first one after a stable run is
    /// immediate); doubles per further failure up to `restart_max_backoff`.
    #[serde(
        default = "default_restart_initial_backoff",
        deserialize_with = "duration"
    )]
    pub restart_initial_backoff: Duration,
    #[serde(default = "default_restart_max_backoff", deserialize_with = "duration")]
    pub restart_max_backoff: Duration,
    /// Fraction (0-1) by which each backoff delay is randomly stretched or shrunk.
    #[serde(default = "default_restart_jitter")]
    pub restart_jitter: f64,
    /// This many unexpected exits within `crash_loop_window` make the state `crash-loop`.
    #[serde(default = "default_crash_loop_exits")]
    pub crash_loop_exits: u32,
    #[serde(default = "default_crash_loop_window", deserialize_with = "duration")]
    pub crash_loop_window: Duration,
    /// A child not answering `/ready` this long after spawning is killed and restarted.
    #[serde(default = "default_start_timeout", deserialize_with = "duration")]
    pub start_timeout: Duration,
    /// A child that ran this long before exiting resets the backoff.
    #[serde(default = "default_stable_after", deserialize_with = "duration")]
    pub stable_after: Duration,
}

fn default_max_batch() -> usize {
    32
}
fn default_batch_timeout() -> Duration {
    Duration::from_millis(2)
}
fn default_queue_capacity() -> usize {
    1024
}
fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_health_failures() -> u32 {
    3
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_restart_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_restart_max_backoff() -> Duration {
    Duration::from_secs(60)
}
fn default_restart_jitter() -> f64 {
    0.1
}
fn default_crash_loop_exits() -> u32 {
    5
}
fn default_crash_loop_window() -> Duration {
    Duration::from_secs(600)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_stable_after() -> Duration {
    Duration::from_secs(60)
}

impl ModelConfig {
    pub fn new(name: &str, port: u16) -> Self {
        ModelConfig {
            name: name.to_string(),
            port,
            weights: None,
            device: Device::Auto,
            threads: None,
            max_batch: default_max_batch(),
            batch_timeout: default_batch_timeout(),
            queue_capacity: default_queue_capacity(),
            health_interval: default_health_interval(),
            health_failures: default_health_failures(),
            stop_timeout: default_stop_timeout(),
            command: None,
            restart_initial_backoff: default_restart_initial_backoff(),
            restart_max_backoff: default_restart_max_backoff(),
            restart_jitter: default_restart_jitter(),
            crash_loop_exits: default_crash_loop_exits(),
            crash_loop_window: default_crash_loop_window(),
            start_timeout: default_start_timeout(),
            stable_after: default_stable_after(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    pub region: String,
    pub endpoint_url: Option<String>,
    /// Per-attempt and per-operation timeouts: the SDK has no read timeout by default.
    #[serde(deserialize_with = "duration")]
    pub attempt_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub operation_timeout: Duration,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: "us-east-1".to_string(),
            endpoint_url: None,
            attempt_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchConfig {
    pub enabled: bool,
    pub namespace: String,
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
    pub high_resolution: bool,
    pub max_spool_bytes: u64,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        CloudWatchConfig {
            enabled: true,
            namespace: "Warden".to_string(),
            flush_interval: Duration::from_secs(60),
            high_resolution: false,
            max_spool_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    pub enabled: bool,
    pub model_group_prefix: String,
    pub api_group: String,
    pub agent_group: Option<String>,
    pub retention_days: u32,
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
    pub max_spool_bytes: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            enabled: true,
            model_group_prefix: "/aws/ec2/models/".to_string(),
            api_group: "/aws/apigateway/structural-design-api".to_string(),
            agent_group: None,
            retention_days: 90,
            flush_interval: Duration::from_secs(5),
            max_spool_bytes: 256 << 20,
        }
    }
}

/// Retention values CloudWatch Logs accepts for PutRetentionPolicy.
pub const VALID_RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Rule files; absent means the built-in `alerts/default.toml` ([`DEFAULT_ALERT_RULES`]).
    pub rules: Option<Vec<PathBuf>>,
    #[serde(deserialize_with = "duration")]
    pub evaluation_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub repeat_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub group_wait: Duration,
    pub runbook_url: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules: None,
            evaluation_interval: Duration::from_secs(1),
            repeat_interval: Duration::from_secs(4 * 3600),
            group_wait: Duration::ZERO,
            runbook_url: "https://github.com/warden/warden/blob/main/docs/runbook.md".to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    pub sns: Option<SnsConfig>,
    pub slack: Option<SlackConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnsConfig {
    pub info_topic_arn: Option<String>,
    pub warning_topic_arn: Option<String>,
    pub critical_topic_arn: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    pub webhook_url: Option<Secret>,
    pub channel: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub enabled: bool,
    pub jwt_public_key: Option<PathBuf>,
    pub jwt_private_key: Option<PathBuf>,
    pub api_keys_file: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    pub rate_limit_per_hour: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            jwt_public_key: None,
            jwt_private_key: None,
            api_keys_file: None,
            issuer: "warden".to_string(),
            audience: "structural-design-api".to_string(),
            rate_limit_per_hour: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Requests in flight across the gateway before it sheds load with 503.
    pub max_concurrency: usize,
    pub body_limit_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    pub cors_origins: Vec<String>,
    /// `audit/api.jsonl` is rotated to `.1` … before it would pass this size.
    pub audit_max_file_bytes: u64,
    /// Rotated audit files kept (`api.jsonl.1` … `.N`).
    pub audit_keep_files: usize,
    /// Audit records held in memory while the file (disk full) or the log shipper cannot take
    /// them; when full, requests are refused with 503 `audit_unavailable`.
    pub audit_buffer_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_concurrency: 2048,
            body_limit_bytes: 2 << 20,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            audit_max_file_bytes: 64 << 20,
            audit_keep_files: 5,
            audit_buffer_bytes: 16 << 20,
        }
    }
}

/// Self-healing: automatic rolling restarts of a model that leaks GPU memory or stays slow.
/// Off until a bound is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealingConfig {
    /// Restart a model whose process holds more GPU memory than this (bytes).
    pub gpu_memory_max_bytes: Option<u64>,
    /// Restart a model whose latency p95 over `latency_window` stays above this ...
    #[serde(deserialize_with = "opt_duration")]
    pub latency_p95_max: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub latency_window: Duration,
    /// ... for this long.
    #[serde(deserialize_with = "duration")]
    pub latency_for: Duration,
    /// After an automatic restart, no other automatic restart (of any model) for this long.
    #[serde(deserialize_with = "duration")]
    pub cooldown: Duration,
}

impl Default for HealingConfig {
    fn default() -> Self {
        HealingConfig {
            gpu_memory_max_bytes: None,
            latency_p95_max: None,
            latency_window: Duration::from_secs(60),
            latency_for: Duration::from_secs(300),
            cooldown: Duration::from_secs(600),
        }
    }
}

impl HealingConfig {
    /// True when some bound is configured.
    pub fn enabled(&self) -> bool {
        self.gpu_memory_max_bytes.is_some() || self.latency_p95_max.is_some()
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses "2ms", "1s", "5m", "4h", "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. \"500ms\", \"5s\", \"1m\""))
}

impl Config {
    /// The configuration `warden run` uses with no file: the five models, API on
    /// 127.0.0.1:8000, state under the user's state dir, no AWS, open API.
    pub fn embedded() -> Config {
        let state_dir = embedded_state_dir();
        let mut config = Config::default();
        config.agent.models_dir = state_dir.join("models");
        config.agent.control_socket = state_dir.join("control.sock");
        config.agent.state_dir = state_dir;
        config.cloudwatch.enabled = false;
        config.logs.enabled = false;
        config
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, col) = line_col(text, offset);
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line,
                col,
                message: e.message().trim().to_string(),
            }])
        })?;
        config.source = Some(path.to_path_buf());
        config.apply_env();
        let problems = config.validate();
        let locator = Locator::new(text);
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| {
                let (line, col) = locator.locate(&p.path);
                ConfigError {
                    file: path.to_path_buf(),
                    line,
                    col,
                    message: p.message,
                }
            })
            .collect();
        // Rule files are part of the config: their errors point into the rule file.
        for rules in config.alerts.rules.iter().flatten() {
            let resolved = config.resolve(rules);
            if resolved.exists()
                && let Err(e) = crate::alerts::rules::load(&resolved)
            {
                errors.extend(e.0);
            }
        }
        // So are the SLOs (`[[slo]]` in rule files, `slos/*.toml`).
        if let Err(e) = crate::alerts::slo::load_for(&config) {
            errors.extend(e.0);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Secrets may come from the environment rather than the file.
    pub fn apply_env(&mut self) {
        if let Ok(url) = std::env::var("WARDEN_SLACK_WEBHOOK_URL")
            && !url.is_empty()
        {
            let slack = self.notify.slack.get_or_insert_with(SlackConfig::default);
            if slack.webhook_url.is_none() {
                slack.webhook_url = Some(Secret::new(url));
            }
        }
    }

    /// The models to run: configured, else the five defaults.
    pub fn effective_models(&self) -> Vec<ModelConfig> {
        if self.models.is_empty() {
            DEFAULT_MODELS
                .iter()
                .map(|(name, port)| ModelConfig::new(name, *port))
                .collect()
        } else {
            self.models.clone()
        }
    }

    /// Resolves a path from the file against the file's directory.
    /// `agent.state_dir` resolved against the config file's directory: the one place every
    /// spool, the audit trail, alert state and the disk-space sampler agree on.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.agent.state_dir)
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.source.as_ref().and_then(|s| s.parent()) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// Auth settings when auth is on; `None` means the API is open.
    pub fn auth_enabled(&self) -> Option<&AuthConfig> {
        self.auth.as_ref().filter(|a| a.enabled)
    }

    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push =
            |path: Vec<PathPart>, message: String| problems.push(Problem { path, message });
        use PathPart::{Idx, Key};

        if let Some(id) = &self.agent.host_id
            && (id.is_empty() || id.len() > 255)
        {
            push(
                vec![Key("agent"), Key("host_id")],
                "host_id must be 1 to 255 characters".into(),
            );
        }
        if self.agent.sample_interval < Duration::from_millis(100) {
            push(
                vec![Key("agent"), Key("sample_interval")],
                "sample_interval must be at least 100ms".into(),
            );
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ports: HashMap<u16, usize> = HashMap::new();
        for (i, m) in self.models.iter().enumerate() {
            let at = |k: &'static str| vec![Key("models"), Idx(i), Key(k)];
            if !valid_model_name(&m.name) {
                push(
                    at("name"),
                    format!(
                        "model name {:?} must be 1-64 characters of a-z, 0-9 and '-'",
                        m.name
                    ),
                );
            } else if let Some(first) = names.insert(&m.name, i) {
                push(
                    at("name"),
                    format!("duplicate model name {:?} (also models[{first}])", m.name),
                );
            }
            if m.port == 0 {
                push(at("port"), "port must be 1-65535".into());
            } else if m.port == self.agent.listen.port() {
                push(
                    at("port"),
                    format!("port {} is the API's agent.listen port", m.port),
                );
            } else if let Some(first) = ports.insert(m.port, i) {
                push(
                    at("port"),
                    format!("duplicate port {} (also models[{first}])", m.port),
                );
            }
            if m.max_batch == 0 || m.max_batch > 1024 {
                push(
                    at("max_batch"),
                    format!("max_batch {} out of range 1-1024", m.max_batch),
                );
            }
            if m.batch_timeout > Duration::from_secs(1) {
                push(
                    at("batch_timeout"),
                    "batch_timeout must be at most 1s".into(),
                );
            }
            if m.queue_capacity == 0 {
                push(
                    at("queue_capacity"),
                    "queue_capacity must be at least 1".into(),
                );
            }
            if m.threads == Some(0) {
                push(at("threads"), "threads must be at least 1".into());
            }
            if m.health_failures == 0 {
                push(
                    at("health_failures"),
                    "health_failures must be at least 1".into(),
                );
            }
            if m.health_interval < Duration::from_millis(50) {
                push(
                    at("health_interval"),
                    "health_interval must be at least 50ms".into(),
                );
            }
            if m.restart_initial_backoff.is_zero() {
                push(
                    at("restart_initial_backoff"),
                    "restart_initial_backoff must be more than 0s".into(),
                );
            }
            if m.restart_max_backoff < m.restart_initial_backoff {
                push(
                    at("restart_max_backoff"),
                    "restart_max_backoff must be at least restart_initial_backoff".into(),
                );
            }
            if !(0.0..=1.0).contains(&m.restart_jitter) {
                push(
                    at("restart_jitter"),
                    format!("restart_jitter {} out of range 0-1", m.restart_jitter),
                );
            }
            if m.crash_loop_exits < 2 {
                push(
                    at("crash_loop_exits"),
                    "crash_loop_exits must be at least 2".into(),
                );
            }
            if m.start_timeout < Duration::from_millis(100) {
                push(
                    at("start_timeout"),
                    "start_timeout must be at least 100ms".into(),
                );
            }
            if m.crash_loop_window.is_zero() {
                push(
                    at("crash_loop_window"),
                    "crash_loop_window must be more than 0s".into(),
                );
            }
            if let Some(w) = &m.weights
                && !self.resolve(w).exists()
            {
                push(
                    at("weights"),
                    format!("weights file {} does not exist", w.display()),
                );
            }
            if let Some(cmd) = &m.command
                && cmd.first().is_none_or(|c| c.is_empty())
            {
                push(at("command"), "command must name a program".into());
            }
            let known = DEFAULT_MODELS.iter().any(|(n, _)| *n == m.name);
            if !known && m.weights.is_none() && m.command.is_none() {
                push(
                    at("name"),
                    format!(
                        "model {:?} is not one of the built-in models; give `weights` (TorchScript) or `command`",
                        m.name
                    ),
                );
            }
        }

        if let Some(g) = &self.agent.autoscaling_group
            && (g.is_empty() || g.len() > 255)
        {
            push(
                vec![Key("agent"), Key("autoscaling_group")],
                "autoscaling_group must be 1 to 255 characters".into(),
            );
        }
        if self.agent.imds_timeout.is_zero() || self.agent.imds_timeout > Duration::from_secs(30) {
            push(
                vec![Key("agent"), Key("imds_timeout")],
                "imds_timeout must be more than 0s and at most 30s".into(),
            );
        }
        if self.gpu.expected_count == Some(0) {
            push(
                vec![Key("gpu"), Key("expected_count")],
                "expected_count must be at least 1 (leave it out on a host without GPUs)".into(),
            );
        }
        let h = &self.healing;
        if h.gpu_memory_max_bytes == Some(0) {
            push(
                vec![Key("healing"), Key("gpu_memory_max_bytes")],
                "gpu_memory_max_bytes must be more than 0".into(),
            );
        }
        if h.latency_p95_max.is_some_and(|d| d.is_zero()) {
            push(
                vec![Key("healing"), Key("latency_p95_max")],
                "latency_p95_max must be more than 0s".into(),
            );
        }
        if h.latency_window < Duration::from_secs(1) {
            push(
                vec![Key("healing"), Key("latency_window")],
                "latency_window must be at least 1s".into(),
            );
        }
        if h.cooldown < Duration::from_secs(1) {
            push(
                vec![Key("healing"), Key("cooldown")],
                "cooldown must be at least 1s (one restart at a time needs a pause between them)"
                    .into(),
            );
        }

        if self.gpu.init_timeout < self.gpu.call_timeout {
            push(
                vec![Key("gpu"), Key("init_timeout")],
                format!(
                    "init_timeout must be at least call_timeout ({})",
                    humantime::format_duration(self.gpu.call_timeout)
                ),
            );
        }
        let lib = &self.gpu.nvml_library;
        if lib.components().count() > 1 && !self.resolve(lib).exists() {
            push(
                vec![Key("gpu"), Key("nvml_library")],
                format!("nvml_library {} does not exist", lib.display()),
            );
        }

        if let Some(url) = &self.aws.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            push(
                vec![Key("aws"), Key("endpoint_url")],
                format!("endpoint_url {url:?} must be an http(s) URL"),
            );
        }
        if self.aws.region.is_empty() {
            push(
                vec![Key("aws"), Key("region")],
                "region must not be empty".into(),
            );
        }
        if self.cloudwatch.namespace.is_empty() || self.cloudwatch.namespace.starts_with("AWS/") {
            push(
                vec![Key("cloudwatch"), Key("namespace")],
                "namespace must be non-empty and not start with \"AWS/\"".into(),
            );
        }
        if self.cloudwatch.flush_interval < Duration::from_secs(1) {
            push(
                vec![Key("cloudwatch"), Key("flush_interval")],
                "flush_interval must be at least 1s".into(),
            );
        }
        if !VALID_RETENTION_DAYS.contains(&self.logs.retention_days) {
            push(
                vec![Key("logs"), Key("retention_days")],
                format!(
                    "retention_days {} is not one CloudWatch Logs accepts ({:?})",
                    self.logs.retention_days, VALID_RETENTION_DAYS
                ),
            );
        }
        if !self.logs.api_group.starts_with('/') && !self.logs.api_group.is_empty() {
            // CloudWatch accepts it, but our dashboards assume the AWS-style path.
        }
        for (i, rules) in self.alerts.rules.iter().flatten().enumerate() {
            if !self.resolve(rules).exists() {
                push(
                    vec![Key("alerts"), Key("rules"), Idx(i)],
                    format!("rules file {} does not exist", rules.display()),
                );
            }
        }
        if self.alerts.evaluation_interval < Duration::from_millis(100) {
            push(
                vec![Key("alerts"), Key("evaluation_interval")],
                "evaluation_interval must be at least 100ms".into(),
            );
        }
        // Zero would re-page a firing alert at every evaluation; shorter than one evaluation
        // cannot be honoured.
        if self.alerts.repeat_interval.is_zero() {
            push(
                vec![Key("alerts"), Key("repeat_interval")],
                "repeat_interval must be more than 0s (the time between repeats of a firing alert)"
                    .into(),
            );
        } else if self.alerts.repeat_interval < self.alerts.evaluation_interval {
            push(
                vec![Key("alerts"), Key("repeat_interval")],
                format!(
                    "repeat_interval must be at least evaluation_interval ({})",
                    humantime::format_duration(self.alerts.evaluation_interval)
                ),
            );
        }
        if let Some(sns) = &self.notify.sns {
            for (key, arn) in [
                ("info_topic_arn", &sns.info_topic_arn),
                ("warning_topic_arn", &sns.warning_topic_arn),
                ("critical_topic_arn", &sns.critical_topic_arn),
            ] {
                if let Some(arn) = arn
                    && !valid_sns_arn(arn)
                {
                    push(
                        vec![Key("notify"), Key("sns"), Key(key)],
                        format!(
                            "{arn:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
                        ),
                    );
                }
            }
        }
        if let Some(slack) = &self.notify.slack
            && let Some(url) = &slack.webhook_url
            && !(url.expose().starts_with("https://") || url.expose().starts_with("http://"))
        {
            // The value is a secret: say what is wrong without echoing it.
            push(
                vec![Key("notify"), Key("slack"), Key("webhook_url")],
                "webhook_url must be an http(s) URL".into(),
            );
        }
        if let Some(auth) = &self.auth {
            let at = |k: &'static str| vec![Key("auth"), Key(k)];
            if auth.enabled && auth.jwt_public_key.is_none() && auth.api_keys_file.is_none() {
                push(
                    at("enabled"),
                    "auth is enabled but neither jwt_public_key nor api_keys_file is set".into(),
                );
            }
            for (key, path) in [
                ("jwt_public_key", &auth.jwt_public_key),
                ("jwt_private_key", &auth.jwt_private_key),
            ] {
                if let Some(p) = path
                    && !self.resolve(p).exists()
                {
                    push(
                        at(key),
                        format!("{key} file {} does not exist", p.display()),
                    );
                }
            }
            if let Some(p) = &auth.api_keys_file {
                let resolved = self.resolve(p);
                let parent_ok = resolved
                    .parent()
                    .is_none_or(|d| d.as_os_str().is_empty() || d.exists());
                if !parent_ok {
                    push(
                        at("api_keys_file"),
                        format!("directory of api_keys_file {} does not exist", p.display()),
                    );
                }
            }
            if auth.rate_limit_per_hour == 0 {
                push(
                    at("rate_limit_per_hour"),
                    "rate_limit_per_hour must be at least 1".into(),
                );
            }
        }
        if self.api.max_concurrency == 0 {
            push(
                vec![Key("api"), Key("max_concurrency")],
                "max_concurrency must be at least 1".into(),
            );
        }
        if self.api.body_limit_bytes < 1024 {
            push(
                vec![Key("api"), Key("body_limit_bytes")],
                "body_limit_bytes must be at least 1024".into(),
            );
        }
        if self.api.audit_max_file_bytes < 64 * 1024 {
            push(
                vec![Key("api"), Key("audit_max_file_bytes")],
                "audit_max_file_bytes must be at least 65536".into(),
            );
        }
        if !(1..=100).contains(&self.api.audit_keep_files) {
            push(
                vec![Key("api"), Key("audit_keep_files")],
                "audit_keep_files must be between 1 and 100".into(),
            );
        }
        if self.api.audit_buffer_bytes < 64 * 1024 {
            push(
                vec![Key("api"), Key("audit_buffer_bytes")],
                "audit_buffer_bytes must be at least 65536".into(),
            );
        }
        problems
    }
}

fn embedded_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARDEN_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("warden");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/warden"),
        None => PathBuf::from(".warden"),
    }
}

pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_sns_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    parts.len() == 6 && parts[0] == "arn" && parts[2] == "sns" && !parts[5].is_empty()
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum PathPart {
    Key(&'static str),
    Idx(usize),
}

struct Problem {
    path: Vec<PathPart>,
    message: String,
}

/// Finds where a key path sits in the source, for semantic errors after deserialising.
pub(crate) struct Locator<'a> {
    text: &'a str,
    root: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Locator {
            text,
            root: toml::de::DeTable::parse(text).ok(),
        }
    }

    pub(crate) fn locate(&self, path: &[PathPart]) -> (usize, usize) {
        let Some(root) = &self.root else {
            return (1, 1);
        };
        let mut best = 0usize;
        let mut table: Option<&toml::de::DeTable<'a>> = Some(root.get_ref());
        let mut value: Option<&toml::Spanned<toml::de::DeValue<'a>>> = None;
        for part in path {
            let next = match (part, table, value) {
                (PathPart::Key(k), Some(t), _) => t.get(*k),
                (PathPart::Key(k), None, Some(v)) => v.get_ref().get(*k),
                (PathPart::Idx(i), _, Some(v)) => v.get_ref().get(*i),
                _ => None,
            };
            let Some(next) = next else { break };
            best = next.span().start;
            value = Some(next);
            table = None;
        }
        line_col(self.text, best)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn empty_file_gives_design_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.agent.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.effective_models().len(), 5);
        assert_eq!(c.cloudwatch.flush_interval, Duration::from_secs(60));
        assert_eq!(c.logs.retention_days, 90);
        assert!(c.auth_enabled().is_none());
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse("[agent]\nlisten = \"127.0.0.1:9000\"\nbogus = 1\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (3, 1), "{e}");
        assert!(e.0[0].message.contains("bogus"), "{e}");
    }

    #[test]
    fn semantic_error_points_at_the_value() {
        let text = "[[models]]\nname = \"a\"\nport = 9001\ncommand = [\"x\"]\n\n[[models]]\nname = \"b\"\nport = 9001\ncommand = [\"x\"]\n";
        let e = parse(text).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (8, 8), "{e}");
        assert!(e.0[0].message.contains("duplicate port"));
    }

    #[test]
    fn audit_sizes_are_validated() {
        let c = parse("[api]\naudit_max_file_bytes = 1048576\naudit_keep_files = 3\naudit_buffer_bytes = 262144\n")
            .unwrap();
        assert_eq!(
            (
                c.api.audit_max_file_bytes,
                c.api.audit_keep_files,
                c.api.audit_buffer_bytes
            ),
            (1 << 20, 3, 256 << 10)
        );
        let e = parse(
            "[api]\naudit_max_file_bytes = 100\naudit_keep_files = 0\naudit_buffer_bytes = 10\n",
        )
        .unwrap_err();
        let text = e.to_string();
        for key in [
            "audit_max_file_bytes",
            "audit_keep_files",
            "audit_buffer_bytes",
        ] {
            assert!(text.contains(key), "{key} not reported: {text}");
        }
    }

    #[test]
    fn fleet_and_healing_keys_are_validated() {
        let text = "[agent]\nautoscaling_group = \"\"\nimds_timeout = \"1m\"\n[gpu]\nexpected_count = 0\n[healing]\ngpu_memory_max_bytes = 0\ncooldown = \"0s\"\n";
        let e = parse(text).unwrap_err();
        let at: Vec<(usize, usize)> = e.0.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(at, vec![(2, 21), (3, 16), (5, 18), (7, 24), (8, 12)], "{e}");
        assert!(parse("[healing]\nlatency_p95_max = \"soon\"\n").is_err());
        let ok = parse(
            "[agent]\nautoscaling_group = \"gpu-fleet\"\n[healing]\nlatency_p95_max = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(ok.agent.autoscaling_group.as_deref(), Some("gpu-fleet"));
        assert!(ok.healing.enabled() && !Config::default().healing.enabled());
        assert_eq!(ok.healing.cooldown, Duration::from_secs(600));
        assert!(!ok.agent.autoscaling_group_from_imds);
    }

    #[test]
    fn restart_timings_are_validated() {
        let text = "[[models]]\nname = \"a\"\nport = 9001\ncommand = [\"x\"]\nrestart_initial_backoff = \"2s\"\nrestart_max_backoff = \"1s\"\nrestart_jitter = 1.5\n";
        let e = parse(text).unwrap_err();
        let at: Vec<(usize, usize)> = e.0.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(at, vec![(6, 23), (7, 18)], "{e}");
        let ok = parse(
            "[[models]]\nname = \"a\"\nport = 9001\ncommand = [\"x\"]\nstable_after = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(ok.models[0].stable_after, Duration::from_secs(5));
        assert_eq!(ok.models[0].crash_loop_exits, 5);
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = parse("[notify.slack]\nwebhook_url = \"https://hooks.example/secret-token\"\n")
            .unwrap();
        assert!(!format!("{c:?}").contains("secret-token"));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}

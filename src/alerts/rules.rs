//! Alert rule files: the TOML schema of DESIGN.md "Default alert rules", parsed strictly and
//! validated with `file:line:col` errors (the same shape `warden check-config` prints).
//!
//! `ModelErrorRate` is a derived metric, not a catalogue one: over the rule's window it is
//! 100 × (increase of ModelErrors) / (increase of ModelRequests) per model, i.e. the
//! request-weighted average, so its only reducer is `avg`.

use crate::config::{ConfigError, ConfigErrors, Locator, PathPart, line_col, parse_duration};
use crate::telemetry::catalog::{self, Dim, Kind};
use crate::telemetry::store::MAX_WINDOW;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The derived error-rate metric (see the module doc).
pub const ERROR_RATE_METRIC: &str = "ModelErrorRate";

/// Point events (XIDs) have no "back to normal" event: they resolve after this quiet time.
pub const DEFAULT_RESOLVE_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reducer {
    Last,
    Avg,
    Max,
    Min,
    P95,
    P99,
    Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// The supervisor and GPU events an event rule can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventSource {
    ModelCrashLoop,
    ModelDown,
    GpuLost,
    GpuXid,
    NvmlUnavailable,
    /// A sink's AWS calls are refused (missing IAM permission, rejected credentials).
    AwsAccessDenied,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::ModelCrashLoop => "model-crash-loop",
            EventSource::ModelDown => "model-down",
            EventSource::GpuLost => "gpu-lost",
            EventSource::GpuXid => "gpu-xid",
            EventSource::NvmlUnavailable => "nvml-unavailable",
            EventSource::AwsAccessDenied => "aws-access-denied",
        }
    }
}

/// A `[[rule]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    metric: Option<String>,
    event: Option<EventSource>,
    #[serde(rename = "where", default)]
    filter: BTreeMap<String, String>,
    reducer: Option<Reducer>,
    window: Option<String>,
    op: Option<Op>,
    threshold: Option<f64>,
    #[serde(rename = "for")]
    for_: Option<String>,
    clear_threshold: Option<f64>,
    resolve_after: Option<String>,
    severity: Severity,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    summary: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    /// `[[slo]]` tables: objectives, parsed and validated by `alerts::slo`.
    #[serde(default, rename = "slo")]
    _slo: Vec<toml::Table>,
}

/// What a metric rule measures.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricCondition {
    /// A catalogue name or [`ERROR_RATE_METRIC`].
    pub metric: String,
    /// Dimension filter by CloudWatch dimension name (`GPU`, `Model`, `Host`).
    pub filter: BTreeMap<String, String>,
    pub reducer: Reducer,
    pub window: Duration,
    pub op: Op,
    pub threshold: f64,
    /// Once firing, the alert stays firing while `op(value, clear_threshold)` holds.
    pub clear_threshold: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Metric(MetricCondition),
    Event {
        source: EventSource,
        resolve_after: Duration,
    },
    /// A burn-rate tier over every SLO (generated from the objectives, never written).
    Slo(super::slo::burn::Tier),
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub condition: Condition,
    /// Pending this long before firing; zero fires on the first breaching evaluation.
    pub for_: Duration,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub description: String,
}

impl Rule {
    pub fn threshold(&self) -> f64 {
        match &self.condition {
            Condition::Metric(m) => m.threshold,
            Condition::Event { .. } => 1.0,
            Condition::Slo(tier) => tier.pairs().first().map_or(1.0, |p| p.factor),
        }
    }
}

/// Default `for` when a rule gives none: long enough that one noisy sample does not page.
pub const DEFAULT_FOR: Duration = Duration::from_secs(60);

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses and validates one rule file's text as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Rule>, ConfigErrors> {
    let at = |offset: usize, message: String| {
        let (line, col) = line_col(text, offset);
        ConfigError {
            file: path.to_path_buf(),
            line,
            col,
            message,
        }
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        ConfigErrors(vec![at(offset, e.message().trim().to_string())])
    })?;
    let locator = Locator::new(text);
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.rule.into_iter().enumerate() {
        let mut err = |key: &'static str, message: String| {
            let (line, col) =
                locator.locate(&[PathPart::Key("rule"), PathPart::Idx(i), PathPart::Key(key)]);
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line,
                col,
                message,
            });
        };
        if !valid_rule_name(&r.name) {
            err(
                "name",
                format!(
                    "rule name {:?} must be 1-64 characters of a-z, 0-9 and '-'",
                    r.name
                ),
            );
        } else if let Some(first) = names.insert(r.name.clone(), i) {
            err(
                "name",
                format!("duplicate rule name {:?} (also rule[{first}])", r.name),
            );
        }
        let dur =
            |key: &'static str, v: &Option<String>, err: &mut dyn FnMut(&'static str, String)| {
                v.as_deref().and_then(|t| match parse_duration(t) {
                    Ok(d) => Some(d),
                    Err(m) => {
                        err(key, m);
                        None
                    }
                })
            };
        let for_ = dur("for", &r.for_, &mut err).unwrap_or(DEFAULT_FOR);
        let resolve_after = dur("resolve_after", &r.resolve_after, &mut err);
        let window = dur("window", &r.window, &mut err);
        let condition = match (&r.metric, r.event) {
            (Some(_), Some(_)) => {
                err(
                    "event",
                    "a rule has either `metric` or `event`, not both".into(),
                );
                None
            }
            (None, None) => {
                err(
                    "name",
                    format!("rule {:?} needs `metric` or `event`", r.name),
                );
                None
            }
            (None, Some(source)) => {
                for (key, set) in [
                    ("reducer", r.reducer.is_some()),
                    ("window", r.window.is_some()),
                    ("op", r.op.is_some()),
                    ("threshold", r.threshold.is_some()),
                    ("clear_threshold", r.clear_threshold.is_some()),
                ] {
                    if set {
                        err(key, format!("`{key}` does not apply to an event rule"));
                    }
                }
                if !r.filter.is_empty() {
                    err("where", "`where` does not apply to an event rule".into());
                }
                // Zero would resolve a point event on the evaluation that raised it.
                if resolve_after.is_some_and(|d| d.is_zero()) {
                    err("resolve_after", "resolve_after must be more than 0s".into());
                }
                Some(Condition::Event {
                    source,
                    resolve_after: resolve_after.unwrap_or(DEFAULT_RESOLVE_AFTER),
                })
            }
            (Some(metric), None) => {
                if r.resolve_after.is_some() {
                    err(
                        "resolve_after",
                        "`resolve_after` applies only to event rules".into(),
                    );
                }
                let def = catalog::lookup(metric);
                let derived = metric == ERROR_RATE_METRIC;
                if def.is_none() && !derived {
                    err(
                        "metric",
                        format!(
                            "unknown metric {metric:?} (not in the catalogue, nor {ERROR_RATE_METRIC})"
                        ),
                    );
                }
                let dims: Vec<Dim> = match def {
                    Some(d) => d.dims.to_vec(),
                    None => vec![Dim::Host, Dim::Model],
                };
                for k in r.filter.keys() {
                    if !dims.iter().any(|d| d.cloudwatch() == k) {
                        err(
                            "where",
                            format!(
                                "{metric} has no dimension {k:?} (it has {:?})",
                                dims.iter().map(|d| d.cloudwatch()).collect::<Vec<_>>()
                            ),
                        );
                    }
                }
                let reducer = r.reducer.unwrap_or(Reducer::Last);
                let kind = def.map(|d| d.kind);
                match (reducer, kind) {
                    (Reducer::P95 | Reducer::P99, Some(Kind::Histogram)) => {}
                    (Reducer::P95 | Reducer::P99, _) => err(
                        "reducer",
                        format!("{metric} is not a distribution; p95/p99 need ModelLatency"),
                    ),
                    (_, Some(Kind::Histogram)) => err(
                        "reducer",
                        format!("{metric} is a distribution: use p95 or p99"),
                    ),
                    (Reducer::Avg, None) => {}
                    (_, None) => err(
                        "reducer",
                        format!("{ERROR_RATE_METRIC} is a ratio over the window: use avg"),
                    ),
                    _ => {}
                }
                let window = window.unwrap_or(Duration::from_secs(60));
                if window.is_zero() && r.window.is_some() {
                    err("window", "window must be more than 0s".into());
                }
                if window > MAX_WINDOW {
                    // The store keeps this much history; a longer window would silently
                    // reduce over less than it says.
                    err(
                        "window",
                        format!(
                            "window {} exceeds the {} of history the agent keeps",
                            humantime::format_duration(window),
                            humantime::format_duration(MAX_WINDOW)
                        ),
                    );
                }
                let op = r.op.unwrap_or_else(|| {
                    err("name", format!("metric rule {:?} needs `op`", r.name));
                    Op::Gt
                });
                let threshold = r.threshold.unwrap_or_else(|| {
                    err(
                        "name",
                        format!("metric rule {:?} needs `threshold`", r.name),
                    );
                    0.0
                });
                if let Some(clear) = r.clear_threshold {
                    // Hysteresis must make clearing harder than firing, never easier.
                    let ok = match op {
                        Op::Gt | Op::Ge => clear <= threshold,
                        Op::Lt | Op::Le => clear >= threshold,
                        Op::Eq | Op::Ne => false,
                    };
                    if !ok {
                        err(
                            "clear_threshold",
                            format!(
                                "clear_threshold {clear} must lie on the healthy side of threshold {threshold} for `{}`",
                                op.as_str()
                            ),
                        );
                    }
                }
                Some(Condition::Metric(MetricCondition {
                    metric: metric.clone(),
                    filter: r.filter.clone(),
                    reducer,
                    window,
                    op,
                    threshold,
                    clear_threshold: r.clear_threshold,
                }))
            }
        };
        for key in r.labels.keys() {
            if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || key.is_empty() {
                err(
                    "labels",
                    format!("label name {key:?} must be [A-Za-z0-9_]+"),
                );
            }
        }
        if let Some(condition) = condition {
            rules.push(Rule {
                summary: r
                    .summary
                    .clone()
                    .unwrap_or_else(|| format!("{} is {{{{state}}}}", r.name)),
                description: r.description.clone().unwrap_or_default(),
                name: r.name,
                condition,
                for_,
                severity: r.severity,
                labels: r.labels,
            });
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads and validates a rule file.
pub fn load(path: &Path) -> Result<Vec<Rule>, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// The rules a config selects: its files (resolved against the config file), else the
/// built-in defaults. Names must be unique across files.
pub fn load_for(config: &crate::config::Config) -> Result<Vec<Rule>, ConfigErrors> {
    let Some(files) = &config.alerts.rules else {
        return parse(
            Path::new("<built-in alerts/default.toml>"),
            crate::config::DEFAULT_ALERT_RULES,
        );
    };
    let mut all: Vec<Rule> = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for f in files {
        let path = config.resolve(f);
        match load(&path) {
            Ok(rules) => {
                for r in rules {
                    if let Some(other) = seen.insert(r.name.clone(), path.clone()) {
                        errors.push(ConfigError {
                            file: path.clone(),
                            line: 1,
                            col: 1,
                            message: format!(
                                "rule {:?} is also defined in {}",
                                r.name,
                                other.display()
                            ),
                        });
                    }
                    all.push(r);
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(all)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<Rule>, ConfigErrors> {
        parse(Path::new("r.toml"), text)
    }

    #[test]
    fn the_shipped_defaults_parse() {
        let rules = p(crate::config::DEFAULT_ALERT_RULES).unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        for n in [
            "gpu-utilization-elevated",
            "gpu-utilization-high",
            "api-latency-p95-high",
            "api-latency-p95-critical",
            "error-rate-high",
            "error-rate-critical",
            "model-down",
            "model-crash-loop",
            "gpu-lost",
            "gpu-xid",
            "gpu-temperature-high",
            "aws-access-denied",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let high = rules
            .iter()
            .find(|r| r.name == "gpu-utilization-high")
            .unwrap();
        assert_eq!(high.severity, Severity::Warning);
        assert_eq!(high.for_, Duration::from_secs(300));
        let aws = rules
            .iter()
            .find(|r| r.name == "aws-access-denied")
            .unwrap();
        assert_eq!(aws.severity, Severity::Critical);
        assert!(
            matches!(
                aws.condition,
                Condition::Event {
                    source: EventSource::AwsAccessDenied,
                    ..
                }
            ),
            "{aws:?}"
        );
        assert!(aws.summary.contains("{{Permission}}"), "{}", aws.summary);
    }

    #[test]
    fn event_names_and_zero_durations_are_checked() {
        let rules =
            p("[[rule]]\nname = \"x\"\nevent = \"aws-access-denied\"\nseverity = \"critical\"\n")
                .unwrap();
        assert_eq!(
            rules[0].condition,
            Condition::Event {
                source: EventSource::AwsAccessDenied,
                resolve_after: DEFAULT_RESOLVE_AFTER
            }
        );
        let e =
            p("[[rule]]\nname = \"x\"\nevent = \"aws-acces-denied\"\nseverity = \"critical\"\n")
                .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (3, 9), "{e}");
        assert!(e.0[0].message.contains("aws-access-denied"), "{e}");
        let e = p("[[rule]]\nname = \"x\"\nevent = \"gpu-xid\"\nresolve_after = \"0s\"\nseverity = \"info\"\n")
            .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (4, 17), "{e}");
        assert!(e.0[0].message.contains("more than 0s"), "{e}");
    }

    #[test]
    fn errors_point_into_the_rule_file() {
        let e = p("[[rule]]\nname = \"x\"\nmetric = \"GPUUtilisation\"\nop = \">\"\nthreshold = 1\nseverity = \"info\"\n")
            .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (3, 10), "{e}");
        assert!(e.0[0].message.contains("unknown metric"), "{e}");
        let e =
            p("[[rule]]\nname = \"x\"\nevent = \"gpu-lost\"\nseverity = \"loud\"\n").unwrap_err();
        assert_eq!(e.0[0].line, 4, "{e}");
        let e = p("[[rule]]\nname = \"x\"\nevent = \"gpu-lost\"\nseverity = \"info\"\nbogus = 1\n")
            .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (5, 1), "{e}");
        let e = p("[[rule]]\nname = \"x\"\nmetric = \"GPUUtilization\"\nop = \">\"\nthreshold = 90\nclear_threshold = 95\nseverity = \"info\"\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (6, 19), "{e}");
        let e = p("[[rule]]\nname = \"x\"\nmetric = \"GPUUtilization\"\nreducer = \"p95\"\nop = \">\"\nthreshold = 90\nseverity = \"info\"\n").unwrap_err();
        assert!(e.0[0].message.contains("distribution"), "{e}");
        let e = p("[[rule]]\nname = \"x\"\nevent = \"gpu-lost\"\nseverity = \"info\"\n[[rule]]\nname = \"x\"\nevent = \"gpu-xid\"\nseverity = \"info\"\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (6, 8), "{e}");
    }

    #[test]
    fn windows_longer_than_the_retained_history_are_rejected_at_their_line() {
        let rule = |w: &str| {
            format!(
                "[[rule]]\nname = \"x\"\nmetric = \"GPUUtilization\"\nreducer = \"avg\"\nwindow = \"{w}\"\nop = \">\"\nthreshold = 90\nseverity = \"info\"\n"
            )
        };
        assert!(
            p(&rule("10m")).is_ok(),
            "the retained span itself is allowed"
        );
        let e = p(&rule("11m")).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (5, 10), "{e}");
        assert!(e.0[0].message.contains("exceeds"), "{e}");
    }
}

//! Service level objectives as data: the `[[slo]]` tables of rule files and `slos/*.toml`,
//! validated with `file:line:col` errors, and the platform defaults when none are configured.
//!
//! The rest of the folder turns objectives into error budgets and burn-rate alerts:
//! `budget` (long-window good/total accounting), `burn` (multi-window burn rates and the
//! page/ticket tiers), `engine` (counters in, budgets, gauges and alert observations out),
//! `persist` (the state-dir file that survives restarts) and `alarms` (the same tiers as
//! CloudWatch metric-math and composite alarms).
//!
//! ```toml
//! [[slo]]
//! name = "availability"          # unique per model; [a-z0-9-]
//! model = "clash-detector"       # absent: the API as a whole (every model's calls summed)
//! kind = "availability"          # availability: 5xx and timeouts are bad calls
//! objective = 99.9               # percent of good calls
//! window = "30d"                 # the budget's span (1d ..= 90d)
//!
//! [[slo]]
//! name = "latency"
//! kind = "latency"               # successful calls slower than `threshold` are bad
//! threshold = "2s"
//! objective = 95                 # "p95 < 2 s"
//! ```

pub mod alarms;
pub mod budget;
pub mod burn;
pub mod engine;
pub mod persist;

use crate::config::{ConfigError, ConfigErrors, Locator, PathPart, line_col, parse_duration};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use engine::{RequestCounters, SloEngine, SloStatus};

/// The `Model` label of an objective over the whole API (every model's calls summed).
pub const ALL_MODELS: &str = "all";

/// The platform's default budget span.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// Shortest and longest budget spans: the ticket tier looks back 3 days, and hourly buckets
/// for 90 days stay small (2,160 per objective).
pub const MIN_WINDOW: Duration = Duration::from_secs(86_400);
pub const MAX_WINDOW: Duration = Duration::from_secs(90 * 86_400);

/// Fewer calls than this in a window say nothing about a burn rate: one failure among the
/// first ten calls is not a 100× burn. Alerts need this many calls in each of their windows.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

/// What counts as a bad call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SloKind {
    /// Good: the model answered (status < 500); bad: 5xx and timeouts. Client errors (4xx)
    /// are the caller's, not the model's, as for `ModelErrors`.
    Availability,
    /// Good: a successful call answered within `threshold_ms`; failures do not count here.
    Latency { threshold_ms: u64 },
}

impl SloKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SloKind::Availability => "availability",
            SloKind::Latency { .. } => "latency",
        }
    }
}

/// One validated objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub name: String,
    /// A model, or [`ALL_MODELS`].
    pub model: String,
    pub kind: SloKind,
    /// Fraction of good calls promised, e.g. 0.999.
    pub target: f64,
    pub window: Duration,
    pub min_requests: u64,
}

impl Objective {
    /// Stable identity (state file keys, alert labels): `model/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.model, self.name)
    }

    /// The error budget as a fraction of calls (1 - target).
    pub fn budget_fraction(&self) -> f64 {
        1.0 - self.target
    }

    /// "99.9 % availability over 30d" for messages and the console.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            SloKind::Availability => "availability".to_string(),
            SloKind::Latency { threshold_ms } => format!(
                "of successful calls under {}",
                span(Duration::from_millis(threshold_ms))
            ),
        };
        format!(
            "{} % {what} over {}",
            decimal(self.target * 100.0),
            span(self.window)
        )
    }
}

/// The two alert rules the tiers raise, one instance per objective (labels Model, SLO,
/// tier). `for` is zero: the long window already is the patience; the short one resolves.
pub fn alert_rules() -> Vec<super::rules::Rule> {
    burn::Tier::ALL
        .iter()
        .map(|tier| super::rules::Rule {
            name: tier.rule_name().to_string(),
            condition: super::rules::Condition::Slo(*tier),
            for_: Duration::ZERO,
            severity: tier.severity(),
            labels: [("tier".to_string(), tier.as_str().to_string())].into(),
            summary: String::new(),
            description: match tier {
                burn::Tier::Page => "Fast error-budget burn (14.4× over 1h and 5m, or 6× over 6h and 30m): at this rate the budget is gone in days.".into(),
                burn::Tier::Ticket => "Slow error-budget burn (1× over 3d and 6h): the budget will not last its window.".into(),
            },
        })
        .collect()
}

/// A ratio or percentage written plainly: up to six decimals, no float noise (0.001, 99.95).
pub fn decimal(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A span the way SLOs are written: "30d", "6h", "5m", "2s", "250ms".
pub fn span(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// The platform's defaults for every supervised model: 99.9 % availability over 30 days and
/// p95 of successful calls under 2 s (95 % under 2 s) over 30 days.
pub fn defaults(models: &[String]) -> Vec<Objective> {
    models
        .iter()
        .flat_map(|m| {
            [
                Objective {
                    name: "availability".into(),
                    model: m.clone(),
                    kind: SloKind::Availability,
                    target: 0.999,
                    window: DEFAULT_WINDOW,
                    min_requests: DEFAULT_MIN_REQUESTS,
                },
                Objective {
                    name: "latency".into(),
                    model: m.clone(),
                    kind: SloKind::Latency {
                        threshold_ms: 2_000,
                    },
                    target: 0.95,
                    window: DEFAULT_WINDOW,
                    min_requests: DEFAULT_MIN_REQUESTS,
                },
            ]
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Availability,
    Latency,
}

/// A `[[slo]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    name: String,
    model: Option<String>,
    kind: RawKind,
    objective: f64,
    window: Option<String>,
    threshold: Option<String>,
    min_requests: Option<u64>,
}

/// A rule file: its `[[rule]]` tables are the rule parser's.
#[derive(Debug, Deserialize)]
struct RawRuleFile {
    #[serde(default)]
    slo: Vec<RawSlo>,
}

/// A `slos/*.toml` file holds objectives only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSloFile {
    #[serde(default)]
    slo: Vec<RawSlo>,
}

fn valid_name(name: &str) -> bool {
    crate::config::valid_model_name(name)
}

/// Parses the `[[slo]]` tables of one file's text as if read from `path`; `rule_file` lets
/// `[[rule]]` tables through (a rule file), else only `slo` is allowed (`slos/*.toml`).
/// `models` are the supervised models an objective may name.
pub fn parse(
    path: &Path,
    text: &str,
    rule_file: bool,
    models: &[String],
) -> Result<Vec<Objective>, ConfigErrors> {
    let at = |offset: usize, message: String| {
        let (line, col) = line_col(text, offset);
        ConfigError {
            file: path.to_path_buf(),
            line,
            col,
            message,
        }
    };
    let syntax = |e: toml::de::Error| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        ConfigErrors(vec![at(offset, e.message().trim().to_string())])
    };
    let raw = if rule_file {
        toml::from_str::<RawRuleFile>(text).map_err(syntax)?.slo
    } else {
        toml::from_str::<RawSloFile>(text).map_err(syntax)?.slo
    };
    let locator = Locator::new(text);
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let mut err = |key: &'static str, message: String| {
            let (line, col) =
                locator.locate(&[PathPart::Key("slo"), PathPart::Idx(i), PathPart::Key(key)]);
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line,
                col,
                message,
            });
        };
        if !valid_name(&r.name) {
            err(
                "name",
                format!(
                    "SLO name {:?} must be 1-64 characters of a-z, 0-9 and '-'",
                    r.name
                ),
            );
        }
        let model = r.model.clone().unwrap_or_else(|| ALL_MODELS.to_string());
        if r.model.is_some() && !models.contains(&model) {
            err(
                "model",
                format!(
                    "unknown model {model:?} (supervised: {})",
                    models.join(", ")
                ),
            );
        }
        // Below 50 % the "budget" is most calls; at 100 % there is none to burn.
        if !(r.objective.is_finite() && r.objective >= 50.0 && r.objective < 100.0) {
            err(
                "objective",
                format!(
                    "objective {} must be a percentage in [50, 100), e.g. 99.9",
                    r.objective
                ),
            );
        }
        let window = match r.window.as_deref().map(parse_duration) {
            None => DEFAULT_WINDOW,
            Some(Ok(d)) if (MIN_WINDOW..=MAX_WINDOW).contains(&d) => d,
            Some(Ok(d)) => {
                err(
                    "window",
                    format!(
                        "window {} must be between 1d and 90d",
                        humantime::format_duration(d)
                    ),
                );
                DEFAULT_WINDOW
            }
            Some(Err(m)) => {
                err("window", m);
                DEFAULT_WINDOW
            }
        };
        let kind = match (r.kind, r.threshold.as_deref()) {
            (RawKind::Availability, None) => SloKind::Availability,
            (RawKind::Availability, Some(_)) => {
                err(
                    "threshold",
                    "`threshold` applies only to a latency SLO".into(),
                );
                SloKind::Availability
            }
            (RawKind::Latency, None) => {
                err(
                    "kind",
                    "a latency SLO needs `threshold` (e.g. \"2s\")".into(),
                );
                SloKind::Latency { threshold_ms: 0 }
            }
            (RawKind::Latency, Some(t)) => match parse_duration(t) {
                Ok(d) if d >= Duration::from_millis(1) => SloKind::Latency {
                    threshold_ms: d.as_millis() as u64,
                },
                Ok(_) => {
                    err("threshold", "threshold must be at least 1ms".into());
                    SloKind::Latency { threshold_ms: 0 }
                }
                Err(m) => {
                    err("threshold", m);
                    SloKind::Latency { threshold_ms: 0 }
                }
            },
        };
        if r.min_requests == Some(0) {
            err("min_requests", "min_requests must be at least 1".into());
        }
        out.push(Objective {
            name: r.name,
            model,
            kind,
            target: r.objective / 100.0,
            window,
            min_requests: r.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read: {e}"),
        }])
    })
}

/// The `slos/*.toml` files next to the config file, in name order (none for the embedded
/// config, which has no directory of its own).
pub fn slo_files(config: &crate::config::Config) -> Vec<PathBuf> {
    if config.source.is_none() {
        return Vec::new();
    }
    let dir = config.resolve(Path::new("slos"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The objectives a config selects: every `[[slo]]` of its rule files and `slos/*.toml`,
/// else [`defaults`] for every supervised model. `(model, name)` is unique across files.
pub fn load_for(config: &crate::config::Config) -> Result<Vec<Objective>, ConfigErrors> {
    let models: Vec<String> = config
        .effective_models()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let mut sources: Vec<(PathBuf, bool)> = config
        .alerts
        .rules
        .iter()
        .flatten()
        .map(|f| (config.resolve(f), true))
        // A missing rule file is the rule loader's error to report.
        .filter(|(p, _)| p.exists())
        .collect();
    sources.extend(slo_files(config).into_iter().map(|p| (p, false)));
    let mut all = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for (path, rule_file) in sources {
        let parsed = read(&path).and_then(|text| parse(&path, &text, rule_file, &models));
        match parsed {
            Ok(objectives) => {
                for o in objectives {
                    if let Some(other) = seen.insert(o.id(), path.clone()) {
                        errors.push(ConfigError {
                            file: path.clone(),
                            line: 1,
                            col: 1,
                            message: format!(
                                "SLO {:?} for {} is also defined in {}",
                                o.name,
                                o.model,
                                other.display()
                            ),
                        });
                    }
                    all.push(o);
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    if all.is_empty() {
        return Ok(defaults(&models));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<String> {
        vec!["clash-detector".into(), "risk-analyzer".into()]
    }

    fn p(text: &str) -> Result<Vec<Objective>, ConfigErrors> {
        parse(Path::new("s.toml"), text, false, &models())
    }

    #[test]
    fn defaults_cover_every_model_with_the_platform_objectives() {
        let d = defaults(&models());
        assert_eq!(d.len(), 4);
        let a = &d[0];
        assert_eq!(
            (a.model.as_str(), a.name.as_str()),
            ("clash-detector", "availability")
        );
        assert!((a.target - 0.999).abs() < 1e-12);
        assert_eq!(a.window, DEFAULT_WINDOW);
        assert_eq!(
            d[1].kind,
            SloKind::Latency {
                threshold_ms: 2_000
            }
        );
        assert!((d[1].target - 0.95).abs() < 1e-12);
        assert_eq!(a.describe(), "99.9 % availability over 30d");
    }

    #[test]
    fn a_full_objective_parses() {
        let o = p("[[slo]]\nname = \"fast\"\nmodel = \"risk-analyzer\"\nkind = \"latency\"\nthreshold = \"200ms\"\nobjective = 95\nwindow = \"7d\"\nmin_requests = 10\n\n[[slo]]\nname = \"api\"\nkind = \"availability\"\nobjective = 99.9\n")
            .unwrap();
        assert_eq!(o[0].kind, SloKind::Latency { threshold_ms: 200 });
        assert_eq!(o[0].window, Duration::from_secs(7 * 86_400));
        assert_eq!(o[0].min_requests, 10);
        assert_eq!(o[0].id(), "risk-analyzer/fast");
        assert_eq!(o[1].model, ALL_MODELS);
        assert_eq!(o[1].window, DEFAULT_WINDOW);
    }

    #[test]
    fn errors_point_at_the_key() {
        let e = p("[[slo]]\nname = \"a\"\nkind = \"availability\"\nobjective = 100\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (4, 13), "{e}");
        let e =
            p("[[slo]]\nname = \"a\"\nmodel = \"nope\"\nkind = \"availability\"\nobjective = 99\n")
                .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (3, 9), "{e}");
        assert!(e.0[0].message.contains("unknown model"), "{e}");
        let e = p("[[slo]]\nname = \"a\"\nkind = \"latency\"\nobjective = 99\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (3, 8), "{e}");
        let e =
            p("[[slo]]\nname = \"a\"\nkind = \"availability\"\nobjective = 99\nwindow = \"1h\"\n")
                .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (5, 10), "{e}");
        let e = p("[[slo]]\nname = \"a\"\nkind = \"speed\"\nobjective = 99\n").unwrap_err();
        assert_eq!(e.0[0].line, 3, "{e}");
        let e = p("[[slo]]\nname = \"a\"\nkind = \"availability\"\nobjective = 99\nbogus = 1\n")
            .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].col), (5, 1), "{e}");
        // A rule in an SLO file is a mistake; in a rule file it belongs to the rule parser.
        let text = "[[rule]]\nname = \"x\"\nevent = \"gpu-lost\"\nseverity = \"info\"\n";
        assert!(p(text).is_err());
        assert!(
            parse(Path::new("r.toml"), text, true, &models())
                .unwrap()
                .is_empty()
        );
    }
}

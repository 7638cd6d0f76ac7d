//! `warden alarms render|push`: the alert rules as CloudWatch alarms (PutMetricAlarm), the
//! slower fleet-side backstop that still pages when a host's agent itself is gone.
//!
//! Mapping: one alarm per rule and dimension set of the host (each GPU, each model). Reducers
//! become statistics (avg → Average, max → Maximum, min → Minimum, last → Average (CloudWatch
//! has no "last"), p95/p99 → extended statistics, rate → Sum with the threshold scaled to the
//! period); `window` becomes the period (a multiple of 60 s); `for` the number of evaluation
//! periods; `ModelErrorRate` is metric math over ModelErrors/ModelRequests. Event rules with
//! a metric behind them map too (model-down → ModelUp < 1, gpu-lost → GPULost ≥ 1,
//! nvml-unavailable → GPUAvailable < 1, missing data breaching for the first and last);
//! crash-loop and XID rules are host-only and listed as skipped. `clear_threshold` has no
//! CloudWatch equivalent. Actions: the severity's SNS topic for ALARM and OK.

use super::AlertsError;
use super::rules::{Condition, EventSource, Op, Reducer, Rule, Severity};
use crate::config::Config;
use crate::telemetry::catalog::{self, Dim};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmDimension {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmMetric {
    pub namespace: String,
    pub metric_name: String,
    pub dimensions: Vec<AlarmDimension>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricStat {
    pub metric: AlarmMetric,
    pub period: i32,
    pub stat: String,
}

/// One entry of PutMetricAlarm's `Metrics` (metric math).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricQuery {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_stat: Option<MetricStat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub return_data: bool,
}

/// A PutMetricAlarm request, field names as the API spells them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmDefinition {
    pub alarm_name: String,
    pub alarm_description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<AlarmDimension>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_statistic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricQuery>,
    pub evaluation_periods: i32,
    pub datapoints_to_alarm: i32,
    pub threshold: f64,
    pub comparison_operator: String,
    pub treat_missing_data: String,
    pub alarm_actions: Vec<String>,
    #[serde(rename = "OKActions")]
    pub ok_actions: Vec<String>,
}

/// Everything rendered, plus the rules that have no alarm and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmSet {
    pub alarms: Vec<AlarmDefinition>,
    pub skipped: Vec<(String, String)>,
}

/// Whose alarms to render: the host and how many GPUs it has.
#[derive(Debug, Clone)]
pub struct AlarmTarget {
    pub host: String,
    pub gpus: u32,
}

fn comparison(op: Op) -> Option<&'static str> {
    match op {
        Op::Gt => Some("GreaterThanThreshold"),
        Op::Ge => Some("GreaterThanOrEqualToThreshold"),
        Op::Lt => Some("LessThanThreshold"),
        Op::Le => Some("LessThanOrEqualToThreshold"),
        Op::Eq | Op::Ne => None,
    }
}

/// A window as a CloudWatch period: whole minutes, at least one.
fn period_of(window: Duration) -> i32 {
    let secs = window.as_secs().max(60);
    (secs.div_ceil(60) * 60).min(86_400) as i32
}

fn topic(config: &Config, severity: Severity) -> Vec<String> {
    let sns = config.notify.sns.as_ref();
    let arn = match severity {
        Severity::Info => sns.and_then(|s| s.info_topic_arn.clone()),
        Severity::Warning => sns.and_then(|s| s.warning_topic_arn.clone()),
        Severity::Critical => sns.and_then(|s| s.critical_topic_arn.clone()),
    };
    arn.into_iter().collect()
}

/// Every dimension set of `dims` on this host, filtered by the rule's `where`.
fn instances(
    dims: &[Dim],
    filter: &std::collections::BTreeMap<String, String>,
    target: &AlarmTarget,
    models: &[String],
) -> Option<Vec<Vec<AlarmDimension>>> {
    let mut sets: Vec<Vec<AlarmDimension>> = vec![Vec::new()];
    for d in dims {
        let values: Vec<String> = match d {
            Dim::Host => vec![target.host.clone()],
            Dim::Gpu => (0..target.gpus).map(|g| g.to_string()).collect(),
            Dim::Model => models.to_vec(),
            // XID codes, drop sinks and reasons are only known when they happen.
            Dim::Code | Dim::Sink | Dim::Reason | Dim::Slo | Dim::Window => return None,
        };
        let values: Vec<String> = values
            .into_iter()
            .filter(|v| filter.get(d.cloudwatch()).is_none_or(|f| f == v))
            .collect();
        sets = sets
            .into_iter()
            .flat_map(|s| {
                values.iter().map(move |v| {
                    let mut s = s.clone();
                    s.push(AlarmDimension {
                        name: d.cloudwatch().to_string(),
                        value: v.clone(),
                    });
                    s
                })
            })
            .collect();
    }
    Some(sets)
}

/// The rule's summary with this alarm's dimensions filled in (the value is not known here).
fn describe(template: &str, dims: &[AlarmDimension], threshold: f64) -> String {
    let mut s = template
        .replace("{{value}}", "value")
        .replace("{{threshold}}", &super::evaluator::format_value(threshold));
    for d in dims {
        s = s.replace(&format!("{{{{{}}}}}", d.name), &d.value);
    }
    s
}

fn suffix(dims: &[AlarmDimension]) -> String {
    dims.iter()
        .filter(|d| d.name != "Host")
        .map(|d| match d.name.as_str() {
            "GPU" => format!("-gpu{}", d.value),
            _ => format!("-{}", d.value),
        })
        .collect()
}

/// The alarm set for `rules` on `target` (deterministic: rule order, then dimension order).
pub fn render(rules: &[Rule], config: &Config, target: &AlarmTarget) -> AlarmSet {
    let namespace = config.cloudwatch.namespace.clone();
    let models: Vec<String> = config
        .effective_models()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let mut alarms = Vec::new();
    let mut skipped = Vec::new();
    for rule in rules {
        // (metric, statistic or extended, op, threshold, missing data, period, for)
        let (metric, reducer, op, threshold, missing, window) = match &rule.condition {
            Condition::Metric(m) => (
                m.metric.clone(),
                m.reducer,
                m.op,
                m.threshold,
                "notBreaching",
                m.window,
            ),
            Condition::Event { source, .. } => match source {
                EventSource::ModelDown => (
                    "ModelUp".to_string(),
                    Reducer::Min,
                    Op::Lt,
                    1.0,
                    "breaching",
                    Duration::from_secs(60),
                ),
                EventSource::GpuLost => (
                    "GPULost".to_string(),
                    Reducer::Max,
                    Op::Ge,
                    1.0,
                    "notBreaching",
                    Duration::from_secs(60),
                ),
                EventSource::NvmlUnavailable => (
                    "GPUAvailable".to_string(),
                    Reducer::Min,
                    Op::Lt,
                    1.0,
                    "breaching",
                    Duration::from_secs(60),
                ),
                EventSource::ModelCrashLoop
                | EventSource::GpuXid
                | EventSource::AwsAccessDenied => {
                    skipped.push((
                        rule.name.clone(),
                        format!("{} is detected on the host only", source.as_str()),
                    ));
                    continue;
                }
            },
            // The SLO tiers have alarms of their own (`slo::alarms`).
            Condition::Slo(_) => continue,
        };
        let Some(cmp) = comparison(op) else {
            skipped.push((
                rule.name.clone(),
                format!("CloudWatch has no `{}` comparison", op.as_str()),
            ));
            continue;
        };
        let period = period_of(window);
        let for_secs = rule.for_.as_secs().min(86_400) as i32;
        let periods = ((for_secs + period - 1) / period).max(1);
        let derived = metric == super::rules::ERROR_RATE_METRIC;
        let dims: Vec<Dim> = if derived {
            vec![Dim::Host, Dim::Model]
        } else {
            match catalog::lookup(&metric) {
                Some(d) => d.dims.to_vec(),
                None => {
                    skipped.push((rule.name.clone(), format!("unknown metric {metric}")));
                    continue;
                }
            }
        };
        let filter = match &rule.condition {
            Condition::Metric(m) => m.filter.clone(),
            Condition::Event { .. } | Condition::Slo(_) => Default::default(),
        };
        let Some(sets) = instances(&dims, &filter, target, &models) else {
            skipped.push((
                rule.name.clone(),
                "per-code XID metrics have no fixed dimensions".into(),
            ));
            continue;
        };
        let (statistic, extended, threshold) = match reducer {
            Reducer::Avg | Reducer::Last => (Some("Average"), None, threshold),
            Reducer::Max => (Some("Maximum"), None, threshold),
            Reducer::Min => (Some("Minimum"), None, threshold),
            Reducer::P95 => (None, Some("p95"), threshold),
            Reducer::P99 => (None, Some("p99"), threshold),
            Reducer::Rate => (Some("Sum"), None, threshold * period as f64),
        };
        let actions = topic(config, rule.severity);
        for dims in sets {
            let mut a = AlarmDefinition {
                alarm_name: format!("warden-{}-{}{}", target.host, rule.name, suffix(&dims)),
                alarm_description: format!(
                    "{} ({}, from warden rule {}; runbook {}#{})",
                    describe(&rule.summary, &dims, rule.threshold()),
                    rule.severity.as_str(),
                    rule.name,
                    config.alerts.runbook_url,
                    rule.name
                ),
                namespace: Some(namespace.clone()),
                metric_name: Some(metric.clone()),
                dimensions: dims.clone(),
                statistic: statistic.map(str::to_string),
                extended_statistic: extended.map(str::to_string),
                period: Some(period),
                metrics: Vec::new(),
                evaluation_periods: periods,
                datapoints_to_alarm: periods,
                threshold,
                comparison_operator: cmp.to_string(),
                treat_missing_data: missing.to_string(),
                alarm_actions: actions.clone(),
                ok_actions: actions.clone(),
            };
            if derived {
                let stat = |id: &str, name: &str| MetricQuery {
                    id: id.to_string(),
                    metric_stat: Some(MetricStat {
                        metric: AlarmMetric {
                            namespace: namespace.clone(),
                            metric_name: name.to_string(),
                            dimensions: dims.clone(),
                        },
                        period,
                        stat: "Sum".into(),
                    }),
                    expression: None,
                    label: None,
                    return_data: false,
                };
                a.namespace = None;
                a.metric_name = None;
                a.dimensions = Vec::new();
                a.statistic = None;
                a.period = None;
                a.metrics = vec![
                    stat("errors", "ModelErrors"),
                    stat("requests", "ModelRequests"),
                    MetricQuery {
                        id: "rate".into(),
                        metric_stat: None,
                        expression: Some("100 * errors / requests".into()),
                        label: Some(metric.clone()),
                        return_data: true,
                    },
                ];
            }
            alarms.push(a);
        }
    }
    AlarmSet { alarms, skipped }
}

/// `set` plus the SLO burn-rate alarms of `objectives` (see `slo::alarms`).
pub fn with_slos(
    mut set: AlarmSet,
    objectives: &[super::slo::Objective],
    config: &Config,
    target: &AlarmTarget,
) -> AlarmSet {
    set.alarms
        .extend(super::slo::alarms::render(objectives, config, target));
    set
}

/// The rendered JSON (pretty, stable field order, trailing newline): what `render` prints
/// and what the committed `alerts/alarms.json` must equal.
pub fn render_json(set: &AlarmSet) -> String {
    let mut s = serde_json::to_string_pretty(set).unwrap_or_default();
    s.push('\n');
    s
}

fn sdk_dims(dims: &[AlarmDimension]) -> Vec<aws_sdk_cloudwatch::types::Dimension> {
    dims.iter()
        .map(|d| {
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name(&d.name)
                .value(&d.value)
                .build()
        })
        .collect()
}

/// PutMetricAlarm for every alarm; returns how many were written.
pub async fn push(sdk: &aws_config::SdkConfig, set: &AlarmSet) -> Result<usize, AlertsError> {
    use aws_sdk_cloudwatch::types::{
        ComparisonOperator, Metric, MetricDataQuery, MetricStat as SdkStat, Statistic,
    };
    let client = aws_sdk_cloudwatch::Client::new(sdk);
    for a in &set.alarms {
        let mut req = client
            .put_metric_alarm()
            .alarm_name(&a.alarm_name)
            .alarm_description(&a.alarm_description)
            .evaluation_periods(a.evaluation_periods)
            .datapoints_to_alarm(a.datapoints_to_alarm)
            .threshold(a.threshold)
            .comparison_operator(ComparisonOperator::from(a.comparison_operator.as_str()))
            .treat_missing_data(&a.treat_missing_data)
            .set_alarm_actions(Some(a.alarm_actions.clone()))
            .set_ok_actions(Some(a.ok_actions.clone()));
        if let Some(ns) = &a.namespace {
            req = req.namespace(ns);
        }
        if let Some(m) = &a.metric_name {
            req = req.metric_name(m);
        }
        if !a.dimensions.is_empty() {
            req = req.set_dimensions(Some(sdk_dims(&a.dimensions)));
        }
        if let Some(s) = &a.statistic {
            req = req.statistic(Statistic::from(s.as_str()));
        }
        if let Some(s) = &a.extended_statistic {
            req = req.extended_statistic(s);
        }
        if let Some(p) = a.period {
            req = req.period(p);
        }
        for q in &a.metrics {
            let mut b = MetricDataQuery::builder()
                .id(&q.id)
                .return_data(q.return_data);
            if let Some(e) = &q.expression {
                b = b.expression(e);
            }
            if let Some(l) = &q.label {
                b = b.label(l);
            }
            if let Some(ms) = &q.metric_stat {
                b = b.metric_stat(
                    SdkStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace(&ms.metric.namespace)
                                .metric_name(&ms.metric.metric_name)
                                .set_dimensions(Some(sdk_dims(&ms.metric.dimensions)))
                                .build(),
                        )
                        .period(ms.period)
                        .stat(&ms.stat)
                        .build(),
                );
            }
            req = req.metrics(b.build());
        }
        req.send().await.map_err(|e| {
            AlertsError::Alarms(format!(
                "PutMetricAlarm {}: {}",
                a.alarm_name,
                aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
            ))
        })?;
    }
    Ok(set.alarms.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_map_to_statistics_periods_and_topics() {
        let config = Config::parse(
            std::path::Path::new("t.toml"),
            "[notify.sns]\nwarning_topic_arn = \"arn:aws:sns:us-east-1:1:w\"\ncritical_topic_arn = \"arn:aws:sns:us-east-1:1:c\"\n",
        )
        .unwrap();
        let rules = super::super::rules::load_for(&config).unwrap();
        let set = render(
            &rules,
            &config,
            &AlarmTarget {
                host: "h".into(),
                gpus: 2,
            },
        );
        let get = |n: &str| set.alarms.iter().find(|a| a.alarm_name == n).unwrap();
        let gpu = get("warden-h-gpu-utilization-high-gpu1");
        assert_eq!(gpu.statistic.as_deref(), Some("Average"));
        assert_eq!((gpu.period, gpu.evaluation_periods), (Some(60), 5));
        assert_eq!(gpu.alarm_actions, vec!["arn:aws:sns:us-east-1:1:w"]);
        let p95 = get("warden-h-api-latency-p95-critical-clash-detector");
        assert_eq!(p95.extended_statistic.as_deref(), Some("p95"));
        assert_eq!(p95.statistic, None);
        assert_eq!(p95.alarm_actions, vec!["arn:aws:sns:us-east-1:1:c"]);
        let err = get("warden-h-error-rate-critical-risk-analyzer");
        assert_eq!(err.metrics.len(), 3);
        let down = get("warden-h-model-down-risk-analyzer");
        assert_eq!(down.treat_missing_data, "breaching");
        assert!(set.skipped.iter().any(|(r, _)| r == "model-crash-loop"));
        assert!(
            get("warden-h-gpu-utilization-elevated-gpu0")
                .alarm_actions
                .is_empty()
        );
        assert_eq!(
            render_json(&set),
            render_json(&render(
                &rules,
                &config,
                &AlarmTarget {
                    host: "h".into(),
                    gpus: 2
                }
            ))
        );
    }
}

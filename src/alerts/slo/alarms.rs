//! The SLO burn-rate tiers as CloudWatch alarms, for `warden alarms render|push`: the fleet
//! view of the same page/ticket decisions the agent makes, computed from the shipped
//! counters so they still fire when the agent itself is gone.
//!
//! A metric-math alarm's metrics must share one period, so each window of a tier is its own
//! alarm (no actions) computing the burn rate over that window, and one composite alarm per
//! tier and objective combines them as the workbook does —
//! `(ALARM(1h) AND ALARM(5m)) OR (ALARM(6h) AND ALARM(30m))` pages, `ALARM(3d) AND ALARM(6h)`
//! tickets — and carries the severity's SNS topic.
//!
//! Burn rate = bad fraction / (1 - target). Availability: `ModelErrors / ModelRequests`.
//! Latency: `1 - TC(:threshold) / SampleCount` of `ModelLatency` — CloudWatch sees every
//! call's latency, failures included, where the agent counts successful calls only.
//! CloudWatch periods stop at one day: the 3 d window is three consecutive daily periods
//! each at or above 1×. The whole-API objective (`model` absent) sums every model's counters.

use super::burn::{Tier, WindowPair};
use super::{ALL_MODELS, Objective, SloKind, span};
use crate::alerts::alarms::{
    AlarmDefinition, AlarmDimension, AlarmMetric, AlarmTarget, MetricQuery, MetricStat,
};
use crate::config::Config;
use serde::Serialize;
use std::time::Duration;

/// A PutCompositeAlarm request, field names as the API spells them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CompositeAlarm {
    pub alarm_name: String,
    pub alarm_description: String,
    pub alarm_rule: String,
    pub alarm_actions: Vec<String>,
    #[serde(rename = "OKActions")]
    pub ok_actions: Vec<String>,
}

/// Alarms per objective and tier window, and the composites that page or ticket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SloAlarms {
    pub alarms: Vec<AlarmDefinition>,
    pub composites: Vec<CompositeAlarm>,
    pub skipped: Vec<(String, String)>,
}

/// One CloudWatch period per window (≤ 1 day), and how many of them make the window.
fn periods(window: Duration) -> (i32, i32) {
    let secs = window.as_secs().max(60);
    if secs <= 86_400 {
        ((secs.div_ceil(60) * 60) as i32, 1)
    } else {
        (86_400, secs.div_ceil(86_400) as i32)
    }
}

fn topic(config: &Config, tier: Tier) -> Vec<String> {
    let sns = config.notify.sns.as_ref();
    match tier {
        Tier::Page => sns.and_then(|s| s.critical_topic_arn.clone()),
        Tier::Ticket => sns.and_then(|s| s.warning_topic_arn.clone()),
    }
    .into_iter()
    .collect()
}

/// The metrics and expression computing `o`'s burn rate at `period`.
fn burn_queries(
    o: &Objective,
    namespace: &str,
    host: &str,
    models: &[String],
    period: i32,
) -> Vec<MetricQuery> {
    let dims = |model: &str| {
        vec![
            AlarmDimension {
                name: "Host".into(),
                value: host.to_string(),
            },
            AlarmDimension {
                name: "Model".into(),
                value: model.to_string(),
            },
        ]
    };
    let stat = |id: String, metric: &str, model: &str, stat: String| MetricQuery {
        id,
        metric_stat: Some(MetricStat {
            metric: AlarmMetric {
                namespace: namespace.to_string(),
                metric_name: metric.to_string(),
                dimensions: dims(model),
            },
            period,
            stat,
        }),
        expression: None,
        label: None,
        return_data: false,
    };
    let scope: Vec<&str> = if o.model == ALL_MODELS {
        models.iter().map(String::as_str).collect()
    } else {
        vec![o.model.as_str()]
    };
    let (metric_a, stat_a, metric_b, stat_b, bad) = match o.kind {
        SloKind::Availability => (
            "ModelErrors",
            "Sum".to_string(),
            "ModelRequests",
            "Sum".to_string(),
            "a / b",
        ),
        SloKind::Latency { threshold_ms } => (
            "ModelLatency",
            format!("TC(:{threshold_ms})"),
            "ModelLatency",
            "SampleCount".to_string(),
            "1 - a / b",
        ),
    };
    let mut q = Vec::new();
    for (i, m) in scope.iter().enumerate() {
        q.push(stat(format!("a{i}"), metric_a, m, stat_a.clone()));
        q.push(stat(format!("b{i}"), metric_b, m, stat_b.clone()));
    }
    let sum = |p: &str| {
        (0..scope.len())
            .map(|i| format!("{p}{i}"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let expr = bad
        .replace('a', &format!("({})", sum("a")))
        .replace('b', &format!("({})", sum("b")));
    q.push(MetricQuery {
        id: "burn".into(),
        metric_stat: None,
        expression: Some(format!(
            "({expr}) / {}",
            super::decimal(o.budget_fraction())
        )),
        label: Some("SLOBurnRate".into()),
        return_data: true,
    });
    q
}

/// The alarms for every objective on `target`, in objective then tier order.
pub fn render(objectives: &[Objective], config: &Config, target: &AlarmTarget) -> SloAlarms {
    let models: Vec<String> = config
        .effective_models()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let namespace = config.cloudwatch.namespace.clone();
    let mut out = SloAlarms::default();
    for o in objectives {
        // Two metrics per model, ten at most in one alarm.
        if o.model == ALL_MODELS && models.len() > 4 {
            out.skipped.push((
                format!("slo {}", o.id()),
                format!(
                    "a whole-API objective over {} models needs more than the 10 metrics an alarm may use",
                    models.len()
                ),
            ));
            continue;
        }
        let base = format!("warden-{}-slo-{}-{}", target.host, o.model, o.name);
        for tier in Tier::ALL {
            let mut clauses = Vec::new();
            for WindowPair {
                long,
                short,
                factor,
            } in tier.pairs()
            {
                let mut names = Vec::new();
                for w in [*long, *short] {
                    let name = format!("{base}-{}-{}", tier.as_str(), span(w));
                    let (period, n) = periods(w);
                    out.alarms.push(AlarmDefinition {
                        alarm_name: name.clone(),
                        alarm_description: format!(
                            "SLO {} of {} ({}): burn rate over {} ≥ {}× (part of {base}-{})",
                            o.name,
                            o.model,
                            o.describe(),
                            span(w),
                            crate::alerts::evaluator::format_value(*factor),
                            tier.as_str()
                        ),
                        namespace: None,
                        metric_name: None,
                        dimensions: Vec::new(),
                        statistic: None,
                        extended_statistic: None,
                        period: None,
                        metrics: burn_queries(o, &namespace, &target.host, &models, period),
                        evaluation_periods: n,
                        datapoints_to_alarm: n,
                        threshold: *factor,
                        comparison_operator: "GreaterThanOrEqualToThreshold".into(),
                        treat_missing_data: "notBreaching".into(),
                        alarm_actions: Vec::new(),
                        ok_actions: Vec::new(),
                    });
                    names.push(name);
                }
                clauses.push(format!(
                    "(ALARM(\"{}\") AND ALARM(\"{}\"))",
                    names[0], names[1]
                ));
            }
            let actions = topic(config, tier);
            out.composites.push(CompositeAlarm {
                alarm_name: format!("{base}-{}", tier.as_str()),
                alarm_description: format!(
                    "SLO {} of {} ({}): {} burn-rate tier ({}; runbook {}#{})",
                    o.name,
                    o.model,
                    o.describe(),
                    tier.as_str(),
                    tier.severity().as_str(),
                    config.alerts.runbook_url,
                    tier.rule_name()
                ),
                alarm_rule: clauses.join(" OR "),
                alarm_actions: actions.clone(),
                ok_actions: actions,
            });
        }
    }
    out
}

/// PutCompositeAlarm for each composite (after their component alarms exist).
pub async fn push_composites(
    client: &aws_sdk_cloudwatch::Client,
    composites: &[CompositeAlarm],
) -> Result<usize, String> {
    for c in composites {
        client
            .put_composite_alarm()
            .alarm_name(&c.alarm_name)
            .alarm_description(&c.alarm_description)
            .alarm_rule(&c.alarm_rule)
            .set_alarm_actions(Some(c.alarm_actions.clone()))
            .set_ok_actions(Some(c.ok_actions.clone()))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "PutCompositeAlarm {}: {}",
                    c.alarm_name,
                    aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
                )
            })?;
    }
    Ok(composites.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            std::path::Path::new("t.toml"),
            "[notify.sns]\nwarning_topic_arn = \"arn:aws:sns:us-east-1:1:w\"\ncritical_topic_arn = \"arn:aws:sns:us-east-1:1:c\"\n[[models]]\nname = \"clash-detector\"\nport = 9001\n",
        )
        .unwrap()
    }

    #[test]
    fn each_tier_is_window_alarms_joined_by_a_composite() {
        let config = config();
        let objectives = super::super::defaults(&["clash-detector".to_string()]);
        let target = AlarmTarget {
            host: "h".into(),
            gpus: 0,
        };
        let set = render(&objectives, &config, &target);
        // Two objectives × (page: 4 windows, ticket: 2).
        assert_eq!(set.alarms.len(), 12);
        assert_eq!(set.composites.len(), 4);
        let page = &set.composites[0];
        assert_eq!(
            page.alarm_name,
            "warden-h-slo-clash-detector-availability-page"
        );
        assert_eq!(
            page.alarm_rule,
            "(ALARM(\"warden-h-slo-clash-detector-availability-page-1h\") AND ALARM(\"warden-h-slo-clash-detector-availability-page-5m\")) OR (ALARM(\"warden-h-slo-clash-detector-availability-page-6h\") AND ALARM(\"warden-h-slo-clash-detector-availability-page-30m\"))"
        );
        assert_eq!(page.alarm_actions, vec!["arn:aws:sns:us-east-1:1:c"]);
        assert_eq!(
            set.composites[1].alarm_actions,
            vec!["arn:aws:sns:us-east-1:1:w"]
        );
        let one_h = &set.alarms[0];
        assert_eq!(one_h.threshold, 14.4);
        assert!(one_h.alarm_actions.is_empty());
        let burn = one_h.metrics.last().unwrap();
        assert_eq!(burn.expression.as_deref(), Some("((a0) / (b0)) / 0.001"));
        assert!(
            one_h
                .metrics
                .iter()
                .all(|q| q.metric_stat.as_ref().is_none_or(|s| s.period == 3600))
        );
        let three_d = set
            .alarms
            .iter()
            .find(|a| a.alarm_name == "warden-h-slo-clash-detector-availability-ticket-3d")
            .unwrap();
        assert_eq!(three_d.evaluation_periods, 3);
        let latency = set
            .alarms
            .iter()
            .find(|a| a.alarm_name == "warden-h-slo-clash-detector-latency-page-5m")
            .unwrap();
        let stats: Vec<&str> = latency
            .metrics
            .iter()
            .filter_map(|q| q.metric_stat.as_ref().map(|s| s.stat.as_str()))
            .collect();
        assert_eq!(stats, vec!["TC(:2000)", "SampleCount"]);
        assert_eq!(
            latency.metrics.last().unwrap().expression.as_deref(),
            Some("(1 - (a0) / (b0)) / 0.05")
        );
    }
}

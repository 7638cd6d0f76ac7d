//! The SLO burn-rate tiers as CloudWatch alarms, for `warden alarms render|push`: the fleet
//! view of the same page/ticket decisions the agent makes.
//!
//! One metric-math alarm per objective and tier over the agent's `SLOBurnRate{Window}`
//! gauges (a metric-math alarm's metrics share one period, so burn rates over 1 h and 3 d
//! cannot be recomputed from the raw counters in one alarm; composite alarms could, but the
//! gauges make one alarm per tier with no intermediate alarms). Each pair's windows are
//! normalised by its factor and combined the workbook's way:
//! `MAX([MIN([l0/14.4, s0/14.4]), MIN([l1/6, s1/6])]) >= 1` pages (1 h and 5 m, or 6 h and
//! 30 m), `MIN([l0/1, s0/1]) >= 1` tickets (3 d and 6 h). Unlike the agent, the alarm does not
//! apply `min_requests`. Actions: page → the critical topic, ticket → the warning topic.

use super::burn::Tier;
use super::{Objective, span};
use crate::alerts::alarms::{
    AlarmDefinition, AlarmDimension, AlarmMetric, AlarmTarget, MetricQuery, MetricStat,
};
use crate::config::Config;

/// The gauges are shipped every flush (60 s by default): one period.
const PERIOD: i32 = 60;

fn topic(config: &Config, tier: Tier) -> Vec<String> {
    let sns = config.notify.sns.as_ref();
    match tier {
        Tier::Page => sns.and_then(|s| s.critical_topic_arn.clone()),
        Tier::Ticket => sns.and_then(|s| s.warning_topic_arn.clone()),
    }
    .into_iter()
    .collect()
}

/// The queries and expression of `o`'s `tier`: 1 or more means the tier holds.
fn tier_queries(o: &Objective, tier: Tier, namespace: &str, host: &str) -> Vec<MetricQuery> {
    let gauge = |id: String, window: &str| MetricQuery {
        id,
        metric_stat: Some(MetricStat {
            metric: AlarmMetric {
                namespace: namespace.to_string(),
                metric_name: "SLOBurnRate".into(),
                dimensions: [
                    ("Host", host),
                    ("Model", o.model.as_str()),
                    ("SLO", o.name.as_str()),
                    ("Window", window),
                ]
                .into_iter()
                .map(|(name, value)| AlarmDimension {
                    name: name.into(),
                    value: value.into(),
                })
                .collect(),
            },
            period: PERIOD,
            stat: "Maximum".into(),
        }),
        expression: None,
        label: None,
        return_data: false,
    };
    let mut q = Vec::new();
    let mut clauses = Vec::new();
    for (i, p) in tier.pairs().iter().enumerate() {
        q.push(gauge(format!("l{i}"), &span(p.long)));
        q.push(gauge(format!("s{i}"), &span(p.short)));
        let f = super::decimal(p.factor);
        clauses.push(format!("MIN([l{i} / {f}, s{i} / {f}])"));
    }
    let expression = if clauses.len() == 1 {
        clauses.remove(0)
    } else {
        format!("MAX([{}])", clauses.join(", "))
    };
    q.push(MetricQuery {
        id: "tier".into(),
        metric_stat: None,
        expression: Some(expression),
        label: Some(format!("{} burn-rate tier", tier.as_str())),
        return_data: true,
    });
    q
}

/// The alarms for every objective on `target`, in objective then tier order.
pub fn render(
    objectives: &[Objective],
    config: &Config,
    target: &AlarmTarget,
) -> Vec<AlarmDefinition> {
    let namespace = config.cloudwatch.namespace.clone();
    let mut out = Vec::new();
    for o in objectives {
        for tier in Tier::ALL {
            let windows: Vec<String> = tier
                .pairs()
                .iter()
                .map(|p| {
                    format!(
                        "{}× over {} and {}",
                        super::decimal(p.factor),
                        span(p.long),
                        span(p.short)
                    )
                })
                .collect();
            let actions = topic(config, tier);
            out.push(AlarmDefinition {
                alarm_name: format!(
                    "warden-{}-slo-{}-{}-{}",
                    target.host,
                    o.model,
                    o.name,
                    tier.as_str()
                ),
                alarm_description: format!(
                    "SLO {} of {} ({}): error budget burning {} ({} tier, {}; runbook {}#{})",
                    o.name,
                    o.model,
                    o.describe(),
                    windows.join(", or "),
                    tier.as_str(),
                    tier.severity().as_str(),
                    config.alerts.runbook_url,
                    tier.rule_name()
                ),
                namespace: None,
                metric_name: None,
                dimensions: Vec::new(),
                statistic: None,
                extended_statistic: None,
                period: None,
                metrics: tier_queries(o, tier, &namespace, &target.host),
                evaluation_periods: 1,
                datapoints_to_alarm: 1,
                threshold: 1.0,
                comparison_operator: "GreaterThanOrEqualToThreshold".into(),
                treat_missing_data: "notBreaching".into(),
                alarm_actions: actions.clone(),
                ok_actions: actions,
            });
        }
    }
    out
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
    fn each_tier_is_one_alarm_over_the_burn_rate_gauges() {
        let config = config();
        let objectives = super::super::defaults(&["clash-detector".to_string()]);
        let target = AlarmTarget {
            host: "h".into(),
            gpus: 0,
        };
        let alarms = render(&objectives, &config, &target);
        let names: Vec<&str> = alarms.iter().map(|a| a.alarm_name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "warden-h-slo-clash-detector-availability-page",
                "warden-h-slo-clash-detector-availability-ticket",
                "warden-h-slo-clash-detector-latency-page",
                "warden-h-slo-clash-detector-latency-ticket",
            ]
        );
        let page = &alarms[0];
        assert_eq!(page.alarm_actions, vec!["arn:aws:sns:us-east-1:1:c"]);
        assert_eq!(alarms[1].alarm_actions, vec!["arn:aws:sns:us-east-1:1:w"]);
        assert_eq!((page.threshold, page.evaluation_periods), (1.0, 1));
        assert_eq!(
            page.metrics.last().unwrap().expression.as_deref(),
            Some("MAX([MIN([l0 / 14.4, s0 / 14.4]), MIN([l1 / 6, s1 / 6])])")
        );
        let windows: Vec<&str> = page
            .metrics
            .iter()
            .filter_map(|q| q.metric_stat.as_ref())
            .map(|s| s.metric.dimensions[3].value.as_str())
            .collect();
        assert_eq!(windows, vec!["1h", "5m", "6h", "30m"]);
        assert_eq!(
            alarms[1].metrics.last().unwrap().expression.as_deref(),
            Some("MIN([l0 / 1, s0 / 1])")
        );
        let dims: Vec<&str> = page.metrics[0]
            .metric_stat
            .as_ref()
            .unwrap()
            .metric
            .dimensions
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(dims, vec!["Host", "Model", "SLO", "Window"]);
    }
}

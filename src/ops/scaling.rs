//! `warden scaling render|push`: the fleet's Auto Scaling rules as code — the scaling policies
//! and the CloudWatch alarms that trigger them, over the metrics every agent also publishes
//! aggregated under `AutoScalingGroupName` (`agent.autoscaling_group`).
//!
//! The seed's rules: scale out by one host when the group's CPU average passes 70 % or its GPU
//! utilisation average passes 80 % (3 one-minute periods), scale in by one when CPU stays
//! under 30 % (15 periods: slower in than out, so a lull does not drop a host a burst needs),
//! each new host counted as warming up for 5 minutes. Step-scaling policies carry the warm-up
//! (`EstimatedInstanceWarmup`); simple scaling would block on a cool-down instead.
//! Metric names, units and the namespace come from the metric catalogue and `[cloudwatch]`.
//!
//! `push` is idempotent: it reads the group's policies (DescribePolicies) and the alarms
//! (DescribeAlarms) first and writes only what differs, so a second push writes nothing.

use crate::alerts::alarms::{AlarmDefinition, AlarmDimension};
use crate::config::Config;
use crate::telemetry::catalog;
use serde::Serialize;

/// The CloudWatch dimension the fleet metrics are aggregated under (as the CloudWatch agent's
/// `aggregation_dimensions`).
pub const GROUP_DIMENSION: &str = "AutoScalingGroupName";
/// Metrics the agent also publishes per group: the scaling signals.
pub const SCALING_METRICS: [&str; 2] = ["HostCPUUtilization", "GPUUtilization"];
/// A new host's warm-up before its metrics count towards the group's (seconds).
pub const WARMUP_SECS: i32 = 300;

#[derive(Debug, thiserror::Error)]
pub enum ScalingError {
    #[error("no Auto Scaling group: pass --group or set agent.autoscaling_group")]
    NoGroup,
    #[error("Auto Scaling group {0:?} does not exist (DescribeAutoScalingGroups)")]
    UnknownGroup(String),
    #[error("metric {0} is not in the catalogue")]
    Catalogue(&'static str),
    #[error("{operation}: {message}")]
    Aws { operation: String, message: String },
}

/// One step of a step-scaling policy, bounds relative to the alarm's threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Step {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_interval_lower_bound: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_interval_upper_bound: Option<f64>,
    pub scaling_adjustment: i32,
}

/// A PutScalingPolicy request, field names as the API spells them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Policy {
    pub policy_name: String,
    pub policy_type: String,
    pub adjustment_type: String,
    pub metric_aggregation_type: String,
    pub estimated_instance_warmup: i32,
    pub step_adjustments: Vec<Step>,
}

/// The policies and their alarms for one group. An alarm's actions name policies as
/// `policy:<PolicyName>`; `push` replaces them with the ARNs PutScalingPolicy returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingPlan {
    pub group: String,
    pub policies: Vec<Policy>,
    pub alarms: Vec<AlarmDefinition>,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOutcome {
    pub policies_written: usize,
    pub alarms_written: usize,
    pub unchanged: usize,
}

/// The group: `--group`, else `agent.autoscaling_group`.
pub fn group_of(config: &Config, group: Option<String>) -> Result<String, ScalingError> {
    group
        .or_else(|| config.agent.autoscaling_group.clone())
        .filter(|g| !g.is_empty())
        .ok_or(ScalingError::NoGroup)
}

fn policy(name: &str, step: Step) -> Policy {
    Policy {
        policy_name: name.to_string(),
        policy_type: "StepScaling".into(),
        adjustment_type: "ChangeInCapacity".into(),
        metric_aggregation_type: "Average".into(),
        estimated_instance_warmup: WARMUP_SECS,
        step_adjustments: vec![step],
    }
}

/// The plan for `group` (deterministic).
pub fn render(config: &Config, group: &str) -> Result<ScalingPlan, ScalingError> {
    let out = format!("warden-{group}-scale-out");
    let in_ = format!("warden-{group}-scale-in");
    let policies = vec![
        policy(
            &out,
            Step {
                metric_interval_lower_bound: Some(0.0),
                metric_interval_upper_bound: None,
                scaling_adjustment: 1,
            },
        ),
        policy(
            &in_,
            Step {
                metric_interval_lower_bound: None,
                metric_interval_upper_bound: Some(0.0),
                scaling_adjustment: -1,
            },
        ),
    ];
    // (alarm suffix, metric, comparison, threshold, periods, policy, what)
    let rules = [
        (
            "cpu-high",
            "HostCPUUtilization",
            "GreaterThanThreshold",
            70.0,
            3,
            &out,
            "CPU",
        ),
        (
            "gpu-high",
            "GPUUtilization",
            "GreaterThanThreshold",
            80.0,
            3,
            &out,
            "GPU utilisation",
        ),
        (
            "cpu-low",
            "HostCPUUtilization",
            "LessThanThreshold",
            30.0,
            15,
            &in_,
            "CPU",
        ),
    ];
    let mut alarms = Vec::new();
    for (suffix, metric, cmp, threshold, periods, policy, what) in rules {
        let def = catalog::lookup(metric).ok_or(ScalingError::Catalogue(metric))?;
        let direction = if cmp == "GreaterThanThreshold" {
            "above"
        } else {
            "below"
        };
        alarms.push(AlarmDefinition {
            alarm_name: format!("warden-{group}-{suffix}"),
            alarm_description: format!(
                "{group}: average {what} {direction} {threshold} % for {periods} min -> {policy} \
                 (warden scaling; {})",
                def.description
            ),
            namespace: Some(config.cloudwatch.namespace.clone()),
            metric_name: Some(def.name.to_string()),
            dimensions: vec![AlarmDimension {
                name: GROUP_DIMENSION.into(),
                value: group.to_string(),
            }],
            statistic: Some("Average".into()),
            extended_statistic: None,
            period: Some(60),
            metrics: Vec::new(),
            evaluation_periods: periods,
            datapoints_to_alarm: periods,
            threshold,
            comparison_operator: cmp.into(),
            // No data means no agents reporting: neither a reason to add nor to remove hosts.
            treat_missing_data: "missing".into(),
            alarm_actions: vec![format!("policy:{policy}")],
            ok_actions: Vec::new(),
        });
    }
    Ok(ScalingPlan {
        group: group.to_string(),
        policies,
        alarms,
    })
}

/// Pretty JSON with a trailing newline: what `render` prints and `alerts/scaling.json` holds.
pub fn render_json(plan: &ScalingPlan) -> String {
    let mut s = serde_json::to_string_pretty(plan).unwrap_or_default();
    s.push('\n');
    s
}

fn aws_err<E: std::error::Error + 'static>(
    operation: &str,
) -> impl FnOnce(aws_sdk_autoscaling::error::SdkError<E>) -> ScalingError + '_ {
    move |e| ScalingError::Aws {
        operation: operation.to_string(),
        message: aws_sdk_autoscaling::error::DisplayErrorContext(&e).to_string(),
    }
}

fn cw_err<E: std::error::Error + 'static>(
    operation: &str,
) -> impl FnOnce(aws_sdk_cloudwatch::error::SdkError<E>) -> ScalingError + '_ {
    move |e| ScalingError::Aws {
        operation: operation.to_string(),
        message: aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string(),
    }
}

/// The policy as the service describes it, in our shape (to compare with the plan).
fn described(p: &aws_sdk_autoscaling::types::ScalingPolicy) -> Policy {
    Policy {
        policy_name: p.policy_name().unwrap_or_default().to_string(),
        policy_type: p.policy_type().unwrap_or("SimpleScaling").to_string(),
        adjustment_type: p.adjustment_type().unwrap_or_default().to_string(),
        metric_aggregation_type: p.metric_aggregation_type().unwrap_or_default().to_string(),
        estimated_instance_warmup: p.estimated_instance_warmup().unwrap_or(0),
        step_adjustments: p
            .step_adjustments()
            .iter()
            .map(|s| Step {
                metric_interval_lower_bound: s.metric_interval_lower_bound(),
                metric_interval_upper_bound: s.metric_interval_upper_bound(),
                scaling_adjustment: s.scaling_adjustment().unwrap_or(0),
            })
            .collect(),
    }
}

/// True when the described alarm already is `want` (with actions resolved to ARNs).
fn alarm_matches(have: &aws_sdk_cloudwatch::types::MetricAlarm, want: &AlarmDefinition) -> bool {
    let dims: Vec<(String, String)> = have
        .dimensions()
        .iter()
        .map(|d| {
            (
                d.name().unwrap_or_default().to_string(),
                d.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want_dims: Vec<(String, String)> = want
        .dimensions
        .iter()
        .map(|d| (d.name.clone(), d.value.clone()))
        .collect();
    have.alarm_description() == Some(want.alarm_description.as_str())
        && have.namespace() == want.namespace.as_deref()
        && have.metric_name() == want.metric_name.as_deref()
        && dims == want_dims
        && have.statistic().map(|s| s.as_str()) == want.statistic.as_deref()
        && have.period() == want.period
        && have.evaluation_periods() == Some(want.evaluation_periods)
        && have
            .datapoints_to_alarm()
            .unwrap_or(want.evaluation_periods)
            == want.datapoints_to_alarm
        && have.threshold() == Some(want.threshold)
        && have.comparison_operator().map(|c| c.as_str()) == Some(want.comparison_operator.as_str())
        && have.treat_missing_data().unwrap_or("missing") == want.treat_missing_data
        && have.alarm_actions() == want.alarm_actions.as_slice()
}

/// Writes the plan: the policies first (their ARNs are the alarms' actions), then the alarms;
/// each only when the service's copy differs. Fails on a group that does not exist.
pub async fn push(
    sdk: &aws_config::SdkConfig,
    plan: &ScalingPlan,
) -> Result<PushOutcome, ScalingError> {
    use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic};
    let asg = aws_sdk_autoscaling::Client::new(sdk);
    let cw = aws_sdk_cloudwatch::Client::new(sdk);
    let mut outcome = PushOutcome::default();

    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&plan.group)
        .send()
        .await
        .map_err(aws_err("DescribeAutoScalingGroups"))?;
    if groups.auto_scaling_groups().is_empty() {
        return Err(ScalingError::UnknownGroup(plan.group.clone()));
    }

    let existing = asg
        .describe_policies()
        .auto_scaling_group_name(&plan.group)
        .send()
        .await
        .map_err(aws_err("DescribePolicies"))?;
    let mut arns = std::collections::BTreeMap::new();
    for p in &plan.policies {
        let have = existing
            .scaling_policies()
            .iter()
            .find(|e| e.policy_name() == Some(p.policy_name.as_str()));
        if let Some(h) = have
            && described(h) == *p
            && let Some(arn) = h.policy_arn()
        {
            arns.insert(p.policy_name.clone(), arn.to_string());
            outcome.unchanged += 1;
            continue;
        }
        let mut req = asg
            .put_scaling_policy()
            .auto_scaling_group_name(&plan.group)
            .policy_name(&p.policy_name)
            .policy_type(&p.policy_type)
            .adjustment_type(&p.adjustment_type)
            .metric_aggregation_type(&p.metric_aggregation_type)
            .estimated_instance_warmup(p.estimated_instance_warmup);
        for s in &p.step_adjustments {
            req = req.step_adjustments(
                aws_sdk_autoscaling::types::StepAdjustment::builder()
                    .set_metric_interval_lower_bound(s.metric_interval_lower_bound)
                    .set_metric_interval_upper_bound(s.metric_interval_upper_bound)
                    .scaling_adjustment(s.scaling_adjustment)
                    .build(),
            );
        }
        let out = req.send().await.map_err(aws_err("PutScalingPolicy"))?;
        // Some emulators answer without the ARN; DescribePolicies below fills it in.
        if let Some(arn) = out.policy_arn() {
            arns.insert(p.policy_name.clone(), arn.to_string());
        }
        outcome.policies_written += 1;
    }
    let missing: Vec<String> = plan
        .policies
        .iter()
        .map(|p| p.policy_name.clone())
        .filter(|n| !arns.contains_key(n))
        .collect();
    if !missing.is_empty() {
        let described = asg
            .describe_policies()
            .auto_scaling_group_name(&plan.group)
            .set_policy_names(Some(missing.clone()))
            .send()
            .await
            .map_err(aws_err("DescribePolicies"))?;
        for p in described.scaling_policies() {
            if let (Some(name), Some(arn)) = (p.policy_name(), p.policy_arn()) {
                arns.insert(name.to_string(), arn.to_string());
            }
        }
        if let Some(name) = missing.iter().find(|n| !arns.contains_key(*n)) {
            return Err(ScalingError::Aws {
                operation: "PutScalingPolicy".into(),
                message: format!("policy {name} has no ARN after it was written"),
            });
        }
    }

    let names: Vec<String> = plan.alarms.iter().map(|a| a.alarm_name.clone()).collect();
    let described_alarms = cw
        .describe_alarms()
        .set_alarm_names(Some(names))
        .send()
        .await
        .map_err(cw_err("DescribeAlarms"))?;
    for a in &plan.alarms {
        let mut want = a.clone();
        want.alarm_actions = a
            .alarm_actions
            .iter()
            .map(|act| match act.strip_prefix("policy:") {
                Some(name) => arns.get(name).cloned().unwrap_or_else(|| act.clone()),
                None => act.clone(),
            })
            .collect();
        let have = described_alarms
            .metric_alarms()
            .iter()
            .find(|m| m.alarm_name() == Some(want.alarm_name.as_str()));
        if have.is_some_and(|h| alarm_matches(h, &want)) {
            outcome.unchanged += 1;
            continue;
        }
        let mut req = cw
            .put_metric_alarm()
            .alarm_name(&want.alarm_name)
            .alarm_description(&want.alarm_description)
            .evaluation_periods(want.evaluation_periods)
            .datapoints_to_alarm(want.datapoints_to_alarm)
            .threshold(want.threshold)
            .comparison_operator(ComparisonOperator::from(want.comparison_operator.as_str()))
            .treat_missing_data(&want.treat_missing_data)
            .set_alarm_actions(Some(want.alarm_actions.clone()));
        if let Some(ns) = &want.namespace {
            req = req.namespace(ns);
        }
        if let Some(m) = &want.metric_name {
            req = req.metric_name(m);
        }
        if let Some(s) = &want.statistic {
            req = req.statistic(Statistic::from(s.as_str()));
        }
        if let Some(p) = want.period {
            req = req.period(p);
        }
        for d in &want.dimensions {
            req = req.dimensions(Dimension::builder().name(&d.name).value(&d.value).build());
        }
        req.send().await.map_err(cw_err("PutMetricAlarm"))?;
        outcome.alarms_written += 1;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_the_seed_thresholds_wired_to_two_policies() {
        let config = Config::default();
        let plan = render(&config, "g").unwrap();
        assert_eq!(plan.policies.len(), 2);
        assert!(
            plan.policies
                .iter()
                .all(|p| p.estimated_instance_warmup == 300 && p.policy_type == "StepScaling")
        );
        let got: Vec<(&str, f64, &str)> = plan
            .alarms
            .iter()
            .map(|a| {
                (
                    a.metric_name.as_deref().unwrap_or(""),
                    a.threshold,
                    a.alarm_actions[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("HostCPUUtilization", 70.0, "policy:warden-g-scale-out"),
                ("GPUUtilization", 80.0, "policy:warden-g-scale-out"),
                ("HostCPUUtilization", 30.0, "policy:warden-g-scale-in"),
            ]
        );
        assert!(
            plan.alarms
                .iter()
                .all(|a| a.dimensions[0].name == GROUP_DIMENSION && a.dimensions.len() == 1)
        );
        assert!(matches!(
            group_of(&config, None),
            Err(ScalingError::NoGroup)
        ));
        assert_eq!(group_of(&config, Some("x".into())).unwrap(), "x");
    }
}

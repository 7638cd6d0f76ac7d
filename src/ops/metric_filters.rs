//! CloudWatch Logs metric filters as code: metrics the fleet can alarm on from the audit log
//! group alone (`logs.api_group`, one JSON line per API request), put by `warden alarms push`.
//!
//! Filters: `warden-audit-4xx` (client errors, count), `warden-audit-5xx` (server errors,
//! count; the agent's own `AUTO` records are left out), and `warden-audit-latency-<model>`
//! per configured model (`latency_ms` of its inference calls, dimension `Model`). Counts have
//! a default of 0 so a quiet fleet reads 0, not "no data". [`matches`] evaluates the JSON
//! pattern subset these filters use (`{ $.field op value && ... }`, ops `= != < <= > >=`,
//! `*` wildcards in strings) so tests can check a pattern against real audit lines.
//! Push is idempotent: DescribeMetricFilters first, PutMetricFilter only for what differs.

use crate::config::Config;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter pattern {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
    #[error("{operation}: {message}")]
    Aws { operation: String, message: String },
}

/// One metric transformation, field names as the API spells them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transformation {
    pub metric_name: String,
    pub metric_namespace: String,
    pub metric_value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_value: Option<f64>,
    pub unit: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
}

/// One PutMetricFilter request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricFilter {
    pub filter_name: String,
    pub filter_pattern: String,
    pub log_group_name: String,
    pub metric_transformation: Transformation,
}

/// The filters for this config's audit group, models and namespace (deterministic).
pub fn render(config: &Config) -> Vec<MetricFilter> {
    let group = config.logs.api_group.clone();
    let ns = config.cloudwatch.namespace.clone();
    let count = |name: &str, pattern: &str, metric: &str| MetricFilter {
        filter_name: name.to_string(),
        filter_pattern: pattern.to_string(),
        log_group_name: group.clone(),
        metric_transformation: Transformation {
            metric_name: metric.to_string(),
            metric_namespace: ns.clone(),
            metric_value: "1".into(),
            default_value: Some(0.0),
            unit: "Count".into(),
            dimensions: BTreeMap::new(),
        },
    };
    let mut out = vec![
        count(
            "warden-audit-4xx",
            "{ $.status >= 400 && $.status < 500 }",
            "AuditClientErrors",
        ),
        count(
            "warden-audit-5xx",
            "{ $.status >= 500 && $.method != \"AUTO\" }",
            "AuditServerErrors",
        ),
    ];
    for m in config.effective_models() {
        out.push(MetricFilter {
            filter_name: format!("warden-audit-latency-{}", m.name),
            filter_pattern: format!("{{ $.model = \"{}\" && $.method = \"POST\" }}", m.name),
            log_group_name: group.clone(),
            metric_transformation: Transformation {
                metric_name: "AuditLatency".into(),
                metric_namespace: ns.clone(),
                metric_value: "$.latency_ms".into(),
                // CloudWatch refuses a default value on a filter with dimensions.
                default_value: None,
                unit: "Milliseconds".into(),
                dimensions: [("Model".to_string(), "$.model".to_string())].into(),
            },
        });
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Cond {
    path: Vec<String>,
    op: Op,
    value: Operand,
}

fn parse(pattern: &str) -> Result<Vec<Cond>, String> {
    let body = pattern
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("a JSON filter pattern is wrapped in { }")?;
    if body.contains("||") {
        return Err("only && conjunctions are supported".into());
    }
    body.split("&&").map(|c| parse_cond(c.trim())).collect()
}

fn parse_cond(c: &str) -> Result<Cond, String> {
    let rest = c
        .strip_prefix("$.")
        .ok_or_else(|| format!("condition {c:?} must start with $."))?;
    let end = rest
        .find(|ch: char| ch.is_whitespace() || "=!<>".contains(ch))
        .ok_or_else(|| format!("condition {c:?} has no operator"))?;
    let path: Vec<String> = rest[..end].split('.').map(str::to_string).collect();
    let rest = rest[end..].trim_start();
    let (op, rest) = [
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("=", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .iter()
    .find_map(|(s, op)| rest.strip_prefix(s).map(|r| (*op, r.trim())))
    .ok_or_else(|| format!("condition {c:?} has no operator"))?;
    let value = if let Some(q) = rest.strip_prefix('"') {
        Operand::Text(
            q.strip_suffix('"')
                .ok_or_else(|| format!("unterminated string in {c:?}"))?
                .to_string(),
        )
    } else if let Ok(n) = rest.parse::<f64>() {
        Operand::Number(n)
    } else if !rest.is_empty() {
        Operand::Text(rest.to_string())
    } else {
        return Err(format!("condition {c:?} has no value"));
    };
    if matches!(value, Operand::Text(_)) && !matches!(op, Op::Eq | Op::Ne) {
        return Err(format!("{c:?}: strings compare with = or != only"));
    }
    Ok(Cond { path, op, value })
}

/// `*` matches any run of characters, as in CloudWatch string comparisons.
fn wildcard(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut pos = 0;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !text.starts_with(part) {
                return false;
            }
            pos = part.len();
        } else if i == parts.len() - 1 {
            return text.len() >= pos + part.len() && text[pos..].ends_with(part);
        } else {
            match text[pos..].find(part) {
                Some(at) => pos += at + part.len(),
                None => return false,
            }
        }
    }
    true
}

fn holds(cond: &Cond, event: &Value) -> bool {
    let mut v = event;
    for p in &cond.path {
        match v.get(p) {
            Some(next) => v = next,
            // CloudWatch: a condition on an absent field does not match.
            None => return false,
        }
    }
    match (&cond.value, v) {
        (Operand::Number(want), Value::Number(n)) => {
            let Some(n) = n.as_f64() else { return false };
            match cond.op {
                Op::Eq => n == *want,
                Op::Ne => n != *want,
                Op::Lt => n < *want,
                Op::Le => n <= *want,
                Op::Gt => n > *want,
                Op::Ge => n >= *want,
            }
        }
        (Operand::Text(want), Value::String(s)) => match cond.op {
            Op::Eq => wildcard(want, s),
            Op::Ne => !wildcard(want, s),
            _ => false,
        },
        _ => false,
    }
}

/// Whether `line` (one JSON log event) matches `pattern`; a line that is not JSON never does.
pub fn matches(pattern: &str, line: &str) -> Result<bool, FilterError> {
    let conds = parse(pattern).map_err(|message| FilterError::Pattern {
        pattern: pattern.to_string(),
        message,
    })?;
    let Ok(event) = serde_json::from_str::<Value>(line) else {
        return Ok(false);
    };
    Ok(conds.iter().all(|c| holds(c, &event)))
}

fn aws_err<E: std::error::Error + 'static>(
    operation: &str,
) -> impl FnOnce(aws_sdk_cloudwatchlogs::error::SdkError<E>) -> FilterError + '_ {
    move |e| FilterError::Aws {
        operation: operation.to_string(),
        message: aws_sdk_cloudwatchlogs::error::DisplayErrorContext(&e).to_string(),
    }
}

fn described(f: &aws_sdk_cloudwatchlogs::types::MetricFilter) -> Option<MetricFilter> {
    let t = f.metric_transformations().first()?;
    Some(MetricFilter {
        filter_name: f.filter_name()?.to_string(),
        filter_pattern: f.filter_pattern().unwrap_or_default().to_string(),
        log_group_name: f.log_group_name()?.to_string(),
        metric_transformation: Transformation {
            metric_name: t.metric_name().to_string(),
            metric_namespace: t.metric_namespace().to_string(),
            metric_value: t.metric_value().to_string(),
            default_value: t.default_value(),
            unit: t.unit().map(|u| u.as_str().to_string()).unwrap_or_default(),
            dimensions: t
                .dimensions()
                .map(|d| d.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        },
    })
}

/// What a push did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FiltersPushed {
    pub written: usize,
    pub unchanged: usize,
}

/// Creates the audit group if it is missing (PutMetricFilter needs it), then puts every
/// filter whose service copy differs.
pub async fn push(
    sdk: &aws_config::SdkConfig,
    filters: &[MetricFilter],
) -> Result<FiltersPushed, FilterError> {
    use aws_sdk_cloudwatchlogs::types::{MetricTransformation, StandardUnit};
    let client = aws_sdk_cloudwatchlogs::Client::new(sdk);
    let mut out = FiltersPushed::default();
    let groups: std::collections::BTreeSet<&str> =
        filters.iter().map(|f| f.log_group_name.as_str()).collect();
    for group in groups {
        let described_groups = client
            .describe_log_groups()
            .log_group_name_prefix(group)
            .send()
            .await
            .map_err(aws_err("DescribeLogGroups"))?;
        let exists = described_groups
            .log_groups()
            .iter()
            .any(|g| g.log_group_name() == Some(group));
        if !exists && let Err(e) = client.create_log_group().log_group_name(group).send().await {
            // Another agent may have created it meanwhile.
            let already = e
                .as_service_error()
                .is_some_and(|s| s.is_resource_already_exists_exception());
            if !already {
                return Err(aws_err("CreateLogGroup")(e));
            }
        }
        let have: Vec<MetricFilter> = client
            .describe_metric_filters()
            .log_group_name(group)
            .send()
            .await
            .map_err(aws_err("DescribeMetricFilters"))?
            .metric_filters()
            .iter()
            .filter_map(described)
            .collect();
        for f in filters.iter().filter(|f| f.log_group_name == group) {
            if have.contains(f) {
                out.unchanged += 1;
                continue;
            }
            let t = &f.metric_transformation;
            let mut mt = MetricTransformation::builder()
                .metric_name(&t.metric_name)
                .metric_namespace(&t.metric_namespace)
                .metric_value(&t.metric_value)
                .set_default_value(t.default_value)
                .unit(StandardUnit::from(t.unit.as_str()));
            for (k, v) in &t.dimensions {
                mt = mt.dimensions(k, v);
            }
            let mt = mt.build().map_err(|e| FilterError::Aws {
                operation: "PutMetricFilter".into(),
                message: e.to_string(),
            })?;
            client
                .put_metric_filter()
                .log_group_name(group)
                .filter_name(&f.filter_name)
                .filter_pattern(&f.filter_pattern)
                .metric_transformations(mt)
                .send()
                .await
                .map_err(aws_err("PutMetricFilter"))?;
            out.written += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"time":"2026-12-01T12:00:00.000Z","request_id":"a","interaction_id":"a","subject":"u","role":"user","method":"POST","route":"/api/v1/{model}","model":"clash-detector","status":200,"outcome":"success","latency_ms":12.5,"bytes_in":10,"bytes_out":20,"client":"127.0.0.1","user_agent":null}"#;

    fn with(status: u16, method: &str) -> String {
        OK.replace("\"status\":200", &format!("\"status\":{status}"))
            .replace("\"method\":\"POST\"", &format!("\"method\":\"{method}\""))
    }

    #[test]
    fn rendered_patterns_split_audit_lines_by_status_and_model() {
        let filters = render(&Config::default());
        let get = |n: &str| {
            filters
                .iter()
                .find(|f| f.filter_name == n)
                .map(|f| f.filter_pattern.clone())
                .unwrap()
        };
        let (c4, c5, lat) = (
            get("warden-audit-4xx"),
            get("warden-audit-5xx"),
            get("warden-audit-latency-clash-detector"),
        );
        let table = [
            (with(200, "POST"), false, false, true),
            (with(404, "GET"), true, false, false),
            (with(422, "POST"), true, false, true),
            (with(499, "POST"), true, false, true),
            (with(500, "POST"), false, true, true),
            (with(503, "POST"), false, true, true),
            // The agent's own self-healing record is neither a 5XX nor a request latency.
            (with(500, "AUTO"), false, false, false),
            ("not json".to_string(), false, false, false),
        ];
        for (line, four, five, latency) in table {
            assert_eq!(matches(&c4, &line).unwrap(), four, "4xx {line}");
            assert_eq!(matches(&c5, &line).unwrap(), five, "5xx {line}");
            assert_eq!(matches(&lat, &line).unwrap(), latency, "latency {line}");
        }
        let other = get("warden-audit-latency-risk-analyzer");
        assert!(!matches(&other, OK).unwrap());
        assert_eq!(filters.len(), 2 + 5);
    }

    #[test]
    fn pattern_syntax_errors_are_reported_and_wildcards_match() {
        assert!(matches("$.status = 1", OK).is_err());
        assert!(matches("{ $.status = 1 || $.x = 2 }", OK).is_err());
        assert!(matches("{ $.route > \"a\" }", OK).is_err());
        assert!(matches("{ $.route = \"/api/v1/*\" }", OK).unwrap());
        assert!(matches("{ $.route = /api/* && $.latency_ms < 13 }", OK).unwrap());
        assert!(!matches("{ $.missing = 1 }", OK).unwrap());
        assert!(matches("{ $.model != \"risk*\" }", OK).unwrap());
    }
}

//! CloudWatch dashboards as code: the dashboard JSON is rendered from the metric catalogue
//! (so a renamed metric cannot leave a dead graph behind) and pushed with PutDashboard.

use crate::config::Config;
use crate::telemetry::catalog::{self, Dim, MetricDef};
use serde_json::{Value, json};

/// Grid width of a CloudWatch dashboard.
const GRID_WIDTH: u32 = 24;
const WIDGET_WIDTH: u32 = 12;
const WIDGET_HEIGHT: u32 = 6;
/// Seconds per datapoint: the agent flushes every 60 s by default.
const PERIOD: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("metric {0} is not in the catalogue")]
    UnknownMetric(&'static str),
    #[error("metric {metric} has no {dim} dimension in the catalogue")]
    MissingDimension {
        metric: &'static str,
        dim: &'static str,
    },
    #[error("reading alert rules {path}: {message}")]
    Rules { path: String, message: String },
    #[error("PutDashboard {name}: {message}")]
    Put { name: String, message: String },
    #[error("CloudWatch rejected dashboard {name}: {messages}")]
    Invalid { name: String, messages: String },
}

/// What a dashboard is drawn for: dimension values and where the metrics live.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardSpec {
    /// DashboardName for PutDashboard.
    pub name: String,
    pub namespace: String,
    pub region: String,
    /// Host dimension value drawn; the dashboard's Host variable switches to other hosts.
    pub host: String,
    pub models: Vec<String>,
    /// GPU indices drawn per host (0..gpus).
    pub gpus: u32,
    /// CloudWatch alarm ARNs for the alarm status widget (none: no widget).
    pub alarm_arns: Vec<String>,
    /// Alert thresholds drawn as horizontal lines on the graphs of their metric.
    pub thresholds: Vec<Threshold>,
    /// The SLOs drawn in the SLO row, as (Model dimension, SLO name).
    pub slos: Vec<(String, String)>,
}

/// A metric alert rule's threshold, as a dashboard annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub rule: String,
    pub metric: String,
    /// The rule's reducer (`avg`, `max`, `p95`, ...): a percentile rule only marks that
    /// percentile's graph.
    pub reducer: String,
    pub value: f64,
    pub severity: String,
}

impl DashboardSpec {
    /// From a config: its namespace, region, host id and models; alarms named after the
    /// metric rules in `alerts.rules`, in the account of the SNS topics (when configured).
    pub fn from_config(
        config: &Config,
        host: Option<String>,
        gpus: u32,
    ) -> Result<Self, DashboardError> {
        let host = host.unwrap_or_else(|| config.agent.host_id());
        let mut models: Vec<String> = config
            .effective_models()
            .into_iter()
            .map(|m| m.name)
            .collect();
        models.sort();
        let region = config.aws.region.clone();
        let thresholds = metric_rules(config)?;
        let slos = crate::alerts::slo::load_for(config)
            .map_err(|e| DashboardError::Rules {
                path: "SLOs".into(),
                message: e.to_string(),
            })?
            .into_iter()
            .map(|o| (o.model, o.name))
            .collect();
        let alarm_arns = match account_of(config) {
            Some(account) => thresholds
                .iter()
                .map(|t| {
                    format!(
                        "arn:aws:cloudwatch:{region}:{account}:alarm:{}",
                        alarm_name(&t.rule)
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(DashboardSpec {
            name: "warden".into(),
            namespace: config.cloudwatch.namespace.clone(),
            region,
            host,
            models,
            gpus,
            alarm_arns,
            thresholds,
            slos,
        })
    }
}

/// The CloudWatch alarm name for an alert rule (alarms as code uses the same).
pub fn alarm_name(rule: &str) -> String {
    format!("warden-{rule}")
}

/// The AWS account of the configured SNS topics (arn:aws:sns:REGION:ACCOUNT:NAME).
fn account_of(config: &Config) -> Option<String> {
    let sns = config.notify.sns.as_ref()?;
    [
        &sns.critical_topic_arn,
        &sns.warning_topic_arn,
        &sns.info_topic_arn,
    ]
    .into_iter()
    .flatten()
    .find_map(|arn| arn.split(':').nth(4).map(str::to_string))
}

/// The metric (not event) rules in the configured rule files (else the built-in defaults), in
/// file order.
fn metric_rules(config: &Config) -> Result<Vec<Threshold>, DashboardError> {
    let sources: Vec<(String, String)> = match &config.alerts.rules {
        None => vec![(
            "alerts/default.toml (built in)".into(),
            crate::config::DEFAULT_ALERT_RULES.to_string(),
        )],
        Some(paths) => paths
            .iter()
            .map(|p| {
                let path = config.resolve(p);
                std::fs::read_to_string(&path)
                    .map(|text| (path.display().to_string(), text))
                    .map_err(|e| DashboardError::Rules {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let mut names = Vec::new();
    for (path, text) in sources {
        let doc: toml::Table = toml::from_str(&text).map_err(|e| DashboardError::Rules {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let rules = doc
            .get("rule")
            .and_then(toml::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for rule in rules.iter().filter_map(toml::Value::as_table) {
            let text = |key: &str| rule.get(key).and_then(toml::Value::as_str);
            let (Some(name), Some(metric)) = (text("name"), text("metric")) else {
                continue;
            };
            let value = match rule.get("threshold") {
                Some(toml::Value::Integer(i)) => *i as f64,
                Some(toml::Value::Float(f)) => *f,
                _ => continue,
            };
            names.push(Threshold {
                rule: name.to_string(),
                metric: metric.to_string(),
                reducer: text("reducer").unwrap_or("last").to_string(),
                value,
                severity: text("severity").unwrap_or("warning").to_string(),
            });
        }
    }
    Ok(names)
}

/// One line of a metric widget: a catalogue metric with every one of its dimensions.
fn metric_row(
    spec: &DashboardSpec,
    name: &'static str,
    dims: &[(Dim, &str)],
    options: Value,
) -> Result<Value, DashboardError> {
    let def = catalog::lookup(name).ok_or(DashboardError::UnknownMetric(name))?;
    let mut row = vec![json!(spec.namespace), json!(def.name)];
    // CloudWatch identifies a series by all of its dimensions: give exactly the catalogue's.
    for dim in def.dims {
        let value = match dim {
            Dim::Host => spec.host.as_str(),
            other => dims
                .iter()
                .find(|(d, _)| d == other)
                .map(|(_, v)| *v)
                .ok_or(DashboardError::MissingDimension {
                    metric: def.name,
                    dim: other.cloudwatch(),
                })?,
        };
        row.push(json!(dim.cloudwatch()));
        row.push(json!(value));
    }
    row.push(options);
    Ok(Value::Array(row))
}

/// A graph's axis label: the catalogue's unit, or what CloudWatch cannot name.
fn axis_label(def: &MetricDef) -> &'static str {
    match def.name {
        "GPUTemperature" => "°C",
        "GPUPowerDraw" | "GPUPowerLimit" => "W",
        "GPUSMClock" => "MHz",
        _ => def.unit.cloudwatch(),
    }
}

struct Widget {
    title: String,
    stat: &'static str,
    unit: &'static str,
    metrics: Vec<Value>,
    /// The alert metric whose thresholds this graph shows (rules may alert on derived
    /// metrics such as `ModelErrorRate`).
    alert_metric: &'static str,
}

impl Widget {
    fn new(title: impl Into<String>, stat: &'static str, unit: &'static str) -> Self {
        Widget {
            title: title.into(),
            stat,
            unit,
            metrics: Vec::new(),
            alert_metric: "",
        }
    }

    /// Horizontal lines for the rules on this graph's metric; a percentile rule only on the
    /// graph of that percentile.
    fn annotations(&self, thresholds: &[Threshold]) -> Vec<Value> {
        thresholds
            .iter()
            .filter(|t| t.metric == self.alert_metric)
            .filter(|t| !t.reducer.starts_with('p') || t.reducer == self.stat)
            .map(|t| {
                json!({
                    "label": format!("{} ({})", t.rule, t.severity),
                    "value": t.value,
                    "color": severity_colour(&t.severity),
                })
            })
            .collect()
    }
}

fn severity_colour(severity: &str) -> &'static str {
    match severity {
        "critical" => "#d62728",
        "warning" => "#ff7f0e",
        _ => "#1f77b4",
    }
}

/// One line per model for `metric` with `stat`.
fn per_model(
    spec: &DashboardSpec,
    title: &str,
    metric: &'static str,
    stat: &'static str,
) -> Result<Widget, DashboardError> {
    let def = catalog::lookup(metric).ok_or(DashboardError::UnknownMetric(metric))?;
    let mut w = Widget::new(title, stat, axis_label(def));
    w.alert_metric = def.name;
    for m in &spec.models {
        w.metrics.push(metric_row(
            spec,
            metric,
            &[(Dim::Model, m)],
            json!({ "label": m, "stat": stat }),
        )?);
    }
    Ok(w)
}

/// One line per GPU index for `metric` with `stat`.
fn per_gpu(
    spec: &DashboardSpec,
    title: &str,
    metric: &'static str,
    stat: &'static str,
) -> Result<Widget, DashboardError> {
    let def = catalog::lookup(metric).ok_or(DashboardError::UnknownMetric(metric))?;
    let mut w = Widget::new(title, stat, axis_label(def));
    w.alert_metric = def.name;
    for gpu in 0..spec.gpus {
        let index = gpu.to_string();
        w.metrics.push(metric_row(
            spec,
            metric,
            &[(Dim::Gpu, &index)],
            json!({ "label": format!("GPU {gpu}"), "stat": stat }),
        )?);
    }
    Ok(w)
}

/// Error rate per model: 100 × errors / requests as metric math over the two counters.
fn error_rate(spec: &DashboardSpec) -> Result<Widget, DashboardError> {
    let mut w = Widget::new("Error rate per model", "Sum", "Percent");
    // The alert engine's derived metric: 100 × ModelErrors / ModelRequests.
    w.alert_metric = "ModelErrorRate";
    for (i, m) in spec.models.iter().enumerate() {
        w.metrics.push(json!([{
            "expression": format!("IF(r{i} > 0, 100 * e{i} / r{i}, 0)"),
            "label": m,
            "id": format!("rate{i}"),
        }]));
        w.metrics.push(metric_row(
            spec,
            "ModelErrors",
            &[(Dim::Model, m)],
            json!({ "id": format!("e{i}"), "stat": "Sum", "visible": false }),
        )?);
        w.metrics.push(metric_row(
            spec,
            "ModelRequests",
            &[(Dim::Model, m)],
            json!({ "id": format!("r{i}"), "stat": "Sum", "visible": false }),
        )?);
    }
    Ok(w)
}

/// The SLO row: budget left and the 1 h burn rate per SLO, with the tier factors marked.
fn slo_row(spec: &DashboardSpec) -> Result<Vec<Widget>, DashboardError> {
    let mut budget = Widget::new("SLO error budget left (1 = untouched)", "Minimum", "None");
    let mut burn = Widget::new("SLO burn rate over 1h", "Maximum", "None");
    burn.alert_metric = "SLOBurnRate";
    for (model, slo) in &spec.slos {
        let label = format!("{model} {slo}");
        budget.metrics.push(metric_row(
            spec,
            "SLOErrorBudgetRemaining",
            &[(Dim::Model, model), (Dim::Slo, slo)],
            json!({ "label": label, "stat": "Minimum" }),
        )?);
        burn.metrics.push(metric_row(
            spec,
            "SLOBurnRate",
            &[(Dim::Model, model), (Dim::Slo, slo), (Dim::Window, "1h")],
            json!({ "label": label, "stat": "Maximum" }),
        )?);
    }
    Ok(vec![budget, burn])
}

/// The burn-rate tiers as lines on the burn graph: 14.4× and 6× page, 1× tickets.
fn tier_lines() -> Vec<Threshold> {
    [
        ("slo-burn-rate-page 1h", 14.4, "critical"),
        ("slo-burn-rate-page 6h", 6.0, "critical"),
        ("slo-burn-rate-ticket 3d", 1.0, "warning"),
    ]
    .into_iter()
    .map(|(rule, value, severity)| Threshold {
        rule: rule.into(),
        metric: "SLOBurnRate".into(),
        reducer: "max".into(),
        value,
        severity: severity.into(),
    })
    .collect()
}

/// The dashboard body (what PutDashboard takes as DashboardBody), deterministic for a spec.
pub fn render(spec: &DashboardSpec) -> Result<Value, DashboardError> {
    let mut host = Widget::new("Host CPU and memory", "Average", "Percent");
    for metric in ["HostCPUUtilization", "HostMemoryUtilization"] {
        host.metrics.push(metric_row(
            spec,
            metric,
            &[],
            json!({ "label": metric, "stat": "Average" }),
        )?);
    }
    let mut graphs = vec![
        per_model(spec, "API latency p50 per model", "ModelLatency", "p50")?,
        per_model(spec, "API latency p95 per model", "ModelLatency", "p95")?,
        per_model(spec, "API latency p99 per model", "ModelLatency", "p99")?,
        per_model(
            spec,
            "Throughput (requests per minute)",
            "ModelRequests",
            "Sum",
        )?,
        error_rate(spec)?,
        per_model(spec, "Models up (1 = ready)", "ModelUp", "Minimum")?,
        per_model(spec, "Model restarts", "ModelRestarts", "Sum")?,
        per_gpu(spec, "GPU utilisation", "GPUUtilization", "Average")?,
        per_gpu(spec, "GPU memory used", "GPUMemoryUsed", "Maximum")?,
        per_gpu(spec, "GPU temperature", "GPUTemperature", "Maximum")?,
        per_gpu(spec, "GPU power draw", "GPUPowerDraw", "Average")?,
        host,
    ];
    if !spec.slos.is_empty() {
        graphs.extend(slo_row(spec)?);
    }
    let thresholds: Vec<Threshold> = spec
        .thresholds
        .iter()
        .cloned()
        .chain(tier_lines())
        .collect();
    let per_row = GRID_WIDTH / WIDGET_WIDTH;
    let place = |i: u32| ((i % per_row) * WIDGET_WIDTH, (i / per_row) * WIDGET_HEIGHT);
    let mut widgets: Vec<Value> = Vec::new();
    for (i, g) in graphs.into_iter().enumerate() {
        let (x, y) = place(i as u32);
        let mut widget = json!({
            "type": "metric",
            "x": x, "y": y, "width": WIDGET_WIDTH, "height": WIDGET_HEIGHT,
            "properties": {
                "title": g.title,
                "view": "timeSeries",
                "stacked": false,
                "region": spec.region,
                "period": PERIOD,
                "stat": g.stat,
                "yAxis": { "left": { "label": g.unit, "showUnits": false } },
                "metrics": g.metrics,
            }
        });
        let lines = g.annotations(&thresholds);
        if !lines.is_empty() {
            widget["properties"]["annotations"] = json!({ "horizontal": lines });
        }
        widgets.push(widget);
    }
    if !spec.alarm_arns.is_empty() {
        let (x, y) = place(widgets.len() as u32);
        widgets.push(json!({
            "type": "alarm",
            "x": x, "y": y, "width": GRID_WIDTH, "height": WIDGET_HEIGHT,
            "properties": {
                "title": "Alarm status",
                "alarms": spec.alarm_arns,
                "sortBy": "stateUpdatedTimestamp",
                "states": ["ALARM", "INSUFFICIENT_DATA", "OK"],
            }
        }));
    }
    Ok(json!({
        "start": "-PT3H",
        "periodOverride": "inherit",
        // One dashboard for the fleet: the Host variable swaps the Host dimension everywhere.
        "variables": [{
            "type": "property",
            "property": "Host",
            "inputType": "select",
            "id": "Host",
            "label": "Host",
            "defaultValue": spec.host,
            "visible": true,
            "search": format!("{{{},Host}} MetricName=\"HostCPUUtilization\"", spec.namespace),
            "populateFrom": "Host",
        }],
        "widgets": widgets,
    }))
}

/// The rendered body as the text committed under `dashboards/` and sent to CloudWatch.
pub fn render_text(spec: &DashboardSpec) -> Result<String, DashboardError> {
    let body = render(spec)?;
    // Pretty JSON of a serde_json::Value is deterministic: object keys are sorted.
    let mut text = serde_json::to_string_pretty(&body).map_err(|e| DashboardError::Put {
        name: spec.name.clone(),
        message: e.to_string(),
    })?;
    text.push('\n');
    Ok(text)
}

/// PutDashboard; CloudWatch's validation messages are an error.
pub async fn push(
    client: &aws_sdk_cloudwatch::Client,
    spec: &DashboardSpec,
) -> Result<(), DashboardError> {
    let body = render_text(spec)?;
    let out = client
        .put_dashboard()
        .dashboard_name(&spec.name)
        .dashboard_body(body)
        .send()
        .await
        .map_err(|e| DashboardError::Put {
            name: spec.name.clone(),
            message: aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string(),
        })?;
    let messages: Vec<String> = out
        .dashboard_validation_messages()
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m.data_path().unwrap_or("/"),
                m.message().unwrap_or("")
            )
        })
        .collect();
    if messages.is_empty() {
        Ok(())
    } else {
        Err(DashboardError::Invalid {
            name: spec.name.clone(),
            messages: messages.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DashboardSpec {
        DashboardSpec {
            name: "warden".into(),
            namespace: "Warden".into(),
            region: "us-east-1".into(),
            host: "gpu-host-1".into(),
            models: vec!["clash-detector".into(), "risk-analyzer".into()],
            gpus: 2,
            alarm_arns: vec!["arn:aws:cloudwatch:us-east-1:1:alarm:warden-x".into()],
            thresholds: vec![
                threshold("lat-warn", "ModelLatency", "p95", 1500.0, "warning"),
                threshold("gpu-hot", "GPUUtilization", "avg", 90.0, "critical"),
                threshold("errors", "ModelErrorRate", "avg", 5.0, "critical"),
            ],
            slos: vec![
                ("clash-detector".into(), "availability".into()),
                ("clash-detector".into(), "latency".into()),
            ],
        }
    }

    fn threshold(rule: &str, metric: &str, reducer: &str, value: f64, sev: &str) -> Threshold {
        Threshold {
            rule: rule.into(),
            metric: metric.into(),
            reducer: reducer.into(),
            value,
            severity: sev.into(),
        }
    }

    fn widget<'a>(body: &'a Value, title: &str) -> &'a Value {
        body["widgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["properties"]["title"] == title)
            .unwrap_or_else(|| panic!("no widget {title}"))
    }

    #[test]
    fn every_metric_line_names_a_catalogue_metric_with_all_its_dimensions() {
        let body = render(&spec()).unwrap();
        let mut lines = 0;
        for w in body["widgets"].as_array().unwrap() {
            for row in w["properties"]["metrics"].as_array().into_iter().flatten() {
                let row = row.as_array().unwrap();
                if row.len() == 1 {
                    continue; // an expression
                }
                let def = catalog::lookup(row[1].as_str().unwrap()).unwrap();
                let dims: Vec<&str> = row[2..row.len() - 1]
                    .iter()
                    .step_by(2)
                    .map(|d| d.as_str().unwrap())
                    .collect();
                let want: Vec<&str> = def.dims.iter().map(|d| d.cloudwatch()).collect();
                assert_eq!(dims, want, "{}", def.name);
                lines += 1;
            }
        }
        assert!(lines > 20);
    }

    #[test]
    fn latency_percentiles_per_model_and_gpus_per_index() {
        let body = render(&spec()).unwrap();
        for p in ["p50", "p95", "p99"] {
            let w = widget(&body, &format!("API latency {p} per model"));
            let rows = w["properties"]["metrics"].as_array().unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0][5], "clash-detector");
            assert_eq!(rows[0][6]["stat"], p);
        }
        let w = widget(&body, "GPU temperature");
        let rows = w["properties"]["metrics"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][5], "1");
        assert_eq!(w["properties"]["yAxis"]["left"]["label"], "°C");
        let rate = widget(&body, "Error rate per model");
        assert_eq!(
            rate["properties"]["metrics"][0][0]["expression"],
            "IF(r0 > 0, 100 * e0 / r0, 0)"
        );
        let alarms = body["widgets"].as_array().unwrap().last().unwrap();
        assert_eq!(alarms["type"], "alarm");
    }

    #[test]
    fn render_is_deterministic_and_without_alarms_has_no_alarm_widget() {
        assert_eq!(render_text(&spec()).unwrap(), render_text(&spec()).unwrap());
        let mut s = spec();
        s.alarm_arns.clear();
        let body = render(&s).unwrap();
        assert!(
            body["widgets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["type"] == "metric")
        );
    }

    #[test]
    fn rule_thresholds_mark_the_graphs_of_their_metric_and_percentile() {
        let body = render(&spec()).unwrap();
        let lines =
            |title: &str| widget(&body, title)["properties"]["annotations"]["horizontal"].clone();
        assert_eq!(lines("API latency p95 per model")[0]["value"], 1500.0);
        assert_eq!(
            lines("API latency p95 per model")[0]["label"],
            "lat-warn (warning)"
        );
        assert!(lines("API latency p99 per model").is_null());
        assert!(lines("API latency p50 per model").is_null());
        assert_eq!(lines("GPU utilisation")[0]["color"], "#d62728");
        assert_eq!(lines("Error rate per model")[0]["value"], 5.0);
        assert!(lines("GPU temperature").is_null());
    }

    #[test]
    fn the_default_rules_become_thresholds_and_alarm_arns() {
        let mut config = Config::embedded();
        config.notify.sns = Some(crate::config::SnsConfig {
            critical_topic_arn: Some("arn:aws:sns:us-east-1:123456789012:crit".into()),
            ..Default::default()
        });
        let spec = DashboardSpec::from_config(&config, Some("h".into()), 1).unwrap();
        let rules: Vec<&str> = spec.thresholds.iter().map(|t| t.rule.as_str()).collect();
        assert!(rules.contains(&"api-latency-p95-critical"), "{rules:?}");
        // Event rules (model-down, gpu-xid, ...) have no metric threshold to draw.
        assert!(!rules.contains(&"model-down"));
        assert!(
            spec.alarm_arns.contains(
                &"arn:aws:cloudwatch:us-east-1:123456789012:alarm:warden-api-latency-p95-critical"
                    .to_string()
            )
        );
        assert_eq!(spec.models.len(), 5);
    }

    #[test]
    fn the_slo_row_draws_budget_and_burn_with_the_tier_lines() {
        let body = render(&spec()).unwrap();
        let budget = widget(&body, "SLO error budget left (1 = untouched)");
        let rows = budget["properties"]["metrics"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][1], "SLOErrorBudgetRemaining");
        assert_eq!(rows[1][7], "latency");
        let burn = widget(&body, "SLO burn rate over 1h");
        assert_eq!(burn["properties"]["metrics"][0][9], "1h");
        let lines: Vec<f64> = burn["properties"]["annotations"]["horizontal"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["value"].as_f64().unwrap())
            .collect();
        assert_eq!(lines, vec![14.4, 6.0, 1.0]);
    }

    #[test]
    fn rows_refuse_a_missing_dimension() {
        let err = metric_row(&spec(), "ModelUp", &[], json!({})).unwrap_err();
        assert!(matches!(
            err,
            DashboardError::MissingDimension { dim: "Model", .. }
        ));
        assert!(matches!(
            metric_row(&spec(), "NoSuchMetric", &[], json!({})),
            Err(DashboardError::UnknownMetric("NoSuchMetric"))
        ));
    }
}

//! Prometheus text exposition of the whole store, labelled host/gpu/model (the agent's /metrics).

use crate::telemetry::catalog::{CATALOG, Kind};
use crate::telemetry::{MetricStore, SeriesKey};
use std::fmt::Write as _;

/// Latency histogram buckets, in ms (the store's unit); rendered in seconds, Prometheus' base
/// unit (`warden_model_latency_seconds`).
pub const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 1500.0, 2000.0, 5000.0, 10000.0,
];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(key: &SeriesKey, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = key
        .dims
        .iter()
        .map(|(d, v)| format!("{}=\"{}\"", d.label(), escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// A sample value; `None` for NaN/±Inf, which the store refuses and the page never carries
/// (a scraper would store them and every sum over the series would turn NaN).
fn number(v: f64) -> Option<String> {
    v.is_finite().then(|| format!("{v}"))
}

/// A bucket bound: finite bounds as numbers, `+Inf` for the last bucket.
fn bound(v: f64) -> String {
    number(v).unwrap_or_else(|| "+Inf".to_string())
}

/// Renders every series in catalogue order, one HELP/TYPE block per metric.
pub fn render(store: &MetricStore) -> String {
    let series = store.series();
    let histograms = store.histograms(LATENCY_BUCKETS_MS);
    let mut out = String::new();
    for def in CATALOG {
        match def.kind {
            Kind::Gauge | Kind::Counter => {
                let rows: Vec<_> = series.iter().filter(|s| s.key.metric == def.name).collect();
                if rows.is_empty() {
                    continue;
                }
                let (name, ty) = match def.kind {
                    Kind::Counter => (format!("{}_total", def.prometheus), "counter"),
                    _ => (def.prometheus.to_string(), "gauge"),
                };
                let _ = writeln!(out, "# HELP {name} {}", def.description);
                let _ = writeln!(out, "# TYPE {name} {ty}");
                for s in rows {
                    if let Some(v) = number(s.value) {
                        let _ = writeln!(out, "{name}{} {v}", labels(&s.key, None));
                    }
                }
            }
            Kind::Histogram => {
                let rows: Vec<_> = histograms
                    .iter()
                    .filter(|h| h.key.metric == def.name)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let name = def.prometheus;
                let _ = writeln!(out, "# HELP {name} {}", def.description);
                let _ = writeln!(out, "# TYPE {name} histogram");
                for h in rows {
                    for (le, count) in &h.buckets {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {count}",
                            labels(&h.key, Some(("le", bound(*le / 1000.0))))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        labels(&h.key, Some(("le", "+Inf".into()))),
                        h.count
                    );
                    let sum = number(h.sum_ms / 1000.0).unwrap_or_else(|| "0".to_string());
                    let _ = writeln!(out, "{name}_sum{} {sum}", labels(&h.key, None));
                    let _ = writeln!(out, "{name}_count{} {}", labels(&h.key, None), h.count);
                }
            }
        }
    }
    out
}

impl MetricStore {
    /// Prometheus text of everything in the store (mount at the agent's `/metrics`).
    pub fn render(&self) -> String {
        render(self)
    }
}

#[cfg(test)]
mod tests {
    use crate::telemetry::{Dim, MetricStore};
    use std::time::SystemTime;

    #[test]
    fn renders_gauges_counters_and_histograms_with_labels() {
        let store = MetricStore::new("h\"1", 4);
        let now = SystemTime::now();
        store.set_gauge("GPUUtilization", &[(Dim::Gpu, "0")], 42.5, now);
        store.record_request("m", 3.0, true, now);
        store.record_request("m", 30.0, false, now);
        let text = store.render();
        assert!(
            text.contains("# TYPE warden_gpu_utilization_percent gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("warden_gpu_utilization_percent{host=\"h\\\"1\",gpu=\"0\"} 42.5\n"),
            "{text}"
        );
        assert!(
            text.contains("warden_model_requests_total{host=\"h\\\"1\",model=\"m\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("warden_model_errors_total{host=\"h\\\"1\",model=\"m\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "warden_model_latency_seconds_bucket{host=\"h\\\"1\",model=\"m\",le=\"0.005\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "warden_model_latency_seconds_bucket{host=\"h\\\"1\",model=\"m\",le=\"+Inf\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("warden_model_latency_seconds_count{host=\"h\\\"1\",model=\"m\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn non_finite_values_are_refused_counted_and_never_rendered() {
        let store = MetricStore::new("h", 4);
        let now = SystemTime::now();
        store.set_gauge("GPUUtilization", &[(Dim::Gpu, "0")], f64::NAN, now);
        store.set_gauge("GPUTemperature", &[(Dim::Gpu, "0")], f64::INFINITY, now);
        store.set_gauge("GPUPowerDraw", &[(Dim::Gpu, "0")], 100.0, now);
        let text = store.render();
        assert!(!text.contains("NaN") && !text.contains(" +Inf") && !text.contains(" -Inf"));
        assert!(!text.contains("warden_gpu_utilization_percent{"), "{text}");
        assert!(
            text.contains(
                "warden_records_dropped_total{host=\"h\",sink=\"store\",reason=\"non_finite\"} 2\n"
            ),
            "{text}"
        );
    }
}

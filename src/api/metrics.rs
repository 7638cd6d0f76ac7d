//! The gateway's own Prometheus series, labelled by matched route (bounded cardinality).

use axum::http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0,
];

pub struct ApiMetrics {
    /// Tells this instance's series apart in the threads' caches (see [`Self::record_request`]).
    id: u64,
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub model_requests: IntCounterVec,
    pub model_latency: HistogramVec,
    pub in_flight: IntGauge,
    pub shed: IntCounterVec,
}

impl ApiMetrics {
    pub fn new() -> Result<ApiMetrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "warden_http_requests_total",
                "API requests by matched route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "warden_http_request_duration_seconds",
                "API request latency by matched route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let model_requests = IntCounterVec::new(
            Opts::new(
                // Not `warden_model_requests_total`: that family is the store's (host, model),
                // and one name may have only one HELP/TYPE block on the page.
                "warden_api_model_requests_total",
                "Inference requests through the gateway, by model and HTTP status",
            ),
            &["model", "status"],
        )?;
        let model_latency = HistogramVec::new(
            HistogramOpts::new(
                "warden_model_request_duration_seconds",
                "Inference latency through the gateway",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )?;
        let in_flight = IntGauge::new("warden_http_in_flight", "API requests being served")?;
        let shed = IntCounterVec::new(
            Opts::new(
                "warden_http_shed_total",
                "Requests refused to protect the host, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(model_requests.clone()))?;
        registry.register(Box::new(model_latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        Ok(ApiMetrics {
            id: INSTANCES.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            latency,
            model_requests,
            model_latency,
            in_flight,
            shed,
        })
    }

    /// Counts one answered request and its latency, by route, method and status, and by model
    /// when it was a model's.
    ///
    /// A gateway thread answers request after request with the same labels, so each thread
    /// keeps the series it used last: finding a series by its labels hashes them and takes the
    /// family's lock, four times a request.
    pub fn record_request(
        &self,
        route: &str,
        method: &str,
        status: StatusCode,
        model: Option<&str>,
        latency: Duration,
    ) {
        let seconds = latency.as_secs_f64();
        LAST_USED.with(|last| {
            // Only a re-entrant call could find the cache taken: it counts without it.
            let Ok(mut last) = last.try_borrow_mut() else {
                RouteSeries::of(self, route, method, status).count(seconds);
                if let Some(model) = model {
                    ModelSeries::of(self, model, status).count(seconds);
                }
                return;
            };
            match &mut last.route {
                Some(s) if s.is(self.id, route, method, status) => s,
                slot => slot.insert(RouteSeries::of(self, route, method, status)),
            }
            .count(seconds);
            let Some(model) = model else { return };
            match &mut last.model {
                Some(s) if s.is(self.id, model, status) => s,
                slot => slot.insert(ModelSeries::of(self, model, status)),
            }
            .count(seconds);
        });
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding API metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// The series a thread counted its last request in.
#[derive(Default)]
struct LastUsed {
    route: Option<RouteSeries>,
    model: Option<ModelSeries>,
}

struct RouteSeries {
    /// The [`ApiMetrics`] instance these belong to.
    of: u64,
    route: String,
    method: String,
    status: StatusCode,
    requests: IntCounter,
    latency: Histogram,
}

impl RouteSeries {
    fn of(metrics: &ApiMetrics, route: &str, method: &str, status: StatusCode) -> RouteSeries {
        RouteSeries {
            of: metrics.id,
            route: route.to_string(),
            method: method.to_string(),
            status,
            requests: (metrics.requests).with_label_values(&[route, method, status.as_str()]),
            latency: metrics.latency.with_label_values(&[route, method]),
        }
    }

    fn is(&self, of: u64, route: &str, method: &str, status: StatusCode) -> bool {
        self.of == of && self.status == status && self.route == route && self.method == method
    }

    fn count(&self, seconds: f64) {
        self.requests.inc();
        self.latency.observe(seconds);
    }
}

struct ModelSeries {
    of: u64,
    model: String,
    status: StatusCode,
    requests: IntCounter,
    latency: Histogram,
}

impl ModelSeries {
    fn of(metrics: &ApiMetrics, model: &str, status: StatusCode) -> ModelSeries {
        ModelSeries {
            of: metrics.id,
            model: model.to_string(),
            status,
            requests: (metrics.model_requests).with_label_values(&[model, status.as_str()]),
            latency: metrics.model_latency.with_label_values(&[model]),
        }
    }

    fn is(&self, of: u64, model: &str, status: StatusCode) -> bool {
        self.of == of && self.status == status && self.model == model
    }

    fn count(&self, seconds: f64) {
        self.requests.inc();
        self.latency.observe(seconds);
    }
}

thread_local! {
    static LAST_USED: RefCell<LastUsed> = RefCell::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &ApiMetrics, line_start: &str) -> Option<f64> {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_request_lands_in_its_own_series_and_instance_whatever_the_thread_used_last() {
        let (a, b) = (ApiMetrics::new().unwrap(), ApiMetrics::new().unwrap());
        let ms = Duration::from_millis(3);
        let ok = StatusCode::OK;
        let bad = StatusCode::UNPROCESSABLE_ENTITY;
        a.record_request("/api/v1/{model}", "POST", ok, Some("risk-analyzer"), ms);
        a.record_request("/api/v1/{model}", "POST", ok, Some("risk-analyzer"), ms);
        b.record_request("/api/v1/{model}", "POST", ok, Some("risk-analyzer"), ms);
        a.record_request("/api/v1/{model}", "POST", bad, Some("risk-analyzer"), ms);
        a.record_request("/api/v1/{model}", "POST", ok, Some("clash-detector"), ms);
        a.record_request("/health", "GET", ok, None, ms);
        a.record_request("/api/v1/{model}", "POST", ok, Some("risk-analyzer"), ms);
        let route_ok =
            r#"warden_http_requests_total{method="POST",route="/api/v1/{model}",status="200"}"#;
        assert_eq!(count(&a, route_ok), Some(4.0));
        assert_eq!(count(&b, route_ok), Some(1.0));
        let model = |m: &str, s: &str| {
            format!(r#"warden_api_model_requests_total{{model="{m}",status="{s}"}}"#)
        };
        assert_eq!(count(&a, &model("risk-analyzer", "200")), Some(3.0));
        assert_eq!(count(&a, &model("risk-analyzer", "422")), Some(1.0));
        assert_eq!(count(&a, &model("clash-detector", "200")), Some(1.0));
        assert_eq!(count(&b, &model("risk-analyzer", "200")), Some(1.0));
        let health = r#"warden_http_requests_total{method="GET",route="/health",status="200"}"#;
        assert_eq!(count(&a, health), Some(1.0));
        assert_eq!(
            count(
                &a,
                r#"warden_model_request_duration_seconds_count{model="risk-analyzer"}"#
            ),
            Some(4.0)
        );
    }
}

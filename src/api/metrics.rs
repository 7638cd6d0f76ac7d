//! The gateway's own Prometheus series, labelled by matched route (bounded cardinality).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0,
];

pub struct ApiMetrics {
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
        Ok(ApiMetrics {
            registry,
            requests,
            latency,
            model_requests,
            model_latency,
            in_flight,
            shed,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding API metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

//! The model process's Prometheus metrics (names documented in the crate docs).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct ModelMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub request_duration: Histogram,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    pub batch_size: Histogram,
    pub inference_duration: Histogram,
    pub ready: IntGauge,
}

impl ModelMetrics {
    pub fn new(model: &str) -> Result<ModelMetrics, prometheus::Error> {
        let labels = [("model".to_string(), model.to_string())]
            .into_iter()
            .collect();
        let registry = Registry::new_custom(None, Some(labels))?;
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = ModelMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "warden_model_requests_total",
                    "/infer responses by HTTP status",
                ),
                &["code"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "warden_model_errors_total",
                    "Failed /infer requests by kind",
                ),
                &["kind"],
            )?,
            request_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "warden_model_request_duration_seconds",
                    "/infer latency from request to response",
                )
                .buckets(latency_buckets.clone()),
            )?,
            queue_depth: IntGauge::new(
                "warden_model_queue_depth",
                "Requests waiting for the inference thread",
            )?,
            in_flight: IntGauge::new(
                "warden_model_in_flight_samples",
                "Samples of /infer requests being read, queued or inferred, not yet answered \
                 (what the batcher expects a batch to hold)",
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("warden_model_batch_size", "Samples per forward pass")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            inference_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "warden_model_inference_duration_seconds",
                    "Forward pass time per batch",
                )
                .buckets(latency_buckets),
            )?,
            ready: IntGauge::new(
                "warden_model_ready",
                "1 once weights are loaded and the warm-up forward pass succeeded",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.errors.clone()))?;
        m.registry.register(Box::new(m.request_duration.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.in_flight.clone()))?;
        m.registry.register(Box::new(m.batch_size.clone()))?;
        m.registry
            .register(Box::new(m.inference_duration.clone()))?;
        m.registry.register(Box::new(m.ready.clone()))?;
        Ok(m)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric-family error leaves the text partial.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

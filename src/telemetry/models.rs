//! Model sampling: up, restarts, CPU and RSS per model process, GPU memory attributed by pid,
//! and queue depth / batch size scraped from each child's `/metrics`.

use super::catalog::Dim;
use super::nvml::ProcessMemory;
use super::store::MetricStore;
use crate::local_http::KeptConnection;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// What the supervisor knows about one model process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSample {
    pub name: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub up: bool,
    pub restarts: u64,
}

/// One model process's CPU (% of one core) and RSS (bytes), as the supervisor samples them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStat {
    pub cpu_percent: f32,
    pub rss_bytes: u64,
}

/// The supervisor's view of its children (the lead implements it on the supervisor handle).
pub trait ModelSource: Send + Sync + 'static {
    fn models(&self) -> Vec<ModelSample>;

    /// CPU and RSS by pid when the source samples its processes itself (the supervisor does,
    /// every second): the sampler then uses them instead of reading /proc for the same
    /// processes a second time. `None`: the sampler reads /proc itself.
    fn process_stats(&self) -> Option<HashMap<u32, ProcessStat>> {
        None
    }
}

impl<F> ModelSource for F
where
    F: Fn() -> Vec<ModelSample> + Send + Sync + 'static,
{
    fn models(&self) -> Vec<ModelSample> {
        self()
    }
}

/// Values a child exposes on its own `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChildMetrics {
    pub queue_depth: Option<f64>,
    pub batch_size: Option<f64>,
}

/// Tolerant Prometheus-text scrape: `warden_model_queue_depth` and `warden_model_batch_size`
/// as gauges, or a batch-size histogram/summary (`_sum`/`_count` → mean); labels ignored.
pub fn parse_child_metrics(text: &str) -> ChildMetrics {
    let mut out = ChildMetrics::default();
    let (mut bs_sum, mut bs_count) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let rest = match line[name_end..].rfind('}') {
            Some(i) => &line[name_end + i + 1..],
            None => &line[name_end..],
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        match name {
            "warden_model_queue_depth" => out.queue_depth = Some(value),
            "warden_model_batch_size" => out.batch_size = Some(value),
            "warden_model_batch_size_sum" => bs_sum = Some(value),
            "warden_model_batch_size_count" => bs_count = Some(value),
            _ => {}
        }
    }
    if out.batch_size.is_none()
        && let (Some(s), Some(c)) = (bs_sum, bs_count)
        && c > 0.0
    {
        out.batch_size = Some(s / c);
    }
    out
}

/// Largest `/metrics` body read from a child (a model's is a few KiB).
const SCRAPE_BODY_LIMIT: usize = 1 << 20;

/// Samples every model the source reports.
pub struct ModelSampler {
    source: std::sync::Arc<dyn ModelSource>,
    gpu: ProcessMemory,
    sys: Option<System>,
    /// One keep-alive connection per model port: the scrape runs every round.
    scrapes: HashMap<u16, KeptConnection>,
    scrape_timeout: Duration,
}

impl ModelSampler {
    /// `gpu` is the NVML sampler's per-process memory; `scrape_timeout` bounds each `/metrics`.
    pub fn new(
        source: std::sync::Arc<dyn ModelSource>,
        gpu: ProcessMemory,
        scrape_timeout: Duration,
    ) -> Self {
        let sys = System::new()
            .map_err(|e| tracing::warn!(error = %e, "no process info: model CPU/RSS not sampled"))
            .ok();
        ModelSampler {
            source,
            gpu,
            sys,
            scrapes: HashMap::new(),
            scrape_timeout,
        }
    }

    /// One round into the store.
    pub async fn sample(&mut self, store: &MetricStore) {
        let models = self.source.models();
        let at = SystemTime::now();
        let provided = self.source.process_stats();
        let pids: Vec<Pid> = models
            .iter()
            .filter_map(|m| m.pid.map(Pid::from_u32))
            .collect();
        if let Some(sys) = &mut self.sys
            && !pids.is_empty()
            && provided.is_none()
        {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&pids),
                true,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
        }
        // Connections of models no longer listed (or on another port now) are closed.
        let mut kept = std::mem::take(&mut self.scrapes);
        let timeout = self.scrape_timeout;
        let scrapes = models.iter().map(|m| {
            let connection = m.up.then(|| {
                kept.remove(&m.port)
                    .unwrap_or_else(|| KeptConnection::new(m.port))
            });
            async move {
                let mut connection = connection?;
                let reply =
                    tokio::time::timeout(timeout, connection.get("/metrics", SCRAPE_BODY_LIMIT))
                        .await;
                let metrics = match reply {
                    Ok(Ok(r)) if r.status.is_success() => {
                        Some(parse_child_metrics(&String::from_utf8_lossy(&r.body)))
                    }
                    _ => None,
                };
                Some((connection, metrics))
            }
        });
        let scraped: Vec<Option<ChildMetrics>> = join_all(scrapes.collect())
            .await
            .into_iter()
            .map(|done| {
                let (connection, metrics) = done?;
                self.scrapes.insert(connection.port(), connection);
                metrics
            })
            .collect();

        for (m, child) in models.iter().zip(scraped) {
            let dims = [(Dim::Model, m.name.as_str())];
            store.set_gauge("ModelUp", &dims, f64::from(u8::from(m.up)), at);
            store.set_counter_total("ModelRestarts", &dims, m.restarts as f64, at);
            if let Some(pid) = m.pid {
                let stat = match &provided {
                    Some(by_pid) => by_pid.get(&pid).copied(),
                    None => self
                        .sys
                        .as_ref()
                        .and_then(|s| s.process(Pid::from_u32(pid)))
                        .map(|p| ProcessStat {
                            cpu_percent: p.cpu_usage(),
                            rss_bytes: p.memory(),
                        }),
                };
                if let Some(p) = stat {
                    store.set_gauge("ModelCPUUtilization", &dims, f64::from(p.cpu_percent), at);
                    store.set_gauge("ModelRSS", &dims, p.rss_bytes as f64, at);
                }
                store.set_gauge(
                    "ModelGPUMemoryUsed",
                    &dims,
                    self.gpu.get(pid).unwrap_or(0) as f64,
                    at,
                );
            }
            if let Some(c) = child {
                if let Some(q) = c.queue_depth {
                    store.set_gauge("ModelQueueDepth", &dims, q, at);
                }
                if let Some(b) = c.batch_size {
                    store.set_gauge("ModelBatchSize", &dims, b, at);
                }
            }
        }
    }
}

/// Runs the scrapes concurrently in this task (each bounded by its own timeout), results in
/// order. Polled together here rather than spawned: a task per scrape per round only added
/// wake-ups.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    // Every slot is filled once the poll above is ready, so this keeps order and length.
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_reads_gauges_and_tolerates_noise() {
        let text = "# HELP warden_model_queue_depth q\n# TYPE warden_model_queue_depth gauge\n\
                    warden_model_queue_depth{model=\"a\"} 7\nwarden_model_batch_size 3.5\n\
                    garbage line\nother_metric 1\nwarden_model_queue_depth{x=\"}\"} NaN\n";
        let m = parse_child_metrics(text);
        assert_eq!(m.queue_depth, Some(7.0));
        assert_eq!(m.batch_size, Some(3.5));
    }

    /// A source that samples its processes (the supervisor) is not read from /proc again:
    /// its figures are what the store gets, for a pid that is not even a real process.
    #[tokio::test]
    async fn stats_from_the_source_are_used_as_given() {
        struct Sampled;
        impl ModelSource for Sampled {
            fn models(&self) -> Vec<ModelSample> {
                vec![ModelSample {
                    name: "m".into(),
                    port: 9,
                    pid: Some(u32::MAX - 1),
                    up: false,
                    restarts: 0,
                }]
            }
            fn process_stats(&self) -> Option<HashMap<u32, ProcessStat>> {
                Some(HashMap::from([(
                    u32::MAX - 1,
                    ProcessStat {
                        cpu_percent: 12.5,
                        rss_bytes: 4096,
                    },
                )]))
            }
        }
        let store = MetricStore::new("h", 10);
        let mut sampler = ModelSampler::new(
            std::sync::Arc::new(Sampled),
            ProcessMemory::default(),
            Duration::from_millis(100),
        );
        sampler.sample(&store).await;
        let dims = [(Dim::Model, "m")];
        assert_eq!(store.latest("ModelCPUUtilization", &dims), Some(12.5));
        assert_eq!(store.latest("ModelRSS", &dims), Some(4096.0));
    }

    #[tokio::test]
    async fn concurrent_scrapes_keep_their_order_and_overlap() {
        let finished = std::sync::Mutex::new(Vec::new());
        let futures: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|ms| {
                let finished = &finished;
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    finished.lock().unwrap().push(ms);
                    ms
                }
            })
            .collect();
        assert_eq!(join_all(futures).await, vec![30, 10, 20]);
        // They ran together (one after another would have finished 30, 10, 20).
        assert_eq!(*finished.lock().unwrap(), vec![10, 20, 30]);
    }

    #[test]
    fn batch_size_histogram_becomes_its_mean() {
        let text = "warden_model_batch_size_bucket{le=\"4\"} 2\nwarden_model_batch_size_sum 12\n\
                    warden_model_batch_size_count 4\n";
        let m = parse_child_metrics(text);
        assert_eq!(m.batch_size, Some(3.0));
        assert_eq!(m.queue_depth, None);
        assert_eq!(parse_child_metrics(""), ChildMetrics::default());
    }
}

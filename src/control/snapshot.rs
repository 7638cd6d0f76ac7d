//! The `snapshot` control method: one consistent picture of the host for the console — host
//! line, per-GPU latest values with recent history, and per-model status joined with its
//! traffic numbers from the metric store.

use crate::sinks::cloudwatch::SinkStats;
use crate::supervisor::{ModelStatus, SupervisorHandle};
use crate::telemetry::{Dim, MetricStore};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// Points of history per sparkline when the caller does not say (2 min at 1 s sampling).
pub const DEFAULT_HISTORY_POINTS: usize = 120;
/// Most points a caller may ask for (the store keeps 600).
const MAX_HISTORY_POINTS: usize = 600;
/// Request rate and error percentage are taken over this trailing window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Everything the console's overview shows, as of `at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    pub at_ms: u64,
    pub host: HostLine,
    pub gpus: Vec<GpuRow>,
    pub models: Vec<ModelRow>,
    /// Records given up so far, per sink and reason (`RecordsDropped`), largest first.
    #[serde(default)]
    pub drops: Vec<DropCount>,
    /// What each sink still has to deliver.
    #[serde(default)]
    pub backlog: Vec<SinkBacklog>,
    /// Each SLO's error budget and burn rates.
    #[serde(default)]
    pub slos: Vec<crate::alerts::slo::SloStatus>,
}

/// `RecordsDropped{Sink,Reason}`: records this agent gave up on since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropCount {
    pub sink: String,
    pub reason: String,
    pub records: u64,
}

/// One sink's pending work (spooled, not yet delivered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkBacklog {
    pub sink: String,
    pub pending: u64,
    /// What `pending` counts: `batches`, `events`, `notifications`.
    pub unit: String,
}

/// Reads one sink's backlog when a snapshot is taken.
#[derive(Clone)]
pub struct BacklogSource {
    pub sink: &'static str,
    pub unit: &'static str,
    pub pending: Arc<dyn Fn() -> u64 + Send + Sync>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostLine {
    pub host_id: String,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    /// Seconds since this agent started.
    pub uptime_secs: u64,
    /// Seconds since the host booted.
    #[serde(default)]
    pub host_uptime_secs: Option<u64>,
    pub agent_version: String,
    /// False when NVML could not be loaded (no GPUs shown then).
    pub gpu_available: Option<bool>,
    pub sinks: Vec<SinkHealth>,
}

/// How an outbound sink is doing, in words an on-call reads at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkHealth {
    pub name: String,
    /// `ok`, `waiting` (nothing sent yet), `degraded` (spooling), or `disabled`.
    pub state: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuRow {
    pub index: u32,
    pub utilization: Option<f64>,
    pub memory_used_bytes: Option<f64>,
    pub memory_total_bytes: Option<f64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    pub lost: bool,
    /// Utilisation history, oldest first.
    pub utilization_history: Vec<f64>,
    /// Memory-used history (bytes), oldest first.
    pub memory_history: Vec<f64>,
}

/// A model's supervisor status joined with its traffic and resource numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    #[serde(flatten)]
    pub status: ModelStatus,
    pub requests_per_sec: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub error_percent: Option<f64>,
    pub gpu_memory_bytes: Option<f64>,
    pub cpu_history: Vec<f64>,
    pub rss_history: Vec<f64>,
    /// Requests per sample interval, oldest first.
    pub requests_history: Vec<f64>,
}

/// Where the sink-health line comes from.
#[derive(Clone, Default)]
pub enum SinkStatsSource {
    #[default]
    Disabled,
    CloudWatch(Arc<SinkStats>),
}

/// What the `snapshot` method reads; cheap to clone into the method closure.
#[derive(Clone)]
pub struct SnapshotSource {
    pub supervisor: SupervisorHandle,
    pub store: Arc<MetricStore>,
    pub cloudwatch: SinkStatsSource,
    pub started: Instant,
    /// Sinks whose backlog the overview shows, in display order.
    pub backlogs: Vec<BacklogSource>,
    /// The SLO engine's view, when SLOs are on.
    pub slos: Option<Arc<dyn Fn() -> Vec<crate::alerts::slo::SloStatus> + Send + Sync>>,
}

impl SnapshotSource {
    pub fn new(
        supervisor: SupervisorHandle,
        store: Arc<MetricStore>,
        cloudwatch: SinkStatsSource,
    ) -> Self {
        SnapshotSource {
            supervisor,
            store,
            cloudwatch,
            started: Instant::now(),
            backlogs: Vec::new(),
            slos: None,
        }
    }

    /// Adds a sink's backlog to the overview.
    /// Where the snapshot reads the SLOs from.
    pub fn with_slos(
        mut self,
        slos: impl Fn() -> Vec<crate::alerts::slo::SloStatus> + Send + Sync + 'static,
    ) -> Self {
        self.slos = Some(Arc::new(slos));
        self
    }

    pub fn with_backlog(
        mut self,
        sink: &'static str,
        unit: &'static str,
        pending: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.backlogs.push(BacklogSource {
            sink,
            unit,
            pending: Arc::new(pending),
        });
        self
    }

    /// Takes the snapshot with `history` points per sparkline.
    pub fn take(&self, history: usize) -> Snapshot {
        let history = history.clamp(1, MAX_HISTORY_POINTS);
        let now = SystemTime::now();
        let host = HostLine {
            host_id: self.store.host().to_string(),
            cpu_percent: self.store.latest("HostCPUUtilization", &[]),
            memory_percent: self.store.latest("HostMemoryUtilization", &[]),
            uptime_secs: self.started.elapsed().as_secs(),
            host_uptime_secs: sysinfo::System::uptime().ok(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            gpu_available: self.store.latest("GPUAvailable", &[]).map(|v| v > 0.5),
            sinks: vec![sink_health("cloudwatch", &self.cloudwatch)],
        };
        let gpus = gpu_rows(&self.store, history);
        let models = self
            .supervisor
            .status()
            .into_iter()
            .map(|s| model_row(&self.store, s, history, now))
            .collect();
        Snapshot {
            at_ms: crate::supervisor::types::now_ms(),
            host,
            gpus,
            models,
            drops: drop_counts(&self.store),
            backlog: self
                .backlogs
                .iter()
                .map(|b| SinkBacklog {
                    sink: b.sink.to_string(),
                    pending: (b.pending)(),
                    unit: b.unit.to_string(),
                })
                .collect(),
            slos: self.slos.as_ref().map(|f| f()).unwrap_or_default(),
        }
    }

    /// Registers `snapshot` (param `history`: points per sparkline) on `dispatcher`.
    pub fn register(self, dispatcher: &mut super::Dispatcher) {
        dispatcher.register("snapshot", move |p: super::Params| {
            let source = self.clone();
            async move {
                let history = p.u64_or("history", DEFAULT_HISTORY_POINTS as u64)? as usize;
                serde_json::to_value(source.take(history))
                    .map_err(|e| super::MethodError::new("internal", e.to_string()))
            }
        });
    }
}

/// Sink health from its counters: spooled-but-not-replayed batches mean the peer is failing.
pub fn sink_health(name: &str, source: &SinkStatsSource) -> SinkHealth {
    let (state, detail) = match source {
        SinkStatsSource::Disabled => ("disabled", String::new()),
        SinkStatsSource::CloudWatch(stats) => {
            let calls = stats.put_calls.load(Ordering::Relaxed);
            let failures = stats.put_failures.load(Ordering::Relaxed);
            let spooled = stats.batches_spooled.load(Ordering::Relaxed);
            let replayed = stats.batches_replayed.load(Ordering::Relaxed);
            let backlog = spooled.saturating_sub(replayed);
            if backlog > 0 {
                ("degraded", format!("{backlog} batches spooled"))
            } else if calls == 0 {
                ("waiting", "no flush yet".to_string())
            } else {
                ("ok", format!("{calls} calls, {failures} failed"))
            }
        }
    };
    SinkHealth {
        name: name.to_string(),
        state: state.to_string(),
        detail,
    }
}

/// Every non-zero `RecordsDropped` series, largest first (then by sink and reason).
pub fn drop_counts(store: &MetricStore) -> Vec<DropCount> {
    let mut out: Vec<DropCount> = store
        .series()
        .iter()
        .filter(|s| s.key.metric == "RecordsDropped")
        .filter_map(|s| {
            let sink = s.key.dim(Dim::Sink)?.to_string();
            let reason = s.key.dim(Dim::Reason)?.to_string();
            let records = crate::telemetry::drops::total(store, &sink, &reason);
            (records > 0.0).then_some(DropCount {
                sink,
                reason,
                records: records as u64,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.records
            .cmp(&a.records)
            .then_with(|| (&a.sink, &a.reason).cmp(&(&b.sink, &b.reason)))
    });
    out
}

fn tail(store: &MetricStore, metric: &'static str, dims: &[(Dim, &str)], n: usize) -> Vec<f64> {
    let points = store.history(&store.key(metric, dims));
    let skip = points.len().saturating_sub(n);
    points[skip..].iter().map(|p| p.value).collect()
}

fn gpu_rows(store: &MetricStore, history: usize) -> Vec<GpuRow> {
    let mut indices: Vec<u32> = store
        .series()
        .iter()
        .filter(|s| s.key.metric == "GPUUtilization" || s.key.metric == "GPULost")
        .filter_map(|s| s.key.dim(Dim::Gpu).and_then(|g| g.parse().ok()))
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices
        .into_iter()
        .map(|i| {
            let label = i.to_string();
            let dims = [(Dim::Gpu, label.as_str())];
            let latest = |m| store.latest(m, &dims);
            GpuRow {
                index: i,
                utilization: latest("GPUUtilization"),
                memory_used_bytes: latest("GPUMemoryUsed"),
                memory_total_bytes: latest("GPUMemoryTotal"),
                temperature_c: latest("GPUTemperature"),
                power_w: latest("GPUPowerDraw"),
                power_limit_w: latest("GPUPowerLimit"),
                lost: latest("GPULost").is_some_and(|v| v > 0.5),
                utilization_history: tail(store, "GPUUtilization", &dims, history),
                memory_history: tail(store, "GPUMemoryUsed", &dims, history),
            }
        })
        .collect()
}

fn model_row(
    store: &MetricStore,
    status: ModelStatus,
    history: usize,
    now: SystemTime,
) -> ModelRow {
    let name = status.name.clone();
    let dims = [(Dim::Model, name.as_str())];
    let requests = store.history(&store.key("ModelRequests", &dims));
    let errors = store.history(&store.key("ModelErrors", &dims));
    let served = counter_increase(&requests, now, RATE_WINDOW);
    let failed = counter_increase(&errors, now, RATE_WINDOW);
    let requests_per_sec = (!requests.is_empty()).then(|| served / RATE_WINDOW.as_secs_f64());
    let error_percent = (served > 0.0).then(|| 100.0 * failed / served);
    let q = |q| store.latency_quantile(&name, q);
    ModelRow {
        requests_per_sec,
        p50_ms: q(0.50),
        p95_ms: q(0.95),
        p99_ms: q(0.99),
        error_percent,
        gpu_memory_bytes: store.latest("ModelGPUMemoryUsed", &dims),
        cpu_history: tail(store, "ModelCPUUtilization", &dims, history),
        rss_history: tail(store, "ModelRSS", &dims, history),
        requests_history: requests_per_second_buckets(&requests, now, history),
        status,
    }
}

/// How much a counter (the store's history: a baseline point, then one running total per
/// one-second bucket, oldest first) grew over the trailing `window` before `now`. The last
/// point at or before the window's start is the base; with none, the first (the baseline).
pub fn counter_increase(
    points: &[crate::telemetry::store::Point],
    now: SystemTime,
    window: Duration,
) -> f64 {
    let Some(last) = points.last() else {
        return 0.0;
    };
    let start = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let base = points
        .iter()
        .rev()
        .find(|p| p.at <= start)
        .map_or_else(|| first_base(points), |p| p.value);
    (last.value - base).max(0.0)
}

/// The total a history's increases count from: its first point (the store's baseline).
fn first_base(points: &[crate::telemetry::store::Point]) -> f64 {
    points.first().map_or(0.0, |p| p.value)
}

/// Requests per one-second bucket over the last `n` seconds, oldest first (a sparkline).
pub fn requests_per_second_buckets(
    points: &[crate::telemetry::store::Point],
    now: SystemTime,
    n: usize,
) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let mut buckets = vec![0.0; n];
    let mut previous: Option<f64> = None;
    for p in points {
        let increase = previous.map_or_else(
            || p.value - first_base(points),
            |prev| (p.value - prev).max(0.0),
        );
        previous = Some(p.value);
        let Ok(age) = now.duration_since(p.at) else {
            // Recorded after `now` was read: it belongs to the newest bucket.
            buckets[n - 1] += increase;
            continue;
        };
        let age = age.as_secs() as usize;
        if age < n {
            buckets[n - 1 - age] += increase;
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::store::Point;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn counter(points: &[(u64, f64)]) -> Vec<Point> {
        points
            .iter()
            .map(|&(s, v)| Point {
                at: at(s),
                value: v,
            })
            .collect()
    }

    #[test]
    fn counter_increase_uses_the_last_point_before_the_window_as_base() {
        let pts = counter(&[(0, 10.0), (50, 12.0), (70, 15.0), (100, 20.0)]);
        // Window 60 s before t=100 starts at t=40: base is the t=0 point (10).
        assert_eq!(
            counter_increase(&pts, at(100), Duration::from_secs(60)),
            10.0
        );
        // Window starting at t=60: base 12.
        assert_eq!(
            counter_increase(&pts, at(120), Duration::from_secs(60)),
            8.0
        );
        // A counter born inside the window counts from its baseline (0 for a new one, the
        // dropped total for a truncated history), whatever the first bucket holds.
        let young = counter(&[(89, 0.0), (90, 1000.0), (95, 2000.0)]);
        assert_eq!(
            counter_increase(&young, at(100), Duration::from_secs(60)),
            2000.0
        );
        let truncated = counter(&[(89, 500.0), (90, 503.0), (95, 510.0)]);
        assert_eq!(
            counter_increase(&truncated, at(100), Duration::from_secs(60)),
            10.0
        );
        assert_eq!(counter_increase(&[], at(100), Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn request_buckets_spread_increases_by_age() {
        let pts = counter(&[(95, 1.0), (97, 2.0), (97, 3.0), (99, 7.0)]);
        let b = requests_per_second_buckets(&pts, at(100), 5);
        // ages: 5 (dropped), 3, 3, 1
        assert_eq!(b, vec![0.0, 2.0, 0.0, 4.0, 0.0]);
        assert!(requests_per_second_buckets(&pts, at(100), 0).is_empty());
    }

    fn status(name: &str) -> ModelStatus {
        ModelStatus {
            name: name.into(),
            port: 8001,
            pid: Some(42),
            state: crate::supervisor::ModelState::Ready,
            uptime_secs: 1.0,
            restarts: 0,
            last_exit: None,
            cpu_percent: None,
            rss_bytes: None,
        }
    }

    #[test]
    fn gpu_rows_join_the_latest_values_and_history_per_index() {
        let store = MetricStore::new("h", 600);
        for i in 0..5u64 {
            for (gpu, util) in [("0", 10.0), ("1", 90.0), ("10", 50.0)] {
                let dims = [(Dim::Gpu, gpu)];
                store.set_gauge("GPUUtilization", &dims, util + i as f64, at(i));
                store.set_gauge("GPUMemoryUsed", &dims, 1e9, at(i));
                store.set_gauge("GPUMemoryTotal", &dims, 16e9, at(i));
                store.set_gauge("GPUTemperature", &dims, 60.0, at(i));
                store.set_gauge("GPULost", &dims, 0.0, at(i));
            }
        }
        store.set_gauge("GPULost", &[(Dim::Gpu, "1")], 1.0, at(6));
        let rows = gpu_rows(&store, 3);
        let idx: Vec<u32> = rows.iter().map(|g| g.index).collect();
        assert_eq!(idx, vec![0, 1, 10], "numeric order, not string order");
        assert_eq!(rows[0].utilization, Some(14.0));
        assert_eq!(rows[0].utilization_history, vec![12.0, 13.0, 14.0]);
        assert_eq!(rows[0].memory_total_bytes, Some(16e9));
        assert_eq!(rows[0].power_w, None, "never sampled stays unknown");
        assert!(rows[1].lost && !rows[0].lost);
    }

    #[test]
    fn model_rows_carry_rate_percentiles_and_errors_from_the_store() {
        let store = MetricStore::new("h", 600);
        // 30 requests over the last 30 s, 3 of them failed; latencies 1..=30 ms.
        for i in 0..30u64 {
            store.record_request("m", (i + 1) as f64, i % 10 != 0, at(70 + i));
        }
        store.set_gauge("ModelGPUMemoryUsed", &[(Dim::Model, "m")], 2e9, at(99));
        let row = model_row(&store, status("m"), 10, at(100));
        assert_eq!(row.requests_per_sec, Some(0.5));
        assert_eq!(row.error_percent, Some(10.0));
        let p50 = row.p50_ms.unwrap();
        assert!((14.0..=16.0).contains(&p50), "{p50}");
        assert!(row.p99_ms.unwrap() >= row.p95_ms.unwrap());
        assert_eq!(row.gpu_memory_bytes, Some(2e9));
        assert_eq!(row.requests_history.len(), 10);
        // Ages 1..=9 s fall in the 10 one-second buckets (age 0 is the current second).
        assert_eq!(row.requests_history.iter().sum::<f64>(), 9.0);
        assert_eq!(row.requests_history[9], 0.0);
        assert_eq!(row.status.pid, Some(42));
        // No traffic at all: unknown, not zero.
        let idle = model_row(&store, status("idle"), 10, at(100));
        assert_eq!(
            (idle.requests_per_sec, idle.error_percent, idle.p50_ms),
            (None, None, None)
        );
    }

    #[test]
    fn drop_counts_list_every_sink_and_reason_largest_first() {
        use crate::telemetry::drops::{reason, record, sink};
        let store = MetricStore::new("h", 600);
        assert!(drop_counts(&store).is_empty());
        record(Some(&store), sink::LOGS, reason::SPOOL_FULL, 40);
        record(Some(&store), sink::NOTIFY, reason::SPOOL_WRITE, 1);
        record(Some(&store), sink::LOGS, reason::SPOOL_FULL, 2);
        record(Some(&store), sink::CLOUDWATCH, reason::REJECTED, 5);
        let got: Vec<(String, String, u64)> = drop_counts(&store)
            .into_iter()
            .map(|d| (d.sink, d.reason, d.records))
            .collect();
        assert_eq!(
            got,
            vec![
                ("logs".into(), "spool_full".into(), 42),
                ("cloudwatch".into(), "rejected".into(), 5),
                ("notify".into(), "spool_write".into(), 1),
            ]
        );
    }

    #[test]
    fn sink_health_reads_the_counters() {
        assert_eq!(
            sink_health("cw", &SinkStatsSource::Disabled).state,
            "disabled"
        );
        let stats = Arc::new(SinkStats::default());
        let src = SinkStatsSource::CloudWatch(stats.clone());
        assert_eq!(sink_health("cw", &src).state, "waiting");
        stats.put_calls.store(3, Ordering::Relaxed);
        assert_eq!(sink_health("cw", &src).state, "ok");
        stats.batches_spooled.store(2, Ordering::Relaxed);
        let h = sink_health("cw", &src);
        assert_eq!(
            (h.state.as_str(), h.detail.as_str()),
            ("degraded", "2 batches spooled")
        );
    }
}

//! The metric store: latest value plus bounded history per series, and the per-flush windows
//! the CloudWatch sink drains. Cheap to read for alerts, the console and `/metrics`.

use super::catalog::{self, Dim, MetricDef};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, VecDeque};
use std::sync::RwLock;
use std::time::SystemTime;

/// Latency is recorded in microseconds: sub-millisecond CPU models stay distinguishable.
const LATENCY_SIGFIG: u8 = 2;

/// A series: a catalogue metric plus its dimension values (Host always first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub metric: &'static str,
    pub dims: Vec<(Dim, String)>,
}

impl SeriesKey {
    pub fn new(metric: &'static str, dims: Vec<(Dim, String)>) -> Self {
        let mut dims = dims;
        dims.sort();
        SeriesKey { metric, dims }
    }

    pub fn dim(&self, d: Dim) -> Option<&str> {
        self.dims
            .iter()
            .find(|(k, _)| *k == d)
            .map(|(_, v)| v.as_str())
    }

    pub fn def(&self) -> &'static MetricDef {
        catalog::def(self.metric)
    }
}

/// One sample in a series' history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: SystemTime,
    pub value: f64,
}

/// Samples folded since the last flush: what a CloudWatch StatisticSet carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatSet {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: f64,
}

impl StatSet {
    fn of(v: f64) -> Self {
        StatSet {
            min: v,
            max: v,
            sum: v,
            count: 1.0,
        }
    }

    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1.0;
    }
}

/// A read-only view of one gauge or counter series.
#[derive(Debug, Clone)]
pub struct SeriesView {
    pub key: SeriesKey,
    /// Gauges: the latest sample; counters: the running total.
    pub value: f64,
    pub at: SystemTime,
}

/// A read-only view of one latency histogram.
#[derive(Debug, Clone)]
pub struct HistogramView {
    pub key: SeriesKey,
    pub count: u64,
    pub sum_ms: f64,
    /// (upper bound ms, cumulative count) for the given bounds.
    pub buckets: Vec<(f64, u64)>,
}

/// What one flush ships: statistic sets and latency distributions collected since the last one.
#[derive(Debug, Clone, Default)]
pub struct FlushWindow {
    pub stats: Vec<(SeriesKey, StatSet)>,
    /// (value ms, count) pairs, ascending.
    pub distributions: Vec<(SeriesKey, Vec<(f64, f64)>)>,
}

impl FlushWindow {
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty() && self.distributions.is_empty()
    }
}

struct Series {
    latest: Point,
    history: VecDeque<Point>,
    window: Option<StatSet>,
}

struct Latency {
    all: Histogram<u64>,
    window: Histogram<u64>,
    sum_us: u64,
    /// The latest raw samples (ms) for windowed percentiles (alert rules).
    recent: VecDeque<(SystemTime, f64)>,
}

/// Raw latency samples kept per model for windowed percentiles; at high request rates the
/// window is effectively the last this-many requests.
const RECENT_LATENCIES: usize = 20_000;

#[derive(Default)]
struct Inner {
    series: BTreeMap<SeriesKey, Series>,
    latency: BTreeMap<SeriesKey, Latency>,
}

/// The store every sampler writes and every consumer reads; share it as `Arc<MetricStore>`.
pub struct MetricStore {
    host: String,
    history_len: usize,
    inner: RwLock<Inner>,
}

/// 1 µs .. 1 h, auto-resizing beyond that (creation only fails for invalid bounds).
fn new_latency() -> Option<Latency> {
    let mut h = Histogram::new_with_bounds(1, 3_600_000_000, LATENCY_SIGFIG).ok()?;
    h.auto(true);
    Some(Latency {
        all: h.clone(),
        window: h,
        sum_us: 0,
        recent: VecDeque::new(),
    })
}

impl MetricStore {
    /// A store for `host` keeping `history_len` points per series (console sparklines, alerts).
    pub fn new(host: impl Into<String>, history_len: usize) -> Self {
        MetricStore {
            host: host.into(),
            history_len: history_len.max(1),
            inner: RwLock::new(Inner::default()),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The full key for `metric` with the given non-Host dimensions.
    pub fn key(&self, metric: &'static str, dims: &[(Dim, &str)]) -> SeriesKey {
        let mut all = Vec::with_capacity(dims.len() + 1);
        all.push((Dim::Host, self.host.clone()));
        all.extend(dims.iter().map(|(d, v)| (*d, (*v).to_string())));
        SeriesKey::new(metric, all)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a sample; gauges fold `value` into the window, counters accumulate the increase.
    fn push(
        &self,
        inner: &mut Inner,
        key: SeriesKey,
        value: f64,
        increase: Option<f64>,
        at: SystemTime,
    ) {
        let history_len = self.history_len;
        let s = inner.series.entry(key).or_insert_with(|| Series {
            latest: Point { at, value },
            history: VecDeque::with_capacity(history_len.min(64)),
            window: None,
        });
        s.latest = Point { at, value };
        if s.history.len() == history_len {
            s.history.pop_front();
        }
        s.history.push_back(Point { at, value });
        s.window = Some(match (s.window, increase) {
            (None, None) => StatSet::of(value),
            (Some(mut w), None) => {
                w.add(value);
                w
            }
            // A counter's window is one observation: the increase over the flush period.
            (w, Some(d)) => StatSet::of(w.map_or(0.0, |w| w.sum) + d),
        });
    }

    /// Records a gauge sample.
    pub fn set_gauge(
        &self,
        metric: &'static str,
        dims: &[(Dim, &str)],
        value: f64,
        at: SystemTime,
    ) {
        let key = self.key(metric, dims);
        let mut inner = self.write();
        self.push(&mut inner, key, value, None, at);
    }

    /// Adds `delta` to a counter; history holds the running total, the flush window the increase.
    pub fn add_counter(
        &self,
        metric: &'static str,
        dims: &[(Dim, &str)],
        delta: f64,
        at: SystemTime,
    ) {
        let key = self.key(metric, dims);
        let mut inner = self.write();
        let total = inner.series.get(&key).map_or(0.0, |s| s.latest.value) + delta;
        self.push(&mut inner, key, total, Some(delta), at);
    }

    /// Sets a counter from an observed running total (e.g. restarts), recording the increase;
    /// a total going backwards means the source restarted, so the whole total is the increase.
    pub fn set_counter_total(
        &self,
        metric: &'static str,
        dims: &[(Dim, &str)],
        total: f64,
        at: SystemTime,
    ) {
        let previous = self.latest(metric, dims);
        let delta = match previous {
            Some(p) if total >= p => total - p,
            Some(_) => total,
            None => 0.0,
        };
        self.add_counter(metric, dims, delta, at);
        if previous.is_none() && total > 0.0 {
            // First sight: adopt the total without shipping history as a burst of increases.
            let key = self.key(metric, dims);
            let mut inner = self.write();
            if let Some(s) = inner.series.get_mut(&key) {
                s.latest.value = total;
                if let Some(p) = s.history.back_mut() {
                    p.value = total;
                }
            }
        }
    }

    /// Records one inference latency for `model` (called by the API gateway per request).
    pub fn observe_latency(&self, model: &str, ms: f64) {
        self.observe_latency_at(model, ms, SystemTime::now());
    }

    /// [`observe_latency`](Self::observe_latency) at a given time.
    pub fn observe_latency_at(&self, model: &str, ms: f64, at: SystemTime) {
        let key = self.key("ModelLatency", &[(Dim::Model, model)]);
        let us = (ms.max(0.0) * 1000.0).round().max(1.0) as u64;
        let mut inner = self.write();
        if !inner.latency.contains_key(&key) {
            let Some(l) = new_latency() else { return };
            inner.latency.insert(key.clone(), l);
        }
        let Some(l) = inner.latency.get_mut(&key) else {
            return;
        };
        // Auto-resizing histograms accept any u64, so recording cannot fail.
        let _ = l.all.record(us);
        let _ = l.window.record(us);
        l.sum_us = l.sum_us.saturating_add(us);
        if l.recent.len() == RECENT_LATENCIES {
            l.recent.pop_front();
        }
        l.recent.push_back((at, ms.max(0.0)));
    }

    /// Raw latencies (ms) of one ModelLatency series recorded at or after `since`.
    pub fn latency_samples(&self, key: &SeriesKey, since: SystemTime) -> Vec<(SystemTime, f64)> {
        self.read()
            .latency
            .get(key)
            .map(|l| {
                l.recent
                    .iter()
                    .filter(|(t, _)| *t >= since)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One finished request: latency, the request counter and, on failure, the error counter.
    pub fn record_request(&self, model: &str, ms: f64, ok: bool, at: SystemTime) {
        self.observe_latency_at(model, ms, at);
        self.add_counter("ModelRequests", &[(Dim::Model, model)], 1.0, at);
        if !ok {
            self.add_counter("ModelErrors", &[(Dim::Model, model)], 1.0, at);
        } else if self.latest("ModelErrors", &[(Dim::Model, model)]).is_none() {
            // Create the series so error rate reads 0 rather than "no data".
            self.add_counter("ModelErrors", &[(Dim::Model, model)], 0.0, at);
        }
    }

    /// The latest gauge value or counter total.
    pub fn latest(&self, metric: &'static str, dims: &[(Dim, &str)]) -> Option<f64> {
        let key = self.key(metric, dims);
        self.read().series.get(&key).map(|s| s.latest.value)
    }

    /// The bounded history of one series, oldest first.
    pub fn history(&self, key: &SeriesKey) -> Vec<Point> {
        self.read()
            .series
            .get(key)
            .map(|s| s.history.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every gauge/counter series with its latest value.
    pub fn series(&self) -> Vec<SeriesView> {
        self.read()
            .series
            .iter()
            .map(|(k, s)| SeriesView {
                key: k.clone(),
                value: s.latest.value,
                at: s.latest.at,
            })
            .collect()
    }

    /// Every latency histogram, with cumulative counts at the given upper bounds (ms).
    pub fn histograms(&self, bounds_ms: &[f64]) -> Vec<HistogramView> {
        self.read()
            .latency
            .iter()
            .map(|(k, l)| HistogramView {
                key: k.clone(),
                count: l.all.len(),
                sum_ms: l.sum_us as f64 / 1000.0,
                buckets: bounds_ms
                    .iter()
                    .map(|b| {
                        let us = (b * 1000.0) as u64;
                        (*b, l.all.count_between(0, us))
                    })
                    .collect(),
            })
            .collect()
    }

    /// Quantile `q` (0..=1) of all latencies seen for `model`, in ms.
    pub fn latency_quantile(&self, model: &str, q: f64) -> Option<f64> {
        let key = self.key("ModelLatency", &[(Dim::Model, model)]);
        let inner = self.read();
        let l = inner.latency.get(&key)?;
        (!l.all.is_empty()).then(|| l.all.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Number of distinct series (the CloudWatch custom-metric count).
    pub fn series_count(&self) -> usize {
        let inner = self.read();
        inner.series.len() + inner.latency.len()
    }

    /// Takes everything recorded since the previous call: the CloudWatch sink's flush window.
    pub fn drain_window(&self) -> FlushWindow {
        let mut inner = self.write();
        let mut out = FlushWindow::default();
        for (k, s) in inner.series.iter_mut() {
            if let Some(w) = s.window.take() {
                out.stats.push((k.clone(), w));
            }
        }
        for (k, l) in inner.latency.iter_mut() {
            if l.window.is_empty() {
                continue;
            }
            let pairs = l
                .window
                .iter_recorded()
                .map(|v| {
                    let ms = l.window.median_equivalent(v.value_iterated_to()) as f64 / 1000.0;
                    (ms, v.count_at_value() as f64)
                })
                .collect();
            l.window.reset();
            out.distributions.push((k.clone(), pairs));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn gauges_keep_latest_bounded_history_and_a_window() {
        let store = MetricStore::new("h1", 3);
        for (i, v) in [10.0, 30.0, 20.0, 40.0].into_iter().enumerate() {
            store.set_gauge("GPUUtilization", &[(Dim::Gpu, "0")], v, t(i as u64));
        }
        assert_eq!(
            store.latest("GPUUtilization", &[(Dim::Gpu, "0")]),
            Some(40.0)
        );
        let key = store.key("GPUUtilization", &[(Dim::Gpu, "0")]);
        let hist: Vec<f64> = store.history(&key).iter().map(|p| p.value).collect();
        assert_eq!(hist, vec![30.0, 20.0, 40.0]);
        let w = store.drain_window();
        assert_eq!(w.stats.len(), 1);
        let s = w.stats[0].1;
        assert_eq!((s.min, s.max, s.sum, s.count), (10.0, 40.0, 100.0, 4.0));
        assert!(store.drain_window().is_empty(), "a window is shipped once");
    }

    #[test]
    fn counters_ship_increases_and_totals_survive_source_restarts() {
        let store = MetricStore::new("h1", 8);
        let dims = [(Dim::Model, "m")];
        store.set_counter_total("ModelRestarts", &dims, 3.0, t(0));
        assert_eq!(store.latest("ModelRestarts", &dims), Some(3.0));
        assert_eq!(
            store.drain_window().stats[0].1.sum,
            0.0,
            "first sight is no increase"
        );
        store.set_counter_total("ModelRestarts", &dims, 5.0, t(1));
        store.set_counter_total("ModelRestarts", &dims, 6.0, t(2));
        let s = store.drain_window().stats[0].1;
        assert_eq!((s.sum, s.min, s.max, s.count), (3.0, 3.0, 3.0, 1.0));
        assert_eq!(store.latest("ModelRestarts", &dims), Some(6.0));
    }

    #[test]
    fn latency_window_reproduces_the_distribution() {
        let store = MetricStore::new("h1", 8);
        for _ in 0..90 {
            store.observe_latency("m", 10.0);
        }
        for _ in 0..10 {
            store.observe_latency("m", 200.0);
        }
        let w = store.drain_window();
        let (_, pairs) = &w.distributions[0];
        let total: f64 = pairs.iter().map(|(_, c)| c).sum();
        assert_eq!(total, 100.0);
        assert_eq!(pairs.len(), 2);
        assert!(
            (pairs[0].0 - 10.0).abs() < 0.1 && pairs[0].1 == 90.0,
            "{pairs:?}"
        );
        assert!(
            (pairs[1].0 - 200.0).abs() < 2.0 && pairs[1].1 == 10.0,
            "{pairs:?}"
        );
        let p95 = store.latency_quantile("m", 0.95).unwrap();
        assert!((p95 - 200.0).abs() < 2.0, "{p95}");
        assert!(store.drain_window().distributions.is_empty());
    }
}

//! The metric store: latest value plus time-bucketed history per series, and the per-flush
//! windows the CloudWatch sink drains. Cheap to read for alerts, the console and `/metrics`.
//!
//! History is bucketed by time, not by update, so it covers the same span at 1 req/s and at
//! 10,000 req/s:
//! - gauges and counters: one [`Point`] per [`HISTORY_BUCKET`] (1 s) per series, stamped with
//!   the bucket's start. Updates inside one bucket coalesce: a counter's point holds the running
//!   total after the bucket's last update, a gauge's the last value. Every series shares the
//!   same bucket grid, so `ModelErrors` and `ModelRequests` are counted over the same span.
//!   A counter's history starts with a baseline point (the total before the first retained
//!   bucket, stamped one bucket earlier), so increases are exact even for a young series.
//! - latency: one histogram per [`LATENCY_BUCKET`] (10 s), [`LATENCY_BUCKETS`] of them, merged
//!   on demand for a window's percentiles, mean, min, max and rate.
//!
//! With the agent's 600 history points both cover [`MAX_WINDOW`] (10 min) at any rate; rule
//! validation rejects longer windows. Non-finite values are refused and counted as drops.

use super::catalog::{self, Dim, MetricDef};
use super::drops;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, VecDeque};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Latency is recorded in microseconds: sub-millisecond CPU models stay distinguishable.
/// Two significant figures: quantiles within 1 % (hdrhistogram's relative precision).
const LATENCY_SIGFIG: u8 = 2;

/// Width of one gauge/counter history bucket: updates within it coalesce into one point.
pub const HISTORY_BUCKET: Duration = Duration::from_secs(1);

/// Width of one latency bucket of the windowed histograms.
pub const LATENCY_BUCKET: Duration = Duration::from_secs(10);

/// Latency buckets kept per model: 60 × 10 s = 10 min.
pub const LATENCY_BUCKETS: usize = 60;

/// The longest window a rule may use: what the latency buckets and the agent's 600 one-second
/// history points are guaranteed to cover whatever the update rate.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);

/// Upper bound of the windowed latency histograms (µs); slower requests count as this value.
/// 1 µs .. 60 s at 2 significant figures with u32 counts is 2,560 counters = 10 KiB dense.
const WINDOW_LATENCY_MAX_US: u64 = 60_000_000;

/// The series one model's requests update ([`MetricStore::request_series`]).
#[derive(Debug, Clone)]
pub struct RequestSeries {
    latency: SeriesKey,
    requests: SeriesKey,
    errors: SeriesKey,
    client_errors: SeriesKey,
}

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

/// One point of a series' history: the bucket's start and its value (see the module doc).
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

/// The latencies of one model over a window: the merged 10 s buckets overlapping it.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    hist: Histogram<u64>,
    sum_us: u64,
    /// The latest sample, when it was taken inside the window.
    last_ms: Option<f64>,
    /// From the start of the first bucket overlapping the window to `now`.
    span: Duration,
}

impl LatencyWindow {
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Quantile `q` (0..=1) in ms, within the histogram's precision.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        (self.count() > 0).then(|| us_to_ms(self.hist.value_at_quantile(q)))
    }

    /// Exact mean in ms (from the recorded sum, not the histogram).
    pub fn mean(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.sum_us as f64 / 1000.0 / self.count() as f64)
    }

    pub fn min(&self) -> Option<f64> {
        (self.count() > 0).then(|| us_to_ms(self.hist.min()))
    }

    pub fn max(&self) -> Option<f64> {
        (self.count() > 0).then(|| us_to_ms(self.hist.max()))
    }

    pub fn last(&self) -> Option<f64> {
        self.last_ms
    }

    /// Requests per second over the covered span.
    pub fn rate(&self) -> Option<f64> {
        let secs = self.span.as_secs_f64();
        (self.count() > 0 && secs > 0.0).then(|| self.count() as f64 / secs)
    }
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Seconds since the epoch, rounded down to a multiple of `width` (times before 1970 are 0).
fn bucket_start(at: SystemTime, width: Duration) -> u64 {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let w = width.as_secs().max(1);
    secs / w * w
}

fn epoch_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A history point as stored: the bucket's start in epoch seconds (u32: until 2106), packed
/// to 12 bytes where a `SystemTime` point takes 24 ([`MetricStore::history`] hands out
/// [`Point`]s). Fields are only ever copied, never borrowed.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Slot {
    secs: u32,
    value: f64,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 12);

impl Slot {
    fn new(secs: u64, value: f64) -> Slot {
        Slot {
            secs: u32::try_from(secs).unwrap_or(u32::MAX),
            value,
        }
    }

    fn secs(self) -> u64 {
        u64::from(self.secs)
    }

    fn point(self) -> Point {
        Point {
            at: epoch_secs(self.secs()),
            value: self.value,
        }
    }
}

struct Series {
    latest: Point,
    /// One point per bucket, oldest first. Grown to exactly the history length, never to the
    /// next power of two: with ~230 series on an 8-GPU host the doubling alone was ~3 MiB.
    history: VecDeque<Slot>,
    /// Counters: the total before the first retained point (what an increase counts from).
    base: f64,
    counter: bool,
    /// `set_counter_total` series: the source's last observed total (to see its resets).
    source_total: Option<f64>,
    window: Option<StatSet>,
}

/// One closed or open 10 s latency bucket. The open one is dense; closed ones are compacted
/// to their recorded (value µs, count) pairs when that is smaller, so a model with a narrow
/// latency spread keeps a few KiB per bucket, never more than the dense 10 KiB.
enum LatencyCounts {
    Dense(Histogram<u32>),
    Sparse(Box<[(u32, u32)]>),
}

struct LatencyBucket {
    start: u64,
    counts: LatencyCounts,
    sum_us: u64,
}

/// Bytes of one dense window histogram's counters, to decide whether compaction pays.
const DENSE_BYTES: usize = 2_560 * 4;

impl LatencyBucket {
    fn compact(&mut self) {
        let LatencyCounts::Dense(h) = &self.counts else {
            return;
        };
        let pairs: Vec<(u32, u32)> = h
            .iter_recorded()
            .map(|v| {
                let value = h.median_equivalent(v.value_iterated_to());
                let count = v.count_at_value();
                (u32::try_from(value).unwrap_or(u32::MAX), count)
            })
            .collect();
        if pairs.len() * std::mem::size_of::<(u32, u32)>() < DENSE_BYTES {
            self.counts = LatencyCounts::Sparse(pairs.into_boxed_slice());
        }
    }

    fn merge_into(&self, into: &mut Histogram<u64>) {
        match &self.counts {
            LatencyCounts::Dense(h) => {
                for v in h.iter_recorded() {
                    into.saturating_record_n(
                        h.median_equivalent(v.value_iterated_to()),
                        u64::from(v.count_at_value()),
                    );
                }
            }
            LatencyCounts::Sparse(pairs) => {
                for (value, count) in pairs.iter() {
                    into.saturating_record_n(u64::from(*value), u64::from(*count));
                }
            }
        }
    }
}

/// Per model: all-time and flush-window histograms (2 × ~13 KiB), plus at most
/// [`LATENCY_BUCKETS`] window buckets of at most 10 KiB each (≈ 0.6 MiB worst case per busy
/// model, typically a few KiB per bucket after compaction; idle buckets cost nothing).
struct Latency {
    all: Histogram<u64>,
    window: Histogram<u64>,
    sum_us: u64,
    last: Option<(SystemTime, f64)>,
    recent: VecDeque<LatencyBucket>,
}

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
        last: None,
        recent: VecDeque::new(),
    })
}

fn new_window_histogram<T: hdrhistogram::Counter>() -> Option<Histogram<T>> {
    Histogram::new_with_bounds(1, WINDOW_LATENCY_MAX_US, LATENCY_SIGFIG).ok()
}

impl MetricStore {
    /// A store for `host` keeping `history_len` one-second points per series (console
    /// sparklines, alerts).
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

    /// Counts a refused NaN/±Inf; called without the store's lock held (it takes it).
    fn refuse_non_finite(&self) {
        drops::record(Some(self), drops::sink::STORE, drops::reason::NON_FINITE, 1);
    }

    /// Folds a sample into its bucket; gauges fold `value` into the flush window, counters
    /// (`increase` set) accumulate the increase. A new counter starts from `value - increase`.
    fn push(
        &self,
        inner: &mut Inner,
        key: &SeriesKey,
        value: f64,
        increase: Option<f64>,
        at: SystemTime,
    ) {
        // Looked up once, by reference: the key is copied only for a new series.
        if let Some(s) = inner.series.get_mut(key) {
            Self::fold(s, self.history_len, value, increase, at);
            return;
        }
        let mut fresh = Series {
            latest: Point { at, value },
            history: VecDeque::with_capacity(self.history_len.min(64)),
            base: value - increase.unwrap_or(0.0),
            counter: increase.is_some(),
            source_total: None,
            window: None,
        };
        Self::fold(&mut fresh, self.history_len, value, increase, at);
        inner.series.insert(key.clone(), fresh);
    }

    /// [`Self::push`] into a series that exists.
    fn fold(s: &mut Series, history_len: usize, value: f64, increase: Option<f64>, at: SystemTime) {
        let bucket = bucket_start(at, HISTORY_BUCKET);
        s.latest = Point { at, value };
        match s.history.back_mut() {
            // Same bucket, or a late update from an earlier one: the newest point carries it.
            Some(last) if bucket <= last.secs() => last.value = value,
            _ => {
                if s.history.len() == history_len
                    && let Some(old) = s.history.pop_front()
                {
                    s.base = old.value;
                }
                let (len, cap) = (s.history.len(), s.history.capacity());
                if len == cap {
                    s.history
                        .reserve_exact((cap * 2).max(64).min(history_len).saturating_sub(len));
                }
                s.history.push_back(Slot::new(bucket, value));
            }
        }
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

    /// Records a gauge sample (NaN/±Inf are refused and counted).
    pub fn set_gauge(
        &self,
        metric: &'static str,
        dims: &[(Dim, &str)],
        value: f64,
        at: SystemTime,
    ) {
        if !value.is_finite() {
            return self.refuse_non_finite();
        }
        let key = self.key(metric, dims);
        let mut inner = self.write();
        self.push(&mut inner, &key, value, None, at);
    }

    /// Adds `delta` to a counter; history holds the running total, the flush window the increase.
    pub fn add_counter(
        &self,
        metric: &'static str,
        dims: &[(Dim, &str)],
        delta: f64,
        at: SystemTime,
    ) {
        if !delta.is_finite() {
            return self.refuse_non_finite();
        }
        let key = self.key(metric, dims);
        let mut inner = self.write();
        if !self.add_locked(&mut inner, &key, delta, at) {
            drop(inner);
            self.refuse_non_finite();
        }
    }

    /// [`Self::add_counter`] under the lock; false when the total would not be finite.
    fn add_locked(&self, inner: &mut Inner, key: &SeriesKey, delta: f64, at: SystemTime) -> bool {
        if let Some(s) = inner.series.get_mut(key) {
            let total = s.latest.value + delta;
            if !total.is_finite() {
                return false;
            }
            Self::fold(s, self.history_len, total, Some(delta), at);
            return true;
        }
        if !delta.is_finite() {
            return false;
        }
        self.push(inner, key, delta, Some(delta), at);
        true
    }

    /// Sets a counter from an observed running total (e.g. restarts), recording the increase;
    /// a total going backwards means the source restarted, so the whole total is the increase.
    /// First sight adopts the total without counting it as an increase.
    pub fn set_counter_total(
        &self,
        metric: &'static str,
        dims: &[(Dim, &str)],
        total: f64,
        at: SystemTime,
    ) {
        if !total.is_finite() {
            return self.refuse_non_finite();
        }
        let key = self.key(metric, dims);
        let mut inner = self.write();
        let (running, delta) = match inner.series.get(&key) {
            Some(s) => {
                let observed = s.source_total.unwrap_or(s.latest.value);
                let delta = if total >= observed {
                    total - observed
                } else {
                    total
                };
                (s.latest.value + delta, delta)
            }
            None => (total, 0.0),
        };
        self.push(&mut inner, &key, running, Some(delta), at);
        if let Some(s) = inner.series.get_mut(&key) {
            s.source_total = Some(total);
        }
    }

    /// Records one inference latency for `model` (called by the API gateway per request).
    pub fn observe_latency(&self, model: &str, ms: f64) {
        self.observe_latency_at(model, ms, SystemTime::now());
    }

    /// [`observe_latency`](Self::observe_latency) at a given time.
    pub fn observe_latency_at(&self, model: &str, ms: f64, at: SystemTime) {
        if !ms.is_finite() {
            return self.refuse_non_finite();
        }
        let key = self.key("ModelLatency", &[(Dim::Model, model)]);
        let mut inner = self.write();
        Self::record_latency(&mut inner, &key, ms, at);
    }

    /// Folds one finite latency into its series' histograms (the store's lock held).
    fn record_latency(inner: &mut Inner, key: &SeriesKey, ms: f64, at: SystemTime) {
        let ms = ms.max(0.0);
        let us = (ms * 1000.0).round().max(1.0) as u64;
        let start = bucket_start(at, LATENCY_BUCKET);
        // Looked up once, by reference: the key is copied only for a new series.
        if let Some(l) = inner.latency.get_mut(key) {
            return Self::fold_latency(l, us, ms, start, at);
        }
        let Some(mut l) = new_latency() else { return };
        Self::fold_latency(&mut l, us, ms, start, at);
        inner.latency.insert(key.clone(), l);
    }

    /// [`Self::record_latency`] into a series that exists.
    fn fold_latency(l: &mut Latency, us: u64, ms: f64, start: u64, at: SystemTime) {
        // Auto-resizing histograms accept any u64, so recording cannot fail.
        let _ = l.all.record(us);
        let _ = l.window.record(us);
        l.sum_us = l.sum_us.saturating_add(us);
        if l.last.is_none_or(|(t, _)| at >= t) {
            l.last = Some((at, ms));
        }
        // A late sample from an already-closed bucket goes to the newest one.
        let open = l.recent.back().is_some_and(|b| b.start >= start);
        if !open {
            let Some(h) = new_window_histogram::<u32>() else {
                return;
            };
            if let Some(b) = l.recent.back_mut() {
                b.compact();
            }
            if l.recent.len() == LATENCY_BUCKETS {
                l.recent.pop_front();
            }
            l.recent.push_back(LatencyBucket {
                start,
                counts: LatencyCounts::Dense(h),
                sum_us: 0,
            });
        }
        let Some(b) = l.recent.back_mut() else {
            return;
        };
        match &mut b.counts {
            LatencyCounts::Dense(h) => h.saturating_record(us),
            // Only closed buckets are sparse; the newest is dense by construction.
            LatencyCounts::Sparse(_) => return,
        }
        b.sum_us = b.sum_us.saturating_add(us);
    }

    /// The latencies of one ModelLatency series over `[now - window, now]`, from the 10 s
    /// buckets overlapping it; `None` when the series does not exist.
    pub fn latency_window(
        &self,
        key: &SeriesKey,
        now: SystemTime,
        window: Duration,
    ) -> Option<LatencyWindow> {
        let from = now.checked_sub(window).unwrap_or(UNIX_EPOCH);
        let first = bucket_start(from, LATENCY_BUCKET);
        let last = bucket_start(now, LATENCY_BUCKET);
        let mut hist = new_window_histogram::<u64>()?;
        let inner = self.read();
        let l = inner.latency.get(key)?;
        let mut sum_us = 0u64;
        for b in l
            .recent
            .iter()
            .filter(|b| b.start >= first && b.start <= last)
        {
            b.merge_into(&mut hist);
            sum_us = sum_us.saturating_add(b.sum_us);
        }
        let last_ms = l
            .last
            .filter(|(t, _)| *t >= from && *t <= now)
            .map(|(_, v)| v);
        Some(LatencyWindow {
            hist,
            sum_us,
            last_ms,
            span: now.duration_since(epoch_secs(first)).unwrap_or_default(),
        })
    }

    /// One finished request: latency, the request counter and, on failure, the error counter.
    pub fn record_request(&self, model: &str, ms: f64, ok: bool, at: SystemTime) {
        self.record_outcome(&self.request_series(model), ms, ok, None, at);
    }

    /// The series a model's requests update, keyed once for [`Self::record_outcome`].
    pub fn request_series(&self, model: &str) -> RequestSeries {
        let model = [(Dim::Model, model)];
        RequestSeries {
            latency: self.key("ModelLatency", &model),
            requests: self.key("ModelRequests", &model),
            errors: self.key("ModelErrors", &model),
            client_errors: self.key("ModelClientErrors", &model),
        }
    }

    /// One finished request under one lock: latency, the request counter, the error counter
    /// (created at 0 so error rate reads 0 rather than "no data") and, when given, whether it
    /// was the client's mistake (counted from the first request, 0 included, so a burst rule
    /// sees a baseline).
    pub fn record_outcome(
        &self,
        series: &RequestSeries,
        ms: f64,
        ok: bool,
        client_error: Option<bool>,
        at: SystemTime,
    ) {
        if !ms.is_finite() {
            return self.refuse_non_finite();
        }
        let mut inner = self.write();
        Self::record_latency(&mut inner, &series.latency, ms, at);
        let mut finite = self.add_locked(&mut inner, &series.requests, 1.0, at);
        if !ok || !inner.series.contains_key(&series.errors) {
            finite &= self.add_locked(&mut inner, &series.errors, f64::from(u8::from(!ok)), at);
        }
        if let Some(client_error) = client_error {
            let delta = f64::from(u8::from(client_error));
            finite &= self.add_locked(&mut inner, &series.client_errors, delta, at);
        }
        drop(inner);
        if !finite {
            self.refuse_non_finite();
        }
    }

    /// The latest gauge value or counter total.
    pub fn latest(&self, metric: &'static str, dims: &[(Dim, &str)]) -> Option<f64> {
        let key = self.key(metric, dims);
        self.read().series.get(&key).map(|s| s.latest.value)
    }

    /// The bounded history of one series, oldest first, one point per one-second bucket.
    /// A counter's history starts with its baseline: the total before the first retained
    /// bucket, stamped one bucket earlier (so increases count the first bucket too).
    pub fn history(&self, key: &SeriesKey) -> Vec<Point> {
        self.read()
            .series
            .get(key)
            .map(|s| {
                let mut out = Vec::with_capacity(s.history.len() + 1);
                if s.counter
                    && let Some(first) = s.history.front()
                {
                    out.push(Point {
                        at: epoch_secs(first.secs().saturating_sub(HISTORY_BUCKET.as_secs())),
                        value: s.base,
                    });
                }
                out.extend(s.history.iter().map(|slot| slot.point()));
                out
            })
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

    /// The gauge/counter series of one metric with their latest values: what a rule or an
    /// objective reads, without copying the keys of every other series (a range of the
    /// metric-first key order).
    pub fn series_of(&self, metric: &str) -> Vec<SeriesView> {
        let view = |(k, s): (&SeriesKey, &Series)| SeriesView {
            key: k.clone(),
            value: s.latest.value,
            at: s.latest.at,
        };
        let inner = self.read();
        match catalog::lookup(metric) {
            // The smallest key of the metric: the same name with no dimensions.
            Some(def) => inner
                .series
                .range(SeriesKey::new(def.name, Vec::new())..)
                .take_while(|(k, _)| k.metric == metric)
                .map(view)
                .collect(),
            None => inner
                .series
                .iter()
                .filter(|(k, _)| k.metric == metric)
                .map(view)
                .collect(),
        }
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
    fn one_outcome_updates_latency_requests_errors_and_client_errors_together() {
        let store = MetricStore::new("h1", 60);
        let series = store.request_series("m");
        let model = [(Dim::Model, "m")];
        store.record_outcome(&series, 4.0, true, Some(false), t(0));
        // A success creates the error series at 0: error rate reads 0, not "no data".
        assert_eq!(store.latest("ModelErrors", &model), Some(0.0));
        store.record_outcome(&series, 6.0, true, Some(true), t(1));
        store.record_outcome(&series, 9.0, false, Some(false), t(1));
        assert_eq!(store.latest("ModelRequests", &model), Some(3.0));
        assert_eq!(store.latest("ModelErrors", &model), Some(1.0));
        assert_eq!(store.latest("ModelClientErrors", &model), Some(1.0));
        let window = store
            .latency_window(&series.latency, t(1), Duration::from_secs(60))
            .unwrap();
        assert_eq!(window.hist.len(), 3);
        assert_eq!(window.last_ms, Some(9.0));
        // The same series through the per-model entry point, which leaves client errors alone.
        store.record_request("m", 1.0, false, t(2));
        assert_eq!(store.latest("ModelRequests", &model), Some(4.0));
        assert_eq!(store.latest("ModelErrors", &model), Some(2.0));
        assert_eq!(store.latest("ModelClientErrors", &model), Some(1.0));
        // A non-finite latency is refused whole: nothing is counted.
        store.record_outcome(&series, f64::NAN, true, Some(false), t(3));
        assert_eq!(store.latest("ModelRequests", &model), Some(4.0));
    }

    #[test]
    fn series_of_is_exactly_the_metric_s_series() {
        let store = MetricStore::new("h1", 3);
        for g in ["0", "1", "7"] {
            store.set_gauge("GPUPowerDraw", &[(Dim::Gpu, g)], 1.0, t(0));
            store.set_gauge("GPUPowerLimit", &[(Dim::Gpu, g)], 2.0, t(0));
            store.set_gauge("GPUUtilization", &[(Dim::Gpu, g)], 3.0, t(0));
        }
        store.set_gauge("GPUCount", &[], 3.0, t(0));
        let by_range = store.series_of("GPUPowerLimit");
        let by_scan: Vec<SeriesView> = store
            .series()
            .into_iter()
            .filter(|s| s.key.metric == "GPUPowerLimit")
            .collect();
        assert_eq!(by_range.len(), 3);
        let keys = |v: &[SeriesView]| v.iter().map(|s| s.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&by_range), keys(&by_scan));
        assert!(by_range.iter().all(|s| s.value == 2.0));
        assert_eq!(store.series_of("GPUCount").len(), 1);
        assert!(store.series_of("ModelUp").is_empty());
        assert!(store.series_of("NotInTheCatalogue").is_empty());
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

    fn t_ms(ms: u64) -> SystemTime {
        t(0) + Duration::from_millis(ms)
    }

    fn ms_of(at: SystemTime) -> u64 {
        at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn samples(store: &MetricStore, metric: &'static str) -> Vec<(u64, f64)> {
        store
            .history(&store.key(metric, &[(Dim::Model, "m")]))
            .iter()
            .map(|p| (ms_of(p.at), p.value))
            .collect()
    }

    /// `n` requests spread evenly over `[from_ms, to_ms)`, every `every`-th one failed.
    fn traffic(store: &MetricStore, from_ms: u64, to_ms: u64, n: u64, every: u64) {
        for i in 0..n {
            let at = t_ms(from_ms + i * (to_ms - from_ms) / n);
            store.record_request("m", 5.0, i % every != every - 1, at);
        }
    }

    fn error_rate(store: &MetricStore, now: SystemTime, window: Duration) -> f64 {
        crate::alerts::evaluator::error_rate(
            &samples(store, "ModelErrors"),
            &samples(store, "ModelRequests"),
            ms_of(now),
            window,
        )
        .unwrap()
    }

    #[test]
    fn updates_coalesce_per_second_so_history_covers_its_span_at_any_rate() {
        let store = MetricStore::new("h1", 600);
        // 5,000 req/s for 700 s: 3.5 M updates, one point per second.
        for sec in 0..700u64 {
            store.add_counter("ModelRequests", &[(Dim::Model, "m")], 5_000.0, t(sec));
        }
        let h = samples(&store, "ModelRequests");
        assert_eq!(h.len(), 601, "600 buckets plus the baseline");
        let span_s = (h[h.len() - 1].0 - h[1].0) / 1000;
        assert_eq!(span_s, 599, "600 one-second buckets");
        assert_eq!(
            h[0].1,
            100.0 * 5_000.0,
            "baseline = total before the first bucket"
        );
        assert_eq!(h[h.len() - 1].1, 700.0 * 5_000.0);
        // A rate over 5 minutes is the true rate, not the last few milliseconds'.
        let rate = crate::alerts::evaluator::reduce(
            crate::alerts::rules::Reducer::Rate,
            &h,
            ms_of(t(699)),
            Duration::from_secs(300),
        )
        .unwrap();
        assert!((rate - 5_000.0).abs() < 1e-6, "{rate}");
        // Many updates in one second: one point carrying the total after the last of them.
        let burst = MetricStore::new("h1", 600);
        traffic(&burst, 0, 1_000, 10_000, 200);
        let h = samples(&burst, "ModelRequests");
        assert_eq!(h, vec![(ms_of(t(0)) - 1000, 0.0), (ms_of(t(0)), 10_000.0)]);
    }

    #[test]
    fn error_rate_at_100k_requests_per_window_is_the_true_rate() {
        // 0.5 %: 150,000 requests in the last minute (2,500 req/s), one in 200 failing, after
        // five minutes at 20 % errors that must have fallen out of the window.
        let store = MetricStore::new("h1", 600);
        traffic(&store, 0, 300_000, 300_000, 5);
        traffic(&store, 300_000, 360_000, 150_000, 200);
        let rate = error_rate(&store, t_ms(360_000), Duration::from_secs(60));
        assert!((rate - 0.5).abs() < 0.01, "{rate}");
        // The whole five minutes before that: 20 %.
        let rate = error_rate(&store, t_ms(299_999), Duration::from_secs(240));
        assert!((rate - 20.0).abs() < 0.05, "{rate}");
        // 20 % at 120,000 requests in one window.
        let store = MetricStore::new("h1", 600);
        traffic(&store, 0, 60_000, 120_000, 5);
        let rate = error_rate(&store, t_ms(60_000), Duration::from_secs(60));
        assert!((rate - 20.0).abs() < 0.01, "{rate}");
        // A young series (history shorter than the window) counts its first second too.
        let store = MetricStore::new("h1", 600);
        traffic(&store, 0, 1_000, 100_000, 200);
        let rate = error_rate(&store, t_ms(1_000), Duration::from_secs(60));
        assert!((rate - 0.5).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn counters_survive_source_resets() {
        let store = MetricStore::new("h1", 600);
        let dims = [(Dim::Model, "m")];
        for (sec, total) in [(0, 5.0), (1, 8.0), (2, 2.0), (3, 4.0), (4, 4.0)] {
            store.set_counter_total("ModelRestarts", &dims, total, t(sec));
        }
        // 5 adopted, +3, reset to 2 (+2), +2, +0: the store's total never goes back.
        assert_eq!(store.latest("ModelRestarts", &dims), Some(12.0));
        let h: Vec<f64> = store
            .history(&store.key("ModelRestarts", &dims))
            .iter()
            .map(|p| p.value)
            .collect();
        assert_eq!(h, vec![5.0, 5.0, 8.0, 10.0, 12.0, 12.0]);
        let s = store.drain_window().stats[0].1;
        assert_eq!(s.sum, 7.0);
        // A counter that does go backwards in history (an exported total restarting) is a
        // reset for the reducers: the increase counts from zero.
        let h = vec![(0, 100.0), (1_000, 110.0), (2_000, 10.0), (3_000, 20.0)];
        let rate = crate::alerts::evaluator::reduce(
            crate::alerts::rules::Reducer::Rate,
            &h,
            3_000,
            Duration::from_secs(3),
        );
        assert_eq!(rate, Some(10.0));
    }

    /// A deterministic shuffle of 1..=n µs-scale latencies (ms): the true quantiles are known.
    fn latencies(n: u64) -> Vec<f64> {
        let mut v: Vec<u64> = (1..=n).collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        v.into_iter().map(|us| us as f64 / 10.0).collect()
    }

    #[test]
    fn latency_windows_merge_buckets_and_forget_old_ones() {
        let store = MetricStore::new("h1", 600);
        let key = store.key("ModelLatency", &[(Dim::Model, "m")]);
        // Ten minutes ago: slow. The last five minutes: 150,000 samples of 0.1..15,000 ms.
        for i in 0..10_000u64 {
            store.observe_latency_at("m", 30_000.0, t_ms(i * 10));
        }
        let lat = latencies(150_000);
        let start = 600_000u64;
        for (i, ms) in lat.iter().enumerate() {
            store.observe_latency_at("m", *ms, t_ms(start + i as u64 * 2));
        }
        let now = t_ms(start + 300_000);
        let w = store
            .latency_window(&key, now, Duration::from_secs(300))
            .unwrap();
        assert_eq!(w.count(), 150_000, "old buckets are outside the window");
        let mut sorted = lat.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.5, 0.95, 0.99] {
            let truth = sorted[(q * sorted.len() as f64).ceil() as usize - 1];
            let got = w.quantile(q).unwrap();
            assert!(
                (got - truth).abs() / truth < 0.01,
                "q{q}: {got} vs true {truth}"
            );
        }
        let mean = lat.iter().sum::<f64>() / lat.len() as f64;
        assert!(
            (w.mean().unwrap() - mean).abs() / mean < 1e-3,
            "{:?}",
            w.mean()
        );
        assert!((w.min().unwrap() - 0.1).abs() < 0.01);
        assert!((w.max().unwrap() - 15_000.0).abs() / 15_000.0 < 0.01);
        assert_eq!(w.last(), lat.last().copied());
        let rate = w.rate().unwrap();
        assert!((rate - 500.0).abs() < 20.0, "{rate}");
        // The slow samples are more than the longest window old: no window sees them, while
        // the all-time histogram (Prometheus buckets) still does.
        let all = store.latency_window(&key, now, MAX_WINDOW).unwrap();
        assert_eq!(all.count(), 150_000);
        let all_time_p95 = store.latency_quantile("m", 0.95).unwrap();
        assert!(
            (all_time_p95 - 30_000.0).abs() / 30_000.0 < 0.01,
            "{all_time_p95}"
        );
        assert_eq!(
            store.histograms(&[]).iter().map(|h| h.count).sum::<u64>(),
            160_000
        );
        // The ring stays bounded: 60 buckets of 10 s whatever the run time.
        for sec in 0..1_000u64 {
            store.observe_latency_at("m", 1.0, t(1_000 + sec));
        }
        let inner = store.read();
        let l = inner.latency.get(&key).unwrap();
        assert_eq!(l.recent.len(), LATENCY_BUCKETS);
        assert!(
            l.recent
                .iter()
                .rev()
                .skip(1)
                .all(|b| matches!(b.counts, LatencyCounts::Sparse(_))),
            "closed buckets with a narrow spread are compacted"
        );
    }

    #[test]
    fn non_finite_values_are_refused_and_counted() {
        let store = MetricStore::new("h1", 8);
        store.set_gauge("GPUUtilization", &[(Dim::Gpu, "0")], f64::NAN, t(0));
        store.add_counter("ModelRequests", &[(Dim::Model, "m")], f64::INFINITY, t(0));
        store.set_counter_total(
            "ModelRestarts",
            &[(Dim::Model, "m")],
            f64::NEG_INFINITY,
            t(0),
        );
        store.observe_latency_at("m", f64::NAN, t(0));
        store.set_gauge("GPUUtilization", &[(Dim::Gpu, "0")], 50.0, t(1));
        assert_eq!(
            store.latest("GPUUtilization", &[(Dim::Gpu, "0")]),
            Some(50.0)
        );
        assert_eq!(store.latest("ModelRequests", &[(Dim::Model, "m")]), None);
        assert_eq!(store.latest("ModelRestarts", &[(Dim::Model, "m")]), None);
        assert!(store.histograms(&[]).is_empty());
        assert_eq!(
            drops::total(&store, drops::sink::STORE, drops::reason::NON_FINITE),
            4.0
        );
        let w = store.drain_window();
        assert!(
            w.stats
                .iter()
                .all(|(_, s)| s.sum.is_finite() && s.min.is_finite())
        );
    }
}

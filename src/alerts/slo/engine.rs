//! The SLO engine: folds the agent's request counters into each objective's ledger, and
//! reads budgets, burn rates and tier verdicts back out for alerts, gauges and the console.
//!
//! Counting: availability reads the store's `ModelRequests`/`ModelErrors` totals; latency
//! reads [`RequestCounters`] (successful calls, and those within each threshold), which the
//! gateway feeds next to the store. Each evaluation adds the increase since the totals last
//! consumed (kept per objective in the state file), so calls are counted once, at about the
//! time they were made (one evaluation interval late at most). Time is passed in.

use super::budget::{Counts, Ledger};
use super::burn::{self, Tier, Verdict};
use super::persist::{Consumed, FORMAT_VERSION, SloFile, SloState};
use super::{ALL_MODELS, Objective, SloKind, span};
use crate::alerts::evaluator::{Labels, format_value};
use crate::telemetry::{Dim, MetricStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// The budgets are written at least this often while calls come in (and at shutdown): a
/// crash loses at most this much counting, a clean restart nothing.
pub const PERSIST_EVERY: Duration = Duration::from_secs(30);

/// This process's id: the counters the state file's totals refer to.
pub fn process_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string()).clone()
}

#[derive(Default)]
struct LatencyState {
    thresholds: Vec<u64>,
    /// model → threshold ms → (successful calls within it, successful calls), both counted
    /// from when the threshold was first asked for.
    models: BTreeMap<String, BTreeMap<u64, (u64, u64)>>,
}

/// Successful calls per model, and how many were within each latency SLO's threshold.
#[derive(Default)]
pub struct RequestCounters {
    inner: Mutex<LatencyState>,
}

impl RequestCounters {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LatencyState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thresholds (ms) to count calls against.
    pub fn set_thresholds(&self, mut thresholds: Vec<u64>) {
        thresholds.sort_unstable();
        thresholds.dedup();
        self.lock().thresholds = thresholds;
    }

    /// One finished call (`ok`: not a 5xx or timeout).
    pub fn record(&self, model: &str, latency_ms: f64, ok: bool) {
        if !ok {
            return;
        }
        let mut s = self.lock();
        let LatencyState { thresholds, models } = &mut *s;
        if thresholds.is_empty() {
            return;
        }
        let counts = match models.get_mut(model) {
            Some(c) => c,
            None => models.entry(model.to_string()).or_default(),
        };
        for &t in thresholds.iter() {
            let c = counts.entry(t).or_default();
            if latency_ms <= t as f64 {
                c.0 += 1;
            }
            c.1 += 1;
        }
    }

    /// (within, successful) for `model` (`None`: every model) at `threshold_ms`.
    pub fn latency(&self, model: Option<&str>, threshold_ms: u64) -> Consumed {
        let s = self.lock();
        s.models
            .iter()
            .filter(|(m, _)| model.is_none_or(|want| want == m.as_str()))
            .filter_map(|(_, by)| by.get(&threshold_ms))
            .fold(Consumed::default(), |c, (within, ok)| Consumed {
                good: c.good + within,
                total: c.total + ok,
            })
    }
}

/// One window's burn rate, for the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BurnRate {
    /// `5m`, `30m`, `1h`, `6h`, `3d`.
    pub window: String,
    pub rate: f64,
}

/// One objective as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloStatus {
    pub model: String,
    pub slo: String,
    /// e.g. "99.9 % availability over 30d".
    pub objective: String,
    pub target: f64,
    pub window_secs: u64,
    /// 1 untouched, 0 spent, below 0 overspent.
    pub budget_remaining: f64,
    /// Calls over the objective's window.
    pub good: u64,
    pub total: u64,
    pub burn_rates: Vec<BurnRate>,
    /// At the 1 h burn rate; `None` when nothing burns.
    pub exhaustion_secs: Option<u64>,
    pub page: bool,
    pub ticket: bool,
}

/// What one tier says about one objective, ready for the alert evaluator.
#[derive(Debug, Clone, PartialEq)]
pub struct TierObservation {
    pub labels: Labels,
    pub verdict: Verdict,
    pub summary: String,
}

pub struct SloEngine {
    objectives: Vec<Objective>,
    state: SloState,
    counters: Arc<RequestCounters>,
    file: Arc<SloFile>,
    /// When the state last went to the writer, and whether calls were counted since.
    last_saved_ms: u64,
    dirty: bool,
}

fn labels(o: &Objective) -> Labels {
    [
        ("Model".to_string(), o.model.clone()),
        ("SLO".to_string(), o.name.clone()),
    ]
    .into()
}

fn pct(v: f64) -> String {
    format!("{} %", format_value(v * 100.0))
}

impl SloEngine {
    /// Loads the budgets from `state_dir` (blocking: start-up) for `process` (see
    /// [`process_id`]; tests pass their own to act as a new process).
    pub fn new(
        objectives: Vec<Objective>,
        counters: Arc<RequestCounters>,
        state_dir: &std::path::Path,
        process: String,
    ) -> Self {
        let file = SloFile::new(state_dir);
        let state = file.load();
        Self::with_state(objectives, counters, file, state, process)
    }

    /// [`new`](Self::new) with the file already read (off the async workers).
    pub fn with_state(
        objectives: Vec<Objective>,
        counters: Arc<RequestCounters>,
        file: SloFile,
        mut state: SloState,
        process: String,
    ) -> Self {
        let file = Arc::new(file);
        if state.process != process {
            // Another process's counters: ours start from zero.
            for o in state.objectives.values_mut() {
                o.consumed = Consumed::default();
            }
        }
        state.process = process;
        state.version = FORMAT_VERSION;
        let restored = state.objectives.len();
        let mut engine = SloEngine {
            objectives: Vec::new(),
            state,
            counters,
            file,
            last_saved_ms: 0,
            dirty: false,
        };
        engine.set_objectives(objectives);
        if restored > 0 {
            tracing::info!(
                objectives = engine.objectives.len(),
                "SLO error budgets restored"
            );
        }
        engine
    }

    /// Swaps the objectives (reload): surviving ones keep their budgets, removed ones go.
    pub fn set_objectives(&mut self, objectives: Vec<Objective>) {
        let ids: Vec<String> = objectives.iter().map(Objective::id).collect();
        self.state.objectives.retain(|id, _| ids.contains(id));
        for id in ids {
            self.state.objectives.entry(id).or_default();
        }
        self.counters.set_thresholds(
            objectives
                .iter()
                .filter_map(|o| match o.kind {
                    SloKind::Latency { threshold_ms } => Some(threshold_ms),
                    SloKind::Availability => None,
                })
                .collect(),
        );
        self.objectives = objectives;
    }

    pub fn objectives(&self) -> &[Objective] {
        &self.objectives
    }

    pub fn file(&self) -> Arc<SloFile> {
        self.file.clone()
    }

    /// The process-lifetime totals behind `o`.
    fn totals(&self, store: &MetricStore, o: &Objective) -> Consumed {
        let model = (o.model != ALL_MODELS).then_some(o.model.as_str());
        match o.kind {
            SloKind::Availability => {
                let sum = |metric: &str| -> u64 {
                    store
                        .series_of(metric)
                        .iter()
                        .filter(|s| model.is_none_or(|m| s.key.dim(Dim::Model) == Some(m)))
                        .map(|s| s.value.max(0.0) as u64)
                        .sum()
                };
                let total = sum("ModelRequests");
                Consumed {
                    good: total.saturating_sub(sum("ModelErrors")),
                    total,
                }
            }
            SloKind::Latency { threshold_ms } => self.counters.latency(model, threshold_ms),
        }
    }

    /// Folds the calls made since the last call into the ledgers, at `now_ms`.
    pub fn consume(&mut self, store: &MetricStore, now_ms: u64) {
        for o in &self.objectives {
            let now = self.totals(store, o);
            let Some(s) = self.state.objectives.get_mut(&o.id()) else {
                continue;
            };
            let last = s.consumed;
            // Totals going backwards: the counters were rebuilt; all they hold is new.
            let (good, total) = if now.total < last.total || now.good < last.good {
                (now.good, now.total)
            } else {
                (now.good - last.good, now.total - last.total)
            };
            s.consumed = now;
            if total > 0 {
                s.ledger.add(now_ms, good, total);
                self.dirty = true;
            }
            s.ledger
                .prune(now_ms, o.window.max(Duration::from_secs(3 * 86_400)));
        }
    }

    fn ledger(&self, o: &Objective) -> Option<&Ledger> {
        self.state.objectives.get(&o.id()).map(|s| &s.ledger)
    }

    fn verdict(&self, o: &Objective, tier: Tier, now_ms: u64) -> Verdict {
        let empty = Ledger::default();
        let ledger = self.ledger(o).unwrap_or(&empty);
        burn::evaluate(
            tier,
            |w| ledger.counts(now_ms, w),
            o.budget_fraction(),
            o.min_requests,
        )
    }

    fn remaining(&self, o: &Objective, now_ms: u64) -> f64 {
        self.ledger(o)
            .map_or(1.0, |l| l.remaining(now_ms, o.window, o.budget_fraction()))
    }

    fn burn_at(&self, o: &Objective, now_ms: u64, window: Duration) -> f64 {
        self.ledger(o).map_or(0.0, |l| {
            l.counts(now_ms, window).burn_rate(o.budget_fraction())
        })
    }

    /// Each objective's verdict for `tier`, with the message an alert carries.
    pub fn observations(&self, tier: Tier, now_ms: u64) -> Vec<TierObservation> {
        self.objectives
            .iter()
            .map(|o| {
                let verdict = self.verdict(o, tier, now_ms);
                let remaining = self.remaining(o, now_ms);
                let exhaustion = burn::time_to_exhaustion(
                    remaining,
                    self.burn_at(o, now_ms, Duration::from_secs(3600)),
                    o.window,
                );
                let until = match exhaustion {
                    Some(d) if d.is_zero() => "; the budget is spent".to_string(),
                    Some(d) => format!("; exhausted in {} at the 1h rate", rough(d)),
                    None => String::new(),
                };
                let summary = format!(
                    "SLO {} of {} ({}): error budget burning {}× over {}, {} of the budget left{until}",
                    o.name,
                    o.model,
                    o.describe(),
                    format_value(verdict.rate),
                    span(verdict.window),
                    pct(remaining.max(-99.99)),
                );
                TierObservation {
                    labels: labels(o),
                    verdict,
                    summary,
                }
            })
            .collect()
    }

    /// The console's view of every objective.
    pub fn statuses(&self, now_ms: u64) -> Vec<SloStatus> {
        self.objectives
            .iter()
            .map(|o| {
                let remaining = self.remaining(o, now_ms);
                let counts = self
                    .ledger(o)
                    .map_or(Counts::default(), |l| l.counts(now_ms, o.window));
                SloStatus {
                    model: o.model.clone(),
                    slo: o.name.clone(),
                    objective: o.describe(),
                    target: o.target,
                    window_secs: o.window.as_secs(),
                    budget_remaining: remaining,
                    good: counts.good,
                    total: counts.total,
                    burn_rates: burn::WINDOWS
                        .iter()
                        .map(|w| BurnRate {
                            window: span(*w),
                            rate: self.burn_at(o, now_ms, *w),
                        })
                        .collect(),
                    exhaustion_secs: burn::time_to_exhaustion(
                        remaining,
                        self.burn_at(o, now_ms, Duration::from_secs(3600)),
                        o.window,
                    )
                    .map(|d| d.as_secs()),
                    page: self.verdict(o, Tier::Page, now_ms).breach,
                    ticket: self.verdict(o, Tier::Ticket, now_ms).breach,
                }
            })
            .collect()
    }

    /// `SLOErrorBudgetRemaining{Model,SLO}` and `SLOBurnRate{Model,SLO,Window}` into the
    /// store, whence `/metrics` and CloudWatch take them.
    pub fn export(&self, store: &MetricStore, now_ms: u64) {
        let at = UNIX_EPOCH + Duration::from_millis(now_ms);
        for o in &self.objectives {
            let dims = [(Dim::Model, o.model.as_str()), (Dim::Slo, o.name.as_str())];
            store.set_gauge(
                "SLOErrorBudgetRemaining",
                &dims,
                self.remaining(o, now_ms),
                at,
            );
            for w in burn::WINDOWS {
                let label = span(w);
                store.set_gauge(
                    "SLOBurnRate",
                    &[dims[0], dims[1], (Dim::Window, label.as_str())],
                    self.burn_at(o, now_ms, w),
                    at,
                );
            }
        }
    }

    /// A copy of the state to write when one is due (calls counted and [`PERSIST_EVERY`]
    /// passed), or whenever something was counted with `force` (shutdown).
    pub fn due_for_save(&mut self, now_ms: u64, force: bool) -> Option<SloState> {
        let due = now_ms.saturating_sub(self.last_saved_ms) >= PERSIST_EVERY.as_millis() as u64;
        if !self.dirty || !(force || due) {
            return None;
        }
        self.dirty = false;
        self.last_saved_ms = now_ms;
        let mut s = self.state.clone();
        s.saved_ms = now_ms;
        Some(s)
    }

    /// The write failed: try again at the next evaluation.
    pub fn save_failed(&mut self) {
        self.dirty = true;
        self.last_saved_ms = 0;
    }
}

/// "3h", "2d", "45m": how long, to the unit that matters.
fn rough(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::super::defaults;
    use super::*;
    use std::time::SystemTime;

    const T0: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// `n` calls to `model` at `t`, `bad` of them failing, each taking `ms`.
    fn calls(
        store: &MetricStore,
        counters: &RequestCounters,
        model: &str,
        t: u64,
        n: u64,
        bad: u64,
        ms: f64,
    ) {
        for i in 0..n {
            let ok = i >= bad;
            store.record_request(model, ms, ok, at(t));
            counters.record(model, ms, ok);
        }
    }

    struct Rig {
        store: MetricStore,
        counters: Arc<RequestCounters>,
        engine: SloEngine,
        dir: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let counters = RequestCounters::new();
        let engine = SloEngine::new(
            defaults(&["m".to_string()]),
            counters.clone(),
            dir.path(),
            "p1".into(),
        );
        Rig {
            store: MetricStore::new("h", 600),
            counters,
            engine,
            dir,
        }
    }

    fn status<'a>(s: &'a [SloStatus], slo: &str) -> &'a SloStatus {
        s.iter().find(|x| x.slo == slo).unwrap()
    }

    #[test]
    fn counts_each_call_once_and_splits_latency_from_availability() {
        let mut r = rig();
        calls(&r.store, &r.counters, "m", T0, 1000, 10, 50.0);
        r.engine.consume(&r.store, T0);
        // Consuming again without new calls adds nothing.
        r.engine.consume(&r.store, T0 + 1000);
        calls(&r.store, &r.counters, "m", T0 + 2000, 100, 0, 3000.0);
        r.engine.consume(&r.store, T0 + 2000);
        let s = r.engine.statuses(T0 + 2000);
        let a = status(&s, "availability");
        assert_eq!((a.good, a.total), (1090, 1100));
        let l = status(&s, "latency");
        // Failures are not latency calls; the 100 slow successes are bad ones.
        assert_eq!((l.good, l.total), (990, 1090));
        assert!(a.budget_remaining < 1.0);
    }

    #[test]
    fn restart_keeps_the_budget_without_double_counting() {
        let mut r = rig();
        calls(&r.store, &r.counters, "m", T0, 1000, 20, 5.0);
        r.engine.consume(&r.store, T0);
        let before = status(&r.engine.statuses(T0), "availability").budget_remaining;
        let saved = r.engine.due_for_save(T0, true).unwrap();
        r.engine.file().save(&saved).unwrap();
        // The same process rebuilding its engine continues from the stored totals.
        let mut same = SloEngine::new(
            defaults(&["m".to_string()]),
            r.counters.clone(),
            r.dir.path(),
            "p1".into(),
        );
        same.consume(&r.store, T0 + 1000);
        assert_eq!(
            status(&same.statuses(T0 + 1000), "availability").total,
            1000
        );
        // A new process: fresh counters, the budget as it was.
        let store = MetricStore::new("h", 600);
        let counters = RequestCounters::new();
        let mut next = SloEngine::new(
            defaults(&["m".to_string()]),
            counters.clone(),
            r.dir.path(),
            "p2".into(),
        );
        next.consume(&store, T0 + 5000);
        let statuses = next.statuses(T0 + 5000);
        let after = status(&statuses, "availability");
        assert_eq!(after.total, 1000);
        assert!((after.budget_remaining - before).abs() < 1e-12);
        calls(&store, &counters, "m", T0 + 6000, 500, 0, 5.0);
        next.consume(&store, T0 + 6000);
        assert_eq!(
            status(&next.statuses(T0 + 6000), "availability").total,
            1500
        );
    }

    #[test]
    fn gauges_reach_the_store() {
        let mut r = rig();
        calls(&r.store, &r.counters, "m", T0, 1000, 200, 5.0);
        r.engine.consume(&r.store, T0);
        r.engine.export(&r.store, T0);
        let left = r
            .store
            .latest(
                "SLOErrorBudgetRemaining",
                &[(Dim::Model, "m"), (Dim::Slo, "availability")],
            )
            .unwrap();
        assert!(left < 1.0, "{left}");
        let burn = r
            .store
            .latest(
                "SLOBurnRate",
                &[
                    (Dim::Model, "m"),
                    (Dim::Slo, "availability"),
                    (Dim::Window, "5m"),
                ],
            )
            .unwrap();
        assert!((burn - 200.0).abs() < 1e-9, "{burn}");
        let page = r.engine.observations(Tier::Page, T0);
        let a = page
            .iter()
            .find(|o| o.labels["SLO"] == "availability")
            .unwrap();
        assert!(a.verdict.breach);
        assert!(a.summary.contains("200× over 1h"), "{}", a.summary);
        assert!(a.summary.contains("budget left"), "{}", a.summary);
    }
}

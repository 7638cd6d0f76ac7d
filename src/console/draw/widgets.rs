//! Shared widgets and formatters of the console views: bars, sparklines, colours, numbers.

use crate::control::snapshot::ModelRow;
use crate::supervisor::{EventKind, ModelState, SupervisorEvent};
use ratatui::style::Color;

pub(super) const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

pub(super) fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}%"))
}

pub(super) fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = v.max(0.0);
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A text gauge `████░░░░` for a 0..=100 value.
pub fn bar(percent: Option<f64>, width: usize) -> String {
    let Some(p) = percent else {
        return "·".repeat(width);
    };
    let filled = ((p.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// The last `width` values as sparkline characters: on 0..=`max` when given (percentages),
/// else on the window's own min..max so small changes in large numbers (RSS) show.
pub fn sparkline(values: &[f64], width: usize, max: Option<f64>) -> String {
    let skip = values.len().saturating_sub(width);
    let values = &values[skip..];
    let (lo, hi) = match max {
        Some(m) => (0.0, m),
        None => values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            }),
    };
    values
        .iter()
        .map(|v| {
            let span = hi - lo;
            let level = if span > f64::EPSILON {
                ((v - lo) / span).clamp(0.0, 1.0) * 7.0
            } else if *v > 0.0 {
                // A flat, non-zero line sits mid-height; all zeros stay on the floor.
                3.0
            } else {
                0.0
            };
            SPARK[level.round() as usize]
        })
        .collect()
}

pub(super) fn level_color(p: Option<f64>, warn: f64, crit: f64) -> Color {
    match p {
        Some(p) if p >= crit => Color::Red,
        Some(p) if p >= warn => Color::Yellow,
        Some(_) => Color::Green,
        None => Color::DarkGray,
    }
}

pub(super) fn state_color(state: ModelState) -> Color {
    match state {
        ModelState::Ready => Color::Green,
        ModelState::Starting | ModelState::Stopping => Color::Yellow,
        ModelState::Stopped => Color::DarkGray,
        ModelState::Unhealthy | ModelState::Backoff | ModelState::CrashLoop => Color::Red,
    }
}

/// A model's health colour: its state, unless traffic says worse.
pub(super) fn model_color(m: &ModelRow) -> Color {
    let state = state_color(m.status.state);
    if state != Color::Green {
        return state;
    }
    match m.error_percent {
        Some(e) if e > 5.0 => Color::Red,
        Some(e) if e > 1.0 => Color::Yellow,
        _ => state,
    }
}

pub(super) fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".into();
    }
    format!(
        "{} ago",
        duration(now_ms.saturating_sub(then_ms) as f64 / 1000.0)
    )
}

/// UTC wall-clock time of day for an event.
pub(super) fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

pub(super) fn event_text(e: &SupervisorEvent) -> String {
    match &e.kind {
        EventKind::StateChanged { from, to, pid, .. } => match pid {
            Some(p) => format!("{from} → {to} (pid {p})"),
            None => format!("{from} → {to}"),
        },
        EventKind::Exited {
            pid,
            exit,
            expected,
        } => format!(
            "pid {pid} exited: {exit}{}",
            if *expected { "" } else { " (unexpected)" }
        ),
        EventKind::CrashLoop { exits, window_ms } => {
            format!(
                "CRASH LOOP: {exits} exits in {}",
                duration(*window_ms as f64 / 1000.0)
            )
        }
        EventKind::ModelDown { reason } => format!("DOWN: {reason}"),
        EventKind::ModelUp { pid } => match pid {
            Some(p) => format!("up (pid {p})"),
            None => "up".into(),
        },
        EventKind::Removed => "removed from the configuration".into(),
        EventKind::AutoRestart { reason } => format!("AUTO-RESTART: {reason}"),
    }
}

//! Drawing: a function of the app state onto a frame, no I/O (TestBackend renders it in tests).

use super::app::{Alerts, App, Connection, Prompt, View, severity_rank};
use super::event::plain;
use crate::control::snapshot::{GpuRow, ModelRow, Snapshot};
use crate::supervisor::{EventKind, LogStream, ModelState, SupervisorEvent};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, Wrap};

const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

pub fn draw(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let [tabs, banner, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(tab_line(app)), tabs);
    frame.render_widget(Paragraph::new(banner_line(app)), banner);
    match app.view {
        View::Overview => overview(app, frame, body),
        View::Alerts => alerts(app, frame, body),
        View::Logs => logs(app, frame, body),
        View::Model => model(app, frame, body),
    }
    frame.render_widget(Paragraph::new(footer_line(app)), footer);
    if app.help {
        help(frame, area);
    }
}

fn tab_line(app: &App) -> Line<'static> {
    let mut spans = vec![Span::styled(
        " warden ",
        Style::new().fg(Color::Black).bg(Color::Cyan),
    )];
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {}:{} ", i + 1, v.title());
        spans.push(if *v == app.view {
            Span::styled(
                label,
                Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD),
            )
        } else {
            Span::raw(label)
        });
    }
    if app.read_only {
        spans.push(Span::styled(" READ-ONLY ", Style::new().fg(Color::Yellow)));
    }
    if app.frozen {
        spans.push(Span::styled(
            " FROZEN ",
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    spans.push(Span::raw(" ? help"));
    Line::from(spans)
}

/// Connection state first (it trumps everything), then alert counts and the host line.
fn banner_line(app: &App) -> Line<'static> {
    let mut spans = Vec::new();
    match &app.connection {
        Connection::Disconnected { reason, attempt } => {
            spans.push(Span::styled(
                format!(
                    " DISCONNECTED from {} ({reason}); retrying, attempt {attempt} ",
                    app.socket
                ),
                Style::new()
                    .fg(Color::White)
                    .bg(Color::Red)
                    .add_modifier(Modifier::BOLD),
            ));
            return Line::from(spans);
        }
        Connection::Connecting => {
            spans.push(Span::styled(
                format!(" connecting to {}… ", app.socket),
                Style::new().fg(Color::Yellow),
            ));
            return Line::from(spans);
        }
        Connection::Connected => {}
    }
    match app.firing_counts() {
        Some((0, 0, 0)) => spans.push(Span::styled(
            " no alerts firing ",
            Style::new().fg(Color::Green),
        )),
        Some((c, w, i)) => {
            let style = if c > 0 {
                Style::new()
                    .fg(Color::White)
                    .bg(Color::Red)
                    .add_modifier(Modifier::BOLD)
            } else if w > 0 {
                Style::new().fg(Color::Black).bg(Color::Yellow)
            } else {
                Style::new().fg(Color::Cyan)
            };
            spans.push(Span::styled(
                if app.compact() {
                    format!(" FIRING {c} crit {w} warn {i} info ")
                } else {
                    format!(" FIRING: {c} critical, {w} warning, {i} info ")
                },
                style,
            ));
        }
        None => spans.push(Span::styled(
            " alerts unavailable ",
            Style::new().fg(Color::DarkGray),
        )),
    }
    if let Some(s) = &app.snapshot {
        let h = &s.host;
        // Small terminals keep what matters at 3 a.m.: load and sink health.
        let host = if app.compact() {
            String::new()
        } else {
            format!(" {} │", h.host_id)
        };
        spans.push(Span::raw(format!(
            "{host} CPU {} │ MEM {}",
            pct(h.cpu_percent),
            pct(h.memory_percent),
        )));
        if !app.compact() {
            let host_up = h.host_uptime_secs.map_or(String::new(), |s| {
                format!(" │ host up {}", duration(s as f64))
            });
            spans.push(Span::raw(format!(
                "{host_up} │ warden v{} up {}",
                h.agent_version,
                duration(h.uptime_secs as f64),
            )));
        }
        for sink in &h.sinks {
            let color = match sink.state.as_str() {
                "ok" => Color::Green,
                "degraded" => Color::Red,
                _ => Color::DarkGray,
            };
            spans.push(Span::raw(format!(" │ {}: ", sink.name)));
            spans.push(Span::styled(sink.state.clone(), Style::new().fg(color)));
        }
    }
    Line::from(spans)
}

fn footer_line(app: &App) -> Line<'static> {
    if let Some(prompt) = &app.prompt {
        let text = match prompt {
            Prompt::Confirm(a) => format!(" {}? [y/N] ", a.describe()),
            Prompt::SilenceFor { input, .. } => {
                format!(" silence for how long? {input}▏ (Enter to confirm, Esc to cancel) ")
            }
        };
        return Line::from(Span::styled(
            text,
            Style::new()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if app.editing_filter {
        return Line::from(format!(" /{}▏", app.filter));
    }
    if let Some(m) = &app.message {
        let style = if m.error {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new().fg(Color::Green)
        };
        return Line::from(Span::styled(format!(" {}", m.text), style));
    }
    let keys = match app.view {
        View::Overview => "j/k select  Enter detail  / filter  f freeze  q quit",
        View::Alerts => "j/k select  a ack  s silence  u unsilence  / filter  q quit",
        View::Logs => "h/l model  j/k scroll  G follow  / filter  q quit",
        View::Model => "j/k model  r restart  x stop  S start  q quit",
    };
    let mut spans = vec![Span::styled(
        format!(" {keys}"),
        Style::new().fg(Color::DarkGray),
    )];
    if !app.filter.is_empty() {
        spans.push(Span::styled(
            format!("  filter: {}", app.filter),
            Style::new().fg(Color::Cyan),
        ));
    }
    Line::from(spans)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}%"))
}

fn num(v: Option<f64>, digits: usize) -> String {
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

fn level_color(p: Option<f64>, warn: f64, crit: f64) -> Color {
    match p {
        Some(p) if p >= crit => Color::Red,
        Some(p) if p >= warn => Color::Yellow,
        Some(_) => Color::Green,
        None => Color::DarkGray,
    }
}

fn state_color(state: ModelState) -> Color {
    match state {
        ModelState::Ready => Color::Green,
        ModelState::Starting | ModelState::Stopping => Color::Yellow,
        ModelState::Stopped => Color::DarkGray,
        ModelState::Unhealthy | ModelState::Backoff | ModelState::CrashLoop => Color::Red,
    }
}

/// A model's health colour: its state, unless traffic says worse.
fn model_color(m: &ModelRow) -> Color {
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

fn overview(app: &App, frame: &mut Frame, area: Rect) {
    let Some(snap) = &app.snapshot else {
        frame.render_widget(
            Paragraph::new("waiting for the first snapshot from the daemon…")
                .block(Block::bordered().title(" Overview ")),
            area,
        );
        return;
    };
    let compact = app.compact();
    // Many GPUs on a small screen: two per line, so the models table keeps its room.
    let per_line = if compact && snap.gpus.len() > 4 && area.width >= 70 {
        2
    } else {
        1
    };
    let gpu_lines = snap.gpus.len().div_ceil(per_line).max(1) as u16 + 2;
    let sink_lines = sinks_lines(snap);
    let [gpus, sinks, models] = Layout::vertical([
        Constraint::Length(gpu_lines),
        Constraint::Length(sink_lines.len() as u16 + 2),
        Constraint::Min(4),
    ])
    .areas(area);
    let lines: Vec<Line> = if snap.gpus.is_empty() {
        let why = match snap.host.gpu_available {
            Some(false) => "NVML unavailable: no GPU metrics",
            _ => "no GPUs",
        };
        vec![Line::styled(why, Style::new().fg(Color::DarkGray))]
    } else {
        let spark_width = (area.width as usize).saturating_sub(78).clamp(0, 60);
        snap.gpus
            .chunks(per_line)
            .map(|pair| {
                let mut spans = Vec::new();
                for (i, g) in pair.iter().enumerate() {
                    if i > 0 {
                        spans.push(Span::raw(" │ "));
                    }
                    spans.extend(gpu_line(g, compact, spark_width).spans);
                }
                Line::from(spans)
            })
            .collect()
    };
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(" GPUs ({}) ", snap.gpus.len()))),
        gpus,
    );
    frame.render_widget(
        Paragraph::new(sink_lines).block(Block::bordered().title(" Sinks ")),
        sinks,
    );
    models_table(app, frame, models, compact);
}

/// Each sink's backlog on one line, then what was dropped (by sink and reason) on the next.
fn sinks_lines(snap: &Snapshot) -> Vec<Line<'static>> {
    let mut backlog = Vec::new();
    if snap.backlog.is_empty() {
        backlog.push(Span::styled(
            "no backlog reported",
            Style::new().fg(Color::DarkGray),
        ));
    }
    for (i, b) in snap.backlog.iter().enumerate() {
        if i > 0 {
            backlog.push(Span::raw(" │ "));
        }
        let color = if b.pending > 0 {
            Color::Yellow
        } else {
            Color::Green
        };
        backlog.push(Span::raw(format!("{} ", b.sink)));
        backlog.push(Span::styled(
            format!("{} {} pending", b.pending, b.unit),
            Style::new().fg(color),
        ));
    }
    let drops = if snap.drops.is_empty() {
        Line::from(vec![
            Span::raw("dropped: "),
            Span::styled("none", Style::new().fg(Color::Green)),
        ])
    } else {
        let mut spans = vec![Span::styled(
            "dropped: ",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )];
        for (i, d) in snap.drops.iter().enumerate() {
            if i > 0 {
                spans.push(Span::raw(", "));
            }
            spans.push(Span::styled(
                format!("{}/{} {}", d.sink, d.reason, d.records),
                Style::new().fg(Color::Red),
            ));
        }
        Line::from(spans)
    };
    vec![Line::from(backlog), drops]
}

fn gpu_line(g: &GpuRow, compact: bool, spark_width: usize) -> Line<'static> {
    if g.lost {
        return Line::from(vec![
            Span::raw(format!("GPU{:<2} ", g.index)),
            Span::styled(
                "LOST (fell off the bus)",
                Style::new().fg(Color::White).bg(Color::Red),
            ),
        ]);
    }
    let mem_pct = match (g.memory_used_bytes, g.memory_total_bytes) {
        (Some(u), Some(t)) if t > 0.0 => Some(100.0 * u / t),
        _ => None,
    };
    let bar_width = if compact { 5 } else { 10 };
    let mut spans = vec![
        Span::styled(
            format!("GPU{:<2} ", g.index),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(if compact { "" } else { "util " }),
        Span::styled(
            bar(g.utilization, bar_width),
            Style::new().fg(level_color(g.utilization, 70.0, 90.0)),
        ),
        Span::raw(format!(
            " {:>4} {}",
            pct(g.utilization),
            if compact { "m " } else { "mem " }
        )),
        Span::styled(
            bar(mem_pct, bar_width),
            Style::new().fg(level_color(mem_pct, 80.0, 95.0)),
        ),
        Span::raw(format!(" {:>4} ", pct(mem_pct))),
        Span::styled(
            format!("{:>3}°C ", num(g.temperature_c, 0)),
            Style::new().fg(level_color(g.temperature_c, 75.0, 85.0)),
        ),
    ];
    if !compact {
        spans.push(Span::raw(format!(
            "{:>4}/{:<4}W ",
            num(g.power_w, 0),
            num(g.power_limit_w, 0)
        )));
        if let (Some(u), Some(t)) = (g.memory_used_bytes, g.memory_total_bytes) {
            spans.push(Span::raw(format!("{:>7}/{:<7}", bytes(u), bytes(t))));
        }
        if spark_width > 0 {
            spans.push(Span::styled(
                sparkline(&g.utilization_history, spark_width, Some(100.0)),
                Style::new().fg(Color::Cyan),
            ));
        }
    }
    Line::from(spans)
}

fn models_table(app: &App, frame: &mut Frame, area: Rect, compact: bool) {
    let selected = app.selected_model_name();
    let full = [
        "MODEL", "STATE", "PID", "UPTIME", "RESTARTS", "REQ/S", "P50ms", "P95ms", "P99ms", "ERR%",
        "GPU MEM", "CPU", "RSS",
    ];
    let short = ["MODEL", "STATE", "PID", "REQ/S", "P95ms", "ERR%", "CPU"];
    let header = Row::new(if compact { &short[..] } else { &full[..] }.iter().copied())
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let rows = app.visible_models().into_iter().map(|m| {
        let s = &m.status;
        let pid = s.pid.map_or("-".into(), |p| p.to_string());
        let cpu = s.cpu_percent.map_or("-".into(), |c| format!("{c:.0}%"));
        let cells: Vec<Cell> = if compact {
            vec![
                Cell::from(s.name.clone()),
                Cell::from(s.state.as_str()),
                Cell::from(pid),
                Cell::from(num(m.requests_per_sec, 1)),
                Cell::from(num(m.p95_ms, 1)),
                Cell::from(num(m.error_percent, 1)),
                Cell::from(cpu),
            ]
        } else {
            vec![
                Cell::from(s.name.clone()),
                Cell::from(s.state.as_str()),
                Cell::from(pid),
                Cell::from(if s.pid.is_some() {
                    duration(s.uptime_secs)
                } else {
                    "-".into()
                }),
                Cell::from(s.restarts.to_string()),
                Cell::from(num(m.requests_per_sec, 1)),
                Cell::from(num(m.p50_ms, 1)),
                Cell::from(num(m.p95_ms, 1)),
                Cell::from(num(m.p99_ms, 1)),
                Cell::from(num(m.error_percent, 1)),
                Cell::from(m.gpu_memory_bytes.map_or("-".into(), bytes)),
                Cell::from(cpu),
                Cell::from(s.rss_bytes.map_or("-".into(), |b| bytes(b as f64))),
            ]
        };
        let mut style = Style::new().fg(model_color(m));
        if selected.as_deref() == Some(s.name.as_str()) {
            style = style.add_modifier(Modifier::REVERSED);
        }
        Row::new(cells).style(style)
    });
    let widths: Vec<Constraint> = if compact {
        vec![
            Constraint::Min(12),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(5),
        ]
    } else {
        vec![
            Constraint::Min(19),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(5),
            Constraint::Length(7),
        ]
    };
    let title = match app.snapshot.as_ref() {
        Some(s) => format!(" Models ({}) ", s.models.len()),
        None => " Models ".into(),
    };
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .column_spacing(1)
            .block(Block::bordered().title(title)),
        area,
    );
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".into();
    }
    format!(
        "{} ago",
        duration(now_ms.saturating_sub(then_ms) as f64 / 1000.0)
    )
}

fn alerts(app: &App, frame: &mut Frame, area: Rect) {
    let reply = match &app.alerts {
        Alerts::Loaded(r) => r,
        Alerts::Loading => {
            frame.render_widget(
                Paragraph::new("loading alerts…").block(Block::bordered().title(" Alerts ")),
                area,
            );
            return;
        }
        Alerts::Unavailable(why) => {
            frame.render_widget(
                Paragraph::new(vec![
                    Line::styled(
                        "alerts unavailable",
                        Style::new().add_modifier(Modifier::BOLD),
                    ),
                    Line::styled(why.clone(), Style::new().fg(Color::DarkGray)),
                ])
                .block(Block::bordered().title(" Alerts ")),
                area,
            );
            return;
        }
    };
    let now = app.snapshot.as_ref().map_or(0, |s| s.at_ms);
    let silence_rows = reply.silences.len().min(8) as u16;
    let [list, silences] = Layout::vertical([
        Constraint::Min(4),
        Constraint::Length(if silence_rows > 0 {
            silence_rows + 3
        } else {
            0
        }),
    ])
    .areas(area);
    let header = Row::new([
        "SEV",
        "STATE",
        "RULE",
        "LABELS",
        "VALUE/THRESH",
        "SINCE",
        "",
        "SUMMARY",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let visible = app.visible_alerts();
    let rows = visible.iter().enumerate().map(|(pos, (_, a))| {
        let labels = a
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(",");
        let flags = match (&a.acked_by, a.silenced) {
            (Some(by), true) => format!("ack:{by} muted"),
            (Some(by), false) => format!("ack:{by}"),
            (None, true) => "muted".into(),
            (None, false) => String::new(),
        };
        let color = match (a.state.as_str(), severity_rank(&a.severity)) {
            ("resolved", _) => Color::DarkGray,
            (_, _) if a.silenced => Color::DarkGray,
            (_, 0) => Color::Red,
            (_, 1) => Color::Yellow,
            _ => Color::Cyan,
        };
        let mut style = Style::new().fg(color);
        if pos == app.selected_alert {
            style = style.add_modifier(Modifier::REVERSED);
        }
        Row::new(vec![
            Cell::from(a.severity.clone()),
            Cell::from(a.state.clone()),
            Cell::from(a.rule.clone()),
            Cell::from(labels),
            Cell::from(format!("{} / {}", num(a.value, 1), num(a.threshold, 1))),
            Cell::from(ago(now, a.since_ms)),
            Cell::from(flags),
            Cell::from(a.summary.clone()),
        ])
        .style(style)
    });
    let title = format!(
        " Alerts ({} shown of {}) ",
        visible.len(),
        reply.alerts.len()
    );
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(24),
                Constraint::Length(22),
                Constraint::Length(14),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Min(10),
            ],
        )
        .header(header)
        .block(Block::bordered().title(title)),
        list,
    );
    if silence_rows > 0 {
        let lines: Vec<Line> = reply
            .silences
            .iter()
            .take(8)
            .map(|s| {
                let m = s
                    .matchers
                    .iter()
                    .map(|(k, v)| format!("{k}={}", plain(v)))
                    .collect::<Vec<_>>()
                    .join(",");
                let left = s.expires_ms.saturating_sub(now) as f64 / 1000.0;
                Line::from(format!(
                    "#{} {m}  expires in {}  by {}  {}",
                    plain(&s.id),
                    duration(left),
                    s.creator,
                    s.comment
                ))
            })
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" Silences ")),
            silences,
        );
    }
}

fn logs(app: &App, frame: &mut Frame, area: Rect) {
    let model = app.logs_model.clone().unwrap_or_else(|| "-".into());
    let lines = app.visible_logs();
    let height = area.height.saturating_sub(2) as usize;
    let end = lines.len().saturating_sub(app.log_scroll.min(lines.len()));
    let start = end.saturating_sub(height);
    let text: Vec<Line> = lines[start..end]
        .iter()
        .map(|l| match l.stream {
            LogStream::Stderr => Line::styled(l.line.clone(), Style::new().fg(Color::Red)),
            LogStream::Stdout => Line::raw(l.line.clone()),
        })
        .collect();
    let mode = if app.follow { "follow" } else { "paused" };
    let filter = if app.filter.is_empty() {
        String::new()
    } else {
        format!(" filter: {}", app.filter)
    };
    let title = format!(
        " Logs: {model} [{mode}] {}/{} lines{filter} ",
        lines.len(),
        app.logs.len()
    );
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(title)),
        area,
    );
}

fn event_text(e: &SupervisorEvent) -> String {
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
    }
}

fn model(app: &App, frame: &mut Frame, area: Rect) {
    let Some(m) = app.selected_model_row() else {
        frame.render_widget(
            Paragraph::new("no model selected").block(Block::bordered().title(" Model ")),
            area,
        );
        return;
    };
    let s = &m.status;
    let [info, charts, events] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Min(3),
    ])
    .areas(area);
    let pid = s.pid.map_or("-".into(), |p| p.to_string());
    let info_lines = vec![
        Line::from(vec![
            Span::styled(
                format!("{} ", s.name),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::styled(s.state.as_str(), Style::new().fg(model_color(m))),
            Span::raw(format!(
                "  pid {pid}  port {}  uptime {}  restarts {}",
                s.port,
                duration(s.uptime_secs),
                s.restarts
            )),
        ]),
        Line::from(format!(
            "req/s {}  p50 {} ms  p95 {} ms  p99 {} ms  errors {}%",
            num(m.requests_per_sec, 2),
            num(m.p50_ms, 1),
            num(m.p95_ms, 1),
            num(m.p99_ms, 1),
            num(m.error_percent, 2)
        )),
        Line::from(format!(
            "CPU {}  RSS {}  GPU mem {}  last exit {}",
            s.cpu_percent.map_or("-".into(), |c| format!("{c:.0}%")),
            s.rss_bytes.map_or("-".into(), |b| bytes(b as f64)),
            m.gpu_memory_bytes.map_or("-".into(), bytes),
            s.last_exit.as_ref().map_or("-".into(), |e| e.to_string())
        )),
    ];
    frame.render_widget(
        Paragraph::new(info_lines).block(Block::bordered().title(format!(" Model: {} ", s.name))),
        info,
    );
    let width = (charts.width as usize).saturating_sub(14).max(1);
    let chart = |label: &str, values: &[f64], last: String| {
        Line::from(vec![
            Span::raw(format!("{label:<6}")),
            Span::styled(sparkline(values, width, None), Style::new().fg(Color::Cyan)),
            Span::raw(format!(" {last}")),
        ])
    };
    let chart_lines = vec![
        chart(
            "req/s",
            &m.requests_history,
            num(m.requests_history.last().copied(), 0),
        ),
        chart("CPU", &m.cpu_history, pct(m.cpu_history.last().copied())),
        chart(
            "RSS",
            &m.rss_history,
            m.rss_history.last().map_or("-".into(), |b| bytes(*b)),
        ),
    ];
    frame.render_widget(
        Paragraph::new(chart_lines).block(Block::bordered().title(" Recent ")),
        charts,
    );
    let height = events.height.saturating_sub(2) as usize;
    let recent: Vec<Line> = app
        .events
        .iter()
        .rev()
        .filter(|e| e.model == s.name)
        .take(height)
        .map(|e| {
            let style = match e.kind {
                EventKind::CrashLoop { .. } | EventKind::ModelDown { .. } => {
                    Style::new().fg(Color::Red)
                }
                EventKind::Exited {
                    expected: false, ..
                } => Style::new().fg(Color::Yellow),
                _ => Style::new(),
            };
            Line::styled(format!("{}  {}", clock(e.at_ms), event_text(e)), style)
        })
        .collect();
    frame.render_widget(
        Paragraph::new(recent)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Recent events ")),
        events,
    );
}

/// UTC wall-clock time of day for an event.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn help(frame: &mut Frame, area: Rect) {
    let text = [
        "Tab / 1-4   switch view (Overview, Alerts, Logs, Model)",
        "j/k ↑/↓     move selection (models, alerts) or scroll logs",
        "g / G       top / bottom (G in Logs resumes following)",
        "Enter       open the selected model",
        "/           filter; Enter keeps it, Esc clears it",
        "f           freeze / unfreeze updates",
        "h/l ←/→     previous / next model (Logs)",
        "r x S       restart, stop, start the model (Model view; asks first)",
        "a s u       ack, silence (asks for a duration), unsilence (Alerts)",
        "?           this help;  q or Ctrl-C quit",
    ];
    let w = 72.min(area.width);
    let h = (text.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text.iter().map(|l| Line::raw(*l)).collect::<Vec<_>>())
            .block(Block::bordered().title(" Keys ")),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_and_sparklines_scale() {
        assert_eq!(bar(Some(50.0), 4), "██░░");
        assert_eq!(bar(Some(250.0), 2), "██");
        assert_eq!(bar(None, 3), "···");
        assert_eq!(sparkline(&[0.0, 50.0, 100.0], 2, Some(100.0)), "▅█");
        assert_eq!(sparkline(&[], 5, None), "");
        assert_eq!(
            sparkline(&[100.0, 101.0, 102.0], 5, None),
            "▁▅█",
            "own range"
        );
        assert_eq!(sparkline(&[0.0, 0.0], 5, None), "▁▁");
        assert_eq!(sparkline(&[7.0, 7.0], 5, None), "▄▄");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(bytes(1536.0 * 1024.0 * 1024.0), "1.5G");
    }
}

//! View 4: one model in detail (state, restarts, latency, GPU memory, recent lines).

use super::widgets::*;
use crate::console::app::App;
use crate::supervisor::EventKind;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

pub(super) fn model(app: &App, frame: &mut Frame, area: Rect) {
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
                EventKind::AutoRestart { .. } => Style::new().fg(Color::Cyan),
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

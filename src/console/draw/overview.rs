//! View 1, the overview: GPUs with sparklines, the models table, sinks and drops.

use super::widgets::*;
use crate::console::app::App;
use crate::control::snapshot::{GpuRow, Snapshot};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

pub(super) fn overview(app: &App, frame: &mut Frame, area: Rect) {
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
pub(super) fn sinks_lines(snap: &Snapshot) -> Vec<Line<'static>> {
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

pub(super) fn gpu_line(g: &GpuRow, compact: bool, spark_width: usize) -> Line<'static> {
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

pub(super) fn models_table(app: &App, frame: &mut Frame, area: Rect, compact: bool) {
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

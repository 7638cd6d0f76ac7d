//! Drawing: a function of the app state onto a frame, no I/O (TestBackend renders it in tests).
//!
//! One file per view (`overview`, `alerts`, `logs`, `model`, `slo`, `help`); what they share is in
//! `widgets`. Drawing only reads the app state.

mod alerts;
mod help;
mod logs;
mod model;
mod overview;
mod slo;
mod widgets;

pub use widgets::{bar, bytes, duration, sparkline};

use crate::console::app::{App, Connection, Prompt, View};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use widgets::*;

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
        View::Overview => overview::overview(app, frame, body),
        View::Alerts => alerts::alerts(app, frame, body),
        View::Logs => logs::logs(app, frame, body),
        View::Model => model::model(app, frame, body),
        View::Slo => slo::slo(app, frame, body),
    }
    frame.render_widget(Paragraph::new(footer_line(app)), footer);
    if app.help {
        help::help(frame, area);
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
        View::Slo => "page: 14.4x 1h+5m or 6x 6h+30m  ticket: 1x 3d+6h  q quit",
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

//! View 2: firing, pending and resolved alerts, silences and acks.

use super::widgets::*;
use crate::console::app::{Alerts, App, severity_rank};
use crate::console::event::plain;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

pub(super) fn alerts(app: &App, frame: &mut Frame, area: Rect) {
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

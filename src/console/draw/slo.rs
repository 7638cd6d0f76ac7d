//! View 5: each SLO's error budget left, its burn rates per window, the time to exhaustion at
//! the 1 h rate, and which tier (page / ticket) it is in.

use super::widgets::*;
use crate::alerts::slo::SloStatus;
use crate::console::app::App;
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

/// Budget left as a percentage (can go below zero: overspent).
fn left(s: &SloStatus) -> String {
    format!("{:.1}%", s.budget_remaining * 100.0)
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}x")
    } else {
        format!("{v:.1}x")
    }
}

fn exhaustion(s: &SloStatus) -> String {
    match s.exhaustion_secs {
        None => "never".into(),
        Some(0) => "spent".into(),
        Some(secs) => duration(secs as f64),
    }
}

fn tier(s: &SloStatus) -> (&'static str, Style) {
    if s.page {
        (
            "PAGE",
            Style::new()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        )
    } else if s.ticket {
        ("ticket", Style::new().fg(Color::Black).bg(Color::Yellow))
    } else {
        ("ok", Style::new().fg(Color::Green))
    }
}

pub(super) fn slo(app: &App, frame: &mut Frame, area: Rect) {
    let slos: Vec<&SloStatus> = app
        .snapshot
        .as_ref()
        .map(|s| {
            s.slos
                .iter()
                .filter(|x| {
                    app.filter.is_empty()
                        || x.model.contains(&app.filter)
                        || x.slo.contains(&app.filter)
                })
                .collect()
        })
        .unwrap_or_default();
    if slos.is_empty() {
        frame.render_widget(
            Paragraph::new("no SLOs reported (older agent, or none configured)")
                .block(Block::bordered().title(" SLOs ")),
            area,
        );
        return;
    }
    let windows: Vec<String> = slos[0]
        .burn_rates
        .iter()
        .map(|b| format!("burn {}", b.window))
        .collect();
    let mut header = vec![
        "model".to_string(),
        "slo".into(),
        "objective".into(),
        "budget left".into(),
    ];
    header.extend(windows.iter().cloned());
    header.extend(["exhausted in".to_string(), "tier".into()]);
    let rows: Vec<Row> = slos
        .iter()
        .map(|s| {
            let (t, style) = tier(s);
            let budget_style = match s.budget_remaining {
                r if r <= 0.0 => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                r if r < 0.25 => Style::new().fg(Color::Yellow),
                _ => Style::new(),
            };
            let mut cells = vec![
                Cell::from(s.model.clone()),
                Cell::from(s.slo.clone()),
                Cell::from(s.objective.clone()),
                Cell::from(left(s)).style(budget_style),
            ];
            cells.extend(s.burn_rates.iter().map(|b| {
                let style = if b.rate >= 14.4 {
                    Style::new().fg(Color::Red)
                } else if b.rate >= 1.0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                };
                Cell::from(rate(b.rate)).style(style)
            }));
            cells.push(Cell::from(exhaustion(s)));
            cells.push(Cell::from(t).style(style));
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(20),
        Constraint::Length(13),
        Constraint::Min(20),
        Constraint::Length(11),
    ];
    widths.extend(windows.iter().map(|_| Constraint::Length(9)));
    widths.extend([Constraint::Length(12), Constraint::Length(6)]);
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(format!(" SLOs ({}) ", slos.len())));
    frame.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use crate::alerts::slo::SloStatus;
    use crate::alerts::slo::engine::BurnRate;
    use crate::console::app::App;
    use crate::console::event::Event;
    use crate::control::snapshot::Snapshot;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    fn status(model: &str, remaining: f64, burn: f64, page: bool) -> SloStatus {
        SloStatus {
            model: model.into(),
            slo: "availability".into(),
            objective: "99.9 % availability over 30d".into(),
            target: 0.999,
            window_secs: 30 * 86_400,
            budget_remaining: remaining,
            good: 0,
            total: 0,
            burn_rates: ["5m", "30m", "1h", "6h", "3d"]
                .iter()
                .map(|w| BurnRate {
                    window: w.to_string(),
                    rate: burn,
                })
                .collect(),
            exhaustion_secs: (burn > 0.0).then_some(7200),
            page,
            ticket: page,
        }
    }

    #[test]
    fn shows_budget_burn_exhaustion_and_tier() {
        let mut app = App::new("/tmp/s.sock", false, "ops");
        app.handle(Event::Snapshot(Box::new(Snapshot {
            slos: vec![
                status("flaky", 0.42, 200.0, true),
                status("steady", 1.0, 0.0, false),
            ],
            ..Snapshot::default()
        })));
        app.handle(Event::Key(KeyEvent::new(
            KeyCode::Char('5'),
            KeyModifiers::NONE,
        )));
        let mut term = Terminal::new(TestBackend::new(160, 12)).unwrap();
        term.draw(|f| super::super::draw(&app, f)).unwrap();
        let screen: String = term
            .backend()
            .buffer()
            .content()
            .chunks(160)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        assert!(screen.contains("SLOs (2)"), "{screen}");
        let flaky = screen.lines().find(|l| l.contains("flaky")).unwrap();
        assert!(flaky.contains("42.0%"), "{flaky}");
        assert!(flaky.contains("200x"), "{flaky}");
        assert!(flaky.contains("2h00m"), "{flaky}");
        assert!(flaky.contains("PAGE"), "{flaky}");
        let steady = screen.lines().find(|l| l.contains("steady")).unwrap();
        assert!(
            steady.contains("never") && steady.contains(" ok"),
            "{steady}"
        );
        assert!(screen.contains("burn 3d"), "{screen}");
    }
}

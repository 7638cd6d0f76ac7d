//! View 3: supervisor events and the selected model's recent output.

use crate::console::app::App;
use crate::supervisor::LogStream;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph};

pub(super) fn logs(app: &App, frame: &mut Frame, area: Rect) {
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

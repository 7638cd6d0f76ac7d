//! The `?` overlay: the key bindings.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph};

pub(super) fn help(frame: &mut Frame, area: Rect) {
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

//! Terminal input on its own thread: keys and resizes become [`Event`]s.

use super::event::Event;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Reads the terminal until `stop` is set or the receiver is gone. Polls with a timeout so
/// the thread notices `stop` without a key press.
pub fn spawn(
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(200)) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(_) => return,
                }
                let e = match event::read() {
                    Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => Event::Key(k),
                    Ok(TermEvent::Resize(w, h)) => Event::Resize(w, h),
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if events.send(e).is_err() {
                    return;
                }
            }
        })
}

//! `warden console`: the on-call TUI attached to the running daemon over the control socket.
//!
//! bottom's structure: input ([`input`]) and data collection ([`client`]) run on their own
//! threads and send [`event::Event`]s; the main loop folds them into [`app::App`] (pure) and
//! redraws with [`draw::draw`] (no I/O). A burst of events is applied before one redraw, so
//! state updates never wait on drawing. The console never reads NVML or spawns models.

pub mod app;
pub mod client;
pub mod draw;
pub mod event;
pub mod input;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{cursor, execute, terminal};
use std::io::Stdout;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// The packaged daemon's socket (systemd unit); tried first.
const SYSTEM_SOCKET: &str = "/run/warden/control.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    pub socket: PathBuf,
    pub read_only: bool,
}

/// `/run/warden/control.sock` if it exists, else the embedded default config's socket.
pub fn default_socket() -> PathBuf {
    let system = Path::new(SYSTEM_SOCKET);
    if system.exists() {
        return system.to_path_buf();
    }
    let embedded = crate::config::Config::embedded();
    embedded.resolve(&embedded.agent.control_socket)
}

/// Who acks and silences: the login name.
fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "console".into())
}

type Term = Terminal<CrosstermBackend<Stdout>>;

fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
}

/// Raw mode + alternate screen, and a panic hook that puts the terminal back first so the
/// panic message is readable and the shell usable.
fn setup_terminal() -> Result<Term, ConsoleError> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    terminal::enable_raw_mode()?;
    let mut stdout = std::io::stdout();
    if let Err(e) = execute!(stdout, terminal::EnterAlternateScreen, cursor::Hide) {
        restore_terminal();
        return Err(e.into());
    }
    match Terminal::new(CrosstermBackend::new(stdout)) {
        Ok(t) => Ok(t),
        Err(e) => {
            restore_terminal();
            Err(e.into())
        }
    }
}

/// Runs the console until the operator quits; the terminal is restored on every way out.
pub fn run(options: ConsoleOptions) -> Result<(), ConsoleError> {
    let mut term = setup_terminal()?;
    let result = main_loop(&mut term, options);
    restore_terminal();
    result
}

fn main_loop(term: &mut Term, options: ConsoleOptions) -> Result<(), ConsoleError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let input = input::spawn(tx.clone(), stop.clone())?;
    let collector = client::spawn(
        client::CollectorConfig::new(options.socket.clone()),
        tx,
        cmd_rx,
    )?;

    let mut app = app::App::new(
        options.socket.display().to_string(),
        options.read_only,
        operator(),
    );
    let size = term.size()?;
    app.size = (size.width, size.height);
    term.draw(|f| draw::draw(&app, f))?;
    let outcome = loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        // Fold everything already queued, then draw once.
        let mut next = Some(first);
        while let Some(event) = next {
            for cmd in app.handle(event) {
                let _ = cmd_tx.send(cmd);
            }
            next = rx.try_recv().ok();
        }
        if app.quit {
            break Ok(());
        }
        if let Err(e) = term.draw(|f| draw::draw(&app, f)) {
            break Err(e.into());
        }
    };
    stop.store(true, Ordering::Relaxed);
    // Closing the command channel ends the collector.
    drop(cmd_tx);
    drop(rx);
    let _ = input.join();
    let _ = collector.join();
    outcome
}

//! The console's state and how events change it: pure (no I/O, no clock), so every key and
//! every daemon update is unit-testable.

use super::event::{AlertsFeed, AlertsReply, Command, Event};
use crate::control::snapshot::{ModelRow, Snapshot};
use crate::supervisor::{EventKind, LogLine, ModelState, SupervisorEvent};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// Recent supervisor events kept for the model detail view.
const EVENTS_KEPT: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Alerts,
    Logs,
    Model,
    /// Each SLO's error budget, burn rates and time to exhaustion.
    Slo,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Overview,
        View::Alerts,
        View::Logs,
        View::Model,
        View::Slo,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Alerts => "Alerts",
            View::Logs => "Logs",
            View::Model => "Model",
            View::Slo => "SLOs",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// A model action that needs a confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Restart(String),
    Stop(String),
    Start(String),
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Restart(m) => format!("restart {m}"),
            Action::Stop(m) => format!("stop {m}"),
            Action::Start(m) => format!("start {m}"),
        }
    }

    fn command(&self) -> Command {
        match self {
            Action::Restart(m) => Command::Restart(m.clone()),
            Action::Stop(m) => Command::Stop(m.clone()),
            Action::Start(m) => Command::Start(m.clone()),
        }
    }
}

/// A modal question at the bottom of the screen.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Confirm(Action),
    /// Silence an alert (its matchers taken when asked, so a refresh meanwhile cannot
    /// retarget the answer) for the typed duration.
    SilenceFor {
        rule: String,
        matchers: BTreeMap<String, Value>,
        input: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected,
    Disconnected { reason: String, attempt: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Alerts {
    Loading,
    Unavailable(String),
    Loaded(AlertsReply),
}

pub struct App {
    pub socket: String,
    pub read_only: bool,
    /// Who acks and silences (the login name).
    pub operator: String,
    pub view: View,
    pub connection: Connection,
    pub snapshot: Option<Snapshot>,
    /// The newest snapshot received while frozen; shown on unfreeze.
    pub pending: Option<Snapshot>,
    pub frozen: bool,
    pub alerts: Alerts,
    pub events: VecDeque<SupervisorEvent>,
    pub logs_model: Option<String>,
    pub logs: Vec<LogLine>,
    /// Lines scrolled up from the bottom of the (filtered) log; 0 while following.
    pub log_scroll: usize,
    pub follow: bool,
    /// The selected model, by name so it survives models coming and going.
    pub selected_model: Option<String>,
    pub selected_alert: usize,
    pub filter: String,
    pub editing_filter: bool,
    pub help: bool,
    pub prompt: Option<Prompt>,
    pub message: Option<Message>,
    pub size: (u16, u16),
    pub quit: bool,
}

fn key_is(key: &KeyEvent, c: char) -> bool {
    key.code == KeyCode::Char(c)
}

impl App {
    pub fn new(socket: impl Into<String>, read_only: bool, operator: impl Into<String>) -> App {
        App {
            socket: socket.into(),
            read_only,
            operator: operator.into(),
            view: View::Overview,
            connection: Connection::Connecting,
            snapshot: None,
            pending: None,
            frozen: false,
            alerts: Alerts::Loading,
            events: VecDeque::new(),
            logs_model: None,
            logs: Vec::new(),
            log_scroll: 0,
            follow: true,
            selected_model: None,
            selected_alert: 0,
            filter: String::new(),
            editing_filter: false,
            help: false,
            prompt: None,
            message: None,
            size: (80, 24),
            quit: false,
        }
    }

    /// Applies one event; returns what the collector should do about it.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        match event {
            Event::Key(key) => return self.key(key),
            Event::Resize(w, h) => self.size = (w, h),
            Event::Connected => {
                self.connection = Connection::Connected;
                // Tell a fresh collector connection what to tail.
                if self.view == View::Logs {
                    return vec![Command::WatchLogs(self.logs_model.clone())];
                }
            }
            Event::Snapshot(s) => {
                self.connection = Connection::Connected;
                if self.frozen {
                    self.pending = Some(*s);
                } else {
                    self.snapshot = Some(*s);
                }
                return self.sync_logs_model();
            }
            Event::Supervisor(e) => self.supervisor_event(e),
            Event::Alerts(feed) => {
                self.alerts = match feed {
                    AlertsFeed::Unavailable(why) => Alerts::Unavailable(why),
                    AlertsFeed::Loaded(reply) => Alerts::Loaded(reply),
                };
                let n = self.alert_count();
                self.selected_alert = self.selected_alert.min(n.saturating_sub(1));
            }
            Event::Logs { model, lines } => {
                if !self.frozen && self.logs_model.as_deref() == Some(model.as_str()) {
                    if !self.follow {
                        // Paused: keep the same lines on screen as new ones arrive below.
                        let filter = self.filter.to_lowercase();
                        self.log_scroll += appended(&self.logs, &lines)
                            .iter()
                            .filter(|l| {
                                filter.is_empty() || l.line.to_lowercase().contains(&filter)
                            })
                            .count();
                    }
                    self.logs = lines;
                }
            }
            Event::ActionDone { what, result } => {
                self.message = Some(match result {
                    Ok(()) => Message {
                        text: format!("{what}: done"),
                        error: false,
                    },
                    Err(e) => Message {
                        text: format!("{what} failed: {e}"),
                        error: true,
                    },
                });
            }
            Event::Disconnected {
                reason, attempt, ..
            } => {
                self.connection = Connection::Disconnected { reason, attempt };
            }
        }
        Vec::new()
    }

    /// Patches the shown model at once so a restart shows without waiting for a snapshot.
    fn supervisor_event(&mut self, e: SupervisorEvent) {
        if !self.frozen
            && let Some(row) = self
                .snapshot
                .as_mut()
                .and_then(|s| s.models.iter_mut().find(|m| m.status.name == e.model))
        {
            match &e.kind {
                EventKind::StateChanged { to, pid, .. } => {
                    row.status.state = *to;
                    if pid.is_some() || matches!(to, ModelState::Stopped) {
                        row.status.pid = *pid;
                    }
                }
                EventKind::ModelUp { pid: Some(pid) } => row.status.pid = Some(*pid),
                _ => {}
            }
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn say(&mut self, text: impl Into<String>, error: bool) {
        self.message = Some(Message {
            text: text.into(),
            error,
        });
    }

    fn key(&mut self, key: KeyEvent) -> Vec<Command> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key_is(&key, 'c') {
            self.quit = true;
            return Vec::new();
        }
        if let Some(prompt) = self.prompt.take() {
            return self.prompt_key(prompt, key);
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.log_scroll = 0;
            return Vec::new();
        }
        if self.help {
            self.help = false;
            if !key_is(&key, 'q') {
                return Vec::new();
            }
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => return self.switch((self.view.index() + 1) % View::ALL.len()),
            KeyCode::BackTab => {
                return self.switch((self.view.index() + View::ALL.len() - 1) % View::ALL.len());
            }
            KeyCode::Char(c @ '1'..='5') => return self.switch(c as usize - '1' as usize),
            KeyCode::Char('f') => {
                self.frozen = !self.frozen;
                if !self.frozen
                    && let Some(s) = self.pending.take()
                {
                    self.snapshot = Some(s);
                }
            }
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            KeyCode::Esc => {
                self.filter.clear();
                self.message = None;
            }
            _ => return self.view_key(key),
        }
        Vec::new()
    }

    fn switch(&mut self, index: usize) -> Vec<Command> {
        let to = View::ALL[index.min(View::ALL.len() - 1)];
        let from = std::mem::replace(&mut self.view, to);
        match (from == View::Logs, to == View::Logs) {
            (false, true) => {
                self.logs_model = self.selected_model_name();
                self.logs.clear();
                self.log_scroll = 0;
                self.follow = true;
                vec![Command::WatchLogs(self.logs_model.clone())]
            }
            (true, false) => {
                self.logs_model = None;
                vec![Command::WatchLogs(None)]
            }
            _ => Vec::new(),
        }
    }

    fn view_key(&mut self, key: KeyEvent) -> Vec<Command> {
        let down = matches!(key.code, KeyCode::Char('j') | KeyCode::Down);
        let up = matches!(key.code, KeyCode::Char('k') | KeyCode::Up);
        let top = key_is(&key, 'g') || key.code == KeyCode::Home;
        let bottom = key_is(&key, 'G') || key.code == KeyCode::End;
        match self.view {
            View::Overview | View::Model => {
                if down || up || top || bottom {
                    self.move_model(down, up, top);
                } else if self.view == View::Overview && key.code == KeyCode::Enter {
                    self.view = View::Model;
                } else if self.view == View::Model {
                    let action = match key.code {
                        KeyCode::Char('r') => Some(Action::Restart as fn(String) -> Action),
                        KeyCode::Char('x') => Some(Action::Stop as fn(String) -> Action),
                        KeyCode::Char('S') => Some(Action::Start as fn(String) -> Action),
                        _ => None,
                    };
                    if let (Some(make), Some(model)) = (action, self.selected_model_name()) {
                        let action = make(model);
                        if self.read_only {
                            self.say(
                                format!(
                                    "read-only: {} refused (actions are disabled)",
                                    action.describe()
                                ),
                                true,
                            );
                        } else {
                            self.prompt = Some(Prompt::Confirm(action));
                        }
                    }
                }
            }
            View::Alerts => {
                let n = self.alert_count();
                if down {
                    self.selected_alert = (self.selected_alert + 1).min(n.saturating_sub(1));
                } else if up {
                    self.selected_alert = self.selected_alert.saturating_sub(1);
                } else if top {
                    self.selected_alert = 0;
                } else if bottom {
                    self.selected_alert = n.saturating_sub(1);
                } else if let KeyCode::Char(c @ ('a' | 's' | 'u')) = key.code {
                    return self.alert_action(c);
                }
            }
            View::Logs => {
                if up {
                    self.log_scroll += 1;
                    self.follow = false;
                } else if down {
                    self.log_scroll = self.log_scroll.saturating_sub(1);
                    self.follow = self.log_scroll == 0;
                } else if top {
                    self.log_scroll = self.logs.len();
                    self.follow = false;
                } else if bottom || key_is(&key, 'F') {
                    self.log_scroll = 0;
                    self.follow = true;
                } else if matches!(
                    key.code,
                    KeyCode::Char('h' | 'l') | KeyCode::Left | KeyCode::Right
                ) {
                    let forward = matches!(key.code, KeyCode::Char('l') | KeyCode::Right);
                    self.move_model(forward, !forward, false);
                    self.logs_model = self.selected_model_name();
                    self.logs.clear();
                    self.log_scroll = 0;
                    self.follow = true;
                    return vec![Command::WatchLogs(self.logs_model.clone())];
                }
            }
            // Read-only: the budgets come with each snapshot.
            View::Slo => {}
        }
        Vec::new()
    }

    fn alert_action(&mut self, c: char) -> Vec<Command> {
        let verb = match c {
            'a' => "ack",
            's' => "silence",
            _ => "unsilence",
        };
        if self.read_only {
            self.say(
                format!("read-only: {verb} refused (actions are disabled)"),
                true,
            );
            return Vec::new();
        }
        let Alerts::Loaded(reply) = &self.alerts else {
            self.say(format!("{verb}: alerts unavailable"), true);
            return Vec::new();
        };
        let Some(alert) = self
            .visible_alerts()
            .get(self.selected_alert)
            .map(|(i, _)| *i)
        else {
            self.say(format!("{verb}: no alert selected"), true);
            return Vec::new();
        };
        let a = &reply.alerts[alert];
        match c {
            'a' => vec![Command::Ack {
                id: a.id.clone(),
                by: self.operator.clone(),
            }],
            's' => {
                self.prompt = Some(Prompt::SilenceFor {
                    rule: a.rule.clone(),
                    matchers: a.matchers(),
                    input: "1h".into(),
                });
                Vec::new()
            }
            _ => match reply.silences.iter().find(|s| a.covered_by(s)) {
                Some(s) => vec![Command::Unsilence { id: s.id.clone() }],
                None => {
                    self.say(format!("unsilence: no silence covers {}", a.rule), true);
                    Vec::new()
                }
            },
        }
    }

    fn prompt_key(&mut self, prompt: Prompt, key: KeyEvent) -> Vec<Command> {
        match prompt {
            Prompt::Confirm(action) => match key.code {
                KeyCode::Char('y' | 'Y') | KeyCode::Enter => {
                    self.say(format!("{}…", action.describe()), false);
                    return vec![action.command()];
                }
                KeyCode::Char('n' | 'N') | KeyCode::Esc => self.say("cancelled", false),
                // Anything else leaves the question on screen.
                _ => self.prompt = Some(Prompt::Confirm(action)),
            },
            Prompt::SilenceFor {
                rule,
                matchers,
                mut input,
            } => {
                match key.code {
                    KeyCode::Esc => {
                        self.say("cancelled", false);
                        return Vec::new();
                    }
                    KeyCode::Enter => return self.silence(rule, matchers, input),
                    KeyCode::Backspace => {
                        input.pop();
                    }
                    KeyCode::Char(c) => input.push(c),
                    _ => {}
                }
                self.prompt = Some(Prompt::SilenceFor {
                    rule,
                    matchers,
                    input,
                });
            }
        }
        Vec::new()
    }

    fn silence(
        &mut self,
        rule: String,
        matchers: BTreeMap<String, Value>,
        input: String,
    ) -> Vec<Command> {
        let duration = match humantime::parse_duration(input.trim()) {
            Ok(d) if d.as_secs() > 0 => d,
            _ => {
                self.say(
                    format!("silence: {input:?} is not a duration (try 30m, 2h)"),
                    true,
                );
                self.prompt = Some(Prompt::SilenceFor {
                    rule,
                    matchers,
                    input,
                });
                return Vec::new();
            }
        };
        vec![Command::Silence {
            matchers,
            duration_secs: duration.as_secs(),
            creator: self.operator.clone(),
            comment: format!("silenced from warden console: {rule}"),
        }]
    }

    fn sync_logs_model(&mut self) -> Vec<Command> {
        if self.view == View::Logs && self.logs_model.is_none() {
            self.logs_model = self.selected_model_name();
            if self.logs_model.is_some() {
                return vec![Command::WatchLogs(self.logs_model.clone())];
            }
        }
        Vec::new()
    }

    /// Models matching the filter (the filter only narrows in Overview).
    pub fn visible_models(&self) -> Vec<&ModelRow> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let filter = if self.view == View::Overview {
            self.filter.to_lowercase()
        } else {
            String::new()
        };
        s.models
            .iter()
            .filter(|m| filter.is_empty() || m.status.name.to_lowercase().contains(&filter))
            .collect()
    }

    /// The selected model: the remembered one if still present, else the first visible.
    pub fn selected_model_name(&self) -> Option<String> {
        let models = self.visible_models();
        self.selected_model
            .as_ref()
            .filter(|n| models.iter().any(|m| &m.status.name == *n))
            .cloned()
            .or_else(|| models.first().map(|m| m.status.name.clone()))
    }

    pub fn selected_model_row(&self) -> Option<&ModelRow> {
        let name = self.selected_model_name()?;
        self.snapshot
            .as_ref()?
            .models
            .iter()
            .find(|m| m.status.name == name)
    }

    fn move_model(&mut self, down: bool, up: bool, top: bool) {
        let names: Vec<String> = self
            .visible_models()
            .iter()
            .map(|m| m.status.name.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        let current = self
            .selected_model_name()
            .and_then(|n| names.iter().position(|m| *m == n))
            .unwrap_or(0);
        let next = if down {
            (current + 1).min(names.len() - 1)
        } else if up {
            current.saturating_sub(1)
        } else if top {
            0
        } else {
            names.len() - 1
        };
        self.selected_model = Some(names[next].clone());
    }

    /// Alerts matching the filter, with their index in the reply; firing first, then pending,
    /// then the rest, critical before warning before info.
    pub fn visible_alerts(&self) -> Vec<(usize, &super::event::Alert)> {
        let Alerts::Loaded(reply) = &self.alerts else {
            return Vec::new();
        };
        let filter = self.filter.to_lowercase();
        let mut v: Vec<_> = reply
            .alerts
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                filter.is_empty()
                    || a.rule.to_lowercase().contains(&filter)
                    || a.summary.to_lowercase().contains(&filter)
            })
            .collect();
        let state_rank = |s: &str| match s {
            "firing" => 0,
            "pending" => 1,
            _ => 2,
        };
        v.sort_by_key(|(i, a)| (state_rank(&a.state), severity_rank(&a.severity), *i));
        v
    }

    fn alert_count(&self) -> usize {
        self.visible_alerts().len()
    }

    /// Firing alerts (not silenced) by severity: (critical, warning, info).
    pub fn firing_counts(&self) -> Option<(usize, usize, usize)> {
        let Alerts::Loaded(reply) = &self.alerts else {
            return None;
        };
        let firing = |sev: &str| {
            reply
                .alerts
                .iter()
                .filter(|a| a.state == "firing" && !a.silenced && a.severity == sev)
                .count()
        };
        Some((firing("critical"), firing("warning"), firing("info")))
    }

    /// Log lines matching the filter, oldest first.
    pub fn visible_logs(&self) -> Vec<&LogLine> {
        let filter = self.filter.to_lowercase();
        self.logs
            .iter()
            .filter(|l| filter.is_empty() || l.line.to_lowercase().contains(&filter))
            .collect()
    }

    /// True when the terminal is too small for the full layout.
    pub fn compact(&self) -> bool {
        self.size.0 < 110 || self.size.1 < 24
    }
}

/// The lines `new` (a fresh tail) has after the last line of `old`.
fn appended<'a>(old: &[LogLine], new: &'a [LogLine]) -> &'a [LogLine] {
    let Some(last) = old.last() else {
        return &[];
    };
    new.iter()
        .rposition(|l| l == last)
        .map_or(&[], |i| &new[i + 1..])
}

pub fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 0,
        "warning" => 1,
        "info" => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::event::{Alert, Silence};
    use crate::supervisor::ModelStatus;
    use serde_json::json;

    fn key(c: char) -> Event {
        Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    fn code(c: KeyCode) -> Event {
        Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    fn row(name: &str, pid: u32) -> ModelRow {
        ModelRow {
            status: ModelStatus {
                name: name.into(),
                port: 8001,
                pid: Some(pid),
                state: ModelState::Ready,
                uptime_secs: 5.0,
                restarts: 0,
                last_exit: None,
                cpu_percent: None,
                rss_bytes: None,
            },
            requests_per_sec: None,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            error_percent: None,
            gpu_memory_bytes: None,
            cpu_history: vec![],
            rss_history: vec![],
            requests_history: vec![],
        }
    }

    fn app_with(models: &[&str]) -> App {
        let mut app = App::new("/tmp/c.sock", false, "oncall");
        let snap = Snapshot {
            models: models
                .iter()
                .enumerate()
                .map(|(i, m)| row(m, 100 + i as u32))
                .collect(),
            ..Snapshot::default()
        };
        app.handle(Event::Snapshot(Box::new(snap)));
        app
    }

    #[test]
    fn restart_needs_confirmation_and_goes_to_the_selected_model() {
        let mut app = app_with(&["alpha", "beta"]);
        assert!(app.handle(key('4')).is_empty());
        assert_eq!(app.view, View::Model);
        app.handle(key('j'));
        assert!(app.handle(key('r')).is_empty());
        assert_eq!(
            app.prompt,
            Some(Prompt::Confirm(Action::Restart("beta".into())))
        );
        // An unrelated key keeps the question open; `n` cancels.
        app.handle(key('z'));
        assert!(app.prompt.is_some());
        assert!(app.handle(key('n')).is_empty());
        assert!(app.prompt.is_none());
        app.handle(key('x'));
        assert_eq!(app.handle(key('y')), vec![Command::Stop("beta".into())]);
        app.handle(key('S'));
        assert_eq!(
            app.handle(code(KeyCode::Enter)),
            vec![Command::Start("beta".into())]
        );
    }

    #[test]
    fn read_only_refuses_every_action_and_says_so() {
        let mut app = app_with(&["alpha"]);
        app.read_only = true;
        app.handle(key('4'));
        for k in ['r', 'x', 'S'] {
            assert!(app.handle(key(k)).is_empty());
            assert!(app.prompt.is_none());
            let m = app.message.clone().unwrap();
            assert!(m.error && m.text.contains("read-only"), "{m:?}");
        }
        app.handle(Event::Alerts(AlertsFeed::Loaded(AlertsReply {
            alerts: vec![Alert {
                id: json!("a1"),
                rule: "r".into(),
                state: "firing".into(),
                ..Alert::default()
            }],
            silences: vec![],
        })));
        app.handle(key('2'));
        for k in ['a', 's', 'u'] {
            assert!(app.handle(key(k)).is_empty());
            assert!(app.message.as_ref().unwrap().text.contains("read-only"));
        }
    }

    #[test]
    fn supervisor_events_patch_the_pid_at_once_unless_frozen() {
        let mut app = app_with(&["alpha"]);
        let ev = |pid| {
            Event::Supervisor(SupervisorEvent {
                at_ms: 1,
                model: "alpha".into(),
                kind: EventKind::StateChanged {
                    from: ModelState::Stopping,
                    to: ModelState::Starting,
                    pid: Some(pid),
                    delay_ms: None,
                },
            })
        };
        app.handle(ev(4242));
        let m = &app.snapshot.as_ref().unwrap().models[0].status;
        assert_eq!((m.pid, m.state), (Some(4242), ModelState::Starting));
        assert_eq!(app.events.len(), 1);

        app.handle(key('f'));
        app.handle(ev(5555));
        let mut next = app.snapshot.clone().unwrap();
        next.at_ms = 99;
        app.handle(Event::Snapshot(Box::new(next)));
        assert_eq!(
            app.snapshot.as_ref().unwrap().models[0].status.pid,
            Some(4242)
        );
        assert_eq!(app.snapshot.as_ref().unwrap().at_ms, 0);
        app.handle(key('f'));
        assert_eq!(
            app.snapshot.as_ref().unwrap().at_ms,
            99,
            "unfreeze shows the newest"
        );
    }

    #[test]
    fn logs_view_tails_the_selected_model_and_filters() {
        let mut app = app_with(&["alpha", "beta"]);
        app.handle(key('j'));
        assert_eq!(
            app.handle(key('3')),
            vec![Command::WatchLogs(Some("beta".into()))]
        );
        assert_eq!(
            app.handle(key('l')),
            vec![Command::WatchLogs(Some("beta".into()))],
            "already the last model"
        );
        assert_eq!(
            app.handle(key('h')),
            vec![Command::WatchLogs(Some("alpha".into()))]
        );
        let line = |s: &str| LogLine {
            model: "alpha".into(),
            stream: crate::supervisor::LogStream::Stdout,
            timestamp_ms: 0,
            line: s.into(),
        };
        app.handle(Event::Logs {
            model: "beta".into(),
            lines: vec![line("stale")],
        });
        assert!(app.logs.is_empty(), "lines of another model are ignored");
        app.handle(Event::Logs {
            model: "alpha".into(),
            lines: vec![line("GET /ready"), line("ERROR boom"), line("GET /health")],
        });
        app.handle(key('/'));
        for c in "get".chars() {
            app.handle(key(c));
        }
        app.handle(code(KeyCode::Enter));
        assert_eq!(app.visible_logs().len(), 2);
        app.handle(key('k'));
        assert!(!app.follow);
        assert_eq!(app.log_scroll, 1);
        // New lines while paused keep the view where it was.
        app.handle(Event::Logs {
            model: "alpha".into(),
            lines: vec![
                line("GET /ready"),
                line("ERROR boom"),
                line("GET /health"),
                line("GET /new"),
                line("GET /newer"),
            ],
        });
        assert_eq!(app.log_scroll, 3);
        app.handle(key('G'));
        assert!(app.follow);
        assert_eq!(app.handle(key('1')), vec![Command::WatchLogs(None)]);
        app.handle(code(KeyCode::Esc));
        assert!(app.filter.is_empty());
    }

    #[test]
    fn alerts_ack_silence_with_a_duration_prompt_and_unsilence() {
        let mut app = app_with(&["alpha"]);
        let alert = |id: &str, sev: &str, state: &str| Alert {
            id: json!(id),
            rule: format!("rule-{id}"),
            severity: sev.into(),
            state: state.into(),
            labels: [("Model".to_string(), json!("alpha"))].into(),
            ..Alert::default()
        };
        app.handle(Event::Alerts(AlertsFeed::Loaded(AlertsReply {
            alerts: vec![
                alert("p", "info", "pending"),
                alert("c", "critical", "firing"),
            ],
            silences: vec![Silence {
                id: json!(7),
                matchers: [("rule".to_string(), json!("rule-p"))].into(),
                ..Silence::default()
            }],
        })));
        assert_eq!(app.firing_counts(), Some((1, 0, 0)));
        app.handle(key('2'));
        // Firing sorts first.
        assert_eq!(
            app.handle(key('a')),
            vec![Command::Ack {
                id: json!("c"),
                by: "oncall".into()
            }]
        );
        app.handle(key('s'));
        app.handle(code(KeyCode::Backspace));
        app.handle(code(KeyCode::Backspace));
        for c in "bogus".chars() {
            app.handle(key(c));
        }
        assert!(app.handle(code(KeyCode::Enter)).is_empty());
        assert!(app.message.as_ref().unwrap().error);
        assert!(app.prompt.is_some(), "a bad duration keeps the prompt");
        for _ in 0..5 {
            app.handle(code(KeyCode::Backspace));
        }
        // A refresh reordering the alerts while the prompt is open changes nothing.
        let Alerts::Loaded(mut reply) = app.alerts.clone() else {
            unreachable!()
        };
        reply.alerts.reverse();
        app.handle(Event::Alerts(AlertsFeed::Loaded(reply)));
        for c in "30m".chars() {
            app.handle(key(c));
        }
        let cmds = app.handle(code(KeyCode::Enter));
        let Command::Silence {
            matchers,
            duration_secs,
            creator,
            ..
        } = &cmds[0]
        else {
            panic!("{cmds:?}")
        };
        assert_eq!(*duration_secs, 1800);
        assert_eq!(creator, "oncall");
        assert_eq!(matchers["rule"], json!("rule-c"));
        assert_eq!(matchers["Model"], json!("alpha"));
        // The critical alert has no silence; the pending one is covered by silence 7.
        assert!(app.handle(key('u')).is_empty());
        app.handle(key('j'));
        assert_eq!(
            app.handle(key('u')),
            vec![Command::Unsilence { id: json!(7) }]
        );
    }

    #[test]
    fn alerts_unavailable_refuses_alert_actions_gracefully() {
        let mut app = app_with(&["alpha"]);
        app.handle(Event::Alerts(AlertsFeed::Unavailable("no alerts".into())));
        app.handle(key('2'));
        assert!(app.handle(key('a')).is_empty());
        assert!(
            app.message
                .as_ref()
                .unwrap()
                .text
                .contains("alerts unavailable")
        );
        assert_eq!(app.firing_counts(), None);
    }

    #[test]
    fn views_cycle_help_closes_and_quit_keys_work() {
        let mut app = app_with(&["alpha"]);
        app.handle(code(KeyCode::Tab));
        assert_eq!(app.view, View::Alerts);
        app.handle(code(KeyCode::BackTab));
        app.handle(code(KeyCode::BackTab));
        // The SLO view (5) is the last tab since issue 16; Model is one further back.
        assert_eq!(app.view, View::Slo);
        app.handle(code(KeyCode::BackTab));
        assert_eq!(app.view, View::Model);
        app.handle(key('?'));
        assert!(app.help);
        app.handle(key('j'));
        assert!(!app.help && !app.quit);
        app.handle(Event::Key(KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
        )));
        assert!(app.quit);
    }
}

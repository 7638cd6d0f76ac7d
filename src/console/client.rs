//! The collector: a thread with its own small runtime that talks to the daemon's control
//! socket — snapshots on a timer and at once after every supervisor event, alerts, the watched
//! model's log tail — and runs the operator's actions, reconnecting with backoff when the
//! daemon goes away. It only sends [`Event`]s; it never touches the terminal.

use super::event::{AlertsFeed, AlertsReply, Command, Event};
use crate::control::client::StreamItem;
use crate::control::snapshot::{DEFAULT_HISTORY_POINTS, Snapshot};
use crate::control::{ControlClient, ControlError};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A call that takes longer than this means the daemon is wedged: reconnect.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Log lines fetched per refresh of the Logs view.
const LOG_LINES: usize = 1000;

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub socket: PathBuf,
    /// How often snapshot, alerts and logs are re-read without an event prompting it.
    pub refresh: Duration,
    pub history: usize,
}

impl CollectorConfig {
    pub fn new(socket: PathBuf) -> Self {
        CollectorConfig {
            socket,
            refresh: Duration::from_secs(1),
            history: DEFAULT_HISTORY_POINTS,
        }
    }
}

/// Wait before reconnect attempt `attempt` (1-based): 200 ms doubling to a 2 s ceiling, so a
/// restarted daemon is picked up within about two seconds.
pub fn retry_delay(attempt: u32) -> Duration {
    let ms = 200u64.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(2000))
}

/// Starts the collector thread. It ends when `commands` closes or `events` has no receiver.
pub fn spawn(
    config: CollectorConfig,
    events: Sender<Event>,
    commands: UnboundedReceiver<Command>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console-collector".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = events.send(Event::Disconnected {
                        reason: format!("cannot start the collector runtime: {e}"),
                        attempt: 0,
                        retry_in_ms: 0,
                    });
                    return;
                }
            };
            runtime.block_on(Collector::new(config, events, commands).run());
        })
}

/// Why a session ended.
enum End {
    /// The console is quitting.
    Quit,
    Lost(String),
}

struct Collector {
    config: CollectorConfig,
    events: Sender<Event>,
    commands: UnboundedReceiver<Command>,
    watched: Option<String>,
    /// Finished actions ask for an immediate re-read (an ack shows without waiting a tick).
    acted_tx: tokio::sync::mpsc::UnboundedSender<()>,
    acted: UnboundedReceiver<()>,
}

impl Collector {
    fn new(
        config: CollectorConfig,
        events: Sender<Event>,
        commands: UnboundedReceiver<Command>,
    ) -> Self {
        let (acted_tx, acted) = unbounded_channel();
        Collector {
            config,
            events,
            commands,
            watched: None,
            acted_tx,
            acted,
        }
    }

    fn send(&self, e: Event) -> Result<(), End> {
        self.events.send(e).map_err(|_| End::Quit)
    }

    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            let reason = match self.session(&mut attempt).await {
                End::Quit => return,
                End::Lost(reason) => reason,
            };
            attempt = attempt.saturating_add(1);
            let delay = retry_delay(attempt);
            let lost = Event::Disconnected {
                reason,
                attempt,
                retry_in_ms: delay.as_millis() as u64,
            };
            if self.send(lost).is_err() {
                return;
            }
            let wake = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    cmd = self.commands.recv() => match cmd {
                        None => return,
                        Some(Command::WatchLogs(m)) => self.watched = m,
                        Some(action) => {
                            let done = Event::ActionDone {
                                what: describe(&action),
                                result: Err("not connected to the daemon".into()),
                            };
                            if self.send(done).is_err() {
                                return;
                            }
                        }
                    },
                }
            }
        }
    }

    /// One connected stretch: until the daemon goes away or the console quits.
    async fn session(&mut self, attempt: &mut u32) -> End {
        let socket = self.config.socket.clone();
        let connect = async {
            let calls = ControlClient::connect(&socket).await?;
            let mut stream = ControlClient::connect(&socket).await?;
            // An agent without an event stream is still worth watching: poll only.
            match stream.subscribe().await {
                Ok(()) => Ok((calls, Some(stream))),
                Err(ControlError::Remote { .. }) => Ok((calls, None)),
                Err(e) => Err(e),
            }
        };
        let (mut calls, stream) = match tokio::time::timeout(CALL_TIMEOUT, connect).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return End::Lost(e.to_string()),
            Err(_) => return End::Lost("connect timed out".into()),
        };
        *attempt = 0;
        if let Err(end) = self.send(Event::Connected) {
            return end;
        }
        // Events are read on their own task: reading a line is not cancel-safe, so it must
        // not sit in the select below.
        let (item_tx, mut items) = unbounded_channel();
        let reader = tokio::spawn(async move {
            let Some(mut stream) = stream else {
                // No stream: hold the sender so `items` stays open, and idle.
                item_tx.closed().await;
                return;
            };
            while let Ok(item) = stream.next_item().await {
                if item_tx.send(item).is_err() {
                    return;
                }
            }
        });
        let end = self.serve(&mut calls, &mut items).await;
        reader.abort();
        end
    }

    async fn serve(
        &mut self,
        calls: &mut ControlClient,
        items: &mut UnboundedReceiver<StreamItem>,
    ) -> End {
        if let Err(end) = self.refresh(calls, true).await {
            return end;
        }
        let mut tick = tokio::time::interval(self.config.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let step = tokio::select! {
                _ = tick.tick() => self.refresh(calls, true).await,
                Some(()) = self.acted.recv() => self.refresh(calls, true).await,
                item = items.recv() => match item {
                    None => Err(End::Lost("the daemon closed the event stream".into())),
                    Some(first) => self.forward(first, items, calls).await,
                },
                cmd = self.commands.recv() => match cmd {
                    None => Err(End::Quit),
                    Some(Command::WatchLogs(m)) => {
                        self.watched = m;
                        self.logs(calls).await
                    }
                    Some(action) => {
                        self.act(action);
                        Ok(())
                    }
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Forwards a burst of streamed events, then re-reads the snapshot once.
    async fn forward(
        &mut self,
        first: StreamItem,
        items: &mut UnboundedReceiver<StreamItem>,
        calls: &mut ControlClient,
    ) -> Result<(), End> {
        let mut next = Some(first);
        while let Some(item) = next {
            if let StreamItem::Event(e) = item {
                self.send(Event::Supervisor(e))?;
            }
            next = items.try_recv().ok();
        }
        self.refresh(calls, false).await
    }

    async fn call(
        &self,
        calls: &mut ControlClient,
        method: &str,
        params: Value,
    ) -> Result<Result<Value, ControlError>, End> {
        match tokio::time::timeout(CALL_TIMEOUT, calls.call(method, params)).await {
            Err(_) => Err(End::Lost(format!("`{method}` timed out"))),
            Ok(Err(e @ ControlError::Remote { .. })) => Ok(Err(e)),
            Ok(Err(e)) => Err(End::Lost(e.to_string())),
            Ok(Ok(v)) => Ok(Ok(v)),
        }
    }

    /// Snapshot, then (on the timer) alerts and the watched log tail.
    async fn refresh(&mut self, calls: &mut ControlClient, everything: bool) -> Result<(), End> {
        let history = self.config.history;
        match self
            .call(calls, "snapshot", json!({ "history": history }))
            .await?
        {
            Ok(v) => match serde_json::from_value::<Snapshot>(v) {
                Ok(s) => self.send(Event::Snapshot(Box::new(s)))?,
                Err(e) => return Err(End::Lost(format!("unreadable snapshot: {e}"))),
            },
            Err(e) => return Err(End::Lost(format!("snapshot: {e}"))),
        }
        if everything {
            let feed = match self.call(calls, "alerts", Value::Null).await? {
                Ok(v) => match serde_json::from_value::<AlertsReply>(v) {
                    Ok(reply) => AlertsFeed::Loaded(reply),
                    Err(e) => AlertsFeed::Unavailable(format!("unreadable alerts reply: {e}")),
                },
                Err(ControlError::Remote { code, .. }) if code == "unknown_method" => {
                    AlertsFeed::Unavailable("this agent has no alerts module".into())
                }
                Err(e) => AlertsFeed::Unavailable(e.to_string()),
            };
            self.send(Event::Alerts(feed))?;
            self.logs(calls).await?;
        }
        Ok(())
    }

    async fn logs(&mut self, calls: &mut ControlClient) -> Result<(), End> {
        let Some(model) = self.watched.clone() else {
            return Ok(());
        };
        let params = json!({ "model": model, "lines": LOG_LINES });
        match self.call(calls, "logs", params).await? {
            Ok(v) => {
                let lines = serde_json::from_value(v.get("lines").cloned().unwrap_or(Value::Null))
                    .unwrap_or_default();
                self.send(Event::Logs { model, lines })
            }
            // A model removed from the config has no logs; keep going.
            Err(_) => Ok(()),
        }
    }

    /// Runs an action on its own connection, so a slow restart never delays the display.
    fn act(&self, action: Command) {
        let socket = self.config.socket.clone();
        let events = self.events.clone();
        let acted = self.acted_tx.clone();
        tokio::spawn(async move {
            let what = describe(&action);
            let (method, params) = request(action);
            let call = async {
                let mut c = ControlClient::connect(&socket).await?;
                c.call(method, params).await
            };
            let result = match tokio::time::timeout(Duration::from_secs(60), call).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".into()),
            };
            let _ = events.send(Event::ActionDone { what, result });
            let _ = acted.send(());
        });
    }
}

fn describe(c: &Command) -> String {
    match c {
        Command::Restart(m) => format!("restart {m}"),
        Command::Stop(m) => format!("stop {m}"),
        Command::Start(m) => format!("start {m}"),
        Command::Ack { .. } => "ack".into(),
        Command::Silence { .. } => "silence".into(),
        Command::Unsilence { .. } => "unsilence".into(),
        Command::WatchLogs(_) => "logs".into(),
    }
}

/// The control method and params for an action.
pub fn request(c: Command) -> (&'static str, Value) {
    match c {
        Command::Restart(m) => ("restart", json!({ "model": m })),
        Command::Stop(m) => ("stop", json!({ "model": m })),
        Command::Start(m) => ("start", json!({ "model": m })),
        // `id` is the request's own envelope field, so alert and silence ids travel as
        // `alert_id` / `silence_id` (as the alerts module reads them).
        Command::Ack { id, by } => ("ack", json!({ "alert_id": id, "by": by })),
        Command::Silence {
            matchers,
            duration_secs,
            creator,
            comment,
        } => (
            "silence",
            json!({ "matchers": matchers, "duration_secs": duration_secs,
                    "creator": creator, "comment": comment }),
        ),
        Command::Unsilence { id } => ("unsilence", json!({ "silence_id": id })),
        Command::WatchLogs(m) => ("logs", json!({ "model": m })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_to_a_ceiling() {
        let ms: Vec<u128> = [1, 2, 3, 4, 5, 40]
            .iter()
            .map(|a| retry_delay(*a).as_millis())
            .collect();
        assert_eq!(ms, vec![200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn actions_map_to_the_control_protocol() {
        let (m, p) = request(Command::Silence {
            matchers: [("rule".to_string(), json!("x"))].into(),
            duration_secs: 60,
            creator: "me".into(),
            comment: "c".into(),
        });
        assert_eq!(m, "silence");
        assert_eq!(
            p,
            json!({"matchers":{"rule":"x"},"duration_secs":60,"creator":"me","comment":"c"})
        );
        assert_eq!(
            request(Command::Ack {
                id: json!(3),
                by: "me".into()
            }),
            ("ack", json!({"alert_id":3,"by":"me"}))
        );
    }
}

//! The console's screens rendered with ratatui's TestBackend for fixed snapshots of daemon
//! state: what an on-call sees for given data and keys.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use serde_json::json;
use warden::console::app::App;
use warden::console::draw::draw;
use warden::console::event::{Alert, AlertsFeed, AlertsReply, Event, Silence};
use warden::control::snapshot::{
    DropCount, GpuRow, HostLine, ModelRow, SinkBacklog, SinkHealth, Snapshot,
};
use warden::supervisor::{EventKind, LogLine, LogStream, ModelState, ModelStatus, SupervisorEvent};

const NOW_MS: u64 = 1_700_000_000_000;

fn model(name: &str, state: ModelState, pid: Option<u32>, restarts: u64) -> ModelRow {
    ModelRow {
        status: ModelStatus {
            name: name.into(),
            port: 8001,
            pid,
            state,
            uptime_secs: 125.0,
            restarts,
            last_exit: None,
            cpu_percent: Some(12.0),
            rss_bytes: Some(300 << 20),
        },
        requests_per_sec: Some(4.5),
        p50_ms: Some(12.0),
        p95_ms: Some(48.5),
        p99_ms: Some(97.0),
        error_percent: Some(0.0),
        gpu_memory_bytes: Some((2u64 << 30) as f64),
        cpu_history: vec![5.0, 10.0, 12.0],
        rss_history: vec![1.0, 2.0, 3.0],
        requests_history: vec![1.0, 4.0, 5.0],
    }
}

fn gpu(index: u32, util: f64) -> GpuRow {
    GpuRow {
        index,
        utilization: Some(util),
        memory_used_bytes: Some((4u64 << 30) as f64),
        memory_total_bytes: Some((16u64 << 30) as f64),
        temperature_c: Some(61.0),
        power_w: Some(180.0),
        power_limit_w: Some(300.0),
        lost: false,
        utilization_history: vec![10.0, 50.0, util],
        memory_history: vec![],
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        at_ms: NOW_MS,
        host: HostLine {
            host_id: "gpu-host-7".into(),
            cpu_percent: Some(23.0),
            memory_percent: Some(41.0),
            uptime_secs: 3725,
            host_uptime_secs: Some(90_000),
            agent_version: "0.1.0".into(),
            gpu_available: Some(true),
            sinks: vec![SinkHealth {
                name: "cloudwatch".into(),
                state: "degraded".into(),
                detail: "3 batches spooled".into(),
            }],
        },
        gpus: vec![gpu(0, 35.0), gpu(1, 97.0)],
        models: vec![
            model("connection-designer", ModelState::Ready, Some(4101), 0),
            model("section-optimizer", ModelState::Ready, Some(4102), 1),
            model("clash-detector", ModelState::CrashLoop, None, 7),
            model("compliance-checker", ModelState::Starting, Some(4104), 0),
            model("risk-analyzer", ModelState::Stopped, None, 0),
        ],
        drops: vec![
            DropCount {
                sink: "logs".into(),
                reason: "spool_full".into(),
                records: 1234,
            },
            DropCount {
                sink: "notify".into(),
                reason: "spool_write".into(),
                records: 2,
            },
        ],
        backlog: vec![
            SinkBacklog {
                sink: "cloudwatch".into(),
                pending: 3,
                unit: "batches".into(),
            },
            SinkBacklog {
                sink: "logs".into(),
                pending: 0,
                unit: "events".into(),
            },
            SinkBacklog {
                sink: "notify".into(),
                pending: 1,
                unit: "notifications".into(),
            },
        ],
        slos: vec![],
    }
}

fn alerts() -> AlertsReply {
    AlertsReply {
        alerts: vec![
            Alert {
                id: json!("a-1"),
                rule: "gpu-utilization-high".into(),
                severity: "warning".into(),
                state: "firing".into(),
                labels: [("GPU".to_string(), json!("1"))].into(),
                value: Some(97.0),
                threshold: Some(90.0),
                since_ms: NOW_MS - 300_000,
                summary: "GPU 1 utilisation 97 % > 90 %".into(),
                silenced: false,
                acked_by: Some("alice".into()),
            },
            Alert {
                id: json!("a-2"),
                rule: "model-crash-loop".into(),
                severity: "critical".into(),
                state: "firing".into(),
                labels: [("Model".to_string(), json!("clash-detector"))].into(),
                value: None,
                threshold: None,
                since_ms: NOW_MS - 60_000,
                summary: "clash-detector is crash-looping".into(),
                silenced: false,
                acked_by: None,
            },
            Alert {
                id: json!("a-3"),
                rule: "error-rate-high".into(),
                severity: "warning".into(),
                state: "pending".into(),
                labels: [("Model".to_string(), json!("risk-analyzer"))].into(),
                value: Some(1.7),
                threshold: Some(1.0),
                since_ms: NOW_MS - 10_000,
                summary: "errors 1.7 %".into(),
                silenced: true,
                acked_by: None,
            },
        ],
        silences: vec![Silence {
            id: json!("s-9"),
            matchers: [("rule".to_string(), json!("error-rate-high"))].into(),
            expires_ms: NOW_MS + 1_800_000,
            creator: "bob".into(),
            comment: "deploy".into(),
        }],
    }
}

fn app(read_only: bool) -> App {
    let mut app = App::new("/run/warden/control.sock", read_only, "alice");
    app.handle(Event::Connected);
    app.handle(Event::Snapshot(Box::new(snapshot())));
    app.handle(Event::Alerts(AlertsFeed::Loaded(alerts())));
    app
}

fn key(app: &mut App, c: char) {
    app.handle(Event::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::NONE,
    )));
}

fn render(app: &mut App, w: u16, h: u16) -> (String, ratatui::buffer::Buffer) {
    app.handle(Event::Resize(w, h));
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| draw(app, f)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..h {
        for x in 0..w {
            text.push_str(buf[(x, y)].symbol());
        }
        text.push('\n');
    }
    (text, buf)
}

/// The foreground colour where `needle` first appears on screen.
fn color_of(text: &str, buf: &ratatui::buffer::Buffer, needle: &str) -> Color {
    for (y, line) in text.lines().enumerate() {
        if let Some(byte) = line.find(needle) {
            let x = line[..byte].chars().count();
            return buf[(x as u16, y as u16)].fg;
        }
    }
    panic!("{needle:?} not on screen:\n{text}");
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{text}"))
}

#[test]
fn overview_shows_each_sinks_backlog_and_drops_by_sink_and_reason() {
    let mut app = app(false);
    let (text, buf) = render(&mut app, 160, 30);
    let backlog = line_with(&text, "batches pending");
    for part in [
        "cloudwatch 3 batches pending",
        "logs 0 events pending",
        "notify 1 notifications pending",
    ] {
        assert!(backlog.contains(part), "{part:?} missing from {backlog:?}");
    }
    let dropped = line_with(&text, "dropped:");
    assert!(
        dropped.contains("logs/spool_full 1234") && dropped.contains("notify/spool_write 2"),
        "{dropped:?}"
    );
    assert_eq!(color_of(&text, &buf, "logs/spool_full"), Color::Red);
    assert_eq!(color_of(&text, &buf, "3 batches pending"), Color::Yellow);
    assert_eq!(color_of(&text, &buf, "0 events pending"), Color::Green);
    // Every model row still fits under the new block.
    assert!(text.contains("risk-analyzer"), "{text}");

    // Nothing dropped says so, in green.
    let mut clean = snapshot();
    clean.drops.clear();
    app.handle(Event::Snapshot(Box::new(clean)));
    let (text, buf) = render(&mut app, 160, 30);
    assert!(
        line_with(&text, "dropped:").contains("dropped: none"),
        "{text}"
    );
    assert_eq!(color_of(&text, &buf, "none"), Color::Green);
}

#[test]
fn overview_shows_host_gpus_models_by_health_and_firing_counts() {
    let mut app = app(false);
    let (text, buf) = render(&mut app, 160, 30);
    let host = line_with(&text, "gpu-host-7");
    for part in [
        "CPU 23%",
        "MEM 41%",
        "up 1h02m",
        "v0.1.0",
        "cloudwatch: degraded",
    ] {
        assert!(host.contains(part), "{part:?} missing from {host:?}");
    }
    assert!(
        text.contains("FIRING: 1 critical, 1 warning, 0 info"),
        "silenced/pending alerts are not counted:\n{text}"
    );
    assert!(line_with(&text, "GPU0").contains("35%"));
    let gpu1 = line_with(&text, "GPU1");
    assert!(gpu1.contains("97%") && gpu1.contains("61°C") && gpu1.contains("180/300"));
    assert_eq!(color_of(&text, &buf, "GPU1 "), Color::Reset);
    for (name, state, pid) in [
        ("connection-designer", "ready", "4101"),
        ("section-optimizer", "ready", "4102"),
        ("clash-detector", "crash-loop", "-"),
        ("compliance-checker", "starting", "4104"),
        ("risk-analyzer", "stopped", "-"),
    ] {
        let row = line_with(&text, name);
        assert!(row.contains(state) && row.contains(pid), "{row}");
    }
    let row = line_with(&text, "section-optimizer");
    for part in [
        "2m05s", "4.5", "12.0", "48.5", "97.0", "2.0G", "12%", "300.0M",
    ] {
        assert!(row.contains(part), "{part:?} missing from {row:?}");
    }
    assert_eq!(color_of(&text, &buf, "clash-detector"), Color::Red);
    assert_eq!(color_of(&text, &buf, "section-optimizer"), Color::Green);
    assert_eq!(color_of(&text, &buf, "compliance-checker"), Color::Yellow);
}

#[test]
fn small_terminals_get_a_compact_layout_with_every_model() {
    let mut app = app(false);
    let (text, _) = render(&mut app, 80, 24);
    assert!(
        !text.contains("RESTARTS"),
        "full columns in compact mode:\n{text}"
    );
    assert!(text.contains("REQ/S") && text.contains("P95ms"));
    for name in ["connection-designer", "clash-detector", "risk-analyzer"] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(text.contains("GPU1"));
    let banner = text.lines().nth(1).unwrap();
    assert!(
        !banner.contains("warden v0.1.0"),
        "the banner drops the details"
    );
    for part in [
        "FIRING 1 crit 1 warn 0 info",
        "CPU 23%",
        "cloudwatch: degraded",
    ] {
        assert!(banner.contains(part), "{part:?} missing from {banner:?}");
    }
    // Many GPUs share lines, two by two, so the models keep their room.
    let mut many = snapshot();
    many.gpus = (0..8).map(|i| gpu(i, 10.0 * i as f64)).collect();
    app.handle(Event::Snapshot(Box::new(many)));
    let (text, _) = render(&mut app, 80, 24);
    let pair = line_with(&text, "GPU6");
    assert!(
        pair.contains("GPU7") && pair.contains("60%") && pair.contains("70%"),
        "{pair}"
    );
    assert!(text.contains("risk-analyzer"), "{text}");
    // And the same app redraws full-size after a resize.
    let (text, _) = render(&mut app, 160, 30);
    assert!(text.contains("RESTARTS"));
}

#[test]
fn alerts_view_lists_firing_pending_silenced_with_value_threshold_and_since() {
    let mut app = app(false);
    key(&mut app, '2');
    let (text, buf) = render(&mut app, 170, 30);
    let crit = line_with(&text, "model-crash-loop");
    assert!(crit.contains("critical") && crit.contains("firing") && crit.contains("1m00s ago"));
    let warn = line_with(&text, "gpu-utilization-high");
    for part in ["warning", "GPU=1", "97.0 / 90.0", "5m00s ago", "ack:alice"] {
        assert!(warn.contains(part), "{part:?} missing from {warn:?}");
    }
    let pending = line_with(&text, "error-rate-high  ");
    assert!(
        pending.contains("pending") && pending.contains("muted"),
        "{pending}"
    );
    // Firing critical first, then firing warning, then pending.
    let pos = |s| text.find(s).unwrap();
    assert!(pos("model-crash-loop") < pos("gpu-utilization-high"));
    assert!(pos("gpu-utilization-high") < pos("error-rate-high  "));
    assert_eq!(color_of(&text, &buf, "model-crash-loop"), Color::Red);
    assert_eq!(color_of(&text, &buf, "gpu-utilization-high"), Color::Yellow);
    let silences = line_with(&text, "#s-9");
    assert!(silences.contains("rule=error-rate-high") && silences.contains("expires in 30m00s"));
    assert!(silences.contains("bob"));
}

#[test]
fn alerts_unavailable_is_said_plainly() {
    let mut app = app(false);
    app.handle(Event::Alerts(AlertsFeed::Unavailable(
        "this agent has no alerts module".into(),
    )));
    let (text, _) = render(&mut app, 120, 24);
    assert!(text.contains("alerts unavailable"), "{text}");
    key(&mut app, '2');
    let (text, _) = render(&mut app, 120, 24);
    assert!(text.contains("this agent has no alerts module"), "{text}");
}

#[test]
fn disconnected_banner_keeps_the_last_data_and_clears_on_reconnect() {
    let mut app = app(false);
    app.handle(Event::Disconnected {
        reason: "the agent closed the control connection".into(),
        attempt: 3,
        retry_in_ms: 800,
    });
    let (text, buf) = render(&mut app, 160, 30);
    let banner = line_with(&text, "DISCONNECTED");
    assert!(banner.contains("/run/warden/control.sock") && banner.contains("attempt 3"));
    assert_eq!(buf[(1, 1)].bg, Color::Red);
    assert!(text.contains("clash-detector"), "last snapshot still shown");
    app.handle(Event::Connected);
    let (text, _) = render(&mut app, 160, 30);
    assert!(!text.contains("DISCONNECTED"));
}

#[test]
fn read_only_refuses_restart_and_says_so() {
    let mut app = app(true);
    key(&mut app, '4');
    key(&mut app, 'r');
    let (text, buf) = render(&mut app, 120, 30);
    assert!(text.contains("READ-ONLY"));
    let footer = text.lines().last().unwrap();
    assert!(
        footer.contains("read-only: restart connection-designer refused"),
        "{footer}"
    );
    assert_eq!(color_of(&text, &buf, "read-only: restart"), Color::Red);
    assert!(!text.contains("[y/N]"));
}

#[test]
fn model_detail_asks_before_restarting_and_shows_recent_events() {
    let mut app = app(false);
    key(&mut app, '4');
    key(&mut app, 'j');
    app.handle(Event::Supervisor(SupervisorEvent {
        at_ms: NOW_MS,
        model: "section-optimizer".into(),
        kind: EventKind::Exited {
            pid: 4102,
            exit: warden::supervisor::ExitInfo::Signal(9),
            expected: false,
        },
    }));
    app.handle(Event::Supervisor(SupervisorEvent {
        at_ms: NOW_MS + 1000,
        model: "section-optimizer".into(),
        kind: EventKind::StateChanged {
            from: ModelState::Backoff,
            to: ModelState::Starting,
            pid: Some(5150),
            delay_ms: None,
        },
    }));
    key(&mut app, 'r');
    let (text, _) = render(&mut app, 120, 30);
    assert!(text.contains("Model: section-optimizer"), "{text}");
    assert!(text.contains("pid 5150"), "event patched the pid:\n{text}");
    assert!(text.contains("pid 4102 exited: killed by signal 9 (unexpected)"));
    assert!(text.contains("backoff → starting (pid 5150)"));
    assert!(text.contains("req/s") && text.contains("p95 48.5 ms"));
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("restart section-optimizer? [y/N]")
    );
}

#[test]
fn logs_view_highlights_stderr_and_filters() {
    let mut app = app(false);
    key(&mut app, '3');
    let line = |stream, s: &str| LogLine {
        model: "connection-designer".into(),
        stream,
        timestamp_ms: NOW_MS,
        line: s.into(),
    };
    app.handle(Event::Logs {
        model: "connection-designer".into(),
        lines: vec![
            line(LogStream::Stdout, "listening on 8001"),
            line(LogStream::Stderr, "CUDA warning: slow path"),
            line(LogStream::Stdout, "infer 120 bytes"),
        ],
    });
    let (text, buf) = render(&mut app, 120, 20);
    assert!(
        text.contains("Logs: connection-designer [follow] 3/3 lines"),
        "{text}"
    );
    assert_eq!(color_of(&text, &buf, "CUDA warning"), Color::Red);
    assert_ne!(color_of(&text, &buf, "listening on"), Color::Red);
    key(&mut app, '/');
    for c in "infer".chars() {
        key(&mut app, c);
    }
    let (text, _) = render(&mut app, 120, 20);
    assert!(!text.contains("listening on") && text.contains("infer 120 bytes"));
    assert!(text.contains("/infer"), "the filter being typed is shown");
}

#[test]
fn help_overlay_lists_the_keys_and_freeze_is_shown() {
    let mut app = app(false);
    key(&mut app, 'f');
    key(&mut app, '?');
    let (text, _) = render(&mut app, 120, 30);
    assert!(text.contains("FROZEN"));
    assert!(text.contains("freeze / unfreeze updates"), "{text}");
    assert!(text.contains("restart, stop, start"));
}

#[test]
fn first_connect_waits_for_data_without_panicking_on_tiny_terminals() {
    let mut app = App::new("/tmp/x.sock", false, "me");
    let (text, _) = render(&mut app, 100, 20);
    assert!(text.contains("connecting to /tmp/x.sock"), "{text}");
    for (w, h) in [(20, 6), (1, 1), (200, 3)] {
        let mut app = self::app(false);
        key(&mut app, '?');
        render(&mut app, w, h);
        for v in ['2', '3', '4'] {
            key(&mut app, v);
            render(&mut app, w, h);
        }
    }
}

mod collector {
    //! The collector against an in-process control server: the wire side of the console.
    use super::*;
    use std::sync::mpsc::Receiver;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tokio_util::sync::CancellationToken;
    use warden::console::client::{self, CollectorConfig};
    use warden::console::event::Command;
    use warden::control::{ControlServer, Dispatcher, MethodError, Params};

    fn wait_for(rx: &Receiver<Event>, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(e) => seen.push(format!("{e:?}").chars().take(120).collect::<String>()),
                Err(_) => break,
            }
        }
        panic!("no {what}; saw {seen:#?}");
    }

    fn daemon(with_alerts: bool, acks: Arc<Mutex<Vec<serde_json::Value>>>) -> Dispatcher {
        let mut d = Dispatcher::new();
        d.register("snapshot", |_p: Params| async move {
            Ok(serde_json::to_value(snapshot()).unwrap())
        });
        if with_alerts {
            d.register("alerts", |_p: Params| async move {
                Ok(json!({
                    "alerts": [{"id": "a-1", "rule": "gpu-lost", "severity": "critical",
                                "state": "firing", "labels": {"GPU": "0"}, "value": 1.0,
                                "threshold": 0.0, "since_ms": 5, "summary": "GPU 0 lost",
                                "silenced": false, "acked_by": null, "future_field": 1}],
                    "silences": []
                }))
            });
            d.register("ack", move |p: Params| {
                let acks = acks.clone();
                async move {
                    acks.lock().unwrap().push(serde_json::Value::Object(p.0));
                    Ok(json!({}))
                }
            });
        }
        d.register("restart", |p: Params| async move {
            Err::<serde_json::Value, _>(MethodError::new(
                "unknown_model",
                format!("no model {}", p.str("model")?),
            ))
        });
        d
    }

    #[test]
    fn reads_snapshots_and_alerts_acts_and_reconnects_after_the_daemon_returns() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _enter = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let acks = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let server = ControlServer::bind(&path).unwrap();
        rt.spawn(server.run(daemon(true, acks.clone()), cancel.clone()));

        let (tx, rx) = std::sync::mpsc::channel();
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut config = CollectorConfig::new(path.clone());
        config.refresh = Duration::from_millis(100);
        let collector = client::spawn(config, tx, cmd_rx).unwrap();

        wait_for(&rx, "connect", |e| matches!(e, Event::Connected));
        let Event::Snapshot(s) = wait_for(&rx, "snapshot", |e| matches!(e, Event::Snapshot(_)))
        else {
            unreachable!()
        };
        assert_eq!(s.host.host_id, "gpu-host-7");
        assert_eq!(s.models.len(), 5);
        let Event::Alerts(AlertsFeed::Loaded(reply)) =
            wait_for(&rx, "alerts", |e| matches!(e, Event::Alerts(_)))
        else {
            panic!("alerts not loaded")
        };
        assert_eq!(reply.alerts[0].rule, "gpu-lost");
        assert_eq!(reply.alerts[0].value, Some(1.0));

        cmd_tx
            .send(Command::Ack {
                id: json!("a-1"),
                by: "alice".into(),
            })
            .unwrap();
        let done = wait_for(&rx, "ack done", |e| matches!(e, Event::ActionDone { .. }));
        assert!(
            matches!(&done, Event::ActionDone { what, result: Ok(()) } if what == "ack"),
            "{done:?}"
        );
        assert_eq!(
            acks.lock().unwrap().as_slice(),
            &[json!({"alert_id": "a-1", "by": "alice"})]
        );
        cmd_tx.send(Command::Restart("ghost".into())).unwrap();
        let done = wait_for(&rx, "restart done", |e| {
            matches!(e, Event::ActionDone { .. })
        });
        let Event::ActionDone { result: Err(e), .. } = done else {
            panic!("{done:?}")
        };
        assert!(e.contains("unknown_model") && e.contains("ghost"), "{e}");

        // The daemon goes away: disconnected, with retries counting up.
        cancel.cancel();
        wait_for(&rx, "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        wait_for(&rx, "a second failed attempt", |e| {
            matches!(e, Event::Disconnected { attempt: 2.., .. })
        });
        // It returns without an alerts module: reconnected, alerts unavailable, not an error.
        let cancel = CancellationToken::new();
        let server = ControlServer::bind(&path).unwrap();
        rt.spawn(server.run(daemon(false, acks.clone()), cancel.clone()));
        wait_for(&rx, "reconnect", |e| matches!(e, Event::Connected));
        let feed = wait_for(&rx, "alerts feed", |e| matches!(e, Event::Alerts(_)));
        assert!(
            matches!(&feed, Event::Alerts(AlertsFeed::Unavailable(why)) if why.contains("no alerts module")),
            "{feed:?}"
        );
        wait_for(&rx, "snapshot again", |e| matches!(e, Event::Snapshot(_)));

        // Closing the command channel ends the collector thread.
        drop(cmd_tx);
        let ended = support_wait(|| collector.is_finished());
        assert!(ended, "collector thread still running");
        cancel.cancel();
    }

    fn support_wait(done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

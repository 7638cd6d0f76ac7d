//! Serving the control socket: binding it owner-only, reading requests, dispatching methods
//! and streaming supervisor events to subscribers.

use super::{ControlError, PROTOCOL_VERSION};
use crate::supervisor::output::LineSplitter;
use crate::supervisor::{SupervisorError, SupervisorEvent, SupervisorHandle};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Longest request line accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A method's parameters: the request object minus `v`, `id` and `method`.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Map<String, Value>);

impl Params {
    pub fn str(&self, key: &str) -> Result<&str, MethodError> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| MethodError::bad_params(format!("missing string parameter {key:?}")))
    }

    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, MethodError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                MethodError::bad_params(format!("parameter {key:?} must be a non-negative integer"))
            }),
        }
    }
}

/// A failed call, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct MethodError {
    pub code: String,
    pub message: String,
}

impl MethodError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        MethodError {
            code: code.to_string(),
            message: message.into(),
        }
    }
    pub fn bad_params(message: impl Into<String>) -> Self {
        Self::new("bad_params", message)
    }
}

impl From<SupervisorError> for MethodError {
    fn from(e: SupervisorError) -> Self {
        let code = match e {
            SupervisorError::UnknownModel(_) => "unknown_model",
            _ => "internal",
        };
        MethodError::new(code, e.to_string())
    }
}

pub type MethodFuture = Pin<Box<dyn Future<Output = Result<Value, MethodError>> + Send>>;

/// One named call on the socket. Closures `Fn(Params) -> impl Future<Output = Result<Value,
/// MethodError>>` implement it.
pub trait Method: Send + Sync {
    fn call(&self, params: Params) -> MethodFuture;
}

impl<F, Fut> Method for F
where
    F: Fn(Params) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Value, MethodError>> + Send + 'static,
{
    fn call(&self, params: Params) -> MethodFuture {
        Box::pin(self(params))
    }
}

/// The method table, plus the event source behind `subscribe`.
#[derive(Default, Clone)]
pub struct Dispatcher {
    methods: HashMap<String, Arc<dyn Method>>,
    events: Option<broadcast::Sender<SupervisorEvent>>,
}

impl Dispatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a method; alerts and telemetry register theirs here.
    pub fn register(&mut self, name: &str, method: impl Method + 'static) {
        self.methods.insert(name.to_string(), Arc::new(method));
    }

    pub fn method_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.methods.keys().cloned().collect();
        if self.events.is_some() {
            names.push("subscribe".into());
        }
        names.sort();
        names
    }

    /// The supervisor's methods: status, restart, stop, start, logs, subscribe.
    pub fn with_supervisor(supervisor: &SupervisorHandle) -> Self {
        let mut d = Dispatcher::new();
        let s = supervisor.clone();
        d.register("status", move |_p: Params| {
            let s = s.clone();
            async move { Ok(json!({ "models": s.status() })) }
        });
        let s = supervisor.clone();
        d.register("restart", move |p: Params| {
            let s = s.clone();
            async move {
                let model = p.str("model")?.to_string();
                s.restart(&model).await?;
                Ok(json!({ "model": model }))
            }
        });
        let s = supervisor.clone();
        d.register("stop", move |p: Params| {
            let s = s.clone();
            async move {
                let model = p.str("model")?.to_string();
                s.stop(&model).await?;
                Ok(json!({ "model": model }))
            }
        });
        let s = supervisor.clone();
        d.register("start", move |p: Params| {
            let s = s.clone();
            async move {
                let model = p.str("model")?.to_string();
                s.start_model(&model).await?;
                Ok(json!({ "model": model }))
            }
        });
        let s = supervisor.clone();
        d.register("logs", move |p: Params| {
            let s = s.clone();
            async move {
                let lines = p.u64_or("lines", 100)?.min(10_000) as usize;
                let tail = s.log_tail(p.str("model")?, lines)?;
                Ok(json!({ "lines": tail }))
            }
        });
        d.events = Some(supervisor.event_sender());
        d
    }

    async fn dispatch(&self, method: &str, params: Params) -> Result<Value, MethodError> {
        match self.methods.get(method) {
            Some(m) => m.call(params).await,
            None => Err(MethodError::new(
                "unknown_method",
                format!("no method {method:?}; have {:?}", self.method_names()),
            )),
        }
    }
}

/// A bound control socket.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` owner-only (0600). The socket appears at `path` already restricted: it is
    /// bound under a temporary name, chmod-ed, then renamed into place.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let err = |source| ControlError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            // A stale socket from an agent that was killed.
            std::fs::remove_file(path).map_err(err)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until `cancel`, then removes the socket file.
    pub async fn run(self, dispatcher: Dispatcher, cancel: CancellationToken) {
        let dispatcher = Arc::new(dispatcher);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_connection(stream, dispatcher.clone(), cancel.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn response(id: &Value, result: Result<Value, MethodError>) -> String {
    let v = match result {
        Ok(result) => json!({ "v": PROTOCOL_VERSION, "id": id, "ok": true, "result": result }),
        Err(e) => json!({
            "v": PROTOCOL_VERSION, "id": id, "ok": false,
            "error": { "code": e.code, "message": e.message },
        }),
    };
    v.to_string()
}

/// Only our own user (or root) may drive the agent; the 0600 mode already enforces this,
/// the credential check makes it explicit.
fn peer_allowed(stream: &UnixStream) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == me || cred.uid() == 0,
        Err(_) => false,
    }
}

async fn serve_connection(
    stream: UnixStream,
    dispatcher: Arc<Dispatcher>,
    cancel: CancellationToken,
) {
    let allowed = peer_allowed(&stream);
    let (read, mut write) = stream.into_split();
    if !allowed {
        let line = response(
            &Value::Null,
            Err(MethodError::new(
                "forbidden",
                "control socket is owner-only",
            )),
        );
        let _ = write.write_all(format!("{line}\n").as_bytes()).await;
        return;
    }
    // One writer task so responses and streamed events never interleave mid-line.
    let (out_tx, mut out_rx) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(mut line) = out_rx.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read);
    let mut splitter = LineSplitter::new(MAX_REQUEST_BYTES);
    let mut subscribed = false;
    'conn: loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => break,
            filled = reader.fill_buf() => match filled {
                Ok([]) | Err(_) => break,
                Ok(buf) => {
                    for line in splitter.push(buf) {
                        if line.trim().is_empty() {
                            continue;
                        }
                        if !handle_line(&line, &dispatcher, &out_tx, &mut subscribed).await {
                            break 'conn;
                        }
                    }
                    buf.len()
                }
            },
        };
        reader.consume(n);
    }
    drop(out_tx);
    let _ = writer.await;
}

/// Handles one request line; false when the connection is gone.
async fn handle_line(
    line: &str,
    dispatcher: &Arc<Dispatcher>,
    out: &mpsc::Sender<String>,
    subscribed: &mut bool,
) -> bool {
    let mut obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) | Err(_) => {
            let err = MethodError::new("bad_request", "a request is one JSON object per line");
            return out.send(response(&Value::Null, Err(err))).await.is_ok();
        }
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    let version = obj.remove("v").and_then(|v| v.as_u64());
    let method = obj.remove("method");
    let method = match (version, method) {
        (Some(v), _) if v != u64::from(PROTOCOL_VERSION) => {
            let err = MethodError::new(
                "unsupported_version",
                format!("protocol version {v} not supported; this agent speaks {PROTOCOL_VERSION}"),
            );
            return out.send(response(&id, Err(err))).await.is_ok();
        }
        (None, _) => {
            let err = MethodError::bad_params("missing \"v\"");
            return out.send(response(&id, Err(err))).await.is_ok();
        }
        (_, Some(Value::String(m))) => m,
        (_, _) => {
            let err = MethodError::bad_params("missing string \"method\"");
            return out.send(response(&id, Err(err))).await.is_ok();
        }
    };
    if method == "subscribe" {
        let Some(events) = dispatcher.events.as_ref() else {
            let err = MethodError::new("unknown_method", "this agent has no event stream");
            return out.send(response(&id, Err(err))).await.is_ok();
        };
        if !*subscribed {
            *subscribed = true;
            // Subscribe before answering so no event after the answer is missed.
            let rx = events.subscribe();
            if out.send(response(&id, Ok(json!({})))).await.is_err() {
                return false;
            }
            tokio::spawn(forward_events(rx, out.clone()));
            return true;
        }
        return out.send(response(&id, Ok(json!({})))).await.is_ok();
    }
    let dispatcher = dispatcher.clone();
    let out = out.clone();
    // Calls run concurrently: a slow `restart` must not hold up `status`.
    tokio::spawn(async move {
        let result = dispatcher.dispatch(&method, Params(obj)).await;
        let _ = out.send(response(&id, result)).await;
    });
    true
}

async fn forward_events(mut rx: broadcast::Receiver<SupervisorEvent>, out: mpsc::Sender<String>) {
    loop {
        let line = match rx.recv().await {
            Ok(event) => json!({ "v": PROTOCOL_VERSION, "event": event }).to_string(),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                json!({ "v": PROTOCOL_VERSION, "lagged": n }).to_string()
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if out.send(line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlClient;
    use tokio::io::AsyncBufReadExt;

    async fn serve(dispatcher: Dispatcher) -> (tempfile::TempDir, PathBuf, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/control.sock");
        let server = ControlServer::bind(&path).unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(server.run(dispatcher, cancel.clone()));
        (dir, path, cancel)
    }

    #[tokio::test]
    async fn registered_methods_are_served_and_errors_are_structured() {
        let mut d = Dispatcher::new();
        d.register("echo", |p: Params| async move {
            Ok(json!({ "said": p.str("text")?.to_uppercase() }))
        });
        let (_dir, path, cancel) = serve(d).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut c = ControlClient::connect(&path).await.unwrap();
        let r = c.call("echo", json!({ "text": "hi" })).await.unwrap();
        assert_eq!(r, json!({ "said": "HI" }));
        let e = c.call("echo", Value::Null).await.unwrap_err();
        assert!(e.to_string().starts_with("bad_params:"), "{e}");
        let e = c.call("nope", Value::Null).await.unwrap_err();
        assert!(e.to_string().contains("\"echo\""), "{e}");
        let e = c.subscribe().await.unwrap_err();
        assert!(e.to_string().starts_with("unknown_method"), "{e}");

        // Raw lines: garbage, a future version, a huge line; the connection survives them all.
        let stream = UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let huge = format!(
            "{{\"v\":1,\"id\":9,\"method\":\"{}\"}}\n",
            "x".repeat(100_000)
        );
        let input = format!(
            "not json\n{{\"v\":2,\"id\":5,\"method\":\"echo\"}}\n{huge}{}\n",
            r#"{"v":1,"id":6,"method":"echo","text":"ok"}"#
        );
        write.write_all(input.as_bytes()).await.unwrap();
        let mut codes = Vec::new();
        for _ in 0..4 {
            let line = lines.next_line().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            codes.push(
                v["error"]["code"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v["result"]["said"].to_string()),
            );
        }
        assert_eq!(
            codes,
            vec![
                "bad_request",
                "unsupported_version",
                "bad_request",
                "\"OK\""
            ]
        );
        cancel.cancel();
        let gone = crate::supervisor::types::now_ms() + 5000;
        while path.exists() && crate::supervisor::types::now_ms() < gone {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!path.exists(), "socket removed on shutdown");
    }

    #[tokio::test]
    async fn a_second_agent_cannot_steal_a_live_socket_but_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let live = ControlServer::bind(&path).unwrap();
        assert!(matches!(
            ControlServer::bind(&path),
            Err(ControlError::InUse(_))
        ));
        drop(live); // the file stays, nobody listens: stale
        assert!(path.exists());
        ControlServer::bind(&path).unwrap();
    }
}

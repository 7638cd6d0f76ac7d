//! The fault-injecting proxy in front of moto: forwards every AWS call unchanged unless a fault
//! is armed for its operation (or for all), and counts calls per operation.
//!
//! Faults: 503 ServiceUnavailable, throttling, a hang (no answer until the client gives up),
//! a connection reset mid-response, AccessDenied and UnrecognizedClient, each in the wire
//! format of the call's protocol (JSON for Logs, awsQuery XML for CloudWatch 1.99 and SNS).
//! It runs on its own thread and runtime, so sync and async tests use it alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to a call instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Unavailable,
    Throttle,
    /// No answer for this long (the SDK's attempt timeout should cut it short).
    Hang(Duration),
    Reset,
    AccessDenied,
    UnrecognizedClient,
}

#[derive(Default)]
struct Armed {
    all: Option<Fault>,
    ops: HashMap<String, Fault>,
}

/// Per operation: calls seen, calls faulted, calls forwarded that moto answered 2xx.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpCount {
    pub seen: u64,
    pub faulted: u64,
    pub ok: u64,
}

#[derive(Clone, Default)]
struct Shared {
    armed: Arc<Mutex<Armed>>,
    counts: Arc<Mutex<HashMap<String, OpCount>>>,
}

pub struct FaultProxy {
    pub url: String,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The operation a request names: `X-Amz-Target: Logs_20140328.PutLogEvents` (JSON
/// protocols) or `Action=PutMetricData` in an awsQuery form body.
pub fn operation(headers: &axum::http::HeaderMap, body: &[u8]) -> String {
    if let Some(t) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return t.rsplit('.').next().unwrap_or(t).to_string();
    }
    let body = String::from_utf8_lossy(body);
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("")
        .to_string()
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("x-amz-target")
}

fn error_response(json: bool, status: u16, code: &str, message: &str) -> axum::response::Response {
    let (body, content_type) = if json {
        (
            format!(r#"{{"__type":"{code}","message":"{message}"}}"#),
            "application/x-amz-json-1.1",
        )
    } else {
        (
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>\
                 <Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
            ),
            "text/xml",
        )
    };
    let mut out = axum::response::Response::new(axum::body::Body::from(body));
    *out.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
    out.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    out
}

async fn apply(fault: Fault, json: bool, op: &str) -> axum::response::Response {
    match fault {
        Fault::Unavailable => error_response(json, 503, "ServiceUnavailable", "injected outage"),
        Fault::Throttle => error_response(
            json,
            400,
            if json {
                "ThrottlingException"
            } else {
                "Throttling"
            },
            "Rate exceeded",
        ),
        Fault::Hang(d) => {
            tokio::time::sleep(d).await;
            error_response(json, 503, "ServiceUnavailable", "hung")
        }
        Fault::Reset => {
            // A body that fails at once: hyper aborts the connection mid-response.
            let failing = futures_util::stream::once(async {
                Err::<axum::body::Bytes, _>(std::io::Error::other("injected reset"))
            });
            axum::response::Response::new(axum::body::Body::from_stream(failing))
        }
        Fault::AccessDenied => error_response(
            json,
            if json { 400 } else { 403 },
            if json {
                "AccessDeniedException"
            } else {
                "AccessDenied"
            },
            &format!(
                "User: arn:aws:sts::123456789012:assumed-role/warden/i-0 is not authorized to perform: {op}"
            ),
        ),
        Fault::UnrecognizedClient => error_response(
            json,
            if json { 400 } else { 403 },
            if json {
                "UnrecognizedClientException"
            } else {
                "InvalidClientTokenId"
            },
            "The security token included in the request is invalid.",
        ),
    }
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `upstream` (moto's endpoint).
    pub fn start(upstream: &str) -> FaultProxy {
        let shared = Shared::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let upstream = upstream.to_string();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder().no_proxy().build().unwrap();
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let (client, upstream, state) =
                        (client.clone(), upstream.clone(), state.clone());
                    async move { handle(req, &client, &upstream, &state).await }
                });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
            // Hung calls still sleeping are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx.recv().unwrap();
        FaultProxy {
            url: format!("http://{addr}"),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Arms `fault` for every operation (`None` heals).
    pub fn fail_all(&self, fault: Option<Fault>) {
        self.shared.armed.lock().unwrap().all = fault;
    }

    /// Arms `fault` for one operation, e.g. "CreateLogGroup" (`None` heals it).
    pub fn fail_op(&self, op: &str, fault: Option<Fault>) {
        let mut armed = self.shared.armed.lock().unwrap();
        match fault {
            Some(f) => armed.ops.insert(op.to_string(), f),
            None => armed.ops.remove(op),
        };
    }

    /// Heals every fault.
    pub fn heal(&self) {
        *self.shared.armed.lock().unwrap() = Armed::default();
    }

    /// Calls of `op` so far.
    pub fn count(&self, op: &str) -> OpCount {
        self.shared
            .counts
            .lock()
            .unwrap()
            .get(op)
            .copied()
            .unwrap_or_default()
    }

    /// Every operation seen, with its counts.
    pub fn counts(&self) -> HashMap<String, OpCount> {
        self.shared.counts.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    req: axum::extract::Request,
    client: &reqwest::Client,
    upstream: &str,
    state: &Shared,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let op = operation(&parts.headers, &bytes);
    let fault = {
        let armed = state.armed.lock().unwrap();
        armed.ops.get(&op).copied().or(armed.all)
    };
    let bump = |f: &dyn Fn(&mut OpCount)| {
        let mut counts = state.counts.lock().unwrap();
        f(counts.entry(op.clone()).or_default());
    };
    bump(&|c| c.seen += 1);
    if let Some(fault) = fault {
        bump(&|c| c.faulted += 1);
        return apply(fault, is_json(&parts.headers), &op).await;
    }
    let resp = super::proxy::forward(client, upstream, &parts, bytes.to_vec()).await;
    let status = resp.status();
    if status.is_success() {
        bump(&|c| c.ok += 1);
    }
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    let mut out = axum::response::Response::new(axum::body::Body::from(body));
    *out.status_mut() = status;
    for (k, v) in headers.iter() {
        if k != "content-length" && k != "transfer-encoding" && k != "connection" {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

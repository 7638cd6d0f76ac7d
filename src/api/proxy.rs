//! Forwarding inference requests to the model processes: over the downstream connection's own
//! keep-alive connections when it has them, else over a shared pool.
//!
//! Each client connection gets a [`Lane`]: its own HTTP/1.1 connections to the model processes,
//! driven inside the request's own task. A proxied request then costs no hand-off to another
//! task (the pooled client runs each upstream connection as a separate task, so every request
//! paid two cross-task wake-ups, which on a loaded host meant futex calls and context switches).
//! The pool stays for requests without a lane (batch items run concurrently). reqwest is kept
//! for the rare metadata fetch.
//!
//! A model with a Unix socket (a supervised `serve-model` has one) is reached through its
//! gateway thread's [`Multiplexer`] instead: one connection per thread and model in the
//! private framing of [`crate::model_wire`], every request of the thread's clients in flight
//! on it at once. No loopback TCP, no HTTP on either side of the hop, and the requests that
//! arrive together go out in one write, their answers back in one read. If the socket does not
//! answer, the lane uses HTTP to the model's TCP port, as the pool always does.

use super::error::ApiError;
use super::multiplex::{CallError, Multiplexer};
use crate::local_http::{Driven, ExchangeError};
use axum::body::Bytes;
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The keep-alive pool to the model processes.
pub type Upstream = Client<HttpConnector, Full<Bytes>>;

/// How long opening a connection to a model may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool keeping up to `max_idle_per_host` idle connections per model process.
pub fn upstream(max_idle_per_host: usize) -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Most model processes one client connection keeps a connection to (one per model it calls).
const LANE_PORTS: usize = 5;

type HttpConnection = Driven<TokioIo<TcpStream>, Full<Bytes>>;

/// Where a model process answers.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub port: u16,
    pub socket: Option<&'a Path>,
}

/// An idle connection to one model process, owned by one client connection.
struct Held {
    port: u16,
    link: Link,
}

/// How a held connection talks to its model: HTTP/1.1 over the model's TCP port.
struct Link {
    host: HeaderValue,
    connection: HttpConnection,
}

impl Link {
    /// Whether an idle connection can carry another exchange (the model did not close it).
    async fn still_open(&mut self) -> bool {
        self.connection.still_open().await
    }

    /// Whether the connection can be kept after an exchange that succeeded.
    fn usable(&self) -> bool {
        self.connection.usable()
    }

    async fn exchange(
        &mut self,
        body: Bytes,
        request_id: &HeaderValue,
    ) -> Result<Exchanged, Failure> {
        let request = infer_request(self.host.clone(), body, request_id);
        self.connection
            .exchange(request, read_reply)
            .await
            .map_err(|e| match e {
                ExchangeError::Unsent => Failure::Unsent,
                ExchangeError::Failed(e) => Failure::Unreachable(e.to_string()),
                ExchangeError::Read(failure) => failure,
            })
    }
}

/// One client connection's own connections to the model processes. HTTP/1.1 answers one
/// request at a time per connection, so a lane is never contended; a request that finds no
/// idle connection for its model (first call, or the model closed it) opens one.
/// A lane made on a gateway thread also carries the thread's [`Multiplexer`].
#[derive(Clone, Default)]
pub struct Lane {
    held: Arc<Mutex<Vec<Held>>>,
    multiplexer: Option<Multiplexer>,
    /// The connection's request timer, kept between its requests (see [`forward`]).
    timer: Arc<Mutex<Option<Timer>>>,
}

type Timer = Pin<Box<tokio::time::Sleep>>;

impl Lane {
    /// A lane that reaches models with sockets through `multiplexer`.
    pub(super) fn on(multiplexer: Multiplexer) -> Lane {
        Lane {
            multiplexer: Some(multiplexer),
            ..Lane::default()
        }
    }

    /// The connection's timer, set to `deadline` (a new one when another request has it).
    fn timer(&self, deadline: Instant) -> Timer {
        match self.timer.lock().ok().and_then(|mut t| t.take()) {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn keep_timer(&self, timer: Timer) {
        if let Ok(mut kept) = self.timer.lock() {
            kept.get_or_insert(timer);
        }
    }

    fn take(&self, port: u16) -> Option<Held> {
        let mut held = self.held.lock().ok()?;
        let at = held.iter().position(|h| h.port == port)?;
        Some(held.swap_remove(at))
    }

    fn put(&self, connection: Held) {
        if let Ok(mut held) = self.held.lock() {
            if held.len() >= LANE_PORTS {
                held.remove(0);
            }
            held.push(connection);
        }
    }
}

/// A model's answer, passed through as-is (its 4xx included).
pub struct ModelReply {
    pub status: StatusCode,
    pub body: Bytes,
    pub retry_after: Option<String>,
}

pub fn client(max_idle_per_host: usize) -> Result<reqwest::Client, ApiError> {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .map_err(|e| ApiError::Internal(format!("HTTP client: {e}")))
}

/// Why an exchange with a model failed.
enum Failure {
    /// No answer could be had (connect refused, the connection failed before answering).
    Unreachable(String),
    /// The model started answering, then closed the connection.
    Closed,
    /// The request never left: safe to send again on a fresh connection.
    Unsent,
}

fn infer_request(host: HeaderValue, body: Bytes, request_id: &HeaderValue) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = axum::http::Method::POST;
    *request.uri_mut() = Uri::from_static("/infer");
    let headers = request.headers_mut();
    headers.insert(header::HOST, host);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if !request_id.is_empty() {
        headers.insert(super::middleware::X_REQUEST_ID, request_id.clone());
    }
    request
}

/// Sends one inference request to the model on `port` and reads the whole answer.
pub async fn forward(
    upstream: &Upstream,
    lane: Option<&Lane>,
    model: &str,
    target: Target<'_>,
    body: Bytes,
    request_id: &str,
    timeout: Duration,
) -> Result<ModelReply, ApiError> {
    let request_id = HeaderValue::from_str(request_id).unwrap_or(HeaderValue::from_static(""));
    let exchange = async {
        match lane {
            Some(lane) => via_lane(lane, target, body, &request_id).await,
            None => via_pool(upstream, target.port, body, &request_id).await,
        }
    };
    // A connection's requests share one timer, moved to each one's deadline. A timer of its
    // own per request would be registered with the runtime's timer wheel and taken out again
    // every time, and registering into an empty wheel (every answer of a batch arrives
    // together, so the wheel often empties) wakes the thread's event loop with a system call.
    // Moving a registered timer later is an atomic store.
    let deadline = Instant::now() + timeout;
    let mut timer = match lane {
        Some(lane) => lane.timer(deadline),
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    let outcome = tokio::select! {
        biased;
        outcome = exchange => Some(outcome),
        () = timer.as_mut() => None,
    };
    if let Some(lane) = lane {
        lane.keep_timer(timer);
    }
    let outcome = outcome.ok_or_else(|| ApiError::Timeout(model.to_string()))?;
    outcome.map_err(|failure| {
        let message = match failure {
            Failure::Unreachable(error) => {
                tracing::warn!(model, error, "model unreachable");
                format!("model {model} is not reachable")
            }
            Failure::Unsent => format!("model {model} is not reachable"),
            Failure::Closed => format!("model {model} closed the connection"),
        };
        ApiError::Unavailable(message, Duration::from_secs(1))
    })
}

type Exchanged = ModelReply;

async fn read_reply(response: Response<Incoming>) -> Result<Exchanged, Failure> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|_| Failure::Closed)?;
    let retry_after = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(ModelReply {
        status: parts.status,
        body: body.to_bytes(),
        retry_after,
    })
}

async fn via_pool(
    upstream: &Upstream,
    port: u16,
    body: Bytes,
    request_id: &HeaderValue,
) -> Result<Exchanged, Failure> {
    let mut request = infer_request(host(port), body, request_id);
    *request.uri_mut() = format!("http://127.0.0.1:{port}/infer")
        .parse()
        .map_err(|_| Failure::Unreachable("bad port".into()))?;
    let response = upstream
        .request(request)
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    read_reply(response).await
}

fn host(port: u16) -> HeaderValue {
    HeaderValue::from_str(&format!("127.0.0.1:{port}"))
        .unwrap_or(HeaderValue::from_static("127.0.0.1"))
}

/// An HTTP/1.1 connection to the model's port.
async fn connect(port: u16) -> Result<Held, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| Failure::Unreachable(e.to_string());
    let connecting = TcpStream::connect(("127.0.0.1", port));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|e| unreachable(&e))?
        .map_err(|e| unreachable(&e))?;
    let _ = stream.set_nodelay(true);
    let connection = Driven::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    let link = Link {
        host: host(port),
        connection,
    };
    Ok(Held { port, link })
}

async fn via_lane(
    lane: &Lane,
    target: Target<'_>,
    body: Bytes,
    request_id: &HeaderValue,
) -> Result<Exchanged, Failure> {
    if let (Some(multiplexer), Some(socket)) = (&lane.multiplexer, target.socket) {
        let called = multiplexer.call(target.port, socket, &body, request_id.as_bytes());
        match called.await {
            Ok(answer) => {
                let status = StatusCode::from_u16(answer.status)
                    .map_err(|e| Failure::Unreachable(e.to_string()))?;
                let retry_after = answer
                    .retry_after
                    .and_then(|v| String::from_utf8(v.to_vec()).ok());
                return Ok(ModelReply {
                    status,
                    body: answer.body,
                    retry_after,
                });
            }
            // The socket does not answer: the model's port may.
            Err(CallError::Unsent) => {}
            Err(CallError::Closed) => return Err(Failure::Closed),
            Err(CallError::Malformed(e)) => return Err(Failure::Unreachable(e)),
        }
    }
    let mut reused = lane.take(target.port);
    loop {
        let kept = match reused.take() {
            Some(mut h) => h.link.still_open().await.then_some(h),
            None => None,
        };
        let (mut held, was_reused) = match kept {
            Some(h) => (h, true),
            None => (connect(target.port).await?, false),
        };
        match held.link.exchange(body.clone(), request_id).await {
            Ok(reply) => {
                if held.link.usable() {
                    lane.put(held);
                }
                return Ok(reply);
            }
            // The model had closed a kept connection just as it was reused: once more, fresh.
            Err(Failure::Unsent) if was_reused => continue,
            Err(Failure::Unsent) => {
                return Err(Failure::Unreachable(
                    "connection closed before sending".into(),
                ));
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// A model's metadata document, or `None` when it does not answer quickly.
pub async fn metadata(http: &reqwest::Client, port: u16) -> Option<serde_json::Value> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/metadata"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

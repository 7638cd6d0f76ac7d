//! The model process's HTTP server: /infer, /health, /ready, /metrics, /metadata on 127.0.0.1.

use super::batcher::{self, BatchQueue, InferenceSpec, SubmitError};
use super::metrics::ModelMetrics;
use super::socket::UnixSocket;
use super::{BatchConfig, ModelKind, ServingError, select_device};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Largest accepted /infer body.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything `warden serve-model` takes.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's name (a built-in, or any name with `--weights model.pt`).
    pub name: String,
    pub port: u16,
    /// Also serve on this Unix socket (the agent's gateway uses it: cheaper than loopback TCP;
    /// the TCP port stays for health checks and direct clients).
    pub unix_socket: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    pub weights: Option<PathBuf>,
    pub device: warden::config::Device,
    pub threads: Option<usize>,
    pub batch: BatchConfig,
    /// TorchScript only: the row shape used for the warm-up forward pass.
    pub row_shape: Option<Vec<i64>>,
}

impl ServeOptions {
    /// Resolves what to serve and from which file.
    pub fn resolve(&self) -> Result<(ModelKind, PathBuf), ServingError> {
        let builtin = ModelKind::builtin(&self.name);
        match (&self.weights, builtin) {
            (Some(path), _) if path.extension().is_some_and(|e| e == "pt" || e == "pth") => {
                Ok((ModelKind::TorchScript, path.clone()))
            }
            (Some(path), Some(kind)) => Ok((kind, path.clone())),
            (Some(path), None) => Err(ServingError::Options(format!(
                "--weights {}: a model that is not built in must be a TorchScript file (.pt)",
                path.display()
            ))),
            (None, Some(kind)) => {
                let dir = self
                    .models_dir
                    .clone()
                    .unwrap_or_else(|| warden::config::Config::embedded().agent.models_dir);
                Ok((kind, dir.join(kind.weight_file())))
            }
            (None, None) => Err(ServingError::UnknownModel(
                self.name.clone(),
                super::BUILTIN.map(|k| k.name()).join(", "),
            )),
        }
    }
}

/// Shared by every handler (behind one `Arc`: axum clones the state for each request).
pub(crate) struct AppState {
    name: Arc<str>,
    kind: ModelKind,
    metadata: Arc<Value>,
    pub(crate) queue: BatchQueue,
    metrics: ModelMetrics,
    ready: Arc<AtomicBool>,
}

/// An /infer failure as `{"error": {"code", "message"}}`.
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    message: String,
    /// Answered with `Retry-After: 1`.
    pub(crate) retry_after: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: false,
        }
    }

    /// The answer's body.
    pub(crate) fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// `warden serve-model`: builds a runtime, serves until SIGTERM/SIGINT, drains, returns.
pub fn run_model_server(opts: ServeOptions) -> Result<(), ServingError> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServingError::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], opts.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServingError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        serve(opts, listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only Ctrl-C can stop us; keep serving meanwhile.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested: no longer accepting, draining the queue");
}

/// Serves `opts`'s model on `listener` until `shutdown` resolves, then drains queued work.
/// Returns an error if the weights fail to load or warm up.
pub async fn serve(
    opts: ServeOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServingError> {
    if let Some(t) = opts.threads {
        tch::set_num_threads(t.max(1) as i32);
    }
    let (kind, weights) = opts.resolve()?;
    let device = select_device(opts.device)?;
    if opts.batch.max_batch == 0 || opts.batch.queue_capacity == 0 {
        return Err(ServingError::Options(
            "--max-batch and --queue-capacity must be at least 1".into(),
        ));
    }
    let unix = match &opts.unix_socket {
        Some(path) => Some(UnixSocket::bind(path)?),
        None => None,
    };
    let metrics = ModelMetrics::new(&opts.name)
        .map_err(|e| ServingError::Options(format!("metrics registry: {e}")))?;
    let ready = Arc::new(AtomicBool::new(false));
    let spec = InferenceSpec {
        kind,
        weights: weights.clone(),
        device,
        batch: opts.batch,
        row_shape: opts.row_shape.clone(),
    };
    let batcher::InferenceThread {
        queue,
        loaded,
        handle: thread,
    } = batcher::spawn(spec, metrics.clone(), ready.clone())?;
    let state = Arc::new(AppState {
        name: Arc::from(opts.name.as_str()),
        kind,
        metadata: Arc::new(tokio::task::block_in_place(|| {
            kind.metadata(
                &opts.name,
                opts.row_shape.as_deref().unwrap_or(&[]),
                &weights,
            )
        })),
        queue,
        metrics,
        ready,
    });
    let app = Router::new()
        .route("/infer", post(infer))
        .route("/health", get(health))
        .route("/ready", get(readiness))
        .route("/metrics", get(metrics_text))
        .route("/metadata", get(metadata))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state.clone());
    tracing::info!(
        model = %opts.name,
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        weights = %weights.display(),
        max_batch = opts.batch.max_batch,
        batch_timeout_ms = opts.batch.batch_timeout.as_secs_f64() * 1000.0,
        queue_capacity = opts.batch.queue_capacity,
        "serving"
    );

    // A load failure ends the process even though the listener is already up.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let load_watch = tokio::spawn(async move {
        match loaded.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let _ = stop_tx.send(());
                Err(e)
            }
            Err(_) => {
                let _ = stop_tx.send(());
                Err(ServingError::WarmUp("the inference thread stopped".into()))
            }
        }
    });
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            // Only a sent stop counts: the sender is dropped (Err) once loading succeeded.
            Ok(()) = stop_rx => {}
        }
    };
    let serving_error = |source| ServingError::Io {
        context: "serving HTTP".into(),
        source,
    };
    match unix {
        Some(unix) => {
            // Both listeners stop together; each drains its own connections.
            let (stopping, stopped) = tokio::sync::watch::channel(false);
            let signal = tokio::spawn(async move {
                stop.await;
                let _ = stopping.send(true);
            });
            let until_stopped = || {
                let mut stopped = stopped.clone();
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }
            };
            let over_tcp =
                axum::serve(listener, app.clone()).with_graceful_shutdown(until_stopped());
            let over_unix = unix.serve(app, state, stopped.clone());
            let (tcp, ()) = tokio::join!(over_tcp, over_unix);
            signal.abort();
            tcp.map_err(serving_error)?;
        }
        None => {
            drop(state);
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(serving_error)?
        }
    }
    // The router (and its queue handle) is gone: the thread drains what is queued and exits.
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    if load_watch.is_finished() {
        match load_watch.await {
            Ok(result) => result?,
            Err(e) => return Err(ServingError::WarmUp(e.to_string())),
        }
    } else {
        load_watch.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    request_id_or_new(headers.get(&REQUEST_ID).cloned())
}

/// The caller's request id (128 bytes at most), else a new one.
pub(crate) fn request_id_or_new(given: Option<HeaderValue>) -> HeaderValue {
    given
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("unknown"))
}

async fn infer(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    // Counted from its headers on, before the body is read, so that a batch forming while
    // this caller's body arrives waits for it.
    let announced = state.queue.announce();
    let body = Bytes::from_request(req, &state)
        .await
        .map_err(body_rejected);
    let mut resp = match infer_counted(&state, &id, announced, body, started).await {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}

/// One inference call, whichever way it came (HTTP or the gateway's frames), counted in the
/// model's metrics and logged when refused.
pub(crate) async fn infer_counted(
    state: &AppState,
    id: &HeaderValue,
    announced: batcher::Announced<'_>,
    body: Result<Bytes, (&'static str, ApiError)>,
    started: Instant,
) -> Result<Value, ApiError> {
    let result = infer_inner(state, announced, body).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err((kind, e)) => {
            state.metrics.errors.with_label_values(&[kind]).inc();
            tracing::info!(request_id = ?id, status = e.status.as_u16(), code = e.code, message = %e.message, "infer rejected");
            e.status
        }
    };
    state
        .metrics
        .requests
        .with_label_values(&[status.as_str()])
        .inc();
    state
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|(_, e)| e)
}

fn body_rejected(r: axum::extract::rejection::BytesRejection) -> (&'static str, ApiError) {
    let status = r.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large()
    } else {
        (
            "invalid_body",
            ApiError::new(status, "invalid_body", r.body_text()),
        )
    }
}

pub(crate) fn body_too_large() -> (&'static str, ApiError) {
    (
        "body_too_large",
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {BODY_LIMIT} bytes"),
        ),
    )
}

async fn infer_inner(
    state: &AppState,
    announced: batcher::Announced<'_>,
    body: Result<Bytes, (&'static str, ApiError)>,
) -> Result<Value, (&'static str, ApiError)> {
    if !state.ready.load(Ordering::SeqCst) {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the model is still loading",
        );
        e.retry_after = true;
        return Err(("not_ready", e));
    }
    let body = body?;
    // A TorchScript body goes straight into rows; anything unusual takes the tree path below,
    // which names the problem.
    let fast = (state.kind == ModelKind::TorchScript)
        .then(|| super::torchscript::parse_fast(&body))
        .flatten();
    let samples = match fast {
        Some(samples) => samples,
        None => parse_tree(state, &body)?,
    };
    // About to run alone on this worker: first let the runtime poll what became readable
    // (one non-blocking look at the sockets), so that callers whose requests already arrived
    // announce themselves and this one batches with them instead of holding the worker.
    if announced.may_run_alone(samples.len()) {
        tokio::task::yield_now().await;
    }
    let rx = announced.submit(samples).map_err(|e| match e {
        SubmitError::Full => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "the inference queue is full; retry shortly",
            );
            err.retry_after = true;
            ("queue_full", err)
        }
        SubmitError::Closed => (
            "shutting_down",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the model is shutting down",
            ),
        ),
    })?;
    let outputs = rx
        .await
        .map_err(|_| {
            (
                "inference_failed",
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "inference_failed",
                    "the inference thread stopped",
                ),
            )
        })?
        .map_err(|e| {
            if e.rejected_input {
                (
                    "invalid_input",
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "rejected_by_model",
                        format!("inputs: the model rejected these rows: {}", e.message),
                    ),
                )
            } else {
                (
                    "inference_failed",
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "inference_failed",
                        e.message,
                    ),
                )
            }
        })?;
    Ok(state.kind.respond(outputs))
}

/// Parses a body through a JSON tree and the model's schema, with precise errors.
fn parse_tree(
    state: &AppState,
    body: &[u8],
) -> Result<Vec<super::schema::Sample>, (&'static str, ApiError)> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        (
            "invalid_json",
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("body is not valid JSON: {e}"),
            ),
        )
    })?;
    let samples = state.kind.parse(&json).map_err(|e| {
        (
            "invalid_input",
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.code,
                format!("{}: {}", e.field, e.message),
            ),
        )
    })?;
    Ok(samples)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"status": "ok", "model": &*state.name})).into_response()
}

async fn readiness(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        axum::Json(json!({"ready": true, "model": &*state.name})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "model": &*state.name})),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    axum::Json((*state.metadata).clone()).into_response()
}

//! The model's private Unix socket: binding it, and serving each connection either as the
//! gateway's framed inference calls ([`warden::model_wire`]) or, for anyone else, as HTTP.
//!
//! A connection that opens with the wire's preface carries inference frames only; any other
//! is HTTP with the same routes as the TCP port (an operator's `curl --unix-socket`).

use super::ServingError;
use super::server::{self, AppState};
use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderValue;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::Service;
use warden::model_wire::{self, FrameReader, Next, PREFACE, WireError};

/// The Unix socket listener and the file it made (removed when serving ends).
pub(crate) struct UnixSocket {
    listener: UnixListener,
    path: SocketFile,
}

/// Removes the socket file when serving ends (or start-up fails after binding).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl UnixSocket {
    /// Binds `path`, replacing a socket a previous run left behind (never any other file),
    /// readable and writable by this user only: the socket skips the gateway's auth.
    pub(crate) fn bind(path: &Path) -> Result<UnixSocket, ServingError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let bind_error = |source| ServingError::Bind {
            addr: path.display().to_string(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(bind_error(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                )));
            }
            std::fs::remove_file(path).map_err(bind_error)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind_error)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        let path = SocketFile(path.to_path_buf());
        std::fs::set_permissions(&path.0, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        Ok(UnixSocket { listener, path })
    }

    /// Serves connections until `stopped` turns true; then lets each finish the call in
    /// progress, and removes the socket file.
    pub(crate) async fn serve(
        self,
        app: Router,
        state: Arc<AppState>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = stopped.wait_for(|s| *s) => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let connection =
                        serve_connection(stream, app.clone(), state.clone(), stopped.clone());
                    connections.spawn(connection);
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting on the model socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(self.listener);
        drop(self.path);
        connections.close();
        connections.wait().await;
    }
}

async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Tells a framed connection from an HTTP one by its first bytes, and serves it.
async fn serve_connection(
    mut stream: UnixStream,
    app: Router,
    state: Arc<AppState>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut opening = [0u8; PREFACE.len()];
    let mut have = 0;
    while have < opening.len() && opening[..have] == PREFACE[..have] {
        let read = tokio::select! {
            _ = stop_requested(&mut stopped) => return,
            read = stream.read(&mut opening[have..]) => read,
        };
        match read {
            Ok(0) | Err(_) if have == 0 => return,
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    if opening[..have] == PREFACE[..] {
        match serve_frames(stream, &state, stopped).await {
            Ok(()) => {}
            // Our own gateway sent something this model cannot read: a bug worth seeing.
            Err(e @ WireError::Malformed(_)) => {
                tracing::warn!(error = %e, "closed a framed connection on a malformed frame");
            }
            Err(e) => tracing::debug!(error = %e, "framed connection ended with an error"),
        }
    } else {
        serve_http(opening[..have].to_vec(), stream, app, stopped).await;
    }
}

/// Longest request frame read whole: the body limit, its tag, request id and the id's length.
const FRAME_LIMIT: usize = server::BODY_LIMIT + model_wire::MAX_REQUEST_ID + 5;

/// Most calls one framed connection has in flight; past it the connection is not read until
/// one is answered (the gateway's own concurrency bound keeps it well below).
const MAX_IN_FLIGHT: usize = 4096;

/// Serves a framed connection: every call read is in flight at once (those read together are
/// announced to the batcher together, so they batch), and the answers that are ready together
/// go back in one write. One task does it all: a finished batch wakes it once, not once per
/// call. Ends when the gateway closes the connection, or when serving stops, after answering
/// every call already read.
async fn serve_frames(
    stream: UnixStream,
    state: &AppState,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), model_wire::WireError> {
    let (mut read, mut write) = stream.into_split();
    let mut reader = FrameReader::default();
    let mut in_flight = FuturesUnordered::new();
    let mut out = Vec::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            Some((tag, result)) = in_flight.next(), if !in_flight.is_empty() => {
                out.clear();
                encode(tag, result, &mut out);
                while let Some(Some((tag, result))) = in_flight.next().now_or_never() {
                    encode(tag, result, &mut out);
                }
                write.write_all(&out).await?;
            }
            next = reader.next(&mut read, FRAME_LIMIT),
                if !stopping && in_flight.len() < MAX_IN_FLIGHT =>
            {
                let started = Instant::now();
                let Some((tag, id, body)) = call_of(next?)? else {
                    stopping = true;
                    continue;
                };
                // Counted before it is parsed, so a batch forming meanwhile expects it.
                let announced = state.queue.announce();
                in_flight.push(async move {
                    let id = server::request_id_or_new(id);
                    (tag, server::infer_counted(state, &id, announced, body, started).await)
                });
            }
            _ = stop_requested(&mut stopped), if !stopping => stopping = true,
        }
        if stopping && in_flight.is_empty() {
            return Ok(());
        }
    }
}

type Body = Result<Bytes, (&'static str, server::ApiError)>;

/// A frame's call: its tag, request id and body (refused when too large); `None` once the
/// gateway closed the connection.
fn call_of(next: Next) -> Result<Option<(u32, Option<HeaderValue>, Body)>, WireError> {
    Ok(Some(match next {
        Next::Closed => return Ok(None),
        Next::TooLarge { head, .. } => {
            let tag = model_wire::tag_of(&head).ok_or(WireError::Malformed("tag"))?;
            (tag, None, Err(server::body_too_large()))
        }
        Next::Frame(frame) => {
            let request = model_wire::decode_request(frame)?;
            let id = HeaderValue::from_maybe_shared(request.request_id).ok();
            let body = if request.body.len() > server::BODY_LIMIT {
                Err(server::body_too_large())
            } else {
                Ok(request.body)
            };
            (request.tag, id, body)
        }
    }))
}

/// The answer frame: the outputs, else the error document with its status and Retry-After.
fn encode(tag: u32, result: Result<serde_json::Value, server::ApiError>, out: &mut Vec<u8>) {
    let error = match result.map(|value| serde_json::to_vec(&value)) {
        Ok(Ok(body)) => return model_wire::encode_answer(tag, 200, None, &body, out),
        Ok(Err(e)) => server::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            format!("encoding the outputs: {e}"),
        ),
        Err(e) => e,
    };
    let retry = error.retry_after.then_some(&b"1"[..]);
    // A `Value` of strings and numbers always serializes; the fallback only keeps the frame whole.
    let body = serde_json::to_vec(&error.body()).unwrap_or_else(|_| b"{}".to_vec());
    model_wire::encode_answer(tag, error.status.as_u16(), retry, &body, out);
}

/// Serves HTTP on a connection whose first bytes were already read to tell it apart.
async fn serve_http(
    opening: Vec<u8>,
    stream: UnixStream,
    app: Router,
    mut stopped: watch::Receiver<bool>,
) {
    let (reader, writer) = stream.into_split();
    let io = tokio::io::join(std::io::Cursor::new(opening).chain(reader), writer);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut app = app.clone();
        async move { app.call(request).await }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop_requested(&mut stopped) => {
            // Finish the request in progress (if any), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection on the model socket ended with an error");
    }
}

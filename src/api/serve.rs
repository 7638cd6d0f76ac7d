//! Accepting client connections and serving each on one of the gateway's own threads, over
//! HTTP/1.1 with the connection's own state ([`ClientConnection`]: its lane to the model
//! processes, its formatted address, its last verified token); draining on shutdown.
//!
//! Like nginx's workers: each gateway thread runs a single-threaded runtime with its own
//! event loop, and a connection lives on one thread for good. A proxied request then never
//! changes threads (read, forward, read the model's answer, answer), where the agent's shared
//! work-stealing runtime woke another thread for most of those steps. The acceptor hands
//! connections out in turn. Each request carries the client's address (`ConnectInfo`) and its
//! connection's lane as extensions; the router is the same as with `axum::serve`. A thread's
//! connections share its [`Multiplexer`]: one connection per model socket for all of them.

use super::AppState;
use super::fast_path::{self, ClientConnection};
use super::multiplex::Multiplexer;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// Gateway threads: one per core, a few at most (the models need the cores more);
/// `WARDEN_API_THREADS` overrides it (1-64) for tuning.
pub fn worker_count() -> usize {
    if let Some(n) = std::env::var("WARDEN_API_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=64).contains(n))
    {
        return n;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

type Handoff = (std::net::TcpStream, SocketAddr);

/// What a connection is served with: the inference fast path, and the router for the rest.
#[derive(Clone)]
struct Serves {
    app: Router,
    state: Arc<AppState>,
    /// The thread's connections to the model sockets (`None` off the gateway's threads).
    multiplexer: Option<Multiplexer>,
}

/// One gateway thread: takes connections from the acceptor and serves them to the end.
struct Worker {
    connections: mpsc::UnboundedSender<Handoff>,
}

impl Worker {
    fn start(
        index: usize,
        serves: Serves,
        served: TaskTracker,
        shutdown: CancellationToken,
    ) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (connections, mut handed) = mpsc::unbounded_channel::<Handoff>();
        std::thread::Builder::new()
            .name(format!("warden-api-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let serves = Serves {
                        multiplexer: Some(Multiplexer::default()),
                        ..serves
                    };
                    let mine = TaskTracker::new();
                    while let Some((stream, remote)) = handed.recv().await {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => {
                                let connection = serve_connection(
                                    stream,
                                    remote,
                                    serves.clone(),
                                    shutdown.clone(),
                                );
                                mine.spawn(served.track_future(connection));
                            }
                            Err(e) => tracing::warn!(error = %e, "API connection lost in hand-off"),
                        }
                    }
                    // The acceptor stopped: finish this thread's connections (they drain).
                    mine.close();
                    mine.wait().await;
                });
            })?;
        Ok(Worker { connections })
    }
}

/// Serves `app` on `listener` until `shutdown`; then stops accepting, lets every connection
/// finish its request in progress, and returns once they are done or after `drain_bound`
/// (connections still busy then are abandoned, so shutdown always ends).
pub async fn accept_until(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    drain_bound: Duration,
) {
    let connections = TaskTracker::new();
    let mut workers = Vec::new();
    for index in 0..worker_count() {
        let serves = Serves {
            app: app.clone(),
            state: state.clone(),
            multiplexer: None,
        };
        match Worker::start(index, serves, connections.clone(), shutdown.clone()) {
            Ok(w) => workers.push(w),
            // Fewer threads, or none: connections are then served on the agent's runtime.
            Err(e) => tracing::warn!(error = %e, "cannot start an API thread"),
        }
    }
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(error = %e, "accepting API connections");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let stream = match hand_off(&workers, &mut next, stream, remote) {
            Ok(()) => continue,
            Err(stream) => stream,
        };
        let serves = Serves {
            app: app.clone(),
            state: state.clone(),
            multiplexer: None,
        };
        connections.spawn(serve_connection(stream, remote, serves, shutdown.clone()));
    }
    drop(workers);
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain_bound, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(bound = ?drain_bound, open = connections.len(),
            "API drain bound reached; abandoning open connections");
    }
}

/// Gives the connection to the next gateway thread; hands it back when none can take it.
fn hand_off(
    workers: &[Worker],
    next: &mut usize,
    stream: TcpStream,
    remote: SocketAddr,
) -> Result<(), TcpStream> {
    if workers.is_empty() {
        return Err(stream);
    }
    let worker = &workers[*next % workers.len()];
    *next = next.wrapping_add(1);
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "API connection lost in hand-off");
            return Ok(());
        }
    };
    match worker.connections.send((std_stream, remote)) {
        Ok(()) => Ok(()),
        // The thread is gone (it cannot be, short of a panic): serve the connection here.
        Err(mpsc::error::SendError((std_stream, _))) => match TcpStream::from_std(std_stream) {
            Ok(stream) => Err(stream),
            Err(_) => Ok(()),
        },
    }
}

/// Errors that concern one connection only (the client went away during the handshake).
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    serves: Serves,
    shutdown: CancellationToken,
) {
    // Answers are written whole; without this a small answer after a partial write waits on
    // the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let client = Arc::new(ClientConnection::new(remote, serves.multiplexer.clone()));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let serves = serves.clone();
        let client = client.clone();
        async move {
            if let Some(model) = fast_path::model_of(&request).map(str::to_owned) {
                let answer = fast_path::infer(serves.state, &client, request, model).await;
                return Ok::<_, std::convert::Infallible>(answer);
            }
            request.extensions_mut().insert(ConnectInfo(client.remote));
            request.extensions_mut().insert(client.lane.clone());
            let mut app = serves.app;
            app.call(request).await
        }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            // Finish the request in progress (if any), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %remote, error = %e, "API connection ended with an error");
    }
}

//! Probing a model process: `GET /health` (alive) and `GET /ready` (loaded), each with a timeout,
//! over one kept-alive connection per child life.
//!
//! A fresh connection per probe cost more than the probe itself on a host like this one: the
//! loopback handshake and teardown were ~⅓ of a probe's CPU, which made probing the largest
//! single item of the idle agent's CPU. A kept connection still catches what probing is for:
//! - a hung child does not answer on it either: the timeout fails the probe;
//! - a child that exited is seen by the supervisor's `wait` at once, and its replacement gets a
//!   new [`ProbeConnection`] (a respawned child is never judged by its predecessor's socket);
//! - a child that closed the connection is probed on a fresh one (GETs are retried once);
//! - a child that answers on old connections but no longer accepts new ones: every
//!   [`FRESH_EVERY`]th probe, and every probe after a failure, opens a new connection, so it
//!   is found out within that many intervals.

use crate::local_http::{KeptConnection, LocalHttpError};
use std::time::Duration;

/// Bodies of `/health` and `/ready` are a few bytes; anything this large is not a probe answer.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// Every this many probes the connection is replaced by a fresh one (20 s at the default 2 s
/// interval).
pub const FRESH_EVERY: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe of {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: LocalHttpError,
    },
    #[error("probe of {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: hyper::http::StatusCode,
    },
}

/// The probe connection of one child process (make a new one for each spawn).
pub struct ProbeConnection {
    port: u16,
    kept: KeptConnection,
    /// Probes since the connection was last replaced.
    uses: u32,
}

impl ProbeConnection {
    pub fn new(port: u16) -> Self {
        ProbeConnection {
            port,
            kept: KeptConnection::new(port),
            uses: 0,
        }
    }

    /// `GET http://127.0.0.1:{port}{path}` answered 2xx within `timeout`. Takes and gives back
    /// the connection so the probe can run as a `'static` future beside the child's `wait`.
    pub async fn probe(mut self, path: &str, timeout: Duration) -> (Self, Result<(), ProbeError>) {
        if self.uses >= FRESH_EVERY {
            self.renew();
        }
        self.uses += 1;
        let url = || format!("http://127.0.0.1:{}{path}", self.port);
        let result =
            match tokio::time::timeout(timeout, self.kept.get(path, PROBE_BODY_LIMIT)).await {
                Ok(Ok(reply)) if reply.status.is_success() => Ok(()),
                Ok(Ok(reply)) => Err(ProbeError::Status {
                    url: url(),
                    status: reply.status,
                }),
                Ok(Err(source)) => Err(ProbeError::Request { url: url(), source }),
                Err(_) => Err(ProbeError::Timeout {
                    url: url(),
                    timeout,
                }),
            };
        if result.is_err() {
            // Judge the next probe on a connection of its own.
            self.renew();
        }
        (self, result)
    }

    fn renew(&mut self) {
        self.kept = KeptConnection::new(self.port);
        self.uses = 0;
    }
}

/// How long one health probe may take: the interval, clamped so a hung child is noticed
/// within `health_failures` intervals but a busy one is not killed by a hair-trigger.
pub fn probe_timeout(health_interval: Duration) -> Duration {
    health_interval.clamp(Duration::from_millis(100), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A child answering `/health` with 200 on kept-alive connections; `accepting` false makes
    /// it stop accepting new connections (old ones keep answering), `hung` stops all answers.
    struct Child {
        port: u16,
        connections: Arc<AtomicUsize>,
        accepting: Arc<AtomicBool>,
        hung: Arc<AtomicBool>,
    }

    async fn child() -> Child {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepting = Arc::new(AtomicBool::new(true));
        let hung = Arc::new(AtomicBool::new(false));
        let (count, open, stuck) = (connections.clone(), accepting.clone(), hung.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                if !open.load(Ordering::SeqCst) {
                    // Accepted by the kernel, never served: what a stuck accept loop looks like.
                    std::mem::forget(s);
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let stuck = stuck.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if stuck.load(Ordering::SeqCst) {
                                continue;
                            }
                            let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Child {
            port,
            connections,
            accepting,
            hung,
        }
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn probes_share_a_connection_and_renew_it_every_tenth() {
        let c = child().await;
        let mut conn = ProbeConnection::new(c.port);
        for _ in 0..FRESH_EVERY * 3 {
            let (next, result) = conn.probe("/health", T).await;
            result.unwrap();
            conn = next;
        }
        assert_eq!(c.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_child_that_stops_accepting_fails_within_fresh_every_probes() {
        let c = child().await;
        let mut conn = ProbeConnection::new(c.port);
        let (next, result) = conn.probe("/health", T).await;
        result.unwrap();
        conn = next;
        c.accepting.store(false, Ordering::SeqCst);
        let mut failed_at = None;
        for i in 1..=FRESH_EVERY {
            let (next, result) = conn.probe("/health", Duration::from_millis(300)).await;
            conn = next;
            if result.is_err() {
                failed_at = Some(i);
                break;
            }
        }
        // The old connection still answers, so only the renewed one can fail.
        assert_eq!(failed_at, Some(FRESH_EVERY));
    }

    #[tokio::test]
    async fn a_hung_child_times_out_on_the_kept_connection() {
        let c = child().await;
        let (conn, result) = ProbeConnection::new(c.port).probe("/health", T).await;
        result.unwrap();
        c.hung.store(true, Ordering::SeqCst);
        let (conn, result) = conn.probe("/health", Duration::from_millis(200)).await;
        assert!(
            matches!(result, Err(ProbeError::Timeout { .. })),
            "{result:?}"
        );
        // Answers again: probed on a new connection, not the one left mid-request.
        c.hung.store(false, Ordering::SeqCst);
        let (_, result) = conn.probe("/health", T).await;
        result.unwrap();
        assert_eq!(c.connections.load(Ordering::SeqCst), 2);
    }
}

//! Probing a model process: `GET /health` (alive) and `GET /ready` (loaded), each with a timeout.
//!
//! Every probe opens a fresh connection ([`crate::local_http::get_once`]): a respawned child is
//! never judged by a stale socket, and a child whose accept loop is stuck fails its probe even if
//! an old connection would still answer. That costs a loopback handshake (tens of µs) per probe;
//! what cost before was the HTTP client around it, not the connection.

use crate::local_http::{LocalHttpError, get_once};
use std::time::Duration;

/// Bodies of `/health` and `/ready` are a few bytes; anything this large is not a probe answer.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

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

/// A probe client for children on 127.0.0.1 (no state: each probe has its own connection).
#[derive(Debug, Clone, Default)]
pub struct Prober;

impl Prober {
    pub fn new() -> Result<Self, ProbeError> {
        Ok(Prober)
    }

    /// `GET http://127.0.0.1:{port}{path}` answered 2xx within `timeout`.
    pub async fn probe(&self, port: u16, path: &str, timeout: Duration) -> Result<(), ProbeError> {
        let url = || format!("http://127.0.0.1:{port}{path}");
        let reply =
            match tokio::time::timeout(timeout, get_once(port, path, PROBE_BODY_LIMIT)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(source)) => return Err(ProbeError::Request { url: url(), source }),
                Err(_) => {
                    return Err(ProbeError::Timeout {
                        url: url(),
                        timeout,
                    });
                }
            };
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status {
                url: url(),
                status: reply.status,
            })
        }
    }
}

/// How long one health probe may take: the interval, clamped so a hung child is noticed
/// within `health_failures` intervals but a busy one is not killed by a hair-trigger.
pub fn probe_timeout(health_interval: Duration) -> Duration {
    health_interval.clamp(Duration::from_millis(100), Duration::from_secs(5))
}

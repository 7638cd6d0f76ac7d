//! Probing a model process: `GET /health` (alive) and `GET /ready` (loaded), each with a timeout.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe of {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("building the probe client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A probe client for children on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Prober {
    pub fn new() -> Result<Self, ProbeError> {
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            // Fresh connections: a respawned child must not be judged by a stale socket.
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .map_err(ProbeError::Client)?;
        Ok(Prober { client })
    }

    /// `GET http://127.0.0.1:{port}{path}` answered 2xx within `timeout`.
    pub async fn probe(&self, port: u16, path: &str, timeout: Duration) -> Result<(), ProbeError> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let resp = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| ProbeError::Request {
                url: url.clone(),
                source,
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status {
                url,
                status: resp.status(),
            })
        }
    }
}

/// How long one health probe may take: the interval, clamped so a hung child is noticed
/// within `health_failures` intervals but a busy one is not killed by a hair-trigger.
pub fn probe_timeout(health_interval: Duration) -> Duration {
    health_interval.clamp(Duration::from_millis(100), Duration::from_secs(5))
}

//! The audit trail: one JSON record per API request (every status), written as JSON lines to
//! the state dir and handed, without loss, to the log shipper. Never contains a token or key.

use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339 with milliseconds.
    pub time: String,
    pub request_id: String,
    /// The interaction archive's key (analytics join on it); equals the request id.
    pub interaction_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub subject: Option<String>,
    pub role: Option<String>,
    pub method: String,
    /// The matched route template, never the raw path.
    pub route: String,
    pub model: Option<String>,
    pub status: u16,
    pub outcome: &'static str,
    pub latency_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client: String,
    pub user_agent: Option<String>,
}

pub fn outcome(status: u16) -> &'static str {
    match status {
        200..=399 => "success",
        401 | 403 => "denied",
        429 => "rate_limited",
        400..=499 => "client_error",
        503 => "unavailable",
        _ => "server_error",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the API hands records; cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    live: broadcast::Sender<AuditRecord>,
}

impl AuditSink {
    /// Starts the writer task appending to `path`; returns the sink and the writer's handle.
    pub async fn start(
        path: &Path,
    ) -> Result<(AuditSink, tokio::task::JoinHandle<()>), AuditError> {
        Self::start_forwarding(path, None).await
    }

    /// As [`Self::start`], and the writer also hands every record to `forward` (the log
    /// shipper) after writing it, waiting when that channel is full: back-pressure reaches
    /// [`Self::record`] instead of losing a record.
    pub async fn start_forwarding(
        path: &Path,
        forward: Option<mpsc::Sender<AuditRecord>>,
    ) -> Result<(AuditSink, tokio::task::JoinHandle<()>), AuditError> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| AuditError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let (tx, rx) = mpsc::channel(65_536);
        let (live, _) = broadcast::channel(65_536);
        let writer = tokio::spawn(write_records(file, rx, live.clone(), forward));
        Ok((AuditSink { tx, live }, writer))
    }

    /// Records one request; waits (back-pressure) rather than dropping when the writer lags.
    pub async fn record(&self, record: AuditRecord) {
        if self.tx.send(record).await.is_err() {
            tracing::error!("audit writer stopped; record lost");
        }
    }

    /// Every record as it is written, best effort (a lagging subscriber misses records; the
    /// log shipper uses [`Self::start_forwarding`] instead).
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.live.subscribe()
    }
}

async fn write_records(
    file: tokio::fs::File,
    mut rx: mpsc::Receiver<AuditRecord>,
    live: broadcast::Sender<AuditRecord>,
    mut forward: Option<mpsc::Sender<AuditRecord>>,
) {
    let mut out = tokio::io::BufWriter::new(file);
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for record in batch.drain(..) {
            match serde_json::to_vec(&record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line).await {
                        tracing::error!(error = %e, "audit log write failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "audit record not serialisable"),
            }
            let _ = live.send(record.clone());
            if let Some(tx) = &forward
                && tx.send(record).await.is_err()
            {
                tracing::error!("log shipper stopped taking audit records");
                forward = None;
            }
        }
        if let Err(e) = out.flush().await {
            tracing::error!(error = %e, "audit log flush failed");
        }
    }
}

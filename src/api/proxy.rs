//! Forwarding inference requests to the model processes over a pooled keep-alive client.

use super::error::ApiError;
use axum::body::Bytes;
use axum::http::StatusCode;
use std::time::Duration;

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

pub async fn forward(
    http: &reqwest::Client,
    model: &str,
    port: u16,
    body: Bytes,
    request_id: &str,
    timeout: Duration,
) -> Result<ModelReply, ApiError> {
    let url = format!("http://127.0.0.1:{port}/infer");
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", request_id)
        .timeout(timeout)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                ApiError::Timeout(model.to_string())
            } else {
                tracing::warn!(model, error = %e, "model unreachable");
                ApiError::Unavailable(
                    format!("model {model} is not reachable"),
                    Duration::from_secs(1),
                )
            }
        })?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.bytes().await.map_err(|e| {
        if e.is_timeout() {
            ApiError::Timeout(model.to_string())
        } else {
            ApiError::Unavailable(
                format!("model {model} closed the connection"),
                Duration::from_secs(1),
            )
        }
    })?;
    Ok(ModelReply {
        status,
        body,
        retry_after,
    })
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

//! Forwarding inference requests to the model processes over a pooled keep-alive client.
//!
//! The hot path uses hyper's pooled client directly (HTTP/1.1 to 127.0.0.1, no TLS, no
//! redirects, no URL parsing beyond the URI): reqwest's conveniences cost a measurable share of
//! each proxied request. reqwest stays for the rare metadata fetch.

use super::error::ApiError;
use axum::body::Bytes;
use axum::http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// The keep-alive pool to the model processes.
pub type Upstream = Client<HttpConnector, Full<Bytes>>;

/// A pool keeping up to `max_idle_per_host` idle connections per model process.
pub fn upstream(max_idle_per_host: usize) -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector)
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

pub async fn forward(
    upstream: &Upstream,
    model: &str,
    port: u16,
    body: Bytes,
    request_id: &str,
    timeout: Duration,
) -> Result<ModelReply, ApiError> {
    let unreachable = || {
        ApiError::Unavailable(
            format!("model {model} is not reachable"),
            Duration::from_secs(1),
        )
    };
    let uri: Uri = format!("http://127.0.0.1:{port}/infer")
        .parse()
        .map_err(|_| unreachable())?;
    let mut request = Request::post(uri)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(Full::new(body))
        .map_err(|_| unreachable())?;
    if let Ok(id) = HeaderValue::from_str(request_id) {
        request.headers_mut().insert("x-request-id", id);
    }
    let exchange = async {
        let response = upstream.request(request).await.map_err(|e| {
            tracing::warn!(model, error = %e, "model unreachable");
            unreachable()
        })?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|_| {
            ApiError::Unavailable(
                format!("model {model} closed the connection"),
                Duration::from_secs(1),
            )
        })?;
        Ok::<_, ApiError>((parts, body.to_bytes()))
    };
    let (parts, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ApiError::Timeout(model.to_string()))??;
    let retry_after = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(ModelReply {
        status: parts.status,
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

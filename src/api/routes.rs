//! Route handlers. Paths and shapes are the contract in DESIGN.md "HTTP".

use super::auth::Principal;
use super::error::ApiError;
use super::middleware::{ModelTag, RateRemaining, request_id, request_id_str, set_rate_headers};
use super::ratelimit::Decision;
use super::{AppState, proxy};
use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// Items allowed in one batch-analysis request.
pub const MAX_BATCH_ITEMS: usize = 32;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

#[utoipa::path(get, path = "/health", tag = "agent", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// The agent is shutting down: take it out of rotation.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Each model's supervisor state.
    pub models: std::collections::BTreeMap<String, String>,
    /// Why the host should be drained (empty when ready).
    pub reasons: Vec<crate::ops::readiness::Reason>,
}

#[utoipa::path(get, path = "/ready", tag = "agent", responses(
    (status = 200, body = Readiness, description = "every model is ready and the GPUs are healthy"),
    (status = 503, body = Readiness, description = "drain this host: a model is not ready or crash-looping, a GPU is lost or has a fatal XID, NVML is gone, or the agent is shutting down; `reasons` says which")))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    use crate::ops::readiness::{Reason, model_reasons};
    let models = state.directory.models();
    let draining = state.draining.is_cancelled();
    let mut reasons = Vec::new();
    if draining {
        reasons.push(Reason {
            code: "draining",
            message: "the agent is shutting down".into(),
            gpu: None,
            model: None,
        });
    }
    reasons.extend(model_reasons(
        models.iter().map(|m| (m.name.as_str(), m.state.as_str())),
    ));
    // A directory that marks a model ready in a state other than `ready` (a static one) wins.
    reasons.retain(|r| {
        r.code != "model-not-ready"
            || !models
                .iter()
                .any(|m| m.ready && Some(&m.name) == r.model.as_ref())
    });
    if let Some(host) = &state.readiness {
        reasons.extend(host.reasons());
    }
    let ready = reasons.is_empty();
    let body = Readiness {
        ready,
        draining,
        models: models.into_iter().map(|m| (m.name, m.state)).collect(),
        reasons,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "agent", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.metrics.render();
    if let Some(extra) = &state.extra_metrics {
        text.push_str(&extra.render());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub port: u16,
    pub state: String,
    pub ready: bool,
    /// The model's `/metadata` (schema, version, example), null when it does not answer.
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
}

#[utoipa::path(get, path = "/api/v1/models", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = Vec<ModelInfo>),
        (status = 401, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody, description = "overloaded, or the audit log cannot record the request (code audit_unavailable, see Retry-After)")))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Vec<ModelInfo>> {
    let models = state.directory.models();
    let described = state.model_metadata.describe(&state.http, &models).await;
    Json(
        models
            .into_iter()
            .zip(described)
            .map(|(m, d)| ModelInfo {
                name: m.name,
                port: m.port,
                state: m.state,
                ready: m.ready,
                // What the model answers now; a model that does not answer shows null here.
                metadata: d.fresh.then(|| d.metadata.map(|v| (*v).clone())).flatten(),
            })
            .collect(),
    )
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })
}

/// Runs one inference through the gateway's checks and the model; returns the model's reply.
async fn call_model(
    state: &AppState,
    model: &str,
    body: Bytes,
    request_id: &str,
) -> Result<proxy::ModelReply, ApiError> {
    let endpoint = state.directory.get(model);
    // Batch items run concurrently: they use the shared pool, not the connection's lane.
    call_endpoint(state, model, endpoint, None, body, request_id).await
}

/// As [`call_model`], with the directory already consulted (once per request).
async fn call_endpoint(
    state: &AppState,
    model: &str,
    endpoint: Option<super::ModelEndpoint>,
    lane: Option<&proxy::Lane>,
    body: Bytes,
    request_id: &str,
) -> Result<proxy::ModelReply, ApiError> {
    let endpoint = endpoint.ok_or_else(|| ApiError::NotFound {
        what: "model",
        name: model.to_string(),
    })?;
    if !endpoint.ready {
        return Err(ApiError::Unavailable(
            format!("model {model} is not ready (state {})", endpoint.state),
            Duration::from_secs(2),
        ));
    }
    proxy::forward(
        &state.upstream,
        lane,
        model,
        proxy::Target {
            port: endpoint.port,
            socket: endpoint.socket.as_deref(),
        },
        body,
        request_id,
        state.request_timeout,
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/{model}", tag = "models", security(("bearer" = [])),
    params(("model" = String, Path, description = "connection-designer, section-optimizer, clash-detector, compliance-checker or risk-analyzer")),
    request_body(content = Object, description = "the model's input; GET /api/v1/models shows each schema and an example"),
    responses(
        (status = 200, description = "the model's output", body = Object),
        (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody),
        (status = 415, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody, description = "model not ready, overloaded, or the audit log cannot record the request (code audit_unavailable); see Retry-After"),
        (status = 504, body = super::error::ErrorBody, description = "the model did not answer in time")))]
pub async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    lane: Option<Extension<proxy::Lane>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = body_bytes(body, state.body_limit);
    let lane = lane.as_ref().map(|Extension(lane)| lane);
    let (mut response, known) = answer_inference(&state, model, lane, &headers, body).await;
    if let Some(model) = known {
        response.extensions_mut().insert(ModelTag(model));
    }
    response
}

/// The inference route's work once the request is admitted and authorized: the model's
/// answer (or the error), and the model's name when it is one the gateway knows (for metrics
/// and audit). Shared by the router and the gateway's fast path.
pub(super) async fn answer_inference(
    state: &AppState,
    model: String,
    lane: Option<&proxy::Lane>,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> (Response, Option<String>) {
    let endpoint = state.directory.get(&model);
    let known = endpoint.is_some();
    let result = async {
        require_json(headers)?;
        let body = body?;
        call_endpoint(state, &model, endpoint, lane, body, request_id_str(headers)).await
    }
    .await;
    let response = match result {
        Ok(reply) => {
            let mut r = (reply.status, reply.body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(v) = reply
                .retry_after
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Err(e) => e.into_response(),
    };
    (response, known.then_some(model))
}

#[derive(Deserialize, ToSchema)]
pub struct BatchRequest {
    /// Up to 32 model calls, run concurrently.
    pub requests: Vec<BatchItem>,
}

#[derive(Deserialize, ToSchema)]
pub struct BatchItem {
    pub model: String,
    /// The model's input, as for `POST /api/v1/{model}`.
    #[schema(value_type = Object)]
    pub input: Value,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    pub model: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub error: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

#[utoipa::path(post, path = "/api/v1/batch-analysis", tag = "models", security(("bearer" = [])),
    request_body = BatchRequest,
    responses((status = 200, body = BatchResponse, description = "one result per item, in order; a failed item does not fail the batch; each item costs one rate-limit token"),
        (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody),
        (status = 415, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody, description = "overloaded, or the audit log cannot record the request (code audit_unavailable); see Retry-After")))]
pub async fn batch(
    State(state): State<Arc<AppState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: BatchRequest = json_body(&headers, body, state.body_limit)?;
    if request.requests.is_empty() || request.requests.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::Unprocessable(format!(
            "requests: between 1 and {MAX_BATCH_ITEMS} items"
        )));
    }
    // One token per item: the request itself paid for the first in `authorize`.
    let mut remaining = None;
    if let (Some(auth), Some(Extension(principal))) = (&state.auth, &principal) {
        let extra = u32::try_from(request.requests.len() - 1).unwrap_or(u32::MAX);
        match auth.limiter.check_n(&principal.subject, extra) {
            Decision::Limited { limit, retry_after } => {
                state.metrics.shed.with_label_values(&["rate_limit"]).inc();
                let mut r = ApiError::RateLimited { limit, retry_after }.into_response();
                set_rate_headers(r.headers_mut(), limit, 0, Some(retry_after));
                return Ok(r);
            }
            Decision::Allowed {
                remaining: left, ..
            } => remaining = Some(left),
        }
    }
    let parent_id = request_id(&headers);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, item) in request.requests.into_iter().enumerate() {
        let state = state.clone();
        let request_id = format!("{parent_id}-{i}");
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            let body = Bytes::from(serde_json::to_vec(&item.input).unwrap_or_default());
            let result = call_model(&state, &item.model, body, &request_id).await;
            let status = match &result {
                Ok(reply) => reply.status.as_u16(),
                Err(e) => e.status().as_u16(),
            };
            if let Some(observer) = &state.observer
                && state.directory.get(&item.model).is_some()
            {
                observer.observe(&item.model, status, started.elapsed());
            }
            let result = match result {
                Ok(reply) => {
                    let value: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                    if reply.status.is_success() {
                        BatchResult {
                            model: item.model,
                            status,
                            output: Some(value),
                            error: None,
                        }
                    } else {
                        let error = value.get("error").cloned().unwrap_or(value);
                        BatchResult {
                            model: item.model,
                            status,
                            output: None,
                            error: Some(error),
                        }
                    }
                }
                Err(e) => {
                    let error = serde_json::to_value(e.body().error).unwrap_or(Value::Null);
                    BatchResult {
                        model: item.model,
                        status,
                        output: None,
                        error: Some(error),
                    }
                }
            };
            (i, result)
        });
    }
    let mut results: Vec<Option<BatchResult>> = Vec::new();
    results.resize_with(tasks.len(), || None);
    while let Some(joined) = tasks.join_next().await {
        let (i, result) =
            joined.map_err(|e| ApiError::Internal(format!("batch item task: {e}")))?;
        results[i] = Some(result);
    }
    let mut response = Json(BatchResponse {
        results: results.into_iter().flatten().collect(),
    })
    .into_response();
    if let Some(left) = remaining {
        response.extensions_mut().insert(RateRemaining(left));
    }
    Ok(response)
}

/// The auth state, when this agent issues tokens (auth on and a private key configured).
fn token_issuer(state: &AppState) -> Result<&super::Auth, ApiError> {
    let auth = state
        .auth
        .as_ref()
        .ok_or(ApiError::NotConfigured("auth is not enabled on this agent"))?;
    if !auth.tokens.can_issue() {
        return Err(ApiError::NotConfigured(
            "no jwt_private_key: tokens are not issued here",
        ));
    }
    Ok(auth)
}

/// A JSON request body: right media type, within the size limit, of the expected shape.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    require_json(headers)?;
    let body = body_bytes(body, limit)?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Unprocessable(format!("body: {e}")))
}

#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    pub api_key: String,
}

#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[utoipa::path(post, path = "/auth/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = super::auth::TokenPair), (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody, description = "auth off or no private key on this agent"),
        (status = 413, body = super::error::ErrorBody), (status = 415, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody, description = "too many attempts from this address or on this key id (brute-force limit); see Retry-After"),
        (status = 503, body = super::error::ErrorBody, description = "overloaded, or the audit log cannot record the request (code audit_unavailable); see Retry-After")))]
pub async fn token(
    State(state): State<Arc<AppState>>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let auth = token_issuer(&state)?;
    // Charged before anything else, malformed attempts included: each try costs an argon2 run.
    if let Some(Extension(ConnectInfo(addr))) = client {
        auth.login.check_address(addr.ip()).map_err(|retry_after| {
            state
                .metrics
                .shed
                .with_label_values(&["login_address"])
                .inc();
            ApiError::TooManyAttempts { retry_after }
        })?;
    }
    let request: TokenRequest = json_body(&headers, body, state.body_limit)?;
    auth.login
        .check_key(&request.api_key)
        .map_err(|retry_after| {
            state.metrics.shed.with_label_values(&["login_key"]).inc();
            ApiError::TooManyAttempts { retry_after }
        })?;
    // argon2 is deliberately slow: keep it off the async workers.
    let key = request.api_key;
    let state2 = state.clone();
    let stored = tokio::task::spawn_blocking(move || {
        state2
            .auth
            .as_ref()
            .and_then(|a| a.keys.verify(&key))
            .map(|k| Principal {
                subject: k.user.clone(),
                role: k.role,
            })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("key check: {e}")))?;
    let principal = stored.ok_or(ApiError::Unauthenticated("invalid_api_key"))?;
    let pair = auth
        .tokens
        .issue_pair(&principal)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = Json(pair).into_response();
    response.extensions_mut().insert(principal);
    Ok(response)
}

#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = super::auth::TokenPair), (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody, description = "auth off or no private key on this agent"),
        (status = 413, body = super::error::ErrorBody), (status = 415, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody, description = "overloaded, or the audit log cannot record the request (code audit_unavailable); see Retry-After")))]
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<super::auth::TokenPair>, ApiError> {
    let auth = token_issuer(&state)?;
    let request: RefreshRequest = json_body(&headers, body, state.body_limit)?;
    auth.tokens
        .refresh(&request.refresh_token)
        .map(Json)
        .map_err(|e| {
            tracing::debug!(error = %e, "refresh rejected");
            ApiError::Unauthenticated("invalid_refresh_token")
        })
}

#[utoipa::path(get, path = "/openapi.json", tag = "agent", responses((status = 200, description = "this document")))]
pub async fn openapi_json(State(state): State<Arc<AppState>>) -> Response {
    let models = state.directory.models();
    let described = state.model_metadata.describe(&state.http, &models).await;
    let docs: Vec<super::openapi::ModelDoc<'_>> = models
        .iter()
        .zip(&described)
        .map(|(m, d)| super::openapi::ModelDoc {
            name: &m.name,
            metadata: d.metadata.as_deref(),
        })
        .collect();
    match super::openapi::document(&docs).and_then(|doc| serde_json::to_string_pretty(&doc)) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::Internal(format!("openapi document: {e}")).into_response(),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound {
        what: "route",
        name: "see /openapi.json".to_string(),
    }
}

//! Cross-cutting layers: request ids, audit + metrics for every request, load shedding,
//! JSON bodies for every error, and per-route authorization with rate limiting.

use super::auth::{Principal, Role};
use super::error::{ApiError, status_error};
use super::ratelimit::Decision;
use super::verified::LastToken;
use super::{AppState, audit};
use crate::telemetry::drops;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

/// The model a request was for, set by the inference handlers for the audit record.
#[derive(Debug, Clone)]
pub struct ModelTag(pub String);

/// What is left of the subject's allowance after a handler charged extra tokens.
#[derive(Debug, Clone, Copy)]
pub struct RateRemaining(pub u32);

// Header names parsed once: a name given as a string is parsed and hashed anew on every use.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The role a route group requires.
#[derive(Debug, Clone, Copy)]
pub struct Required(pub Role);

pub fn request_id_layers()
-> tower::layer::util::Stack<PropagateRequestIdLayer, SetRequestIdLayer<MakeRequestUuid>> {
    tower::layer::util::Stack::new(
        PropagateRequestIdLayer::x_request_id(),
        SetRequestIdLayer::x_request_id(MakeRequestUuid),
    )
}

pub fn cors(origins: &[String]) -> CorsLayer {
    // A predicate over a shared list: the router clones its layers for every request, and a
    // plain list would be copied each time.
    let allowed: std::sync::Arc<[HeaderValue]> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            allowed.contains(origin)
        }))
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, X_REQUEST_ID])
}

/// The request's `x-request-id`, made up (a UUID, as the router's layer does) when absent.
pub(super) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID) {
        return id.clone();
    }
    let mut made = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let made = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut made);
    let id = HeaderValue::from_str(made).unwrap_or(HeaderValue::from_static("unknown"));
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// The request's `x-request-id`, or "" when it has none (or one that is not text).
pub fn request_id_str(headers: &HeaderMap) -> &str {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

pub fn request_id(headers: &HeaderMap) -> String {
    request_id_str(headers).to_string()
}

/// Routes served even when the audit trail is full (still audited while there is headroom):
/// liveness, readiness and the metrics that show the problem must stay observable.
fn audit_exempt(route: &str) -> bool {
    matches!(route, "/health" | "/ready" | "/metrics")
}

/// How long a client refused for a full audit trail should wait.
const AUDIT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// A request in progress: its audit record is written when it is answered, or, if the client
/// goes away first (the future is dropped), as a 499 so every request leaves a record.
struct InFlight {
    state: Arc<AppState>,
    admission: Option<audit::Admission>,
    record: Option<audit::AuditRecord>,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.metrics.in_flight.dec();
        if let (Some(admission), Some(mut record)) = (self.admission.take(), self.record.take()) {
            record.status = audit::CLIENT_CLOSED;
            record.outcome = audit::outcome(audit::CLIENT_CLOSED);
            record.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            admission.record(record);
        }
    }
}

/// A check's refusal: the answer to send instead (boxed: the refusal is the rare path).
pub(super) type Refused = Box<Response>;

/// One request being audited and measured, from admission to its answer.
pub(super) struct Observation {
    in_flight: InFlight,
}

/// Starts observing a request. Admission to the audit trail comes first: a request whose
/// record could not be kept is refused (503) before any work, and that refusal is the answer.
pub(super) fn begin(
    state: &Arc<AppState>,
    route: String,
    method: &str,
    headers: &HeaderMap,
    client: Option<&str>,
) -> Result<Observation, Refused> {
    let started = Instant::now();
    let admission = match state.audit.admit(audit_exempt(&route)) {
        Ok(a) => Some(a),
        Err(_) if audit_exempt(&route) => {
            // Answered anyway (monitoring must see a full pipeline), its record counted.
            state.audit.count_dropped(drops::reason::QUEUE_FULL);
            None
        }
        Err(_) => {
            state.audit.count_dropped(drops::reason::AUDIT_UNAVAILABLE);
            state.metrics.shed.with_label_values(&["audit"]).inc();
            let status = StatusCode::SERVICE_UNAVAILABLE.as_str();
            state
                .metrics
                .requests
                .with_label_values(&[route.as_str(), method, status])
                .inc();
            return Err(Box::new(
                ApiError::AuditUnavailable(AUDIT_RETRY_AFTER).into_response(),
            ));
        }
    };
    let request_id = request_id(headers);
    let session_id = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect());
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    let template = audit::AuditRecord {
        time: audit::rfc3339_millis_now(),
        interaction_id: request_id.clone(),
        request_id,
        session_id,
        subject: None,
        role: None,
        method: method.to_string(),
        route,
        model: None,
        status: 0,
        outcome: "",
        latency_ms: 0.0,
        bytes_in: content_length(headers),
        bytes_out: 0,
        client: client.unwrap_or("unknown").to_string(),
        user_agent,
        detail: None,
    };
    state.metrics.in_flight.inc();
    Ok(Observation {
        in_flight: InFlight {
            state: state.clone(),
            admission,
            record: Some(template),
            started,
        },
    })
}

impl Observation {
    /// Counts and audits the answer (dropped unfinished, the request is audited as a 499),
    /// with the model and principal its handlers left in its extensions.
    pub(super) fn finish(self, response: &Response) {
        let model = response.extensions().get::<ModelTag>().map(|m| m.0.clone());
        let principal = response.extensions().get::<Principal>();
        self.finish_as(response, model, principal);
    }

    /// [`Self::finish`] for a caller that knows the model and principal itself.
    pub(super) fn finish_as(
        mut self,
        response: &Response,
        model: Option<String>,
        principal: Option<&Principal>,
    ) {
        let Some(mut record) = self.in_flight.record.take() else {
            return;
        };
        let state = &self.in_flight.state;
        let latency = self.in_flight.started.elapsed();
        let status = response.status();
        state.metrics.record_request(
            &record.route,
            &record.method,
            status,
            model.as_deref(),
            latency,
        );
        if let (Some(model), Some(observer)) = (&model, &state.observer) {
            observer.observe(model, status.as_u16(), latency);
        }
        if let Some(admission) = self.in_flight.admission.take() {
            record.subject = principal.map(|p| p.subject.clone());
            record.role = principal.map(|p| p.role.as_str().to_string());
            record.model = model;
            record.status = status.as_u16();
            record.outcome = audit::outcome(record.status);
            record.latency_ms = latency.as_secs_f64() * 1000.0;
            record.bytes_out = response_length(response);
            admission.record(record);
        }
    }
}

/// Audits and measures every request, whatever answered it.
pub async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let method = req.method().as_str();
    let observation = match begin(&state, route, method, req.headers(), client.as_deref()) {
        Ok(o) => o,
        Err(refused) => return *refused,
    };
    let response = next.run(req).await;
    observation.finish(&response);
    response
}

fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn response_length(response: &Response) -> u64 {
    use axum::body::HttpBody;
    response
        .body()
        .size_hint()
        .exact()
        .unwrap_or_else(|| content_length(response.headers()))
}

/// Refuses work beyond `api.max_concurrency` with 503 instead of queueing without bound.
/// Liveness stays answerable under overload.
pub async fn shed(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    match reserve_capacity(&state) {
        Ok(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        Err(refused) => *refused,
    }
}

/// A place among the `api.max_concurrency` requests in flight, or the 503 that refuses one more.
pub(super) fn reserve_capacity(
    state: &AppState,
) -> Result<tokio::sync::OwnedSemaphorePermit, Refused> {
    state.capacity.clone().try_acquire_owned().map_err(|_| {
        state.metrics.shed.with_label_values(&["concurrency"]).inc();
        Box::new(
            ApiError::Unavailable(
                format!(
                    "more than {} requests in flight; retry shortly",
                    state.max_concurrency
                ),
                Duration::from_secs(1),
            )
            .into_response(),
        )
    })
}

/// Gives every error response the JSON error shape (404/405/413/415 from the framework too).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (parts, _) = response.into_parts();
        let mut fresh = status_error(status, status.canonical_reason().unwrap_or("error"));
        for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
            if let Some(v) = parts.headers.get(&name) {
                fresh.headers_mut().insert(name, v.clone());
            }
        }
        return fresh;
    }
    response
}

/// What the auth check let through.
pub(super) enum Access {
    /// Auth is off.
    Open,
    Granted {
        principal: Principal,
        limit: u32,
        remaining: u32,
    },
}

/// Authenticates the bearer token, checks the role, then the subject's rate limit; a refusal
/// is the answer (carrying the principal, when known, for the audit record).
/// `last` is the connection's own last token, when the caller keeps one.
pub(super) fn check_access(
    state: &AppState,
    headers: &HeaderMap,
    required: Role,
    last: Option<&LastToken>,
) -> Result<Access, Refused> {
    let Some(auth) = &state.auth else {
        return Ok(Access::Open);
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(token) = token else {
        return Err(Box::new(
            ApiError::Unauthenticated("missing_token").into_response(),
        ));
    };
    let token = token.trim();
    let verify = |t: &str| auth.tokens.verify_access(t);
    let verified = match last {
        Some(last) => auth.verified.get_or_verify_remembered(last, token, verify),
        None => auth.verified.get_or_verify(token, verify),
    };
    let principal = match verified {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "token rejected");
            return Err(Box::new(
                ApiError::Unauthenticated("invalid_token").into_response(),
            ));
        }
    };
    let mut refused = if principal.role < required {
        let action = if required == Role::User {
            "call models"
        } else {
            "view this"
        };
        ApiError::Forbidden {
            have: principal.role.as_str(),
            action,
        }
        .into_response()
    } else {
        match auth.limiter.check(&principal.subject) {
            Decision::Allowed { limit, remaining } => {
                return Ok(Access::Granted {
                    principal,
                    limit,
                    remaining,
                });
            }
            Decision::Limited { limit, retry_after } => {
                state.metrics.shed.with_label_values(&["rate_limit"]).inc();
                let mut r = ApiError::RateLimited { limit, retry_after }.into_response();
                set_rate_headers(r.headers_mut(), limit, 0, Some(retry_after));
                r
            }
        }
    };
    refused.extensions_mut().insert(principal);
    Err(Box::new(refused))
}

impl Access {
    /// Marks the answer with the subject's allowance and, for the audit record, the principal.
    pub(super) fn stamp(self, response: &mut Response) {
        if let Some(principal) = self.stamp_allowance(response) {
            response.extensions_mut().insert(principal);
        }
    }

    /// Marks the answer with the subject's allowance; gives back the principal.
    pub(super) fn stamp_allowance(self, response: &mut Response) -> Option<Principal> {
        let Access::Granted {
            principal,
            limit,
            remaining,
        } = self
        else {
            return None;
        };
        // A handler that charged more (batch items) reports what is left.
        let remaining = response
            .extensions()
            .get::<RateRemaining>()
            .map_or(remaining, |r| r.0);
        set_rate_headers(response.headers_mut(), limit, remaining, None);
        Some(principal)
    }
}

/// [`check_access`] as a route layer.
pub async fn authorize(
    State((state, Required(required))): State<(Arc<AppState>, Required)>,
    req: Request,
    next: Next,
) -> Response {
    let access = match check_access(&state, req.headers(), required, None) {
        Ok(access) => access,
        Err(refused) => return *refused,
    };
    let mut req = req;
    if let Access::Granted { principal, .. } = &access {
        req.extensions_mut().insert(principal.clone());
    }
    let mut response = next.run(req).await;
    access.stamp(&mut response);
    response
}

pub(crate) fn set_rate_headers(
    headers: &mut HeaderMap,
    limit: u32,
    remaining: u32,
    reset: Option<Duration>,
) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
    if let Some(reset) = reset {
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset.as_secs().max(1)));
    }
}

//! The inference API gateway (`agent.listen`): model routes proxied to the model processes,
//! auth, rate limits, audit, Prometheus `/metrics` and OpenAPI.

pub mod audit;
pub mod auth;
mod docs;
pub mod error;
mod fast_path;
pub mod metrics;
mod middleware;
pub mod model_meta;
mod multiplex;
pub mod openapi;
pub mod proxy;
pub mod ratelimit;
mod routes;
mod serve;
mod verified;

use crate::config::Config;
use audit::AuditSink;
use auth::{ApiKeyStore, Tokens};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use error::ApiError;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// One model the gateway can route to, as the supervisor sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelEndpoint {
    pub name: String,
    pub port: u16,
    /// The model's Unix socket, preferred over the port for inference when it answers there.
    pub socket: Option<Arc<std::path::Path>>,
    /// Supervisor state (`ready`, `starting`, `backoff`, ...).
    pub state: String,
    pub ready: bool,
}

/// Where the gateway learns which models exist and whether they are ready.
pub trait ModelDirectory: Send + Sync + 'static {
    fn models(&self) -> Vec<ModelEndpoint>;
    fn get(&self, name: &str) -> Option<ModelEndpoint> {
        self.models().into_iter().find(|m| m.name == name)
    }
}

/// A fixed set of models assumed ready (an unreachable one still answers 503).
pub struct StaticDirectory(pub Vec<(String, u16)>);

impl ModelDirectory for StaticDirectory {
    fn models(&self) -> Vec<ModelEndpoint> {
        self.0
            .iter()
            .map(|(name, port)| ModelEndpoint {
                name: name.clone(),
                port: *port,
                socket: None,
                state: "unknown".into(),
                ready: true,
            })
            .collect()
    }
}

/// Receives each inference request's outcome (the telemetry store records latency from it).
pub trait RequestObserver: Send + Sync + 'static {
    fn observe(&self, model: &str, status: u16, latency: Duration);
}

/// Host-level reasons to take this host out of the load balancer (GPU lost, fatal XID, NVML
/// gone), beyond the model states the gateway already sees.
pub trait HostReadiness: Send + Sync + 'static {
    fn reasons(&self) -> Vec<crate::ops::readiness::Reason>;
}

/// Extra Prometheus text appended to `/metrics` (the telemetry store's series).
pub trait MetricsText: Send + Sync + 'static {
    fn render(&self) -> String;
}

pub struct Auth {
    pub tokens: Tokens,
    pub keys: ApiKeyStore,
    pub limiter: ratelimit::SubjectLimiter,
    /// `/auth/token` brute-force limits.
    pub login: ratelimit::LoginLimiter,
    /// Access tokens already verified (until their `exp`).
    pub verified: verified::VerifiedTokens,
}

pub struct AppState {
    pub directory: Arc<dyn ModelDirectory>,
    /// For metadata fetches (rare).
    pub http: reqwest::Client,
    /// The inference hot path's keep-alive pool.
    pub upstream: proxy::Upstream,
    pub auth: Option<Auth>,
    pub metrics: metrics::ApiMetrics,
    pub audit: AuditSink,
    /// The models' last good `/metadata`, for `/openapi.json`.
    pub model_metadata: model_meta::ModelMetadata,
    pub observer: Option<Arc<dyn RequestObserver>>,
    pub extra_metrics: Option<Arc<dyn MetricsText>>,
    pub request_timeout: Duration,
    pub body_limit: usize,
    pub capacity: Arc<Semaphore>,
    pub max_concurrency: usize,
    /// Cancelled when shutdown begins: `/ready` answers 503 from then on.
    pub draining: CancellationToken,
    /// GPU/driver reasons for `/ready` (none: models and draining only).
    pub readiness: Option<Arc<dyn HostReadiness>>,
}

/// Everything needed to build the gateway besides the config.
pub struct Peers {
    pub directory: Arc<dyn ModelDirectory>,
    pub audit: AuditSink,
    pub observer: Option<Arc<dyn RequestObserver>>,
    pub extra_metrics: Option<Arc<dyn MetricsText>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("auth: {0}")]
    Jwt(#[from] auth::JwtError),
    #[error("auth: {0}")]
    Keys(#[from] auth::KeyError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Client(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl AppState {
    pub fn new(config: &Config, peers: Peers) -> Result<AppState, ApiStartError> {
        let auth = match config.auth_enabled() {
            None => None,
            Some(a) => {
                let tokens = match &a.jwt_public_key {
                    Some(public) => Tokens::from_files(
                        &config.resolve(public),
                        a.jwt_private_key
                            .as_ref()
                            .map(|p| config.resolve(p))
                            .as_deref(),
                        &a.issuer,
                        &a.audience,
                    )?,
                    None => return Err(ApiStartError::Client("auth needs jwt_public_key".into())),
                };
                let keys = match &a.api_keys_file {
                    Some(path) => ApiKeyStore::load(&config.resolve(path))?,
                    None => ApiKeyStore::default(),
                };
                Some(Auth {
                    tokens,
                    keys,
                    limiter: ratelimit::SubjectLimiter::per_hour(a.rate_limit_per_hour),
                    login: ratelimit::LoginLimiter::default(),
                    verified: verified::VerifiedTokens::default(),
                })
            }
        };
        let http = proxy::client(config.api.max_concurrency)
            .map_err(|e| ApiStartError::Client(e.to_string()))?;
        Ok(AppState {
            directory: peers.directory,
            http,
            upstream: proxy::upstream(config.api.max_concurrency),
            auth,
            metrics: metrics::ApiMetrics::new()?,
            audit: peers.audit,
            model_metadata: model_meta::ModelMetadata::default(),
            observer: peers.observer,
            extra_metrics: peers.extra_metrics,
            request_timeout: config.api.request_timeout,
            body_limit: config.api.body_limit_bytes,
            capacity: Arc::new(Semaphore::new(config.api.max_concurrency)),
            max_concurrency: config.api.max_concurrency,
            draining: CancellationToken::new(),
            readiness: None,
        })
    }
}

/// The gateway's routes and layers.
pub fn router(state: Arc<AppState>, cors_origins: &[String]) -> Router {
    use axum::middleware::from_fn_with_state;
    use middleware::{Required, authorize};

    let open = Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/openapi.json", get(routes::openapi_json))
        .route("/docs", get(docs::swagger_page))
        .route("/docs/", get(docs::swagger_page))
        .route("/docs/{file}", get(docs::swagger_asset))
        .route("/redoc", get(docs::redoc_page))
        .route("/redoc/redoc.standalone.js", get(docs::redoc_js))
        .route("/auth/token", post(routes::token))
        .route("/auth/refresh", post(routes::refresh));
    let viewer = Router::new()
        .route("/metrics", get(routes::metrics))
        .route("/api/v1/models", get(routes::list_models))
        .route_layer(from_fn_with_state(
            (state.clone(), Required(auth::Role::Viewer)),
            authorize,
        ));
    let user = Router::new()
        .route("/api/v1/batch-analysis", post(routes::batch))
        .route("/api/v1/{model}", post(routes::infer))
        .route_layer(from_fn_with_state(
            (state.clone(), Required(auth::Role::User)),
            authorize,
        ));

    open.merge(viewer)
        .merge(user)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(from_fn_with_state(state.clone(), middleware::shed))
        .layer(middleware::cors(cors_origins))
        .layer(from_fn_with_state(state.clone(), middleware::observe))
        .layer(from_fn_with_state(state.clone(), middleware::json_errors))
        .layer(middleware::request_id_layers())
        .with_state(state)
}

/// Longest shutdown waits for in-flight requests.
const MAX_DRAIN: Duration = Duration::from_secs(10);

/// Serves until `shutdown` is cancelled, then stops accepting and drains in-flight requests
/// (each bounded by `api.request_timeout`); connections still busy after that bound plus a
/// grace second (at most [`MAX_DRAIN`]) are abandoned so shutdown always ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    cors_origins: &[String],
    shutdown: CancellationToken,
) -> Result<(), ApiStartError> {
    tokio::spawn(shrink_limiters(state.clone(), shutdown.clone()));
    // Capped so a stuck model cannot hold shutdown past systemd's TimeoutStopSec (30 s).
    let drain_bound = (state.request_timeout + Duration::from_secs(1)).min(MAX_DRAIN);
    let draining = state.draining.clone();
    let state_for_fast_path = state.clone();
    let app = router(state, cors_origins);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        draining.cancel();
    });
    serve::accept_until(listener, app, state_for_fast_path, shutdown, drain_bound).await;
    Ok(())
}

/// Forgets idle rate-limit keys now and then, so addresses and subjects seen once do not
/// accumulate for the agent's lifetime.
async fn shrink_limiters(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                if let Some(auth) = &state.auth {
                    auth.limiter.shrink();
                    auth.login.shrink();
                }
            }
        }
    }
}

/// Binds `addr`, with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ApiStartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiStartError::Bind { addr, source })
}

impl From<ApiError> for ApiStartError {
    fn from(e: ApiError) -> Self {
        ApiStartError::Client(e.to_string())
    }
}

//! The inference API gateway over real HTTP on 127.0.0.1: model routes proxied to model
//! servers, errors, auth matrix, rate limits, audit trail, OpenAPI.

use axum::{Json, Router, http::HeaderMap, routing::get, routing::post};
use base64::Engine;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use warden::api::{self, ModelDirectory, ModelEndpoint, audit::AuditSink};
use warden::config::Config;

/// A stand-in model process: echoes its input and the request id, like `/infer` does.
struct ModelServer {
    port: u16,
    ready: Arc<AtomicBool>,
    /// `/infer` calls that reached the model.
    hits: Arc<AtomicUsize>,
}

async fn start_model(name: &'static str, delay: Duration) -> ModelServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new()
        .route(
            "/infer",
            post(move |headers: HeaderMap, Json(body): Json<Value>| async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                if body.get("inputs").is_none() {
                    return (
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        Json(json!({"error": {"code": "invalid_input", "message": "inputs: missing field"}})),
                    );
                }
                let id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                (axum::http::StatusCode::OK, Json(json!({"model": name, "echo": body["inputs"], "request_id": id})))
            }),
        )
        .route("/metadata", get(move || async move { Json(json!({"name": name, "version": "1"})) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    ModelServer {
        port,
        ready: Arc::new(AtomicBool::new(true)),
        hits,
    }
}

struct Directory(Vec<(String, u16, Arc<AtomicBool>)>);

impl ModelDirectory for Directory {
    fn models(&self) -> Vec<ModelEndpoint> {
        self.0
            .iter()
            .map(|(n, p, r)| {
                let ready = r.load(Ordering::SeqCst);
                ModelEndpoint {
                    name: n.clone(),
                    port: *p,
                    socket: None,
                    state: if ready { "ready" } else { "backoff" }.into(),
                    ready,
                }
            })
            .collect()
    }
}

struct Gateway {
    base: String,
    audit_path: PathBuf,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
    ready_flags: Vec<Arc<AtomicBool>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Gateway with models `alpha` (fast), `slow` (300 ms) and `gone` (nothing listening).
async fn start_gateway(extra_toml: &str, auth: bool) -> Gateway {
    warden::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let alpha = start_model("alpha", Duration::ZERO).await;
    let slow = start_model("slow", Duration::from_millis(300)).await;
    let gone_port = crate::support::net::free_port();
    let mut toml = String::new();
    if auth {
        make_keys(dir.path());
        toml.push_str(&format!(
            "[auth]\njwt_public_key = \"{0}/public.pem\"\njwt_private_key = \"{0}/private.pem\"\napi_keys_file = \"{0}/keys.toml\"\n",
            dir.path().display()
        ));
    }
    toml.push_str(extra_toml);
    let config = Config::parse(&dir.path().join("warden.toml"), &toml).unwrap();
    std::fs::write(dir.path().join("warden.toml"), &toml).unwrap();
    let audit_path = dir.path().join("audit/api.jsonl");
    let ready_flags = vec![
        alpha.ready.clone(),
        slow.ready.clone(),
        Arc::new(AtomicBool::new(true)),
    ];
    let directory = Directory(vec![
        ("alpha".into(), alpha.port, alpha.ready.clone()),
        ("slow".into(), slow.port, slow.ready.clone()),
        ("gone".into(), gone_port, ready_flags[2].clone()),
    ]);
    let shutdown = CancellationToken::new();
    let base = serve_gateway(&config, directory, &audit_path, shutdown.clone()).await;
    Gateway {
        base,
        audit_path,
        shutdown,
        dir,
        ready_flags,
    }
}

fn make_keys(dir: &Path) {
    let private = dir.join("private.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    let ok = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(dir.join("public.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl rsa -pubout");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post_json(
    url: &str,
    body: &Value,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_routes_proxy_and_report_errors_as_json() {
    let gw = start_gateway("", false).await;
    let b = &gw.base;

    // Success: the model's answer, with our request id passed through both ways.
    let r = http()
        .post(format!("{b}/api/v1/alpha"))
        .header("x-request-id", "req-123")
        .json(&json!({"inputs": [[1.0, 2.0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"model": "alpha", "echo": [[1.0, 2.0]], "request_id": "req-123"})
    );

    // A generated request id when the caller sends none.
    let r = http()
        .post(format!("{b}/api/v1/alpha"))
        .json(&json!({"inputs": []}))
        .send()
        .await
        .unwrap();
    assert!(!r.headers()["x-request-id"].is_empty());

    // The model's own 4xx passes through as-is.
    let (s, _, v) = post_json(&format!("{b}/api/v1/alpha"), &json!({"wrong": 1}), None).await;
    assert_eq!((s, error_code(&v)), (422, "invalid_input"));
    assert_eq!(v["error"]["message"], "inputs: missing field");

    // Unknown model, unknown route, wrong method, wrong media type, oversized body.
    let (s, _, v) = post_json(&format!("{b}/api/v1/no-such-model"), &json!({}), None).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let r = http().get(format!("{b}/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.json().await.unwrap()), "not_found");
    let r = http()
        .get(format!("{b}/api/v1/alpha"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(&r.json().await.unwrap()), "method_not_allowed");
    let r = http()
        .post(format!("{b}/api/v1/alpha"))
        .body("inputs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        error_code(&r.json().await.unwrap()),
        "unsupported_media_type"
    );
    let big = json!({"inputs": "x".repeat(3 << 20)});
    let (s, _, v) = post_json(&format!("{b}/api/v1/alpha"), &big, None).await;
    assert_eq!((s, error_code(&v)), (413, "payload_too_large"));

    // Model down: 503 with Retry-After; not ready: 503 without calling it.
    let (s, h, v) = post_json(&format!("{b}/api/v1/gone"), &json!({"inputs": []}), None).await;
    assert_eq!((s, error_code(&v)), (503, "unavailable"));
    assert!(h.contains_key("retry-after"));
    gw.ready_flags[0].store(false, Ordering::SeqCst);
    let (s, h, v) = post_json(&format!("{b}/api/v1/alpha"), &json!({"inputs": []}), None).await;
    assert_eq!((s, error_code(&v)), (503, "unavailable"));
    assert!(h.contains_key("retry-after"));
    let r = http().get(format!("{b}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    gw.ready_flags[0].store(true, Ordering::SeqCst);
    gw.ready_flags[2].store(true, Ordering::SeqCst);
    let r = http().get(format!("{b}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http().get(format!("{b}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_analysis_reports_each_item() {
    let gw = start_gateway("", false).await;
    let body = json!({"requests": [
        {"model": "alpha", "input": {"inputs": [[1.0]]}},
        {"model": "gone", "input": {"inputs": [[2.0]]}},
        {"model": "nope", "input": {"inputs": [[3.0]]}},
        {"model": "alpha", "input": {"bad": true}},
        {"model": "slow", "input": {"inputs": [[4.0]]}},
    ]});
    let (s, _, v) = post_json(&format!("{}/api/v1/batch-analysis", gw.base), &body, None).await;
    assert_eq!(s, 200, "{v}");
    let statuses: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 503, 404, 422, 200]);
    assert_eq!(v["results"][0]["output"]["echo"], json!([[1.0]]));
    assert_eq!(v["results"][4]["output"]["model"], "slow");
    assert_eq!(v["results"][3]["error"]["code"], "invalid_input");
    let (s, _, v) = post_json(
        &format!("{}/api/v1/batch-analysis", gw.base),
        &json!({"requests": []}),
        None,
    )
    .await;
    assert_eq!((s, error_code(&v)), (422, "invalid_input"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_metrics_and_openapi() {
    let gw = start_gateway("", false).await;
    let b = &gw.base;
    let models: Value = http()
        .get(format!("{b}/api/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alpha = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "alpha")
        .unwrap();
    assert_eq!(alpha["metadata"]["name"], "alpha");
    assert_eq!(alpha["state"], "ready");
    let gone = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "gone")
        .unwrap();
    assert!(gone["metadata"].is_null());

    for _ in 0..3 {
        post_json(&format!("{b}/api/v1/alpha"), &json!({"inputs": []}), None).await;
    }
    let _ = http()
        .get(format!("{b}/some/random/path/12345"))
        .send()
        .await
        .unwrap();
    let text = http()
        .get(format!("{b}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"warden_http_requests_total{method="POST",route="/api/v1/{model}",status="200"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"warden_api_model_requests_total{model="alpha",status="200"} 3"#),
        "{text}"
    );
    assert!(!text.contains("12345"), "raw paths must not become labels");

    let doc: Value = http()
        .get(format!("{b}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    // One path per configured model, not a `{model}` template.
    assert!(doc["paths"].get("/api/v1/{model}").is_none());
    for path in [
        "/api/v1/alpha",
        "/api/v1/gone",
        "/api/v1/batch-analysis",
        "/api/v1/models",
        "/auth/token",
        "/auth/refresh",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/redoc",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    let page = http()
        .get(format!("{b}/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/openapi.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_503() {
    let gw = start_gateway("[api]\nmax_concurrency = 2\n", false).await;
    let url = format!("{}/api/v1/slow", gw.base);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post_json(&url, &json!({"inputs": []}), None).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (s, h, v) = t.await.unwrap();
        if s == 503 {
            assert_eq!(error_code(&v), "unavailable");
            assert!(h.contains_key("retry-after"));
        }
        statuses.push(s);
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        4,
        "{statuses:?}"
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(dir: &Path, claims: &Value) -> String {
    let pem = std::fs::read(dir.join("private.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &key,
    )
    .unwrap()
}

fn claims(sub: &str, role: &str) -> Value {
    let t = now();
    json!({"sub": sub, "role": role, "iss": "warden", "aud": "structural-design-api",
           "iat": t, "nbf": t, "exp": t + 900, "jti": "j1", "typ": "access"})
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_accepts_only_valid_tokens_with_the_right_role() {
    let gw = start_gateway("", true).await;
    let dir = gw.dir.path();
    let url = format!("{}/api/v1/alpha", gw.base);
    let body = json!({"inputs": []});
    let valid = sign(dir, &claims("alice", "user"));

    let mut bad: Vec<(&str, Option<String>)> =
        vec![("no token", None), ("garbage", Some("not.a.jwt".into()))];
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut c = claims("alice", "user");
        patch(&mut c);
        sign(dir, &c)
    };
    bad.push(("expired", Some(with(&|c| c["exp"] = json!(now() - 120)))));
    bad.push((
        "not yet valid",
        Some(with(&|c| c["nbf"] = json!(now() + 600))),
    ));
    bad.push((
        "wrong audience",
        Some(with(&|c| c["aud"] = json!("someone-else"))),
    ));
    bad.push(("wrong issuer", Some(with(&|c| c["iss"] = json!("evil")))));
    bad.push((
        "refresh token used as access",
        Some(with(&|c| c["typ"] = json!("refresh"))),
    ));
    let payload = b64(claims("alice", "admin").to_string().as_bytes());
    bad.push((
        "alg none",
        Some(format!(
            "{}.{payload}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#)
        )),
    ));
    let public = std::fs::read(dir.join("public.pem")).unwrap();
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("alice", "admin"),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    bad.push(("HS256 signed with the public key", Some(hs)));
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims("alice", "admin").to_string().as_bytes()),
        parts[2]
    );
    bad.push(("tampered payload", Some(tampered)));

    for (what, token) in &bad {
        let (s, h, v) = post_json(&url, &body, token.as_deref()).await;
        assert_eq!(s, 401, "{what}: {v}");
        assert!(h.contains_key("www-authenticate"), "{what}");
    }

    let (s, _, v) = post_json(&url, &body, Some(&sign(dir, &claims("victor", "viewer")))).await;
    assert_eq!(
        (s, error_code(&v)),
        (403, "forbidden"),
        "viewer may not call models"
    );
    let r = http()
        .get(format!("{}/metrics", gw.base))
        .bearer_auth(sign(dir, &claims("victor", "viewer")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "viewer may read metrics");
    let r = http()
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _, _) = post_json(&url, &body, Some(&valid)).await;
    assert_eq!(s, 200);
    let (s, _, _) = post_json(&url, &body, Some(&sign(dir, &claims("root", "admin")))).await;
    assert_eq!(s, 200, "admin may do everything");
}

fn warden(args: &[&str]) -> String {
    let out = std::process::Command::new(crate::support::warden_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_exchange_for_tokens_and_refresh_rotates() {
    let gw = start_gateway("", true).await;
    let config = gw.dir.path().join("warden.toml");
    let config = config.to_str().unwrap();
    // The operator tools: a key is printed once, a token is printed alone.
    let key = warden(&["keys", "add", "--config", config, "alice", "--role", "user"])
        .trim()
        .to_string();
    assert!(key.starts_with("wdn_"));
    let keys_file = std::fs::read_to_string(gw.dir.path().join("keys.toml")).unwrap();
    assert!(!keys_file.contains(&key));
    let op_token = warden(&[
        "token", "issue", "--config", config, "--sub", "ops", "--role", "admin",
    ]);
    assert_eq!(op_token.trim().split('.').count(), 3);

    // The gateway loads keys at start: a second one on the same config sees the new key.
    let b = &start_gateway_with_dir(gw.dir.path()).await;
    let (s, _, v) = post_json(
        &format!("{b}/auth/token"),
        &json!({"api_key": "wdn_00000000_wrong"}),
        None,
    )
    .await;
    assert_eq!((s, error_code(&v)), (401, "invalid_api_key"));
    let (s, _, pair) = post_json(&format!("{b}/auth/token"), &json!({"api_key": key}), None).await;
    assert_eq!(s, 200, "{pair}");
    let access = pair["access_token"].as_str().unwrap();
    let refresh1 = pair["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(pair["expires_in"], 900);
    let (s, _, _) = post_json(
        &format!("{b}/api/v1/alpha"),
        &json!({"inputs": []}),
        Some(access),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = post_json(
        &format!("{b}/api/v1/alpha"),
        &json!({"inputs": []}),
        Some(op_token.trim()),
    )
    .await;
    assert_eq!(
        s, 200,
        "operator token from `warden token issue` is accepted"
    );

    let (s, _, pair2) = post_json(
        &format!("{b}/auth/refresh"),
        &json!({"refresh_token": refresh1}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let refresh2 = pair2["refresh_token"].as_str().unwrap().to_string();
    // Reusing the rotated token fails and revokes the family, so the new one dies too.
    let (s, _, v) = post_json(
        &format!("{b}/auth/refresh"),
        &json!({"refresh_token": refresh1}),
        None,
    )
    .await;
    assert_eq!((s, error_code(&v)), (401, "invalid_refresh_token"));
    let (s, _, _) = post_json(
        &format!("{b}/auth/refresh"),
        &json!({"refresh_token": refresh2}),
        None,
    )
    .await;
    assert_eq!(s, 401, "the family was revoked by the reuse");
    // An access token is not a refresh token.
    let (s, _, _) = post_json(
        &format!("{b}/auth/refresh"),
        &json!({"refresh_token": access}),
        None,
    )
    .await;
    assert_eq!(s, 401);
}

/// A second gateway on the same config dir (keys file already written).
async fn start_gateway_with_dir(dir: &Path) -> String {
    let toml = std::fs::read_to_string(dir.join("warden.toml")).unwrap();
    let config = Config::parse(&dir.join("warden.toml"), &toml).unwrap();
    let alpha = start_model("alpha", Duration::ZERO).await;
    let directory = Directory(vec![("alpha".into(), alpha.port, alpha.ready.clone())]);
    let audit = dir.join("audit2/api.jsonl");
    serve_gateway(&config, directory, &audit, CancellationToken::new()).await
}

/// The gateway as the agent builds it, on a free port; returns its base URL.
async fn serve_gateway(
    config: &Config,
    directory: Directory,
    audit_path: &Path,
    shutdown: CancellationToken,
) -> String {
    let (audit, _writer) = AuditSink::start(audit_path).await.unwrap();
    serve_gateway_with(config, directory, audit, shutdown)
        .await
        .0
}

/// As [`serve_gateway`] with a given audit sink; also returns the gateway's state.
async fn serve_gateway_with(
    config: &Config,
    directory: Directory,
    audit: AuditSink,
    shutdown: CancellationToken,
) -> (String, Arc<api::AppState>) {
    let peers = api::Peers {
        directory: Arc::new(directory),
        audit,
        observer: None,
        extra_metrics: None,
    };
    let state = Arc::new(api::AppState::new(config, peers).unwrap());
    let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let origins = config.api.cors_origins.clone();
    let served = state.clone();
    tokio::spawn(async move { api::serve(listener, served, &origins, shutdown).await });
    (base, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_subject_answers_429_with_headers() {
    let gw = start_gateway("", true).await;
    let toml = std::fs::read_to_string(gw.dir.path().join("warden.toml")).unwrap()
        + "rate_limit_per_hour = 3\n";
    std::fs::write(gw.dir.path().join("warden.toml"), toml).unwrap();
    let base = start_gateway_with_dir(gw.dir.path()).await;
    let url = format!("{base}/api/v1/alpha");
    let alice = sign(gw.dir.path(), &claims("alice", "user"));
    for remaining in ["2", "1", "0"] {
        let (s, h, _) = post_json(&url, &json!({"inputs": []}), Some(&alice)).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], remaining);
    }
    let (s, h, v) = post_json(&url, &json!({"inputs": []}), Some(&alice)).await;
    assert_eq!((s, error_code(&v)), (429, "rate_limited"));
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 60 && retry <= 1200, "retry-after {retry}");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let bob = sign(gw.dir.path(), &claims("bob", "user"));
    let (s, _, _) = post_json(&url, &json!({"inputs": []}), Some(&bob)).await;
    assert_eq!(s, 200, "another subject has its own allowance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_exactly_one_audit_record() {
    let gw = start_gateway("", true).await;
    let b = gw.base.clone();
    let dir = gw.dir.path();
    let alice = sign(dir, &claims("alice", "user"));
    let viewer = sign(dir, &claims("victor", "viewer"));
    let mut sent = Vec::new();
    for i in 0..40 {
        let id = format!("audit-{i}");
        let req = match i % 8 {
            0 => http()
                .post(format!("{b}/api/v1/alpha"))
                .bearer_auth(&alice)
                .json(&json!({"inputs": [i]})),
            1 => http()
                .post(format!("{b}/api/v1/alpha"))
                .json(&json!({"inputs": []})),
            2 => http()
                .post(format!("{b}/api/v1/alpha"))
                .bearer_auth(&viewer)
                .json(&json!({"inputs": []})),
            3 => http().get(format!("{b}/health")),
            4 => http().get(format!("{b}/no/such/{i}")),
            5 => http()
                .post(format!("{b}/api/v1/gone"))
                .bearer_auth(&alice)
                .json(&json!({"inputs": []})),
            6 => http()
                .post(format!("{b}/api/v1/alpha"))
                .bearer_auth("garbage")
                .json(&json!({})),
            _ => http().get(format!("{b}/metrics")).bearer_auth(&viewer),
        };
        let r = req.header("x-request-id", &id).send().await.unwrap();
        sent.push((id, r.status().as_u16()));
    }
    let (text, records) = audit_records(&gw.audit_path, sent.len()).await;
    assert_eq!(records.len(), sent.len());
    for ((id, status), record) in sent.iter().zip(&records) {
        assert_eq!(record["request_id"], id.as_str());
        assert_eq!(record["status"], *status);
    }
    let ok = &records[0];
    assert_eq!(ok["subject"], "alice");
    assert_eq!(ok["role"], "user");
    assert_eq!(ok["route"], "/api/v1/{model}");
    assert_eq!(ok["model"], "alpha");
    assert_eq!(ok["outcome"], "success");
    assert!(ok["bytes_in"].as_u64().unwrap() > 0 && ok["bytes_out"].as_u64().unwrap() > 0);
    assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(records[1]["status"], 401);
    assert_eq!(records[2]["status"], 403);
    assert_eq!(records[4]["route"], "unmatched");
    assert!(
        !text.contains(&alice) && !text.contains("garbage"),
        "no token in the audit log"
    );
}

/// The audit file's text and records once it holds at least `count` (10 s bound).
async fn audit_records(path: &Path, count: usize) -> (String, Vec<Value>) {
    crate::support::net::wait_until_async(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.len() >= count).then_some((text, lines))
    })
    .await
    .expect("audit records written")
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is local on Linux), so
/// tests can be "another client address".
fn http_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn token_attempt(
    client: &reqwest::Client,
    base: &str,
    key: &str,
) -> (u16, Option<u64>, Value) {
    let r = client
        .post(format!("{base}/auth/token"))
        .json(&json!({"api_key": key}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_is_brute_force_limited_per_address_and_per_key_id() {
    let gw = start_gateway("", true).await;
    let config = gw.dir.path().join("warden.toml");
    let key = warden(&[
        "keys",
        "add",
        "--config",
        config.to_str().unwrap(),
        "alice",
        "--role",
        "user",
    ])
    .trim()
    .to_string();
    let b = &start_gateway_with_dir(gw.dir.path()).await;

    // One address guessing random keys: refused long before 60 tries.
    let attacker = http_from("127.0.0.1");
    let mut refused_at = None;
    for i in 1..=60 {
        let (s, retry, v) = token_attempt(&attacker, b, &format!("wdn_{i:08x}_guess")).await;
        if s == 429 {
            assert_eq!(error_code(&v), "rate_limited");
            assert!(retry.is_some_and(|r| r >= 1), "429 carries Retry-After");
            refused_at = Some(i);
            break;
        }
        assert_eq!((s, error_code(&v)), (401, "invalid_api_key"));
    }
    let refused_at = refused_at.expect("no 429 within 60 wrong keys");
    assert!(refused_at <= 15, "first 429 only at attempt {refused_at}");
    // Still refused, even with the right key, from that address.
    assert_eq!(token_attempt(&attacker, b, &key).await.0, 429);
    // The right key from another address works.
    let (s, _, pair) = token_attempt(&http_from("127.0.0.2"), b, &key).await;
    assert_eq!(s, 200, "{pair}");

    // Guesses on alice's key id spread over many addresses (each under its own limit) lock
    // that key id: the per-key limit counts every attempt on it, from anywhere.
    let id = key.split('_').nth(1).unwrap().to_string();
    let mut key_refused = None;
    'outer: for host in 3..40 {
        let client = http_from(&format!("127.0.0.{host}"));
        for _ in 0..3 {
            let (s, _, v) = token_attempt(&client, b, &format!("wdn_{id}_guess")).await;
            if s == 429 {
                assert_eq!(error_code(&v), "rate_limited");
                key_refused = Some(host);
                break 'outer;
            }
            assert_eq!(s, 401);
        }
    }
    let host = key_refused.expect("the key id was never locked");
    assert!(host < 12, "key-id limit reached only at address .{host}");
    // Other key ids from a fresh address are unaffected.
    let (s, _, _) = token_attempt(&http_from("127.0.0.50"), b, "wdn_0badc0de_guess").await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_analysis_costs_one_rate_limit_token_per_item() {
    let gw = start_gateway("", true).await;
    let toml = std::fs::read_to_string(gw.dir.path().join("warden.toml")).unwrap()
        + "rate_limit_per_hour = 10\n";
    std::fs::write(gw.dir.path().join("warden.toml"), toml).unwrap();
    let base = start_gateway_with_dir(gw.dir.path()).await;
    let alice = sign(gw.dir.path(), &claims("alice", "user"));
    let batch = |n: usize| json!({"requests": (0..n).map(|i| json!({"model": "alpha", "input": {"inputs": [i]}})).collect::<Vec<_>>()});
    let url = format!("{base}/api/v1/batch-analysis");
    let (s, h, v) = post_json(&url, &batch(4), Some(&alice)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 4);
    assert_eq!(h["x-ratelimit-remaining"], "6", "4 items cost 4 of 10");
    // 7 items do not fit in the 6 left (1 charged on entry, 6 more refused): 429.
    let (s, h, v) = post_json(&url, &batch(7), Some(&alice)).await;
    assert_eq!((s, error_code(&v)), (429, "rate_limited"));
    assert!(h.contains_key("retry-after"));
    // The refused batch ran no item: 5 tokens are left for single calls.
    let single = format!("{base}/api/v1/alpha");
    let (s, h, _) = post_json(&single, &json!({"inputs": []}), Some(&alice)).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-ratelimit-remaining"], "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_trail_refuses_with_503_before_calling_the_model() {
    warden::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let alpha = start_model("alpha", Duration::ZERO).await;
    let config = Config::parse(&dir.path().join("warden.toml"), "").unwrap();
    let audit_path = dir.path().join("api.jsonl");
    // Every write fails with ENOSPC, as on a full state dir.
    std::os::unix::fs::symlink("/dev/full", &audit_path).unwrap();
    let options = api::audit::AuditOptions {
        buffer_bytes: 64 * 1024,
        ..Default::default()
    };
    let (audit, _writer) = AuditSink::start_with(&audit_path, None, options)
        .await
        .unwrap();
    let directory = Directory(vec![("alpha".into(), alpha.port, alpha.ready.clone())]);
    let shutdown = CancellationToken::new();
    let (b, _state) = serve_gateway_with(&config, directory, audit.clone(), shutdown.clone()).await;

    let mut answered = Vec::new();
    let mut refused = Vec::new();
    for i in 0..2000 {
        let id = format!("full-{i}");
        let r = http()
            .post(format!("{b}/api/v1/alpha"))
            .header("x-request-id", &id)
            .json(&json!({"inputs": [i]}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => answered.push(id),
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                let v: Value = r.json().await.unwrap();
                assert_eq!(error_code(&v), "audit_unavailable");
                refused.push(id);
                if refused.len() >= 20 {
                    break;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        refused.len() >= 20,
        "never refused; {} answered",
        answered.len()
    );
    assert!(!answered.is_empty(), "the buffer held some records first");
    assert_eq!(
        alpha.hits.load(Ordering::SeqCst),
        answered.len(),
        "a refused request never reached the model"
    );
    // Liveness stays answerable while refusing.
    let r = http().get(format!("{b}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Space is back: the held records land, in order, and requests are served again.
    std::fs::remove_file(&audit_path).unwrap();
    std::fs::write(&audit_path, b"").unwrap();
    audit.reopen();
    let drained = crate::support::net::wait_until_async(Duration::from_secs(10), || async {
        (audit.pending_bytes() == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "buffered records not written");
    let (s, _, _) = post_json(&format!("{b}/api/v1/alpha"), &json!({"inputs": []}), None).await;
    assert_eq!(s, 200);
    let text = std::fs::read_to_string(&audit_path).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["route"] == "/api/v1/{model}" && r["status"] == 200)
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids[..answered.len()],
        answered[..],
        "every answered request audited, in order"
    );
    assert!(
        refused
            .iter()
            .all(|id| !text.contains(&format!("\"{id}\"")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_once_draining() {
    warden::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let alpha = start_model("alpha", Duration::ZERO).await;
    let config = Config::parse(&dir.path().join("warden.toml"), "").unwrap();
    let (audit, _writer) = AuditSink::start(&dir.path().join("api.jsonl"))
        .await
        .unwrap();
    let directory = Directory(vec![("alpha".into(), alpha.port, alpha.ready.clone())]);
    let (b, state) = serve_gateway_with(&config, directory, audit, CancellationToken::new()).await;
    let r = http().get(format!("{b}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    state.draining.cancel();
    let r = http().get(format!("{b}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["ready"].clone(), v["draining"].clone()),
        (json!(false), json!(true))
    );
}

/// A bare HTTP/1.1 model on 127.0.0.1 that answers every `/infer` with `{"ok":true}` and
/// closes each connection after `per_connection` answers without saying so (no
/// `Connection: close`), as a restarting model or an idle timeout does. Counts connections.
async fn start_closing_model(per_connection: usize) -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                for _ in 0..per_connection {
                    // One request: headers, then Content-Length bytes of body.
                    let (head_end, length) = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..at]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (at + 4, length);
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buffer.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buffer.drain(..head_end + length);
                    let body = br#"{"ok":true}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err()
                        || stream.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
                // Dropped: closed without notice.
            });
        }
    });
    (port, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_keeps_its_model_connection_and_recovers_when_the_model_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&dir.path().join("warden.toml"), "").unwrap();
    let (keeping, kept_connections) = start_closing_model(usize::MAX).await;
    let (closing, closing_connections) = start_closing_model(3).await;
    let directory = Directory(vec![
        ("keeping".into(), keeping, Arc::new(AtomicBool::new(true))),
        ("closing".into(), closing, Arc::new(AtomicBool::new(true))),
    ]);
    let base = serve_gateway(
        &config,
        directory,
        &dir.path().join("audit/api.jsonl"),
        CancellationToken::new(),
    )
    .await;
    // Exactly one client connection, requests one after another.
    let address = base.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut client, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for model in ["keeping", "closing"] {
        for i in 0..30 {
            client.ready().await.unwrap();
            let request = axum::http::Request::post(format!("/api/v1/{model}"))
                .header("host", &address)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(axum::body::Bytes::from(
                    json!({"inputs": [i]}).to_string(),
                )))
                .unwrap();
            let response = client.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(
                (status, String::from_utf8_lossy(&body).as_ref()),
                (200, r#"{"ok":true}"#),
                "{model} call {i}"
            );
        }
    }
    assert_eq!(
        kept_connections.load(Ordering::SeqCst),
        1,
        "30 calls over one client connection reuse one model connection"
    );
    assert_eq!(
        closing_connections.load(Ordering::SeqCst),
        10,
        "a model closing after every third answer is reconnected to, no call lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_an_api_client_get_the_same_answers_and_audit_records() {
    // API clients' inference calls take the gateway's fast path; a browser's (it sends
    // `Origin`) go through the router's layers. Both must answer and audit alike.
    let origin = "https://console.example";
    let gw = start_gateway(&format!("[api]\ncors_origins = [\"{origin}\"]\n"), true).await;
    let (b, dir) = (&gw.base, gw.dir.path());
    let alice = sign(dir, &claims("alice", "user"));
    let viewer = sign(dir, &claims("victor", "viewer"));
    let cases: Vec<(&str, Option<&str>, &str, &str)> = vec![
        (
            "alpha",
            Some(&alice),
            "application/json",
            r#"{"inputs":[1]}"#,
        ),
        ("alpha", None, "application/json", r#"{"inputs":[1]}"#),
        (
            "alpha",
            Some(&viewer),
            "application/json",
            r#"{"inputs":[1]}"#,
        ),
        ("alpha", Some(&alice), "text/plain", r#"{"inputs":[1]}"#),
        ("alpha", Some(&alice), "application/json", r#"{"wrong":1}"#),
        (
            "nope",
            Some(&alice),
            "application/json",
            r#"{"inputs":[1]}"#,
        ),
        (
            "gone",
            Some(&alice),
            "application/json",
            r#"{"inputs":[1]}"#,
        ),
    ];
    let mut answers = [Vec::new(), Vec::new()];
    for (side, with_origin) in [false, true].into_iter().enumerate() {
        for (i, (model, token, content_type, body)) in cases.iter().enumerate() {
            let mut req = http()
                .post(format!("{b}/api/v1/{model}"))
                .header("content-type", *content_type)
                .header("x-request-id", format!("side{side}-{i}"))
                .body(body.to_string());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if with_origin {
                req = req.header("origin", origin);
            }
            let r = req.send().await.unwrap();
            let headers = r.headers().clone();
            assert_eq!(headers["x-request-id"], format!("side{side}-{i}").as_str());
            assert_eq!(
                headers.get("access-control-allow-origin").is_some(),
                with_origin,
                "CORS answers only the browser"
            );
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            let mut body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            // The echo model repeats the request id, which differs by design.
            if let Some(o) = body.as_object_mut() {
                o.remove("request_id");
            }
            answers[side].push((
                status,
                body,
                headers.get("x-ratelimit-limit").is_some(),
                headers.get("retry-after").is_some(),
            ));
        }
    }
    assert_eq!(answers[0], answers[1]);
    let statuses: Vec<u16> = answers[0].iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 401, 403, 415, 422, 404, 503]);

    let (_, records) = audit_records(&gw.audit_path, 2 * cases.len()).await;
    let comparable = |r: &Value| {
        let mut r = r.clone();
        for volatile in [
            "time",
            "latency_ms",
            "request_id",
            "interaction_id",
            "client",
        ] {
            r.as_object_mut().unwrap().remove(volatile);
        }
        r
    };
    for i in 0..cases.len() {
        let find = |side: usize| {
            records
                .iter()
                .find(|r| r["request_id"] == format!("side{side}-{i}").as_str())
                .map(comparable)
                .unwrap_or_else(|| panic!("no audit record for side {side} case {i}"))
        };
        let (api_client, browser) = (find(0), find(1));
        assert_eq!(api_client["route"], "/api/v1/{model}");
        assert_eq!(api_client, browser, "case {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_request_id_reaches_the_model_and_the_caller() {
    let gw = start_gateway("", false).await;
    let r = http()
        .post(format!("{}/api/v1/alpha", gw.base))
        .json(&json!({"inputs": []}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(v["request_id"], id.as_str(), "the model saw the same id");
}

//! The API reference as a user meets it: `/openapi.json` with one operation per built-in model
//! (its request and response JSON Schemas, published by the model process), and `/docs`
//! (Swagger UI) and `/redoc` rendered by headless Chromium with every host but 127.0.0.1
//! unresolvable, so a page that needed a CDN would stay blank.

use crate::support::agent::TestAgent;
use crate::support::moto::plain_http;
use crate::support::net::free_port;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn five_models() -> TestAgent {
    let mut builder = TestAgent::builder();
    for (name, _) in warden::config::DEFAULT_MODELS {
        builder = builder.model(format!(
            "[[models]]\nname = \"{name}\"\nport = {}\nthreads = 1\n",
            free_port()
        ));
    }
    let agent = builder.start();
    agent.wait_ready(Duration::from_secs(180));
    agent
}

/// The page's DOM after its scripts ran, as Chromium sees it with no way off the host.
fn rendered_dom(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium (scripts/setup.sh installs the Debian package)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn openapi_has_one_operation_per_model_with_the_schemas_its_parser_enforces() {
    let agent = five_models();
    let (status, body) = plain_http::fetch(&agent.url("/openapi.json")).unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["paths"].get("/api/v1/{model}").is_none());
    for (name, _) in warden::config::DEFAULT_MODELS {
        let op = &doc["paths"][format!("/api/v1/{name}")]["post"];
        assert!(op.is_object(), "no operation for {name}");
        let body = &op["requestBody"]["content"]["application/json"];
        let schema = &body["schema"];
        assert_eq!(schema["type"], "object", "{name}: {schema}");
        let properties = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: request schema has no properties: {schema}"));
        // The example is a valid request: every one of its fields is in the schema.
        let example = body["example"].as_object().unwrap();
        for field in example.keys() {
            assert!(
                properties.contains_key(field),
                "{name}: {field} undocumented"
            );
        }
        assert!(
            body.to_string().contains("minimum") || body.to_string().contains("enum"),
            "{name}: the schema carries no bounds: {schema}"
        );
        let response = &op["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(response["type"], "object", "{name}: {response}");
        assert!(op["responses"].get("422").is_some());
    }

    // The documented example is accepted through the public route, a value past a documented
    // bound is a 422 naming its path.
    let op = &doc["paths"]["/api/v1/risk-analyzer"]["post"]["requestBody"]["content"]["application/json"];
    let example = op["example"].to_string();
    let url = agent.url("/api/v1/risk-analyzer");
    let ok = post(&url, &example);
    assert_eq!(ok.0, 200, "{}", ok.1);
    let schema = &op["schema"];
    let (field, limit) = schema["properties"]
        .as_object()
        .unwrap()
        .iter()
        .find_map(|(k, v)| v["maximum"].as_f64().map(|m| (k.clone(), m)))
        .expect("a bounded number field");
    let mut bad: Value = op["example"].clone();
    bad[&field] = serde_json::json!(limit * 10.0 + 1.0);
    let (status, body) = post(&url, &bad.to_string());
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(&field), "{body}");
}

fn post(url: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data-binary", body, url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn docs_and_redoc_render_offline_with_the_five_model_operations() {
    let agent = five_models();
    let swagger = rendered_dom(&agent.url("/docs"));
    for (name, _) in warden::config::DEFAULT_MODELS {
        assert!(
            swagger.contains(&format!("data-path=\"/api/v1/{name}\"")),
            "Swagger UI shows no operation for {name}:\n{swagger:.3000}"
        );
    }
    assert!(swagger.contains("opblock-post"), "{swagger:.3000}");

    let redoc = rendered_dom(&agent.url("/redoc"));
    for (name, _) in warden::config::DEFAULT_MODELS {
        let operation = format!("operation/infer_{}", name.replace('-', "_"));
        assert!(
            redoc.contains(&operation),
            "Redoc shows no {operation}:\n{redoc:.3000}"
        );
    }
}

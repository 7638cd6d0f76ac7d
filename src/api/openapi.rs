//! The OpenAPI 3.1 document, generated from the handlers (utoipa), and the `/docs` page.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "warden inference API", description = "Structural-design model inference behind the warden agent."),
    paths(
        super::routes::health, super::routes::ready, super::routes::metrics, super::routes::list_models,
        super::routes::infer, super::routes::batch, super::routes::token, super::routes::refresh,
        super::routes::openapi_json, super::routes::docs
    ),
    modifiers(&BearerAuth),
    tags((name = "models"), (name = "auth"), (name = "agent"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document, with the configured model names as the `{model}` parameter's enum so
/// clients (and fuzzers) see exactly which models this agent serves.
pub fn document_json(models: &[String]) -> Result<String, String> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).map_err(|e| e.to_string())?;
    if let Some(params) = doc
        .pointer_mut("/paths/~1api~1v1~1{model}/post/parameters")
        .and_then(|p| p.as_array_mut())
    {
        for p in params.iter_mut().filter(|p| p["name"] == "model") {
            p["schema"]["enum"] = serde_json::json!(models);
        }
    }
    serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
}

/// Loads the renderer when viewed, so the build downloads nothing.
pub const DOCS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>warden API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
<noscript>The machine-readable reference is at <a href="/openapi.json">/openapi.json</a>.</noscript>
</body></html>"#;

//! The API reference pages, Swagger UI at `/docs` and Redoc at `/redoc`, served from assets
//! compiled into the binary so they work on a host without internet access.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::sync::{Arc, LazyLock};

/// Swagger UI's own configuration (`/docs/swagger-initializer.js`, used by `/docs/index.html`).
static SWAGGER_CONFIG: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> =
    LazyLock::new(|| Arc::new(utoipa_swagger_ui::Config::new(["/openapi.json"])));

/// `/docs`: the Swagger UI page, loading its assets from `/docs/...` and the document from
/// `/openapi.json` (absolute paths, so `/docs` and `/docs/` both work).
pub const SWAGGER_PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>warden API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
</head><body>
<div id="swagger-ui"></div>
<noscript>The machine-readable reference is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout"
});
</script>
</body></html>"##;

/// `/redoc`: Redoc reading `/openapi.json`, with no web fonts (they would come from a CDN).
pub const REDOC_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>warden API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body { margin: 0; padding: 0; }</style>
</head><body>
<redoc spec-url="/openapi.json"></redoc>
<noscript>The machine-readable reference is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="/redoc/redoc.standalone.js"></script>
</body></html>"#;

/// Redoc's standalone bundle (npm `redoc@2.5.2`, see `assets/redoc/README.md`).
const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

#[utoipa::path(get, path = "/docs", tag = "agent", responses((status = 200, description = "API reference (Swagger UI), served offline", content_type = "text/html")))]
pub async fn swagger_page() -> Html<&'static str> {
    Html(SWAGGER_PAGE)
}

/// One of Swagger UI's files (`swagger-ui-bundle.js`, `swagger-ui.css`, ...).
pub async fn swagger_asset(Path(file): Path<String>) -> Response {
    match utoipa_swagger_ui::serve(&file, SWAGGER_CONFIG.clone()) {
        Ok(Some(asset)) => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, asset.content_type),
                    (header::CACHE_CONTROL, "public, max-age=3600".to_string()),
                ],
                asset.bytes.into_owned(),
            )
                .into_response();
            if asset.gzpipped {
                response
                    .headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Ok(None) => super::error::ApiError::NotFound {
            what: "file",
            name: format!("/docs/{file}"),
        }
        .into_response(),
        Err(e) => super::error::ApiError::Internal(format!("swagger ui asset {file}: {e}"))
            .into_response(),
    }
}

#[utoipa::path(get, path = "/redoc", tag = "agent", responses((status = 200, description = "API reference (Redoc), served offline", content_type = "text/html")))]
pub async fn redoc_page() -> Html<&'static str> {
    Html(REDOC_PAGE)
}

pub async fn redoc_js() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/javascript"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        REDOC_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_load_nothing_from_outside_the_agent() {
        for page in [SWAGGER_PAGE, REDOC_PAGE] {
            for attr in ["src=\"", "href=\""] {
                for link in page.split(attr).skip(1) {
                    assert!(link.starts_with('/'), "external reference {link:.40}");
                }
            }
        }
    }

    #[test]
    fn swagger_ui_assets_are_compiled_in() {
        for file in [
            "swagger-ui-bundle.js",
            "swagger-ui-standalone-preset.js",
            "swagger-ui.css",
        ] {
            let asset = utoipa_swagger_ui::serve(file, SWAGGER_CONFIG.clone())
                .unwrap()
                .unwrap_or_else(|| panic!("{file} missing"));
            assert!(
                asset.bytes.len() > 1000,
                "{file} is {} bytes",
                asset.bytes.len()
            );
        }
        let initializer =
            utoipa_swagger_ui::serve("swagger-initializer.js", SWAGGER_CONFIG.clone())
                .unwrap()
                .unwrap();
        assert!(String::from_utf8_lossy(&initializer.bytes).contains("/openapi.json"));
        assert!(REDOC_JS.len() > 100_000);
    }
}

//! The OpenAPI 3.1 document: the gateway's routes from the handlers (utoipa), and one path per
//! model from the schemas the model processes publish.

use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "warden inference API", description = "Structural-design model inference behind the warden agent."),
    paths(
        super::routes::health, super::routes::ready, super::routes::metrics, super::routes::list_models,
        super::routes::infer, super::routes::batch, super::routes::token, super::routes::refresh,
        super::routes::openapi_json, super::docs::swagger_page, super::docs::redoc_page
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

/// The generic model operation the handlers declare; [`document`] turns it into one path per model.
const MODEL_PATH_TEMPLATE: &str = "/api/v1/{model}";

/// One configured model and what it published on `/metadata` (None: never answered yet).
pub struct ModelDoc<'a> {
    pub name: &'a str,
    pub metadata: Option<&'a Value>,
}

/// The document: the gateway's own routes, plus one `POST /api/v1/<model>` path per model whose
/// request and response schemas are the JSON Schemas the model process publishes (generated
/// there from the definitions its parser enforces), with its example.
pub fn document(models: &[ModelDoc<'_>]) -> Result<Value, serde_json::Error> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())?;
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return Ok(doc);
    };
    if models.is_empty() {
        return Ok(doc);
    }
    let Some(template) = paths
        .remove(MODEL_PATH_TEMPLATE)
        .and_then(|item| item.get("post").cloned())
    else {
        return Ok(doc);
    };
    for model in models {
        paths.insert(
            format!("/api/v1/{}", model.name),
            json!({ "post": model_operation(&template, model) }),
        );
    }
    let names: Vec<&str> = models.iter().map(|m| m.name).collect();
    if let Some(field) = doc.pointer_mut("/components/schemas/BatchItem/properties/model") {
        field["enum"] = json!(names);
    }
    Ok(doc)
}

/// The template operation specialised to one model.
fn model_operation(template: &Value, model: &ModelDoc<'_>) -> Value {
    let mut op = template.clone();
    if let Some(op) = op.as_object_mut() {
        op.remove("parameters");
        op.insert(
            "operationId".into(),
            json!(format!("infer_{}", model.name.replace(['-', '.'], "_"))),
        );
        let summary = model
            .metadata
            .and_then(|m| m.get("description"))
            .and_then(Value::as_str)
            .map_or_else(|| format!("Run {}", model.name), str::to_string);
        op.insert("summary".into(), json!(summary));
        op.insert("description".into(), json!(describe(model)));
    }
    let meta = model.metadata;
    let request = meta.and_then(|m| json_schema(m.get("input_schema")));
    let response = meta.and_then(|m| json_schema(m.get("output_schema")));
    let mut body = json!({ "schema": request.unwrap_or_else(|| json!({"type": "object"})) });
    if let Some(example) = meta.and_then(|m| m.get("example")) {
        body["example"] = example.clone();
    }
    op["requestBody"] = json!({ "required": true, "content": { "application/json": body } });
    if let Some(schema) = response
        && let Some(ok) = op.pointer_mut("/responses/200")
    {
        ok["content"] = json!({ "application/json": { "schema": schema } });
    }
    op
}

fn describe(model: &ModelDoc<'_>) -> String {
    match model.metadata {
        None => format!(
            "{} has not described itself yet (its process has not answered /metadata); \
             the body is passed to it as is.",
            model.name
        ),
        Some(meta) => {
            let version = meta.get("version").and_then(Value::as_str).unwrap_or("?");
            let mut text = format!("Model {} version {version}.", model.name);
            if let Some(card) = meta.get("model_card") {
                if let Some(teacher) = card.pointer("/teacher/name").and_then(Value::as_str) {
                    text.push_str(&format!(
                        " Trained on the reference calculation: {teacher}."
                    ));
                }
                text.push_str(" The model card is in `GET /api/v1/models`.");
            }
            text.push_str(
                " Inputs outside the trained ranges are answered with a `warnings` list.",
            );
            text
        }
    }
}

/// A published schema usable as an OpenAPI 3.1 (JSON Schema 2020-12) schema, without the
/// `$schema`/`$id` keywords that only belong at a document's root.
fn json_schema(published: Option<&Value>) -> Option<Value> {
    let mut schema = published?.as_object()?.clone();
    if !schema.get("type").is_some_and(Value::is_string) && !schema.contains_key("oneOf") {
        return None;
    }
    schema.remove("$schema");
    schema.remove("$id");
    Some(Value::Object(schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> Value {
        json!({
            "name": "beam", "version": "3", "description": "Sizes a beam",
            "input_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object", "required": ["span_m"], "additionalProperties": false,
                "properties": {"span_m": {"type": "number", "minimum": 1, "maximum": 30}}
            },
            "output_schema": {"type": "object", "properties": {"section": {"type": "string"}}},
            "example": {"span_m": 6.0},
            "model_card": {"teacher": {"name": "EN 1993-1-1 bending"}}
        })
    }

    #[test]
    fn each_model_gets_its_own_path_with_its_schemas_and_example() {
        let meta = published();
        let doc = document(&[
            ModelDoc {
                name: "beam",
                metadata: Some(&meta),
            },
            ModelDoc {
                name: "silent",
                metadata: None,
            },
        ])
        .unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(!paths.contains_key(MODEL_PATH_TEMPLATE));
        let op = &paths["/api/v1/beam"]["post"];
        assert_eq!(op["operationId"], "infer_beam");
        assert_eq!(op["summary"], "Sizes a beam");
        let body = &op["requestBody"]["content"]["application/json"];
        assert_eq!(body["schema"]["properties"]["span_m"]["maximum"], 30);
        assert!(body["schema"].get("$schema").is_none());
        assert_eq!(body["example"]["span_m"], 6.0);
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["section"]
                ["type"],
            "string"
        );
        // The documented errors stay on every model's operation.
        for status in ["401", "422", "429", "503"] {
            assert!(op["responses"].get(status).is_some(), "{status} missing");
        }
        assert!(op["description"].as_str().unwrap().contains("EN 1993-1-1"));
        let silent = &paths["/api/v1/silent"]["post"];
        assert_eq!(
            silent["requestBody"]["content"]["application/json"]["schema"]["type"],
            "object"
        );
        assert_eq!(
            doc["components"]["schemas"]["BatchItem"]["properties"]["model"]["enum"],
            json!(["beam", "silent"])
        );
    }

    #[test]
    fn a_description_that_is_not_json_schema_is_not_passed_off_as_one() {
        let meta = json!({"input_schema": {"span_m": "number 1..30"}});
        let doc = document(&[ModelDoc {
            name: "old",
            metadata: Some(&meta),
        }])
        .unwrap();
        let schema = &doc["paths"]["/api/v1/old"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(schema, &json!({"type": "object"}));
    }
}

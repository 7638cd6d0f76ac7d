//! Declarative field definitions: one per request/response field, read both by the parsers and by
//! the JSON Schema (draft 2020-12) generator, so the documented schema cannot drift from what
//! `/infer` enforces.
//!
//! A numeric field may carry the range its model was trained on (`trained`): a value inside the
//! hard bounds but outside that range is accepted and reported in the item's `warnings`, never
//! silently extrapolated. The model card's `trained_ranges` are generated from the same list.

use crate::schema::{self, SchemaError, join};
use serde_json::{Map, Value, json};

/// The type and hard bounds of a field.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A finite number in `[min, max]` (an infinite bound is omitted from the schema).
    Number {
        min: f64,
        max: f64,
    },
    /// A whole number in `[min, max]`.
    Integer {
        min: i64,
        max: i64,
    },
    Boolean,
    /// One string of a fixed list.
    Enum(&'static [&'static str]),
    /// A non-blank string of at most `max_chars` characters.
    Text {
        max_chars: usize,
    },
    /// An object with exactly these members (unknown members are errors).
    Object(&'static [Field]),
    /// An array of `min_items..=max_items` elements of one kind.
    Array {
        items: &'static Kind,
        min_items: usize,
        max_items: usize,
    },
    /// A nested numeric array of exactly `shape`, each value in `[min, max]`.
    Grid {
        shape: &'static [usize],
        min: f64,
        max: f64,
    },
    /// The kind, or `null` (outputs only).
    Nullable(&'static Kind),
}

/// One named field of an object.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// What it is, with its unit.
    pub description: &'static str,
    /// The range the shipped weights were trained on (numeric fields only).
    pub trained: Option<(f64, f64)>,
}

impl Field {
    pub const fn new(name: &'static str, kind: Kind, description: &'static str) -> Field {
        Field {
            name,
            kind,
            description,
            trained: None,
        }
    }

    pub const fn number(
        name: &'static str,
        min: f64,
        max: f64,
        description: &'static str,
    ) -> Field {
        Field::new(name, Kind::Number { min, max }, description)
    }

    pub const fn integer(
        name: &'static str,
        min: i64,
        max: i64,
        description: &'static str,
    ) -> Field {
        Field::new(name, Kind::Integer { min, max }, description)
    }

    /// The same field with the range the model was trained on.
    pub const fn trained(mut self, lo: f64, hi: f64) -> Field {
        self.trained = Some((lo, hi));
        self
    }

    /// The trained range, or the hard bounds when the field has none.
    pub fn trained_or_bounds(&self) -> (f64, f64) {
        match (self.trained, self.kind) {
            (Some(r), _) => r,
            (None, Kind::Number { min, max }) => (min, max),
            (None, Kind::Integer { min, max }) => (min as f64, max as f64),
            _ => (0.0, 0.0),
        }
    }

    fn warn_if_untrained(&self, at: &str, x: f64, warnings: &mut Vec<String>) {
        if let Some((lo, hi)) = self.trained
            && (x < lo || x > hi)
        {
            warnings.push(format!("{at} {x} is outside the trained range {lo}..{hi}"));
        }
    }

    /// Reads this (number) field of `map` at `path`.
    pub fn read_number(
        &self,
        map: &Map<String, Value>,
        path: &str,
        warnings: &mut Vec<String>,
    ) -> Result<f32, SchemaError> {
        let (min, max) = match self.kind {
            Kind::Number { min, max } => (min, max),
            _ => return Err(self.misuse(path)),
        };
        let at = join(path, self.name);
        let x = schema::number(
            schema::field(map, path, self.name)?,
            &at,
            min as f32,
            max as f32,
        )?;
        self.warn_if_untrained(&at, x as f64, warnings);
        Ok(x)
    }

    /// Reads this (integer) field of `map` at `path`.
    pub fn read_integer(
        &self,
        map: &Map<String, Value>,
        path: &str,
        warnings: &mut Vec<String>,
    ) -> Result<i64, SchemaError> {
        let (min, max) = match self.kind {
            Kind::Integer { min, max } => (min, max),
            _ => return Err(self.misuse(path)),
        };
        let i = schema::integer_field(map, path, self.name, min, max)?;
        self.warn_if_untrained(&join(path, self.name), i as f64, warnings);
        Ok(i)
    }

    pub fn read_bool(&self, map: &Map<String, Value>, path: &str) -> Result<bool, SchemaError> {
        schema::bool_field(map, path, self.name)
    }

    /// Reads this (enum) field: the index of the chosen value.
    pub fn read_choice(&self, map: &Map<String, Value>, path: &str) -> Result<usize, SchemaError> {
        let Kind::Enum(values) = self.kind else {
            return Err(self.misuse(path));
        };
        let at = join(path, self.name);
        schema::field(map, path, self.name)?
            .as_str()
            .and_then(|s| values.iter().position(|c| *c == s))
            .ok_or_else(|| {
                SchemaError::new(
                    at,
                    "invalid_value",
                    format!("must be one of {}", values.join(", ")),
                )
            })
    }

    pub fn read_text<'a>(
        &self,
        map: &'a Map<String, Value>,
        path: &str,
    ) -> Result<&'a str, SchemaError> {
        let Kind::Text { max_chars } = self.kind else {
            return Err(self.misuse(path));
        };
        schema::string_field(map, path, self.name, max_chars)
    }

    pub fn read_array<'a>(
        &self,
        map: &'a Map<String, Value>,
        path: &str,
    ) -> Result<&'a Vec<Value>, SchemaError> {
        let Kind::Array {
            min_items,
            max_items,
            ..
        } = self.kind
        else {
            return Err(self.misuse(path));
        };
        schema::array_field(map, path, self.name, min_items, max_items)
    }

    /// Reads this (object) field: its members, unknown ones rejected.
    pub fn read_object<'a>(
        &self,
        map: &'a Map<String, Value>,
        path: &str,
    ) -> Result<&'a Map<String, Value>, SchemaError> {
        let Kind::Object(fields) = self.kind else {
            return Err(self.misuse(path));
        };
        object(
            schema::field(map, path, self.name)?,
            &join(path, self.name),
            fields,
        )
    }

    /// Flattens this (grid) field into `out`.
    pub fn read_grid(
        &self,
        map: &Map<String, Value>,
        path: &str,
        out: &mut Vec<f32>,
    ) -> Result<(), SchemaError> {
        let Kind::Grid { shape, min, max } = self.kind else {
            return Err(self.misuse(path));
        };
        schema::tensor_of_shape(
            schema::field(map, path, self.name)?,
            &join(path, self.name),
            shape,
            min as f32,
            max as f32,
            out,
        )
    }

    // A definition read with the wrong accessor is a programming error; report it as a 422
    // naming the field rather than panicking in the server.
    fn misuse(&self, path: &str) -> SchemaError {
        SchemaError::new(
            join(path, self.name),
            "internal",
            "field definition does not match its reader",
        )
    }
}

/// `value` as an object with exactly the members `fields` define.
pub fn object<'a>(
    value: &'a Value,
    path: &str,
    fields: &[Field],
) -> Result<&'a Map<String, Value>, SchemaError> {
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    schema::object(value, path, &names)
}

/// The field named `name` in `fields` (for readers that look one up by name).
pub fn find<'a>(fields: &'a [Field], name: &str) -> Option<&'a Field> {
    fields.iter().find(|f| f.name == name)
}

/// JSON Schema (draft 2020-12) of one kind.
pub fn kind_schema(kind: &Kind) -> Value {
    match *kind {
        Kind::Number { min, max } => {
            let mut s = json!({"type": "number"});
            if min.is_finite() {
                s["minimum"] = json!(min);
            }
            if max.is_finite() {
                s["maximum"] = json!(max);
            }
            s
        }
        Kind::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::Boolean => json!({"type": "boolean"}),
        Kind::Enum(values) => json!({"type": "string", "enum": values}),
        Kind::Text { max_chars } => {
            let mut s = json!({"type": "string", "minLength": 1});
            if max_chars < usize::MAX {
                s["maxLength"] = json!(max_chars);
            }
            s
        }
        Kind::Object(fields) => object_schema(fields),
        Kind::Array {
            items,
            min_items,
            max_items,
        } => {
            let mut s =
                json!({"type": "array", "items": kind_schema(items), "minItems": min_items});
            if max_items < usize::MAX {
                s["maxItems"] = json!(max_items);
            }
            s
        }
        Kind::Grid { shape, min, max } => {
            let mut s = json!({"type": "number", "minimum": min, "maximum": max});
            for &d in shape.iter().rev() {
                s = json!({"type": "array", "items": s, "minItems": d, "maxItems": d});
            }
            s
        }
        Kind::Nullable(inner) => json!({"anyOf": [kind_schema(inner), {"type": "null"}]}),
    }
}

fn field_schema(f: &Field) -> Value {
    let mut s = kind_schema(&f.kind);
    if let Value::Object(m) = &mut s {
        m.insert("description".into(), json!(f.description));
    }
    s
}

/// JSON Schema of an object with exactly `fields`, all required.
pub fn object_schema(fields: &[Field]) -> Value {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|f| (f.name.to_string(), field_schema(f)))
        .collect();
    let required: Vec<&str> = fields.iter().map(|f| f.name).collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The root schema document of a model's request or response.
pub fn document(title: &str, description: &str, fields: &[Field]) -> Value {
    let mut s = object_schema(fields);
    s["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    s["title"] = json!(title);
    s["description"] = json!(description);
    s
}

/// The root schema of a model's response: `fields` plus the optional `warnings` (present only
/// when an input was outside the trained ranges).
pub fn output_document(title: &str, description: &str, fields: &[Field]) -> Value {
    let mut s = document(title, description, fields);
    s["properties"]["warnings"] = json!({
        "type": "array", "items": {"type": "string"}, "minItems": 1,
        "description": "inputs outside the ranges the model was trained on (answered, but \
                        extrapolated): `<field> <value> is outside the trained range <lo>..<hi>`",
    });
    s
}

/// `{field-path: [lo, hi]}` for every field with a trained range (`members[].depth_mm`).
pub fn trained_ranges(fields: &[Field]) -> Map<String, Value> {
    fn walk(fields: &[Field], path: &str, out: &mut Map<String, Value>) {
        for f in fields {
            let at = join(path, f.name);
            if let Some((lo, hi)) = f.trained {
                out.insert(at.clone(), json!([lo, hi]));
            }
            match f.kind {
                Kind::Object(inner) => walk(inner, &at, out),
                Kind::Array {
                    items: Kind::Object(inner),
                    ..
                } => walk(inner, &format!("{at}[]"), out),
                _ => {}
            }
        }
    }
    let mut out = Map::new();
    walk(fields, "", &mut out);
    out
}

/// Checks `value` against a generated schema's own constraints (the subset [`kind_schema`]
/// emits); returns the path of the first violation. Used by tests to prove examples conform.
pub fn validate(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let fail = |what: &str| {
        Err(format!(
            "{}: {what}",
            if path.is_empty() { "body" } else { path }
        ))
    };
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        return if any.iter().any(|s| validate(s, value, path).is_ok()) {
            Ok(())
        } else {
            fail("matches no alternative")
        };
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("null") if !value.is_null() => return fail("must be null"),
        Some("boolean") if !value.is_boolean() => return fail("must be a boolean"),
        Some("string") => {
            let Some(s) = value.as_str() else {
                return fail("must be a string");
            };
            if let Some(e) = schema.get("enum").and_then(Value::as_array)
                && !e.iter().any(|x| x == value)
            {
                return fail("not one of the enum values");
            }
            let n = s.chars().count() as u64;
            if schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
                || schema
                    .get("minLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n < m)
            {
                return fail("length out of bounds");
            }
        }
        Some(t @ ("number" | "integer")) => {
            let Some(x) = value.as_f64() else {
                return fail("must be a number");
            };
            if t == "integer" && x.fract() != 0.0 {
                return fail("must be an integer");
            }
            if schema
                .get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| x < m)
                || schema
                    .get("maximum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| x > m)
            {
                return fail("outside minimum..maximum");
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return fail("must be an array");
            };
            let n = items.len() as u64;
            if schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
                || schema
                    .get("minItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n < m)
            {
                return fail("item count out of bounds");
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    validate(item, v, &schema::index(path, i))?;
                }
            }
        }
        Some("object") => {
            let Some(map) = value.as_object() else {
                return fail("must be an object");
            };
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(req) {
                    return Err(format!("{}: required member missing", join(path, req)));
                }
            }
            for (k, v) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => validate(s, v, &join(path, k))?,
                    None if schema.get("additionalProperties") == Some(&json!(false)) => {
                        return Err(format!("{}: not allowed", join(path, k)));
                    }
                    None => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

//! JSON request validation: turns request bodies into plain numeric samples, or a field-named error.
//!
//! Nothing here touches tch: parsing runs on the async runtime, tensors are built on the
//! inference thread from the [`Sample`]s this module produces.

use serde_json::{Map, Value};

/// One validated inference item as plain data, ready to be stacked into a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Dense float features, row-major in `shape`.
    pub values: Vec<f32>,
    /// The shape of `values` for this one item (no batch axis).
    pub shape: Vec<i64>,
    /// Integer inputs (token ids) where a model has them.
    pub tokens: Vec<i64>,
    /// Inputs inside the hard bounds but outside the ranges the model was trained on; the
    /// model answers and repeats these in the item's `warnings`.
    pub warnings: Vec<String>,
}

impl Sample {
    pub fn dense(values: Vec<f32>, shape: Vec<i64>) -> Sample {
        Sample {
            values,
            shape,
            tokens: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// A request that does not match the model's schema; `field` is a JSON path like `loads.shear_kn`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SchemaError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl SchemaError {
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        SchemaError {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// Joins a parent path and a key: `join("loads", "shear_kn")` is `loads.shear_kn`.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a parent path and an index: `index("members", 2)` is `members[2]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The value as an object whose keys are all in `allowed`; unknown keys are errors, not ignored,
/// so a misspelt field never silently falls back to nothing.
pub fn object<'a>(
    value: &'a Value,
    path: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, SchemaError> {
    let shown = if path.is_empty() { "body" } else { path };
    let map = value
        .as_object()
        .ok_or_else(|| SchemaError::new(shown, "invalid_type", "must be a JSON object"))?;
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(SchemaError::new(
            join(path, key),
            "unknown_field",
            format!("unknown field; expected one of: {}", allowed.join(", ")),
        ));
    }
    Ok(map)
}

/// A required member of an object.
pub fn field<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Value, SchemaError> {
    match map.get(key) {
        Some(Value::Null) | None => Err(SchemaError::new(
            join(path, key),
            "missing_field",
            "required field is missing",
        )),
        Some(v) => Ok(v),
    }
}

/// A finite number (as f32) within `[min, max]`.
pub fn number(value: &Value, path: &str, min: f32, max: f32) -> Result<f32, SchemaError> {
    let n = value
        .as_f64()
        .ok_or_else(|| SchemaError::new(path, "invalid_type", "must be a number"))?;
    let x = n as f32;
    if !x.is_finite() {
        return Err(SchemaError::new(
            path,
            "not_finite",
            "must be a finite number (NaN and infinity, including float32 overflow, are rejected)",
        ));
    }
    if x < min || x > max {
        return Err(SchemaError::new(
            path,
            "out_of_range",
            format!("{x} is outside [{min}, {max}]"),
        ));
    }
    Ok(x)
}

/// A required numeric member within `[min, max]`.
pub fn number_field(
    map: &Map<String, Value>,
    path: &str,
    key: &str,
    min: f32,
    max: f32,
) -> Result<f32, SchemaError> {
    number(field(map, path, key)?, &join(path, key), min, max)
}

/// A required whole-number member within `[min, max]` (2.5 is rejected, 2.0 accepted).
pub fn integer_field(
    map: &Map<String, Value>,
    path: &str,
    key: &str,
    min: i64,
    max: i64,
) -> Result<i64, SchemaError> {
    let at = join(path, key);
    let v = field(map, path, key)?;
    let n = v
        .as_f64()
        .ok_or_else(|| SchemaError::new(&at, "invalid_type", "must be an integer"))?;
    if n.fract() != 0.0 || !n.is_finite() {
        return Err(SchemaError::new(&at, "invalid_type", "must be an integer"));
    }
    let i = n as i64;
    if i < min || i > max {
        return Err(SchemaError::new(
            &at,
            "out_of_range",
            format!("{i} is outside [{min}, {max}]"),
        ));
    }
    Ok(i)
}

/// A required boolean member.
pub fn bool_field(map: &Map<String, Value>, path: &str, key: &str) -> Result<bool, SchemaError> {
    field(map, path, key)?
        .as_bool()
        .ok_or_else(|| SchemaError::new(join(path, key), "invalid_type", "must be true or false"))
}

/// A required string member of at most `max_chars` characters, not blank.
pub fn string_field<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    key: &str,
    max_chars: usize,
) -> Result<&'a str, SchemaError> {
    let at = join(path, key);
    let s = field(map, path, key)?
        .as_str()
        .ok_or_else(|| SchemaError::new(&at, "invalid_type", "must be a string"))?;
    if s.trim().is_empty() {
        return Err(SchemaError::new(&at, "empty", "must not be empty"));
    }
    if s.chars().count() > max_chars {
        return Err(SchemaError::new(
            &at,
            "too_long",
            format!("longer than {max_chars} characters"),
        ));
    }
    Ok(s)
}

/// A required array member with `min..=max` elements.
pub fn array_field<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    key: &str,
    min: usize,
    max: usize,
) -> Result<&'a Vec<Value>, SchemaError> {
    array(field(map, path, key)?, &join(path, key), min, max)
}

/// An array with `min..=max` elements.
pub fn array<'a>(
    value: &'a Value,
    path: &str,
    min: usize,
    max: usize,
) -> Result<&'a Vec<Value>, SchemaError> {
    let items = value
        .as_array()
        .ok_or_else(|| SchemaError::new(path, "invalid_type", "must be an array"))?;
    if items.len() < min || items.len() > max {
        let code = if items.len() > max {
            "too_many"
        } else {
            "too_few"
        };
        return Err(SchemaError::new(
            path,
            code,
            format!("has {} elements; expected {min} to {max}", items.len()),
        ));
    }
    Ok(items)
}

/// Flattens a nested numeric array of exactly `shape` into `out`, each value in `[min, max]`.
pub fn tensor_of_shape(
    value: &Value,
    path: &str,
    shape: &[usize],
    min: f32,
    max: f32,
    out: &mut Vec<f32>,
) -> Result<(), SchemaError> {
    match shape.split_first() {
        None => {
            out.push(number(value, path, min, max)?);
            Ok(())
        }
        Some((&len, rest)) => {
            let items = value.as_array().ok_or_else(|| {
                SchemaError::new(
                    path,
                    "invalid_shape",
                    format!("must be an array of shape {shape:?}"),
                )
            })?;
            if items.len() != len {
                return Err(SchemaError::new(
                    path,
                    "invalid_shape",
                    format!(
                        "has {} elements; expected {len} (shape {shape:?})",
                        items.len()
                    ),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                tensor_of_shape(item, &index(path, i), rest, min, max, out)?;
            }
            Ok(())
        }
    }
}

/// Infers the shape of a nested numeric array and flattens it, rejecting ragged rows and
/// more than `max_elements` numbers.
pub fn infer_shape(
    value: &Value,
    path: &str,
    max_elements: usize,
) -> Result<(Vec<i64>, Vec<f32>), SchemaError> {
    let mut shape = Vec::new();
    let mut cursor = value;
    while let Some(items) = cursor.as_array() {
        shape.push(items.len());
        match items.first() {
            Some(first) => cursor = first,
            None => {
                return Err(SchemaError::new(
                    path,
                    "invalid_shape",
                    "contains an empty array",
                ));
            }
        }
    }
    let elements: usize = shape.iter().product();
    if elements > max_elements {
        return Err(SchemaError::new(
            path,
            "too_large",
            format!("has {elements} numbers; at most {max_elements} allowed"),
        ));
    }
    let mut out = Vec::with_capacity(elements);
    tensor_of_shape(value, path, &shape, f32::MIN, f32::MAX, &mut out)?;
    Ok((shape.iter().map(|&d| d as i64).collect(), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn number_rejects_float32_overflow_and_range() {
        assert_eq!(number(&json!(1.5), "x", 0.0, 2.0), Ok(1.5));
        assert_eq!(
            number(&json!(1e39), "x", 0.0, 2.0).unwrap_err().code,
            "not_finite"
        );
        assert_eq!(
            number(&json!(3), "x", 0.0, 2.0).unwrap_err().code,
            "out_of_range"
        );
        assert_eq!(
            number(&json!("1"), "x", 0.0, 2.0).unwrap_err().code,
            "invalid_type"
        );
    }

    #[test]
    fn object_names_unknown_and_missing_fields() {
        let v = json!({"a": 1, "zz": 2});
        let e = object(&v, "p", &["a"]).unwrap_err();
        assert_eq!((e.field.as_str(), e.code), ("p.zz", "unknown_field"));
        let v = json!({"a": 1});
        let m = object(&v, "p", &["a", "b"]).unwrap();
        assert_eq!(field(m, "p", "b").unwrap_err().field, "p.b");
    }

    #[test]
    fn shapes_are_inferred_and_ragged_rows_rejected() {
        let (shape, values) = infer_shape(&json!([[1, 2], [3, 4], [5, 6]]), "r", 100).unwrap();
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let e = infer_shape(&json!([[1, 2], [3]]), "r", 100).unwrap_err();
        assert_eq!((e.field.as_str(), e.code), ("r[1]", "invalid_shape"));
        assert_eq!(
            infer_shape(&json!([[1, 2]]), "r", 1).unwrap_err().code,
            "too_large"
        );
        assert_eq!(
            integer_field(json!({"n": 2.5}).as_object().unwrap(), "", "n", 0, 9)
                .unwrap_err()
                .code,
            "invalid_type"
        );
    }
}

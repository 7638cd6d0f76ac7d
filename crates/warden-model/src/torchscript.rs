//! A user's own TorchScript module (`--weights model.pt`): `{"inputs": [row, ...]}` in,
//! `{"outputs": [row, ...]}` out, rows from concurrent requests stacked along a new first axis.

use super::models::{Model, num};
use super::schema::{Sample, SchemaError, array, index, infer_shape, object};
use serde_json::{Value, json};
use std::path::Path;
use tch::{CModule, Device, Kind, TchError};

/// Rows per request.
pub const MAX_ROWS: usize = 1024;
/// Numbers per row.
pub const MAX_ROW_ELEMENTS: usize = 65536;

pub fn parse(body: &Value) -> Result<Vec<Sample>, SchemaError> {
    let root = object(body, "", &["inputs"])?;
    let rows = match root.get("inputs") {
        Some(v) => array(v, "inputs", 1, MAX_ROWS)?,
        None => {
            return Err(SchemaError::new(
                "inputs",
                "missing_field",
                "required field is missing",
            ));
        }
    };
    let mut samples: Vec<Sample> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let at = index("inputs", i);
        let (shape, values) = if row.is_array() {
            infer_shape(row, &at, MAX_ROW_ELEMENTS)?
        } else {
            // A bare number is a scalar row.
            infer_shape(&json!([row]), &at, MAX_ROW_ELEMENTS).map(|(_, v)| (vec![], v))?
        };
        if let Some(first) = samples.first()
            && first.shape != shape
        {
            return Err(SchemaError::new(
                at,
                "shape_mismatch",
                format!("has shape {shape:?}; inputs[0] has {:?}", first.shape),
            ));
        }
        samples.push(Sample::dense(values, shape));
    }
    Ok(samples)
}

/// Parses an `/infer` body straight into rows without building a JSON tree (a tree costs an
/// allocation per number: most of the request's CPU for a 64×16 row). `None` for anything
/// unusual — the tree-based [`parse`] then gives the precise error, so both accept the same
/// bodies and only the error path pays for the tree.
pub fn parse_fast(body: &[u8]) -> Option<Vec<Sample>> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_slice(body);
    let rows = fast::Body.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(rows)
}

mod fast {
    use super::{MAX_ROW_ELEMENTS, MAX_ROWS, Sample};
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// `{"inputs": [row, ...]}` and nothing else.
    pub struct Body;

    impl<'de> DeserializeSeed<'de> for Body {
        type Value = Vec<Sample>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Sample>, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Body {
        type Value = Vec<Sample>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("{\"inputs\": [...]}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Sample>, A::Error> {
            let mut rows = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key != "inputs" || rows.is_some() {
                    return Err(de::Error::custom("unexpected field"));
                }
                rows = Some(map.next_value_seed(Rows)?);
            }
            rows.ok_or_else(|| de::Error::custom("missing inputs"))
        }
    }

    struct Rows;

    impl<'de> DeserializeSeed<'de> for Rows {
        type Value = Vec<Sample>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Sample>, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Rows {
        type Value = Vec<Sample>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of rows")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Sample>, A::Error> {
            let mut rows: Vec<Sample> = Vec::new();
            loop {
                let mut row = Row::default();
                if seq
                    .next_element_seed(Nested {
                        row: &mut row,
                        depth: 0,
                    })?
                    .is_none()
                {
                    break;
                }
                let shape: Vec<i64> = row.shape.iter().flatten().map(|&d| d as i64).collect();
                if shape.len() != row.shape.len()
                    || rows.len() >= MAX_ROWS
                    || rows.first().is_some_and(|r| r.shape != shape)
                {
                    return Err(de::Error::custom("rows"));
                }
                rows.push(Sample::dense(row.values, shape));
            }
            if rows.is_empty() {
                return Err(de::Error::custom("no rows"));
            }
            Ok(rows)
        }
    }

    /// One row being read: its shape (fixed by its first leaf's path) and its numbers.
    #[derive(Default)]
    struct Row {
        shape: Vec<Option<usize>>,
        /// Depth of the numbers, once the first one was seen.
        leaf_depth: Option<usize>,
        values: Vec<f32>,
    }

    struct Nested<'r> {
        row: &'r mut Row,
        depth: usize,
    }

    impl<'de> DeserializeSeed<'de> for Nested<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl Nested<'_> {
        fn leaf<E: de::Error>(self, v: f64) -> Result<(), E> {
            let row = self.row;
            if *row.leaf_depth.get_or_insert(self.depth) != self.depth
                || !v.is_finite()
                || v.abs() > f32::MAX as f64
                || row.values.len() >= MAX_ROW_ELEMENTS
            {
                return Err(E::custom("leaf"));
            }
            row.values.push(v as f32);
            Ok(())
        }
    }

    impl<'de> Visitor<'de> for Nested<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number or a nested array of numbers")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
            self.leaf(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
            self.leaf(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
            self.leaf(v as f64)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let depth = self.depth;
            let row = self.row;
            if row.leaf_depth.is_some_and(|l| depth >= l) {
                return Err(de::Error::custom("ragged"));
            }
            let mut n = 0usize;
            while seq
                .next_element_seed(Nested {
                    row: &mut *row,
                    depth: depth + 1,
                })?
                .is_some()
            {
                n += 1;
            }
            // The first array to end at each depth fixes that dimension (inner arrays end
            // first); every other must match.
            if n == 0 {
                return Err(de::Error::custom("empty"));
            }
            if row.shape.len() <= depth {
                row.shape.resize(depth + 1, None);
            }
            match row.shape[depth] {
                Some(d) if d != n => Err(de::Error::custom("ragged")),
                Some(_) => Ok(()),
                None => {
                    row.shape[depth] = Some(n);
                    Ok(())
                }
            }
        }
    }
}

pub fn example(row_shape: &[i64]) -> Value {
    fn nested(shape: &[i64]) -> Value {
        match shape.split_first() {
            None => json!(0.5),
            Some((&n, rest)) => Value::Array((0..n).map(|_| nested(rest)).collect()),
        }
    }
    json!({"inputs": [nested(row_shape)]})
}

/// Builds the nested JSON array of `shape` from a flat slice.
fn unflatten(values: &[f32], shape: &[i64]) -> Value {
    match shape.split_first() {
        None => values.first().map(|&v| num(v)).unwrap_or(Value::Null),
        Some((&n, rest)) => {
            let step: usize = rest.iter().product::<i64>().max(0) as usize;
            Value::Array(
                (0..n as usize)
                    .map(|i| unflatten(&values[i * step..(i + 1) * step], rest))
                    .collect(),
            )
        }
    }
}

pub struct TorchScriptModel {
    module: CModule,
    device: Device,
}

impl TorchScriptModel {
    pub fn load(path: &Path, device: Device) -> Result<Self, TchError> {
        let mut module = CModule::load_on_device(path, device)?;
        module.f_set_eval()?;
        Ok(TorchScriptModel { module, device })
    }
}

impl Model for TorchScriptModel {
    fn same_shape_batches(&self) -> bool {
        true
    }

    fn forward(&self, batch: &[&Sample]) -> Result<Vec<Value>, TchError> {
        let x = super::models::stack(batch, self.device)?;
        let y = tch::no_grad(|| self.module.forward_ts(&[x]))?;
        let y = y
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .contiguous();
        let shape = y.size();
        if shape.first().copied() != Some(batch.len() as i64) {
            return Err(TchError::Shape(format!(
                "the module returned shape {shape:?} for a batch of {}",
                batch.len()
            )));
        }
        let flat = Vec::<f32>::try_from(&y.f_flatten(0, -1)?)?;
        let per_row = flat.len() / batch.len().max(1);
        Ok((0..batch.len())
            .map(|i| unflatten(&flat[i * per_row..(i + 1) * per_row], &shape[1..]))
            .collect())
    }
}

/// Traces `y = relu(x·Wᵀ + b)` with the given weights into a TorchScript file: the committed
/// test fixture `tests/fixtures/tiny_linear.pt` was made by this (see tests/integration/serving.rs).
#[cfg(test)]
pub fn write_linear_relu_module(
    path: &Path,
    weight: &[f32],
    bias: &[f32],
    inputs: i64,
) -> Result<(), TchError> {
    let outputs = bias.len() as i64;
    use tch::Tensor;
    let w = Tensor::from_slice(weight).f_view([outputs, inputs])?;
    let b = Tensor::from_slice(bias);
    let probe = Tensor::zeros([1, inputs], (Kind::Float, Device::Cpu));
    let module = CModule::create_by_tracing("TinyLinear", "forward", &[probe], &mut |xs| {
        vec![(xs[0].matmul(&w.tr()) + &b).relu()]
    })?;
    module.save(path)
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    #[test]
    fn the_fast_parser_agrees_with_the_tree_and_declines_what_it_cannot_take() {
        let accepted = [
            r#"{"inputs": [[1, 2.5, -3], [4, 5, 6e-3]]}"#,
            r#"{"inputs": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}"#,
            r#"{"inputs": [1.5, 2]}"#,
        ];
        for body in accepted {
            let tree: Value = serde_json::from_str(body).unwrap();
            let slow = parse(&tree).unwrap();
            let fast = parse_fast(body.as_bytes()).unwrap_or_else(|| panic!("declined {body}"));
            assert_eq!(fast.len(), slow.len());
            for (f, s) in fast.iter().zip(&slow) {
                assert_eq!((&f.shape, &f.values), (&s.shape, &s.values), "{body}");
            }
        }
        let declined = [
            r#"{"inputs": []}"#,
            r#"{"inputs": [[1, 2], [3]]}"#,
            r#"{"inputs": [[[1, 2], [3]]]}"#,
            r#"{"inputs": [[1, [2]]]}"#,
            r#"{"inputs": [[[1], 2]]}"#,
            r#"{"inputs": [[]]}"#,
            r#"{"inputs": [[1e39]]}"#,
            r#"{"inputs": [["1"]]}"#,
            r#"{"inputs": [[1]], "extra": 1}"#,
            r#"{"other": [[1]]}"#,
            r#"{"inputs": [[1]]} trailing"#,
        ];
        for body in declined {
            assert!(parse_fast(body.as_bytes()).is_none(), "accepted {body}");
            // The tree parser names the problem (or, for bodies JSON itself rejects, serde).
            if let Ok(tree) = serde_json::from_str::<Value>(body) {
                assert!(parse(&tree).is_err(), "tree accepted {body}");
            }
        }
    }
}

#[cfg(test)]
mod fixture {
    /// Regenerates tests/fixtures/tiny_linear.pt (`cargo test -p warden-model -- --ignored`).
    /// tests/integration/serving.rs checks the committed file against these same weights.
    #[test]
    #[ignore]
    fn regenerate_torchscript_fixture() {
        const TS_WEIGHT: [f32; 6] = [0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
        const TS_BIAS: [f32; 2] = [0.1, -0.2];
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny_linear.pt");
        super::write_linear_relu_module(&path, &TS_WEIGHT, &TS_BIAS, 3).unwrap();
    }
}

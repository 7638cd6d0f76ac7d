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

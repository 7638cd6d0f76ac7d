//! clash-detector: a 3-D CNN encodes each step's voxel grids, an LSTM follows the construction
//! sequence, and two heads give a clash probability and a clash location per step.
//!
//! Input: 1..=16 steps, each two 8×8×8 occupancy grids in [0, 1]: `structure` (placed structural
//! elements) and `services` (MEP runs). The LSTM is causal, so padding a batch to its longest
//! sequence at the end never changes the outputs of the real steps.

use super::{Net, num, rows};
use crate::schema::{
    Sample, SchemaError, array_field, field, index, join, object, tensor_of_shape,
};
use serde_json::{Value, json};
use tch::nn::{self, Module, RNN};
use tch::{Device, TchError, Tensor};

pub const NAME: &str = "clash-detector";
pub const GRID: usize = 8;
pub const MAX_STEPS: usize = 16;
const VOXELS: usize = GRID * GRID * GRID;
const STEP_VALUES: usize = 2 * VOXELS;
const HIDDEN: i64 = 64;

/// A small structure with a service run crossing it, in `steps` steps.
pub fn example_with(steps: usize, shift: usize) -> Value {
    let grid = |f: &dyn Fn(usize, usize, usize) -> bool| -> Value {
        json!(
            (0..GRID)
                .map(|x| (0..GRID)
                    .map(|y| (0..GRID)
                        .map(|z| if f(x, y, z) { 1.0 } else { 0.0 })
                        .collect::<Vec<f64>>())
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        )
    };
    let steps: Vec<Value> = (0..steps)
        .map(|s| {
            json!({
                "structure": grid(&|x, y, z| z <= s && (x == 2 || y == 5)),
                "services": grid(&|x, y, z| y == (3 + shift) % GRID && z == 1 && x <= 2 * s + 1),
            })
        })
        .collect();
    json!({ "steps": steps })
}

pub fn example() -> Value {
    example_with(3, 0)
}

pub fn input_schema() -> Value {
    json!({
        "steps": {"type": "array", "min_items": 1, "max_items": MAX_STEPS, "items": {
            "structure": format!("number[{GRID}][{GRID}][{GRID}], each 0..1 (occupancy)"),
            "services": format!("number[{GRID}][{GRID}][{GRID}], each 0..1 (occupancy)")}}
    })
}

pub fn output_schema() -> Value {
    json!({
        "steps": "array, one per input step: {step, clash_probability 0..1, location {x,y,z} in voxels}",
        "max_clash_probability": "number 0..1",
        "first_clash_step": "integer or null: first step with clash_probability >= 0.5"
    })
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let root = object(body, "", &["steps"])?;
    let steps = array_field(root, "", "steps", 1, MAX_STEPS)?;
    let mut values = Vec::with_capacity(steps.len() * STEP_VALUES);
    for (i, step) in steps.iter().enumerate() {
        let at = index("steps", i);
        let m = object(step, &at, &["structure", "services"])?;
        for key in ["structure", "services"] {
            let grid = field(m, &at, key)?;
            tensor_of_shape(
                grid,
                &join(&at, key),
                &[GRID, GRID, GRID],
                0.0,
                1.0,
                &mut values,
            )?;
        }
    }
    let n = steps.len() as i64;
    Ok(Sample::dense(
        values,
        vec![n, 2, GRID as i64, GRID as i64, GRID as i64],
    ))
}

#[derive(Debug)]
pub struct ClashNet {
    conv1: nn::Conv3D,
    conv2: nn::Conv3D,
    embed: nn::Linear,
    lstm: nn::LSTM,
    clash_head: nn::Linear,
    location_head: nn::Linear,
}

impl Net for ClashNet {
    fn build(p: &nn::Path) -> Self {
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        ClashNet {
            conv1: nn::conv3d(p / "conv1", 2, 8, 3, conv),
            conv2: nn::conv3d(p / "conv2", 8, 16, 3, conv),
            embed: nn::linear(p / "embed", 16 * 8, HIDDEN, Default::default()),
            lstm: nn::lstm(p / "lstm", HIDDEN, HIDDEN, Default::default()),
            clash_head: nn::linear(p / "clash_head", HIDDEN, 1, Default::default()),
            location_head: nn::linear(p / "location_head", HIDDEN, 3, Default::default()),
        }
    }

    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError> {
        let lens: Vec<usize> = batch.iter().map(|s| s.values.len() / STEP_VALUES).collect();
        let longest = lens.iter().copied().max().unwrap_or(1);
        let mut values = vec![0f32; batch.len() * longest * STEP_VALUES];
        for (i, s) in batch.iter().enumerate() {
            let start = i * longest * STEP_VALUES;
            values[start..start + s.values.len()].copy_from_slice(&s.values);
        }
        let (n, t, g) = (batch.len() as i64, longest as i64, GRID as i64);
        let x = Tensor::from_slice(&values)
            .f_view([n * t, 2, g, g, g])?
            .f_to_device(device)?;
        let pool = |h: &Tensor| h.f_max_pool3d([2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], false);
        let h = pool(&self.conv1.forward(&x).relu())?;
        let h = pool(&self.conv2.forward(&h).relu())?;
        let h = self.embed.forward(&h.f_view([n, t, 16 * 8])?).relu();
        let (seq, _) = self.lstm.seq(&h);
        let clash = rows(&self.clash_head.forward(&seq).f_sigmoid()?.f_view([n, t])?)?;
        let location = self.location_head.forward(&seq).f_sigmoid()? * (GRID as f64 - 1.0);
        let location = rows(&location.f_view([n, t * 3])?)?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let steps: Vec<Value> = (0..len)
                    .map(|s| {
                        let l = &location[i][s * 3..s * 3 + 3];
                        json!({"step": s, "clash_probability": num(clash[i][s]),
                               "location": {"x": num(l[0]), "y": num(l[1]), "z": num(l[2])}})
                    })
                    .collect();
                let max = clash[i][..len].iter().copied().fold(0.0f32, f32::max);
                let first = clash[i][..len].iter().position(|&p| p >= 0.5);
                json!({"steps": steps, "max_clash_probability": num(max), "first_clash_step": first})
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_a_batch_to_its_longest_sequence_leaves_shorter_ones_unchanged() {
        let _rng = crate::models::SEEDED_RNG
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ClashNet::build(&vs.root());
        let short = parse(&example_with(2, 0)).unwrap();
        let long = parse(&example_with(5, 3)).unwrap();
        let alone = tch::no_grad(|| net.run(&[&short], Device::Cpu)).unwrap();
        let batched = tch::no_grad(|| net.run(&[&long, &short], Device::Cpu)).unwrap();
        assert_eq!(batched[1]["steps"].as_array().unwrap().len(), 2);
        assert_eq!(batched[0]["steps"].as_array().unwrap().len(), 5);
        for (a, b) in alone[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .zip(batched[1]["steps"].as_array().unwrap())
        {
            let (pa, pb) = (
                a["clash_probability"].as_f64().unwrap(),
                b["clash_probability"].as_f64().unwrap(),
            );
            assert!((pa - pb).abs() < 1e-5, "{pa} vs {pb}");
        }
    }
}

//! clash-detector: a fully convolutional 3-D CNN marks, per construction step, the services
//! voxels in conflict with the structure; the step's clash probability is the most confident
//! voxel's and its location the centroid of the voxels marked (`teachers::clash` is the
//! reference it is trained on).
//!
//! Input: 1..=16 steps, each two 8×8×8 occupancy grids in [0, 1]: `structure` (placed
//! structural elements) and `services` (MEP runs). Each step is judged on its own grids (the
//! state after that step), so a batch of sequences is evaluated as one batch of steps and a
//! shorter sequence's answers never depend on a longer one's.
//!
//! Why no recurrent layer (the first version had an LSTM over the steps): the reference answer
//! of a step depends on that step's grids only, and a conflict is local (a 3×3×3 neighbourhood),
//! which one 3×3×3 convolution between two per-voxel ones sees exactly; a per-voxel map also
//! gives the location directly.

use super::{num, rows};
use crate::fields::{self, Field, Kind};
use crate::schema::{Sample, SchemaError, index};
use crate::teachers::clash::{GRID, VOXELS};
use serde_json::{Value, json};
use tch::nn::{self, Module};
use tch::{Device, TchError, Tensor};

pub const NAME: &str = "clash-detector";
pub const MAX_STEPS: usize = 16;
const STEP_VALUES: usize = 2 * VOXELS;

const SHAPE: [usize; 3] = [GRID, GRID, GRID];
pub const STEP_FIELDS: [Field; 2] = [
    Field::new(
        "structure",
        Kind::Grid {
            shape: &SHAPE,
            min: 0.0,
            max: 1.0,
        },
        "occupancy of placed structure per voxel [x][y][z], 0..1 (≥ 0.5 is occupied)",
    ),
    Field::new(
        "services",
        Kind::Grid {
            shape: &SHAPE,
            min: 0.0,
            max: 1.0,
        },
        "occupancy of services (MEP) per voxel [x][y][z], 0..1 (≥ 0.5 is occupied)",
    ),
];
const STEP_KIND: Kind = Kind::Object(&STEP_FIELDS);
pub const FIELDS: [Field; 1] = [Field::new(
    "steps",
    Kind::Array {
        items: &STEP_KIND,
        min_items: 1,
        max_items: MAX_STEPS,
    },
    "construction steps in order, each the state after that step",
)];

const COORD: Kind = Kind::Number {
    min: 0.0,
    max: (GRID - 1) as f64,
};
const LOCATION: [Field; 3] = [
    Field::new("x", COORD, "voxels"),
    Field::new("y", COORD, "voxels"),
    Field::new("z", COORD, "voxels"),
];
const STEP_OUT: [Field; 4] = [
    Field::integer("step", 0, MAX_STEPS as i64 - 1, "index of the step"),
    Field::number(
        "clash_probability",
        0.0,
        1.0,
        "probability that the step clashes",
    ),
    Field::new(
        "location",
        Kind::Object(&LOCATION),
        "centroid of the voxels in conflict (the most likely voxel when none is)",
    ),
    Field::integer(
        "conflict_voxels",
        0,
        VOXELS as i64,
        "services voxels marked in conflict (overlap or under one voxel of clearance)",
    ),
];
const STEP_OUT_KIND: Kind = Kind::Object(&STEP_OUT);
const FIRST: Kind = Kind::Integer {
    min: 0,
    max: MAX_STEPS as i64 - 1,
};
pub const OUTPUT: [Field; 3] = [
    Field::new(
        "steps",
        Kind::Array {
            items: &STEP_OUT_KIND,
            min_items: 1,
            max_items: MAX_STEPS,
        },
        "one per input step, in order",
    ),
    Field::number(
        "max_clash_probability",
        0.0,
        1.0,
        "the highest step probability",
    ),
    Field::new(
        "first_clash_step",
        Kind::Nullable(&FIRST),
        "first step with clash_probability ≥ 0.5, or null",
    ),
];

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
    fields::document(
        NAME,
        "Occupancy grids of structure and services per step.",
        &FIELDS,
    )
}

pub fn output_schema() -> Value {
    fields::output_document(NAME, "Per-step clash probability and location.", &OUTPUT)
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let root = fields::object(body, "", &FIELDS)?;
    let steps = FIELDS[0].read_array(root, "")?;
    let mut values = Vec::with_capacity(steps.len() * STEP_VALUES);
    for (i, step) in steps.iter().enumerate() {
        let at = index("steps", i);
        let m = fields::object(step, &at, &STEP_FIELDS)?;
        for f in &STEP_FIELDS {
            f.read_grid(m, &at, &mut values)?;
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
    head: nn::Conv3D,
}

impl ClashNet {
    /// Per-voxel conflict logits `[steps, GRID, GRID, GRID]` for `[steps, 2, GRID, GRID, GRID]`.
    pub fn voxel_logits(&self, x: &Tensor) -> Result<Tensor, TchError> {
        // Centred and scaled so the occupancy threshold (0.5) sits at 0 for the first ReLU.
        let h = self.conv1.forward(&((x - 0.5) * 4.0)).relu();
        let h = self.conv2.forward(&h).relu();
        self.head.forward(&h).f_squeeze_dim(1)
    }
}

impl super::Net for ClashNet {
    fn build(p: &nn::Path) -> Self {
        let k3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        // Per-voxel occupancy features (1×1×1), their 3×3×3 neighbourhood, a per-voxel head:
        // exactly the shape of the rule (threshold each voxel, look one voxel around, AND).
        ClashNet {
            conv1: nn::conv3d(p / "conv1", 2, 8, 1, Default::default()),
            conv2: nn::conv3d(p / "conv2", 8, 16, 3, k3),
            head: nn::conv3d(p / "head", 16, 1, 1, Default::default()),
        }
    }

    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError> {
        let lens: Vec<usize> = batch.iter().map(|s| s.values.len() / STEP_VALUES).collect();
        let total: usize = lens.iter().sum();
        let values: Vec<f32> = batch
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .collect();
        let g = GRID as i64;
        let x = Tensor::from_slice(&values)
            .f_view([total as i64, 2, g, g, g])?
            .f_to_device(device)?;
        let probs = self
            .voxel_logits(&x)?
            .f_sigmoid()?
            .f_view([total as i64, VOXELS as i64])?;
        let probs = rows(&probs)?;
        let mut offset = 0;
        Ok(lens
            .iter()
            .map(|&len| {
                let steps: Vec<Value> = (0..len)
                    .map(|s| step_output(s, &probs[offset + s]))
                    .collect();
                let clash: Vec<f32> = (0..len)
                    .map(|s| probs[offset + s].iter().copied().fold(0.0f32, f32::max))
                    .collect();
                offset += len;
                let max = clash.iter().copied().fold(0.0f32, f32::max);
                let first = clash.iter().position(|&p| p >= 0.5);
                json!({"steps": steps, "max_clash_probability": num(max), "first_clash_step": first})
            })
            .collect())
    }
}

/// One step's answer from its per-voxel conflict probabilities.
fn step_output(step: usize, p: &[f32]) -> Value {
    let coord = |i: usize| [i / (GRID * GRID), (i / GRID) % GRID, i % GRID];
    let best = super::argmax(p);
    let mut sum = [0f64; 3];
    let mut count = 0usize;
    for (i, &v) in p.iter().enumerate() {
        if v >= 0.5 {
            let c = coord(i);
            for a in 0..3 {
                sum[a] += c[a] as f64;
            }
            count += 1;
        }
    }
    let location = if count > 0 {
        sum.map(|s| s / count as f64)
    } else {
        coord(best).map(|c| c as f64)
    };
    json!({"step": step, "clash_probability": num(p[best]),
           "location": {"x": num(location[0] as f32), "y": num(location[1] as f32),
                        "z": num(location[2] as f32)},
           "conflict_voxels": count})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Net;

    #[test]
    fn batching_sequences_of_different_lengths_leaves_each_unchanged() {
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

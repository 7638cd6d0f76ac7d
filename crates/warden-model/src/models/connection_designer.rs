//! connection-designer: a 1-D CNN over per-member connection features with self-attention,
//! predicting the connection type, a capacity ratio and a confidence.
//!
//! Input: up to four members meeting at the connection, the design loads and the geometry.
//! Each member becomes one position of a length-4 sequence whose channels are its section
//! dimensions plus the (shared) loads and geometry; absent members are masked out.

use super::{Net, SelfAttention, argmax, labelled, masked_mean, num, rows, stack};
use crate::schema::{
    Sample, SchemaError, array_field, field, index, integer_field, number_field, object,
};
use serde_json::{Value, json};
use tch::nn::{self, Module};
use tch::{Device, TchError};

pub const NAME: &str = "connection-designer";
pub const MAX_MEMBERS: usize = 4;
const CHANNELS: usize = 12;
pub const TYPES: [&str; 5] = [
    "shear-tab",
    "end-plate",
    "flange-plate-moment",
    "bolted-splice",
    "welded-moment",
];

/// (field, min, max, scale) for each member feature.
const MEMBER_FIELDS: [(&str, f32, f32, f32); 5] = [
    ("depth_mm", 50.0, 1500.0, 1000.0),
    ("flange_width_mm", 30.0, 600.0, 500.0),
    ("web_thickness_mm", 2.0, 80.0, 50.0),
    ("flange_thickness_mm", 2.0, 120.0, 80.0),
    ("angle_deg", 0.0, 180.0, 180.0),
];
const LOAD_FIELDS: [(&str, f32, f32, f32); 3] = [
    ("axial_kn", -10000.0, 10000.0, 1000.0),
    ("shear_kn", -10000.0, 10000.0, 1000.0),
    ("moment_knm", -5000.0, 5000.0, 1000.0),
];

pub fn example() -> Value {
    json!({
        "members": [
            {"depth_mm": 310.0, "flange_width_mm": 165.0, "web_thickness_mm": 6.0,
             "flange_thickness_mm": 10.2, "angle_deg": 0.0},
            {"depth_mm": 260.0, "flange_width_mm": 147.0, "web_thickness_mm": 6.3,
             "flange_thickness_mm": 8.6, "angle_deg": 90.0}
        ],
        "loads": {"axial_kn": 20.0, "shear_kn": 150.0, "moment_knm": 45.0},
        "geometry": {"eccentricity_mm": 60.0, "bolt_rows": 3, "plate_thickness_mm": 12.0}
    })
}

pub fn input_schema() -> Value {
    json!({
        "members": {"type": "array", "min_items": 1, "max_items": MAX_MEMBERS, "items": {
            "depth_mm": "number 50..1500", "flange_width_mm": "number 30..600",
            "web_thickness_mm": "number 2..80", "flange_thickness_mm": "number 2..120",
            "angle_deg": "number 0..180 (angle to the first member)"}},
        "loads": {"axial_kn": "number -10000..10000", "shear_kn": "number -10000..10000",
                  "moment_knm": "number -5000..5000"},
        "geometry": {"eccentricity_mm": "number 0..1000", "bolt_rows": "integer 1..20",
                     "plate_thickness_mm": "number 3..100"}
    })
}

pub fn output_schema() -> Value {
    json!({
        "connection_type": format!("one of {}", TYPES.join(", ")),
        "type_probabilities": "object: type -> probability (sums to 1)",
        "capacity_ratio": "number >= 0 (demand / capacity of the suggested connection)",
        "confidence": "number 0..1 (probability of the chosen type)"
    })
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let root = object(body, "", &["members", "loads", "geometry"])?;
    let members = array_field(root, "", "members", 1, MAX_MEMBERS)?;
    let loads = object(
        field(root, "", "loads")?,
        "loads",
        &["axial_kn", "shear_kn", "moment_knm"],
    )?;
    let geometry = object(
        field(root, "", "geometry")?,
        "geometry",
        &["eccentricity_mm", "bolt_rows", "plate_thickness_mm"],
    )?;
    let mut shared = Vec::with_capacity(6);
    for (key, min, max, scale) in LOAD_FIELDS {
        shared.push(number_field(loads, "loads", key, min, max)? / scale);
    }
    shared.push(number_field(geometry, "geometry", "eccentricity_mm", 0.0, 1000.0)? / 500.0);
    shared.push(integer_field(geometry, "geometry", "bolt_rows", 1, 20)? as f32 / 12.0);
    shared.push(number_field(geometry, "geometry", "plate_thickness_mm", 3.0, 100.0)? / 60.0);

    // Channel-major [CHANNELS, MAX_MEMBERS] so the batch is directly a conv1d input.
    let mut values = vec![0f32; CHANNELS * MAX_MEMBERS];
    for (pos, member) in members.iter().enumerate() {
        let at = index("members", pos);
        let names: Vec<&str> = MEMBER_FIELDS.iter().map(|f| f.0).collect();
        let m = object(member, &at, &names)?;
        let mut channel = 0;
        for (key, min, max, scale) in MEMBER_FIELDS {
            values[channel * MAX_MEMBERS + pos] = number_field(m, &at, key, min, max)? / scale;
            channel += 1;
        }
        for s in &shared {
            values[channel * MAX_MEMBERS + pos] = *s;
            channel += 1;
        }
        values[channel * MAX_MEMBERS + pos] = 1.0; // present flag
    }
    Ok(Sample::dense(
        values,
        vec![CHANNELS as i64, MAX_MEMBERS as i64],
    ))
}

#[derive(Debug)]
pub struct ConnectionNet {
    conv1: nn::Conv1D,
    conv2: nn::Conv1D,
    attention: SelfAttention,
    norm: nn::LayerNorm,
    type_head: nn::Linear,
    capacity_head: nn::Linear,
}

impl Net for ConnectionNet {
    fn build(p: &nn::Path) -> Self {
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        ConnectionNet {
            conv1: nn::conv1d(p / "conv1", CHANNELS as i64, 32, 3, conv),
            conv2: nn::conv1d(p / "conv2", 32, 32, 3, conv),
            attention: SelfAttention::new(&(p / "attention"), 32, 2),
            norm: nn::layer_norm(p / "norm", vec![32], Default::default()),
            type_head: nn::linear(p / "type_head", 32, TYPES.len() as i64, Default::default()),
            capacity_head: nn::linear(p / "capacity_head", 32, 1, Default::default()),
        }
    }

    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError> {
        let x = stack(batch, device)?; // [n, C, L]
        let valid = x.f_select(1, CHANNELS as i64 - 1)?.f_gt(0.5)?; // [n, L]
        let h = self.conv1.forward(&x).relu();
        let h = self.conv2.forward(&h).relu().f_transpose(1, 2)?; // [n, L, 32]
        let h = self
            .norm
            .forward(&(&h + self.attention.forward(&h, &valid)?));
        let pooled = masked_mean(&h, &valid)?;
        let probs = rows(
            &self
                .type_head
                .forward(&pooled)
                .f_softmax(-1, tch::Kind::Float)?,
        )?;
        let capacity = rows(&self.capacity_head.forward(&pooled).f_softplus()?)?;
        Ok(probs
            .iter()
            .zip(capacity)
            .map(|(p, c)| {
                let best = argmax(p);
                json!({
                    "connection_type": TYPES[best],
                    "type_probabilities": labelled(&TYPES, p),
                    "capacity_ratio": num(c[0]),
                    "confidence": num(p[best]),
                })
            })
            .collect())
    }
}

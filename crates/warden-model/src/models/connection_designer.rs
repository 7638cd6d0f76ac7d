//! connection-designer: a 1-D CNN over per-member connection features with self-attention
//! chooses the connection type; the demand/capacity ratio is the reference calculation's
//! (`teachers::connection`, AISC 360-22 ch. J) for the type the network chose.
//!
//! Input: up to four members meeting at the connection, the design loads and the geometry.
//! Each member becomes one position of a length-4 sequence whose channels are its section
//! dimensions, its deviation from the first member's line, and the (shared) load proportions
//! and geometry; absent members are masked out. The network sees the loads only through their
//! proportions (the moment share), as the type rule does, so scaling every load keeps its
//! choice and scales the ratio exactly.

use super::{Net, SelfAttention, argmax, labelled, masked_mean, num, rows, stack};
use crate::fields::{self, Field, Kind};
use crate::schema::{Sample, SchemaError, index};
use crate::teachers::connection::{self as teacher, Joint, Member, TYPES};
use serde_json::{Value, json};
use tch::nn::{self, Module};
use tch::{Device, TchError};

pub const NAME: &str = "connection-designer";
pub const MAX_MEMBERS: usize = 4;
/// Channels per member position (see [`features`]).
pub const CHANNELS: usize = 13;
/// Values after the channel-major features: the joint itself, for the exact check.
const JOINT_VALUES: usize = 6 + 5 * MAX_MEMBERS + 1;

pub const MEMBER_FIELDS: [Field; 5] = [
    Field::number("depth_mm", 50.0, 1500.0, "section depth, mm").trained(150.0, 900.0),
    Field::number("flange_width_mm", 30.0, 600.0, "flange width, mm").trained(60.0, 400.0),
    Field::number("web_thickness_mm", 2.0, 80.0, "web thickness, mm").trained(4.0, 20.0),
    Field::number("flange_thickness_mm", 2.0, 120.0, "flange thickness, mm").trained(6.0, 35.0),
    Field::number(
        "angle_deg",
        0.0,
        180.0,
        "angle to the first member, degrees (the first member's own is ignored)",
    )
    .trained(0.0, 180.0),
];
pub const LOAD_FIELDS: [Field; 3] = [
    Field::number("axial_kn", -10000.0, 10000.0, "factored axial force, kN")
        .trained(-1000.0, 1000.0),
    Field::number("shear_kn", -10000.0, 10000.0, "factored shear, kN").trained(-2000.0, 2000.0),
    Field::number("moment_knm", -5000.0, 5000.0, "factored moment, kNm").trained(-2000.0, 2000.0),
];
pub const GEOMETRY_FIELDS: [Field; 3] = [
    Field::number(
        "eccentricity_mm",
        0.0,
        1000.0,
        "bolt line to support (weld) distance, mm",
    )
    .trained(30.0, 200.0),
    Field::integer("bolt_rows", 1, 20, "rows of M20 bolts").trained(2.0, 10.0),
    Field::number(
        "plate_thickness_mm",
        3.0,
        100.0,
        "connection plate thickness, mm",
    )
    .trained(8.0, 40.0),
];
const MEMBER_KIND: Kind = Kind::Object(&MEMBER_FIELDS);
pub const FIELDS: [Field; 3] = [
    Field::new(
        "members",
        Kind::Array {
            items: &MEMBER_KIND,
            min_items: 1,
            max_items: MAX_MEMBERS,
        },
        "the members meeting at the joint; the first is the supported beam",
    ),
    Field::new(
        "loads",
        Kind::Object(&LOAD_FIELDS),
        "design loads at the joint",
    ),
    Field::new(
        "geometry",
        Kind::Object(&GEOMETRY_FIELDS),
        "connection geometry",
    ),
];

const PROBS: [Field; 5] = [
    Field::number("shear-tab", 0.0, 1.0, "probability"),
    Field::number("end-plate", 0.0, 1.0, "probability"),
    Field::number("flange-plate-moment", 0.0, 1.0, "probability"),
    Field::number("bolted-splice", 0.0, 1.0, "probability"),
    Field::number("welded-moment", 0.0, 1.0, "probability"),
];
pub const OUTPUT: [Field; 5] = [
    Field::new(
        "connection_type",
        Kind::Enum(&TYPES),
        "the network's choice of connection",
    ),
    Field::new(
        "type_probabilities",
        Kind::Object(&PROBS),
        "the network's probability of each type (sums to 1)",
    ),
    Field::number(
        "capacity_ratio",
        0.0,
        f64::INFINITY,
        "demand / capacity of the chosen connection (AISC 360-22 ch. J checks; > 1 fails)",
    ),
    Field::number("confidence", 0.0, 1.0, "probability of the chosen type"),
    Field::new(
        "governing_check",
        Kind::Text {
            max_chars: usize::MAX,
        },
        "the check with the highest demand/capacity",
    ),
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
    fields::document(
        NAME,
        "A steel connection: members, loads and geometry.",
        &FIELDS,
    )
}

pub fn output_schema() -> Value {
    fields::output_document(
        NAME,
        "The connection type and its demand/capacity ratio.",
        &OUTPUT,
    )
}

/// Reads the request into the teacher's joint.
pub fn joint(body: &Value, warnings: &mut Vec<String>) -> Result<Joint, SchemaError> {
    let root = fields::object(body, "", &FIELDS)?;
    let [members_f, loads_f, geometry_f] = &FIELDS;
    let items = members_f.read_array(root, "")?;
    let loads = loads_f.read_object(root, "")?;
    let geometry = geometry_f.read_object(root, "")?;
    let mut members = Vec::with_capacity(items.len());
    for (pos, item) in items.iter().enumerate() {
        let at = index("members", pos);
        let m = fields::object(item, &at, &MEMBER_FIELDS)?;
        let [depth, width, web, flange, angle] = &MEMBER_FIELDS;
        members.push(Member {
            depth_mm: depth.read_number(m, &at, warnings)? as f64,
            flange_width_mm: width.read_number(m, &at, warnings)? as f64,
            web_thickness_mm: web.read_number(m, &at, warnings)? as f64,
            flange_thickness_mm: flange.read_number(m, &at, warnings)? as f64,
            angle_deg: angle.read_number(m, &at, warnings)? as f64,
        });
    }
    let [axial, shear, moment] = &LOAD_FIELDS;
    let [ecc, rows_f, plate] = &GEOMETRY_FIELDS;
    Ok(Joint {
        members,
        axial_kn: axial.read_number(loads, "loads", warnings)? as f64,
        shear_kn: shear.read_number(loads, "loads", warnings)? as f64,
        moment_knm: moment.read_number(loads, "loads", warnings)? as f64,
        eccentricity_mm: ecc.read_number(geometry, "geometry", warnings)? as f64,
        bolt_rows: rows_f.read_integer(geometry, "geometry", warnings)?,
        plate_thickness_mm: plate.read_number(geometry, "geometry", warnings)? as f64,
    })
}

/// Channel-major `[CHANNELS, MAX_MEMBERS]` features: per member depth, flange width, web and
/// flange thickness, angle, deviation from the first member's line (in units of the
/// collinearity tolerance), a presence flag; shared: the moment share r as r/(1+r) and as
/// ln r / 2 clamped to ±3, eccentricity, bolt rows, plate thickness and the member count.
pub fn features(j: &Joint) -> Vec<f32> {
    let r = teacher::moment_share(j);
    let share = if r.is_infinite() { 1.0 } else { r / (1.0 + r) };
    // ln r at a scale where the type bands (factors of 5 and 2.5 apart) are well separated.
    let ln_share = if r == 0.0 {
        -3.0
    } else {
        (r.ln() / 2.0).clamp(-3.0, 3.0)
    };
    let shared = [
        share,
        ln_share,
        j.eccentricity_mm / 500.0,
        j.bolt_rows as f64 / 12.0,
        j.plate_thickness_mm / 60.0,
        j.members.len() as f64 / MAX_MEMBERS as f64,
    ];
    let mut values = vec![0f32; CHANNELS * MAX_MEMBERS];
    for (pos, m) in j.members.iter().enumerate() {
        let angle = if pos == 0 { 0.0 } else { m.angle_deg };
        let deviation = angle.min(180.0 - angle) / teacher::COLLINEAR_DEG;
        let own = [
            m.depth_mm / 1000.0,
            m.flange_width_mm / 500.0,
            m.web_thickness_mm / 50.0,
            m.flange_thickness_mm / 80.0,
            angle / 180.0,
            deviation.min(4.0) - 1.0,
            1.0,
        ];
        for (c, v) in own.iter().chain(&shared).enumerate() {
            values[c * MAX_MEMBERS + pos] = *v as f32;
        }
    }
    values
}

/// The joint packed after the features (so the inference thread can run the exact check).
fn pack(j: &Joint, out: &mut Vec<f32>) {
    out.extend(
        [
            j.axial_kn,
            j.shear_kn,
            j.moment_knm,
            j.eccentricity_mm,
            j.bolt_rows as f64,
            j.plate_thickness_mm,
        ]
        .map(|v| v as f32),
    );
    for pos in 0..MAX_MEMBERS {
        let m = j.members.get(pos);
        out.extend(
            [
                m.map_or(0.0, |m| m.depth_mm),
                m.map_or(0.0, |m| m.flange_width_mm),
                m.map_or(0.0, |m| m.web_thickness_mm),
                m.map_or(0.0, |m| m.flange_thickness_mm),
                m.map_or(0.0, |m| m.angle_deg),
            ]
            .map(|v| v as f32),
        );
    }
    out.push(j.members.len() as f32);
}

fn unpack(v: &[f32]) -> Joint {
    let count = (v[JOINT_VALUES - 1] as usize).clamp(1, MAX_MEMBERS);
    let members = (0..count)
        .map(|pos| {
            let m = &v[6 + pos * 5..6 + pos * 5 + 5];
            Member {
                depth_mm: m[0] as f64,
                flange_width_mm: m[1] as f64,
                web_thickness_mm: m[2] as f64,
                flange_thickness_mm: m[3] as f64,
                angle_deg: m[4] as f64,
            }
        })
        .collect();
    Joint {
        members,
        axial_kn: v[0] as f64,
        shear_kn: v[1] as f64,
        moment_knm: v[2] as f64,
        eccentricity_mm: v[3] as f64,
        bolt_rows: v[4] as i64,
        plate_thickness_mm: v[5] as f64,
    }
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let mut warnings = Vec::new();
    let j = joint(body, &mut warnings)?;
    let mut values = features(&j);
    pack(&j, &mut values);
    let mut s = Sample::dense(values, vec![(CHANNELS * MAX_MEMBERS + JOINT_VALUES) as i64]);
    s.warnings = warnings;
    Ok(s)
}

/// The network's input tensor `[n, CHANNELS, MAX_MEMBERS]` of parsed samples.
pub fn feature_tensor(batch: &[&Sample], device: Device) -> Result<tch::Tensor, TchError> {
    let n = batch.len() as i64;
    stack(batch, device)?
        .f_narrow(1, 0, (CHANNELS * MAX_MEMBERS) as i64)?
        .contiguous()
        .f_view([n, CHANNELS as i64, MAX_MEMBERS as i64])
}

#[derive(Debug)]
pub struct ConnectionNet {
    conv1: nn::Conv1D,
    conv2: nn::Conv1D,
    attention: SelfAttention,
    norm: nn::LayerNorm,
    hidden: nn::Linear,
    type_head: nn::Linear,
}

impl ConnectionNet {
    /// Type logits `[n, TYPES]` for the feature tensor.
    pub fn logits(&self, x: &tch::Tensor) -> Result<tch::Tensor, TchError> {
        let valid = x.f_select(1, 6)?.f_gt(0.5)?; // presence flag, [n, L]
        let h = self.conv1.forward(x).relu();
        let h = self.conv2.forward(&h).relu().f_transpose(1, 2)?; // [n, L, 32]
        let h = self
            .norm
            .forward(&(&h + self.attention.forward(&h, &valid)?));
        let pooled = masked_mean(&h, &valid)?;
        // The shared channels (the same at every position) go straight to the head too.
        let shared = x.f_select(2, 0)?.f_narrow(1, 7, 6)?;
        let joined = tch::Tensor::f_cat(&[pooled, shared], 1)?;
        Ok(self.type_head.forward(&self.hidden.forward(&joined).relu()))
    }
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
            hidden: nn::linear(p / "hidden", 32 + 6, 64, Default::default()),
            type_head: nn::linear(p / "type_head", 64, TYPES.len() as i64, Default::default()),
        }
    }

    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError> {
        let x = feature_tensor(batch, device)?;
        let probs = rows(&self.logits(&x)?.f_softmax(-1, tch::Kind::Float)?)?;
        Ok(probs
            .iter()
            .zip(batch)
            .map(|(p, sample)| {
                let best = argmax(p);
                let j = unpack(&sample.values[CHANNELS * MAX_MEMBERS..]);
                let checks = teacher::checks(&j, best);
                let governing = checks
                    .iter()
                    .copied()
                    .fold(("none", 0.0), |a, c| if c.1 > a.1 { c } else { a });
                json!({
                    "connection_type": TYPES[best],
                    "type_probabilities": labelled(&TYPES, p),
                    "capacity_ratio": num(governing.1 as f32),
                    "confidence": num(p[best]),
                    "governing_check": governing.0,
                })
            })
            .collect())
    }
}

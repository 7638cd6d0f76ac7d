//! section-optimizer: a gradient-boosted tree ensemble (XGBoost JSON, evaluated as tensor ops)
//! proposes the lightest adequate UB section; the exact bending and deflection check of the
//! reference (`teachers::section`) then accepts the proposal or moves it up to the next
//! section that passes, so a recommended section is never reported overloaded.
//!
//! The ensemble is a monotone regression (reg:squarederror) on two features — ln of the
//! plastic modulus bending needs and ln of the second moment of area the deflection limit
//! needs, both computed from the request — whose rounded output is the index of the section in
//! the candidate list (lightest first; one past the end means none suffices). Both features
//! grow with every load and the span, and the trees are trained with increasing monotone
//! constraints on both, so more load can never yield a lighter proposal; the check only moves
//! up, which keeps that property (see `respond`).

use super::{Model, num, rows, stack};
use crate::fields::{self, Field, Kind};
use crate::schema::{Sample, SchemaError};
use crate::teachers::section::{self as teacher, Beam, Section};
use crate::xgboost::{Objective, TensorEnsemble, TreeEnsemble, XgboostError};
use serde_json::{Value, json};
use tch::{Device, TchError};

pub const NAME: &str = "section-optimizer";
/// The ensemble's features, in order.
pub const FEATURES: [&str; 2] = ["ln_required_wpl_cm3", "ln_required_iy_cm4"];
/// Values of the check step.
pub const CHECKED: [&str; 3] = ["accepted", "moved-up", "none-suffices"];

pub const FIELDS: [Field; 6] = [
    Field::number("span_m", 0.5, 30.0, "simply supported span, m").trained(1.0, 20.0),
    Field::number(
        "udl_kn_per_m",
        0.0,
        500.0,
        "uniformly distributed load over the span incl. self-weight, kN/m",
    )
    .trained(0.0, 200.0),
    Field::number("point_load_kn", 0.0, 2000.0, "point load at midspan, kN").trained(0.0, 500.0),
    Field::number("fy_mpa", 200.0, 700.0, "steel yield strength, MPa").trained(235.0, 460.0),
    Field::number(
        "deflection_limit",
        100.0,
        1000.0,
        "allowed deflection is span / this (e.g. 360)",
    )
    .trained(180.0, 500.0),
    Field::new(
        "restrained",
        Kind::Boolean,
        "compression flange laterally restrained (false: resistance × 0.6)",
    ),
];

const TEXT: Kind = Kind::Text {
    max_chars: usize::MAX,
};
const NUMBER: Kind = Kind::Number {
    min: 0.0,
    max: f64::INFINITY,
};
const INDEX: Kind = Kind::Integer { min: 0, max: 64 };
const GOVERNING: Kind = Kind::Enum(&["bending", "deflection"]);
pub const OUTPUT: [Field; 10] = [
    Field::new(
        "section",
        Kind::Nullable(&TEXT),
        "designation of the recommended UB section; null when none of the table suffices",
    ),
    Field::new(
        "section_class",
        Kind::Nullable(&INDEX),
        "index of the section among the candidates, lightest first",
    ),
    Field::new(
        "mass_kg_per_m",
        Kind::Nullable(&NUMBER),
        "mass of the section, kg/m",
    ),
    Field::new("design_moment_knm", NUMBER, "wL²/8 + PL/4, kNm"),
    Field::new(
        "utilisation",
        Kind::Nullable(&NUMBER),
        "bending: design moment / (χ·fy·Wpl) of the section (≤ 1)",
    ),
    Field::new(
        "deflection_utilisation",
        Kind::Nullable(&NUMBER),
        "deflection / (span / deflection_limit) of the section (≤ 1)",
    ),
    Field::new(
        "governing",
        Kind::Nullable(&GOVERNING),
        "the check with the higher utilisation",
    ),
    Field::new(
        "proposed_section",
        Kind::Nullable(&TEXT),
        "the ensemble's proposal before the check (null: it proposed none)",
    ),
    Field::new(
        "ensemble_score",
        Kind::Number {
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
        },
        "the ensemble's raw output (candidate index, unrounded)",
    ),
    Field::new(
        "checked",
        Kind::Enum(&CHECKED),
        "accepted: the proposal passed; moved-up: a heavier section was needed; \
         none-suffices: no candidate from the proposal up passes",
    ),
];

pub fn example() -> Value {
    json!({"span_m": 6.0, "udl_kn_per_m": 20.0, "point_load_kn": 10.0, "fy_mpa": 355.0,
           "deflection_limit": 360.0, "restrained": true})
}

pub fn input_schema() -> Value {
    fields::document(
        NAME,
        "A simply supported steel beam and its loads.",
        &FIELDS,
    )
}

pub fn output_schema() -> Value {
    fields::output_document(
        NAME,
        "The lightest adequate UB section of the shipped table (SCI P363).",
        &OUTPUT,
    )
}

/// Reads the request into the teacher's beam.
pub fn beam(body: &Value, warnings: &mut Vec<String>) -> Result<Beam, SchemaError> {
    let m = fields::object(body, "", &FIELDS)?;
    let [span, udl, point, fy, limit, restrained] = &FIELDS;
    Ok(Beam {
        span_m: span.read_number(m, "", warnings)? as f64,
        udl_kn_per_m: udl.read_number(m, "", warnings)? as f64,
        point_load_kn: point.read_number(m, "", warnings)? as f64,
        fy_mpa: fy.read_number(m, "", warnings)? as f64,
        deflection_limit: limit.read_number(m, "", warnings)? as f64,
        restrained: restrained.read_bool(m, "")?,
    })
}

/// The ensemble's features for a beam.
pub fn features(b: &Beam) -> [f32; 2] {
    [
        (teacher::required_wpl_cm3(b) + 1e-3).ln() as f32,
        (teacher::required_iy_cm4(b) + 1e-3).ln() as f32,
    ]
}

/// The sample carries the ensemble's two features, then the beam (for the exact check).
pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let mut warnings = Vec::new();
    let b = beam(body, &mut warnings)?;
    let f = features(&b);
    let values = vec![
        f[0],
        f[1],
        b.span_m as f32,
        b.udl_kn_per_m as f32,
        b.point_load_kn as f32,
        b.fy_mpa as f32,
        b.deflection_limit as f32,
        if b.restrained { 1.0 } else { 0.0 },
    ];
    let mut s = Sample::dense(values, vec![8]);
    s.warnings = warnings;
    Ok(s)
}

fn beam_of(sample: &Sample) -> Beam {
    let v = &sample.values;
    Beam {
        span_m: v[2] as f64,
        udl_kn_per_m: v[3] as f64,
        point_load_kn: v[4] as f64,
        fy_mpa: v[5] as f64,
        deflection_limit: v[6] as f64,
        restrained: v[7] >= 0.5,
    }
}

/// The proposal (rounded ensemble output, clamped to 0..=candidates) for a raw score.
pub fn proposal(score: f32, candidates: usize) -> usize {
    (score.round().max(0.0) as usize).min(candidates)
}

/// The recommendation: the lightest candidate from `proposed` up that passes the exact check.
/// For heavier beams the proposal never drops (monotone trees) and the set of passing
/// sections only shrinks, so the recommendation never gets lighter either.
pub fn recommend(b: &Beam, proposed: usize, candidates: &[Section]) -> Option<usize> {
    (proposed..candidates.len()).find(|&i| teacher::passes(b, &candidates[i]))
}

/// The response for one beam given the ensemble's raw score.
pub fn respond(b: &Beam, score: f32, candidates: &[Section]) -> Value {
    let proposed = proposal(score, candidates.len());
    let chosen = recommend(b, proposed, candidates);
    let checked = match chosen {
        Some(i) if i == proposed => CHECKED[0],
        Some(_) => CHECKED[1],
        None => CHECKED[2],
    };
    let section = chosen.map(|i| &candidates[i]);
    let bending = section.map(|s| teacher::bending_utilisation(b, s));
    let deflection = section.map(|s| teacher::deflection_utilisation(b, s));
    json!({
        "section": section.map(|s| s.designation.clone()),
        "section_class": chosen,
        "mass_kg_per_m": section.map(|s| s.mass_kg_per_m),
        "design_moment_knm": num(teacher::design_moment_knm(b) as f32),
        "utilisation": bending.map(|u| num(u as f32)),
        "deflection_utilisation": deflection.map(|u| num(u as f32)),
        "governing": match (bending, deflection) {
            (Some(m), Some(d)) => json!(if m >= d { "bending" } else { "deflection" }),
            _ => Value::Null,
        },
        "proposed_section": candidates.get(proposed).map(|s| s.designation.clone()),
        "ensemble_score": num(score),
        "checked": checked,
    })
}

pub struct SectionOptimizer {
    ensemble: TensorEnsemble,
    candidates: &'static [Section],
    device: Device,
}

impl SectionOptimizer {
    pub fn from_ensemble(e: &TreeEnsemble, device: Device) -> Result<Self, XgboostError> {
        if e.num_feature != FEATURES.len() || e.num_group != 1 || e.objective != Objective::Identity
        {
            return Err(XgboostError::Unsupported(format!(
                "section-optimizer needs a reg:squarederror model over {} features ({}) \
                 (got {} features, {} outputs)",
                FEATURES.len(),
                FEATURES.join(", "),
                e.num_feature,
                e.num_group
            )));
        }
        let candidates = teacher::candidates().map_err(XgboostError::Format)?;
        Ok(SectionOptimizer {
            ensemble: TensorEnsemble::new(e, device)?,
            candidates,
            device,
        })
    }
}

fn tch_error(e: XgboostError) -> TchError {
    match e {
        XgboostError::Tch(t) => t,
        other => TchError::Kind(other.to_string()),
    }
}

impl Model for SectionOptimizer {
    fn forward(&self, batch: &[&Sample]) -> Result<Vec<Value>, TchError> {
        let scores = tch::no_grad(|| {
            let x = stack(batch, self.device)?
                .f_narrow(1, 0, FEATURES.len() as i64)?
                .contiguous();
            self.ensemble.predict(&x).map_err(tch_error)
        })?;
        let scores = rows(&scores)?;
        Ok(scores
            .iter()
            .zip(batch)
            .map(|(s, sample)| {
                let mut out = respond(&beam_of(sample), s[0], self.candidates);
                super::attach_warnings(&mut out, sample);
                out
            })
            .collect())
    }
}

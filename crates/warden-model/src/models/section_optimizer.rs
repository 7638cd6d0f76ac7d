//! section-optimizer: an XGBoost gradient-boosted tree ensemble (evaluated as tensor ops) picks
//! the lightest adequate UB section; the utilisation of that section follows from the design
//! moment by the textbook formulas (M = wL²/8 + PL/4, capacity fy·Wpl).
//!
//! The weight file is a real XGBoost JSON model (`save_model("m.json")`) with six features in
//! the order of [`FEATURES`] and six classes in the order of [`SECTIONS`].

use super::{Model, argmax, num, rows, stack};
use crate::schema::{Sample, SchemaError, bool_field, number_field, object};
use crate::xgboost::{Objective, TensorEnsemble, TreeEnsemble, XgboostError};
use serde_json::{Value, json};
use tch::{Device, TchError};

pub const NAME: &str = "section-optimizer";
pub const FEATURES: [&str; 6] = [
    "span_m",
    "udl_kn_per_m",
    "point_load_kn",
    "fy_mpa",
    "deflection_limit",
    "restrained",
];
/// The candidate sections, lightest first, with plastic modulus Wpl in cm³.
pub const SECTIONS: [(&str, f32); 6] = [
    ("UB 203x133x25", 258.0),
    ("UB 254x146x31", 393.0),
    ("UB 305x165x40", 623.0),
    ("UB 356x171x51", 896.0),
    ("UB 406x178x67", 1350.0),
    ("UB 457x191x82", 1830.0),
];
/// Moment capacity factor without lateral restraint (a crude lateral-torsional buckling allowance).
const UNRESTRAINED_FACTOR: f32 = 0.6;

/// The trained ensemble shipped with the binary (made by fixtures/make_xgb.py).
pub const BUILTIN_MODEL_JSON: &str = include_str!("../../fixtures/section_optimizer_xgb.json");

pub fn example() -> Value {
    json!({"span_m": 6.0, "udl_kn_per_m": 20.0, "point_load_kn": 10.0, "fy_mpa": 355.0,
           "deflection_limit": 360.0, "restrained": true})
}

pub fn input_schema() -> Value {
    json!({
        "span_m": "number 0.5..30", "udl_kn_per_m": "number 0..500",
        "point_load_kn": "number 0..2000 (at midspan)", "fy_mpa": "number 200..700",
        "deflection_limit": "number 100..1000 (span / allowed deflection)",
        "restrained": "boolean (compression flange laterally restrained)"
    })
}

pub fn output_schema() -> Value {
    json!({
        "section_class": "integer 0..5", "section": "designation of the recommended UB section",
        "probabilities": "object: section -> probability (sums to 1)",
        "design_moment_knm": "number", "utilisation": "design moment / moment capacity of the section"
    })
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let m = object(body, "", &FEATURES)?;
    let restrained = if bool_field(m, "", "restrained")? {
        1.0
    } else {
        0.0
    };
    let values = vec![
        number_field(m, "", "span_m", 0.5, 30.0)?,
        number_field(m, "", "udl_kn_per_m", 0.0, 500.0)?,
        number_field(m, "", "point_load_kn", 0.0, 2000.0)?,
        number_field(m, "", "fy_mpa", 200.0, 700.0)?,
        number_field(m, "", "deflection_limit", 100.0, 1000.0)?,
        restrained,
    ];
    Ok(Sample::dense(values, vec![FEATURES.len() as i64]))
}

/// Design moment (kNm) of a simply supported span: wL²/8 + PL/4.
pub fn design_moment(features: &[f32]) -> f32 {
    let (span, w, p) = (features[0], features[1], features[2]);
    w * span * span / 8.0 + p * span / 4.0
}

/// Moment capacity (kNm) of section `class`: fy·Wpl, reduced when unrestrained.
pub fn moment_capacity(features: &[f32], class: usize) -> f32 {
    let factor = if features[5] >= 0.5 {
        1.0
    } else {
        UNRESTRAINED_FACTOR
    };
    features[3] * SECTIONS[class].1 / 1000.0 * factor
}

pub struct SectionOptimizer {
    ensemble: TensorEnsemble,
    device: Device,
}

impl SectionOptimizer {
    pub fn from_ensemble(e: &TreeEnsemble, device: Device) -> Result<Self, XgboostError> {
        if e.num_feature != FEATURES.len()
            || e.num_group != SECTIONS.len()
            || e.objective != Objective::Softmax
        {
            return Err(XgboostError::Unsupported(format!(
                "section-optimizer needs a multi:softprob model with {} features and {} classes \
                 (got {} features, {} outputs)",
                FEATURES.len(),
                SECTIONS.len(),
                e.num_feature,
                e.num_group
            )));
        }
        Ok(SectionOptimizer {
            ensemble: TensorEnsemble::new(e, device)?,
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
        let probs = tch::no_grad(|| {
            let x = stack(batch, self.device)?;
            self.ensemble.predict(&x).map_err(tch_error)
        })?;
        let names: Vec<&str> = SECTIONS.iter().map(|s| s.0).collect();
        Ok(rows(&probs)?
            .iter()
            .zip(batch)
            .map(|(p, sample)| {
                let class = argmax(p);
                let moment = design_moment(&sample.values);
                json!({
                    "section_class": class,
                    "section": SECTIONS[class].0,
                    "probabilities": super::labelled(&names, p),
                    "design_moment_knm": num(moment),
                    "utilisation": num(moment / moment_capacity(&sample.values, class)),
                })
            })
            .collect())
    }
}

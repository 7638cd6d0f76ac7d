//! risk-analyzer: a soft-voting ensemble of small heads (a linear model and two MLPs) over
//! project features; the class probabilities are the mean of the members' probabilities.

use super::{Net, argmax, labelled, num, rows, stack};
use crate::schema::{Sample, SchemaError, field, integer_field, number_field, object};
use serde_json::{Value, json};
use tch::nn::{self, Module};
use tch::{Device, Kind, TchError, Tensor};

pub const NAME: &str = "risk-analyzer";
pub const CLASSES: [&str; 3] = ["low", "medium", "high"];
pub const MEMBERS: [&str; 3] = ["linear", "mlp-narrow", "mlp-wide"];
const FEATURES: i64 = 8;
const SOIL: [&str; 5] = ["A", "B", "C", "D", "E"];
const KEYS: [&str; 8] = [
    "budget_musd",
    "duration_months",
    "storeys",
    "max_span_m",
    "seismic_zone",
    "soil_class",
    "design_changes",
    "team_experience_years",
];

pub fn example() -> Value {
    json!({"budget_musd": 42.0, "duration_months": 30.0, "storeys": 12, "max_span_m": 14.5,
           "seismic_zone": 2, "soil_class": "C", "design_changes": 18, "team_experience_years": 9.0})
}

pub fn input_schema() -> Value {
    json!({
        "budget_musd": "number 0.01..100000", "duration_months": "number 1..240",
        "storeys": "integer 1..200", "max_span_m": "number 1..200", "seismic_zone": "integer 0..4",
        "soil_class": "string, one of A, B, C, D, E", "design_changes": "integer 0..10000",
        "team_experience_years": "number 0..60"
    })
}

pub fn output_schema() -> Value {
    json!({
        "risk_class": "low | medium | high",
        "probabilities": "object: class -> probability (mean of the members; sums to 1)",
        "score": "number 0..1 (P(medium)/2 + P(high))",
        "votes": "array: {member, class, probabilities} for each ensemble member"
    })
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let m = object(body, "", &KEYS)?;
    let soil = field(m, "", "soil_class")?;
    let soil = soil
        .as_str()
        .and_then(|s| SOIL.iter().position(|c| *c == s))
        .ok_or_else(|| {
            SchemaError::new(
                "soil_class",
                "invalid_value",
                "must be one of A, B, C, D, E",
            )
        })?;
    // Scaled to roughly unit range; log for the heavy-tailed ones.
    let values = vec![
        (1.0 + number_field(m, "", "budget_musd", 0.01, 100000.0)?).ln() / 10.0,
        number_field(m, "", "duration_months", 1.0, 240.0)? / 60.0,
        integer_field(m, "", "storeys", 1, 200)? as f32 / 50.0,
        number_field(m, "", "max_span_m", 1.0, 200.0)? / 30.0,
        integer_field(m, "", "seismic_zone", 0, 4)? as f32 / 4.0,
        soil as f32 / 4.0,
        (1.0 + integer_field(m, "", "design_changes", 0, 10000)? as f32).ln() / 5.0,
        number_field(m, "", "team_experience_years", 0.0, 60.0)? / 20.0,
    ];
    Ok(Sample::dense(values, vec![FEATURES]))
}

#[derive(Debug)]
pub struct RiskNet {
    members: Vec<nn::Sequential>,
}

impl Net for RiskNet {
    fn build(p: &nn::Path) -> Self {
        let c = Default::default();
        let k = CLASSES.len() as i64;
        let linear = nn::seq().add(nn::linear(p / "linear", FEATURES, k, c));
        let narrow = nn::seq()
            .add(nn::linear(p / "narrow1", FEATURES, 16, c))
            .add_fn(|x| x.relu())
            .add(nn::linear(p / "narrow2", 16, k, c));
        let wide = nn::seq()
            .add(nn::linear(p / "wide1", FEATURES, 64, c))
            .add_fn(|x| x.relu())
            .add(nn::linear(p / "wide2", 64, 32, c))
            .add_fn(|x| x.relu())
            .add(nn::linear(p / "wide3", 32, k, c));
        RiskNet {
            members: vec![linear, narrow, wide],
        }
    }

    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError> {
        let x = stack(batch, device)?;
        let votes: Vec<Tensor> = self
            .members
            .iter()
            .map(|m| m.forward(&x).f_softmax(-1, Kind::Float))
            .collect::<Result<_, _>>()?;
        let mean = Tensor::f_stack(&votes, 0)?.f_mean_dim(0, false, Kind::Float)?;
        let mean = rows(&mean)?;
        let votes: Vec<Vec<Vec<f32>>> = votes.iter().map(rows).collect::<Result<_, _>>()?;
        Ok(mean
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let member_votes: Vec<Value> = MEMBERS
                    .iter()
                    .zip(&votes)
                    .map(|(name, v)| {
                        json!({"member": name, "class": CLASSES[argmax(&v[i])],
                               "probabilities": labelled(&CLASSES, &v[i])})
                    })
                    .collect();
                json!({
                    "risk_class": CLASSES[argmax(p)],
                    "probabilities": labelled(&CLASSES, p),
                    "score": num(p[1] * 0.5 + p[2]),
                    "votes": member_votes,
                })
            })
            .collect())
    }
}

//! risk-analyzer: a soft-voting ensemble of three monotone networks (a linear model and two
//! MLPs) regressing the reference risk score (`teachers::risk`) from the eight factors.
//!
//! Every member has non-negative effective weights (softplus of the stored ones) and monotone
//! activations (tanh), and its inputs are the factors oriented so that larger is riskier; so a
//! riskier input can never lower any member's score, nor the ensemble's. Each member's class
//! probabilities are a logistic calibration of its score against the class thresholds
//! (temperature [`TEMPERATURE`]); the ensemble's are their mean (soft voting), its score the
//! members' mean, and its class the teacher's thresholds applied to that score.

use super::{Net, labelled, num, rows, stack};
use crate::fields::{self, Field, Kind};
use crate::schema::{Sample, SchemaError};
use crate::teachers::risk::{self as teacher, CLASSES, Project, SOIL};
use serde_json::{Value, json};
use tch::nn;
use tch::{Device, TchError, Tensor};

pub const NAME: &str = "risk-analyzer";
pub const MEMBERS: [&str; 3] = ["linear", "mlp-narrow", "mlp-wide"];
pub const FEATURES: i64 = 8;
/// Width of the logistic band that turns a score into class probabilities.
pub const TEMPERATURE: f64 = 0.02;

pub const FIELDS: [Field; 8] = [
    Field::number("budget_musd", 0.01, 100000.0, "project budget, million US$")
        .trained(0.5, 2000.0),
    Field::number("duration_months", 1.0, 240.0, "planned duration, months").trained(3.0, 120.0),
    Field::integer("storeys", 1, 200, "storeys above ground").trained(1.0, 80.0),
    Field::number("max_span_m", 1.0, 200.0, "longest structural span, m").trained(3.0, 60.0),
    Field::integer(
        "seismic_zone",
        0,
        4,
        "seismic zone, 0 (none) to 4 (highest hazard)",
    )
    .trained(0.0, 4.0),
    Field::new(
        "soil_class",
        Kind::Enum(&SOIL),
        "site (soil) class: A rock, B, C, D, E soft soil",
    ),
    Field::integer(
        "design_changes",
        0,
        10000,
        "design changes issued so far (count)",
    )
    .trained(0.0, 500.0),
    Field::number(
        "team_experience_years",
        0.0,
        60.0,
        "design team's median experience, years",
    )
    .trained(0.0, 30.0),
];

const PROBS: [Field; 3] = [
    Field::number("low", 0.0, 1.0, "probability"),
    Field::number("medium", 0.0, 1.0, "probability"),
    Field::number("high", 0.0, 1.0, "probability"),
];
const VOTE: [Field; 4] = [
    Field::new("member", Kind::Enum(&MEMBERS), "ensemble member"),
    Field::new("class", Kind::Enum(&CLASSES), "the member's class"),
    Field::number("score", 0.0, 1.0, "the member's risk score"),
    Field::new(
        "probabilities",
        Kind::Object(&PROBS),
        "the member's calibrated probabilities",
    ),
];
const VOTE_KIND: Kind = Kind::Object(&VOTE);
pub const OUTPUT: [Field; 4] = [
    Field::new(
        "risk_class",
        Kind::Enum(&CLASSES),
        "low (score < 0.35), medium (< 0.6) or high",
    ),
    Field::new(
        "probabilities",
        Kind::Object(&PROBS),
        "mean of the members' probabilities (soft voting; sums to 1)",
    ),
    Field::number(
        "score",
        0.0,
        1.0,
        "weighted risk score, 0 (least) .. 1 (most): the members' mean",
    ),
    Field::new(
        "votes",
        Kind::Array {
            items: &VOTE_KIND,
            min_items: 3,
            max_items: 3,
        },
        "each ensemble member's score, class and probabilities",
    ),
];

pub fn example() -> Value {
    json!({"budget_musd": 42.0, "duration_months": 30.0, "storeys": 12, "max_span_m": 14.5,
           "seismic_zone": 2, "soil_class": "C", "design_changes": 18, "team_experience_years": 9.0})
}

pub fn input_schema() -> Value {
    fields::document(NAME, "A building project's eight risk factors.", &FIELDS)
}

pub fn output_schema() -> Value {
    fields::output_document(NAME, "The project's risk class and score.", &OUTPUT)
}

/// Reads the request into the teacher's project description.
pub fn project(body: &Value, warnings: &mut Vec<String>) -> Result<Project, SchemaError> {
    let m = fields::object(body, "", &FIELDS)?;
    let [
        budget,
        duration,
        storeys,
        span,
        zone,
        soil,
        changes,
        experience,
    ] = &FIELDS;
    Ok(Project {
        budget_musd: budget.read_number(m, "", warnings)? as f64,
        duration_months: duration.read_number(m, "", warnings)? as f64,
        storeys: storeys.read_integer(m, "", warnings)?,
        max_span_m: span.read_number(m, "", warnings)? as f64,
        seismic_zone: zone.read_integer(m, "", warnings)?,
        soil_class: soil.read_choice(m, "")?,
        design_changes: changes.read_integer(m, "", warnings)?,
        team_experience_years: experience.read_number(m, "", warnings)? as f64,
    })
}

/// The network's input: the teacher's eight normalised factors (larger = riskier).
pub fn features(p: &Project) -> Vec<f32> {
    teacher::factors(p).iter().map(|&f| f as f32).collect()
}

pub fn parse(body: &Value) -> Result<Sample, SchemaError> {
    let mut warnings = Vec::new();
    let p = project(body, &mut warnings)?;
    let mut s = Sample::dense(features(&p), vec![FEATURES]);
    s.warnings = warnings;
    Ok(s)
}

/// A dense layer whose effective weights are softplus(stored) ≥ 0, so it is monotone
/// non-decreasing in every input.
#[derive(Debug)]
struct MonotoneLinear {
    linear: nn::Linear,
    /// softplus(stored), transposed (a view, as computed per pass before), once the weights
    /// are frozen for serving (training needs the stored ones, to differentiate through
    /// softplus).
    effective_t: Option<Tensor>,
}

impl MonotoneLinear {
    fn new(p: nn::Path, inputs: i64, outputs: i64) -> MonotoneLinear {
        // Start with effective weights near 1/inputs (softplus⁻¹ of it), so the tanh units
        // begin unsaturated (a default init would give softplus ≈ 0.7 everywhere).
        let target = 1.0 / inputs as f64;
        let raw = target.exp_m1().ln();
        let config = nn::LinearConfig {
            ws_init: nn::Init::Uniform {
                lo: raw - 0.5,
                up: raw + 0.5,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        MonotoneLinear {
            linear: nn::linear(p, inputs, outputs, config),
            effective_t: None,
        }
    }

    fn freeze(&mut self) -> Result<(), TchError> {
        self.effective_t = Some(self.linear.ws.f_softplus()?.f_tr()?);
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // The same values either way: frozen, softplus is not recomputed on every pass.
        let computed;
        let w_t = match &self.effective_t {
            Some(w_t) => w_t,
            None => {
                computed = self.linear.ws.softplus().tr();
                &computed
            }
        };
        let y = x.matmul(w_t);
        match &self.linear.bs {
            Some(b) => y + b,
            None => y,
        }
    }
}

#[derive(Debug)]
struct Member(Vec<MonotoneLinear>);

impl Member {
    /// The member's score of `centred`, the factors minus 0.5 ([`centre`]).
    fn forward(&self, centred: &Tensor) -> Tensor {
        let last = self.0.len() - 1;
        let mut h = centred.shallow_clone();
        for (i, layer) in self.0.iter().enumerate() {
            h = layer.forward(&h);
            if i < last {
                h = h.tanh();
            }
        }
        h.squeeze_dim(-1)
    }
}

#[derive(Debug)]
pub struct RiskNet {
    members: Vec<Member>,
}

impl RiskNet {
    /// Each member's score, `[members, batch]` (training reads this directly).
    pub fn member_scores(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let centred = centre(x);
        let scores: Vec<Tensor> = self.members.iter().map(|m| m.forward(&centred)).collect();
        Tensor::f_stack(&scores, 0)
    }
}

/// Centred factors (a shift keeps monotonicity) so the units start in tanh's linear part;
/// computed once for all members.
fn centre(x: &Tensor) -> Tensor {
    x - 0.5
}

/// Calibrated class probabilities of a score: P(low) = 1 − σ((s − t₁)/T),
/// P(high) = σ((s − t₂)/T), P(medium) the rest (non-negative since t₁ < t₂).
pub fn calibrated(score: f64) -> [f32; 3] {
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let above_low = sig((score - teacher::LOW_BELOW) / TEMPERATURE);
    let above_medium = sig((score - teacher::HIGH_FROM) / TEMPERATURE);
    [
        (1.0 - above_low) as f32,
        (above_low - above_medium) as f32,
        above_medium as f32,
    ]
}

impl Net for RiskNet {
    fn build(p: &nn::Path) -> Self {
        let linear = Member(vec![MonotoneLinear::new(p / "linear", FEATURES, 1)]);
        let narrow = Member(vec![
            MonotoneLinear::new(p / "narrow1", FEATURES, 16),
            MonotoneLinear::new(p / "narrow2", 16, 1),
        ]);
        let wide = Member(vec![
            MonotoneLinear::new(p / "wide1", FEATURES, 64),
            MonotoneLinear::new(p / "wide2", 64, 32),
            MonotoneLinear::new(p / "wide3", 32, 1),
        ]);
        RiskNet {
            members: vec![linear, narrow, wide],
        }
    }

    fn freeze(&mut self) -> Result<(), TchError> {
        for layer in self.members.iter_mut().flat_map(|m| m.0.iter_mut()) {
            layer.freeze()?;
        }
        Ok(())
    }

    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError> {
        let x = stack(batch, device)?;
        let scores = rows(&self.member_scores(&x)?)?; // [member][item]
        Ok((0..batch.len())
            .map(|i| {
                let member_scores: Vec<f64> = scores
                    .iter()
                    .map(|m| (m[i] as f64).clamp(0.0, 1.0))
                    .collect();
                let votes: Vec<Value> = MEMBERS
                    .iter()
                    .zip(&member_scores)
                    .map(|(name, &s)| {
                        json!({"member": name, "class": CLASSES[teacher::class(s)],
                               "score": num(s as f32),
                               "probabilities": labelled(&CLASSES, &calibrated(s))})
                    })
                    .collect();
                let n = member_scores.len() as f32;
                let mut mean = [0f32; 3];
                for s in &member_scores {
                    for (m, p) in mean.iter_mut().zip(calibrated(*s)) {
                        *m += p / n;
                    }
                }
                let score = member_scores.iter().sum::<f64>() / member_scores.len() as f64;
                json!({
                    "risk_class": CLASSES[teacher::class(score)],
                    "probabilities": labelled(&CLASSES, &mean),
                    "score": num(score as f32),
                    "votes": votes,
                })
            })
            .collect())
    }
}

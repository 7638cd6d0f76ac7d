//! `warden models evaluate`: agreement of a model's served answers with its reference
//! calculation on a held-out set drawn from the teacher's generator with another seed.
//!
//! Requests go through the real path — the teacher's request body, the model's `parse`, the
//! loaded weights' forward pass, the JSON answer — so the figures are what a caller gets.
//! Goals: ≥ 98 % agreement on every classification output, and every regression output within
//! 5 % of the teacher on ≥ 95 % of samples ("within 5 %": |model − teacher| ≤ 0.05·|teacher|;
//! for clash locations 5 % of the grid's extent, 0.35 voxel, since a coordinate near 0 has no
//! meaningful relative error).

use crate::models::Model;
use crate::schema::Sample;
use crate::teachers::{self, Rng};
use crate::training::held_out_seed;
use crate::{ModelKind, ServingError};
use serde_json::{Value, json};
use std::path::Path;

/// One measured output.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub output: String,
    /// `agreement` (classification) or `within_5pct` (regression).
    pub measure: &'static str,
    /// Share of held-out samples meeting it, 0..1.
    pub value: f64,
    /// The goal for `value`.
    pub goal: f64,
    /// How the figure is obtained, where that is not obvious.
    pub note: &'static str,
}

impl Metric {
    pub fn met(&self) -> bool {
        self.value >= self.goal
    }
}

/// A model's held-out figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub kind: ModelKind,
    pub samples: usize,
    pub metrics: Vec<Metric>,
}

impl Evaluation {
    pub fn met(&self) -> bool {
        self.metrics.iter().all(Metric::met)
    }

    /// `{samples, metrics: {output: {measure, value, goal, note}}}` for the model card.
    pub fn to_json(&self) -> Value {
        let metrics: serde_json::Map<String, Value> = self
            .metrics
            .iter()
            .map(|m| {
                (
                    m.output.clone(),
                    json!({"measure": m.measure, "value": (m.value * 1e4).round() / 1e4,
                           "goal": m.goal, "note": m.note}),
                )
            })
            .collect();
        json!({"samples": self.samples, "seed": held_out_seed(self.kind), "metrics": metrics})
    }
}

const AGREE: f64 = 0.98;
const WITHIN: f64 = 0.95;

fn share(hits: usize, total: usize) -> f64 {
    if total == 0 {
        1.0
    } else {
        hits as f64 / total as f64
    }
}

fn within(model: f64, teacher: f64, scale: f64) -> bool {
    (model - teacher).abs() <= 0.05 * scale
}

/// Runs `bodies` through `kind`'s parser and `model`, in batches.
fn answers(
    kind: ModelKind,
    model: &dyn Model,
    bodies: &[Value],
) -> Result<Vec<Value>, ServingError> {
    let mut out = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(64) {
        let samples: Vec<Sample> = chunk
            .iter()
            .map(|b| kind.parse(b).map(|mut v| v.remove(0)))
            .collect::<Result<_, _>>()
            .map_err(|e| ServingError::Options(format!("held-out request rejected: {e}")))?;
        let refs: Vec<&Sample> = samples.iter().collect();
        out.extend(model.forward(&refs)?);
    }
    Ok(out)
}

/// Evaluates the weights at `weights` against `kind`'s teacher.
pub fn evaluate(kind: ModelKind, weights: &Path) -> Result<Evaluation, ServingError> {
    let model = kind.load(weights, tch::Device::Cpu)?;
    let mut rng = Rng::new(held_out_seed(kind));
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let (samples, metrics) = match kind {
        ModelKind::RiskAnalyzer => {
            use teachers::risk;
            let n = 2000;
            let projects: Vec<_> = (0..n).map(|_| risk::sample(&mut rng)).collect();
            let bodies: Vec<Value> = projects.iter().map(risk::to_json).collect();
            let out = answers(kind, model.as_ref(), &bodies)?;
            let (mut class, mut score) = (0, 0);
            for (p, o) in projects.iter().zip(&out) {
                let t = risk::score(p);
                class += (o["risk_class"] == risk::CLASSES[risk::class(t)]) as usize;
                score += within(f(&o["score"]), t, t.abs()) as usize;
            }
            (
                n,
                vec![
                    Metric {
                        output: "risk_class".into(),
                        measure: "agreement",
                        value: share(class, n),
                        goal: AGREE,
                        note: "",
                    },
                    Metric {
                        output: "score".into(),
                        measure: "within_5pct",
                        value: share(score, n),
                        goal: WITHIN,
                        note: "relative to the teacher's score",
                    },
                ],
            )
        }
        ModelKind::ConnectionDesigner => {
            use teachers::connection;
            let n = 2000;
            let joints: Vec<_> = (0..n).map(|_| connection::sample(&mut rng)).collect();
            let bodies: Vec<Value> = joints.iter().map(connection::to_json).collect();
            let out = answers(kind, model.as_ref(), &bodies)?;
            let (mut class, mut ratio) = (0, 0);
            for (j, o) in joints.iter().zip(&out) {
                let t = connection::connection_type(j);
                class += (o["connection_type"] == connection::TYPES[t]) as usize;
                let r = connection::capacity_ratio(j, t);
                ratio += within(f(&o["capacity_ratio"]), r, r.abs()) as usize;
            }
            (
                n,
                vec![
                    Metric {
                        output: "connection_type".into(),
                        measure: "agreement",
                        value: share(class, n),
                        goal: AGREE,
                        note: "",
                    },
                    Metric {
                        output: "capacity_ratio".into(),
                        measure: "within_5pct",
                        value: share(ratio, n),
                        goal: WITHIN,
                        note: "against the teacher's ratio for the teacher's type; the served ratio is the reference check of the network's type, so a wrong type is the only way to miss",
                    },
                ],
            )
        }
        ModelKind::SectionOptimizer => {
            use teachers::section;
            let candidates = section::candidates().map_err(ServingError::Options)?;
            let n = 4000;
            let beams: Vec<_> = (0..n).map(|_| section::sample(&mut rng)).collect();
            let bodies: Vec<Value> = beams.iter().map(section::to_json).collect();
            let out = answers(kind, model.as_ref(), &bodies)?;
            let (mut chosen, mut proposed, mut util, mut overloaded) = (0, 0, 0, 0);
            for (b, o) in beams.iter().zip(&out) {
                let t = section::lightest(b, candidates);
                let name = t.map(|i| candidates[i].designation.clone());
                chosen += (o["section"] == json!(name)) as usize;
                proposed += (o["proposed_section"] == json!(name)) as usize;
                let u = t.map(|i| section::bending_utilisation(b, &candidates[i]));
                util += match (u, o["utilisation"].as_f64()) {
                    (Some(u), Some(m)) => within(m, u, u),
                    (None, None) => true,
                    _ => false,
                } as usize;
                overloaded += o["utilisation"].as_f64().is_some_and(|u| u > 1.0 + 1e-6) as usize;
            }
            (
                n,
                vec![
                    Metric {
                        output: "section".into(),
                        measure: "agreement",
                        value: share(chosen, n),
                        goal: AGREE,
                        note: "after the exact check (which only moves a proposal up)",
                    },
                    Metric {
                        output: "proposed_section".into(),
                        measure: "agreement",
                        value: share(proposed, n),
                        goal: 0.0,
                        note: "informational (no goal): the monotone trees alone, before the check; they err light, which the check corrects",
                    },
                    Metric {
                        output: "utilisation".into(),
                        measure: "within_5pct",
                        value: share(util, n),
                        goal: WITHIN,
                        note: "",
                    },
                    Metric {
                        output: "never_overloaded".into(),
                        measure: "agreement",
                        value: 1.0 - share(overloaded, n),
                        goal: 1.0,
                        note: "share of recommendations with utilisation ≤ 1",
                    },
                ],
            )
        }
        ModelKind::ClashDetector => {
            use teachers::clash;
            let requests = 300;
            let mut bodies = Vec::with_capacity(requests);
            let mut verdicts = Vec::new();
            for _ in 0..requests {
                let steps: Vec<_> = (0..rng.int(1, 4))
                    .map(|_| clash::sample_step(&mut rng))
                    .collect();
                verdicts.push(
                    steps
                        .iter()
                        .map(|(s, v)| clash::judge(s, v))
                        .collect::<Vec<_>>(),
                );
                bodies.push(clash::to_json(&steps));
            }
            let out = answers(kind, model.as_ref(), &bodies)?;
            let (mut steps, mut agree, mut located, mut clashes) = (0, 0, 0, 0);
            for (v, o) in verdicts.iter().zip(&out) {
                for (t, s) in v.iter().zip(o["steps"].as_array().into_iter().flatten()) {
                    steps += 1;
                    let says = f(&s["clash_probability"]) >= 0.5;
                    agree += (says == t.clash) as usize;
                    if let Some(loc) = t.location {
                        clashes += 1;
                        let l = &s["location"];
                        let ok = ["x", "y", "z"]
                            .iter()
                            .zip(loc)
                            .all(|(a, want)| within(f(&l[*a]), want, (clash::GRID - 1) as f64));
                        located += (ok && says) as usize;
                    }
                }
            }
            (
                steps,
                vec![
                    Metric {
                        output: "clash".into(),
                        measure: "agreement",
                        value: share(agree, steps),
                        goal: AGREE,
                        note: "per step: clash_probability ≥ 0.5 against the reference verdict",
                    },
                    Metric {
                        output: "location".into(),
                        measure: "within_5pct",
                        value: share(located, clashes),
                        goal: WITHIN,
                        note: "clashing steps; every axis within 5 % of the grid extent (0.35 voxel)",
                    },
                ],
            )
        }
        ModelKind::ComplianceChecker => {
            use teachers::compliance;
            let n = 1000;
            let design = crate::models::compliance_checker::example()["design"].clone();
            let clauses: Vec<_> = (0..n)
                .map(|_| {
                    compliance::sample(&mut rng, crate::models::compliance_checker::MAX_TOKENS)
                })
                .collect();
            let bodies: Vec<Value> = clauses
                .iter()
                .map(|c| json!({"clause": c.text, "design": design}))
                .collect();
            let out = answers(kind, model.as_ref(), &bodies)?;
            let mut hits = [0usize; 4];
            for (c, o) in clauses.iter().zip(&out) {
                for (r, hit) in hits.iter_mut().enumerate() {
                    *hit += (o["rules"][r]["applies"] == json!(c.invokes[r])) as usize;
                }
            }
            let metrics = compliance::RULES
                .iter()
                .zip(hits)
                .map(|(rule, h)| Metric {
                    output: format!("applies.{rule}"),
                    measure: "agreement",
                    value: share(h, n),
                    goal: AGREE,
                    note: "",
                })
                .collect();
            (n, metrics)
        }
        ModelKind::TorchScript => {
            return Err(ServingError::Options(
                "a TorchScript model has no reference".into(),
            ));
        }
    };
    Ok(Evaluation {
        kind,
        samples,
        metrics,
    })
}

/// The evaluation table `warden models evaluate` prints.
pub fn table(evaluations: &[Evaluation]) -> String {
    let mut out = format!(
        "{:<20} {:<19} {:<12} {:>8} {:>7}  {}\n",
        "model", "output", "measure", "value", "goal", "met"
    );
    for e in evaluations {
        for m in &e.metrics {
            let goal = if m.goal > 0.0 {
                format!("{:.0}%", m.goal * 100.0)
            } else {
                "-".to_string()
            };
            out.push_str(&format!(
                "{:<20} {:<19} {:<12} {:>7.2}% {:>7}  {}\n",
                e.kind.name(),
                m.output,
                m.measure,
                m.value * 100.0,
                goal,
                if m.goal <= 0.0 {
                    "-"
                } else if m.met() {
                    "yes"
                } else {
                    "NO"
                }
            ));
        }
    }
    out
}

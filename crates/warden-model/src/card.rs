//! Model cards: what a built-in model was trained on and how well it agrees with its
//! reference, served in `/metadata` (and so in the agent's `GET /api/v1/models`).
//!
//! A card has a static part (the teacher: name, source, assumptions; the trained ranges from
//! the field definitions) and a recorded part that `warden models train` writes next to the
//! weights as `<model>.card.json` (training seed, samples and seconds; held-out figures; the
//! weights' SHA-256). At serve time the weights' hash is recomputed: `weights.matches_card` is
//! false when the file served is not the one the figures were measured on.

use crate::evaluate::Evaluation;
use crate::training::TrainReport;
use crate::{MODEL_VERSION, ModelKind, fields};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The card files shipped with the binary (what `warden models init` installs).
pub fn shipped(kind: ModelKind) -> Option<&'static str> {
    Some(match kind {
        ModelKind::ConnectionDesigner => {
            include_str!("../fixtures/weights/connection-designer.card.json")
        }
        ModelKind::SectionOptimizer => {
            include_str!("../fixtures/weights/section-optimizer.card.json")
        }
        ModelKind::ClashDetector => include_str!("../fixtures/weights/clash-detector.card.json"),
        ModelKind::ComplianceChecker => {
            include_str!("../fixtures/weights/compliance-checker.card.json")
        }
        ModelKind::RiskAnalyzer => include_str!("../fixtures/weights/risk-analyzer.card.json"),
        ModelKind::TorchScript => return None,
    })
}

/// The card file recorded beside a weight file.
pub fn card_path(kind: ModelKind, weights_dir: &Path) -> PathBuf {
    weights_dir.join(format!("{}.card.json", kind.name()))
}

/// SHA-256 of a file as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path)?;
    Ok(hex(&sha2::Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The teacher's description.
pub fn teacher(kind: ModelKind) -> Value {
    let (name, source, assumptions): (&str, &str, &[&str]) = match kind {
        ModelKind::ConnectionDesigner => (
            "teachers::connection",
            "AISC 360-22 chapter J (LRFD): bolts J3 (M20 Group A, Fnv 372 / Fnt 620 MPa, bearing 2.4·d·t·Fu), \
             connected elements J4, fillet welds J2.4 (E70XX); documented type rule on the moment share |M|/(|V|·d)",
            &[
                "type by rule: splice if all members collinear (±15°); else shear-tab r<0.2, end-plate r<1, flange-plate-moment r<2.5, welded-moment",
                "plates and member steel A572 Gr. 50 (Fy 345, Fu 450 MPa); 8 mm fillet welds; 75 mm pitch, 40 mm edges",
                "edge distances adequate (tear-out not checked); prying neglected; the supporting member adequate",
                "loads are factored; magnitudes are used (signs ignored)",
                "capacity_ratio is the reference calculation for the type the network chose (hybrid: the network chooses, the check computes)",
            ],
        ),
        ModelKind::SectionOptimizer => (
            "teachers::section",
            "EN 1993-1-1 §6.2.5 plastic bending (Wpl·fy, γM0 = 1) and elastic deflection of a simply supported span \
             (E = 210 GPa) over UB sections of SCI P363 (the Blue Book), BS EN 10365:2017",
            &[
                "simply supported; UDL over the span, point load at midspan; self-weight within the UDL",
                "the same loads for strength and deflection",
                "unrestrained compression flange: fixed χLT = 0.6 (the request carries no restraint spacing)",
                "lightest by mass; sections dominated by a lighter, stronger and stiffer one are never candidates",
                "the tree ensemble proposes; the exact check accepts or moves the proposal up (hybrid)",
            ],
        ),
        ModelKind::ClashDetector => (
            "teachers::clash",
            "hard and clearance clashes of BIM coordination on an occupancy grid",
            &[
                "occupied means occupancy ≥ 0.5",
                "a services voxel conflicts when structure is occupied within one voxel (3×3×3 neighbourhood)",
                "each step is judged on its own grids; location is the centroid of the conflicting voxels",
            ],
        ),
        ModelKind::ComplianceChecker => (
            "teachers::compliance",
            "clause templates, one sentence bank per rule (strength, deflection, slenderness, fire), plus distractor sentences",
            &[
                "a clause invokes a rule exactly when it contains one of that rule's sentences",
                "held-out clauses are new combinations of the same sentence banks, not new wording",
                "the rules' checks on the design values are deterministic (not learnt)",
            ],
        ),
        ModelKind::RiskAnalyzer => (
            "teachers::risk",
            "a documented weighted score of eight normalised factors (weights: seismic 0.20, design changes 0.20, \
             soil 0.15, team experience 0.15, storeys 0.10, span 0.08, budget 0.07, duration 0.05)",
            &[
                "every factor monotone: more of it (less experience) never lowers the risk",
                "factors independent and additive; low < 0.35 ≤ medium < 0.6 ≤ high",
                "the networks are monotone by construction (non-negative weights, tanh)",
            ],
        ),
        ModelKind::TorchScript => return Value::Null,
    };
    json!({"name": name, "source": source, "assumptions": assumptions})
}

/// The trained ranges of `kind`'s request fields.
pub fn trained_ranges(kind: ModelKind) -> Value {
    use crate::models::*;
    let f: &[fields::Field] = match kind {
        ModelKind::ConnectionDesigner => &connection_designer::FIELDS,
        ModelKind::SectionOptimizer => &section_optimizer::FIELDS,
        ModelKind::ClashDetector => &clash_detector::FIELDS,
        ModelKind::ComplianceChecker => &compliance_checker::FIELDS,
        ModelKind::RiskAnalyzer => &risk_analyzer::FIELDS,
        ModelKind::TorchScript => return Value::Null,
    };
    Value::Object(fields::trained_ranges(f))
}

/// The recorded part of a card after training and evaluation.
pub fn record(report: &TrainReport, evaluation: &Evaluation) -> std::io::Result<Value> {
    let sha256 = sha256_file(&report.file)?;
    Ok(json!({
        "model": report.kind.name(),
        "weights": {
            "file": report.kind.weight_file(),
            "sha256": sha256,
            "version": MODEL_VERSION,
        },
        "training": {
            "seed": report.seed,
            "samples": report.samples,
            // Rounded: the card must not change the weights' reproducibility story.
            "seconds": (report.seconds * 10.0).round() / 10.0,
        },
        "held_out": evaluation.to_json(),
    }))
}

/// The card served for `kind` loaded from `weights`: the recorded card beside the file (or the
/// shipped one), the teacher, the trained ranges and the hash of the file actually served.
pub fn served(kind: ModelKind, weights: &Path) -> Value {
    if kind == ModelKind::TorchScript {
        return Value::Null;
    }
    let beside = weights.parent().map(|d| card_path(kind, d));
    let recorded: Value = beside
        .and_then(|p| std::fs::read_to_string(p).ok())
        .or_else(|| shipped(kind).map(str::to_string))
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let actual = sha256_file(weights).ok();
    let recorded_sha = recorded["weights"]["sha256"].as_str().map(str::to_string);
    json!({
        "teacher": teacher(kind),
        "trained_ranges": trained_ranges(kind),
        "held_out": recorded["held_out"],
        "weights": {
            "file": weights.file_name().map(|f| f.to_string_lossy().to_string()),
            "sha256": actual,
            "version": MODEL_VERSION,
            "matches_card": actual.is_some() && actual == recorded_sha,
        },
        "training": recorded["training"],
    })
}

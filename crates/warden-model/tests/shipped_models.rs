//! The shipped (trained) weights, checked the way an engineer would: held-out agreement with
//! the reference calculations meets the goals, and physical properties hold — more load never
//! lowers a demand/capacity ratio nor yields a lighter section, a recommended section is never
//! overloaded, riskier inputs never lower the risk score. Also: the schemas are the parser's,
//! out-of-range inputs warn, and retraining reproduces the shipped files byte for byte.

use serde_json::{Value, json};
use std::path::PathBuf;
use warden_model::models::Model;
use warden_model::teachers::{self, Rng};
use warden_model::{BUILTIN, ModelKind, evaluate, fields, weights};

fn shipped_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    weights::init(dir.path()).unwrap();
    dir
}

fn load(kind: ModelKind, dir: &std::path::Path) -> Box<dyn Model> {
    kind.load(&dir.join(kind.weight_file()), tch::Device::Cpu)
        .unwrap()
}

fn answer(kind: ModelKind, model: &dyn Model, body: &Value) -> Value {
    let samples = kind.parse(body).unwrap();
    let refs: Vec<_> = samples.iter().collect();
    model.forward(&refs).unwrap().remove(0)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn every_model_meets_its_held_out_goals() {
    let dir = shipped_dir();
    for kind in BUILTIN {
        let e = evaluate::evaluate(kind, &dir.path().join(kind.weight_file())).unwrap();
        assert!(e.met(), "{}", evaluate::table(std::slice::from_ref(&e)));
        assert!(
            e.samples >= 500,
            "{}: {} held-out samples",
            kind.name(),
            e.samples
        );
    }
}

#[test]
fn more_load_never_lowers_a_connection_s_ratio() {
    let dir = shipped_dir();
    let kind = ModelKind::ConnectionDesigner;
    let model = load(kind, dir.path());
    let mut rng = Rng::new(77);
    for _ in 0..200 {
        let j = teachers::connection::sample(&mut rng);
        let base = answer(kind, model.as_ref(), &teachers::connection::to_json(&j));
        for k in [1.1, 2.0, 8.0] {
            let mut heavier = j.clone();
            heavier.axial_kn *= k;
            heavier.shear_kn *= k;
            heavier.moment_knm *= k;
            // Stay inside the schema's hard bounds (beyond them the request is a 422).
            if heavier.moment_knm.abs() > 5000.0
                || heavier.shear_kn.abs() > 10000.0
                || heavier.axial_kn.abs() > 10000.0
            {
                continue;
            }
            let out = answer(
                kind,
                model.as_ref(),
                &teachers::connection::to_json(&heavier),
            );
            assert!(
                f(&out["capacity_ratio"]) >= f(&base["capacity_ratio"]),
                "×{k}: {base} → {out}"
            );
        }
    }
}

#[test]
fn sections_are_never_overloaded_and_never_lighter_under_more_load() {
    let dir = shipped_dir();
    let kind = ModelKind::SectionOptimizer;
    let model = load(kind, dir.path());
    let mut rng = Rng::new(78);
    let mass = |v: &Value| v["mass_kg_per_m"].as_f64().unwrap_or(f64::INFINITY);
    for _ in 0..300 {
        let b = teachers::section::sample(&mut rng);
        let base = answer(kind, model.as_ref(), &teachers::section::to_json(&b));
        if !base["section"].is_null() {
            assert!(
                f(&base["utilisation"]) <= 1.0 && f(&base["deflection_utilisation"]) <= 1.0,
                "{base}"
            );
        }
        use teachers::section::Beam;
        for heavier in [
            Beam {
                udl_kn_per_m: b.udl_kn_per_m * 1.2 + 1.0,
                ..b
            },
            Beam {
                point_load_kn: b.point_load_kn * 1.2 + 1.0,
                ..b
            },
            Beam {
                span_m: b.span_m * 1.1,
                ..b
            },
        ] {
            let out = answer(kind, model.as_ref(), &teachers::section::to_json(&heavier));
            assert!(mass(&out) >= mass(&base), "{base} → {out}");
        }
    }
}

#[test]
fn riskier_inputs_never_lower_the_risk_score() {
    let dir = shipped_dir();
    let kind = ModelKind::RiskAnalyzer;
    let model = load(kind, dir.path());
    let mut rng = Rng::new(79);
    for _ in 0..300 {
        let p = teachers::risk::sample(&mut rng);
        let base = f(&answer(kind, model.as_ref(), &teachers::risk::to_json(&p))["score"]);
        use teachers::risk::Project;
        for riskier in [
            Project {
                seismic_zone: (p.seismic_zone + 1).min(4),
                ..p
            },
            Project {
                soil_class: (p.soil_class + 1).min(4),
                ..p
            },
            Project {
                design_changes: p.design_changes * 2 + 1,
                ..p
            },
            Project {
                team_experience_years: (p.team_experience_years - 3.0).max(0.0),
                ..p
            },
            Project {
                storeys: p.storeys + 5,
                ..p
            },
            Project {
                max_span_m: p.max_span_m + 5.0,
                ..p
            },
            Project {
                budget_musd: p.budget_musd * 2.0,
                ..p
            },
            Project {
                duration_months: p.duration_months + 6.0,
                ..p
            },
        ] {
            let s = f(&answer(kind, model.as_ref(), &teachers::risk::to_json(&riskier))["score"]);
            assert!(s >= base, "{p:?} → {riskier:?}: {base} → {s}");
        }
    }
}

#[test]
fn examples_conform_to_the_schemas_and_bounds_are_the_parser_s() {
    let dir = shipped_dir();
    for kind in BUILTIN {
        let meta = kind.metadata(kind.name(), &[], &dir.path().join(kind.weight_file()));
        let (input, output) = (&meta["input_schema"], &meta["output_schema"]);
        assert_eq!(
            input["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        fields::validate(input, &meta["example"], "")
            .unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
        let model = load(kind, dir.path());
        let out = answer(kind, model.as_ref(), &meta["example"]);
        fields::validate(output, &out, "")
            .unwrap_or_else(|e| panic!("{} output: {e}\n{out}", kind.name()));
        assert_eq!(
            meta["model_card"]["weights"]["matches_card"],
            true,
            "{}",
            kind.name()
        );
    }
    // A value past a schema bound is rejected by the schema and by the parser, naming the path.
    let kind = ModelKind::ConnectionDesigner;
    let meta = kind.metadata(kind.name(), &[], &dir.path().join(kind.weight_file()));
    let schema = &meta["input_schema"];
    let max = f(&schema["properties"]["loads"]["properties"]["shear_kn"]["maximum"]);
    let mut body = meta["example"].clone();
    body["loads"]["shear_kn"] = json!(max + 1.0);
    assert!(
        fields::validate(schema, &body, "")
            .unwrap_err()
            .starts_with("loads.shear_kn")
    );
    assert_eq!(kind.parse(&body).unwrap_err().field, "loads.shear_kn");
    body["loads"]["shear_kn"] = json!(max);
    assert!(kind.parse(&body).is_ok());
    let max_rows = schema["properties"]["geometry"]["properties"]["bolt_rows"]["maximum"]
        .as_i64()
        .unwrap();
    body["geometry"]["bolt_rows"] = json!(max_rows + 1);
    assert_eq!(kind.parse(&body).unwrap_err().field, "geometry.bolt_rows");
    let members = &schema["properties"]["members"];
    assert_eq!(
        (members["minItems"].as_u64(), members["maxItems"].as_u64()),
        (Some(1), Some(4))
    );
    let soil = &ModelKind::RiskAnalyzer.metadata("r", &[], &PathBuf::from("/nonexistent"))["input_schema"]
        ["properties"]["soil_class"];
    assert_eq!(soil["enum"], json!(["A", "B", "C", "D", "E"]));
}

#[test]
fn out_of_range_inputs_are_answered_with_a_warning() {
    let dir = shipped_dir();
    let kind = ModelKind::ConnectionDesigner;
    let model = load(kind, dir.path());
    let mut body = warden_model::models::connection_designer::example();
    assert!(
        answer(kind, model.as_ref(), &body)
            .get("warnings")
            .is_none()
    );
    body["loads"]["shear_kn"] = json!(9000.0);
    let out = answer(kind, model.as_ref(), &body);
    assert_eq!(
        out["warnings"],
        json!(["loads.shear_kn 9000 is outside the trained range -2000..2000"])
    );
    assert!(f(&out["capacity_ratio"]) > 0.0);
}

#[test]
fn retraining_reproduces_the_shipped_weights() {
    // The two fast ones (the GBDT and the monotone ensemble); the others use the same seeded,
    // single-threaded loop.
    let dir = tempfile::tempdir().unwrap();
    for kind in [ModelKind::SectionOptimizer, ModelKind::RiskAnalyzer] {
        let report = warden_model::training::train(kind, dir.path()).unwrap();
        assert_eq!(
            std::fs::read(&report.file).unwrap(),
            weights::shipped(kind).unwrap(),
            "{} retrained differs from the shipped file",
            kind.name()
        );
    }
}

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

/// A safetensors file's tensors by name: dtype, shape and raw little-endian data.
fn tensors(file: &[u8]) -> std::collections::BTreeMap<String, (Value, Value, Vec<u8>)> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, t)| {
            let at = |i: usize| t["data_offsets"][i].as_u64().unwrap() as usize;
            let raw = data[at(0)..at(1)].to_vec();
            (name.clone(), (t["dtype"].clone(), t["shape"].clone(), raw))
        })
        .collect()
}

/// Largest difference between two F32 tensors, relative to the value's size (at least 1).
fn largest_difference(a: &[u8], b: &[u8]) -> f32 {
    let floats = |raw: &[u8]| -> Vec<f32> {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    floats(a)
        .iter()
        .zip(floats(b))
        .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
        .fold(0.0, f32::max)
}

#[test]
fn retraining_reproduces_the_shipped_weights() {
    // The two fast ones (the GBDT and the monotone ensemble); the others use the same seeded,
    // single-threaded loop. The GBDT's file is reproduced byte for byte; the ensemble's,
    // trained by libtorch, to float rounding: its CPU kernels are picked per processor, and
    // another processor rounds differently (PyTorch promises no bit-identical results across
    // platforms), so the same tensors with the same values to 1e-4 is what reproduces.
    let dir = tempfile::tempdir().unwrap();
    for kind in [ModelKind::SectionOptimizer, ModelKind::RiskAnalyzer] {
        let report = warden_model::training::train(kind, dir.path()).unwrap();
        let retrained = std::fs::read(&report.file).unwrap();
        let shipped = weights::shipped(kind).unwrap();
        if kind == ModelKind::SectionOptimizer {
            assert_eq!(
                retrained,
                shipped,
                "{} retrained differs from the shipped file",
                kind.name()
            );
            continue;
        }
        let (retrained, shipped) = (tensors(&retrained), tensors(shipped));
        assert_eq!(
            retrained.keys().collect::<Vec<_>>(),
            shipped.keys().collect::<Vec<_>>(),
            "{}: the same tensors",
            kind.name()
        );
        for (name, (dtype, shape, raw)) in &retrained {
            let (want_dtype, want_shape, want_raw) = &shipped[name];
            assert_eq!((dtype, shape), (want_dtype, want_shape), "{name}");
            assert_eq!(dtype, "F32", "{name}");
            let off = largest_difference(raw, want_raw);
            assert!(off <= 1e-4, "{} {name} is off by {off}", kind.name());
        }
    }
}

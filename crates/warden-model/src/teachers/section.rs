//! section-optimizer's reference: the lightest UB section of the shipped table that carries a
//! simply supported beam's bending moment and meets its deflection limit; "none suffices" is a
//! valid answer.
//!
//! Source: EN 1993-1-1 §6.2.5 (plastic bending resistance Mc,Rd = Wpl,y·fy/γM0, γM0 = 1.0,
//! class 1/2 sections — every UB in the table is class 1 or 2 in bending up to S460) and the
//! elastic deflection of a simply supported span (δ = 5wL⁴/384EI + PL³/48EI, E = 210 GPa).
//! The table (`fixtures/ub_sections.csv`) is SCI P363 (the Blue Book), BS EN 10365:2017.
//!
//! Assumptions, in the absence of request fields for them:
//! - the span is simply supported; the UDL is over the whole span and the point load at
//!   midspan: M = wL²/8 + PL/4; the beam's self-weight is included in the UDL;
//! - the same (given) loads are used for strength and deflection (no separate load factors);
//! - an unrestrained compression flange reduces the resistance by a fixed χLT = 0.6 — a
//!   lower-bound stand-in for §6.3.2, which needs the restraint spacing and end conditions the
//!   request does not carry;
//! - "lightest" is by mass per metre; of equally heavy sections the stiffer and stronger one.

use super::{Rng, round};
use serde_json::{Value, json};
use std::sync::LazyLock;

/// Young's modulus of steel, N/mm².
pub const E_MPA: f64 = 210_000.0;
/// Lateral-torsional reduction when the compression flange is not restrained.
pub const UNRESTRAINED_CHI: f64 = 0.6;

const TABLE_CSV: &str = include_str!("../../fixtures/ub_sections.csv");

/// One row of the section table.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub designation: String,
    pub mass_kg_per_m: f64,
    pub depth_mm: f64,
    pub width_mm: f64,
    pub web_mm: f64,
    pub flange_mm: f64,
    pub iy_cm4: f64,
    pub wpl_cm3: f64,
}

fn parse_table(text: &str) -> Result<Vec<Section>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("designation") {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        let num = |k: usize| -> Result<f64, String> {
            cols.get(k)
                .and_then(|c| c.trim().parse::<f64>().ok())
                .ok_or_else(|| {
                    format!(
                        "ub_sections.csv:{}: column {} is not a number",
                        i + 1,
                        k + 1
                    )
                })
        };
        if cols.len() != 8 {
            return Err(format!("ub_sections.csv:{}: expected 8 columns", i + 1));
        }
        out.push(Section {
            designation: cols[0].trim().to_string(),
            mass_kg_per_m: num(1)?,
            depth_mm: num(2)?,
            width_mm: num(3)?,
            web_mm: num(4)?,
            flange_mm: num(5)?,
            iy_cm4: num(6)?,
            wpl_cm3: num(7)?,
        });
    }
    Ok(out)
}

static TABLE: LazyLock<Result<Vec<Section>, String>> = LazyLock::new(|| parse_table(TABLE_CSV));

/// The whole shipped table, in file order.
pub fn table() -> Result<&'static [Section], String> {
    TABLE.as_deref().map_err(Clone::clone)
}

/// The sections that can be the answer, lightest first: a section is left out when another
/// is no heavier and at least as strong and as stiff (it could never be the lightest adequate).
pub fn candidates() -> Result<&'static [Section], String> {
    static CANDIDATES: LazyLock<Result<Vec<Section>, String>> = LazyLock::new(|| {
        let all = table()?;
        let dominated = |s: &Section| {
            all.iter().any(|o| {
                o != s
                    && o.mass_kg_per_m <= s.mass_kg_per_m
                    && o.wpl_cm3 >= s.wpl_cm3
                    && o.iy_cm4 >= s.iy_cm4
            })
        };
        let mut keep: Vec<Section> = all.iter().filter(|s| !dominated(s)).cloned().collect();
        keep.sort_by(|a, b| a.mass_kg_per_m.total_cmp(&b.mass_kg_per_m));
        Ok(keep)
    });
    CANDIDATES.as_deref().map_err(Clone::clone)
}

/// A beam as the request describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beam {
    pub span_m: f64,
    pub udl_kn_per_m: f64,
    pub point_load_kn: f64,
    pub fy_mpa: f64,
    /// The allowed deflection is span / this.
    pub deflection_limit: f64,
    pub restrained: bool,
}

/// Design moment, kNm: wL²/8 + PL/4.
pub fn design_moment_knm(b: &Beam) -> f64 {
    b.udl_kn_per_m * b.span_m * b.span_m / 8.0 + b.point_load_kn * b.span_m / 4.0
}

fn chi(b: &Beam) -> f64 {
    if b.restrained { 1.0 } else { UNRESTRAINED_CHI }
}

/// The plastic modulus (cm³) bending needs: M / (χ·fy).
pub fn required_wpl_cm3(b: &Beam) -> f64 {
    design_moment_knm(b) * 1e3 / (chi(b) * b.fy_mpa)
}

/// The second moment of area (cm⁴) the deflection limit needs.
pub fn required_iy_cm4(b: &Beam) -> f64 {
    let l = b.span_m * 1000.0; // mm
    let w = b.udl_kn_per_m; // kN/m = N/mm
    let p = b.point_load_kn * 1000.0; // N
    let allowed = l / b.deflection_limit; // mm
    // δ = (5wL⁴/384 + PL³/48) / (E·I) ≤ allowed  ⇒  I ≥ (…) / (E·allowed)
    (5.0 * w * l.powi(4) / 384.0 + p * l.powi(3) / 48.0) / (E_MPA * allowed) / 1e4
}

/// Bending utilisation of `s`: M / (χ·fy·Wpl).
pub fn bending_utilisation(b: &Beam, s: &Section) -> f64 {
    required_wpl_cm3(b) / s.wpl_cm3
}

/// Deflection utilisation of `s`: δ / (span / limit).
pub fn deflection_utilisation(b: &Beam, s: &Section) -> f64 {
    required_iy_cm4(b) / s.iy_cm4
}

/// True when `s` passes both checks.
pub fn passes(b: &Beam, s: &Section) -> bool {
    bending_utilisation(b, s) <= 1.0 && deflection_utilisation(b, s) <= 1.0
}

/// Index into [`candidates`] of the lightest adequate section, or None when none suffices.
pub fn lightest(b: &Beam, candidates: &[Section]) -> Option<usize> {
    candidates.iter().position(|s| passes(b, s))
}

/// A beam drawn over the trained ranges (loads log-uniform so light and heavy beams are both
/// common; a tenth of samples have no point load).
pub fn sample(rng: &mut Rng) -> Beam {
    Beam {
        span_m: round(rng.uniform(1.0, 20.0), 2),
        udl_kn_per_m: round(rng.log_uniform(1.0, 200.0), 2),
        point_load_kn: if rng.chance(0.1) {
            0.0
        } else {
            round(rng.log_uniform(1.0, 500.0), 1)
        },
        fy_mpa: *rng.pick(&[235.0, 275.0, 355.0, 420.0, 460.0]),
        deflection_limit: *rng.pick(&[180.0, 200.0, 250.0, 300.0, 360.0, 500.0]),
        restrained: rng.chance(0.6),
    }
}

pub fn to_json(b: &Beam) -> Value {
    json!({"span_m": b.span_m, "udl_kn_per_m": b.udl_kn_per_m, "point_load_kn": b.point_load_kn,
           "fy_mpa": b.fy_mpa, "deflection_limit": b.deflection_limit, "restrained": b.restrained})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beam() -> Beam {
        Beam {
            span_m: 6.0,
            udl_kn_per_m: 20.0,
            point_load_kn: 10.0,
            fy_mpa: 355.0,
            deflection_limit: 360.0,
            restrained: true,
        }
    }

    #[test]
    fn the_table_parses_and_drops_only_dominated_sections() {
        let all = table().unwrap();
        assert_eq!(all.len(), 29);
        let c = candidates().unwrap();
        assert!(
            c.windows(2)
                .all(|w| w[0].mass_kg_per_m <= w[1].mass_kg_per_m)
        );
        let names: Vec<&str> = c.iter().map(|s| s.designation.as_str()).collect();
        // 305x165x54 (54 kg, Wpl 846) is beaten by 356x171x51 (51 kg, Wpl 896, stiffer).
        assert!(!names.contains(&"UB 305x165x54"));
        // Of the three 67.1 kg sections only the deepest (strongest and stiffest) remains.
        assert!(names.contains(&"UB 457x191x67"));
        assert!(!names.contains(&"UB 356x171x67") && !names.contains(&"UB 406x178x67"));
        assert_eq!(names[0], "UB 203x133x25");
    }

    #[test]
    fn worked_example_six_metre_beam() {
        let b = beam();
        // M = 20·6²/8 + 10·6/4 = 90 + 15 = 105 kNm; Wpl ≥ 105e3/355 = 295.8 cm³.
        assert!((design_moment_knm(&b) - 105.0).abs() < 1e-9);
        assert!((required_wpl_cm3(&b) - 295.77).abs() < 0.01);
        // I ≥ (5·20·6000⁴/384 + 10000·6000³/48) / (210000 · 6000/360) / 1e4
        //   = (3.375e14 + 4.5e13) / 3.5e6 / 1e4 = 10928.6 cm⁴.
        assert!((required_iy_cm4(&b) - 10928.57).abs() < 0.1);
        // Deflection governs: 305x165x46 (I 9900) is too flexible; 356x171x45 (I 12100,
        // Wpl 775) is the lightest that passes.
        let c = candidates().unwrap();
        let i = lightest(&b, c).unwrap();
        assert_eq!(c[i].designation, "UB 356x171x45");
        assert!((bending_utilisation(&b, &c[i]) - 295.77 / 775.0).abs() < 1e-3);
        assert!((deflection_utilisation(&b, &c[i]) - 10928.57 / 12100.0).abs() < 1e-3);
    }

    #[test]
    fn deflection_can_govern_and_unrestrained_needs_more() {
        // A short heavily loaded span: bending governs.
        let short = Beam {
            span_m: 3.0,
            udl_kn_per_m: 150.0,
            point_load_kn: 0.0,
            deflection_limit: 250.0,
            ..beam()
        };
        let c = candidates().unwrap();
        let i = lightest(&short, c).unwrap();
        assert!(bending_utilisation(&short, &c[i]) > deflection_utilisation(&short, &c[i]));
        // Bending governs it, so losing lateral restraint (χ = 0.6) needs a heavier section.
        let free = Beam {
            restrained: false,
            ..short
        };
        assert!(lightest(&free, c).unwrap() > i);
    }

    #[test]
    fn the_issue_s_heavy_beams_get_an_adequate_section_or_none() {
        let c = candidates().unwrap();
        for udl in [80.0, 150.0, 400.0] {
            let b = Beam {
                udl_kn_per_m: udl,
                ..beam()
            };
            match lightest(&b, c) {
                Some(i) => assert!(bending_utilisation(&b, &c[i]) <= 1.0),
                None => panic!("{udl} kN/m over 6 m fits a 914 UB"),
            }
        }
        let hopeless = Beam {
            span_m: 30.0,
            udl_kn_per_m: 500.0,
            ..beam()
        };
        assert_eq!(lightest(&hopeless, c), None);
    }

    #[test]
    fn more_load_never_gives_a_lighter_section() {
        let c = candidates().unwrap();
        let mut rng = Rng::new(5);
        for _ in 0..500 {
            let b = sample(&mut rng);
            let heavier = Beam {
                udl_kn_per_m: b.udl_kn_per_m * 1.3,
                ..b
            };
            let mass = |x: Option<usize>| x.map_or(f64::INFINITY, |i| c[i].mass_kg_per_m);
            assert!(mass(lightest(&heavier, c)) >= mass(lightest(&b, c)));
        }
    }
}

//! connection-designer's reference: the connection type for the members and loads (a
//! documented rule) and the demand/capacity ratio of that connection, checked in the manner of
//! AISC 360-22 chapter J (LRFD).
//!
//! **Type rule.** When two or more members meet and every other member is collinear with the
//! first (angle within 15° of 0° or 180°) the joint is a `bolted-splice`. Otherwise the moment
//! share r = |M| / (|V|·d) (d the first member's depth) picks it: r < 0.2 `shear-tab` (a simple
//! connection), r < 1 `end-plate`, r < 2.5 `flange-plate-moment`, else `welded-moment`.
//! The rule depends on the loads only through their proportions, so scaling every load by k
//! keeps the type and scales the ratio by exactly k.
//!
//! **Checks** (φRn; the ratio is the largest demand/φRn of the type's checks). Bolts M20
//! Group A (ASTM F3125 A325M): Ab = 314 mm², Fnv = 372 MPa (threads included, Table J3.2),
//! Fnt = 620 MPa, φ = 0.75 (J3.7); bearing 2.4·d·t·Fu, φ = 0.75 (J3.11(a)); plates and member
//! steel Fy = 345, Fu = 450 MPa (A572 Gr. 50); shear yielding 0.6·Fy·Agv, φ = 1.0 (J4.2);
//! tension yielding Fy·Ag, φ = 0.9 (J4.1); plate flexure Fy·Z, φ = 0.9; fillet welds E70XX
//! (FEXX = 482 MPa), 8 mm legs, 0.6·FEXX·0.707·w per mm, φ = 0.75 (J2.4).
//!
//! - shear-tab: one column of `bolt_rows` bolts at 75 mm pitch, 40 mm edges, the bolt line at
//!   `eccentricity_mm` from the weld; bolt group by the elastic method under V, N and
//!   V·e + M; plate shear yielding and flexure; the plate's two fillet welds to the support.
//! - end-plate: two bolt columns; the flange force F = M/(d − tf) + |N|/2 in tension on the
//!   four bolts at the tension flange (two with one row), V shared by all bolts (shear and
//!   bearing); end-plate bending F·50 mm/2 against Fy·(bf + 25)·tp²/4; flange and web welds.
//! - flange-plate-moment: F = M/d + |N|/2 through flange plates bolted in two columns of
//!   `bolt_rows`; plate tension yielding on bf·tp; V on a web column of `bolt_rows` bolts.
//! - welded-moment: F = M/(d − tf) + |N|/2 on complete-joint-penetration flange welds
//!   (strength of the flange, 0.9·Fy·bf·tf); V on two web fillets over d − 2tf and on the web's
//!   shear yielding 0.6·Fy·d·tw.
//! - bolted-splice: as flange-plate-moment with F = M/(d − tf) + |N|/2 and the web bolts in two
//!   columns.
//!
//! Assumptions: edge distances and spacing satisfy J3.3–J3.5 (tear-out does not govern); the
//! supporting member is adequate; prying is neglected; loads are factored (LRFD) and their
//! signs do not matter (magnitudes are used).

use super::{Rng, round};
use serde_json::{Value, json};

pub const TYPES: [&str; 5] = [
    "shear-tab",
    "end-plate",
    "flange-plate-moment",
    "bolted-splice",
    "welded-moment",
];
pub const SHEAR_TAB: usize = 0;
pub const END_PLATE: usize = 1;
pub const FLANGE_PLATE: usize = 2;
pub const SPLICE: usize = 3;
pub const WELDED: usize = 4;

/// Moment-share thresholds of the type rule (r = |M| / (|V|·d)).
pub const SHEAR_TAB_BELOW: f64 = 0.2;
pub const END_PLATE_BELOW: f64 = 1.0;
pub const FLANGE_PLATE_BELOW: f64 = 2.5;
/// Members within this many degrees of 0° or 180° are collinear with the first.
pub const COLLINEAR_DEG: f64 = 15.0;

const BOLT_D: f64 = 20.0;
const BOLT_AB: f64 = 314.0;
const FNV: f64 = 372.0;
const FNT: f64 = 620.0;
const FY: f64 = 345.0;
const FU: f64 = 450.0;
const FEXX: f64 = 482.0;
const WELD_LEG: f64 = 8.0;
const PITCH: f64 = 75.0;
const EDGE: f64 = 40.0;
const PHI_BOLT: f64 = 0.75;

/// One member meeting at the joint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub depth_mm: f64,
    pub flange_width_mm: f64,
    pub web_thickness_mm: f64,
    pub flange_thickness_mm: f64,
    pub angle_deg: f64,
}

/// A connection as the request describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Joint {
    pub members: Vec<Member>,
    pub axial_kn: f64,
    pub shear_kn: f64,
    pub moment_knm: f64,
    pub eccentricity_mm: f64,
    pub bolt_rows: i64,
    pub plate_thickness_mm: f64,
}

/// True when angle `a` (degrees) is within [`COLLINEAR_DEG`] of 0° or 180°.
pub fn collinear(a: f64) -> bool {
    !(COLLINEAR_DEG..=180.0 - COLLINEAR_DEG).contains(&a)
}

/// The moment share r = |M| / (|V|·d); infinite for a pure moment, 0 when unloaded.
pub fn moment_share(j: &Joint) -> f64 {
    let d_m = j.members[0].depth_mm / 1000.0;
    let (m, v) = (j.moment_knm.abs(), j.shear_kn.abs() * d_m);
    if m == 0.0 {
        0.0
    } else if v == 0.0 {
        f64::INFINITY
    } else {
        m / v
    }
}

/// The connection type (index into [`TYPES`]) by the documented rule.
pub fn connection_type(j: &Joint) -> usize {
    if j.members.len() >= 2 && j.members[1..].iter().all(|m| collinear(m.angle_deg)) {
        return SPLICE;
    }
    let r = moment_share(j);
    if r < SHEAR_TAB_BELOW {
        SHEAR_TAB
    } else if r < END_PLATE_BELOW {
        END_PLATE
    } else if r < FLANGE_PLATE_BELOW {
        FLANGE_PLATE
    } else {
        WELDED
    }
}

/// Design shear strength of one bolt bearing on thickness `t` (N): min(shear, bearing).
fn bolt_shear_capacity(t: f64) -> f64 {
    (PHI_BOLT * FNV * BOLT_AB).min(PHI_BOLT * 2.4 * BOLT_D * t * FU)
}

/// Fillet weld design strength per mm of one line (N/mm).
fn weld_per_mm() -> f64 {
    0.75 * 0.6 * FEXX * 0.707 * WELD_LEG
}

/// The demand/capacity ratio of connection type `kind` for joint `j` (every check's
/// demand/φRn; the largest governs).
pub fn checks(j: &Joint, kind: usize) -> Vec<(&'static str, f64)> {
    let m0 = j.members[0];
    let (d, bf, tw, tf) = (
        m0.depth_mm,
        m0.flange_width_mm,
        m0.web_thickness_mm,
        m0.flange_thickness_mm,
    );
    let n_rows = j.bolt_rows.max(1) as f64;
    let tp = j.plate_thickness_mm;
    let v = j.shear_kn.abs() * 1e3; // N
    let n = j.axial_kn.abs() * 1e3; // N
    let m = j.moment_knm.abs() * 1e6; // Nmm
    let mut out = Vec::new();
    match kind {
        SHEAR_TAB => {
            let h = (n_rows - 1.0) * PITCH + 2.0 * EDGE;
            let group_moment = v * j.eccentricity_mm + m;
            // Elastic method, one vertical bolt line: Σy² about the group centre.
            let sum_y2: f64 = (0..j.bolt_rows.max(1))
                .map(|i| ((i as f64) - (n_rows - 1.0) / 2.0) * PITCH)
                .map(|y| y * y)
                .sum();
            let y_max = (n_rows - 1.0) / 2.0 * PITCH;
            // A single bolt has no lever arm of its own: take the moment over one pitch.
            let horizontal = if sum_y2 > 0.0 {
                group_moment * y_max / sum_y2
            } else {
                group_moment / PITCH
            } + n / n_rows;
            let resultant = (horizontal.powi(2) + (v / n_rows).powi(2)).sqrt();
            out.push((
                "bolt group (elastic)",
                resultant / bolt_shear_capacity(tp.min(tw)),
            ));
            out.push(("plate shear yielding", v / (1.0 * 0.6 * FY * tp * h)));
            out.push((
                "plate flexure",
                group_moment / (0.9 * FY * tp * h * h / 4.0),
            ));
            // Two fillet lines of length h: direct shear plus the bending of the weld group.
            let fv = v / (2.0 * h);
            let fm = group_moment / (2.0 * h * h / 6.0);
            let fn_ = n / (2.0 * h);
            let weld = ((fm + fn_).powi(2) + fv.powi(2)).sqrt();
            out.push(("plate welds", weld / weld_per_mm()));
        }
        END_PLATE => {
            let f = m / (d - tf) + n / 2.0;
            let tension_bolts = 2.0 * n_rows.min(2.0);
            out.push((
                "bolt tension",
                f / tension_bolts / (PHI_BOLT * FNT * BOLT_AB),
            ));
            out.push(("bolt shear", v / (2.0 * n_rows) / bolt_shear_capacity(tp)));
            let bp = bf + 25.0;
            out.push((
                "end-plate bending",
                (f * 50.0 / 2.0) / (0.9 * FY * bp * tp * tp / 4.0),
            ));
            out.push(("flange welds", f / (2.0 * bf * weld_per_mm())));
            out.push(("web welds", v / (2.0 * (d - 2.0 * tf) * weld_per_mm())));
        }
        FLANGE_PLATE | SPLICE => {
            let f = if kind == SPLICE {
                m / (d - tf) + n / 2.0
            } else {
                m / d + n / 2.0
            };
            out.push((
                "flange bolts",
                f / (2.0 * n_rows) / bolt_shear_capacity(tp.min(tf)),
            ));
            out.push(("flange plate tension", f / (0.9 * FY * bf * tp)));
            let web_bolts = if kind == SPLICE { 2.0 * n_rows } else { n_rows };
            out.push(("web bolts", v / web_bolts / bolt_shear_capacity(tw)));
        }
        _ => {
            let f = m / (d - tf) + n / 2.0;
            out.push(("flange CJP welds", f / (0.9 * FY * bf * tf)));
            out.push(("web welds", v / (2.0 * (d - 2.0 * tf) * weld_per_mm())));
            out.push(("web shear yielding", v / (1.0 * 0.6 * FY * d * tw)));
        }
    }
    out
}

/// The governing demand/capacity ratio of type `kind`.
pub fn capacity_ratio(j: &Joint, kind: usize) -> f64 {
    checks(j, kind).iter().map(|c| c.1).fold(0.0, f64::max)
}

/// A joint drawn over the trained ranges: 1–4 members, loads log-uniform in magnitude with a
/// random sign, so every type and both collinear and framed joints are common.
pub fn sample(rng: &mut Rng) -> Joint {
    let count = rng.int(1, 4) as usize;
    let splice_like = rng.chance(0.3);
    let members: Vec<Member> = (0..count)
        .map(|i| {
            let depth = rng.uniform(150.0, 900.0);
            let angle = if i == 0 {
                0.0
            } else if splice_like {
                let near = [
                    0.0,
                    180.0,
                    rng.uniform(0.0, 14.0),
                    rng.uniform(166.0, 180.0),
                ];
                *rng.pick(&near)
            } else {
                rng.uniform(0.0, 180.0)
            };
            Member {
                depth_mm: round(depth, 1),
                flange_width_mm: round(depth * rng.uniform(0.3, 0.7), 1).clamp(60.0, 400.0),
                web_thickness_mm: round(rng.uniform(4.0, 20.0), 1),
                flange_thickness_mm: round(rng.uniform(6.0, 35.0), 1),
                angle_deg: round(angle, 1),
            }
        })
        .collect();
    let signed = |rng: &mut Rng, lo: f64, hi: f64| {
        let x = round(rng.log_uniform(lo, hi), 1);
        if rng.chance(0.5) { -x } else { x }
    };
    let shear_kn = signed(rng, 5.0, 2000.0);
    // The moment follows from a drawn moment share so every type band is well populated.
    let d_m = Member::depth_of(&members);
    let share = rng.log_uniform(0.02, 20.0);
    let moment = round((shear_kn.abs() * d_m * share).min(2000.0), 1);
    Joint {
        members,
        axial_kn: if rng.chance(0.3) {
            0.0
        } else {
            signed(rng, 1.0, 1000.0)
        },
        shear_kn,
        moment_knm: if rng.chance(0.1) { 0.0 } else { moment },
        eccentricity_mm: round(rng.uniform(30.0, 200.0), 1),
        bolt_rows: rng.int(2, 10),
        plate_thickness_mm: round(rng.uniform(8.0, 40.0), 1),
    }
}

impl Member {
    fn depth_of(members: &[Member]) -> f64 {
        members.first().map_or(0.3, |m| m.depth_mm / 1000.0)
    }
}

pub fn to_json(j: &Joint) -> Value {
    let members: Vec<Value> = j
        .members
        .iter()
        .map(|m| {
            json!({"depth_mm": m.depth_mm, "flange_width_mm": m.flange_width_mm,
                   "web_thickness_mm": m.web_thickness_mm,
                   "flange_thickness_mm": m.flange_thickness_mm, "angle_deg": m.angle_deg})
        })
        .collect();
    json!({
        "members": members,
        "loads": {"axial_kn": j.axial_kn, "shear_kn": j.shear_kn, "moment_knm": j.moment_knm},
        "geometry": {"eccentricity_mm": j.eccentricity_mm, "bolt_rows": j.bolt_rows,
                     "plate_thickness_mm": j.plate_thickness_mm}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beam() -> Member {
        Member {
            depth_mm: 310.0,
            flange_width_mm: 165.0,
            web_thickness_mm: 6.0,
            flange_thickness_mm: 10.2,
            angle_deg: 0.0,
        }
    }

    fn joint(shear: f64, moment: f64) -> Joint {
        Joint {
            members: vec![
                beam(),
                Member {
                    angle_deg: 90.0,
                    ..beam()
                },
            ],
            axial_kn: 0.0,
            shear_kn: shear,
            moment_knm: moment,
            eccentricity_mm: 60.0,
            bolt_rows: 3,
            plate_thickness_mm: 12.0,
        }
    }

    #[test]
    fn worked_example_shear_tab() {
        // V = 150 kN, e = 60 mm, three M20 bolts at 75 mm, 12 mm plate, 6 mm web.
        let j = joint(150.0, 0.0);
        assert_eq!(TYPES[connection_type(&j)], "shear-tab");
        // Bolt: φ·Fnv·Ab = 0.75·372·314 = 87.6 kN; bearing on the 6 mm web
        // 0.75·2.4·20·6·450 = 97.2 kN, so shear governs at 87.6 kN.
        // Group: Σy² = 2·75² = 11250 mm², moment 150e3·60 = 9e6 Nmm,
        // horizontal 9e6·75/11250 = 60 kN, vertical 150/3 = 50 kN, resultant 78.1 kN.
        let c = checks(&j, SHEAR_TAB);
        let bolts = c[0].1;
        assert!((bolts - 78.10 / 87.61).abs() < 1e-3, "{bolts}");
        // Plate h = 2·75 + 80 = 230 mm: shear yielding 0.6·345·12·230 = 571.3 kN.
        assert!((c[1].1 - 150.0 / 571.32).abs() < 1e-4);
        assert!((capacity_ratio(&j, SHEAR_TAB) - bolts).abs() < 1e-12);
    }

    #[test]
    fn worked_example_welded_moment() {
        // M = 200 kNm, V = 100 kN on the 310 mm beam: r = 200/(100·0.31) = 6.5 → welded.
        let j = joint(100.0, 200.0);
        assert_eq!(TYPES[connection_type(&j)], "welded-moment");
        // F = 200e6/(310 − 10.2) = 667.1 kN; flange 0.9·345·165·10.2 = 522.6 kN → 1.277.
        let r = capacity_ratio(&j, WELDED);
        assert!((r - 667.11 / 522.57).abs() < 1e-3, "{r}");
    }

    #[test]
    fn the_type_rule_bands_and_splices() {
        assert_eq!(connection_type(&joint(150.0, 5.0)), SHEAR_TAB); // r = 0.11
        assert_eq!(connection_type(&joint(150.0, 20.0)), END_PLATE); // r = 0.43
        assert_eq!(connection_type(&joint(150.0, 70.0)), FLANGE_PLATE); // r = 1.5
        assert_eq!(connection_type(&joint(150.0, 200.0)), WELDED); // r = 4.3
        let mut splice = joint(150.0, 200.0);
        splice.members[1].angle_deg = 178.0;
        assert_eq!(connection_type(&splice), SPLICE);
        let mut single = joint(150.0, 0.0);
        single.members.truncate(1);
        assert_eq!(connection_type(&single), SHEAR_TAB);
    }

    #[test]
    fn scaling_every_load_scales_the_ratio_and_keeps_the_type() {
        // The observation: ×8 on every load must raise the ratio (here exactly ×8).
        let mut rng = Rng::new(3);
        for _ in 0..300 {
            let j = sample(&mut rng);
            let mut k = j.clone();
            k.axial_kn *= 8.0;
            k.shear_kn *= 8.0;
            k.moment_knm *= 8.0;
            let (t, tk) = (connection_type(&j), connection_type(&k));
            assert_eq!(t, tk);
            let (r, rk) = (capacity_ratio(&j, t), capacity_ratio(&k, t));
            assert!((rk - 8.0 * r).abs() <= 1e-9 * rk.max(1.0), "{r} → {rk}");
        }
    }

    #[test]
    fn more_of_any_one_load_never_lowers_the_ratio_of_a_type() {
        let mut rng = Rng::new(4);
        for _ in 0..300 {
            let j = sample(&mut rng);
            for kind in 0..TYPES.len() {
                let r = capacity_ratio(&j, kind);
                for bump in [
                    Joint {
                        axial_kn: j.axial_kn.abs() * 1.5 + 1.0,
                        ..j.clone()
                    },
                    Joint {
                        shear_kn: j.shear_kn.abs() * 1.5,
                        ..j.clone()
                    },
                    Joint {
                        moment_knm: j.moment_knm.abs() * 1.5 + 1.0,
                        ..j.clone()
                    },
                ] {
                    assert!(capacity_ratio(&bump, kind) >= r);
                }
            }
        }
    }

    #[test]
    fn samples_cover_every_type() {
        let mut rng = Rng::new(2);
        let mut seen = [0usize; 5];
        for _ in 0..3000 {
            seen[connection_type(&sample(&mut rng))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }
}

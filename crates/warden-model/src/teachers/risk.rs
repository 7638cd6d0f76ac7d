//! risk-analyzer's reference: a documented weighted scoring of a project's eight risk factors
//! into a score in [0, 1] and a class (low / medium / high).
//!
//! Source: the factor list follows the usual qualitative project-risk registers for building
//! structures (seismic hazard and site class as in ASCE 7-22 ch. 11 / EN 1998-1 ground types,
//! scale and complexity, change volume, team experience); the weights and scales are this
//! project's own documented choice, not a published standard.
//!
//! Each factor is normalised to 0 (least risk) .. 1 (most risk) over the trained range and the
//! score is their weighted sum (weights sum to 1), clamped to [0, 1] outside it:
//!
//! | factor | normalisation (0 → 1) | weight |
//! |---|---|---|
//! | seismic_zone | zone / 4 | 0.20 |
//! | design_changes | ln(1 + n) / ln(501) (0 → 500 changes) | 0.20 |
//! | soil_class | A, B, C, D, E → 0, ¼, ½, ¾, 1 | 0.15 |
//! | team_experience_years | 1 − years / 30 (30 years → 0) | 0.15 |
//! | storeys | (n − 1) / 79 | 0.10 |
//! | max_span_m | (span − 3) / 57 | 0.08 |
//! | budget_musd | ln(budget / 0.5) / ln(4000) (0.5 → 2000 M$) | 0.07 |
//! | duration_months | (months − 3) / 117 (longer exposure) | 0.05 |
//!
//! Assumptions: every factor is monotone — more of it (less for experience) never lowers the
//! risk; factors are independent and additive (no interaction terms). Classes: score < 0.35 is
//! low, < 0.6 medium, otherwise high.

use super::{Rng, round};
use serde_json::{Value, json};

pub const SOIL: [&str; 5] = ["A", "B", "C", "D", "E"];
pub const CLASSES: [&str; 3] = ["low", "medium", "high"];
pub const LOW_BELOW: f64 = 0.35;
pub const HIGH_FROM: f64 = 0.6;

/// Factor weights, in the order of [`factors`].
pub const WEIGHTS: [(&str, f64); 8] = [
    ("budget_musd", 0.07),
    ("duration_months", 0.05),
    ("storeys", 0.10),
    ("max_span_m", 0.08),
    ("seismic_zone", 0.20),
    ("soil_class", 0.15),
    ("design_changes", 0.20),
    ("team_experience_years", 0.15),
];

/// One project as the request describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Project {
    pub budget_musd: f64,
    pub duration_months: f64,
    pub storeys: i64,
    pub max_span_m: f64,
    pub seismic_zone: i64,
    /// Index into [`SOIL`].
    pub soil_class: usize,
    pub design_changes: i64,
    pub team_experience_years: f64,
}

/// The eight normalised factors (0 least risk, 1 most, over the trained range), in
/// [`WEIGHTS`] order. They are also the network's input features.
pub fn factors(p: &Project) -> [f64; 8] {
    [
        (p.budget_musd / 0.5).ln() / 4000f64.ln(),
        (p.duration_months - 3.0) / 117.0,
        (p.storeys as f64 - 1.0) / 79.0,
        (p.max_span_m - 3.0) / 57.0,
        p.seismic_zone as f64 / 4.0,
        p.soil_class as f64 / 4.0,
        (1.0 + p.design_changes as f64).ln() / 501f64.ln(),
        1.0 - p.team_experience_years / 30.0,
    ]
}

/// The weighted score in [0, 1].
pub fn score(p: &Project) -> f64 {
    let s: f64 = factors(p)
        .iter()
        .zip(WEIGHTS)
        .map(|(f, (_, w))| f * w)
        .sum();
    s.clamp(0.0, 1.0)
}

/// The class index (into [`CLASSES`]) of a score.
pub fn class(score: f64) -> usize {
    if score < LOW_BELOW {
        0
    } else if score < HIGH_FROM {
        1
    } else {
        2
    }
}

/// A project drawn uniformly over the trained ranges (log-uniform for budget and changes).
pub fn sample(rng: &mut Rng) -> Project {
    Project {
        budget_musd: round(rng.log_uniform(0.5, 2000.0), 2),
        duration_months: round(rng.uniform(3.0, 120.0), 1),
        storeys: rng.int(1, 80),
        max_span_m: round(rng.uniform(3.0, 60.0), 1),
        seismic_zone: rng.int(0, 4),
        soil_class: rng.int(0, 4) as usize,
        design_changes: (rng.log_uniform(1.0, 501.0) - 1.0).round() as i64,
        team_experience_years: round(rng.uniform(0.0, 30.0), 1),
    }
}

/// The request body for `p`.
pub fn to_json(p: &Project) -> Value {
    json!({
        "budget_musd": p.budget_musd, "duration_months": p.duration_months, "storeys": p.storeys,
        "max_span_m": p.max_span_m, "seismic_zone": p.seismic_zone,
        "soil_class": SOIL[p.soil_class], "design_changes": p.design_changes,
        "team_experience_years": p.team_experience_years,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        Project {
            budget_musd: 42.0,
            duration_months: 30.0,
            storeys: 12,
            max_span_m: 14.5,
            seismic_zone: 2,
            soil_class: 2,
            design_changes: 18,
            team_experience_years: 9.0,
        }
    }

    #[test]
    fn worked_example_by_hand() {
        // budget ln(84)/ln(4000) = 0.5342 ×0.07; duration 27/117 = 0.2308 ×0.05;
        // storeys 11/79 = 0.1392 ×0.10; span 11.5/57 = 0.2018 ×0.08; zone 0.5 ×0.20;
        // soil 0.5 ×0.15; changes ln(19)/ln(501) = 0.4738 ×0.20; experience 0.7 ×0.15.
        let expected = 0.5342 * 0.07
            + 0.2308 * 0.05
            + 0.1392 * 0.10
            + 0.2018 * 0.08
            + 0.5 * 0.20
            + 0.5 * 0.15
            + 0.4738 * 0.20
            + 0.7 * 0.15;
        let s = score(&project());
        assert!((s - expected).abs() < 1e-3, "{s} vs {expected}");
        assert_eq!(CLASSES[class(s)], "medium");
    }

    #[test]
    fn the_issue_s_two_projects_land_far_apart() {
        // Seismic zone 4, soil E, 400 design changes, a team with 6 months' experience.
        let risky = Project {
            seismic_zone: 4,
            soil_class: 4,
            design_changes: 400,
            team_experience_years: 0.5,
            ..project()
        };
        // A two-storey building on rock with an experienced team.
        let calm = Project {
            budget_musd: 2.0,
            duration_months: 8.0,
            storeys: 2,
            max_span_m: 6.0,
            seismic_zone: 0,
            soil_class: 0,
            design_changes: 2,
            team_experience_years: 25.0,
        };
        assert_eq!(CLASSES[class(score(&risky))], "high");
        assert_eq!(CLASSES[class(score(&calm))], "low");
    }

    #[test]
    fn weights_sum_to_one_and_each_factor_is_monotone() {
        let total: f64 = WEIGHTS.iter().map(|w| w.1).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let base = project();
        let s = score(&base);
        let riskier = [
            Project {
                budget_musd: 80.0,
                ..base
            },
            Project {
                duration_months: 40.0,
                ..base
            },
            Project {
                storeys: 13,
                ..base
            },
            Project {
                max_span_m: 20.0,
                ..base
            },
            Project {
                seismic_zone: 3,
                ..base
            },
            Project {
                soil_class: 3,
                ..base
            },
            Project {
                design_changes: 19,
                ..base
            },
            Project {
                team_experience_years: 8.0,
                ..base
            },
        ];
        for r in riskier {
            assert!(score(&r) > s, "{r:?}");
        }
    }

    #[test]
    fn samples_cover_all_three_classes() {
        let mut rng = Rng::new(1);
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            seen[class(score(&sample(&mut rng)))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
    }
}

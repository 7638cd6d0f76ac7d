//! clash-detector's reference: per construction step, the services voxels that overlap the
//! structure or come closer to it than one voxel of clearance, and where they are.
//!
//! Source: the hard/soft clash definitions of BIM coordination practice (a hard clash is two
//! elements occupying the same space; a clearance or "soft" clash is an element inside
//! another's required clearance zone — e.g. Navisworks' hard and clearance tests), on an
//! occupancy grid.
//!
//! Rule: a voxel is occupied when its occupancy is ≥ 0.5. A services voxel is *in conflict*
//! when a structure voxel is occupied within one voxel of it in every axis (the 3×3×3
//! neighbourhood: overlap, face, edge or corner contact, i.e. less than one voxel of clear
//! space). A step clashes when any voxel is in conflict; its location is the centroid of the
//! conflicting voxels (x, y, z in voxel units).
//!
//! Assumptions: one voxel is the required clearance for every service; partial occupancy below
//! 0.5 is treated as empty (a voxel mostly free is passable); steps are judged independently
//! (each step's grids are the state after that step).

use super::Rng;
use serde_json::{Value, json};

pub const GRID: usize = 8;
pub const VOXELS: usize = GRID * GRID * GRID;
pub const OCCUPIED: f32 = 0.5;

/// Flat index of voxel (x, y, z) in a row-major [x][y][z] grid.
pub fn at(x: usize, y: usize, z: usize) -> usize {
    (x * GRID + y) * GRID + z
}

/// The per-voxel conflict map of one step (1.0 in conflict, 0.0 not).
pub fn conflicts(structure: &[f32], services: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; VOXELS];
    for x in 0..GRID {
        for y in 0..GRID {
            for z in 0..GRID {
                if services[at(x, y, z)] < OCCUPIED {
                    continue;
                }
                let near = |c: usize| c.saturating_sub(1)..=(c + 1).min(GRID - 1);
                let hit = near(x)
                    .any(|i| near(y).any(|j| near(z).any(|k| structure[at(i, j, k)] >= OCCUPIED)));
                if hit {
                    out[at(x, y, z)] = 1.0;
                }
            }
        }
    }
    out
}

/// One step's verdict: clash, and the centroid of the conflicting voxels.
#[derive(Debug, Clone, PartialEq)]
pub struct StepVerdict {
    pub clash: bool,
    pub conflicting_voxels: usize,
    pub location: Option<[f64; 3]>,
}

pub fn judge(structure: &[f32], services: &[f32]) -> StepVerdict {
    let map = conflicts(structure, services);
    let mut sum = [0.0f64; 3];
    let mut n = 0usize;
    for x in 0..GRID {
        for y in 0..GRID {
            for z in 0..GRID {
                if map[at(x, y, z)] > 0.5 {
                    sum[0] += x as f64;
                    sum[1] += y as f64;
                    sum[2] += z as f64;
                    n += 1;
                }
            }
        }
    }
    StepVerdict {
        clash: n > 0,
        conflicting_voxels: n,
        location: (n > 0).then(|| sum.map(|s| s / n as f64)),
    }
}

/// A straight run of voxels along one axis: (axis, the two fixed coordinates, from, to).
fn draw_run(grid: &mut [f32], rng: &mut Rng, value: &mut dyn FnMut(&mut Rng) -> f32) {
    let axis = rng.int(0, 2) as usize;
    let a = rng.int(0, GRID as i64 - 1) as usize;
    let b = rng.int(0, GRID as i64 - 1) as usize;
    let from = rng.int(0, GRID as i64 - 3) as usize;
    let to = rng.int(from as i64 + 2, GRID as i64 - 1) as usize;
    for t in from..=to {
        let (x, y, z) = match axis {
            0 => (t, a, b),
            1 => (a, t, b),
            _ => (a, b, t),
        };
        grid[at(x, y, z)] = value(rng);
    }
}

/// One step's grids: 1–3 structural members (beams and columns as voxel runs) and 1–3 service
/// runs; occupied voxels hold 0.6–1, a quarter of the free ones faint noise below 0.4.
pub fn sample_step(rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let mut structure = vec![0.0f32; VOXELS];
    let mut services = vec![0.0f32; VOXELS];
    let mut solid = |rng: &mut Rng| {
        if rng.chance(0.5) {
            1.0
        } else {
            rng.uniform(0.6, 1.0) as f32
        }
    };
    for _ in 0..rng.int(1, 3) {
        draw_run(&mut structure, rng, &mut solid);
    }
    for _ in 0..rng.int(1, 3) {
        draw_run(&mut services, rng, &mut solid);
    }
    for grid in [&mut structure, &mut services] {
        for v in grid.iter_mut() {
            if *v == 0.0 && rng.chance(0.25) {
                *v = rng.uniform(0.0, 0.4) as f32;
            }
        }
    }
    (structure, services)
}

/// A nested [x][y][z] JSON array of a flat grid.
pub fn grid_json(grid: &[f32]) -> Value {
    json!(
        (0..GRID)
            .map(|x| (0..GRID)
                .map(|y| (0..GRID)
                    .map(|z| (grid[at(x, y, z)] as f64 * 1000.0).round() / 1000.0)
                    .collect::<Vec<f64>>())
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    )
}

/// A request body of the given steps.
pub fn to_json(steps: &[(Vec<f32>, Vec<f32>)]) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(s, v)| json!({"structure": grid_json(s), "services": grid_json(v)}))
        .collect();
    json!({ "steps": steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Vec<f32> {
        vec![0.0; VOXELS]
    }

    /// A beam along x at y = 4, z = 4.
    fn beam() -> Vec<f32> {
        let mut g = empty();
        for x in 0..GRID {
            g[at(x, 4, 4)] = 1.0;
        }
        g
    }

    /// A duct along y at x = 3 and height z.
    fn duct(z: usize) -> Vec<f32> {
        let mut g = empty();
        for y in 0..GRID {
            g[at(3, y, z)] = 1.0;
        }
        g
    }

    #[test]
    fn a_duct_crossing_a_beam_clashes_at_the_crossing() {
        let v = judge(&beam(), &duct(4));
        assert!(v.clash);
        // Conflicts where the duct passes within one voxel of the beam: y = 3, 4, 5 at x = 3.
        assert_eq!(v.conflicting_voxels, 3);
        assert_eq!(v.location, Some([3.0, 4.0, 4.0]));
    }

    #[test]
    fn clearance_counts_one_voxel_and_no_more() {
        // One voxel above the beam: touching, no clear space → soft clash.
        assert!(judge(&beam(), &duct(5)).clash);
        // Two voxels above: one clear voxel between → no clash.
        assert!(!judge(&beam(), &duct(6)).clash);
        // Far away: no clash.
        assert!(!judge(&beam(), &duct(0)).clash);
    }

    #[test]
    fn faint_occupancy_is_free_space() {
        let mut faint = beam();
        for v in faint.iter_mut() {
            *v *= 0.45;
        }
        assert!(!judge(&faint, &duct(4)).clash);
    }

    #[test]
    fn samples_clash_about_half_the_time() {
        let mut rng = Rng::new(9);
        let n = 1000;
        let clashes = (0..n)
            .filter(|_| {
                let (s, v) = sample_step(&mut rng);
                judge(&s, &v).clash
            })
            .count();
        assert!((250..750).contains(&clashes), "{clashes}/{n}");
    }
}

//! A small gradient-boosted regression tree trainer (squared error, exact greedy splits,
//! optional monotone constraints) that writes its model as XGBoost JSON, so the trained
//! ensemble is served by the same XGBoost-JSON path (`xgboost.rs`) as a model from Python.
//!
//! Why not Python xgboost: training then needs no interpreter or pinned wheel on the host, is
//! bit-for-bit deterministic (no threads, no sampling), and `warden models train` runs anywhere
//! the binary does. The algorithm is XGBoost's exact method: leaf weight −G/(H+λ), split gain
//! from the loss reduction, and XGBoost's monotone constraint scheme (children's weights are
//! bounded by the midpoint of a constrained split, so every tree — and their sum — is monotone
//! in a constrained feature).

use serde_json::{Value, json};

/// Training knobs.
#[derive(Debug, Clone)]
pub struct Params {
    pub rounds: usize,
    pub max_depth: usize,
    /// Learning rate (shrinkage) applied to every leaf.
    pub eta: f64,
    /// L2 regularisation on leaf weights.
    pub lambda: f64,
    /// Fewest samples a child may hold.
    pub min_child: usize,
    /// Per feature: +1 increasing, −1 decreasing, 0 unconstrained.
    pub monotone: Vec<i8>,
}

/// One tree in XGBoost's array layout (`left[n] == -1` marks a leaf; `value` is the split
/// threshold of an inner node and the (shrunk) weight of a leaf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    pub left: Vec<i64>,
    pub right: Vec<i64>,
    pub parent: Vec<i64>,
    pub feature: Vec<usize>,
    pub value: Vec<f32>,
    pub gain: Vec<f32>,
    pub hessian: Vec<f32>,
}

impl Tree {
    fn push(&mut self, parent: i64) -> usize {
        self.left.push(-1);
        self.right.push(-1);
        self.parent.push(parent);
        self.feature.push(0);
        self.value.push(0.0);
        self.gain.push(0.0);
        self.hessian.push(0.0);
        self.left.len() - 1
    }

    /// The leaf value for one row (x < threshold goes left, as in XGBoost).
    pub fn predict(&self, row: &[f32]) -> f32 {
        let mut n = 0usize;
        while self.left[n] >= 0 {
            n = if row[self.feature[n]] < self.value[n] {
                self.left[n]
            } else {
                self.right[n]
            } as usize;
        }
        self.value[n]
    }
}

/// A trained ensemble: `base + Σ trees`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub base_score: f32,
    pub num_feature: usize,
    pub trees: Vec<Tree>,
}

impl Model {
    pub fn predict(&self, row: &[f32]) -> f32 {
        self.base_score + self.trees.iter().map(|t| t.predict(row)).sum::<f32>()
    }
}

fn leaf_weight(g: f64, h: f64, lambda: f64, (lo, hi): (f64, f64)) -> f64 {
    (-g / (h + lambda)).clamp(lo, hi)
}

/// The loss of a node with weight `w` (second-order): G·w + ½(H + λ)·w².
fn loss(g: f64, h: f64, lambda: f64, w: f64) -> f64 {
    g * w + 0.5 * (h + lambda) * w * w
}

struct Split {
    feature: usize,
    threshold: f32,
    gain: f64,
    left_weight: f64,
    right_weight: f64,
}

/// Fits `rows` (each `num_feature` long) to `targets`.
pub fn fit(rows: &[Vec<f32>], targets: &[f32], p: &Params) -> Model {
    let n = rows.len();
    let num_feature = rows.first().map_or(0, Vec::len);
    let base = if n == 0 {
        0.0
    } else {
        targets.iter().map(|&y| y as f64).sum::<f64>() / n as f64
    };
    // Samples sorted by each feature once; each level walks these orders.
    let orders: Vec<Vec<usize>> = (0..num_feature)
        .map(|f| {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| rows[a][f].total_cmp(&rows[b][f]).then(a.cmp(&b)));
            idx
        })
        .collect();
    let mut pred = vec![base; n];
    let mut trees = Vec::with_capacity(p.rounds);
    for _ in 0..p.rounds {
        let grad: Vec<f64> = (0..n).map(|i| pred[i] - targets[i] as f64).collect();
        let tree = grow(rows, &grad, &orders, p);
        for (i, row) in rows.iter().enumerate() {
            pred[i] += tree.predict(row) as f64;
        }
        trees.push(tree);
    }
    Model {
        base_score: base as f32,
        num_feature,
        trees,
    }
}

/// Grows one tree level by level (hessians are 1 for squared error).
fn grow(rows: &[Vec<f32>], grad: &[f64], orders: &[Vec<usize>], p: &Params) -> Tree {
    let n = rows.len();
    let mut tree = Tree::default();
    let root = tree.push(-1);
    // node_of[i]: the open node sample i sits in (None once its node became a leaf).
    let mut node_of: Vec<Option<usize>> = vec![Some(root); n];
    let mut bounds = vec![(f64::NEG_INFINITY, f64::INFINITY)];
    let mut open = vec![root];
    for depth in 0..=p.max_depth {
        if open.is_empty() {
            break;
        }
        // Per open node: total G, H.
        let mut totals = vec![(0.0f64, 0.0f64); tree.left.len()];
        for i in 0..n {
            if let Some(node) = node_of[i] {
                totals[node].0 += grad[i];
                totals[node].1 += 1.0;
            }
        }
        let mut best: Vec<Option<Split>> = (0..tree.left.len()).map(|_| None).collect();
        if depth < p.max_depth {
            for (f, order) in orders.iter().enumerate() {
                let c = p.monotone.get(f).copied().unwrap_or(0);
                // Running left sums and the last value seen, per node.
                let mut acc = vec![(0.0f64, 0.0f64, f32::NAN); tree.left.len()];
                for &i in order {
                    let Some(node) = node_of[i] else { continue };
                    let x = rows[i][f];
                    let (gl, hl, last) = acc[node];
                    if hl >= p.min_child as f64 && x > last {
                        let (g, h) = totals[node];
                        let (gr, hr) = (g - gl, h - hl);
                        if hr >= p.min_child as f64 {
                            let b = bounds[node];
                            let wl = leaf_weight(gl, hl, p.lambda, b);
                            let wr = leaf_weight(gr, hr, p.lambda, b);
                            let ordered = match c {
                                1 => wl <= wr,
                                -1 => wl >= wr,
                                _ => true,
                            };
                            let wp = leaf_weight(g, h, p.lambda, b);
                            let gain = loss(g, h, p.lambda, wp)
                                - loss(gl, hl, p.lambda, wl)
                                - loss(gr, hr, p.lambda, wr);
                            if ordered
                                && gain > 1e-9
                                && best[node].as_ref().is_none_or(|s| gain > s.gain)
                            {
                                let mid = ((last as f64 + x as f64) / 2.0) as f32;
                                // The threshold must separate the two values in f32.
                                let threshold = if mid > last && mid <= x { mid } else { x };
                                best[node] = Some(Split {
                                    feature: f,
                                    threshold,
                                    gain,
                                    left_weight: wl,
                                    right_weight: wr,
                                });
                            }
                        }
                    }
                    acc[node] = (gl + grad[i], hl + 1.0, x);
                }
            }
        }
        let mut next_open = Vec::new();
        let mut child_of: Vec<Option<(usize, usize)>> = vec![None; tree.left.len()];
        for &node in &open {
            let (g, h) = totals[node];
            tree.hessian[node] = h as f32;
            match best[node].take() {
                Some(s) => {
                    let l = tree.push(node as i64);
                    let r = tree.push(node as i64);
                    tree.left[node] = l as i64;
                    tree.right[node] = r as i64;
                    tree.feature[node] = s.feature;
                    tree.value[node] = s.threshold;
                    tree.gain[node] = s.gain as f32;
                    let (lo, hi) = bounds[node];
                    let c = p.monotone.get(s.feature).copied().unwrap_or(0);
                    let mid = (s.left_weight + s.right_weight) / 2.0;
                    let (lb, rb) = match c {
                        1 => ((lo, mid), (mid, hi)),
                        -1 => ((mid, hi), (lo, mid)),
                        _ => ((lo, hi), (lo, hi)),
                    };
                    bounds.push(lb);
                    bounds.push(rb);
                    child_of[node] = Some((l, r));
                    next_open.push(l);
                    next_open.push(r);
                }
                None => {
                    tree.value[node] = (p.eta * leaf_weight(g, h, p.lambda, bounds[node])) as f32;
                }
            }
        }
        for i in 0..n {
            if let Some(node) = node_of[i] {
                node_of[i] = child_of[node].map(|(l, r)| {
                    if rows[i][tree.feature[node]] < tree.value[node] {
                        l
                    } else {
                        r
                    }
                });
            }
        }
        open = next_open;
    }
    tree
}

/// The model as the JSON `Booster.save_model("m.json")` writes for `reg:squarederror`.
pub fn to_xgboost_json(m: &Model) -> Value {
    let trees: Vec<Value> = m
        .trees
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let nodes = t.left.len();
            json!({
                "base_weights": t.value.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                "categories": [], "categories_nodes": [], "categories_segments": [],
                "categories_sizes": [],
                "default_left": vec![0; nodes],
                "id": id,
                "left_children": t.left,
                "loss_changes": t.gain.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                "parents": t.parent.iter().map(|&p| if p < 0 { 2147483647 } else { p }).collect::<Vec<_>>(),
                "right_children": t.right,
                "split_conditions": t.value.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                "split_indices": t.feature,
                "split_type": vec![0; nodes],
                "sum_hessian": t.hessian.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                "tree_param": {"num_deleted": "0", "num_feature": m.num_feature.to_string(),
                               "num_nodes": nodes.to_string(), "size_leaf_vector": "1"},
            })
        })
        .collect();
    let count = m.trees.len();
    json!({
        "learner": {
            "attributes": {},
            "feature_names": [],
            "feature_types": [],
            "gradient_booster": {
                "model": {
                    "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": count.to_string()},
                    "iteration_indptr": (0..=count).collect::<Vec<_>>(),
                    "tree_info": vec![0; count],
                    "trees": trees,
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                "base_score": format!("{:E}", m.base_score),
                "boost_from_average": "1",
                "num_class": "0",
                "num_feature": m.num_feature.to_string(),
                "num_target": "1",
            },
            "objective": {"name": "reg:squarederror", "reg_loss_param": {"scale_pos_weight": "1"}},
        },
        "version": [3, 0, 0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xgboost::TreeEnsemble;

    fn params(monotone: Vec<i8>) -> Params {
        Params {
            rounds: 60,
            max_depth: 4,
            eta: 0.3,
            lambda: 1.0,
            min_child: 2,
            monotone,
        }
    }

    #[test]
    fn fits_a_staircase_and_round_trips_through_the_xgboost_reader() {
        let rows: Vec<Vec<f32>> = (0..400).map(|i| vec![i as f32 / 40.0]).collect();
        let y: Vec<f32> = rows.iter().map(|r| r[0].floor()).collect();
        let m = fit(&rows, &y, &params(vec![1]));
        let exact = rows
            .iter()
            .zip(&y)
            .filter(|(r, t)| (m.predict(r).round() - **t).abs() < 0.5)
            .count();
        assert!(exact >= 396, "{exact}/400");
        let e = TreeEnsemble::from_json(&to_xgboost_json(&m).to_string()).unwrap();
        for r in rows.iter().step_by(17) {
            let ours = m.predict(r);
            let theirs = e.margins(r)[0];
            assert!((ours - theirs).abs() < 1e-4, "{ours} vs {theirs}");
        }
    }

    #[test]
    fn monotone_constraints_hold_even_against_noisy_targets() {
        // y falls in the middle of the range; the constraint forbids following it.
        let rows: Vec<Vec<f32>> = (0..300)
            .map(|i| vec![i as f32, ((i * 7919) % 300) as f32])
            .collect();
        let y: Vec<f32> = rows
            .iter()
            .map(|r| if (100.0..200.0).contains(&r[0]) { -r[0] } else { r[0] } + r[1] * 0.1)
            .collect();
        let m = fit(&rows, &y, &params(vec![1, 0]));
        for other in [0.0, 150.0, 299.0] {
            let mut prev = f32::NEG_INFINITY;
            for x in 0..300 {
                let v = m.predict(&[x as f32, other]);
                assert!(v >= prev - 1e-6, "x = {x}: {v} < {prev}");
                prev = v;
            }
        }
    }

    #[test]
    fn training_is_deterministic() {
        let rows: Vec<Vec<f32>> = (0..200).map(|i| vec![(i % 13) as f32, i as f32]).collect();
        let y: Vec<f32> = rows.iter().map(|r| r[0] * 2.0 + r[1] / 50.0).collect();
        let a = fit(&rows, &y, &params(vec![0, 1]));
        let b = fit(&rows, &y, &params(vec![0, 1]));
        assert_eq!(to_xgboost_json(&a), to_xgboost_json(&b));
    }
}

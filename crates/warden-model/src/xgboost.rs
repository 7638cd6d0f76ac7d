//! Gradient-boosted tree ensembles from XGBoost JSON models, evaluated as batched tensor ops.
//!
//! Reads the format `Booster.save_model("m.json")` writes (xgboost 1.x–3.x: scalar or vector
//! `base_score`). Evaluation walks every tree of every row at once: a `[batch, trees]` tensor of
//! node ids advanced `depth` times with gathers, so one forward is a handful of kernels.

use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum XgboostError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not an XGBoost JSON model: {0}")]
    Format(String),
    #[error("unsupported XGBoost model: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

/// How raw margins become outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// multi:softprob / multi:softmax: softmax over the class margins.
    Softmax,
    /// binary:logistic / reg:logistic: sigmoid of the margin.
    Logistic,
    /// reg:squarederror and friends: the margin is the prediction.
    Identity,
}

/// One regression tree in XGBoost's array layout (`left == -1` marks a leaf).
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub left: Vec<i64>,
    pub right: Vec<i64>,
    pub feature: Vec<i64>,
    /// Split threshold for inner nodes, leaf value for leaves (as XGBoost stores it).
    pub condition: Vec<f32>,
    pub default_left: Vec<bool>,
}

impl Tree {
    fn depth(&self) -> usize {
        fn walk(t: &Tree, n: usize, guard: usize) -> usize {
            // The guard stops a malformed (cyclic) tree from recursing forever.
            if t.left[n] < 0 || guard == 0 {
                return 0;
            }
            1 + walk(t, t.left[n] as usize, guard - 1).max(walk(t, t.right[n] as usize, guard - 1))
        }
        walk(self, 0, self.left.len())
    }

    /// The leaf value for one row, walking the tree in plain Rust (NaN = missing).
    #[cfg(test)]
    pub fn leaf(&self, row: &[f32]) -> f32 {
        let mut n = 0usize;
        while self.left[n] >= 0 {
            let x = row[self.feature[n] as usize];
            let go_left = if x.is_nan() {
                self.default_left[n]
            } else {
                x < self.condition[n]
            };
            n = if go_left { self.left[n] } else { self.right[n] } as usize;
        }
        self.condition[n]
    }
}

/// A parsed XGBoost gbtree model.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    pub num_feature: usize,
    /// Output groups: classes for softmax, 1 otherwise.
    pub num_group: usize,
    /// Per-group starting margin.
    pub base_margin: Vec<f32>,
    pub objective: Objective,
    pub trees: Vec<Tree>,
    /// The output group each tree adds to.
    pub tree_group: Vec<usize>,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, XgboostError> {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(key)
            .ok_or_else(|| XgboostError::Format(format!("missing {}", path.join("."))))?;
    }
    Ok(cur)
}

fn number_text(v: &Value, what: &str) -> Result<f64, XgboostError> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| XgboostError::Format(format!("{what} is not a number")))
}

fn ints(v: &Value, key: &str) -> Result<Vec<i64>, XgboostError> {
    field(v, &[key])?
        .as_array()
        .ok_or_else(|| XgboostError::Format(format!("tree {key} is not an array")))?
        .iter()
        .map(|x| {
            x.as_i64()
                .ok_or_else(|| XgboostError::Format(format!("tree {key} holds a non-integer")))
        })
        .collect()
}

fn floats(v: &Value, key: &str) -> Result<Vec<f32>, XgboostError> {
    field(v, &[key])?
        .as_array()
        .ok_or_else(|| XgboostError::Format(format!("tree {key} is not an array")))?
        .iter()
        .map(|x| number_text(x, key).map(|f| f as f32))
        .collect()
}

impl TreeEnsemble {
    pub fn load(path: &Path) -> Result<TreeEnsemble, XgboostError> {
        let text = std::fs::read_to_string(path).map_err(|source| XgboostError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<TreeEnsemble, XgboostError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| XgboostError::Format(e.to_string()))?;
        let learner = field(&root, &["learner"])?;
        let booster = field(learner, &["gradient_booster"])?;
        let kind = field(booster, &["name"])?.as_str().unwrap_or_default();
        if kind != "gbtree" {
            return Err(XgboostError::Unsupported(format!(
                "booster {kind:?} (only gbtree)"
            )));
        }
        let params = field(learner, &["learner_model_param"])?;
        let num_feature = number_text(field(params, &["num_feature"])?, "num_feature")? as usize;
        let num_class = number_text(field(params, &["num_class"])?, "num_class")? as usize;
        let objective_name = field(learner, &["objective", "name"])?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let objective = match objective_name.as_str() {
            "multi:softprob" | "multi:softmax" => Objective::Softmax,
            "binary:logistic" | "reg:logistic" => Objective::Logistic,
            o if o.starts_with("reg:") => Objective::Identity,
            o => return Err(XgboostError::Unsupported(format!("objective {o:?}"))),
        };
        let num_group = num_class.max(1);

        // base_score: "5E-1" (older) or "[a,b,c]" (3.x, one per class).
        let base_text = field(params, &["base_score"])?
            .as_str()
            .ok_or_else(|| XgboostError::Format("base_score is not a string".into()))?;
        let base: Vec<f64> = base_text
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|s| number_text(&Value::String(s.to_string()), "base_score"))
            .collect::<Result<_, _>>()?;
        let base = match base.len() {
            1 => vec![base[0]; num_group],
            n if n == num_group => base,
            n => {
                return Err(XgboostError::Format(format!(
                    "base_score has {n} values for {num_group} outputs"
                )));
            }
        };
        // Logistic objectives store base_score as a probability; the trees add to its logit.
        let base_margin = base
            .iter()
            .map(|&b| match objective {
                Objective::Logistic => (b / (1.0 - b)).ln() as f32,
                _ => b as f32,
            })
            .collect();

        let model = field(booster, &["model"])?;
        let tree_values = field(model, &["trees"])?
            .as_array()
            .ok_or_else(|| XgboostError::Format("trees is not an array".into()))?;
        let info = field(model, &["tree_info"])?
            .as_array()
            .ok_or_else(|| XgboostError::Format("tree_info is not an array".into()))?;
        if info.len() != tree_values.len() {
            return Err(XgboostError::Format(
                "tree_info and trees differ in length".into(),
            ));
        }
        let mut trees = Vec::with_capacity(tree_values.len());
        let mut tree_group = Vec::with_capacity(tree_values.len());
        for (i, (t, g)) in tree_values.iter().zip(info).enumerate() {
            let tree = Tree {
                left: ints(t, "left_children")?,
                right: ints(t, "right_children")?,
                feature: ints(t, "split_indices")?,
                condition: floats(t, "split_conditions")?,
                default_left: ints(t, "default_left")?.iter().map(|&d| d != 0).collect(),
            };
            let n = tree.left.len();
            let consistent = n > 0
                && [
                    tree.right.len(),
                    tree.feature.len(),
                    tree.condition.len(),
                    tree.default_left.len(),
                ]
                .iter()
                .all(|&l| l == n);
            let in_range = (0..n).all(|j| {
                tree.left[j] < 0
                    || (tree.left[j] < n as i64
                        && tree.right[j] >= 0
                        && tree.right[j] < n as i64
                        && tree.feature[j] >= 0
                        && (tree.feature[j] as usize) < num_feature)
            });
            if !consistent || !in_range {
                return Err(XgboostError::Format(format!("tree {i} is malformed")));
            }
            let group = g.as_u64().unwrap_or(u64::MAX) as usize;
            if group >= num_group {
                return Err(XgboostError::Format(format!(
                    "tree {i} adds to output {group} of {num_group}"
                )));
            }
            trees.push(tree);
            tree_group.push(group);
        }
        Ok(TreeEnsemble {
            num_feature,
            num_group,
            base_margin,
            objective,
            trees,
            tree_group,
        })
    }

    /// Raw margins for one row, walking every tree in plain Rust (the reference path).
    #[cfg(test)]
    pub fn margins(&self, row: &[f32]) -> Vec<f32> {
        let mut out = self.base_margin.clone();
        for (tree, &g) in self.trees.iter().zip(&self.tree_group) {
            out[g] += tree.leaf(row);
        }
        out
    }
}

/// A [`TreeEnsemble`] laid out as flat tensors for batched evaluation.
pub struct TensorEnsemble {
    objective: Objective,
    nodes_per_tree: i64,
    num_trees: i64,
    depth: usize,
    left: Tensor,
    right: Tensor,
    feature: Tensor,
    condition: Tensor,
    default_left: Tensor,
    /// `[trees, groups]` one-hot: which output each tree adds to.
    group_matrix: Tensor,
    base_margin: Tensor,
}

impl TensorEnsemble {
    pub fn new(e: &TreeEnsemble, device: Device) -> Result<TensorEnsemble, XgboostError> {
        let width = e.trees.iter().map(|t| t.left.len()).max().unwrap_or(1);
        let total = e.trees.len() * width;
        let (mut left, mut right, mut feature) =
            (vec![0i64; total], vec![0i64; total], vec![0i64; total]);
        let mut condition = vec![0f32; total];
        let mut default_left = vec![0u8; total];
        for (t, tree) in e.trees.iter().enumerate() {
            let base = (t * width) as i64;
            for j in 0..width {
                let g = t * width + j;
                if j < tree.left.len() && tree.left[j] >= 0 {
                    left[g] = base + tree.left[j];
                    right[g] = base + tree.right[j];
                    feature[g] = tree.feature[j];
                    default_left[g] = tree.default_left[j] as u8;
                    condition[g] = tree.condition[j];
                } else {
                    // Leaves (and padding) point at themselves so extra steps stay put.
                    left[g] = base + j as i64;
                    right[g] = base + j as i64;
                    condition[g] = tree.condition.get(j).copied().unwrap_or(0.0);
                }
            }
        }
        let mut onehot = vec![0f32; e.trees.len() * e.num_group];
        for (t, &g) in e.tree_group.iter().enumerate() {
            onehot[t * e.num_group + g] = 1.0;
        }
        let depth = e.trees.iter().map(Tree::depth).max().unwrap_or(0);
        Ok(TensorEnsemble {
            objective: e.objective,
            nodes_per_tree: width as i64,
            num_trees: e.trees.len() as i64,
            depth,
            left: Tensor::from_slice(&left).to_device(device),
            right: Tensor::from_slice(&right).to_device(device),
            feature: Tensor::from_slice(&feature).to_device(device),
            condition: Tensor::from_slice(&condition).to_device(device),
            default_left: Tensor::from_slice(&default_left)
                .to_kind(Kind::Bool)
                .to_device(device),
            group_matrix: Tensor::from_slice(&onehot)
                .f_view([e.trees.len() as i64, e.num_group as i64])?
                .to_device(device),
            base_margin: Tensor::from_slice(&e.base_margin).to_device(device),
        })
    }

    /// Raw margins `[batch, groups]` for `x: [batch, features]` (float, NaN = missing).
    pub fn margins(&self, x: &Tensor) -> Result<Tensor, XgboostError> {
        let batch = x.size().first().copied().unwrap_or(0);
        let device = x.device();
        let mut node = (Tensor::arange(self.num_trees, (Kind::Int64, device))
            * self.nodes_per_tree)
            .f_unsqueeze(0)?
            .f_expand([batch, self.num_trees], false)?
            .contiguous();
        for _ in 0..self.depth {
            let f = self.feature.f_take(&node)?;
            let xv = x.f_gather(1, &f, false)?;
            let go_left = self.default_left.f_take(&node)?.f_where_self(
                &xv.f_isnan()?,
                &xv.f_lt_tensor(&self.condition.f_take(&node)?)?,
            )?;
            node = self
                .left
                .f_take(&node)?
                .f_where_self(&go_left, &self.right.f_take(&node)?)?;
        }
        let leaves = self.condition.f_take(&node)?;
        Ok(leaves.f_matmul(&self.group_matrix)? + &self.base_margin)
    }

    /// Predictions: class probabilities (softmax), probabilities (logistic) or values.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor, XgboostError> {
        let m = self.margins(x)?;
        Ok(match self.objective {
            Objective::Softmax => m.f_softmax(-1, Kind::Float)?,
            Objective::Logistic => m.f_sigmoid()?,
            Objective::Identity => m,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUMP: &str = r#"{"learner":{"learner_model_param":{"base_score":"5E-1","num_class":"0","num_feature":"2"},
      "objective":{"name":"reg:squarederror"},
      "gradient_booster":{"name":"gbtree","model":{"tree_info":[0,0],"trees":[
        {"left_children":[1,-1,-1],"right_children":[2,-1,-1],"split_indices":[0,0,0],
         "split_conditions":[1.5,10.0,20.0],"default_left":[1,0,0]},
        {"left_children":[1,-1,3,-1,-1],"right_children":[2,-1,4,-1,-1],"split_indices":[1,0,0,0,0],
         "split_conditions":[0.0,1.0,5.0,2.0,3.0],"default_left":[0,0,1,0,0]}]}}}}"#;

    #[test]
    fn tensor_walk_matches_plain_walk_including_missing_values() {
        let e = TreeEnsemble::from_json(STUMP).unwrap();
        assert_eq!(e.margins(&[1.0, -1.0]), vec![0.5 + 10.0 + 1.0]);
        assert_eq!(e.margins(&[2.0, 7.0]), vec![0.5 + 20.0 + 2.0]);
        assert_eq!(e.margins(&[6.0, 7.0]), vec![0.5 + 20.0 + 3.0]);
        assert_eq!(e.margins(&[f32::NAN, f32::NAN]), vec![0.5 + 10.0 + 2.0]);
        let t = TensorEnsemble::new(&e, Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[1.0f32, -1.0, 2.0, 7.0, 6.0, 7.0, f32::NAN, f32::NAN])
            .view([4, 2]);
        let got = Vec::<f32>::try_from(t.predict(&x).unwrap().flatten(0, -1)).unwrap();
        assert_eq!(got, vec![11.5, 22.5, 23.5, 12.5]);
    }

    #[test]
    fn malformed_models_are_errors() {
        assert!(TreeEnsemble::from_json("{}").is_err());
        let bad = STUMP.replace("\"split_indices\":[0,0,0]", "\"split_indices\":[9,0,0]");
        assert!(matches!(
            TreeEnsemble::from_json(&bad),
            Err(XgboostError::Format(_))
        ));
    }
}

/// Checked against the real xgboost package's own predictions (fixtures/make_xgb.py) and
/// against an independent walk over the raw JSON trees.
#[cfg(test)]
mod fixture_tests {
    use super::{TensorEnsemble, TreeEnsemble};
    use serde_json::Value;

    fn xgb_fixture() -> (Value, Value) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let model = std::fs::read_to_string(dir.join("section_optimizer_xgb.json")).unwrap();
        let preds =
            std::fs::read_to_string(dir.join("section_optimizer_xgb_predictions.json")).unwrap();
        (
            serde_json::from_str(&model).unwrap(),
            serde_json::from_str(&preds).unwrap(),
        )
    }

    /// An independent reference: walk the raw JSON trees (not the library's parsed form).
    fn walk_raw_trees(model: &Value, row: &[Option<f32>]) -> Vec<f64> {
        let params = &model["learner"]["learner_model_param"];
        let base: Vec<f64> = params["base_score"]
            .as_str()
            .unwrap()
            .trim_matches(['[', ']'])
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        let gb = &model["learner"]["gradient_booster"]["model"];
        let mut out = base;
        for (tree, group) in gb["trees"]
            .as_array()
            .unwrap()
            .iter()
            .zip(gb["tree_info"].as_array().unwrap())
        {
            let at = |k: &str, n: usize| tree[k][n].clone();
            let mut n = 0usize;
            while at("left_children", n).as_i64().unwrap() != -1 {
                let f = at("split_indices", n).as_u64().unwrap() as usize;
                let left = match row[f] {
                    None => at("default_left", n).as_i64().unwrap() == 1,
                    Some(x) => x < at("split_conditions", n).as_f64().unwrap() as f32,
                };
                let next = if left {
                    "left_children"
                } else {
                    "right_children"
                };
                n = at(next, n).as_u64().unwrap() as usize;
            }
            out[group.as_u64().unwrap() as usize] += at("split_conditions", n).as_f64().unwrap();
        }
        out
    }

    #[test]
    fn xgboost_json_as_tensor_ops_matches_xgboost_and_a_plain_tree_walk() {
        let (model, preds) = xgb_fixture();
        let ensemble = TreeEnsemble::from_json(&model.to_string()).unwrap();
        let tensors = TensorEnsemble::new(&ensemble, tch::Device::Cpu).unwrap();
        let rows: Vec<Vec<Option<f32>>> = preds["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().map(|x| x as f32))
                    .collect()
            })
            .collect();
        let flat: Vec<f32> = rows
            .iter()
            .flatten()
            .map(|v| v.unwrap_or(f32::NAN))
            .collect();
        let x = tch::Tensor::from_slice(&flat).view([rows.len() as i64, 6]);
        let probs = Vec::<Vec<f32>>::try_from(&tensors.predict(&x).unwrap()).unwrap();
        let margins = Vec::<Vec<f32>>::try_from(&tensors.margins(&x).unwrap()).unwrap();
        assert!(
            rows.iter().any(|r| r.iter().any(Option::is_none)),
            "fixture should hold a missing value"
        );
        for (i, row) in rows.iter().enumerate() {
            let reference = walk_raw_trees(&model, row);
            for c in 0..6 {
                let xgb_margin = preds["margins"][i][c].as_f64().unwrap();
                let xgb_prob = preds["probabilities"][i][c].as_f64().unwrap();
                assert!(
                    (margins[i][c] as f64 - xgb_margin).abs() < 1e-4,
                    "row {i} class {c} margin"
                );
                assert!(
                    (reference[c] - xgb_margin).abs() < 1e-4,
                    "plain walk row {i} class {c}"
                );
                assert!(
                    (probs[i][c] as f64 - xgb_prob).abs() < 1e-5,
                    "row {i} class {c} probability"
                );
            }
        }
    }
}

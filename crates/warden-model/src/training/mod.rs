//! `warden models train`: fits each built-in model to synthetic samples of its reference
//! calculation (`teachers`), deterministically, on the CPU.
//!
//! Determinism: samples come from the teachers' own seeded generator; libtorch's generator is
//! seeded per model under the process-wide lock; training runs on one intra-op thread (so
//! reductions always add in the same order); minibatches are drawn from the seeded generator;
//! weights are written sorted by name. The same binary therefore writes the same bytes.

mod clash;
mod compliance;
mod connection;
mod risk;
mod section;

use crate::models::{SEEDED_RNG, save_sorted};
use crate::teachers::Rng;
use crate::{ModelKind, ServingError};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;
use tch::nn::{self, OptimizerConfig};

/// What one training run did (recorded in the model card).
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub kind: ModelKind,
    pub file: PathBuf,
    pub seed: u64,
    pub samples: usize,
    pub seconds: f64,
}

/// The seed a model's training samples and initial weights are drawn with.
pub fn seed(kind: ModelKind) -> u64 {
    crate::weights::seed(kind) as u64
}

/// The seed of a model's held-out set (another stream of the generator, so no training
/// sample repeats in it except by chance).
pub fn held_out_seed(kind: ModelKind) -> u64 {
    seed(kind).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x000f_f5e7
}

/// Trains `kind` and writes its weight file into `dir`; returns what it did.
pub fn train(kind: ModelKind, dir: &Path) -> Result<TrainReport, ServingError> {
    std::fs::create_dir_all(dir).map_err(|source| ServingError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let path = dir.join(kind.weight_file());
    // Write beside the target and rename, so a running server never sees half a file.
    // The temporary keeps the extension: VarStore picks the format from it.
    let tmp = dir.join(format!(".tmp-{}", kind.weight_file()));
    let started = Instant::now();
    let s = seed(kind);
    let samples = match kind {
        ModelKind::RiskAnalyzer => risk::train(s, &tmp)?,
        ModelKind::ConnectionDesigner => connection::train(s, &tmp)?,
        ModelKind::ClashDetector => clash::train(s, &tmp)?,
        ModelKind::ComplianceChecker => compliance::train(s, &tmp)?,
        ModelKind::SectionOptimizer => section::train(s, &tmp)?,
        ModelKind::TorchScript => {
            return Err(ServingError::Options(
                "a TorchScript model is trained outside warden".into(),
            ));
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    std::fs::rename(&tmp, &path).map_err(|source| ServingError::Io {
        context: format!("renaming {} to {}", tmp.display(), path.display()),
        source,
    })?;
    Ok(TrainReport {
        kind,
        file: path,
        seed: s,
        samples,
        seconds,
    })
}

/// Runs `f` with libtorch seeded and single-threaded, holding the generator lock throughout.
fn seeded<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _rng = SEEDED_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    tch::manual_seed(seed as i64);
    let out = f();
    tch::set_num_threads(threads);
    out
}

/// Adam over minibatches of `rows` indices: `loss(indices)` gives the batch loss.
fn fit(
    vs: &nn::VarStore,
    rng: &mut Rng,
    rows: usize,
    batch: usize,
    steps: usize,
    lr: f64,
    mut loss: impl FnMut(&Tensor) -> Result<Tensor, tch::TchError>,
) -> Result<(), ServingError> {
    let mut opt = nn::Adam::default().build(vs, lr)?;
    for step in 0..steps {
        // Cosine decay to a tenth: large steps early, fine ones to settle thresholds.
        let progress = step as f64 / steps as f64;
        opt.set_lr(lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())));
        let idx: Vec<i64> = (0..batch.min(rows))
            .map(|_| (rng.next_u64() % rows as u64) as i64)
            .collect();
        let idx = Tensor::from_slice(&idx);
        let l = loss(&idx)?;
        opt.backward_step(&l);
    }
    Ok(())
}

fn save(vs: &nn::VarStore, path: &Path) -> Result<(), ServingError> {
    save_sorted(vs, path).map_err(ServingError::from)
}

/// Rows of f32 as a `[n, width]` tensor.
fn matrix(values: &[f32], width: usize) -> Tensor {
    Tensor::from_slice(values).view([(values.len() / width.max(1)) as i64, width as i64])
}

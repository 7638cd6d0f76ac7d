//! The five built-in model architectures and the generic TorchScript model, behind one interface.
//!
//! Each built-in model module owns its request schema (`parse`, `example`, schemas for
//! `/metadata`) and its network (`Net`); this module stacks samples into tensors and maps names
//! to kinds.

pub mod clash_detector;
pub mod compliance_checker;
pub mod connection_designer;
pub mod risk_analyzer;
pub mod section_optimizer;

use super::schema::Sample;
use serde_json::{Value, json};
use tch::nn::{self, Module};
use tch::{Device, Kind, TchError, Tensor};

/// A loaded model: one forward pass per batch, one JSON output per sample, in order.
/// Passes run one at a time (behind the batcher's lock), on the inference thread or, for a
/// lone caller, on its HTTP worker: hence `Send`.
pub trait Model: Send {
    /// True when only samples of one shape may share a forward pass (the batcher then splits
    /// a batch by shape, so one bad shape cannot fail other callers' rows).
    fn same_shape_batches(&self) -> bool {
        false
    }

    fn forward(&self, batch: &[&Sample]) -> Result<Vec<Value>, TchError>;
}

/// A tch::nn network with fixed-shape samples (the four VarStore models).
pub trait Net: Sized {
    fn build(root: &nn::Path) -> Self;
    fn run(&self, batch: &[&Sample], device: Device) -> Result<Vec<Value>, TchError>;

    /// Called once the weights are loaded for serving (never while training): precomputes
    /// what depends on the weights alone, so each pass does not redo it.
    fn freeze(&mut self) -> Result<(), TchError> {
        Ok(())
    }
}

/// A [`Net`] with its variables, loaded from a VarStore file.
pub struct VarStoreModel<N: Net> {
    // Held so the variables outlive the modules that borrow their tensors.
    _vs: nn::VarStore,
    net: N,
    device: Device,
}

impl<N: Net> VarStoreModel<N> {
    pub fn load(path: &std::path::Path, device: Device) -> Result<Self, TchError> {
        let mut vs = nn::VarStore::new(device);
        // Building draws initial values (then overwritten) from the shared generator.
        let mut net = {
            let _rng = SEEDED_RNG
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            N::build(&vs.root())
        };
        vs.load(path)?;
        tch::no_grad(|| net.freeze())?;
        Ok(VarStoreModel {
            _vs: vs,
            net,
            device,
        })
    }

    /// Writes freshly initialised weights for `N` seeded with `seed` as safetensors, sorted by
    /// name so the file is byte-for-byte reproducible (VarStore::save's order is a HashMap's).
    pub fn init(path: &std::path::Path, seed: i64) -> Result<(), TchError> {
        // libtorch's generator is process-wide: hold the lock from seeding to the last draw.
        let _rng = SEEDED_RNG
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = N::build(&vs.root());
        save_sorted(&vs, path)
    }
}

/// Serialises users of libtorch's global random generator that need a reproducible sequence.
pub(crate) static SEEDED_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl<N: Net + Send> Model for VarStoreModel<N> {
    fn forward(&self, batch: &[&Sample]) -> Result<Vec<Value>, TchError> {
        let mut outputs = tch::no_grad(|| self.net.run(batch, self.device))?;
        for (out, sample) in outputs.iter_mut().zip(batch) {
            attach_warnings(out, sample);
        }
        Ok(outputs)
    }
}

/// Adds the sample's out-of-trained-range warnings to its output object (only when there are
/// any, so in-range answers are unchanged).
pub fn attach_warnings(out: &mut Value, sample: &Sample) {
    if !sample.warnings.is_empty()
        && let Value::Object(map) = out
    {
        map.insert("warnings".into(), json!(sample.warnings));
    }
}

/// Writes a VarStore's variables as safetensors sorted by name, so the same weights always
/// give the same bytes (VarStore::save's order is a HashMap's).
pub fn save_sorted(vs: &nn::VarStore, path: &std::path::Path) -> Result<(), TchError> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path)
}

/// Stacks same-shaped samples into `[batch, ...shape]` on `device`.
pub fn stack(batch: &[&Sample], device: Device) -> Result<Tensor, TchError> {
    let shape = batch.first().map(|s| s.shape.clone()).unwrap_or_default();
    let mut dims = vec![batch.len() as i64];
    dims.extend(&shape);
    let values: Vec<f32> = batch
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .collect();
    let t = Tensor::from_slice(&values).f_view(dims.as_slice())?;
    // Each libtorch call costs a dispatch, a large share of a small model's pass: skip no-ops.
    if device == Device::Cpu {
        Ok(t)
    } else {
        t.f_to_device(device)
    }
}

/// A 2-D tensor as rows of f32 (copied to the CPU, contiguous, by libtorch's copy itself).
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>, TchError> {
    let converted;
    let t = if t.kind() == Kind::Float {
        t
    } else {
        converted = t.f_to_kind(Kind::Float)?;
        &converted
    };
    let (n, width) = t.size2()?;
    let (n, width) = (n.max(0) as usize, width.max(0) as usize);
    if width == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    let mut all = vec![0f32; n * width];
    t.f_copy_data(&mut all, n * width)?;
    Ok(all.chunks(width).map(<[f32]>::to_vec).collect())
}

/// Rounds for JSON so outputs print compactly but keep float32 precision.
pub fn num(x: f32) -> Value {
    json!(x as f64)
}

/// Multi-head self-attention with a key padding mask (BERT-style, post-norm residual outside).
#[derive(Debug)]
pub struct SelfAttention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
    dim: i64,
}

impl SelfAttention {
    pub fn new(p: &nn::Path, dim: i64, heads: i64) -> SelfAttention {
        let c = Default::default();
        SelfAttention {
            q: nn::linear(p / "q", dim, dim, c),
            k: nn::linear(p / "k", dim, dim, c),
            v: nn::linear(p / "v", dim, dim, c),
            out: nn::linear(p / "out", dim, dim, c),
            heads,
            dim,
        }
    }

    /// `x: [batch, len, dim]`, `valid: [batch, len]` bool (false = padding, never attended to).
    pub fn forward(&self, x: &Tensor, valid: &Tensor) -> Result<Tensor, TchError> {
        let (b, l) = (x.size()[0], x.size()[1]);
        let dh = self.dim / self.heads;
        let split = |t: Tensor| -> Result<Tensor, TchError> {
            t.f_view([b, l, self.heads, dh])?.f_transpose(1, 2)
        };
        let q = split(self.q.forward(x))?;
        let k = split(self.k.forward(x))?;
        let v = split(self.v.forward(x))?;
        let scores = q.f_matmul(&k.f_transpose(-2, -1)?)? / (dh as f64).sqrt();
        let padding = valid.f_logical_not()?.f_view([b, 1, 1, l])?;
        let weights = scores
            .f_masked_fill(&padding, -1e9)?
            .f_softmax(-1, Kind::Float)?;
        let mixed = weights
            .f_matmul(&v)?
            .f_transpose(1, 2)?
            .contiguous()
            .f_view([b, l, self.dim])?;
        Ok(self.out.forward(&mixed))
    }
}

/// Mean over the valid positions: `x: [batch, len, dim]`, `valid: [batch, len]` → `[batch, dim]`.
pub fn masked_mean(x: &Tensor, valid: &Tensor) -> Result<Tensor, TchError> {
    let w = valid.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
    let total = (x * &w).f_sum_dim_intlist(1, false, Kind::Float)?;
    let count = w
        .f_sum_dim_intlist(1, false, Kind::Float)?
        .f_clamp_min(1.0)?;
    total.f_div(&count)
}

/// A `{label: p}` object from parallel label and probability slices.
pub fn labelled(labels: &[&str], probs: &[f32]) -> Value {
    let map: serde_json::Map<String, Value> = labels
        .iter()
        .zip(probs)
        .map(|(l, p)| (l.to_string(), num(*p)))
        .collect();
    Value::Object(map)
}

/// Index of the largest value.
pub fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (i, &x)| if x > best.1 { (i, x) } else { best },
        )
        .0
}

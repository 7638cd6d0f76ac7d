//! Trains risk-analyzer's three monotone members to regress the reference score.

use super::{fit, matrix, save, seeded};
use crate::ServingError;
use crate::models::Net;
use crate::models::risk_analyzer::{FEATURES, RiskNet, features};
use crate::teachers::{Rng, risk};
use std::path::Path;
use tch::{Kind, Tensor, nn};

pub const SAMPLES: usize = 6000;

pub fn train(seed: u64, out: &Path) -> Result<usize, ServingError> {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(SAMPLES * FEATURES as usize);
    let mut y = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let p = risk::sample(&mut rng);
        x.extend(features(&p));
        y.push(risk::score(&p) as f32);
    }
    seeded(seed, || {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = RiskNet::build(&vs.root());
        let x = matrix(&x, FEATURES as usize);
        let y = Tensor::from_slice(&y);
        fit(&vs, &mut rng, SAMPLES, 512, 2500, 1e-2, |idx| {
            let xb = x.index_select(0, idx);
            let yb = y.index_select(0, idx).unsqueeze(0);
            // Every member regresses the score on its own, so each vote is meaningful.
            Ok((net.member_scores(&xb)? - yb).square().mean(Kind::Float))
        })?;
        save(&vs, out)
    })?;
    Ok(SAMPLES)
}

//! Trains connection-designer's type classifier on the reference type rule.

use super::{fit, matrix, save, seeded};
use crate::ServingError;
use crate::models::Net;
use crate::models::connection_designer::{CHANNELS, ConnectionNet, MAX_MEMBERS, features};
use crate::teachers::{Rng, connection};
use std::path::Path;
use tch::{Tensor, nn};

pub const SAMPLES: usize = 12000;

pub fn train(seed: u64, out: &Path) -> Result<usize, ServingError> {
    let mut rng = Rng::new(seed);
    let width = CHANNELS * MAX_MEMBERS;
    let mut x = Vec::with_capacity(SAMPLES * width);
    let mut y = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let j = connection::sample(&mut rng);
        x.extend(features(&j));
        y.push(connection::connection_type(&j) as i64);
    }
    seeded(seed, || {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = ConnectionNet::build(&vs.root());
        let x = matrix(&x, width).view([SAMPLES as i64, CHANNELS as i64, MAX_MEMBERS as i64]);
        let y = Tensor::from_slice(&y);
        fit(&vs, &mut rng, SAMPLES, 256, 6000, 6e-3, |idx| {
            let logits = net.logits(&x.index_select(0, idx))?;
            Ok(logits.cross_entropy_for_logits(&y.index_select(0, idx)))
        })?;
        save(&vs, out)
    })?;
    Ok(SAMPLES)
}

//! Trains clash-detector's per-voxel conflict map on the reference clash rule.

use super::{fit, save, seeded};
use crate::ServingError;
use crate::models::Net;
use crate::models::clash_detector::ClashNet;
use crate::teachers::{Rng, clash};
use std::path::Path;
use tch::{Reduction, Tensor, nn};

pub const SAMPLES: usize = 3000;

pub fn train(seed: u64, out: &Path) -> Result<usize, ServingError> {
    let mut rng = Rng::new(seed);
    let g = clash::GRID as i64;
    let mut x = Vec::with_capacity(SAMPLES * 2 * clash::VOXELS);
    let mut y = Vec::with_capacity(SAMPLES * clash::VOXELS);
    for _ in 0..SAMPLES {
        let (structure, services) = clash::sample_step(&mut rng);
        y.extend(clash::conflicts(&structure, &services));
        x.extend(structure);
        x.extend(services);
    }
    seeded(seed, || {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = ClashNet::build(&vs.root());
        let x = Tensor::from_slice(&x).view([SAMPLES as i64, 2, g, g, g]);
        let y = Tensor::from_slice(&y).view([SAMPLES as i64, g, g, g]);
        fit(&vs, &mut rng, SAMPLES, 32, 2000, 1e-2, |idx| {
            let logits = net.voxel_logits(&x.index_select(0, idx))?;
            let target = y.index_select(0, idx);
            // Unweighted: a step's verdict is its most confident voxel, so false positives
            // anywhere in the 512 cost as much as a missed conflict.
            Ok(logits.binary_cross_entropy_with_logits::<Tensor>(
                &target,
                None,
                None,
                Reduction::Mean,
            ))
        })?;
        save(&vs, out)
    })?;
    Ok(SAMPLES)
}

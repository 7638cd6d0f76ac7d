//! Trains compliance-checker's encoder on clause templates labelled with the rules they invoke.

use super::{fit, save, seeded};
use crate::ServingError;
use crate::models::Net;
use crate::models::compliance_checker::{ComplianceNet, MAX_TOKENS, example, parse, token_tensor};
use crate::teachers::{Rng, compliance};
use std::path::Path;
use tch::{Device, Reduction, Tensor, nn};

pub const SAMPLES: usize = 4000;

pub fn train(seed: u64, out: &Path) -> Result<usize, ServingError> {
    let mut rng = Rng::new(seed);
    let design = example()["design"].clone();
    let mut samples = Vec::with_capacity(SAMPLES);
    let mut y = Vec::with_capacity(SAMPLES * 4);
    for _ in 0..SAMPLES {
        let c = compliance::sample(&mut rng, MAX_TOKENS);
        let body = serde_json::json!({"clause": c.text, "design": design});
        samples.push(
            parse(&body).map_err(|e| ServingError::Options(format!("training clause: {e}")))?,
        );
        y.extend(c.invokes.map(|b| if b { 1f32 } else { 0.0 }));
    }
    seeded(seed, || {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ComplianceNet::build(&vs.root());
        let refs: Vec<_> = samples.iter().collect();
        let ids = token_tensor(&refs, Device::Cpu)?;
        let y = Tensor::from_slice(&y).view([SAMPLES as i64, 4]);
        fit(&vs, &mut rng, SAMPLES, 64, 1200, 2e-3, |idx| {
            let logits = net.logits(&ids.index_select(0, idx))?;
            Ok(logits.binary_cross_entropy_with_logits::<Tensor>(
                &y.index_select(0, idx),
                None,
                None,
                Reduction::Mean,
            ))
        })?;
        save(&vs, out)
    })?;
    Ok(SAMPLES)
}

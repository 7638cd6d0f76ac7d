//! Trains section-optimizer's monotone tree ensemble on the reference section choice and
//! writes it as XGBoost JSON.

use crate::ServingError;
use crate::gbdt::{self, Params};
use crate::models::section_optimizer::features;
use crate::teachers::{Rng, section};
use std::path::Path;

pub const SAMPLES: usize = 20000;

pub fn params() -> Params {
    Params {
        rounds: 60,
        max_depth: 12,
        eta: 1.0,
        lambda: 0.0001,
        min_child: 1,
        monotone: vec![1, 1],
    }
}

pub fn train(seed: u64, out: &Path) -> Result<usize, ServingError> {
    let candidates = section::candidates().map_err(ServingError::Options)?;
    let mut rng = Rng::new(seed);
    let mut rows = Vec::with_capacity(SAMPLES);
    let mut y = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let b = section::sample(&mut rng);
        rows.push(features(&b).to_vec());
        // The target is the candidate index; "none suffices" is one past the last.
        y.push(section::lightest(&b, candidates).unwrap_or(candidates.len()) as f32);
    }
    let model = gbdt::fit(&rows, &y, &params());
    let text = gbdt::to_xgboost_json(&model).to_string();
    std::fs::write(out, text).map_err(|source| ServingError::Io {
        context: format!("writing {}", out.display()),
        source,
    })?;
    Ok(SAMPLES)
}

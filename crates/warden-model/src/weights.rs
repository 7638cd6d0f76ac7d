//! `warden models init`: installs the five models' shipped (trained) weight files and their
//! model cards, byte for byte as `warden models train` wrote them into `fixtures/weights/`.
//!
//! The files are embedded in the binary, so a host without network or Python gets the same
//! weights; the embedded default config serves them. Retrain with
//! `warden models train --out crates/warden-model/fixtures/weights` (deterministic).

use super::{BUILTIN, ModelKind, ServingError};
use std::path::{Path, PathBuf};

/// The seed each model's training (samples and initial weights) is drawn with.
pub fn seed(kind: ModelKind) -> i64 {
    match kind {
        ModelKind::ConnectionDesigner => 1001,
        ModelKind::SectionOptimizer => 1002,
        ModelKind::ClashDetector => 1003,
        ModelKind::ComplianceChecker => 1004,
        ModelKind::RiskAnalyzer => 1005,
        ModelKind::TorchScript => 0,
    }
}

/// The shipped weight file of a built-in model.
pub fn shipped(kind: ModelKind) -> Option<&'static [u8]> {
    Some(match kind {
        ModelKind::ConnectionDesigner => {
            include_bytes!("../fixtures/weights/connection-designer.safetensors")
        }
        ModelKind::SectionOptimizer => include_bytes!("../fixtures/weights/section-optimizer.json"),
        ModelKind::ClashDetector => {
            include_bytes!("../fixtures/weights/clash-detector.safetensors")
        }
        ModelKind::ComplianceChecker => {
            include_bytes!("../fixtures/weights/compliance-checker.safetensors")
        }
        ModelKind::RiskAnalyzer => include_bytes!("../fixtures/weights/risk-analyzer.safetensors"),
        ModelKind::TorchScript => return None,
    })
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, ServingError> {
    let path = dir.join(name);
    // Write beside the target and rename, so a running server never sees half a file.
    let tmp = dir.join(format!(".tmp-{name}"));
    std::fs::write(&tmp, bytes).map_err(|source| ServingError::Io {
        context: format!("writing {}", tmp.display()),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| ServingError::Io {
        context: format!("renaming {} to {}", tmp.display(), path.display()),
        source,
    })?;
    Ok(path)
}

/// Writes all five weight files (and their cards) into `dir` (created if missing); returns the
/// weight files' paths.
pub fn init(dir: &Path) -> Result<Vec<PathBuf>, ServingError> {
    std::fs::create_dir_all(dir).map_err(|source| ServingError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let mut written = Vec::new();
    for kind in BUILTIN {
        let (Some(weights), Some(card)) = (shipped(kind), super::card::shipped(kind)) else {
            continue;
        };
        written.push(write_atomically(dir, kind.weight_file(), weights)?);
        let card_name = format!("{}.card.json", kind.name());
        write_atomically(dir, &card_name, card.as_bytes())?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_installs_the_shipped_files_and_they_load() {
        let base = std::env::temp_dir().join(format!("warden-weights-{}", std::process::id()));
        let files = init(&base).unwrap();
        assert_eq!(files.len(), 5);
        for kind in BUILTIN {
            let path = base.join(kind.weight_file());
            assert_eq!(std::fs::read(&path).unwrap(), shipped(kind).unwrap());
            kind.load(&path, tch::Device::Cpu).unwrap();
            // The shipped card was measured on exactly these bytes.
            let card = crate::card::served(kind, &path);
            assert_eq!(card["weights"]["matches_card"], true, "{}", kind.name());
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}

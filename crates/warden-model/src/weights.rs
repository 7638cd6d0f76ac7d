//! `warden models init`: writes the five models' weight files, deterministically.
//!
//! The four networks get seeded initial weights (VarStore files); section-optimizer gets the
//! XGBoost ensemble trained on textbook beam formulas that ships inside the binary. The same
//! binary always writes the same files. These are not engineering advice.

use super::models::{
    VarStoreModel, clash_detector::ClashNet, compliance_checker::ComplianceNet,
    connection_designer::ConnectionNet, risk_analyzer::RiskNet, section_optimizer,
};
use super::{BUILTIN, ModelKind, ServingError};
use std::path::{Path, PathBuf};

/// The seed each network's weights are drawn with.
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

/// Writes all five weight files into `dir` (created if missing); returns their paths.
pub fn init(dir: &Path) -> Result<Vec<PathBuf>, ServingError> {
    std::fs::create_dir_all(dir).map_err(|source| ServingError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let mut written = Vec::new();
    for kind in BUILTIN {
        let path = dir.join(kind.weight_file());
        // Write beside the target and rename, so a running server never sees half a file.
        // The temporary keeps the extension: VarStore picks the format from it.
        let tmp = dir.join(format!(".tmp-{}", kind.weight_file()));
        let s = seed(kind);
        match kind {
            ModelKind::ConnectionDesigner => VarStoreModel::<ConnectionNet>::init(&tmp, s)?,
            ModelKind::ClashDetector => VarStoreModel::<ClashNet>::init(&tmp, s)?,
            ModelKind::ComplianceChecker => VarStoreModel::<ComplianceNet>::init(&tmp, s)?,
            ModelKind::RiskAnalyzer => VarStoreModel::<RiskNet>::init(&tmp, s)?,
            ModelKind::SectionOptimizer | ModelKind::TorchScript => {
                std::fs::write(&tmp, section_optimizer::BUILTIN_MODEL_JSON).map_err(|source| {
                    ServingError::Io {
                        context: format!("writing {}", tmp.display()),
                        source,
                    }
                })?
            }
        }
        std::fs::rename(&tmp, &path).map_err(|source| ServingError::Io {
            context: format!("renaming {} to {}", tmp.display(), path.display()),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_deterministic_and_loadable() {
        let base = std::env::temp_dir().join(format!("warden-weights-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        let files_a = init(&a).unwrap();
        init(&b).unwrap();
        for f in &files_a {
            let name = f.file_name().unwrap();
            assert_eq!(
                std::fs::read(f).unwrap(),
                std::fs::read(b.join(name)).unwrap(),
                "{name:?}"
            );
        }
        for kind in BUILTIN {
            kind.load(&a.join(kind.weight_file()), tch::Device::Cpu)
                .unwrap();
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}

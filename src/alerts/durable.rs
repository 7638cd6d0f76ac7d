//! Whole-file JSON state that survives a crash mid-write: temp file, fsync, rename, then fsync
//! of the directory, so a reader sees the old file or the new one, never half of either.

use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// Blocking: call from a blocking thread, not an async worker.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Best effort: some filesystems refuse fsync on a directory.
        let _ = d.sync_all();
    }
    Ok(())
}

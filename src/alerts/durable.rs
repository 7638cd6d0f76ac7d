//! Whole-file JSON state that survives a crash mid-write: temp file, fsync, rename, then fsync
//! of the directory, so a reader sees the old file or the new one, never half of either.

use serde::Serialize;
use serde::de::DeserializeOwned;
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

/// Blocking. The file's value, or a fresh start: when it is missing, unreadable (logged), or
/// corrupt (logged and set aside as `.corrupt` so the evidence survives the next save).
pub fn read_json<T: DeserializeOwned + Default>(path: &Path, what: &str) -> T {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return T::default(),
        Err(e) => {
            tracing::error!(error = %e, file = %path.display(), "cannot read the {what}; starting fresh");
            return T::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => {
            tracing::error!(error = %e, file = %path.display(),
                "{what} unreadable; starting fresh (old file kept as .corrupt)");
            set_aside(path);
            T::default()
        }
    }
}

/// Moves a state file out of the way as `<name>.corrupt`.
pub fn set_aside(path: &Path) {
    let _ = std::fs::rename(path, path.with_extension("json.corrupt"));
}

//! A real small tmpfs that fills up (tests run as root, here and in CI): the disk-full faults.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a fresh temp dir, lazily unmounted when dropped.
pub struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` ("512k", "16m"); `None`, with the reason printed, when not root
    /// or when mount fails.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("fs");
        std::fs::create_dir_all(&path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: mount -t tmpfs failed");
            return None;
        }
        Some(Tmpfs { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the file system to the last byte with the file `filler`; returns its path.
    pub fn fill(&self) -> PathBuf {
        self.fill_with("filler")
    }

    /// Takes whatever was freed since [`Self::fill`] (e.g. by a temp + rename of the code under
    /// test) with a second file.
    pub fn top_up(&self) -> PathBuf {
        self.fill_with("filler-top")
    }

    fn fill_with(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        let mut f = std::fs::File::create(&path).expect("create the filler file");
        while f.write_all(&[0u8; 64 * 1024]).is_ok() {}
        // The last bytes too: byte by byte until nothing more fits.
        while f.write_all(&[0u8]).is_ok() {}
        let _ = f.sync_all();
        path
    }

    /// Gives the space back (removes every filler file).
    pub fn free(&self) {
        for name in ["filler", "filler-top"] {
            let _ = std::fs::remove_file(self.path.join(name));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

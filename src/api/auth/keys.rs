//! API keys: stored only as argon2 hashes in `auth.api_keys_file`, shown once when created.
//!
//! A key reads `wdn_<id>_<secret>`; the id selects one stored hash so a lookup costs one
//! argon2 verification, not one per key.

use super::Role;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("user name must be 1-128 printable characters")]
    BadUser,
    #[error("hashing failed: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub user: String,
    pub role: Role,
    pub hash: String,
    pub created: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    #[serde(default, rename = "key")]
    keys: Vec<StoredKey>,
}

#[derive(Debug, Default)]
pub struct ApiKeyStore {
    keys: Vec<StoredKey>,
}

impl ApiKeyStore {
    /// Loads the key file; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<ApiKeyStore, KeyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ApiKeyStore::default()),
            Err(source) => {
                return Err(KeyError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let file: KeyFile = toml::from_str(&text).map_err(|e| KeyError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        Ok(ApiKeyStore { keys: file.keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The stored key matching `presented`, if the secret verifies.
    pub fn verify(&self, presented: &str) -> Option<&StoredKey> {
        let rest = presented.strip_prefix("wdn_")?;
        let (id, _) = rest.split_once('_')?;
        let stored = self.keys.iter().find(|k| k.id == id)?;
        let hash = PasswordHash::new(&stored.hash).ok()?;
        argon2::Argon2::default()
            .verify_password(presented.as_bytes(), &hash)
            .ok()?;
        Some(stored)
    }

    /// Adds a key for `user` to the file (created mode 0600) and returns the key, once.
    pub fn add(path: &Path, user: &str, role: Role) -> Result<String, KeyError> {
        if user.is_empty() || user.len() > 128 || user.chars().any(|c| c.is_control()) {
            return Err(KeyError::BadUser);
        }
        let mut store = ApiKeyStore::load(path)?;
        let mut rng = rand::rng();
        let id: String = (0..8)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect();
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
        let secret: String = (0..40)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        let key = format!("wdn_{id}_{secret}");
        let hash = argon2::Argon2::default()
            .hash_password(key.as_bytes())
            .map_err(|e| KeyError::Hash(e.to_string()))?
            .to_string();
        store.keys.push(StoredKey {
            id,
            user: user.to_string(),
            role,
            hash,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        });
        let text = toml::to_string(&KeyFile { keys: store.keys })
            .map_err(|e| KeyError::Hash(e.to_string()))?;
        write_private(path, &text).map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(key)
    }
}

/// Writes a file readable by its owner only, atomically (temp file + rename).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_key_verifies_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let key = ApiKeyStore::add(&path, "alice", Role::User).unwrap();
        let other = ApiKeyStore::add(&path, "bob", Role::Admin).unwrap();
        let store = ApiKeyStore::load(&path).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.verify(&key).map(|k| k.user.as_str()), Some("alice"));
        assert_eq!(store.verify(&other).map(|k| k.role), Some(Role::Admin));
        let mut tampered = key.clone();
        tampered.pop();
        tampered.push('!');
        assert!(store.verify(&tampered).is_none());
        assert!(store.verify("wdn_nothing").is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "the key itself must never be stored");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

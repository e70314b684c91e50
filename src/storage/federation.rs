//! Federation state on disk: this server's signing key (a PKCS#8 file next
//! to the database), and the signed requests accepted in the last minutes
//! (a sled tree), so that none can be replayed, across restarts too. Events
//! waiting to be pushed are not stored: the room log is their durable copy,
//! and receivers backfill what a restart lost.

use std::path::{Path, PathBuf};

use super::{Db, StorageError};

/// The file holding the server's ed25519 key, in the data dir.
pub const KEY_FILE: &str = "server.ed25519.pk8";

/// Why the key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct KeyFileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Reads the server's key, or stores `generate()`'s on first start (mode 0600).
pub fn load_or_create_key(dir: &Path, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, KeyFileError> {
    let path = dir.join(KEY_FILE);
    let fail = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| KeyFileError { action, path, source }
    };
    match std::fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let pkcs8 = generate();
            let tmp = dir.join(format!("{KEY_FILE}.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(fail("cannot create", &tmp))?;
            f.write_all(&pkcs8).and_then(|()| f.sync_all()).map_err(fail("cannot write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(fail("cannot rename to", &path))?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail("cannot sync", dir))?;
            Ok(pkcs8)
        }
        Err(e) => Err(fail("cannot read", &path)(e)),
    }
}

/// Accepted signed requests, by the slot of time in which they expire:
/// `slot (8 bytes, big-endian) ‖ digest (8 bytes)` → origin server name.
#[derive(Clone)]
pub struct SeenRequests {
    tree: sled::Tree,
}

fn seen_key(slot: u64, digest: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&slot.to_be_bytes());
    k[8..].copy_from_slice(&digest.to_be_bytes());
    k
}

impl SeenRequests {
    pub fn open(db: &Db) -> Result<Self, StorageError> {
        Ok(Self { tree: db.tree("fed_seen")? })
    }

    /// Records one. Not synced by itself: it rides on the next sync of the
    /// database, which every change a federation request makes (a join, a
    /// leave) waits for before it is answered; the others (sends, pushes)
    /// are idempotent anyway.
    pub fn insert(&self, slot: u64, digest: u64, origin: &str) -> Result<(), StorageError> {
        self.tree.insert(seen_key(slot, digest), origin.as_bytes())?;
        Ok(())
    }

    /// Every record of slots `from` and later: (slot, digest, origin).
    pub fn since(&self, from: u64) -> Result<Vec<(u64, u64, String)>, StorageError> {
        let mut out = Vec::new();
        for item in self.tree.range(seen_key(from, 0)..) {
            let (k, v) = item?;
            let corrupt = || StorageError::Corrupt { tree: "fed_seen", detail: "a key is not 16 bytes".into() };
            let k: [u8; 16] = k.as_ref().try_into().map_err(|_| corrupt())?;
            let slot = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            let digest = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
            out.push((slot, digest, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// Forgets every record of the slots before `slot`.
    pub fn forget_before(&self, slot: u64) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.tree.range(..seen_key(slot, 0)) {
            batch.remove(item?.0);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// Drops the push queue older versions kept on disk (`fed_outbox`): pushes
/// are now queued in memory, and what it held the receivers backfill.
pub fn drop_old_outbox(db: &Db) -> Result<(), StorageError> {
    db.sled.drop_tree("fed_outbox")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let k = load_or_create_key(dir.path(), || vec![1, 2, 3]).unwrap();
        assert_eq!(k, [1, 2, 3]);
        assert_eq!(load_or_create_key(dir.path(), || unreachable!()).unwrap(), [1, 2, 3]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = load_or_create_key(&dir.path().join("missing"), || vec![1]).unwrap_err();
        assert_eq!(err.action, "cannot create", "{err}");
    }

    #[test]
    fn seen_requests_are_kept_by_slot() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let seen = SeenRequests::open(&db).unwrap();
        seen.insert(5, 1, "a").unwrap();
        seen.insert(6, u64::MAX, "b").unwrap();
        seen.insert(7, 0, "c").unwrap();
        assert_eq!(seen.since(6).unwrap(), [(6, u64::MAX, "b".into()), (7, 0, "c".into())]);
        seen.forget_before(7).unwrap();
        assert_eq!(seen.since(0).unwrap(), [(7, 0, "c".into())]);
    }
}

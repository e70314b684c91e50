//! Federation state on disk: this server's signing key (a PKCS#8 file next
//! to the database) and the outbound queue of events waiting to be pushed to
//! each remote server (a sled tree, `dest NUL counter` → event JSON).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Db, StorageError, key};

/// The file holding the server's ed25519 key, in the data dir.
pub const KEY_FILE: &str = "server.ed25519.pk8";

/// Reads the server's key, or stores `generate()`'s on first start (mode 0600).
pub fn load_or_create_key(dir: &Path, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StorageError> {
    let io = |e: std::io::Error| StorageError::Sled(sled::Error::Io(e));
    let path = dir.join(KEY_FILE);
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
                .map_err(io)?;
            f.write_all(&pkcs8).and_then(|()| f.sync_all()).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            Ok(pkcs8)
        }
        Err(e) => Err(io(e)),
    }
}

/// Events waiting to be pushed, per destination server, in push order.
#[derive(Clone)]
pub struct Outbox {
    tree: sled::Tree,
    next: std::sync::Arc<AtomicU64>,
}

fn prefix(dest: &str) -> Vec<u8> {
    let mut p = dest.as_bytes().to_vec();
    p.push(0);
    p
}

impl Outbox {
    pub fn open(db: &Db) -> Result<Self, StorageError> {
        let tree = db.tree("fed_outbox")?;
        let mut last = 0;
        for item in tree.iter() {
            let (k, _) = item?;
            if k.len() >= 8 {
                last = last.max(u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes")));
            }
        }
        Ok(Self { tree, next: std::sync::Arc::new(AtomicU64::new(last + 1)) })
    }

    /// Queues one event for `dest`. Not synced by itself: the queue rides on
    /// the next sync of the database, and a push lost in a crash is made up
    /// by the receiver's periodic catch-up from this server.
    pub fn push(&self, dest: &str, event_json: &[u8]) -> Result<(), StorageError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut k = key(&[dest.as_bytes()]);
        k.push(0);
        k.extend_from_slice(&n.to_be_bytes());
        self.tree.insert(k, event_json)?;
        Ok(())
    }

    /// Up to `max` queued events for `dest`, oldest first: (their keys, their
    /// number of the first one, the events).
    pub fn peek(&self, dest: &str, max: usize) -> Result<(Vec<sled::IVec>, u64, Vec<sled::IVec>), StorageError> {
        let mut keys = Vec::new();
        let mut events = Vec::new();
        let mut first = 0;
        for item in self.tree.scan_prefix(prefix(dest)).take(max) {
            let (k, v) = item?;
            if keys.is_empty() {
                first = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
            }
            keys.push(k);
            events.push(v);
        }
        Ok((keys, first, events))
    }

    pub fn remove(&self, keys: &[sled::IVec]) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k.clone());
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Every server with something queued.
    pub fn destinations(&self) -> Result<Vec<String>, StorageError> {
        let mut out: Vec<String> = Vec::new();
        for item in self.tree.iter() {
            let (k, _) = item?;
            let Some(i) = k.iter().position(|&b| b == 0) else { continue };
            let dest = String::from_utf8_lossy(&k[..i]).into_owned();
            if out.last() != Some(&dest) {
                out.push(dest);
            }
        }
        Ok(out)
    }
}

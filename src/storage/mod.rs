//! Storage: the only layer that names sled or Redis. It keeps bytes and
//! records it is given (password hashes, token hashes, events) and knows
//! nothing of HTTP, passwords in clear, or who may read what.

pub mod accounts;
pub mod events;
pub mod rooms;

use std::path::Path;

pub use accounts::AccountStore;
pub use rooms::RoomStore;

/// A storage fault. `Unavailable` is the one a caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("room log unavailable: {0}")]
    Unavailable(String),
    #[error("room log: {0}")]
    Log(String),
}

impl From<sled::transaction::TransactionError<StorageError>> for StorageError {
    fn from(e: sled::transaction::TransactionError<StorageError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StorageError::Sled(e),
        }
    }
}

/// Opens (or creates) the sled database in `dir`.
pub fn open_db(dir: &Path) -> Result<sled::Db, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::Sled(sled::Error::Io(e)))?;
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .cache_capacity(128 << 20)
        // We flush (fsync) explicitly before every acknowledgement; the
        // background flusher only bounds the work left for those flushes.
        .flush_every_ms(Some(1000))
        .open()?;
    Ok(db)
}

/// Makes every write so far durable (fsync) without blocking an async
/// worker. Not sled's own `flush_async`: in 0.34 concurrent calls to it can
/// hang forever (spacejam/sled#1308); a blocking `flush` on the blocking
/// pool has no such problem.
pub async fn flush(db: &sled::Db) -> Result<(), StorageError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush())
        .await
        .map_err(|e| StorageError::Log(format!("flush task failed: {e}")))??;
    Ok(())
}

pub(crate) fn json_record<T: serde::de::DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt { tree, detail: e.to_string() })
}

pub(crate) fn to_record<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

/// `a \0 b \0 …`: composite keys whose parts never contain NUL.
pub(crate) fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

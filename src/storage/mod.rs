//! Storage: the only layer that names sled or Redis. It keeps bytes and
//! records it is given (password hashes, token hashes, events) and knows
//! nothing of HTTP, passwords in clear, or who may read what.

pub mod accounts;
pub mod events;
pub mod federation;
pub mod rooms;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

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
    #[error(transparent)]
    KeyFile(#[from] federation::KeyFileError),
}

impl From<sled::transaction::TransactionError<StorageError>> for StorageError {
    fn from(e: sled::transaction::TransactionError<StorageError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StorageError::Sled(e),
        }
    }
}

/// The sled database plus what it takes to make its writes durable.
///
/// sled 0.34's own `flush` writes its log with `sync_file_range`, which
/// flushes neither the drive's cache nor the file's size, so a power loss
/// could still take an acknowledged write. A sync here is therefore sled's
/// flush followed by a real `fdatasync` of sled's log file. Large values are
/// the other hole: sled writes items over a quarter segment to separate blob
/// files that it never syncs, so the segment is sized to keep every item we
/// store (at most a 17-entry leaf of ~17 KiB events) well under that.
///
/// Syncs are group commits: whoever asks while no sync runs performs one, for
/// everything written so far; whoever asks while one runs waits for the next,
/// which one of them performs. So the room log, logins and joins share
/// fsyncs instead of queueing behind each other's, and a lone caller (the
/// room log under load) syncs on its own thread with no hand-off.
#[derive(Clone)]
pub struct Db {
    pub sled: sled::Db,
    syncs: Arc<SyncState>,
}

struct SyncState {
    log_file: std::fs::File,
    progress: Mutex<SyncProgress>,
    done: Condvar,
}

#[derive(Default)]
struct SyncProgress {
    requested: u64,
    completed: u64,
    running: bool,
    /// A sync failed: the disk may have dropped writes, so every later sync
    /// fails too (as databases do after a failed fsync) instead of guessing.
    failed: Option<String>,
}

impl Db {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let io = |e: std::io::Error| StorageError::Sled(sled::Error::Io(e));
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("sled");
        let sled = sled::Config::new()
            .path(&path)
            .cache_capacity(128 << 20)
            .segment_size(4 << 20)
            // We sync before every acknowledgement; the background flusher
            // only bounds the work left for those syncs.
            .flush_every_ms(Some(1000))
            .open()?;
        let log_file = std::fs::File::open(path.join("db")).map_err(io)?;
        // The files exist now; make their directory entries durable once.
        for d in [&path, dir] {
            std::fs::File::open(d).and_then(|f| f.sync_all()).map_err(io)?;
        }
        let syncs =
            Arc::new(SyncState { log_file, progress: Mutex::new(SyncProgress::default()), done: Condvar::new() });
        Ok(Self { sled, syncs })
    }

    pub fn tree(&self, name: &str) -> Result<sled::Tree, StorageError> {
        Ok(self.sled.open_tree(name)?)
    }

    /// Makes every write so far durable. Blocks: for threads that may block
    /// (the room log's own threads); async code uses [`Db::sync`].
    pub fn sync_blocking(&self) -> Result<(), StorageError> {
        let st = &*self.syncs;
        let mut p = st.progress.lock().expect("sync lock");
        p.requested += 1;
        let mine = p.requested;
        loop {
            if let Some(e) = &p.failed {
                return Err(StorageError::Log(format!("the disk refused a sync ({e}); restart the server")));
            }
            if p.completed >= mine {
                return Ok(());
            }
            if p.running {
                p = st.done.wait(p).expect("sync lock");
                continue;
            }
            // Lead a sync covering every request so far (all were written before asking).
            p.running = true;
            let target = p.requested;
            drop(p);
            let result = self
                .sled
                .flush()
                .map(drop)
                .map_err(|e| e.to_string())
                .and_then(|()| st.log_file.sync_data().map_err(|e| e.to_string()));
            p = st.progress.lock().expect("sync lock");
            p.running = false;
            p.completed = target;
            if let Err(e) = result {
                tracing::error!(error = %e, "sync failed; refusing further writes");
                p.failed = Some(e);
            }
            st.done.notify_all();
        }
    }

    /// [`Db::sync_blocking`] on the blocking pool. Not sled's own
    /// `flush_async`: in 0.34 concurrent calls to it can hang forever
    /// (spacejam/sled#1308).
    pub async fn sync(&self) -> Result<(), StorageError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.sync_blocking())
            .await
            .map_err(|e| StorageError::Log(format!("sync task failed: {e}")))?
    }
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

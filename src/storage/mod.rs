//! Storage: the only layer that names sled or Redis. It keeps bytes and
//! records it is given (password hashes, token hashes, events) and knows
//! nothing of HTTP, passwords in clear, or who may read what.

pub mod accounts;
pub mod admin;
pub mod backend;
pub mod backup;
pub mod events;
pub mod federation;
pub mod identity;
pub mod live;
pub mod migrate;
pub mod ratelimit;
pub mod receipts;
pub mod rooms;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use accounts::AccountStore;
pub use accounts::embedded::EmbeddedAccounts;
pub use rooms::RoomStore;

/// A storage fault, saying what failed. `Unavailable` is the one a caller
/// may retry; every other one is a fault of the server or its disk.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled refused a read or a write.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A file or directory operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored record does not decode.
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    /// A sync to disk failed: the disk may have dropped writes, so the data
    /// directory refuses every later write (as databases do after a failed
    /// fsync) until the server is restarted.
    #[error("the disk refused a sync ({0}); restart the server")]
    SyncFailed(String),
    /// The room log's store cannot be reached now; nothing was written.
    #[error("room log unavailable: {0}")]
    Unavailable(String),
    /// Redis refused a command for a reason that does not pass with time.
    #[error("redis: {0}")]
    Redis(String),
    /// A room log script answered something it never answers.
    #[error("the room log's {script} script answered {detail}")]
    Script { script: &'static str, detail: String },
    /// A background part of the room log has stopped (shutdown, or it died).
    #[error("the {0} has stopped")]
    Stopped(&'static str),
    /// A storage thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A setting cannot be used (e.g. a malformed Redis URL).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    KeyFile(#[from] federation::KeyFileError),
    /// The data dir's federation key is not the one the server's Redis holds.
    #[error(
        "{} holds another federation key than this server's Redis ({}): every process of one server signs with one key. \
         Move the file away to use Redis's key, or, if the file's key is the server's, \
         store it in Redis (redis-cli -x SET {} < FILE) before starting any process",
        path.display(), federation::REDIS_KEY, federation::REDIS_KEY
    )]
    KeyMismatch { path: PathBuf },
    /// The data directory or Redis belongs to another server or backend.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
}

impl StorageError {
    /// An I/O error of operation `op` (`"create"`, `"open"`, …) on `path`.
    pub fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| StorageError::Io { op, path: path.to_owned(), source }
    }
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
    gate: WriteGate,
}

/// The data directory's write gate: every write to sled is made inside
/// [`WriteGate::with`] (shared, for the span of one sled call: a batch, a
/// transaction, one insert), and a backup takes it exclusively
/// ([`WriteGate::hold_all`]) while it reads every tree, so that what it
/// reads is one instant of the database (see [`backup`]). Writes are never
/// nested inside one another: with the lock's writer preference a second
/// shared take on a thread that already holds one could wait behind a
/// waiting backup. A closure, not a guard, so no write holds it across an
/// `.await`.
#[derive(Clone, Default)]
pub struct WriteGate(Arc<RwLock<()>>);

impl WriteGate {
    /// Makes one write (`f`) under the gate.
    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        if let Ok(_shared) = self.0.try_read() {
            return f();
        }
        // A backup holds the gate (or waits for it). Most writes are made
        // from async tasks: waiting here on a runtime worker would stall
        // every connection that worker serves for the whole backup, so hand
        // the worker's other tasks to another thread while this one waits.
        let wait = || {
            let _shared: RwLockReadGuard<'_, ()> = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            f()
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Held while nothing may be written.
    pub fn hold_all(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
    /// Opens (or creates) the database in `dir`. The directory is created
    /// readable by this user only (0700), and so are sled's files (0600):
    /// they hold messages and password hashes. An existing directory that
    /// others may read is left as it is, with a warning.
    /// Its cache is small: this is for tools and tests that open a data dir
    /// briefly; a server opens it with its `--cache-mib`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        const BRIEF_CACHE_MIB: u64 = 16;
        Self::open_with_cache(dir, BRIEF_CACHE_MIB)
    }

    /// [`Db::open`] with a memory budget of `cache_mib` MiB (`--cache-mib`).
    pub fn open_with_cache(dir: &Path, cache_mib: u64) -> Result<Self, StorageError> {
        private_dir(dir)?;
        let path = dir.join("sled");
        let sled = sled_config(&path, cache_mib).open()?;
        make_private(&path)?;
        let log_path = path.join("db");
        let log_file = std::fs::File::open(&log_path).map_err(StorageError::io("open", &log_path))?;
        // The files exist now; make their directory entries durable once.
        for d in [&path, dir] {
            std::fs::File::open(d).and_then(|f| f.sync_all()).map_err(StorageError::io("sync", d))?;
        }
        let syncs =
            Arc::new(SyncState { log_file, progress: Mutex::new(SyncProgress::default()), done: Condvar::new() });
        Ok(Self { sled, syncs, gate: WriteGate::default() })
    }

    /// The write gate every writer of this database takes.
    pub fn gate(&self) -> &WriteGate {
        &self.gate
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
                return Err(StorageError::SyncFailed(e.clone()));
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
            .map_err(|e| StorageError::SyncFailed(format!("the sync task failed: {e}")))?
    }

    /// Whether a sync has failed (every later one fails too).
    pub fn sync_failed(&self) -> bool {
        self.syncs.progress.lock().expect("sync lock").failed.is_some()
    }
}

/// sled's settings for a database at `path` with a memory budget of
/// `cache_mib` MiB.
fn sled_config(path: &Path, cache_mib: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_mib << 20)
        .segment_size(4 << 20)
        // We sync before every acknowledgement; the background flusher
        // only bounds the work left for those syncs.
        .flush_every_ms(Some(1000))
}

/// Creates `dir` (its missing parents as usual) with mode 0700, or warns
/// when an existing one is open to other users.
fn private_dir(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:o}"),
                    "the data directory is open to other users (it holds messages and password hashes); chmod 700 it"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(StorageError::io("create", parent))?;
            }
            std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(StorageError::io("create", dir))
        }
        Err(e) => Err(StorageError::io("read", dir)(e)),
    }
}

/// Sets sled's directory tree to 0700 and its files to 0600. Files sled
/// creates later (snapshots, blobs) are inside, out of other users' reach;
/// the binary also sets its umask to 0077.
fn make_private(path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path).map_err(StorageError::io("read", path))?;
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o777 != mode && !meta.file_type().is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(StorageError::io("chmod", path))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(StorageError::io("list", path))? {
            make_private(&entry.map_err(StorageError::io("list", path))?.path())?;
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_budget_is_sleds_cache_capacity() {
        let config = super::sled_config(std::path::Path::new("data/sled"), 24);
        assert_eq!(config.cache_capacity, 24 << 20);
    }

    /// Writes waiting for a backup must not take the runtime's workers with
    /// them: with both workers' tasks waiting at the gate, a third task runs.
    #[test]
    fn writers_waiting_for_a_backup_leave_the_runtime_running() {
        let gate = super::WriteGate::default();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let held = gate.hold_all();
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                rt.spawn(async move { gate.with(|| ()) })
            })
            .collect();
        // Let both writers reach the gate before the third task is queued.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move { tx.send(()).unwrap() });
        rx.recv_timeout(std::time::Duration::from_secs(20)).expect("no task ran while writers waited at the gate");
        drop(held);
        for w in writers {
            rt.block_on(w).unwrap();
        }
    }
}

//! `parlor backup` and `parlor restore`: a consistent copy of a data
//! directory, and bringing one back.
//!
//! A backup is a directory: `manifest.json` (format version, server name,
//! room-log backend, creation time, and every file's size and SHA-256), the
//! data directory's own files (`identity.json`, the federation key
//! `server.ed25519.pk8` when there is one) and one file per sled tree,
//! `sled/<hex of the tree's name>.kv`: its pairs in key order, each as a
//! 4-byte big-endian key length, the key, a 4-byte value length, the value.
//! The trees are dumped through sled's API rather than copied as sled's
//! files: sled's on-disk log is only coherent at points sled chooses
//! (its background flusher and segment cleaner run on their own), while a
//! dump read through the API is whatever the database held, in a format
//! that does not depend on sled's version.
//!
//! **Consistency.** sled has no snapshot that spans trees, and a plain
//! iteration of a live database mixes instants: an append's event could be
//! read from before a batch and the room's meta record from after it, or an
//! account without the device a login added with it. So every write to the
//! data directory's sled goes through the [`WriteGate`](super::WriteGate)
//! (shared, one sled call at a time: each batch and transaction is one
//! call), and the dump holds the gate exclusively while it reads every tree.
//! What it reads is therefore the database at one instant, between two
//! writes, with every write made before it: every acknowledged send (an ack
//! follows its batch's write) and, as a crash at that instant would leave,
//! batches written but not yet acknowledged. Writers wait while the dump
//! runs (3 s for 100k messages, 54 MB, in a debug build; reads go on);
//! the files are written to the page cache under the gate and synced after
//! it is released. Holding the writes was chosen over copying sled's files
//! under a flush for the reason above, and over an export without the gate
//! because that is not consistent.
//!
//! The dump runs where the database is open: in the running server (asked
//! over its admin socket) or, when no server runs, in `parlor backup`
//! itself, which then holds sled's lock. In Redis mode the data directory
//! still holds the identity, the federation key and the high-water marks of
//! the room logs (a sled tree); Redis itself is backed up with Redis's own
//! RDB or AOF files (docs/deploy.md § "Backups" says in which order).
//!
//! **Restore** reads the manifest, checks every file's size and hash and
//! every path before it writes anything; builds the new data directory's
//! sled and files in a staging directory inside the target; moves them in,
//! `identity.json` last (a directory without it is no server's, so an
//! interrupted restore is never started on as a whole one); and refuses a
//! data directory that holds anything unless `force`, in which case only
//! Parlor's own entries there are replaced. The restored room logs start
//! new epochs unless `keep_epochs`: clients may have seen seqs past the
//! backup, which would otherwise be issued again to other events under the
//! epoch those clients resume from (see [`RestoreOptions`]).

use std::io::{BufReader, BufWriter, Read as _, Write as _};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::{self, Identity, RoomLog};
use super::{Db, StorageError};

/// The manifest's file name in a backup.
pub const MANIFEST: &str = "manifest.json";
/// The backup format this version writes and reads.
pub const FORMAT: u32 = 1;
/// Where tree dumps live in a backup.
const TREES: &str = "sled";
const TREE_EXT: &str = ".kv";
/// The data directory's own files a backup carries, when present.
const DIR_FILES: [&str; 2] = [identity::FILE, super::federation::KEY_FILE];
/// Pairs written to a restored tree per sled batch (with 10,000, sled held
/// 1.3 GB while restoring 100k messages; with 1,000, 170 MB).
const RESTORE_BATCH: usize = 1_000;

/// What a backup holds (`manifest.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub server_name: String,
    pub room_log: RoomLog,
    /// When the dump was taken, ms since the Unix epoch.
    pub created_ms: u64,
    pub files: Vec<FileEntry>,
}

/// One file of a backup, by its path relative to the backup directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Why a backup or a restore did not happen (nothing of a failed restore
/// is left in the data directory; a failed backup leaves no `OUT`).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{} holds no Parlor data (no identity.json): give the --data-dir of a server", .0.display())]
    NotADataDir(PathBuf),
    #[error("{} already exists and is not empty: give a new directory for the backup", .0.display())]
    OutExists(PathBuf),
    #[error("{} is not a Parlor backup: {detail}", path.display())]
    NotABackup { path: PathBuf, detail: String },
    #[error(
        "the backup {} is damaged: {file} {detail}; nothing was restored",
        dir.display()
    )]
    Damaged { dir: PathBuf, file: String, detail: String },
    #[error(
        "the data directory {} is not empty: restore into a new directory, or give --force to replace the Parlor data in it",
        .0.display()
    )]
    NotEmpty(PathBuf),
    #[error("a server has the data directory {} open: stop it first", .0.display())]
    InUse(PathBuf),
}

impl From<sled::Error> for BackupError {
    fn from(e: sled::Error) -> Self {
        StorageError::from(e).into()
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |e| StorageError::io(op, path)(e).into()
}

/// Writes a backup of the data directory `dir`, whose sled is `db` (open
/// in this process), to the new directory `out`.
pub fn write(db: &Db, dir: &Path, out: &Path) -> Result<Manifest, BackupError> {
    let identity = identity::recorded(dir)?.ok_or_else(|| BackupError::NotADataDir(dir.to_owned()))?;
    let staging = staging_for(out)?;
    let result = write_into(db, dir, &staging, identity).and_then(|m| {
        // An empty directory named as OUT is replaced by the rename.
        std::fs::rename(&staging, out).map_err(io("rename", &staging))?;
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(m)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// A fresh staging directory beside `out` (so the final rename stays on one
/// file system), after checking that `out` may be written.
fn staging_for(out: &Path) -> Result<PathBuf, BackupError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::OutExists(out.to_owned()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", out)(e)),
    }
    let name = out.file_name().ok_or_else(|| BackupError::NotABackup {
        path: out.to_owned(),
        detail: "the backup needs a directory name".into(),
    })?;
    let mut staging_name = name.to_owned();
    staging_name.push(".partial");
    let staging = out.with_file_name(staging_name);
    let _ = std::fs::remove_dir_all(&staging);
    private_dir_all(&staging)?;
    private_dir_all(&staging.join(TREES))?;
    Ok(staging)
}

fn write_into(db: &Db, dir: &Path, staging: &Path, identity: Identity) -> Result<Manifest, BackupError> {
    let mut files = Vec::new();
    let mut written = Vec::new();
    for name in DIR_FILES {
        let from = dir.join(name);
        let bytes = match std::fs::read(&from) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read", &from)(e)),
        };
        let to = staging.join(name);
        let mut f = create_private(&to)?;
        f.write_all(&bytes).map_err(io("write", &to))?;
        files.push(FileEntry { path: name.to_owned(), size: bytes.len() as u64, sha256: sha256_hex(&bytes) });
        written.push((to, f));
    }
    let created_ms = super::events::now_ms();
    {
        let _no_writes = db.gate().hold_all();
        let mut names = db.sled.tree_names();
        names.sort();
        for name in names {
            let tree = db.sled.open_tree(&name)?;
            let rel = format!("{TREES}/{}{TREE_EXT}", hex(&name));
            let to = staging.join(&rel);
            let f = create_private(&to)?;
            let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, f));
            for item in tree.iter() {
                let (k, v) = item?;
                for part in [&k[..], &v[..]] {
                    let len = u32::try_from(part.len()).map_err(|_| StorageError::Corrupt {
                        tree: "backup",
                        detail: "a key or value over 4 GiB".into(),
                    })?;
                    w.write_all(&len.to_be_bytes()).and_then(|()| w.write_all(part)).map_err(io("write", &to))?;
                }
            }
            let (size, sha256, buffered) = w.finish();
            let f = buffered.into_inner().map_err(|e| io("write", &to)(e.into_error()))?;
            files.push(FileEntry { path: rel, size, sha256 });
            written.push((to, f));
        }
    }
    for (path, f) in &written {
        f.sync_all().map_err(io("sync", path))?;
    }
    sync_dir(&staging.join(TREES))?;
    let manifest =
        Manifest { format: FORMAT, server_name: identity.server_name, room_log: identity.room_log, created_ms, files };
    let path = staging.join(MANIFEST);
    let mut f = create_private(&path)?;
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    bytes.push(b'\n');
    f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io("write", &path))?;
    sync_dir(staging)?;
    Ok(manifest)
}

/// Reads a backup's manifest and checks every file it lists (path, size,
/// SHA-256) without writing anything.
pub fn verify(backup: &Path) -> Result<Manifest, BackupError> {
    let path = backup.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| BackupError::NotABackup {
        path: backup.to_owned(),
        detail: format!("cannot read {MANIFEST}: {e}"),
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::NotABackup { path: backup.to_owned(), detail: format!("{MANIFEST}: {e}") })?;
    if manifest.format != FORMAT {
        return Err(BackupError::NotABackup {
            path: backup.to_owned(),
            detail: format!("format {} (this parlor reads format {FORMAT})", manifest.format),
        });
    }
    let damaged =
        |file: &str, detail: String| BackupError::Damaged { dir: backup.to_owned(), file: file.into(), detail };
    if !manifest.files.iter().any(|f| f.path == identity::FILE) {
        return Err(damaged(MANIFEST, format!("lists no {}", identity::FILE)));
    }
    for entry in &manifest.files {
        if !allowed_path(&entry.path) {
            return Err(damaged(&entry.path, "is not a path a backup holds".into()));
        }
        let path = backup.join(&entry.path);
        let f = std::fs::File::open(&path).map_err(|e| damaged(&entry.path, format!("cannot be read: {e}")))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf).map_err(|e| damaged(&entry.path, format!("cannot be read: {e}")))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            size += n as u64;
        }
        if size != entry.size {
            return Err(damaged(&entry.path, format!("has {size} bytes, the manifest says {}", entry.size)));
        }
        let sha = hex(ctx.finish().as_ref());
        if sha != entry.sha256 {
            return Err(damaged(&entry.path, format!("has SHA-256 {sha}, the manifest says {}", entry.sha256)));
        }
    }
    Ok(manifest)
}

/// `identity.json`, the key file, or `sled/<hex>.kv`: nothing else, and
/// never a path that leaves the directory.
fn allowed_path(p: &str) -> bool {
    if DIR_FILES.contains(&p) {
        return true;
    }
    let path = Path::new(p);
    let parts: Vec<Component<'_>> = path.components().collect();
    match parts.as_slice() {
        [Component::Normal(dir), Component::Normal(file)] => {
            let file = file.to_string_lossy();
            *dir == TREES && file.strip_suffix(TREE_EXT).is_some_and(|h| unhex(h).is_some_and(|name| !name.is_empty()))
        }
        _ => false,
    }
}

/// How [`restore`] treats what is already there and the room logs' epochs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Replace the Parlor data in a non-empty data directory.
    pub force: bool,
    /// Keep the room logs' epochs: only right when no client can have seen
    /// a seq the restored logs do not hold (the server did not run after
    /// the backup; with Redis, Redis itself was not restored). Otherwise
    /// embedded rooms homed here start a new epoch with the same events
    /// (`events::embedded::start_new_epochs`), and with Redis every room
    /// with a high-water mark starts a new epoch at the first start, its
    /// old one archived (`events::redis::mark_all_rolled_back`).
    pub keep_epochs: bool,
}

/// Restores the backup at `backup` into the data directory `dir`. Every
/// file is verified first; `dir` must be empty or missing unless `force`.
/// The caller has made sure no server runs on `dir`; sled's lock is the
/// last guard.
pub fn restore(backup: &Path, dir: &Path, opts: RestoreOptions) -> Result<Manifest, BackupError> {
    let RestoreOptions { force, keep_epochs } = opts;
    let manifest = verify(backup)?;
    let existing = match std::fs::read_dir(dir) {
        Ok(entries) => {
            entries.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>().map_err(io("list", dir))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("read", dir)(e)),
    };
    if !existing.is_empty() && !force {
        return Err(BackupError::NotEmpty(dir.to_owned()));
    }
    if dir.join("sled").exists() {
        // Opening it takes sled's lock: refused while a server holds it.
        match super::sled_config(&dir.join("sled"), 16).open() {
            Ok(db) => drop(db),
            Err(e) if e.to_string().contains("could not acquire lock") => {
                return Err(BackupError::InUse(dir.to_owned()));
            }
            // Damaged old data is about to be replaced anyway.
            Err(e) => tracing::warn!(error = %e, "the data directory's old sled does not open"),
        }
    }
    private_dir_all(dir)?;
    let staging = dir.join(".restoring");
    let _ = std::fs::remove_dir_all(&staging);
    private_dir_all(&staging)?;
    let result = restore_into(backup, &manifest, &staging, keep_epochs).and_then(|()| {
        // Parlor's own entries of the old data go; anything else is left.
        for old in ["sled", identity::FILE, super::federation::KEY_FILE] {
            let path = dir.join(old);
            let gone = if old == "sled" { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
        }
        let mut moves: Vec<&str> = vec!["sled"];
        moves.extend(DIR_FILES.iter().copied().filter(|f| *f != identity::FILE && staging.join(f).exists()));
        moves.push(identity::FILE);
        for name in moves {
            let from = staging.join(name);
            std::fs::rename(&from, dir.join(name)).map_err(io("rename", &from))?;
            sync_dir(dir)?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| manifest)
}

fn restore_into(backup: &Path, manifest: &Manifest, staging: &Path, keep_epochs: bool) -> Result<(), BackupError> {
    let db = Db::open(staging)?;
    for entry in &manifest.files {
        let from = backup.join(&entry.path);
        let Some(tree_hex) = entry.path.strip_prefix(&format!("{TREES}/")).and_then(|f| f.strip_suffix(TREE_EXT))
        else {
            let to = staging.join(&entry.path);
            let bytes = std::fs::read(&from).map_err(io("read", &from))?;
            let mut f = create_private(&to)?;
            f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io("write", &to))?;
            continue;
        };
        let name = unhex(tree_hex).expect("verified paths");
        let tree = db.sled.open_tree(name)?;
        let f = std::fs::File::open(&from).map_err(io("open", &from))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        while let Some(k) = read_part(&mut r, &from)? {
            let v = read_part(&mut r, &from)?.ok_or_else(|| BackupError::Damaged {
                dir: backup.to_owned(),
                file: entry.path.clone(),
                detail: "ends inside a pair".into(),
            })?;
            batch.insert(k, v);
            n += 1;
            if n % RESTORE_BATCH == 0 {
                tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        tree.apply_batch(batch)?;
    }
    db.sync_blocking()?;
    if !keep_epochs {
        let rooms = match manifest.room_log {
            RoomLog::Embedded => super::events::embedded::start_new_epochs(&db, &manifest.server_name)?,
            RoomLog::Redis => super::events::redis::mark_all_rolled_back(&db)?,
        };
        tracing::info!(rooms, "restored room logs start new epochs");
    }
    Ok(())
}

/// One length-prefixed part, or None at a clean end of the file.
fn read_part(r: &mut impl std::io::Read, path: &Path) -> Result<Option<Vec<u8>>, BackupError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    }
    let mut part = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut part).map_err(io("read", path))?;
    Ok(Some(part))
}

/// Counts and hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    ctx: ring::digest::Context,
    size: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, ctx: ring::digest::Context::new(&ring::digest::SHA256), size: 0 }
    }

    fn finish(self) -> (u64, String, W) {
        (self.size, hex(self.ctx.finish().as_ref()), self.inner)
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect()
}

fn create_private(path: &Path) -> Result<std::fs::File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io("create", path))
}

fn private_dir_all(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("create", dir))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_backup() {
        assert!(allowed_path("identity.json"));
        assert!(allowed_path("sled/6576656e7473.kv"));
        for bad in ["../identity.json", "/etc/passwd", "sled/../x.kv", "sled/zz.kv", "sled/.kv", "other/61.kv", "x"] {
            assert!(!allowed_path(bad), "{bad}");
        }
        assert_eq!(unhex(&hex(b"__sled__default")).unwrap(), b"__sled__default");
    }

    fn pairs(path: &Path) -> usize {
        let mut r = BufReader::new(std::fs::File::open(path).unwrap());
        let mut n = 0;
        while read_part(&mut r, path).unwrap().is_some() {
            read_part(&mut r, path).unwrap().unwrap();
            n += 1;
        }
        n
    }

    /// A writer puts each key into two trees in one transaction while
    /// backups are taken: every backup holds both trees at one instant.
    #[test]
    fn a_backup_is_one_instant_of_every_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let db = Db::open(&dir).unwrap();
        identity::record_dir(&dir, &Identity { server_name: "a.test".into(), room_log: RoomLog::Embedded }).unwrap();
        let (a, b) = (db.tree("a").unwrap(), db.tree("b").unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = i.to_be_bytes();
                    db.gate()
                        .with(|| {
                            use sled::Transactional as _;
                            (&a, &b).transaction(|(a, b)| {
                                a.insert(&k, &k)?;
                                b.insert(&k, &k)?;
                                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                            })
                        })
                        .unwrap();
                    i += 1;
                }
                i
            })
        };
        for n in 0..5 {
            let out = tmp.path().join(format!("backup{n}"));
            let m = write(&db, &dir, &out).unwrap();
            let count = |tree: &[u8]| pairs(&out.join(format!("{TREES}/{}{TREE_EXT}", hex(tree))));
            let (in_a, in_b) = (count(b"a"), count(b"b"));
            assert_eq!(in_a, in_b, "backup {n} mixes instants");
            assert!(m.files.iter().any(|f| f.path == identity::FILE));
            assert!(verify(&out).is_ok());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
    }
}

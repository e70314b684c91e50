//! Federation state: this server's signing key, the signed requests
//! accepted in the last minutes (so that none can be replayed, across
//! restarts and, with Redis, across processes too), and with Redis the
//! lease that lets one process at a time push to each other server. Events
//! waiting to be pushed are not stored: the room log is their durable copy,
//! and receivers backfill what a restart lost.
//!
//! Embedded (one process): the key is a PKCS#8 file next to the database,
//! the accepted requests a sled tree. With `--redis` every process of the
//! server shares them through Redis (and no key file is written):
//! - `parlor:federation:key` string: the PKCS#8 key, set once (`SET NX`) by
//!   the first process to start;
//! - `parlor:fedseen:<slot>:<digest>` string (origin), expiring when its
//!   signature leaves the window: `SET NX` claims a signed request once for
//!   all processes;
//! - `parlor:{SERVER}:push-lease` string (holder), expiring after the lease
//!   time unless its holder renews it: who pushes to `SERVER` now.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::events::redis::link::{Conn, Target, connect, query_cmd, storage_error};
use super::{Db, StorageError, WriteGate};

/// Where a server's shared key lives in Redis.
pub const REDIS_KEY: &str = "parlor:federation:key";

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

/// Federation state shared by the processes of one server through Redis.
#[derive(Clone)]
pub struct RedisFederation {
    conn: Conn,
}

impl RedisFederation {
    pub async fn open(target: &Target) -> Result<Self, StorageError> {
        Ok(Self { conn: connect(target).await? })
    }

    /// The server's key, one for all its processes: Redis's when it holds
    /// one; else the data dir's key file (a server moving to Redis keeps its
    /// identity) or `generate()`'s, set in Redis unless another process set
    /// one first. A key file that is not Redis's key is refused: two keys
    /// would be two identities for one server name.
    pub async fn shared_key(&self, dir: &Path, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StorageError> {
        let path = dir.join(KEY_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(KeyFileError { action: "cannot read", path, source: e }.into()),
        };
        let offer = file.clone().unwrap_or_else(generate);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(REDIS_KEY).arg(&offer).arg("NX").ignore();
        pipe.cmd("GET").arg(REDIS_KEY);
        let (key,): (Option<Vec<u8>>,) =
            pipe.query_async(&mut self.conn.clone()).await.map_err(|e| storage_error(&e))?;
        let key = key.ok_or_else(|| StorageError::Redis(format!("{REDIS_KEY} vanished as it was set")))?;
        match file {
            Some(f) if f != key => Err(StorageError::KeyMismatch { path }),
            _ => Ok(key),
        }
    }

    pub fn seen(&self) -> SeenRequests {
        SeenRequests::Redis(self.conn.clone())
    }

    pub fn leases(&self) -> PushLeases {
        PushLeases::Redis(self.conn.clone(), redis::Script::new(HOLD_LEASE))
    }
}

/// Accepted signed requests. Embedded: a sled tree, by the slot of time in
/// which they expire: `slot (8 bytes, big-endian) ‖ digest (8 bytes)` →
/// origin server name. Redis: one expiring key each (see the module doc).
#[derive(Clone)]
pub enum SeenRequests {
    Embedded(sled::Tree, WriteGate),
    Redis(Conn),
}

fn seen_key(slot: u64, digest: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&slot.to_be_bytes());
    k[8..].copy_from_slice(&digest.to_be_bytes());
    k
}

impl SeenRequests {
    pub fn open(db: &Db) -> Result<Self, StorageError> {
        Ok(Self::Embedded(db.tree("fed_seen")?, db.gate().clone()))
    }

    /// Records one, remembered until `until_ms` (ms since the Unix epoch);
    /// false when it was recorded already (with Redis: by any process).
    /// Embedded, it is always new here (the caller's memory is the check)
    /// and not synced by itself: it rides on the next sync of the database,
    /// which every change a federation request makes (a join, a leave)
    /// waits for before it is answered; the others (sends, pushes) are
    /// idempotent anyway.
    pub async fn insert(&self, slot: u64, digest: u64, origin: &str, until_ms: u64) -> Result<bool, StorageError> {
        match self {
            Self::Embedded(tree, gate) => {
                gate.with(|| tree.insert(seen_key(slot, digest), origin.as_bytes()))?;
                Ok(true)
            }
            Self::Redis(conn) => {
                let ttl = until_ms.saturating_sub(super::events::now_ms()).max(1);
                let mut cmd = redis::cmd("SET");
                cmd.arg(format!("parlor:fedseen:{slot}:{digest:016x}")).arg(origin).arg("NX").arg("PX").arg(ttl);
                let set: Option<String> = query_cmd(conn, &cmd).await?;
                Ok(set.is_some())
            }
        }
    }

    /// Every record of slots `from` and later: (slot, digest, origin); none
    /// with Redis, which answers each check itself.
    pub fn since(&self, from: u64) -> Result<Vec<(u64, u64, String)>, StorageError> {
        let Self::Embedded(tree, _) = self else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in tree.range(seen_key(from, 0)..) {
            let (k, v) = item?;
            let corrupt = || StorageError::Corrupt { tree: "fed_seen", detail: "a key is not 16 bytes".into() };
            let k: [u8; 16] = k.as_ref().try_into().map_err(|_| corrupt())?;
            let slot = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            let digest = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
            out.push((slot, digest, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// Forgets every record of the slots before `slot` (Redis expires them).
    pub fn forget_before(&self, slot: u64) -> Result<(), StorageError> {
        let Self::Embedded(tree, gate) = self else { return Ok(()) };
        let mut batch = sled::Batch::default();
        for item in tree.range(..seen_key(slot, 0)) {
            batch.remove(item?.0);
        }
        gate.with(|| tree.apply_batch(batch))?;
        Ok(())
    }
}

/// Takes the lease for `ARGV[1]` (PX `ARGV[2]`) when it is free, renews it
/// when `ARGV[1]` holds it; 1 when held by `ARGV[1]` afterwards, else 0.
const HOLD_LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes the lease if `ARGV[1]` holds it.
const DROP_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Who may push to a server now. Embedded: this process, always. Redis: the
/// one process holding that server's lease (see the module doc).
#[derive(Clone)]
pub enum PushLeases {
    Local,
    Redis(Conn, redis::Script),
}

fn lease_key(server: &str) -> String {
    format!("parlor:{{{server}}}:push-lease")
}

impl PushLeases {
    /// Takes or renews `holder`'s lease on pushing to `server`, for `ttl`;
    /// false while another holder has it.
    pub async fn hold(&self, server: &str, holder: &str, ttl: Duration) -> Result<bool, StorageError> {
        let Self::Redis(conn, script) = self else { return Ok(true) };
        let held: i64 = script
            .key(lease_key(server))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn.clone())
            .await
            .map_err(|e| storage_error(&e))?;
        Ok(held == 1)
    }

    /// Gives `holder`'s lease up (at shutdown), so another process takes it at once.
    pub async fn release(&self, server: &str, holder: &str) -> Result<(), StorageError> {
        let Self::Redis(conn, _) = self else { return Ok(()) };
        let _: i64 = redis::Script::new(DROP_LEASE)
            .key(lease_key(server))
            .arg(holder)
            .invoke_async(&mut conn.clone())
            .await
            .map_err(|e| storage_error(&e))?;
        Ok(())
    }
}

/// Drops the push queue older versions kept on disk (`fed_outbox`): pushes
/// are now queued in memory, and what it held the receivers backfill.
pub fn drop_old_outbox(db: &Db) -> Result<(), StorageError> {
    db.gate().with(|| db.sled.drop_tree("fed_outbox"))?;
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

    #[tokio::test]
    async fn seen_requests_are_kept_by_slot() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let seen = SeenRequests::open(&db).unwrap();
        assert!(seen.insert(5, 1, "a", 0).await.unwrap());
        assert!(seen.insert(6, u64::MAX, "b", 0).await.unwrap());
        assert!(seen.insert(7, 0, "c", 0).await.unwrap());
        assert_eq!(seen.since(6).unwrap(), [(6, u64::MAX, "b".into()), (7, 0, "c".into())]);
        seen.forget_before(7).unwrap();
        assert_eq!(seen.since(0).unwrap(), [(7, 0, "c".into())]);
    }
}

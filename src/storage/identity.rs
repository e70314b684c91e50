//! Which server a data directory (and a Redis) belongs to.
//!
//! Everything stored is keyed by the server's name (`@ann:NAME`,
//! `#room:NAME`) and lives in one room-log backend. Starting on the same
//! data with another name, or with the other backend, used to show empty
//! rooms at seq 1 and start new ones beside the old: nothing lost, but
//! nothing visible either, and two histories for one room from then on. So
//! the data directory records `identity.json` (server name and backend) the
//! first time it is used, Redis records the server name under
//! [`REDIS_KEY`], and a start that disagrees with either is refused with a
//! message saying what to do. Directories and Redis databases from before
//! this record existed adopt the first start's identity.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file in the data directory.
pub const FILE: &str = "identity.json";
/// The Redis key holding the server name.
pub const REDIS_KEY: &str = "parlor:identity";

/// Where a server keeps its room logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomLog {
    /// sled, in the data directory.
    Embedded,
    /// Redis Streams (`--redis`).
    Redis,
}

impl RoomLog {
    fn describe(self) -> &'static str {
        match self {
            RoomLog::Embedded => "the embedded room log",
            RoomLog::Redis => "the Redis room log (--redis)",
        }
    }
}

/// What a data directory records about its server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub server_name: String,
    pub room_log: RoomLog,
}

/// A start that does not match what its data says, or a record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the data directory {} belongs to server {:?}, not {:?}: rooms and accounts there are named after it. \
         Start with --server-name {} (or without --server-name), or give this server its own --data-dir",
        dir.display(), recorded.server_name, asked.server_name, recorded.server_name
    )]
    DataDirName { dir: PathBuf, recorded: Identity, asked: Identity },
    #[error(
        "the data directory {} was used with {}, and this start asks for {}: its rooms would look empty. \
         Start {}, or give this server its own --data-dir",
        dir.display(), recorded.room_log.describe(), asked.room_log.describe(),
        match recorded.room_log {
            RoomLog::Embedded => "without --redis (or move its data into Redis first: parlor migrate --data-dir DIR --redis URL)",
            RoomLog::Redis => "with the same --redis",
        }
    )]
    DataDirRoomLog { dir: PathBuf, recorded: Identity, asked: Identity },
    #[error(
        "this Redis holds the rooms of server {recorded:?}, not {asked:?}: every process on one Redis is one server. \
         Start with --server-name {recorded}, or use another Redis (or another database number in the URL)"
    )]
    RedisName { recorded: String, asked: String },
    #[error("cannot read {}: {detail}; it records which server this data directory belongs to", path.display())]
    Unreadable { path: PathBuf, detail: String },
}

/// The identity recorded in `dir`, if any.
pub fn recorded(dir: &Path) -> Result<Option<Identity>, super::StorageError> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IdentityError::Unreadable { path, detail: e.to_string() }.into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(super::StorageError::io("read", &path)(e)),
    }
}

/// Checks `asked` against what `dir` records: Ok(true) when nothing is
/// recorded yet (then [`record_dir`] after every other check passed, so a
/// refused start records nothing).
pub fn check_dir(dir: &Path, asked: &Identity) -> Result<bool, super::StorageError> {
    match recorded(dir)? {
        Some(recorded) if recorded.server_name != asked.server_name => {
            Err(IdentityError::DataDirName { dir: dir.to_owned(), recorded, asked: asked.clone() }.into())
        }
        Some(recorded) if recorded.room_log != asked.room_log => {
            Err(IdentityError::DataDirRoomLog { dir: dir.to_owned(), recorded, asked: asked.clone() }.into())
        }
        Some(_) => Ok(false),
        None => Ok(true),
    }
}

/// Records `identity` in `dir` (written to a temporary file, synced,
/// renamed, directory synced: a crash leaves no record or the whole one).
pub fn record_dir(dir: &Path, identity: &Identity) -> Result<(), super::StorageError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let io = super::StorageError::io;
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)
    }
    .map_err(io("create", &tmp))?;
    let mut bytes = serde_json::to_vec_pretty(identity).expect("identity serializes");
    bytes.push(b'\n');
    f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
    tracing::info!(server_name = %identity.server_name, room_log = ?identity.room_log, "data directory claimed");
    Ok(())
}

/// [`check_dir`], then [`record_dir`] when nothing was recorded.
pub fn claim_dir(dir: &Path, asked: &Identity) -> Result<(), super::StorageError> {
    if check_dir(dir, asked)? {
        record_dir(dir, asked)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, room_log: RoomLog) -> Identity {
        Identity { server_name: name.into(), room_log }
    }

    #[test]
    fn first_claim_records_later_ones_must_match() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), None);
        claim_dir(dir.path(), &id("a.test", RoomLog::Embedded)).unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), Some(id("a.test", RoomLog::Embedded)));
        claim_dir(dir.path(), &id("a.test", RoomLog::Embedded)).unwrap();
        let e = claim_dir(dir.path(), &id("b.test", RoomLog::Embedded)).unwrap_err().to_string();
        assert!(
            e.contains("belongs to server \"a.test\", not \"b.test\"") && e.contains("--server-name a.test"),
            "{e}"
        );
        let e = claim_dir(dir.path(), &id("a.test", RoomLog::Redis)).unwrap_err().to_string();
        assert!(e.contains("was used with the embedded room log") && e.contains("without --redis"), "{e}");
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
    }

    #[test]
    fn a_damaged_record_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let e = claim_dir(dir.path(), &id("a.test", RoomLog::Embedded)).unwrap_err().to_string();
        assert!(e.contains("identity.json") && e.contains("records which server"), "{e}");
        assert_eq!(std::fs::read(dir.path().join(FILE)).unwrap(), b"{not json");
    }
}

//! `parlor migrate`: moves a stopped embedded server's data into Redis, so
//! that from then on it runs with `--redis` (and can grow to several
//! processes) without losing anything a client can see.
//!
//! What moves, as it is: accounts with their devices, access tokens and
//! device proofs (nobody has to log in again), registration tokens with the
//! uses taken, the deny list, rooms and their members, and every room log
//! with its epoch, seqs, event ids and times (so a client's cursor
//! `{epoch, seq}` resumes across the move), and the federation signing key
//! (the server keeps its identity towards its peers). What does not:
//! transaction ids (a send retried across the move is stored again) and the
//! federation replay memory (signed requests are refused after a few minutes
//! anyway); both are short-lived by nature, and the server is stopped.
//!
//! The order makes the move safe to interrupt and run again: the data dir
//! says `embedded` until everything is in Redis and checked, so until then
//! the embedded server can simply be started again; every write into Redis
//! is idempotent; anything Redis already holds that is not the same data
//! (another account of one name, another room of one alias, another room
//! log) stops the move before it writes, naming the conflict.

use std::path::Path;
use std::sync::Arc;

use super::accounts::embedded::EmbeddedAccounts;
use super::accounts::redis::RedisAccounts;
use super::admin::AdminStore;
use super::events::redis::Target;
use super::events::{EventLog, EventSink, LogSettings, Range};
use super::identity::{Identity, RoomLog};
use super::rooms::{EmbeddedRooms, RedisRooms, RoomStore};
use super::{Db, StorageError};
use crate::protocol::RoomId;

/// Events per import into Redis (one script call each).
const BATCH: usize = 500;

/// Why a migration stopped. Nothing in the data dir changed; Redis may hold
/// part of the data, which a later run completes.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{} is not a Parlor data directory (no {})", .0.display(), super::identity::FILE)]
    NotADataDir(std::path::PathBuf),
    #[error("{} uses Redis already; there is nothing to migrate", .0.display())]
    AlreadyRedis(std::path::PathBuf),
    #[error("cannot open the data directory {} (is a server running on it? stop every process first): {source}", dir.display())]
    Locked {
        dir: std::path::PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("this Redis holds other data under the same names, so nothing was moved: {}", .0.join("; "))]
    Conflicts(Vec<String>),
    #[error("after the move, room {room} reads {found} in Redis where the data dir has {expected}")]
    Mismatch { room: String, expected: String, found: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a migration moved.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub server_name: String,
    pub accounts: usize,
    pub devices: usize,
    pub registration_tokens: usize,
    pub denied_servers: usize,
    pub rooms: usize,
    pub memberships: usize,
    pub events: u64,
    pub signing_key: bool,
}

/// The sink of the logs opened here: nobody is subscribed, and a running
/// server on the same Redis gets imported events through its own feed.
struct NoSink;

impl EventSink for NoSink {
    fn deliver(&self, _: &RoomId, _: &Arc<str>, _: u64, _: &str) {}
}

/// Moves the embedded server in `dir` into `target` (one Redis, or a Redis
/// Cluster); `progress`
/// hears one line per step. The data dir records Redis as its backend only
/// once everything was moved and read back.
pub async fn migrate(
    dir: &Path,
    target: impl Into<Target>,
    mut progress: impl FnMut(&str),
) -> Result<Moved, MigrateError> {
    let url = &target.into();
    let identity = super::identity::recorded(dir)?.ok_or_else(|| MigrateError::NotADataDir(dir.to_owned()))?;
    if identity.room_log == RoomLog::Redis {
        return Err(MigrateError::AlreadyRedis(dir.to_owned()));
    }
    let db = Db::open_with_cache(dir, 16).map_err(|source| MigrateError::Locked { dir: dir.to_owned(), source })?;
    let mut moved = Moved { server_name: identity.server_name.clone(), ..Moved::default() };

    let accounts = EmbeddedAccounts::open(&db)?.export()?;
    let from_rooms = EmbeddedRooms::open(&db)?;
    let rooms = from_rooms.all().await?;
    let from_admin = super::admin::embedded::EmbeddedAdmin::open(&db)?;
    let to_accounts = RedisAccounts::open(url).await?;
    let to_rooms = RedisRooms::open(url).await?;
    let to_admin = super::admin::redis::RedisAdmin::open(url).await?;
    super::events::redis::claim_identity(url, &identity.server_name).await?;

    // Every conflict before any write.
    let mut conflicts = Vec::new();
    for a in &accounts {
        if let Some(held) = super::AccountStore::get(&to_accounts, &a.username).await?
            && super::to_record(&held) != super::to_record(&a.account)
        {
            conflicts.push(format!("account {} exists with another record (password, creation)", a.username));
        }
    }
    for r in &rooms {
        let Some(alias) = &r.alias else { continue };
        match to_rooms.room_for_alias(alias).await? {
            Some(id) if id != r.room_id => conflicts.push(format!("alias {alias} names another room ({id})")),
            _ => {}
        }
    }
    let from_log = super::events::embedded::EmbeddedLog::open(&db, Arc::new(NoSink), &LogSettings::default())?;
    let to_log = super::events::redis::RedisLog::open(url, &db, Arc::new(NoSink), &LogSettings::default()).await?;
    let mut heads = Vec::with_capacity(rooms.len());
    for r in &rooms {
        let room = RoomId::parse(&r.room_id)
            .map_err(|e| StorageError::Corrupt { tree: "rooms", detail: format!("room id {}: {e}", r.room_id) })?;
        let from = from_log.head(&room).await?;
        let to = to_log.head(&room).await?;
        // A log that Redis holds must be this one, moved in part by an
        // earlier run: same epoch, no further than the data dir's.
        if to.latest > 0 && (to.epoch != from.epoch || to.latest > from.latest) {
            conflicts.push(format!(
                "room {} has another log in Redis (epoch {}, seq {}; here epoch {}, seq {})",
                r.room_id, to.epoch, to.latest, from.epoch, from.latest
            ));
        }
        heads.push((room, from, to));
    }
    if !conflicts.is_empty() {
        from_log.close().await;
        to_log.close().await;
        return Err(MigrateError::Conflicts(conflicts));
    }

    for a in &accounts {
        if !to_accounts.import(a).await? {
            return Err(MigrateError::Conflicts(vec![format!("account {} appeared in Redis meanwhile", a.username)]));
        }
        moved.accounts += 1;
        moved.devices += a.devices.len();
    }
    progress(&format!("accounts: {} ({} devices)", moved.accounts, moved.devices));

    for t in from_admin.tokens().await? {
        to_admin.add_token(&t).await?;
        moved.registration_tokens += 1;
    }
    for server in from_admin.denied().await? {
        to_admin.set_denied(&server, true).await?;
        moved.denied_servers += 1;
    }
    progress(&format!("registration tokens: {}, denied servers: {}", moved.registration_tokens, moved.denied_servers));

    let now = super::events::now_ms();
    for r in &rooms {
        // The record carries the v1.1 state (roles, bans, invites, …); the
        // invite index is rebuilt from it.
        to_rooms.create(r).await?;
        for user in &r.invites {
            to_rooms.index_invite(user, &r.room_id, true).await?;
        }
        let members: Vec<(String, bool)> =
            from_rooms.members(&r.room_id).await?.into_iter().map(|m| (m, true)).collect();
        to_rooms.set_members(&r.room_id, &members, now).await?;
        moved.rooms += 1;
        moved.memberships += members.len();
    }
    progress(&format!("rooms: {} ({} memberships)", moved.rooms, moved.memberships));

    for (room, from, to) in &heads {
        if from.latest == 0 {
            continue;
        }
        // A first run starts the room's log at the data dir's earliest seq
        // (retention may have dropped older ones); a later run goes on
        // after what Redis has.
        let mut after = if to.latest > 0 { to.latest } else { from.earliest - 1 };
        let mut restart_at = (to.latest == 0).then_some(from.earliest);
        while after < from.latest {
            let page = from_log.read_epoch(room, &from.epoch, Range::After(after), BATCH).await?;
            let Some(page) = page.filter(|p| !p.events.is_empty()) else { break };
            after = page.events.last().map_or(after, |e| e.seq);
            let n = page.events.len() as u64;
            let done = to_log.import(room, &from.epoch, restart_at.take(), page.events).await?;
            if done.hole {
                return Err(MigrateError::Mismatch {
                    room: room.as_str().to_owned(),
                    expected: format!("seq {} next", done.latest + 1),
                    found: "a hole".into(),
                });
            }
            moved.events += n;
        }
        let now_there = to_log.head(room).await?;
        if now_there.epoch != from.epoch || now_there.latest != from.latest {
            return Err(MigrateError::Mismatch {
                room: room.as_str().to_owned(),
                expected: format!("epoch {} seq {}", from.epoch, from.latest),
                found: format!("epoch {} seq {}", now_there.epoch, now_there.latest),
            });
        }
    }
    progress(&format!("room logs: {} events", moved.events));
    from_log.close().await;
    to_log.close().await;

    if dir.join(super::federation::KEY_FILE).exists() {
        let shared = super::federation::RedisFederation::open(url).await?;
        // Never generates: the file exists, and Redis either has no key
        // (it gets the file's) or must hold the same one (else refused).
        shared.shared_key(dir, Vec::new).await?;
        moved.signing_key = true;
        progress("federation signing key: moved");
    }

    db.sync().await?;
    super::identity::record_dir(dir, &Identity { server_name: identity.server_name, room_log: RoomLog::Redis })?;
    progress("data directory: now uses Redis");
    Ok(moved)
}

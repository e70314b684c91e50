//! The room directory in Redis, shared by every process of a server started
//! with `--redis`: Redis is its only copy (no local sled copy), so a change
//! acknowledged by one process is read by every other at once.
//!
//! Keys (one room's keys share the room log's `{ROOM}` hash tag; the
//! user → rooms index is under the user's tag, an alias under its own):
//! - `parlor:{ROOM}:room` string: the [`RoomRecord`] as JSON;
//! - `parlor:{ROOM}:members` hash user id → ms of the join: the source of
//!   truth for membership;
//! - `parlor:{USER}:rooms` hash room id → ms: the rooms a user is in, as
//!   an index over `members` (written before a join and removed after a
//!   leave, so it is a superset; [`RoomStore::rooms_of`] checks each entry
//!   against `members`);
//! - `parlor:{USER}:invites` hash room id → ms: the rooms a user has a
//!   pending invite to, as an index over the records' `invites` (a
//!   superset; [`RoomStore::invites_of`] checks each entry);
//! - `parlor:{ALIAS}:alias` string: the room id an alias names, set once
//!   (`SET NX`: the first creator of an alias wins, whichever process);
//! - a room made without an alias is created with `SET NX` on its record;
//!   [`RoomStore::replace`] is a Lua compare-and-swap on the record's `rev`
//!   that changes `members` in the same step (one slot);
//! - `parlor:rooms` set: every room id, for [`RoomStore::all`] (start-up
//!   and background catch-up only, never on a request's path).
//!
//! A change is acknowledged once Redis answered it: the room log's rule
//! (see `storage::events::redis`), so a Redis that loses writes loses
//! directory changes with the events that recorded them.

use super::{RoomRecord, RoomStore};
use crate::storage::events::BoxFuture;
use crate::storage::events::redis::link::{Conn, Target, connect, query_cmd, query_pipe, storage_error};
use crate::storage::{StorageError, json_record, to_record};

/// Keys per pipeline when reading many rooms.
const BATCH: usize = 512;
const ALL_KEY: &str = "parlor:rooms";

fn room_key(room: &str) -> String {
    format!("parlor:{{{room}}}:room")
}

fn members_key(room: &str) -> String {
    format!("parlor:{{{room}}}:members")
}

fn user_rooms_key(user: &str) -> String {
    format!("parlor:{{{user}}}:rooms")
}

fn user_invites_key(user: &str) -> String {
    format!("parlor:{{{user}}}:invites")
}

/// Compare-and-swap of a room record on its `rev` (absent: 0), with the
/// membership changes that go with it. KEYS: the record, the room's
/// `members` (one slot). ARGV: the rev expected, the new record, the join
/// ms, then per change a user id and `1` (member) or `0`. Answer: 1
/// written, 0 not.
const REPLACE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rev = cjson.decode(cur).rev or 0
if rev ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '1' then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[3])
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 1
";

fn alias_key(alias: &str) -> String {
    format!("parlor:{{{alias}}}:alias")
}

#[derive(Clone)]
pub struct RedisRooms {
    conn: Conn,
}

impl RedisRooms {
    /// Connects to the Redis at `url`; fails when it cannot be reached now.
    pub async fn open(target: &Target) -> Result<Self, StorageError> {
        Ok(Self { conn: connect(target).await? })
    }

    async fn records(&self, ids: &[String]) -> Result<Vec<RoomRecord>, StorageError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.get(room_key(id));
            }
            let values: Vec<Option<Vec<u8>>> = query_pipe(&self.conn, &pipe).await?;
            for v in values.into_iter().flatten() {
                out.push(json_record("rooms", &v)?);
            }
        }
        Ok(out)
    }

    async fn get(&self, room_id: &str) -> Result<Option<RoomRecord>, StorageError> {
        let v: Option<Vec<u8>> = query_cmd(&self.conn, redis::cmd("GET").arg(room_key(room_id))).await?;
        v.map(|v| json_record("rooms", &v)).transpose()
    }

    async fn create_now(&self, record: &RoomRecord) -> Result<RoomRecord, StorageError> {
        let Some(alias) = &record.alias else {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(room_key(&record.room_id)).arg(to_record(record)).arg("NX");
            pipe.cmd("SADD").arg(ALL_KEY).arg(&record.room_id).ignore();
            let (set,): (Option<String>,) = query_pipe(&self.conn, &pipe).await?;
            if set.is_some() {
                return Ok(record.clone());
            }
            return self
                .get(&record.room_id)
                .await?
                .ok_or(StorageError::Corrupt { tree: "rooms", detail: format!("room {} vanished", record.room_id) });
        };
        // The record first, so that an alias never names a room without one;
        // then the alias, whose `SET NX` decides between racing creators.
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(room_key(&record.room_id)).arg(to_record(record)).ignore();
        pipe.cmd("SADD").arg(ALL_KEY).arg(&record.room_id).ignore();
        pipe.cmd("SET").arg(alias_key(alias)).arg(&record.room_id).arg("NX");
        pipe.cmd("GET").arg(alias_key(alias));
        let (_, owner): (Option<String>, Option<String>) = query_pipe(&self.conn, &pipe).await?;
        let owner = owner.ok_or_else(|| StorageError::Corrupt { tree: "aliases", detail: "alias vanished".into() })?;
        if owner == record.room_id {
            return Ok(record.clone());
        }
        // Lost the race: drop what was written for a room that never was.
        let mut undo = redis::pipe();
        undo.cmd("SREM").arg(ALL_KEY).arg(&record.room_id).ignore();
        undo.cmd("DEL").arg(room_key(&record.room_id)).ignore();
        query_pipe::<()>(&self.conn, &undo).await?;
        self.get(&owner)
            .await?
            .ok_or(StorageError::Corrupt { tree: "aliases", detail: format!("alias points to missing room {owner}") })
    }

    async fn set_members_now(
        &self,
        room_id: &str,
        changes: &[(String, bool)],
        now_ms: u64,
    ) -> Result<(), StorageError> {
        if changes.is_empty() {
            return Ok(());
        }
        let members = members_key(room_id);
        let mut pipe = redis::pipe();
        // Index before truth on a join, truth before index on a leave: the
        // index is always a superset of the truth.
        for (user, _) in changes.iter().filter(|(_, m)| *m) {
            pipe.cmd("HSET").arg(user_rooms_key(user)).arg(room_id).arg(now_ms).ignore();
        }
        for (user, member) in changes {
            match member {
                true => pipe.cmd("HSET").arg(&members).arg(user).arg(now_ms).ignore(),
                false => pipe.cmd("HDEL").arg(&members).arg(user).ignore(),
            };
        }
        for (user, _) in changes.iter().filter(|(_, m)| !*m) {
            pipe.cmd("HDEL").arg(user_rooms_key(user)).arg(room_id).ignore();
        }
        query_pipe::<()>(&self.conn, &pipe).await
    }

    async fn replace_now(
        &self,
        record: &RoomRecord,
        changes: &[(String, bool)],
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        let room_id = record.room_id.as_str();
        // The user → rooms index is in each user's slot, outside the
        // script: a joiner's entry is written before and again after the
        // swap, a leaver's removed after it and put back if a later join
        // came first, so that every member stays indexed.
        let joins: Vec<&String> = changes.iter().filter(|(_, m)| *m).map(|(u, _)| u).collect();
        let index_joins = |pipe: &mut redis::Pipeline| {
            for user in &joins {
                pipe.cmd("HSET").arg(user_rooms_key(user)).arg(room_id).arg(now_ms).ignore();
            }
        };
        if !joins.is_empty() {
            let mut pipe = redis::pipe();
            index_joins(&mut pipe);
            query_pipe::<()>(&self.conn, &pipe).await?;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REPLACE).arg(2).arg(room_key(room_id)).arg(members_key(room_id));
        cmd.arg(record.rev.saturating_sub(1)).arg(to_record(record)).arg(now_ms);
        for (user, member) in changes {
            cmd.arg(user).arg(if *member { "1" } else { "0" });
        }
        let done: i64 = query_cmd(&self.conn, &cmd).await?;
        if done != 1 || changes.is_empty() {
            return Ok(done == 1);
        }
        let mut pipe = redis::pipe();
        index_joins(&mut pipe);
        let leaves: Vec<&String> = changes.iter().filter(|(_, m)| !*m).map(|(u, _)| u).collect();
        for user in &leaves {
            pipe.cmd("HDEL").arg(user_rooms_key(user)).arg(room_id).ignore();
            pipe.cmd("HEXISTS").arg(members_key(room_id)).arg(*user);
        }
        let back: Vec<bool> = query_pipe(&self.conn, &pipe).await?;
        let mut again = redis::pipe();
        let mut rejoined = false;
        for (user, _) in leaves.iter().zip(back).filter(|(_, member)| *member) {
            again.cmd("HSET").arg(user_rooms_key(user)).arg(room_id).arg(now_ms).ignore();
            rejoined = true;
        }
        if rejoined {
            query_pipe::<()>(&self.conn, &again).await?;
        }
        Ok(true)
    }

    async fn delete_now(&self, room_id: &str) -> Result<bool, StorageError> {
        let Some(record) = self.get(room_id).await? else { return Ok(false) };
        let members: Vec<String> = query_cmd(&self.conn, redis::cmd("HKEYS").arg(members_key(room_id))).await?;
        let mut pipe = redis::pipe();
        for user in &members {
            pipe.cmd("HDEL").arg(user_rooms_key(user)).arg(room_id).ignore();
        }
        for user in &record.invites {
            pipe.cmd("HDEL").arg(user_invites_key(user)).arg(room_id).ignore();
        }
        pipe.cmd("DEL").arg(members_key(room_id)).ignore();
        pipe.cmd("SREM").arg(ALL_KEY).arg(room_id).ignore();
        pipe.cmd("DEL").arg(room_key(room_id)).ignore();
        query_pipe::<()>(&self.conn, &pipe).await?;
        let Some(alias) = &record.alias else { return Ok(true) };
        // Only while the alias still names this room (a script: compare and delete in one step).
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let mut conn = self.conn.clone();
        script
            .key(alias_key(alias))
            .arg(room_id)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(|e| crate::storage::events::redis::link::storage_error(&e))?;
        Ok(true)
    }

    async fn invites_of_now(&self, user_id: &str) -> Result<Vec<RoomRecord>, StorageError> {
        let ids: Vec<String> = query_cmd(&self.conn, redis::cmd("HKEYS").arg(user_invites_key(user_id))).await?;
        Ok(self.records(&ids).await?.into_iter().filter(|r| r.invites.contains(user_id)).collect())
    }

    async fn rooms_of_now(&self, user_id: &str) -> Result<Vec<RoomRecord>, StorageError> {
        let ids: Vec<String> = query_cmd(&self.conn, redis::cmd("HKEYS").arg(user_rooms_key(user_id))).await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.get(room_key(id)).hexists(members_key(id), user_id);
            }
            // Reads in any order: concurrent per slot on a cluster.
            let values: Vec<(Option<Vec<u8>>, bool)> = self.conn.reads(&pipe).await.map_err(|e| storage_error(&e))?;
            for (rec, member) in values {
                if let (Some(rec), true) = (rec, member) {
                    out.push(json_record("rooms", &rec)?);
                }
            }
        }
        Ok(out)
    }
}

impl RoomStore for RedisRooms {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn room_for_alias<'a>(&'a self, alias: &'a str) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(async move { query_cmd(&self.conn, redis::cmd("GET").arg(alias_key(alias))).await })
    }

    fn room<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Option<RoomRecord>, StorageError>> {
        Box::pin(self.get(room_id))
    }

    fn create<'a>(&'a self, record: &'a RoomRecord) -> BoxFuture<'a, Result<RoomRecord, StorageError>> {
        Box::pin(self.create_now(record))
    }

    fn replace<'a>(
        &'a self,
        record: &'a RoomRecord,
        changes: &'a [(String, bool)],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(self.replace_now(record, changes, now_ms))
    }

    fn index_invite<'a>(
        &'a self,
        user_id: &'a str,
        room_id: &'a str,
        invited: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let mut cmd = match invited {
                true => redis::cmd("HSET"),
                false => redis::cmd("HDEL"),
            };
            cmd.arg(user_invites_key(user_id)).arg(room_id);
            if invited {
                cmd.arg(crate::storage::events::now_ms());
            }
            query_cmd::<()>(&self.conn, &cmd).await
        })
    }

    fn invites_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<RoomRecord>, StorageError>> {
        Box::pin(self.invites_of_now(user_id))
    }

    fn is_member<'a>(&'a self, room_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(
            async move { query_cmd(&self.conn, redis::cmd("HEXISTS").arg(members_key(room_id)).arg(user_id)).await },
        )
    }

    fn set_members<'a>(
        &'a self,
        room_id: &'a str,
        changes: &'a [(String, bool)],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.set_members_now(room_id, changes, now_ms))
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<RoomRecord>, StorageError>> {
        Box::pin(async move {
            let ids: Vec<String> = query_cmd(&self.conn, redis::cmd("SMEMBERS").arg(ALL_KEY)).await?;
            self.records(&ids).await
        })
    }

    fn members<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let mut m: Vec<String> = query_cmd(&self.conn, redis::cmd("HKEYS").arg(members_key(room_id))).await?;
            m.sort();
            Ok(m)
        })
    }

    fn rooms_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<RoomRecord>, StorageError>> {
        Box::pin(self.rooms_of_now(user_id))
    }

    fn delete<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(self.delete_now(room_id))
    }
}

//! The room directory: aliases, room records and membership (both ways:
//! room → members and user → rooms). One trait, [`RoomStore`], with two
//! implementations chosen at start-up like the room log's: [`embedded`]
//! (sled, one process) and [`redis`] (Redis, shared by every process of a
//! server started with `--redis`).
//!
//! v1.1 room state (name, topic, visibility, roles, bans, invites, the
//! seq each member of a private room joined at) lives in the room record,
//! changed only by [`RoomStore::replace`], a compare-and-swap on its `rev`
//! that also applies the membership changes that go with it;
//! pending invites are also indexed per user ([`RoomStore::invites_of`]).
//!
//! An implementation acknowledges a change only once its store has it
//! (sled: synced; Redis: answered), so a later read by any process that
//! uses the same store sees it.

pub mod embedded;
pub mod redis;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::events::BoxFuture;
use crate::protocol::events::{EventContent, EventType};
use crate::protocol::rooms::{Role, Visibility};

pub use embedded::EmbeddedRooms;
pub use redis::RedisRooms;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A room as the directory knows it. Every field past `created_ms` is
/// v1.1 state, absent from (and defaulted for) records written before it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomRecord {
    pub room_id: String,
    /// Absent for a room made without one (`POST /rooms` without `alias`, direct messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub created_ms: u64,
    /// Bumped by every [`RoomStore::replace`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    /// Written by servers before state changes were ordered by
    /// [`RoomRecord::pending`] (the seq of the `room` event whose state the
    /// record held); kept in old records, no longer read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_seq: u64,
    /// Roles above `member`, by user id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, Role>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub bans: BTreeSet<String>,
    /// Users with a pending invite.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub invites: BTreeSet<String>,
    /// The seq of the join event of each member who joined while the room
    /// was private: the first event they may read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub joined_seq: BTreeMap<String, u64>,
    /// The two users of a direct-message room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dm: Vec<String>,
    /// The event the last change of this record owes the room log, until
    /// it is appended: no process changes the record while it is here
    /// (each first appends it), so events are in the order of the changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingEvent>,
}

/// A state event a record change owes the room log, with what its
/// appending changes next to the log (membership, the join seq).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingEvent {
    /// The append's transaction id: whichever process appends it, and
    /// however often, the log holds it once.
    pub nonce: String,
    pub kind: EventType,
    pub sender: String,
    pub content: EventContent,
    /// The membership the event changes: (user, member after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<(String, bool)>,
    /// Records the event's seq as this user's join seq (a private room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_seq_of: Option<String>,
}

/// A room directory implementation.
pub trait RoomStore: Send + Sync + 'static {
    /// `embedded` or `redis`.
    fn kind(&self) -> &'static str;

    /// The id of the room an alias names.
    fn room_for_alias<'a>(&'a self, alias: &'a str) -> BoxFuture<'a, Result<Option<String>, StorageError>>;

    fn room<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Option<RoomRecord>, StorageError>>;

    /// Creates the room for `record.alias` (or, without an alias, for
    /// `record.room_id`) unless another request (of any process) created it
    /// first; either way returns the room that now owns the alias (the id).
    /// Durable on return.
    fn create<'a>(&'a self, record: &'a RoomRecord) -> BoxFuture<'a, Result<RoomRecord, StorageError>>;

    /// Writes `record` in place of the stored record of its room if that
    /// one's `rev` is still `record.rev - 1`, and with it (atomically) the
    /// membership `changes` (user, member?) of the room; false (nothing
    /// written) when another change came first or the room is unknown.
    /// Durable on return.
    fn replace<'a>(
        &'a self,
        record: &'a RoomRecord,
        changes: &'a [(String, bool)],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Adds (or removes) a room to (from) a user's invite index. The index
    /// may hold more than the records' invites: [`RoomStore::invites_of`]
    /// checks each entry against its record.
    fn index_invite<'a>(
        &'a self,
        user_id: &'a str,
        room_id: &'a str,
        invited: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Rooms whose record has a pending invite of the user.
    fn invites_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<RoomRecord>, StorageError>>;

    fn is_member<'a>(&'a self, room_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Applies several membership changes of one room (user, member?) in
    /// both directions; durable on return.
    fn set_members<'a>(
        &'a self,
        room_id: &'a str,
        changes: &'a [(String, bool)],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Every room the directory knows.
    fn all(&self) -> BoxFuture<'_, Result<Vec<RoomRecord>, StorageError>>;

    /// Member user ids, sorted.
    fn members<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Vec<String>, StorageError>>;

    /// Removes a room: its record, its alias (when it still names this
    /// room) and every membership, both ways; false when there was no such
    /// room. Durable on return.
    fn delete<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Rooms a user is in.
    fn rooms_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<RoomRecord>, StorageError>>;
}

/// Records (or removes) one membership; durable on return.
pub async fn set_member(
    store: &dyn RoomStore,
    room_id: &str,
    user_id: &str,
    member: bool,
    now_ms: u64,
) -> Result<(), StorageError> {
    store.set_members(room_id, &[(user_id.to_owned(), member)], now_ms).await
}

//! The room directory: aliases, room records and membership (both ways:
//! room → members and user → rooms). One trait, [`RoomStore`], with two
//! implementations chosen at start-up like the room log's: [`embedded`]
//! (sled, one process) and [`redis`] (Redis, shared by every process of a
//! server started with `--redis`).
//!
//! An implementation acknowledges a change only once its store has it
//! (sled: synced; Redis: answered), so a later read by any process that
//! uses the same store sees it.

pub mod embedded;
pub mod redis;

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::events::BoxFuture;

pub use embedded::EmbeddedRooms;
pub use redis::RedisRooms;

/// A room as the directory knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomRecord {
    pub room_id: String,
    pub alias: String,
    pub created_ms: u64,
}

/// A room directory implementation.
pub trait RoomStore: Send + Sync + 'static {
    /// `embedded` or `redis`.
    fn kind(&self) -> &'static str;

    /// The id of the room an alias names.
    fn room_for_alias<'a>(&'a self, alias: &'a str) -> BoxFuture<'a, Result<Option<String>, StorageError>>;

    fn room<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Option<RoomRecord>, StorageError>>;

    /// Creates the room for `record.alias` unless another request (of any
    /// process) created it first; either way returns the room that now owns
    /// the alias. Durable on return.
    fn create<'a>(&'a self, record: &'a RoomRecord) -> BoxFuture<'a, Result<RoomRecord, StorageError>>;

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

//! Read receipts and unread counts: how far each member has read each room
//! (`POST /rooms/{room}/read`, the `read` frame), stored in
//! `storage/receipts` so it survives restarts and is the same on every
//! device and process, and told to the room's subscribers as `receipt`
//! frames (through `Live`, so every process's subscribers get it).
//!
//! An unread count is computed when asked, from the room log: the `message`
//! events after the user's mark that others sent and that were not
//! redacted (a deleted message is nothing to read), read forward in pages and
//! cut off at [`UNREAD_MAX`] (a client shows "99+") or after
//! [`UNREAD_SCAN_MAX`] events. Nothing is counted on the send path.

use std::sync::Arc;

use super::error::{Error, Result};
use super::live::Live;
use super::rooms::{Room, Rooms};
use crate::protocol::events::{Event, EventType};
use crate::protocol::limits::{UNREAD_MAX, UNREAD_SCAN_MAX};
use crate::protocol::{ErrCode, RoomId, RoomRef, UserId};
use crate::storage::events::{EventLog, Range};
use crate::storage::receipts::{ReadMark, ReceiptStore};

/// Events read per page while counting.
const PAGE: usize = 256;

/// Whether an event counts as unread for `user`: a message of someone else
/// that still has its body (`redaction` events are not messages).
fn counts_unread(e: &Event, user: &UserId) -> bool {
    e.kind == EventType::Message && e.sender != *user && !e.content.redacted
}

pub struct Receipts {
    store: Arc<dyn ReceiptStore>,
    rooms: Arc<Rooms>,
    log: Arc<dyn EventLog>,
    live: Arc<Live>,
}

impl Receipts {
    pub fn new(store: Arc<dyn ReceiptStore>, rooms: Arc<Rooms>, log: Arc<dyn EventLog>, live: Arc<Live>) -> Self {
        Self { store, rooms, log, live }
    }

    /// Marks the room read up to `seq` (of the log's current epoch). A mark
    /// never moves back: an older `seq` changes nothing and is not an error.
    /// A `seq` past the room's latest is refused (`invalid_field`).
    pub async fn mark_read(&self, user: &UserId, r: &RoomRef, seq: u64) -> Result<Room> {
        let room = self.rooms.resolve_member(user, r).await?;
        let head = self.log.head(&room.room_id).await?;
        if seq > head.latest {
            return Err(Error::refused(
                ErrCode::InvalidField,
                format!("seq: {seq} is past the room's latest seq, {}", head.latest),
            ));
        }
        let mark = ReadMark { epoch: head.epoch.to_string(), seq };
        if self.store.advance(room.room_id.as_str(), user.as_str(), &mark).await? {
            self.live.receipt(&room.room_id, user, seq);
        }
        Ok(room)
    }

    /// A read mark of a user of another server, told by their server
    /// (§11.7): stored and told to subscribers as for local users, when the
    /// user is a member of a room this server knows (else ignored). The seq
    /// is of the home server's log, which replicas share; one this server's
    /// copy has not reached yet is kept as is.
    pub async fn mark_from_federation(&self, room_id: &RoomId, user: &UserId, seq: u64) -> Result<()> {
        if !self.rooms.is_member(room_id, user).await? {
            return Ok(());
        }
        let head = self.log.head(room_id).await?;
        let mark = ReadMark { epoch: head.epoch.to_string(), seq };
        if self.store.advance(room_id.as_str(), user.as_str(), &mark).await? {
            self.live.receipt(room_id, user, seq);
        }
        Ok(())
    }

    /// Messages others sent in the room after the user's mark (all of the
    /// current epoch when there is no mark, or one of an older epoch), at
    /// most [`UNREAD_MAX`].
    pub async fn unread(&self, user: &UserId, room: &Room) -> Result<u64> {
        let mark = self.store.get(room.room_id.as_str(), user.as_str()).await?;
        let head = self.log.head(&room.room_id).await?;
        let mut after = match &mark {
            Some(m) if *m.epoch == *head.epoch => m.seq,
            _ => 0,
        };
        let (mut count, mut scanned) = (0, 0);
        while after < head.latest && count < UNREAD_MAX && scanned < UNREAD_SCAN_MAX {
            let page = self.log.read(&room.room_id, Range::After(after), PAGE).await?;
            if page.head.epoch != head.epoch {
                break; // started again meanwhile: the next ask counts the new epoch
            }
            let Some(last) = page.events.last() else { break };
            after = last.seq;
            scanned += page.events.len();
            count += page.events.iter().filter(|e| counts_unread(e, user)).count();
        }
        Ok(count.min(UNREAD_MAX) as u64)
    }
}

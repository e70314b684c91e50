//! Events: idempotent sends and history pages. Membership, message rules and
//! the send rate limit are checked here; ordering, durability and
//! idempotency records are the room log's.

use std::future::Future;
use std::sync::Arc;

use super::accounts::Session;
use super::error::{Error, Result};
use super::ratelimit::{self, RateLimits};
use super::rooms::{Room, Rooms};
use crate::protocol::events::EventType;
use crate::protocol::limits::{HISTORY_LIMIT_MAX, MAX_MESSAGE_BYTES, TXN_ID_MAX};
use crate::protocol::rooms::{MessagesResponse, SendResponse};
use crate::protocol::{ErrCode, RoomRef};
use crate::storage::events::{AppendOutcome, EventLog, LogHead, NewEvent, Page, Range, Txn};

pub struct Events {
    rooms: Arc<Rooms>,
    log: Arc<dyn EventLog>,
    limits: Arc<RateLimits>,
}

/// Whether a `txn_id` is 1-64 bytes of `A-Z a-z 0-9 . _ ~ -`.
pub fn valid_txn_id(txn_id: &str) -> bool {
    !txn_id.is_empty()
        && txn_id.len() <= TXN_ID_MAX
        && txn_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

impl Events {
    pub fn new(rooms: Arc<Rooms>, log: Arc<dyn EventLog>, limits: Arc<RateLimits>) -> Self {
        Self { rooms, log, limits }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Checks and sequences a send now; the returned future resolves once the
    /// event is durable. Two sends begun one after the other keep their order.
    /// `txn_id` must already be valid (see [`valid_txn_id`]).
    pub fn begin_send(
        &self,
        session: &Session,
        room: &RoomRef,
        txn_id: &str,
        body: String,
    ) -> Result<(Room, impl Future<Output = Result<SendResponse>> + Send + 'static + use<>)> {
        if body.is_empty() || body.len() > MAX_MESSAGE_BYTES {
            return Err(Error::refused(
                ErrCode::MessageTooLarge,
                format!("a message body is 1 to {MAX_MESSAGE_BYTES} bytes; this one is {}", body.len()),
            ));
        }
        let room = self.rooms.resolve_member(&session.user_id, room)?;
        ratelimit::check(&self.limits.send_by_user, session.user_id.as_str())?;
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref().try_into().expect("32 bytes");
        let txn = Txn { device: format!("{}\0{}", session.user_id, session.device_id), txn_id: txn_id.to_owned(), fingerprint };
        let pending = self.log.append(
            &room.room_id,
            NewEvent { kind: EventType::Message, sender: session.user_id.clone(), body: Some(body), txn: Some(txn) },
        );
        let txn_id = txn_id.to_owned();
        Ok((room, async move {
            match pending.await? {
                AppendOutcome::Stored { event_id, seq } | AppendOutcome::Repeated { event_id, seq } => {
                    Ok(SendResponse { event_id, seq })
                }
                AppendOutcome::Conflict => Err(Error::refused(
                    ErrCode::TxnConflict,
                    format!("txn_id {txn_id} was already used in this room with a different body"),
                )),
            }
        }))
    }

    pub async fn messages(&self, session: &Session, room: &RoomRef, range: Range, limit: u32) -> Result<MessagesResponse> {
        if limit == 0 || limit > HISTORY_LIMIT_MAX {
            return Err(Error::refused(ErrCode::InvalidParam, format!("limit: 1 to {HISTORY_LIMIT_MAX}")));
        }
        let room = self.rooms.resolve_member(&session.user_id, room)?;
        let Page { head, events } = self.log.read(&room.room_id, range, limit as usize).await?;
        Ok(MessagesResponse {
            room_id: room.room_id,
            epoch: head.epoch.to_string(),
            events,
            earliest_seq: head.earliest,
            latest_seq: head.latest,
        })
    }

    pub async fn head(&self, room: &Room) -> Result<LogHead> {
        Ok(self.log.head(&room.room_id).await?)
    }

    pub async fn read(&self, room: &Room, range: Range, limit: usize) -> Result<Page> {
        Ok(self.log.read(&room.room_id, range, limit).await?)
    }
}

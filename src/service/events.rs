//! Events: idempotent sends and history pages. Membership, message rules and
//! the send rate limit are checked here; ordering, durability and
//! idempotency records are the room log's.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::Either;

use super::accounts::Session;
use super::error::{Error, Result};
use super::live::Live;
use super::ratelimit::{self, RateLimits};
use super::rooms::{Room, Rooms};
use crate::metrics::{self, EventMetrics};
use crate::protocol::events::{EventContent, EventType};
use crate::protocol::federation::FedSendRequest;
use crate::protocol::limits::{EDIT_WINDOW, HISTORY_LIMIT_MAX, MAX_MESSAGE_BYTES, REASON_MAX_BYTES, TXN_ID_MAX};
use crate::protocol::rooms::{MessagesResponse, Role, SendResponse};
use crate::protocol::{ErrCode, RoomId, RoomRef, ServerName};
use crate::storage::StorageError;
use crate::storage::events::{AppendOutcome, EventLog, LogHead, NewEvent, Page, Range, Txn};

/// Events read per step while looking for a redaction's target.
const REDACT_SCAN_PAGE: usize = 1000;

/// What a redaction erases: its target, found in one epoch of a room's
/// log, and the seqs of the target and of every edit of it there.
pub struct RedactionTargets {
    pub epoch: String,
    pub target: crate::protocol::events::Event,
    pub seqs: Vec<u64>,
}

/// Finds the event `event_id` in a room's log, the current epoch first
/// and then every older one the log keeps, reading back from the newest
/// event (so the cost grows with the events after the target). Edits come
/// after their original, so by the time the target is found every edit of
/// it has been seen.
pub async fn redaction_targets(
    log: &dyn EventLog,
    room: &RoomId,
    event_id: &str,
) -> std::result::Result<Option<RedactionTargets>, StorageError> {
    let current = log.head(room).await?.epoch.to_string();
    let older: Vec<String> = log.archived_epochs(room).await?.into_iter().filter(|e| *e != current).collect();
    let epochs = std::iter::once(current).chain(older);
    for epoch in epochs {
        let mut edits = Vec::new();
        let mut range = Range::Latest;
        loop {
            let Some(page) = log.read_epoch(room, &epoch, range, REDACT_SCAN_PAGE).await? else { break };
            for e in page.events.iter().rev() {
                if e.event_id == event_id {
                    let mut seqs = vec![e.seq];
                    seqs.append(&mut edits);
                    return Ok(Some(RedactionTargets { epoch, target: e.clone(), seqs }));
                }
                if e.content.replaces.as_deref() == Some(event_id) {
                    edits.push(e.seq);
                }
            }
            match page.events.first() {
                Some(first) if first.seq > page.head.earliest => range = Range::Before(first.seq),
                _ => break,
            }
        }
    }
    Ok(None)
}

/// Proof that a send took its token from the user's rate-limit bucket.
pub struct SendToken(());

pub struct Events {
    rooms: Arc<Rooms>,
    log: Arc<dyn EventLog>,
    limits: Arc<RateLimits>,
    metrics: EventMetrics,
    live: Arc<Live>,
}

fn check_body(body: &str) -> Result<()> {
    if body.is_empty() || body.len() > MAX_MESSAGE_BYTES {
        return Err(Error::refused(
            ErrCode::MessageTooLarge,
            format!("a message body is 1 to {MAX_MESSAGE_BYTES} bytes; this one is {}", body.len()),
        ));
    }
    Ok(())
}

/// Whether a `txn_id` is 1-64 bytes of `A-Z a-z 0-9 . _ ~ -`.
pub fn valid_txn_id(txn_id: &str) -> bool {
    !txn_id.is_empty()
        && txn_id.len() <= TXN_ID_MAX
        && txn_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

impl Events {
    pub fn new(
        rooms: Arc<Rooms>,
        log: Arc<dyn EventLog>,
        limits: Arc<RateLimits>,
        metrics: EventMetrics,
        live: Arc<Live>,
    ) -> Self {
        Self { rooms, log, limits, metrics, live }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Takes a token from the user's send bucket (429 `rate_limited` when it
    /// is empty). Spec §3 checks rate limits before parameters and the
    /// endpoint's own checks, so a wire that checks parameters itself takes
    /// the token first and then calls [`Events::begin_send_with`].
    pub fn take_send_token(&self, user: &crate::protocol::UserId) -> Result<SendToken> {
        ratelimit::check(&self.limits.send_by_user, user.as_str())?;
        Ok(SendToken(()))
    }

    /// Checks and sequences a send; the returned future resolves once the
    /// event is durable. Two sends begun one after the other (the first
    /// `begin_send` awaited before the second is called) keep their order.
    /// `txn_id` must already be valid (see [`valid_txn_id`]). A room homed on
    /// another server is sent to through that server, which orders it.
    pub async fn begin_send(
        &self,
        session: &Session,
        room: &RoomRef,
        txn_id: &str,
        body: String,
        replaces: Option<String>,
    ) -> Result<(Room, impl Future<Output = Result<SendResponse>> + Send + 'static + use<>)> {
        let token = self.take_send_token(&session.user_id)?;
        self.begin_send_with(token, session, room, txn_id, body, replaces).await
    }

    /// [`Events::begin_send`] with the rate-limit token already taken.
    pub async fn begin_send_with(
        &self,
        _token: SendToken,
        session: &Session,
        room: &RoomRef,
        txn_id: &str,
        body: String,
        replaces: Option<String>,
    ) -> Result<(Room, impl Future<Output = Result<SendResponse>> + Send + 'static + use<>)> {
        check_body(&body)?;
        let room = self.rooms.resolve_member(&session.user_id, room).await?;
        if replaces.is_some() && self.rooms.is_remote(&room.room_id) {
            return Err(Error::refused(
                ErrCode::RemoteUserUnsupported,
                format!("{} is homed on another server; edits are not federated yet", room.label()),
            ));
        }
        if let Some(id) = &replaces {
            self.check_edit(&session.user_id, &room, id).await?;
        }
        // A message ends its sender's typing in the room (spec §8).
        self.live.message_sent(&room.room_id, &session.user_id);
        if self.rooms.is_remote(&room.room_id) {
            let fed = self
                .rooms
                .federation()
                .cloned()
                .ok_or_else(|| Error::refused(ErrCode::RoomNotFound, "federation is off"))?;
            let req = FedSendRequest { sender: session.user_id.clone(), device_id: session.device_id.clone(), body };
            let (room_id, txn_id) = (room.room_id.clone(), txn_id.to_owned());
            let remote =
                async move { fed.send(&room_id, &txn_id, &req).await.map_err(|f| f.into_error(room_id.server())) };
            return Ok((room, Either::Left(remote)));
        }
        let local =
            self.append_message(&room.room_id, session.user_id.clone(), &session.device_id, txn_id, body, replaces);
        Ok((room, Either::Right(local)))
    }

    /// A message from a user of another server to a room homed here.
    pub async fn send_from_federation(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        txn_id: &str,
        req: FedSendRequest,
    ) -> Result<SendResponse> {
        if req.sender.server() != origin.as_str() {
            return Err(Error::refused(ErrCode::UnknownServer, format!("{origin} cannot send for {}", req.sender)));
        }
        if req.device_id.is_empty() || req.device_id.len() > 64 || req.device_id.contains('\0') {
            return Err(Error::refused(ErrCode::InvalidField, "device_id: 1 to 64 bytes"));
        }
        if !valid_txn_id(txn_id) {
            return Err(Error::refused(ErrCode::InvalidParam, "txn_id: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -"));
        }
        check_body(&req.body)?;
        let room = self.rooms.resolve_member(&req.sender, &RoomRef::Id(room_id.clone())).await?;
        if self.rooms.is_remote(&room.room_id) {
            return Err(Error::refused(ErrCode::RoomNotFound, format!("{room_id} is not homed here")));
        }
        ratelimit::check(&self.limits.send_by_user, req.sender.as_str())?;
        self.append_message(&room.room_id, req.sender, &req.device_id, txn_id, req.body, None).await
    }

    /// An edit names the sender's own message, one of the room's last
    /// [`EDIT_WINDOW`] events, that is not itself an edit.
    async fn check_edit(&self, user: &crate::protocol::UserId, room: &Room, id: &str) -> Result<()> {
        let page = self.log.read(&room.room_id, Range::Latest, EDIT_WINDOW).await?;
        let Some(target) = page.events.iter().find(|e| e.event_id == id) else {
            return Err(Error::refused(
                ErrCode::InvalidField,
                format!("replaces: no event {id} among the last {EDIT_WINDOW} of {}", room.label()),
            ));
        };
        if target.kind != EventType::Message || target.content.replaces.is_some() {
            return Err(Error::refused(ErrCode::InvalidField, "replaces: only an original message can be edited"));
        }
        if target.content.redacted {
            return Err(Error::refused(ErrCode::InvalidField, "replaces: the message was redacted"));
        }
        if target.sender != *user {
            return Err(Error::refused(ErrCode::Forbidden, "only the sender of a message may edit it"));
        }
        Ok(())
    }

    fn append_message(
        &self,
        room_id: &RoomId,
        sender: crate::protocol::UserId,
        device_id: &str,
        txn_id: &str,
        body: String,
        replaces: Option<String>,
    ) -> impl Future<Output = Result<SendResponse>> + Send + 'static + use<> {
        // An edit's fingerprint covers what it replaces too (a plain
        // message's stays v1's: its body alone).
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(body.as_bytes());
        if let Some(r) = &replaces {
            ctx.update(b"\0replaces\0");
            ctx.update(r.as_bytes());
        }
        let fingerprint = ctx.finish().as_ref().try_into().expect("32 bytes");
        let txn = Txn { device: format!("{sender}\0{device_id}"), txn_id: txn_id.to_owned(), fingerprint };
        let begun = Instant::now();
        let pending = self.log.append(
            room_id,
            NewEvent {
                kind: EventType::Message,
                sender,
                body: Some(body),
                content: Box::new(EventContent { replaces, ..EventContent::default() }),
                txn: Some(txn),
            },
        );
        let txn_id = txn_id.to_owned();
        let meter = self.metrics.clone();
        async move {
            let outcome = pending.await;
            meter.appended(
                match &outcome {
                    Ok(AppendOutcome::Stored { .. }) => metrics::AppendOutcome::Stored,
                    Ok(AppendOutcome::Repeated { .. }) => metrics::AppendOutcome::Repeated,
                    Ok(AppendOutcome::Conflict) => metrics::AppendOutcome::Conflict,
                    Err(_) => metrics::AppendOutcome::Failed,
                },
                begun.elapsed(),
            );
            match outcome? {
                AppendOutcome::Stored { event_id, seq } | AppendOutcome::Repeated { event_id, seq } => {
                    Ok(SendResponse { event_id, seq })
                }
                AppendOutcome::Conflict => Err(Error::refused(
                    ErrCode::TxnConflict,
                    format!("txn_id {txn_id} was already used in this room with a different body"),
                )),
            }
        }
    }

    /// v1.1 `PUT /rooms/{room}/redact/{event_id}/{txn_id}`: erases the body
    /// of a message (and of its edits) everywhere the room log stores it,
    /// and appends a `redaction` event. Checks, after the send token and
    /// `txn_id` the wire took and checked: `reason`, membership, a room
    /// homed here, the target (`event_not_found`, then a `message`), then
    /// who asks (its sender, or a moderator or owner). The event is
    /// appended first and the bodies erased after it, also when the
    /// `txn_id` repeats: the answer comes once both are done, and a retry
    /// of a redaction that failed half way completes it. A repeated
    /// `txn_id` naming another event is a `txn_conflict`, which erases
    /// nothing.
    pub async fn redact(
        &self,
        _token: SendToken,
        session: &Session,
        room: &RoomRef,
        event_id: &str,
        txn_id: &str,
        reason: Option<String>,
    ) -> Result<SendResponse> {
        if reason.as_ref().is_some_and(|r| r.len() > REASON_MAX_BYTES) {
            return Err(Error::refused(ErrCode::InvalidField, format!("reason: at most {REASON_MAX_BYTES} bytes")));
        }
        let room = self.rooms.resolve_member(&session.user_id, room).await?;
        if self.rooms.is_remote(&room.room_id) {
            return Err(Error::refused(
                ErrCode::RemoteUserUnsupported,
                format!("{} is homed on another server; redact there", room.label()),
            ));
        }
        let Some(found) = redaction_targets(&*self.log, &room.room_id, event_id).await? else {
            return Err(Error::refused(ErrCode::EventNotFound, format!("{} holds no event {event_id}", room.label())));
        };
        if found.target.kind != EventType::Message {
            return Err(Error::refused(
                ErrCode::InvalidField,
                format!("only messages can be redacted; {event_id} is a {} event", found.target.kind.as_str()),
            ));
        }
        if found.target.sender != session.user_id && self.rooms.role(&session.user_id, &room).await? < Role::Moderator {
            return Err(Error::refused(
                ErrCode::Forbidden,
                "only the sender of a message, or a moderator or owner of the room, may redact it",
            ));
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"redaction\0");
        ctx.update(event_id.as_bytes());
        ctx.update(&[0]);
        ctx.update(reason.as_deref().unwrap_or("").as_bytes());
        let fingerprint = ctx.finish().as_ref().try_into().expect("32 bytes");
        let txn = Txn {
            device: format!("{}\0{}", session.user_id, session.device_id),
            txn_id: txn_id.to_owned(),
            fingerprint,
        };
        let content = EventContent { redacts: Some(event_id.to_owned()), reason, ..EventContent::default() };
        let appended = self
            .log
            .append(
                &room.room_id,
                NewEvent {
                    kind: EventType::Redaction,
                    sender: session.user_id.clone(),
                    body: None,
                    content: Box::new(content),
                    txn: Some(txn),
                },
            )
            .await?;
        let (event_id_out, seq) = match appended {
            AppendOutcome::Stored { event_id, seq } | AppendOutcome::Repeated { event_id, seq } => (event_id, seq),
            AppendOutcome::Conflict => {
                return Err(Error::refused(
                    ErrCode::TxnConflict,
                    format!("txn_id {txn_id} was already used in this room with another redaction"),
                ));
            }
        };
        self.log.erase(&room.room_id, &found.epoch, &found.seqs).await?;
        Ok(SendResponse { event_id: event_id_out, seq })
    }

    /// A page of history: of the room's current epoch, or of `epoch` (an
    /// older one the log still keeps, e.g. what Redis held when the room had
    /// to start a new epoch), else 404 `epoch_not_found`.
    pub async fn messages(
        &self,
        session: &Session,
        room: &RoomRef,
        range: Range,
        limit: u32,
        epoch: Option<&str>,
    ) -> Result<MessagesResponse> {
        if limit == 0 || limit > HISTORY_LIMIT_MAX {
            return Err(Error::refused(ErrCode::InvalidParam, format!("limit: 1 to {HISTORY_LIMIT_MAX}")));
        }
        let room = self.rooms.resolve_member(&session.user_id, room).await?;
        // A private room's member reads from their join on (v1.1).
        let from = self.rooms.visible_from(&session.user_id, &room).await?;
        let range = match range {
            Range::After(n) if n + 1 < from => Range::After(from - 1),
            r => r,
        };
        let page = match epoch {
            None => self.log.read(&room.room_id, range, limit as usize).await?,
            Some(e) => self.log.read_epoch(&room.room_id, e, range, limit as usize).await?.ok_or_else(|| {
                Error::refused(ErrCode::EpochNotFound, format!("{} keeps no epoch {e:?}", room.room_id))
            })?,
        };
        let Page { head, mut events } = page;
        events.retain(|e| e.seq >= from);
        Ok(MessagesResponse {
            room_id: room.room_id,
            epoch: head.epoch.to_string(),
            events,
            earliest_seq: head.earliest.max(from),
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

//! One WebSocket connection, from `ready` to close: frames in, answers and
//! room events out. Everything for one connection runs in one task, so there
//! is no lock between reading and writing beyond the split halves.
//!
//! Exactly-once delivery rests on one rule: per subscribed room the session
//! remembers `(epoch, last seq sent)` and writes an event only if it is
//! `last + 1` in the same epoch. Older ones (the replay/live seam) are
//! skipped; a hole is filled from the log, or reported as `gap`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};

use crate::protocol::events::{Cursor, Event};
use crate::protocol::limits::{WS_ID_MAX, WS_MAX_SUBSCRIPTIONS};
use crate::protocol::ws::{CLIENT_FRAME_TYPES, ClientFrame, FrameHead, GapReason, ServerFrame, close};
use crate::protocol::{ErrCode, RoomId};
use crate::server::App;
use crate::service::Error;
use crate::service::accounts::Session;
use crate::service::events::valid_txn_id;
use crate::service::fanout::{CloseReason, Conn, Outgoing};
use crate::service::rooms::{Room, Rooms};
use crate::storage::events::Range;

type Ws = WebSocketStream<TokioIo<Upgraded>>;
type Tx = SplitSink<Ws, Message>;

/// Sends a client may have waiting for their ack at once; past it the
/// session stops reading until some complete (back-pressure, not errors).
const MAX_IN_FLIGHT: usize = 64;
const REPLAY_PAGE: usize = 256;

/// Why the session ends.
enum End {
    /// The peer is gone or the socket failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

impl From<WsError> for End {
    fn from(_: WsError) -> Self {
        End::Gone
    }
}

struct Sub {
    epoch: Arc<str>,
    last: u64,
    room: Room,
}

struct State {
    app: Arc<App>,
    tx: Tx,
    auth: Option<(Session, Arc<Conn>)>,
    subs: HashMap<RoomId, Sub>,
}

pub async fn run(ws: Ws, app: Arc<App>, preauth: Option<Session>) {
    let (tx, mut rx) = ws.split();
    let mut st = State { app: app.clone(), tx, auth: None, subs: HashMap::new() };
    let end = st.main_loop(&mut rx, preauth).await;
    if let Some((_, conn)) = &st.auth {
        for room in st.subs.keys() {
            app.services.hub.unsubscribe(room, conn);
        }
    }
    if let Err(End::Close(code, reason)) = end {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        // A peer that does not read cannot stall shutdown or this task.
        let _ = tokio::time::timeout(Duration::from_secs(2), st.tx.send(Message::Close(Some(frame)))).await;
    }
}

type Pending = FuturesOrdered<futures_util::future::BoxFuture<'static, ServerFrame>>;

impl State {
    async fn main_loop(&mut self, rx: &mut SplitStream<Ws>, preauth: Option<Session>) -> Result<(), End> {
        if let Some(session) = preauth {
            self.authenticated(session, None).await?;
        }
        let cfg = &self.app.services.config;
        let ping_every = cfg.ws_ping_interval;
        let auth_deadline = Instant::now() + cfg.ws_auth_timeout;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut pending: Pending = FuturesOrdered::new();
        let shutdown = self.app.shutdown.clone();
        loop {
            let conn = self.auth.as_ref().map(|(_, c)| c.clone());
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(End::Close(close::GOING_AWAY, "server shutting down")),
                _ = tokio::time::sleep_until(auth_deadline), if self.auth.is_none() => {
                    return Err(End::Close(close::AUTH_TIMEOUT, "authenticate within the auth timeout"));
                }
                Some(frame) = pending.next(), if !pending.is_empty() => {
                    self.write(frame).await?;
                }
                _ = async { conn.as_ref().expect("guarded").ready().await }, if conn.is_some() => {
                    self.drain(conn.as_ref().expect("guarded")).await?;
                }
                msg = rx.next(), if pending.len() < MAX_IN_FLIGHT => {
                    last_heard = Instant::now();
                    match msg {
                        None => return Err(End::Gone),
                        Some(Ok(Message::Text(text))) => self.on_text(&text, &mut pending).await?,
                        Some(Ok(Message::Binary(_))) => {
                            return Err(End::Close(close::UNSUPPORTED_DATA, "frames are JSON text"));
                        }
                        Some(Ok(Message::Close(_))) => return Err(End::Gone),
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))
                        | Some(Err(WsError::Capacity(_))) => {
                            return Err(End::Close(close::TOO_BIG, "messages are at most 65536 bytes"));
                        }
                        Some(Err(WsError::Utf8(_))) => return Err(End::Close(close::INVALID_PAYLOAD, "text frames must be UTF-8")),
                        Some(Err(WsError::Protocol(_))) => return Err(End::Close(1002, "protocol error")),
                        Some(Err(_)) => return Err(End::Gone),
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= ping_every * 2 {
                        return Err(End::Close(close::HEARTBEAT_TIMEOUT, "no answer to pings"));
                    }
                    self.send_timed(Message::Ping(Default::default())).await?;
                }
            }
        }
    }

    /// Writes one message and flushes, within the write timeout: a peer that
    /// stops reading is dropped, never waited for forever.
    async fn send_timed(&mut self, msg: Message) -> Result<(), End> {
        let limit = self.app.services.config.ws_ping_interval;
        match tokio::time::timeout(limit, self.tx.send(msg)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(End::Gone),
        }
    }

    async fn write(&mut self, frame: ServerFrame) -> Result<(), End> {
        self.send_timed(Message::text(frame.to_json())).await
    }

    async fn feed(&mut self, text: Utf8Bytes) -> Result<(), End> {
        Ok(self.tx.feed(Message::Text(text)).await?)
    }

    async fn flush(&mut self) -> Result<(), End> {
        let limit = self.app.services.config.ws_ping_interval;
        match tokio::time::timeout(limit, self.tx.flush()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(End::Gone),
        }
    }

    async fn error(&mut self, id: Option<String>, e: &Error) -> Result<(), End> {
        if e.code() == ErrCode::Internal {
            tracing::error!(error = %e, "internal error on websocket");
        }
        self.write(ServerFrame::Error { id, errcode: e.code(), error: e.public_message(), retry_after_ms: e.retry_after_ms() })
            .await
    }

    async fn authenticated(&mut self, session: Session, id: Option<String>) -> Result<(), End> {
        let services = &self.app.services;
        let conn = Conn::new(session.user_id.clone(), session.token_hash, services.config.ws_outbound_limit);
        services.accounts.track(&conn);
        let ready = ServerFrame::Ready { id, user_id: session.user_id.clone(), device_id: session.device_id.clone() };
        self.auth = Some((session, conn));
        self.write(ready).await
    }

    /// Sends everything the hub queued for this connection.
    async fn drain(&mut self, conn: &Arc<Conn>) -> Result<(), End> {
        let items = match conn.take() {
            Ok(items) => items,
            Err(CloseReason { code, reason }) => return Err(End::Close(code, reason)),
        };
        for item in items {
            match item {
                Outgoing::Event { room, epoch, seq, frame } => {
                    let Some(sub) = self.subs.get_mut(&*room) else { continue };
                    if *epoch != *sub.epoch {
                        let from = Cursor { epoch: sub.epoch.to_string(), seq: sub.last };
                        let to = Cursor { epoch: epoch.to_string(), seq: 0 };
                        sub.epoch = epoch.clone();
                        sub.last = 0;
                        let gap = ServerFrame::Gap { room_id: (*room).clone(), from, to, reason: GapReason::EpochChanged };
                        self.feed(Utf8Bytes::from(gap.to_json())).await?;
                    }
                    let sub = self.subs.get_mut(&*room).expect("present");
                    if seq <= sub.last {
                        continue; // already sent by the replay
                    }
                    if seq > sub.last + 1 {
                        // A hole (the hub never skips, but a log may restart
                        // or trim under us): fill it from the log.
                        let mut sub = self.subs.remove(&*room).expect("present");
                        let filled = self.replay(&mut sub, seq - 1).await;
                        let caught_up = sub.last + 1 == seq && *sub.epoch == *epoch;
                        self.subs.insert((*room).clone(), sub);
                        filled?;
                        if !caught_up {
                            continue;
                        }
                    }
                    self.feed(frame).await?;
                    self.subs.get_mut(&*room).expect("present").last = seq;
                }
                Outgoing::Left { room } => {
                    if self.subs.remove(&*room).is_some() {
                        let f = ServerFrame::Unsubscribed { id: None, room_id: (*room).clone(), reason: Some("left".into()) };
                        self.feed(Utf8Bytes::from(f.to_json())).await?;
                    }
                }
            }
        }
        self.flush().await
    }

    /// Sends the log's events after `sub.last` up to `until`, with `gap`
    /// first wherever the log can no longer give them.
    async fn replay(&mut self, sub: &mut Sub, until: u64) -> Result<(), End> {
        let app = self.app.clone();
        let events = &app.services.events;
        let mut until = until;
        loop {
            if sub.last >= until {
                break;
            }
            let page = match events.read(&sub.room, Range::After(sub.last), REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    self.error(None, &e).await?;
                    return Err(End::Close(close::INTERNAL, "room log unavailable; resume later"));
                }
            };
            let head = &page.head;
            if *head.epoch != *sub.epoch {
                self.gap(sub, &head.epoch, head.earliest - 1, GapReason::EpochChanged).await?;
                until = head.latest;
                continue;
            }
            if head.earliest > sub.last + 1 {
                let epoch = head.epoch.clone();
                self.gap(sub, &epoch, head.earliest - 1, GapReason::Trimmed).await?;
                continue;
            }
            if page.events.is_empty() {
                break;
            }
            for ev in &page.events {
                if ev.seq > until {
                    break;
                }
                self.feed(Utf8Bytes::from(event_frame(&sub.room.room_id, &sub.epoch, ev))).await?;
                sub.last = ev.seq;
            }
            self.flush().await?;
            if page.events.last().is_some_and(|e| e.seq >= until) {
                break;
            }
        }
        self.flush().await
    }

    async fn gap(&mut self, sub: &mut Sub, epoch: &Arc<str>, to_seq: u64, reason: GapReason) -> Result<(), End> {
        let from = Cursor { epoch: sub.epoch.to_string(), seq: sub.last };
        let to = Cursor { epoch: epoch.to_string(), seq: to_seq };
        sub.epoch = epoch.clone();
        sub.last = to_seq;
        let f = ServerFrame::Gap { room_id: sub.room.room_id.clone(), from, to, reason };
        self.feed(Utf8Bytes::from(f.to_json())).await
    }

    async fn on_text(&mut self, text: &str, pending: &mut Pending) -> Result<(), End> {
        let frame = match parse_frame(text) {
            Ok(f) => f,
            Err((id, e)) => return self.error(id, &e).await,
        };
        let authed = self.auth.is_some();
        match frame {
            ClientFrame::Auth { id, token } => {
                if authed {
                    return self.error(id, &Error::refused(ErrCode::AlreadyAuthenticated, "already authenticated")).await;
                }
                match self.app.services.accounts.authenticate(&token) {
                    Ok(session) => self.authenticated(session, id).await,
                    Err(e) => {
                        self.error(id, &e).await?;
                        Err(End::Close(close::UNAUTHORIZED, "authentication failed"))
                    }
                }
            }
            ClientFrame::Ping { id } => self.write(ServerFrame::Pong { id }).await,
            other if !authed => {
                let id = frame_id(&other);
                self.error(id, &Error::refused(ErrCode::NotAuthenticated, "send an auth frame first")).await
            }
            ClientFrame::Join { id, room } => {
                let user = self.session().user_id.clone();
                let app = self.app.clone();
                match async { app.services.rooms.join(&user, &Rooms::parse_ref(&room)?).await }.await {
                    Ok(r) => self.write(ServerFrame::Joined { id, room_id: r.room_id, alias: r.alias }).await,
                    Err(e) => self.error(id, &e).await,
                }
            }
            ClientFrame::Leave { id, room } => {
                let user = self.session().user_id.clone();
                let app = self.app.clone();
                match async { app.services.rooms.leave(&user, &Rooms::parse_ref(&room)?).await }.await {
                    Ok(r) => self.write(ServerFrame::Left { id, room_id: r.room_id }).await,
                    Err(e) => self.error(id, &e).await,
                }
            }
            ClientFrame::Subscribe { id, room, since } => self.subscribe(id, &room, since).await,
            ClientFrame::Unsubscribe { id, room } => match Rooms::parse_ref(&room).and_then(|r| self.app.services.rooms.resolve(&r)) {
                Ok(r) => {
                    let conn = self.conn().clone();
                    self.app.services.hub.unsubscribe(&r.room_id, &conn);
                    self.subs.remove(&r.room_id);
                    self.write(ServerFrame::Unsubscribed { id, room_id: r.room_id, reason: None }).await
                }
                Err(e) => self.error(id, &e).await,
            },
            ClientFrame::Send { id, room, txn_id, body } => {
                if !valid_txn_id(&txn_id) {
                    let e = Error::refused(ErrCode::InvalidField, "txn_id: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -");
                    return self.error(id, &e).await;
                }
                let begun = Rooms::parse_ref(&room)
                    .and_then(|room| self.app.services.events.begin_send(self.session(), &room, &txn_id, body));
                match begun {
                    Ok((r, fut)) => {
                        pending.push_back(Box::pin(async move {
                            match fut.await {
                                Ok(a) => ServerFrame::Ack { id, room_id: r.room_id, event_id: a.event_id, seq: a.seq },
                                Err(e) => ServerFrame::Error {
                                    id,
                                    errcode: e.code(),
                                    error: e.public_message(),
                                    retry_after_ms: e.retry_after_ms(),
                                },
                            }
                        }));
                        Ok(())
                    }
                    Err(e) => self.error(id, &e).await,
                }
            }
        }
    }

    fn session(&self) -> &Session {
        &self.auth.as_ref().expect("authenticated").0
    }

    fn conn(&self) -> &Arc<Conn> {
        &self.auth.as_ref().expect("authenticated").1
    }

    async fn subscribe(&mut self, id: Option<String>, room: &str, since: Option<Cursor>) -> Result<(), End> {
        let app = self.app.clone();
        let services = &app.services;
        let resolved = Rooms::parse_ref(room).and_then(|r| services.rooms.resolve_member(&self.session().user_id, &r));
        let room = match resolved {
            Ok(r) => r,
            Err(e) => return self.error(id, &e).await,
        };
        if !self.subs.contains_key(&room.room_id) && self.subs.len() >= WS_MAX_SUBSCRIPTIONS {
            let e = Error::refused(ErrCode::TooManySubscriptions, format!("at most {WS_MAX_SUBSCRIPTIONS} subscriptions"));
            return self.error(id, &e).await;
        }
        // Subscribe to live events before reading the head: whatever is
        // appended from here on is queued, and the seq filter drops what the
        // replay already sent. That is the whole seam.
        self.subs.remove(&room.room_id);
        let conn = self.conn().clone();
        services.hub.subscribe(&room.room_id, &conn);
        let head = match services.events.head(&room).await {
            Ok(h) => h,
            Err(e) => {
                services.hub.unsubscribe(&room.room_id, &conn);
                return self.error(id, &e).await;
            }
        };
        let mut sub = Sub { epoch: head.epoch.clone(), last: head.latest, room: room.clone() };
        if let Some(since) = since {
            if *since.epoch == *head.epoch {
                if since.seq > head.latest {
                    services.hub.unsubscribe(&room.room_id, &conn);
                    let e = Error::refused(
                        ErrCode::InvalidField,
                        format!("since.seq {} is past the room's last seq {}", since.seq, head.latest),
                    );
                    return self.error(id, &e).await;
                }
                sub.last = since.seq;
            } else {
                // The client's epoch is not this log's: say so, then give
                // everything the current epoch still has.
                sub.epoch = since.epoch.as_str().into();
                sub.last = since.seq;
                let epoch = head.epoch.clone();
                self.gap(&mut sub, &epoch, head.earliest - 1, GapReason::EpochChanged).await?;
            }
            self.replay(&mut sub, head.latest).await?;
        }
        let caught_up =
            ServerFrame::CaughtUp { id, room_id: room.room_id.clone(), epoch: sub.epoch.to_string(), seq: sub.last };
        self.subs.insert(room.room_id.clone(), sub);
        self.feed(Utf8Bytes::from(caught_up.to_json())).await?;
        self.flush().await
    }
}

fn event_frame(room: &RoomId, epoch: &str, ev: &Event) -> String {
    ServerFrame::Event { room_id: room.clone(), epoch: epoch.to_owned(), event: ev.clone() }.to_json()
}

fn frame_id(f: &ClientFrame) -> Option<String> {
    match f {
        ClientFrame::Auth { id, .. }
        | ClientFrame::Join { id, .. }
        | ClientFrame::Leave { id, .. }
        | ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Send { id, .. }
        | ClientFrame::Ping { id } => id.clone(),
    }
}

/// Parses a client frame, sorting failures into the spec's errcodes and
/// keeping the frame's `id` (when it has a usable one) for the answer.
fn parse_frame(text: &str) -> Result<ClientFrame, (Option<String>, Error)> {
    let head: FrameHead = crate::http::parse_object(text.as_bytes()).map_err(|e| (None, e))?;
    let id = head.id.as_ref().and_then(|v| v.as_str()).map(str::to_owned);
    let Some(kind) = head.kind else {
        return Err((id, Error::refused(ErrCode::InvalidField, "type: missing")));
    };
    if !CLIENT_FRAME_TYPES.contains(&kind.as_ref()) {
        return Err((id, Error::refused(ErrCode::UnknownType, format!("unknown frame type {kind:?}"))));
    }
    if id.as_ref().is_some_and(|i| i.len() > WS_ID_MAX) {
        return Err((None, Error::refused(ErrCode::InvalidField, format!("id: at most {WS_ID_MAX} bytes"))));
    }
    crate::http::parse_object(text.as_bytes()).map_err(|e| (id, e))
}

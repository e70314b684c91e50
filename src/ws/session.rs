//! One WebSocket connection, from `ready` to close: frames in, answers and
//! room events out. Everything for one connection runs in one task, so there
//! is no lock between reading and writing beyond the split halves.
//!
//! Exactly-once delivery rests on one rule: per subscribed room the session
//! remembers `(epoch, last seq sent)` and writes an event only if it is
//! `last + 1` in the same epoch. Older ones (the replay/live seam) are
//! skipped; a hole is filled from the log, or reported as `gap`.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::time::Instant;
use wsframe::OpCode;

use super::close_code;
use super::io::{Data, End, Io, Stream};
use crate::app::App;
use crate::protocol::events::Cursor;
use crate::protocol::events::Range;
use crate::protocol::limits::WS_MAX_SUBSCRIPTIONS;
use crate::protocol::ws::{ClientFrame, EventFrame, GapReason, ServerFrame, close, parse_client_frame};
use crate::protocol::{ErrCode, RoomAlias, RoomId, RoomRef};
use crate::service::Error;
use crate::service::accounts::Session;
use crate::service::events::valid_txn_id;
use crate::service::fanout::{CloseReason, Conn, Outgoing};
use crate::service::rooms::{Room, Rooms};

/// Sends a client may have waiting for their ack at once; past it the
/// session stops reading until some complete (back-pressure, not errors).
const MAX_IN_FLIGHT: usize = 64;
const REPLAY_PAGE: usize = 256;
/// How long a close frame may take to get out to a peer that is not reading.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

struct Sub {
    /// The hub's shared id for the room: events carry the same `Arc`, so
    /// finding their subscription is a pointer comparison.
    key: Arc<RoomId>,
    epoch: Arc<str>,
    last: u64,
    room: Room,
}

/// A connection's subscriptions: few per connection (at most 256), looked up
/// for every event, so a vector scanned by pointer beats hashing the id.
#[derive(Default)]
struct Subs(Vec<Sub>);

impl Subs {
    fn position(&self, room: &RoomId) -> Option<usize> {
        self.0.iter().position(|s| std::ptr::eq(&*s.key, room) || *s.key == *room)
    }
    fn get_mut(&mut self, room: &RoomId) -> Option<&mut Sub> {
        let i = self.position(room)?;
        Some(&mut self.0[i])
    }
    fn remove(&mut self, room: &RoomId) -> Option<Sub> {
        let i = self.position(room)?;
        Some(self.0.swap_remove(i))
    }
    fn insert(&mut self, sub: Sub) {
        self.remove(&sub.key.clone());
        self.0.push(sub);
    }
    fn contains(&self, room: &RoomId) -> bool {
        self.position(room).is_some()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// What woke the session.
enum Wake {
    Shutdown,
    AuthTimeout,
    Written(Result<(), End>),
    Answer(ServerFrame),
    Queued,
    Read(Result<bool, End>),
    Heartbeat,
}

struct State<S> {
    app: Arc<App>,
    io: Io<S>,
    auth: Option<(Session, Arc<Conn>)>,
    subs: Subs,
}

/// Runs the connection to its end; returns the close code sent (None when
/// the peer was gone first).
pub async fn run<S: Stream>(io: Io<S>, app: Arc<App>, preauth: Option<Session>) -> Option<u16> {
    let mut st = State { app: app.clone(), io, auth: None, subs: Subs::default() };
    let end = st.main_loop(preauth).await.err().unwrap_or(End::Gone);
    if let Some((session, conn)) = &st.auth {
        for sub in &st.subs.0 {
            app.services.hub.unsubscribe(&sub.key, conn);
        }
        app.services.live.disconnected(&session.user_id);
    }
    // A peer that does not read gets its close code once it reads again,
    // as long as that is within a heartbeat; otherwise it is dropped.
    let grace = match end {
        End::Close(close::SLOW_CONSUMER | close::HEARTBEAT_TIMEOUT, _) => {
            st.io.discard_unsent();
            app.services.config.ws_ping_interval
        }
        _ => CLOSE_GRACE,
    };
    st.io.finish(end, grace).await;
    match end {
        End::Close(code, _) => Some(code),
        End::Gone => None,
    }
}

type Pending = FuturesOrdered<futures_util::future::BoxFuture<'static, ServerFrame>>;

impl<S: Stream> State<S> {
    async fn main_loop(&mut self, preauth: Option<Session>) -> Result<(), End> {
        if let Some(session) = preauth {
            self.authenticated(session, None).await?;
        }
        let cfg = &self.app.services.config;
        let ping_every = cfg.ws_ping_interval;
        let auth_deadline = tokio::time::sleep(cfg.ws_auth_timeout);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut pending: Pending = FuturesOrdered::new();
        let token = self.app.shutdown.clone();
        let shutdown = token.cancelled();
        tokio::pin!(auth_deadline, shutdown);
        // Bytes read past the upgrade request may already hold frames.
        self.read_messages(&mut pending).await?;
        // The loop polls long-lived futures by hand instead of rebuilding a
        // `select!` on every wake-up: this runs once per delivered batch on
        // every connection, so its overhead is paid a hundred thousand times
        // a second under load. It restarts when the connection authenticates,
        // to start watching the new outbound queue.
        loop {
            let conn = self.auth.as_ref().map(|(_, c)| c.clone());
            let queued = conn.as_ref().map(|c| c.ready());
            tokio::pin!(queued);
            while self.auth.is_some() == conn.is_some() {
                let authed = conn.is_some();
                let wake = std::future::poll_fn(|cx| {
                    if shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Shutdown);
                    }
                    if !authed && auth_deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::AuthTimeout);
                    }
                    if self.io.has_unsent()
                        && let Poll::Ready(r) = self.io.poll_write(cx)
                    {
                        return Poll::Ready(Wake::Written(r));
                    }
                    if let Poll::Ready(Some(frame)) = pending.poll_next_unpin(cx) {
                        return Poll::Ready(Wake::Answer(frame));
                    }
                    if let Some(q) = queued.as_mut().as_pin_mut()
                        && q.poll(cx).is_ready()
                    {
                        return Poll::Ready(Wake::Queued);
                    }
                    if pending.len() < MAX_IN_FLIGHT
                        && let Poll::Ready(r) = self.io.poll_read(cx)
                    {
                        return Poll::Ready(Wake::Read(r));
                    }
                    if heartbeat.poll_tick(cx).is_ready() {
                        return Poll::Ready(Wake::Heartbeat);
                    }
                    Poll::Pending
                })
                .await;
                match wake {
                    Wake::Shutdown => return Err(close_code(CloseReason::Shutdown)),
                    Wake::AuthTimeout => {
                        return Err(End::Close(close::AUTH_TIMEOUT, "authenticate within the auth timeout"));
                    }
                    Wake::Written(r) => r?,
                    Wake::Answer(frame) => self.write(frame)?,
                    Wake::Queued => {
                        let c = conn.as_ref().expect("only armed with a connection");
                        queued.set(Some(c.ready()));
                        self.drain(c).await?;
                    }
                    Wake::Read(r) => {
                        last_heard = Instant::now();
                        if !r? {
                            return Err(End::Gone);
                        }
                        self.read_messages(&mut pending).await?;
                    }
                    Wake::Heartbeat => {
                        if last_heard.elapsed() >= ping_every * 2 {
                            return Err(End::Close(close::HEARTBEAT_TIMEOUT, "no answer to pings"));
                        }
                        // A ping control frame, under the bound like every byte.
                        self.io.queue(OpCode::Ping, Bytes::new())?;
                        self.io.try_flush()?;
                    }
                }
            }
        }
    }

    /// Handles every complete message already read (control frames are
    /// answered inside `next_data`).
    async fn read_messages(&mut self, pending: &mut Pending) -> Result<(), End> {
        while let Some(data) = self.io.next_data()? {
            match data {
                Data::Text(text) => self.on_text(&text, pending).await?,
                Data::Binary(_) => return Err(End::Close(close::UNSUPPORTED_DATA, "frames are JSON text")),
            }
        }
        // Pongs queued on the way go out now.
        self.io.try_flush()
    }

    /// Queues a frame and writes what the socket takes now. Over the limit,
    /// the peer is a slow consumer.
    fn write(&mut self, frame: ServerFrame) -> Result<(), End> {
        self.feed(frame)?;
        self.io.try_flush()
    }

    /// Queues without writing yet (a caller writes once for a batch).
    fn feed(&mut self, frame: ServerFrame) -> Result<(), End> {
        self.io.queue(OpCode::Text, Bytes::from(frame.to_json()))
    }

    fn error(&mut self, id: Option<String>, e: &Error) -> Result<(), End> {
        if e.code() == ErrCode::Internal {
            tracing::error!(error = %e, "internal error on websocket");
        }
        self.write(ServerFrame::Error {
            id,
            errcode: e.code(),
            error: e.public_message(),
            retry_after_ms: e.retry_after_ms(),
        })
    }

    async fn authenticated(&mut self, session: Session, id: Option<String>) -> Result<(), End> {
        let services = &self.app.services;
        let conn = Conn::new(session.user_id.clone(), session.token_hash, services.config.ws_outbound_limit);
        if let Err(e) = services.accounts.track(&conn).await {
            self.error(id, &e)?;
            return Err(End::Close(close::UNAUTHORIZED, "authentication failed"));
        }
        let ready = ServerFrame::Ready { id, user_id: session.user_id.clone(), device_id: session.device_id.clone() };
        services.live.connected(&session.user_id);
        self.auth = Some((session, conn));
        self.write(ready)
    }

    /// Sends everything the hub queued for this connection.
    async fn drain(&mut self, conn: &Arc<Conn>) -> Result<(), End> {
        let items = conn.take().map_err(close_code)?;
        for item in items {
            match item {
                Outgoing::Event { room, epoch, seq, json } => {
                    let Some(sub) = self.subs.get_mut(&room) else { continue };
                    let same_epoch = Arc::ptr_eq(&epoch, &sub.epoch) || *epoch == *sub.epoch;
                    if same_epoch {
                        // Share the hub's Arc from now on: later checks are a pointer compare.
                        sub.epoch = epoch.clone();
                        if seq == sub.last + 1 {
                            sub.last = seq;
                            self.io.push(OpCode::Text, json);
                            continue;
                        }
                        if seq <= sub.last {
                            continue; // already sent by the replay
                        }
                    }
                    self.out_of_line(&room, &epoch, seq, json).await?;
                }
                Outgoing::Left { room, reason } => {
                    if self.subs.remove(&room).is_some() {
                        // Leaving ends the user's typing there (spec §8).
                        self.app.services.live.typing(&room, &self.session().user_id, false);
                        let f = ServerFrame::Unsubscribed {
                            id: None,
                            room_id: (*room).clone(),
                            reason: Some(reason.into()),
                        };
                        self.io.push(OpCode::Text, Bytes::from(f.to_json()));
                    }
                }
                Outgoing::Room { room, json } => {
                    if self.subs.contains(&room) {
                        self.io.push(OpCode::Text, json);
                    }
                }
                Outgoing::Frame { json } => self.io.push(OpCode::Text, json),
            }
        }
        self.io.check_bound()?;
        self.io.try_flush()
    }

    /// A live event that is not simply the next one: the log started a new
    /// epoch, or there is a hole (the hub never skips, but a log may restart
    /// or trim under us). Says so with `gap` and fills what the log has.
    async fn out_of_line(&mut self, room: &Arc<RoomId>, epoch: &Arc<str>, seq: u64, json: Bytes) -> Result<(), End> {
        let mut sub = self.subs.remove(room).expect("caller found it");
        if **epoch != *sub.epoch {
            let from = Cursor { epoch: sub.epoch.to_string(), seq: sub.last };
            let to = Cursor { epoch: epoch.to_string(), seq: 0 };
            sub.epoch = epoch.clone();
            sub.last = 0;
            let gap = ServerFrame::Gap { room_id: (**room).clone(), from, to, reason: GapReason::EpochChanged };
            self.io.push(OpCode::Text, Bytes::from(gap.to_json()));
        }
        let filled = if seq > sub.last + 1 { self.replay(&mut sub, seq - 1).await } else { Ok(()) };
        if filled.is_ok() && sub.last + 1 == seq && *sub.epoch == **epoch {
            self.io.push(OpCode::Text, json);
            sub.last = seq;
        }
        self.subs.insert(sub);
        filled
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
                    self.error(None, &e)?;
                    return Err(End::Close(close::INTERNAL, "room log unavailable; resume later"));
                }
            };
            let head = &page.head;
            if *head.epoch != *sub.epoch {
                self.gap(sub, &head.epoch, head.earliest - 1, GapReason::EpochChanged)?;
                until = head.latest;
                continue;
            }
            if head.earliest > sub.last + 1 {
                let epoch = head.epoch.clone();
                self.gap(sub, &epoch, head.earliest - 1, GapReason::Trimmed)?;
                continue;
            }
            if page.events.is_empty() {
                break;
            }
            for ev in &page.events {
                if ev.seq > until {
                    break;
                }
                let f = EventFrame { room_id: &sub.room.room_id, epoch: &sub.epoch, event: ev };
                self.io.push(OpCode::Text, Bytes::from(f.to_json()));
                sub.last = ev.seq;
            }
            // Replay at the pace the peer reads, holding at most half the
            // outbound limit; a peer that stops reading for a heartbeat is gone.
            let grace = self.app.services.config.ws_ping_interval;
            self.io.flush_until(self.io.limit() / 2, grace).await?;
            if page.events.last().is_some_and(|e| e.seq >= until) {
                break;
            }
        }
        self.io.try_flush()?;
        Ok(())
    }

    fn gap(&mut self, sub: &mut Sub, epoch: &Arc<str>, to_seq: u64, reason: GapReason) -> Result<(), End> {
        let from = Cursor { epoch: sub.epoch.to_string(), seq: sub.last };
        let to = Cursor { epoch: epoch.to_string(), seq: to_seq };
        sub.epoch = epoch.clone();
        sub.last = to_seq;
        self.feed(ServerFrame::Gap { room_id: sub.room.room_id.clone(), from, to, reason })
    }

    async fn on_text(&mut self, text: &str, pending: &mut Pending) -> Result<(), End> {
        // Parsed before the auth check: a frame that is not one is
        // `malformed_json` / `invalid_field` / `unknown_type` whatever the
        // connection's state (§8).
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err((id, e)) => return self.error(id, &e.into()),
        };
        let authed = self.auth.is_some();
        match frame {
            ClientFrame::Auth { id, token } => {
                if authed {
                    return self.error(id, &Error::refused(ErrCode::AlreadyAuthenticated, "already authenticated"));
                }
                match self.app.services.accounts.authenticate(&token).await {
                    Ok(session) => self.authenticated(session, id).await,
                    Err(e) => {
                        self.error(id, &e)?;
                        Err(End::Close(close::UNAUTHORIZED, "authentication failed"))
                    }
                }
            }
            other if !authed => {
                let id = frame_id(&other);
                self.error(id, &Error::refused(ErrCode::NotAuthenticated, "send an auth frame first"))
            }
            ClientFrame::Join { id, room } => {
                let user = self.session().user_id.clone();
                let app = self.app.clone();
                match async { app.services.rooms.join(&user, &Rooms::parse_ref(&room)?).await }.await {
                    Ok(r) => {
                        app.services.live.joined(app.services.rooms.clone(), r.room_id.clone());
                        self.write(ServerFrame::Joined { id, room_id: r.room_id, alias: r.alias })
                    }
                    Err(e) => self.error(id, &e),
                }
            }
            ClientFrame::Leave { id, room } => {
                let user = self.session().user_id.clone();
                let app = self.app.clone();
                match async { app.services.rooms.leave(&user, &Rooms::parse_ref(&room)?).await }.await {
                    Ok(r) => {
                        // `left`, then at once the subscription's end (§8
                        // promises this order): the hub's own notice,
                        // queued meanwhile, then finds no subscription.
                        self.write(ServerFrame::Left { id, room_id: r.room_id.clone() })?;
                        self.app.services.live.typing(&r.room_id, &user, false);
                        match self.subs.remove(&r.room_id) {
                            Some(_) => self.write(ServerFrame::Unsubscribed {
                                id: None,
                                room_id: r.room_id,
                                reason: Some("left".into()),
                            }),
                            None => Ok(()),
                        }
                    }
                    Err(e) => self.error(id, &e),
                }
            }
            ClientFrame::Subscribe { id, room, since } => self.subscribe(id, &room, since).await,
            ClientFrame::Unsubscribe { id, room } => {
                let resolved = match Rooms::parse_ref(&room) {
                    Ok(r) => self.app.services.rooms.resolve(&r).await,
                    Err(e) => Err(e),
                };
                match resolved {
                    Ok(r) => {
                        let conn = self.conn().clone();
                        self.app.services.hub.unsubscribe(&r.room_id, &conn);
                        self.subs.remove(&r.room_id);
                        self.write(ServerFrame::Unsubscribed { id, room_id: r.room_id, reason: None })
                    }
                    Err(e) => self.error(id, &e),
                }
            }
            ClientFrame::Ping { id } => self.write(ServerFrame::Pong { id }),
            ClientFrame::Typing { id, room, typing } => match self.subscribed(&room) {
                Ok(room_id) => {
                    let user = self.session().user_id.clone();
                    self.app.services.live.typing(&room_id, &user, typing);
                    Ok(())
                }
                Err(e) => self.error(id, &e),
            },
            ClientFrame::Read { id, room, seq } => {
                let user = self.session().user_id.clone();
                let app = self.app.clone();
                match async { app.services.receipts.mark_read(&user, &Rooms::parse_ref(&room)?, seq).await }.await {
                    Ok(_) => Ok(()),
                    Err(e) => self.error(id, &e),
                }
            }
            ClientFrame::Send { id, room, txn_id, body, replaces } => {
                if !valid_txn_id(&txn_id) {
                    let e = Error::refused(ErrCode::InvalidField, "txn_id: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -");
                    return self.error(id, &e);
                }
                let begun = match Rooms::parse_ref(&room) {
                    Ok(room) => {
                        self.app.services.events.begin_send(self.session(), &room, &txn_id, body, replaces).await
                    }
                    Err(e) => Err(e),
                };
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
                    Err(e) => self.error(id, &e),
                }
            }
        }
    }

    /// The subscribed room `raw` names, found without I/O: a `typing`
    /// frame may come a thousand times a second, so it costs no directory
    /// read (a subscription already proved membership).
    fn subscribed(&self, raw: &str) -> Result<RoomId, Error> {
        let r = Rooms::parse_ref(raw)?;
        let server = &self.app.services.config.server_name;
        let found = self.subs.0.iter().find(|s| match &r {
            RoomRef::Id(id) => s.room.room_id == *id,
            RoomRef::Alias(a) => s.room.alias.as_ref() == Some(a),
            RoomRef::Name(n) => s.room.alias.as_ref() == Some(&RoomAlias::new(n, server)),
        });
        found.map(|s| s.room.room_id.clone()).ok_or_else(|| {
            Error::refused(ErrCode::NotSubscribed, format!("{raw:?}: subscribe to the room on this connection first"))
        })
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
        let resolved = match Rooms::parse_ref(room) {
            Ok(r) => services.rooms.resolve_member(&self.session().user_id, &r).await,
            Err(e) => Err(e),
        };
        let room = match resolved {
            Ok(r) => r,
            Err(e) => return self.error(id, &e),
        };
        if !self.subs.contains(&room.room_id) && self.subs.len() >= WS_MAX_SUBSCRIPTIONS {
            let e =
                Error::refused(ErrCode::TooManySubscriptions, format!("at most {WS_MAX_SUBSCRIPTIONS} subscriptions"));
            return self.error(id, &e);
        }
        // Subscribe to live events before reading the head: whatever is
        // appended from here on is queued, and the seq filter drops what the
        // replay already sent. That is the whole seam.
        self.subs.remove(&room.room_id);
        let conn = self.conn().clone();
        let key = services.hub.subscribe(&room.room_id, &conn);
        let head = match services.events.head(&room).await {
            Ok(h) => h,
            Err(e) => {
                services.hub.unsubscribe(&room.room_id, &conn);
                return self.error(id, &e);
            }
        };
        let mut sub = Sub { key, epoch: head.epoch.clone(), last: head.latest, room: room.clone() };
        if let Some(since) = since {
            if *since.epoch == *head.epoch {
                // A cursor past the head is not an error (§8): nothing to
                // replay, and `caught_up` tells the real head.
                sub.last = since.seq.min(head.latest);
                // A private room's history before the user's join is not theirs (v1.1).
                let from = match services.rooms.visible_from(&self.session().user_id, &room).await {
                    Ok(f) => f,
                    Err(e) => {
                        services.hub.unsubscribe(&room.room_id, &conn);
                        return self.error(id, &e);
                    }
                };
                if sub.last + 1 < from {
                    let epoch = head.epoch.clone();
                    self.gap(&mut sub, &epoch, from - 1, GapReason::HistoryHidden)?;
                }
            } else {
                // The client's epoch is not this log's: say so, then give
                // everything the current epoch still has.
                sub.epoch = since.epoch.as_str().into();
                sub.last = since.seq;
                let epoch = head.epoch.clone();
                self.gap(&mut sub, &epoch, head.earliest - 1, GapReason::EpochChanged)?;
            }
            self.replay(&mut sub, head.latest).await?;
        }
        let caught_up =
            ServerFrame::CaughtUp { id, room_id: room.room_id.clone(), epoch: sub.epoch.to_string(), seq: sub.last };
        let room_id = sub.room.room_id.clone();
        self.subs.insert(sub);
        self.write(caught_up)?;
        // Who is typing already; later changes come as they happen.
        let typing = self.app.services.live.typing_now(&room_id);
        if typing.is_empty() {
            return Ok(());
        }
        self.write(ServerFrame::Typing { room: room_id, user_ids: typing })
    }
}

fn frame_id(f: &ClientFrame) -> Option<String> {
    match f {
        ClientFrame::Auth { id, .. }
        | ClientFrame::Join { id, .. }
        | ClientFrame::Leave { id, .. }
        | ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Send { id, .. }
        | ClientFrame::Ping { id }
        | ClientFrame::Typing { id, .. }
        | ClientFrame::Read { id, .. } => id.clone(),
    }
}

//! Rooms: resolving names, aliases and ids; creating a room on the first
//! join of a local alias; membership (join, leave, members, rooms list),
//! each effective change recorded as an event in the room log.
//!
//! v1.1 room state (creation with `POST /rooms`, name, topic, visibility,
//! invites, roles, kick/ban, direct messages) is decided here for rooms
//! homed on this server: the room record holds it, every change (joins
//! and leaves too) is a compare-and-swap of the record (so processes
//! sharing a Redis agree) followed by its event, which is appended before
//! any later change is made (`state.rs`), so the log and the record agree.
//! Users of other servers take part through federation (spec §11.6): the
//! home server decides, its events carry the decisions, and replicas apply
//! them (`apply_events`).
//!
//! A room homed on another server is joined and left through that server
//! (federation), which orders its events; this server keeps a replica of
//! its log, fed by the home server's pushes and caught up by backfill, and
//! derives the replica's membership of *other* servers' users from the join
//! and leave events in it. Its own users' membership changes only when they
//! asked: a join by the home server's answer to the join, a leave by the
//! answer or by the leave event of a leave it asked for (so a home server
//! cannot make a user of this server join, or leave, on its own say-so),
//! with one exception: a kick or ban, which moderation is the home
//! server's to decide. An invite of one of its users to a room it keeps no
//! replica of gives it a record of the room holding the invite, and no log.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::{Error, Result};
use super::fanout::Hub;
use super::federation::{Failure, Federation};
use crate::protocol::events::{Event, EventContent, EventType};
use crate::protocol::federation::FedEvent;
use crate::protocol::rooms::{Role, Visibility};
use crate::protocol::{ErrCode, RoomAlias, RoomId, RoomRef, ServerName, UserId};
use crate::storage::AccountStore;
use crate::storage::events::{EventLog, LogHead, Range, now_ms, redact_event};
use crate::storage::rooms::RoomRecord;
use crate::storage::rooms::{RoomStore, set_member};

mod state;

pub use state::RoomState;

const LOCK_STRIPES: usize = 64;
/// Events per backfill request when catching up a replica.
const BACKFILL_PAGE: u32 = 500;
/// How long a leave this server asked a home server for, and got no answer
/// to, still lets that home server's leave event remove the user.
const PENDING_LEAVE_TTL: Duration = Duration::from_secs(300);

/// A resolved room: its id and alias (v1.1 rooms may have none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub room_id: RoomId,
    pub alias: Option<RoomAlias>,
}

impl Room {
    /// How messages name the room: its alias, else its id.
    pub fn label(&self) -> &str {
        self.alias.as_ref().map_or(self.room_id.as_str(), |a| a.as_str())
    }
}

pub struct Rooms {
    store: Arc<dyn RoomStore>,
    log: Arc<dyn EventLog>,
    hub: Arc<Hub>,
    /// Whether a user named in a v1.1 request exists.
    accounts: Arc<dyn AccountStore>,
    server_name: ServerName,
    federation: Option<Arc<Federation>>,
    rng: SystemRandom,
    /// Serializes catching up one replica, so that two catch-ups cannot
    /// start it over in turn.
    catch_up_stripes: Vec<tokio::sync::Mutex<()>>,
    /// Serializes state changes (joins and leaves too) of one room in this
    /// process; across processes the record's pending event orders them.
    state_stripes: Vec<tokio::sync::Mutex<()>>,
    /// Leaves of local users from remote rooms that were asked for and not
    /// answered yet (or never): the home server's leave event for one of
    /// these is applied; any other leave event of a local user is not.
    pending_leaves: Mutex<HashMap<(RoomId, UserId), Instant>>,
}

fn not_found(r: &impl std::fmt::Display) -> Error {
    Error::refused(ErrCode::RoomNotFound, format!("no room {r} here"))
}

fn not_member(room: &Room) -> Error {
    Error::refused(ErrCode::NotMember, format!("you are not a member of {}", room.label()))
}

fn to_room(rec: RoomRecord) -> Result<Room> {
    let corrupt =
        |e: crate::protocol::IdError| crate::storage::StorageError::Corrupt { tree: "rooms", detail: e.to_string() };
    Ok(Room {
        room_id: RoomId::parse(&rec.room_id).map_err(corrupt)?,
        alias: rec.alias.as_deref().map(RoomAlias::parse).transpose().map_err(corrupt)?,
    })
}

/// Rooms by alias, those without one after, by id.
fn room_order(a: &Room, b: &Room) -> std::cmp::Ordering {
    (a.alias.is_none(), &a.alias, &a.room_id).cmp(&(b.alias.is_none(), &b.alias, &b.room_id))
}

fn stripe_of(key: impl Hash) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % LOCK_STRIPES
}

impl Rooms {
    pub fn new(
        store: Arc<dyn RoomStore>,
        log: Arc<dyn EventLog>,
        hub: Arc<Hub>,
        accounts: Arc<dyn AccountStore>,
        server_name: ServerName,
        federation: Option<Arc<Federation>>,
    ) -> Self {
        Self {
            store,
            log,
            hub,
            accounts,
            server_name,
            federation,
            rng: SystemRandom::new(),
            catch_up_stripes: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            state_stripes: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            pending_leaves: Mutex::new(HashMap::new()),
        }
    }

    pub fn parse_ref(raw: &str) -> Result<RoomRef> {
        RoomRef::parse(raw).map_err(|e| Error::refused(ErrCode::InvalidRoom, format!("{raw:?}: {e}")))
    }

    /// Whether the room is homed on another server.
    pub fn is_remote(&self, room_id: &RoomId) -> bool {
        room_id.server() != self.server_name.as_str()
    }

    pub fn federation(&self) -> Option<&Arc<Federation>> {
        self.federation.as_ref()
    }

    fn local_alias(&self, r: &RoomRef) -> Option<RoomAlias> {
        match r {
            RoomRef::Name(n) => Some(RoomAlias::new(n, &self.server_name)),
            RoomRef::Alias(a) if a.server() == self.server_name.as_str() => Some(a.clone()),
            _ => None,
        }
    }

    /// Finds a room this server knows (its own, or a replica).
    pub async fn resolve(&self, r: &RoomRef) -> Result<Room> {
        let room_id = match r {
            RoomRef::Id(id) => id.to_string(),
            RoomRef::Alias(a) => self.store.room_for_alias(a.as_str()).await?.ok_or_else(|| not_found(a))?,
            RoomRef::Name(_) => {
                let alias = self.local_alias(r).expect("names are local");
                self.store.room_for_alias(alias.as_str()).await?.ok_or_else(|| not_found(&alias))?
            }
        };
        to_room(self.store.room(&room_id).await?.ok_or_else(|| not_found(r))?)
    }

    /// This server's name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// The members of a room this server knows, without a membership check.
    pub async fn member_list(&self, room_id: &RoomId) -> Result<Vec<UserId>> {
        let room = Room { room_id: room_id.clone(), alias: None };
        self.member_ids(&room).await
    }

    /// Whether the user is a member of the room (as this server knows it).
    pub async fn is_member(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        Ok(self.store.is_member(room_id.as_str(), user.as_str()).await?)
    }

    /// Finds a room the user is a member of.
    pub async fn resolve_member(&self, user: &UserId, r: &RoomRef) -> Result<Room> {
        let room = self.resolve(r).await?;
        if !self.store.is_member(room.room_id.as_str(), user.as_str()).await? {
            return Err(not_member(&room));
        }
        Ok(room)
    }

    /// A local user joins a room, wherever it is homed.
    pub async fn join(&self, user: &UserId, r: &RoomRef) -> Result<Room> {
        match self.resolve(r).await {
            Ok(room) if self.is_remote(&room.room_id) => {
                if self.store.is_member(room.room_id.as_str(), user.as_str()).await? {
                    return Ok(room);
                }
                let home = room.room_id.server().to_owned();
                self.join_remote(user, &home, room.room_id.as_str()).await
            }
            Ok(room) => self.join_here(user, room).await,
            Err(e) if e.code() == ErrCode::RoomNotFound => {
                if let Some(alias) = self.local_alias(r) {
                    let room = self.create(&alias).await?;
                    return self.join_here(user, room).await;
                }
                match r {
                    RoomRef::Alias(a) => self.join_remote(user, a.server(), a.as_str()).await,
                    RoomRef::Id(id) if self.is_remote(id) => self.join_remote(user, id.server(), id.as_str()).await,
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A user of another server joins one of this server's rooms (federation).
    pub async fn join_from_federation(&self, user: &UserId, room: &str) -> Result<(Room, LogHead, Vec<UserId>)> {
        let r = Self::parse_ref(room)?;
        let room = match self.resolve(&r).await {
            Ok(room) if !self.is_remote(&room.room_id) => room,
            Ok(room) => return Err(not_found(&room.room_id)),
            Err(e) if e.code() == ErrCode::RoomNotFound => {
                let alias = self.local_alias(&r).ok_or(e)?;
                self.create(&alias).await?
            }
            Err(e) => return Err(e),
        };
        let room = self.join_here(user, room).await?;
        let head = self.log.head(&room.room_id).await?;
        let members = self.member_ids(&room).await?;
        Ok((room, head, members))
    }

    /// Joins a room homed here: refused to a banned user (403 `banned`),
    /// and for a private room to a user without an invite (403
    /// `not_invited`; the two users of a direct-message room always may).
    async fn join_here(&self, user: &UserId, room: Room) -> Result<Room> {
        let _one = self.state_lock(&room).await;
        let mut invited = false;
        let joined = self
            .change(&room, &[user], false, |r, seen| {
                if seen.member(user) {
                    return Ok(None);
                }
                state::may_join(r, user, &room)?;
                invited = r.invites.remove(user.as_str());
                // Back after a leave, which took the role: the pair own their DM.
                if r.dm.iter().any(|u| u == user.as_str()) {
                    r.roles.insert(user.to_string(), Role::Owner);
                }
                let private = r.visibility == Visibility::Private;
                Ok(Some(state::Owed::new(EventType::Join, user, EventContent::default()).member(user, true, private)))
            })
            .await?;
        if joined.is_some() {
            if invited {
                self.store.index_invite(user.as_str(), room.room_id.as_str(), false).await?;
            }
            if let Some(f) = &self.federation {
                f.membership_changed(&room.room_id);
            }
        }
        Ok(room)
    }

    /// Joins a room homed on `home` through that server, then keeps a replica.
    async fn join_remote(&self, user: &UserId, home: &str, room: &str) -> Result<Room> {
        let Some(fed) = &self.federation else {
            return Err(Error::refused(
                ErrCode::RoomNotFound,
                format!("{room} is on {home}, and federation is off here"),
            ));
        };
        let answer = fed.join(home, room, user).await.map_err(|f| f.into_error(home))?;
        let alias = answer.alias.as_ref();
        let asked_for = answer.room_id.as_str() == room || alias.is_some_and(|a| a.as_str() == room);
        if answer.room_id.server() != home || alias.is_some_and(|a| a.server() != home) || !asked_for {
            return Err(Error::refused(
                ErrCode::HomeServerUnreachable,
                format!("{home} answered a join of {room} with another room ({})", answer.room_id),
            ));
        }
        // A replica record may be here already: from an invite (which must
        // not lose the other users' invites it holds), or from before a leave.
        let room = match self.store.room(answer.room_id.as_str()).await? {
            Some(rec) => to_room(rec)?,
            None => {
                let rec = RoomRecord {
                    room_id: answer.room_id.to_string(),
                    alias: answer.alias.as_ref().map(|a| a.to_string()),
                    created_ms: now_ms(),
                    ..RoomRecord::default()
                };
                to_room(self.store.create(&rec).await?)?
            }
        };
        self.drop_invite(&room, user).await?;
        // The home server speaks for other servers' users; of ours, only for
        // the one who asked to join.
        let changes: Vec<(String, bool)> = answer
            .members
            .iter()
            .filter(|m| m.server() != self.server_name.as_str())
            .map(|m| (m.to_string(), true))
            .chain(std::iter::once((user.to_string(), true)))
            .collect();
        self.store.set_members(room.room_id.as_str(), &changes, now_ms()).await?;
        fed.membership_changed(&room.room_id);
        if let Err(e) = self.catch_up(&room.room_id).await {
            // Joined all the same; the periodic catch-up fills the replica.
            tracing::warn!(room = %room.room_id, error = %e, "could not fill the replica of a joined room yet");
        }
        Ok(room)
    }

    async fn create(&self, alias: &RoomAlias) -> Result<Room> {
        let mut b = [0u8; 12];
        self.rng.fill(&mut b).expect("system randomness");
        let opaque = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let room_id = RoomId::new(&opaque, &self.server_name);
        let rec = RoomRecord {
            room_id: room_id.to_string(),
            alias: Some(alias.to_string()),
            created_ms: now_ms(),
            ..RoomRecord::default()
        };
        let winner = self.store.create(&rec).await?;
        if winner.room_id == rec.room_id {
            tracing::info!(%room_id, %alias, "room created");
        }
        to_room(winner)
    }

    /// A local user leaves a room, wherever it is homed.
    pub async fn leave(&self, user: &UserId, r: &RoomRef) -> Result<Room> {
        let room = self.resolve(r).await?;
        if !self.is_remote(&room.room_id) {
            return self.leave_here(user, room).await;
        }
        if !self.store.is_member(room.room_id.as_str(), user.as_str()).await? {
            return Err(not_member(&room));
        }
        let home = room.room_id.server().to_owned();
        let fed = self.federation.as_ref().ok_or_else(|| not_found(&room.room_id))?;
        let pending = (room.room_id.clone(), user.clone());
        {
            let mut p = self.pending_leaves.lock().expect("pending lock");
            p.retain(|_, at| at.elapsed() < PENDING_LEAVE_TTL);
            p.insert(pending.clone(), Instant::now());
        }
        match fed.leave(&home, &room.room_id, user).await {
            Ok(()) => {}
            // The home server has them out already (an earlier leave whose
            // answer was lost): out here too, as they asked.
            Err(Failure::Refused(_, body)) if body.errcode == ErrCode::NotMember => {}
            // Not answered: the home server's leave event, if it comes, is
            // still accepted for a while (pending).
            Err(f @ Failure::Unreachable(_)) => return Err(f.into_error(&home)),
            Err(f) => {
                self.pending_leaves.lock().expect("pending lock").remove(&pending);
                return Err(f.into_error(&home));
            }
        }
        self.pending_leaves.lock().expect("pending lock").remove(&pending);
        // The home server's leave event will say the same; don't wait for it.
        set_member(&*self.store, room.room_id.as_str(), user.as_str(), false, now_ms()).await?;
        self.hub.kick(&room.room_id, user);
        Ok(room)
    }

    /// A user of another server leaves one of this server's rooms (federation).
    pub async fn leave_from_federation(&self, user: &UserId, room_id: &RoomId) -> Result<Room> {
        let room = self.resolve(&RoomRef::Id(room_id.clone())).await?;
        if self.is_remote(&room.room_id) {
            return Err(not_found(room_id));
        }
        self.leave_here(user, room).await
    }

    async fn leave_here(&self, user: &UserId, room: Room) -> Result<Room> {
        let _one = self.state_lock(&room).await;
        self.change(&room, &[user], true, |r, seen| {
            if !seen.member(user) {
                return Err(not_member(&room));
            }
            state::check_not_last_owner(r, &seen.all, &room, user)?;
            r.roles.remove(user.as_str());
            r.joined_seq.remove(user.as_str());
            Ok(Some(state::Owed::new(EventType::Leave, user, EventContent::default()).member(user, false, false)))
        })
        .await?;
        if let Some(f) = &self.federation {
            f.membership_changed(&room.room_id);
        }
        self.hub.kick(&room.room_id, user);
        Ok(room)
    }

    async fn member_ids(&self, room: &Room) -> Result<Vec<UserId>> {
        Ok(self
            .store
            .members(room.room_id.as_str())
            .await?
            .into_iter()
            .filter_map(|m| UserId::parse(&m).ok())
            .collect())
    }

    pub async fn members(&self, user: &UserId, r: &RoomRef) -> Result<(Room, Vec<UserId>)> {
        let room = self.resolve_member(user, r).await?;
        let members = self.member_ids(&room).await?;
        Ok((room, members))
    }

    /// Whether any member of the room is a user of `server`.
    pub async fn has_member_from(&self, room: &Room, server: &str) -> Result<bool> {
        Ok(self.member_ids(room).await?.iter().any(|m| m.server() == server))
    }

    /// The rooms a user is in, sorted by alias.
    pub async fn joined(&self, user: &UserId) -> Result<Vec<Room>> {
        let mut rooms =
            self.store.rooms_of(user.as_str()).await?.into_iter().map(to_room).collect::<Result<Vec<_>>>()?;
        rooms.sort_by(room_order);
        Ok(rooms)
    }

    // ---- replicas of rooms homed elsewhere ----

    /// Events pushed by `origin` for rooms it is home to. A transaction
    /// with an event of a room the origin is not home to is refused whole
    /// (403 `unknown_server`), before anything of it is applied. Rooms this
    /// server has no replica of are ignored; a hole or a new epoch is filled
    /// by a catch-up in the background.
    pub async fn receive(self: &Arc<Self>, origin: &ServerName, events: Vec<FedEvent>) -> Result<()> {
        if let Some(e) = events.iter().find(|e| e.room_id.server() != origin.as_str()) {
            return Err(Error::refused(
                ErrCode::UnknownServer,
                format!("{origin} pushed an event of {}, a room it is not home to", e.room_id),
            ));
        }
        let mut rest = events.into_iter().peekable();
        while let Some(first) = rest.next() {
            let (room_id, epoch) = (first.room_id.clone(), first.epoch.clone());
            let mut batch = vec![first.event];
            while let Some(next) = rest.next_if(|e| e.room_id == room_id && e.epoch == epoch) {
                batch.push(next.event);
            }
            let room = match self.store.room(room_id.as_str()).await? {
                Some(rec) => to_room(rec)?,
                None => match self.invite_of_ours(&batch) {
                    // An invite of one of our users to a room we keep no
                    // replica of: a record holds it (no log until a join).
                    Some(_) => {
                        let rec =
                            RoomRecord { room_id: room_id.to_string(), created_ms: now_ms(), ..RoomRecord::default() };
                        to_room(self.store.create(&rec).await?)?
                    }
                    None => continue,
                },
            };
            let no_log = self.log.head(&room_id).await?.latest == 0;
            if no_log && !self.has_member_from(&room, self.server_name.as_str()).await? {
                // No replica log to keep (no member here): only what the
                // events say about our users (invites) is taken.
                self.apply_events(&room_id, 0, u64::MAX, &batch).await?;
                continue;
            }
            self.apply_redactions(&room_id, &epoch, &mut batch).await?;
            let imported = self.log.import(&room_id, &epoch, None, batch.clone()).await?;
            self.apply_events(&room_id, imported.before, imported.latest, &batch).await?;
            if imported.hole && !self.has_member_from(&room, self.server_name.as_str()).await? {
                // A replica none of our users is in any more (they were
                // kicked, or left): the home server refuses to fill it, but
                // what the events say about our users (a new invite) counts.
                self.apply_events(&room_id, imported.latest, u64::MAX, &batch).await?;
            } else if imported.hole {
                let rooms = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = rooms.catch_up(&room_id).await {
                        tracing::warn!(%room_id, error = %e, "catch-up after a hole failed; will retry");
                    }
                });
            }
        }
        Ok(())
    }

    /// A replica's part of v1.1 redactions, before `events` (from the
    /// room's home, of `epoch`) are imported: each `redaction` not imported
    /// yet erases its target and the target's edits, in `events` themselves
    /// and in what the replica's log already holds. Erasing first means a
    /// redaction is never on record here with its target's body still
    /// stored; the home decided who may redact, so nothing is checked again.
    async fn apply_redactions(&self, room_id: &RoomId, epoch: &str, events: &mut [Event]) -> Result<()> {
        let head = self.log.head(room_id).await?;
        for i in 0..events.len() {
            let (seq, kind) = (events[i].seq, events[i].kind);
            let Some(target) = events[i].content.redacts.clone() else { continue };
            if kind != EventType::Redaction || (*head.epoch == *epoch && seq <= head.latest) {
                continue;
            }
            for e in events[..i].iter_mut() {
                if e.event_id == target || e.content.replaces.as_deref() == Some(target.as_str()) {
                    redact_event(e);
                }
            }
            if let Some(found) = super::events::redaction_targets(&*self.log, room_id, &target).await? {
                self.log.erase(room_id, &found.epoch, &found.seqs).await?;
            }
        }
        Ok(())
    }

    /// Brings the replica of a room homed elsewhere up to its home server's log.
    pub async fn catch_up(&self, room_id: &RoomId) -> Result<()> {
        let Some(fed) = &self.federation else { return Ok(()) };
        let _one = self.catch_up_stripes[stripe_of(room_id)].lock().await;
        let home = room_id.server().to_owned();
        loop {
            let head = self.log.head(room_id).await?;
            let mut page = fed.backfill(room_id, head.latest, BACKFILL_PAGE).await.map_err(|f| f.into_error(&home))?;
            let mut restart_at = None;
            if *page.epoch != *head.epoch {
                // The home's log is not the one we hold: take it from its start.
                page = fed
                    .backfill(room_id, page.earliest_seq.saturating_sub(1), BACKFILL_PAGE)
                    .await
                    .map_err(|f| f.into_error(&home))?;
                restart_at = Some(page.earliest_seq);
            } else if page.earliest_seq > head.latest + 1 {
                // The home trimmed what we missed: go on from what it keeps.
                restart_at = Some(page.earliest_seq);
            }
            self.apply_redactions(room_id, &page.epoch, &mut page.events).await?;
            let imported = self.log.import(room_id, &page.epoch, restart_at, page.events.clone()).await?;
            self.apply_events(room_id, imported.before, imported.latest, &page.events).await?;
            if page.events.is_empty() || imported.latest >= page.latest_seq || imported.written == 0 {
                return Ok(());
            }
        }
    }

    /// Catches up every replica with a local member, now and then every `every`.
    pub async fn catch_up_forever(self: Arc<Self>, every: Duration) {
        loop {
            let rooms = match self.store.all().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list rooms to catch up");
                    Vec::new()
                }
            };
            for rec in rooms {
                let Ok(room) = to_room(rec) else { continue };
                if !self.is_remote(&room.room_id)
                    || !self.has_member_from(&room, self.server_name.as_str()).await.unwrap_or(false)
                {
                    continue;
                }
                if let Err(e) = self.catch_up(&room.room_id).await {
                    tracing::debug!(room = %room.room_id, error = %e, "catch-up failed; will retry");
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Whether these events hold an invite of one of this server's users.
    fn invite_of_ours(&self, events: &[Event]) -> Option<UserId> {
        events
            .iter()
            .filter(|e| e.kind == EventType::Invite)
            .filter_map(|e| e.content.target.clone())
            .find(|t| t.server() == self.server_name.as_str())
    }

    /// Mirrors what a replica's new events (those with `from < seq <= to`)
    /// say: the membership of other servers' users (join, leave, kick,
    /// ban), the room's state (name, topic, visibility, roles) and, of this
    /// server's own users, what the home server decides alone: invites
    /// (pending until the user joins or rejects), kicks and bans (they are
    /// out, and their subscriptions end). Their joins were set from the
    /// join's answer; a leave counts only when they asked for it.
    async fn apply_events(&self, room_id: &RoomId, from: u64, to: u64, events: &[Event]) -> Result<()> {
        let own = self.server_name.as_str();
        let mut changes = Vec::new();
        let mut kicked: Vec<UserId> = Vec::new();
        let mut state = Vec::new();
        for e in events.iter().filter(|e| e.seq > from && e.seq <= to) {
            let ours = e.sender.server() == own;
            let target = e.content.target.as_ref();
            match e.kind {
                EventType::Join if ours => {
                    // Back after a kick or ban earlier in these events (a
                    // catch-up replays history): in, as the join's answer said.
                    if kicked.contains(&e.sender) {
                        kicked.retain(|u| *u != e.sender);
                        changes.retain(|(u, _)| u != e.sender.as_str());
                    }
                    state.push(e)
                }
                EventType::Join => changes.push((e.sender.to_string(), true)),
                EventType::Leave if ours => {
                    let key = (room_id.clone(), e.sender.clone());
                    let asked = self
                        .pending_leaves
                        .lock()
                        .expect("pending lock")
                        .remove(&key)
                        .is_some_and(|at| at.elapsed() < PENDING_LEAVE_TTL);
                    if asked {
                        changes.push((e.sender.to_string(), false));
                        kicked.push(e.sender.clone());
                    } else {
                        tracing::warn!(room = %room_id, user = %e.sender, "ignoring the home server's leave of a local user who did not ask to leave");
                    }
                }
                EventType::Leave => changes.push((e.sender.to_string(), false)),
                // Moderation is the home server's to decide, for every user.
                EventType::Kick | EventType::Ban => {
                    if let Some(t) = target {
                        changes.push((t.to_string(), false));
                        if t.server() == own {
                            kicked.push(t.clone());
                        }
                    }
                    state.push(e);
                }
                EventType::Invite | EventType::Reject | EventType::Room | EventType::Role => state.push(e),
                _ => {}
            }
        }
        let had_changes = !changes.is_empty();
        self.store.set_members(room_id.as_str(), &changes, now_ms()).await?;
        if !state.is_empty() {
            self.apply_state(room_id, &state).await?;
        }
        for user in &kicked {
            self.hub.kick(room_id, user);
        }
        if had_changes && let Some(f) = &self.federation {
            f.membership_changed(room_id);
        }
        Ok(())
    }

    /// Applies v1.1 state events of a room homed elsewhere to its replica's record.
    async fn apply_state(&self, room_id: &RoomId, events: &[&Event]) -> Result<()> {
        let own = self.server_name.as_str();
        let room = Room { room_id: room_id.clone(), alias: None };
        let mut index = Vec::new();
        // A replica's record owes its log nothing: the home server's events are the log.
        self.change(&room, &[], false, |rec, _| {
            index.clear();
            for e in events {
                let target = e.content.target.as_ref().map(|t| t.as_str());
                match (e.kind, target) {
                    (EventType::Room, _) => {
                        rec.name = e.content.name.clone();
                        rec.topic = e.content.topic.clone();
                        rec.visibility = e.content.visibility.unwrap_or_default();
                        rec.state_seq = e.seq;
                    }
                    (EventType::Role, Some(t)) => match e.content.role.unwrap_or_default() {
                        Role::Member => drop(rec.roles.remove(t)),
                        r => drop(rec.roles.insert(t.to_owned(), r)),
                    },
                    (EventType::Invite, Some(t)) if e.content.target.as_ref().is_some_and(|u| u.server() == own) => {
                        index.extend(rec.invites.insert(t.to_owned()).then(|| (t.to_owned(), true)));
                    }
                    (EventType::Reject, _) if e.sender.server() == own => {
                        index.extend(rec.invites.remove(e.sender.as_str()).then(|| (e.sender.to_string(), false)));
                    }
                    (EventType::Join, _) => {
                        if rec.invites.remove(e.sender.as_str()) {
                            index.push((e.sender.to_string(), false));
                        }
                        if rec.visibility == Visibility::Private {
                            rec.joined_seq.insert(e.sender.to_string(), e.seq);
                        }
                    }
                    (EventType::Kick | EventType::Ban, Some(t)) => {
                        rec.roles.remove(t);
                        rec.joined_seq.remove(t);
                        if e.kind == EventType::Ban && rec.invites.remove(t) {
                            index.push((t.to_owned(), false));
                        }
                    }
                    _ => {}
                }
            }
            Ok(None)
        })
        .await?;
        for (user, invited) in index {
            self.store.index_invite(&user, room_id.as_str(), invited).await?;
        }
        Ok(())
    }

    /// Hands federation the newest event of every room homed here that has
    /// members on other servers, once at start-up: those servers learn at
    /// once what they lack and backfill it (pushes queued before a restart
    /// are not kept).
    pub async fn seed_federation(&self) {
        let Some(fed) = &self.federation else { return };
        let rooms = match self.store.all().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list rooms to announce to other servers");
                return;
            }
        };
        for rec in rooms {
            let Ok(room) = to_room(rec) else { continue };
            let remote =
                self.member_ids(&room).await.map(|m| m.iter().any(|u| u.server() != self.server_name.as_str()));
            if self.is_remote(&room.room_id) || !remote.unwrap_or(false) {
                continue;
            }
            match self.log.read(&room.room_id, Range::Latest, 1).await {
                Ok(page) => {
                    if let Some(last) = page.events.last() {
                        fed.seed(&room.room_id, &page.head.epoch, last);
                    }
                }
                Err(e) => tracing::warn!(room = %room.room_id, error = %e, "cannot read a room to announce it"),
            }
        }
    }

    /// A page of a room homed here, for a server with members in it.
    pub async fn events_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        after: u64,
        limit: u32,
    ) -> Result<crate::protocol::rooms::MessagesResponse> {
        let room = self.resolve(&RoomRef::Id(room_id.clone())).await?;
        if self.is_remote(&room.room_id) {
            return Err(not_found(room_id));
        }
        if !self.has_member_from(&room, origin.as_str()).await? {
            return Err(Error::refused(ErrCode::NotMember, format!("{origin} has no members in {}", room.label())));
        }
        let page = self.log.read(&room.room_id, Range::After(after), limit as usize).await?;
        Ok(crate::protocol::rooms::MessagesResponse {
            room_id: room.room_id,
            epoch: page.head.epoch.to_string(),
            events: page.events,
            earliest_seq: page.head.earliest,
            latest_seq: page.head.latest,
        })
    }
}

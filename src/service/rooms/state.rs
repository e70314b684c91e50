//! v1.1 room state of rooms homed here: creation with `POST /rooms`, name,
//! topic and visibility, invites, roles, kick/ban/unban, direct messages,
//! the rooms list with invites, and who may read which part of a private
//! room's log. Each change is a compare-and-swap of the room record
//! ([`Rooms::change`]) that leaves the event it owes the room log in the
//! record (`pending`); the event is appended, and the record's `pending`
//! cleared together with the membership the event changes, before any
//! other change of the room (of any process) is made, so the log's state
//! events are in the order of the record's changes.

use base64::Engine as _;
use ring::rand::SecureRandom;

use super::{Room, Rooms, to_room};
use crate::protocol::events::{Event, EventContent, EventType};
use crate::protocol::limits::{
    CREATE_INVITES_MAX, REASON_MAX_BYTES, ROOM_DISPLAY_NAME_MAX_BYTES, ROOM_TOPIC_MAX_BYTES,
};
use crate::protocol::rooms::{CreateRoomRequest, Membership, Role, RoomUpdate, Visibility};
use crate::protocol::{ErrCode, RoomId, RoomRef, UserId};
use crate::service::error::{Error, Result};
use crate::storage::events::{AppendOutcome, NewEvent, Range, Txn, now_ms};
use crate::storage::rooms::{PendingEvent, RoomRecord};

/// Tries of a compare-and-swap before giving up on a room that changes that fast.
const CAS_TRIES: usize = 32;

/// A room as `GET /rooms` lists it.
#[derive(Debug, Clone)]
pub struct RoomState {
    pub room: Room,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub visibility: Visibility,
    pub membership: Membership,
    pub role: Role,
    pub last_event: Option<Event>,
}

fn forbidden(msg: impl Into<String>) -> Error {
    Error::refused(ErrCode::Forbidden, msg)
}

fn role_of(rec: &RoomRecord, user: &str) -> Role {
    rec.roles.get(user).copied().unwrap_or_default()
}

/// The event a state change owes the room log, and what appending it changes.
pub(super) struct Owed {
    kind: EventType,
    sender: UserId,
    content: EventContent,
    /// The membership the event changes: (user, member after it).
    member: Option<(UserId, bool)>,
    /// The event's seq becomes the member's join seq (a private room).
    joined_seq: bool,
}

impl Owed {
    pub(super) fn new(kind: EventType, sender: &UserId, content: EventContent) -> Self {
        Self { kind, sender: sender.clone(), content, member: None, joined_seq: false }
    }

    fn target(kind: EventType, sender: &UserId, target: &UserId) -> Self {
        Self::new(kind, sender, EventContent { target: Some(target.clone()), ..EventContent::default() })
    }

    pub(super) fn member(mut self, user: &UserId, member: bool, joined_seq: bool) -> Self {
        self.member = Some((user.clone(), member));
        self.joined_seq = joined_seq;
        self
    }
}

/// Membership read with a record, at its `rev`: membership of a room homed
/// here changes only with a rev (in [`Rooms::settle`]), so a change made on
/// what it read is refused by the compare-and-swap if either moved.
pub(super) struct Seen {
    asked: Vec<(String, bool)>,
    /// Every member, when asked for.
    pub(super) all: Vec<String>,
}

impl Seen {
    pub(super) fn member(&self, user: &UserId) -> bool {
        self.asked.iter().any(|(u, m)| *m && u == user.as_str())
    }
}

/// Refuses a change that would leave the room's members without an
/// owner: the last owner leaving (or being demoted) while others stay.
pub(super) fn check_not_last_owner(rec: &RoomRecord, members: &[String], room: &Room, user: &UserId) -> Result<()> {
    if role_of(rec, user.as_str()) != Role::Owner {
        return Ok(());
    }
    let others = members.iter().filter(|m| *m != user.as_str()).count();
    let owners = members.iter().filter(|m| *m != user.as_str() && role_of(rec, m) == Role::Owner).count();
    if others > 0 && owners == 0 {
        return Err(forbidden(format!("you are the last owner of {}: make another member owner first", room.label())));
    }
    Ok(())
}

/// The join checks of a room record: bans, then invites of a private room.
pub(super) fn may_join(rec: &RoomRecord, user: &UserId, room: &Room) -> Result<()> {
    if rec.bans.contains(user.as_str()) {
        return Err(Error::refused(ErrCode::Banned, format!("you are banned from {}", room.label())));
    }
    let dm_party = rec.dm.iter().any(|u| u == user.as_str());
    if rec.visibility == Visibility::Private && !rec.invites.contains(user.as_str()) && !dm_party {
        return Err(Error::refused(
            ErrCode::NotInvited,
            format!("{} is private and you have no invite to it", room.label()),
        ));
    }
    Ok(())
}

/// A text field of a request: 1 to `max` bytes (`Some("")` clears it where `clear` allows).
fn check_text(field: &str, v: &Option<String>, max: usize, clear: bool) -> Result<()> {
    match v {
        Some(s) if s.is_empty() && clear => Ok(()),
        Some(s) if s.is_empty() || s.len() > max => {
            Err(Error::refused(ErrCode::InvalidField, format!("{field}: 1 to {max} bytes")))
        }
        _ => Ok(()),
    }
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn room_content(rec: &RoomRecord) -> EventContent {
    EventContent {
        name: rec.name.clone(),
        topic: rec.topic.clone(),
        visibility: Some(rec.visibility),
        ..EventContent::default()
    }
}

impl Rooms {
    /// Held while one of this process's state changes of a room changes its
    /// record and appends its event (other processes are ordered by the
    /// record's `pending`; this spares this process's changes the retries).
    pub(super) async fn state_lock(&self, room: &Room) -> tokio::sync::MutexGuard<'_, ()> {
        self.state_stripes[super::stripe_of(&room.room_id)].lock().await
    }

    /// The record of a room this server knows.
    pub(super) async fn record(&self, room: &Room) -> Result<RoomRecord> {
        self.store.room(room.room_id.as_str()).await?.ok_or_else(|| super::not_found(&room.room_id))
    }

    /// Changes a room's record with `change` (which may refuse, and gets
    /// the membership of `users`, and every member when `all`), again on a
    /// fresh copy whenever another change (of any process) came first, and
    /// appends the event it owes; answers that event's seq. A change that
    /// owes nothing and changes nothing writes nothing.
    pub(super) async fn change(
        &self,
        room: &Room,
        users: &[&UserId],
        all: bool,
        mut change: impl FnMut(&mut RoomRecord, &Seen) -> Result<Option<Owed>>,
    ) -> Result<Option<u64>> {
        for _ in 0..CAS_TRIES {
            let rec = self.record(room).await?;
            if rec.pending.is_some() {
                // Another change's event goes first, whoever made it.
                self.settle(room, rec).await?;
                continue;
            }
            let mut asked = Vec::with_capacity(users.len());
            for u in users {
                asked.push((u.to_string(), self.store.is_member(room.room_id.as_str(), u.as_str()).await?));
            }
            let all = match all {
                true => self.store.members(room.room_id.as_str()).await?,
                false => Vec::new(),
            };
            let mut next = rec.clone();
            let owed = change(&mut next, &Seen { asked, all })?;
            if owed.is_none() && next == rec {
                return Ok(None);
            }
            next.rev += 1;
            next.pending = owed.map(|o| {
                let mut b = [0u8; 12];
                self.rng.fill(&mut b).expect("system randomness");
                PendingEvent {
                    nonce: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
                    kind: o.kind,
                    sender: o.sender.to_string(),
                    content: o.content,
                    joined_seq_of: o.member.as_ref().filter(|_| o.joined_seq).map(|(u, _)| u.to_string()),
                    member: o.member.map(|(u, m)| (u.to_string(), m)),
                }
            });
            if !self.store.replace(&next, &[], now_ms()).await? {
                continue;
            }
            if next.pending.is_none() {
                return Ok(None);
            }
            return Ok(Some(self.settle(room, next).await?));
        }
        Err(Error::refused(ErrCode::StorageUnavailable, format!("{} changes too fast; try again", room.label())))
    }

    /// Appends the event a record owes the log (under a transaction id of
    /// its own, so that processes settling it at once append it once),
    /// then clears it from the record together with the membership it
    /// changes. Losing that swap means another process settled it first:
    /// nothing else changes a record with a pending event.
    async fn settle(&self, room: &Room, rec: RoomRecord) -> Result<u64> {
        let Some(p) = rec.pending.clone() else {
            return Err(Error::refused(ErrCode::Internal, "a room record without a pending event to settle"));
        };
        let sender = UserId::parse(&p.sender).map_err(|e| crate::storage::StorageError::Corrupt {
            tree: "rooms",
            detail: format!("pending event of {}: {e}", room.room_id),
        })?;
        let txn = Txn { device: "\0room-state".to_owned(), txn_id: p.nonce.clone(), fingerprint: [0; 32] };
        let new = NewEvent { kind: p.kind, sender, body: None, content: Box::new(p.content.clone()), txn: Some(txn) };
        let seq = match self.log.append(&room.room_id, new).await? {
            AppendOutcome::Stored { seq, .. } | AppendOutcome::Repeated { seq, .. } => seq,
            AppendOutcome::Conflict => {
                return Err(Error::refused(
                    ErrCode::Internal,
                    "the room log answered a state event's append as a conflict",
                ));
            }
        };
        let mut done = rec;
        done.pending = None;
        done.rev += 1;
        if let Some(u) = &p.joined_seq_of {
            done.joined_seq.insert(u.clone(), seq);
        }
        let changes: Vec<(String, bool)> = p.member.into_iter().collect();
        self.store.replace(&done, &changes, now_ms()).await?;
        Ok(seq)
    }

    /// A room homed here that the user is a member of, with its record.
    async fn local_member(&self, user: &UserId, r: &RoomRef) -> Result<(Room, RoomRecord)> {
        let room = self.resolve_member(user, r).await?;
        if self.is_remote(&room.room_id) {
            // Only the home server changes a room's state; it is not asked
            // on a user's behalf from here (spec §11.6).
            return Err(Error::refused(
                ErrCode::RemoteUserUnsupported,
                format!(
                    "{} is homed on {}: its state is changed on its home server only",
                    room.label(),
                    room.room_id.server()
                ),
            ));
        }
        let rec = self.record(&room).await?;
        Ok((room, rec))
    }

    /// A user named by an invite, a moderation or a role: of this server
    /// and existing, or of another server when federation is on (its
    /// existence is that server's business: an invite of a user it does not
    /// have stays pending, unanswered).
    async fn check_target(&self, user: &UserId) -> Result<()> {
        if user.server() != self.server_name.as_str() && self.federation.is_some() {
            return Ok(());
        }
        self.check_user(user).await
    }

    /// A user named by a v1.1 request: of this server, and existing.
    async fn check_user(&self, user: &UserId) -> Result<()> {
        if user.server() != self.server_name.as_str() {
            return Err(Error::refused(
                ErrCode::RemoteUserUnsupported,
                match self.federation {
                    Some(_) => {
                        format!("{user} is a user of another server; only users of this server can be named here")
                    }
                    None => format!("{user} is a user of another server, and federation is off here"),
                },
            ));
        }
        match self.accounts.get(user.localpart()).await? {
            Some(a) if a.deactivated_ms.is_none() => Ok(()),
            _ => Err(Error::refused(ErrCode::UserNotFound, format!("no user {user} here"))),
        }
    }

    /// The user's role in a room homed here (`member` for a member without
    /// another, and in v1 rooms, which have no owner).
    pub async fn role(&self, user: &UserId, room: &Room) -> Result<Role> {
        Ok(role_of(&self.record(room).await?, user.as_str()))
    }

    /// The first seq of the room's log the user may read: 1, except for a
    /// member of a private room, who reads from their join on.
    pub async fn visible_from(&self, user: &UserId, room: &Room) -> Result<u64> {
        // A replica's record follows the home server's `room` events and
        // its users' joins (`apply_events`), so the rule holds there too.
        let rec = self.record(room).await?;
        if rec.visibility != Visibility::Private {
            return Ok(1);
        }
        Ok(rec.joined_seq.get(user.as_str()).copied().unwrap_or(1))
    }

    /// `POST /rooms`: a new room homed here, the creator its owner and
    /// first member; its log starts with the creator's join, a `room` event
    /// with its state, and one `invite` per invited user.
    pub async fn create_room(&self, user: &UserId, req: CreateRoomRequest) -> Result<Room> {
        check_text("name", &req.name, ROOM_DISPLAY_NAME_MAX_BYTES, false)?;
        check_text("topic", &req.topic, ROOM_TOPIC_MAX_BYTES, false)?;
        let alias = match &req.alias {
            None => None,
            Some(raw) => {
                let r = Self::parse_ref(raw)?;
                match (&r, self.local_alias(&r)) {
                    (RoomRef::Id(_), _) | (_, None) => {
                        return Err(Error::refused(
                            ErrCode::InvalidRoom,
                            format!("alias: {raw:?} is not a room name or an alias of this server"),
                        ));
                    }
                    (_, Some(a)) => Some(a),
                }
            }
        };
        let mut invites: Vec<UserId> = req.invite.unwrap_or_default();
        if invites.len() > CREATE_INVITES_MAX {
            return Err(Error::refused(ErrCode::InvalidField, format!("invite: at most {CREATE_INVITES_MAX} users")));
        }
        invites.retain(|u| u != user);
        invites.sort();
        invites.dedup();
        for u in &invites {
            self.check_target(u).await?;
        }
        let mut b = [0u8; 12];
        self.rng.fill(&mut b).expect("system randomness");
        let room_id = RoomId::new(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b), &self.server_name);
        let rec = RoomRecord {
            room_id: room_id.to_string(),
            alias: alias.as_ref().map(|a| a.to_string()),
            created_ms: now_ms(),
            name: req.name,
            topic: req.topic,
            visibility: req.visibility.unwrap_or_default(),
            roles: [(user.to_string(), Role::Owner)].into(),
            invites: invites.iter().map(|u| u.to_string()).collect(),
            ..RoomRecord::default()
        };
        let winner = self.store.create(&rec).await?;
        if winner.room_id != rec.room_id {
            let alias = alias.map(|a| a.to_string()).unwrap_or_default();
            return Err(Error::refused(ErrCode::AliasTaken, format!("{alias} already names a room")));
        }
        tracing::info!(%room_id, "room created");
        let room = Room { room_id, alias };
        self.start_room(user, &room, &rec, &invites).await?;
        Ok(room)
    }

    /// The first events of a room made by a request, and its creator's membership.
    async fn start_room(&self, user: &UserId, room: &Room, rec: &RoomRecord, invites: &[UserId]) -> Result<()> {
        for u in invites {
            self.store.index_invite(u.as_str(), room.room_id.as_str(), true).await?;
        }
        let private = rec.visibility == Visibility::Private;
        self.change(room, &[], false, |_, _| {
            Ok(Some(Owed::new(EventType::Join, user, EventContent::default()).member(user, true, private)))
        })
        .await?;
        self.change(room, &[], false, |r, _| Ok(Some(Owed::new(EventType::Room, user, room_content(r))))).await?;
        for u in invites {
            self.change(room, &[], false, |_, _| Ok(Some(Owed::target(EventType::Invite, user, u)))).await?;
        }
        Ok(())
    }

    /// `PATCH /rooms/{room}`: moderators and owners change name, topic, visibility.
    pub async fn patch(&self, user: &UserId, r: &RoomRef, req: RoomUpdate) -> Result<()> {
        check_text("name", &req.name, ROOM_DISPLAY_NAME_MAX_BYTES, true)?;
        check_text("topic", &req.topic, ROOM_TOPIC_MAX_BYTES, true)?;
        let (room, _) = self.local_member(user, r).await?;
        let _one = self.state_lock(&room).await;
        self.change(&room, &[user], false, |rec, seen| {
            if !seen.member(user) {
                return Err(super::not_member(&room));
            }
            if role_of(rec, user.as_str()) < Role::Moderator {
                return Err(forbidden("changing a room takes a moderator or owner"));
            }
            if let Some(n) = &req.name {
                rec.name = nonempty(Some(n.clone()));
            }
            if let Some(t) = &req.topic {
                rec.topic = nonempty(Some(t.clone()));
            }
            if let Some(v) = req.visibility {
                rec.visibility = v;
            }
            Ok(Some(Owed::new(EventType::Room, user, room_content(rec))))
        })
        .await?;
        Ok(())
    }

    /// `POST /rooms/{room}/invite`: a member invites a user of this server
    /// (of a private room, only moderators and owners may). Inviting a
    /// member or an invitee again changes nothing.
    pub async fn invite(&self, user: &UserId, r: &RoomRef, target: &UserId) -> Result<()> {
        self.check_target(target).await?;
        let (room, rec) = self.local_member(user, r).await?;
        if rec.visibility == Visibility::Private && role_of(&rec, user.as_str()) < Role::Moderator {
            return Err(forbidden("inviting to a private room takes a moderator or owner"));
        }
        if self.store.is_member(room.room_id.as_str(), target.as_str()).await? {
            return Ok(());
        }
        let _one = self.state_lock(&room).await;
        self.store.index_invite(target.as_str(), room.room_id.as_str(), true).await?;
        self.change(&room, &[user, target], false, |rec, seen| {
            if !seen.member(user) {
                return Err(super::not_member(&room));
            }
            if rec.visibility == Visibility::Private && role_of(rec, user.as_str()) < Role::Moderator {
                return Err(forbidden("inviting to a private room takes a moderator or owner"));
            }
            if rec.bans.contains(target.as_str()) {
                return Err(Error::refused(ErrCode::Banned, format!("{target} is banned from {}", room.label())));
            }
            if seen.member(target) || !rec.invites.insert(target.to_string()) {
                return Ok(None);
            }
            Ok(Some(Owed::target(EventType::Invite, user, target)))
        })
        .await?;
        Ok(())
    }

    /// `POST /rooms/{room}/reject`: an invitee declines.
    pub async fn reject(&self, user: &UserId, r: &RoomRef) -> Result<()> {
        let room = self.resolve(r).await?;
        if self.is_remote(&room.room_id) {
            return self.reject_remote(user, &room).await;
        }
        self.reject_here(user, room).await
    }

    /// A user of another server declines an invite to a room homed here (federation).
    pub async fn reject_from_federation(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        let room = self.resolve(&RoomRef::Id(room_id.clone())).await?;
        if self.is_remote(&room.room_id) {
            return Err(super::not_found(room_id));
        }
        self.reject_here(user, room).await
    }

    /// Declines an invite (recorded from the home server's `invite` event)
    /// to a room homed elsewhere: the home server appends the `reject`; the
    /// invite is dropped here once it answered (also when it says there was
    /// none: the user wants none).
    async fn reject_remote(&self, user: &UserId, room: &Room) -> Result<()> {
        let no_invite = || Error::refused(ErrCode::NotInvited, format!("you have no invite to {}", room.label()));
        if !self.record(room).await?.invites.contains(user.as_str()) {
            return Err(no_invite());
        }
        let fed = self.federation.as_ref().ok_or_else(no_invite)?;
        match fed.reject(&room.room_id, user).await {
            Ok(()) => {}
            Err(super::Failure::Refused(_, body)) if body.errcode == ErrCode::NotInvited => {}
            Err(f) => return Err(f.into_error(room.room_id.server())),
        }
        self.drop_invite(room, user).await
    }

    /// Forgets a pending invite of a user of this server to a room homed elsewhere.
    pub(super) async fn drop_invite(&self, room: &Room, user: &UserId) -> Result<()> {
        if self.record(room).await?.invites.contains(user.as_str()) {
            self.change(room, &[], false, |r, _| {
                r.invites.remove(user.as_str());
                Ok(None)
            })
            .await?;
        }
        self.store.index_invite(user.as_str(), room.room_id.as_str(), false).await?;
        Ok(())
    }

    async fn reject_here(&self, user: &UserId, room: Room) -> Result<()> {
        let _one = self.state_lock(&room).await;
        self.change(&room, &[], false, |rec, _| match rec.invites.remove(user.as_str()) {
            true => Ok(Some(Owed::new(EventType::Reject, user, EventContent::default()))),
            false => Err(Error::refused(ErrCode::NotInvited, format!("you have no invite to {}", room.label()))),
        })
        .await?;
        self.store.index_invite(user.as_str(), room.room_id.as_str(), false).await?;
        Ok(())
    }

    /// `POST /rooms/{room}/kick`, `/ban`, `/unban`: a moderator or owner
    /// acts on a user of a strictly lower role. A kick needs a member; a ban
    /// also removes a member and drops an invite; unbanning a user who is
    /// not banned, or banning one who is, changes nothing.
    pub async fn moderate(
        &self,
        user: &UserId,
        r: &RoomRef,
        kind: EventType,
        target: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        if reason.as_ref().is_some_and(|s| s.len() > REASON_MAX_BYTES) {
            return Err(Error::refused(ErrCode::InvalidField, format!("reason: at most {REASON_MAX_BYTES} bytes")));
        }
        self.check_target(target).await?;
        let (room, _) = self.local_member(user, r).await?;
        let _one = self.state_lock(&room).await;
        let mut removed = false;
        let mut uninvited = false;
        self.change(&room, &[user, target], false, |rec, seen| {
            (removed, uninvited) = (false, false);
            if !seen.member(user) {
                return Err(super::not_member(&room));
            }
            let member = seen.member(target);
            if kind == EventType::Kick && !member {
                return Err(Error::refused(
                    ErrCode::NotMember,
                    format!("{target} is not a member of {}", room.label()),
                ));
            }
            let (mine, theirs) = (role_of(rec, user.as_str()), role_of(rec, target.as_str()));
            if mine < Role::Moderator {
                return Err(forbidden("this takes a moderator or owner"));
            }
            if theirs >= mine {
                return Err(forbidden(format!("{target}'s role is not lower than yours")));
            }
            let changed = match kind {
                EventType::Ban => {
                    uninvited = rec.invites.remove(target.as_str());
                    rec.bans.insert(target.to_string()) || member
                }
                EventType::Unban => rec.bans.remove(target.as_str()),
                _ => true,
            };
            if !changed {
                return Ok(None);
            }
            let content =
                EventContent { target: Some(target.clone()), reason: reason.clone(), ..EventContent::default() };
            let mut owed = Owed::new(kind, user, content);
            if member && kind != EventType::Unban {
                rec.roles.remove(target.as_str());
                rec.joined_seq.remove(target.as_str());
                owed = owed.member(target, false, false);
                removed = true;
            }
            Ok(Some(owed))
        })
        .await?;
        if removed {
            // Every process ends the target's subscriptions when it sees the
            // event (service::fanout); this one need not wait for that.
            self.hub.kick(&room.room_id, target);
            if let Some(f) = &self.federation {
                f.membership_changed(&room.room_id);
            }
        }
        if uninvited {
            self.store.index_invite(target.as_str(), room.room_id.as_str(), false).await?;
        }
        Ok(())
    }

    /// `PUT /rooms/{room}/roles/{user_id}`: an owner sets a member's role.
    pub async fn set_role(&self, user: &UserId, r: &RoomRef, target: &UserId, role: Role) -> Result<()> {
        self.check_target(target).await?;
        let (room, rec) = self.local_member(user, r).await?;
        if role_of(&rec, user.as_str()) != Role::Owner {
            return Err(forbidden("setting roles takes an owner"));
        }
        let _one = self.state_lock(&room).await;
        let demotes_self = target == user && role != Role::Owner;
        self.change(&room, &[user, target], demotes_self, |rec, seen| {
            if !seen.member(user) {
                return Err(super::not_member(&room));
            }
            if role_of(rec, user.as_str()) != Role::Owner {
                return Err(forbidden("setting roles takes an owner"));
            }
            if !seen.member(target) {
                return Err(Error::refused(
                    ErrCode::NotMember,
                    format!("{target} is not a member of {}", room.label()),
                ));
            }
            if demotes_self {
                check_not_last_owner(rec, &seen.all, &room, user)?;
            }
            match role {
                Role::Member => rec.roles.remove(target.as_str()),
                r => rec.roles.insert(target.to_string(), r),
            };
            let content = EventContent { target: Some(target.clone()), role: Some(role), ..EventContent::default() };
            Ok(Some(Owed::new(EventType::Role, user, content)))
        })
        .await?;
        Ok(())
    }

    /// `POST /dm`: the private room of two users of this server, the same
    /// for the pair whichever asks (its id is derived from the pair, so
    /// racing requests of any process make one room). Both are owners;
    /// whoever asks is (again) a member, and the other is invited unless
    /// in the room already.
    pub async fn dm(&self, user: &UserId, target: &UserId) -> Result<Room> {
        if user == target {
            return Err(Error::refused(ErrCode::InvalidField, "user_id: a direct-message room takes another user"));
        }
        self.check_user(target).await?;
        let mut pair = [user.as_str(), target.as_str()];
        pair.sort_unstable();
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("{}\0{}", pair[0], pair[1]).as_bytes());
        let opaque = format!("dm-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]));
        let room_id = RoomId::new(&opaque, &self.server_name);
        let rec = RoomRecord {
            room_id: room_id.to_string(),
            created_ms: now_ms(),
            visibility: Visibility::Private,
            roles: pair.iter().map(|u| (u.to_string(), Role::Owner)).collect(),
            invites: [target.to_string()].into(),
            dm: pair.iter().map(|u| u.to_string()).collect(),
            ..RoomRecord::default()
        };
        let winner = self.store.create(&rec).await?;
        let room = Room { room_id, alias: None };
        if winner.rev == 0 && winner == rec {
            self.start_room(user, &room, &rec, std::slice::from_ref(target)).await?;
            return Ok(room);
        }
        if !self.store.is_member(room.room_id.as_str(), user.as_str()).await? {
            self.join_here(user, room.clone()).await?;
        }
        let rec = self.record(&room).await?;
        if !rec.invites.contains(target.as_str()) && !rec.bans.contains(target.as_str()) {
            self.store.index_invite(target.as_str(), room.room_id.as_str(), true).await?;
            let _one = self.state_lock(&room).await;
            self.change(&room, &[target], false, |r, seen| {
                if seen.member(target) || r.bans.contains(target.as_str()) || !r.invites.insert(target.to_string()) {
                    return Ok(None);
                }
                Ok(Some(Owed::target(EventType::Invite, user, target)))
            })
            .await?;
        }
        Ok(room)
    }

    /// `GET /rooms`: the rooms the user is in, then the pending invites.
    pub async fn list(&self, user: &UserId) -> Result<Vec<RoomState>> {
        let mut joined = self.store.rooms_of(user.as_str()).await?;
        joined.sort_by(record_order);
        let mut invites = self.store.invites_of(user.as_str()).await?;
        invites.sort_by(record_order);
        let mut out = Vec::with_capacity(joined.len() + invites.len());
        for (rec, membership) in joined
            .into_iter()
            .map(|r| (r, Membership::Join))
            .chain(invites.into_iter().map(|r| (r, Membership::Invite)))
        {
            let role = match membership {
                Membership::Join => role_of(&rec, user.as_str()),
                Membership::Invite => Role::Member,
            };
            let (name, topic, visibility) = (rec.name.clone(), rec.topic.clone(), rec.visibility);
            let room = to_room(rec)?;
            let last_event = match membership {
                Membership::Invite => None,
                Membership::Join => self.log.read(&room.room_id, Range::Latest, 1).await?.events.pop(),
            };
            out.push(RoomState { room, name, topic, visibility, membership, role, last_event });
        }
        Ok(out)
    }

    /// Current members with their roles, sorted by user id.
    pub async fn members_with_roles(&self, user: &UserId, r: &RoomRef) -> Result<(Room, Vec<(UserId, Role)>)> {
        let (room, members) = self.members(user, r).await?;
        let rec = self.record(&room).await?;
        let members = members
            .into_iter()
            .map(|m| {
                let role = role_of(&rec, m.as_str());
                (m, role)
            })
            .collect();
        Ok((room, members))
    }
}

/// Rooms by alias, those without one after, by id.
fn record_order(a: &RoomRecord, b: &RoomRecord) -> std::cmp::Ordering {
    let key = |r: &RoomRecord| (r.alias.is_none(), r.alias.clone(), r.room_id.clone());
    key(a).cmp(&key(b))
}

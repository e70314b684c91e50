//! Rooms: resolving names, aliases and ids; creating a room on the first
//! join of a local alias; membership (join, leave, members, rooms list),
//! each effective change recorded as an event in the room log.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::{Error, Result};
use super::fanout::Hub;
use crate::protocol::events::EventType;
use crate::protocol::{ErrCode, RoomAlias, RoomId, RoomRef, ServerName, UserId};
use crate::storage::RoomStore;
use crate::storage::events::{EventLog, NewEvent, now_ms};
use crate::storage::rooms::RoomRecord;

const LOCK_STRIPES: usize = 64;

/// A resolved room: its id and alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub room_id: RoomId,
    pub alias: RoomAlias,
}

pub struct Rooms {
    store: RoomStore,
    log: Arc<dyn EventLog>,
    hub: Arc<Hub>,
    server_name: ServerName,
    rng: SystemRandom,
    /// Serializes membership changes of one (room, user), so that two joins
    /// racing each other append one join event, not two.
    stripes: Vec<tokio::sync::Mutex<()>>,
}

fn not_found(r: &impl std::fmt::Display) -> Error {
    Error::refused(ErrCode::RoomNotFound, format!("no room {r} here"))
}

fn to_room(rec: RoomRecord) -> Result<Room> {
    let corrupt = |e: crate::protocol::IdError| crate::storage::StorageError::Corrupt { tree: "rooms", detail: e.to_string() };
    Ok(Room { room_id: RoomId::parse(&rec.room_id).map_err(corrupt)?, alias: RoomAlias::parse(&rec.alias).map_err(corrupt)? })
}

impl Rooms {
    pub fn new(store: RoomStore, log: Arc<dyn EventLog>, hub: Arc<Hub>, server_name: ServerName) -> Self {
        Self {
            store,
            log,
            hub,
            server_name,
            rng: SystemRandom::new(),
            stripes: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    pub fn parse_ref(raw: &str) -> Result<RoomRef> {
        RoomRef::parse(raw).map_err(|e| Error::refused(ErrCode::InvalidRoom, format!("{raw:?}: {e}")))
    }

    fn local_alias(&self, r: &RoomRef) -> Option<RoomAlias> {
        match r {
            RoomRef::Name(n) => Some(RoomAlias::new(n, &self.server_name)),
            RoomRef::Alias(a) if a.server() == self.server_name.as_str() => Some(a.clone()),
            _ => None,
        }
    }

    /// Finds an existing room.
    pub fn resolve(&self, r: &RoomRef) -> Result<Room> {
        let room_id = match r {
            RoomRef::Id(id) => id.to_string(),
            RoomRef::Alias(a) => self.store.room_for_alias(a.as_str())?.ok_or_else(|| not_found(a))?,
            RoomRef::Name(_) => {
                let alias = self.local_alias(r).expect("names are local");
                self.store.room_for_alias(alias.as_str())?.ok_or_else(|| not_found(&alias))?
            }
        };
        to_room(self.store.room(&room_id)?.ok_or_else(|| not_found(r))?)
    }

    /// Finds a room the user is a member of.
    pub fn resolve_member(&self, user: &UserId, r: &RoomRef) -> Result<Room> {
        let room = self.resolve(r)?;
        if !self.store.is_member(room.room_id.as_str(), user.as_str())? {
            return Err(Error::refused(ErrCode::NotMember, format!("you are not a member of {}", room.alias)));
        }
        Ok(room)
    }

    fn stripe(&self, room: &RoomId, user: &UserId) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (room, user).hash(&mut h);
        &self.stripes[(h.finish() as usize) % LOCK_STRIPES]
    }

    pub async fn join(&self, user: &UserId, r: &RoomRef) -> Result<Room> {
        let room = match self.resolve(r) {
            Ok(room) => room,
            Err(e) if e.code() == ErrCode::RoomNotFound => {
                let alias = self.local_alias(r).ok_or(e)?;
                self.create(&alias).await?
            }
            Err(e) => return Err(e),
        };
        let _guard = self.stripe(&room.room_id, user).lock().await;
        if self.store.is_member(room.room_id.as_str(), user.as_str())? {
            return Ok(room);
        }
        self.log
            .append(&room.room_id, NewEvent { kind: EventType::Join, sender: user.clone(), body: None, txn: None })
            .await?;
        self.store.set_member(room.room_id.as_str(), user.as_str(), true, now_ms()).await?;
        Ok(room)
    }

    async fn create(&self, alias: &RoomAlias) -> Result<Room> {
        let mut b = [0u8; 12];
        self.rng.fill(&mut b).expect("system randomness");
        let opaque = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let room_id = RoomId::new(&opaque, &self.server_name);
        let rec = RoomRecord { room_id: room_id.to_string(), alias: alias.to_string(), created_ms: now_ms() };
        let winner = self.store.create(&rec).await?;
        if winner.room_id == rec.room_id {
            tracing::info!(%room_id, %alias, "room created");
        }
        to_room(winner)
    }

    pub async fn leave(&self, user: &UserId, r: &RoomRef) -> Result<Room> {
        let room = self.resolve(r)?;
        let _guard = self.stripe(&room.room_id, user).lock().await;
        if !self.store.is_member(room.room_id.as_str(), user.as_str())? {
            return Err(Error::refused(ErrCode::NotMember, format!("you are not a member of {}", room.alias)));
        }
        self.log
            .append(&room.room_id, NewEvent { kind: EventType::Leave, sender: user.clone(), body: None, txn: None })
            .await?;
        self.store.set_member(room.room_id.as_str(), user.as_str(), false, now_ms()).await?;
        self.hub.kick(&room.room_id, user);
        Ok(room)
    }

    pub fn members(&self, user: &UserId, r: &RoomRef) -> Result<(Room, Vec<UserId>)> {
        let room = self.resolve_member(user, r)?;
        let members = self
            .store
            .members(room.room_id.as_str())?
            .into_iter()
            .filter_map(|m| UserId::parse(&m).ok())
            .collect();
        Ok((room, members))
    }

    /// The rooms a user is in, sorted by alias.
    pub fn joined(&self, user: &UserId) -> Result<Vec<Room>> {
        let mut rooms = self.store.rooms_of(user.as_str())?.into_iter().map(to_room).collect::<Result<Vec<_>>>()?;
        rooms.sort_by(|a, b| a.alias.cmp(&b.alias));
        Ok(rooms)
    }
}

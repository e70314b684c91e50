//! The room directory in sled (one process): aliases, rooms and membership
//! (both ways: room → members and user → rooms, so each listing is one
//! prefix scan), and the per-user index of pending invites (`user_invites`,
//! user \0 room).

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{RoomRecord, RoomStore};
use crate::storage::events::BoxFuture;
use crate::storage::{Db, StorageError, json_record, key, to_record};

#[derive(Clone)]
pub struct EmbeddedRooms {
    db: Db,
    aliases: sled::Tree,
    rooms: sled::Tree,
    members: sled::Tree,
    user_rooms: sled::Tree,
    user_invites: sled::Tree,
}

fn prefix_of(part: &str) -> Vec<u8> {
    let mut p = part.as_bytes().to_vec();
    p.push(0);
    p
}

fn suffix_after_prefix(k: &[u8], prefix_len: usize) -> Result<String, StorageError> {
    String::from_utf8(k[prefix_len..].to_vec())
        .map_err(|e| StorageError::Corrupt { tree: "members", detail: e.to_string() })
}

impl EmbeddedRooms {
    pub fn open(db: &Db) -> Result<Self, StorageError> {
        Ok(Self {
            db: db.clone(),
            aliases: db.tree("aliases")?,
            rooms: db.tree("rooms")?,
            members: db.tree("members")?,
            user_rooms: db.tree("user_rooms")?,
            user_invites: db.tree("user_invites")?,
        })
    }

    fn alias(&self, alias: &str) -> Result<Option<String>, StorageError> {
        Ok(self.aliases.get(alias.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn get(&self, room_id: &str) -> Result<Option<RoomRecord>, StorageError> {
        self.rooms.get(room_id.as_bytes())?.map(|v| json_record("rooms", &v)).transpose()
    }

    async fn create_now(&self, record: &RoomRecord) -> Result<RoomRecord, StorageError> {
        let rec = to_record(record);
        let winner = self.db.gate().with(|| {
            (&self.aliases, &self.rooms).transaction(|(aliases, rooms)| {
                match &record.alias {
                    Some(alias) => {
                        if let Some(existing) = aliases.get(alias.as_bytes())? {
                            return Ok(Some(existing));
                        }
                        aliases.insert(alias.as_bytes(), record.room_id.as_bytes())?;
                    }
                    None => {
                        if rooms.get(record.room_id.as_bytes())?.is_some() {
                            return Ok(Some(sled::IVec::from(record.room_id.as_bytes())));
                        }
                    }
                }
                rooms.insert(record.room_id.as_bytes(), rec.as_slice())?;
                Ok::<_, ConflictableTransactionError<StorageError>>(None)
            })
        })?;
        match winner {
            None => {
                self.db.sync().await?;
                Ok(record.clone())
            }
            Some(id) => {
                let id = String::from_utf8_lossy(&id).into_owned();
                self.get(&id)?.ok_or(StorageError::Corrupt {
                    tree: "aliases",
                    detail: format!("alias points to missing room {id}"),
                })
            }
        }
    }

    async fn replace_now(
        &self,
        record: &RoomRecord,
        changes: &[(String, bool)],
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        let rec = to_record(record);
        let ts = now_ms.to_be_bytes();
        let room_id = record.room_id.as_bytes();
        let done = self.db.gate().with(|| {
            (&self.rooms, &self.members, &self.user_rooms).transaction(|(rooms, members, user_rooms)| {
                let Some(cur) = rooms.get(room_id)? else { return Ok(false) };
                let cur: RoomRecord = json_record("rooms", &cur).map_err(ConflictableTransactionError::Abort)?;
                if cur.rev + 1 != record.rev {
                    return Ok(false);
                }
                rooms.insert(room_id, rec.as_slice())?;
                for (user_id, member) in changes {
                    let mk = key(&[room_id, user_id.as_bytes()]);
                    let uk = key(&[user_id.as_bytes(), room_id]);
                    if *member {
                        members.insert(mk.as_slice(), &ts[..])?;
                        user_rooms.insert(uk.as_slice(), &ts[..])?;
                    } else {
                        members.remove(mk.as_slice())?;
                        user_rooms.remove(uk.as_slice())?;
                    }
                }
                Ok::<_, ConflictableTransactionError<StorageError>>(true)
            })
        })?;
        if done {
            self.db.sync().await?;
        }
        Ok(done)
    }

    async fn index_invite_now(&self, user_id: &str, room_id: &str, invited: bool) -> Result<(), StorageError> {
        let k = key(&[user_id.as_bytes(), room_id.as_bytes()]);
        self.db.gate().with(|| match invited {
            true => self.user_invites.insert(k, &[][..]),
            false => self.user_invites.remove(k),
        })?;
        self.db.sync().await?;
        Ok(())
    }

    fn invites_of_now(&self, user_id: &str) -> Result<Vec<RoomRecord>, StorageError> {
        let prefix = prefix_of(user_id);
        let mut out = Vec::new();
        for item in self.user_invites.scan_prefix(&prefix) {
            let room_id = suffix_after_prefix(&item?.0, prefix.len())?;
            if let Some(r) = self.get(&room_id)?.filter(|r| r.invites.contains(user_id)) {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn member(&self, room_id: &str, user_id: &str) -> Result<bool, StorageError> {
        Ok(self.members.contains_key(key(&[room_id.as_bytes(), user_id.as_bytes()]))?)
    }

    async fn set_members_now(
        &self,
        room_id: &str,
        changes: &[(String, bool)],
        now_ms: u64,
    ) -> Result<(), StorageError> {
        if changes.is_empty() {
            return Ok(());
        }
        let ts = now_ms.to_be_bytes();
        self.db.gate().with(|| {
            (&self.members, &self.user_rooms).transaction(|(members, user_rooms)| {
                for (user_id, member) in changes {
                    let mk = key(&[room_id.as_bytes(), user_id.as_bytes()]);
                    let uk = key(&[user_id.as_bytes(), room_id.as_bytes()]);
                    if *member {
                        members.insert(mk.as_slice(), &ts[..])?;
                        user_rooms.insert(uk.as_slice(), &ts[..])?;
                    } else {
                        members.remove(mk.as_slice())?;
                        user_rooms.remove(uk.as_slice())?;
                    }
                }
                Ok::<_, ConflictableTransactionError<StorageError>>(())
            })
        })?;
        self.db.sync().await?;
        Ok(())
    }

    fn all_now(&self) -> Result<Vec<RoomRecord>, StorageError> {
        self.rooms.iter().map(|item| json_record("rooms", &item?.1)).collect()
    }

    fn members_now(&self, room_id: &str) -> Result<Vec<String>, StorageError> {
        let prefix = prefix_of(room_id);
        self.members.scan_prefix(&prefix).map(|item| suffix_after_prefix(&item?.0, prefix.len())).collect()
    }

    async fn delete_now(&self, room_id: &str) -> Result<bool, StorageError> {
        let Some(record) = self.get(room_id)? else { return Ok(false) };
        let members = self.members_now(room_id)?;
        self.db.gate().with(|| {
            (&self.aliases, &self.rooms, &self.members, &self.user_rooms).transaction(
                |(aliases, rooms, member_tree, user_rooms)| {
                    if let Some(alias) = &record.alias
                        && aliases.get(alias.as_bytes())?.is_some_and(|owner| owner == room_id.as_bytes())
                    {
                        aliases.remove(alias.as_bytes())?;
                    }
                    rooms.remove(room_id.as_bytes())?;
                    for user in &members {
                        member_tree.remove(key(&[room_id.as_bytes(), user.as_bytes()]))?;
                        user_rooms.remove(key(&[user.as_bytes(), room_id.as_bytes()]))?;
                    }
                    Ok::<_, ConflictableTransactionError<StorageError>>(())
                },
            )
        })?;
        // Pending invites go from their users' indexes too (invites_of
        // checks each entry against its record, so this is tidiness, not safety).
        let mut batch = sled::Batch::default();
        for user in &record.invites {
            batch.remove(key(&[user.as_bytes(), room_id.as_bytes()]));
        }
        self.db.gate().with(|| self.user_invites.apply_batch(batch))?;
        self.db.sync().await?;
        Ok(true)
    }

    fn rooms_of_now(&self, user_id: &str) -> Result<Vec<RoomRecord>, StorageError> {
        let prefix = prefix_of(user_id);
        let mut out = Vec::new();
        for item in self.user_rooms.scan_prefix(&prefix) {
            let room_id = suffix_after_prefix(&item?.0, prefix.len())?;
            if let Some(r) = self.get(&room_id)? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

impl RoomStore for EmbeddedRooms {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn room_for_alias<'a>(&'a self, alias: &'a str) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(async move { self.alias(alias) })
    }

    fn room<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Option<RoomRecord>, StorageError>> {
        Box::pin(async move { self.get(room_id) })
    }

    fn create<'a>(&'a self, record: &'a RoomRecord) -> BoxFuture<'a, Result<RoomRecord, StorageError>> {
        Box::pin(self.create_now(record))
    }

    fn replace<'a>(
        &'a self,
        record: &'a RoomRecord,
        changes: &'a [(String, bool)],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(self.replace_now(record, changes, now_ms))
    }

    fn index_invite<'a>(
        &'a self,
        user_id: &'a str,
        room_id: &'a str,
        invited: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.index_invite_now(user_id, room_id, invited))
    }

    fn invites_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<RoomRecord>, StorageError>> {
        Box::pin(async move { self.invites_of_now(user_id) })
    }

    fn is_member<'a>(&'a self, room_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move { self.member(room_id, user_id) })
    }

    fn set_members<'a>(
        &'a self,
        room_id: &'a str,
        changes: &'a [(String, bool)],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.set_members_now(room_id, changes, now_ms))
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<RoomRecord>, StorageError>> {
        Box::pin(async move { self.all_now() })
    }

    fn members<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async move { self.members_now(room_id) })
    }

    fn delete<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(self.delete_now(room_id))
    }

    fn rooms_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<RoomRecord>, StorageError>> {
        Box::pin(async move { self.rooms_of_now(user_id) })
    }
}

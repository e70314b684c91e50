//! The room directory in sled: aliases, rooms and membership (both ways:
//! room → members and user → rooms, so each listing is one prefix scan).

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{StorageError, json_record, key, to_record};

/// A room as the directory knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomRecord {
    pub room_id: String,
    pub alias: String,
    pub created_ms: u64,
}

#[derive(Clone)]
pub struct RoomStore {
    db: super::Db,
    aliases: sled::Tree,
    rooms: sled::Tree,
    members: sled::Tree,
    user_rooms: sled::Tree,
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

impl RoomStore {
    pub fn open(db: &super::Db) -> Result<Self, StorageError> {
        Ok(Self {
            db: db.clone(),
            aliases: db.tree("aliases")?,
            rooms: db.tree("rooms")?,
            members: db.tree("members")?,
            user_rooms: db.tree("user_rooms")?,
        })
    }

    pub fn room_for_alias(&self, alias: &str) -> Result<Option<String>, StorageError> {
        Ok(self.aliases.get(alias.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn room(&self, room_id: &str) -> Result<Option<RoomRecord>, StorageError> {
        self.rooms.get(room_id.as_bytes())?.map(|v| json_record("rooms", &v)).transpose()
    }

    /// Creates the room for `record.alias` unless another request created it
    /// first; either way returns the room that now owns the alias. Durable.
    pub async fn create(&self, record: &RoomRecord) -> Result<RoomRecord, StorageError> {
        let rec = to_record(record);
        let winner = (&self.aliases, &self.rooms).transaction(|(aliases, rooms)| {
            if let Some(existing) = aliases.get(record.alias.as_bytes())? {
                return Ok(Some(existing));
            }
            aliases.insert(record.alias.as_bytes(), record.room_id.as_bytes())?;
            rooms.insert(record.room_id.as_bytes(), rec.as_slice())?;
            Ok::<_, ConflictableTransactionError<StorageError>>(None)
        })?;
        match winner {
            None => {
                self.db.sync().await?;
                Ok(record.clone())
            }
            Some(id) => {
                let id = String::from_utf8_lossy(&id).into_owned();
                self.room(&id)?.ok_or(StorageError::Corrupt {
                    tree: "aliases",
                    detail: format!("alias points to missing room {id}"),
                })
            }
        }
    }

    pub fn is_member(&self, room_id: &str, user_id: &str) -> Result<bool, StorageError> {
        Ok(self.members.contains_key(key(&[room_id.as_bytes(), user_id.as_bytes()]))?)
    }

    /// Records (or removes) a membership in both directions; durable on return.
    pub async fn set_member(
        &self,
        room_id: &str,
        user_id: &str,
        member: bool,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        self.set_members(room_id, &[(user_id.to_owned(), member)], now_ms).await
    }

    /// Applies several membership changes of one room at once; durable on return.
    pub async fn set_members(
        &self,
        room_id: &str,
        changes: &[(String, bool)],
        now_ms: u64,
    ) -> Result<(), StorageError> {
        if changes.is_empty() {
            return Ok(());
        }
        let ts = now_ms.to_be_bytes();
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
        })?;
        self.db.sync().await?;
        Ok(())
    }

    /// Every room the directory knows.
    pub fn all(&self) -> Result<Vec<RoomRecord>, StorageError> {
        self.rooms.iter().map(|item| json_record("rooms", &item?.1)).collect()
    }

    /// Member user ids, sorted.
    pub fn members(&self, room_id: &str) -> Result<Vec<String>, StorageError> {
        let prefix = prefix_of(room_id);
        self.members.scan_prefix(&prefix).map(|item| suffix_after_prefix(&item?.0, prefix.len())).collect()
    }

    /// Rooms a user is in.
    pub fn rooms_of(&self, user_id: &str) -> Result<Vec<RoomRecord>, StorageError> {
        let prefix = prefix_of(user_id);
        let mut out = Vec::new();
        for item in self.user_rooms.scan_prefix(&prefix) {
            let room_id = suffix_after_prefix(&item?.0, prefix.len())?;
            if let Some(r) = self.room(&room_id)? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

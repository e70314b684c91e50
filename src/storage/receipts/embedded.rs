//! Read receipts in sled: one tree, key `ROOM \0 USER`, value `EPOCH SEQ`.
//! A mark is flushed to disk (group commit) before it is acknowledged.

use super::{ReadMark, ReceiptStore};
use crate::storage::events::BoxFuture;
use crate::storage::{Db, StorageError, key};

pub struct EmbeddedReceipts {
    db: Db,
    tree: sled::Tree,
}

impl EmbeddedReceipts {
    pub fn open(db: &Db) -> Result<Self, StorageError> {
        Ok(Self { db: db.clone(), tree: db.tree("receipts")? })
    }
}

impl ReceiptStore for EmbeddedReceipts {
    fn get<'a>(&'a self, room_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<Option<ReadMark>, StorageError>> {
        Box::pin(async move {
            let v = self.tree.get(key(&[room_id.as_bytes(), user_id.as_bytes()]))?;
            v.map(|v| ReadMark::decode(&String::from_utf8_lossy(&v))).transpose()
        })
    }

    fn advance<'a>(
        &'a self,
        room_id: &'a str,
        user_id: &'a str,
        mark: &'a ReadMark,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let k = key(&[room_id.as_bytes(), user_id.as_bytes()]);
            let new = mark.encode();
            // Compare and swap until no other writer came between the read and the write.
            loop {
                let old = self.tree.get(&k)?;
                if let Some(old) = &old
                    && !mark.advances(&ReadMark::decode(&String::from_utf8_lossy(old))?)
                {
                    return Ok(false);
                }
                if self.tree.compare_and_swap(&k, old, Some(new.as_bytes()))?.is_ok() {
                    break;
                }
            }
            self.db.sync().await?;
            Ok(true)
        })
    }
}

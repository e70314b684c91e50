//! Read receipts in Redis, shared by every process: one hash per room,
//! `parlor:{ROOM}:receipts` (the room log's hash tag), field user id →
//! `EPOCH SEQ`. A one-key Lua script moves a mark only forward, so two
//! processes marking at once keep the further one.

use redis::Script;

use super::{ReadMark, ReceiptStore};
use crate::storage::StorageError;
use crate::storage::events::BoxFuture;
use crate::storage::events::redis::link::{Conn, Target, connect, query_cmd, storage_error};

/// KEYS[1] the room's receipts hash; ARGV user, epoch, seq. Returns 1 when
/// the mark moved.
const ADVANCE: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local sp = string.find(old, ' [^ ]*$')
  if sp and string.sub(old, 1, sp - 1) == ARGV[2] and tonumber(string.sub(old, sp + 1)) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return 1
"#;

fn receipts_key(room: &str) -> String {
    format!("parlor:{{{room}}}:receipts")
}

pub struct RedisReceipts {
    conn: Conn,
    advance: Script,
}

impl RedisReceipts {
    pub async fn open(target: &Target) -> Result<Self, StorageError> {
        Ok(Self { conn: connect(target).await?, advance: Script::new(ADVANCE) })
    }
}

impl ReceiptStore for RedisReceipts {
    fn get<'a>(&'a self, room_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<Option<ReadMark>, StorageError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(receipts_key(room_id)).arg(user_id);
            let v: Option<String> = query_cmd(&self.conn, &cmd).await?;
            v.map(|v| ReadMark::decode(&v)).transpose()
        })
    }

    fn advance<'a>(
        &'a self,
        room_id: &'a str,
        user_id: &'a str,
        mark: &'a ReadMark,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            // `invoke` loads the script again when Redis lost it (a restart).
            let moved: i64 = self
                .advance
                .key(receipts_key(room_id))
                .arg(user_id)
                .arg(&mark.epoch)
                .arg(mark.seq)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| storage_error(&e))?;
            Ok(moved == 1)
        })
    }
}

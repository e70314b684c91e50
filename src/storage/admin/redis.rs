//! [`AdminStore`] in Redis, the only copy with `--redis` (every process
//! reads it; nothing is cached). Keys, all in one hash slot (`{admin}`):
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `parlor:{admin}:registration_tokens` | hash | token → JSON of its fixed fields |
//! | `parlor:{admin}:registration_token_uses` | hash | token → uses taken |
//! | `parlor:{admin}:denied_servers` | set | denied server names |
//!
//! A use is taken by one Lua script that checks expiry and count and
//! increments in the same step, so racing registrations (on any process)
//! cannot both take the last use.

use redis::{AsyncCommands as _, Script};

use super::{AdminStore, RegToken, TakeUse};
use crate::storage::StorageError;
use crate::storage::events::BoxFuture;
use crate::storage::events::redis::link::{Conn, Target, connect, storage_error};

const TOKENS: &str = "parlor:{admin}:registration_tokens";
const USES: &str = "parlor:{admin}:registration_token_uses";
const DENIED: &str = "parlor:{admin}:denied_servers";

/// KEYS: tokens, uses. ARGV: token, now_ms. Answers taken, unknown, used_up or expired.
const TAKE_USE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 'unknown' end
local t = cjson.decode(v)
if type(t.expires_ms) == 'number' and tonumber(ARGV[2]) >= t.expires_ms then return 'expired' end
local used = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if type(t.uses_allowed) == 'number' and used >= t.uses_allowed then return 'used_up' end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 'taken'
";

/// KEYS: tokens, uses. ARGV: token. Gives back one use of a token that still exists.
const GIVE_BACK: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 and tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
end
return 0
";

pub struct RedisAdmin {
    conn: Conn,
    take_use: Script,
    give_back: Script,
}

impl RedisAdmin {
    /// Connects to the Redis at `url` as the other stores sharing it do
    /// (`link::connect`: same timeouts, same outage rule, URL redacted).
    pub async fn open(target: &Target) -> Result<Self, StorageError> {
        let conn = connect(target).await?;
        Ok(Self { conn, take_use: Script::new(TAKE_USE), give_back: Script::new(GIVE_BACK) })
    }
}

impl AdminStore for RedisAdmin {
    fn add_token<'a>(&'a self, token: &'a RegToken) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let fixed = RegToken { completed: 0, ..token.clone() };
            let json = serde_json::to_string(&fixed).expect("records serialize");
            redis::pipe()
                .atomic()
                .hset(TOKENS, &token.token, json)
                .hset(USES, &token.token, token.completed)
                .exec_async(&mut self.conn.clone())
                .await
                .map_err(|e| storage_error(&e))
        })
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<RegToken>, StorageError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (fixed, uses): (Vec<(String, String)>, std::collections::HashMap<String, u64>) = redis::pipe()
                .hgetall(TOKENS)
                .hgetall(USES)
                .query_async(&mut conn)
                .await
                .map_err(|e| storage_error(&e))?;
            let mut out = Vec::with_capacity(fixed.len());
            for (token, json) in fixed {
                let mut t: RegToken = crate::storage::json_record("registration_tokens", json.as_bytes())?;
                t.completed = uses.get(&token).copied().unwrap_or(0);
                out.push(t);
            }
            out.sort_by(|a, b| a.token.cmp(&b.token));
            Ok(out)
        })
    }

    fn revoke_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let (removed, _): (u64, u64) = redis::pipe()
                .atomic()
                .hdel(TOKENS, token)
                .hdel(USES, token)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| storage_error(&e))?;
            Ok(removed > 0)
        })
    }

    fn take_use<'a>(&'a self, token: &'a str, now_ms: u64) -> BoxFuture<'a, Result<TakeUse, StorageError>> {
        Box::pin(async move {
            let answer: String = self
                .take_use
                .key(TOKENS)
                .key(USES)
                .arg(token)
                .arg(now_ms)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| storage_error(&e))?;
            match answer.as_str() {
                "taken" => Ok(TakeUse::Taken),
                "unknown" => Ok(TakeUse::Unknown),
                "used_up" => Ok(TakeUse::UsedUp),
                "expired" => Ok(TakeUse::Expired),
                other => Err(StorageError::Script { script: "take_use", detail: other.to_owned() }),
            }
        })
    }

    fn give_back<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let _: i64 = self
                .give_back
                .key(TOKENS)
                .key(USES)
                .arg(token)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| storage_error(&e))?;
            Ok(())
        })
    }

    fn set_denied<'a>(&'a self, server: &'a str, denied: bool) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: u64 = match denied {
                true => conn.sadd(DENIED, server).await,
                false => conn.srem(DENIED, server).await,
            }
            .map_err(|e| storage_error(&e))?;
            Ok(n > 0)
        })
    }

    fn is_denied<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move { self.conn.clone().sismember(DENIED, server).await.map_err(|e| storage_error(&e)) })
    }

    fn denied(&self) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let mut v: Vec<String> = self.conn.clone().smembers(DENIED).await.map_err(|e| storage_error(&e))?;
            v.sort();
            Ok(v)
        })
    }
}

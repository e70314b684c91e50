//! Rate-limit buckets shared by every process of a server on one Redis
//! (`--redis`): one token bucket per key, checked by one Lua script per
//! check (`accounts/scripts/bucket.lua`) on a key that expires once its
//! bucket would be full again, and the memory of the (account, address)
//! pairs that logged in before. Without Redis the buckets live in each
//! process's memory (`service::ratelimit`).
//!
//! Keys: `parlor:rl:LIMIT:KEY` hash `t` tokens, `at` ms (Redis clock), with
//! a TTL; `parlor:known:USERNAME:ADDRESS` string, with a TTL. Each script
//! touches one key, so any key may live in any slot.

use std::time::Duration;

use redis::Script;

use super::StorageError;
use super::events::BoxFuture;
use super::events::redis::link::{Conn, Target, connect, is_noscript_value, storage_error};

/// Token buckets (and remembered keys) shared with other processes.
pub trait SharedBuckets: Send + Sync {
    /// Takes a token from bucket `key` (`burst` tokens, one back every
    /// `every`): `Ok(None)` when taken, `Ok(Some(ms))` when the next one is
    /// that far away.
    fn take<'a>(
        &'a self,
        key: &'a str,
        burst: u32,
        every: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;

    /// Gives one token back to bucket `key` (never above the burst; a
    /// bucket that is full, i.e. gone, stays so).
    fn refund<'a>(&'a self, key: &'a str, burst: u32, every: Duration) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Remembers `key` for `ttl`.
    fn remember<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Whether `key` is remembered.
    fn remembers<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;
}

/// [`SharedBuckets`] in Redis.
pub struct RedisBuckets {
    conn: Conn,
    script: Script,
}

impl RedisBuckets {
    pub async fn open(target: &Target) -> Result<Self, StorageError> {
        let mut conn = connect(target).await?;
        let script = Script::new(include_str!("accounts/scripts/bucket.lua"));
        script.load_async(&mut conn).await.map_err(|e| storage_error(&e))?;
        Ok(Self { conn, script })
    }

    async fn run(&self, key: &str, burst: u32, every: Duration, cost: i64) -> Result<u64, StorageError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(1).arg(format!("parlor:rl:{key}"));
        cmd.arg(burst).arg(every.as_millis().max(1) as u64).arg(cost);
        for tries in 1.. {
            match cmd.query_async::<redis::Value>(&mut self.conn.clone()).await {
                Ok(v) if tries < 2 && is_noscript_value(&v) => {}
                Ok(redis::Value::Int(ms)) => return Ok(ms.max(0) as u64),
                Ok(v) => {
                    return Err(StorageError::Script { script: "bucket", detail: format!("{v:?}") });
                }
                Err(e) if tries < 2 && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {}
                Err(e) => return Err(storage_error(&e)),
            }
            // Redis restarted or flushed its scripts: nothing ran.
            self.script.load_async(&mut self.conn.clone()).await.map_err(|e| storage_error(&e))?;
        }
        unreachable!("the loop returns")
    }
}

impl SharedBuckets for RedisBuckets {
    fn take<'a>(
        &'a self,
        key: &'a str,
        burst: u32,
        every: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move { Ok(Some(self.run(key, burst, every, 1).await?).filter(|ms| *ms > 0)) })
    }

    fn refund<'a>(&'a self, key: &'a str, burst: u32, every: Duration) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move { self.run(key, burst, every, -1).await.map(drop) })
    }

    fn remember<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            redis::cmd("SET")
                .arg(format!("parlor:known:{key}"))
                .arg(1)
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(|e| storage_error(&e))
        })
    }

    fn remembers<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            redis::cmd("EXISTS")
                .arg(format!("parlor:known:{key}"))
                .query_async::<bool>(&mut self.conn.clone())
                .await
                .map_err(|e| storage_error(&e))
        })
    }
}

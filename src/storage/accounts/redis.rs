//! Accounts, devices, tokens and device proofs in Redis (`--redis`): the one
//! copy every process of the server reads and writes, so a user registered
//! on one process logs in on any other at once, and a token issued by one
//! authenticates on all. Also the revocation channel that makes every
//! process close a revoked token's WebSockets.
//!
//! Keys (`NAME` is the user's local part; `{NAME}` is the hash tag, so one
//! user's keys share a slot and the device script touches one slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `parlor:user:{NAME}:account` | string | the account record (JSON) |
//! | `parlor:user:{NAME}:devices` | hash | device id → `{name, created_ms, token_hash}` (JSON) |
//! | `parlor:user:{NAME}:proofs` | sorted set | device proof hash (hex) → created ms |
//! | `parlor:token:HASH` | string | token hash (hex) → `{user_id, device_id}` (JSON) |
//! | `parlor:revoked` | pub/sub channel | `t HASH USER_ID` (one token), `u USER_ID` (every token) |
//!
//! A token is looked up by its hash alone, so its key cannot carry the
//! user's tag: a login writes the device (script, user slot) and then the
//! token key, in one pipeline; a revocation deletes the token key first (the
//! one that decides whether the token authenticates) and the device after.
//! A crash between the two leaves at worst a device without a token, never a
//! token without its device, so `logout/all` (which finds tokens through the
//! devices) can always revoke every live token.
//!
//! Acknowledged after Redis answered and, where Redis's persistence may
//! lose part of what it acknowledged in a crash of its host (the room log's
//! rule, [`crate::storage::events::redis::persistence`]) and it has an AOF,
//! after `WAITAOF` says the change is in the local AOF (Redis 7.2+; older
//! Redis gets a warning at start).

use redis::{Client, Pipeline, Script, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{AccountExport, AccountRecord, AccountStore, NewDevice, Revoked, TokenRecord};
use crate::storage::StorageError;
use crate::storage::events::BoxFuture;
use crate::storage::events::redis::link::{Conn, RESPONSE_TIMEOUT, Target, connect, follow_channel, storage_error};

/// The channel revocations are published on.
pub const REVOKED_CHANNEL: &str = "parlor:revoked";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceRecord {
    name: Option<String>,
    created_ms: u64,
    /// Hex.
    token_hash: String,
}

/// The account store of a server whose processes share one Redis.
pub struct RedisAccounts {
    nodes: Vec<Client>,
    conn: Conn,
    device_script: Script,
    /// `WAITAOF 1 0 <ms>`, appended to every change when Redis may lose
    /// acknowledged writes and can be asked to wait for its AOF.
    wait_aof: Option<redis::Cmd>,
}

impl RedisAccounts {
    pub async fn open(target: &Target) -> Result<Self, StorageError> {
        let nodes = target.nodes()?;
        let mut conn = connect(target).await?;
        let device_script = Script::new(include_str!("scripts/device.lua"));
        device_script.load_async(&mut conn).await.map_err(|e| storage_error(&e))?;
        let p = crate::storage::events::redis::persistence(&mut conn).await?;
        let mut wait_aof = None;
        if p.may_lose_acknowledged {
            let mut cmd = redis::cmd("WAITAOF");
            cmd.arg(1).arg(0).arg(RESPONSE_TIMEOUT.as_millis() as u64);
            if p.aof && cmd.query_async::<Value>(&mut conn.clone()).await.is_ok() {
                wait_aof = Some(cmd);
            } else {
                tracing::warn!(
                    "redis may lose acknowledged writes in a crash of its host (appendfsync is not `always`, or \
                     snapshots only) and cannot wait for its AOF (WAITAOF needs Redis 7.2 and appendonly yes): \
                     account changes of the last moments before such a crash can be lost; set appendfsync always"
                );
            }
        }
        Ok(Self { nodes, conn, device_script, wait_aof })
    }

    /// Runs `pipe` (plus the AOF wait, if any) and answers its values;
    /// a server error in any answer is an error of the whole.
    async fn write(&self, mut pipe: Pipeline) -> Result<Vec<Value>, StorageError> {
        if let Some(w) = &self.wait_aof {
            pipe.add_command(w.clone());
        }
        let mut tries = 0;
        let values = loop {
            tries += 1;
            let values: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await.map_err(|e| storage_error(&e))?;
            let noscript = values.iter().any(crate::storage::events::redis::link::is_noscript_value);
            if noscript && tries < 2 {
                // Redis restarted or flushed its scripts: nothing of the script ran.
                self.device_script.load_async(&mut self.conn.clone()).await.map_err(|e| storage_error(&e))?;
                continue;
            }
            break values;
        };
        for v in &values {
            if let Value::ServerError(e) = v {
                return Err(storage_error(&redis::RedisError::from(e.clone())));
            }
        }
        if self.wait_aof.is_some() {
            let local = values.last().and_then(|v| redis::from_redis_value_ref::<(i64, i64)>(v).ok());
            if local.is_none_or(|(n, _)| n < 1) {
                return Err(StorageError::Unavailable("redis did not write its AOF in time".into()));
            }
        }
        Ok(values)
    }

    /// Writes an account exported from another store, with its devices,
    /// tokens and proofs as they were. `Ok(false)`: Redis holds another
    /// account of that name (nothing written). Writing the same export again
    /// changes nothing, so an interrupted migration can be run again.
    pub async fn import(&self, a: &AccountExport) -> Result<bool, StorageError> {
        if let Some(held) = AccountStore::get(self, &a.username).await?
            && crate::storage::to_record(&held) != crate::storage::to_record(&a.account)
        {
            return Ok(false);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(account_key(&a.username)).arg(crate::storage::to_record(&a.account)).arg("NX").ignore();
        pipe.cmd("SADD").arg(USERS_KEY).arg(&a.username).ignore();
        let user = &a.account.user_id;
        for d in &a.devices {
            let device =
                DeviceRecord { name: d.name.clone(), created_ms: d.created_ms, token_hash: hex(&d.token_hash) };
            pipe.cmd("HSET").arg(devices_key(user)).arg(&d.device_id).arg(crate::storage::to_record(&device)).ignore();
        }
        for (hash, created_ms) in &a.proofs {
            pipe.cmd("ZADD").arg(proofs_key(user)).arg(*created_ms).arg(hex(hash)).ignore();
        }
        // Devices before tokens, as at login: a token never exists without its device.
        for d in &a.devices {
            let token = TokenRecord { user_id: user.clone(), device_id: d.device_id.clone() };
            pipe.cmd("SET").arg(token_key(&d.token_hash)).arg(crate::storage::to_record(&token)).ignore();
        }
        self.write(pipe).await?;
        Ok(true)
    }

    async fn read<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StorageError> {
        cmd.query_async(&mut self.conn.clone()).await.map_err(|e| storage_error(&e))
    }
}

/// The hash tag of a user: the local part of `@NAME:server`, or a username.
fn tag(user: &str) -> &str {
    let local = user.strip_prefix('@').unwrap_or(user);
    local.split(':').next().unwrap_or(local)
}

fn account_key(username: &str) -> String {
    format!("parlor:user:{{{}}}:account", tag(username))
}

fn devices_key(user: &str) -> String {
    format!("parlor:user:{{{}}}:devices", tag(user))
}

fn proofs_key(user: &str) -> String {
    format!("parlor:user:{{{}}}:proofs", tag(user))
}

/// The set of every username, for listing (never on a request path).
const USERS_KEY: &str = "parlor:users";

fn token_key(hash: &[u8; 32]) -> String {
    format!("parlor:token:{}", hex(hash))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn corrupt(what: &'static str, detail: impl ToString) -> StorageError {
    StorageError::Corrupt { tree: what, detail: detail.to_string() }
}

/// A message on [`REVOKED_CHANNEL`], as [`Revoked`].
fn parse_revoked(payload: &str) -> Option<Revoked> {
    let mut parts = payload.splitn(3, ' ');
    match (parts.next()?, parts.next(), parts.next()) {
        ("t", Some(h), Some(user)) => Some(Revoked::Token { user_id: user.to_owned(), token_hash: unhex(h)? }),
        ("u", Some(user), None) => Some(Revoked::User { user_id: user.to_owned() }),
        _ => None,
    }
}

impl AccountStore for RedisAccounts {
    fn create<'a>(&'a self, username: &'a str, record: &'a AccountRecord) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(account_key(username)).arg(crate::storage::to_record(record)).arg("NX");
            // The index may name a username whose SET lost the race: `list`
            // reads each account and skips what is not there.
            pipe.cmd("SADD").arg(USERS_KEY).arg(username).ignore();
            let values = self.write(pipe).await?;
            Ok(matches!(values.first(), Some(Value::Okay | Value::SimpleString(_))))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AccountRecord>, StorageError>> {
        Box::pin(async move {
            let mut names: Vec<String> = self.read(redis::cmd("SMEMBERS").arg(USERS_KEY)).await?;
            names.sort();
            let mut pipe = redis::pipe();
            for n in &names {
                pipe.cmd("GET").arg(account_key(n));
            }
            let values: Vec<Option<Vec<u8>>> =
                pipe.query_async(&mut self.conn.clone()).await.map_err(|e| storage_error(&e))?;
            values.into_iter().flatten().map(|v| crate::storage::json_record("redis accounts", &v)).collect()
        })
    }

    fn replace<'a>(
        &'a self,
        username: &'a str,
        record: &'a AccountRecord,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(account_key(username)).arg(crate::storage::to_record(record)).arg("XX");
            let values = self.write(pipe).await?;
            Ok(matches!(values.first(), Some(Value::Okay | Value::SimpleString(_))))
        })
    }

    fn get<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<Option<AccountRecord>, StorageError>> {
        Box::pin(async move {
            let v: Option<Vec<u8>> = self.read(redis::cmd("GET").arg(account_key(username))).await?;
            v.map(|v| crate::storage::json_record("redis accounts", &v)).transpose()
        })
    }

    fn add_device<'a>(&'a self, d: NewDevice<'a>) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let device =
                DeviceRecord { name: d.name.map(str::to_owned), created_ms: d.now_ms, token_hash: hex(d.token_hash) };
            let token = TokenRecord { user_id: d.user_id.to_owned(), device_id: d.device_id.to_owned() };
            let mut pipe = redis::pipe();
            pipe.cmd("EVALSHA")
                .arg(self.device_script.get_hash())
                .arg(2)
                .arg(devices_key(d.user_id))
                .arg(proofs_key(d.user_id))
                .arg(d.device_id)
                .arg(crate::storage::to_record(&device))
                .arg(d.proof_hash.map(|h| hex(h)).unwrap_or_default())
                .arg(d.now_ms)
                .arg(d.keep_proofs.max(1));
            // After the device: a token key never exists without its device.
            pipe.cmd("SET").arg(token_key(d.token_hash)).arg(crate::storage::to_record(&token));
            self.write(pipe).await?;
            Ok(())
        })
    }

    fn has_proof<'a>(
        &'a self,
        user_id: &'a str,
        proof_hash: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let score: Option<f64> =
                self.read(redis::cmd("ZSCORE").arg(proofs_key(user_id)).arg(hex(proof_hash))).await?;
            Ok(score.is_some())
        })
    }

    fn token<'a>(&'a self, token_hash: &'a [u8; 32]) -> BoxFuture<'a, Result<Option<TokenRecord>, StorageError>> {
        Box::pin(async move {
            let v: Option<Vec<u8>> = self.read(redis::cmd("GET").arg(token_key(token_hash))).await?;
            v.map(|v| crate::storage::json_record("redis tokens", &v)).transpose()
        })
    }

    fn revoke<'a>(&'a self, token_hash: &'a [u8; 32]) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            // The token goes first (see the module doc); GETDEL says whose it was.
            let mut pipe = redis::pipe();
            pipe.cmd("GETDEL").arg(token_key(token_hash));
            let values = self.write(pipe).await?;
            let Some(v) = values.first().and_then(|v| redis::from_redis_value_ref::<Option<Vec<u8>>>(v).ok()).flatten()
            else {
                return Ok(());
            };
            let rec: TokenRecord = crate::storage::json_record("redis tokens", &v)?;
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL").arg(devices_key(&rec.user_id)).arg(&rec.device_id);
            pipe.cmd("PUBLISH").arg(REVOKED_CHANNEL).arg(format!("t {} {}", hex(token_hash), rec.user_id));
            self.write(pipe).await?;
            Ok(())
        })
    }

    fn revoke_all<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<[u8; 32]>, StorageError>> {
        Box::pin(async move {
            let devices: Vec<(String, Vec<u8>)> = self.read(redis::cmd("HGETALL").arg(devices_key(user_id))).await?;
            let mut hashes = Vec::with_capacity(devices.len());
            let mut pipe = redis::pipe();
            // Tokens first, then the devices found with them (a device added
            // meanwhile is a later login and keeps its token), the proofs,
            // and the word to every process.
            for (_, v) in &devices {
                let dev: DeviceRecord = crate::storage::json_record("redis devices", v)?;
                let hash = unhex(&dev.token_hash).ok_or_else(|| corrupt("redis devices", "token hash is not hex"))?;
                pipe.cmd("DEL").arg(token_key(&hash));
                hashes.push(hash);
            }
            if !devices.is_empty() {
                let ids: Vec<&str> = devices.iter().map(|(id, _)| id.as_str()).collect();
                pipe.cmd("HDEL").arg(devices_key(user_id)).arg(ids);
            }
            pipe.cmd("DEL").arg(proofs_key(user_id));
            pipe.cmd("PUBLISH").arg(REVOKED_CHANNEL).arg(format!("u {user_id}"));
            self.write(pipe).await?;
            Ok(hashes)
        })
    }

    fn revocations(&self) -> Option<mpsc::UnboundedReceiver<Revoked>> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Every (re)subscription is followed by `Recheck`: revocations
        // published while this process was not subscribed are lost to it.
        let follow = follow_channel(
            self.nodes.clone(),
            REVOKED_CHANNEL,
            "token revocations",
            tx,
            || Revoked::Recheck,
            parse_revoked,
        );
        tokio::spawn(follow);
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_users_tag() {
        assert_eq!(account_key("alice"), "parlor:user:{alice}:account");
        assert_eq!(devices_key("@alice:example.org"), "parlor:user:{alice}:devices");
        assert_eq!(proofs_key("@alice:example.org:8448"), "parlor:user:{alice}:proofs");
    }

    #[test]
    fn revocation_messages_round_trip() {
        let h = [0xab; 32];
        assert_eq!(
            parse_revoked(&format!("t {} @a:x", hex(&h))),
            Some(Revoked::Token { user_id: "@a:x".into(), token_hash: h })
        );
        assert_eq!(parse_revoked("u @a:x:8448"), Some(Revoked::User { user_id: "@a:x:8448".into() }));
        assert_eq!(parse_revoked("t nothex @a:x"), None);
        assert_eq!(parse_revoked("x"), None);
    }
}

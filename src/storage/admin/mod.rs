//! What the operator sets with `parlor admin`: registration tokens and the
//! server deny list. One trait, [`AdminStore`], with two implementations
//! chosen by `--redis` like the room log: [`embedded::EmbeddedAdmin`] (sled)
//! and [`redis::RedisAdmin`] (with `--redis` Redis is the only copy, shared
//! by every process). A token's use is taken atomically in both, so two
//! registrations racing for its last use cannot both have it.

pub mod embedded;
pub mod redis;

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::events::BoxFuture;

/// A registration token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegToken {
    pub token: String,
    /// Registrations it allows in all (None: any number).
    pub uses_allowed: Option<u64>,
    /// Uses taken so far (the stored count; records keep it apart from the token's fixed fields).
    #[serde(default)]
    pub completed: u64,
    /// Expiry, ms since the Unix epoch (None: never).
    pub expires_ms: Option<u64>,
    pub created_ms: u64,
}

/// What an attempt to take one use of a token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeUse {
    /// One use is now taken.
    Taken,
    /// No such token (never issued, or revoked).
    Unknown,
    /// Every use is taken.
    UsedUp,
    /// Past its expiry.
    Expired,
}

impl RegToken {
    /// Whether one more use may be taken at `now_ms` (the rule both stores apply).
    pub fn check(&self, now_ms: u64) -> TakeUse {
        if self.expires_ms.is_some_and(|e| now_ms >= e) {
            TakeUse::Expired
        } else if self.uses_allowed.is_some_and(|n| self.completed >= n) {
            TakeUse::UsedUp
        } else {
            TakeUse::Taken
        }
    }
}

/// Registration tokens and the deny list. Every write is acknowledged once
/// stored (sled: synced to disk; Redis: answered).
pub trait AdminStore: Send + Sync + 'static {
    /// Stores a new token.
    fn add_token<'a>(&'a self, token: &'a RegToken) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Every token, in token order.
    fn tokens(&self) -> BoxFuture<'_, Result<Vec<RegToken>, StorageError>>;
    /// Forgets a token; false when there was none.
    fn revoke_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;
    /// Takes one use of a token, atomically with the check.
    fn take_use<'a>(&'a self, token: &'a str, now_ms: u64) -> BoxFuture<'a, Result<TakeUse, StorageError>>;
    /// Gives back a use taken by a registration that then failed (nothing
    /// when the token is gone).
    fn give_back<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Denies (`true`) or allows a server; false when it already was so.
    fn set_denied<'a>(&'a self, server: &'a str, denied: bool) -> BoxFuture<'a, Result<bool, StorageError>>;
    /// Whether a server is denied.
    fn is_denied<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;
    /// Every denied server, sorted.
    fn denied(&self) -> BoxFuture<'_, Result<Vec<String>, StorageError>>;
}

//! Accounts, devices, access tokens and device proofs: the [`AccountStore`]
//! trait the service sees, and its two stores — [`embedded`] (sled, without
//! `--redis`) and [`redis`] (shared by every process on one Redis). Tokens
//! and proofs are stored only as SHA-256 hashes; passwords only as the PHC
//! strings the service hands us.

pub mod embedded;
pub mod redis;

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::events::BoxFuture;

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    pub user_id: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_ms: u64,
    /// When the operator deactivated it (`parlor admin users deactivate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_ms: Option<u64>,
}

/// What a token hash resolves to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub user_id: String,
    pub device_id: String,
}

/// A device to store at login.
pub struct NewDevice<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub name: Option<&'a str>,
    pub token_hash: &'a [u8; 32],
    /// A new device proof of the user to store with it, keeping at most
    /// `keep_proofs` of the user's proofs (the oldest go).
    pub proof_hash: Option<&'a [u8; 32]>,
    pub keep_proofs: usize,
    pub now_ms: u64,
}

/// Everything a store holds of one account (`parlor migrate` moves it from
/// one store to another as it is, so tokens keep working and devices stay
/// proved).
#[derive(Debug, Clone)]
pub struct AccountExport {
    pub username: String,
    pub account: AccountRecord,
    pub devices: Vec<DeviceExport>,
    /// Device proof hashes and when each was made.
    pub proofs: Vec<([u8; 32], u64)>,
}

/// One device of an [`AccountExport`].
#[derive(Debug, Clone)]
pub struct DeviceExport {
    pub device_id: String,
    pub name: Option<String>,
    pub created_ms: u64,
    pub token_hash: [u8; 32],
}

/// A revocation seen by a store shared with other processes, for the
/// service to close the matching WebSockets of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// One token of `user_id` (logout).
    Token { user_id: String, token_hash: [u8; 32] },
    /// Every token of `user_id` (logout everywhere).
    User { user_id: String },
    /// The store may have missed revocations (its subscription was lost and
    /// is back): every open session's token must be checked again.
    Recheck,
}

/// Where accounts, devices, tokens and proofs live. Every change is
/// acknowledged only once the store answered (and, by its rules, made it
/// durable); every read sees every acknowledged change of every process.
pub trait AccountStore: Send + Sync {
    /// Creates the account unless the username is taken; `Ok(true)`: created.
    fn create<'a>(&'a self, username: &'a str, record: &'a AccountRecord) -> BoxFuture<'a, Result<bool, StorageError>>;

    fn get<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<Option<AccountRecord>, StorageError>>;

    /// Stores a new device, its token hash and (if any) a new device proof.
    fn add_device<'a>(&'a self, d: NewDevice<'a>) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Whether `proof_hash` is a device proof of `user_id`.
    fn has_proof<'a>(&'a self, user_id: &'a str, proof_hash: &'a [u8; 32])
    -> BoxFuture<'a, Result<bool, StorageError>>;

    fn token<'a>(&'a self, token_hash: &'a [u8; 32]) -> BoxFuture<'a, Result<Option<TokenRecord>, StorageError>>;

    /// Revokes one token (and its device).
    fn revoke<'a>(&'a self, token_hash: &'a [u8; 32]) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Revokes every token of a user and forgets the devices it proved;
    /// returns the revoked token hashes.
    fn revoke_all<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<[u8; 32]>, StorageError>>;

    /// Every account (for `parlor admin users list`).
    fn list(&self) -> BoxFuture<'_, Result<Vec<AccountRecord>, StorageError>>;
    /// Replaces an existing account's record (password hash, deactivation);
    /// `Ok(false)`: there is no such account. Acknowledged like every change.
    fn replace<'a>(&'a self, username: &'a str, record: &'a AccountRecord)
    -> BoxFuture<'a, Result<bool, StorageError>>;
    /// Revocations made by other processes, for a store shared with them
    /// (`None`: this process is the only one, and closes its own sessions).
    /// Called once, at start.
    fn revocations(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Revoked>> {
        None
    }
}

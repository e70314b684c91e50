//! Accounts, devices, access tokens and device proofs in sled (the
//! embedded store, used without `--redis`).

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{AccountExport, AccountRecord, AccountStore, DeviceExport, NewDevice, TokenRecord};
use crate::storage::events::BoxFuture;
use crate::storage::{StorageError, json_record, key, to_record};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceRecord {
    name: Option<String>,
    created_ms: u64,
    token_hash: Vec<u8>,
}

/// What a device proof hash resolves to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProofRecord {
    user_id: String,
    created_ms: u64,
}

/// The account trees of one sled database.
#[derive(Clone)]
pub struct EmbeddedAccounts {
    db: crate::storage::Db,
    users: sled::Tree,
    tokens: sled::Tree,
    devices: sled::Tree,
    /// proof hash → `ProofRecord`.
    proofs: sled::Tree,
    /// `user_id \0 created_ms (8 bytes, big-endian) proof hash` → nothing: a user's proofs, oldest first.
    user_proofs: sled::Tree,
}

impl EmbeddedAccounts {
    pub fn open(db: &crate::storage::Db) -> Result<Self, StorageError> {
        Ok(Self {
            db: db.clone(),
            users: db.tree("users")?,
            tokens: db.tree("tokens")?,
            devices: db.tree("devices")?,
            proofs: db.tree("device_proofs")?,
            user_proofs: db.tree("user_device_proofs")?,
        })
    }

    /// Creates the account unless the username is taken; durable on `Ok(true)`.
    async fn create(&self, username: &str, record: &AccountRecord) -> Result<bool, StorageError> {
        let created = self
            .db
            .gate()
            .with(|| self.users.compare_and_swap(username.as_bytes(), None as Option<&[u8]>, Some(to_record(record))))?
            .is_ok();
        if created {
            self.db.sync().await?;
        }
        Ok(created)
    }

    fn get(&self, username: &str) -> Result<Option<AccountRecord>, StorageError> {
        self.users.get(username.as_bytes())?.map(|v| json_record("users", &v)).transpose()
    }

    /// Stores a new device, its token hash and (if any) a new device proof
    /// together; durable on return.
    async fn add_device(&self, d: NewDevice<'_>) -> Result<(), StorageError> {
        let device = to_record(&DeviceRecord {
            name: d.name.map(str::to_owned),
            created_ms: d.now_ms,
            token_hash: d.token_hash.to_vec(),
        });
        let token = to_record(&TokenRecord { user_id: d.user_id.to_owned(), device_id: d.device_id.to_owned() });
        let dkey = key(&[d.user_id.as_bytes(), d.device_id.as_bytes()]);
        let proof = d.proof_hash.map(|h| {
            let rec = to_record(&ProofRecord { user_id: d.user_id.to_owned(), created_ms: d.now_ms });
            (*h, rec, proof_index_key(d.user_id, d.now_ms, h))
        });
        // The oldest proofs beyond the user's allowance go in the same batch.
        let mut stale = Vec::new();
        if proof.is_some() {
            let held: Vec<sled::IVec> =
                self.user_proofs.scan_prefix(user_prefix(d.user_id)).keys().collect::<Result<_, _>>()?;
            let excess = (held.len() + 1).saturating_sub(d.keep_proofs.max(1));
            stale = held.into_iter().take(excess).collect();
        }
        self.db.gate().with(|| {
            (&self.devices, &self.tokens, &self.proofs, &self.user_proofs).transaction(
                |(devices, tokens, proofs, user_proofs)| {
                    devices.insert(dkey.as_slice(), device.as_slice())?;
                    tokens.insert(&d.token_hash[..], token.as_slice())?;
                    for old in &stale {
                        user_proofs.remove(old)?;
                        proofs.remove(&old[old.len() - 32..])?;
                    }
                    if let Some((hash, rec, index)) = &proof {
                        proofs.insert(&hash[..], rec.as_slice())?;
                        user_proofs.insert(index.as_slice(), &[][..])?;
                    }
                    Ok::<_, ConflictableTransactionError<StorageError>>(())
                },
            )
        })?;
        self.db.sync().await?;
        Ok(())
    }

    /// The user a device proof belongs to, if it is one.
    fn proof_user(&self, proof_hash: &[u8; 32]) -> Result<Option<String>, StorageError> {
        Ok(self
            .proofs
            .get(proof_hash)?
            .map(|v| json_record::<ProofRecord>("device_proofs", &v))
            .transpose()?
            .map(|r| r.user_id))
    }

    fn token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StorageError> {
        self.tokens.get(token_hash)?.map(|v| json_record("tokens", &v)).transpose()
    }

    /// Revokes one token (and its device); durable on return.
    async fn revoke(&self, token_hash: &[u8; 32]) -> Result<(), StorageError> {
        let Some(rec) = self.token(token_hash)? else { return Ok(()) };
        let dkey = key(&[rec.user_id.as_bytes(), rec.device_id.as_bytes()]);
        self.db.gate().with(|| {
            (&self.devices, &self.tokens).transaction(|(devices, tokens)| {
                tokens.remove(&token_hash[..])?;
                devices.remove(dkey.as_slice())?;
                Ok::<_, ConflictableTransactionError<StorageError>>(())
            })
        })?;
        self.db.sync().await?;
        Ok(())
    }

    /// Revokes every token of a user; returns the revoked token hashes.
    async fn revoke_all(&self, user_id: &str) -> Result<Vec<[u8; 32]>, StorageError> {
        let mut prefix = user_id.as_bytes().to_vec();
        prefix.push(0);
        let mut revoked = Vec::new();
        for item in self.devices.scan_prefix(&prefix) {
            let (dkey, v) = item?;
            let dev: DeviceRecord = json_record("devices", &v)?;
            let hash: [u8; 32] = dev
                .token_hash
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::Corrupt { tree: "devices", detail: "token hash is not 32 bytes".into() })?;
            self.db.gate().with(|| {
                (&self.devices, &self.tokens).transaction(
                    |(devices, tokens): &(TransactionalTree, TransactionalTree)| {
                        tokens.remove(&hash[..])?;
                        devices.remove(&dkey)?;
                        Ok::<_, ConflictableTransactionError<StorageError>>(())
                    },
                )
            })?;
            revoked.push(hash);
        }
        // "Log out everywhere" also forgets every device the user proved.
        for item in self.user_proofs.scan_prefix(user_prefix(user_id)).keys() {
            let index = item?;
            self.db.gate().with(|| {
                (&self.proofs, &self.user_proofs).transaction(
                    |(proofs, user_proofs): &(TransactionalTree, TransactionalTree)| {
                        proofs.remove(&index[index.len() - 32..])?;
                        user_proofs.remove(&index)?;
                        Ok::<_, ConflictableTransactionError<StorageError>>(())
                    },
                )
            })?;
        }
        self.db.sync().await?;
        Ok(revoked)
    }

    pub fn list(&self) -> Result<Vec<AccountRecord>, StorageError> {
        self.users.iter().values().map(|v| json_record("users", &v?)).collect()
    }

    /// Every account with its devices and proofs (for `parlor migrate`).
    pub fn export(&self) -> Result<Vec<AccountExport>, StorageError> {
        let mut out = Vec::new();
        for item in self.users.iter() {
            let (k, v) = item?;
            let account: AccountRecord = json_record("users", &v)?;
            let username = String::from_utf8(k.to_vec())
                .map_err(|e| StorageError::Corrupt { tree: "users", detail: e.to_string() })?;
            let prefix = user_prefix(&account.user_id);
            let mut devices = Vec::new();
            for item in self.devices.scan_prefix(&prefix) {
                let (dkey, v) = item?;
                let dev: DeviceRecord = json_record("devices", &v)?;
                let corrupt = |detail: &str| StorageError::Corrupt { tree: "devices", detail: detail.into() };
                devices.push(DeviceExport {
                    device_id: String::from_utf8(dkey[prefix.len()..].to_vec())
                        .map_err(|_| corrupt("a device id is not UTF-8"))?,
                    name: dev.name,
                    created_ms: dev.created_ms,
                    token_hash: dev
                        .token_hash
                        .as_slice()
                        .try_into()
                        .map_err(|_| corrupt("token hash is not 32 bytes"))?,
                });
            }
            let mut proofs = Vec::new();
            for index in self.user_proofs.scan_prefix(&prefix).keys() {
                let index = index?;
                let rest = &index[prefix.len()..];
                let (Ok(created), Ok(hash)) =
                    (<[u8; 8]>::try_from(&rest[..8.min(rest.len())]), <[u8; 32]>::try_from(&rest[8.min(rest.len())..]))
                else {
                    return Err(StorageError::Corrupt {
                        tree: "user_device_proofs",
                        detail: "a key is not 40 bytes after the user".into(),
                    });
                };
                proofs.push((hash, u64::from_be_bytes(created)));
            }
            out.push(AccountExport { username, account, devices, proofs });
        }
        Ok(out)
    }

    pub async fn replace(&self, username: &str, record: &AccountRecord) -> Result<bool, StorageError> {
        let existed = self
            .db
            .gate()
            .with(|| self.users.update_and_fetch(username.as_bytes(), |old| old.map(|_| to_record(record))))?
            .is_some();
        self.db.sync().await?;
        Ok(existed)
    }
}

impl AccountStore for EmbeddedAccounts {
    fn create<'a>(&'a self, username: &'a str, record: &'a AccountRecord) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(self.create(username, record))
    }

    fn get<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<Option<AccountRecord>, StorageError>> {
        Box::pin(async move { self.get(username) })
    }

    fn add_device<'a>(&'a self, d: NewDevice<'a>) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.add_device(d))
    }

    fn has_proof<'a>(
        &'a self,
        user_id: &'a str,
        proof_hash: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move { Ok(self.proof_user(proof_hash)?.as_deref() == Some(user_id)) })
    }

    fn token<'a>(&'a self, token_hash: &'a [u8; 32]) -> BoxFuture<'a, Result<Option<TokenRecord>, StorageError>> {
        Box::pin(async move { self.token(token_hash) })
    }

    fn revoke<'a>(&'a self, token_hash: &'a [u8; 32]) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.revoke(token_hash))
    }

    fn revoke_all<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<[u8; 32]>, StorageError>> {
        Box::pin(self.revoke_all(user_id))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AccountRecord>, StorageError>> {
        Box::pin(async move { self.list() })
    }

    fn replace<'a>(
        &'a self,
        username: &'a str,
        record: &'a AccountRecord,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(self.replace(username, record))
    }
}

fn user_prefix(user_id: &str) -> Vec<u8> {
    let mut prefix = user_id.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// `user_id \0 created_ms proof_hash`: sorts a user's proofs oldest first;
/// the hash is always the last 32 bytes.
fn proof_index_key(user_id: &str, created_ms: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut k = user_prefix(user_id);
    k.extend_from_slice(&created_ms.to_be_bytes());
    k.extend_from_slice(hash);
    k
}

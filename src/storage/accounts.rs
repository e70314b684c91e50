//! Accounts, devices and access tokens in sled. Tokens are stored only as
//! SHA-256 hashes; passwords only as the PHC strings the service hands us.

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{StorageError, json_record, key, to_record};

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    pub user_id: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_ms: u64,
}

/// What a token hash resolves to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub user_id: String,
    pub device_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceRecord {
    name: Option<String>,
    created_ms: u64,
    token_hash: Vec<u8>,
}

/// The account trees of one sled database.
#[derive(Clone)]
pub struct AccountStore {
    db: super::Db,
    users: sled::Tree,
    tokens: sled::Tree,
    devices: sled::Tree,
}

impl AccountStore {
    pub fn open(db: &super::Db) -> Result<Self, StorageError> {
        Ok(Self { db: db.clone(), users: db.tree("users")?, tokens: db.tree("tokens")?, devices: db.tree("devices")? })
    }

    /// Creates the account unless the username is taken; durable on `Ok(true)`.
    pub async fn create(&self, username: &str, record: &AccountRecord) -> Result<bool, StorageError> {
        let created =
            self.users.compare_and_swap(username.as_bytes(), None as Option<&[u8]>, Some(to_record(record)))?.is_ok();
        if created {
            self.db.sync().await?;
        }
        Ok(created)
    }

    pub fn get(&self, username: &str) -> Result<Option<AccountRecord>, StorageError> {
        self.users.get(username.as_bytes())?.map(|v| json_record("users", &v)).transpose()
    }

    /// Stores a new device and its token hash together; durable on return.
    pub async fn add_device(
        &self,
        user_id: &str,
        device_id: &str,
        name: Option<&str>,
        token_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), StorageError> {
        let device = to_record(&DeviceRecord {
            name: name.map(str::to_owned),
            created_ms: now_ms,
            token_hash: token_hash.to_vec(),
        });
        let token = to_record(&TokenRecord { user_id: user_id.to_owned(), device_id: device_id.to_owned() });
        let dkey = key(&[user_id.as_bytes(), device_id.as_bytes()]);
        (&self.devices, &self.tokens).transaction(|(devices, tokens)| {
            devices.insert(dkey.as_slice(), device.as_slice())?;
            tokens.insert(&token_hash[..], token.as_slice())?;
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        })?;
        self.db.sync().await?;
        Ok(())
    }

    pub fn token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StorageError> {
        self.tokens.get(token_hash)?.map(|v| json_record("tokens", &v)).transpose()
    }

    /// Revokes one token (and its device); durable on return.
    pub async fn revoke(&self, token_hash: &[u8; 32]) -> Result<(), StorageError> {
        let Some(rec) = self.token(token_hash)? else { return Ok(()) };
        let dkey = key(&[rec.user_id.as_bytes(), rec.device_id.as_bytes()]);
        (&self.devices, &self.tokens).transaction(|(devices, tokens)| {
            tokens.remove(&token_hash[..])?;
            devices.remove(dkey.as_slice())?;
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        })?;
        self.db.sync().await?;
        Ok(())
    }

    /// Revokes every token of a user; returns the revoked token hashes.
    pub async fn revoke_all(&self, user_id: &str) -> Result<Vec<[u8; 32]>, StorageError> {
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
            (&self.devices, &self.tokens).transaction(
                |(devices, tokens): &(TransactionalTree, TransactionalTree)| {
                    tokens.remove(&hash[..])?;
                    devices.remove(&dkey)?;
                    Ok::<_, ConflictableTransactionError<StorageError>>(())
                },
            )?;
            revoked.push(hash);
        }
        self.db.sync().await?;
        Ok(revoked)
    }
}

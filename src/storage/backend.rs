//! Which backend each store opens on, decided in this one place: the data
//! directory's sled database alone (the embedded default), or Redis for
//! everything the processes of one server share (`--redis URL` or
//! `--redis-cluster URL[,URL…]`). Services
//! get trait objects (or backend-neutral handles) from here and never name
//! a backend; tests/tidy.rs checks that.

use std::path::Path;
use std::sync::Arc;

use super::accounts::AccountStore;
use super::accounts::embedded::EmbeddedAccounts;
use super::accounts::redis::RedisAccounts;
use super::admin::AdminStore;
use super::admin::embedded::EmbeddedAdmin;
use super::admin::redis::RedisAdmin;
use super::events::embedded::EmbeddedLog;
use super::events::redis::{RedisLog, Target};
use super::events::{EventLog, EventSink, LogSettings};
use super::federation::{PushLeases, RedisFederation, SeenRequests};
use super::live::RedisBus;
use super::ratelimit::{RedisBuckets, SharedBuckets};
use super::receipts::ReceiptStore;
use super::receipts::embedded::EmbeddedReceipts;
use super::receipts::redis::RedisReceipts;
use super::rooms::{EmbeddedRooms, RedisRooms, RoomStore};
use super::{Db, StorageError};

/// The bus live state (typing, presence, receipts) crosses processes on;
/// only a server of several processes has one.
pub type Bus = RedisBus;

/// The stores of one server: the data directory's database, and Redis when
/// the server's processes share one.
pub struct Backend {
    db: Db,
    redis: Option<Target>,
}

impl Backend {
    /// `redis`: the `--redis` URL; `cluster`: the `--redis-cluster` nodes.
    pub fn new(db: Db, redis: Option<String>, cluster: Option<Vec<String>>) -> Self {
        Self { db, redis: Target::of(redis.as_deref(), cluster.as_deref()) }
    }

    /// Whether the server's processes share a Redis (or a Redis Cluster).
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Records the server's name in Redis, or refuses a Redis that belongs
    /// to another server; nothing to do for the embedded backend, whose
    /// data directory records it (`identity`).
    pub async fn claim_identity(&self, server_name: &str) -> Result<(), StorageError> {
        match &self.redis {
            None => Ok(()),
            Some(t) => super::events::redis::claim_identity(t, server_name).await,
        }
    }

    pub async fn rooms(&self) -> Result<Arc<dyn RoomStore>, StorageError> {
        Ok(match &self.redis {
            None => Arc::new(EmbeddedRooms::open(&self.db)?),
            Some(t) => Arc::new(RedisRooms::open(t).await?),
        })
    }

    pub async fn accounts(&self) -> Result<Arc<dyn AccountStore>, StorageError> {
        Ok(match &self.redis {
            None => Arc::new(EmbeddedAccounts::open(&self.db)?),
            Some(t) => Arc::new(RedisAccounts::open(t).await?),
        })
    }

    /// The operator's store (registration tokens, the server deny list).
    pub async fn admin(&self) -> Result<Arc<dyn AdminStore>, StorageError> {
        Ok(match &self.redis {
            None => Arc::new(EmbeddedAdmin::open(&self.db)?),
            Some(t) => Arc::new(RedisAdmin::open(t).await?),
        })
    }

    pub async fn receipts(&self) -> Result<Arc<dyn ReceiptStore>, StorageError> {
        Ok(match &self.redis {
            None => Arc::new(EmbeddedReceipts::open(&self.db)?),
            Some(t) => Arc::new(RedisReceipts::open(t).await?),
        })
    }

    /// The room log, feeding `sink` in seq order per room.
    pub async fn log(
        &self,
        sink: Arc<dyn EventSink>,
        settings: &LogSettings,
    ) -> Result<Arc<dyn EventLog>, StorageError> {
        Ok(match &self.redis {
            None => Arc::new(EmbeddedLog::open(&self.db, sink, settings)?),
            Some(t) => Arc::new(RedisLog::open(t, &self.db, sink, settings).await?),
        })
    }

    /// Rate-limit buckets shared by every process, when there are several.
    pub async fn shared_buckets(&self) -> Result<Option<Arc<dyn SharedBuckets>>, StorageError> {
        Ok(match &self.redis {
            None => None,
            Some(t) => Some(Arc::new(RedisBuckets::open(t).await?)),
        })
    }

    pub async fn bus(&self) -> Result<Option<Bus>, StorageError> {
        Ok(match &self.redis {
            None => None,
            Some(t) => Some(RedisBus::open(t).await?),
        })
    }

    /// Federation's signing key (made with `generate` the first time: in
    /// the data dir, or once in Redis for every process), the requests it
    /// has seen, and who pushes to which server.
    pub async fn federation(
        &self,
        data_dir: &Path,
        generate: impl FnOnce() -> Vec<u8>,
    ) -> Result<(Vec<u8>, SeenRequests, PushLeases), StorageError> {
        super::federation::drop_old_outbox(&self.db)?;
        Ok(match &self.redis {
            None => (
                super::federation::load_or_create_key(data_dir, generate)?,
                SeenRequests::open(&self.db)?,
                PushLeases::Local,
            ),
            Some(t) => {
                let shared = RedisFederation::open(t).await?;
                let key = shared.shared_key(data_dir, generate).await?;
                (key, shared.seen(), shared.leases())
            }
        })
    }
}

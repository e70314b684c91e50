//! Services: the policy layer between the wire and storage. Built once at
//! start-up from the `Config` and shared by every connection.

pub mod accounts;
pub mod error;
pub mod events;
pub mod fanout;
pub mod hashing;
pub mod passwords;
pub mod ratelimit;
pub mod rooms;

use std::sync::Arc;

pub use error::{Error, Result};

use crate::config::Config;
use crate::storage::events::EventLog;
use crate::storage::events::embedded::EmbeddedLog;
use crate::storage::events::redis::RedisLog;
use crate::storage::{AccountStore, RoomStore, StorageError};

/// Every service of one server.
pub struct Services {
    pub config: Config,
    pub accounts: accounts::Accounts,
    pub rooms: Arc<rooms::Rooms>,
    pub events: events::Events,
    pub hub: Arc<fanout::Hub>,
    db: crate::storage::Db,
}

impl Services {
    /// Opens storage and builds the services.
    pub async fn open(config: Config) -> Result<Self, StorageError> {
        let db = crate::storage::Db::open(&config.data_dir)?;
        let hub = fanout::Hub::new();
        let log: Arc<dyn EventLog> = match &config.redis {
            None => Arc::new(EmbeddedLog::open(&db, hub.clone(), config.retention)?),
            Some(url) => Arc::new(RedisLog::open(url, hub.clone(), config.retention).await?),
        };
        let limits = Arc::new(ratelimit::RateLimits::new(config.rate_limit));
        let rooms = Arc::new(rooms::Rooms::new(RoomStore::open(&db)?, log.clone(), hub.clone(), config.server_name.clone()));
        let accounts = accounts::Accounts::new(
            AccountStore::open(&db)?,
            config.server_name.clone(),
            config.hash_concurrency,
            limits.clone(),
        )
        .await
        .map_err(|e| StorageError::Log(format!("cannot start the hashing threads: {e}")))?;
        let events = events::Events::new(rooms.clone(), log, limits);
        Ok(Self { config, accounts, rooms, events, hub, db })
    }

    /// Flushes everything; called once after the last connection is gone.
    pub async fn close(&self) {
        self.events.log().close().await;
        let _ = self.db.sync().await;
    }
}

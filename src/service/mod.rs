//! Services: the policy layer between the wire and storage. Built once at
//! start-up from the `Config` and shared by every connection.

pub mod accounts;
pub mod error;
pub mod events;
pub mod fanout;
pub mod federation;
pub mod hashing;
pub mod passwords;
pub mod ratelimit;
pub mod rooms;

use std::sync::Arc;

pub use error::{Error, Result, StartError};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::events::embedded::EmbeddedLog;
use crate::storage::events::redis::RedisLog;
use crate::storage::events::{EventLog, LogSettings};
use crate::storage::identity::{Identity, RoomLog};
use crate::storage::{AccountStore, RoomStore, StorageError};

/// Every service of one server.
pub struct Services {
    pub config: Config,
    pub accounts: accounts::Accounts,
    pub rooms: Arc<rooms::Rooms>,
    pub events: events::Events,
    pub hub: Arc<fanout::Hub>,
    pub federation: Option<Arc<federation::Federation>>,
    db: crate::storage::Db,
}

impl Services {
    /// Opens storage and builds the services, which record into `metrics`;
    /// federation reaches other servers through `transport` (the wire's
    /// `fedclient` in the server).
    pub async fn open(
        config: Config,
        transport: Arc<dyn federation::Transport>,
        metrics: &Metrics,
    ) -> Result<Self, StartError> {
        let db = crate::storage::Db::open_with_cache(&config.data_dir, config.cache_mib)?;
        let room_log = match config.redis {
            None => RoomLog::Embedded,
            Some(_) => RoomLog::Redis,
        };
        let identity = Identity { server_name: config.server_name.to_string(), room_log };
        // Both checked before either is recorded: a refused start records nothing.
        let unrecorded = crate::storage::identity::check_dir(&config.data_dir, &identity)?;
        if let Some(url) = &config.redis {
            crate::storage::events::redis::claim_identity(url, &identity.server_name).await?;
        }
        if unrecorded {
            crate::storage::identity::record_dir(&config.data_dir, &identity)?;
        }
        let hub = fanout::Hub::with_deliveries(metrics.ws.deliveries.clone());
        let directory = RoomStore::open(&db)?;
        let federation = match config.federation {
            false => None,
            true => {
                let pkcs8 = crate::storage::federation::load_or_create_key(
                    &config.data_dir,
                    federation::Federation::generate_key,
                )
                .map_err(StorageError::from)?;
                // A server serving TLS itself is reached over HTTPS; one that
                // does not may be behind a TLS proxy, and says so with --public-url.
                let scheme = if config.tls.is_some() { "https" } else { "http" };
                let settings = federation::Settings {
                    public_url: config
                        .public_url
                        .clone()
                        .unwrap_or_else(|| format!("{scheme}://{}", config.server_name)),
                    retry_max: config.federation_retry_max,
                    give_up: config.federation_give_up,
                    queue_max: config.federation_queue_max,
                };
                crate::storage::federation::drop_old_outbox(&db)?;
                let fed = federation::Federation::new(
                    config.server_name.clone(),
                    &pkcs8,
                    settings,
                    transport,
                    directory.clone(),
                    crate::storage::federation::SeenRequests::open(&db)?,
                )?;
                Some(fed)
            }
        };
        let sink = Arc::new(fanout::Fanout { hub: hub.clone(), federation: federation.clone() });
        let settings = LogSettings::new(config.retention);
        let log: Arc<dyn EventLog> = match &config.redis {
            None => Arc::new(EmbeddedLog::open(&db, sink, &settings)?),
            Some(url) => Arc::new(RedisLog::open(url, &db, sink, &settings).await?),
        };
        let limits = Arc::new(ratelimit::RateLimits::new(config.rate_limit));
        let rooms = Arc::new(rooms::Rooms::new(
            directory,
            log.clone(),
            hub.clone(),
            config.server_name.clone(),
            federation.clone(),
        ));
        let accounts = accounts::Accounts::new(
            AccountStore::open(&db)?,
            config.server_name.clone(),
            config.hash_concurrency,
            config.hash_queue,
            limits.clone(),
        )
        .await?;
        let events = events::Events::new(rooms.clone(), log, limits, metrics.events.clone());
        if let Some(fed) = &federation {
            fed.start();
            let (rooms, every) = (rooms.clone(), config.federation_catch_up);
            fed.spawn(async move {
                rooms.seed_federation().await;
                rooms.catch_up_forever(every).await
            });
        }
        Ok(Self { config, accounts, rooms, events, hub, federation, db })
    }

    /// Flushes everything; called once after the last connection is gone.
    pub async fn close(&self) {
        if let Some(f) = &self.federation {
            f.close().await;
        }
        self.events.log().close().await;
        let _ = self.db.sync().await;
    }
}

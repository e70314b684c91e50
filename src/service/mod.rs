//! Services: the policy layer between the wire and storage. Built once at
//! start-up from the `Config` and shared by every connection.

pub mod accounts;
pub mod admin;
pub mod error;
pub mod events;
pub mod fanout;
pub mod federation;
pub mod hashing;
pub mod live;
pub mod passwords;
pub mod ratelimit;
pub mod receipts;
pub mod rooms;

use std::sync::Arc;

pub use error::{Error, Result, StartError};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::backend::Backend;
use crate::storage::events::{EventLog, LogSettings};
use crate::storage::identity::{Identity, RoomLog};

/// Every service of one server.
pub struct Services {
    pub config: Config,
    pub accounts: accounts::Accounts,
    pub rooms: Arc<rooms::Rooms>,
    pub events: events::Events,
    pub hub: Arc<fanout::Hub>,
    pub live: Arc<live::Live>,
    pub receipts: receipts::Receipts,
    pub federation: Option<Arc<federation::Federation>>,
    pub admin: Arc<admin::Admin>,
    db: crate::storage::Db,
}

/// What `parlor admin` opens when no server runs on the data dir: the
/// accounts and the operator's store, nothing that serves.
pub struct Offline {
    pub accounts: accounts::Accounts,
    pub admin: admin::Admin,
    log: Arc<dyn EventLog>,
    db: crate::storage::Db,
}

impl Offline {
    /// Opens a data dir some server already used (its sled lock refuses
    /// while that server runs), with the backend its identity records.
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let recorded = crate::storage::identity::recorded(&config.data_dir)?;
        let Some(identity) = recorded else {
            return Err(StartError::NotADataDir(config.data_dir.clone()));
        };
        let shared = config.redis.is_some() || config.redis_cluster.is_some();
        let room_log = if shared { RoomLog::Redis } else { RoomLog::Embedded };
        crate::storage::identity::check_dir(&config.data_dir, &Identity { room_log, ..identity })?;
        let db = crate::storage::Db::open_with_cache(&config.data_dir, config.cache_mib)?;
        let backend = Backend::new(db.clone(), config.redis.clone(), config.redis_cluster.clone());
        let directory = backend.rooms().await?;
        // The room log, for purges; its deliveries go to a hub nobody listens to.
        let hub = fanout::Hub::new();
        let log = backend.log(hub.clone(), &LogSettings::new(None)).await?;
        let parts = admin::AdminParts { data_dir: &config.data_dir, db: &db, directory, log: log.clone(), hub };
        let admin = admin::Admin::new(backend.admin().await?, config.registration, parts);
        let limits = Arc::new(ratelimit::RateLimits::new(false));
        let store = backend.accounts().await?;
        let accounts = accounts::Accounts::new(store, config.server_name.clone(), 1, 4, limits).await?;
        Ok(Self { accounts, admin, log, db })
    }

    /// Runs one admin command.
    pub async fn run(&self, req: crate::protocol::admin::AdminRequest) -> Result<crate::protocol::admin::AdminAnswer> {
        self.admin.run(&self.accounts, req).await
    }

    /// Stops the room log and makes every write durable.
    pub async fn close(&self) {
        self.log.close().await;
        let _ = self.db.sync().await;
    }
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
        let backend = Backend::new(db.clone(), config.redis.clone(), config.redis_cluster.clone());
        // One Redis and a Redis Cluster hold the same keys: one backend.
        let room_log = if backend.shared() { RoomLog::Redis } else { RoomLog::Embedded };
        let identity = Identity { server_name: config.server_name.to_string(), room_log };
        // Both checked before either is recorded: a refused start records nothing.
        let unrecorded = crate::storage::identity::check_dir(&config.data_dir, &identity)?;
        backend.claim_identity(&identity.server_name).await?;
        if unrecorded {
            crate::storage::identity::record_dir(&config.data_dir, &identity)?;
        }
        let hub = fanout::Hub::with_deliveries(metrics.ws.deliveries.clone());
        let directory = backend.rooms().await?;
        let admin_store = backend.admin().await?;
        let federation = match config.federation {
            false => None,
            true => {
                let (pkcs8, seen, leases) =
                    backend.federation(&config.data_dir, federation::Federation::generate_key).await?;
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
                let fed = federation::Federation::new(
                    config.server_name.clone(),
                    &pkcs8,
                    settings,
                    transport,
                    directory.clone(),
                    seen,
                    leases,
                )?;
                fed.deny_with(admin_store.clone());
                Some(fed)
            }
        };
        let sink = Arc::new(fanout::Fanout { hub: hub.clone(), federation: federation.clone() });
        let settings = LogSettings::new(config.retention);
        let log: Arc<dyn EventLog> = backend.log(sink, &settings).await?;
        let admin = Arc::new(admin::Admin::new(
            admin_store,
            config.registration,
            admin::AdminParts {
                data_dir: &config.data_dir,
                db: &db,
                directory: directory.clone(),
                log: log.clone(),
                hub: hub.clone(),
            },
        ));
        // With Redis, accounts and the register/login buckets are shared by
        // every process of the server (ARCHITECTURE.md § "Several processes").
        let account_store = backend.accounts().await?;
        let limits = match backend.shared_buckets().await? {
            None => ratelimit::RateLimits::new(config.rate_limit),
            Some(buckets) => ratelimit::RateLimits::shared(config.rate_limit, buckets),
        };
        let limits = Arc::new(limits);
        let rooms = Arc::new(rooms::Rooms::new(
            directory,
            log.clone(),
            hub.clone(),
            account_store.clone(),
            config.server_name.clone(),
            federation.clone(),
        ));
        let accounts = accounts::Accounts::new(
            account_store,
            config.server_name.clone(),
            config.hash_concurrency,
            config.hash_queue,
            limits.clone(),
        )
        .await?;
        let bus = backend.bus().await?;
        let live = live::Live::start(hub.clone(), rooms.clone(), bus, config.typing_timeout);
        let receipt_store = backend.receipts().await?;
        let receipts = receipts::Receipts::new(receipt_store, rooms.clone(), log.clone(), live.clone());
        let events = events::Events::new(rooms.clone(), log, limits, metrics.events.clone(), live.clone());
        if let Some(fed) = &federation {
            fed.start();
            let (rooms, every) = (rooms.clone(), config.federation_catch_up);
            fed.spawn(async move {
                rooms.seed_federation().await;
                rooms.catch_up_forever(every).await
            });
        }
        Ok(Self { config, accounts, rooms, events, hub, live, receipts, federation, admin, db })
    }

    /// Flushes everything; called once after the last connection is gone.
    pub async fn close(&self) {
        self.live.close().await;
        if let Some(f) = &self.federation {
            f.close().await;
        }
        self.events.log().close().await;
        let _ = self.db.sync().await;
    }
}

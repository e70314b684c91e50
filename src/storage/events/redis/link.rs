//! The command connection to Redis and the log's Lua scripts.
//!
//! One multiplexed connection ([`Conn`]: redis-rs's `ConnectionManager`,
//! or its `ClusterConnection` on a Redis Cluster, see `cluster`) carries
//! every command but the feed's blocking reads. It is configured to
//! fail fast: one connection attempt (bounded by [`CONNECT_TIMEOUT`]) and no
//! retries inside the manager, so while Redis is unreachable each call fails
//! at once (a refused connection in about a millisecond) instead of queueing;
//! the manager starts a new attempt when a call finds the connection broken.
//! A command that does not answer within [`RESPONSE_TIMEOUT`] fails as an
//! outage too (a Redis that accepts connections but is stopped).
//!
//! Scripts are called with `EVALSHA` and loaded on demand: a Redis that
//! restarted (or whose script cache was flushed) answers `NOSCRIPT`, which
//! loads them and repeats the call — `NOSCRIPT` means nothing ran.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, Script, ServerErrorKind, Value};

pub(crate) use super::cluster::{Conn, Target};
use crate::storage::StorageError;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The epoch functions, prepended to the scripts that use them.
macro_rules! with_epoch {
    ($file:literal) => {
        concat!(include_str!("scripts/epoch.lua"), include_str!($file))
    };
}

/// The log's scripts (`scripts/*.lua`; see each file for its keys, arguments and answer).
pub(super) struct Scripts {
    pub append: Script,
    pub read: Script,
    pub import: Script,
    pub redact: Script,
    pub scrub_feed: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            append: Script::new(with_epoch!("scripts/append.lua")),
            read: Script::new(with_epoch!("scripts/read.lua")),
            import: Script::new(include_str!("scripts/import.lua")),
            redact: Script::new(concat!(include_str!("scripts/redaction.lua"), include_str!("scripts/redact.lua"))),
            scrub_feed: Script::new(concat!(
                include_str!("scripts/redaction.lua"),
                include_str!("scripts/scrub_feed.lua")
            )),
        }
    }
}

/// `EVALSHA <script> <number of keys>`, to which the caller adds keys and arguments.
pub(super) fn evalsha(script: &Script, keys: usize) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys);
    cmd
}

/// A connection manager that fails fast (see the module doc).
pub(crate) async fn manager(client: &Client, response_timeout: Duration) -> Result<ConnectionManager, RedisError> {
    let cfg = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout));
    // The manager's first connection has no timeout of its own beyond the
    // connect timeout of each attempt; bound the whole of it.
    tokio::time::timeout(CONNECT_TIMEOUT * 2, ConnectionManager::new_with_config(client.clone(), cfg))
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
}

pub(super) struct Link {
    conn: Conn,
    pub scripts: Scripts,
}

impl Link {
    /// Connects now: a server that starts must be able to take sends.
    pub async fn connect(target: &Target) -> Result<Self, RedisError> {
        let conn = super::cluster::open(target, RESPONSE_TIMEOUT).await?;
        let link = Self { conn, scripts: Scripts::new() };
        link.load_scripts().await?;
        Ok(link)
    }

    /// The connection, for commands outside the scripts.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    pub async fn load_scripts(&self) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        for s in [
            &self.scripts.append,
            &self.scripts.read,
            &self.scripts.import,
            &self.scripts.redact,
            &self.scripts.scrub_feed,
        ] {
            s.load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Runs a command that is safe to repeat: once more when the connection
    /// turned out dead (Redis restarted since the last command; the manager
    /// reconnects), and once more after loading the scripts on `NOSCRIPT`.
    pub async fn query(&self, cmd: &Cmd) -> Result<Value, StorageError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match cmd.query_async::<Value>(&mut self.conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if tries < 3 && is_noscript(&e) => {
                    self.load_scripts().await.map_err(|e| storage_error(&e))?;
                }
                Err(e) if tries < 2 && e.is_unrecoverable_error() => {}
                Err(e) => return Err(storage_error(&e)),
            }
        }
    }

    /// Sends a pipeline that is safe to repeat as a whole, as [`Link::query`]
    /// repeats a command; each answer is a value or a `Value::ServerError`.
    pub async fn pipeline_repeatable(&self, pipe: &Pipeline) -> Result<Vec<Value>, StorageError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.pipeline(pipe).await {
                Ok(values) if tries < 3 && values.iter().any(is_noscript_value) => {
                    self.load_scripts().await.map_err(|e| storage_error(&e))?;
                }
                Ok(values) => return Ok(values),
                Err(e) if tries < 2 && e.is_unrecoverable_error() => {}
                Err(e) => return Err(storage_error(&e)),
            }
        }
    }

    /// Sends a pipeline whose commands fail one by one: each answer is a
    /// value or a `Value::ServerError`. Not repeated: the caller decides.
    pub async fn pipeline(&self, pipe: &Pipeline) -> Result<Vec<Value>, RedisError> {
        pipe.query_async::<Vec<Value>>(&mut self.conn.clone()).await
    }
}

pub(crate) fn is_noscript_value(v: &Value) -> bool {
    matches!(v, Value::ServerError(se) if se.kind() == Some(ServerErrorKind::NoScript))
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Whether an error means Redis cannot be used now (gone, stopped, loading,
/// out of memory, a replica, scripts lost), so the caller may retry later.
pub(crate) fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code().is_some_and(is_transient_refusal)
        // A cluster none of whose nodes for the slot can be reached.
        || e.kind() == ErrorKind::ClusterConnectionNotFound
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::NoScript
            )
        )
}

/// Redis refusing for a reason that passes (memory, a long script).
fn is_transient_refusal(code: &str) -> bool {
    matches!(code, "OOM" | "BUSY" | "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "NOSCRIPT")
}

pub(crate) fn storage_error(e: &RedisError) -> StorageError {
    if is_outage(e) { StorageError::Unavailable(format!("redis: {e}")) } else { StorageError::Redis(e.to_string()) }
}

/// A fail-fast command connection to `target`, for the other stores that
/// share the room log's Redis (room directory, federation state): same
/// timeouts, same outage rule, same messages.
pub(crate) async fn connect(target: &Target) -> Result<Conn, StorageError> {
    connect_with(target, RESPONSE_TIMEOUT).await
}

/// [`connect`] with another response timeout (a blocking read's connection).
pub(crate) async fn connect_with(target: &Target, response_timeout: Duration) -> Result<Conn, StorageError> {
    if let Target::Single(url) = target {
        Client::open(url.as_str())
            .map_err(|e| StorageError::Config(format!("bad redis url {:?}: {e}", super::redacted(url))))?;
    }
    super::cluster::open(target, response_timeout)
        .await
        .map_err(|e| StorageError::Unavailable(format!("cannot reach redis at {}: {e}", target.shown())))
}

/// Runs a command that is safe to repeat: once more when the connection
/// turned out dead (the manager reconnects), as [`Link::query`] does.
pub(crate) async fn query_cmd<T: redis::FromRedisValue>(conn: &Conn, cmd: &Cmd) -> Result<T, StorageError> {
    match cmd.query_async::<T>(&mut conn.clone()).await {
        Err(e) if e.is_unrecoverable_error() => cmd.query_async::<T>(&mut conn.clone()).await,
        other => other,
    }
    .map_err(|e| storage_error(&e))
}

/// [`query_cmd`] for a pipeline that is safe to repeat as a whole.
pub(crate) async fn query_pipe<T: redis::FromRedisValue>(conn: &Conn, pipe: &Pipeline) -> Result<T, StorageError> {
    match pipe.query_async::<T>(&mut conn.clone()).await {
        Err(e) if e.is_unrecoverable_error() => pipe.query_async::<T>(&mut conn.clone()).await,
        other => other,
    }
    .map_err(|e| storage_error(&e))
}

/// How often a channel follower pings Redis: a subscription whose
/// connection died silently is noticed (and replaced) within this plus
/// [`RESPONSE_TIMEOUT`].
pub(crate) const SUBSCRIPTION_PING: Duration = Duration::from_millis(500);
/// Wait between attempts to subscribe again while Redis is away.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(200);

/// Follows a pub/sub `channel` (`what` names it in the log) until `tx`'s
/// receiver is gone: on a connection of its own (a subscribed connection
/// takes no other commands), pinged every [`SUBSCRIPTION_PING`] because a
/// subscription waits without a response timeout, so a connection that died
/// silently would otherwise look like a quiet channel. After every
/// (re)subscription `tx` gets `subscribed()` (messages published meanwhile
/// are lost to this process), then `parse(payload)` of each message; a
/// payload that does not parse is logged and skipped. `nodes` are tried in
/// turn (a cluster's nodes: any one hears every `PUBLISH`).
pub(crate) async fn follow_channel<T>(
    nodes: Vec<Client>,
    channel: &'static str,
    what: &'static str,
    tx: tokio::sync::mpsc::UnboundedSender<T>,
    subscribed: impl Fn() -> T,
    parse: impl Fn(&str) -> Option<T>,
) {
    use futures_util::StreamExt as _;
    let mut warned = false;
    let mut turn = 0usize;
    loop {
        let client = &nodes[turn % nodes.len()];
        turn += 1;
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = tx.closed() => return,
            r = tokio::time::timeout(RESPONSE_TIMEOUT * 2, connected) => r,
        };
        let (mut sink, mut stream) = match pubsub {
            Ok(Ok(p)) => p.split(),
            Ok(Err(e)) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot subscribe to {what}; retrying");
                    warned = true;
                }
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                continue;
            }
        };
        if warned {
            tracing::info!("subscribed to {what} again");
        }
        if tx.send(subscribed()).is_err() {
            return;
        }
        let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                msg = stream.next() => match msg {
                    Some(m) => {
                        let payload = String::from_utf8_lossy(m.get_payload_bytes());
                        match parse(&payload) {
                            Some(item) => if tx.send(item).is_err() { return },
                            None => tracing::warn!(%payload, "unreadable message on {channel}"),
                        }
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!("lost the subscription to {what}; subscribing again");
        warned = true;
    }
}

//! Where the server's Redis is — one node (`--redis URL`) or a Redis Cluster
//! (`--redis-cluster URL[,URL…]`) — and the one connection type every Redis
//! store speaks through, whichever it is.
//!
//! On a cluster, redis-rs's `ClusterConnection` routes each command by its
//! first key's hash slot and follows `MOVED`/`ASK`. It refuses a pipeline
//! whose commands are in several slots, so [`Conn`] cuts such a pipeline
//! into runs of consecutive commands of one slot and sends the runs one
//! after the other: the commands keep their order (the stores' crash rules,
//! such as "index before membership", rely on it), at one round trip per
//! run. A transaction (`MULTI`) is sent whole: it must be in one slot.
//!
//! Pub/sub: a classic `PUBLISH` on a cluster reaches every node over the
//! cluster bus, so a subscriber on any one node hears every message.
//! [`Target::nodes`] gives the nodes to subscribe on, tried in turn when
//! one fails.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Arg, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::link::{CONNECT_TIMEOUT, manager};
use super::redacted;
use crate::storage::StorageError;

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The server's Redis: one node, or the seed nodes of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Target::Single(url.to_owned())
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Self {
        Target::Single(url.clone())
    }
}

impl From<&Target> for Target {
    fn from(t: &Target) -> Self {
        t.clone()
    }
}

impl Target {
    /// The target of `--redis URL` or `--redis-cluster URL[,URL…]` (at most
    /// one is given; clap enforces it).
    pub fn of(single: Option<&str>, cluster: Option<&[String]>) -> Option<Self> {
        match (single, cluster) {
            (Some(url), _) => Some(Target::Single(url.to_owned())),
            (None, Some(urls)) => Some(Target::Cluster(urls.to_vec())),
            (None, None) => None,
        }
    }

    /// A cluster from `--redis-cluster`'s comma-separated URLs.
    pub fn cluster(urls: &str) -> Self {
        Target::Cluster(urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect())
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// The URL(s) without passwords, for messages.
    pub fn shown(&self) -> String {
        match self {
            Target::Single(url) => redacted(url),
            Target::Cluster(urls) => urls.iter().map(|u| redacted(u)).collect::<Vec<_>>().join(","),
        }
    }

    /// What to give `--redis` or `--redis-cluster` to start on this Redis again.
    pub fn flag(&self) -> String {
        match self {
            Target::Single(url) => format!("--redis {url}"),
            Target::Cluster(urls) => format!("--redis-cluster {}", urls.join(",")),
        }
    }

    /// A plain client per node: the one node, or each seed node of the
    /// cluster (for pub/sub, which any node of a cluster serves whole).
    pub fn nodes(&self) -> Result<Vec<Client>, StorageError> {
        let urls = match self {
            Target::Single(url) => std::slice::from_ref(url),
            Target::Cluster(urls) => &urls[..],
        };
        if urls.is_empty() {
            return Err(StorageError::Config("--redis-cluster needs at least one node's URL".into()));
        }
        urls.iter()
            .map(|u| {
                Client::open(u.as_str())
                    .map_err(|e| StorageError::Config(format!("bad redis url {:?}: {e}", redacted(u))))
            })
            .collect()
    }
}

/// A command connection to either kind of Redis; cheap to clone (clones
/// share the connection).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Connects to `target`, failing fast as `link` describes; commands that
/// take longer than `response_timeout` fail as an outage.
pub async fn open(target: &Target, response_timeout: Duration) -> Result<Conn, RedisError> {
    match target {
        Target::Single(url) => Ok(Conn::Single(manager(&Client::open(url.as_str())?, response_timeout).await?)),
        Target::Cluster(urls) => {
            // A few quick retries: a cluster's redirections (`MOVED`, `ASK`,
            // `TRYAGAIN` while a slot moves) are retries to redis-rs.
            let client = ClusterClientBuilder::new(urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response_timeout)
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT * 4, client.get_async_connection())
                .await
                .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
            Ok(Conn::Cluster(conn))
        }
    }
}

impl Conn {
    /// Sends `cmd` to the node that holds `key`'s slot (on one Redis: to it).
    /// For commands whose routing redis-rs cannot tell, such as `SCAN`.
    pub async fn on_node_of(&mut self, key: &str, cmd: Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::new(slot(key.as_bytes()), SlotAddr::Master);
                c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route))).await
            }
        }
    }
}

impl Conn {
    /// Sends a pipeline of reads whose order does not matter, as
    /// [`Conn::concurrently`], once more when the connection turned out dead
    /// (as `link::query_pipe`).
    pub async fn reads<T: redis::FromRedisValue>(&self, pipeline: &Pipeline) -> Result<T, RedisError> {
        match self.concurrently(pipeline).await {
            Err(e) if e.is_unrecoverable_error() => self.concurrently(pipeline).await,
            other => other,
        }
    }

    /// Sends a pipeline whose runs of one slot need no order between them:
    /// on a cluster the runs go out concurrently (one round trip in all, not
    /// one per run). The answers are in the pipeline's order.
    pub async fn concurrently<T: redis::FromRedisValue>(&self, pipeline: &Pipeline) -> Result<T, RedisError> {
        let Conn::Cluster(c) = self else { return pipeline.query_async(&mut self.clone()).await };
        let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
        let runs = slot_runs(pipeline).into_iter().map(|(run, _)| {
            let mut part = redis::pipe();
            for cmd in &cmds[run] {
                part.add_command((*cmd).clone());
            }
            let mut c = c.clone();
            async move { c.req_packed_commands(&part, 0, part.len()).await }
        });
        let mut values = Vec::with_capacity(cmds.len());
        for run in futures_util::future::join_all(runs).await {
            values.extend(run?);
        }
        if let Some(Value::ServerError(e)) = values.iter().find(|v| matches!(v, Value::ServerError(_))) {
            return Err(e.clone().into());
        }
        Ok(redis::from_redis_value(Value::Array(values))?)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => {
                if !is_publish(cmd) {
                    return c.req_packed_command(cmd);
                }
                Box::pin(async move {
                    let mut once = redis::pipe();
                    once.add_command(cmd.clone());
                    let mut values = on_any_master(c, &once).await?;
                    values.pop().ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "no answer to PUBLISH")))
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => {
                let runs = slot_runs(pipeline);
                if pipeline.is_transaction() || (runs.len() <= 1 && !pipeline.cmd_iter().any(is_publish)) {
                    return c.req_packed_commands(pipeline, offset, count);
                }
                Box::pin(async move {
                    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
                    let mut values = Vec::with_capacity(cmds.len());
                    for (run, run_slot) in runs {
                        let mut part = redis::pipe();
                        for cmd in &cmds[run] {
                            part.add_command((*cmd).clone());
                        }
                        let n = part.len();
                        values.extend(match run_slot {
                            // Routed by hand: a `PUBLISH` in the run names no key of its slot.
                            Some(s) => {
                                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(s, SlotAddr::Master));
                                c.route_pipeline(part, 0, n, route).await?
                            }
                            None if part.cmd_iter().any(is_publish) => on_any_master(c, &part).await?,
                            None => c.req_packed_commands(&part, 0, n).await?,
                        });
                    }
                    Ok(values)
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A classic `PUBLISH` reaches every node of a cluster from any one, so it
/// is not routed by its channel's slot (whose master may be the one away).
fn is_publish(cmd: &Cmd) -> bool {
    cmd.args_iter().next().is_some_and(|a| matches!(a, Arg::Simple(name) if name.eq_ignore_ascii_case(b"PUBLISH")))
}

/// Sends a keyless pipeline (`PUBLISH`es) to the master of slot 0, else of
/// slot 2048, and so on through the slots' ranges, until one answers: a
/// master that is away costs a try, not the publish.
async fn on_any_master(c: &mut ClusterConnection, pipe: &Pipeline) -> Result<Vec<Value>, RedisError> {
    let mut last = None;
    for k in 0..8 {
        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(k * (SLOTS / 8), SlotAddr::Master));
        match c.route_pipeline(pipe.clone(), 0, pipe.len(), route).await {
            Ok(values) => return Ok(values),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("eight tries"))
}

/// The pipeline's commands as runs of consecutive commands in one slot, with
/// that slot (a command without a key, or a `PUBLISH`, joins the run it is
/// in).
fn slot_runs(pipeline: &Pipeline) -> Vec<(std::ops::Range<usize>, Option<u16>)> {
    let mut runs: Vec<(std::ops::Range<usize>, Option<u16>)> = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let s = if is_publish(cmd) { None } else { first_key(cmd).map(slot) };
        match runs.last_mut() {
            Some((range, run_slot)) if s.is_none() || run_slot.is_none() || *run_slot == s => {
                range.end = i + 1;
                if run_slot.is_none() {
                    *run_slot = s;
                }
            }
            _ => runs.push((i..i + 1, s)),
        }
    }
    runs
}

/// The key a command is routed by, for the commands the stores pipeline.
fn first_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        _ => &b""[..],
    });
    let name = args.next()?.to_ascii_uppercase();
    match &name[..] {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" => {
            let _script = args.next()?;
            let keys = std::str::from_utf8(args.next()?).ok()?.parse::<usize>().ok()?;
            if keys == 0 { None } else { args.next() }
        }
        b"PING" | b"CONFIG" | b"INFO" | b"WAITAOF" | b"WAIT" | b"SCRIPT" | b"CLUSTER" | b"TIME" | b"SCAN" => None,
        _ => args.next(),
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of its `{hash tag}` if it has a
/// non-empty one, else of the whole key, modulo [`SLOTS`].
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag hashes the whole key");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn a_pipeline_is_cut_where_its_slot_changes() {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg("parlor:{a}:x").arg("f").arg("v");
        pipe.cmd("HSET").arg("parlor:{a}:y").arg("f").arg("v");
        pipe.cmd("EVALSHA").arg("abc").arg(1).arg("parlor:{b}:z");
        pipe.cmd("PING");
        pipe.cmd("GET").arg("parlor:{a}:x");
        let ranges = |p: &Pipeline| slot_runs(p).into_iter().map(|(r, _)| r).collect::<Vec<_>>();
        assert_eq!(ranges(&pipe), vec![0..2, 2..4, 4..5]);
        let mut one = redis::pipe();
        one.cmd("GET").arg("parlor:{a}:x").cmd("DEL").arg("parlor:{a}:y");
        assert_eq!(ranges(&one), vec![0..2]);
        // A PUBLISH goes with the run before it, to a node that answered.
        let mut publish = redis::pipe();
        publish.cmd("DEL").arg("parlor:token:ab").cmd("HDEL").arg("parlor:user:{ann}:devices").arg("D");
        publish.cmd("PUBLISH").arg("parlor:revoked").arg("u @ann:x");
        assert_eq!(ranges(&publish), vec![0..1, 1..3]);
        assert_eq!(slot_runs(&publish)[1].1, Some(slot(b"{ann}")));
    }

    #[test]
    fn cluster_urls_are_split_on_commas() {
        assert_eq!(
            Target::cluster("redis://a:1/, redis://b:2/,"),
            Target::Cluster(vec!["redis://a:1/".into(), "redis://b:2/".into()])
        );
    }
}

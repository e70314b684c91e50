//! The Redis Streams room log (`parlor serve --redis redis://…`).
//!
//! It owns, for Redis: seq assignment, transaction records, epochs (and the
//! archives of old ones), history reads, and the cross-process fan-out that
//! feeds the local [`EventSink`]. By job:
//!
//! - [`link`]: the command connection (redis-rs's `ConnectionManager`,
//!   failing fast) and the Lua scripts in `scripts/`;
//! - [`writer`]: appends, batched into one pipeline per round trip;
//! - [`feed`]: live delivery from the shared feed stream;
//! - [`highwater`]: how far each room has gone, in memory and on disk, so
//!   that a Redis that lost writes never gets a seq handed out twice;
//! - [`replies`]: Redis answers into events and outcomes;
//! - this module: keys, reads, imports, and the [`EventLog`] it all makes.
//!
//! Keys (the `{room}` hash tag keeps one room's keys in one slot):
//! - `parlor:{ROOM}:meta` hash `epoch`, `gen`, `seq`: the room's epoch, its
//!   generation (Redis clock in ms when it was started) and last seq;
//! - `parlor:{ROOM}:log` stream, entry id `<seq>-0`, fields `t` type, `s`
//!   sender, `b` body (messages only), `ts`, `x` the v1.1 content of state
//!   events (JSON: target, name, topic, …), and `i` the event id for events
//!   imported from a federated room's home server; trimmed to the retention;
//! - `parlor:{ROOM}:archive:<EPOCH>` stream: an older epoch's log, kept
//!   when the room started a new epoch, and `parlor:{ROOM}:epochs` hash
//!   `<EPOCH>` → `<generation> <last seq>` listing them;
//! - `parlor:{ROOM}:txn:<hash of device and txn_id>` string
//!   `"<fingerprint hex> <epoch> <seq>"`, expiring after the txn TTL;
//! - the feed: one entry per append of every room (`r` room, `e` epoch, `g`
//!   generation, `q` seq, `o` origin, then the event fields), trimmed to
//!   about [`FEED_MAXLEN`] entries per stream ([`Feeds`]): on one Redis the
//!   one stream `parlor:feed`, written by the append script itself; on a
//!   Redis Cluster [`CLUSTER_FEEDS`] streams, one per range of hash slots,
//!   so that no key is on every send's path (a room's slot picks its feed;
//!   each feed's own tag puts it in its range), written by the writer right
//!   after the script (a script may touch only its room's slot).
//!
//! An append resolves once the writer has the script's answer *and* the
//! feed has handed the event to the sink, or after [`FEED_WAIT`] if the feed
//! is behind (the event is in Redis either way; the room's high-water mark
//! is then synced by the append itself).
//!
//! Epochs: a room whose meta key is missing (new room, restart without
//! persistence, FLUSHALL, eviction) gets a new random epoch. Every script
//! call also carries the epoch, generation and highest seq this process has
//! seen of the room (from memory, else from its data directory); a counter
//! below it (a failover or restore that lost the last writes) or an older
//! generation starts a new epoch, so a seq is never handed out twice under
//! one epoch. What Redis still holds of the old epoch is archived, never
//! deleted, and stays readable with an epoch selector ([`EventLog::read_epoch`]).

pub mod cluster;
mod feed;
mod highwater;

pub use cluster::Target;
pub use highwater::mark_all_rolled_back;
pub(crate) mod link;
mod replies;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::feed::FeedReader;
use self::highwater::{Durability, HighWater, Seen, SeenMap};
use self::link::{Link, RESPONSE_TIMEOUT, evalsha, query_cmd, storage_error};
use self::replies::{ReadStatus, read_answer};
use self::writer::{Job, Msg, Writer};
use super::{
    AppendOutcome, BoxFuture, EventLog, EventSink, Imported, LogHead, LogSettings, NewEvent, Page, Range, event_id,
    new_epoch, now_ms,
};
use crate::protocol::RoomId;
use crate::protocol::events::Event;
use crate::storage::{Db, StorageError};

/// The shared feed keeps about this many entries; a process that falls
/// further behind misses some live entries, which its sessions then read
/// from the room streams (hole filling).
pub const FEED_MAXLEN: u64 = 100_000;
/// How long an append waits for its own event to come back on the feed.
pub const FEED_WAIT: Duration = Duration::from_secs(1);

/// The feed streams of a Redis Cluster; one Redis has one.
pub const CLUSTER_FEEDS: u16 = 16;

/// The feed streams and which one carries a room.
#[derive(Clone, Debug)]
pub(crate) struct Feeds {
    keys: Vec<String>,
    /// Written by the writer after the script (a cluster), not by the script.
    separate: bool,
}

impl Feeds {
    fn for_target(target: &Target) -> Self {
        if !target.is_cluster() {
            return Feeds { keys: vec!["parlor:feed".into()], separate: false };
        }
        let range = cluster::SLOTS / CLUSTER_FEEDS;
        let keys = (0..CLUSTER_FEEDS)
            .map(|i| {
                // The first tag whose slot is in the feed's range: a cluster
                // made with even slot ranges then holds as many feeds on each
                // master, next to the rooms they carry.
                let tag = (0u32..)
                    .map(|k| format!("feed-{k}"))
                    .find(|t| cluster::slot(t.as_bytes()) / range == i)
                    .expect("some tag hashes into every range");
                format!("parlor:feed:{{{tag}}}")
            })
            .collect();
        Feeds { keys, separate: true }
    }

    /// The feed that carries `room`'s events.
    fn of(&self, room: &RoomId) -> &str {
        if self.keys.len() == 1 {
            return &self.keys[0];
        }
        let range = cluster::SLOTS / self.keys.len() as u16;
        let i = (cluster::slot(meta_key(room).as_bytes()) / range) as usize;
        &self.keys[i.min(self.keys.len() - 1)]
    }
}
/// Rooms per pipeline when checking every high-water mark against Redis.
const CHECK_BATCH: usize = 512;
/// Feed entries one call of `scrub_feed.lua` looks at: a redaction walks
/// the whole feed (about [`FEED_MAXLEN`] entries) in steps this long, so
/// that no step holds Redis for long.
const SCRUB_STEP: usize = 2_000;
/// How far from a feed's end a redacted copy is rewritten in place (the
/// feed's tail from its node on, added again with the same ids: one script
/// rewriting up to this many entries, a few ms of Redis); a deeper copy's
/// node is freed by trimming the feed past it, which only a reader this many
/// appends behind notices (as it notices the feed's own trim).
const SCRUB_REWRITE_MAX: u64 = 5_000;

fn meta_key(room: &RoomId) -> String {
    format!("parlor:{{{room}}}:meta")
}

fn log_key(room: &RoomId) -> String {
    format!("parlor:{{{room}}}:log")
}

/// Hashed so that device and txn ids (which hold NULs and colons) make a
/// short, printable key.
fn txn_key(room: &RoomId, device: &str, txn_id: &str) -> String {
    use base64::Engine as _;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(device.as_bytes());
    ctx.update(&[0]);
    ctx.update(txn_id.as_bytes());
    let d = ctx.finish();
    format!("parlor:{{{room}}}:txn:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.as_ref()[..18]))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The known epoch, generation and seq arguments of a script call.
fn push_known(cmd: &mut redis::Cmd, known: Option<&Seen>) {
    match known {
        Some(s) => cmd.arg(&*s.epoch).arg(s.generation).arg(s.seq),
        None => cmd.arg("").arg(0).arg(0),
    };
}

/// Redis's `stream-node-max-entries`: no node of a stream holds more
/// entries, so erasing from that many entries before a target frees the
/// target's node (`redact.lua`). 0 (no limit, or the setting cannot be
/// read) means the whole stream is rewritten.
async fn stream_node_entries(link: &Link) -> Result<u64, StorageError> {
    match link.query(redis::cmd("CONFIG").arg("GET").arg("stream-node-max-entries")).await {
        Ok(v) => Ok(redis::from_redis_value::<HashMap<String, u64>>(v)
            .ok()
            .and_then(|m| m.get("stream-node-max-entries").copied())
            .unwrap_or(0)),
        Err(StorageError::Unavailable(e)) => Err(StorageError::Unavailable(e)),
        Err(_) => Ok(0),
    }
}

/// A Redis URL without its password, for messages.
/// Records `server_name` as the owner of the Redis at `url`, or refuses
/// when another server's name is recorded there (see
/// [`crate::storage::identity`]). Called before the log opens, so a wrong
/// start touches nothing.
pub async fn claim_identity(target: &Target, server_name: &str) -> Result<(), StorageError> {
    use crate::storage::identity::{IdentityError, REDIS_KEY};
    let mut conn = link::connect(target).await?;
    let (_, owner): (Value, Option<String>) = redis::pipe()
        .cmd("SET")
        .arg(REDIS_KEY)
        .arg(server_name)
        .arg("NX")
        .cmd("GET")
        .arg(REDIS_KEY)
        .query_async(&mut conn)
        .await
        .map_err(|e| StorageError::Redis(format!("cannot read {REDIS_KEY}: {e}")))?;
    match owner {
        Some(owner) if owner != server_name => {
            Err(IdentityError::RedisName { recorded: owner, asked: server_name.to_owned() }.into())
        }
        _ => Ok(()),
    }
}

pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The durability the answers to `CONFIG GET appendonly`, `appendfsync` and
/// `save` give; an answer that is not a name and a value (an error) leaves
/// its setting unknown, which means the strict way.
fn durability_of(answers: &[Value]) -> Durability {
    let config: HashMap<String, String> = answers
        .iter()
        .filter_map(|v| redis::from_redis_value_ref::<HashMap<String, String>>(v).ok())
        .flatten()
        .collect();
    let get = |k: &str| config.get(k).map(String::as_str);
    Durability::of_redis(get("appendonly"), get("appendfsync"), get("save"))
}

/// How Redis at the other end of `pipe`'s connection keeps what it
/// acknowledged, by the room log's rule (see `highwater`): whether a crash
/// of its host can lose part of it, and whether it has an AOF (which
/// `WAITAOF` can wait for). Shared with the account store, so that both
/// read Redis's persistence the same way.
pub(crate) async fn persistence(conn: &mut link::Conn) -> Result<Persistence, StorageError> {
    let mut pipe = redis::pipe();
    pipe.cmd("CONFIG").arg("GET").arg("appendonly");
    pipe.cmd("CONFIG").arg("GET").arg("appendfsync");
    pipe.cmd("CONFIG").arg("GET").arg("save");
    let answers = match pipe.query_async::<Vec<Value>>(conn).await {
        Ok(answers) => answers,
        Err(e) if link::is_outage(&e) => return Err(storage_error(&e)),
        Err(_) => Vec::new(),
    };
    let aof = answers.first().and_then(|v| redis::from_redis_value_ref::<HashMap<String, String>>(v).ok());
    Ok(Persistence {
        may_lose_acknowledged: durability_of(&answers) == Durability::BeforeHandOut,
        aof: aof.is_some_and(|m| m.get("appendonly").map(String::as_str) == Some("yes")),
    })
}

/// See [`persistence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Persistence {
    pub may_lose_acknowledged: bool,
    pub aof: bool,
}

struct Shared {
    link: Link,
    feeds: Feeds,
    sink: Arc<dyn EventSink>,
    retention: Option<u64>,
    txn_ttl_secs: u64,
    seen: SeenMap,
    high_water: HighWater,
    /// This log's id on the feed: entries whose origin starts with it are ours.
    instance: String,
    next_ticket: AtomicU64,
    /// When the feed was last reported behind (ms since the Unix epoch).
    behind_warned_ms: AtomicU64,
    /// Appends waiting for their event to come back on the feed.
    tickets: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// A check of every mark is running.
    checking: AtomicBool,
    /// The last check of every mark failed.
    marks_unchecked: AtomicBool,
}

impl Shared {
    /// What this process has seen of the room: from memory, else from the
    /// mark on disk (which the room then keeps in memory).
    fn known(&self, room: &RoomId) -> Result<Option<Seen>, StorageError> {
        if let Some(s) = self.seen.get(room) {
            return Ok(Some(s));
        }
        let Some(mark) = self.high_water.get(room)? else { return Ok(None) };
        self.seen.observe(room, &mark.epoch, mark.generation, mark.seq);
        Ok(Some(mark))
    }

    /// Notes an ack sent before its event came back on the feed; said at most
    /// every 10 s, since under overload it holds for every append at once.
    fn feed_behind(&self) {
        let now = now_ms();
        let last = self.behind_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self.behind_warned_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                "the redis feed is over {} ms behind: acknowledging sends before local delivery",
                FEED_WAIT.as_millis()
            );
        }
    }

    /// The read script for `room`: `mode` head|after|before|latest from `n`,
    /// of the current epoch or of `want`.
    fn read_cmd(
        &self,
        room: &RoomId,
        mode: &str,
        n: u64,
        limit: usize,
        want: &str,
    ) -> Result<redis::Cmd, StorageError> {
        let mut cmd = evalsha(&self.link.scripts.read, 2);
        cmd.arg(meta_key(room)).arg(log_key(room));
        push_known(&mut cmd, self.known(room)?.as_ref());
        cmd.arg(new_epoch()).arg(mode).arg(n).arg(limit.max(1)).arg(want);
        Ok(cmd)
    }

    /// The feed entries of the imported events with seqs in `written`
    /// (after the first, up to the second), for a feed the import script
    /// does not write (a cluster: see [`Feeds`]).
    async fn feed_imported(&self, room: &RoomId, epoch: &str, generation: u64, written: (u64, u64), events: &[Event]) {
        let mut pipe = redis::pipe();
        for e in events.iter().filter(|e| e.seq > written.0 && e.seq <= written.1) {
            let cmd = pipe.cmd("XADD").arg(self.feeds.of(room)).arg("MAXLEN").arg("~").arg(FEED_MAXLEN).arg("*");
            cmd.arg("r").arg(room.as_str()).arg("e").arg(epoch).arg("g").arg(generation).arg("q").arg(e.seq);
            cmd.arg("o").arg(format!("{}/import", self.instance));
            cmd.arg("t").arg(e.kind.as_str()).arg("s").arg(e.sender.as_str());
            if let Some(b) = &e.body {
                cmd.arg("b").arg(b);
            }
            cmd.arg("ts").arg(e.ts).arg("i").arg(&e.event_id);
            if !e.content.is_empty() {
                cmd.arg("x").arg(serde_json::to_string(&e.content).expect("contents serialize"));
            }
            cmd.ignore();
        }
        if let Err(e) = self.link.pipeline(&pipe).await {
            tracing::warn!(error = %e, %room, "cannot write the redis feed: other processes get these events with the room's next");
        }
    }

    /// Reads what Redis's persistence can lose in a crash, which decides
    /// when the high-water marks must reach the disk (see `highwater`).
    /// Only an outage is an error; any other failure (`CONFIG` renamed away,
    /// or not allowed to this user) means the strict way.
    async fn check_durability(&self) -> Result<(), StorageError> {
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG").arg("GET").arg("appendonly");
        pipe.cmd("CONFIG").arg("GET").arg("appendfsync");
        pipe.cmd("CONFIG").arg("GET").arg("save");
        let d = match self.link.pipeline(&pipe).await {
            Ok(answers) => durability_of(&answers),
            Err(e) if link::is_outage(&e) => return Err(storage_error(&e)),
            Err(_) => Durability::BeforeHandOut,
        };
        self.high_water.set_durability(d).await
    }

    /// Compares every room's high-water mark on disk with Redis, in
    /// pipelines of [`CHECK_BATCH`] rooms: the read script starts a new epoch
    /// (archiving the old one's stream) for every room that Redis holds less
    /// of than the mark says was handed out. Run at start, before any
    /// append, and whenever the feed shows that Redis lost data, so that a
    /// room is moved on before any process, even one that never saw its
    /// lost writes, appends to it. Returns how many rooms started anew.
    async fn check_marks(&self) -> Result<usize, StorageError> {
        if self.checking.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let result = self.check_marks_now().await;
        // A check that did not finish (Redis went away again) is run again
        // at the feed's next look at Redis.
        self.marks_unchecked.store(result.is_err(), Ordering::Release);
        self.checking.store(false, Ordering::Release);
        result
    }

    async fn check_marks_now(&self) -> Result<usize, StorageError> {
        let mut marks = self.high_water.all();
        let mut restarted = 0;
        loop {
            let batch: Vec<(RoomId, Seen)> = marks.by_ref().take(CHECK_BATCH).collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (room, mark) in &batch {
                let mut cmd = evalsha(&self.link.scripts.read, 2);
                cmd.arg(meta_key(room)).arg(log_key(room));
                push_known(&mut cmd, Some(mark));
                cmd.arg(new_epoch()).arg("head").arg(0).arg(1).arg("");
                pipe.add_command(cmd);
            }
            // Repeatable: a room moved on is not moved again (its generation is newer).
            let values = self.link.pipeline_repeatable(&pipe).await?;
            for ((room, mark), v) in batch.iter().zip(values) {
                if let Value::ServerError(se) = v {
                    return Err(storage_error(&se.into()));
                }
                let a = read_answer(v)?;
                if a.generation != mark.generation {
                    restarted += 1;
                    tracing::warn!(
                        room = %room, old_epoch = %mark.epoch, seen = mark.seq, epoch = %a.epoch,
                        "redis holds less of this room than was handed out: new epoch, the old one archived"
                    );
                }
                self.high_water.note(room, &a.epoch, a.generation, a.latest)?;
                self.seen.observe_tracked(room, &a.epoch, a.generation, a.latest);
            }
        }
        self.high_water.sync().await?;
        Ok(restarted)
    }
}

/// Removes an append's ticket however its future ends.
struct TicketGuard {
    shared: Arc<Shared>,
    ticket: u64,
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        self.shared.tickets.lock().expect("tickets lock").remove(&self.ticket);
    }
}

pub struct RedisLog {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Msg>,
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RedisLog {
    /// Connects to Redis at `url`, checks every room's high-water mark kept
    /// in `db` against it, and starts the writer and the feed reader, which
    /// feeds `sink`. Fails when Redis cannot be reached now: a server that
    /// starts must be able to take sends.
    pub async fn open(
        target: impl Into<Target>,
        db: &Db,
        sink: Arc<dyn EventSink>,
        settings: &LogSettings,
    ) -> Result<Self, StorageError> {
        let target = &target.into();
        let shown = target.shown();
        let unreachable =
            |e: redis::RedisError| StorageError::Unavailable(format!("cannot reach redis at {shown}: {e}"));
        if let Target::Single(url) = target {
            redis::Client::open(url.as_str())
                .map_err(|e| StorageError::Config(format!("bad redis url {:?}: {e}", redacted(url))))?;
        }
        let link = Link::connect(target).await.map_err(unreachable)?;
        let feeds = Feeds::for_target(target);
        // One blocking reader per feed, each on a connection of its own.
        let mut feed_conns = Vec::with_capacity(feeds.keys.len());
        for _ in &feeds.keys {
            feed_conns.push(link::connect_with(target, feed::FEED_BLOCK + RESPONSE_TIMEOUT).await?);
        }
        let shared = Arc::new(Shared {
            link,
            feeds,
            sink,
            retention: settings.retention.map(|n| n.max(1)),
            txn_ttl_secs: settings.txn_ttl.as_secs().max(1),
            seen: SeenMap::default(),
            high_water: HighWater::open(db)?,
            instance: new_epoch(),
            next_ticket: AtomicU64::new(1),
            behind_warned_ms: AtomicU64::new(0),
            tickets: Mutex::new(HashMap::new()),
            checking: AtomicBool::new(false),
            marks_unchecked: AtomicBool::new(false),
        });
        shared.check_durability().await?;
        let restarted = shared.check_marks().await?;
        if restarted > 0 {
            tracing::warn!(
                rooms = restarted,
                "redis lost writes this server had handed out; those rooms start new epochs"
            );
        }
        let stop = CancellationToken::new();
        let (hand_out_tx, hand_out_rx) = feed::hand_out_channel();
        let mut readers = Vec::with_capacity(feed_conns.len());
        for (conn, key) in feed_conns.into_iter().zip(shared.feeds.keys.clone()) {
            let reader = FeedReader::start(shared.clone(), conn, key, hand_out_tx.clone(), stop.clone())
                .await
                .map_err(unreachable)?;
            readers.push(reader);
        }
        drop(hand_out_tx);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = vec![tokio::spawn(Writer { shared: shared.clone() }.run(rx))];
        tasks.push(tokio::spawn(feed::hand_out_task(shared.clone(), hand_out_rx)));
        tasks.extend(readers.into_iter().map(|r| tokio::spawn(r.run())));
        Ok(Self { shared, jobs: tx, stop, tasks: Mutex::new(tasks) })
    }

    /// A page of the room's current epoch, or of `want` (None when the room
    /// has no such epoch).
    async fn page(&self, room: &RoomId, want: &str, range: Range, limit: usize) -> Result<Option<Page>, StorageError> {
        let (mode, n) = match range {
            _ if limit == 0 => ("head", 0),
            Range::After(n) => ("after", n),
            Range::Before(n) => ("before", n),
            Range::Latest => ("latest", 0),
        };
        let shared = &self.shared;
        let cmd = shared.read_cmd(room, mode, n, limit, want)?;
        let a = read_answer(shared.link.query(&cmd).await?)?;
        match a.status {
            ReadStatus::Unknown => return Ok(None),
            ReadStatus::Archived => {}
            ReadStatus::Current => {
                shared.seen.observe(room, &a.epoch, a.generation, a.latest);
                // The page shows seqs up to `latest`: they must be on record first.
                shared.high_water.cover(room, &a.epoch, a.generation, a.latest).await?;
            }
        }
        let mut events = a
            .entries
            .into_iter()
            .map(|entry| replies::event(room, &a.epoch, entry))
            .collect::<Result<Vec<Event>, _>>()?;
        if matches!(mode, "before" | "latest") {
            events.reverse();
        }
        Ok(Some(Page { head: LogHead { epoch: a.epoch, earliest: a.earliest, latest: a.latest }, events }))
    }
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn stopped() -> StorageError {
    StorageError::Stopped("redis log writer")
}

impl EventLog for RedisLog {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn append(&self, room: &RoomId, event: NewEvent) -> BoxFuture<'static, Result<AppendOutcome, StorageError>> {
        let ticket = self.shared.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (fed_tx, fed_rx) = oneshot::channel();
        self.shared.tickets.lock().expect("tickets lock").insert(ticket, fed_tx);
        let guard = TicketGuard { shared: self.shared.clone(), ticket };
        let (reply, rx) = oneshot::channel();
        let origin = format!("{}/{ticket}", self.shared.instance);
        let sent = self.jobs.send(Msg::Append(Job { room: room.clone(), event, ts: now_ms(), origin, reply }));
        let shared = self.shared.clone();
        let room = room.clone();
        Box::pin(async move {
            let _guard = guard;
            sent.map_err(|_| stopped())?;
            let a = rx.await.map_err(|_| stopped())??;
            let id = || event_id(&room, &a.epoch, a.seq, room.server());
            match a.status.as_str() {
                "stored" => {
                    // Delivered by the feed means its mark is on disk;
                    // otherwise record it here before acknowledging.
                    if !matches!(tokio::time::timeout(FEED_WAIT, fed_rx).await, Ok(Ok(()))) {
                        shared.feed_behind();
                        shared.high_water.cover(&room, &a.epoch, a.generation, a.seq).await?;
                    }
                    Ok(AppendOutcome::Stored { event_id: id(), seq: a.seq })
                }
                "repeated" => {
                    shared.high_water.cover(&room, &a.epoch, a.generation, a.seq).await?;
                    Ok(AppendOutcome::Repeated { event_id: id(), seq: a.seq })
                }
                "conflict" => Ok(AppendOutcome::Conflict),
                other => Err(StorageError::Script { script: "append", detail: format!("status {other:?}") }),
            }
        })
    }

    fn read<'a>(&'a self, room: &'a RoomId, range: Range, limit: usize) -> BoxFuture<'a, Result<Page, StorageError>> {
        Box::pin(async move {
            let page = self.page(room, "", range, limit).await?;
            page.ok_or_else(|| StorageError::Script { script: "read", detail: "no current epoch".into() })
        })
    }

    fn read_epoch<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: &'a str,
        range: Range,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Page>, StorageError>> {
        Box::pin(async move {
            if epoch.is_empty() {
                return Ok(None);
            }
            self.page(room, epoch, range, limit).await
        })
    }

    fn head<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<LogHead, StorageError>> {
        Box::pin(async move { Ok(self.read(room, Range::Latest, 0).await?.head) })
    }

    fn import(
        &self,
        room: &RoomId,
        epoch: &str,
        restart_at: Option<u64>,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Imported, StorageError>> {
        let shared = self.shared.clone();
        let room = room.clone();
        let epoch: Arc<str> = epoch.into();
        Box::pin(async move {
            let mut cmd = evalsha(&shared.link.scripts.import, 3);
            let feed = if shared.feeds.separate { meta_key(&room) } else { shared.feeds.of(&room).to_owned() };
            cmd.arg(meta_key(&room)).arg(log_key(&room)).arg(feed);
            cmd.arg(room.as_str()).arg(&*epoch);
            match restart_at {
                Some(n) => cmd.arg(n.max(1)),
                None => cmd.arg(""),
            };
            cmd.arg(shared.retention.unwrap_or(0)).arg(FEED_MAXLEN).arg(format!("{}/import", shared.instance));
            cmd.arg(events.len());
            for e in &events {
                cmd.arg(e.seq).arg(&e.event_id).arg(e.kind.as_str()).arg(e.sender.as_str());
                match &e.body {
                    Some(b) => cmd.arg("1").arg(b),
                    None => cmd.arg("0").arg(""),
                };
                cmd.arg(e.ts);
                match e.content.is_empty() {
                    true => cmd.arg(""),
                    false => cmd.arg(serde_json::to_string(&e.content).expect("contents serialize")),
                };
            }
            let (generation, before, latest, written, hole) = replies::imported(shared.link.query(&cmd).await?)?;
            if shared.feeds.separate && written > 0 {
                shared.feed_imported(&room, &epoch, generation, (before, latest), &events).await;
            }
            shared.seen.observe(&room, &epoch, generation, latest);
            Ok(Imported { before, latest, written: written as usize, hole })
        })
    }

    fn purge<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let conn = self.shared.link.conn();
            let mut on_node = conn.clone();
            // Every key of the room's log shares the prefix (and hash tag)
            // `parlor:{ROOM}:`, as do the directory's keys, which are left.
            let prefix = format!("parlor:{{{room}}}:");
            let pattern: String = prefix
                .chars()
                .flat_map(|c| match c {
                    '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .chain(['*'])
                .collect();
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                // On a cluster, the node that holds the room's slot.
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
                let answer = on_node.on_node_of(&prefix, scan).await.map_err(|e| storage_error(&e))?;
                let (next, batch): (u64, Vec<String>) =
                    redis::from_redis_value(answer).map_err(|e| StorageError::Redis(e.to_string()))?;
                keys.extend(batch.into_iter().filter(|k| {
                    let rest = &k[prefix.len().min(k.len())..];
                    matches!(rest, "meta" | "log" | "epochs")
                        || rest.starts_with("archive:")
                        || rest.starts_with("txn:")
                }));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let had = !keys.is_empty();
            for chunk in keys.chunks(512) {
                query_cmd::<()>(conn, redis::cmd("DEL").arg(chunk)).await?;
            }
            self.shared.seen.forget(room);
            self.shared.high_water.forget(room)?;
            self.shared.high_water.db().sync().await?;
            Ok(had)
        })
    }

    fn erase<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: &'a str,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<usize, StorageError>> {
        Box::pin(async move {
            if seqs.is_empty() {
                return Ok(0);
            }
            let link = &self.shared.link;
            // The room stream (or archive) first: it is what reads see.
            let mut cmd = evalsha(&link.scripts.redact, 2);
            let node_entries = stream_node_entries(link).await?;
            cmd.arg(meta_key(room)).arg(log_key(room)).arg(epoch).arg(node_entries);
            cmd.arg(seqs);
            let changed: usize = redis::from_redis_value(link.query(&cmd).await?)
                .map_err(|e| replies::script_error("redact", e.to_string()))?;
            // Then the feed's copies, wherever they are in it. A node size
            // of 0 is "no entry limit" (or unknown): then the rewrite starts
            // as far back as it may.
            let node = match node_entries {
                0 => SCRUB_REWRITE_MAX,
                n => n.min(SCRUB_REWRITE_MAX),
            };
            let mut after = "-".to_owned();
            loop {
                let mut cmd = evalsha(&link.scripts.scrub_feed, 1);
                cmd.arg(self.shared.feeds.of(room)).arg(room.as_str()).arg(epoch).arg(&after).arg(SCRUB_STEP);
                cmd.arg(node).arg(SCRUB_REWRITE_MAX).arg(seqs);
                let (next, _deleted): (String, u64) = redis::from_redis_value(link.query(&cmd).await?)
                    .map_err(|e| replies::script_error("scrub_feed", e.to_string()))?;
                if next.is_empty() {
                    break;
                }
                after = next;
            }
            Ok(changed)
        })
    }

    fn archived_epochs<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let key = format!("parlor:{{{room}}}:epochs");
            query_cmd(self.shared.link.conn(), redis::cmd("HKEYS").arg(key)).await
        })
    }

    fn healthy(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let pong = matches!(
                self.shared.link.query(&redis::cmd("PING")).await,
                Ok(Value::SimpleString(s)) if s == "PONG"
            );
            pong && !self.shared.high_water.failed()
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (done, finished) = oneshot::channel();
            if self.jobs.send(Msg::Stop(done)).is_ok() {
                let _ = finished.await;
            }
            self.stop.cancel();
            let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
            for t in tasks {
                let _ = t.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_keys_are_printable_and_distinct() {
        let room = RoomId::parse("!r:x").unwrap();
        let a = txn_key(&room, "@a:x\0D1", "t1");
        assert!(a.bytes().all(|b| b.is_ascii_graphic()), "{a}");
        assert_ne!(a, txn_key(&room, "@a:x\0D1", "t2"));
        assert_ne!(a, txn_key(&room, "@a:x\0D2", "t1"));
    }

    #[test]
    fn a_cluster_has_one_feed_per_slot_range_in_that_range() {
        let one = Feeds::for_target(&Target::Single("redis://x/".into()));
        assert_eq!((one.keys.as_slice(), one.separate), (&["parlor:feed".to_owned()][..], false));
        let feeds = Feeds::for_target(&Target::cluster("redis://a/,redis://b/"));
        assert!(feeds.separate);
        assert_eq!(feeds.keys.len(), CLUSTER_FEEDS as usize);
        let range = cluster::SLOTS / CLUSTER_FEEDS;
        for (i, key) in feeds.keys.iter().enumerate() {
            assert_eq!((cluster::slot(key.as_bytes()) / range) as usize, i, "{key}");
        }
        // A room's feed is the one of its slot's range.
        for n in 0..200 {
            let room = RoomId::parse(&format!("!r{n}:x")).unwrap();
            let feed = feeds.of(&room);
            assert_eq!(cluster::slot(feed.as_bytes()) / range, cluster::slot(meta_key(&room).as_bytes()) / range);
        }
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(redacted("redis://:secret@host:6379/2"), "redis://***@host:6379/2");
        assert_eq!(redacted("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn a_refused_config_get_means_marks_wait_for_the_disk() {
        let resp = |s: &str| redis::parse_redis_value(s.as_bytes()).unwrap();
        let pair = |k: &str, v: &str| resp(&format!("*2\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()));
        let always = [pair("appendonly", "yes"), pair("appendfsync", "always"), pair("save", "")];
        assert_eq!(durability_of(&always), Durability::Background);
        let everysec = [pair("appendonly", "yes"), pair("appendfsync", "everysec"), pair("save", "")];
        assert_eq!(durability_of(&everysec), Durability::BeforeHandOut);
        let refused = resp("-ERR unknown command 'CONFIG', with args beginning with: 'GET'\r\n");
        assert!(matches!(refused, Value::ServerError(_)), "{refused:?}");
        assert_eq!(durability_of(&[refused.clone(), refused.clone(), refused]), Durability::BeforeHandOut);
        let no_perm = resp("-NOPERM this user has no permissions to run the 'config|get' command\r\n");
        assert_eq!(durability_of(&[no_perm.clone(), no_perm.clone(), no_perm]), Durability::BeforeHandOut);
    }

    struct NoSink;
    impl EventSink for NoSink {
        fn deliver(&self, _: &RoomId, _: &Arc<str>, _: u64, _: &str) {}
    }

    /// A `redis-server` with `args` on a free port, killed on drop.
    struct Server {
        child: std::process::Child,
        port: u16,
        _dir: tempfile::TempDir,
    }
    impl Server {
        fn start(args: &[&str]) -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = tempfile::tempdir().unwrap();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .arg("--dir")
                .arg(dir.path())
                .args(args)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("this test needs redis-server");
            Server { child, port, _dir: dir }
        }
        async fn open(&self, db: &Db) -> RedisLog {
            let url = format!("redis://127.0.0.1:{}/", self.port);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match RedisLog::open(&url, db, Arc::new(NoSink), &LogSettings::default()).await {
                    Ok(log) => return log,
                    Err(e) if tokio::time::Instant::now() > deadline => panic!("redis-server did not start: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    }
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// What a real Redis answers: `appendfsync always` spares the send path
    /// its syncs, while the same Redis with `CONFIG` renamed away leaves
    /// them on, since nothing says its persistence cannot lose part of a log.
    #[tokio::test]
    async fn marks_are_synced_before_hand_out_unless_redis_says_it_cannot_lose_part_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let always = ["--appendonly", "yes", "--appendfsync", "always"];
        for (args, strict) in [
            (&always[..], false),
            (&["--appendonly", "yes", "--appendfsync", "everysec"][..], true),
            (&["--appendonly", "no"][..], false),
            (&[&always[..], &["--rename-command", "CONFIG", ""]].concat()[..], true),
        ] {
            let server = Server::start(args);
            let log = server.open(&db).await;
            assert_eq!(log.shared.high_water.strict(), strict, "redis-server {args:?}");
            drop(log);
        }
    }
}

//! The Redis Streams room log (`parlor serve --redis redis://…`).
//!
//! It owns, for Redis: seq assignment, transaction records, epochs, history
//! reads, and the cross-process fan-out that feeds the local [`EventSink`].
//!
//! Keys (the `{room}` hash tag keeps one room's keys in one slot):
//! - `parlor:{ROOM}:meta` hash `epoch`, `gen`, `seq`: the room's epoch, its
//!   generation (Redis clock in ms when it was started) and last seq;
//! - `parlor:{ROOM}:log` stream, entry id `<seq>-0`, fields `t` type, `s`
//!   sender, `b` body (messages only), `ts`, and `i` the event id for events
//!   imported from a federated room's home server; trimmed to the retention;
//! - `parlor:{ROOM}:txn:<hash of device and txn_id>` string
//!   `"<fingerprint hex> <epoch> <seq>"`, expiring after [`TXN_TTL_SECS`];
//! - `parlor:feed` stream: one entry per append of every room (`r` room, `e`
//!   epoch, `g` generation, `q` seq, `o` origin, then the event fields),
//!   trimmed to about [`FEED_MAXLEN`] entries. A reader that falls behind
//!   the trim, or a feed lost with Redis's data, costs live delivery only:
//!   sessions fill a seq hole from the room stream, and a new epoch is a gap.
//!
//! Appends: `append` puts the job on an unbounded queue at call time (which
//! fixes the order); one writer task takes everything waiting and sends it as
//! one pipeline of `EVALSHA` calls. The append script checks the epoch, the
//! transaction record, then XADDs to the room stream, sets the counter and
//! the txn record, and XADDs the feed entry — one atomic script, so there is
//! never a hole, a duplicate or half an event, whichever process appends.
//!
//! Fan-out: each process tails the one feed stream with `XREAD BLOCK` on its
//! own connection and hands entries to the sink in feed order (which is seq
//! order per room). An append resolves once the writer has the script's
//! answer *and* the feed has handed the event to the sink, or after
//! [`FEED_WAIT`] if the feed is behind (the event is in Redis either way).
//! The read path costs one XREAD per batch however many rooms there are.
//!
//! Epochs: a room whose meta key is missing (new room, restart without
//! persistence, FLUSHALL, eviction) gets a new random epoch. Every script call
//! also carries the epoch, generation and highest seq this process has seen
//! for the room; a stored counter below it (a failover that lost the last
//! writes) or an older generation also starts a new epoch, so a seq is never
//! handed out twice under one epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    AppendOutcome, BoxFuture, EventLog, EventSink, Imported, LogHead, NewEvent, Page, Range, event_id, new_epoch,
    now_ms,
};
use crate::protocol::events::{Event, EventType};
use crate::protocol::{RoomId, UserId};
use crate::storage::StorageError;

/// How long a transaction id is remembered (the protocol promises ≥ 24 h).
pub const TXN_TTL_SECS: u64 = 86_400;
/// The shared feed keeps about this many entries; a process that falls
/// further behind misses some live entries, which its sessions then read
/// from the room streams (hole filling).
pub const FEED_MAXLEN: u64 = 100_000;
/// How long an append waits for its own event to come back on the feed.
pub const FEED_WAIT: Duration = Duration::from_secs(1);

const FEED_KEY: &str = "parlor:feed";
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const FEED_BLOCK_MS: u64 = 2_000;
const FEED_COUNT: usize = 1_024;
const MAX_BATCH: usize = 1_024;
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Epoch bookkeeping shared by both scripts.
const EPOCH_LUA: &str = r#"
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Starts a new epoch; the old stream cannot hold what clients saw, and its
-- ids would collide with the new seqs.
local function restart(meta, log, candidate, known_gen, stored_gen)
  local gen = math.max(clock_ms(), known_gen + 1, stored_gen + 1)
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', candidate, 'gen', string.format('%d', gen), 'seq', '0')
  return candidate, gen, 0
end

local function ensure(meta, log, known_epoch, known_gen, known_seq, candidate)
  local m = redis.call('HMGET', meta, 'epoch', 'gen', 'seq')
  local epoch = m[1]
  local gen = tonumber(m[2]) or 0
  local seq = tonumber(m[3]) or 0
  if not epoch then
    return restart(meta, log, candidate, known_gen, gen)
  end
  if known_epoch ~= '' and (gen < known_gen or (epoch == known_epoch and seq < known_seq)) then
    return restart(meta, log, candidate, known_gen, gen)
  end
  return epoch, gen, seq
end
"#;

/// KEYS: meta, log, feed, txn. ARGV: room, known epoch, known generation, known
/// seq, candidate epoch, retention (0: all), feed maxlen, fingerprint ('' =
/// no txn), txn ttl, origin, ts, then the event's field/value pairs.
const APPEND_LUA: &str = r#"
local room, known_epoch, candidate = ARGV[1], ARGV[2], ARGV[5]
local known_gen, known_seq = tonumber(ARGV[3]), tonumber(ARGV[4])
local retention, feed_max = tonumber(ARGV[6]), ARGV[7]
local fp, ttl, origin = ARGV[8], ARGV[9], ARGV[10]
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'ts'
fields[#fields + 1] = ARGV[11]

local epoch, gen, seq = ensure(KEYS[1], KEYS[2], known_epoch, known_gen, known_seq, candidate)
if fp ~= '' then
  local rec = redis.call('GET', KEYS[4])
  if rec then
    local rfp, repoch, rseq = string.match(rec, '^(%x+) (%S+) (%d+)$')
    if repoch == epoch then
      if rfp == fp then
        return {'repeated', epoch, string.format('%d', gen), rseq}
      end
      return {'conflict', epoch, string.format('%d', gen), '0'}
    end
  end
end

-- Exact MAXLEN, not '~': retention means the last N events on both logs,
-- and trimming the one entry an append pushes out is cheap.
local function add(s)
  local id = string.format('%d-0', s)
  if retention > 0 then
    return redis.pcall('XADD', KEYS[2], 'MAXLEN', retention, id, unpack(fields))
  end
  return redis.pcall('XADD', KEYS[2], id, unpack(fields))
end

-- The room stream is written first: if it refuses, nothing else is written.
seq = seq + 1
local r = add(seq)
if type(r) == 'table' and r.err then
  if not string.find(r.err, 'equal or smaller', 1, true) then
    return r
  end
  -- The stream already holds ids past the counter: not the log clients saw.
  epoch, gen, seq = restart(KEYS[1], KEYS[2], candidate, known_gen, gen)
  seq = 1
  r = add(seq)
  if type(r) == 'table' and r.err then
    return r
  end
end
local sseq, sgen = string.format('%d', seq), string.format('%d', gen)
redis.call('HSET', KEYS[1], 'seq', sseq)
if fp ~= '' then
  redis.call('SET', KEYS[4], fp .. ' ' .. epoch .. ' ' .. sseq, 'EX', ttl)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', feed_max, '*',
  'r', room, 'e', epoch, 'g', sgen, 'q', sseq, 'o', origin, unpack(fields))
return {'stored', epoch, sgen, sseq}
"#;

/// KEYS: meta, log. ARGV: known epoch, known generation, known seq, candidate
/// epoch, mode (head|after|before|latest), n, limit.
const READ_LUA: &str = r#"
local epoch, gen, seq = ensure(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
local earliest = string.format('%d', seq + 1)
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if first[1] then
  earliest = string.match(first[1][1], '^(%d+)')
end
local mode, n, limit = ARGV[5], ARGV[6], ARGV[7]
local entries = {}
if mode == 'after' then
  entries = redis.call('XRANGE', KEYS[2], '(' .. n .. '-0', '+', 'COUNT', limit)
elseif mode == 'before' then
  if n ~= '0' then
    entries = redis.call('XREVRANGE', KEYS[2], '(' .. n .. '-0', '-', 'COUNT', limit)
  end
elseif mode == 'latest' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
end
return {epoch, string.format('%d', gen), string.format('%d', seq), earliest, entries}
"#;

/// Writes events a federated room's home server ordered (see
/// `EventLog::import`). KEYS: meta, log, feed. ARGV: room, epoch, restart
/// seq ('' = none), retention, feed maxlen, origin, count, then per event
/// seq, event id, type, sender, has-body ('1'/'0'), body, ts.
const IMPORT_LUA: &str = r#"
local room, epoch, restart = ARGV[1], ARGV[2], ARGV[3]
local retention, feed_max, origin = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local n = tonumber(ARGV[7])
local m = redis.call('HMGET', KEYS[1], 'epoch', 'gen', 'seq')
local gen, seq = tonumber(m[2]) or 0, tonumber(m[3]) or 0
if (not m[1]) or m[1] ~= epoch or restart ~= '' then
  local t = redis.call('TIME')
  gen = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), gen + 1)
  seq = 0
  if restart ~= '' then seq = tonumber(restart) - 1 end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'gen', string.format('%d', gen), 'seq', string.format('%d', seq))
end
local sgen = string.format('%d', gen)
local before = seq
local written, hole = 0, 0
local i = 8
for _ = 1, n do
  local eseq = tonumber(ARGV[i])
  if eseq > seq then
    if eseq ~= seq + 1 then
      hole = 1
      break
    end
    local fields = {'t', ARGV[i + 2], 's', ARGV[i + 3]}
    if ARGV[i + 4] == '1' then
      fields[#fields + 1] = 'b'
      fields[#fields + 1] = ARGV[i + 5]
    end
    fields[#fields + 1] = 'ts'
    fields[#fields + 1] = ARGV[i + 6]
    fields[#fields + 1] = 'i'
    fields[#fields + 1] = ARGV[i + 1]
    local id = string.format('%d-0', eseq)
    if retention > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', retention, id, unpack(fields))
    else
      redis.call('XADD', KEYS[2], id, unpack(fields))
    end
    seq = eseq
    written = written + 1
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', feed_max, '*',
      'r', room, 'e', epoch, 'g', sgen, 'q', string.format('%d', seq), 'o', origin, unpack(fields))
  end
  i = i + 7
end
redis.call('HSET', KEYS[1], 'seq', string.format('%d', seq))
return {sgen, string.format('%d', before), string.format('%d', seq), string.format('%d', written), string.format('%d', hole)}
"#;

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

/// The epoch, generation and highest seq this process has seen for a room.
#[derive(Debug, Clone)]
struct Seen {
    epoch: Arc<str>,
    generation: u64,
    seq: u64,
}

#[derive(Default)]
struct SeenMap(Mutex<HashMap<RoomId, Seen>>);

impl SeenMap {
    fn get(&self, room: &RoomId) -> Option<Seen> {
        self.0.lock().expect("seen lock").get(room).cloned()
    }

    /// Records a sighting; a newer generation replaces, the same epoch keeps the max seq.
    fn observe(&self, room: &RoomId, epoch: &Arc<str>, generation: u64, seq: u64) {
        let mut m = self.0.lock().expect("seen lock");
        match m.get_mut(room) {
            Some(s) => Self::merge(s, epoch, generation, seq),
            None => {
                m.insert(room.clone(), Seen { epoch: epoch.clone(), generation, seq });
            }
        }
    }

    /// Records a sighting from the feed, for rooms this process appends to
    /// or reads (every room with a local subscriber was read at subscribe):
    /// the map then grows with this process's rooms, not with all rooms.
    fn observe_tracked(&self, room: &RoomId, epoch: &Arc<str>, generation: u64, seq: u64) {
        if let Some(s) = self.0.lock().expect("seen lock").get_mut(room) {
            Self::merge(s, epoch, generation, seq);
        }
    }

    fn merge(s: &mut Seen, epoch: &Arc<str>, generation: u64, seq: u64) {
        if s.generation > generation {
            return;
        }
        if s.generation == generation && *s.epoch == **epoch {
            s.seq = s.seq.max(seq);
        } else {
            *s = Seen { epoch: epoch.clone(), generation, seq };
        }
    }
}

/// Whether an error means the connection (or the server behind it) is gone,
/// so the connection must be replaced and the caller may retry later.
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
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

fn storage_error(e: &RedisError) -> StorageError {
    if is_outage(e) || e.code().is_some_and(is_transient_refusal) {
        StorageError::Unavailable(format!("redis: {e}"))
    } else {
        StorageError::Log(format!("redis: {e}"))
    }
}

/// The shared command connection: one multiplexed connection, replaced when
/// it breaks. While Redis is unreachable, callers fail at once (a new
/// attempt is made at most once per backoff interval), never queue.
struct Link {
    client: Client,
    state: Mutex<LinkState>,
    connecting: tokio::sync::Mutex<()>,
    append_sha: String,
    read_sha: String,
    import_sha: String,
    append_src: String,
    read_src: String,
}

#[derive(Default)]
struct LinkState {
    conn: Option<(u64, MultiplexedConnection)>,
    next_id: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

impl Link {
    fn new(client: Client) -> Self {
        let append_src = format!("{EPOCH_LUA}{APPEND_LUA}");
        let read_src = format!("{EPOCH_LUA}{READ_LUA}");
        Self {
            client,
            state: Mutex::new(LinkState { backoff: BACKOFF_MIN, ..LinkState::default() }),
            connecting: tokio::sync::Mutex::new(()),
            append_sha: redis::Script::new(&append_src).get_hash().to_owned(),
            read_sha: redis::Script::new(&read_src).get_hash().to_owned(),
            import_sha: redis::Script::new(IMPORT_LUA).get_hash().to_owned(),
            append_src,
            read_src,
        }
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.state.lock().expect("link lock").conn.clone()
    }

    async fn get(&self) -> Result<(u64, MultiplexedConnection), StorageError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        {
            let st = self.state.lock().expect("link lock");
            if st.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(StorageError::Unavailable(format!("redis unreachable: {}", st.last_error)));
            }
        }
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await;
        let mut st = self.state.lock().expect("link lock");
        match attempt {
            Ok(Ok(conn)) => {
                st.next_id += 1;
                st.conn = Some((st.next_id, conn.clone()));
                st.retry_at = None;
                st.backoff = BACKOFF_MIN;
                tracing::info!("connected to redis");
                Ok((st.next_id, conn))
            }
            Ok(Err(e)) => Err(self.failed(&mut st, e.to_string())),
            Err(_) => Err(self.failed(&mut st, "connect timed out".into())),
        }
    }

    fn failed(&self, st: &mut LinkState, why: String) -> StorageError {
        if st.retry_at.is_none() {
            tracing::warn!(error = %why, "redis unreachable");
        }
        st.retry_at = Some(Instant::now() + st.backoff);
        st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
        st.last_error = why.clone();
        StorageError::Unavailable(format!("redis unreachable: {why}"))
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = self.client.get_multiplexed_async_connection_with_config(&cfg).await?;
        // Scripts are gone after a Redis restart: load them on every new
        // connection so that EVALSHA in a pipeline never meets NOSCRIPT.
        redis::pipe()
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.append_src)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.read_src)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(IMPORT_LUA)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(conn)
    }

    /// Drops connection `id` if it is still the current one.
    fn broken(&self, id: u64) {
        let mut st = self.state.lock().expect("link lock");
        if st.conn.as_ref().is_some_and(|(cur, _)| *cur == id) {
            st.conn = None;
        }
    }

    /// Runs an idempotent command, retrying once on a fresh connection when
    /// the current one turns out to be dead (e.g. Redis restarted since).
    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, StorageError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (id, mut conn) = self.get().await?;
            match cmd.query_async::<Value>(&mut conn).await {
                Ok(v) => return Ok(v),
                Err(e) if is_outage(&e) => {
                    self.broken(id);
                    if tries >= 2 {
                        return Err(storage_error(&e));
                    }
                }
                Err(e) => return Err(storage_error(&e)),
            }
        }
    }
}

struct Job {
    room: RoomId,
    event: NewEvent,
    ts: u64,
    origin: String,
    reply: oneshot::Sender<Result<AppendOutcome, StorageError>>,
}

impl Job {
    fn size(&self) -> usize {
        self.event.body.as_ref().map_or(0, String::len) + 256
    }
}

enum Msg {
    Append(Job),
    Stop(oneshot::Sender<()>),
}

struct Shared {
    link: Link,
    sink: Arc<dyn EventSink>,
    retention: Option<u64>,
    seen: SeenMap,
    /// This log's id on the feed: entries whose origin starts with it are ours.
    instance: String,
    next_ticket: AtomicU64,
    /// When the feed was last reported behind (ms since the Unix epoch).
    behind_warned_ms: AtomicU64,
    /// Appends waiting for their event to come back on the feed.
    tickets: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl Shared {
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
    /// Connects to Redis at `url` and starts the writer and the feed reader,
    /// which feeds `sink`. Fails when Redis cannot be reached now: a server
    /// that starts must be able to take sends.
    pub async fn open(url: &str, sink: Arc<dyn EventSink>, retention: Option<u64>) -> Result<Self, StorageError> {
        let client = Client::open(url).map_err(|e| StorageError::Log(format!("bad redis url {url:?}: {e}")))?;
        let link = Link::new(client.clone());
        link.get().await.map_err(|e| StorageError::Unavailable(format!("cannot reach redis at {url}: {e}")))?;
        let mut feed = Feed::connect(&client).await.map_err(|e| {
            StorageError::Unavailable(format!("cannot open the redis feed at {url}: {}", storage_error(&e)))
        })?;
        // Everything appended from here on is after this cursor, and no
        // append is sent before it is fixed: none of ours can be missed.
        let cursor = feed.tail().await.map_err(|e| storage_error(&e))?.unwrap_or_else(|| "0-0".into());
        let shared = Arc::new(Shared {
            link,
            sink,
            retention: retention.map(|n| n.max(1)),
            seen: SeenMap::default(),
            instance: new_epoch(),
            next_ticket: AtomicU64::new(1),
            behind_warned_ms: AtomicU64::new(0),
            tickets: Mutex::new(HashMap::new()),
        });
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(Writer { shared: shared.clone() }.run(rx));
        let reader = tokio::spawn(FeedReader { shared: shared.clone(), client, cursor, stop: stop.clone() }.run(feed));
        Ok(Self { shared, jobs: tx, stop, tasks: Mutex::new(vec![writer, reader]) })
    }

    async fn page(&self, room: &RoomId, range: Range, limit: usize) -> Result<Page, StorageError> {
        let (mode, n) = match range {
            _ if limit == 0 => ("head", 0),
            Range::After(n) => ("after", n),
            Range::Before(n) => ("before", n),
            Range::Latest => ("latest", 0),
        };
        let known = self.shared.seen.get(room);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.shared.link.read_sha).arg(2).arg(meta_key(room)).arg(log_key(room));
        push_known(&mut cmd, known.as_ref());
        cmd.arg(new_epoch()).arg(mode).arg(n).arg(limit.max(1));
        let v = self.shared.link.query(&cmd).await?;
        let (head, generation, entries) = parse_read(v)?;
        self.shared.seen.observe(room, &head.epoch, generation, head.latest);
        let mut events = entries
            .into_iter()
            .map(|(seq, fields)| decode_event(room, &head.epoch, seq, fields))
            .collect::<Result<Vec<_>, _>>()?;
        if matches!(mode, "before" | "latest") {
            events.reverse();
        }
        Ok(Page { head, events })
    }
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn push_known(cmd: &mut redis::Cmd, known: Option<&Seen>) {
    match known {
        Some(s) => cmd.arg(&*s.epoch).arg(s.generation).arg(s.seq),
        None => cmd.arg("").arg(0).arg(0),
    };
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
        Box::pin(async move {
            let _guard = guard;
            sent.map_err(|_| StorageError::Log("the redis log has stopped".into()))?;
            let outcome = rx.await.map_err(|_| StorageError::Log("the redis log has stopped".into()))??;
            if matches!(outcome, AppendOutcome::Stored { .. }) && tokio::time::timeout(FEED_WAIT, fed_rx).await.is_err()
            {
                shared.feed_behind();
            }
            Ok(outcome)
        })
    }

    fn read<'a>(&'a self, room: &'a RoomId, range: Range, limit: usize) -> BoxFuture<'a, Result<Page, StorageError>> {
        Box::pin(self.page(room, range, limit))
    }

    fn head<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<LogHead, StorageError>> {
        Box::pin(async move { Ok(self.page(room, Range::Latest, 0).await?.head) })
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
            let link = &shared.link;
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&link.import_sha).arg(3).arg(meta_key(&room)).arg(log_key(&room)).arg(FEED_KEY);
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
            }
            let parts = strings(link.query(&cmd).await?)?;
            let [generation, before, latest, written, hole] = parts.as_slice() else {
                return Err(StorageError::Log(format!("import script answered {} values", parts.len())));
            };
            let latest = parse_u64(latest)?;
            shared.seen.observe(&room, &epoch, parse_u64(generation)?, latest);
            Ok(Imported {
                before: parse_u64(before)?,
                latest,
                written: parse_u64(written)? as usize,
                hole: hole == "1",
            })
        })
    }

    fn healthy(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            matches!(self.shared.link.query(&redis::cmd("PING")).await, Ok(Value::SimpleString(s)) if s == "PONG")
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

struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut next = Some(first);
            let mut bytes = 0;
            let mut stop = None;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(j) => {
                        bytes += j.size();
                        batch.push(j);
                    }
                    Msg::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(std::mem::take(&mut batch)).await;
            }
            if let Some(done) = stop {
                let _ = done.send(());
                return;
            }
        }
    }

    fn command(&self, job: &Job, candidate: &str) -> redis::Cmd {
        let room = &job.room;
        let link = &self.shared.link;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&link.append_sha).arg(4).arg(meta_key(room)).arg(log_key(room)).arg(FEED_KEY);
        match &job.event.txn {
            Some(t) => cmd.arg(txn_key(room, &t.device, &t.txn_id)),
            None => cmd.arg(meta_key(room)),
        };
        cmd.arg(room.as_str());
        push_known(&mut cmd, self.shared.seen.get(room).as_ref());
        cmd.arg(candidate).arg(self.shared.retention.unwrap_or(0)).arg(FEED_MAXLEN);
        match &job.event.txn {
            Some(t) => cmd.arg(hex(&t.fingerprint)),
            None => cmd.arg(""),
        };
        cmd.arg(TXN_TTL_SECS).arg(&job.origin).arg(job.ts);
        cmd.arg("t").arg(job.event.kind.as_str()).arg("s").arg(job.event.sender.as_str());
        if let Some(body) = &job.event.body {
            cmd.arg("b").arg(body);
        }
        cmd
    }

    async fn commit(&self, jobs: Vec<Job>) {
        let (id, mut conn) = match self.shared.link.get().await {
            Ok(c) => c,
            Err(e) => return fail_all(jobs, &e),
        };
        // One candidate serves the whole batch: the first script of a room
        // that needs a new epoch takes it, the others then find it stored.
        let candidate = new_epoch();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in &jobs {
            pipe.add_command(self.command(job, &candidate));
        }
        let values = match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(v) if v.len() == jobs.len() => v,
            Ok(v) => {
                let e = StorageError::Log(format!("redis answered {} of {} appends", v.len(), jobs.len()));
                return fail_all(jobs, &e);
            }
            Err(e) => {
                if is_outage(&e) {
                    self.shared.link.broken(id);
                }
                return fail_all(jobs, &storage_error(&e));
            }
        };
        let mut noscript = false;
        for (job, v) in jobs.into_iter().zip(values) {
            let result = match v {
                Value::ServerError(se) => {
                    noscript |= se.kind() == Some(ServerErrorKind::NoScript);
                    let e: RedisError = se.into();
                    Err(storage_error(&e))
                }
                v => self.outcome(&job.room, v),
            };
            let _ = job.reply.send(result);
        }
        if noscript {
            // Someone flushed the script cache; a new connection reloads it.
            self.shared.link.broken(id);
        }
    }

    fn outcome(&self, room: &RoomId, v: Value) -> Result<AppendOutcome, StorageError> {
        let parts = strings(v)?;
        let [status, epoch, generation, seq] = parts.as_slice() else {
            return Err(StorageError::Log(format!("append script answered {} values", parts.len())));
        };
        let epoch: Arc<str> = epoch.as_str().into();
        let generation = parse_u64(generation)?;
        let seq = parse_u64(seq)?;
        let server = room.server();
        match status.as_str() {
            "stored" => {
                self.shared.seen.observe(room, &epoch, generation, seq);
                Ok(AppendOutcome::Stored { event_id: event_id(room, &epoch, seq, server), seq })
            }
            "repeated" => {
                self.shared.seen.observe(room, &epoch, generation, seq);
                Ok(AppendOutcome::Repeated { event_id: event_id(room, &epoch, seq, server), seq })
            }
            "conflict" => Ok(AppendOutcome::Conflict),
            other => Err(StorageError::Log(format!("append script answered {other:?}"))),
        }
    }
}

fn fail_all(jobs: Vec<Job>, e: &StorageError) {
    for job in jobs {
        let again = match e {
            StorageError::Unavailable(m) => StorageError::Unavailable(m.clone()),
            other => StorageError::Log(other.to_string()),
        };
        let _ = job.reply.send(Err(again));
    }
}

/// The feed reader's own connection: `XREAD BLOCK` holds a connection for
/// the whole block, which must not stall (or time out) other commands.
struct Feed {
    conn: MultiplexedConnection,
}

impl Feed {
    async fn connect(client: &Client) -> Result<Self, RedisError> {
        let block = Duration::from_millis(FEED_BLOCK_MS);
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection_with_config(&cfg))
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        Ok(Self { conn })
    }

    /// The id of the feed's last entry, if it has any.
    async fn tail(&mut self) -> Result<Option<String>, RedisError> {
        let v: Value = redis::cmd("XREVRANGE")
            .arg(FEED_KEY)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await?;
        let entries = entries(v).map_err(|e| RedisError::from((ErrorKind::Parse, "feed entry", e.to_string())))?;
        Ok(entries.into_iter().next().map(|(id, _)| id))
    }

    async fn read(&mut self, cursor: &str) -> Result<Vec<(String, Vec<Value>)>, RedisError> {
        let v: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(FEED_COUNT)
            .arg("BLOCK")
            .arg(FEED_BLOCK_MS)
            .arg("STREAMS")
            .arg(FEED_KEY)
            .arg(cursor)
            .query_async(&mut self.conn)
            .await?;
        let bad = |e: StorageError| RedisError::from((ErrorKind::Parse, "feed reply", e.to_string()));
        match v {
            Value::Nil => Ok(Vec::new()),
            Value::Array(streams) => {
                let mut out = Vec::new();
                for s in streams {
                    let Value::Array(mut kv) = s else { return Err(bad(StorageError::Log("stream reply".into()))) };
                    if kv.len() != 2 {
                        return Err(bad(StorageError::Log("stream reply".into())));
                    }
                    out.extend(entries(kv.pop().expect("two items")).map_err(bad)?);
                }
                Ok(out)
            }
            other => Err(bad(StorageError::Log(format!("unexpected XREAD reply {other:?}")))),
        }
    }
}

struct FeedReader {
    shared: Arc<Shared>,
    client: Client,
    cursor: String,
    stop: CancellationToken,
}

impl FeedReader {
    async fn run(mut self, first: Feed) {
        let mut feed = Some(first);
        let mut backoff = BACKOFF_MIN;
        while !self.stop.is_cancelled() {
            let Some(f) = feed.as_mut() else {
                let stop = self.stop.clone();
                let connected = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = self.reconnect() => c,
                };
                match connected {
                    Ok(f) => {
                        tracing::info!(cursor = %self.cursor, "redis feed reconnected");
                        feed = Some(f);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "redis feed still unreachable");
                        tokio::select! {
                            _ = self.stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                continue;
            };
            let got = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = f.read(&self.cursor) => r,
            };
            match got {
                Ok(batch) if batch.is_empty() => {
                    // Idle: make sure the feed was not replaced under us
                    // (FLUSHALL) with ids below our cursor.
                    match f.tail().await {
                        Ok(tail) => self.check_reset(tail.as_deref()),
                        Err(e) => {
                            tracing::warn!(error = %e, "redis feed lost");
                            feed = None;
                        }
                    }
                }
                Ok(batch) => {
                    for (id, fields) in batch {
                        self.deliver(fields);
                        self.cursor = id;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis feed lost; reconnecting");
                    feed = None;
                }
            }
        }
        // Nobody will complete these now; let their appends return.
        self.shared.tickets.lock().expect("tickets lock").clear();
    }

    async fn reconnect(&mut self) -> Result<Feed, RedisError> {
        let mut f = Feed::connect(&self.client).await?;
        let tail = f.tail().await?;
        self.check_reset(tail.as_deref());
        Ok(f)
    }

    /// A feed whose last id is below our cursor (or that is gone) was
    /// replaced — Redis lost its data — and everything in it is new to us.
    fn check_reset(&mut self, tail: Option<&str>) {
        let behind = match tail {
            None => self.cursor != "0-0",
            Some(t) => stream_id(t) < stream_id(&self.cursor),
        };
        if behind {
            tracing::warn!(cursor = %self.cursor, tail = ?tail, "the redis feed was reset; reading it from the start");
            self.cursor = "0-0".into();
        }
    }

    fn deliver(&self, fields: Vec<Value>) {
        match self.decode(fields) {
            Ok((room, epoch, generation, event, origin)) => {
                let json = serde_json::to_string(&event).expect("events serialize");
                self.shared.seen.observe_tracked(&room, &epoch, generation, event.seq);
                self.shared.sink.deliver(&room, &epoch, event.seq, &json);
                if let Some(ticket) = origin.strip_prefix(&self.shared.instance).and_then(|t| t.strip_prefix('/')) {
                    if let Ok(t) = ticket.parse::<u64>() {
                        if let Some(fed) = self.shared.tickets.lock().expect("tickets lock").remove(&t) {
                            let _ = fed.send(());
                        }
                    }
                }
            }
            // Skipped, not fatal: sessions fill the hole from the room stream.
            Err(e) => tracing::error!(error = %e, "undecodable redis feed entry"),
        }
    }

    fn decode(&self, fields: Vec<Value>) -> Result<(RoomId, Arc<str>, u64, Event, String), StorageError> {
        let mut room = None;
        let mut epoch = None;
        let mut generation = None;
        let mut seq = None;
        let mut origin = String::new();
        let mut rest = Vec::with_capacity(8);
        for (k, v) in pairs(fields)? {
            match k.as_str() {
                "r" => room = Some(RoomId::parse(&v).map_err(|e| corrupt(format!("feed room {v:?}: {e}")))?),
                "e" => epoch = Some(v),
                "g" => generation = Some(parse_u64(&v)?),
                "q" => seq = Some(parse_u64(&v)?),
                "o" => origin = v,
                _ => rest.push((k, v)),
            }
        }
        let (Some(room), Some(epoch), Some(generation), Some(seq)) = (room, epoch, generation, seq) else {
            return Err(corrupt("feed entry without room, epoch, generation or seq".into()));
        };
        let epoch: Arc<str> = epoch.into();
        let event = event_from(&room, &epoch, seq, rest)?;
        Ok((room, epoch, generation, event, origin))
    }
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt { tree: "redis", detail }
}

fn parse_u64(s: &str) -> Result<u64, StorageError> {
    s.parse().map_err(|_| corrupt(format!("not a number: {s:?}")))
}

/// `ms-seq` as a pair, for ordering stream ids.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn text(v: Value) -> Result<String, StorageError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| corrupt("non-UTF-8 value".into())),
        Value::SimpleString(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(corrupt(format!("expected a string, got {other:?}"))),
    }
}

fn strings(v: Value) -> Result<Vec<String>, StorageError> {
    match v {
        Value::Array(items) => items.into_iter().map(text).collect(),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

fn pairs(fields: Vec<Value>) -> Result<Vec<(String, String)>, StorageError> {
    if fields.len() % 2 != 0 {
        return Err(corrupt("odd number of stream fields".into()));
    }
    let mut out = Vec::with_capacity(fields.len() / 2);
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((text(k)?, text(v)?));
    }
    Ok(out)
}

/// Stream entries `[[id, [k, v, …]], …]` as (id, fields).
fn entries(v: Value) -> Result<Vec<(String, Vec<Value>)>, StorageError> {
    let items = match v {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        other => return Err(corrupt(format!("expected stream entries, got {other:?}"))),
    };
    items
        .into_iter()
        .map(|e| match e {
            Value::Array(mut pair) if pair.len() == 2 => {
                let fields = match pair.pop().expect("two items") {
                    Value::Array(f) => f,
                    Value::Nil => Vec::new(),
                    other => return Err(corrupt(format!("expected entry fields, got {other:?}"))),
                };
                Ok((text(pair.pop().expect("two items"))?, fields))
            }
            other => Err(corrupt(format!("expected a stream entry, got {other:?}"))),
        })
        .collect()
}

/// Room stream entries as (seq, raw fields).
type Entries = Vec<(u64, Vec<Value>)>;

/// The read script's answer: the head, the generation, and the entries.
fn parse_read(v: Value) -> Result<(LogHead, u64, Entries), StorageError> {
    let Value::Array(mut items) = v else { return Err(corrupt("read script answer".into())) };
    if items.len() != 5 {
        return Err(corrupt(format!("read script answered {} values", items.len())));
    }
    let raw = items.pop().expect("five items");
    let earliest = parse_u64(&text(items.pop().expect("five items"))?)?;
    let latest = parse_u64(&text(items.pop().expect("five items"))?)?;
    let generation = parse_u64(&text(items.pop().expect("five items"))?)?;
    let epoch: Arc<str> = text(items.pop().expect("five items"))?.into();
    let entries =
        entries(raw)?.into_iter().map(|(id, f)| Ok((stream_id(&id).0, f))).collect::<Result<Vec<_>, StorageError>>()?;
    Ok((LogHead { epoch, earliest: earliest.min(latest + 1), latest }, generation, entries))
}

fn decode_event(room: &RoomId, epoch: &str, seq: u64, fields: Vec<Value>) -> Result<Event, StorageError> {
    event_from(room, epoch, seq, pairs(fields)?)
}

fn event_from(room: &RoomId, epoch: &str, seq: u64, fields: Vec<(String, String)>) -> Result<Event, StorageError> {
    let mut kind = None;
    let mut sender = None;
    let mut body = None;
    let mut ts = 0;
    let mut id = None;
    for (k, v) in fields {
        match k.as_str() {
            "t" => {
                kind = Some(match v.as_str() {
                    "message" => EventType::Message,
                    "join" => EventType::Join,
                    "leave" => EventType::Leave,
                    other => return Err(corrupt(format!("unknown event type {other:?}"))),
                })
            }
            "s" => sender = Some(UserId::parse(&v).map_err(|e| corrupt(format!("sender {v:?}: {e}")))?),
            "b" => body = Some(v),
            "ts" => ts = parse_u64(&v)?,
            // Imported events keep the id their home server gave them.
            "i" => id = Some(v),
            _ => {}
        }
    }
    let (Some(kind), Some(sender)) = (kind, sender) else {
        return Err(corrupt(format!("event {seq} of {room} without type or sender")));
    };
    let event_id = id.unwrap_or_else(|| event_id(room, epoch, seq, room.server()));
    Ok(Event { event_id, seq, kind, sender, body, ts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(stream_id("9-5") < stream_id("10-0"));
        assert!(stream_id("10-1") > stream_id("10-0"));
        assert_eq!(stream_id("0-0"), (0, 0));
    }

    #[test]
    fn seen_keeps_the_newest_generation_and_the_highest_seq() {
        let seen = SeenMap::default();
        let room = RoomId::parse("!r:x").unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        seen.observe(&room, &a, 5, 10);
        seen.observe(&room, &a, 5, 7);
        assert_eq!(seen.get(&room).unwrap().seq, 10);
        seen.observe(&room, &b, 4, 99);
        assert_eq!(&*seen.get(&room).unwrap().epoch, "a", "an older generation is ignored");
        seen.observe(&room, &b, 6, 1);
        let s = seen.get(&room).unwrap();
        assert_eq!((&*s.epoch, s.generation, s.seq), ("b", 6, 1));
        seen.observe_tracked(&room, &b, 6, 3);
        assert_eq!(seen.get(&room).unwrap().seq, 3);
        let other = RoomId::parse("!o:x").unwrap();
        seen.observe_tracked(&other, &b, 6, 3);
        assert!(seen.get(&other).is_none(), "untouched rooms are not tracked");
    }

    #[test]
    fn txn_keys_are_printable_and_distinct() {
        let room = RoomId::parse("!r:x").unwrap();
        let a = txn_key(&room, "@a:x\0D1", "t1");
        assert!(a.bytes().all(|b| b.is_ascii_graphic()), "{a}");
        assert_ne!(a, txn_key(&room, "@a:x\0D1", "t2"));
        assert_ne!(a, txn_key(&room, "@a:x\0D2", "t1"));
    }
}

//! The room log: one trait, [`EventLog`], with two implementations chosen at
//! start-up, [`embedded`] (sled) and [`redis`] (Redis Streams).
//!
//! An implementation owns three things no other layer may do:
//! - assign `seq` (1, 2, 3, … per room and epoch, no holes) atomically with
//!   the write of the event and of its transaction record, so idempotency
//!   holds across restarts and across server processes;
//! - decide the room's `epoch`, and start a new one when its data was lost;
//! - feed every durable event, from whichever process appended it, to the
//!   [`EventSink`] in `seq` order per room;
//! - remember transaction ids for [`LogSettings::txn_ttl`], and forget them
//!   after that.

pub mod embedded;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use crate::protocol::events::Range;
use crate::protocol::events::{Event, EventContent, EventType};
use crate::protocol::{RoomId, UserId};

use super::StorageError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a transaction id is remembered: the protocol promises at least 24 h.
pub const TXN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a room log keeps, the same for both implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Keep only the last N events of each room (`None`: all).
    pub retention: Option<u64>,
    /// How long a transaction id is remembered ([`TXN_TTL`]; shorter only in tests).
    pub txn_ttl: Duration,
}

impl LogSettings {
    pub fn new(retention: Option<u64>) -> Self {
        Self { retention, txn_ttl: TXN_TTL }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self::new(None)
    }
}

/// An event to append; the log fills in `event_id`, `seq` and `ts`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventType,
    pub sender: UserId,
    pub body: Option<String>,
    /// v1.1 fields of state events (empty for v1's types).
    pub content: Box<EventContent>,
    /// Present for client sends: makes the append idempotent.
    pub txn: Option<Txn>,
}

/// A client transaction: who sent it, its id, and a fingerprint of its
/// content (so a reused id with another body is told apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// `user_id` and `device_id`, the scope of a `txn_id`.
    pub device: String,
    pub txn_id: String,
    pub fingerprint: [u8; 32],
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// A new event was written.
    Stored { event_id: String, seq: u64 },
    /// The transaction was already done; nothing was written.
    Repeated { event_id: String, seq: u64 },
    /// The transaction id was used with other content; nothing was written.
    Conflict,
}

/// Where a room log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    pub epoch: Arc<str>,
    /// Lowest seq still kept (`latest + 1` when nothing is kept).
    pub earliest: u64,
    /// Last seq appended in this epoch (0 when none).
    pub latest: u64,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// The log's last seq before the import, in the imported epoch (after a
    /// start over, the seq before the first one expected).
    pub before: u64,
    /// The log's last seq afterwards.
    pub latest: u64,
    /// Events actually written (the rest were already there).
    pub written: usize,
    /// The import stopped at an event that was not the next seq: the log is
    /// missing events before it, which the caller must fetch and import first.
    pub hole: bool,
}

/// A page of events, ascending by seq, read from one epoch.
#[derive(Debug, Clone)]
pub struct Page {
    pub head: LogHead,
    pub events: Vec<Event>,
}

/// Receives every durable event, per room in seq order. Implemented by the
/// fan-out hub; must not block (it runs on the log's delivery path).
pub trait EventSink: Send + Sync + 'static {
    /// `event_json` is the event serialized as in the protocol's `Event`.
    fn deliver(&self, room: &RoomId, epoch: &Arc<str>, seq: u64, event_json: &str);
}

/// A room log implementation.
pub trait EventLog: Send + Sync + 'static {
    /// `embedded` or `redis`.
    fn kind(&self) -> &'static str;

    /// Appends an event. The append is sequenced when this is *called*: two
    /// appends called one after the other to one room get seqs in that order,
    /// however their futures are polled (so a client's pipelined sends keep
    /// their order). The future resolves only once the event is durable and
    /// has been handed to the sink. It must fail fast, never hang, when the
    /// store is unreachable.
    fn append(&self, room: &RoomId, event: NewEvent) -> BoxFuture<'static, Result<AppendOutcome, StorageError>>;

    fn read<'a>(&'a self, room: &'a RoomId, range: Range, limit: usize) -> BoxFuture<'a, Result<Page, StorageError>>;

    /// Like `read`, from the named epoch: the current one, or an older one
    /// the log still keeps (on Redis, what it held of an epoch when a new
    /// one had to start). `None` when the log keeps no such epoch.
    fn read_epoch<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: &'a str,
        range: Range,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Page>, StorageError>>;

    fn head<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<LogHead, StorageError>>;

    /// Writes events that another server (a federated room's home) ordered,
    /// keeping their epoch, seqs, ids and times, durably and through the sink
    /// like appends. Events at or below the log's last seq are skipped (so
    /// imports are idempotent); the first one that is not the next seq stops
    /// the import (`hole`). `restart_at = Some(n)`, or an `epoch` other than
    /// the log's, drops what the log holds for the room and starts it over
    /// so that its next seq is `n` (1 when only the epoch changed).
    fn import(
        &self,
        room: &RoomId,
        epoch: &str,
        restart_at: Option<u64>,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Imported, StorageError>>;

    /// Deletes everything the log holds of a room (every epoch, its
    /// transaction records, what this process remembers of it); false when
    /// it held nothing. Durable on return. For `parlor admin rooms purge`:
    /// the caller has removed the room from the directory first, so no
    /// send is taken for it while this runs.
    fn purge<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Erases the `body` of the events at `seqs` of the room's epoch `epoch`
    /// wherever this log stores them, and marks them `redacted` (v1.1
    /// redactions); seqs the epoch no longer holds are skipped, and so is
    /// an epoch the log does not keep. Idempotent. Durable on return.
    /// Returns how many stored events changed (in the room's log; copies on
    /// Redis's feed are erased too, see `scrub_feed.lua`).
    fn erase<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: &'a str,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<usize, StorageError>>;

    /// The room's older epochs this log still keeps besides the current
    /// one (Redis's archives; none on the embedded log), in no order.
    fn archived_epochs<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<Vec<String>, StorageError>>;

    /// Whether the backing store answers now.
    fn healthy(&self) -> BoxFuture<'_, bool>;

    /// Flushes and stops background work; called once at shutdown.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// `event` as it reads once redacted: no body, marked `redacted`.
pub fn redact_event(event: &mut Event) {
    event.body = None;
    event.content.redacted = true;
}

/// An event id: unique because (room, epoch, seq) is, and opaque.
pub fn event_id(room: &RoomId, epoch: &str, seq: u64, server: &str) -> String {
    use base64::Engine as _;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(room.as_str().as_bytes());
    ctx.update(&[0]);
    ctx.update(epoch.as_bytes());
    ctx.update(&[0]);
    ctx.update(&seq.to_be_bytes());
    let d = ctx.finish();
    format!("${}:{server}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.as_ref()[..16]))
}

/// A fresh random epoch string.
pub fn new_epoch() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 9];
    ring::rand::SystemRandom::new().fill(&mut b).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

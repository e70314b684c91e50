//! Federation, the server-to-server side: this server's ed25519 key, signing
//! outgoing and verifying incoming requests (each signed request is
//! single-use), the calls a participating server makes to a room's home
//! server (join, leave, send, backfill), and pushing a home server's events to
//! every server with members in the room.
//!
//! The network is not here: every request goes through a [`Transport`] (the
//! wire's `fedclient` in the server, a fake in tests), which knows where a
//! server is and which addresses may be reached. What a room *is* stays in
//! `rooms`: this module moves signed JSON between servers and knows which
//! servers take part in which local room.
//!
//! Pushing never touches the room log's delivery path: [`Federation::on_event`]
//! only hands the event to a router task through a bounded channel. The router
//! encodes each event once and puts it in the in-memory queue of each server
//! with members in the room; one pusher task per server sends its queue in
//! transactions. A queue is bounded: past the bound it keeps only the newest
//! event of each room, whose seq tells the receiver what it lacks (it
//! backfills; §11.4). A server that stays unreachable is backed off, then
//! dropped from every push set (nothing is queued for it) and probed now and
//! then; it is taken back at once when it is heard from (any request it
//! signs) or answers a probe, and is then sent the newest event of each room
//! it shares, so it catches up without waiting for its periodic backfill.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::Error;
use super::ratelimit::{Limiter, Rule};
use crate::protocol::federation::{
    FEDERATION_PREFIX, FedJoinRequest, FedJoinResponse, FedLeaveRequest, FedMethod, FedRejectRequest, FedSendRequest,
    KEY_PATH, SIGNATURE_WINDOW_MS, ServerKeyResponse, WellKnownResponse, parse_auth_header, render_auth_header,
    request_signed_bytes,
};
use crate::protocol::limits::MAX_BODY_BYTES;
use crate::protocol::rooms::{MessagesResponse, SendResponse};
use crate::protocol::{ErrCode, ErrorBody, RoomId, ServerName, UserId};
use crate::storage::events::now_ms;
use crate::storage::federation::{PushLeases, SeenRequests};
use crate::storage::{RoomStore, StorageError};
use push::{Dest, RoomQueue, Routed};

/// How long a call to another server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched key is trusted before it is fetched again.
const KEY_TTL: Duration = Duration::from_secs(3600);
/// Server keys remembered at most (spec §4).
pub const KEY_CACHE_MAX: usize = 10_000;
/// The largest key document read.
const KEY_DOCUMENT_MAX_BYTES: usize = 64 * 1024;
/// The largest answer read from another server (a backfill page).
const ANSWER_MAX_BYTES: usize = 64 << 20;
/// Key fetches for one origin (cache misses, and re-fetches after a
/// signature did not verify): a burst of 3, then one per 10 s (spec §4).
const KEY_FETCHES_PER_ORIGIN: Rule = Rule { burst: 3, every: Duration::from_secs(10) };
/// Key fetches for all origins together: a burst of 50, then 10 per s.
const KEY_FETCHES_ALL: Rule = Rule { burst: 50, every: Duration::from_millis(100) };
/// Signatures remembered per origin, and in all, to refuse replays (spec §4).
pub const REPLAY_PER_ORIGIN_MAX: usize = 100_000;
pub const REPLAY_MAX: usize = 1_000_000;
/// Width of one slot of the replay memory, by expiry time.
const REPLAY_SLOT_MS: u64 = 10_000;
/// The largest pushed transaction: what a receiver accepts as a body.
const PUSH_TXN_BYTES: usize = MAX_BODY_BYTES;
/// Events per pushed transaction at most.
const PUSH_BATCH_MAX: usize = 1000;
/// Bytes of events kept for pushing per room at most (besides the event
/// count of `Settings::queue_max`).
pub const QUEUE_BYTES_MAX: usize = 16 << 20;
/// Events waiting for the router at most; past it they are not pushed (the
/// receivers backfill them).
const FEED_CAPACITY: usize = 65_536;
/// Pushes (and probes) in flight at once, over all servers.
const PUSH_CONCURRENCY: usize = 32;
/// The first wait after a failed push.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// A server with nothing to push for this long is forgotten (its state is
/// made again when there is).
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// How long a process holds the lease on pushing to a server after taking
/// or renewing it (it renews before each transaction, which takes at most
/// [`REQUEST_TIMEOUT`]); a process that dies gives the server up this long
/// after its last push at most.
pub const PUSH_LEASE: Duration = Duration::from_secs(10);
/// How often a process that does not hold a server's lease, and has events
/// for it, asks for the lease again.
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// How long after a join or leave event reaches this process the directory
/// may still not show the change (the process that made it writes the
/// directory just after appending the event): members read in this time
/// are read again on next use instead of cached.
const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(2);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request federation sends to another server.
#[derive(Debug, Clone)]
pub struct FedRequest {
    pub method: FedMethod,
    /// As signed: the path with its query, percent-encoded.
    pub path_and_query: String,
    /// `Parlor-Signature …`; `None` for the (unsigned) key document.
    pub authorization: Option<String>,
    /// JSON, or empty.
    pub body: Bytes,
    /// Answers longer than this are a failure.
    pub max_answer_bytes: usize,
}

/// Another server's answer.
#[derive(Debug, Clone)]
pub struct FedAnswer {
    pub status: u16,
    pub body: Bytes,
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Its address is one federation does not send to (loopback, private,
    /// link-local, …), and it is not a configured peer.
    #[error("{server} is at an address federation does not send to (name it with --federation-peer)")]
    Forbidden { server: String },
    /// No connection, no answer in time, or a broken one.
    #[error("{server}: {detail}")]
    Unreachable { server: String, detail: String },
}

/// What federation needs from the network: deliver a request to the server
/// with this name and bring back its answer. Implemented by the wire
/// (`fedclient::HttpTransport`) and injected when services are built.
pub trait Transport: Send + Sync + 'static {
    fn send<'a>(
        &'a self,
        server: &'a str,
        req: FedRequest,
        within: Duration,
    ) -> BoxFuture<'a, Result<FedAnswer, TransportError>>;
}

/// How federation is set up (from `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// What `/.well-known/parlor/server` announces (default `https://<server
    /// name>` on a TLS server, else `http://<server name>`).
    pub public_url: String,
    /// The longest wait between two attempts to push to a server that is
    /// down, and between two probes of a server dropped from push sets.
    pub retry_max: Duration,
    /// A server whose pushes have failed for this long is dropped from push
    /// sets until it is back.
    pub give_up: Duration,
    /// Events of one room kept for pushing at most: a server further behind
    /// skips to the oldest kept (and backfills the rest).
    pub queue_max: usize,
}

/// Why a call to another server failed.
#[derive(Debug)]
pub enum Failure {
    /// It could not be reached (or may not be), did not answer in time, or
    /// answered nonsense. The detail is for the server log only.
    Unreachable(String),
    /// It answered with an error.
    Refused(u16, ErrorBody),
}

impl Failure {
    /// As a service error for a client whose request needed that server.
    /// Why it could not be reached is logged, never told: the answer must not
    /// say which ports of which hosts are open.
    pub fn into_error(self, server: &str) -> Error {
        match self {
            Failure::Unreachable(why) => {
                tracing::debug!(%server, error = %why, "a federation call failed");
                Error::refused(
                    ErrCode::HomeServerUnreachable,
                    format!(
                        "the room's home server {server} cannot be reached; the room is read-only until it is back"
                    ),
                )
            }
            Failure::Refused(_, body) if body.errcode == ErrCode::RateLimited => {
                Error::RateLimited { retry_after_ms: body.retry_after_ms.unwrap_or(1000) }
            }
            Failure::Refused(_, body) => Error::refused(body.errcode, format!("{server}: {}", body.error)),
        }
    }
}

/// Why federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("the server key is not an ed25519 key in PKCS#8: {0}")]
    BadKey(ring::error::KeyRejected),
    #[error("cannot load the accepted requests: {0}")]
    Seen(#[from] StorageError),
}

/// What the push side holds and has dropped, for operators (counters since start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events waiting to be pushed, summed over servers.
    pub queued: usize,
    /// Servers whose pushes are failing now (backed off), and of those the
    /// ones dropped from push sets.
    pub failing: usize,
    pub down: usize,
    /// Events a server did not get by push because it fell further behind
    /// than a room's queue keeps (counted per server): it backfills them.
    pub dropped_overflow: u64,
    /// Events a server did not get by push while it was dropped from push
    /// sets (counted per server when it is taken back): it backfills them.
    pub dropped_down: u64,
    /// Events the router could not take (its input was full): no server got them by push.
    pub dropped_feed: u64,
    /// Events too large for a transaction: receivers backfill them.
    pub dropped_too_large: u64,
    /// Events in transactions a receiver refused as malformed (400, 413).
    pub dropped_refused: u64,
}

/// One server as the push side sees it, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStats {
    pub server: String,
    /// Events waiting to be pushed to it.
    pub queued: u64,
    /// How long its pusher waits before the next attempt (zero while pushes
    /// succeed).
    pub backoff: Duration,
    /// Dropped from push sets (probed until it is back).
    pub down: bool,
}

#[derive(Default)]
struct Counters {
    dropped_overflow: AtomicU64,
    dropped_down: AtomicU64,
    dropped_feed: AtomicU64,
    dropped_too_large: AtomicU64,
    dropped_refused: AtomicU64,
}

/// A server's key as last fetched.
struct CachedKey {
    key_id: String,
    public_key: Vec<u8>,
    until: Instant,
}

/// Fetched keys by server name, each until it expires; never more than
/// [`KEY_CACHE_MAX`] of them.
#[derive(Default)]
struct KeyCache {
    entries: HashMap<String, CachedKey>,
}

impl KeyCache {
    fn get(&self, server: &str, now: Instant) -> Option<&CachedKey> {
        self.entries.get(server).filter(|k| k.until > now)
    }

    fn insert(&mut self, server: &str, key: CachedKey, now: Instant) {
        if self.entries.len() >= KEY_CACHE_MAX && !self.entries.contains_key(server) {
            self.entries.retain(|_, k| k.until > now);
            if self.entries.len() >= KEY_CACHE_MAX
                && let Some(k) = self.entries.iter().min_by_key(|(_, k)| k.until).map(|(s, _)| s.clone())
            {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(server.to_owned(), key);
    }
}

/// Why a signed request was refused by the replay memory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replay {
    /// The very same signed request was accepted before.
    Seen,
    /// The memory is full for this origin (or for all): try again later.
    Full { retry_after_ms: u64 },
}

/// The signatures of the requests accepted within the signature window, so
/// that each signed request is accepted once. A signature covers the whole
/// request and its `ts`, so a repeat of one is a replay; it is remembered
/// (as a digest of origin and signature) until its `ts` leaves the window,
/// in slots by expiry time (a repeat has the same `ts`, so it falls in the
/// same slot). Kept in memory for the checks and on disk
/// ([`SeenRequests`]) for restarts.
struct Replays {
    /// Slot number (expiry ms / [`REPLAY_SLOT_MS`]) → its signatures.
    slots: BTreeMap<u64, ReplaySlot>,
    per_origin: HashMap<String, usize>,
    total: usize,
    per_origin_max: usize,
    max: usize,
}

#[derive(Default)]
struct ReplaySlot {
    seen: HashSet<u64>,
    by_origin: HashMap<String, usize>,
}

impl Replays {
    fn new(per_origin_max: usize, max: usize) -> Self {
        Self { slots: BTreeMap::new(), per_origin: HashMap::new(), total: 0, per_origin_max, max }
    }

    /// The slot a signature with this `ts` is remembered in.
    fn slot(ts: u64) -> u64 {
        (ts + SIGNATURE_WINDOW_MS) / REPLAY_SLOT_MS
    }

    /// The first slot not yet expired at `now`.
    fn live_from(now: u64) -> u64 {
        now / REPLAY_SLOT_MS
    }

    /// What is remembered of one signed request.
    fn digest(origin: &str, sig: &[u8]) -> u64 {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(origin.as_bytes());
        ctx.update(&[0]);
        ctx.update(sig);
        u64::from_be_bytes(ctx.finish().as_ref()[..8].try_into().expect("8 bytes"))
    }

    fn add(&mut self, slot: u64, digest: u64, origin: &str) {
        let s = self.slots.entry(slot).or_default();
        if s.seen.insert(digest) {
            *s.by_origin.entry(origin.to_owned()).or_default() += 1;
            *self.per_origin.entry(origin.to_owned()).or_default() += 1;
            self.total += 1;
        }
    }

    /// Records an accepted request's signature (as `digest`), or says why it
    /// may not be accepted.
    fn remember(&mut self, origin: &str, digest: u64, ts: u64, now: u64) -> Result<(), Replay> {
        // Forget every slot whose signatures all left the window.
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() >= Self::live_from(now) {
                break;
            }
            for (o, n) in entry.remove().by_origin {
                self.total -= n;
                if let Some(c) = self.per_origin.get_mut(&o) {
                    *c -= n;
                    if *c == 0 {
                        self.per_origin.remove(&o);
                    }
                }
            }
        }
        let slot = Self::slot(ts);
        if self.slots.get(&slot).is_some_and(|s| s.seen.contains(&digest)) {
            return Err(Replay::Seen);
        }
        if self.total >= self.max || self.per_origin.get(origin).is_some_and(|n| *n >= self.per_origin_max) {
            let next = self.slots.keys().next().map_or(REPLAY_SLOT_MS, |s| (s + 1) * REPLAY_SLOT_MS);
            return Err(Replay::Full { retry_after_ms: next.saturating_sub(now).max(1) });
        }
        self.add(slot, digest, origin);
        Ok(())
    }
}

/// A room's other servers, cached once its membership settled, until the
/// next membership change.
type Participants = Arc<Vec<String>>;

pub struct Federation {
    server_name: ServerName,
    key: Ed25519KeyPair,
    key_id: String,
    public_key: String,
    settings: Settings,
    transport: Arc<dyn Transport>,
    keys: Mutex<KeyCache>,
    key_fetches_by_origin: Limiter,
    key_fetches: Limiter,
    replays: Mutex<Replays>,
    seen: SeenRequests,
    /// When this process started (names its pushed transactions).
    started_ms: u64,
    /// The last `ts` this server signed with (kept increasing, so that two
    /// identical requests are never signed alike).
    last_ts: AtomicU64,
    /// Numbers pushed transactions.
    txn_counter: AtomicU64,
    directory: Arc<dyn RoomStore>,
    /// The other servers of each local room, as last read from the
    /// directory, and until when that read may predate a membership change
    /// (`None`: until the next change).
    participants: RwLock<HashMap<RoomId, Participants>>,
    /// Rooms whose membership changed lately, and until when a read of
    /// their members may still miss the change (see [`MEMBERSHIP_SETTLE`]).
    unsettled: Mutex<HashMap<RoomId, Instant>>,
    /// Who may push to which server now (with Redis, one process per server).
    leases: PushLeases,
    /// This process's name on the push leases.
    holder: String,
    feed: mpsc::Sender<Routed>,
    feed_rx: Mutex<Option<mpsc::Receiver<Routed>>>,
    /// Typing, receipts and presence of this server's users on their way
    /// to the ephemeral router, and each server's outbox of them.
    ephemeral_feed: mpsc::Sender<Ephemeral>,
    ephemeral_rx: Mutex<Option<mpsc::Receiver<Ephemeral>>>,
    ephemeral_dests: Mutex<HashMap<String, Arc<ephemeral::EphemeralDest>>>,
    /// The events of each local room with other servers in it, waiting to
    /// be pushed (one queue per room, shared by its servers).
    queues: Mutex<HashMap<RoomId, RoomQueue>>,
    dests: Mutex<HashMap<String, Arc<Dest>>>,
    push_permits: Semaphore,
    counters: Counters,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The operator's deny list (`parlor admin servers deny`), read on every
    /// incoming request and every push (no copy here: with `--redis` another
    /// process may change it).
    denied: std::sync::OnceLock<Arc<dyn crate::storage::admin::AdminStore>>,
}

fn sha256_b64(body: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, body))
}

fn bad_signature(why: impl Into<String>) -> Error {
    Error::refused(ErrCode::BadSignature, why)
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Federation {
    pub fn new(
        server_name: ServerName,
        pkcs8: &[u8],
        settings: Settings,
        transport: Arc<dyn Transport>,
        directory: Arc<dyn RoomStore>,
        seen: SeenRequests,
        leases: PushLeases,
    ) -> Result<Arc<Self>, FederationError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(FederationError::BadKey)?;
        let mut replays = Replays::new(REPLAY_PER_ORIGIN_MAX, REPLAY_MAX);
        for (slot, digest, origin) in seen.since(Replays::live_from(now_ms()))? {
            replays.add(slot, digest, &origin);
        }
        let public_key = B64.encode(key.public_key().as_ref());
        let key_id = format!("ed25519:{}", &sha256_b64(key.public_key().as_ref())[..8]);
        let (feed, feed_rx) = mpsc::channel(FEED_CAPACITY);
        let (ephemeral_feed, ephemeral_rx) = mpsc::channel(ephemeral::EPHEMERAL_FEED_CAPACITY);
        let started_ms = now_ms();
        Ok(Arc::new(Self {
            server_name,
            key,
            key_id,
            public_key,
            settings,
            transport,
            keys: Mutex::new(KeyCache::default()),
            key_fetches_by_origin: Limiter::new(KEY_FETCHES_PER_ORIGIN),
            key_fetches: Limiter::new(KEY_FETCHES_ALL),
            replays: Mutex::new(replays),
            seen,
            started_ms,
            last_ts: AtomicU64::new(started_ms),
            txn_counter: AtomicU64::new(0),
            directory,
            participants: RwLock::new(HashMap::new()),
            unsettled: Mutex::new(HashMap::new()),
            leases,
            holder: format!("pid {} {}", std::process::id(), crate::storage::events::new_epoch()),
            feed,
            feed_rx: Mutex::new(Some(feed_rx)),
            ephemeral_feed,
            ephemeral_rx: Mutex::new(Some(ephemeral_rx)),
            ephemeral_dests: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            dests: Mutex::new(HashMap::new()),
            push_permits: Semaphore::new(PUSH_CONCURRENCY),
            counters: Counters::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            denied: std::sync::OnceLock::new(),
        }))
    }

    /// Refuses federation with the servers `store` denies (set once, at start).
    pub fn deny_with(&self, store: Arc<dyn crate::storage::admin::AdminStore>) {
        let _ = self.denied.set(store);
    }

    /// Whether the operator denies federation with `server`.
    pub(super) async fn is_denied(&self, server: &str) -> Result<bool, crate::storage::StorageError> {
        match self.denied.get() {
            Some(store) => store.is_denied(server).await,
            None => Ok(false),
        }
    }

    /// A new key pair, PKCS#8, for a server's first start.
    pub fn generate_key() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key generation").as_ref().to_vec()
    }

    /// Starts the router, which queues events for the pushers. Call once,
    /// on the runtime.
    pub fn start(self: &Arc<Self>) {
        let Some(rx) = self.feed_rx.lock().expect("feed lock").take() else { return };
        let fed = self.clone();
        self.tasks.spawn(async move { fed.route(rx).await });
        if let Some(rx) = self.ephemeral_rx.lock().expect("feed lock").take() {
            let fed = self.clone();
            self.tasks.spawn(async move { fed.route_ephemeral(rx).await });
        }
    }

    /// `GET /_parlor/key/v1/server`.
    pub fn key_document(&self) -> ServerKeyResponse {
        let bytes = ServerKeyResponse::signed_bytes(self.server_name.as_str(), &self.key_id, &self.public_key);
        ServerKeyResponse {
            server_name: self.server_name.to_string(),
            key_id: self.key_id.clone(),
            public_key: self.public_key.clone(),
            signature: B64.encode(self.key.sign(&bytes).as_ref()),
        }
    }

    /// `GET /.well-known/parlor/server`.
    pub fn well_known(&self) -> WellKnownResponse {
        WellKnownResponse { base_url: self.settings.public_url.clone() }
    }

    // ---- keys and incoming requests ----

    /// `server`'s public key `key_id`, and whether it was fetched just now.
    /// Fetched from its key endpoint and checked (self-signed, for that
    /// server name), cached for an hour; fetches are rate-limited.
    async fn public_key(&self, server: &str, key_id: &str, cached_ok: bool) -> Result<(Vec<u8>, bool), Error> {
        if cached_ok
            && let Some(k) = self.keys.lock().expect("keys lock").get(server, Instant::now())
            && k.key_id == key_id
        {
            return Ok((k.public_key.clone(), false));
        }
        self.key_fetches_by_origin
            .check(server)
            .and_then(|()| self.key_fetches.check(""))
            .map_err(|retry_after_ms| Error::RateLimited { retry_after_ms })?;
        // Why the key could not be had goes to the log; the answer says only
        // that it could not (no open/closed-port oracle for the sender).
        let unknown = |why: String| {
            tracing::debug!(%server, error = %why, "cannot get a server's key");
            Error::refused(ErrCode::UnknownServer, format!("cannot get the key of {server}"))
        };
        let req = FedRequest {
            method: FedMethod::Get,
            path_and_query: KEY_PATH.to_owned(),
            authorization: None,
            body: Bytes::new(),
            max_answer_bytes: KEY_DOCUMENT_MAX_BYTES,
        };
        let answer = self.transport.send(server, req, REQUEST_TIMEOUT).await.map_err(|e| unknown(e.to_string()))?;
        if answer.status != 200 {
            return Err(unknown(format!("its key endpoint answered {}", answer.status)));
        }
        let doc: ServerKeyResponse = serde_json::from_slice(&answer.body).map_err(|e| unknown(e.to_string()))?;
        if doc.server_name != server {
            return Err(unknown(format!("its key document is for {}", doc.server_name)));
        }
        let pk = B64.decode(&doc.public_key).map_err(|e| unknown(e.to_string()))?;
        let sig = B64.decode(&doc.signature).map_err(|e| unknown(e.to_string()))?;
        let signed = ServerKeyResponse::signed_bytes(&doc.server_name, &doc.key_id, &doc.public_key);
        UnparsedPublicKey::new(&ring::signature::ED25519, &pk)
            .verify(&signed, &sig)
            .map_err(|_| unknown("its key document is not signed by its key".into()))?;
        let now = Instant::now();
        let cached = CachedKey { key_id: doc.key_id.clone(), public_key: pk.clone(), until: now + KEY_TTL };
        self.keys.lock().expect("keys lock").insert(server, cached, now);
        if doc.key_id != key_id {
            return Err(bad_signature(format!("{server} signs with {}, not {key_id}", doc.key_id)));
        }
        Ok((pk, true))
    }

    /// Checks an incoming request's `Authorization` header against the
    /// request; returns the origin server. In order: the header is
    /// well-formed, names this server, its `ts` is within the window, the
    /// origin's key can be had, the signature verifies, and this signed
    /// request was not accepted before.
    pub async fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<ServerName, Error> {
        let p = parse_auth_header(authorization.unwrap_or_default()).map_err(|e| bad_signature(e.to_string()))?;
        if p.destination != self.server_name.as_str() {
            return Err(bad_signature(format!("this is {}, not {}", self.server_name, p.destination)));
        }
        if self.is_denied(p.origin.as_str()).await? {
            return Err(Error::refused(ErrCode::ServerDenied, format!("federation with {} is denied here", p.origin)));
        }
        let now = now_ms();
        if now.abs_diff(p.ts) > SIGNATURE_WINDOW_MS {
            return Err(bad_signature("the signature's ts is more than 5 minutes from now"));
        }
        let signed =
            request_signed_bytes(method, path_and_query, p.origin.as_str(), &p.destination, p.ts, &sha256_b64(body));
        let verifies =
            |pk: &[u8]| UnparsedPublicKey::new(&ring::signature::ED25519, pk).verify(&signed, &p.sig).is_ok();
        let (pk, fetched) = self.public_key(p.origin.as_str(), &p.key, true).await?;
        if !verifies(&pk) {
            // The key may have changed since it was cached: fetch it once
            // more (rate-limited; a refusal then is the signature's fault).
            let fresh = match fetched {
                true => None,
                false => self.public_key(p.origin.as_str(), &p.key, false).await.ok().map(|(pk, _)| pk),
            };
            if !fresh.is_some_and(|pk| verifies(&pk)) {
                return Err(bad_signature(format!("the signature does not verify against {}'s key", p.origin)));
            }
        }
        let digest = Replays::digest(p.origin.as_str(), &p.sig);
        let (remembered, expired) = {
            let mut r = self.replays.lock().expect("replays lock");
            let oldest = r.slots.keys().next().copied();
            let result = r.remember(p.origin.as_str(), digest, p.ts, now);
            (result, oldest.filter(|o| *o < Replays::live_from(now)))
        };
        if expired.is_some() {
            self.seen.forget_before(Replays::live_from(now))?;
        }
        let replayed = || bad_signature("this signed request was already accepted; sign every request anew");
        match remembered {
            Ok(()) => {
                // Shared with the server's other processes (Redis): a request
                // accepted by one of them is refused here too.
                let slot = Replays::slot(p.ts);
                if !self.seen.insert(slot, digest, p.origin.as_str(), (slot + 1) * REPLAY_SLOT_MS).await? {
                    return Err(replayed());
                }
            }
            Err(Replay::Seen) => return Err(replayed()),
            Err(Replay::Full { retry_after_ms }) => return Err(Error::RateLimited { retry_after_ms }),
        }
        self.heard_from(p.origin.as_str());
        Ok(p.origin)
    }

    // ---- outgoing requests ----

    /// A `ts` for a new signature: now, or one more than the last one if
    /// that is not more than a second ahead, so identical requests sent in
    /// one millisecond are still different signed requests.
    fn next_ts(&self) -> u64 {
        let now = now_ms();
        let prev = self
            .last_ts
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(if last < now {
                    now
                } else if last < now + 1000 {
                    last + 1
                } else {
                    now
                })
            })
            .unwrap_or(now);
        if prev < now {
            now
        } else if prev < now + 1000 {
            prev + 1
        } else {
            now
        }
    }

    /// Signs a request, sends it to `server` and returns its answer's body.
    async fn call(
        &self,
        server: &str,
        method: FedMethod,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, Failure> {
        let ts = self.next_ts();
        let signed = request_signed_bytes(
            method.as_str(),
            path_and_query,
            self.server_name.as_str(),
            server,
            ts,
            &sha256_b64(&body),
        );
        let sig = self.key.sign(&signed);
        let authorization = render_auth_header(self.server_name.as_str(), server, &self.key_id, ts, sig.as_ref());
        let req = FedRequest {
            method,
            path_and_query: path_and_query.to_owned(),
            authorization: Some(authorization),
            body: Bytes::from(body),
            max_answer_bytes: ANSWER_MAX_BYTES,
        };
        let answer =
            self.transport.send(server, req, REQUEST_TIMEOUT).await.map_err(|e| Failure::Unreachable(e.to_string()))?;
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        match serde_json::from_slice::<ErrorBody>(&answer.body) {
            Ok(err) => Err(Failure::Refused(answer.status, err)),
            Err(_) => Err(Failure::Unreachable(format!("{server} answered {}", answer.status))),
        }
    }

    async fn call_json<T: Serialize, R: DeserializeOwned>(
        &self,
        server: &str,
        method: FedMethod,
        path_and_query: &str,
        body: Option<&T>,
    ) -> Result<R, Failure> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("requests serialize")).unwrap_or_default();
        let answer = self.call(server, method, path_and_query, bytes).await?;
        serde_json::from_slice(&answer).map_err(|e| Failure::Unreachable(format!("{server} answered nonsense: {e}")))
    }

    /// Asks `home` to let `user` (ours) join `room` (an id or alias there).
    pub async fn join(&self, home: &str, room: &str, user: &UserId) -> Result<FedJoinResponse, Failure> {
        let req = FedJoinRequest { room: room.to_owned(), user_id: user.clone() };
        self.call_json(home, FedMethod::Post, &format!("{FEDERATION_PREFIX}/join"), Some(&req)).await
    }

    pub async fn leave(&self, home: &str, room_id: &RoomId, user: &UserId) -> Result<(), Failure> {
        let req = FedLeaveRequest { room_id: room_id.clone(), user_id: user.clone() };
        let _: serde_json::Value =
            self.call_json(home, FedMethod::Post, &format!("{FEDERATION_PREFIX}/leave"), Some(&req)).await?;
        Ok(())
    }

    /// Tells the room's home server that `user` (ours) declines its invite.
    pub async fn reject(&self, room_id: &RoomId, user: &UserId) -> Result<(), Failure> {
        let req = FedRejectRequest { room_id: room_id.clone(), user_id: user.clone() };
        let _: serde_json::Value = self
            .call_json(room_id.server(), FedMethod::Post, &format!("{FEDERATION_PREFIX}/reject"), Some(&req))
            .await?;
        Ok(())
    }

    /// Asks the room's home server to order a message from one of our users.
    pub async fn send(&self, room_id: &RoomId, txn_id: &str, req: &FedSendRequest) -> Result<SendResponse, Failure> {
        let path = format!("{FEDERATION_PREFIX}/rooms/{}/send/{}", enc(room_id.as_str()), enc(txn_id));
        self.call_json(room_id.server(), FedMethod::Put, &path, Some(req)).await
    }

    /// The home server's events after `after`.
    pub async fn backfill(&self, room_id: &RoomId, after: u64, limit: u32) -> Result<MessagesResponse, Failure> {
        let path = format!("{FEDERATION_PREFIX}/rooms/{}/events?after={after}&limit={limit}", enc(room_id.as_str()));
        self.call_json::<(), _>(room_id.server(), FedMethod::Get, &path, None).await
    }

    /// Spawns background work that stops with [`Federation::close`].
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = work => {}
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Stops the router, the pushers and background work.
    pub async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.release_leases().await;
    }
}

mod ephemeral;
mod push;
#[cfg(test)]
mod tests;

pub use ephemeral::Ephemeral;

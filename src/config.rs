//! Server configuration: one plain struct, built once (from flags in
//! `main.rs`, or directly by tests) and passed down. Nothing reads the
//! environment or global state after start-up.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::protocol::ServerName;
use crate::protocol::versions::Registration;

/// Everything a running server needs to know. Defaults match `parlor serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name in user ids, aliases and room ids (`host[:port]`).
    pub server_name: ServerName,
    /// Where sled keeps accounts, tokens, the room directory and (embedded) room logs.
    pub data_dir: PathBuf,
    /// `redis://…`: keep room logs in Redis Streams instead of the embedded store.
    pub redis: Option<String>,
    /// The nodes of a Redis Cluster (`redis://…` each), instead of `redis`.
    pub redis_cluster: Option<Vec<String>>,
    /// Keep at most this many events per room (None: keep all).
    pub retention: Option<u64>,
    /// Register/login/send rate limits on or off.
    pub rate_limit: bool,
    /// Open connections at most (also capped by the open-file limit).
    pub max_connections: usize,
    /// Open connections at most from one address (an IPv4 address or an IPv6 /64).
    pub max_connections_per_address: usize,
    /// Time a client has to take an answer once its socket stops taking bytes.
    pub write_timeout: Duration,
    /// Bytes of history pages that may wait for slow readers, server-wide.
    pub response_budget: usize,
    /// Extra `Origin`s allowed to open WebSockets (same-origin always is).
    pub allow_origins: Vec<String>,
    /// Time allowed to read a request's headers.
    pub header_timeout: Duration,
    /// Time allowed to read a request's body.
    pub body_timeout: Duration,
    /// Time a WebSocket has to authenticate.
    pub ws_auth_timeout: Duration,
    /// Interval between server pings; two silent intervals close the socket.
    pub ws_ping_interval: Duration,
    /// Bytes of frames that may wait for one slow WebSocket before it is closed.
    pub ws_outbound_limit: usize,
    /// Password-hashing threads (each keeps one 19 MiB argon2 work area).
    pub hash_concurrency: usize,
    /// Password hashes that may wait in each lane of the hashing queue
    /// (logins from known origins, everything else); beyond it, 429 at once.
    pub hash_queue: usize,
    /// MiB the embedded store (sled) may keep in memory; see [`CACHE_MIB`].
    pub cache_mib: u64,
    /// Federation with other servers on or off.
    pub federation: bool,
    /// The base URL this server announces in `/.well-known/parlor/server`
    /// (None: `https://<server name>` when `tls` is set, else `http://<server name>`).
    pub public_url: Option<String>,
    /// Fixed base URLs of other servers by name, instead of discovery.
    pub federation_peers: Vec<(String, String)>,
    /// PEM file of the CAs that peers' certificates are checked against,
    /// instead of the system's (None: the system's CA certificates).
    pub federation_ca: Option<PathBuf>,
    /// Longest wait between attempts to push events to a server that is down.
    pub federation_retry_max: Duration,
    /// How often rooms homed elsewhere are caught up from their home servers.
    pub federation_catch_up: Duration,
    /// A server whose pushes have failed for this long is dropped from push
    /// sets (and probed) until it is back.
    pub federation_give_up: Duration,
    /// Events of one room kept for pushing to other servers; a server
    /// further behind skips to the oldest kept (and backfills the rest).
    pub federation_queue_max: usize,
    /// Serve HTTPS and WSS with this certificate (None: plain HTTP).
    pub tls: Option<TlsFiles>,
    /// Reverse proxies whose `X-Forwarded-For` is believed: a request from
    /// one of these ranges is keyed (rate limits, logs) by the client address
    /// the proxies forwarded, and the proxy is exempt from the per-address
    /// connection cap.
    pub trusted_proxies: Vec<IpNet>,
    /// Who may register: anyone, holders of a registration token, or nobody.
    pub registration: Registration,
    /// How long a typing state lasts after the user's last `typing: true`
    /// (spec §8: 30 s; shorter only in tests).
    pub typing_timeout: Duration,
}

/// The values `--cache-mib` accepts: the embedded store's memory budget in
/// MiB. sled holds accounts, tokens and rooms on either backend, and the room
/// logs too without Redis; without a budget it keeps what it reads and writes
/// (its default cache is 1 GiB), so the server's memory would grow with the
/// data. Below 1 MiB sled would re-read a leaf for nearly every access; above
/// 1 TiB the number is a typo.
pub const CACHE_MIB: std::ops::RangeInclusive<u64> = 1..=1 << 20;
/// The default budget: with it, 200,000 stored 1 KiB messages leave the server
/// under 200 MiB of resident memory (BENCHMARKS.md, finding 8).
pub const CACHE_MIB_DEFAULT: u64 = 64;

/// A PEM certificate chain (leaf first) and its private key, read at start
/// and again on every SIGHUP.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// Defaults for a server called `server_name` keeping its data in `data_dir`.
    pub fn new(server_name: ServerName, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            server_name,
            data_dir: data_dir.into(),
            redis: None,
            redis_cluster: None,
            retention: None,
            rate_limit: true,
            max_connections: 50_000,
            max_connections_per_address: 256,
            write_timeout: Duration::from_secs(30),
            response_budget: 64 << 20,
            allow_origins: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            ws_auth_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(30),
            ws_outbound_limit: 1 << 20,
            federation: true,
            public_url: None,
            federation_peers: Vec::new(),
            federation_ca: None,
            federation_retry_max: Duration::from_secs(60),
            federation_catch_up: Duration::from_secs(60),
            federation_give_up: Duration::from_secs(600),
            federation_queue_max: 10_000,
            tls: None,
            trusted_proxies: Vec::new(),
            registration: Registration::Open,
            typing_timeout: Duration::from_secs(crate::protocol::limits::TYPING_TIMEOUT_SECS),
            // Leave a core for chat: a login storm must not stall delivery.
            hash_concurrency: std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
            hash_queue: 32,
            cache_mib: CACHE_MIB_DEFAULT,
        }
    }
}

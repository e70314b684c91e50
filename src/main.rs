//! The `parlor` binary: flags (each also `PARLOR_<FLAG>`), logging, signals.
//! Everything else is the library.

#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use parlor::config::Config;
use parlor::protocol::ServerName;
use parlor::protocol::admin::{AdminAnswer, AdminRequest};
use parlor::protocol::versions::Registration;
use parlor::storage::events::redis::Target;

#[derive(Parser)]
#[command(name = "parlor", version, about = "A small, fast, federated chat server with a documented JSON protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<Serve>),
    /// Manage a server's accounts, registration tokens, rooms and federation (safe while it runs).
    Admin(Admin),
    /// Move a stopped embedded server's data into Redis, so that it runs with --redis from then on.
    Migrate(Migrate),
    /// Write a consistent copy of a server's data dir (running or stopped) to a new directory OUT.
    Backup(Backup),
    /// Bring a backup back into a data dir no server runs on (empty or missing, unless --force).
    Restore(Restore),
    /// Write the protocol's JSON Schemas (spec/schemas) to a directory.
    Schemas {
        #[arg(long, default_value = "spec/schemas")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One line of text per record (colours only when stderr is a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args)]
struct Serve {
    /// Address to listen on.
    #[arg(long, env = "PARLOR_LISTEN", default_value = "127.0.0.1:8008")]
    listen: SocketAddr,
    /// Where accounts, rooms and (embedded) room logs are kept.
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = "./parlor-data")]
    data_dir: PathBuf,
    /// The name in user ids and room aliases (default: the name the data dir records, else the listen address).
    #[arg(long, env = "PARLOR_SERVER_NAME")]
    server_name: Option<String>,
    /// Keep everything the processes of one server share (accounts, tokens, rooms, room logs, rate
    /// limits, the signing key) in the Redis at this URL (redis://host:port/); every process with the
    /// same --server-name on it is one server.
    #[arg(long, env = "PARLOR_REDIS", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// As --redis, on a Redis Cluster: the URLs of some of its nodes (redis://host:port/), comma-separated.
    #[arg(long, env = "PARLOR_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Rate limits on register, login and send.
    #[arg(long, env = "PARLOR_RATE_LIMIT", value_enum, default_value = "on")]
    rate_limit: OnOff,
    /// Keep at most this many events per room (older ones are reported to resuming clients as a gap).
    #[arg(long, env = "PARLOR_RETENTION")]
    retention: Option<u64>,
    /// Open connections at most (also capped by the open-file limit).
    #[arg(long, env = "PARLOR_MAX_CONNECTIONS", default_value_t = 50_000)]
    max_connections: usize,
    /// Open connections at most from one address (an IPv4 address, or an IPv6 /64); further ones are closed at once.
    #[arg(long, env = "PARLOR_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    max_connections_per_address: usize,
    /// Seconds a client has to take an answer once its socket stops taking bytes (else the connection is closed).
    #[arg(long, env = "PARLOR_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    write_timeout_secs: u64,
    /// MiB of history pages that may wait for slow readers, server-wide; past it pages are cut shorter.
    #[arg(long, env = "PARLOR_RESPONSE_BUDGET_MIB", default_value_t = 64)]
    response_budget_mib: usize,
    /// An extra Origin allowed to open WebSockets, e.g. https://chat.example (repeatable; same-origin is always allowed).
    #[arg(long = "allow-origin", env = "PARLOR_ALLOW_ORIGIN", value_delimiter = ',')]
    allow_origins: Vec<String>,
    /// Seconds between WebSocket pings; a connection silent for two intervals is closed (4003).
    #[arg(long, env = "PARLOR_WS_PING_SECS", default_value_t = 30)]
    ws_ping_secs: u64,
    /// Seconds a WebSocket has to authenticate (else close 4002).
    #[arg(long, env = "PARLOR_WS_AUTH_SECS", default_value_t = 10)]
    ws_auth_secs: u64,
    /// Milliseconds a typing state lasts (the protocol fixes 30 s; tests shorten it).
    #[arg(long, hide = true, default_value_t = parlor::protocol::limits::TYPING_TIMEOUT_SECS * 1000)]
    typing_timeout_ms: u64,
    /// Federation with other Parlor servers.
    #[arg(long, env = "PARLOR_FEDERATION", value_enum, default_value = "on")]
    federation: OnOff,
    /// The base URL other servers reach this one at, announced in /.well-known/parlor/server (default: https://<server name> with --tls-cert, else http://<server name>).
    #[arg(long, env = "PARLOR_PUBLIC_URL")]
    public_url: Option<String>,
    /// A fixed address for another server, NAME=URL, instead of discovery (repeatable); https:// is verified, http:// is plain HTTP.
    #[arg(long = "federation-peer", env = "PARLOR_FEDERATION_PEER", value_delimiter = ',', value_parser = parse_peer)]
    federation_peers: Vec<(String, String)>,
    /// PEM file of the CAs (one or more) peers' certificates are checked against, instead of the system's.
    #[arg(long, env = "PARLOR_FEDERATION_CA")]
    federation_ca: Option<PathBuf>,
    /// Longest wait, in seconds, between attempts to push events to a server that is down.
    #[arg(long, env = "PARLOR_FEDERATION_RETRY_MAX_SECS", default_value_t = 60)]
    federation_retry_max_secs: u64,
    /// Seconds between catch-ups of rooms homed on other servers.
    #[arg(long, env = "PARLOR_FEDERATION_CATCH_UP_SECS", default_value_t = 60)]
    federation_catch_up_secs: u64,
    /// Seconds a server may fail every push before it is dropped from push sets (then probed until it is back).
    #[arg(long, env = "PARLOR_FEDERATION_GIVE_UP_SECS", default_value_t = 600)]
    federation_give_up_secs: u64,
    /// Events of one room kept for pushing to other servers; a server further behind skips ahead (and backfills).
    #[arg(long, env = "PARLOR_FEDERATION_QUEUE_MAX", default_value_t = 10_000)]
    federation_queue_max: usize,
    /// Password hashes computed at once (default: one less than the CPU count, at least 1).
    #[arg(long, env = "PARLOR_HASH_THREADS")]
    hash_threads: Option<usize>,
    /// Password hashes that may wait in each lane of the hashing queue; when full, 429 at once.
    #[arg(long, env = "PARLOR_HASH_QUEUE", default_value_t = 32)]
    hash_queue: usize,
    /// MiB of memory the embedded store (sled) may use to cache accounts, rooms and room logs (1 to 1048576).
    #[arg(long, env = "PARLOR_CACHE_MIB", default_value_t = parlor::config::CACHE_MIB_DEFAULT, value_parser = parse_cache_mib)]
    cache_mib: u64,
    /// Seconds allowed to read request headers, and again the body.
    #[arg(long, env = "PARLOR_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    request_timeout_secs: u64,
    /// Serve HTTPS and WSS with this PEM certificate chain (leaf first); SIGHUP reloads it. Needs --tls-key.
    #[arg(long, env = "PARLOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PARLOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP; bind it to a private address). Off by default.
    #[arg(long, env = "PARLOR_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Reverse proxies (CIDR ranges, e.g. 127.0.0.1/32,10.0.0.0/8) whose X-Forwarded-For gives the client address.
    #[arg(long = "trusted-proxy", env = "PARLOR_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_cidr)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Log records as text or as JSON lines (to stderr; RUST_LOG filters them).
    #[arg(long, env = "PARLOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Who may register: anyone, holders of a token from `parlor admin registration-tokens create`, or nobody.
    #[arg(long, env = "PARLOR_REGISTRATION", value_enum, default_value = "open")]
    registration: RegistrationMode,
}

#[derive(Clone, Copy, ValueEnum)]
enum RegistrationMode {
    Open,
    Token,
    Closed,
}

#[derive(clap::Args)]
struct Admin {
    /// The data directory of the server (running or stopped).
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = "./parlor-data")]
    data_dir: PathBuf,
    /// The server's --redis URL; needed only when no server runs and the data dir uses Redis.
    #[arg(long, env = "PARLOR_REDIS", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// The server's --redis-cluster URLs, instead of --redis.
    #[arg(long, env = "PARLOR_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Print the answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: AdminWhat,
}

#[derive(clap::Args)]
struct Migrate {
    /// The data directory of the embedded server (stopped: every process).
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = "./parlor-data")]
    data_dir: PathBuf,
    /// The Redis to move into (redis://host:port/); the server then starts with this --redis.
    #[arg(long, env = "PARLOR_REDIS", required_unless_present = "redis_cluster", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// The Redis Cluster to move into (its nodes' URLs, comma-separated), instead of --redis.
    #[arg(long, env = "PARLOR_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Print what was moved as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct Backup {
    /// The data directory of the server (running or stopped).
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = "./parlor-data")]
    data_dir: PathBuf,
    /// The directory to write (it must not exist, or be empty).
    out: PathBuf,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct Restore {
    /// A directory written by `parlor backup`.
    backup: PathBuf,
    /// The data directory to restore into (no server may run on it).
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = "./parlor-data")]
    data_dir: PathBuf,
    /// Replace the Parlor data already in --data-dir (its sled, identity.json and federation key).
    #[arg(long)]
    force: bool,
    /// Keep the room logs' epochs: only when no client saw more than is restored (the server did not run after
    /// the backup; with --redis, Redis was not restored). By default rooms start new epochs, so clients re-read.
    #[arg(long)]
    keep_epochs: bool,
    /// Print what was restored as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AdminWhat {
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Tokens that allow registering under --registration token.
    #[command(subcommand, name = "registration-tokens")]
    RegistrationTokens(TokensCmd),
    /// Other servers this one federates with.
    #[command(subcommand)]
    Servers(ServersCmd),
    /// Rooms.
    #[command(subcommand)]
    Rooms(RoomsCmd),
}

#[derive(Subcommand)]
enum RoomsCmd {
    /// List every room with its alias and member count.
    List,
    /// Delete a room (room id or alias, as `rooms list` shows them): its history, directory entry and
    /// memberships; its subscribers are told they left. Other servers' copies are not touched.
    Purge { room: String },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// List every account.
    List,
    /// Deactivate an account: its tokens die at once, its connections close, it cannot log in again.
    Deactivate { user: String },
    /// Set a new password (read from stdin) and revoke the account's tokens.
    ResetPassword {
        user: String,
        /// Read the password from the first line of stdin (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Issue a token.
    Create {
        /// Registrations it allows (default: any number).
        #[arg(long)]
        uses: Option<u64>,
        /// Time until it expires, e.g. 90s, 30m, 12h, 7d (default: never).
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List the tokens with their uses and expiry.
    List,
    /// Revoke a token.
    Revoke {
        /// Tokens are URL-safe base64 and may begin with `-`.
        #[arg(allow_hyphen_values = true)]
        token: String,
    },
}

#[derive(Subcommand)]
enum ServersCmd {
    /// Refuse federation with a server (its requests are refused; nothing is pushed to it).
    Deny { name: String },
    /// Federate with a denied server again.
    Allow { name: String },
    /// List the denied servers.
    List,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Schemas { out } => {
            std::fs::create_dir_all(&out)?;
            for (file, schema) in parlor::protocol::schemas::all() {
                std::fs::write(out.join(file), parlor::protocol::schemas::render(&schema))?;
            }
            Ok(())
        }
        Command::Serve(s) => serve(*s),
        Command::Admin(a) => admin(a),
        Command::Migrate(m) => migrate(m),
        Command::Backup(b) => backup(b),
        Command::Restore(r) => restore(r),
    }
}

/// `parlor backup`: the running server writes it (it holds the database
/// and can hold its writes); with no server there, this process opens the
/// data dir and writes it.
fn backup(b: Backup) -> Result<()> {
    let out = std::path::absolute(&b.out).with_context(|| format!("the backup path {}", b.out.display()))?;
    let out_text = out.to_str().context("the backup path is not UTF-8")?.to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let req = AdminRequest::Backup { out: out_text.clone() };
    let answer = runtime.block_on(async {
        let socket = parlor::admin::socket_path(&b.data_dir);
        match parlor::admin::client::call(&socket, &req).await {
            Ok(answer) => Ok(answer),
            Err(parlor::admin::client::CallError::NoServer(_)) => {
                parlor::storage::identity::recorded(&b.data_dir)?.with_context(|| {
                    format!("{} holds no Parlor data; give the --data-dir of a server", b.data_dir.display())
                })?;
                let db = parlor::storage::Db::open(&b.data_dir).with_context(|| {
                    format!("no server answers on {}, and the data dir cannot be opened", b.data_dir.display())
                })?;
                Ok(parlor::storage::backup::write(&db, &b.data_dir, &out)
                    .map(|m| AdminAnswer::Backup { backup: parlor::service::admin::backup_info(out_text, &m) })
                    .map_err(|e| error_body(&parlor::service::admin::backup_error(e))))
            }
            Err(e) => Err(anyhow::Error::from(e)),
        }
    })?;
    match answer {
        Ok(answer) => {
            print_answer(&answer, b.json);
            Ok(())
        }
        Err(refusal) => {
            if b.json {
                println!("{}", serde_json::to_string(&refusal)?);
            }
            anyhow::bail!("{}", refusal.error)
        }
    }
}

/// `parlor restore`: refused while a server answers on the data dir's admin socket.
fn restore(r: Restore) -> Result<()> {
    let socket = parlor::admin::socket_path(&r.data_dir);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!("a server runs on {}: stop it before restoring into it", r.data_dir.display());
    }
    let started = std::time::Instant::now();
    let opts = parlor::storage::backup::RestoreOptions { force: r.force, keep_epochs: r.keep_epochs };
    let manifest = parlor::storage::backup::restore(&r.backup, &r.data_dir, opts)?;
    let backup = parlor::service::admin::backup_info(r.backup.display().to_string(), &manifest);
    if r.json {
        println!("{}", serde_json::to_string(&serde_json::json!({"restored": backup, "data_dir": r.data_dir}))?);
    } else {
        println!(
            "restored server {} ({} room log, backup of {} ms since the epoch) into {} in {} ms: start it with parlor serve --data-dir {}",
            backup.server_name,
            backup.room_log,
            backup.created_ms,
            r.data_dir.display(),
            started.elapsed().as_millis(),
            r.data_dir.display()
        );
    }
    Ok(())
}

fn error_body(e: &parlor::service::Error) -> parlor::protocol::ErrorBody {
    parlor::protocol::ErrorBody { errcode: e.code(), error: e.public_message(), retry_after_ms: e.retry_after_ms() }
}

fn migrate(m: Migrate) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let json = m.json;
        let target =
            Target::of(m.redis.as_deref(), m.redis_cluster.as_deref()).context("give --redis or --redis-cluster")?;
        let moved = parlor::storage::migrate::migrate(&m.data_dir, &target, |step| {
            if !json {
                println!("{step}");
            }
        })
        .await?;
        if json {
            println!("{}", serde_json::to_string(&moved)?);
        } else {
            println!(
                "moved server {} into Redis: start it with {} (every process of it, each with its own --data-dir)",
                moved.server_name,
                target.flag()
            );
        }
        Ok(())
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default: Parlor's info records,
/// access lines included, and warnings of the crates below it).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "parlor=info,redis=error,warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Colour codes only for a person watching a terminal, never in a
        // file or a journal.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).with_current_span(false).init(),
    }
}

fn serve(s: Serve) -> Result<()> {
    init_logging(s.log_format);
    // Everything this process creates in its data directory (sled's later
    // files included) is for its own user only: messages, password hashes.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let nofile = parlor::server::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal().context("cannot watch SIGTERM and SIGINT")?;
        let listener =
            tokio::net::TcpListener::bind(s.listen).await.with_context(|| format!("cannot listen on {}", s.listen))?;
        let metrics = match s.metrics_listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {at}"))?,
            ),
            None => None,
        };
        let addr = listener.local_addr()?;
        // The data dir remembers its server (a start with another name is
        // refused), so a restart without --server-name keeps that name.
        let recorded = parlor::storage::identity::recorded(&s.data_dir)?.map(|id| id.server_name);
        let name = s.server_name.clone().or(recorded).unwrap_or_else(|| addr.to_string());
        let server_name = ServerName::parse(&name).with_context(|| format!("bad server name {name:?}"))?;
        let mut config = Config::new(server_name, &s.data_dir);
        config.redis = s.redis;
        config.redis_cluster = s.redis_cluster;
        config.rate_limit = matches!(s.rate_limit, OnOff::On);
        config.retention = s.retention;
        config.max_connections = s.max_connections;
        config.max_connections_per_address = s.max_connections_per_address.max(1);
        config.write_timeout = Duration::from_secs(s.write_timeout_secs.max(1));
        config.response_budget = s.response_budget_mib.saturating_mul(1 << 20);
        config.allow_origins = s.allow_origins;
        config.ws_ping_interval = Duration::from_secs(s.ws_ping_secs.max(1));
        config.ws_auth_timeout = Duration::from_secs(s.ws_auth_secs.max(1));
        config.typing_timeout = Duration::from_millis(s.typing_timeout_ms.max(1));
        config.header_timeout = Duration::from_secs(s.request_timeout_secs.max(1));
        config.body_timeout = config.header_timeout;
        config.federation = matches!(s.federation, OnOff::On);
        config.public_url = s.public_url;
        config.federation_peers = s.federation_peers;
        if let Some(ca) = s.federation_ca {
            // Refuse to start (before saying we listen) on a file that will not do.
            parlor::fedclient::trust_roots(Some(&ca)).context("cannot use the federation CA file")?;
            config.federation_ca = Some(ca);
        }
        config.federation_retry_max = Duration::from_secs(s.federation_retry_max_secs.max(1));
        config.federation_catch_up = Duration::from_secs(s.federation_catch_up_secs.max(1));
        config.federation_give_up = Duration::from_secs(s.federation_give_up_secs.max(1));
        config.federation_queue_max = s.federation_queue_max.max(1);
        if let Some(n) = s.hash_threads {
            config.hash_concurrency = n.max(1);
        }
        config.hash_queue = s.hash_queue.max(1);
        config.cache_mib = s.cache_mib;
        if let (Some(cert), Some(key)) = (s.tls_cert, s.tls_key) {
            let files = parlor::config::TlsFiles { cert, key };
            // Refuse to start (before saying we listen) on files that will not do.
            parlor::app::tls::CertStore::load(files.clone()).context("cannot use the TLS certificate")?;
            config.tls = Some(files);
        }
        config.trusted_proxies = s.trusted_proxies;
        config.registration = match s.registration {
            RegistrationMode::Open => Registration::Open,
            RegistrationMode::Token => Registration::Token,
            RegistrationMode::Closed => Registration::Closed,
        };
        tracing::info!(
            server_name = %config.server_name,
            data_dir = %s.data_dir.display(),
            nofile,
            cache_mib = config.cache_mib,
            "starting"
        );
        // Tests and scripts read these lines to learn the bound ports.
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        println!("parlor listening on {scheme}://{addr}");
        if let Some(m) = &metrics {
            println!("parlor metrics on http://{}/metrics", m.local_addr()?);
        }
        let listeners = parlor::server::Listeners { client: listener, metrics };
        parlor::server::serve(listeners, config, shutdown).await.context("server failed")
    })
}

/// `parlor admin`: over the running server's admin socket, or, when no
/// server runs there, on the data dir itself.
fn admin(a: Admin) -> Result<()> {
    let req = match a.what {
        AdminWhat::Users(UsersCmd::List) => AdminRequest::UsersList,
        AdminWhat::Users(UsersCmd::Deactivate { user }) => AdminRequest::UsersDeactivate { user },
        AdminWhat::Users(UsersCmd::ResetPassword { user, .. }) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the password from stdin")?;
            let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
            anyhow::ensure!(!password.is_empty(), "no password on stdin");
            AdminRequest::UsersResetPassword { user, password: password.to_owned() }
        }
        AdminWhat::RegistrationTokens(TokensCmd::Create { uses, expires_in }) => {
            AdminRequest::RegistrationTokensCreate {
                uses,
                expires_in_ms: expires_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }
        }
        AdminWhat::RegistrationTokens(TokensCmd::List) => AdminRequest::RegistrationTokensList,
        AdminWhat::RegistrationTokens(TokensCmd::Revoke { token }) => AdminRequest::RegistrationTokensRevoke { token },
        AdminWhat::Servers(ServersCmd::Deny { name }) => AdminRequest::ServersDeny { name },
        AdminWhat::Servers(ServersCmd::Allow { name }) => AdminRequest::ServersAllow { name },
        AdminWhat::Servers(ServersCmd::List) => AdminRequest::ServersList,
        AdminWhat::Rooms(RoomsCmd::List) => AdminRequest::RoomsList,
        AdminWhat::Rooms(RoomsCmd::Purge { room }) => AdminRequest::RoomsPurge { room },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(async {
        let socket = parlor::admin::socket_path(&a.data_dir);
        match parlor::admin::client::call(&socket, &req).await {
            Ok(answer) => Ok(answer),
            Err(parlor::admin::client::CallError::NoServer(_)) => {
                offline(&a.data_dir, a.redis, a.redis_cluster, req).await
            }
            Err(e) => Err(e.into()),
        }
    })?;
    match answer {
        Ok(answer) => {
            print_answer(&answer, a.json);
            Ok(())
        }
        Err(refusal) => {
            if a.json {
                println!("{}", serde_json::to_string(&refusal)?);
            }
            anyhow::bail!("{}: {}", refusal.errcode, refusal.error)
        }
    }
}

/// Runs an admin command on a data dir no server has open.
async fn offline(
    dir: &std::path::Path,
    redis: Option<String>,
    redis_cluster: Option<Vec<String>>,
    req: AdminRequest,
) -> Result<Result<AdminAnswer, parlor::protocol::ErrorBody>> {
    let identity = parlor::storage::identity::recorded(dir)?
        .with_context(|| format!("{} holds no Parlor data; give the --data-dir of a server", dir.display()))?;
    if identity.room_log == parlor::storage::identity::RoomLog::Redis && redis.is_none() && redis_cluster.is_none() {
        anyhow::bail!(
            "no server runs on {} and its data is in Redis: give --redis URL (or --redis-cluster URL,…)",
            dir.display()
        );
    }
    let server_name = ServerName::parse(&identity.server_name).context("the recorded server name")?;
    let mut config = Config::new(server_name, dir);
    config.redis = redis;
    config.redis_cluster = redis_cluster;
    let tools = parlor::service::Offline::open(config)
        .await
        .with_context(|| format!("no server answers on {}, and the data dir cannot be opened", dir.display()))?;
    let result = tools.run(req).await;
    tools.close().await;
    Ok(result.map_err(|e| error_body(&e)))
}

fn print_answer(answer: &AdminAnswer, json: bool) {
    if json {
        println!("{}", serde_json::to_string(answer).expect("answers serialize"));
        return;
    }
    match answer {
        AdminAnswer::Users { users } => {
            for u in users {
                let state = if u.deactivated_ms.is_some() { "deactivated" } else { "active" };
                println!("{}\t{state}", u.user_id);
            }
        }
        AdminAnswer::Token { token } => println!("{}", token.token),
        AdminAnswer::Tokens { tokens } => {
            for t in tokens {
                let uses = t.uses_allowed.map_or("unlimited".to_owned(), |n| n.to_string());
                let expires = t.expires_ms.map_or("never".to_owned(), |ms| format!("{ms}"));
                println!("{}\tused {} of {uses}\texpires_ms {expires}", t.token, t.completed);
            }
        }
        AdminAnswer::Servers { denied } => {
            for s in denied {
                println!("{s}\tdenied");
            }
        }
        AdminAnswer::Rooms { rooms } => {
            for r in rooms {
                println!(
                    "{}\t{}\t{} members\tcreated_ms {}",
                    r.room_id,
                    r.alias.as_deref().unwrap_or("-"),
                    r.members,
                    r.created_ms
                );
            }
        }
        AdminAnswer::Backup { backup } => println!(
            "backup of {} ({} room log) written to {}: {} files, {} bytes",
            backup.server_name, backup.room_log, backup.out, backup.files, backup.bytes
        ),
        AdminAnswer::Done { changed } => println!("{}", if *changed { "done" } else { "nothing to change" }),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30m"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    // A bare address is a range of one.
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR range (e.g. 10.0.0.0/8)"))
}

fn parse_cache_mib(s: &str) -> Result<u64, String> {
    let range = parlor::config::CACHE_MIB;
    match s.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a cache size in MiB from {} to {} (the embedded store's memory budget)",
            range.start(),
            range.end()
        )),
    }
}

fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected NAME=URL")?;
    let name = ServerName::parse(name).map_err(|e| e.to_string())?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("the URL must start with http:// or https://".into());
    }
    Ok((name.to_string(), url.trim_end_matches('/').to_owned()))
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before
/// the server binds, opens storage and answers anything, not when the
/// future is first polled (in the accept loop): a SIGTERM sent as soon as
/// the server answered `/healthz` used to find the default action and kill
/// the process instead of shutting it down cleanly.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received");
    })
}

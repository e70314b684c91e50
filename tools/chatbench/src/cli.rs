//! The command line: flags, the single-threaded runtime every workload runs
//! on, repeats, and printing one result per run (a JSON object per line
//! with `--json`, `key: value` lines otherwise). The exit status is 0 when
//! every run's delivery checks passed, 3 when one failed, 1 on an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::http::Api;
use crate::sys::{self, UsageReport};
use crate::users::Users;
use crate::workloads;

#[derive(Parser, Debug)]
#[command(
    name = "chatbench",
    version,
    about = "Load and correctness benchmark for Parlor servers (public v1 protocol only)"
)]
pub struct Cli {
    /// Server base URL, e.g. http://127.0.0.1:8008. Repeat it (or give a
    /// comma-separated list) for the processes of one server on a shared
    /// Redis: setup requests go to the first, each room's members open their
    /// WebSockets on the processes in turn.
    #[arg(long, global = true, env = "CHATBENCH_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// One JSON object per run on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// The server's pid, for its CPU time and memory (default: found from each listening port via /proc);
    /// repeat it for several processes: CPU and memory are their sums.
    #[arg(long, global = true)]
    pub server_pid: Vec<u32>,
    /// Keep benchmark users (with tokens) in this file and reuse them in later runs.
    #[arg(long, global = true)]
    pub users_file: Option<PathBuf>,
    /// Run the workload this many times (fresh rooms each time, same users).
    #[arg(long, global = true, default_value_t = 1)]
    pub repeat: u32,
    /// Seconds without progress after which the last deliveries count as lost.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Concurrent register/login requests when creating users.
    #[arg(long, global = true, default_value_t = 4)]
    pub user_concurrency: usize,
    /// Concurrent room joins while setting up.
    #[arg(long, global = true, default_value_t = 4)]
    pub setup_concurrency: usize,
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Subcommand, Debug)]
pub enum Workload {
    /// Rooms full of members, each on its own WebSocket, all sending: throughput, latency, delivery checks.
    Fanout(FanoutArgs),
    /// `fanout` with typing before every send and a read mark every 10 sends of each member.
    LiveMix(FanoutArgs),
    /// Register and login rates and latencies; with --during-fanout, a login storm during chat.
    Accounts(AccountsArgs),
    /// Page fetch latency for newly joined users after N messages; full history checked.
    History(HistoryArgs),
    /// N authenticated, subscribed WebSockets: server memory per connection, then a probe through all.
    Idle(IdleArgs),
    /// Every member drops and resumes with `since` at once, mid-stream: zero loss and duplicates required.
    Resume(ResumeArgs),
    /// A hostile login storm from many loopback addresses while a real user logs in: memory and login latency.
    LoginStorm(StormArgs),
    /// No server: the machine's own limit for the fan-out shape (a bare writer thread to this tool's reader).
    Ceiling(CeilingArgs),
    /// One room of N subscribed members; another member connects and disconnects K times: what one presence change costs.
    Presence(PresenceArgs),
}

/// `N` messages per second, or `max`.
#[derive(Debug, Clone, Copy)]
pub enum Rate {
    Max,
    PerSec(f64),
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSec(r)),
        _ => Err(format!("expected a positive number or `max`, got {s}")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 5)]
    pub rooms: usize,
    /// Members (WebSockets, distinct users) per room.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Total sends per second over all members (open loop), or `max` (closed loop, see --window).
    #[arg(long, default_value = "1000", value_parser = parse_rate)]
    pub rate: Rate,
    /// Messages to send in total.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Message body size in bytes (at least the tag, `cb <n> <µs>`).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// With --rate max: sends in flight at once over all members (default: 2 per room).
    #[arg(long)]
    pub window: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct AccountsArgs {
    /// Accounts to register, then log in.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Register/login requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measure chat latency quietly, then again during the login storm.
    #[arg(long)]
    pub during_fanout: bool,
    /// Seconds of quiet chat before the storm (with --during-fanout).
    #[arg(long, default_value_t = 5.0)]
    pub quiet_secs: f64,
    #[arg(long, default_value_t = 5)]
    pub rooms: usize,
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Chat sends per second during both phases.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
}

#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// Messages in the room before anyone new joins.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Events per page (`limit`).
    #[arg(long, default_value_t = 100)]
    pub page: u64,
    /// Newly joined users; each fetches the latest page, then pages back through everything.
    #[arg(long, default_value_t = 5)]
    pub joiners: usize,
    /// Extra latest-page fetches after the walk, for a stable median.
    #[arg(long, default_value_t = 200)]
    pub fetches: u64,
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Walk this room (the `room_id` an earlier history run printed) instead of filling a new one: it must
    /// hold exactly that run's --messages. For reads after a server restart, with its caches cold.
    #[arg(long)]
    pub room: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// WebSockets to open (rounded up to a multiple of --rooms).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Distinct users the connections authenticate as.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Seconds to wait after the last subscription before reading server memory.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct PresenceArgs {
    /// Subscribed members of the room (WebSockets, distinct users).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Connect-and-disconnect cycles of the extra member.
    #[arg(long, default_value_t = 20)]
    pub cycles: usize,
    /// Handshakes in flight at once while the members connect.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    #[arg(long, default_value_t = 5)]
    pub rooms: usize,
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Total sends per second (open loop) while clients drop and resume.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 5000)]
    pub messages: u64,
    /// How many times every client drops at once (evenly spaced through the run).
    #[arg(long, default_value_t = 1)]
    pub drops: u32,
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Wrong-password logins in the storm, each for another username.
    #[arg(long, default_value_t = 2000)]
    pub logins: usize,
    /// Source addresses the storm comes from (127.0.0.2 and up; at most 250).
    #[arg(long, default_value_t = 100)]
    pub addresses: usize,
    /// Length of each storm username in bytes (0: short valid names no account has).
    #[arg(long, default_value_t = 60_000)]
    pub username_bytes: usize,
    /// Storm requests in flight at once (one connection each).
    #[arg(long, default_value_t = 2000)]
    pub concurrency: usize,
    /// Milliseconds after the storm starts before the real user's first login.
    #[arg(long, default_value_t = 200)]
    pub probe_delay_ms: u64,
    /// Milliseconds between the real user's logins.
    #[arg(long, default_value_t = 250)]
    pub probe_pause_ms: u64,
    /// Seconds to wait after the storm before reading the server's memory again.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
}

#[derive(Args, Debug, Clone)]
pub struct CeilingArgs {
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Member sockets per room.
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Events in total (spread evenly over the rooms).
    #[arg(long, default_value_t = 30_000)]
    pub messages: u64,
    /// Events per room written to a socket with one write (Parlor's writev coalescing).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
}

/// What every workload gets.
pub struct Ctx {
    pub api: Api,
    pub users: Users,
    /// Every server process whose pid is known (CPU and memory are summed over them).
    pub server_pids: Vec<u32>,
    pub drain: Duration,
    pub user_concurrency: usize,
    pub setup_concurrency: usize,
}

impl Ctx {
    /// The first server process's pid (what single-process figures such as a peak RSS follow).
    pub fn server_pid(&self) -> Option<u32> {
        self.server_pids.first().copied()
    }
}

/// One run's printed result and whether its checks passed.
pub struct Outcome {
    pub json: Map<String, Value>,
    pub ok: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatbench: {e}");
            return ExitCode::from(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("chatbench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<bool> {
    // Before any socket: the idle workload needs thousands of descriptors.
    let nofile = sys::raise_nofile(1 << 20);
    if let Workload::Ceiling(a) = &cli.workload {
        let mut all_ok = true;
        for i in 0..cli.repeat.max(1) {
            let mut out = workloads::ceiling::run(a).await?;
            out.json.insert("run".into(), json!(i + 1));
            out.json.insert("ok".into(), json!(out.ok));
            all_ok &= out.ok;
            print(&out.json, cli.json);
        }
        return Ok(all_ok);
    }
    let api = Api::parse_all(&cli.server).await?;
    let server = cli.server.join(",");
    let server_pids = if cli.server_pid.is_empty() {
        api.processes
            .iter()
            .filter(|(addr, _)| addr.ip().is_loopback())
            .filter_map(|(addr, _)| sys::find_listener_pid(addr.port()))
            .collect()
    } else {
        cli.server_pid.clone()
    };
    let ctx = Ctx {
        users: Users::open(&api, cli.users_file.clone()).await?,
        api,
        server_pids,
        drain: Duration::from_secs_f64(cli.drain_timeout.max(0.1)),
        user_concurrency: cli.user_concurrency.max(1),
        setup_concurrency: cli.setup_concurrency.max(1),
    };
    let mut all_ok = true;
    for i in 0..cli.repeat.max(1) {
        let mut out = match &cli.workload {
            Workload::Fanout(a) => workloads::fanout::run(&ctx, a, false).await?,
            Workload::LiveMix(a) => workloads::fanout::run(&ctx, a, true).await?,
            Workload::Accounts(a) => workloads::accounts::run(&ctx, a).await?,
            Workload::History(a) => workloads::history::run(&ctx, a).await?,
            Workload::Idle(a) => workloads::idle::run(&ctx, a, nofile).await?,
            Workload::Resume(a) => workloads::resume::run(&ctx, a).await?,
            Workload::LoginStorm(a) => workloads::storm::run(&ctx, a, nofile).await?,
            Workload::Presence(a) => workloads::presence::run(&ctx, a, nofile).await?,
            Workload::Ceiling(_) => unreachable!("run without a server above"),
        };
        out.json.insert("run".into(), json!(i + 1));
        out.json.insert("server".into(), json!(server));
        out.json.insert("server_pid".into(), json!(ctx.server_pid()));
        if ctx.server_pids.len() > 1 {
            out.json.insert("server_pids".into(), json!(ctx.server_pids));
        }
        out.json.insert("ok".into(), json!(out.ok));
        all_ok &= out.ok;
        print(&out.json, cli.json);
    }
    Ok(all_ok)
}

fn print(j: &Map<String, Value>, as_json: bool) {
    if as_json {
        println!("{}", Value::Object(j.clone()));
        return;
    }
    let name = j.get("workload").and_then(Value::as_str).unwrap_or("?");
    println!("== {name} (run {}) ==", j.get("run").cloned().unwrap_or(Value::Null));
    for (k, v) in j {
        if k != "workload" && k != "run" {
            println!("{k:>24}: {v}");
        }
    }
}

/// Put a usage interval into a report.
pub fn put_usage(j: &mut Map<String, Value>, u: &UsageReport) {
    use crate::stats::round3;
    let pct = |cpu: f64| {
        if u.wall_s > 0.0 { round3(100.0 * cpu / u.wall_s) } else { 0.0 }
    };
    j.insert("wall_s".into(), json!(round3(u.wall_s)));
    j.insert("client_cpu_s".into(), json!(round3(u.client_cpu_s)));
    j.insert("client_cpu_pct".into(), json!(pct(u.client_cpu_s)));
    j.insert("client_rss_kib".into(), json!(u.client_rss_kib));
    j.insert("server_cpu_s".into(), json!(u.server_cpu_s.map(round3)));
    j.insert("server_cpu_pct".into(), json!(u.server_cpu_s.map(pct)));
    j.insert("server_rss_kib".into(), json!(u.server_rss_kib));
    j.insert("server_hwm_kib".into(), json!(u.server_hwm_kib));
}

//! The `conformance` command: parses flags, runs the suite, prints one line
//! (or JSON object) per case and the summary, and sets the exit code.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Run the Parlor v1 conformance suite against a server.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server to test, e.g. http://127.0.0.1:8008
    #[arg(long, required_unless_present = "list")]
    server: Option<String>,
    /// Run only the cases whose name contains this (e.g. `accounts::` or `gap`).
    #[arg(long)]
    filter: Option<String>,
    /// One JSON object per case on stdout instead of text lines.
    #[arg(long)]
    json: bool,
    /// The server has rate limits on: run the rate-limit cases (skipped otherwise).
    #[arg(long)]
    rate_limited: bool,
    /// The server's room log is unreachable on purpose (e.g. Redis stopped):
    /// run the `storage_unavailable` cases (skipped otherwise).
    #[arg(long)]
    storage_down: bool,
    /// The server keeps only the last N events per room (its `--retention N`):
    /// run the `trimmed` gap case.
    #[arg(long, value_name = "N")]
    retention: Option<u64>,
    /// The server pings WebSockets every N seconds (its `--ws-ping-secs N`):
    /// run the heartbeat case, which stays silent for about 3 intervals.
    #[arg(long, value_name = "N")]
    ws_ping_secs: Option<u64>,
    /// Where the fake federation peer listens, e.g. 127.0.0.1:8449 (default: a
    /// free port). Start the server with `--federation-peer ADDR=http://ADDR`
    /// for the same address: servers reach private addresses only for named peers.
    #[arg(long, value_name = "ADDR")]
    peer_listen: Option<std::net::SocketAddr>,
    /// List the cases (name and spec section) and exit.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.list {
        for c in conformance::all_cases() {
            println!("{:<52} §{}", c.name, c.section);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = conformance::Config {
        server: args.server.unwrap_or_default(),
        filter: args.filter,
        rate_limited: args.rate_limited,
        storage_down: args.storage_down,
        retention: args.retention,
        ws_ping_secs: args.ws_ping_secs,
        peer_listener: match args.peer_listen {
            Some(addr) => Some(std::sync::Arc::new(
                std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} for the peer"))?,
            )),
            None => None,
        },
    };
    let json = args.json;
    let report = conformance::run(&cfg, |r| {
        let mut out = std::io::stdout().lock();
        let _ = if json { writeln!(out, "{}", r.to_json()) } else { writeln!(out, "{}", r.line()) };
        let _ = out.flush();
    })
    .await
    .context("cannot run the suite")?;
    if json {
        eprintln!("{}", report.summary());
    } else {
        println!("{}", report.summary());
    }
    Ok(if report.failed() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

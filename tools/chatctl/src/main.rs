//! chatctl, the Parlor command-line client. This file owns start-up and the
//! end of the program: parse the command line, resolve the session, run one
//! command on a single-threaded runtime, and turn a failure into one line on
//! stderr and its documented exit code (see `failure.rs`).
//!
//! chatctl speaks only the public protocol (v1 and v1.1, `spec/protocol.md`); it
//! shares no code with the server.

// System calls go through rustix; the one `unsafe` left is `localtime`.
#![deny(unsafe_code)]

mod api;
mod cli;
mod commands;
mod failure;
mod localtime;
mod output;
mod rooms;
mod session;
mod tail;
mod txn;
mod wire;

use std::process::ExitCode;

use clap::FromArgMatches;

use crate::cli::{Cli, Command};
use crate::commands::Ctx;
use crate::failure::Failure;
use crate::output::Out;
use crate::session::Target;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = match Cli::from_arg_matches(&cli::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::Completions { shell } = cli.command {
        // Generated into memory: clap_complete panics on a closed stdout.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cli::command(), "chatctl", &mut script);
        output::write_raw(&script);
        return ExitCode::SUCCESS;
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))
        .and_then(|rt| rt.block_on(start(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let failure = Failure::from_anyhow(e);
            eprintln!("chatctl: {failure}");
            ExitCode::from(failure.exit as u8)
        }
    }
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let config_dir = session::config_dir();
    let stored = match &config_dir {
        Ok(dir) => session::load(dir).unwrap_or_else(|e| {
            // A damaged file must not block `login`, which replaces it.
            output::notice(&format!("warning: ignoring the stored session: {e:#}"));
            None
        }),
        Err(_) => None,
    };
    let target = Target::resolve(cli.server.as_deref(), std::env::var("CHATCTL_TOKEN").ok(), stored)?;
    let ctx = Ctx { out: Out { json: cli.json }, config_dir, target };
    commands::run(&ctx, cli.command).await
}

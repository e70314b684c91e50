//! The command line: every command, flag and help text, and the
//! environment variables and exit codes documented in `--help`.

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

/// Shown at the end of `chatctl --help`; the README's table says the same.
macro_rules! help_footer {
    () => {
        "\
Environment:
  CHATCTL_SERVER   server URL, as --server
  CHATCTL_TOKEN    access token to use instead of the stored session
  XDG_CONFIG_HOME  the session is stored in $XDG_CONFIG_HOME/chatctl/session.json
                   (default ~/.config/chatctl/session.json), mode 0600

Exit codes:
  0  success
  1  the server refused the request (the message names its errcode)
  2  usage error (bad arguments, passwords that do not match)
  3  not logged in, or the session was revoked: run `chatctl login`
  4  cannot reach the server, or it answered outside the protocol
  5  local error (config directory, standard input, terminal)"
    };
}

/// The short form under every subcommand's `--help`.
const SUBCOMMAND_FOOTER: &str = "Exit codes: 0 ok, 1 server refused, 2 usage, 3 not logged in, 4 server unreachable, 5 local error \
     (see `chatctl --help`)";

/// The command line, with the exit codes under every subcommand's help too.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommands(|sub| sub.after_help(SUBCOMMAND_FOOTER))
}

#[derive(Debug, Parser)]
#[command(
    name = "chatctl",
    version,
    about = "Talk to a Parlor chat server from the command line",
    long_about = "Talk to a Parlor chat server from the command line.\n\n\
                  Register and log in once; the session is stored in your config directory. \
                  Then join rooms, send messages, read history and follow rooms live. \
                  A ROOM is a bare name (`lobby`, meaning #lobby on the server), an alias \
                  (`#lobby:chat.example`) or a room id (`!abc:chat.example`).",
    after_help = help_footer!(),
    propagate_version = true
)]
pub struct Cli {
    /// Server URL [default: the server of the stored session, else http://127.0.0.1:8008]
    #[arg(long, global = true, env = "CHATCTL_SERVER", hide_env_values = true, value_name = "URL")]
    pub server: Option<String>,

    /// Machine output: one JSON object per line on stdout
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account (asks for the password twice)
    Register(RegisterArgs),
    /// Log in and store the session (server, user, device, token)
    Login(LoginArgs),
    /// Revoke the stored session's token and forget it
    Logout {
        /// Revoke every token of the account (all devices), not just this one
        #[arg(long)]
        all: bool,
    },
    /// Show who the stored session (or CHATCTL_TOKEN) is
    Whoami,
    /// List the rooms you have joined
    Rooms,
    /// Join a room, creating it if it is a new local name
    Join {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
    },
    /// Leave a room
    Leave {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
    },
    /// List a room's members
    Members {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
    },
    /// Send a message (safe to run again after a failure: it is never sent twice)
    Send(SendArgs),
    /// Print a room's messages: time, sender and text per line
    History(HistoryArgs),
    /// Follow a room live until Ctrl-C, reconnecting and resuming by itself
    Tail(TailArgs),
    /// Print a shell completion script (e.g. `chatctl completions bash > /etc/bash_completion.d/chatctl`)
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// 1-32 characters of a-z 0-9 . _ - (upper case is folded to lower case)
    pub username: String,
    /// Read the password from the first line of standard input, without asking
    #[arg(long)]
    pub password_stdin: bool,
    /// Also log in with the new account
    #[arg(long)]
    pub login: bool,
    /// With --login: a name for this device, shown in your device list
    #[arg(long, value_name = "NAME", default_value = "chatctl", requires = "login")]
    pub device_name: String,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Your username (case does not matter)
    pub username: String,
    /// Read the password from the first line of standard input, without asking
    #[arg(long)]
    pub password_stdin: bool,
    /// A name for this device (at most 64 characters)
    #[arg(long, value_name = "NAME", default_value = "chatctl")]
    pub device_name: String,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// `lobby`, `#lobby:server` or `!id:server`
    pub room: String,
    /// The message; `-` reads it from standard input (one trailing newline is dropped).
    /// Put `--` before a message that starts with `-`
    pub text: String,
    /// Use this transaction id instead of an automatic one (1-64 of A-Z a-z 0-9 . _ ~ -);
    /// the server stores a given (device, room, id) once
    #[arg(long, value_name = "ID")]
    pub txn_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// `lobby`, `#lobby:server` or `!id:server`
    pub room: String,
    /// At most this many events (1-1000)
    #[arg(long, short = 'n', value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// The last events before this seq
    #[arg(long, value_name = "SEQ", conflicts_with = "after")]
    pub before: Option<u64>,
    /// The first events after this seq
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// `lobby`, `#lobby:server` or `!id:server`
    pub room: String,
    /// Start after this seq: print every later event first, then live ones
    #[arg(long, value_name = "SEQ", conflicts_with = "lines")]
    pub since: Option<u64>,
    /// Print the last N events before following (default: only new ones)
    #[arg(long, short = 'n', value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub lines: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Exit;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn help_documents_environment_and_exit_codes() {
        let help = command().render_help().to_string();
        assert!(help.contains("CHATCTL_TOKEN"), "{help}");
        // The documented numbers are the ones the program uses.
        for (code, words) in [
            (Exit::Refused, "the server refused"),
            (Exit::Usage, "usage error"),
            (Exit::NotLoggedIn, "not logged in"),
            (Exit::Unreachable, "cannot reach the server"),
            (Exit::Local, "local error"),
        ] {
            let line = format!("  {}  {words}", code as u8);
            assert!(help.contains(&line), "{line:?} missing from:\n{help}");
        }
        let mut cmd = command();
        let send_help = cmd.find_subcommand_mut("send").unwrap().render_help().to_string();
        assert!(send_help.contains("3 not logged in"), "{send_help}");
    }

    #[test]
    fn before_and_after_are_exclusive_and_limits_checked() {
        assert!(Cli::try_parse_from(["chatctl", "history", "r", "--before", "3", "--after", "1"]).is_err());
        assert!(Cli::try_parse_from(["chatctl", "history", "r", "--limit", "1001"]).is_err());
        assert!(Cli::try_parse_from(["chatctl", "history", "r", "--limit", "0"]).is_err());
        assert!(Cli::try_parse_from(["chatctl", "tail", "r", "--since", "3", "-n", "5"]).is_err());
        assert!(Cli::try_parse_from(["chatctl", "send", "r", "hi", "--json"]).is_ok());
    }
}

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
  1  the server refused the request (the message names its errcode,
     e.g. forbidden, not_invited, banned)
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
                  (`#lobby:chat.example`) or a room id (`!abc:chat.example`). A USER is a bare \
                  name (`ann`, meaning @ann on your server) or a user id (`@ann:chat.example`).",
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
    /// List your rooms (role, unread count, name), then your pending invites
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
    /// List a room's members with their role and whether they are online
    Members {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
    },
    /// Create a room you own (v1.1): public unless --private, with an alias or none
    Create(CreateArgs),
    /// Change a room's name, topic or visibility (moderators and owners)
    Room(RoomArgs),
    /// Invite a user to a room (in a private room: moderators and owners)
    Invite {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
        /// `ann` (a user of your server) or `@ann:server`
        user: String,
    },
    /// Decline a pending invite
    Reject {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
    },
    /// Remove a member from a room (moderators and owners, over a lower role)
    Kick(ModerationArgs),
    /// Remove a user from a room and keep them out (moderators and owners)
    Ban(ModerationArgs),
    /// Let a banned user join again (moderators and owners)
    Unban(ModerationArgs),
    /// Set a member's role (owners only)
    Role {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
        /// `ann` (a user of your server) or `@ann:server`
        user: String,
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Open the direct-message room with a user (the same room every time) and invite them
    Dm {
        /// `ann` (a user of your server) or `@ann:server`
        user: String,
    },
    /// Send a message (safe to run again after a failure: it is never sent twice)
    Send(SendArgs),
    /// Replace the text of one of your messages (safe to run again, like `send`)
    Edit(EditArgs),
    /// Delete a message's text for everyone: your own, or any as a moderator or owner (safe to run again)
    Redact(RedactArgs),
    /// Mark a room read up to and including SEQ, on all your devices
    Read {
        /// `lobby`, `#lobby:server` or `!id:server`
        room: String,
        /// An event's seq (`history --json` shows it)
        seq: u64,
    },
    /// Print a room's messages (time, sender, text), edits and room events, one per line
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
pub struct EditArgs {
    /// `lobby`, `#lobby:server` or `!id:server`
    pub room: String,
    /// The `event_id` of your message to change (`history --json` shows it)
    pub event_id: String,
    /// The new text; `-` reads it from standard input (one trailing newline is dropped)
    pub text: String,
    /// Use this transaction id instead of an automatic one (as `send --txn-id`)
    #[arg(long, value_name = "ID")]
    pub txn_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RedactArgs {
    /// `lobby`, `#lobby:server` or `!id:server`
    pub room: String,
    /// The `event_id` of the message to delete (`history --json` shows it)
    pub event_id: String,
    /// Shown to the room's members with the deletion (at most 1024 bytes)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Use this transaction id instead of an automatic one (as `send --txn-id`)
    #[arg(long, value_name = "ID")]
    pub txn_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for the room's alias (`garden` makes `#garden:server`); none: the room is known by its id
    pub alias: Option<String>,
    /// A display name (1-256 bytes)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// A topic (1-4096 bytes)
    #[arg(long, value_name = "TEXT")]
    pub topic: Option<String>,
    /// Only invited users may join, and they read the history from their join on
    #[arg(long)]
    pub private: bool,
    /// Invite this user (`ann` or `@ann:server`); may be given up to 100 times
    #[arg(long, value_name = "USER")]
    pub invite: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true))]
pub struct RoomArgs {
    /// `lobby`, `#lobby:server` or `!id:server`
    pub room: String,
    /// A new display name; `""` removes it
    #[arg(long, value_name = "NAME", group = "change")]
    pub name: Option<String>,
    /// A new topic; `""` removes it
    #[arg(long, value_name = "TEXT", group = "change")]
    pub topic: Option<String>,
    /// Anyone may join
    #[arg(long, group = "change", conflicts_with = "private")]
    pub public: bool,
    /// Only invited users may join
    #[arg(long, group = "change")]
    pub private: bool,
}

#[derive(Debug, Args)]
pub struct ModerationArgs {
    /// `lobby`, `#lobby:server` or `!id:server`
    pub room: String,
    /// `ann` (a user of your server) or `@ann:server`
    pub user: String,
    /// Why, shown to the room in the event
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// A member's role in a room, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Member,
    Moderator,
    Owner,
}

impl RoleArg {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::Member => "member",
            RoleArg::Moderator => "moderator",
            RoleArg::Owner => "owner",
        }
    }
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
    /// Also print who is typing, who comes online or goes offline, and read
    /// receipts, as `~` lines (with --json: the frames as the server sends them)
    #[arg(long)]
    pub activity: bool,
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
        // `room` needs something to change, and one visibility.
        assert!(Cli::try_parse_from(["chatctl", "room", "r"]).is_err());
        assert!(Cli::try_parse_from(["chatctl", "room", "r", "--public", "--private"]).is_err());
        assert!(Cli::try_parse_from(["chatctl", "room", "r", "--topic", ""]).is_ok());
        assert!(Cli::try_parse_from(["chatctl", "role", "r", "ann", "admin"]).is_err());
        assert!(Cli::try_parse_from(["chatctl", "create", "--invite", "a", "--invite", "b", "--private"]).is_ok());
    }
}

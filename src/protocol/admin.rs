//! The admin channel's requests and answers (`parlor admin` ⇄ the running
//! server's `admin.sock`, or the same commands run on a stopped data dir).
//! Not part of the public protocol: only the operator's own tools speak it,
//! so it has no schema in `spec/schemas/`; errors still use [`ErrorBody`](super::ErrorBody).

use serde::{Deserialize, Serialize};

/// One admin command: the body of `POST /v1/admin` on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Every account, deactivated ones included.
    UsersList,
    /// Deactivates an account: its tokens are revoked and its connections closed at once; it cannot log in again.
    UsersDeactivate {
        user: String,
    },
    /// Sets a new password (same rules as registration) and revokes the account's tokens.
    UsersResetPassword {
        user: String,
        password: String,
    },
    /// Issues a registration token.
    RegistrationTokensCreate {
        /// Registrations it allows (None: any number).
        uses: Option<u64>,
        /// Milliseconds from now until it expires (None: never).
        expires_in_ms: Option<u64>,
    },
    RegistrationTokensList,
    RegistrationTokensRevoke {
        token: String,
    },
    /// Refuses federation with a server (both ways).
    ServersDeny {
        name: String,
    },
    /// Lifts a `servers_deny`.
    ServersAllow {
        name: String,
    },
    /// Every denied server.
    ServersList,
    /// Every room the directory knows (homed here or replicated from another server).
    RoomsList,
    /// Deletes a room (by room id or alias): its history in every epoch, its
    /// directory entry and memberships; its subscriptions end.
    RoomsPurge {
        room: String,
    },
    /// Writes a consistent backup of the data directory to `out` (an
    /// absolute path the server's user may create; missing or empty).
    Backup {
        out: String,
    },
}

/// A room as `rooms_list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub room_id: String,
    /// Absent for a room made without one (direct messages, `POST /rooms` without `alias`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub created_ms: u64,
    /// Members, of every server.
    pub members: usize,
}

/// A backup as `backup` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The backup directory.
    pub out: String,
    pub server_name: String,
    /// `embedded` or `redis`: where the room logs were kept.
    pub room_log: String,
    /// When the copy was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// Files in it, the manifest not counted.
    pub files: usize,
    /// Their bytes in all.
    pub bytes: u64,
}

/// An account as `users_list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user_id: String,
    pub created_ms: u64,
    /// When it was deactivated (None: active).
    pub deactivated_ms: Option<u64>,
}

/// A registration token as the admin commands show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub token: String,
    /// Registrations it allows in all (None: any number).
    pub uses_allowed: Option<u64>,
    /// Registrations it has been used for.
    pub completed: u64,
    /// When it expires, in ms since the Unix epoch (None: never).
    pub expires_ms: Option<u64>,
    pub created_ms: u64,
}

/// The answer to an [`AdminRequest`] (status 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum AdminAnswer {
    Users {
        users: Vec<UserInfo>,
    },
    Token {
        token: TokenInfo,
    },
    Tokens {
        tokens: Vec<TokenInfo>,
    },
    Servers {
        denied: Vec<String>,
    },
    Rooms {
        rooms: Vec<RoomInfo>,
    },
    Backup {
        backup: BackupInfo,
    },
    /// A change was asked; `changed` is false when it was already so
    /// (e.g. an already deactivated user, an unknown token revoked).
    Done {
        changed: bool,
    },
}

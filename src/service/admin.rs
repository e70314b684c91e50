//! The operator's policy: who may register (`--registration open|token|closed`,
//! registration tokens), and the commands of `parlor admin` (accounts,
//! registration tokens, the server deny list). The same [`Admin::run`]
//! serves the running server's admin socket and a `parlor admin` that
//! opened a stopped data dir itself; it never knows which.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use super::accounts::Accounts;
use super::error::{Error, Result};
use super::fanout::Hub;
use crate::protocol::RoomId;
use crate::protocol::admin::{AdminAnswer, AdminRequest, BackupInfo, RoomInfo, TokenInfo, UserInfo};
use crate::protocol::versions::Registration;
use crate::protocol::{ErrCode, ServerName, UserId};
use crate::storage::Db;
use crate::storage::admin::{AdminStore, RegToken, TakeUse};
use crate::storage::backup::{BackupError, Manifest};
use crate::storage::events::EventLog;
use crate::storage::events::now_ms;
use crate::storage::identity::RoomLog;
use crate::storage::rooms::RoomStore;

/// Registration policy and the admin commands over one [`AdminStore`].
pub struct Admin {
    store: Arc<dyn AdminStore>,
    registration: Registration,
    rng: SystemRandom,
    /// The data directory and its open database, which backups copy.
    data: (PathBuf, Db),
    directory: Arc<dyn RoomStore>,
    log: Arc<dyn EventLog>,
    hub: Arc<Hub>,
}

/// What the admin commands reach of storage and the running server: the
/// data directory and its database (backups), the room directory, the
/// room log and the hub of live subscriptions (room purges).
pub struct AdminParts<'a> {
    pub data_dir: &'a Path,
    pub db: &'a Db,
    pub directory: Arc<dyn RoomStore>,
    pub log: Arc<dyn EventLog>,
    pub hub: Arc<Hub>,
}

impl Admin {
    pub fn new(store: Arc<dyn AdminStore>, registration: Registration, parts: AdminParts<'_>) -> Self {
        Self {
            store,
            registration,
            rng: SystemRandom::new(),
            data: (parts.data_dir.to_owned(), parts.db.clone()),
            directory: parts.directory,
            log: parts.log,
            hub: parts.hub,
        }
    }

    /// Who may register here.
    pub fn registration(&self) -> Registration {
        self.registration
    }

    /// The store, for federation's deny checks.
    pub fn store(&self) -> Arc<dyn AdminStore> {
        self.store.clone()
    }

    /// `POST /register` under the registration mode. With `token`, one use of
    /// the token is taken before the account is made (atomically: racing
    /// registrations cannot both take the last use) and given back if the
    /// registration then fails (a taken username, a weak password).
    pub async fn register(
        &self,
        accounts: &Accounts,
        username: &str,
        password: &str,
        token: Option<&str>,
        addr: IpAddr,
    ) -> Result<UserId> {
        let token = match self.registration {
            Registration::Open => None,
            Registration::Closed => {
                return Err(Error::refused(ErrCode::RegistrationClosed, "this server takes no new accounts"));
            }
            Registration::Token => {
                let token = token.ok_or_else(|| {
                    Error::refused(ErrCode::RegistrationTokenRequired, "this server needs a registration_token")
                })?;
                match self.store.take_use(token, now_ms()).await? {
                    TakeUse::Taken => Some(token),
                    TakeUse::Unknown => {
                        return Err(Error::refused(ErrCode::InvalidRegistrationToken, "unknown registration_token"));
                    }
                    TakeUse::UsedUp => {
                        return Err(Error::refused(
                            ErrCode::RegistrationTokenUsedUp,
                            "every use of this registration_token is taken",
                        ));
                    }
                    TakeUse::Expired => {
                        return Err(Error::refused(
                            ErrCode::RegistrationTokenExpired,
                            "the registration_token expired",
                        ));
                    }
                }
            }
        };
        let result = accounts.register(username, password, addr).await;
        if let (Err(_), Some(token)) = (&result, token) {
            self.store.give_back(token).await?;
        }
        result
    }

    /// Whether federation with `server` is refused (both ways).
    pub async fn is_denied(&self, server: &str) -> Result<bool> {
        Ok(self.store.is_denied(server).await?)
    }

    /// Runs one admin command.
    pub async fn run(&self, accounts: &Accounts, req: AdminRequest) -> Result<AdminAnswer> {
        Ok(match req {
            AdminRequest::UsersList => AdminAnswer::Users {
                users: accounts
                    .list()
                    .await?
                    .into_iter()
                    .map(|a| UserInfo {
                        user_id: a.user_id,
                        created_ms: a.created_ms,
                        deactivated_ms: a.deactivated_ms,
                    })
                    .collect(),
            },
            AdminRequest::UsersDeactivate { user } => AdminAnswer::Done { changed: accounts.deactivate(&user).await? },
            AdminRequest::UsersResetPassword { user, password } => {
                accounts.reset_password(&user, &password).await?;
                AdminAnswer::Done { changed: true }
            }
            AdminRequest::RegistrationTokensCreate { uses, expires_in_ms } => {
                let now = now_ms();
                let token = RegToken {
                    token: self.new_token(),
                    uses_allowed: uses,
                    completed: 0,
                    expires_ms: expires_in_ms.map(|ms| now.saturating_add(ms)),
                    created_ms: now,
                };
                self.store.add_token(&token).await?;
                tracing::info!(uses = ?uses, expires_ms = ?token.expires_ms, "registration token created");
                AdminAnswer::Token { token: info(token) }
            }
            AdminRequest::RegistrationTokensList => {
                AdminAnswer::Tokens { tokens: self.store.tokens().await?.into_iter().map(info).collect() }
            }
            AdminRequest::RegistrationTokensRevoke { token } => {
                AdminAnswer::Done { changed: self.store.revoke_token(&token).await? }
            }
            AdminRequest::ServersDeny { name } => {
                let name = server_name(&name)?;
                let changed = self.store.set_denied(&name, true).await?;
                tracing::info!(server = %name, "federation denied");
                AdminAnswer::Done { changed }
            }
            AdminRequest::ServersAllow { name } => {
                let name = server_name(&name)?;
                let changed = self.store.set_denied(&name, false).await?;
                tracing::info!(server = %name, "federation allowed");
                AdminAnswer::Done { changed }
            }
            AdminRequest::ServersList => AdminAnswer::Servers { denied: self.store.denied().await? },
            AdminRequest::RoomsList => {
                let mut rooms = Vec::new();
                for r in self.directory.all().await? {
                    let members = self.directory.members(&r.room_id).await?.len();
                    rooms.push(RoomInfo { room_id: r.room_id, alias: r.alias, created_ms: r.created_ms, members });
                }
                rooms.sort_by(|a, b| a.alias.cmp(&b.alias).then_with(|| a.room_id.cmp(&b.room_id)));
                AdminAnswer::Rooms { rooms }
            }
            AdminRequest::RoomsPurge { room } => AdminAnswer::Done { changed: self.purge(&room).await? },
            AdminRequest::Backup { out } => AdminAnswer::Backup { backup: self.backup(out).await? },
        })
    }

    /// Removes the room from the directory first (no send or join is taken
    /// for it from then on), then its log, then ends its subscriptions.
    async fn purge(&self, room: &str) -> Result<bool> {
        let not_found = || Error::refused(ErrCode::RoomNotFound, format!("no room {room} here"));
        let room_id = match self.directory.room(room).await? {
            Some(r) => r.room_id,
            None => self.directory.room_for_alias(room).await?.ok_or_else(not_found)?,
        };
        let id = RoomId::parse(&room_id).map_err(|_| not_found())?;
        let listed = self.directory.delete(&room_id).await?;
        let had_history = self.log.purge(&id).await?;
        self.hub.end_room(&id);
        tracing::info!(room = %room_id, had_history, "room purged");
        Ok(listed || had_history)
    }

    /// Writes a backup of the data directory to `out` while writes wait
    /// (see `storage::backup`), on a blocking thread.
    async fn backup(&self, out: String) -> Result<BackupInfo> {
        let path = PathBuf::from(&out);
        if !path.is_absolute() {
            return Err(Error::refused(ErrCode::InvalidParam, format!("the backup path {out:?} is not absolute")));
        }
        let (dir, db) = self.data.clone();
        let started = std::time::Instant::now();
        let manifest = tokio::task::spawn_blocking(move || crate::storage::backup::write(&db, &dir, &path))
            .await
            .map_err(|e| Error::refused(ErrCode::Internal, format!("the backup task failed: {e}")))?
            .map_err(backup_error)?;
        let info = backup_info(out, &manifest);
        tracing::info!(out = %info.out, files = info.files, bytes = info.bytes, ms = started.elapsed().as_millis() as u64, "backup written");
        Ok(info)
    }

    /// 192 random bits as 32 characters of base64url: easy to paste, never guessed.
    fn new_token(&self) -> String {
        let mut raw = [0u8; 24];
        self.rng.fill(&mut raw).expect("system randomness");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }
}

/// Backup faults are the operator's to see in full (the admin socket is
/// theirs only): a refusal with the whole message, not "internal error".
pub fn backup_error(e: BackupError) -> Error {
    let code = match &e {
        BackupError::Storage(_) => ErrCode::Internal,
        _ => ErrCode::InvalidParam,
    };
    Error::refused(code, e.to_string())
}

/// What the admin answer says of a backup's manifest.
pub fn backup_info(out: String, m: &Manifest) -> BackupInfo {
    BackupInfo {
        out,
        server_name: m.server_name.clone(),
        room_log: match m.room_log {
            RoomLog::Embedded => "embedded",
            RoomLog::Redis => "redis",
        }
        .into(),
        created_ms: m.created_ms,
        files: m.files.len(),
        bytes: m.files.iter().map(|f| f.size).sum(),
    }
}

fn server_name(name: &str) -> Result<String> {
    ServerName::parse(name)
        .map(|n| n.to_string())
        .map_err(|e| Error::refused(ErrCode::InvalidParam, format!("server name {name:?}: {e}")))
}

fn info(t: RegToken) -> TokenInfo {
    TokenInfo {
        token: t.token,
        uses_allowed: t.uses_allowed,
        completed: t.completed,
        expires_ms: t.expires_ms,
        created_ms: t.created_ms,
    }
}

//! Accounts: registration with the password policy, login with argon2id on
//! the hashing pool, access tokens (issued, resolved, revoked), device
//! proofs, and the registry that closes live connections when their token is
//! revoked.
//!
//! A login is checked in this order: the fields (device name, username
//! syntax, password length: nothing keyed by a bad value is ever kept or
//! hashed), then what the origin proves (a device proof of the account, or
//! an address it logged in from before), then the rate limits for that
//! origin (`ratelimit::LoginLimits`), then the password on the hashing pool,
//! in the known lane when the origin is known. Every answer and every cost
//! is the same for an unknown username as for a wrong password.
//!
//! A device proof is OWASP's "device cookie" without the cookie: 256 random
//! bits handed out with every login that did not present a valid one,
//! stored only as a SHA-256 hash, kept across logouts (at most
//! [`DEVICE_PROOFS_PER_ACCOUNT`] per account) and forgotten by `logout/all`.
//!
//! A revocation closes the token's live connections on this process at
//! once, and on the server's other processes (a store shared with them)
//! through the store's [`Revoked`] notices, which reach the same close path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::{Error, Result};
use super::fanout::{CloseReason, Conn};
use super::hashing::{self, Busy, Hasher, Lane};
use super::passwords::PasswordPolicy;
use super::ratelimit::{self, AddrKey, RateLimits, Trust};
use crate::protocol::accounts::{LoginRequest, LoginResponse};
use crate::protocol::limits::{DEVICE_NAME_MAX, PASSWORD_MAX_BYTES};
use crate::protocol::{ErrCode, ServerName, UserId, Username};
use crate::storage::accounts::{AccountRecord, AccountStore, NewDevice, Revoked};
use crate::storage::events::now_ms;

/// Device proofs kept per account; a new one beyond this replaces the oldest.
pub const DEVICE_PROOFS_PER_ACCOUNT: usize = 32;

/// An authenticated request's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub device_id: String,
    pub token_hash: [u8; 32],
}

/// Live connections by user, to close when their token is revoked.
type Live = Arc<Mutex<HashMap<UserId, Vec<Weak<Conn>>>>>;

pub struct Accounts {
    store: Arc<dyn AccountStore>,
    server_name: ServerName,
    policy: PasswordPolicy,
    hasher: Hasher,
    limits: Arc<RateLimits>,
    rng: SystemRandom,
    live: Live,
    /// The store is shared with other processes (it sends [`Revoked`] notices).
    shared: bool,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().try_into().expect("sha256 is 32 bytes")
}

fn deactivated() -> Error {
    Error::refused(ErrCode::UserDeactivated, "this account has been deactivated")
}

fn invalid_credentials() -> Error {
    Error::refused(ErrCode::InvalidCredentials, "unknown username or wrong password")
}

/// A full hashing queue is answered like a rate limit: wait and retry.
fn busy(b: Busy) -> Error {
    Error::RateLimited { retry_after_ms: b.retry_after_ms }
}

impl Accounts {
    /// Starts the hashing pool: `hash_threads` threads, at most `hash_queue`
    /// jobs waiting in each of its two lanes.
    pub async fn new(
        store: Arc<dyn AccountStore>,
        server_name: ServerName,
        hash_threads: usize,
        hash_queue: usize,
        limits: Arc<RateLimits>,
    ) -> Result<Self, hashing::StartError> {
        let hasher = Hasher::start(hash_threads, hash_queue).await?;
        let live = Live::default();
        let notices = store.revocations();
        let shared = notices.is_some();
        if let Some(notices) = notices {
            tokio::spawn(close_revoked(notices, store.clone(), live.clone()));
        }
        Ok(Self {
            store,
            server_name,
            policy: PasswordPolicy::new(),
            hasher,
            limits,
            rng: SystemRandom::new(),
            live,
            shared,
        })
    }

    /// Password hashes waiting for a hashing thread: `(known, other)` lanes.
    pub fn hash_queue(&self) -> (usize, usize) {
        self.hasher.queued()
    }

    pub async fn register(&self, username: &str, password: &str, addr: IpAddr) -> Result<UserId> {
        ratelimit::check_limit(&self.limits.register_by_addr, &AddrKey::from(addr)).await?;
        let name = Username::parse(username).map_err(|e| Error::refused(ErrCode::InvalidUsername, e.to_string()))?;
        self.policy.check(name.as_str(), password).map_err(|(code, msg)| Error::refused(code, msg))?;
        let taken = || Error::refused(ErrCode::UsernameTaken, format!("the username {name} is taken"));
        if self.store.get(name.as_str()).await?.is_some() {
            return Err(taken());
        }
        let password_hash = self.hasher.hash(password.as_bytes(), Lane::Other).await.map_err(busy)?;
        let user_id = UserId::new(&name, &self.server_name);
        let record =
            AccountRecord { user_id: user_id.to_string(), password_hash, created_ms: now_ms(), deactivated_ms: None };
        if !self.store.create(name.as_str(), &record).await? {
            return Err(taken());
        }
        tracing::info!(%user_id, "registered");
        Ok(user_id)
    }

    pub async fn login(&self, req: &LoginRequest, addr: IpAddr) -> Result<LoginResponse> {
        if req.device_name.as_deref().is_some_and(|d| d.chars().count() > DEVICE_NAME_MAX) {
            return Err(Error::refused(
                ErrCode::InvalidField,
                format!("device_name: at most {DEVICE_NAME_MAX} characters"),
            ));
        }
        // A name that is not a username cannot name an account (saying so
        // tells nothing about which accounts exist), and no account has a
        // password over the maximum: both are refused before anything is
        // kept under them or hashed.
        let name =
            Username::parse(&req.username).map_err(|e| Error::refused(ErrCode::InvalidUsername, e.to_string()))?;
        if req.password.len() > PASSWORD_MAX_BYTES {
            return Err(Error::refused(
                ErrCode::PasswordTooLong,
                format!("the password must be at most {PASSWORD_MAX_BYTES} bytes"),
            ));
        }
        let addr = AddrKey::from(addr);
        let user_id = UserId::new(&name, &self.server_name);
        // Tokens and proofs are 43 characters; anything else cannot be one.
        let presented = req.device_proof.as_deref().filter(|p| p.len() == 43).map(|p| sha256(p.as_bytes()));
        let trust = match presented {
            Some(h) if self.store.has_proof(user_id.as_str(), &h).await? => {
                Trust::Device { id: h[..16].try_into().expect("16 bytes") }
            }
            _ if self.limits.login.is_known(name.as_str(), addr).await? => Trust::KnownAddress,
            _ => Trust::Unknown,
        };
        let admitted = self
            .limits
            .login
            .admit(name.as_str(), addr, trust)
            .await?
            .map_err(|retry_after_ms| Error::RateLimited { retry_after_ms })?;
        let account = self.store.get(name.as_str()).await?;
        // Unknown users are checked against a dummy hash with the same
        // parameters, so the answer takes as long as for a wrong password.
        let hash = account.as_ref().map_or(self.hasher.dummy(), |a| a.password_hash.as_str());
        let lane = if trust.is_known() { Lane::Known } else { Lane::Other };
        let ok = self.hasher.verify(req.password.as_bytes(), hash, lane).await.map_err(busy)?;
        let account = match account {
            Some(a) if ok => a,
            _ => return Err(invalid_credentials()),
        };
        self.limits.login.succeeded(admitted).await?;
        if account.deactivated_ms.is_some() {
            return Err(deactivated());
        }
        let user_id = UserId::parse(&account.user_id)
            .map_err(|e| crate::storage::StorageError::Corrupt { tree: "users", detail: e.to_string() })?;
        let access_token = self.secret();
        let device_id = self.device_id();
        // A login that proved its device keeps its proof; any other gets a new one.
        let (device_proof, new_proof) = match (trust, &req.device_proof) {
            (Trust::Device { .. }, Some(p)) => (p.clone(), None),
            _ => {
                let p = self.secret();
                let h = sha256(p.as_bytes());
                (p, Some(h))
            }
        };
        self.store
            .add_device(NewDevice {
                user_id: user_id.as_str(),
                device_id: &device_id,
                name: req.device_name.as_deref(),
                token_hash: &sha256(access_token.as_bytes()),
                proof_hash: new_proof.as_ref(),
                keep_proofs: DEVICE_PROOFS_PER_ACCOUNT,
                now_ms: now_ms(),
            })
            .await?;
        // A deactivation that ran while this login was hashing revoked every
        // token but the one just stored: look again, after storing it.
        if self.store.get(name.as_str()).await?.is_some_and(|a| a.deactivated_ms.is_some()) {
            self.store.revoke(&sha256(access_token.as_bytes())).await?;
            return Err(deactivated());
        }
        Ok(LoginResponse { user_id, device_id, access_token, device_proof })
    }

    /// 256 random bits as 43 characters of unpadded base64url.
    fn secret(&self) -> String {
        let mut raw = [0u8; 32];
        self.rng.fill(&mut raw).expect("system randomness");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn device_id(&self) -> String {
        let mut b = [0u8; 10];
        self.rng.fill(&mut b).expect("system randomness");
        b.iter().map(|x| char::from(b'A' + x % 26)).collect()
    }

    /// Resolves a bearer token to its session.
    pub async fn authenticate(&self, token: &str) -> Result<Session> {
        let unknown = || Error::refused(ErrCode::UnknownToken, "unknown or revoked access token");
        if token.len() != 43 {
            return Err(unknown());
        }
        let token_hash = sha256(token.as_bytes());
        let rec = self.store.token(&token_hash).await?.ok_or_else(unknown)?;
        let user_id = UserId::parse(&rec.user_id)
            .map_err(|e| crate::storage::StorageError::Corrupt { tree: "tokens", detail: e.to_string() })?;
        Ok(Session { user_id, device_id: rec.device_id, token_hash })
    }

    pub async fn logout(&self, session: &Session) -> Result<()> {
        self.store.revoke(&session.token_hash).await?;
        close_live(&self.live, &session.user_id, |c| c.token_hash == session.token_hash);
        Ok(())
    }

    pub async fn logout_all(&self, session: &Session) -> Result<()> {
        self.store.revoke_all(session.user_id.as_str()).await?;
        close_live(&self.live, &session.user_id, |_| true);
        Ok(())
    }

    /// Remembers a live connection so that revoking its token closes it.
    /// With a store shared with other processes, the token is looked up
    /// again once the connection is remembered: a revocation another
    /// process made between the authentication and now reached this
    /// process before the connection could be found by it.
    pub async fn track(&self, conn: &Arc<Conn>) -> Result<()> {
        {
            let mut live = self.live.lock().expect("live lock");
            let list = live.entry(conn.user_id.clone()).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(conn));
        }
        if self.shared && self.store.token(&conn.token_hash).await?.is_none() {
            conn.close(CloseReason::TokenRevoked);
        }
        Ok(())
    }
}

/// Closes (with `TokenRevoked`) the live connections of `user` that `which` picks.
fn close_live(live: &Live, user: &UserId, which: impl Fn(&Conn) -> bool) {
    let mut live = live.lock().expect("live lock");
    if let Some(list) = live.get_mut(user) {
        list.retain(|w| match w.upgrade() {
            Some(c) if which(&c) => {
                c.close(CloseReason::TokenRevoked);
                false
            }
            Some(_) => true,
            None => false,
        });
        if list.is_empty() {
            live.remove(user);
        }
    }
}

/// Applies the revocations another process made (and, after the store's
/// subscription was lost and came back, checks every live connection's
/// token again) until the store stops sending them.
async fn close_revoked(
    mut notices: tokio::sync::mpsc::UnboundedReceiver<Revoked>,
    store: Arc<dyn AccountStore>,
    live: Live,
) {
    while let Some(notice) = notices.recv().await {
        match notice {
            Revoked::Token { user_id, token_hash } => {
                if let Ok(user) = UserId::parse(&user_id) {
                    close_live(&live, &user, |c| c.token_hash == token_hash);
                }
            }
            Revoked::User { user_id } => {
                if let Ok(user) = UserId::parse(&user_id) {
                    close_live(&live, &user, |_| true);
                }
            }
            Revoked::Recheck => recheck(&*store, &live).await,
        }
    }
}

/// Closes every live connection whose token the store no longer holds; one
/// store read per live token. A token the store cannot be asked about now
/// is kept: the next resubscription (which follows an outage) checks again.
async fn recheck(store: &dyn AccountStore, live: &Live) {
    let tokens: Vec<(UserId, [u8; 32])> = {
        let live = live.lock().expect("live lock");
        let mut t: Vec<_> = live
            .iter()
            .flat_map(|(u, list)| list.iter().filter_map(Weak::upgrade).map(|c| (u.clone(), c.token_hash)))
            .collect();
        t.sort_unstable_by_key(|a| a.1);
        t.dedup_by(|a, b| a.1 == b.1);
        t
    };
    for (user, hash) in tokens {
        match store.token(&hash).await {
            Ok(Some(rec)) if rec.user_id == user.as_str() => {}
            Ok(_) => close_live(live, &user, |c| c.token_hash == hash),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check live sessions' tokens after resubscribing");
                return;
            }
        }
    }
}

/// The operator's account commands (`parlor admin users …`).
impl Accounts {
    /// Every account, by username.
    pub async fn list(&self) -> Result<Vec<AccountRecord>> {
        Ok(self.store.list().await?)
    }

    async fn account(&self, username: &str) -> Result<(Username, AccountRecord)> {
        let missing = || Error::refused(ErrCode::UserNotFound, format!("no account {username:?}"));
        // `@ann:example.org` or `ann` both name the account `ann` (a user id
        // of another server names no account here).
        let local = match username.strip_prefix('@') {
            None => username,
            Some(id) => match id.split_once(':') {
                Some((local, server)) if server == self.server_name.as_str() => local,
                _ => return Err(missing()),
            },
        };
        let name = Username::parse(local).map_err(|_| missing())?;
        let record = self.store.get(name.as_str()).await?.ok_or_else(missing)?;
        Ok((name, record))
    }

    /// Deactivates an account: marked first (so a login in flight sees it
    /// after storing its token), then every token revoked and every open
    /// connection of the user closed (4001). False when it already was.
    pub async fn deactivate(&self, username: &str) -> Result<bool> {
        let (name, mut record) = self.account(username).await?;
        let changed = record.deactivated_ms.is_none();
        if changed {
            record.deactivated_ms = Some(now_ms());
            self.store.replace(name.as_str(), &record).await?;
        }
        self.revoke_user(&record).await?;
        if changed {
            tracing::info!(user_id = %record.user_id, "deactivated");
        }
        Ok(changed)
    }

    /// Sets a new password (the registration rules apply) and revokes every
    /// token of the account, closing its connections.
    pub async fn reset_password(&self, username: &str, password: &str) -> Result<()> {
        let (name, mut record) = self.account(username).await?;
        self.policy.check(name.as_str(), password).map_err(|(code, msg)| Error::refused(code, msg))?;
        record.password_hash = self.hasher.hash(password.as_bytes(), Lane::Other).await.map_err(busy)?;
        self.store.replace(name.as_str(), &record).await?;
        self.revoke_user(&record).await?;
        tracing::info!(user_id = %record.user_id, "password reset");
        Ok(())
    }

    async fn revoke_user(&self, record: &AccountRecord) -> Result<()> {
        self.store.revoke_all(&record.user_id).await?;
        if let Ok(user) = UserId::parse(&record.user_id) {
            close_live(&self.live, &user, |_| true);
        }
        Ok(())
    }
}

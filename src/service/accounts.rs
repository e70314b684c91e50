//! Accounts: registration with the password policy, login with argon2id on
//! the hashing pool, access tokens (issued, resolved, revoked) and the
//! registry that closes live connections when their token is revoked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::{Error, Result};
use super::fanout::{CloseReason, Conn};
use super::hashing::Hasher;
use super::passwords::PasswordPolicy;
use super::ratelimit::{self, RateLimits};
use crate::protocol::accounts::LoginResponse;
use crate::protocol::limits::DEVICE_NAME_MAX;
use crate::protocol::{ErrCode, ServerName, UserId, Username};
use crate::storage::accounts::{AccountRecord, AccountStore};
use crate::storage::events::now_ms;

/// An authenticated request's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub device_id: String,
    pub token_hash: [u8; 32],
}

pub struct Accounts {
    store: AccountStore,
    server_name: ServerName,
    policy: PasswordPolicy,
    hasher: Hasher,
    dummy_hash: String,
    limits: Arc<RateLimits>,
    rng: SystemRandom,
    live: Mutex<HashMap<UserId, Vec<Weak<Conn>>>>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().try_into().expect("sha256 is 32 bytes")
}

fn invalid_credentials() -> Error {
    Error::refused(ErrCode::InvalidCredentials, "unknown username or wrong password")
}

impl Accounts {
    pub async fn new(
        store: AccountStore,
        server_name: ServerName,
        hash_threads: usize,
        limits: Arc<RateLimits>,
    ) -> std::io::Result<Self> {
        let rng = SystemRandom::new();
        let hasher = Hasher::new(hash_threads)?;
        let mut pw = [0u8; 24];
        rng.fill(&mut pw).expect("system randomness");
        let dummy_hash = hasher.hash(&pw).await;
        Ok(Self {
            store,
            server_name,
            policy: PasswordPolicy::new(),
            hasher,
            dummy_hash,
            limits,
            rng,
            live: Mutex::new(HashMap::new()),
        })
    }

    pub async fn register(&self, username: &str, password: &str, addr: IpAddr) -> Result<UserId> {
        ratelimit::check(&self.limits.register_by_addr, &addr.to_string())?;
        let name = Username::parse(username).map_err(|e| Error::refused(ErrCode::InvalidUsername, e.to_string()))?;
        self.policy.check(name.as_str(), password).map_err(|(code, msg)| Error::refused(code, msg))?;
        let taken = || Error::refused(ErrCode::UsernameTaken, format!("the username {name} is taken"));
        if self.store.get(name.as_str())?.is_some() {
            return Err(taken());
        }
        let password_hash = self.hasher.hash(password.as_bytes()).await;
        let user_id = UserId::new(&name, &self.server_name);
        let record = AccountRecord { user_id: user_id.to_string(), password_hash, created_ms: now_ms() };
        if !self.store.create(name.as_str(), &record).await? {
            return Err(taken());
        }
        tracing::info!(%user_id, "registered");
        Ok(user_id)
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
        addr: IpAddr,
    ) -> Result<LoginResponse> {
        if device_name.is_some_and(|d| d.chars().count() > DEVICE_NAME_MAX) {
            return Err(Error::refused(
                ErrCode::InvalidField,
                format!("device_name: at most {DEVICE_NAME_MAX} characters"),
            ));
        }
        ratelimit::check(&self.limits.login_by_addr, &addr.to_string())?;
        let folded = username.to_ascii_lowercase();
        ratelimit::check(&self.limits.login_by_name, &folded)?;
        let account = match Username::parse(&folded) {
            Ok(name) => self.store.get(name.as_str())?,
            Err(_) => None,
        };
        // Unknown users are checked against a dummy hash with the same
        // parameters, so the answer takes as long as for a wrong password.
        let hash = account.as_ref().map_or(self.dummy_hash.as_str(), |a| a.password_hash.as_str());
        let ok = self.hasher.verify(password.as_bytes(), hash).await;
        let account = match account {
            Some(a) if ok => a,
            _ => return Err(invalid_credentials()),
        };
        let user_id = UserId::parse(&account.user_id)
            .map_err(|e| crate::storage::StorageError::Corrupt { tree: "users", detail: e.to_string() })?;
        let mut raw = [0u8; 32];
        self.rng.fill(&mut raw).expect("system randomness");
        let access_token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let device_id = self.device_id();
        self.store
            .add_device(user_id.as_str(), &device_id, device_name, &sha256(access_token.as_bytes()), now_ms())
            .await?;
        Ok(LoginResponse { user_id, device_id, access_token })
    }

    fn device_id(&self) -> String {
        let mut b = [0u8; 10];
        self.rng.fill(&mut b).expect("system randomness");
        b.iter().map(|x| char::from(b'A' + x % 26)).collect()
    }

    /// Resolves a bearer token to its session.
    pub fn authenticate(&self, token: &str) -> Result<Session> {
        let unknown = || Error::refused(ErrCode::UnknownToken, "unknown or revoked access token");
        if token.len() != 43 {
            return Err(unknown());
        }
        let token_hash = sha256(token.as_bytes());
        let rec = self.store.token(&token_hash)?.ok_or_else(unknown)?;
        let user_id = UserId::parse(&rec.user_id)
            .map_err(|e| crate::storage::StorageError::Corrupt { tree: "tokens", detail: e.to_string() })?;
        Ok(Session { user_id, device_id: rec.device_id, token_hash })
    }

    pub async fn logout(&self, session: &Session) -> Result<()> {
        self.store.revoke(&session.token_hash).await?;
        self.close_live(&session.user_id, |c| c.token_hash == session.token_hash);
        Ok(())
    }

    pub async fn logout_all(&self, session: &Session) -> Result<()> {
        self.store.revoke_all(session.user_id.as_str()).await?;
        self.close_live(&session.user_id, |_| true);
        Ok(())
    }

    /// Remembers a live connection so that revoking its token closes it.
    pub fn track(&self, conn: &Arc<Conn>) {
        let mut live = self.live.lock().expect("live lock");
        let list = live.entry(conn.user_id.clone()).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(conn));
    }

    fn close_live(&self, user: &UserId, which: impl Fn(&Conn) -> bool) {
        let mut live = self.live.lock().expect("live lock");
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
}

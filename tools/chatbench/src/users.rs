//! Benchmark accounts. Login costs an argon2 hash (~20 ms of a core), so
//! users are created concurrently, reused by every repeat of a run, and —
//! with `--users-file` — kept on disk with their tokens so later runs against
//! the same server skip registration altogether (stale tokens are dropped
//! after a `whoami` check).

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::http::Api;

/// Meets the server's password rules: long, not common, not numeric, and
/// sharing few characters with the generated usernames.
pub const PASSWORD: &str = "Velvet-Harbor-Quartz-42";

/// A registered, logged-in account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub server: String,
    pub username: String,
    pub password: String,
    pub user_id: String,
    pub token: String,
}

/// The run's pool of logged-in users.
pub struct Users {
    api: Api,
    file: Option<PathBuf>,
    prefix: String,
    next: Cell<u64>,
    pool: RefCell<Vec<Rc<User>>>,
}

/// A name prefix no earlier run used: `cb` + 8 base-36 digits of the clock and pid.
pub fn unique_prefix() -> String {
    let mut x = crate::clock::now_ns() ^ ((std::process::id() as u64) << 40) ^ wall_ns();
    let mut s = String::from("cb");
    for _ in 0..8 {
        s.push(std::char::from_digit((x % 36) as u32, 36).expect("digit"));
        x /= 36;
    }
    s
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Users {
    /// A pool for `api`, preloaded from `file` (entries for other servers and
    /// revoked tokens are skipped).
    pub async fn open(api: &Api, file: Option<PathBuf>) -> Result<Self> {
        let users = Self {
            api: api.clone(),
            file,
            prefix: unique_prefix(),
            next: Cell::new(0),
            pool: RefCell::new(Vec::new()),
        };
        let Some(path) = &users.file else {
            return Ok(users);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(users),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let cached: Vec<User> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<User>(l).ok())
            .filter(|u| u.server == api.host)
            .collect();
        let mut valid = Vec::with_capacity(cached.len());
        for chunk in cached.chunks(256) {
            let checks = chunk.iter().map(|u| async move {
                let mut c = api.conn().await?;
                anyhow::Ok(c.token_valid(&u.token).await?)
            });
            for (u, ok) in chunk.iter().zip(futures_util::future::join_all(checks).await) {
                if ok.unwrap_or(false) {
                    valid.push(Rc::new(u.clone()));
                }
            }
        }
        *users.pool.borrow_mut() = valid;
        Ok(users)
    }

    /// A fresh, unused username.
    pub fn fresh_name(&self) -> String {
        let i = self.next.get();
        self.next.set(i + 1);
        format!("{}-{i}", self.prefix)
    }

    /// The first `n` users of the pool, registering and logging in the
    /// missing ones `concurrency` at a time.
    pub async fn take(&self, n: usize, concurrency: usize) -> Result<Vec<Rc<User>>> {
        let have = self.pool.borrow().len();
        if have < n {
            let names: Vec<String> = (have..n).map(|_| self.fresh_name()).collect();
            let created = create(&self.api, &names, concurrency).await?;
            self.remember(&created)?;
            self.pool.borrow_mut().extend(created.into_iter().map(Rc::new));
        }
        Ok(self.pool.borrow()[..n].to_vec())
    }

    fn remember(&self, users: &[User]) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        for u in users {
            writeln!(f, "{}", serde_json::to_string(u)?)?;
        }
        Ok(())
    }
}

/// Register and log in `names`, `concurrency` connections at a time.
pub async fn create(api: &Api, names: &[String], concurrency: usize) -> Result<Vec<User>> {
    let next = Cell::new(0usize);
    let out: RefCell<Vec<Option<User>>> = RefCell::new(vec![None; names.len()]);
    let worker = || async {
        let mut c = api.conn().await?;
        loop {
            let i = next.get();
            if i >= names.len() {
                return anyhow::Ok(());
            }
            next.set(i + 1);
            let name = &names[i];
            c.register(name, PASSWORD).await.with_context(|| format!("register {name}"))?;
            let (user_id, token) = c.login(name, PASSWORD).await.with_context(|| format!("login {name}"))?;
            out.borrow_mut()[i] = Some(User {
                server: api.host.clone(),
                username: name.clone(),
                password: PASSWORD.into(),
                user_id,
                token,
            });
        }
    };
    let workers = (0..concurrency.max(1).min(names.len().max(1))).map(|_| worker());
    futures_util::future::try_join_all(workers).await?;
    Ok(out.into_inner().into_iter().map(|u| u.expect("every name was created")).collect())
}

//! What every case shares during one run: the server's address and name, the
//! schemas, a source of unique names (so two runs against one server never
//! collide), a few lazily registered users, the fake federation peer (started
//! by the first case that needs it), and the client steps most cases are built
//! from (register, log in, join, send, read history, open a socket).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::failure::{Failure, Result};
use crate::http::{CLIENT, Http, Request, Response, enc};
use crate::peer::Peer;
use crate::runner::Config;
use crate::schema::Schemas;
use crate::ws::{Ws, WsOptions};

/// A password that passes every rule for any username the suite makes: long,
/// half symbols (so never "too similar"), and on no common-password list.
pub const GOOD_PASSWORD: &str = "#Vq!8%Zr^&*Pl+2=";

/// The longest a client waits in total on `429` answers before giving up.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(120);

/// A registered, logged-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub username: String,
    pub password: String,
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

/// A room the suite created.
#[derive(Clone, Debug)]
pub struct Room {
    pub name: String,
    pub alias: String,
    pub room_id: String,
}

pub struct Ctx {
    pub http: Http,
    pub schemas: Arc<Schemas>,
    /// `host:port` of the server under test.
    pub authority: String,
    /// The server's name, from `GET /_parlor/versions` (the authority when that failed).
    pub server_name: String,
    /// The run's settings (modes the server was started in).
    pub cfg: Config,
    run_id: String,
    counter: AtomicU64,
    shared: [OnceCell<User>; 3],
    peer: OnceCell<Arc<Peer>>,
}

impl Ctx {
    pub fn new(authority: String, schemas: Arc<Schemas>, cfg: Config) -> Self {
        let http = Http::new(authority.clone(), schemas.clone());
        Ctx {
            http,
            schemas,
            server_name: authority.clone(),
            authority,
            cfg,
            run_id: random_base36(5),
            counter: AtomicU64::new(0),
            shared: Default::default(),
            peer: OnceCell::new(),
        }
    }

    /// Learns the server name from `/_parlor/versions`.
    pub async fn discover(&mut self) -> Result<()> {
        let v = self.http.send(Request::get("/_parlor/versions")).await?.ok(200, "versions_response")?;
        if let Some(name) = v["server"]["name"].as_str() {
            self.server_name = name.to_owned();
        }
        Ok(())
    }

    /// A name no other run uses: `c` + run id + counter + `tag`, at most `max` characters.
    pub fn unique(&self, tag: &str, max: usize) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut s = format!("c{}{}{}", self.run_id, to_base36(n), tag);
        s.truncate(max);
        s
    }

    /// A fresh username (lower case, at most 32 characters).
    pub fn username(&self, tag: &str) -> String {
        self.unique(tag, 32)
    }

    /// A fresh room name.
    pub fn room_name(&self, tag: &str) -> String {
        self.unique(&format!("r{tag}"), 64)
    }

    pub fn user_id(&self, username: &str) -> String {
        format!("@{username}:{}", self.server_name)
    }

    pub fn alias(&self, name: &str) -> String {
        format!("#{name}:{}", self.server_name)
    }

    pub fn api(path: &str) -> String {
        format!("{CLIENT}{path}")
    }

    /// Sends, and when the server says `429`, waits as told and tries again
    /// (what a well-behaved client does; only the rate-limit cases want the 429).
    pub async fn send_patiently(&self, req: Request) -> Result<Response> {
        let mut waited = Duration::ZERO;
        loop {
            let resp = self.http.send(req.clone()).await?;
            if resp.status != 429 {
                return Ok(resp);
            }
            let body = resp.error_body()?;
            let wait = Duration::from_millis(body["retry_after_ms"].as_u64().unwrap_or(1000).clamp(50, 10_000));
            waited += wait;
            if waited > RATE_LIMIT_PATIENCE {
                return Err(Failure::Check(format!(
                    "{}: still rate limited after waiting {waited:?}; run against a server with rate limits off",
                    resp.what
                )));
            }
            tokio::time::sleep(wait).await;
        }
    }

    pub async fn register_raw(&self, username: &str, password: &str) -> Result<Response> {
        self.send_patiently(
            Request::post(Self::api("/register")).json(&json!({"username": username, "password": password})),
        )
        .await
    }

    pub async fn login_raw(&self, username: &str, password: &str, device_name: Option<&str>) -> Result<Response> {
        let mut body = json!({"username": username, "password": password});
        if let Some(d) = device_name {
            body["device_name"] = json!(d);
        }
        self.send_patiently(Request::post(Self::api("/login")).json(&body)).await
    }

    /// Registers `username` with `password` (201) and logs in.
    pub async fn register_and_login(&self, username: &str, password: &str) -> Result<User> {
        let reg = self.register_raw(username, password).await?.ok(201, "register_response")?;
        let user_id = reg["user_id"].as_str().unwrap_or_default().to_owned();
        let mut user = self.login(username, password).await?;
        if user.user_id != user_id {
            return Err(Failure::Check(format!("login says {} but register said {user_id}", user.user_id)));
        }
        user.username = username.to_ascii_lowercase();
        Ok(user)
    }

    /// Logs in once more (a new device).
    pub async fn login(&self, username: &str, password: &str) -> Result<User> {
        let v = self.login_raw(username, password, None).await?.ok(200, "login_response")?;
        Ok(User {
            username: username.to_ascii_lowercase(),
            password: password.to_owned(),
            user_id: v["user_id"].as_str().unwrap_or_default().to_owned(),
            device_id: v["device_id"].as_str().unwrap_or_default().to_owned(),
            token: v["access_token"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// A new user of this case's own.
    pub async fn user(&self, tag: &str) -> Result<User> {
        self.register_and_login(&self.username(tag), GOOD_PASSWORD).await
    }

    /// One of three users shared by cases that do not change their account
    /// (saves password hashes: each costs the server real CPU).
    pub async fn shared(&self, i: usize) -> Result<User> {
        self.shared[i]
            .get_or_try_init(|| async move {
                let tag = format!("s{i}");
                self.user(&tag).await
            })
            .await
            .cloned()
    }

    /// The runner's fake federation peer (§11), one per run: the server
    /// under test then fetches one key and pushes to one address.
    pub async fn peer(&self) -> Result<Arc<Peer>> {
        let listener = self.cfg.peer_listener.clone();
        self.peer.get_or_try_init(|| async { Peer::start(&self.schemas, listener).await.map(Arc::new) }).await.cloned()
    }

    /// Creates a room (by joining a fresh bare name) as `user`.
    pub async fn room(&self, user: &User, tag: &str) -> Result<Room> {
        let name = self.room_name(tag);
        let v = self.join(user, &name).await?;
        Ok(Room {
            alias: v["alias"].as_str().unwrap_or_default().to_owned(),
            room_id: v["room_id"].as_str().unwrap_or_default().to_owned(),
            name,
        })
    }

    pub async fn join_raw(&self, user: &User, room: &str) -> Result<Response> {
        self.http.send(Request::post(Self::api(&format!("/rooms/{}/join", enc(room)))).token(&user.token)).await
    }

    pub async fn join(&self, user: &User, room: &str) -> Result<Value> {
        self.join_raw(user, room).await?.ok(200, "join_response")
    }

    pub async fn leave_raw(&self, user: &User, room: &str) -> Result<Response> {
        self.http.send(Request::post(Self::api(&format!("/rooms/{}/leave", enc(room)))).token(&user.token)).await
    }

    pub fn send_req(user: &User, room: &str, txn: &str, body: &Value) -> Request {
        Request::put(Self::api(&format!("/rooms/{}/send/{}", enc(room), enc(txn)))).token(&user.token).json(body)
    }

    pub async fn send_raw(&self, user: &User, room: &str, txn: &str, body: &str) -> Result<Response> {
        self.send_patiently(Self::send_req(user, room, txn, &json!({"body": body}))).await
    }

    /// Sends a message; returns `{event_id, seq}`.
    pub async fn send(&self, user: &User, room: &str, txn: &str, body: &str) -> Result<Value> {
        self.send_raw(user, room, txn, body).await?.ok(200, "send_response")
    }

    /// A fresh `txn_id`.
    pub fn txn(&self) -> String {
        self.unique("t", 64)
    }

    /// Sends `n` messages `"{prefix} i"`; returns their seqs.
    pub async fn send_many(&self, user: &User, room: &str, prefix: &str, n: usize) -> Result<Vec<u64>> {
        let mut seqs = Vec::with_capacity(n);
        for i in 0..n {
            let v = self.send(user, room, &self.txn(), &format!("{prefix} {i}")).await?;
            seqs.push(v["seq"].as_u64().unwrap_or_default());
        }
        Ok(seqs)
    }

    pub async fn messages_raw(&self, user: &User, room: &str, query: &str) -> Result<Response> {
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        self.http.send(Request::get(Self::api(&format!("/rooms/{}/messages{q}", enc(room)))).token(&user.token)).await
    }

    /// A page of history (`query` like `before=5&limit=2`, or empty).
    pub async fn messages(&self, user: &User, room: &str, query: &str) -> Result<Value> {
        self.messages_raw(user, room, query).await?.ok(200, "messages_response")
    }

    /// Every event of the room, read forwards page by page.
    pub async fn all_events(&self, user: &User, room: &str) -> Result<Vec<Value>> {
        let mut out: Vec<Value> = Vec::new();
        let mut after = 0;
        loop {
            let page = self.messages(user, room, &format!("after={after}&limit=1000")).await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                return Ok(out);
            }
            after = events.last().and_then(|e| e["seq"].as_u64()).unwrap_or(after);
            out.extend(events);
        }
    }

    pub async fn ws_with(&self, opts: &WsOptions) -> Result<Ws> {
        Ws::connect(&self.authority, self.schemas.clone(), opts).await
    }

    /// A socket authenticated by header, its `ready` consumed and checked.
    pub async fn ws(&self, user: &User) -> Result<Ws> {
        let mut ws = self.ws_with(&WsOptions { token: Some(user.token.clone()), ..Default::default() }).await?;
        let ready = ws.expect("ready").await?;
        if ready["user_id"] != user.user_id.as_str() {
            return Err(Failure::Check(format!("ready names {} instead of {}", ready["user_id"], user.user_id)));
        }
        Ok(ws)
    }
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// `len` random base-36 characters. `RandomState` is seeded from the OS per
/// process, which is all the uniqueness a run id needs.
pub fn random_base36(len: usize) -> String {
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        out.push_str(&to_base36(h.finish()));
        i += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_within_limits() {
        let schemas = Arc::new(Schemas::load().unwrap());
        let a = Ctx::new("127.0.0.1:1".into(), schemas.clone(), Config::default());
        let b = Ctx::new("127.0.0.1:1".into(), schemas, Config::default());
        let na = a.username("alongtagthatwouldoverflowthelimit");
        assert!(na.len() <= 32 && na.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{na}");
        assert_ne!(a.username("x"), a.username("x"));
        assert_ne!(a.run_id, b.run_id);
    }
}

//! Accounts under attack (issue 11, items 5 and 6): over-long login fields
//! are refused before anything is hashed or kept, a full hash queue answers
//! at once, a real login is not queued behind a storm, and a distributed
//! guesser slows strangers without locking the owner out, while an unknown
//! username is treated exactly like a known one.
//!
//! The clients here send from several loopback addresses (127.0.0.2, …:
//! all of 127.0.0.0/8 reaches a server bound to 127.0.0.1 on Linux), so one
//! machine looks like many clients to the server's per-address limits.

#[macro_use]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::{P, RedisServer, TestServer, uniq};

const PASSWORD: &str = "zebra-quartz-71";

/// A client whose connections come from `127.0.0.<last>`.
#[derive(Clone)]
struct Peer {
    base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Peer {
    fn new(server: &TestServer, last: u8) -> Self {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))));
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(conn);
        Peer { base: server.url.clone(), client }
    }

    /// POSTs `body` to `path`; (status, JSON answer, Retry-After header).
    async fn post(&self, path: &str, body: &Value) -> (u16, Value, Option<String>) {
        let req = http::Request::post(format!("{}{P}{path}", self.base))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let resp = self.client.request(req).await.expect("server answers");
        let status = resp.status().as_u16();
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), retry)
    }

    async fn login(&self, username: &str, password: &str, proof: Option<&str>) -> (u16, Value) {
        let mut body = json!({"username": username, "password": password});
        if let Some(p) = proof {
            body["device_proof"] = json!(p);
        }
        let (s, v, _) = self.post("/login", &body).await;
        (s, v)
    }

    async fn register(&self, username: &str) {
        let (s, v, _) = self.post("/register", &json!({"username": username, "password": PASSWORD})).await;
        assert_eq!(s, 201, "register {username}: {v}");
    }
}

async fn server(rate_limit: bool) -> (TestServer, tempfile::TempDir) {
    server_on(rate_limit, None).await
}

/// A server with its accounts and rate-limit buckets in `redis`, if given.
async fn server_on(rate_limit: bool, redis: Option<&RedisServer>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), |c| {
        c.rate_limit = rate_limit;
        c.hash_concurrency = 1;
        c.redis = redis.map(|r| r.url.clone());
    })
    .await;
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_login_fields_are_refused_before_anything_is_hashed_or_kept() {
    let (server, _dir) = server(true).await;
    let c = Peer::new(&server, 1);
    // A 60 KB username is not a username: refused as such, never hashed, never a limiter key.
    let (s, v) = c.login(&"a".repeat(60_000), "wrong-password-7", None).await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_username")), "{v}");
    let (s, v) = c.login("Not Valid!", "wrong-password-7", None).await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_username")), "{v}");
    // No account can have a password over 1,024 bytes: refused before hashing.
    let (s, v) = c.login("ann", &"p".repeat(1025), None).await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("password_too_long")), "{v}");
    let (s, v, _) = c
        .post("/login", &json!({"username": "ann", "password": "wrong-password-7", "device_name": "d".repeat(65)}))
        .await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_field")), "{v}");
    // None of them used up a token: 20 more refusals, and a good login still works.
    for _ in 0..20 {
        assert_eq!(c.login(&"b".repeat(40), "wrong-password-7", None).await.0, 400);
    }
    let name = uniq("ann");
    c.register(&name).await;
    let (s, v) = c.login(&name, PASSWORD, None).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hash_queue_answers_at_once_with_429() {
    let (server, _dir) = server(false).await;
    let c = Peer::new(&server, 1);
    // 150 logins at once against one hashing thread: the queue fills, and
    // the rest are answered at once instead of waiting their turn.
    let answers =
        futures_util::future::join_all(
            (0..150).map(|i| {
                let c = c.clone();
                async move {
                    c.post("/login", &json!({"username": format!("nobody{i}"), "password": "wrong-password-7"})).await
                }
            }),
        )
        .await;
    let mut busy = 0;
    for (s, v, retry) in &answers {
        match s {
            401 => assert_eq!(v["errcode"], "invalid_credentials"),
            429 => {
                assert_eq!(v["errcode"], "rate_limited");
                let ms = v["retry_after_ms"].as_u64().expect("retry_after_ms");
                assert!(ms > 0, "{v}");
                let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
                assert_eq!(secs, ms.div_ceil(1000));
                busy += 1;
            }
            _ => panic!("unexpected answer {s} {v}"),
        }
    }
    assert!(busy > 0, "150 logins against one hashing thread all waited for their hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_login_is_not_queued_behind_a_storm() {
    let (server, _dir) = server(true).await;
    let owner = Peer::new(&server, 1);
    let name = uniq("owner");
    owner.register(&name).await;
    let (s, first) = owner.login(&name, PASSWORD, None).await;
    assert_eq!(s, 200, "{first}");
    let proof = first["device_proof"].as_str().map(str::to_owned);

    // The storm: 400 wrong-password logins for names no account has, 4 from
    // each of 100 addresses (well within each address's burst).
    let started = Arc::new(AtomicUsize::new(0));
    let hashed = Arc::new(AtomicUsize::new(0));
    let owner_waiting = Arc::new(AtomicBool::new(false));
    let hashed_while_owner_waited = Arc::new(AtomicUsize::new(0));
    let mut storm = Vec::new();
    for i in 0..400usize {
        let c = Peer::new(&server, 2 + (i % 100) as u8);
        let (started, hashed, waiting, during) =
            (started.clone(), hashed.clone(), owner_waiting.clone(), hashed_while_owner_waited.clone());
        storm.push(tokio::spawn(async move {
            started.fetch_add(1, Ordering::SeqCst);
            let (s, v) = c.login(&format!("storm{i}"), "wrong-password-7", None).await;
            assert!(s == 401 || s == 429, "storm login: {s} {v}");
            if s == 401 {
                hashed.fetch_add(1, Ordering::SeqCst);
                if waiting.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Wait until hashing is under way, with most of the storm queued.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while hashed.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no storm login was answered in 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    owner_waiting.store(true, Ordering::SeqCst);
    let (s, v) = owner.login(&name, PASSWORD, proof.as_deref()).await;
    owner_waiting.store(false, Ordering::SeqCst);
    assert_eq!(s, 200, "the owner's login during the storm: {v}");
    let during = hashed_while_owner_waited.load(Ordering::SeqCst);
    for t in storm {
        t.await.unwrap();
    }
    // The owner waited for the hash in progress, not for the queue: a
    // handful of storm hashes at most finished while it waited (FIFO: hundreds).
    assert!(during <= 10, "{during} storm logins were hashed while the owner's login waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_guesser_does_not_lock_the_owner_out() {
    distributed_guesser(None).await
}

/// The same with the buckets and the known addresses in Redis (`--redis`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_guesser_does_not_lock_the_owner_out_with_shared_buckets() {
    let redis = RedisServer::start();
    distributed_guesser(Some(&redis)).await
}

async fn distributed_guesser(redis: Option<&RedisServer>) {
    let (server, _dir) = server_on(true, redis).await;
    let home = Peer::new(&server, 1);
    let name = uniq("owner");
    home.register(&name).await;
    let (s, first) = home.login(&name, PASSWORD, None).await;
    assert_eq!(s, 200, "{first}");
    let proof = first["device_proof"].as_str().map(str::to_owned);

    // One wrong guess from each of many addresses, until the account is slowed.
    let guess_until_limited = |user: String, first_addr: u8| {
        let clients: Vec<Peer> = (0..40).map(|i| Peer::new(&server, first_addr + i)).collect();
        async move {
            for (n, c) in clients.iter().enumerate() {
                let (s, v) = c.login(&user, "wrong-password-7", None).await;
                match s {
                    401 => assert_eq!(v["errcode"], "invalid_credentials"),
                    429 => return (n + 1, v),
                    _ => panic!("guess {n}: {s} {v}"),
                }
            }
            panic!("40 guesses from 40 addresses and the account was never slowed");
        }
    };
    let (limited_at, answer) = guess_until_limited(name.clone(), 10).await;
    assert_eq!(answer["errcode"], "rate_limited");
    // A stranger (a new address, no device proof) is slowed too...
    let (s, v) = Peer::new(&server, 201).login(&name, PASSWORD, None).await;
    assert_eq!((s, v["errcode"].as_str()), (429, Some("rate_limited")), "{v}");
    // ...but the owner gets in from their usual address,
    let (s, v) = home.login(&name, PASSWORD, None).await;
    assert_eq!(s, 200, "the owner from their usual address: {v}");
    // and with their device proof from anywhere.
    let proof = proof.expect("a login answer carries a device_proof");
    let (s, v) = Peer::new(&server, 202).login(&name, PASSWORD, Some(&proof)).await;
    assert_eq!(s, 200, "the owner with a device proof: {v}");
    // A proof from another account, or a made-up one, proves nothing.
    let (s, _) = Peer::new(&server, 203).login(&name, PASSWORD, Some(&"A".repeat(43))).await;
    assert_eq!(s, 429);

    // The same guesses against a username no account has get the same answers.
    let (ghost_limited_at, ghost_answer) = guess_until_limited(uniq("ghost"), 60).await;
    assert_eq!(ghost_limited_at, limited_at, "an unknown user is slowed after another number of guesses");
    assert_eq!(ghost_answer["errcode"], answer["errcode"]);
}

#[test]
fn a_hashing_pool_that_cannot_start_says_so() {
    use parlor::service::{StartError, hashing};
    let cause = std::io::Error::new(std::io::ErrorKind::WouldBlock, "thread limit reached");
    let err =
        parlor::server::Error::from(StartError::from(hashing::StartError { index: 1, threads: 3, source: cause }));
    assert_eq!(err.to_string(), "cannot start password-hashing thread 1 of 3: thread limit reached");
    assert!(matches!(err, parlor::server::Error::Start(StartError::HashPool(_))));
}

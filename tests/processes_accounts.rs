//! Several real `parlor serve` processes on one Redis are one server for
//! accounts: a user registered on one process logs in on another at once,
//! a token from one authenticates on all, a revocation on one closes the
//! token's WebSockets on every process, and the register and login rate
//! limits count a burst whichever processes serve it.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Api, ParlorProcess, RedisServer, WsClient, uniq};

const PASSWORD: &str = "zebra-quartz-71";
/// How long after the logout's answer a revoked WebSocket must be closed
/// (spec: within 1 s), plus slack for a loaded 2-core test machine where
/// the test's own reads may be scheduled late. The close itself usually
/// arrives before the answer: the revocation is published before it.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_secs(1);

/// Three processes of one server (`--server-name` shared) on one Redis.
struct Cluster {
    procs: Vec<ParlorProcess>,
    dirs: Vec<tempfile::TempDir>,
    redis: RedisServer,
    rate_limit: &'static str,
}

impl Cluster {
    fn start(rate_limit: &'static str) -> Self {
        let redis = RedisServer::start();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut c = Cluster { procs: Vec::new(), dirs, redis, rate_limit };
        c.spawn_all();
        c
    }

    fn spawn_all(&mut self) {
        let args = ["--server-name", "accounts.test", "--redis", &self.redis.url, "--rate-limit", self.rate_limit];
        self.procs = self.dirs.iter().map(|d| ParlorProcess::spawn(d.path(), &args)).collect();
    }

    /// Stops every process (SIGTERM) and starts them again on the same data dirs and Redis.
    fn restart_all(&mut self) {
        for p in &mut self.procs {
            assert!(p.terminate().success());
        }
        self.spawn_all();
    }

    fn api(&self, i: usize) -> Api {
        Api::new(&self.procs[i].url)
    }

    fn url(&self, i: usize) -> &str {
        &self.procs[i].url
    }
}

async fn login(api: &Api, name: &str) -> (u16, serde_json::Value) {
    api.call("POST", "/login", None, Some(json!({"username": name, "password": PASSWORD}))).await
}

async fn whoami(api: &Api, token: &str) -> u16 {
    api.call("GET", "/account/whoami", Some(token), None).await.0
}

/// Waits for the close of `ws`; returns its code and when it arrived.
async fn close_of(ws: &mut WsClient) -> (Option<u16>, Instant) {
    let code = tokio::time::timeout(Duration::from_secs(15), ws.closed()).await.expect("the WebSocket is closed");
    (code, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_made_on_one_process_is_served_by_every_other_at_once() {
    let c = Cluster::start("off");
    let name = uniq("ann");
    let (s, v) = c.api(0).register(&name, PASSWORD).await;
    assert_eq!(s, 201, "{v}");
    // Read-your-writes across processes: the very next request, elsewhere.
    let (s, v) = login(&c.api(1), &name).await;
    assert_eq!(s, 200, "login on B right after registering on A: {v}");
    let token_b = v["access_token"].as_str().unwrap().to_owned();
    // The same name is taken on every process.
    let (s, v) = c.api(2).register(&name, PASSWORD).await;
    assert_eq!((s, v["errcode"].as_str()), (409, Some("username_taken")), "{v}");
    // A token issued on A authenticates on C (and on A and B).
    let (s, v) = login(&c.api(0), &name).await;
    assert_eq!(s, 200, "{v}");
    let token_a = v["access_token"].as_str().unwrap().to_owned();
    for i in 0..3 {
        assert_eq!(whoami(&c.api(i), &token_a).await, 200, "A's token on process {i}");
        assert_eq!(whoami(&c.api(i), &token_b).await, 200, "B's token on process {i}");
    }
    // A WebSocket on C with A's token.
    let mut ws = WsClient::connect(c.url(2), None).await;
    ws.send(json!({"type": "auth", "token": token_a})).await;
    assert_eq!(ws.recv().await["type"], "ready");
    // A device proof handed out on A is known on B.
    let (s, v) = c.api(0).call("POST", "/login", None, Some(json!({"username": name, "password": PASSWORD}))).await;
    assert_eq!(s, 200, "{v}");
    let proof = v["device_proof"].as_str().unwrap().to_owned();
    let (s, v) = c
        .api(1)
        .call("POST", "/login", None, Some(json!({"username": name, "password": PASSWORD, "device_proof": proof})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["device_proof"].as_str(), Some(proof.as_str()), "B recognised the proof A handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_process_closes_the_tokens_websockets_on_every_process() {
    let c = Cluster::start("off");
    let name = uniq("bob");
    let other = uniq("eve");
    let (s, _) = c.api(0).register(&name, PASSWORD).await;
    assert_eq!(s, 201);
    let (s, _) = c.api(1).register(&other, PASSWORD).await;
    assert_eq!(s, 201);
    let token = |v: serde_json::Value| v["access_token"].as_str().unwrap().to_owned();
    let t1 = token(login(&c.api(0), &name).await.1);
    let t2 = token(login(&c.api(1), &name).await.1);
    let t3 = token(login(&c.api(2), &name).await.1);
    let te = token(login(&c.api(2), &other).await.1);

    // logout of t3 on B closes t3's WebSocket on A, not t1's.
    let mut ws3 = WsClient::authed(c.url(0), &t3).await;
    let mut ws1_a = WsClient::authed(c.url(0), &t1).await;
    let (s, v) = c.api(1).call("POST", "/logout", Some(&t3), None).await;
    assert_eq!(s, 200, "{v}");
    let answered = Instant::now();
    let (code, at) = close_of(&mut ws3).await;
    assert_eq!(code, Some(4001));
    assert!(
        at.saturating_duration_since(answered) <= CLOSE_WITHIN + SLACK,
        "closed {:?} after the answer",
        at - answered
    );
    assert_eq!(whoami(&c.api(0), &t3).await, 401, "the revoked token is refused on A");

    // logout/all on C closes every WebSocket of the user on A and B.
    let mut ws1_b = WsClient::authed(c.url(1), &t1).await;
    let mut ws2_a = WsClient::authed(c.url(0), &t2).await;
    let mut ws_eve = WsClient::authed(c.url(0), &te).await;
    let (s, v) = c.api(2).call("POST", "/logout/all", Some(&t2), None).await;
    assert_eq!(s, 200, "{v}");
    let answered = Instant::now();
    for (what, ws) in [("t1 on A", &mut ws1_a), ("t1 on B", &mut ws1_b), ("t2 on A", &mut ws2_a)] {
        let (code, at) = close_of(ws).await;
        assert_eq!(code, Some(4001), "{what}");
        let late = at.saturating_duration_since(answered);
        assert!(late <= CLOSE_WITHIN + SLACK, "{what} closed {late:?} after the answer");
    }
    for i in 0..3 {
        assert_eq!(whoami(&c.api(i), &t1).await, 401, "t1 on process {i}");
        assert_eq!(whoami(&c.api(i), &t2).await, 401, "t2 on process {i}");
    }
    // Another user's WebSocket on the same process is still served.
    ws_eve.send(json!({"type": "subscribe", "id": "s", "room": "#nowhere:accounts.test"})).await;
    let answer = ws_eve.recv().await;
    assert_eq!(answer["id"], "s", "eve's connection still answers: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_lost_its_subscription_does_not_keep_a_revoked_websocket() {
    let c = Cluster::start("off");
    let name = uniq("cat");
    assert_eq!(c.api(0).register(&name, PASSWORD).await.0, 201);
    let t = login(&c.api(0), &name).await.1["access_token"].as_str().unwrap().to_owned();
    let mut ws = WsClient::authed(c.url(0), &t).await;
    // Every process's revocation subscription is cut; the logout's notice
    // may be published before A subscribes again. A checks its sessions'
    // tokens when it does.
    c.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).expect("redis-cli runs");
    let (s, v) = c.api(1).call("POST", "/logout", Some(&t), None).await;
    assert_eq!(s, 200, "{v}");
    let (code, _) = close_of(&mut ws).await;
    assert_eq!(code, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_a_burst_whichever_processes_serve_it() {
    let c = Cluster::start("on");
    // Ten registrations from one address, spread over the three processes;
    // the eleventh is refused wherever it lands.
    for i in 0..10 {
        let (s, v) = c.api(i % 3).register(&uniq("reg"), PASSWORD).await;
        assert_eq!(s, 201, "registration {i}: {v}");
    }
    let (s, v) = c.api(1).register(&uniq("reg"), PASSWORD).await;
    assert_eq!((s, v["errcode"].as_str()), (429, Some("rate_limited")), "{v}");
    assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{v}");

    // Five wrong passwords per (account, address), spread likewise: the
    // sixth attempt is refused before the password is looked at.
    let (s, v) = c.api(0).register(&uniq("x"), PASSWORD).await;
    assert_eq!(s, 429, "still limited: {v}");
    let name = uniq("dan");
    let mut refused_at = None;
    for i in 0..6 {
        let (s, v) = c
            .api(i % 3)
            .call("POST", "/login", None, Some(json!({"username": name, "password": "wrong-password-1"})))
            .await;
        if s == 429 {
            refused_at = Some(i);
            break;
        }
        assert_eq!(s, 401, "attempt {i}: {v}");
    }
    assert_eq!(refused_at, Some(5), "the sixth guess on (account, address) is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_revocations_survive_restarting_every_process() {
    let mut c = Cluster::start("off");
    let name = uniq("fay");
    assert_eq!(c.api(0).register(&name, PASSWORD).await.0, 201);
    let token = |v: serde_json::Value| v["access_token"].as_str().unwrap().to_owned();
    let kept = token(login(&c.api(1), &name).await.1);
    let revoked = token(login(&c.api(2), &name).await.1);
    assert_eq!(c.api(0).call("POST", "/logout", Some(&revoked), None).await.0, 200);
    c.restart_all();
    for i in 0..3 {
        assert_eq!(whoami(&c.api(i), &kept).await, 200, "the kept token on process {i} after the restart");
        assert_eq!(whoami(&c.api(i), &revoked).await, 401, "the revoked token on process {i} after the restart");
    }
    assert_eq!(login(&c.api(2), &name).await.0, 200, "the account is still there");
    let (s, v) = c.api(1).register(&name, PASSWORD).await;
    assert_eq!((s, v["errcode"].as_str()), (409, Some("username_taken")), "{v}");
}

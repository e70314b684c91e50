//! `parlor admin` and registration modes, against the real binary: each
//! command over a running server's admin socket and on a stopped data dir;
//! deactivation closing a WebSocket with 4001; the socket's mode; a
//! registration token's last use raced for (on both backends); every
//! registration refusal; the federation deny list; the room list and
//! room purges (on both backends).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Api, ParlorProcess, RedisServer, TestServer, WsClient, uniq};

const PASSWORD: &str = "zebra-quartz-71";

/// Runs `parlor admin --data-dir DIR ARGS… --json` (stdin: `input`); returns
/// whether it succeeded and the JSON it printed.
fn admin_in(dir: &Path, extra: &[&str], args: &[&str], input: Option<&str>) -> (bool, Value) {
    use std::io::Write as _;
    let mut child = Command::new(testkit::process::parlor_bin())
        .arg("admin")
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .args(args)
        .arg("--json")
        .env_remove("PARLOR_REDIS")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("parlor admin starts");
    if let Some(text) = input {
        child.stdin.as_mut().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!("parlor admin {args:?} printed {stdout:?}; stderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.success(), value)
}

fn admin(dir: &Path, args: &[&str]) -> Value {
    let (ok, v) = admin_in(dir, &[], args, None);
    assert!(ok, "parlor admin {args:?} failed: {v}");
    v
}

fn admin_refused(dir: &Path, args: &[&str]) -> String {
    let (ok, v) = admin_in(dir, &[], args, None);
    assert!(!ok, "parlor admin {args:?} should fail: {v}");
    v["errcode"].as_str().unwrap_or_default().to_owned()
}

async fn register(api: &Api, name: &str, token: Option<&str>) -> (u16, Value) {
    let mut body = json!({"username": name, "password": PASSWORD});
    if let Some(t) = token {
        body["registration_token"] = json!(t);
    }
    api.call("POST", "/register", None, Some(body)).await
}

async fn login(api: &Api, name: &str, password: &str) -> (u16, Value) {
    api.call("POST", "/login", None, Some(json!({"username": name, "password": password}))).await
}

fn spawn(dir: &Path, args: &[&str]) -> ParlorProcess {
    let mut all = vec!["--rate-limit", "off", "--federation", "off"];
    all.extend_from_slice(args);
    ParlorProcess::spawn(dir, &all)
}

fn new_token(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["registration-tokens", "create"];
    all.extend_from_slice(args);
    let v = admin(dir, &all);
    v["token"]["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_on_a_running_server_and_on_a_stopped_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = spawn(&dir, &["--registration", "token"]);
    let api = Api::new(&server.url);

    // The socket is the server user's only.
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let sock = dir.join("admin.sock");
    let meta = std::fs::metadata(&sock).expect("the running server has an admin socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Running: tokens.
    let t = new_token(&dir, &["--uses", "2", "--expires-in", "1d"]);
    let (ann, bob) = (uniq("ann"), uniq("bob"));
    assert_eq!(register(&api, &ann, Some(&t)).await.0, 201);
    assert_eq!(register(&api, &bob, Some(&t)).await.0, 201);
    let list = admin(&dir, &["registration-tokens", "list"]);
    let listed = &list["tokens"][0];
    assert_eq!((listed["token"].as_str(), listed["completed"].as_u64()), (Some(t.as_str()), Some(2)), "{list}");
    assert_eq!(listed["uses_allowed"], 2);
    assert!(listed["expires_ms"].as_u64().unwrap() > listed["created_ms"].as_u64().unwrap() + 86_000_000);
    assert_eq!(register(&api, &uniq("cat"), Some(&t)).await.1["errcode"], "registration_token_used_up");
    assert_eq!(admin(&dir, &["registration-tokens", "revoke", &t]), json!({"answer": "done", "changed": true}));
    assert_eq!(admin(&dir, &["registration-tokens", "list"]), json!({"answer": "tokens", "tokens": []}));

    // Running: users.
    let users = admin(&dir, &["users", "list"]);
    let ids: Vec<&str> = users["users"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{users}");
    assert!(ids.iter().any(|u| u.starts_with(&format!("@{ann}:"))));
    let (s, session) = login(&api, &ann, PASSWORD).await;
    assert_eq!(s, 200);
    let ann_token = session["access_token"].as_str().unwrap().to_owned();
    let (ok, v) =
        admin_in(&dir, &[], &["users", "reset-password", &ann, "--password-stdin"], Some("a-new-passphrase-9\n"));
    assert!(ok, "{v}");
    assert_eq!(api.call("GET", "/account/whoami", Some(&ann_token), None).await.0, 401, "the reset revoked the token");
    assert_eq!(login(&api, &ann, PASSWORD).await.0, 401, "the old password is gone");
    assert_eq!(login(&api, &ann, "a-new-passphrase-9").await.0, 200);
    let (ok, v) = admin_in(&dir, &[], &["users", "reset-password", &ann, "--password-stdin"], Some("4082931757\n"));
    assert!(!ok);
    assert_eq!(v["errcode"], "password_entirely_numeric", "the registration rules apply");
    let (_, bob_session) = login(&api, &bob, PASSWORD).await;
    let bob_token = bob_session["access_token"].as_str().unwrap().to_owned();
    assert_eq!(admin(&dir, &["users", "deactivate", &bob]), json!({"answer": "done", "changed": true}));
    assert_eq!(admin(&dir, &["users", "deactivate", &bob]), json!({"answer": "done", "changed": false}));
    assert_eq!(api.call("GET", "/account/whoami", Some(&bob_token), None).await.0, 401);
    let (s, v) = login(&api, &bob, PASSWORD).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("user_deactivated")), "{v}");
    assert_eq!(login(&api, &bob, "wrong-password-1").await.1["errcode"], "invalid_credentials", "no oracle");
    assert_eq!(register(&api, &bob, Some(&new_token(&dir, &[]))).await.1["errcode"], "username_taken");
    assert_eq!(admin_refused(&dir, &["users", "deactivate", "nobody"]), "user_not_found");
    let ann_id = ids.iter().find(|u| u.starts_with(&format!("@{ann}:"))).unwrap().to_string();
    let elsewhere = format!("@{ann}:elsewhere.example");
    assert_eq!(admin_refused(&dir, &["users", "deactivate", &elsewhere]), "user_not_found", "another server's user");

    // Running: servers.
    assert_eq!(admin(&dir, &["servers", "deny", "evil.example"]), json!({"answer": "done", "changed": true}));
    assert_eq!(admin(&dir, &["servers", "deny", "spam.example:8448"])["changed"], true);
    assert_eq!(admin(&dir, &["servers", "allow", "spam.example:8448"])["changed"], true);
    assert_eq!(admin(&dir, &["servers", "list"]), json!({"answer": "servers", "denied": ["evil.example"]}));
    assert_eq!(admin_refused(&dir, &["servers", "deny", "not a name"]), "invalid_param");

    // Stopped: the socket is gone and the same commands open the data dir.
    assert!(server.terminate().success());
    assert!(!sock.exists(), "the socket is removed at stop");
    let users = admin(&dir, &["users", "list"]);
    let states: Vec<(bool, bool)> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user_id"].as_str().unwrap().starts_with(&format!("@{bob}:")), u["deactivated_ms"].is_u64()))
        .collect();
    assert!(states.contains(&(true, true)) && states.contains(&(false, false)), "{users}");
    assert_eq!(
        admin(&dir, &["users", "deactivate", &ann_id]),
        json!({"answer": "done", "changed": true}),
        "by user id"
    );
    let (ok, v) =
        admin_in(&dir, &[], &["users", "reset-password", &bob, "--password-stdin"], Some("bobs-new-phrase-4\n"));
    assert!(ok, "{v}");
    let offline_token = new_token(&dir, &["--uses", "1"]);
    let gone = new_token(&dir, &[]);
    assert_eq!(admin(&dir, &["registration-tokens", "revoke", &gone])["changed"], true);
    assert_eq!(admin(&dir, &["registration-tokens", "revoke", &gone])["changed"], false);
    assert_eq!(admin(&dir, &["registration-tokens", "list"])["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(admin(&dir, &["servers", "allow", "evil.example"])["changed"], true);
    assert_eq!(admin(&dir, &["servers", "deny", "other.example"])["changed"], true);
    assert_eq!(admin(&dir, &["servers", "list"])["denied"], json!(["other.example"]));

    // What was done offline holds once the server is back.
    let server = spawn(&dir, &["--registration", "token"]);
    let api = Api::new(&server.url);
    assert_eq!(login(&api, &ann, "a-new-passphrase-9").await.1["errcode"], "user_deactivated");
    assert_eq!(login(&api, &bob, "bobs-new-phrase-4").await.1["errcode"], "user_deactivated", "still deactivated");
    assert_eq!(register(&api, &uniq("dan"), Some(&offline_token)).await.0, 201);
    assert_eq!(register(&api, &uniq("eve"), Some(&offline_token)).await.1["errcode"], "registration_token_used_up");
    assert_eq!(admin(&dir, &["servers", "list"])["denied"], json!(["other.example"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_a_directory_that_is_not_a_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _) = admin_in_text(tmp.path(), &["users", "list"]);
    assert!(!ok);
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "nothing was written");
}

/// `parlor admin` whose failure prints no JSON (a local fault, not a refusal).
fn admin_in_text(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(testkit::process::parlor_bin())
        .arg("admin")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("PARLOR_REDIS")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_closes_open_websockets_with_4001() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = spawn(&dir, &[]);
    let api = Api::new(&server.url);
    let name = uniq("ann");
    let (_, token) = api.user(&name).await;
    let mut ws = WsClient::authed(&server.url, &token).await;
    assert_eq!(admin(&dir, &["users", "deactivate", &name])["changed"], true);
    assert_eq!(ws.closed().await, Some(4001));
}

/// Eight registrations race for a token's one use: exactly one wins.
async fn race_for_the_last_use(dir: &Path, api: &Api, extra: &[&str]) {
    for round in 0..3 {
        let mut args = vec!["registration-tokens", "create", "--uses", "1"];
        args.extend_from_slice(extra);
        let (ok, v) = admin_in(dir, &[], &args, None);
        assert!(ok, "{v}");
        let token = v["token"]["token"].as_str().unwrap().to_owned();
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let (api, token) = (api.clone(), token.clone());
                tokio::spawn(async move { register(&api, &uniq(&format!("r{round}x{i}")), Some(&token)).await })
            })
            .collect();
        let mut won = 0;
        for r in racers {
            let (s, v) = r.await.unwrap();
            match s {
                201 => won += 1,
                _ => assert_eq!(v["errcode"], "registration_token_used_up", "{v}"),
            }
        }
        assert_eq!(won, 1, "exactly one registration takes the last use");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_cannot_both_take_the_last_use_embedded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = spawn(&dir, &["--registration", "token"]);
    race_for_the_last_use(&dir, &Api::new(&server.url), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_cannot_both_take_the_last_use_redis() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = spawn(&dir, &["--registration", "token", "--redis", &redis.url]);
    race_for_the_last_use(&dir, &Api::new(&server.url), &[]).await;
    // The tokens live in Redis: a stopped server's data dir needs --redis,
    // and then shows them.
    assert!(server.terminate().success());
    let (ok, _) = admin_in_text(&dir, &["registration-tokens", "list"]);
    assert!(!ok, "without --redis the tokens cannot be found");
    let (ok, v) = admin_in(&dir, &["--redis", &redis.url], &["registration-tokens", "list"], None);
    assert!(ok, "{v}");
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(tokens.iter().all(|t| t["completed"] == 1 && t["uses_allowed"] == 1), "{v}");
    let (ok, v) = admin_in(&dir, &["--redis", &redis.url], &["servers", "deny", "evil.example"], None);
    assert!(ok && v["changed"] == true, "{v}");
    let server = spawn(&dir, &["--registration", "token", "--redis", &redis.url]);
    assert_eq!(admin(&dir, &["servers", "list"])["denied"], json!(["evil.example"]), "Redis is the one copy");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_registration_mode_says_what_it_asks_and_refuses_with_its_errcode() {
    let tmp = tempfile::tempdir().unwrap();
    for (mode, expect) in [("open", 201), ("closed", 403)] {
        let dir = tmp.path().join(mode);
        let server = spawn(&dir, &["--registration", mode]);
        let api = Api::new(&server.url);
        let (_, v) = api.raw("GET", "/_parlor/versions", None, vec![]).await;
        assert_eq!(v["registration"], mode);
        let (s, v) = register(&api, &uniq("ann"), None).await;
        assert_eq!(s, expect, "{v}");
        if mode == "closed" {
            assert_eq!(v["errcode"], "registration_closed");
            let t = new_token(&dir, &[]);
            assert_eq!(register(&api, &uniq("ann"), Some(&t)).await.1["errcode"], "registration_closed");
        }
    }
    let dir = tmp.path().join("token");
    let server = spawn(&dir, &["--registration", "token"]);
    let api = Api::new(&server.url);
    let (_, v) = api.raw("GET", "/_parlor/versions", None, vec![]).await;
    assert_eq!(v["registration"], "token");
    assert_eq!(register(&api, &uniq("ann"), None).await.1["errcode"], "registration_token_required");
    assert_eq!(register(&api, &uniq("ann"), Some("no-such-token")).await.1["errcode"], "invalid_registration_token");
    // A failed registration gives its use back.
    let t = new_token(&dir, &["--uses", "1"]);
    let (s, v) = api
        .call(
            "POST",
            "/register",
            None,
            Some(json!({"username": uniq("ann"), "password": "short", "registration_token": t})),
        )
        .await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("password_too_short")));
    assert_eq!(register(&api, &uniq("ann"), Some(&t)).await.0, 201, "the use was given back");
    // Expiry: a one-second token works until it does not.
    let t = new_token(&dir, &["--expires-in", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = register(&api, &uniq("exp"), Some(&t)).await;
        if s == 403 {
            assert_eq!(v["errcode"], "registration_token_expired");
            break;
        }
        assert_eq!(s, 201, "{v}");
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two in-process servers, each the other's named peer.
async fn two_servers(dirs: &Path) -> (TestServer, TestServer) {
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let start = |l, me: std::net::SocketAddr, peer: std::net::SocketAddr, dir: std::path::PathBuf| {
        let mut cfg = TestServer::config(me.port(), &dir);
        cfg.federation_peers = vec![(peer.to_string(), format!("http://{peer}"))];
        cfg.federation_retry_max = Duration::from_millis(500);
        cfg.federation_catch_up = Duration::from_millis(500);
        TestServer::start_with(l, cfg)
    };
    let a = start(la, aa, ab, dirs.join("a")).await;
    let b = start(lb, ab, aa, dirs.join("b")).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_server_is_refused_until_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_servers(tmp.path()).await;
    let (api_a, api_b) = (Api::new(&a.url), Api::new(&b.url));
    let (_, ta) = api_a.user(&uniq("ann")).await;
    let room = api_a.join(&ta, &uniq("lobby")).await;
    let alias = room["alias"].as_str().unwrap().to_owned();
    let (_, tb) = api_b.user(&uniq("bob")).await;

    let b_name = b.addr.to_string();
    assert_eq!(admin(&a.data_dir, &["servers", "deny", &b_name])["changed"], true);
    let (s, v) = api_b.call("POST", &format!("/rooms/{}/join", support::enc(&alias)), Some(&tb), None).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("server_denied")), "{v}");

    assert_eq!(admin(&a.data_dir, &["servers", "allow", &b_name])["changed"], true);
    let joined = api_b.join(&tb, &alias).await;
    assert_eq!(joined["room_id"], room["room_id"]);
}

/// `rooms list` over the running server's socket and on the stopped data
/// dir (with Redis: given `--redis`), with each room's alias and members.
async fn rooms_are_listed_running_and_stopped(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = spawn(&dir, extra);
    let api = Api::new(&server.url);
    let (_, ann) = api.user(&uniq("ann")).await;
    let (_, bob) = api.user(&uniq("bob")).await;
    let garden = api.join(&ann, "garden").await["room_id"].as_str().unwrap().to_owned();
    api.join(&bob, "garden").await;
    let quiet = api.join(&ann, "quiet").await["room_id"].as_str().unwrap().to_owned();
    let expect = |rooms: &Value| {
        let got: Vec<(&str, u64)> = rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["room_id"].as_str().unwrap(), r["members"].as_u64().unwrap()))
            .collect();
        assert_eq!(got, vec![(garden.as_str(), 2), (quiet.as_str(), 1)], "{rooms}");
        assert!(rooms["rooms"][0]["alias"].as_str().unwrap().contains("garden"), "{rooms}");
        assert!(rooms["rooms"][0]["created_ms"].as_u64().unwrap() > 0);
    };
    expect(&admin_in_ok(&dir, extra, &["rooms", "list"]));
    assert!(server.terminate().success());
    expect(&admin_in_ok(&dir, extra, &["rooms", "list"]));
}

/// `parlor admin` with the server's `--redis` (if any) taken from `serve_args`.
fn admin_in_ok(dir: &Path, serve_args: &[&str], args: &[&str]) -> Value {
    let (ok, v) = admin_in(dir, &admin_redis(serve_args), args, None);
    assert!(ok, "parlor admin {args:?}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_list_embedded() {
    rooms_are_listed_running_and_stopped(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_list_redis() {
    let redis = RedisServer::start();
    rooms_are_listed_running_and_stopped(&["--redis", &redis.url]).await;
}

/// `rooms purge` on a running server (its subscribers told `room_purged`)
/// and on a stopped data dir: the history is gone from storage (the sled
/// trees, or Redis's keys), and so are the directory entry and memberships.
async fn rooms_are_purged_running_and_stopped(extra: &[&str], redis: Option<&RedisServer>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = spawn(&dir, extra);
    let api = Api::new(&server.url);
    let (_, ann) = api.user(&uniq("ann")).await;
    let (_, bob) = api.user(&uniq("bob")).await;
    let garden = api.join(&ann, "garden").await["room_id"].as_str().unwrap().to_owned();
    api.join(&bob, "garden").await;
    let quiet = api.join(&ann, "quiet").await["room_id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        assert_eq!(api.send(&ann, &garden, &format!("g{i}"), "in the garden").await.0, 200);
        assert_eq!(api.send(&ann, &quiet, &format!("q{i}"), "in the quiet room").await.0, 200);
    }
    let redis_keys = |room: &str| {
        redis.map(|r| r.cli(&["--scan", "--pattern", &format!("parlor:{{{room}}}:*")]).unwrap()).unwrap_or_default()
    };
    if redis.is_some() {
        assert!(redis_keys(&garden).contains(":log"), "the room log is in Redis");
    }
    let mut ws = WsClient::authed(&server.url, &bob).await;
    ws.send(json!({"type": "subscribe", "id": "s", "room": garden})).await;
    ws.until("caught_up").await;

    // Running: by room id.
    assert_eq!(admin_in_ok(&dir, extra, &["rooms", "purge", &garden]), json!({"answer": "done", "changed": true}));
    let (ended, _) = ws.until("unsubscribed").await;
    assert_eq!((ended["room_id"].as_str(), ended["reason"].as_str()), (Some(garden.as_str()), Some("room_purged")));
    let (s, v) = api.messages(&ann, &garden, "limit=10").await;
    assert_eq!((s, v["errcode"].as_str()), (404, Some("room_not_found")), "{v}");
    assert_eq!(redis_keys(&garden), "", "no key of the room is left in Redis");
    let listed = admin_in_ok(&dir, extra, &["rooms", "list"]);
    assert_eq!(listed["rooms"].as_array().unwrap().len(), 1, "{listed}");
    let (ok, v) = admin_in(&dir, &admin_redis(extra), &["rooms", "purge", &garden], None);
    assert_eq!((ok, v["errcode"].as_str()), (false, Some("room_not_found")));
    // The alias is free again: joining it makes a new, empty room.
    let again = api.join(&bob, "garden").await["room_id"].as_str().unwrap().to_owned();
    assert_ne!(again, garden);
    let (_, page) = api.messages(&bob, &again, "limit=10").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "only bob's join: {page}");

    // Stopped: by alias, as `rooms list` shows it.
    assert!(server.terminate().success());
    let alias = listed["rooms"][0]["alias"].as_str().unwrap().to_owned();
    assert_eq!(admin_in_ok(&dir, extra, &["rooms", "purge", &alias])["changed"], true);
    assert_eq!(redis_keys(&quiet), "");
    if redis.is_none() {
        let db = parlor::storage::Db::open(&dir).unwrap();
        for tree in db.sled.tree_names() {
            for item in db.sled.open_tree(&tree).unwrap().iter() {
                let (k, v) = item.unwrap();
                for room in [&garden, &quiet] {
                    let hit = |b: &[u8]| b.windows(room.len()).any(|w| w == room.as_bytes());
                    assert!(!hit(&k) && !hit(&v), "{room} is still in sled tree {}", String::from_utf8_lossy(&tree));
                }
            }
        }
    }
    let server = spawn(&dir, extra);
    let api = Api::new(&server.url);
    let (s, _) = api.messages(&ann, &quiet, "limit=10").await;
    assert_eq!(s, 404);
    let rooms = admin_in_ok(&dir, extra, &["rooms", "list"]);
    assert_eq!(rooms["rooms"][0]["room_id"], again.as_str(), "{rooms}");
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1);
}

fn admin_redis<'a>(serve_args: &[&'a str]) -> Vec<&'a str> {
    serve_args.windows(2).filter(|w| w[0] == "--redis").flatten().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_purge_embedded() {
    rooms_are_purged_running_and_stopped(&[], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_purge_redis() {
    let redis = RedisServer::start();
    rooms_are_purged_running_and_stopped(&["--redis", &redis.url], Some(&redis)).await;
}

//! `parlor migrate` against the real binary and a real redis-server: an
//! embedded server's accounts (tokens included), registration tokens, deny
//! list, rooms, members and room logs move into Redis; the server then runs
//! with `--redis`, and so does a second process beside it, serving exactly
//! what clients saw before (same epoch, seqs, event ids, times; old tokens
//! still authenticate; a cursor resumes). Refusals leave the data dir as it
//! was: a running server, another server's Redis, a conflicting alias. The
//! same move into a Redis Cluster (`--redis-cluster`), with `parlor admin`
//! on the stopped data dir given the cluster.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{Api, ParlorProcess, RedisCluster, RedisServer, WsClient, run_parlor};

const NAME: &str = "mig.test";
const PASSWORD: &str = "zebra-quartz-71";

fn migrate(dir: &Path, redis: &RedisServer) -> (bool, String, String) {
    migrate_into(dir, &["--redis", &redis.url])
}

/// `parlor migrate` into `target` (`--redis URL` or `--redis-cluster URLS`).
fn migrate_into(dir: &Path, target: &[&str]) -> (bool, String, String) {
    let mut args = vec!["migrate", "--data-dir", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(target);
    run_parlor(&args)
}

fn admin(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["admin", "--data-dir", dir.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = run_parlor(&all);
    assert!(ok, "parlor {all:?}: {out} {err}");
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn identity(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("identity.json")).unwrap()).unwrap()
}

/// The whole history of a room as the client API reads it.
async fn history(api: &Api, token: &str, room: &str) -> (String, u64, Vec<Value>) {
    let (s, page) = api.messages(token, room, "limit=1000").await;
    assert_eq!(s, 200, "{page}");
    let events = page["events"].as_array().unwrap().clone();
    (page["epoch"].as_str().unwrap().to_owned(), page["latest_seq"].as_u64().unwrap(), events)
}

struct Before {
    ann_token: String,
    bob_token: String,
    room: String,
    quiet_room: String,
    /// A v1.1 private room of ann's, with a pending invite of bob.
    vault: String,
    epoch: String,
    latest: u64,
    events: Vec<Value>,
    reg_token: String,
}

/// An embedded server with two users, two rooms (one with a leave), a
/// registration token and a denied server; stopped when this returns.
async fn fill(dir: &Path) -> Before {
    let mut server = ParlorProcess::spawn(dir, &["--server-name", NAME]);
    let api = Api::new(&server.url);
    let (_, ann) = api.user("ann").await;
    let (_, bob) = api.user("bob").await;
    let room = api.join(&ann, "garden").await["room_id"].as_str().unwrap().to_owned();
    api.join(&bob, "garden").await;
    for n in 0..40 {
        let (who, token) = if n % 3 == 0 { ("bob", &bob) } else { ("ann", &ann) };
        let (s, v) = api.send(token, &room, &format!("t{n}"), &format!("{who} says {n}")).await;
        assert_eq!(s, 200, "{v}");
    }
    let quiet_room = api.join(&bob, "quiet").await["room_id"].as_str().unwrap().to_owned();
    let (s, v) = api.call("POST", &format!("/rooms/{}/leave", support::enc(&quiet_room)), Some(&bob), None).await;
    assert_eq!(s, 200, "{v}");
    let body = json!({"visibility": "private", "name": "Vault", "invite": [format!("@bob:{NAME}")]});
    let (s, v) = api.call("POST", "/rooms", Some(&ann), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let vault = v["room_id"].as_str().unwrap().to_owned();
    let reg_token =
        admin(dir, &["registration-tokens", "create", "--uses", "3"])["token"]["token"].as_str().unwrap().to_owned();
    admin(dir, &["servers", "deny", "spam.example"]);
    let (epoch, latest, events) = history(&api, &ann, &room).await;
    assert_eq!(events.len() as u64, latest);
    assert!(server.terminate().success());
    Before { ann_token: ann, bob_token: bob, room, quiet_room, vault, epoch, latest, events, reg_token }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_server_moves_into_redis_and_clients_see_no_difference() {
    let redis = RedisServer::start();
    moves_into(&["--redis", &redis.url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_server_moves_into_a_redis_cluster_and_clients_see_no_difference() {
    let cluster = RedisCluster::start();
    moves_into(&["--redis-cluster", &cluster.urls()]).await;
}

/// Moves a filled embedded server into `target` (`--redis URL` or
/// `--redis-cluster URLS`) and checks what clients and the operator see.
async fn moves_into(target: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let b = fill(dir.path()).await;

    let (ok, out, err) = migrate_into(dir.path(), target);
    assert!(ok, "migrate: {out} {err}");
    let moved: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(moved["server_name"], NAME);
    assert_eq!((moved["accounts"].as_u64(), moved["rooms"].as_u64()), (Some(2), Some(3)), "{moved}");
    assert!(moved["devices"].as_u64().unwrap() >= 2, "{moved}");
    assert_eq!(moved["registration_tokens"], 1);
    assert_eq!(moved["denied_servers"], 1);
    assert_eq!(identity(dir.path())["room_log"], "redis");

    // The moved data dir starts with --redis now (without, it is refused:
    // tests/data_dir.rs), named as before.
    let a = ParlorProcess::spawn(dir.path(), target);
    // A second process of the same server, on its own empty data dir.
    let dir2 = tempfile::tempdir().unwrap();
    let second = ParlorProcess::spawn(dir2.path(), &[&["--server-name", NAME][..], target].concat());

    for url in [&a.url, &second.url] {
        let api = Api::new(url);
        // Old tokens authenticate: nobody logs in again.
        let (s, who) = api.call("GET", "/account/whoami", Some(&b.ann_token), None).await;
        assert_eq!((s, who["user_id"].as_str()), (200, Some(format!("@ann:{NAME}").as_str())), "{who}");
        // Passwords too.
        let (s, v) = api.call("POST", "/login", None, Some(json!({"username": "bob", "password": PASSWORD}))).await;
        assert_eq!(s, 200, "{v}");
        // The history reads the same, byte for byte.
        let (epoch, latest, events) = history(&api, &b.bob_token, &b.room).await;
        assert_eq!((epoch.as_str(), latest), (b.epoch.as_str(), b.latest));
        assert_eq!(events, b.events);
        // Membership moved: ann and bob in the garden, bob no longer in the quiet room.
        let (s, m) =
            api.call("GET", &format!("/rooms/{}/members", support::enc(&b.room)), Some(&b.ann_token), None).await;
        assert_eq!(s, 200, "{m}");
        let text = m.to_string();
        assert!(text.contains(&format!("@ann:{NAME}")) && text.contains(&format!("@bob:{NAME}")), "{m}");
        let (_, m) =
            api.call("GET", &format!("/rooms/{}/members", support::enc(&b.quiet_room)), Some(&b.ann_token), None).await;
        assert!(!m.to_string().contains(&format!("@bob:{NAME}")), "{m}");
        // v1.1 state moved: ann owns the vault, bob's invite is pending.
        let (_, m) =
            api.call("GET", &format!("/rooms/{}/members", support::enc(&b.vault)), Some(&b.ann_token), None).await;
        assert_eq!(m["members"][0]["role"], "owner", "{m}");
        let (_, rooms) = api.call("GET", "/rooms", Some(&b.bob_token), None).await;
        let vault = rooms["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == b.vault.as_str()).cloned();
        let vault = vault.unwrap_or_else(|| panic!("bob's invite to the vault is not listed: {rooms}"));
        assert_eq!((vault["membership"].as_str(), vault["name"].as_str()), (Some("invite"), Some("Vault")));
    }

    // A cursor from before the move resumes: the last two old events, then a new one, in the same epoch.
    let mut ws = WsClient::authed(&second.url, &b.bob_token).await;
    ws.send(json!({"type": "subscribe", "room": b.room, "since": {"epoch": b.epoch, "seq": b.latest - 2}})).await;
    let (cu, replayed) = ws.until("caught_up").await;
    assert_eq!(replayed.iter().map(|f| f["event"].clone()).collect::<Vec<_>>(), b.events[b.events.len() - 2..]);
    assert_eq!((cu["epoch"].as_str(), cu["seq"].as_u64()), (Some(b.epoch.as_str()), Some(b.latest)));
    let (s, v) = Api::new(&a.url).send(&b.ann_token, &b.room, "after-move", "hello from redis").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(b.latest + 1)), "{v}");
    let f = ws.recv().await;
    assert_eq!((f["epoch"].as_str(), f["event"]["seq"].as_u64()), (Some(b.epoch.as_str()), Some(b.latest + 1)), "{f}");

    // What the operator set moved too.
    let tokens = admin(dir.path(), &["registration-tokens", "list"]).to_string();
    assert!(tokens.contains(&b.reg_token), "{tokens}");
    let denied = admin(dir.path(), &["servers", "list"]).to_string();
    assert!(denied.contains("spam.example"), "{denied}");

    // Nothing is left to move.
    drop(a);
    let (ok, out, err) = migrate_into(dir.path(), target);
    assert!(!ok && err.contains("uses Redis already"), "{out} {err}");

    // The stopped data dir's admin commands reach the same Redis when given it.
    let offline = admin(dir.path(), &[target, &["servers", "list"]].concat());
    assert!(offline.to_string().contains("spam.example"), "{offline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_migration_leaves_the_embedded_server_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let b = fill(dir.path()).await;
    let redis = RedisServer::start();

    // A running server: its data dir is locked, and must be stopped first.
    let running = ParlorProcess::spawn(dir.path(), &[]);
    let (ok, _, err) = migrate(dir.path(), &redis);
    assert!(!ok && err.contains("stop every process first"), "{err}");
    drop(running);

    // Another server's Redis.
    let other = RedisServer::start();
    other.cli(&["SET", "parlor:identity", "other.test"]).unwrap();
    let (ok, _, err) = migrate(dir.path(), &other);
    assert!(!ok && err.contains("other.test"), "{err}");

    // A Redis of this server whose alias #garden names another room.
    let odir = tempfile::tempdir().unwrap();
    let mut elsewhere = ParlorProcess::spawn(odir.path(), &["--server-name", NAME, "--redis", &redis.url]);
    let api = Api::new(&elsewhere.url);
    let (_, cy) = api.user("cy").await;
    api.join(&cy, "garden").await;
    assert!(elsewhere.terminate().success());
    let (ok, _, err) = migrate(dir.path(), &redis);
    assert!(!ok && err.contains("garden") && err.contains("names another room"), "{err}");
    assert_eq!(redis.cli(&["EXISTS", "parlor:user:{ann}:account"]).unwrap().trim(), "0", "nothing was written");

    // The embedded server starts as before, with everything.
    assert_eq!(identity(dir.path())["room_log"], "embedded");
    let server = ParlorProcess::spawn(dir.path(), &[]);
    let (epoch, latest, events) = history(&Api::new(&server.url), &b.ann_token, &b.room).await;
    assert_eq!((epoch, latest, events), (b.epoch, b.latest, b.events));
}

/// From one Redis to a Redis Cluster, the way README says: every process
/// stopped, the keys copied with `redis-cli --cluster import`, then the same
/// data dir started with `--redis-cluster` (one Redis and a cluster are the
/// same backend and hold the same keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_one_redis_moves_to_a_cluster_with_redis_cli_import() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let server = ParlorProcess::spawn(dir.path(), &["--server-name", NAME, "--redis", &redis.url]);
    let api = Api::new(&server.url);
    let (_, ann) = api.user("ann").await;
    let room = api.join(&ann, "garden").await["room_id"].as_str().unwrap().to_owned();
    for n in 0..5 {
        let (s, v) = api.send(&ann, &room, &format!("t{n}"), &format!("ann says {n}")).await;
        assert_eq!(s, 200, "{v}");
    }
    let (epoch, latest, events) = history(&api, &ann, &room).await;
    drop(server);

    let cluster = RedisCluster::start();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "import", &format!("127.0.0.1:{}", cluster.nodes[0].port)])
        .args(["--cluster-from", &format!("127.0.0.1:{}", redis.port), "--cluster-copy"])
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli --cluster import: {}", String::from_utf8_lossy(&out.stdout));

    let server = ParlorProcess::spawn(dir.path(), &["--redis-cluster", &cluster.urls()]);
    let api = Api::new(&server.url);
    // The old token, the history as it was, and the next seq after it.
    let (again_epoch, again_latest, again) = history(&api, &ann, &room).await;
    assert_eq!((again_epoch.as_str(), again_latest, &again), (epoch.as_str(), latest, &events));
    let (s, v) = api.send(&ann, &room, "after", "on the cluster").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(latest + 1)), "{v}");
    let (s, v) = api.call("POST", "/login", None, Some(json!({"username": "ann", "password": PASSWORD}))).await;
    assert_eq!(s, 200, "{v}");
}

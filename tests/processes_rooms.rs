//! Several `parlor serve` processes on one Redis are one server for rooms
//! and federation: the room directory and membership are read from Redis by
//! every process (join on one, `members` on another at once), WebSocket
//! subscribers on one process get sends made on another, and federation has
//! one identity and one pusher per destination, taken over when it dies.
//!
//! Real processes (testkit's `ParlorProcess`) on one `redis-server` of the
//! test's own (testkit's `RedisServer`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Api, Backend, Harness, ParlorProcess, RedisServer, WsClient, enc, free_port, uniq};

/// The v1 fields (`room_id`, `alias`) of each item of a `GET /rooms` answer:
/// v1.1 adds others, which these tests do not look at.
fn v1_fields(rooms: &serde_json::Value) -> serde_json::Value {
    rooms
        .as_array()
        .map(|a| a.iter().map(|r| serde_json::json!({"room_id": r["room_id"], "alias": r["alias"]})).collect())
        .unwrap_or(serde_json::Value::Null)
}

const NAME: &str = "one.test";
const PASSWORD: &str = "zebra-quartz-71";

/// A process of the server `name` on `redis`, with `extra` flags.
fn process(redis: &RedisServer, dir: &tempfile::TempDir, listen: &str, name: &str, extra: &[&str]) -> ParlorProcess {
    let mut args = vec!["--redis", &redis.url, "--server-name", name, "--rate-limit", "off"];
    args.extend_from_slice(extra);
    let mut p = ParlorProcess::spawn_at(listen, dir.path(), &args);
    assert!(matches!(p.child.try_wait(), Ok(None)), "a process of {name} started");
    p
}

/// A token of `name` on `api`: logs in where accounts are shared already,
/// else registers there (accounts are shared by their own part of #13).
async fn token_on(api: &Api, name: &str) -> String {
    let (s, v) = api.call("POST", "/login", None, Some(json!({"username": name, "password": PASSWORD}))).await;
    if s == 200 {
        return v["access_token"].as_str().unwrap().to_owned();
    }
    let (s, v) = api.register(name, PASSWORD).await;
    assert_eq!(s, 201, "register {name}: {v}");
    api.login(name).await.1
}

async fn members(api: &Api, token: &str, room: &str) -> (u16, Vec<String>) {
    let (s, m) = api.call("GET", &format!("/rooms/{}/members", enc(room)), Some(token), None).await;
    let got = m["members"]
        .as_array()
        .map(|a| a.iter().map(|x| x["user_id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    (s, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_process_serves_any_room_request() {
    let redis = RedisServer::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let procs: Vec<ParlorProcess> = dirs.iter().map(|d| process(&redis, d, "127.0.0.1:0", NAME, &[])).collect();
    let [a, b, c] = [&procs[0], &procs[1], &procs[2]].map(|p| Api::new(&p.url));
    let (ann, bob) = (uniq("ann"), uniq("bob"));
    let ann_c = token_on(&c, &ann).await;
    let ann_a = token_on(&a, &ann).await;
    let ann_b = token_on(&b, &ann).await;
    let bob_a = token_on(&a, &bob).await;
    let bob_b = token_on(&b, &bob).await;
    let ann_id = format!("@{ann}:{NAME}");
    let bob_id = format!("@{bob}:{NAME}");

    // Created and joined on C; A answers at once, from the same directory.
    let lobby = uniq("lobby");
    let joined = c.join(&ann_c, &lobby).await;
    let (room_id, alias) = (joined["room_id"].as_str().unwrap(), joined["alias"].as_str().unwrap());
    assert_eq!(members(&a, &ann_a, room_id).await, (200, vec![ann_id.clone()]), "members on A right after a join on C");

    // The alias names one room on every process; a join through another
    // process does not create a second one.
    for (api, token) in [(&a, &bob_a), (&b, &bob_b)] {
        assert_eq!(&api.join(token, alias).await, &joined, "{alias} resolves to the same room everywhere");
    }
    let mut both = vec![ann_id.clone(), bob_id.clone()];
    both.sort();
    assert_eq!(members(&c, &ann_c, alias).await, (200, both.clone()));
    let (s, rooms) = b.call("GET", "/rooms", Some(&ann_b), None).await;
    assert_eq!(
        (s, v1_fields(&rooms["rooms"])),
        (200, json!([{"room_id": room_id, "alias": alias}])),
        "rooms of a user on B"
    );

    // Sent on A, live on B.
    let mut ws = WsClient::authed(&procs[1].url, &ann_b).await;
    ws.send(json!({"type": "subscribe", "room": room_id})).await;
    ws.until("caught_up").await;
    let (s, sent) = a.send(&bob_a, room_id, "t1", "from A").await;
    assert_eq!(s, 200, "{sent}");
    let got = ws.next_message(Duration::from_secs(20)).await;
    assert_eq!((got["body"].as_str(), got["seq"].as_u64()), (Some("from A"), sent["seq"].as_u64()));

    // Left on B: A refuses bob's next send at once.
    let (s, v) = b.call("POST", &format!("/rooms/{}/leave", enc(room_id)), Some(&bob_b), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = a.send(&bob_a, room_id, "t2", "after leaving").await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_member")), "{v}");
    assert_eq!(members(&a, &ann_a, room_id).await, (200, vec![ann_id.clone()]));
    let (_, rooms) = c.call("GET", "/rooms", Some(&token_on(&c, &bob).await), None).await;
    assert_eq!(rooms["rooms"], json!([]), "bob's rooms on C are empty after leaving on B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processes_of_a_server_share_one_federation_key() {
    let redis = RedisServer::start();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let procs: Vec<ParlorProcess> = dirs.iter().map(|d| process(&redis, d, "127.0.0.1:0", NAME, &[])).collect();
    let mut keys = Vec::new();
    for p in &procs {
        let (s, doc) = Api::new(&p.url).raw("GET", "/_parlor/key/v1/server", None, Vec::new()).await;
        assert_eq!(s, 200, "{doc}");
        keys.push((doc["key_id"].clone(), doc["public_key"].clone()));
    }
    assert_eq!(keys[0], keys[1], "one identity");
    for d in &dirs {
        assert!(!d.path().join("server.ed25519.pk8").exists(), "with Redis the key lives in Redis only");
    }

    // A data dir whose key file is another key is refused, and says why.
    let other = tempfile::tempdir().unwrap();
    let key = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    std::fs::write(other.path().join("server.ed25519.pk8"), key.as_ref()).unwrap();
    let out = std::process::Command::new(testkit::parlor_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", &redis.url, "--server-name", NAME, "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a process with another key does not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another federation key"), "says why: {err}");
}

/// The lease key of pushes to `server`, and which process (by pid) holds it.
fn lease_holder(redis: &RedisServer, server: &str) -> Option<u32> {
    let v = redis.cli(&["GET", &format!("parlor:{{{server}}}:push-lease")])?;
    v.trim().strip_prefix("pid ")?.split(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_pushes_to_each_server_and_another_takes_over_when_it_dies() {
    let redis = RedisServer::start();
    let (pa, pb, pr) = (free_port(), free_port(), free_port());
    let (la, lb, lr) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"), format!("127.0.0.1:{pr}"));
    let quick = ["--federation-retry-max-secs", "1", "--federation-catch-up-secs", "1"];
    let to_remote = format!("two.test=http://{lr}");
    let to_cluster = format!("{NAME}=http://{la}");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster_args: Vec<&str> = [&quick[..], &["--federation-peer", &to_remote]].concat();
    let mut cluster =
        [process(&redis, &dirs[0], &la, NAME, &cluster_args), process(&redis, &dirs[1], &lb, NAME, &cluster_args)];
    let remote_args: Vec<&str> =
        [&quick[..], &["--server-name", "two.test", "--rate-limit", "off", "--federation-peer", &to_cluster]].concat();
    let remote = ParlorProcess::spawn_at(&lr, dirs[2].path(), &remote_args);
    let (a, b, r) = (Api::new(&cluster[0].url), Api::new(&cluster[1].url), Api::new(&remote.url));

    let ann = uniq("ann");
    let ann_tokens = [token_on(&a, &ann).await, token_on(&b, &ann).await];
    let hall = a.join(&ann_tokens[0], &uniq("hall")).await;
    let room_id = hall["room_id"].as_str().unwrap().to_owned();
    let (_, rita) = r.user(&uniq("rita")).await;
    let on_remote = r.join(&rita, hall["alias"].as_str().unwrap()).await;
    assert_eq!(on_remote["room_id"], hall["room_id"]);
    let mut ws = WsClient::authed(&remote.url, &rita).await;
    ws.send(json!({"type": "subscribe", "room": room_id})).await;
    ws.until("caught_up").await;

    // Sent through both processes: the remote server gets each once, in order.
    let mut sent = Vec::new();
    for i in 0..6 {
        let (api, token) = if i % 2 == 0 { (&a, &ann_tokens[0]) } else { (&b, &ann_tokens[1]) };
        let (s, v) = api.send(token, &room_id, &format!("t{i}"), &format!("m{i}")).await;
        assert_eq!(s, 200, "{v}");
        sent.push(v["seq"].as_u64().unwrap());
        let got = ws.next_message(Duration::from_secs(30)).await;
        assert_eq!(got["body"], format!("m{i}"), "live on the remote server, in order, once");
    }
    let holder = lease_holder(&redis, "two.test").expect("a process holds the lease on pushing to two.test");
    let idx = cluster.iter().position(|p| p.child.id() == holder).expect("the holder is one of the processes");

    // The holder dies (kill -9): the other one takes the lease and pushes.
    let _ = cluster[idx].child.kill();
    let _ = cluster[idx].child.wait();
    let survivor = 1 - idx;
    let api = Api::new(&cluster[survivor].url);
    let (s, v) = api.send(&ann_tokens[survivor], &room_id, "t-after", "after the holder died").await;
    assert_eq!(s, 200, "{v}");
    let got = ws.next_message(Duration::from_secs(60)).await;
    assert_eq!(got["body"], "after the holder died", "pushed by the process that took over");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&redis, "two.test") != Some(cluster[survivor].child.id()) {
        assert!(Instant::now() < deadline, "the survivor holds the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The remote's copy holds every message once.
    let (s, page) = r.messages(&rita, &room_id, "after=0&limit=100").await;
    assert_eq!(s, 200, "{page}");
    let bodies: Vec<&str> = page["events"].as_array().unwrap().iter().filter_map(|e| e["body"].as_str()).collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4", "m5", "after the holder died"], "each event once, in order");
}

/// A replica's import is idempotent across processes: two processes that
/// both receive the same push write it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_imported_by_two_processes_is_written_once() {
    use parlor::protocol::RoomId;
    use parlor::protocol::events::{Event, EventType};
    use parlor::storage::Db;
    use parlor::storage::events::redis::RedisLog;
    use parlor::storage::events::{EventLog, EventSink, LogSettings, Range};

    struct NoSink;
    impl EventSink for NoSink {
        fn deliver(&self, _: &RoomId, _: &std::sync::Arc<str>, _: u64, _: &str) {}
    }
    let redis = RedisServer::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (db1, db2) = (Db::open(d1.path()).unwrap(), Db::open(d2.path()).unwrap());
    let s = LogSettings::default();
    let one = RedisLog::open(&redis.url, &db1, std::sync::Arc::new(NoSink), &s).await.unwrap();
    let two = RedisLog::open(&redis.url, &db2, std::sync::Arc::new(NoSink), &s).await.unwrap();
    let room = RoomId::parse("!r:home.test").unwrap();
    let events: Vec<Event> = (1..=5)
        .map(|seq| Event {
            event_id: format!("$e{seq}:home.test"),
            seq,
            kind: EventType::Message,
            sender: parlor::protocol::UserId::parse("@h:home.test").unwrap(),
            body: Some(format!("m{seq}")),
            ts: seq,
            content: Default::default(),
        })
        .collect();
    let (x, y) = tokio::join!(one.import(&room, "E1", None, events.clone()), two.import(&room, "E1", None, events));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.written + y.written, 5, "written once between them: {x:?} {y:?}");
    let page = two.read(&room, Range::After(0), 100).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    one.close().await;
    two.close().await;
}

/// v1.1 room state is one across processes: an invite made on A is listed
/// and honoured on B, a kick made on A ends the member's subscription on B
/// and B refuses their next send, racing `POST /dm`s on two processes make
/// one room, and state changes racing on two processes all land (the
/// record's compare-and-swap), each with its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_1_room_state_is_one_across_processes() {
    let redis = RedisServer::start();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let procs: Vec<ParlorProcess> = dirs.iter().map(|d| process(&redis, d, "127.0.0.1:0", NAME, &[])).collect();
    let [a, b] = [&procs[0], &procs[1]].map(|p| Api::new(&p.url));
    let (ann, bob, carl) = (uniq("ann"), uniq("bob"), uniq("carl"));
    let ann_a = token_on(&a, &ann).await;
    let ann_b = token_on(&b, &ann).await;
    let bob_b = token_on(&b, &bob).await;
    let carl_b = token_on(&b, &carl).await;
    let (ann_id, bob_id, carl_id) = (format!("@{ann}:{NAME}"), format!("@{bob}:{NAME}"), format!("@{carl}:{NAME}"));

    // Invited on A, listed and joined on B.
    let (s, v) =
        a.call("POST", "/rooms", Some(&ann_a), Some(json!({"visibility": "private", "invite": [bob_id]}))).await;
    assert_eq!(s, 201, "{v}");
    let private = v["room_id"].as_str().unwrap().to_owned();
    let (_, rooms) = b.call("GET", "/rooms", Some(&bob_b), None).await;
    assert_eq!(rooms["rooms"][0]["membership"], "invite", "{rooms}");
    assert_eq!(b.join(&bob_b, &private).await["room_id"], private.as_str());
    let (s, v) = b.call("POST", &format!("/rooms/{}/join", enc(&private)), Some(&carl_b), None).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_invited")), "{v}");

    // Kicked on A: the subscription on B ends, and B refuses the next send.
    let (s, v) = a.call("POST", "/rooms", Some(&ann_a), Some(json!({}))).await;
    assert_eq!(s, 201, "{v}");
    let public = v["room_id"].as_str().unwrap().to_owned();
    b.join(&carl_b, &public).await;
    let mut ws = WsClient::authed(&procs[1].url, &carl_b).await;
    ws.send(json!({"type": "subscribe", "room": public})).await;
    ws.until("caught_up").await;
    let (s, v) =
        a.call("POST", &format!("/rooms/{}/kick", enc(&public)), Some(&ann_a), Some(json!({"user_id": carl_id}))).await;
    assert_eq!(s, 200, "{v}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = ws.recv_within(left).await.expect("the kicked user's subscription on B ends");
        if f["type"] == "unsubscribed" {
            assert_eq!(f["room_id"], public.as_str(), "{f}");
            break;
        }
    }
    let (s, v) = b.send(&carl_b, &public, "k1", "after the kick").await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_member")), "{v}");

    // Racing DMs of one pair on A and B: one room.
    let dm = |api: Api, token: String, to: String| async move {
        api.call("POST", "/dm", Some(&token), Some(json!({ "user_id": to }))).await
    };
    let bob_a = token_on(&a, &bob).await;
    let ((s1, v1), (s2, v2)) =
        tokio::join!(dm(a.clone(), ann_a.clone(), bob_id.clone()), dm(b.clone(), bob_b.clone(), ann_id.clone()));
    assert_eq!((s1, s2), (200, 200), "{v1} {v2}");
    assert_eq!(v1["room_id"], v2["room_id"], "one room for the pair");
    let (_, again) = dm(a.clone(), bob_a, ann_id.clone()).await;
    assert_eq!(again["room_id"], v1["room_id"]);

    // State changes racing on A and B all land, each with its event.
    let patch = |api: Api, token: String, topic: String| {
        let path = format!("/rooms/{}", enc(&public));
        async move { api.call("PATCH", &path, Some(&token), Some(json!({ "topic": topic }))).await.0 }
    };
    let before = a.messages(&ann_a, &public, "").await.1["latest_seq"].as_u64().unwrap();
    let mut runs = Vec::new();
    for i in 0..10 {
        runs.push(tokio::spawn(patch(a.clone(), ann_a.clone(), format!("a{i}"))));
        runs.push(tokio::spawn(patch(b.clone(), ann_b.clone(), format!("b{i}"))));
    }
    for r in runs {
        assert_eq!(r.await.unwrap(), 200);
    }
    let (_, page) = a.messages(&ann_a, &public, &format!("after={before}")).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 20, "one room event per change: {page}");
    let last_topic = events.last().unwrap()["topic"].clone();
    let (_, rooms) = a.call("GET", "/rooms", Some(&ann_a), None).await;
    let listed = rooms["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == public.as_str()).unwrap();
    assert_eq!(listed["topic"], last_topic, "the record holds the last event's state");
}

/// A room's v1.1 state as its log's events say it: members, roles above
/// `member`, bans (the creator is its first owner).
#[derive(Debug, Default, PartialEq)]
struct Replayed {
    members: BTreeSet<String>,
    roles: BTreeMap<String, String>,
    bans: BTreeSet<String>,
}

/// Reads the whole log of `room` and replays its state events.
async fn replay(api: &Api, token: &str, room: &str, creator: &str, round: &str) -> Replayed {
    let mut st = Replayed::default();
    st.roles.insert(creator.to_owned(), "owner".into());
    let mut after = 0;
    loop {
        let (s, page) = api.messages(token, room, &format!("after={after}&limit=1000")).await;
        assert_eq!(s, 200, "{round}: {page}");
        let events = page["events"].as_array().unwrap();
        for e in events {
            let sender = e["sender"].as_str().unwrap().to_owned();
            let target = e["target"].as_str().map(str::to_owned);
            match e["type"].as_str().unwrap() {
                "join" => {
                    st.members.insert(sender);
                }
                "leave" => {
                    st.members.remove(&sender);
                    st.roles.remove(&sender);
                }
                "kick" | "ban" => {
                    let t = target.unwrap();
                    st.members.remove(&t);
                    st.roles.remove(&t);
                    if e["type"] == "ban" {
                        st.bans.insert(t);
                    }
                }
                "unban" => {
                    st.bans.remove(&target.unwrap());
                }
                "role" => match e["role"].as_str().unwrap() {
                    "member" => {
                        st.roles.remove(&target.unwrap());
                    }
                    r => {
                        st.roles.insert(target.unwrap(), r.to_owned());
                    }
                },
                _ => {}
            }
            after = e["seq"].as_u64().unwrap();
        }
        if events.is_empty() || after >= page["latest_seq"].as_u64().unwrap() {
            return st;
        }
    }
}

/// The state of `room` as served: (member → role, from `members`).
async fn served(api: &Api, token: &str, room: &str) -> BTreeMap<String, String> {
    let (s, m) = api.call("GET", &format!("/rooms/{}/members", enc(room)), Some(token), None).await;
    assert_eq!(s, 200, "members: {m}");
    m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["user_id"].as_str().unwrap().to_owned(), x["role"].as_str().unwrap().to_owned()))
        .collect()
}

/// A user of the state race test: id, and a token on each of the two APIs.
struct Who {
    id: String,
    on: [String; 2],
}

/// The invariants of a room's state after a round of races: the log's
/// replayed state is the record as served (members and their roles, each
/// member's role in `GET /rooms`, a banned user's join refused), no member
/// is banned, and a room with members has an owner.
async fn check_state(apis: &[Api; 2], room: &str, creator: &Who, people: &[&Who], round: &str) {
    // Read by a member who never leaves.
    let reader = people[2];
    let log = replay(&apis[0], &reader.on[0], room, &creator.id, round).await;
    let got = served(&apis[1], &reader.on[1], room).await;
    let want: BTreeMap<String, String> =
        log.members.iter().map(|m| (m.clone(), log.roles.get(m).cloned().unwrap_or_else(|| "member".into()))).collect();
    assert_eq!(got, want, "{round}: members and roles as served = as the log says");
    assert!(log.members.is_disjoint(&log.bans), "{round}: a banned member: {log:?}");
    assert!(want.values().any(|r| r == "owner"), "{round}: no owner left: {want:?}");
    for (i, who) in people.iter().enumerate() {
        let api = &apis[i % 2];
        let (s, rooms) = api.call("GET", "/rooms", Some(&who.on[i % 2]), None).await;
        assert_eq!(s, 200, "{rooms}");
        let listed = rooms["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room).cloned();
        match want.get(&who.id) {
            Some(role) => {
                let listed =
                    listed.unwrap_or_else(|| panic!("{round}: {} is a member but GET /rooms lacks the room", who.id));
                assert_eq!(listed["role"].as_str(), Some(role.as_str()), "{round}: GET /rooms role of {}", who.id);
            }
            None => assert!(
                listed.is_none_or(|r| r["membership"] != "join"),
                "{round}: {} is no member but GET /rooms lists the room as joined",
                who.id
            ),
        }
        if log.bans.contains(&who.id) {
            let (s, v) = api.call("POST", &format!("/rooms/{}/join", enc(room)), Some(&who.on[i % 2]), None).await;
            assert_eq!((s, v["errcode"].as_str()), (403, Some("banned")), "{round}: {} is banned", who.id);
        }
    }
}

/// One request, for `tokio::join!`s of several (which borrow their paths).
async fn go(api: &Api, method: &str, path: String, token: &str, body: Option<Value>) -> (u16, Value) {
    api.call(method, &path, Some(token), body).await
}

/// Two APIs (two processes on one Redis, or twice one process) change one
/// room's state at once, many rounds of each race, and the room log and
/// the record agree after each.
async fn state_races(apis: [Api; 2], users: [Who; 4]) {
    let [ann, dan, bob, eve] = &users;
    let [a, b] = &apis;
    let path = |room: &str, rest: &str| format!("/rooms/{}/{rest}", enc(room));
    let (s, v) = a.call("POST", "/rooms", Some(&ann.on[0]), Some(json!({}))).await;
    assert_eq!(s, 201, "{v}");
    let room = v["room_id"].as_str().unwrap().to_owned();
    for who in [dan, bob] {
        b.join(&who.on[1], &room).await;
    }
    let (s, v) =
        go(a, "PUT", path(&room, &format!("roles/{}", enc(&dan.id))), &ann.on[0], Some(json!({"role": "owner"}))).await;
    assert_eq!(s, 200, "{v}");
    let people = [ann, dan, bob, eve];
    const ROUNDS: usize = 12;

    // Two owners flip one member's role from both sides.
    for i in 0..ROUNDS {
        let role = |n: usize| if n.is_multiple_of(2) { "moderator" } else { "member" };
        let target = format!("roles/{}", enc(&bob.id));
        let (ra, rb, rc, rd) = tokio::join!(
            go(a, "PUT", path(&room, &target), &ann.on[0], Some(json!({"role": role(i)}))),
            go(b, "PUT", path(&room, &target), &dan.on[1], Some(json!({"role": role(i + 1)}))),
            go(b, "PUT", path(&room, &target), &ann.on[1], Some(json!({"role": role(i)}))),
            go(a, "PUT", path(&room, &target), &dan.on[0], Some(json!({"role": role(i + 1)}))),
        );
        for r in [ra, rb, rc, rd] {
            assert_eq!(r.0, 200, "{}", r.1);
        }
        check_state(&apis, &room, ann, &people, &format!("role flips {i}")).await;
    }

    // A ban on A while the target joins on B; then a kick on A while the
    // target leaves and joins again on B.
    for i in 0..ROUNDS {
        let (ban, join) = tokio::join!(
            go(a, "POST", path(&room, "ban"), &ann.on[0], Some(json!({"user_id": eve.id}))),
            go(b, "POST", path(&room, "join"), &eve.on[1], None),
        );
        assert_eq!(ban.0, 200, "{}", ban.1);
        assert!(join.0 == 200 || join.1["errcode"] == "banned", "{}", join.1);
        check_state(&apis, &room, ann, &people, &format!("ban vs join {i}")).await;
        let (s, v) = go(a, "POST", path(&room, "unban"), &dan.on[0], Some(json!({"user_id": eve.id}))).await;
        assert_eq!(s, 200, "{v}");
        b.join(&eve.on[1], &room).await;
        let (kick, (leave, join)) =
            tokio::join!(go(a, "POST", path(&room, "kick"), &ann.on[0], Some(json!({"user_id": eve.id}))), async {
                let leave = go(b, "POST", path(&room, "leave"), &eve.on[1], None).await;
                (leave, go(b, "POST", path(&room, "join"), &eve.on[1], None).await)
            },);
        assert!(kick.0 == 200 || kick.1["errcode"] == "not_member", "{}", kick.1);
        assert!(leave.0 == 200 || leave.1["errcode"] == "not_member", "{}", leave.1);
        assert_eq!(join.0, 200, "{}", join.1);
        check_state(&apis, &room, ann, &people, &format!("kick vs join {i}")).await;
    }

    // Two owners demote each other, demote themselves, or one leaves while
    // the other steps down: one owner is always left.
    for i in 0..ROUNDS {
        let (x, y) = if i.is_multiple_of(2) { (ann, dan) } else { (dan, ann) };
        let role_path = |w: &Who| path(&room, &format!("roles/{}", enc(&w.id)));
        let member = Some(json!({"role": "member"}));
        match i % 3 {
            0 => {
                let _ = tokio::join!(
                    go(a, "PUT", role_path(y), &x.on[0], member.clone()),
                    go(b, "PUT", role_path(x), &y.on[1], member.clone()),
                );
            }
            1 => {
                let _ = tokio::join!(
                    go(a, "PUT", role_path(x), &x.on[0], member.clone()),
                    go(b, "PUT", role_path(y), &y.on[1], member.clone()),
                );
            }
            _ => {
                let _ = tokio::join!(
                    go(a, "POST", path(&room, "leave"), &x.on[0], None),
                    go(b, "PUT", role_path(y), &y.on[1], member.clone()),
                );
            }
        }
        check_state(&apis, &room, ann, &people, &format!("owners {i}")).await;
        // Back to two owners, both members.
        let owners = served(a, &bob.on[0], &room).await;
        let owner = [ann, dan].into_iter().find(|w| owners.get(&w.id).is_some_and(|r| r == "owner")).unwrap();
        for w in [ann, dan] {
            if !owners.contains_key(&w.id) {
                a.join(&w.on[0], &room).await;
            }
            let (s, v) = go(a, "PUT", role_path(w), &owner.on[0], Some(json!({"role": "owner"}))).await;
            assert_eq!(s, 200, "{v}");
        }
    }
    check_state(&apis, &room, ann, &people, "the end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_state_changes_on_two_processes_keep_the_log_and_the_record_one() {
    let redis = RedisServer::start();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let procs: Vec<ParlorProcess> = dirs.iter().map(|d| process(&redis, d, "127.0.0.1:0", NAME, &[])).collect();
    let apis = [&procs[0], &procs[1]].map(|p| Api::new(&p.url));
    let mut users = Vec::new();
    for n in ["ann", "dan", "bob", "eve"] {
        let name = uniq(n);
        let on = [token_on(&apis[0], &name).await, token_on(&apis[1], &name).await];
        users.push(Who { id: format!("@{name}:{NAME}"), on });
    }
    state_races(apis, users.try_into().ok().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_state_changes_on_one_embedded_process_keep_the_log_and_the_record_one() {
    let h = Harness::start(Backend::Embedded).await;
    let api = h.api();
    let mut users = Vec::new();
    for n in ["ann", "dan", "bob", "eve"] {
        let (id, t0) = api.user(&uniq(n)).await;
        let t1 = api.login(id.trim_start_matches('@').split(':').next().unwrap()).await.1;
        users.push(Who { id, on: [t0, t1] });
    }
    state_races([api.clone(), api], users.try_into().ok().unwrap()).await;
}

/// A process that dies between a state change's swap and its event leaves
/// the event pending in the record: the room's next change, on any
/// process, appends it first, so the log still follows the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_event_left_pending_is_appended_before_the_next_change() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let p = process(&redis, &dir, "127.0.0.1:0", NAME, &[]);
    let a = Api::new(&p.url);
    let (ann, bob) = (uniq("ann"), uniq("bob"));
    let (ann_t, bob_t) = (token_on(&a, &ann).await, token_on(&a, &bob).await);
    let (ann_id, bob_id) = (format!("@{ann}:{NAME}"), format!("@{bob}:{NAME}"));
    let (s, v) = a.call("POST", "/rooms", Some(&ann_t), Some(json!({}))).await;
    assert_eq!(s, 201, "{v}");
    let room = v["room_id"].as_str().unwrap().to_owned();
    a.join(&bob_t, &room).await;
    // What a process that died right after its swap leaves: bob made a
    // moderator in the record, the `role` event not appended.
    let key = format!("parlor:{{{room}}}:room");
    let mut rec: Value = serde_json::from_str(&redis.cli(&["GET", &key]).unwrap()).unwrap();
    rec["rev"] = json!(rec["rev"].as_u64().unwrap() + 1);
    rec["roles"][&bob_id] = json!("moderator");
    rec["pending"] = json!({
        "nonce": "died-after-the-swap",
        "kind": "role",
        "sender": ann_id,
        "content": {"target": bob_id, "role": "moderator"},
    });
    assert_eq!(redis.cli(&["SET", &key, &rec.to_string()]).unwrap().trim(), "OK");

    let (s, v) = a.call("PATCH", &format!("/rooms/{}", enc(&room)), Some(&ann_t), Some(json!({"topic": "t"}))).await;
    assert_eq!(s, 200, "{v}");
    let (_, page) = a.messages(&ann_t, &room, "").await;
    let kinds: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(&kinds[kinds.len() - 2..], ["role", "room"], "the pending event first: {page}");
    let role = &page["events"].as_array().unwrap()[kinds.len() - 2];
    assert_eq!((role["target"].as_str(), role["role"].as_str()), (Some(bob_id.as_str()), Some("moderator")));
    let rec: Value = serde_json::from_str(&redis.cli(&["GET", &key]).unwrap()).unwrap();
    assert!(rec.get("pending").is_none(), "settled: {rec}");
    let (_, m) = a.call("GET", &format!("/rooms/{}/members", enc(&room)), Some(&ann_t), None).await;
    let bob_role = m["members"].as_array().unwrap().iter().find(|x| x["user_id"] == bob_id.as_str()).unwrap();
    assert_eq!(bob_role["role"], "moderator", "{m}");
}

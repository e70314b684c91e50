//! Parlor on a Redis Cluster (`--redis-cluster`) when one of its masters
//! goes away: a killed master (SIGKILL; `appendfsync always`) costs only the
//! requests that touch its slots, which answer 503 while it is away, and
//! once it is restarted they work again with nothing that was acknowledged
//! lost; and pub/sub (revocations, which any node serves) and the other
//! feeds go on without it. Real processes on a 3-master cluster of the test's own (testkit's
//! `RedisCluster`); the conformance suite on a cluster is in
//! tests/several_processes.rs.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Api, ParlorProcess, RedisCluster, WsClient, uniq};

/// The room's slot's node (its keys share the `{ROOM}` tag).
fn node_of_room(cluster: &RedisCluster, room_id: &str) -> usize {
    cluster.node_of(&format!("parlor:{{{room_id}}}:meta"))
}

/// Whether the room's feed is on the room's own master: the feed of a room
/// is its slot range's (16 ranges of 1,024 slots, ARCHITECTURE.md § "On a
/// Redis Cluster") and lives in that range, so it is when one master holds
/// the whole range (`redis-cli --cluster create` splits slots in thirds,
/// so two ranges straddle masters).
fn feed_beside_room(cluster: &RedisCluster, room_id: &str) -> bool {
    let range = cluster.slot(&format!("parlor:{{{room_id}}}:meta")) / 1024 * 1024;
    let node = node_of_room(cluster, room_id);
    cluster.node_of_slot(range) == node && cluster.node_of_slot(range + 1023) == node
}

/// The bodies of the room's messages, checking that its seqs have no hole.
async fn bodies(api: &Api, token: &str, room: &str) -> Vec<String> {
    let (s, v) = api.messages(token, room, "after=0&limit=500").await;
    assert_eq!(s, 200, "history of {room}: {v}");
    let events = v["events"].as_array().expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs of {room} without holes: {seqs:?}");
    events.iter().filter_map(|e| e["body"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_away_costs_its_slots_503_and_nothing_acknowledged_is_lost() {
    let mut cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--redis-cluster", &cluster.urls(), "--server-name", "cluster.test", "--rate-limit", "off"];
    let process = ParlorProcess::spawn(dir.path(), &args);
    let api = Api::new(&process.url);
    let (_, token) = api.user(&uniq("ann")).await;

    // The master to stop holds neither the token (every request reads it)
    // nor room `b`, and does hold room `a`; each room's feed is on its own
    // master.
    let token_node = (0..3)
        .find(|&i| {
            cluster.nodes[i].cli(&["--scan", "--pattern", "parlor:token:*"]).is_some_and(|k| !k.trim().is_empty())
        })
        .expect("some node holds the token");
    let away = (token_node + 1) % 3;
    let (mut a, mut b) = (None, None);
    for i in 0..64 {
        if a.is_some() && b.is_some() {
            break;
        }
        let joined = api.join(&token, &format!("#r{i}:cluster.test")).await;
        let room = joined["room_id"].as_str().expect("room_id").to_owned();
        if !feed_beside_room(&cluster, &room) {
            continue;
        }
        match node_of_room(&cluster, &room) == away {
            true if a.is_none() => a = Some(room),
            false if b.is_none() => b = Some(room),
            _ => {}
        }
    }
    let (a, b) = (a.expect("a room on the master to stop"), b.expect("a room elsewhere"));

    let mut acked: Vec<(String, String)> = Vec::new();
    let mut n = 0;
    let mut send = async |room: &str, acked: &mut Vec<(String, String)>| {
        n += 1;
        let body = format!("m{n}");
        let (s, v) = api.send(&token, room, &format!("t{n}"), &body).await;
        if s == 200 {
            acked.push((room.to_owned(), body));
        }
        (s, v)
    };
    for _ in 0..5 {
        for room in [&a, &b] {
            let (s, v) = send(room, &mut acked).await;
            assert_eq!(s, 200, "send before the master stops: {v}");
        }
    }

    // No key is on every send's path: the sends went through several feed
    // streams (one per slot range), on more than one master.
    let feeds: Vec<Vec<String>> = cluster
        .nodes
        .iter()
        .map(|n| {
            let keys = n.cli(&["--scan", "--pattern", "parlor:feed*"]).unwrap_or_default();
            keys.lines().map(str::to_owned).filter(|k| !k.is_empty()).collect()
        })
        .collect();
    let all: Vec<&String> = feeds.iter().flatten().collect();
    assert!(all.len() >= 2 && all.iter().all(|k| k.starts_with("parlor:feed:{")), "feeds: {feeds:?}");
    assert!(feeds.iter().filter(|f| !f.is_empty()).count() >= 2, "feeds on one master only: {feeds:?}");

    cluster.nodes[away].kill();
    // Sends to `a` fail with 503 (the process may take a moment to see it).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = send(&a, &mut acked).await;
        if s == 503 {
            assert_eq!(v["errcode"], "storage_unavailable", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "a send to a room on the stopped master still answers {s}: {v}");
    }
    let (s, v) = api.messages(&token, &a, "limit=10").await;
    assert_eq!(s, 503, "history of a room on the stopped master: {v}");
    // The other master's rooms go on.
    for _ in 0..3 {
        let (s, v) = send(&b, &mut acked).await;
        assert_eq!(s, 200, "send to a room on a master still up: {v}");
    }

    cluster.nodes[away].restart(&RedisCluster::NODE_ARGS);
    cluster.wait_ok(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = send(&a, &mut acked).await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "sends to the restarted master's room still answer {s}: {v}");
        // Poll interval of a wait on a condition (bounded by `deadline`).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for room in [&a, &b] {
        let held = bodies(&api, &token, room).await;
        let mine: Vec<&String> = acked.iter().filter(|(r, _)| r == room).map(|(_, body)| body).collect();
        for body in &mine {
            assert!(held.contains(body), "acknowledged {body} in {room} is lost; the room holds {held:?}");
        }
        assert!(mine.len() >= 6, "{room}: only {} sends were acknowledged", mine.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_first_listed_master_away_other_slots_deliver_live_and_revocations_reach_every_process() {
    let mut cluster = RedisCluster::start();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let args = ["--redis-cluster", &cluster.urls(), "--server-name", "cluster.test", "--rate-limit", "off"];
    let procs: Vec<ParlorProcess> = dirs.iter().map(|d| ParlorProcess::spawn(d.path(), &args)).collect();
    let (a, b) = (Api::new(&procs[0].url), Api::new(&procs[1].url));
    // Node 0 is the first of the --redis-cluster list, where every process
    // subscribes first. The user's keys, token and room are elsewhere.
    let name = loop {
        let name = uniq("ann");
        if cluster.node_of(&format!("parlor:user:{{{name}}}:devices")) != 0 {
            break name;
        }
    };
    assert_eq!(a.register(&name, "zebra-quartz-71").await.0, 201);
    let on_node_0 = || cluster.nodes[0].cli(&["--scan", "--pattern", "parlor:token:*"]).unwrap_or_default();
    let mut token = String::new();
    for _ in 0..32 {
        token = a.login(&name).await.1;
        if on_node_0().trim().is_empty() {
            break;
        }
        let (s, v) = a.call("POST", "/logout", Some(&token), None).await;
        assert_eq!(s, 200, "{v}");
    }
    assert!(on_node_0().trim().is_empty(), "a token off node 0");
    // A room whose slot's whole range of 1,024 (its feed's) is off node 0.
    let mut room = None;
    for i in 0..64 {
        let joined = a.join(&token, &format!("#live{i}:cluster.test")).await;
        let id = joined["room_id"].as_str().expect("room_id").to_owned();
        let slot = cluster.slot(&format!("parlor:{{{id}}}:meta"));
        let (first, last) = (slot / 1024 * 1024, slot / 1024 * 1024 + 1023);
        if cluster.node_of_slot(first) != 0 && cluster.node_of_slot(last) != 0 {
            room = Some(id);
            break;
        }
    }
    let room = room.expect("a room off node 0");

    let mut ws = WsClient::authed(&procs[0].url, &token).await;
    ws.send(json!({"type": "subscribe", "room": room})).await;
    ws.until("caught_up").await;
    cluster.nodes[0].kill();

    // Sent on B, live on A, through a feed on a master still up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let sent = loop {
        let (s, v) = b.send(&token, &room, "t1", "while node 0 is away").await;
        if s == 200 {
            break v;
        }
        assert!(Instant::now() < deadline, "a send to a room off node 0 answers {s}: {v}");
        // Poll interval of a wait on a condition (bounded by `deadline`).
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got = ws.next_message(Duration::from_secs(15)).await;
    assert_eq!((got["body"].as_str(), got["seq"].as_u64()), (Some("while node 0 is away"), sent["seq"].as_u64()));

    // logout/all on B: published through a node that is up, heard by A on
    // its new subscription (or found by its check after subscribing again).
    let (s, v) = b.call("POST", "/logout/all", Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    let code = tokio::time::timeout(Duration::from_secs(15), ws.closed()).await.expect("the WebSocket is closed");
    assert_eq!(code, Some(4001));
}

/// Every key on every master of the cluster whose serialized value holds `needle`.
fn keys_holding(cluster: &RedisCluster, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for node in &cluster.nodes {
        // DUMP's payload is what the node keeps; uncompressed so a body reads as itself.
        node.cli(&["CONFIG", "SET", "rdbcompression", "no"]).expect("config set");
        let keys = node.cli(&["--scan", "--pattern", "parlor:*"]).unwrap_or_default();
        for key in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
            if node.cli(&["DUMP", key]).is_some_and(|d| d.contains(needle)) {
                found.push(key.to_owned());
            }
        }
    }
    found
}

/// A redaction on a cluster erases the body from the room's slot (its log)
/// and from the feed of the room's slot range, whichever master holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_on_a_cluster_leaves_the_body_on_no_master() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--redis-cluster", &cluster.urls(), "--server-name", "cluster.test", "--rate-limit", "off"];
    let process = ParlorProcess::spawn(dir.path(), &args);
    let api = Api::new(&process.url);
    let (_, token) = api.user(&uniq("ann")).await;
    let room = api.join(&token, "#erase:cluster.test").await["room_id"].as_str().expect("room_id").to_owned();

    let secret = "cluster-secret-b0dy";
    let mut secret_id = String::new();
    for i in 0..200 {
        let body = if i == 100 { secret.to_owned() } else { format!("m{i}") };
        let (s, v) = api.send(&token, &room, &format!("t{i}"), &body).await;
        assert_eq!(s, 200, "send {i}: {v}");
        if i == 100 {
            secret_id = v["event_id"].as_str().expect("event_id").to_owned();
        }
    }
    assert!(!keys_holding(&cluster, secret).is_empty(), "the test sees the stored body");

    let path = format!("/rooms/{}/redact/{}/r1", support::enc(&room), support::enc(&secret_id));
    let (s, v) = api.call("PUT", &path, Some(&token), Some(json!({"reason": "oops"}))).await;
    assert_eq!(s, 200, "redact: {v}");
    assert_eq!(keys_holding(&cluster, secret), Vec::<String>::new(), "no master keeps the body");

    let (s, v) = api.messages(&token, &room, "after=0&limit=500").await;
    assert_eq!(s, 200, "{v}");
    let events = v["events"].as_array().expect("events");
    let event = events.iter().find(|e| e["event_id"] == secret_id.as_str()).expect("the redacted event is in history");
    assert_eq!((event["redacted"].as_bool(), event.get("body")), (Some(true), None), "{event}");
    assert_eq!(events.iter().filter(|e| e["redacts"] == secret_id.as_str()).count(), 1, "one redaction event");
}

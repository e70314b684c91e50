//! Parlor on a Redis Cluster (`--redis-cluster`) when one of its masters
//! goes away: a killed master (SIGKILL; `appendfsync always`) costs only the
//! requests that touch its slots, which answer 503 while it is away, and
//! once it is restarted they work again with nothing that was acknowledged
//! lost. Real processes on a 3-master cluster of the test's own (testkit's
//! `RedisCluster`); the conformance suite on a cluster is in
//! tests/several_processes.rs.

mod support;

use std::time::{Duration, Instant};

use support::{Api, ParlorProcess, RedisCluster, uniq};

/// The room's slot's node (its keys share the `{ROOM}` tag).
fn node_of_room(cluster: &RedisCluster, room_id: &str) -> usize {
    cluster.node_of(&format!("parlor:{{{room_id}}}:meta"))
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
    // nor room `b`, and does hold room `a`.
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

//! Parlor on Redis Streams, end to end: two server processes sharing one
//! Redis, concurrent senders on both, lost Redis data (FLUSHALL) becoming a
//! new epoch, a Redis outage failing fast and healing by itself, restarts,
//! and retention. Each test starts its own redis-server (see tests/support).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Api, ParlorProcess, RedisServer, WsClient};

const NAME: &str = "parlor.test";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn serve_args(redis: &RedisServer) -> Vec<String> {
    ["--redis", &redis.url, "--rate-limit", "off", "--server-name", NAME].iter().map(|s| s.to_string()).collect()
}

fn spawn(dir: &Path, args: &[String]) -> ParlorProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ParlorProcess::spawn(dir, &args)
}

/// Two parlor processes on one Redis. Accounts and the room directory live
/// in each process's own sled, so both start from one snapshot: `ann` and
/// `bob`, both in `lobby`, with the same tokens on both processes.
struct Pair {
    redis: RedisServer,
    a: ParlorProcess,
    b: ParlorProcess,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    room: String,
    ann: String,
    bob: String,
}

async fn pair() -> Pair {
    let redis = RedisServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = serve_args(&redis);
    let mut a = spawn(da.path(), &args);
    let api = Api::new(&a.url);
    let (_, ann) = api.user("ann").await;
    let (_, bob) = api.user("bob").await;
    let joined = api.join(&ann, "lobby").await;
    api.join(&bob, "lobby").await;
    let room = joined["room_id"].as_str().unwrap().to_owned();
    assert!(a.terminate().success());
    copy_dir(da.path(), db.path());
    let a = spawn(da.path(), &args);
    let b = spawn(db.path(), &args);
    Pair { redis, a, b, _dirs: (da, db), room, ann, bob }
}

async fn subscribe(c: &mut WsClient, room: &str, since: Option<Value>) -> (Value, Vec<Value>) {
    let mut frame = json!({"type": "subscribe", "room": room});
    if let Some(s) = since {
        frame["since"] = s;
    }
    c.send(frame).await;
    c.until("caught_up").await
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["event"]["seq"].as_u64().unwrap()).collect()
}

/// The next `n` frames, which must all be events.
async fn events(c: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let f = c.recv().await;
        assert_eq!(f["type"], "event", "{f}");
        out.push(f);
    }
    out
}

async fn health(url: &str) -> u16 {
    Api::new(url).raw("GET", "/healthz", None, vec![]).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_one_process_reach_subscribers_of_the_other_once_in_order() {
    let p = pair().await;
    let (api_a, api_b) = (Api::new(&p.a.url), Api::new(&p.b.url));
    let mut bob_on_b = WsClient::authed(&p.b.url, &p.bob).await;
    let (cu, _) = subscribe(&mut bob_on_b, &p.room, None).await;
    let start = cu["seq"].as_u64().unwrap();
    let mut ann_on_a = WsClient::authed(&p.a.url, &p.ann).await;
    subscribe(&mut ann_on_a, &p.room, None).await;

    for n in 0..40 {
        let (s, v) = api_a.send(&p.ann, &p.room, &format!("a{n}"), &format!("from a {n}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["seq"].as_u64(), Some(start + 1 + n));
    }
    let got = events(&mut bob_on_b, 40).await;
    assert_eq!(seqs(&got), (start + 1..=start + 40).collect::<Vec<_>>(), "in order, no holes");
    assert!(got.iter().enumerate().all(|(n, f)| f["event"]["body"] == format!("from a {n}")));
    assert!(got.iter().all(|f| f["event"]["sender"] == format!("@ann:{NAME}")));
    // And the other way round, over the socket.
    bob_on_b.send(json!({"type": "send", "id": "x", "room": p.room, "txn_id": "b0", "body": "from b"})).await;
    let mut seen = events(&mut ann_on_a, 41).await;
    assert_eq!(seqs(&seen), (start + 1..=start + 41).collect::<Vec<_>>());
    assert_eq!(seen.pop().unwrap()["event"]["body"], "from b");
    // Bob gets his ack and his own event (via the feed), in either order.
    let (mut acked, mut own) = (None, Vec::new());
    while acked.is_none() || own.is_empty() {
        let f = bob_on_b.recv().await;
        match f["type"].as_str() {
            Some("ack") => acked = f["seq"].as_u64(),
            Some("event") => own.push(f["event"]["seq"].as_u64().unwrap()),
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!((acked, own), (Some(start + 41), vec![start + 41]));
    // Exactly once: the next frame after all that is the next event, not a repeat.
    api_b.send(&p.bob, &p.room, "b1", "last").await;
    for c in [&mut ann_on_a, &mut bob_on_b] {
        let f = c.recv().await;
        assert_eq!((f["event"]["seq"].as_u64(), f["event"]["body"].as_str()), (Some(start + 42), Some("last")));
    }
    // Both processes serve the same history.
    let (_, ha) = api_a.messages(&p.ann, &p.room, "limit=100").await;
    let (_, hb) = api_b.messages(&p.bob, &p.room, "limit=100").await;
    assert_eq!(ha, hb);
    assert_eq!(ha["latest_seq"].as_u64(), Some(start + 42));
    drop(p.redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_on_both_processes_keep_seq_contiguous() {
    let p = pair().await;
    let mut watcher = WsClient::authed(&p.b.url, &p.bob).await;
    let (cu, _) = subscribe(&mut watcher, &p.room, None).await;
    let start = cu["seq"].as_u64().unwrap();
    const PER: u64 = 150;
    let mut tasks = Vec::new();
    for (url, token, tag) in [(&p.a.url, &p.ann, "a"), (&p.b.url, &p.bob, "b")] {
        for n in 0..PER {
            let api = Api::new(url);
            let (token, room) = (token.clone(), p.room.clone());
            tasks.push(tokio::spawn(async move {
                let (s, v) = api.send(&token, &room, &format!("{tag}{n}"), &format!("{tag}{n}")).await;
                assert_eq!(s, 200, "{v}");
                (v["seq"].as_u64().unwrap(), v["event_id"].as_str().unwrap().to_owned())
            }));
        }
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    let mut got: Vec<u64> = acks.iter().map(|(s, _)| *s).collect();
    got.sort_unstable();
    assert_eq!(got, (start + 1..=start + 2 * PER).collect::<Vec<_>>(), "contiguous, no duplicates");
    let live = events(&mut watcher, 2 * PER as usize).await;
    assert_eq!(seqs(&live), (start + 1..=start + 2 * PER).collect::<Vec<_>>());
    // History agrees with the acks: each event once, under its acked seq and id.
    let (_, page) = Api::new(&p.a.url).messages(&p.ann, &p.room, &format!("after={start}&limit=1000")).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, 2 * PER);
    for (seq, id) in &acks {
        let e = &events[(seq - start - 1) as usize];
        assert_eq!((e["seq"].as_u64(), e["event_id"].as_str()), (Some(*seq), Some(id.as_str())));
    }
    let mut bodies: Vec<&str> = events.iter().map(|e| e["body"].as_str().unwrap()).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len() as u64, 2 * PER);
}

/// Redis loses a room's log (e.g. a partial restore): its keys, not the
/// rest. (A FLUSHALL would take the accounts and the directory with it:
/// with --redis they live in the same Redis, whose backups hold them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_room_log_starts_a_new_epoch_and_resuming_clients_get_a_gap() {
    let p = pair().await;
    let (api_a, api_b) = (Api::new(&p.a.url), Api::new(&p.b.url));
    for n in 0..3 {
        api_a.send(&p.ann, &p.room, &format!("old{n}"), &format!("old {n}")).await;
    }
    let (_, page) = api_a.messages(&p.ann, &p.room, "limit=100").await;
    let old_epoch = page["epoch"].as_str().unwrap().to_owned();
    let old_last = page["latest_seq"].as_u64().unwrap();
    let old_ids: Vec<String> =
        page["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().into()).collect();
    // A live subscriber on the other process, across the loss.
    let mut live = WsClient::authed(&p.b.url, &p.bob).await;
    subscribe(&mut live, &p.room, None).await;

    let tag = format!("parlor:{{{}}}", p.room);
    let mut lost = vec![format!("{tag}:meta"), format!("{tag}:log")];
    let txns = p.redis.cli(&["--scan", "--pattern", &format!("{tag}:txn:*")]).unwrap();
    lost.extend(txns.lines().map(str::to_owned));
    let mut del = vec!["DEL"];
    del.extend(lost.iter().map(String::as_str));
    assert!(p.redis.cli(&del).unwrap().trim().parse::<usize>().unwrap() >= 2, "the room log's keys were there");

    // A client resuming from the old epoch is told, never skipped silently.
    let mut resumer = WsClient::authed(&p.a.url, &p.ann).await;
    resumer.send(json!({"type": "subscribe", "room": p.room, "since": {"epoch": old_epoch, "seq": old_last}})).await;
    let gap = resumer.recv().await;
    assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("epoch_changed")), "{gap}");
    assert_eq!(gap["from"], json!({"epoch": old_epoch, "seq": old_last}));
    let new_epoch = gap["to"]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(gap["to"]["seq"], 0);
    let (cu, before) = resumer.until("caught_up").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!((cu["epoch"].as_str(), cu["seq"].as_u64()), (Some(new_epoch.as_str()), Some(0)));

    // The next send starts the new epoch at 1; no event id is reused.
    let (s, v) = api_b.send(&p.bob, &p.room, "new0", "new 0").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(1)), "{v}");
    assert!(!old_ids.contains(&v["event_id"].as_str().unwrap().to_owned()));
    let f = resumer.recv().await;
    assert_eq!((f["epoch"].as_str(), f["event"]["seq"].as_u64()), (Some(new_epoch.as_str()), Some(1)));
    // The live subscriber gets the epoch change as a gap, then the new event.
    let gap = live.recv().await;
    assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("epoch_changed")), "{gap}");
    assert_eq!(gap["from"]["epoch"], old_epoch.as_str());
    assert_eq!(gap["to"]["epoch"], new_epoch.as_str());
    let f = live.recv().await;
    assert_eq!(
        (f["epoch"].as_str(), f["event"]["seq"].as_u64(), f["event"]["body"].as_str()),
        (Some(new_epoch.as_str()), Some(1), Some("new 0"))
    );
    let (_, page) = api_a.messages(&p.ann, &p.room, "limit=100").await;
    assert_eq!(page["epoch"], new_epoch.as_str());
    assert_eq!(seqs(&page["events"].as_array().unwrap().iter().map(|e| json!({"event": e})).collect::<Vec<_>>()), [1]);
    // A transaction id used before the loss starts afresh in the new epoch.
    let (s, v) = api_a.send(&p.ann, &p.room, "old0", "old 0").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(2)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_fast_and_heals_without_losing_acknowledged_events() {
    let aof = ["--appendonly", "yes", "--appendfsync", "always"];
    let mut redis = RedisServer::start_with(&aof);
    let dir = tempfile::tempdir().unwrap();
    let parlor = spawn(dir.path(), &serve_args(&redis));
    let api = Api::new(&parlor.url);
    let (_, ann) = api.user("ann").await;
    let (_, bob) = api.user("bob").await;
    let room = api.join(&ann, "ops").await["room_id"].as_str().unwrap().to_owned();
    api.join(&bob, "ops").await;
    let mut sub = WsClient::authed(&parlor.url, &bob).await;
    let (cu, _) = subscribe(&mut sub, &room, None).await;
    let epoch = cu["epoch"].as_str().unwrap().to_owned();
    let mut acked = Vec::new();
    for n in 0..3 {
        let (s, v) = api.send(&ann, &room, &format!("pre{n}"), &format!("pre {n}")).await;
        assert_eq!(s, 200);
        acked.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs(&events(&mut sub, 3).await), acked);

    // Connected before the outage: with --redis the tokens live in that
    // Redis too, so a new connection could not be authenticated during it.
    let mut ws_sender = WsClient::authed(&parlor.url, &ann).await;
    redis.kill();
    for n in 0..3 {
        let t = Instant::now();
        let (s, v) = api.send(&ann, &room, &format!("down{n}"), "during the outage").await;
        let took = t.elapsed();
        assert_eq!((s, v["errcode"].as_str()), (503, Some("storage_unavailable")), "{v}");
        eprintln!("send during the outage failed in {took:?}");
        assert!(took < Duration::from_secs(1), "a send during the outage took {took:?}");
        ws_sender
            .send(json!({"type": "send", "id": "w", "room": room, "txn_id": format!("wdown{n}"), "body": "x"}))
            .await;
        let e = ws_sender.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["errcode"].as_str(), e["id"].as_str()),
            (Some("error"), Some("storage_unavailable"), Some("w"))
        );
    }
    assert_eq!(health(&parlor.url).await, 503);

    redis.restart(&aof);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&parlor.url).await != 200 {
        assert!(Instant::now() < deadline, "parlor did not reconnect to redis by itself");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same txn id as a failed send: it was not written, so it is new now.
    // /healthz speaks for the room log; the account store's own connection
    // comes back on its next use, so a client may still meet a 503 or two,
    // and retries as the spec says (same txn_id).
    let retry_until = Instant::now() + Duration::from_secs(10);
    let (s, v) = loop {
        let (s, v) = api.send(&ann, &room, "down0", "after the outage").await;
        if s != 503 || Instant::now() > retry_until {
            break (s, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["seq"].as_u64(), Some(acked[2] + 1), "nothing from the outage was half-written");
    // The subscriber that stayed connected carries on without a gap.
    let f = sub.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["epoch"].as_str(), f["event"]["seq"].as_u64()),
        (Some("event"), Some(epoch.as_str()), Some(acked[2] + 1)),
        "{f}"
    );
    // A client resuming from the start gets every acknowledged event.
    let mut late = WsClient::authed(&parlor.url, &bob).await;
    let (cu, replayed) = subscribe(&mut late, &room, Some(json!({"epoch": epoch, "seq": 0}))).await;
    let bodies: Vec<&str> = replayed.iter().filter_map(|f| f["event"]["body"].as_str()).collect();
    assert_eq!(bodies, ["pre 0", "pre 1", "pre 2", "after the outage"]);
    assert_eq!(seqs(&replayed), (1..=acked[2] + 1).collect::<Vec<_>>());
    assert_eq!(cu["epoch"], epoch.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_parlor_restart() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(&redis);
    let mut first = spawn(dir.path(), &args);
    let api = Api::new(&first.url);
    let (_, ann) = api.user("ann").await;
    let room = api.join(&ann, "keep").await["room_id"].as_str().unwrap().to_owned();
    for n in 0..5 {
        api.send(&ann, &room, &format!("k{n}"), &format!("keep {n}")).await;
    }
    let (_, before) = api.messages(&ann, &room, "limit=100").await;
    assert!(first.terminate().success());

    let second = spawn(dir.path(), &args);
    let api = Api::new(&second.url);
    let (_, after) = api.messages(&ann, &room, "limit=100").await;
    assert_eq!(after, before, "same epoch, same events");
    // Idempotency survives too, and seqs go on.
    let (s, v) = api.send(&ann, &room, "k4", "keep 4").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(6)), "{v}");
    let (s, v) = api.send(&ann, &room, "k5", "keep 5").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(7)), "{v}");
    let mut c = WsClient::authed(&second.url, &ann).await;
    let (cu, replayed) = subscribe(&mut c, &room, Some(json!({"epoch": before["epoch"], "seq": 4}))).await;
    assert_eq!(seqs(&replayed), [5, 6, 7]);
    assert_eq!(cu["epoch"], before["epoch"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_is_reported_as_a_gap() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut args = serve_args(&redis);
    args.extend(["--retention".to_string(), "10".to_string()]);
    let parlor = spawn(dir.path(), &args);
    let api = Api::new(&parlor.url);
    let (_, ann) = api.user("ann").await;
    let room = api.join(&ann, "short").await["room_id"].as_str().unwrap().to_owned();
    for n in 0..30 {
        api.send(&ann, &room, &format!("t{n}"), &format!("m{n}")).await;
    }
    let (_, page) = api.messages(&ann, &room, "limit=100").await;
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    assert_eq!((page["earliest_seq"].as_u64(), page["latest_seq"].as_u64()), (Some(22), Some(31)), "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 10);
    let mut c = WsClient::authed(&parlor.url, &ann).await;
    c.send(json!({"type": "subscribe", "room": room, "since": {"epoch": epoch, "seq": 3}})).await;
    let gap = c.recv().await;
    assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("trimmed")), "{gap}");
    assert_eq!(gap["from"], json!({"epoch": epoch, "seq": 3}));
    assert_eq!(gap["to"], json!({"epoch": epoch, "seq": 21}));
    let (cu, replayed) = c.until("caught_up").await;
    assert_eq!(seqs(&replayed), (22..=31).collect::<Vec<_>>());
    assert_eq!(cu["seq"], 31);
    assert_eq!(
        redis.cli(&["XLEN", &format!("parlor:{{{room}}}:log")]).unwrap().trim(),
        "10",
        "Redis keeps no more than that"
    );
}

/// An event that never came through the feed (the feed was trimmed past a
/// process that fell behind, or its entry was lost) still reaches the
/// subscriber, in order: the next event shows the hole, and the session
/// fills it from the room stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_missing_from_the_feed_is_filled_from_the_room_stream() {
    let h = support::Harness::start(support::Backend::Redis).await;
    let redis = h.redis.as_ref().unwrap();
    let api = h.api();
    let (ann_id, ann) = api.user(&support::uniq("ann")).await;
    let room = api.join(&ann, &support::uniq("holes")).await["room_id"].as_str().unwrap().to_owned();
    let mut sub = WsClient::authed(h.url(), &ann).await;
    let (cu, _) = subscribe(&mut sub, &room, None).await;
    let n = cu["seq"].as_u64().unwrap();
    // What the append script does, minus the feed entry.
    let (meta, log) = (format!("parlor:{{{room}}}:meta"), format!("parlor:{{{room}}}:log"));
    let id = format!("{}-0", n + 1);
    let ts = "1700000000000";
    redis.cli(&["XADD", &log, &id, "t", "message", "s", &ann_id, "b", "not on the feed", "ts", ts]).unwrap();
    redis.cli(&["HSET", &meta, "seq", &(n + 1).to_string()]).unwrap();
    let (s, v) = api.send(&ann, &room, "after", "on the feed").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(n + 2)), "{v}");
    let got = events(&mut sub, 2).await;
    assert_eq!(seqs(&got), [n + 1, n + 2]);
    assert_eq!(got[0]["event"]["body"], "not on the feed");
    assert_eq!(got[1]["event"]["body"], "on the feed");
    // Nothing more: the next frame is the next event.
    api.send(&ann, &room, "last", "last").await;
    assert_eq!(sub.recv().await["event"]["seq"].as_u64(), Some(n + 3));
}

const AOF_ALWAYS: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "always"];
const AOF_EVERYSEC: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "everysec"];

/// A copy of Redis's AOF directory as it is now. Redis writes the AOF before
/// it answers (and with `always` syncs it), so with no send in flight the
/// copy holds every acknowledged write: restoring it later is a Redis that
/// lost everything written after this point (a restore from backup, or a
/// host crash under `everysec`).
fn aof_copy(redis: &RedisServer) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&redis.dir.path().join("appendonlydir"), copy.path());
    copy
}

/// Stops Redis, puts `copy` back as its AOF and starts it again with `args`.
fn restore_aof(redis: &mut RedisServer, copy: &tempfile::TempDir, args: &[&str]) {
    redis.kill();
    let aof = redis.dir.path().join("appendonlydir");
    std::fs::remove_dir_all(&aof).unwrap();
    copy_dir(copy.path(), &aof);
    redis.restart(args);
}

/// Sends until the room's last seq is `last`; returns the bodies sent by seq.
async fn send_until(api: &Api, token: &str, room: &str, tag: &str, last: u64) -> Vec<(u64, String)> {
    let mut sent = Vec::new();
    loop {
        let body = format!("{tag} {}", sent.len());
        let (s, v) = api.send(token, room, &format!("{tag}{}", sent.len()), &body).await;
        assert_eq!(s, 200, "{v}");
        let seq = v["seq"].as_u64().unwrap();
        sent.push((seq, body));
        if seq >= last {
            assert_eq!(seq, last);
            return sent;
        }
    }
}

/// Retries a request that may meet Redis's restart (503) until it answers otherwise.
async fn once_up(api: &Api, token: &str, room: &str, txn: &str, body: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = api.send(token, room, txn, body).await;
        if s != 503 || Instant::now() > deadline {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a history page says, as (seq, body) pairs.
fn bodies(page: &Value) -> Vec<(u64, String)> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| (e["seq"].as_u64().unwrap(), e["body"].as_str().unwrap().to_owned()))
        .collect()
}

/// Issue 11 #1: Redis comes back from an AOF that holds the first 51
/// events while the server keeps running. The room starts a new epoch, and
/// the 51 events Redis still has are kept, readable as the old epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_rollback_keeps_what_redis_still_holds_as_the_old_epoch() {
    let mut redis = RedisServer::start_with(&AOF_ALWAYS);
    let dir = tempfile::tempdir().unwrap();
    let parlor = spawn(dir.path(), &serve_args(&redis));
    let api = Api::new(&parlor.url);
    let (_, ann) = api.user("ann").await;
    let room = api.join(&ann, "rollback").await["room_id"].as_str().unwrap().to_owned();
    let kept = send_until(&api, &ann, &room, "kept", 51).await;
    let copy = aof_copy(&redis);
    let lost = send_until(&api, &ann, &room, "lost", 100).await;
    let (_, before) = api.messages(&ann, &room, "limit=1000").await;
    let old_epoch = before["epoch"].as_str().unwrap().to_owned();
    let old_ids: Vec<Value> =
        before["events"].as_array().unwrap()[..51].iter().map(|e| e["event_id"].clone()).collect();

    restore_aof(&mut redis, &copy, &AOF_ALWAYS);
    let (s, v) = once_up(&api, &ann, &room, "after", "after the rollback").await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(1)), "a new epoch, from 1: {v}");
    // Nothing Redis held was deleted: the room's streams hold the 51 and the new one.
    let keys = redis.cli(&["--scan", "--pattern", &format!("parlor:{{{room}}}:*")]).unwrap();
    let streams = keys.lines().filter(|k| redis.cli(&["TYPE", k]).unwrap().trim() == "stream");
    let held: u64 = streams.map(|k| redis.cli(&["XLEN", k]).unwrap().trim().parse::<u64>().unwrap()).sum();
    assert_eq!(held, 51 + 1, "the room's events in Redis after the new epoch started");

    let (s, now) = api.messages(&ann, &room, "limit=1000").await;
    assert_eq!(s, 200, "{now}");
    assert_ne!(now["epoch"], old_epoch.as_str());
    assert_eq!(bodies(&now), [(1, "after the rollback".to_owned())]);
    // What Redis still held of the old epoch is kept and readable.
    let (s, old) = api.messages(&ann, &room, &format!("epoch={old_epoch}&limit=1000")).await;
    assert_eq!(s, 200, "the old epoch's events must still be readable: {old}");
    assert_eq!(old["epoch"], old_epoch.as_str());
    assert_eq!((old["earliest_seq"].as_u64(), old["latest_seq"].as_u64()), (Some(1), Some(51)), "{old}");
    assert_eq!(bodies(&old), kept, "every event Redis still had, none it lost");
    let ids: Vec<Value> = old["events"].as_array().unwrap().iter().map(|e| e["event_id"].clone()).collect();
    assert_eq!(ids, old_ids, "with the ids clients saw");
    let (_, page) = api.messages(&ann, &room, &format!("epoch={old_epoch}&after=40&limit=5")).await;
    assert_eq!(bodies(&page), kept[39..44], "paged like the current epoch");
    assert!(lost.iter().all(|l| !bodies(&old).contains(l)));
    // A client resuming from the old epoch is told, and can fetch what was kept.
    let mut c = WsClient::authed(&parlor.url, &ann).await;
    c.send(json!({"type": "subscribe", "room": room, "since": {"epoch": old_epoch, "seq": 60}})).await;
    let gap = c.recv().await;
    assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("epoch_changed")), "{gap}");
    assert_eq!(gap["to"]["epoch"], now["epoch"]);
    let (s, v) = api.messages(&ann, &room, "epoch=no-such-epoch").await;
    assert_eq!((s, v["errcode"].as_str()), (404, Some("epoch_not_found")), "{v}");
}

/// Issue 11 #2: the same restore, with the server killed and restarted too
/// (a host crash under `appendfsync everysec` takes both). Seqs 52–56 were
/// handed out and Redis lost them: they must never be handed out again with
/// other events under the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_with_the_server_restarted_never_reissues_a_seq() {
    let mut redis = RedisServer::start_with(&AOF_EVERYSEC);
    let dir = tempfile::tempdir().unwrap();
    let mut parlor = spawn(dir.path(), &serve_args(&redis));
    let api = Api::new(&parlor.url);
    let (_, ann) = api.user("ann").await;
    let room = api.join(&ann, "crash").await["room_id"].as_str().unwrap().to_owned();
    let kept = send_until(&api, &ann, &room, "kept", 51).await;
    let copy = aof_copy(&redis);
    send_until(&api, &ann, &room, "lost", 56).await;
    let (_, before) = api.messages(&ann, &room, "limit=1").await;
    let old_epoch = before["epoch"].as_str().unwrap().to_owned();
    // The machine goes down: the server is killed, Redis comes back older.
    let _ = parlor.child.kill();
    let _ = parlor.child.wait();
    restore_aof(&mut redis, &copy, &AOF_EVERYSEC);
    let parlor = spawn(dir.path(), &serve_args(&redis));
    let api = Api::new(&parlor.url);

    let mut c = WsClient::authed(&parlor.url, &ann).await;
    c.send(json!({"type": "subscribe", "room": room, "since": {"epoch": old_epoch, "seq": 53}})).await;
    let first = c.recv().await;
    assert_eq!(
        (first["type"].as_str(), first["reason"].as_str()),
        (Some("gap"), Some("epoch_changed")),
        "a client at seq 53 of the old epoch must not get another seq 54: {first}"
    );
    let (s, v) = api.send(&ann, &room, "again", "after the crash").await;
    assert_eq!(s, 200, "{v}");
    let (_, now) = api.messages(&ann, &room, "limit=100").await;
    assert_ne!(now["epoch"], old_epoch.as_str(), "seq {} would reuse the old epoch", v["seq"]);
    assert_eq!((v["seq"].as_u64(), bodies(&now)), (Some(1), vec![(1, "after the crash".to_owned())]));
    let (s, old) = api.messages(&ann, &room, &format!("epoch={old_epoch}&limit=100")).await;
    assert_eq!(s, 200, "{old}");
    assert_eq!(bodies(&old), kept);
}

/// Issue 11 #2, several processes: only process B is up after the crash,
/// and it never sent to the room — but it handed the lost events to its own
/// subscriber, so it must not hand their seqs out again either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_only_delivered_the_lost_events_does_not_reissue_them() {
    let mut redis = RedisServer::start_with(&AOF_EVERYSEC);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = serve_args(&redis);
    let mut a = spawn(da.path(), &args);
    let api_a = Api::new(&a.url);
    let (_, ann) = api_a.user("ann").await;
    let (_, bob) = api_a.user("bob").await;
    let room = api_a.join(&ann, "lobby").await["room_id"].as_str().unwrap().to_owned();
    api_a.join(&bob, "lobby").await;
    assert!(a.terminate().success());
    copy_dir(da.path(), db.path());
    let mut a = spawn(da.path(), &args);
    let mut b = spawn(db.path(), &args);
    let api_a = Api::new(&a.url);

    send_until(&api_a, &ann, &room, "kept", 51).await;
    let copy = aof_copy(&redis);
    let mut bob_on_b = WsClient::authed(&b.url, &bob).await;
    let (cu, _) = subscribe(&mut bob_on_b, &room, None).await;
    let old_epoch = cu["epoch"].as_str().unwrap().to_owned();
    send_until(&api_a, &ann, &room, "lost", 60).await;
    let seen = events(&mut bob_on_b, 9).await;
    assert_eq!(seqs(&seen), (52..=60).collect::<Vec<_>>(), "B handed 52–60 to its subscriber");

    for p in [&mut a, &mut b] {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    restore_aof(&mut redis, &copy, &AOF_EVERYSEC);
    let b = spawn(db.path(), &args);
    let (s, v) = Api::new(&b.url).send(&bob, &room, "b0", "from b").await;
    assert_eq!(s, 200, "{v}");
    let (_, now) = Api::new(&b.url).messages(&bob, &room, "limit=10").await;
    assert_ne!(now["epoch"], old_epoch.as_str(), "seq {} would be handed out twice under the old epoch", v["seq"]);
    assert_eq!(v["seq"].as_u64(), Some(1));
}

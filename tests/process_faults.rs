//! One of three `parlor serve` processes on one Redis dies (SIGKILL), or is
//! stopped (SIGTERM, as for an upgrade), while senders and subscribers run
//! through a real nginx (`contrib/nginx.conf`, round-robin over the three):
//! no acknowledged message is lost or stored twice, and every subscriber
//! whose WebSocket was on that process reconnects through nginx to another
//! process and resumes from its cursor without a gap or a duplicate.
//!
//! What the client does is what the spec tells one to do: a send that got
//! no answer (nginx's 502 when the process died holding it) is sent again
//! with the same `txn_id` (§7: idempotent, and the memory is in Redis, so
//! another process answers with the same `{event_id, seq}`); a WebSocket
//! that ends resubscribes with `since` = the last event it saw (§8).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Api, ParlorProcess, RedisServer, WsClient, free_port, nginx, uniq};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const PROCESSES: usize = 3;
/// A multiple of [`PROCESSES`]: connected one after another through the
/// round-robin, the same number lands on each process.
const SUBSCRIBERS: usize = 6;
/// Senders over HTTP, one request at a time each.
const HTTP_SENDERS: usize = 3;
/// Senders over a WebSocket of their own (a multiple of [`PROCESSES`], as
/// for subscribers), one `send` frame at a time each.
const WS_SENDERS: usize = 3;
const SENDERS: usize = HTTP_SENDERS + WS_SENDERS;
const PER_SENDER: usize = 100;
/// The victim dies once this many sends were acknowledged.
const KILL_AFTER_ACKS: u64 = (SENDERS * PER_SENDER / 3) as u64;

/// What one subscriber saw, over all its connections.
#[derive(Default)]
struct Seen {
    /// `(seq, event_id)` of every event, in arrival order.
    events: Vec<(u64, String)>,
    /// Connections that ended under it (it reconnected after each).
    reconnects: u32,
    /// `gap` frames (must be none: nothing is trimmed here).
    gaps: Vec<Value>,
}

impl Seen {
    /// Notes one frame; `last` follows the events.
    fn take(&mut self, v: &Value, epoch: &str, last: &mut u64) {
        match v["type"].as_str() {
            Some("event") => {
                let seq = v["event"]["seq"].as_u64().unwrap();
                self.events.push((seq, v["event"]["event_id"].as_str().unwrap().to_owned()));
                *last = (*last).max(seq);
            }
            Some("gap") => self.gaps.push(v.clone()),
            Some("caught_up") => assert_eq!(v["epoch"], epoch, "{v}"),
            Some("error") => panic!("subscriber: {v}"),
            _ => {}
        }
    }
}

/// One send, retried with the same `txn_id` until a process acknowledges it.
async fn send_until_acked(api: &Api, token: &str, room: &str, txn: &str, body: &str) -> (String, u64, u32) {
    for attempt in 0..200 {
        let (status, v) = api.send(token, room, txn, body).await;
        match status {
            200 => return (v["event_id"].as_str().unwrap().to_owned(), v["seq"].as_u64().unwrap(), attempt),
            // nginx had no live answer for it (the process died holding it),
            // or the process was stopping: the same transaction again.
            502..=504 => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => panic!("send {txn}: {status} {v}"),
        }
    }
    panic!("send {txn} was never acknowledged");
}

/// Sends `PER_SENDER` messages as `send` frames on one WebSocket, each after
/// the previous one's `ack`. When the connection ends, it reconnects through
/// nginx and sends the unacknowledged frame again, same `txn_id`. Returns
/// `(body, event_id, seq)` of each send, how many frames were sent again,
/// and how many times the connection ended.
async fn ws_sender(
    base: String,
    token: String,
    room: String,
    s: usize,
    mut ws: WsClient,
    acked: Arc<AtomicU64>,
) -> (Vec<(String, String, u64)>, u32, u32) {
    let (mut mine, mut resent, mut reconnects) = (Vec::new(), 0, 0);
    for i in 0..PER_SENDER {
        let (txn, body) = (format!("s{s}m{i}"), format!("sender {s} message {i}"));
        let frame = json!({"type": "send", "id": txn, "room": room, "txn_id": txn, "body": body});
        ws.send(frame.clone()).await;
        let ack = loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), ws.ws.next()).await.expect("an ack within 20 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == txn.as_str() {
                        assert_eq!(v["type"], "ack", "send {txn}: {v}");
                        break v;
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    reconnects += 1;
                    resent += 1;
                    ws = WsClient::authed(&base, &token).await;
                    ws.send(frame.clone()).await;
                }
            }
        };
        acked.fetch_add(1, Ordering::SeqCst);
        mine.push((body, ack["event_id"].as_str().unwrap().to_owned(), ack["seq"].as_u64().unwrap()));
    }
    (mine, resent, reconnects)
}

/// Reads one subscriber's events until it has seen `target` (set once every
/// send is acknowledged), reconnecting through nginx with `since` whenever
/// its connection ends.
async fn subscribe(
    base: String,
    token: String,
    room: String,
    mut ws: WsClient,
    cursor: (String, u64),
    mut target: watch::Receiver<u64>,
) -> Seen {
    let mut seen = Seen::default();
    let (epoch, mut last) = cursor;
    loop {
        let done = *target.borrow() <= last;
        if done {
            return seen;
        }
        let msg = tokio::select! {
            m = ws.ws.next() => m,
            _ = target.changed() => continue,
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("subscriber at seq {last}: nothing for 20 s"),
        };
        match msg {
            Some(Ok(Message::Text(t))) => seen.take(&serde_json::from_str(&t).unwrap(), &epoch, &mut last),
            Some(Ok(_)) => {}
            // The connection ended (its process died under nginx): resume
            // from the last event seen, through nginx again.
            None | Some(Err(_)) => {
                seen.reconnects += 1;
                let (again, (now_epoch, _), replayed) =
                    connect_subscribed(&base, &token, &room, Some((&epoch, last))).await;
                assert_eq!(now_epoch, epoch, "the room's epoch changed");
                for v in &replayed {
                    seen.take(v, &epoch, &mut last);
                }
                ws = again;
            }
        }
    }
}

/// A WebSocket through nginx, authenticated and subscribed to `room` (from
/// `since` when given); returns it with the `caught_up` cursor. Frames that
/// arrive before `caught_up` are replayed events, kept in the returned list.
async fn connect_subscribed(
    base: &str,
    token: &str,
    room: &str,
    since: Option<(&str, u64)>,
) -> (WsClient, (String, u64), Vec<Value>) {
    let mut ws = WsClient::authed(base, token).await;
    let mut sub = json!({"type": "subscribe", "room": room});
    if let Some((epoch, seq)) = since {
        sub["since"] = json!({"epoch": epoch, "seq": seq});
    }
    ws.send(sub).await;
    let (caught, before) = ws.until("caught_up").await;
    let cursor = (caught["epoch"].as_str().unwrap().to_owned(), caught["seq"].as_u64().unwrap());
    (ws, cursor, before)
}

/// How the victim goes.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL: no goodbye to nginx, to Redis or to its clients.
    Kill,
    /// SIGTERM: WebSockets closed with 1001, in-flight requests finished.
    Terminate,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_processes_mid_run() {
    one_of_three_stops_mid_run(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_one_of_three_processes_mid_run() {
    one_of_three_stops_mid_run(Stop::Terminate).await;
}

async fn one_of_three_stops_mid_run(how: Stop) {
    // Durable acks mean durable in Redis too: every write fsynced.
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server_name = listen.to_string();
    let mut processes: Vec<ParlorProcess> = (0..PROCESSES)
        .map(|i| {
            let args = [
                "--rate-limit",
                "off",
                "--redis",
                &redis.url,
                "--server-name",
                &server_name,
                "--trusted-proxy",
                "127.0.0.1/32",
            ];
            ParlorProcess::spawn(&dir.path().join(format!("p{i}")), &args)
        })
        .collect();
    let upstreams: Vec<SocketAddr> = processes.iter().map(|p| p.addr).collect();
    let nginx = nginx::run(&dir.path().join("nginx"), &nginx::plain_site(&upstreams, listen), listen);
    let base = format!("http://{listen}");
    let api = Api::new(&base);

    // Every user joins before anyone subscribes, so that everything after
    // the subscribers' cursor is a message.
    let room = format!("#{}:{server_name}", uniq("faults"));
    let mut tokens = Vec::new();
    for _ in 0..SUBSCRIBERS.max(SENDERS) {
        let (_, token) = api.user(&uniq("fu")).await;
        api.join(&token, &room).await;
        tokens.push(token);
    }

    // One subscriber after another, with nothing else in between: nginx's
    // round-robin puts SUBSCRIBERS / PROCESSES of them on each process.
    let (target_tx, target_rx) = watch::channel(u64::MAX);
    let mut subscribers = Vec::new();
    for token in tokens.iter().take(SUBSCRIBERS) {
        let (ws, cursor, before) = connect_subscribed(&base, token, &room, None).await;
        assert!(before.is_empty(), "a subscription without since replays nothing: {before:?}");
        let start = cursor.1;
        let task = tokio::spawn(subscribe(base.clone(), token.clone(), room.clone(), ws, cursor, target_rx.clone()));
        subscribers.push((start, task));
    }

    // Senders through nginx, each one send at a time (so its own messages
    // must get increasing seqs): first the WebSocket ones, connected one
    // after another (one on each process), then the HTTP ones.
    let acked = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (s, token) in tokens.iter().enumerate().take(SENDERS).skip(HTTP_SENDERS) {
        let ws = WsClient::authed(&base, token).await;
        let (base, token, room, acked) = (base.clone(), token.clone(), room.clone(), acked.clone());
        senders.push(tokio::spawn(ws_sender(base, token, room, s, ws, acked)));
    }
    senders.extend((0..HTTP_SENDERS).map(|s| {
        let (api, token, room, acked) = (api.clone(), tokens[s].clone(), room.clone(), acked.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut retried = 0;
            for i in 0..PER_SENDER {
                let (txn, body) = (format!("s{s}m{i}"), format!("sender {s} message {i}"));
                let (event_id, seq, attempts) = send_until_acked(&api, &token, &room, &txn, &body).await;
                retried += attempts;
                acked.fetch_add(1, Ordering::SeqCst);
                mine.push((body, event_id, seq));
            }
            (mine, retried, 0)
        })
    }));

    // Mid-run, one process goes.
    while acked.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim = processes[1].addr.to_string();
    match how {
        Stop::Kill => {
            processes[1].child.kill().unwrap();
            processes[1].child.wait().unwrap();
        }
        Stop::Terminate => assert!(processes[1].terminate().success(), "a stopped process exits 0"),
    }
    // What nginx logs from here on was answered after the process was gone.
    let log_at_exit = nginx.access_log().lines().count();
    let acked_at_kill = acked.load(Ordering::SeqCst);
    assert!(acked_at_kill < (SENDERS * PER_SENDER) as u64, "the kill came after the last send");

    let (mut acks, mut retried, mut ws_senders_dropped) = (Vec::new(), 0, 0);
    for s in senders {
        let (mine, r, reconnects) = s.await.unwrap();
        retried += r;
        ws_senders_dropped += usize::from(reconnects > 0);
        assert!(reconnects <= 1, "a sender lost its connection {reconnects} times");
        acks.push(mine);
    }
    assert_eq!(ws_senders_dropped, WS_SENDERS / PROCESSES, "WebSocket senders that had to reconnect");

    // Each sender's acknowledged sends, in the order it sent them.
    for (s, mine) in acks.iter().enumerate() {
        let seqs: Vec<u64> = mine.iter().map(|m| m.2).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sender {s}'s acks are not in order: {seqs:?}");
    }

    // History: every acknowledged message exactly once, at its acknowledged seq.
    let (status, page) = api.messages(&tokens[0], &room, "limit=1000").await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    let messages: Vec<&Value> = events.iter().filter(|e| e["type"] == "message").collect();
    let by_id: BTreeMap<&str, &Value> = messages.iter().map(|e| (e["event_id"].as_str().unwrap(), *e)).collect();
    assert_eq!(by_id.len(), messages.len(), "an event id twice in history");
    let total = SENDERS * PER_SENDER;
    assert_eq!(messages.len(), total, "history holds {} messages for {total} acknowledged sends", messages.len());
    let mut bodies = HashSet::new();
    for (body, event_id, seq) in acks.iter().flatten() {
        let e = by_id.get(event_id.as_str()).unwrap_or_else(|| panic!("acknowledged {event_id} ({body}) is lost"));
        assert_eq!(e["body"], body.as_str(), "{e}");
        assert_eq!(e["seq"].as_u64(), Some(*seq), "{e}");
        assert!(bodies.insert(body.as_str()), "{body} acknowledged twice");
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "history has a seq gap: {seqs:?}");
    let latest = page["latest_seq"].as_u64().unwrap();
    assert_eq!(seqs.last(), Some(&latest));

    // Every subscriber: each event after its cursor exactly once, in order,
    // the same events as history.
    target_tx.send(latest).unwrap();
    let history: BTreeMap<u64, &str> =
        events.iter().map(|e| (e["seq"].as_u64().unwrap(), e["event_id"].as_str().unwrap())).collect();
    let mut dropped = 0;
    for (i, (start, task)) in subscribers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap_or_else(|_| panic!("subscriber {i} did not reach seq {latest}"))
            .unwrap();
        assert!(seen.gaps.is_empty(), "subscriber {i} got a gap: {:?}", seen.gaps);
        let got: Vec<u64> = seen.events.iter().map(|e| e.0).collect();
        let want: Vec<u64> = (start + 1..=latest).collect();
        assert_eq!(
            got, want,
            "subscriber {i} (reconnected {} times): missing, repeated or reordered seqs",
            seen.reconnects
        );
        for (seq, id) in &seen.events {
            assert_eq!(history[seq], id.as_str(), "subscriber {i}: seq {seq} is another event than in history");
        }
        dropped += usize::from(seen.reconnects > 0);
        assert!(seen.reconnects <= 1, "subscriber {i} lost its connection {} times", seen.reconnects);
    }
    // Exactly the victim's subscribers were cut off, and each resumed above.
    assert_eq!(dropped, SUBSCRIBERS / PROCESSES, "subscribers that had to reconnect");

    // nginx stopped sending to the gone process: after it exited, it tried it
    // (connection refused, then the next upstream) only a few times — each
    // attempt marks it failed for fail_timeout (10 s) — not every third request.
    let access = nginx.access_log();
    let after: Vec<&str> = access.lines().skip(log_at_exit).collect();
    let tried_dead = after.iter().filter(|l| l.contains(&victim)).count();
    assert!(after.len() >= 100, "only {} requests after the process exited", after.len());
    assert!(
        tried_dead <= 10,
        "nginx tried the dead process {tried_dead} times in {} requests after it exited:\n{}",
        after.len(),
        nginx.error_log()
    );
    for line in after.iter().filter(|l| l.contains(" 200 ")) {
        let served_by = line.rsplit("upstream=").next().unwrap().rsplit(", ").next().unwrap();
        assert_ne!(served_by, victim, "a 200 from the process after it exited: {line}");
    }
    println!(
        "{how:?}: {victim} went after {acked_at_kill} acks; {retried} sends retried by the client \
         ({ws_senders_dropped} WebSocket senders reconnected); {dropped} subscribers resumed; \
         nginx tried the dead process {tried_dead} times in {} requests after",
        after.len()
    );
}

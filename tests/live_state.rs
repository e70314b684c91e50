//! Typing and presence end to end (spec §8 "Typing and presence"): on both
//! backends with one server, and across two real processes on one Redis.
//! The typing timeout is shortened (the protocol's is 30 s) so that its
//! expiry is seen without waiting half a minute.

#[macro_use]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Api, Backend, Harness, ParlorProcess, RedisServer, WsClient, uniq};

/// The typing timeout these tests run with: long enough that an end by
/// other means is told apart from a timeout, short enough to wait out.
const TTL: Duration = Duration::from_secs(3);

backend_tests!(
    typing_reaches_subscribers_and_ends_on_stop_message_timeout_and_close,
    typing_needs_a_subscription,
    a_toggling_client_costs_others_at_most_four_frames_a_second,
    presence_goes_to_room_sharers_only,
    receipts_move_forward_persist_and_count_unread,
    unread_counts_no_redacted_message,
);

async fn start(backend: Backend) -> Harness {
    Harness::start_with(backend, |c| c.typing_timeout = TTL).await
}

/// A socket of `token`'s user that returns `typing` and `presence` frames.
async fn live_ws(base: &str, token: &str) -> WsClient {
    let mut ws = WsClient::authed(base, token).await;
    ws.follow_live();
    ws
}

/// The next frame of type `ty` (others skipped), or None within `within`.
async fn next_of(ws: &mut WsClient, ty: &str, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = ws.recv_within(left).await?;
        if f["type"] == ty {
            return Some(f);
        }
    }
}

/// The next `presence` frame about `user` (others, such as the watcher's
/// own, skipped): its `presence`.
async fn presence_frame(ws: &mut WsClient, user: &str) -> String {
    loop {
        let p = next_of(ws, "presence", Duration::from_secs(10)).await.expect("a presence frame within 10 s");
        if p["user_id"] == user {
            return p["presence"].as_str().unwrap().to_owned();
        }
    }
}

/// The next `typing` frame's user list (fails the test when none comes).
async fn typing_list(ws: &mut WsClient) -> Vec<String> {
    let f = next_of(ws, "typing", Duration::from_secs(5)).await.expect("a typing frame within 5 s");
    f["user_ids"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect()
}

async fn subscribe(ws: &mut WsClient, room: &str) {
    ws.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    ws.until("caught_up").await;
}

/// Every frame that arrives before the answer to a `ping` (so: everything
/// the server had queued for this connection).
async fn drain(ws: &mut WsClient) -> Vec<Value> {
    ws.send(json!({"type": "ping", "id": "drain"})).await;
    ws.until("pong").await.1
}

async fn presence_of(api: &Api, token: &str, room: &str, user: &str) -> String {
    let (s, v) = api.call("GET", &format!("/rooms/{}/members", support::enc(room)), Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    let m = v["members"].as_array().unwrap().iter().find(|m| m["user_id"] == user).expect("a member");
    m["presence"].as_str().unwrap_or("(none)").to_owned()
}

/// Reads `members` until `user`'s presence is `want` (presence changes are
/// applied as they are heard, a moment after the socket opens or closes).
async fn wait_presence(api: &Api, token: &str, room: &str, user: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = presence_of(api, token, room, user).await;
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{user} is {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn typing_reaches_subscribers_and_ends_on_stop_message_timeout_and_close(backend: Backend) {
    let h = start(backend).await;
    let api = h.api();
    let room = uniq("room");
    let (ann, ann_t) = api.user(&uniq("ann")).await;
    let (_, bob_t) = api.user(&uniq("bob")).await;
    api.join(&ann_t, &room).await;
    api.join(&bob_t, &room).await;
    let mut bob = live_ws(h.url(), &bob_t).await;
    subscribe(&mut bob, &room).await;
    let mut a = live_ws(h.url(), &ann_t).await;
    subscribe(&mut a, &room).await;

    // Start and stop.
    a.send(json!({"type": "typing", "room": room, "typing": true})).await;
    assert_eq!(typing_list(&mut bob).await, vec![ann.clone()]);
    a.send(json!({"type": "typing", "room": room, "typing": false})).await;
    assert_eq!(typing_list(&mut bob).await, Vec::<String>::new());

    // A message ends it (well before the timeout would).
    let typed = tokio::time::Instant::now();
    a.send(json!({"type": "typing", "room": room, "typing": true})).await;
    assert_eq!(typing_list(&mut bob).await, vec![ann.clone()]);
    let (s, _) = api.send(&ann_t, &room, "t1", "hello").await;
    assert_eq!(s, 200);
    assert_eq!(typing_list(&mut bob).await, Vec::<String>::new());
    assert!(typed.elapsed() < TTL, "ended by the message, not by the timeout");

    // A late subscriber is told who is typing right after `caught_up`.
    let typed = tokio::time::Instant::now();
    a.send(json!({"type": "typing", "room": room, "typing": true})).await;
    assert_eq!(typing_list(&mut bob).await, vec![ann.clone()]);
    let mut late = live_ws(h.url(), &bob_t).await;
    late.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    late.until("caught_up").await;
    assert_eq!(typing_list(&mut late).await, vec![ann.clone()]);

    // The timeout ends it, with nothing more from the client.
    assert_eq!(typing_list(&mut bob).await, Vec::<String>::new());
    assert!(typed.elapsed() >= TTL, "ended by the timeout, not before");

    // Leaving the room ends it (through another API than the typing).
    let (carl, carl_t) = api.user(&uniq("carl")).await;
    api.join(&carl_t, &room).await;
    let mut c = live_ws(h.url(), &carl_t).await;
    subscribe(&mut c, &room).await;
    let typed = tokio::time::Instant::now();
    c.send(json!({"type": "typing", "room": room, "typing": true})).await;
    assert_eq!(typing_list(&mut bob).await, vec![carl.clone()]);
    let (s, _) = api.call("POST", &format!("/rooms/{}/leave", support::enc(&room)), Some(&carl_t), None).await;
    assert_eq!(s, 200);
    assert_eq!(typing_list(&mut bob).await, Vec::<String>::new());
    assert!(typed.elapsed() < TTL, "ended by the leave, not by the timeout");

    // Closing the typer's only socket ends it.
    a.send(json!({"type": "typing", "room": room, "typing": true})).await;
    assert_eq!(typing_list(&mut bob).await, vec![ann.clone()]);
    drop(a);
    assert_eq!(typing_list(&mut bob).await, Vec::<String>::new());

    // Nothing of it is in the room log.
    let (s, page) = api.messages(&bob_t, &room, "after=0").await;
    assert_eq!(s, 200);
    let types: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["join", "join", "message", "join", "leave"], "{page}");
}

async fn typing_needs_a_subscription(backend: Backend) {
    let h = start(backend).await;
    let api = h.api();
    let (room, other) = (uniq("room"), uniq("other"));
    let (_, t) = api.user(&uniq("ann")).await;
    api.join(&t, &room).await;
    api.join(&t, &other).await;
    let mut ws = WsClient::authed(h.url(), &t).await;
    subscribe(&mut ws, &room).await;
    ws.send(json!({"type": "typing", "id": "x", "room": other, "typing": true})).await;
    let e = ws.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str(), e["errcode"].as_str()),
        (Some("error"), Some("x"), Some("not_subscribed")),
        "{e}"
    );
    ws.send(json!({"type": "typing", "id": "y", "room": "!!bad", "typing": true})).await;
    assert_eq!(ws.recv().await["errcode"], "invalid_room");
    ws.send(json!({"type": "typing", "id": "z", "room": room, "typing": "yes"})).await;
    assert_eq!(ws.recv().await["errcode"], "invalid_field");
    // The subscribed room by its bare name, alias or id: no answer, no error.
    let alias = api.join(&t, &room).await;
    for r in [room.as_str(), alias["alias"].as_str().unwrap(), alias["room_id"].as_str().unwrap()] {
        ws.send(json!({"type": "typing", "id": "ok", "room": r, "typing": false})).await;
    }
    let got = drain(&mut ws).await;
    assert!(got.iter().all(|f| f["type"] != "error"), "{got:?}");
}

async fn a_toggling_client_costs_others_at_most_four_frames_a_second(backend: Backend) {
    let h = start(backend).await;
    let api = h.api();
    let room = uniq("room");
    let (_, ann_t) = api.user(&uniq("ann")).await;
    let (_, bob_t) = api.user(&uniq("bob")).await;
    api.join(&ann_t, &room).await;
    api.join(&bob_t, &room).await;
    let mut bob = live_ws(h.url(), &bob_t).await;
    subscribe(&mut bob, &room).await;
    let mut a = live_ws(h.url(), &ann_t).await;
    subscribe(&mut a, &room).await;
    let began = tokio::time::Instant::now();
    for i in 0..4000 {
        a.send(json!({"type": "typing", "room": room, "typing": i % 2 == 0})).await;
    }
    drain(&mut a).await;
    // Wait out the coalescing, then count what bob got.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let frames: Vec<Value> = drain(&mut bob).await.into_iter().filter(|f| f["type"] == "typing").collect();
    let secs = began.elapsed().as_secs_f64();
    let most = (secs * 4.0).ceil() as usize + 1;
    assert!(frames.len() <= most, "{} typing frames in {secs:.1} s (at most {most})", frames.len());
    if let Some(last) = frames.last() {
        assert_eq!(last["user_ids"], json!([]), "the last toggle was `false`: {frames:?}");
    }
}

async fn presence_goes_to_room_sharers_only(backend: Backend) {
    let h = start(backend).await;
    let api = h.api();
    let (room, elsewhere) = (uniq("room"), uniq("elsewhere"));
    let (ann, ann_t) = api.user(&uniq("ann")).await;
    let (_, bob_t) = api.user(&uniq("bob")).await;
    let (_, cat_t) = api.user(&uniq("cat")).await;
    api.join(&ann_t, &room).await;
    api.join(&bob_t, &room).await;
    api.join(&cat_t, &elsewhere).await;
    let mut bob = live_ws(h.url(), &bob_t).await;
    subscribe(&mut bob, &room).await;
    let mut cat = live_ws(h.url(), &cat_t).await;
    subscribe(&mut cat, &elsewhere).await;
    assert_eq!(presence_of(&api, &bob_t, &room, &ann).await, "offline");

    let a1 = live_ws(h.url(), &ann_t).await;
    assert_eq!(presence_frame(&mut bob, &ann).await, "online");
    wait_presence(&api, &bob_t, &room, &ann, "online").await;
    // A second socket changes nothing; closing one of two changes nothing.
    let a2 = live_ws(h.url(), &ann_t).await;
    drop(a1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(presence_of(&api, &bob_t, &room, &ann).await, "online");
    drop(a2);
    assert_eq!(presence_frame(&mut bob, &ann).await, "offline");
    wait_presence(&api, &bob_t, &room, &ann, "offline").await;
    let rest = drain(&mut bob).await;
    assert!(
        rest.iter().all(|f| f["type"] != "presence" || f["user_id"] != ann.as_str()),
        "one frame per change: {rest:?}"
    );
    // Cat shares no room with ann and heard nothing of her.
    let heard = drain(&mut cat).await;
    assert!(heard.iter().all(|f| f["type"] != "presence" || f["user_id"] != ann.as_str()), "{heard:?}");
}

/// Each joined room's `unread` in `GET /rooms`, by room name.
async fn unread(api: &Api, token: &str, room: &str) -> u64 {
    let (s, v) = api.call("GET", "/rooms", Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    let r =
        v["rooms"].as_array().unwrap().iter().find(|r| r["alias"].as_str().unwrap().starts_with(&format!("#{room}:")));
    r.unwrap_or_else(|| panic!("{room} in {v}"))["unread"].as_u64().expect("unread")
}

async fn read(api: &Api, token: &str, room: &str, seq: u64) -> (u16, Value) {
    api.call("POST", &format!("/rooms/{}/read", support::enc(room)), Some(token), Some(json!({ "seq": seq }))).await
}

async fn receipts_move_forward_persist_and_count_unread(backend: Backend) {
    let mut h = start(backend).await;
    let api = h.api();
    let room = uniq("room");
    let (ann, ann_t) = api.user(&uniq("ann")).await;
    let (bob, bob_t) = api.user(&uniq("bob")).await;
    let (_, cat_t) = api.user(&uniq("cat")).await;
    api.join(&ann_t, &room).await;
    api.join(&bob_t, &room).await;
    for i in 0..3 {
        assert_eq!(api.send(&bob_t, &room, &format!("b{i}"), "from bob").await.0, 200);
    }
    let (_, last) = api.send(&ann_t, &room, "a0", "from ann").await;
    let latest = last["seq"].as_u64().unwrap();
    // No mark yet: every message of others counts, never one's own or joins.
    assert_eq!(unread(&api, &ann_t, &room).await, 3);
    assert_eq!(unread(&api, &bob_t, &room).await, 1);

    let mut watcher = live_ws(h.url(), &bob_t).await;
    subscribe(&mut watcher, &room).await;
    assert_eq!(read(&api, &ann_t, &room, latest).await.0, 200);
    let r = next_of(&mut watcher, "receipt", Duration::from_secs(5)).await.expect("a receipt");
    assert_eq!((r["user_id"].as_str(), r["seq"].as_u64()), (Some(ann.as_str()), Some(latest)), "{r}");
    assert_eq!(unread(&api, &ann_t, &room).await, 0);
    // Never back, and no receipt for a mark that did not move.
    assert_eq!(read(&api, &ann_t, &room, 1).await.0, 200);
    assert_eq!(unread(&api, &ann_t, &room).await, 0);
    let quiet = drain(&mut watcher).await;
    assert!(quiet.iter().all(|f| f["type"] != "receipt"), "{quiet:?}");
    // Past the latest seq; not a member.
    let (s, e) = read(&api, &ann_t, &room, latest + 1).await;
    assert_eq!((s, e["errcode"].as_str()), (400, Some("invalid_field")), "{e}");
    let (s, e) = read(&api, &cat_t, &room, 1).await;
    assert_eq!((s, e["errcode"].as_str()), (403, Some("not_member")), "{e}");

    for i in 0..2 {
        api.send(&bob_t, &room, &format!("c{i}"), "more from bob").await;
    }
    assert_eq!(unread(&api, &ann_t, &room).await, 2);
    // The same after a restart, and on another device.
    drop(watcher);
    h.restart().await;
    let api = h.api();
    assert_eq!(unread(&api, &ann_t, &room).await, 2);
    let (_, ann_t2) = api.login(ann.trim_start_matches('@').split(':').next().unwrap()).await;
    assert_eq!(unread(&api, &ann_t2, &room).await, 2);

    // Over the WebSocket: `read` is not answered; the receipt reaches subscribers.
    let mut watcher = live_ws(h.url(), &ann_t).await;
    subscribe(&mut watcher, &room).await;
    let mut b = WsClient::authed(h.url(), &bob_t).await;
    b.send(json!({"type": "read", "id": "r", "room": room, "seq": latest + 2})).await;
    let r = next_of(&mut watcher, "receipt", Duration::from_secs(5)).await.expect("a receipt");
    assert_eq!((r["user_id"].as_str(), r["seq"].as_u64()), (Some(bob.as_str()), Some(latest + 2)), "{r}");
    assert!(drain(&mut b).await.is_empty(), "read is not answered");
    b.send(json!({"type": "read", "id": "far", "room": room, "seq": 1000})).await;
    let e = b.recv().await;
    assert_eq!((e["id"].as_str(), e["errcode"].as_str()), (Some("far"), Some("invalid_field")), "{e}");
    assert_eq!(unread(&api, &bob_t, &room).await, 0);

    // The count stops at 100 ("100 or more").
    for i in 0..105 {
        api.send(&bob_t, &room, &format!("d{i}"), "flood").await;
    }
    assert_eq!(unread(&api, &ann_t, &room).await, 100);
}

async fn unread_counts_no_redacted_message(backend: Backend) {
    let h = start(backend).await;
    let api = h.api();
    let room = uniq("room");
    let (_, ann_t) = api.user(&uniq("ann")).await;
    let (_, bob_t) = api.user(&uniq("bob")).await;
    api.join(&ann_t, &room).await;
    api.join(&bob_t, &room).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let (s, v) = api.send(&bob_t, &room, &format!("b{i}"), "from bob").await;
        assert_eq!(s, 200, "{v}");
        sent.push(v["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(unread(&api, &ann_t, &room).await, 3);
    // Deleted by its sender: neither the erased message nor the
    // `redaction` event counts.
    let path = format!("/rooms/{}/redact/{}/r0", support::enc(&room), support::enc(&sent[1]));
    let (s, v) = api.call("PUT", &path, Some(&bob_t), Some(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(unread(&api, &ann_t, &room).await, 2);
    // After a mark too: a message sent and deleted after it counts nothing.
    let (_, last) = api.send(&bob_t, &room, "b3", "read this").await;
    assert_eq!(read(&api, &ann_t, &room, last["seq"].as_u64().unwrap()).await.0, 200);
    let (_, gone) = api.send(&bob_t, &room, "b4", "oops").await;
    assert_eq!(unread(&api, &ann_t, &room).await, 1);
    let path = format!("/rooms/{}/redact/{}/r1", support::enc(&room), support::enc(gone["event_id"].as_str().unwrap()));
    assert_eq!(api.call("PUT", &path, Some(&bob_t), Some(json!({}))).await.0, 200);
    assert_eq!(unread(&api, &ann_t, &room).await, 0);
}

/// A process of server `name` on `redis` with the short typing timeout.
fn process(redis: &RedisServer, dir: &tempfile::TempDir, name: &str) -> ParlorProcess {
    let ttl = TTL.as_millis().to_string();
    let args = ["--redis", &redis.url, "--server-name", name, "--rate-limit", "off", "--typing-timeout-ms", &ttl];
    ParlorProcess::spawn(dir.path(), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_cross_processes() {
    let redis = RedisServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = "live.test";
    let mut pa = process(&redis, &da, name);
    let pb = process(&redis, &db, name);
    let (a, b) = (Api::new(&pa.url), Api::new(&pb.url));
    let room = uniq("room");
    let (ann, ann_t) = a.user(&uniq("ann")).await;
    let (_, bob_t) = b.user(&uniq("bob")).await;
    let (cat, cat_t) = a.user(&uniq("cat")).await;
    for t in [&ann_t, &bob_t, &cat_t] {
        a.join(t, &room).await;
    }
    let mut bob = live_ws(&pb.url, &bob_t).await;
    subscribe(&mut bob, &room).await;

    // Ann types on A; Bob on B sees it, and her message sent through B ends it.
    let mut ann_ws = live_ws(&pa.url, &ann_t).await;
    assert_eq!(presence_frame(&mut bob, &ann).await, "online");
    wait_presence(&b, &bob_t, &room, &ann, "online").await;
    subscribe(&mut ann_ws, &room).await;
    ann_ws.send(json!({"type": "typing", "room": room, "typing": true})).await;
    assert_eq!(typing_list(&mut bob).await, vec![ann.clone()]);
    let typed = tokio::time::Instant::now();
    let (s, _) = b.send(&ann_t, &room, "m1", "hi").await;
    assert_eq!(s, 200);
    assert_eq!(typing_list(&mut bob).await, Vec::<String>::new());
    assert!(typed.elapsed() < TTL, "ended by the message sent through B, not by the timeout");
    // Ann closes her socket on A: offline on B.
    drop(ann_ws);
    assert_eq!(presence_frame(&mut bob, &ann).await, "offline");
    wait_presence(&b, &bob_t, &room, &ann, "offline").await;

    // A process that dies takes its users' presence and typing with it.
    let mut cat_ws = live_ws(&pa.url, &cat_t).await;
    subscribe(&mut cat_ws, &room).await;
    cat_ws.send(json!({"type": "typing", "room": room, "typing": true})).await;
    let mut list = typing_list(&mut bob).await;
    while list.is_empty() {
        list = typing_list(&mut bob).await;
    }
    assert_eq!(list, vec![cat.clone()]);
    wait_presence(&b, &bob_t, &room, &cat, "online").await;
    pa.child.kill().unwrap();
    pa.child.wait().unwrap();
    // Both end when B gives A up, in either order.
    let (mut offline, mut stopped) = (false, false);
    while !(offline && stopped) {
        let f = bob.recv_within(Duration::from_secs(15)).await.expect("cat's states end once A is gone");
        match f["type"].as_str() {
            Some("presence") if f["user_id"] == cat.as_str() => offline = f["presence"] == "offline",
            Some("typing") => stopped = f["user_ids"] == json!([]),
            _ => {}
        }
    }
    wait_presence(&b, &bob_t, &room, &cat, "offline").await;
    drop(cat_ws);

    // A read mark made through B reaches a subscriber on A's successor and
    // counts the same on both.
    let pc = process(&redis, &da, name);
    let c = Api::new(&pc.url);
    let mut watcher = live_ws(&pc.url, &cat_t).await;
    subscribe(&mut watcher, &room).await;
    let (s, v) = b.send(&bob_t, &room, "m2", "read me").await;
    assert_eq!(s, 200);
    let seq = v["seq"].as_u64().unwrap();
    assert_eq!(unread(&c, &ann_t, &room).await, 1);
    assert_eq!(read(&b, &ann_t, &room, seq).await.0, 200);
    let r = next_of(&mut watcher, "receipt", Duration::from_secs(5)).await.expect("a receipt heard on C");
    assert_eq!((r["user_id"].as_str(), r["seq"].as_u64()), (Some(ann.as_str()), Some(seq)), "{r}");
    assert_eq!(unread(&c, &ann_t, &room).await, 0);
    assert_eq!(unread(&b, &ann_t, &room).await, 0);
}

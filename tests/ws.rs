//! The WebSocket endpoint end to end, on both room-log backends: auth both
//! ways, join/subscribe/send/ack, live order across clients, gap-free resume
//! (including a send racing the replay), gaps, slow consumers, bad frames,
//! control-frame floods, close codes, revocation, heartbeats and Origin checks.

#[macro_use]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, Harness, Next, WsClient, uniq};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, coding::Data, coding::OpCode};

backend_tests!(
    auth_by_header_and_by_first_frame,
    live_events_reach_every_subscriber_in_order,
    a_burst_arrives_whole_and_in_order,
    resume_is_gap_free_and_exactly_once,
    a_send_racing_the_replay_appears_once,
    a_forged_epoch_gets_a_gap_first,
    retention_reports_trimmed_history_as_a_gap,
    sends_over_websocket_are_idempotent,
    a_stalled_reader_is_cut_off_without_slowing_others,
    bad_frames_get_errors_or_clean_closes,
    revoking_the_token_closes_the_socket,
    leaving_ends_subscriptions,
    heartbeats_close_silent_connections,
    origins_are_checked,
    a_ping_flood_that_never_reads_is_cut_off,
    close_codes_are_checked_and_answered,
);

async fn setup(h: &Harness, n: usize) -> (String, Vec<(String, String)>) {
    let api = h.api();
    let room = uniq("room");
    let mut users = Vec::new();
    for i in 0..n {
        let (u, t) = api.user(&uniq(&format!("u{i}"))).await;
        api.join(&t, &room).await;
        users.push((u, t));
    }
    (room, users)
}

/// Subscribes live (no `since`); returns the `caught_up` frame.
async fn subscribe(c: &mut WsClient, room: &str) -> Value {
    c.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    let (cu, before) = c.until("caught_up").await;
    assert!(before.is_empty(), "live subscribe sends nothing before caught_up: {before:?}");
    assert_eq!(cu["id"], "s");
    cu
}

fn bodies(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "event")
        .map(|f| f["event"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn auth_by_header_and_by_first_frame(b: Backend) {
    let h = Harness::start_with(b, |c| c.ws_auth_timeout = Duration::from_millis(700)).await;
    let api = h.api();
    let (user, token) = api.user(&uniq("ann")).await;
    // Header.
    let mut c = WsClient::connect(h.url(), Some(&token)).await;
    let ready = c.recv().await;
    assert_eq!((ready["type"].as_str(), ready["user_id"].as_str()), (Some("ready"), Some(user.as_str())));
    assert!(ready["device_id"].is_string());
    // First frame; `id` echoed; a second auth is refused.
    let mut c = WsClient::connect(h.url(), None).await;
    c.send(json!({"type": "join", "id": "early", "room": "x"})).await;
    let e = c.recv().await;
    assert_eq!((e["errcode"].as_str(), e["id"].as_str()), (Some("not_authenticated"), Some("early")));
    c.send(json!({"type": "ping", "id": "p"})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["errcode"].as_str(), e["id"].as_str()),
        (Some("not_authenticated"), Some("p")),
        "ping too needs auth"
    );
    c.send_raw(Message::text("{nope")).await;
    assert_eq!(c.recv().await["errcode"], "malformed_json", "parsing comes before the auth check");
    c.send(json!({"type": "auth", "id": "a1", "token": token})).await;
    let ready = c.recv().await;
    assert_eq!((ready["type"].as_str(), ready["id"].as_str()), (Some("ready"), Some("a1")));
    c.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.recv().await["errcode"], "already_authenticated");
    // Bad token in a frame: error, then close 4001.
    let mut c = WsClient::connect(h.url(), None).await;
    c.send(json!({"type": "auth", "token": "x".repeat(43)})).await;
    assert_eq!(c.recv().await["errcode"], "unknown_token");
    assert_eq!(c.closed().await, Some(4001));
    // Bad token in the header: no upgrade.
    let err = WsClient::connect_with(h.url(), Some("nope"), &[]).await.err().expect("refused");
    assert!(err.to_string().contains("401"), "{err}");
    // No auth at all: closed with 4002 after the auth timeout.
    let mut c = WsClient::connect(h.url(), None).await;
    assert_eq!(c.closed().await, Some(4002));
}

async fn live_events_reach_every_subscriber_in_order(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 3).await;
    let mut clients = Vec::new();
    for (_, t) in &users {
        let mut c = WsClient::authed(h.url(), t).await;
        subscribe(&mut c, &room).await;
        clients.push(c);
    }
    // Everyone sends over the socket; one more message comes over HTTP.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"type": "send", "id": format!("s{i}"), "room": room, "txn_id": format!("t{i}"), "body": format!("from {i}")}))
            .await;
    }
    let (s, _) = h.api().send(&users[0].1, &room, "http1", "over http").await;
    assert_eq!(s, 200);
    let mut orders = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut events = Vec::new();
        let mut acked = false;
        while events.len() < 4 || !acked {
            let f = c.recv().await;
            match f["type"].as_str().unwrap() {
                "event" => events.push(f),
                "ack" => {
                    assert_eq!(f["id"], format!("s{i}"));
                    assert!(f["seq"].as_u64().unwrap() > 3);
                    acked = true;
                }
                other => panic!("unexpected {other}: {f}"),
            }
        }
        let seqs: Vec<u64> = events.iter().map(|e| e["event"]["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [4, 5, 6, 7], "in seq order, no holes");
        for e in &events {
            let sender = e["event"]["sender"].as_str().unwrap();
            let body = e["event"]["body"].as_str().unwrap();
            if let Some(n) = body.strip_prefix("from ") {
                assert_eq!(sender, users[n.parse::<usize>().unwrap()].0, "each event names its sender");
            } else {
                assert_eq!(sender, users[0].0);
            }
            assert_eq!(e["room_id"], events[0]["room_id"]);
            assert!(e["epoch"].is_string() && e["event"]["event_id"].is_string() && e["event"]["ts"].is_u64());
        }
        orders.push(bodies(&events));
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "one total order for everyone: {orders:?}");
}

async fn a_burst_arrives_whole_and_in_order(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 3).await;
    let mut readers = Vec::new();
    for (_, t) in &users[1..] {
        let mut c = WsClient::authed(h.url(), t).await;
        subscribe(&mut c, &room).await;
        readers.push(c);
    }
    let mut sender = WsClient::authed(h.url(), &users[0].1).await;
    const N: usize = 500;
    for n in 0..N {
        sender.send(json!({"type": "send", "id": n.to_string(), "room": room, "txn_id": format!("b{n}"), "body": format!("m{n}")})).await;
    }
    let mut acks = Vec::new();
    while acks.len() < N {
        let f = sender.recv().await;
        assert_eq!(f["type"], "ack", "{f}");
        acks.push((f["id"].as_str().unwrap().parse::<usize>().unwrap(), f["seq"].as_u64().unwrap()));
    }
    assert!(acks.iter().enumerate().all(|(i, (id, _))| *id == i), "acks in send order");
    assert!(acks.windows(2).all(|w| w[1].1 == w[0].1 + 1), "pipelined sends keep their order");
    for r in &mut readers {
        let mut got = Vec::new();
        while got.len() < N {
            let f = r.recv().await;
            assert_eq!(f["type"], "event");
            got.push(f["event"]["body"].as_str().unwrap().to_owned());
        }
        assert_eq!(got, (0..N).map(|n| format!("m{n}")).collect::<Vec<_>>());
    }
}

async fn resume_is_gap_free_and_exactly_once(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 2).await;
    let (_, ta) = &users[0];
    let (_, tb) = &users[1];
    let mut c = WsClient::authed(h.url(), tb).await;
    let cu = subscribe(&mut c, &room).await;
    let epoch = cu["epoch"].as_str().unwrap().to_owned();
    assert_eq!(cu["seq"], 2);
    h.api().send(ta, &room, "a", "one").await;
    let f = c.recv().await;
    assert_eq!(f["event"]["seq"], 3);
    drop(c);
    // Meanwhile: over HTTP and over another socket.
    h.api().send(ta, &room, "b", "two").await;
    let mut other = WsClient::authed(h.url(), ta).await;
    other.send(json!({"type": "send", "room": room, "txn_id": "c", "body": "three"})).await;
    assert_eq!(other.recv().await["type"], "ack");
    // Resume from seq 3.
    let mut c = WsClient::authed(h.url(), tb).await;
    c.send(json!({"type": "subscribe", "id": "r", "room": room, "since": {"epoch": epoch, "seq": 3}})).await;
    let (cu, before) = c.until("caught_up").await;
    assert_eq!(bodies(&before), ["two", "three"]);
    assert_eq!(
        (cu["seq"].as_u64(), cu["id"].as_str(), cu["epoch"].as_str()),
        (Some(5), Some("r"), Some(epoch.as_str()))
    );
    // Then live.
    h.api().send(ta, &room, "d", "four").await;
    let f = c.recv().await;
    assert_eq!((f["event"]["seq"].as_u64(), f["event"]["body"].as_str()), (Some(6), Some("four")));
    // since = current head: nothing replayed.
    let mut c = WsClient::authed(h.url(), tb).await;
    c.send(json!({"type": "subscribe", "room": room, "since": {"epoch": epoch, "seq": 6}})).await;
    let (cu, before) = c.until("caught_up").await;
    assert!(before.is_empty());
    assert_eq!(cu["seq"], 6);
    // since ahead of the log: not an error; caught_up tells the real head, then live.
    let mut c = WsClient::authed(h.url(), tb).await;
    c.send(json!({"type": "subscribe", "id": "ahead", "room": room, "since": {"epoch": epoch, "seq": 99}})).await;
    let (cu, before) = c.until("caught_up").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        (cu["id"].as_str(), cu["seq"].as_u64(), cu["epoch"].as_str()),
        (Some("ahead"), Some(6), Some(epoch.as_str()))
    );
    h.api().send(ta, &room, "e", "five").await;
    assert_eq!(c.recv().await["event"]["seq"], 7, "the next event is delivered, not filtered by the cursor");
}

async fn a_send_racing_the_replay_appears_once(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 2).await;
    let (_, ta) = users[0].clone();
    let (_, tb) = users[1].clone();
    for n in 0..300 {
        h.api().send(&ta, &room, &format!("pre{n}"), &format!("pre{n}")).await;
    }
    let (_, page) = h.api().messages(&tb, &room, "limit=1").await;
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    // A writer keeps sending while the subscriber replays from the start.
    let api = h.api();
    let room2 = room.clone();
    let writer = tokio::spawn(async move {
        for n in 0..100 {
            let (s, _) = api.send(&ta, &room2, &format!("live{n}"), &format!("live{n}")).await;
            assert_eq!(s, 200);
        }
    });
    let mut c = WsClient::authed(h.url(), &tb).await;
    c.send(json!({"type": "subscribe", "room": room, "since": {"epoch": epoch, "seq": 0}})).await;
    writer.await.unwrap();
    let mut seqs = Vec::new();
    let mut caught_up = false;
    while seqs.len() < 402 {
        let f = c.recv().await;
        match f["type"].as_str().unwrap() {
            "event" => seqs.push(f["event"]["seq"].as_u64().unwrap()),
            "caught_up" => {
                assert!(!caught_up);
                caught_up = true;
                assert_eq!(f["seq"].as_u64(), seqs.last().copied());
            }
            other => panic!("unexpected {other}: {f}"),
        }
    }
    assert!(caught_up);
    assert_eq!(seqs, (1..=402).collect::<Vec<_>>(), "every event exactly once, in order, across the seam");
}

async fn a_forged_epoch_gets_a_gap_first(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 1).await;
    let (_, t) = &users[0];
    h.api().send(t, &room, "a", "one").await;
    let mut c = WsClient::authed(h.url(), t).await;
    c.send(json!({"type": "subscribe", "room": room, "since": {"epoch": "forged", "seq": 1}})).await;
    let gap = c.recv().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "epoch_changed");
    assert_eq!(gap["from"], json!({"epoch": "forged", "seq": 1}));
    let epoch = gap["to"]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(epoch, "forged");
    assert_eq!(gap["to"]["seq"], 0);
    let (cu, events) = c.until("caught_up").await;
    let seqs: Vec<_> = events.iter().map(|e| e["event"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2], "then everything of the current epoch");
    assert_eq!((cu["epoch"].as_str(), cu["seq"].as_u64()), (Some(epoch.as_str()), Some(2)));
}

async fn retention_reports_trimmed_history_as_a_gap(b: Backend) {
    let h = Harness::start_with(b, |c| c.retention = Some(5)).await;
    let (room, users) = setup(&h, 1).await;
    let (_, t) = &users[0];
    let (_, page) = h.api().messages(t, &room, "").await;
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    for n in 0..40 {
        h.api().send(t, &room, &format!("t{n}"), &format!("m{n}")).await;
    }
    let (_, page) = h.api().messages(t, &room, "limit=100").await;
    let earliest = page["earliest_seq"].as_u64().unwrap();
    assert!(earliest > 2, "retention trimmed the log: {page}");
    assert_eq!(page["events"][0]["seq"].as_u64(), Some(earliest));
    let mut c = WsClient::authed(h.url(), t).await;
    c.send(json!({"type": "subscribe", "room": room, "since": {"epoch": epoch, "seq": 1}})).await;
    let gap = c.recv().await;
    assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("trimmed")), "{gap}");
    assert_eq!(gap["from"], json!({"epoch": epoch, "seq": 1}));
    assert_eq!(gap["to"], json!({"epoch": epoch, "seq": earliest - 1}));
    let (cu, events) = c.until("caught_up").await;
    let seqs: Vec<_> = events.iter().map(|e| e["event"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (earliest..=41).collect::<Vec<_>>());
    assert_eq!(cu["seq"], 41);
}

async fn sends_over_websocket_are_idempotent(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 2).await;
    let mut watcher = WsClient::authed(h.url(), &users[1].1).await;
    subscribe(&mut watcher, &room).await;
    let mut c = WsClient::authed(h.url(), &users[0].1).await;
    let send = json!({"type": "send", "id": "1", "room": room, "txn_id": "same", "body": "once"});
    c.send(send.clone()).await;
    let first = c.recv().await;
    c.send(send).await;
    let second = c.recv().await;
    assert_eq!(first["type"], "ack");
    assert_eq!(first, second, "a resent txn is acked with the same event");
    // Shared with HTTP: the same device's token over HTTP gives the same answer.
    let (s, v) = h.api().send(&users[0].1, &room, "same", "once").await;
    assert_eq!((s, &v["seq"], &v["event_id"]), (200, &first["seq"], &first["event_id"]));
    c.send(json!({"type": "send", "id": "2", "room": room, "txn_id": "same", "body": "other"})).await;
    let e = c.recv().await;
    assert_eq!((e["errcode"].as_str(), e["id"].as_str()), (Some("txn_conflict"), Some("2")));
    c.send(json!({"type": "send", "id": "3", "room": room, "txn_id": "sp ace", "body": "x"})).await;
    assert_eq!(c.recv().await["errcode"], "invalid_field");
    c.send(json!({"type": "send", "id": "4", "room": room, "txn_id": "big", "body": "x".repeat(16385)})).await;
    assert_eq!(c.recv().await["errcode"], "message_too_large");
    // Delivered once.
    let f = watcher.recv().await;
    assert_eq!(f["event"]["body"], "once");
    h.api().send(&users[1].1, &room, "marker", "marker").await;
    assert_eq!(watcher.recv().await["event"]["body"], "marker", "the repeat was not delivered again");
}

async fn a_stalled_reader_is_cut_off_without_slowing_others(b: Backend) {
    let h = Harness::start(b).await; // the default 1 MiB outbound limit
    let (room, users) = setup(&h, 3).await;
    // The stalled client subscribes, then never reads.
    let mut stalled = WsClient::authed(h.url(), &users[2].1).await;
    subscribe(&mut stalled, &room).await;
    let mut reader = WsClient::authed(h.url(), &users[1].1).await;
    subscribe(&mut reader, &room).await;
    let mut sender = WsClient::authed(h.url(), &users[0].1).await;
    let body = "x".repeat(4000);
    // ~12 MB: far past what loopback socket buffers hold, and the 1 MiB queue.
    const N: usize = 3000;
    let reading = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            let f = reader.recv().await;
            assert_eq!(f["type"], "event");
            n += 1;
            assert_eq!(f["event"]["seq"].as_u64(), Some(3 + n as u64), "the reader gets everything in order");
        }
    });
    // In rounds of 50 acked sends, so that bursts stay well under the limit
    // and only a client that does not read at all overflows.
    for round in 0..N / 50 {
        for n in round * 50..(round + 1) * 50 {
            sender.send(json!({"type": "send", "room": room, "txn_id": format!("f{n}"), "body": body})).await;
        }
        for _ in 0..50 {
            assert_eq!(sender.recv().await["type"], "ack");
        }
    }
    tokio::time::timeout(Duration::from_secs(60), reading).await.expect("the reader was not slowed down").unwrap();
    // The stalled client: whatever it was sent, then close 4008.
    let mut last_seq = 0;
    let code = loop {
        match stalled.next().await {
            Next::Frame(f) => {
                if f["type"] == "event" {
                    let s = f["event"]["seq"].as_u64().unwrap();
                    assert_eq!(s, if last_seq == 0 { 4 } else { last_seq + 1 }, "in order until cut");
                    last_seq = s;
                }
            }
            Next::Closed(c) => break c,
        }
    };
    assert_eq!(code, Some(4008), "cut off as a slow consumer");
    assert!(last_seq < 3 + N as u64, "it did not get everything");
}

async fn bad_frames_get_errors_or_clean_closes(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 1).await;
    let t = &users[0].1;
    let mut c = WsClient::authed(h.url(), t).await;
    for (frame, code) in [
        ("{nope", "malformed_json"),
        ("[1]", "invalid_field"),
        (r#"{"id":"x"}"#, "invalid_field"),
        (r#"{"type":"dance","id":"d"}"#, "unknown_type"),
        (r#"{"type":"ping","extra":true}"#, "invalid_field"),
        (r#"{"type":"join","room":5}"#, "invalid_field"),
        (r#"{"type":5,"id":"g"}"#, "invalid_field"),
        (r#"{"type":"join","room":"bad room"}"#, "invalid_room"),
        (r##"{"type":"subscribe","room":"#nowhere:other.example"}"##, "room_not_found"),
        (r#"{"type":"subscribe","room":"notjoined"}"#, "room_not_found"),
    ] {
        c.send_raw(Message::text(frame)).await;
        let e = c.recv().await;
        assert_eq!((e["type"].as_str(), e["errcode"].as_str()), (Some("error"), Some(code)), "{frame}: {e}");
    }
    c.send_raw(Message::text(r#"{"type":"join","room":5,"id":"j"}"#)).await;
    let e = c.recv().await;
    assert!(e["error"].as_str().unwrap().starts_with("room:"), "names the field like HTTP: {e}");
    assert_eq!(e["id"], "j");
    c.send_raw(Message::text(r#"{"type":5,"id":"g"}"#)).await;
    assert_eq!(c.recv().await["id"], "g", "an error keeps the id of a frame with a bad type");
    let id = "i".repeat(65);
    c.send(json!({"type": "ping", "id": id})).await;
    assert_eq!(c.recv().await["errcode"], "invalid_field");
    c.send(json!({"type": "ping", "id": "still-open"})).await;
    assert_eq!(c.recv().await["id"], "still-open", "errors leave the connection open");
    // Binary: 1003. Oversized: 1009. Invalid UTF-8: 1007.
    let mut c = WsClient::authed(h.url(), t).await;
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(c.closed().await, Some(1003));
    let mut c = WsClient::authed(h.url(), t).await;
    c.send_raw(Message::text("x".repeat(65 * 1024 + 1))).await;
    assert_eq!(c.closed().await, Some(1009));
    let mut c = WsClient::authed(h.url(), t).await;
    let frame = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await;
    assert_eq!(c.closed().await, Some(1007));
    // Nothing stored was lost, and the server still answers.
    let (s, page) = h.api().messages(t, &room, "").await;
    assert_eq!((s, page["latest_seq"].as_u64()), (200, Some(1)));
}

async fn revoking_the_token_closes_the_socket(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let name = uniq("ann");
    let (_, t1) = api.user(&name).await;
    let (_, t2) = api.login(&name).await;
    let mut c1 = WsClient::authed(h.url(), &t1).await;
    let mut c2 = WsClient::authed(h.url(), &t2).await;
    assert_eq!(api.call("POST", "/logout", Some(&t1), None).await.0, 200);
    assert_eq!(c1.closed().await, Some(4001));
    c2.send(json!({"type": "ping"})).await;
    assert_eq!(c2.recv().await["type"], "pong", "other devices stay connected");
    let (_, t3) = api.login(&name).await;
    assert_eq!(api.call("POST", "/logout/all", Some(&t3), None).await.0, 200);
    assert_eq!(c2.closed().await, Some(4001));
}

async fn leaving_ends_subscriptions(b: Backend) {
    let h = Harness::start(b).await;
    let (room, users) = setup(&h, 2).await;
    let mut c = WsClient::authed(h.url(), &users[1].1).await;
    subscribe(&mut c, &room).await;
    assert_eq!(h.api().call("POST", &format!("/rooms/{room}/leave"), Some(&users[1].1), None).await.0, 200);
    let (u, before) = c.until("unsubscribed").await;
    assert_eq!(u["reason"], "left");
    assert_eq!(bodies(&before).len(), before.len().min(1), "at most its own leave event first");
    h.api().send(&users[0].1, &room, "after", "after").await;
    c.send(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(c.recv().await["type"], "pong", "no events after leaving");
    // Over the socket: join, leave, unsubscribe answers.
    c.send(json!({"type": "join", "id": "j", "room": room})).await;
    let j = c.recv().await;
    assert_eq!((j["type"].as_str(), j["id"].as_str()), (Some("joined"), Some("j")));
    subscribe(&mut c, &room).await;
    c.send(json!({"type": "unsubscribe", "id": "u", "room": room})).await;
    let u = c.recv().await;
    assert_eq!((u["type"].as_str(), u["id"].as_str()), (Some("unsubscribed"), Some("u")));
    c.send(json!({"type": "leave", "id": "l", "room": room})).await;
    let l = c.recv().await;
    assert_eq!((l["type"].as_str(), l["id"].as_str(), &l["room_id"]), (Some("left"), Some("l"), &j["room_id"]));
    // Leaving a subscribed room: `left`, then at once `unsubscribed`.
    c.send(json!({"type": "join", "room": room})).await;
    assert_eq!(c.recv().await["type"], "joined");
    subscribe(&mut c, &room).await;
    c.send(json!({"type": "leave", "id": "l2", "room": room})).await;
    let l = c.recv().await;
    assert_eq!((l["type"].as_str(), l["id"].as_str()), (Some("left"), Some("l2")), "{l}");
    let u = c.recv().await;
    assert_eq!(
        (u["type"].as_str(), u["reason"].as_str(), &u["room_id"]),
        (Some("unsubscribed"), Some("left"), &j["room_id"])
    );
    c.send(json!({"type": "send", "id": "s", "room": room, "txn_id": "t", "body": "x"})).await;
    assert_eq!(c.recv().await["errcode"], "not_member");
}

async fn heartbeats_close_silent_connections(b: Backend) {
    let h = Harness::start_with(b, |c| c.ws_ping_interval = Duration::from_millis(300)).await;
    let (_, users) = setup(&h, 1).await;
    // A client that reads but never answers: ping control frames, then 4003.
    let mut raw = RawWs::connect(h.server.addr, Some(&users[0].1)).await;
    assert_eq!(raw.frame().await.0, 0x1, "ready");
    let mut pings = 0;
    let code = loop {
        match raw.frame().await {
            (0x9, p) => {
                assert!(p.is_empty());
                pings += 1;
            }
            (0x8, p) => break u16::from_be_bytes([p[0], p[1]]),
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(code, 4003);
    assert!(pings >= 1, "pinged before being closed for silence");
    // A client that reads answers pings (tungstenite does) and stays well past that.
    let mut c = WsClient::authed(h.url(), &users[0].1).await;
    let mut pings = 0;
    while pings < 5 {
        use futures_util::StreamExt;
        match tokio::time::timeout(Duration::from_secs(10), c.ws.next()).await.expect("a ping within 10 s") {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("an attentive client got {other:?}"),
        }
    }
    c.send(json!({"type": "ping", "id": "still"})).await;
    assert_eq!(c.recv().await["id"], "still");
}

async fn origins_are_checked(b: Backend) {
    let h = Harness::start_with(b, |c| c.allow_origins = vec!["https://chat.example".into()]).await;
    let (_, users) = setup(&h, 1).await;
    let t = &users[0].1;
    let host = h.server.addr.to_string();
    let same = format!("http://{host}");
    assert!(WsClient::connect_with(h.url(), Some(t), &[("origin", &same)]).await.is_ok(), "same origin");
    assert!(
        WsClient::connect_with(h.url(), Some(t), &[("origin", "https://chat.example")]).await.is_ok(),
        "allow-listed"
    );
    let err =
        WsClient::connect_with(h.url(), Some(t), &[("origin", "https://evil.example")]).await.err().expect("refused");
    assert!(err.to_string().contains("403"), "{err}");
    // No subprotocol: refused.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = format!("{}/_parlor/client/v1/ws", h.url().replacen("http", "ws", 1)).into_client_request().unwrap();
    let err = tokio_tungstenite::connect_async(req).await.expect_err("refused");
    assert!(err.to_string().contains("400"), "{err}");
}

async fn a_ping_flood_that_never_reads_is_cut_off(b: Backend) {
    // Unauthenticated (the auth timeout out of the way) and with a short
    // heartbeat, so that the close frame's wait for a peer that never reads
    // ends soon.
    let h = Harness::start_with(b, |c| {
        c.ws_auth_timeout = Duration::from_secs(300);
        c.ws_ping_interval = Duration::from_secs(1);
    })
    .await;
    let mut raw = RawWs::connect(h.server.addr, None).await;
    let mut batch = Vec::new();
    for _ in 0..1000 {
        wsframe::encode_masked(&mut batch, wsframe::OpCode::Ping, &[b'p'; 125], [7, 7, 7, 7]);
    }
    // Before the fix the server read every ping and queued every pong: 48 MiB
    // of pings went in (and 47 MiB of pongs sat in its memory). Now the pongs
    // count against the 1 MiB outbound bound: past it (plus what the kernel
    // buffers take) the server closes and stops reading.
    const MAX: usize = 48 << 20;
    let mut sent = 0;
    let refused = loop {
        if sent >= MAX {
            break false;
        }
        match tokio::time::timeout(Duration::from_secs(30), raw.stream.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) | Err(_) => break true,
        }
    };
    assert!(refused, "the server took {sent} bytes of pings from a client that never reads");
    eprintln!("ping flood: the server stopped taking pings after {} KiB", sent >> 10);
    // It still serves everyone else.
    assert_eq!(h.api().call("GET", "/account/whoami", Some("x"), None).await.0, 401);
}

async fn close_codes_are_checked_and_answered(b: Backend) {
    let h = Harness::start(b).await;
    for (sent, answer) in
        [(Some(1000u16), 1000u16), (Some(1001), 1000), (Some(3000), 1000), (Some(4999), 1000), (None, 1000)]
    {
        let mut raw = RawWs::connect(h.server.addr, None).await;
        raw.send(0x8, &sent.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default()).await;
        let (op, p) = raw.frame().await;
        assert_eq!((op, u16::from_be_bytes([p[0], p[1]])), (0x8, answer), "close {sent:?}");
        assert!(raw.eof().await, "the server closes the TCP connection after the handshake");
    }
    // RFC 6455 §7.4: codes a peer may not send fail the connection with 1002.
    for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535] {
        let mut raw = RawWs::connect(h.server.addr, None).await;
        raw.send(0x8, &bad.to_be_bytes()).await;
        let (op, p) = raw.frame().await;
        assert_eq!((op, u16::from_be_bytes([p[0], p[1]])), (0x8, 1002), "close {bad}");
    }
    let mut raw = RawWs::connect(h.server.addr, None).await;
    raw.send(0x8, &[0x03, 0xe8, 0xff]).await;
    let (op, p) = raw.frame().await;
    assert_eq!((op, u16::from_be_bytes([p[0], p[1]])), (0x8, 1007), "a close reason that is not UTF-8");
}

/// A bare WebSocket client over TCP that does exactly what it is told:
/// it never answers pings and sends any frame, valid or not.
struct RawWs {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(addr: std::net::SocketAddr, token: Option<&str>) -> Self {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "GET /_parlor/client/v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: parlor.v1\r\n{auth}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
        buf.drain(..end);
        RawWs { stream, buf }
    }

    async fn send(&mut self, op: u8, payload: &[u8]) {
        let mut out = Vec::new();
        wsframe::encode_masked(&mut out, wsframe::OpCode::from_u8(op).unwrap(), payload, [1, 2, 3, 4]);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next server frame (opcode, payload); panics after 10 s or at EOF.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(h) = wsframe::parse_header(&self.buf, wsframe::Role::Client).unwrap() {
                let end = h.len + h.payload_len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[h.len..end].to_vec();
                    self.buf.drain(..end);
                    return (h.opcode as u8, payload);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("a frame within 10 s")
                .unwrap();
            assert!(n > 0, "EOF while waiting for a frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closes the connection (within 10 s), once all it sent is read.
    async fn eof(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        matches!(tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await, Ok(Ok(0)))
    }
}

//! Proof that chatbench's delivery checks catch a misbehaving server, end to
//! end: a tiny fake Parlor (just enough HTTP for register/login/join, and a
//! WebSocket built on tokio-tungstenite, an implementation independent of
//! chatbench's own) that can drop, duplicate or reorder one event for one
//! subscriber. The real `chatbench` binary runs `fanout` against it, and its
//! JSON must report exactly the injected faults — and nothing when there are none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Faults to inject, each on the event with a given seq, for the subscriber
/// that subscribed in a given position (0 = first).
#[derive(Clone, Copy, Default)]
struct Faults {
    /// (subscriber, seq): never deliver this event to this subscriber.
    drop: Option<(usize, u64)>,
    /// (subscriber, seq): deliver this event twice.
    duplicate: Option<(usize, u64)>,
    /// (subscriber, seq): hold this event back and deliver it after the next one.
    swap: Option<(usize, u64)>,
}

struct Sub {
    tx: mpsc::UnboundedSender<String>,
    held: Option<String>,
}

#[derive(Default)]
struct Room {
    seq: u64,
    subs: Vec<Sub>,
}

struct Fake {
    faults: Faults,
    rooms: Mutex<HashMap<String, Room>>,
}

impl Fake {
    /// Append a message and fan it out, applying the faults.
    fn append(&self, room_id: &str, sender: &str, body: &str) -> u64 {
        let mut rooms = self.rooms.lock().unwrap();
        let room = rooms.entry(room_id.to_string()).or_default();
        room.seq += 1;
        let seq = room.seq;
        let frame = json!({"type": "event", "room_id": room_id, "epoch": "e1",
            "event": {"event_id": format!("$e{seq}"), "seq": seq, "type": "message", "sender": sender, "body": body, "ts": 1}})
        .to_string();
        for (i, sub) in room.subs.iter_mut().enumerate() {
            if self.faults.drop == Some((i, seq)) {
                continue;
            }
            if self.faults.swap == Some((i, seq)) {
                sub.held = Some(frame.clone());
                continue;
            }
            let _ = sub.tx.send(frame.clone());
            if self.faults.duplicate == Some((i, seq)) {
                let _ = sub.tx.send(frame.clone());
            }
            if let Some(h) = sub.held.take() {
                let _ = sub.tx.send(h);
            }
        }
        seq
    }

    fn subscribe(&self, room_id: &str, tx: mpsc::UnboundedSender<String>) -> u64 {
        let mut rooms = self.rooms.lock().unwrap();
        let room = rooms.entry(room_id.to_string()).or_default();
        room.subs.push(Sub { tx, held: None });
        room.seq
    }
}

async fn serve(listener: TcpListener, fake: Arc<Fake>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let fake = fake.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 64];
            // Peek so the WebSocket library still sees the whole upgrade request.
            let n = loop {
                let n = stream.peek(&mut head).await.unwrap_or(0);
                if n == 0 || head[..n].contains(&b'\n') || n == head.len() {
                    break n;
                }
                tokio::task::yield_now().await;
            };
            if head[..n].starts_with(b"GET /_parlor/client/v1/ws") {
                websocket(stream, fake).await;
            } else {
                let _ = http(stream).await;
            }
        });
    }
}

/// Just enough HTTP/1.1 (keep-alive, Content-Length bodies) for chatbench's setup.
async fn http(stream: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).await?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let p = path.strip_prefix("/_parlor/client/v1").unwrap_or(&path);
        let (status, answer) = match (method.as_str(), p) {
            ("POST", "/register") => {
                ("201 Created", json!({"user_id": format!("@{}:fake", req["username"].as_str().unwrap_or(""))}))
            }
            ("POST", "/login") => {
                let name = req["username"].as_str().unwrap_or("");
                (
                    "200 OK",
                    json!({"user_id": format!("@{name}:fake"), "device_id": "D", "access_token": format!("tok-{name}")}),
                )
            }
            ("GET", "/account/whoami") => ("200 OK", json!({"user_id": "@x:fake", "device_id": "D"})),
            ("POST", p) if p.starts_with("/rooms/") && p.ends_with("/join") => {
                let name = &p["/rooms/".len()..p.len() - "/join".len()];
                ("200 OK", json!({"room_id": format!("!{name}:fake"), "alias": format!("#{name}:fake")}))
            }
            _ => ("404 Not Found", json!({"errcode": "not_found", "error": "no such endpoint"})),
        };
        let body = answer.to_string();
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        r.get_mut().write_all(resp.as_bytes()).await?;
    }
}

// The handshake callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
async fn websocket(stream: TcpStream, fake: Arc<Fake>) {
    let mut user = String::new();
    let callback = |req: &Request, mut resp: Response| {
        let token = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        user = format!("@{}:fake", token.trim_start_matches("Bearer tok-"));
        resp.headers_mut().insert("sec-websocket-protocol", "parlor.v1".parse().unwrap());
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _ = tx.send(json!({"type": "ready", "user_id": user, "device_id": "D"}).to_string());
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { return };
                if sink.send(Message::text(out)).await.is_err() { return }
            }
            msg = source.next() => {
                let Some(Ok(msg)) = msg else { return };
                let Message::Text(text) = msg else { continue };
                let f: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                let room = f["room"].as_str().unwrap_or("").to_string();
                match f["type"].as_str() {
                    Some("subscribe") => {
                        let seq = fake.subscribe(&room, tx.clone());
                        let _ = tx.send(json!({"type": "caught_up", "id": f["id"], "room_id": room, "epoch": "e1", "seq": seq}).to_string());
                    }
                    Some("send") => {
                        let seq = fake.append(&room, &user, f["body"].as_str().unwrap_or(""));
                        let _ = tx.send(json!({"type": "ack", "id": f["id"], "room_id": room, "event_id": format!("$e{seq}"), "seq": seq}).to_string());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Run `chatbench fanout` (1 room × 3 members, 30 messages) against a fake
/// server with `faults`; returns the JSON result and the exit code.
async fn bench_against(faults: Faults) -> (Value, i32) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake { faults, rooms: Mutex::new(HashMap::new()) });
    let server = tokio::spawn(serve(listener, fake));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args(["--server", &format!("http://{addr}"), "--json", "--drain-timeout", "1"])
        .args(["fanout", "--rooms", "1", "--members", "3", "--rate", "300", "--messages", "30"])
        .output()
        .await
        .unwrap();
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr: {stderr}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}; stderr: {stderr}"));
    eprintln!("chatbench said: {v}");
    (v, out.status.code().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_server_passes_every_check() {
    let (v, code) = bench_against(Faults::default()).await;
    assert_eq!(v["expected"], 90, "{v}");
    assert_eq!(v["delivered"], 90, "{v}");
    for k in ["lost", "duplicates", "out_of_order", "seq_gaps", "seq_conflicts", "unacked"] {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_duplicated_and_reordered_events_are_each_caught() {
    let faults = Faults { drop: Some((0, 5)), duplicate: Some((1, 12)), swap: Some((2, 20)) };
    let (v, code) = bench_against(faults).await;
    assert_eq!(v["expected"], 90, "{v}");
    assert_eq!(v["lost"], 1, "the dropped event: {v}");
    assert_eq!(v["duplicates"], 1, "the duplicated event: {v}");
    assert_eq!(v["out_of_order"], 1, "the held-back event: {v}");
    assert_eq!(v["delivered"], 89, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(code, 3, "a failed check is exit status 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_alone_is_attributed_to_its_own_counter() {
    for (faults, field) in [
        (Faults { drop: Some((1, 7)), ..Faults::default() }, "lost"),
        (Faults { duplicate: Some((2, 3)), ..Faults::default() }, "duplicates"),
        (Faults { swap: Some((0, 9)), ..Faults::default() }, "out_of_order"),
    ] {
        let (v, _) = bench_against(faults).await;
        for k in ["lost", "duplicates", "out_of_order"] {
            assert_eq!(v[k], u64::from(k == field), "{field} injected, {k} counted: {v}");
        }
    }
}

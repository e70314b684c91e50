//! §8 "Typing and presence": the `typing` client frame and its refusals,
//! `typing {room, user_ids}` to subscribers (ended by `typing: false` and by
//! a message), nothing of it in history, and `presence` frames and the
//! members list's `presence` as a user's sockets open and close; read
//! marks (`POST /rooms/{room}/read`, the `read` frame), `receipt` frames
//! and `unread` in the rooms list (§6).

use std::time::Duration;

use serde_json::{Value, json};

use super::s;
use super::websocket::read_replay;
use crate::ctx::{Ctx, User};
use crate::failure::{Failure, Result};
use crate::http::Request;
use crate::runner::Case;
use crate::ws::{Incoming, Ws};
use crate::{case, check_eq, fail};

/// The §6 (HTTP) cases: registered with the other room cases, so that the
/// suite keeps the spec's order.
pub fn http_cases() -> Vec<Case> {
    vec![case!("live::read_marks_and_unread", "6", read_marks_and_unread)]
}

/// The §8 (WebSocket) cases.
pub fn cases() -> Vec<Case> {
    vec![
        case!("live::typing_reaches_subscribers", "8", typing_reaches_subscribers),
        case!("live::typing_ended_by_a_message", "8", typing_ended_by_a_message),
        case!("live::typing_needs_a_subscription", "8", typing_needs_a_subscription),
        case!("live::presence_frames_and_members", "8", presence_frames_and_members),
        case!("live::read_frame", "8", read_frame),
    ]
}

/// How long a change may take to reach another connection: the spec allows
/// coalescing over a quarter of a second, and several processes a hop over
/// their bus.
const LIVE_WAIT: Duration = Duration::from_secs(5);

/// The next frame of type `ty`, skipping others.
async fn next_of(ws: &mut Ws, ty: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + LIVE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await? {
            Incoming::Frame(v) if v["type"] == ty => return Ok(v),
            Incoming::Frame(_) => continue,
            other => fail!("waiting for a `{ty}` frame: {other:?}"),
        }
    }
}

/// The next `presence` frame about `user_id` (others, such as the
/// watcher's own, skipped).
async fn presence_frame(ws: &mut Ws, user_id: &str) -> Result<Value> {
    loop {
        let p = next_of(ws, "presence").await?;
        if s(&p, "user_id") == user_id {
            return Ok(p);
        }
    }
}

/// The user list of the next `typing` frame, which must name `room_id`.
async fn typing_list(ws: &mut Ws, room_id: &str) -> Result<Vec<String>> {
    let f = next_of(ws, "typing").await?;
    check_eq!(s(&f, "room"), room_id, "room of {f}");
    Ok(f["user_ids"].as_array().into_iter().flatten().map(|u| u.as_str().unwrap_or_default().to_owned()).collect())
}

async fn subscribed(ctx: &Ctx, user: &User, room_id: &str) -> Result<Ws> {
    let mut ws = ctx.ws(user).await?;
    ws.follow_live();
    ws.send(json!({"type": "subscribe", "room": room_id, "id": "s"})).await?;
    read_replay(&mut ws, room_id, "s").await?;
    Ok(ws)
}

async fn typing_reaches_subscribers(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "typing").await?;
    ctx.join(&b, &room.room_id).await?;
    let mut watcher = subscribed(ctx, &b, &room.room_id).await?;
    let mut typer = subscribed(ctx, &a, &room.room_id).await?;
    typer.send(json!({"type": "typing", "room": room.alias, "typing": true})).await?;
    check_eq!(typing_list(&mut watcher, &room.room_id).await?, vec![a.user_id.clone()], "typing after `typing: true`");
    typer.send(json!({"type": "typing", "room": room.room_id, "typing": false})).await?;
    check_eq!(typing_list(&mut watcher, &room.room_id).await?, Vec::<String>::new(), "typing after `typing: false`");
    // Never in the room log.
    let events = ctx.all_events(&b, &room.room_id).await?;
    let types: Vec<&str> = events.iter().map(|e| s(e, "type")).collect();
    check_eq!(types, vec!["join", "join"], "the room's history");
    typer.close().await;
    watcher.close().await;
    Ok(())
}

async fn typing_ended_by_a_message(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "typmsg").await?;
    ctx.join(&b, &room.room_id).await?;
    let mut watcher = subscribed(ctx, &b, &room.room_id).await?;
    let mut typer = subscribed(ctx, &a, &room.room_id).await?;
    typer.send(json!({"type": "typing", "room": room.name, "typing": true})).await?;
    check_eq!(typing_list(&mut watcher, &room.room_id).await?, vec![a.user_id.clone()], "typing after `typing: true`");
    ctx.send(&a, &room.room_id, &ctx.txn(), "done typing").await?;
    check_eq!(typing_list(&mut watcher, &room.room_id).await?, Vec::<String>::new(), "typing after a message");
    typer.close().await;
    watcher.close().await;
    Ok(())
}

async fn typing_needs_a_subscription(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "typnosub").await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send(json!({"type": "typing", "room": room.room_id, "typing": true, "id": "t1"})).await?;
    ws.expect_error("not_subscribed", Some("t1")).await?;
    ws.send_text(json!({"type": "typing", "room": "!!", "typing": true, "id": "t2"}).to_string()).await?;
    ws.expect_error("invalid_room", Some("t2")).await?;
    ws.send_text(json!({"type": "typing", "room": room.room_id, "id": "t3"}).to_string()).await?;
    ws.expect_error("invalid_field", Some("t3")).await?;
    // A valid one is not answered: the next answer is the pong.
    ws.send(json!({"type": "subscribe", "room": room.room_id, "id": "s"})).await?;
    read_replay(&mut ws, &room.room_id, "s").await?;
    ws.send(json!({"type": "typing", "room": room.room_id, "typing": false, "id": "t4"})).await?;
    let pong = ws.call(json!({"type": "ping"}), "p", "pong").await?;
    check_eq!(s(&pong, "type"), "pong", "the answer after a valid typing frame");
    ws.close().await;
    Ok(())
}

async fn member_presence(ctx: &Ctx, asker: &User, room_id: &str, user_id: &str) -> Result<String> {
    let v = ctx
        .http
        .send(Request::get(Ctx::api(&format!("/rooms/{}/members", crate::http::enc(room_id)))).token(&asker.token))
        .await?
        .ok(200, "members_response")?;
    let found = v["members"].as_array().into_iter().flatten().find(|m| s(m, "user_id") == user_id);
    let Some(m) = found else { fail!("{user_id} is not in the members list: {v}") };
    Ok(s(m, "presence").to_owned())
}

/// Reads the members list until `user_id`'s presence is `want`.
async fn wait_presence(ctx: &Ctx, asker: &User, room_id: &str, user_id: &str, want: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + LIVE_WAIT;
    loop {
        let got = member_presence(ctx, asker, room_id, user_id).await?;
        if got == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::Check(format!("members says {user_id} is {got:?}, not {want:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn presence_frames_and_members(ctx: &Ctx) -> Result<()> {
    // Users of this case's own: no other case opens their sockets.
    let (a, b) = (ctx.user("pa").await?, ctx.user("pb").await?);
    let room = ctx.room(&b, "presence").await?;
    ctx.join(&a, &room.room_id).await?;
    let mut watcher = subscribed(ctx, &b, &room.room_id).await?;
    wait_presence(ctx, &b, &room.room_id, &b.user_id, "online").await?;
    check_eq!(member_presence(ctx, &b, &room.room_id, &a.user_id).await?, "offline", "presence before a socket");
    let ws = ctx.ws(&a).await?;
    let p = presence_frame(&mut watcher, &a.user_id).await?;
    check_eq!(s(&p, "presence"), "online", "{} after their socket opened: {p}", a.user_id);
    wait_presence(ctx, &b, &room.room_id, &a.user_id, "online").await?;
    ws.close().await;
    let p = presence_frame(&mut watcher, &a.user_id).await?;
    check_eq!(s(&p, "presence"), "offline", "{} after their socket closed: {p}", a.user_id);
    wait_presence(ctx, &b, &room.room_id, &a.user_id, "offline").await?;
    watcher.close().await;
    Ok(())
}

async fn unread(ctx: &Ctx, user: &User, room_id: &str) -> Result<u64> {
    let v = ctx.http.send(Request::get(Ctx::api("/rooms")).token(&user.token)).await?.ok(200, "rooms_response")?;
    let found = v["rooms"].as_array().into_iter().flatten().find(|r| s(r, "room_id") == room_id);
    let Some(r) = found else { fail!("{room_id} is not in the rooms list: {v}") };
    match r["unread"].as_u64() {
        Some(n) => Ok(n),
        None => fail!("no unread count for {room_id}: {r}"),
    }
}

fn read_req(user: &User, room: &str, seq: u64) -> Request {
    Request::post(Ctx::api(&format!("/rooms/{}/read", crate::http::enc(room))))
        .token(&user.token)
        .json(&json!({ "seq": seq }))
}

async fn read_marks_and_unread(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "unread").await?;
    ctx.join(&b, &room.room_id).await?;
    ctx.send(&b, &room.room_id, &ctx.txn(), "one").await?;
    ctx.send(&b, &room.room_id, &ctx.txn(), "two").await?;
    let mine = ctx.send(&a, &room.room_id, &ctx.txn(), "mine").await?;
    let latest = mine["seq"].as_u64().unwrap_or_default();
    check_eq!(unread(ctx, &a, &room.room_id).await?, 2, "unread before any mark (others' messages only)");
    let mut watcher = subscribed(ctx, &b, &room.room_id).await?;
    ctx.http.send(read_req(&a, &room.alias, latest)).await?.ok(200, "empty")?;
    let r = next_of(&mut watcher, "receipt").await?;
    check_eq!(s(&r, "room"), room.room_id.as_str(), "receipt room");
    check_eq!(s(&r, "user_id"), a.user_id.as_str(), "receipt user_id");
    check_eq!(r["seq"].as_u64(), Some(latest), "receipt seq");
    check_eq!(unread(ctx, &a, &room.room_id).await?, 0, "unread after marking the latest read");
    // Never back.
    ctx.http.send(read_req(&a, &room.room_id, 1)).await?.ok(200, "empty")?;
    check_eq!(unread(ctx, &a, &room.room_id).await?, 0, "unread after an older mark");
    ctx.http.send(read_req(&a, &room.room_id, latest + 1)).await?.err(400, "invalid_field")?;
    let c = ctx.shared(2).await?;
    ctx.http.send(read_req(&c, &room.room_id, 1)).await?.err(403, "not_member")?;
    ctx.send(&b, &room.room_id, &ctx.txn(), "three").await?;
    check_eq!(unread(ctx, &a, &room.room_id).await?, 1, "unread after one more message");
    // A redacted message no longer counts, and the `redaction` event is no message.
    let gone = ctx.send(&b, &room.room_id, &ctx.txn(), "four").await?;
    check_eq!(unread(ctx, &a, &room.room_id).await?, 2, "unread after another message");
    let path = Ctx::api(&format!(
        "/rooms/{}/redact/{}/{}",
        crate::http::enc(&room.room_id),
        crate::http::enc(s(&gone, "event_id")),
        crate::http::enc(&ctx.txn())
    ));
    ctx.send_patiently(Request::put(path).token(&b.token).json(&json!({}))).await?.ok(200, "send_response")?;
    check_eq!(unread(ctx, &a, &room.room_id).await?, 1, "unread after its sender redacted one of them");
    watcher.close().await;
    Ok(())
}

async fn read_frame(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "readws").await?;
    ctx.join(&b, &room.room_id).await?;
    let sent = ctx.send(&b, &room.room_id, &ctx.txn(), "read me").await?;
    let seq = sent["seq"].as_u64().unwrap_or_default();
    let mut watcher = subscribed(ctx, &b, &room.room_id).await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send(json!({"type": "read", "room": room.room_id, "seq": seq, "id": "r1"})).await?;
    let r = next_of(&mut watcher, "receipt").await?;
    check_eq!(s(&r, "user_id"), a.user_id.as_str(), "receipt user_id");
    check_eq!(r["seq"].as_u64(), Some(seq), "receipt seq");
    ws.send(json!({"type": "read", "room": room.room_id, "seq": seq + 100, "id": "r2"})).await?;
    ws.expect_error("invalid_field", Some("r2")).await?;
    let c = ctx.shared(2).await?;
    let mut other = ctx.ws(&c).await?;
    other.send(json!({"type": "read", "room": room.room_id, "seq": 1, "id": "r3"})).await?;
    other.expect_error("not_member", Some("r3")).await?;
    check_eq!(unread(ctx, &a, &room.room_id).await?, 0, "unread after the read frame");
    for w in [ws, other, watcher] {
        w.close().await;
    }
    Ok(())
}

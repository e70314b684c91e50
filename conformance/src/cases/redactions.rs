//! §12 Redactions, and edits over the WebSocket: who may redact, what a
//! redacted message reads as (history, live, resume), idempotency, the
//! refusals; the `send` frame's `replaces`.

use serde_json::{Value, json};

use super::websocket::{next_frame, subscribe};
use super::{n, s};
use crate::ctx::{Ctx, User};
use crate::failure::Result;
use crate::http::{Request, Response, enc};
use crate::runner::Case;
use crate::{case, check, check_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!("redactions::sender_redacts", "12", sender_redacts),
        case!("redactions::moderator_redacts_anothers", "12", moderator_redacts_anothers),
        case!("redactions::refusals", "12", refusals),
        case!("redactions::live_and_resume", "12", live_and_resume),
        case!("redactions::ws_edit", "12", ws_edit),
    ]
}

fn redact_req(user: &User, room: &str, event_id: &str, txn: &str, body: Option<Value>) -> Request {
    let path = Ctx::api(&format!("/rooms/{}/redact/{}/{}", enc(room), enc(event_id), enc(txn)));
    let req = Request::put(path).token(&user.token);
    match body {
        Some(b) => req.json(&b),
        None => req,
    }
}

async fn redact(ctx: &Ctx, user: &User, room: &str, event_id: &str, txn: &str, body: Value) -> Result<Response> {
    ctx.send_patiently(redact_req(user, room, event_id, txn, Some(body))).await
}

/// The event `event_id` as `user` reads it in the history.
async fn read_event(ctx: &Ctx, user: &User, room: &str, event_id: &str) -> Result<Value> {
    let events = ctx.all_events(user, room).await?;
    match events.into_iter().find(|e| s(e, "event_id") == event_id) {
        Some(e) => Ok(e),
        None => fail!("{event_id} is not in the history of {room}"),
    }
}

/// A redacted message keeps its seq, type, sender and `replaces`, has no
/// body and says `redacted: true`.
fn check_redacted(e: &Value, original: &Value, sender: &User) -> Result<()> {
    check!(
        e.get("body").is_none() && e["redacted"] == json!(true),
        "a redacted message still has a body or lacks redacted: true: {e}"
    );
    check!(
        s(e, "type") == "message" && s(e, "sender") == sender.user_id && n(e, "seq") == n(original, "seq"),
        "a redacted message lost its type, sender or seq: {e}"
    );
    Ok(())
}

async fn create(ctx: &Ctx, owner: &User) -> Result<String> {
    let v = ctx
        .http
        .send(Request::post(Ctx::api("/rooms")).token(&owner.token).json(&json!({})))
        .await?
        .ok(201, "create_room_response")?;
    Ok(s(&v, "room_id").to_owned())
}

async fn sender_redacts(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "redact").await?.room_id;
    ctx.join(&b, &room).await?;
    let sent = ctx.send(&a, &room, &ctx.txn(), "oops, my password").await?;
    let id = s(&sent, "event_id").to_owned();
    let edit_req = Ctx::send_req(&a, &room, &ctx.txn(), &json!({"body": "oops, my password!", "replaces": id}));
    let edit = ctx.send_patiently(edit_req).await?.ok(200, "send_response")?;
    let txn = ctx.txn();
    let answer = redact(ctx, &a, &room, &id, &txn, json!({"reason": "typo"})).await?.ok(200, "send_response")?;
    check!(n(&answer, "seq") > n(&edit, "seq"), "the redaction's seq is not after the edit's: {answer}");
    // Same txn_id, same request: the same answer; another event: a conflict.
    let again = redact(ctx, &a, &room, &id, &txn, json!({"reason": "typo"})).await?.ok(200, "send_response")?;
    check_eq!(again, answer, "a repeated redaction");
    let other = ctx.send(&a, &room, &ctx.txn(), "keep me").await?;
    redact(ctx, &a, &room, s(&other, "event_id"), &txn, json!({})).await?.err(409, "txn_conflict")?;
    // As the other member reads it: the message and its edit lose their bodies.
    check_redacted(&read_event(ctx, &b, &room, &id).await?, &sent, &a)?;
    let e = read_event(ctx, &b, &room, s(&edit, "event_id")).await?;
    check_redacted(&e, &edit, &a)?;
    check_eq!(s(&e, "replaces"), id.as_str(), "a redacted edit keeps replaces");
    let r = read_event(ctx, &b, &room, s(&answer, "event_id")).await?;
    check!(
        s(&r, "type") == "redaction"
            && s(&r, "redacts") == id
            && s(&r, "reason") == "typo"
            && s(&r, "sender") == a.user_id,
        "the redaction event: {r}"
    );
    let kept = read_event(ctx, &b, &room, s(&other, "event_id")).await?;
    check!(s(&kept, "body") == "keep me" && kept.get("redacted").is_none(), "another message changed: {kept}");
    // An edit of a redacted message is refused; redacting it again appends another redaction.
    let late = Ctx::send_req(&a, &room, &ctx.txn(), &json!({"body": "too late", "replaces": id}));
    ctx.send_patiently(late).await?.err(400, "invalid_field")?;
    let twice = redact(ctx, &a, &room, &id, &ctx.txn(), json!({})).await?.ok(200, "send_response")?;
    check!(n(&twice, "seq") > n(&answer, "seq"), "a second redaction appends an event: {twice}");
    // Without a body at all.
    let bare = ctx.send(&b, &room, &ctx.txn(), "bare").await?;
    let resp = ctx.send_patiently(redact_req(&b, &room, s(&bare, "event_id"), &ctx.txn(), None)).await?;
    resp.ok(200, "send_response")?;
    Ok(())
}

async fn moderator_redacts_anothers(ctx: &Ctx) -> Result<()> {
    let (a, b, c) = (ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?);
    let room = create(ctx, &a).await?;
    ctx.join(&b, &room).await?;
    ctx.join(&c, &room).await?;
    let spam = ctx.send(&b, &room, &ctx.txn(), "spam one").await?;
    let spam2 = ctx.send(&b, &room, &ctx.txn(), "spam two").await?;
    // A member cannot redact another's message.
    redact(ctx, &c, &room, s(&spam, "event_id"), &ctx.txn(), json!({})).await?.err(403, "forbidden")?;
    check_eq!(s(&read_event(ctx, &c, &room, s(&spam, "event_id")).await?, "body"), "spam one", "a refused redaction");
    // The owner can; so can a moderator.
    redact(ctx, &a, &room, s(&spam, "event_id"), &ctx.txn(), json!({"reason": "spam"}))
        .await?
        .ok(200, "send_response")?;
    check_redacted(&read_event(ctx, &c, &room, s(&spam, "event_id")).await?, &spam, &b)?;
    let role = Request::put(Ctx::api(&format!("/rooms/{}/roles/{}", enc(&room), enc(&c.user_id))))
        .token(&a.token)
        .json(&json!({"role": "moderator"}));
    ctx.http.send(role).await?.ok(200, "empty")?;
    redact(ctx, &c, &room, s(&spam2, "event_id"), &ctx.txn(), json!({})).await?.ok(200, "send_response")?;
    check_redacted(&read_event(ctx, &b, &room, s(&spam2, "event_id")).await?, &spam2, &b)?;
    Ok(())
}

async fn refusals(ctx: &Ctx) -> Result<()> {
    let (a, b, c) = (ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?);
    let room = ctx.room(&a, "redact-no").await?.room_id;
    ctx.join(&b, &room).await?;
    let sent = ctx.send(&a, &room, &ctx.txn(), "mine").await?;
    let id = s(&sent, "event_id");
    let ghost = format!("$nosuchevent:{}", ctx.server_name);
    redact(ctx, &a, &room, &ghost, &ctx.txn(), json!({})).await?.err(404, "event_not_found")?;
    let join = ctx.messages(&a, &room, "after=0&limit=1").await?;
    let join_id = s(&join["events"][0], "event_id");
    redact(ctx, &a, &room, join_id, &ctx.txn(), json!({})).await?.err(400, "invalid_field")?;
    redact(ctx, &b, &room, id, &ctx.txn(), json!({})).await?.err(403, "forbidden")?;
    redact(ctx, &c, &room, id, &ctx.txn(), json!({})).await?.err(403, "not_member")?;
    redact(ctx, &a, &room, id, "bad txn!", json!({})).await?.err(400, "invalid_param")?;
    redact(ctx, &a, &room, id, &ctx.txn(), json!({"reason": "r".repeat(1025)})).await?.err(400, "invalid_field")?;
    redact(ctx, &a, &room, id, &ctx.txn(), json!({"why": "x"})).await?.err(400, "invalid_field")?;
    let nowhere = ctx.room_name("redact-nowhere");
    redact(ctx, &a, &ctx.alias(&nowhere), id, &ctx.txn(), json!({})).await?.err(404, "room_not_found")?;
    check_eq!(s(&read_event(ctx, &a, &room, id).await?, "body"), "mine", "after refused redactions");
    Ok(())
}

/// A live subscriber gets the `redaction` event; a client resuming from
/// before the message replays it redacted.
async fn live_and_resume(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "redact-live").await?.room_id;
    ctx.join(&b, &room).await?;
    let page = ctx.messages(&b, &room, "").await?;
    let since = json!({"epoch": s(&page, "epoch"), "seq": n(&page, "latest_seq")});
    let mut ws = ctx.ws(&b).await?;
    subscribe(&mut ws, &room, None).await?;
    let sent = ctx.send(&a, &room, &ctx.txn(), "gone soon").await?;
    let answer = redact(ctx, &a, &room, s(&sent, "event_id"), &ctx.txn(), json!({})).await?.ok(200, "send_response")?;
    let mut got = Vec::new();
    while got.len() < 2 {
        let f = next_frame(&mut ws).await?;
        match s(&f, "type") {
            "event" if s(&f, "room_id") == room => got.push(f["event"].clone()),
            "event" | "presence" | "typing" | "receipt" => {}
            _ => fail!("expected the message and its redaction, got {f}"),
        }
    }
    check_eq!(s(&got[0], "event_id"), s(&sent, "event_id"), "first live event");
    let r = &got[1];
    check!(
        s(r, "type") == "redaction" && s(r, "redacts") == s(&sent, "event_id") && n(r, "seq") == n(&answer, "seq"),
        "the live redaction: {r}"
    );
    ws.close().await;
    let mut ws = ctx.ws(&b).await?;
    let (gap, replay, _) = subscribe(&mut ws, &room, Some(since)).await?;
    check!(gap.is_none(), "a gap on resume: {gap:?}");
    match replay.iter().find(|e| s(e, "event_id") == s(&sent, "event_id")) {
        Some(e) => check_redacted(e, &sent, &a)?,
        None => fail!("the resume did not replay the message: {replay:?}"),
    }
    check!(replay.iter().any(|e| s(e, "type") == "redaction"), "the resume did not replay the redaction: {replay:?}");
    ws.close().await;
    Ok(())
}

/// The `send` frame's `replaces` edits as the HTTP send does.
async fn ws_edit(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "ws-edit").await?.room_id;
    ctx.join(&b, &room).await?;
    let sent = ctx.send(&a, &room, &ctx.txn(), "helo").await?;
    let id = s(&sent, "event_id");
    let mut ws = ctx.ws(&a).await?;
    let txn = ctx.txn();
    let frame = json!({"type": "send", "room": room, "txn_id": txn, "body": "hello", "replaces": id});
    let ack = ws.call(frame.clone(), "e1", "ack").await?;
    let again = ws.call(frame, "e2", "ack").await?;
    check_eq!(n(&again, "seq"), n(&ack, "seq"), "a repeated edit frame");
    // The same txn_id editing another message: a conflict.
    let other = ctx.send(&a, &room, &ctx.txn(), "other").await?;
    let frame = json!({"type": "send", "room": room, "txn_id": txn, "body": "hello", "replaces": s(&other, "event_id"), "id": "e3"});
    ws.send(frame).await?;
    ws.expect_error("txn_conflict", Some("e3")).await?;
    ws.close().await;
    let e = read_event(ctx, &b, &room, s(&ack, "event_id")).await?;
    check!(s(&e, "body") == "hello" && s(&e, "replaces") == id && s(&e, "type") == "message", "the edit: {e}");
    let mut ws = ctx.ws(&b).await?;
    let frame = json!({"type": "send", "room": room, "txn_id": ctx.txn(), "body": "mine", "replaces": id, "id": "e4"});
    ws.send(frame).await?;
    ws.expect_error("forbidden", Some("e4")).await?;
    ws.close().await;
    Ok(())
}

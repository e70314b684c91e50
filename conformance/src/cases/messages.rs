//! §7 Sending: `{event_id, seq}`, idempotency by `txn_id` (per device, per
//! room), `txn_conflict`, body limits, `txn_id` rules, membership.

use serde_json::json;

use super::{n, s};
use crate::ctx::{Ctx, GOOD_PASSWORD};
use crate::failure::Result;
use crate::runner::Case;
use crate::{case, check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("messages::send_appends_event", "7", send_appends_event),
        case!("messages::send_same_txn_is_idempotent", "7", send_same_txn_is_idempotent),
        case!("messages::send_txn_conflict", "7", send_txn_conflict),
        case!("messages::txn_scoped_per_device", "7", txn_scoped_per_device),
        case!("messages::txn_scoped_per_room", "7", txn_scoped_per_room),
        case!("messages::body_size_limits", "7", body_size_limits),
        case!("messages::txn_id_rules", "7", txn_id_rules),
        case!("messages::send_body_strict", "7", send_body_strict),
        case!("messages::send_not_member", "7", send_not_member),
    ]
}

async fn send_appends_event(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "snd").await?;
    let body = "hello, \u{1f30d} \"quoted\" \\ and\nnewline";
    let v = ctx.send(&user, &room.room_id, &ctx.txn(), body).await?;
    check_eq!(n(&v, "seq"), 2, "seq of the first message after the creator's join");
    let page = ctx.messages(&user, &room.room_id, "after=1").await?;
    let e = &page["events"][0];
    check_eq!(s(e, "event_id"), s(&v, "event_id"), "event_id in history");
    check_eq!(s(e, "type"), "message", "type");
    check_eq!(s(e, "sender"), user.user_id.as_str(), "sender");
    check_eq!(s(e, "body"), body, "body, byte for byte");
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let ts = n(e, "ts");
    check!(
        ts.abs_diff(now_ms) < 10 * 60 * 1000,
        "ts {ts} is not milliseconds since the Unix epoch near now ({now_ms})"
    );
    // Another send in a room by alias and by bare name reaches the same room.
    let v2 = ctx.send(&user, &room.alias, &ctx.txn(), "by alias").await?;
    let v3 = ctx.send(&user, &room.name, &ctx.txn(), "by name").await?;
    check_eq!((n(&v2, "seq"), n(&v3, "seq")), (3, 4), "seqs of sends by alias and by name");
    Ok(())
}

async fn send_same_txn_is_idempotent(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "idem").await?;
    let txn = ctx.txn();
    let first = ctx.send(&user, &room.room_id, &txn, "once").await?;
    for r in [&room.room_id, &room.alias] {
        let again = ctx.send(&user, r, &txn, "once").await?;
        check_eq!(again, first, "answer to the same txn_id and body");
    }
    let events = ctx.all_events(&user, &room.room_id).await?;
    let count = events.iter().filter(|e| s(e, "body") == "once").count();
    check_eq!(count, 1, "events stored for one txn_id sent three times");
    Ok(())
}

async fn send_txn_conflict(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "conf").await?;
    let txn = ctx.txn();
    let first = ctx.send(&user, &room.room_id, &txn, "original").await?;
    ctx.send_raw(&user, &room.room_id, &txn, "changed").await?.err(409, "txn_conflict")?;
    let events = ctx.all_events(&user, &room.room_id).await?;
    check!(!events.iter().any(|e| s(e, "body") == "changed"), "the conflicting body was stored");
    check_eq!(n(events.last().unwrap_or(&json!({})), "seq"), n(&first, "seq"), "latest seq after a conflict");
    Ok(())
}

async fn txn_scoped_per_device(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let other_device = ctx.login(&user.username, GOOD_PASSWORD).await?;
    let room = ctx.room(&user, "pdev").await?;
    let txn = ctx.txn();
    let a = ctx.send(&user, &room.room_id, &txn, "same").await?;
    let b = ctx.send(&other_device, &room.room_id, &txn, "same").await?;
    check!(s(&a, "event_id") != s(&b, "event_id"), "the same txn_id from another device was taken as a retry");
    check_eq!(n(&b, "seq"), n(&a, "seq") + 1, "seq of the other device's send");
    Ok(())
}

async fn txn_scoped_per_room(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let (r1, r2) = (ctx.room(&user, "pr1").await?, ctx.room(&user, "pr2").await?);
    let txn = ctx.txn();
    let a = ctx.send(&user, &r1.room_id, &txn, "same").await?;
    let b = ctx.send(&user, &r2.room_id, &txn, "same").await?;
    check!(s(&a, "event_id") != s(&b, "event_id"), "the same txn_id in another room was taken as a retry");
    check_eq!(n(&b, "seq"), 2, "seq in the second room");
    Ok(())
}

async fn body_size_limits(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "size").await?;
    let max = "x".repeat(16_384);
    let v = ctx.send(&user, &room.room_id, &ctx.txn(), &max).await?;
    ctx.send_raw(&user, &room.room_id, &ctx.txn(), &"x".repeat(16_385)).await?.err(413, "message_too_large")?;
    ctx.send_raw(&user, &room.room_id, &ctx.txn(), "").await?.err(413, "message_too_large")?;
    // Bytes, not characters: 8,193 two-byte characters are 16,386 bytes.
    ctx.send_raw(&user, &room.room_id, &ctx.txn(), &"\u{e9}".repeat(8_193)).await?.err(413, "message_too_large")?;
    let page = ctx.messages(&user, &room.room_id, "").await?;
    check_eq!(n(&page, "latest_seq"), n(&v, "seq"), "latest_seq after refused sends");
    check_eq!(s(&page["events"][1], "body").len(), 16_384, "length of the stored 16,384-byte body");
    Ok(())
}

async fn txn_id_rules(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "txn").await?;
    for bad in ["a b", "a$b", "a+b", "caf\u{e9}", "a%b", "a'b"] {
        ctx.send_raw(&user, &room.room_id, bad, "x").await?.err(400, "invalid_param")?;
    }
    let too_long = format!("{}{}", ctx.txn(), "x".repeat(64));
    ctx.send_raw(&user, &room.room_id, &too_long[..65], "x").await?.err(400, "invalid_param")?;
    // Every allowed character, at exactly 64 bytes.
    let good = format!("{}AZaz09._~-{}", ctx.txn(), "y".repeat(64));
    ctx.send(&user, &room.room_id, &good[..64], "ok").await?;
    Ok(())
}

async fn send_body_strict(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "strict").await?;
    for body in [json!({"body": "x", "format": "html"}), json!({"body": 5}), json!({}), json!({"body": null})] {
        ctx.http.send(Ctx::send_req(&user, &room.room_id, &ctx.txn(), &body)).await?.err(400, "invalid_field")?;
    }
    Ok(())
}

async fn send_not_member(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "snm").await?;
    ctx.send_raw(&b, &room.room_id, &ctx.txn(), "let me in").await?.err(403, "not_member")?;
    let page = ctx.messages(&a, &room.room_id, "").await?;
    check_eq!(n(&page, "latest_seq"), 1, "latest_seq after a refused send");
    Ok(())
}

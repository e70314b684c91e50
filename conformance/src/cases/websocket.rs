//! §8 WebSocket: the upgrade and its refusals, both ways to authenticate,
//! join/leave/subscribe/unsubscribe/send/ping frames, acks and idempotency,
//! live order across clients, resume with `since`, `gap`, bad frames and the
//! close codes a client can provoke.

use std::time::Duration;

use http::HeaderName;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{n, range, s, seqs};
use crate::ctx::{Ctx, Room, User};
use crate::failure::{Failure, Result};
use crate::http::{CLIENT, Request};
use crate::runner::{Case, Needs};
use crate::ws::{Incoming, SUBPROTOCOL, Ws, WsOptions};
use crate::{case, check, check_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!("websocket::plain_get_upgrade_required", "8", plain_get_upgrade_required),
        case!("websocket::missing_subprotocol_refused", "8", missing_subprotocol_refused),
        case!("websocket::subprotocol_selected", "8", subprotocol_selected),
        case!("websocket::forbidden_origin_refused", "8", forbidden_origin_refused),
        case!("websocket::same_origin_allowed", "8", same_origin_allowed),
        case!("websocket::origin_scheme_and_server_name", "8", origin_scheme_and_server_name),
        case!("websocket::auth_by_header", "8", auth_by_header),
        case!("websocket::auth_header_bad_token_refused", "8", auth_header_bad_token_refused),
        case!("websocket::auth_by_first_frame", "8", auth_by_first_frame),
        case!("websocket::auth_frame_bad_token_closes_4001", "8", auth_frame_bad_token_closes_4001),
        case!("websocket::frame_before_auth_refused", "8", frame_before_auth_refused),
        case!("websocket::parse_errors_before_auth_errors", "8", parse_errors_before_auth_errors),
        case!("websocket::already_authenticated", "8", already_authenticated),
        case!("websocket::auth_timeout_closes_4002", "8", auth_timeout_closes_4002).limit(45).background(),
        case!("websocket::heartbeat_timeout_closes_4003", "8", heartbeat_timeout_closes_4003)
            .needs(Needs::PingInterval)
            .limit(300)
            .background(),
        case!("websocket::ping_pong", "8", ping_pong),
        case!("websocket::join_and_leave_frames", "8", join_and_leave_frames),
        case!("websocket::join_refusals", "8", join_refusals),
        case!("websocket::subscribe_live", "8", subscribe_live),
        case!("websocket::unsubscribe", "8", unsubscribe),
        case!("websocket::subscribe_twice", "8", subscribe_twice),
        case!("websocket::leave_ends_subscription", "8", leave_ends_subscription),
        case!("websocket::send_ack", "8", send_ack),
        case!("websocket::send_idempotent", "8", send_idempotent),
        case!("websocket::send_txn_conflict", "8", send_txn_conflict),
        case!("websocket::send_message_too_large", "8", send_message_too_large),
        case!("websocket::send_bad_txn_id", "8", send_bad_txn_id),
        case!("websocket::not_member", "8", not_member),
        case!("websocket::live_order_across_clients", "8", live_order_across_clients),
        case!("websocket::resume_since", "8", resume_since),
        case!("websocket::resume_since_zero", "8", resume_since_zero),
        case!("websocket::gap_on_forged_epoch", "8", gap_on_forged_epoch),
        case!("websocket::gap_when_trimmed", "8", gap_when_trimmed).needs(Needs::Retention).limit(120),
        case!("websocket::since_beyond_latest_caught_up", "8", since_beyond_latest_caught_up),
        case!("websocket::malformed_json_frame", "8", malformed_json_frame),
        case!("websocket::missing_type", "8", missing_type),
        case!("websocket::unknown_type", "8", unknown_type),
        case!("websocket::unknown_or_wrong_fields", "8", unknown_or_wrong_fields),
        case!("websocket::id_too_long", "8", id_too_long),
        case!("websocket::oversized_frame_closes_1009", "8", oversized_frame_closes_1009),
        case!("websocket::binary_frame_closes_1003", "8", binary_frame_closes_1003),
        case!("websocket::bad_utf8_closes_1007", "8", bad_utf8_closes_1007),
        case!("websocket::too_many_subscriptions", "8", too_many_subscriptions).limit(180),
        case!("websocket::logout_closes_4001", "8", logout_closes_4001),
    ]
}

const CLOSE_WAIT: Duration = Duration::from_secs(10);

fn upgrade_request(protocol: Option<&str>) -> Request {
    let mut r = Request::get(format!("{CLIENT}/ws"))
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_VERSION, "13")
        .header(http::header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(p) = protocol {
        r = r.header(http::header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    r
}

/// Reads the answer to a `subscribe`: an optional `gap`, the replayed
/// events, then `caught_up` (echoing `id`). Checks every frame names the room
/// and that events and `caught_up` share one epoch.
pub(super) async fn read_replay(ws: &mut Ws, room_id: &str, id: &str) -> Result<(Option<Value>, Vec<Value>, Value)> {
    let mut gap = None;
    let mut events = Vec::new();
    let mut epoch: Option<String> = None;
    loop {
        let f = next_frame(ws).await?;
        check_eq!(s(&f, "room_id"), room_id, "room_id of {f}");
        match s(&f, "type") {
            "gap" if gap.is_none() && events.is_empty() => gap = Some(f),
            "event" => {
                let e = s(&f, "epoch").to_owned();
                check!(epoch.as_ref().is_none_or(|x| *x == e), "events of one replay in two epochs: {f}");
                epoch = Some(e);
                events.push(f["event"].clone());
            }
            "caught_up" => {
                check!(
                    epoch.as_ref().is_none_or(|x| x == s(&f, "epoch")),
                    "caught_up in another epoch than the events: {f}"
                );
                check_eq!(s(&f, "id"), id, "id echoed by caught_up");
                return Ok((gap, events, f));
            }
            _ => fail!("unexpected frame while replaying: {f}"),
        }
    }
}

pub(super) async fn next_frame(ws: &mut Ws) -> Result<Value> {
    match ws.next(crate::ws::FRAME_WAIT).await? {
        Incoming::Frame(v) => Ok(v),
        Incoming::Closed(code) => fail!("the server closed the connection ({code:?}) unexpectedly"),
        Incoming::Dropped(why) => fail!("the connection dropped unexpectedly: {why}"),
    }
}

/// Subscribes and reads up to `caught_up`.
pub(super) async fn subscribe(
    ws: &mut Ws,
    room_id: &str,
    since: Option<Value>,
) -> Result<(Option<Value>, Vec<Value>, Value)> {
    let mut frame = json!({"type": "subscribe", "room": room_id, "id": "sub"});
    if let Some(since) = since {
        frame["since"] = since;
    }
    ws.send(frame).await?;
    read_replay(ws, room_id, "sub").await
}

/// Reads `count` live `event` frames of `room_id`.
pub(super) async fn live_events(ws: &mut Ws, room_id: &str, count: usize) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let f = next_frame(ws).await?;
        check!(s(&f, "type") == "event" && s(&f, "room_id") == room_id, "expected an event of {room_id}, got {f}");
        out.push(f["event"].clone());
    }
    Ok(out)
}

/// Sends a message over the socket and returns the `ack`, waiting out
/// `rate_limited` answers.
pub async fn ws_send(ws: &mut Ws, room: &str, txn: &str, body: &str, id: &str) -> Result<Value> {
    for _ in 0..100 {
        let v = {
            ws.send(json!({"type": "send", "room": room, "txn_id": txn, "body": body, "id": id})).await?;
            next_frame(ws).await?
        };
        if s(&v, "type") == "error" && s(&v, "errcode") == "rate_limited" {
            tokio::time::sleep(Duration::from_millis(v["retry_after_ms"].as_u64().unwrap_or(1000).clamp(50, 10_000)))
                .await;
            continue;
        }
        check!(s(&v, "type") == "ack", "expected an ack, got {v}");
        check_eq!(s(&v, "id"), id, "id echoed by ack");
        return Ok(v);
    }
    fail!("still rate limited after 100 tries")
}

async fn room_with(ctx: &Ctx, user: &User, tag: &str, msgs: usize) -> Result<Room> {
    let room = ctx.room(user, tag).await?;
    ctx.send_many(user, &room.room_id, tag, msgs).await?;
    Ok(room)
}

async fn plain_get_upgrade_required(ctx: &Ctx) -> Result<()> {
    ctx.http.send(Request::get(format!("{CLIENT}/ws"))).await?.err(426, "upgrade_required")?;
    Ok(())
}

async fn missing_subprotocol_refused(ctx: &Ctx) -> Result<()> {
    ctx.http.send(upgrade_request(None)).await?.err(400, "bad_subprotocol")?;
    ctx.http.send(upgrade_request(Some("chat, parlor.v2"))).await?.err(400, "bad_subprotocol")?;
    Ok(())
}

async fn subprotocol_selected(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let ws = ctx.ws(&user).await?;
    check_eq!(ws.selected_protocol.as_deref(), Some(SUBPROTOCOL), "Sec-WebSocket-Protocol of the upgrade answer");
    ws.close().await;
    Ok(())
}

async fn forbidden_origin_refused(ctx: &Ctx) -> Result<()> {
    let req = upgrade_request(Some(SUBPROTOCOL)).header(HeaderName::from_static("origin"), "http://evil.example");
    ctx.http.send(req).await?.err(403, "forbidden_origin")?;
    // Same host, other port: another origin.
    let host = ctx.authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(&ctx.authority);
    let req = upgrade_request(Some(SUBPROTOCOL)).header(HeaderName::from_static("origin"), format!("http://{host}:1"));
    ctx.http.send(req).await?.err(403, "forbidden_origin")?;
    Ok(())
}

async fn same_origin_allowed(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let opts = WsOptions {
        token: Some(user.token.clone()),
        origin: Some(format!("http://{}", ctx.authority)),
        ..Default::default()
    };
    let mut ws = ctx.ws_with(&opts).await?;
    ws.expect("ready").await?;
    ws.close().await;
    Ok(())
}

/// Same-origin ignores the scheme, and the server's own name is same-origin
/// whatever `Host` the request came with (e.g. an address).
async fn origin_scheme_and_server_name(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    for origin in [format!("https://{}", ctx.authority), format!("http://{}", ctx.server_name)] {
        let opts = WsOptions { token: Some(user.token.clone()), origin: Some(origin.clone()), ..Default::default() };
        let mut ws = ctx.ws_with(&opts).await.map_err(|e| match e {
            Failure::Check(m) => Failure::Check(format!("Origin {origin}: {m}")),
            other => other,
        })?;
        ws.expect("ready").await?;
        ws.close().await;
    }
    Ok(())
}

async fn auth_by_header(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let mut ws = ctx.ws_with(&WsOptions { token: Some(user.token.clone()), ..Default::default() }).await?;
    let ready = ws.expect("ready").await?;
    check_eq!(s(&ready, "user_id"), user.user_id.as_str(), "ready user_id");
    check_eq!(s(&ready, "device_id"), user.device_id.as_str(), "ready device_id");
    ws.close().await;
    Ok(())
}

async fn auth_header_bad_token_refused(ctx: &Ctx) -> Result<()> {
    let req = upgrade_request(Some(SUBPROTOCOL)).token(&"B".repeat(43));
    ctx.http.send(req).await?.err(401, "unknown_token")?;
    Ok(())
}

async fn auth_by_first_frame(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let mut ws = ctx.ws_with(&WsOptions::default()).await?;
    let ready = ws.call(json!({"type": "auth", "token": user.token}), "a1", "ready").await?;
    check_eq!(s(&ready, "user_id"), user.user_id.as_str(), "ready user_id");
    check_eq!(s(&ready, "device_id"), user.device_id.as_str(), "ready device_id");
    ws.call(json!({"type": "ping"}), "p1", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn auth_frame_bad_token_closes_4001(ctx: &Ctx) -> Result<()> {
    let mut ws = ctx.ws_with(&WsOptions::default()).await?;
    ws.send(json!({"type": "auth", "token": "C".repeat(43), "id": "a1"})).await?;
    ws.expect_error("unknown_token", Some("a1")).await?;
    ws.expect_close_code(4001, CLOSE_WAIT).await
}

async fn frame_before_auth_refused(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let mut ws = ctx.ws_with(&WsOptions::default()).await?;
    ws.send(json!({"type": "join", "room": "lobby", "id": "j1"})).await?;
    ws.expect_error("not_authenticated", Some("j1")).await?;
    // `ping` too: only `auth` is answered before authentication.
    ws.send(json!({"type": "ping", "id": "p1"})).await?;
    ws.expect_error("not_authenticated", Some("p1")).await?;
    // The connection stays open and can still authenticate.
    ws.call(json!({"type": "auth", "token": user.token}), "a1", "ready").await?;
    ws.close().await;
    Ok(())
}

/// Before authentication a frame is still parsed first: what is not a
/// frame is `malformed_json`, `invalid_field` or `unknown_type`, not
/// `not_authenticated` (§8).
async fn parse_errors_before_auth_errors(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let mut ws = ctx.ws_with(&WsOptions::default()).await?;
    ws.send_text("{not json").await?;
    ws.expect_error("malformed_json", None).await?;
    ws.send_text(json!({"type": "join", "id": "f1", "room": 5}).to_string()).await?;
    ws.expect_error("invalid_field", Some("f1")).await?;
    ws.send_text(json!({"type": "dance", "id": "f2"}).to_string()).await?;
    ws.expect_error("unknown_type", Some("f2")).await?;
    ws.send(json!({"type": "join", "room": "lobby", "id": "f3"})).await?;
    ws.expect_error("not_authenticated", Some("f3")).await?;
    ws.call(json!({"type": "auth", "token": user.token}), "a1", "ready").await?;
    ws.close().await;
    Ok(())
}

async fn already_authenticated(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let mut ws = ctx.ws(&user).await?;
    ws.send(json!({"type": "auth", "token": user.token, "id": "a2"})).await?;
    ws.expect_error("already_authenticated", Some("a2")).await?;
    ws.call(json!({"type": "ping"}), "p1", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn auth_timeout_closes_4002(ctx: &Ctx) -> Result<()> {
    let mut ws = ctx.ws_with(&WsOptions::default()).await?;
    ws.expect_close_code(4002, Duration::from_secs(30)).await
}

async fn heartbeat_timeout_closes_4003(ctx: &Ctx) -> Result<()> {
    let secs = ctx.cfg.ws_ping_secs.unwrap_or(30);
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    // Read nothing (so the server's pings go unanswered) until the close
    // is there: within three intervals (two of silence, one for the
    // server's timer), plus slack.
    let frames = ws.peek_until_close(Duration::from_secs(3 * secs + 10)).await?;
    let (close, before) = frames.split_last().expect("ends with the close");
    // Server pings are WebSocket ping control frames, not JSON `ping`s.
    check!(!before.is_empty(), "the server closed for silence without pinging first");
    check!(before.iter().all(|(op, _)| *op == 0x9), "before the close, only ping control frames: {before:?}");
    let code = close.1.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
    check_eq!(code, Some(4003), "close code");
    Ok(())
}

async fn ping_pong(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let mut ws = ctx.ws(&user).await?;
    ws.call(json!({"type": "ping"}), "p-1", "pong").await?;
    // Without an id, still a pong.
    ws.send(json!({"type": "ping"})).await?;
    ws.expect("pong").await?;
    ws.close().await;
    Ok(())
}

async fn join_and_leave_frames(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let mut ws = ctx.ws(&user).await?;
    let name = ctx.room_name("wsj");
    let joined = ws.call(json!({"type": "join", "room": name}), "j1", "joined").await?;
    check_eq!(s(&joined, "alias"), ctx.alias(&name).as_str(), "alias in joined");
    let room_id = s(&joined, "room_id").to_owned();
    let other = ctx.shared(1).await?;
    let joined2 = {
        let mut ws2 = ctx.ws(&other).await?;
        let v = ws2.call(json!({"type": "join", "room": ctx.alias(&name)}), "j2", "joined").await?;
        let left = ws2.call(json!({"type": "leave", "room": room_id}), "l2", "left").await?;
        check_eq!(s(&left, "room_id"), room_id.as_str(), "room_id in left");
        ws2.close().await;
        v
    };
    check_eq!(s(&joined2, "room_id"), room_id.as_str(), "room_id when joining by alias");
    let events = ctx.all_events(&user, &room_id).await?;
    let kinds: Vec<String> = events.iter().map(|e| format!("{} {}", s(e, "type"), s(e, "sender"))).collect();
    check_eq!(
        kinds,
        vec![format!("join {}", user.user_id), format!("join {}", other.user_id), format!("leave {}", other.user_id)],
        "events after WebSocket join, join, leave"
    );
    ws.close().await;
    Ok(())
}

async fn join_refusals(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    // The HTTP endpoint's errcodes, as error frames; the connection stays open.
    ws.send(json!({"type": "join", "room": "bad room!", "id": "j1"})).await?;
    ws.expect_error("invalid_room", Some("j1")).await?;
    let unknown = format!("!{}:{}", ctx.unique("nosuch", 40), ctx.server_name);
    ws.send(json!({"type": "join", "room": unknown, "id": "j2"})).await?;
    ws.expect_error("room_not_found", Some("j2")).await?;
    ws.send(json!({"type": "subscribe", "room": unknown, "id": "j3"})).await?;
    let v = ws.expect("error").await?;
    check!(
        ["room_not_found", "not_member"].contains(&s(&v, "errcode")) && s(&v, "id") == "j3",
        "subscribe to an unknown room: expected room_not_found or not_member echoing j3, got {v}"
    );
    ws.call(json!({"type": "ping"}), "p", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn subscribe_live(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = room_with(ctx, &a, "live", 2).await?;
    ctx.join(&b, &room.room_id).await?;
    let mut ws = ctx.ws(&b).await?;
    let (gap, replay, caught_up) = subscribe(&mut ws, &room.room_id, None).await?;
    check!(gap.is_none() && replay.is_empty(), "subscribe without since replayed history: {replay:?}");
    check_eq!(n(&caught_up, "seq"), 4, "caught_up seq (join, 2 messages, join)");
    let sent = ctx.send(&a, &room.alias, &ctx.txn(), "live one").await?;
    let got = live_events(&mut ws, &room.room_id, 1).await?;
    check_eq!(s(&got[0], "event_id"), s(&sent, "event_id"), "live event_id");
    check_eq!(n(&got[0], "seq"), 5, "live seq");
    check_eq!(s(&got[0], "body"), "live one", "live body");
    check_eq!(s(&got[0], "sender"), a.user_id.as_str(), "live sender");
    ws.close().await;
    Ok(())
}

async fn unsubscribe(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "unsub").await?;
    let mut ws = ctx.ws(&a).await?;
    subscribe(&mut ws, &room.room_id, None).await?;
    let u = ws.call(json!({"type": "unsubscribe", "room": room.alias}), "u1", "unsubscribed").await?;
    check_eq!(s(&u, "room_id"), room.room_id.as_str(), "room_id in unsubscribed");
    // A witness sees the next event; by then it would have reached `ws` too.
    let mut witness = ctx.ws(&a).await?;
    subscribe(&mut witness, &room.room_id, None).await?;
    ctx.send(&a, &room.room_id, &ctx.txn(), "after unsubscribe").await?;
    live_events(&mut witness, &room.room_id, 1).await?;
    witness.close().await;
    // The next frame is the pong: no event slipped through.
    ws.call(json!({"type": "ping"}), "p1", "pong").await?;
    // Unsubscribing when not subscribed answers the same.
    ws.call(json!({"type": "unsubscribe", "room": room.room_id}), "u2", "unsubscribed").await?;
    ws.close().await;
    Ok(())
}

async fn leave_ends_subscription(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "lvsub").await?;
    ctx.join(&b, &room.room_id).await?;
    let mut ws = ctx.ws(&b).await?;
    subscribe(&mut ws, &room.room_id, None).await?;
    ctx.leave_raw(&b, &room.room_id).await?.ok(200, "empty")?;
    // The leave event itself may be delivered before the subscription ends.
    loop {
        let f = next_frame(&mut ws).await?;
        match s(&f, "type") {
            "event" if s(&f["event"], "type") == "leave" => continue,
            "unsubscribed" => {
                check_eq!(s(&f, "room_id"), room.room_id.as_str(), "room_id");
                check_eq!(s(&f, "reason"), "left", "reason");
                break;
            }
            _ => fail!("expected unsubscribed {{reason: left}}, got {f}"),
        }
    }
    // A witness (a's socket) sees the next event; by then it would have reached b too.
    let mut witness = ctx.ws(&a).await?;
    subscribe(&mut witness, &room.room_id, None).await?;
    ctx.send(&a, &room.room_id, &ctx.txn(), "not for b").await?;
    live_events(&mut witness, &room.room_id, 1).await?;
    witness.close().await;
    ws.call(json!({"type": "ping"}), "p1", "pong").await?;
    // Leaving with a frame: `left` answers it, and at once the subscription
    // ends with `unsubscribed {reason: left}`, in that order.
    ctx.join(&b, &room.room_id).await?;
    subscribe(&mut ws, &room.room_id, None).await?;
    ws.send(json!({"type": "leave", "room": room.room_id, "id": "l1"})).await?;
    let left = next_frame(&mut ws).await?;
    check!(s(&left, "type") == "left" && s(&left, "id") == "l1", "expected left echoing l1 first, got {left}");
    let ended = next_frame(&mut ws).await?;
    check!(
        s(&ended, "type") == "unsubscribed" && s(&ended, "reason") == "left",
        "expected unsubscribed {{reason: left}} right after left, got {ended}"
    );
    check_eq!(s(&ended, "room_id"), room.room_id.as_str(), "room_id");
    ws.close().await;
    Ok(())
}

async fn send_ack(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "ack").await?;
    let mut ws = ctx.ws(&a).await?;
    let ack = ws_send(&mut ws, &room.alias, &ctx.txn(), "over the socket", "s1").await?;
    check_eq!(s(&ack, "room_id"), room.room_id.as_str(), "room_id in ack");
    check_eq!(n(&ack, "seq"), 2, "seq in ack");
    let page = ctx.messages(&a, &room.room_id, "after=1").await?;
    check_eq!(s(&page["events"][0], "event_id"), s(&ack, "event_id"), "event_id in history");
    check_eq!(s(&page["events"][0], "body"), "over the socket", "body in history");
    ws.close().await;
    Ok(())
}

async fn send_idempotent(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "wsidem").await?;
    let mut ws = ctx.ws(&a).await?;
    let txn = ctx.txn();
    let first = ws_send(&mut ws, &room.room_id, &txn, "twice", "s1").await?;
    let again = ws_send(&mut ws, &room.room_id, &txn, "twice", "s2").await?;
    check_eq!(
        (s(&again, "event_id"), n(&again, "seq")),
        (s(&first, "event_id"), n(&first, "seq")),
        "ack of a retried send"
    );
    // Begun over HTTP, retried over the socket (same device).
    let txn2 = ctx.txn();
    let http = ctx.send(&a, &room.room_id, &txn2, "cross").await?;
    let ws_retry = ws_send(&mut ws, &room.room_id, &txn2, "cross", "s3").await?;
    check_eq!(s(&ws_retry, "event_id"), s(&http, "event_id"), "event_id of an HTTP send retried over the socket");
    // And the other way round.
    let http_retry = ctx.send(&a, &room.room_id, &txn, "twice").await?;
    check_eq!(s(&http_retry, "event_id"), s(&first, "event_id"), "event_id of a socket send retried over HTTP");
    let events = ctx.all_events(&a, &room.room_id).await?;
    check_eq!(seqs(&json!(events)), range(1, 3), "seqs stored (join + 2 messages)");
    ws.close().await;
    Ok(())
}

async fn send_txn_conflict(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "wsconf").await?;
    let mut ws = ctx.ws(&a).await?;
    let txn = ctx.txn();
    ws_send(&mut ws, &room.room_id, &txn, "first", "s1").await?;
    ws.send(json!({"type": "send", "room": room.room_id, "txn_id": txn, "body": "second", "id": "s2"})).await?;
    ws.expect_error("txn_conflict", Some("s2")).await?;
    ws.call(json!({"type": "ping"}), "p", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn send_message_too_large(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "wsbig").await?;
    let mut ws = ctx.ws(&a).await?;
    for (id, body) in [("big", "x".repeat(16_385)), ("empty", String::new())] {
        ws.send(json!({"type": "send", "room": room.room_id, "txn_id": ctx.txn(), "body": body, "id": id})).await?;
        ws.expect_error("message_too_large", Some(id)).await?;
    }
    ws_send(&mut ws, &room.room_id, &ctx.txn(), &"x".repeat(16_384), "max").await?;
    ws.close().await;
    Ok(())
}

async fn send_bad_txn_id(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "wstxn").await?;
    let mut ws = ctx.ws(&a).await?;
    for (id, txn) in
        [("space", "a b".to_owned()), ("slash", "a/b".to_owned()), ("long", "t".repeat(65)), ("empty", String::new())]
    {
        ws.send(json!({"type": "send", "room": room.room_id, "txn_id": txn, "body": "x", "id": id})).await?;
        ws.expect_error("invalid_field", Some(id)).await?;
    }
    ws.close().await;
    Ok(())
}

async fn not_member(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "wsnm").await?;
    let mut ws = ctx.ws(&b).await?;
    ws.send(json!({"type": "subscribe", "room": room.room_id, "id": "s1"})).await?;
    ws.expect_error("not_member", Some("s1")).await?;
    ws.send(json!({"type": "send", "room": room.room_id, "txn_id": ctx.txn(), "body": "x", "id": "s2"})).await?;
    ws.expect_error("not_member", Some("s2")).await?;
    ws.send(json!({"type": "leave", "room": room.room_id, "id": "s3"})).await?;
    ws.expect_error("not_member", Some("s3")).await?;
    ws.close().await;
    Ok(())
}

async fn live_order_across_clients(ctx: &Ctx) -> Result<()> {
    let users = [ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?];
    let room = ctx.room(&users[0], "order").await?;
    for u in &users[1..] {
        ctx.join(u, &room.room_id).await?;
    }
    let mut subs = Vec::new();
    for u in &users {
        let mut ws = ctx.ws(u).await?;
        subscribe(&mut ws, &room.room_id, None).await?;
        subs.push(ws);
    }
    const EACH: usize = 15;
    let mut writer = ctx.ws(&users[1]).await?;
    let ws_writer = async {
        let mut acks = Vec::new();
        for i in 0..EACH {
            acks.push(ws_send(&mut writer, &room.room_id, &ctx.txn(), &format!("ws {i}"), &format!("w{i}")).await?);
        }
        Ok::<_, Failure>(acks)
    };
    let http_writer = async {
        let mut acks = Vec::new();
        for i in 0..EACH {
            acks.push(ctx.send(&users[2], &room.room_id, &ctx.txn(), &format!("http {i}")).await?);
        }
        Ok::<_, Failure>(acks)
    };
    let (ws_acks, http_acks) = tokio::join!(ws_writer, http_writer);
    let (ws_acks, http_acks) = (ws_acks?, http_acks?);
    let history = ctx.messages(&users[0], &room.room_id, "after=3&limit=1000").await?;
    let expected: Vec<String> =
        history["events"].as_array().into_iter().flatten().map(|e| s(e, "event_id").to_owned()).collect();
    check_eq!(seqs(&history["events"]), range(4, 3 + 2 * EACH as u64), "seqs in history");
    for (i, ws) in subs.iter_mut().enumerate() {
        let got = live_events(ws, &room.room_id, 2 * EACH).await?;
        check_eq!(seqs(&json!(got)), range(4, 3 + 2 * EACH as u64), "seqs seen by subscriber {i}");
        let ids: Vec<String> = got.iter().map(|e| s(e, "event_id").to_owned()).collect();
        check_eq!(ids, expected, "order seen by subscriber {i} vs history");
    }
    // Each writer's messages appear in the order of its acks.
    for acks in [&ws_acks, &http_acks] {
        let s: Vec<u64> = acks.iter().map(|a| n(a, "seq")).collect();
        check!(s.windows(2).all(|w| w[0] < w[1]), "one writer's acks are not in increasing seq: {s:?}");
    }
    for ws in subs {
        ws.close().await;
    }
    writer.close().await;
    Ok(())
}

async fn resume_since(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = room_with(ctx, &a, "res", 5).await?;
    let epoch = s(&ctx.messages(&a, &room.room_id, "limit=1").await?, "epoch").to_owned();
    let mut ws = ctx.ws(&a).await?;
    let (gap, events, caught_up) = subscribe(&mut ws, &room.room_id, Some(json!({"epoch": epoch, "seq": 3}))).await?;
    check!(gap.is_none(), "gap on a valid cursor: {gap:?}");
    check_eq!(seqs(&json!(events)), range(4, 6), "replayed seqs after since.seq 3");
    check_eq!((s(&caught_up, "epoch"), n(&caught_up, "seq")), (epoch.as_str(), 6), "caught_up (epoch, seq)");
    let sent = ctx.send(&a, &room.room_id, &ctx.txn(), "after resume").await?;
    let live = live_events(&mut ws, &room.room_id, 1).await?;
    check_eq!(s(&live[0], "event_id"), s(&sent, "event_id"), "live event after caught_up");
    ws.close().await;
    Ok(())
}

async fn resume_since_zero(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = room_with(ctx, &a, "res0", 3).await?;
    let epoch = s(&ctx.messages(&a, &room.room_id, "limit=1").await?, "epoch").to_owned();
    let mut ws = ctx.ws(&a).await?;
    let (gap, events, caught_up) = subscribe(&mut ws, &room.room_id, Some(json!({"epoch": epoch, "seq": 0}))).await?;
    check!(gap.is_none(), "gap on seq 0 of the current epoch: {gap:?}");
    check_eq!(seqs(&json!(events)), range(1, 4), "replayed seqs from 0");
    check_eq!(n(&caught_up, "seq"), 4, "caught_up seq");
    let history = ctx.all_events(&a, &room.room_id).await?;
    check_eq!(json!(events), json!(history), "replayed events vs history");
    ws.close().await;
    Ok(())
}

async fn gap_on_forged_epoch(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = room_with(ctx, &a, "gap", 3).await?;
    let page = ctx.messages(&a, &room.room_id, "limit=1").await?;
    let (epoch, earliest) = (s(&page, "epoch").to_owned(), n(&page, "earliest_seq"));
    let forged = format!("forged-{}", ctx.unique("", 12));
    let mut ws = ctx.ws(&a).await?;
    let since = json!({"epoch": forged, "seq": 2});
    let (gap, events, caught_up) = subscribe(&mut ws, &room.room_id, Some(since.clone())).await?;
    let Some(gap) = gap else { fail!("no gap before replaying for a made-up epoch") };
    check_eq!(gap["from"], since, "gap.from");
    check_eq!(gap["to"], json!({"epoch": epoch, "seq": earliest - 1}), "gap.to");
    check_eq!(s(&gap, "reason"), "epoch_changed", "gap.reason");
    check_eq!(seqs(&json!(events)), range(earliest, 4), "replayed seqs after the gap");
    check_eq!((s(&caught_up, "epoch"), n(&caught_up, "seq")), (epoch.as_str(), 4), "caught_up");
    ws.close().await;
    Ok(())
}

async fn gap_when_trimmed(ctx: &Ctx) -> Result<()> {
    let keep = ctx.cfg.retention.unwrap_or_default();
    check!(keep > 0, "--retention must be at least 1");
    let a = ctx.shared(0).await?;
    // Three times what is kept, so something is surely trimmed.
    let room = room_with(ctx, &a, "trim", 3 * keep as usize).await?;
    let latest = 3 * keep + 1;
    let page = ctx.messages(&a, &room.room_id, "limit=1000").await?;
    let (epoch, earliest) = (s(&page, "epoch").to_owned(), n(&page, "earliest_seq"));
    check_eq!(n(&page, "latest_seq"), latest, "latest_seq");
    check!(earliest > 1, "nothing trimmed from {latest} events with --retention {keep}: earliest_seq is {earliest}");
    check!(
        latest - earliest + 1 >= keep,
        "fewer than {keep} events kept: earliest_seq {earliest}, latest_seq {latest}"
    );
    check_eq!(seqs(&page["events"]), range(earliest, latest), "history holds exactly earliest_seq..=latest_seq");
    let older = ctx.messages(&a, &room.room_id, &format!("before={earliest}")).await?;
    check_eq!(seqs(&older["events"]), Vec::<u64>::new(), "events before earliest_seq");

    let mut ws = ctx.ws(&a).await?;
    let since = json!({"epoch": epoch, "seq": 1});
    let (gap, events, caught_up) = subscribe(&mut ws, &room.room_id, Some(since.clone())).await?;
    let Some(gap) = gap else {
        fail!("no gap when resuming from seq 1 after retention trimmed up to {}", earliest - 1)
    };
    check_eq!(s(&gap, "reason"), "trimmed", "gap.reason");
    check_eq!(gap["from"], since, "gap.from");
    check_eq!(s(&gap["to"], "epoch"), epoch.as_str(), "gap.to.epoch");
    let to = n(&gap["to"], "seq");
    check!(to + 1 >= earliest, "gap.to.seq {to} is before what history still holds ({earliest})");
    // Delivery goes on right after `to`: nothing skipped silently.
    check_eq!(seqs(&json!(events)), range(to + 1, latest), "seqs after the gap");
    check_eq!(n(&caught_up, "seq"), latest, "caught_up seq");
    // A cursor the log still covers gets no gap.
    let mut ws2 = ctx.ws(&a).await?;
    let (gap2, events2, _) =
        subscribe(&mut ws2, &room.room_id, Some(json!({"epoch": epoch, "seq": latest - 1}))).await?;
    check!(gap2.is_none(), "gap on a cursor inside the kept range: {gap2:?}");
    check_eq!(seqs(&json!(events2)), vec![latest], "replay from a kept cursor");
    ws.close().await;
    ws2.close().await;
    Ok(())
}

/// A cursor past the head is not an error, over either wire: WebSocket
/// `caught_up` names the real head (then live events follow), HTTP `after`
/// gives an empty page with the epoch and head.
async fn since_beyond_latest_caught_up(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = room_with(ctx, &a, "beyond", 1).await?;
    let page = ctx.messages(&a, &room.room_id, "after=9").await?;
    let epoch = s(&page, "epoch").to_owned();
    check_eq!(seqs(&page["events"]), Vec::<u64>::new(), "events after a seq past the head");
    check_eq!(n(&page, "latest_seq"), 2, "latest_seq of that page");
    let mut ws = ctx.ws(&a).await?;
    let (gap, events, caught_up) = subscribe(&mut ws, &room.room_id, Some(json!({"epoch": epoch, "seq": 9}))).await?;
    check!(gap.is_none() && events.is_empty(), "replay for a cursor past the head: {gap:?} {events:?}");
    check_eq!((s(&caught_up, "epoch"), n(&caught_up, "seq")), (epoch.as_str(), 2), "caught_up names the real head");
    let sent = ctx.send(&a, &room.room_id, &ctx.txn(), "after the head").await?;
    let live = live_events(&mut ws, &room.room_id, 1).await?;
    check_eq!(s(&live[0], "event_id"), s(&sent, "event_id"), "the next event is delivered");
    ws.close().await;
    Ok(())
}

/// Subscribing to a room already subscribed replaces the subscription: the
/// answer is a new replay and `caught_up`, and live events come once.
async fn subscribe_twice(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = room_with(ctx, &a, "twice", 2).await?;
    let epoch = s(&ctx.messages(&a, &room.room_id, "limit=1").await?, "epoch").to_owned();
    let mut ws = ctx.ws(&a).await?;
    let (_, _, first) = subscribe(&mut ws, &room.room_id, None).await?;
    check_eq!(n(&first, "seq"), 3, "first caught_up");
    let (gap, events, again) = subscribe(&mut ws, &room.room_id, Some(json!({"epoch": epoch, "seq": 1}))).await?;
    check!(gap.is_none(), "gap on a valid cursor: {gap:?}");
    check_eq!(seqs(&json!(events)), range(2, 3), "the second subscribe replays from its own since");
    check_eq!(n(&again, "seq"), 3, "second caught_up");
    ctx.send(&a, &room.room_id, &ctx.txn(), "once").await?;
    let live = live_events(&mut ws, &room.room_id, 1).await?;
    check_eq!(n(&live[0], "seq"), 4, "live seq");
    // Nothing twice: the next frame answers the ping.
    ws.call(json!({"type": "ping"}), "p", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn malformed_json_frame(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    for bad in ["{not json", "", "{\"type\": \"ping\"", "[1, 2"] {
        ws.send_text(bad).await?;
        ws.expect_error("malformed_json", None).await?;
    }
    ws.call(json!({"type": "ping"}), "p", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn missing_type(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    // An error answering a frame with a usable id echoes it, even when the type is wrong.
    for (bad, id) in [
        (json!({"id": "m1", "room": "lobby"}), Some("m1")),
        (json!({"type": 7, "id": "m2"}), Some("m2")),
        (json!(["ping"]), None),
        (json!("ping"), None),
    ] {
        ws.send_text(bad.to_string()).await?;
        let e = ws.expect_error("invalid_field", id).await?;
        check!(id.is_some() || e.get("id").is_none(), "an error for a frame without an id has no id: {e}");
    }
    ws.call(json!({"type": "ping"}), "p", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn unknown_type(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send_text(json!({"type": "dance", "id": "u1"}).to_string()).await?;
    ws.expect_error("unknown_type", Some("u1")).await?;
    // A server → client type sent by a client is unknown too.
    ws.send_text(json!({"type": "pong", "id": "u2"}).to_string()).await?;
    ws.expect_error("unknown_type", Some("u2")).await?;
    ws.call(json!({"type": "ping"}), "p", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn unknown_or_wrong_fields(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    // As over HTTP (§1), `error` names the field.
    let bad = [
        (json!({"type": "ping", "id": "f1", "extra": true}), "extra"),
        (json!({"type": "join", "id": "f2", "room": 5}), "room"),
        (json!({"type": "join", "id": "f3"}), "room"),
        (json!({"type": "send", "id": "f4", "room": "lobby", "txn_id": "t", "body": ["x"]}), "body"),
        (json!({"type": "subscribe", "id": "f5", "room": "lobby", "since": {"epoch": "e"}}), "seq"),
        (json!({"type": "subscribe", "id": "f6", "room": "lobby", "since": {"epoch": "e", "seq": -1}}), "seq"),
    ];
    for (frame, field) in bad {
        let id = s(&frame, "id").to_owned();
        ws.send_text(frame.to_string()).await?;
        let e = ws.expect_error("invalid_field", Some(&id)).await?;
        check!(s(&e, "error").contains(field), "the error for {frame} does not name `{field}`: {e}");
    }
    ws.call(json!({"type": "ping"}), "p", "pong").await?;
    ws.close().await;
    Ok(())
}

async fn id_too_long(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send_text(json!({"type": "ping", "id": "i".repeat(65)}).to_string()).await?;
    ws.expect_error("invalid_field", None).await?;
    ws.call(json!({"type": "ping"}), &"i".repeat(64), "pong").await?;
    ws.close().await;
    Ok(())
}

async fn oversized_frame_closes_1009(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    let frame = json!({"type": "ping", "id": "x".repeat(70_000)}).to_string();
    // The server may close before it has read all of it; a failed write is fine.
    let _ = ws.send_text(frame).await;
    ws.expect_close_code(1009, CLOSE_WAIT).await
}

async fn binary_frame_closes_1003(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send_message(Message::binary(json!({"type": "ping"}).to_string().into_bytes())).await?;
    ws.expect_close_code(1003, CLOSE_WAIT).await
}

async fn bad_utf8_closes_1007(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send_raw_text(b"{\"type\": \"ping\", \"id\": \"\xff\xfe\"}".to_vec()).await?;
    ws.expect_close_code(1007, CLOSE_WAIT).await
}

async fn too_many_subscriptions(ctx: &Ctx) -> Result<()> {
    let a = ctx.user("subs").await?;
    let mut ws = ctx.ws(&a).await?;
    let stem = ctx.room_name("m");
    // Pipelined: all joins, then all answers.
    for i in 0..257 {
        ws.send(json!({"type": "join", "room": format!("{stem}x{i}"), "id": format!("j{i}")})).await?;
    }
    let mut ids = Vec::new();
    for _ in 0..257 {
        let f = ws.expect("joined").await?;
        ids.push(s(&f, "room_id").to_owned());
    }
    for (i, id) in ids.iter().take(256).enumerate() {
        ws.send(json!({"type": "subscribe", "room": id, "id": format!("s{i}")})).await?;
    }
    for _ in 0..256 {
        ws.expect("caught_up").await?;
    }
    ws.send(json!({"type": "subscribe", "room": ids[256], "id": "s256"})).await?;
    ws.expect_error("too_many_subscriptions", Some("s256")).await?;
    // Making room lets the next one in.
    ws.call(json!({"type": "unsubscribe", "room": ids[0]}), "u0", "unsubscribed").await?;
    ws.send(json!({"type": "subscribe", "room": ids[256], "id": "s257"})).await?;
    ws.expect("caught_up").await?;
    ws.close().await;
    Ok(())
}

async fn logout_closes_4001(ctx: &Ctx) -> Result<()> {
    let a = ctx.user("wslo").await?;
    let mut by_header = ctx.ws(&a).await?;
    let second = ctx.login(&a.username, &a.password).await?;
    let mut by_frame = ctx.ws_with(&WsOptions::default()).await?;
    by_frame.call(json!({"type": "auth", "token": second.token}), "a", "ready").await?;
    ctx.http.send(Request::post(Ctx::api("/logout")).token(&a.token)).await?.ok(200, "empty")?;
    by_header.expect_close_code(4001, CLOSE_WAIT).await?;
    ctx.http.send(Request::post(Ctx::api("/logout/all")).token(&second.token)).await?.ok(200, "empty")?;
    by_frame.expect_close_code(4001, CLOSE_WAIT).await
}

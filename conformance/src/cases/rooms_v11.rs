//! §12 Rooms v1.1: creating rooms with state, private rooms and invites,
//! history visibility (HTTP and WebSocket resume), roles and moderation, the
//! rooms list with invites, direct messages, and a v1-only client against a
//! v1.1 server.

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
        case!("rooms_v11::versions_lists_v1_1", "12", versions_lists_v1_1),
        case!("rooms_v11::create_room", "12", create_room),
        case!("rooms_v11::create_refusals", "12", create_refusals),
        case!("rooms_v11::private_join_needs_invite", "12", private_join_needs_invite),
        case!("rooms_v11::reject_invite", "12", reject_invite),
        case!("rooms_v11::private_history_from_join", "12", private_history_from_join),
        case!("rooms_v11::private_resume_gap_history_hidden", "12", private_resume_gap_history_hidden),
        case!("rooms_v11::patch_needs_moderator", "12", patch_needs_moderator),
        case!("rooms_v11::roles_owner_only", "12", roles_owner_only),
        case!("rooms_v11::kick_ends_membership_and_subscription", "12", kick_ends_membership_and_subscription),
        case!("rooms_v11::ban_and_unban", "12", ban_and_unban),
        case!("rooms_v11::last_owner_cannot_leave", "12", last_owner_cannot_leave),
        case!("rooms_v11::rooms_list_with_invites", "12", rooms_list_with_invites),
        case!("rooms_v11::dm_same_pair_same_room", "12", dm_same_pair_same_room),
        case!("rooms_v11::edit_own_message", "12", edit_own_message),
        case!("rooms_v11::v1_client_still_works", "12", v1_client_still_works),
    ]
}

fn room_path(room: &str, rest: &str) -> String {
    Ctx::api(&format!("/rooms/{}{rest}", enc(room)))
}

async fn create_raw(ctx: &Ctx, user: &User, body: Value) -> Result<Response> {
    ctx.http.send(Request::post(Ctx::api("/rooms")).token(&user.token).json(&body)).await
}

/// Creates a room; returns its id.
async fn create(ctx: &Ctx, user: &User, body: Value) -> Result<String> {
    let v = create_raw(ctx, user, body).await?.ok(201, "create_room_response")?;
    Ok(s(&v, "room_id").to_owned())
}

async fn post(ctx: &Ctx, user: &User, room: &str, what: &str, body: Value) -> Result<Response> {
    ctx.http.send(Request::post(room_path(room, &format!("/{what}"))).token(&user.token).json(&body)).await
}

async fn patch(ctx: &Ctx, user: &User, room: &str, body: Value) -> Result<Response> {
    ctx.http.send(Request::new(http::Method::PATCH, room_path(room, "")).token(&user.token).json(&body)).await
}

async fn set_role(ctx: &Ctx, user: &User, room: &str, target: &str, role: &str) -> Result<Response> {
    let path = room_path(room, &format!("/roles/{}", enc(target)));
    ctx.http.send(Request::put(path).token(&user.token).json(&json!({ "role": role }))).await
}

async fn rooms(ctx: &Ctx, user: &User) -> Result<Vec<Value>> {
    let v = ctx.http.send(Request::get(Ctx::api("/rooms")).token(&user.token)).await?.ok(200, "rooms_response")?;
    Ok(v["rooms"].as_array().cloned().unwrap_or_default())
}

async fn members(ctx: &Ctx, user: &User, room: &str) -> Result<Vec<Value>> {
    let v = ctx
        .http
        .send(Request::get(room_path(room, "/members")).token(&user.token))
        .await?
        .ok(200, "members_response")?;
    Ok(v["members"].as_array().cloned().unwrap_or_default())
}

fn role_in(members: &[Value], user: &User) -> String {
    members.iter().find(|m| s(m, "user_id") == user.user_id).map(|m| s(m, "role").to_owned()).unwrap_or_default()
}

async fn versions_lists_v1_1(ctx: &Ctx) -> Result<()> {
    let v = ctx.http.send(Request::get("/_parlor/versions")).await?.ok(200, "versions_response")?;
    let versions: Vec<&str> = v["versions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    check!(versions.contains(&"v1") && versions.contains(&"v1.1"), "versions lack v1 or v1.1: {v}");
    Ok(())
}

async fn create_room(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let name = ctx.room_name("made");
    let v = create_raw(ctx, &a, json!({"alias": name, "name": "The Garden", "topic": "plants"}))
        .await?
        .ok(201, "create_room_response")?;
    check_eq!(s(&v, "alias"), ctx.alias(&name).as_str(), "alias of the created room");
    let room = s(&v, "room_id").to_owned();
    check_eq!(role_in(&members(ctx, &a, &room).await?, &a), "owner", "the creator's role");
    let events = ctx.all_events(&a, &room).await?;
    check!(events.len() >= 2, "a new room's log has the creator's join and a room event: {events:?}");
    check!(s(&events[0], "type") == "join" && s(&events[0], "sender") == a.user_id, "event 1: {}", events[0]);
    let st = &events[1];
    check!(
        s(st, "type") == "room"
            && s(st, "name") == "The Garden"
            && s(st, "topic") == "plants"
            && s(st, "visibility") == "public",
        "event 2 is not the room's state: {st}"
    );
    // A public room made this way is joined like any (v1).
    let b = ctx.shared(1).await?;
    ctx.join(&b, &name).await?;
    // Without an alias: no alias in the answer, the id works.
    let v = create_raw(ctx, &a, json!({})).await?.ok(201, "create_room_response")?;
    check!(v.get("alias").is_none(), "a room made without an alias has one: {v}");
    ctx.send(&a, s(&v, "room_id"), &ctx.txn(), "hello").await?;
    Ok(())
}

async fn create_refusals(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let name = ctx.room_name("taken");
    create(ctx, &a, json!({ "alias": name })).await?;
    create_raw(ctx, &a, json!({ "alias": name })).await?.err(409, "alias_taken")?;
    // A room that v1's join made holds its alias too.
    let v1 = ctx.room(&a, "v1taken").await?;
    create_raw(ctx, &a, json!({ "alias": v1.name })).await?.err(409, "alias_taken")?;
    create_raw(ctx, &a, json!({"alias": "#x:other.example"})).await?.err(400, "invalid_room")?;
    create_raw(ctx, &a, json!({"name": "n".repeat(257)})).await?.err(400, "invalid_field")?;
    create_raw(ctx, &a, json!({"name": "n".repeat(256)})).await?.ok(201, "create_room_response")?;
    create_raw(ctx, &a, json!({"topic": "t".repeat(4097)})).await?.err(400, "invalid_field")?;
    create_raw(ctx, &a, json!({"visibility": "secret"})).await?.err(400, "invalid_field")?;
    let many: Vec<String> = (0..101).map(|i| ctx.user_id(&format!("nobody{i}"))).collect();
    create_raw(ctx, &a, json!({ "invite": many })).await?.err(400, "invalid_field")?;
    let ghost = ctx.user_id(&ctx.username("ghost"));
    create_raw(ctx, &a, json!({ "invite": [ghost] })).await?.err(404, "user_not_found")?;
    create_raw(ctx, &a, json!({"colour": "red"})).await?.err(400, "invalid_field")?;
    Ok(())
}

async fn private_join_needs_invite(ctx: &Ctx) -> Result<()> {
    let (a, b, c) = (ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?);
    let room = create(ctx, &a, json!({"visibility": "private"})).await?;
    ctx.join_raw(&b, &room).await?.err(403, "not_invited")?;
    post(ctx, &a, &room, "invite", json!({"user_id": b.user_id})).await?.ok(200, "empty")?;
    // Inviting again changes nothing.
    post(ctx, &a, &room, "invite", json!({"user_id": b.user_id})).await?.ok(200, "empty")?;
    let ghost = ctx.user_id(&ctx.username("ghost"));
    post(ctx, &a, &room, "invite", json!({ "user_id": ghost })).await?.err(404, "user_not_found")?;
    // Not a member: cannot invite.
    post(ctx, &c, &room, "invite", json!({"user_id": c.user_id})).await?.err(403, "not_member")?;
    ctx.join(&b, &room).await?;
    // A member (not a moderator) of a private room cannot invite.
    post(ctx, &b, &room, "invite", json!({"user_id": c.user_id})).await?.err(403, "forbidden")?;
    ctx.join_raw(&c, &room).await?.err(403, "not_invited")?;
    let events = ctx.all_events(&a, &room).await?;
    let invites: Vec<&Value> = events.iter().filter(|e| s(e, "type") == "invite").collect();
    check!(
        invites.len() == 1 && s(invites[0], "target") == b.user_id && s(invites[0], "sender") == a.user_id,
        "one invite event of b by a: {events:?}"
    );
    // In a public room any member invites.
    let open = create(ctx, &a, json!({})).await?;
    ctx.join(&b, &open).await?;
    post(ctx, &b, &open, "invite", json!({"user_id": c.user_id})).await?.ok(200, "empty")?;
    Ok(())
}

async fn reject_invite(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = create(ctx, &a, json!({"visibility": "private", "invite": [b.user_id]})).await?;
    let listed = rooms(ctx, &b).await?;
    check!(
        listed.iter().any(|r| s(r, "room_id") == room && s(r, "membership") == "invite"),
        "the invite is not in b's rooms: {listed:?}"
    );
    post(ctx, &b, &room, "reject", json!({})).await?.ok(200, "empty")?;
    post(ctx, &b, &room, "reject", json!({})).await?.err(403, "not_invited")?;
    ctx.join_raw(&b, &room).await?.err(403, "not_invited")?;
    let listed = rooms(ctx, &b).await?;
    check!(!listed.iter().any(|r| s(r, "room_id") == room), "a declined invite is still listed: {listed:?}");
    let events = ctx.all_events(&a, &room).await?;
    check!(
        events.iter().any(|e| s(e, "type") == "reject" && s(e, "sender") == b.user_id),
        "no reject event by b: {events:?}"
    );
    Ok(())
}

async fn private_history_from_join(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = create(ctx, &a, json!({"visibility": "private"})).await?;
    ctx.send_many(&a, &room, "before b", 3).await?;
    post(ctx, &a, &room, "invite", json!({"user_id": b.user_id})).await?.ok(200, "empty")?;
    ctx.join(&b, &room).await?;
    let all = ctx.all_events(&a, &room).await?;
    let join_seq = all
        .iter()
        .find(|e| s(e, "type") == "join" && s(e, "sender") == b.user_id)
        .map(|e| n(e, "seq"))
        .unwrap_or_default();
    ctx.send(&a, &room, &ctx.txn(), "after b").await?;
    for query in ["", "after=0", "before=100"] {
        let page = ctx.messages(&b, &room, query).await?;
        let seqs = super::seqs(&page["events"]);
        check!(
            seqs.first() == Some(&join_seq),
            "b's history ({query}) does not start at its join {join_seq}: {seqs:?}"
        );
        check_eq!(n(&page, "earliest_seq"), join_seq, "earliest_seq for b ({query})");
    }
    // The owner reads it all.
    check_eq!(n(&ctx.messages(&a, &room, "after=0").await?, "earliest_seq"), 1, "earliest_seq for the owner");
    // A public room keeps v1's rule.
    let open = create(ctx, &a, json!({})).await?;
    ctx.send(&a, &open, &ctx.txn(), "early").await?;
    ctx.join(&b, &open).await?;
    check_eq!(n(&ctx.messages(&b, &open, "").await?["events"][0], "seq"), 1, "first event b reads in a public room");
    Ok(())
}

async fn private_resume_gap_history_hidden(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = create(ctx, &a, json!({"visibility": "private"})).await?;
    ctx.send_many(&a, &room, "hidden", 2).await?;
    post(ctx, &a, &room, "invite", json!({"user_id": b.user_id})).await?.ok(200, "empty")?;
    ctx.join(&b, &room).await?;
    let page = ctx.messages(&b, &room, "").await?;
    let join_seq = n(&page, "earliest_seq");
    let mut ws = ctx.ws(&b).await?;
    let since = json!({"epoch": s(&page, "epoch"), "seq": 0});
    let (gap, events, caught_up) = subscribe(&mut ws, &room, Some(since)).await?;
    let Some(gap) = gap else { fail!("no gap before the private history: {events:?}") };
    check_eq!(s(&gap, "reason"), "history_hidden", "gap reason");
    check_eq!(n(&gap["to"], "seq"), join_seq - 1, "gap ends before b's join");
    check!(
        events.first().is_some_and(|e| n(e, "seq") == join_seq),
        "the replay does not start at b's join {join_seq}: {events:?}"
    );
    check_eq!(n(&caught_up, "seq"), n(&page, "latest_seq"), "caught_up seq");
    ws.close().await;
    Ok(())
}

async fn patch_needs_moderator(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = create(ctx, &a, json!({"name": "old"})).await?;
    ctx.join(&b, &room).await?;
    patch(ctx, &b, &room, json!({"name": "mine"})).await?.err(403, "forbidden")?;
    set_role(ctx, &a, &room, &b.user_id, "moderator").await?.ok(200, "empty")?;
    check_eq!(role_in(&members(ctx, &a, &room).await?, &b), "moderator", "b's role");
    patch(ctx, &b, &room, json!({"topic": "news", "visibility": "private"})).await?.ok(200, "empty")?;
    patch(ctx, &b, &room, json!({"name": "x".repeat(257)})).await?.err(400, "invalid_field")?;
    let events = ctx.all_events(&a, &room).await?;
    let last = events.last().cloned().unwrap_or_default();
    check!(
        s(&last, "type") == "room"
            && s(&last, "name") == "old"
            && s(&last, "topic") == "news"
            && s(&last, "visibility") == "private"
            && s(&last, "sender") == b.user_id,
        "the last event is not the room's new state: {last}"
    );
    check!(
        events.iter().any(|e| s(e, "type") == "role" && s(e, "target") == b.user_id && s(e, "role") == "moderator"),
        "no role event: {events:?}"
    );
    Ok(())
}

async fn roles_owner_only(ctx: &Ctx) -> Result<()> {
    let (a, b, c) = (ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?);
    let room = create(ctx, &a, json!({})).await?;
    ctx.join(&b, &room).await?;
    set_role(ctx, &a, &room, &b.user_id, "moderator").await?.ok(200, "empty")?;
    ctx.join(&c, &room).await?;
    set_role(ctx, &b, &room, &c.user_id, "moderator").await?.err(403, "forbidden")?;
    set_role(ctx, &a, &room, &c.user_id, "admin").await?.err(400, "invalid_field")?;
    set_role(ctx, &a, &room, "not-a-user", "member").await?.err(400, "invalid_param")?;
    ctx.leave_raw(&c, &room).await?.ok(200, "empty")?;
    set_role(ctx, &a, &room, &c.user_id, "moderator").await?.err(403, "not_member")?;
    Ok(())
}

async fn kick_ends_membership_and_subscription(ctx: &Ctx) -> Result<()> {
    let (a, b, c) = (ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?);
    let room = create(ctx, &a, json!({})).await?;
    ctx.join(&b, &room).await?;
    ctx.join(&c, &room).await?;
    // A member cannot kick; a moderator cannot kick an owner or another moderator.
    post(ctx, &c, &room, "kick", json!({"user_id": b.user_id})).await?.err(403, "forbidden")?;
    set_role(ctx, &a, &room, &b.user_id, "moderator").await?.ok(200, "empty")?;
    post(ctx, &b, &room, "kick", json!({"user_id": a.user_id})).await?.err(403, "forbidden")?;
    let mut ws = ctx.ws(&c).await?;
    subscribe(&mut ws, &room, None).await?;
    post(ctx, &b, &room, "kick", json!({"user_id": c.user_id, "reason": "spam"})).await?.ok(200, "empty")?;
    loop {
        let f = next_frame(&mut ws).await?;
        match s(&f, "type") {
            "event" => continue,
            "unsubscribed" => {
                check_eq!(s(&f, "room_id"), room.as_str(), "room_id of unsubscribed");
                break;
            }
            _ => fail!("expected the kicked user's subscription to end, got {f}"),
        }
    }
    ws.close().await;
    ctx.send_raw(&c, &room, &ctx.txn(), "still here?").await?.err(403, "not_member")?;
    ctx.messages_raw(&c, &room, "").await?.err(403, "not_member")?;
    post(ctx, &b, &room, "kick", json!({"user_id": c.user_id})).await?.err(403, "not_member")?;
    let events = ctx.all_events(&a, &room).await?;
    let last = events.last().cloned().unwrap_or_default();
    check!(
        s(&last, "type") == "kick" && s(&last, "target") == c.user_id && s(&last, "reason") == "spam",
        "the last event is not the kick: {last}"
    );
    post(ctx, &b, &room, "kick", json!({"user_id": a.user_id, "reason": "r".repeat(1025)}))
        .await?
        .err(400, "invalid_field")?;
    // A kicked user of a public room may join again.
    ctx.join(&c, &room).await?;
    Ok(())
}

async fn ban_and_unban(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = create(ctx, &a, json!({})).await?;
    ctx.join(&b, &room).await?;
    post(ctx, &a, &room, "ban", json!({"user_id": b.user_id})).await?.ok(200, "empty")?;
    ctx.join_raw(&b, &room).await?.err(403, "banned")?;
    ctx.send_raw(&b, &room, &ctx.txn(), "banned").await?.err(403, "not_member")?;
    post(ctx, &a, &room, "invite", json!({"user_id": b.user_id})).await?.err(403, "banned")?;
    post(ctx, &a, &room, "unban", json!({"user_id": b.user_id})).await?.ok(200, "empty")?;
    ctx.join(&b, &room).await?;
    let types: Vec<String> = ctx.all_events(&a, &room).await?.iter().map(|e| s(e, "type").to_owned()).collect();
    check!(
        types.ends_with(&["ban".into(), "unban".into(), "join".into()]),
        "ban, unban, join not the last events: {types:?}"
    );
    Ok(())
}

async fn last_owner_cannot_leave(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = create(ctx, &a, json!({})).await?;
    ctx.join(&b, &room).await?;
    ctx.leave_raw(&a, &room).await?.err(403, "forbidden")?;
    set_role(ctx, &a, &room, &a.user_id, "member").await?.err(403, "forbidden")?;
    set_role(ctx, &a, &room, &b.user_id, "owner").await?.ok(200, "empty")?;
    ctx.leave_raw(&a, &room).await?.ok(200, "empty")?;
    // Alone, the last owner may leave.
    ctx.leave_raw(&b, &room).await?.ok(200, "empty")?;
    Ok(())
}

async fn rooms_list_with_invites(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.user("list").await?);
    let name = ctx.room_name("listed");
    let joined = create(ctx, &b, json!({"alias": name, "name": "N", "topic": "T"})).await?;
    ctx.send(&b, &joined, &ctx.txn(), "latest").await?;
    let invited = create(ctx, &a, json!({"visibility": "private", "invite": [b.user_id]})).await?;
    let v1 = ctx.room(&b, "v1listed").await?;
    let listed = rooms(ctx, &b).await?;
    let ids: Vec<&str> = listed.iter().map(|r| s(r, "room_id")).collect();
    check!(
        ids.len() == 3 && ids[2] == invited,
        "joined rooms first, then the invite: {listed:?} (joined {joined}, {}; invited {invited})",
        v1.room_id
    );
    let j = listed.iter().find(|r| s(r, "room_id") == joined).cloned().unwrap_or_default();
    check!(
        s(&j, "membership") == "join"
            && s(&j, "role") == "owner"
            && s(&j, "name") == "N"
            && s(&j, "topic") == "T"
            && s(&j, "visibility") == "public"
            && s(&j, "alias") == ctx.alias(&name)
            && s(&j["last_event"], "body") == "latest",
        "the joined room's summary: {j}"
    );
    let i = &listed[2];
    check!(
        s(i, "membership") == "invite" && s(i, "visibility") == "private" && s(i, "role") == "member",
        "the invite's summary: {i}"
    );
    let v = listed.iter().find(|r| s(r, "room_id") == v1.room_id).cloned().unwrap_or_default();
    check!(s(&v, "alias") == v1.alias && s(&v, "role") == "member", "a v1 room's summary: {v}");
    Ok(())
}

async fn dm_same_pair_same_room(ctx: &Ctx) -> Result<()> {
    let (a, b, c) = (ctx.shared(0).await?, ctx.user("dm").await?, ctx.shared(2).await?);
    let dm = |from: &User, to: &str| {
        ctx.http.send(Request::post(Ctx::api("/dm")).token(&from.token).json(&json!({ "user_id": to })))
    };
    let first = dm(&a, &b.user_id).await?.ok(200, "dm_response")?;
    let again = dm(&a, &b.user_id).await?.ok(200, "dm_response")?;
    check_eq!(s(&again, "room_id"), s(&first, "room_id"), "the same pair's room, asked twice");
    let room = s(&first, "room_id").to_owned();
    let listed = rooms(ctx, &b).await?;
    check!(
        listed.iter().any(|r| s(r, "room_id") == room && s(r, "membership") == "invite"),
        "b is not invited to the dm: {listed:?}"
    );
    let theirs = dm(&b, &a.user_id).await?.ok(200, "dm_response")?;
    check_eq!(s(&theirs, "room_id"), room.as_str(), "the other side's room");
    ctx.send(&b, &room, &ctx.txn(), "hi a").await?;
    ctx.join_raw(&c, &room).await?.err(403, "not_invited")?;
    // Both own it; one who left and asks again is back, an owner again.
    let roles = members(ctx, &a, &room).await?;
    check!(role_in(&roles, &a) == "owner" && role_in(&roles, &b) == "owner", "the pair's roles: {roles:?}");
    ctx.leave_raw(&b, &room).await?.ok(200, "empty")?;
    let back = dm(&b, &a.user_id).await?.ok(200, "dm_response")?;
    check_eq!(s(&back, "room_id"), room.as_str(), "the room after a leave");
    check_eq!(role_in(&members(ctx, &a, &room).await?, &b), "owner", "b's role after coming back");
    dm(&a, &a.user_id).await?.err(400, "invalid_field")?;
    dm(&a, "@x:other.example").await?.err(400, "remote_user_unsupported")?;
    let ghost = ctx.user_id(&ctx.username("ghost"));
    dm(&a, &ghost).await?.err(404, "user_not_found")?;
    Ok(())
}

async fn edit_own_message(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "edit").await?;
    ctx.join(&b, &room.room_id).await?;
    let original = ctx.send(&a, &room.room_id, &ctx.txn(), "helo").await?;
    let id = s(&original, "event_id").to_owned();
    let edit = |user: &User, txn: String, body: &str, replaces: &str| {
        let req = Ctx::send_req(user, &room.room_id, &txn, &json!({"body": body, "replaces": replaces}));
        ctx.http.send(req)
    };
    let txn = ctx.txn();
    let first = edit(&a, txn.clone(), "hello", &id).await?.ok(200, "send_response")?;
    // The same txn_id with the same edit answers the same event; with
    // another `replaces`, it is a conflict.
    let again = edit(&a, txn.clone(), "hello", &id).await?.ok(200, "send_response")?;
    check_eq!(again, first, "a repeated edit");
    let other = ctx.send(&a, &room.room_id, &ctx.txn(), "second").await?;
    edit(&a, txn, "hello", s(&other, "event_id")).await?.err(409, "txn_conflict")?;
    edit(&b, ctx.txn(), "mine now", &id).await?.err(403, "forbidden")?;
    edit(&a, ctx.txn(), "edit of an edit", s(&first, "event_id")).await?.err(400, "invalid_field")?;
    edit(&a, ctx.txn(), "nothing", "$nosuch:x").await?.err(400, "invalid_field")?;
    let join_id = s(&ctx.messages(&a, &room.room_id, "after=0&limit=1").await?["events"][0], "event_id").to_owned();
    edit(&a, ctx.txn(), "a join", &join_id).await?.err(400, "invalid_field")?;
    let events = ctx.all_events(&b, &room.room_id).await?;
    let e = events.iter().find(|e| s(e, "event_id") == s(&first, "event_id")).cloned().unwrap_or_default();
    check!(
        s(&e, "type") == "message"
            && s(&e, "body") == "hello"
            && s(&e, "replaces") == id
            && s(&e, "sender") == a.user_id,
        "the edit as b reads it: {e}"
    );
    Ok(())
}

/// A client of v1 only knows `message`, `join` and `leave` and v1's fields;
/// §12 tells it to skip other event types, keeping their seq as its cursor.
/// Against a room full of v1.1 events it still joins, sends, reads history
/// without holes and resumes on the WebSocket.
async fn v1_client_still_works(ctx: &Ctx) -> Result<()> {
    let (a, old) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let name = ctx.room_name("v1c");
    let room = create(ctx, &a, json!({"alias": name, "name": "mixed"})).await?;
    patch(ctx, &a, &room, json!({"topic": "t"})).await?.ok(200, "empty")?;
    // The v1 client joins by bare name, as v1 does.
    let joined = ctx.join(&old, &name).await?;
    check_eq!(s(&joined, "alias"), ctx.alias(&name).as_str(), "alias in the v1 join answer");
    set_role(ctx, &a, &room, &old.user_id, "moderator").await?.ok(200, "empty")?;
    // A redacted message: a `message` without `body` (and a `redaction`, a type v1 does not know).
    let oops = ctx.send(&a, &name, &ctx.txn(), "oops").await?;
    let path = room_path(&room, &format!("/redact/{}/{}", enc(s(&oops, "event_id")), ctx.txn()));
    ctx.send_patiently(Request::put(path).token(&a.token).json(&json!({}))).await?.ok(200, "send_response")?;
    ctx.send(&old, &name, &ctx.txn(), "from v1").await?;
    let mut shown = Vec::new();
    let mut last = 0;
    for e in ctx.all_events(&old, &name).await? {
        check_eq!(n(&e, "seq"), last + 1, "seqs without holes");
        check!(
            !s(&e, "event_id").is_empty() && !s(&e, "sender").is_empty() && e["ts"].is_u64(),
            "an event lacks v1's fields: {e}"
        );
        last = n(&e, "seq");
        match s(&e, "type") {
            // §7: a message without a body was redacted (v1.1); shown as deleted.
            "message" => shown.push(e.get("body").and_then(Value::as_str).unwrap_or("(deleted)").to_owned()),
            "join" | "leave" => {}
            _ => continue, // unknown to v1: skipped, its seq kept
        }
    }
    check_eq!(shown, vec!["(deleted)".to_owned(), "from v1".to_owned()], "messages a v1 client shows");
    let mut ws = ctx.ws(&old).await?;
    let page = ctx.messages(&old, &name, "").await?;
    let since = json!({"epoch": s(&page, "epoch"), "seq": 0});
    let (gap, events, caught_up) = subscribe(&mut ws, &room, Some(since)).await?;
    check!(gap.is_none(), "a gap in a public room's replay: {gap:?}");
    check_eq!(events.len() as u64, last, "replayed events");
    check_eq!(n(&caught_up, "seq"), last, "caught_up seq");
    ws.close().await;
    ctx.leave_raw(&old, &name).await?.ok(200, "empty")?;
    Ok(())
}

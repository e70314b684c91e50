//! §6 Rooms: joining by bare name, alias and id; creation on first join;
//! idempotent joins; leave; members; the rooms list; refusals.

use super::{n, s};
use crate::ctx::{Ctx, Room, User};
use crate::failure::Result;
use crate::http::Request;
use crate::runner::Case;
use crate::{case, check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("rooms::join_by_name_creates_room", "6", join_by_name_creates_room),
        case!("rooms::join_folds_name", "6", join_folds_name),
        case!("rooms::join_by_alias", "6", join_by_alias),
        case!("rooms::join_by_id", "6", join_by_id),
        case!("rooms::join_twice_changes_nothing", "6", join_twice_changes_nothing),
        case!("rooms::join_appends_join_event", "6", join_appends_join_event),
        case!("rooms::join_unknown_id_not_found", "6", join_unknown_id_not_found),
        case!("rooms::join_unresolvable_remote_alias_not_found", "6", join_unresolvable_remote_alias_not_found),
        case!("rooms::invalid_room_refused", "6", invalid_room_refused),
        case!("rooms::room_name_length", "6", room_name_length),
        case!("rooms::leave", "6", leave),
        case!("rooms::leave_not_member", "6", leave_not_member),
        case!("rooms::rejoin_after_leave", "6", rejoin_after_leave),
        case!("rooms::members_sorted", "6", members_sorted),
        case!("rooms::members_not_member", "6", members_not_member),
        case!("rooms::unknown_room_not_found", "6", unknown_room_not_found),
        case!("rooms::rooms_list_sorted", "6", rooms_list_sorted),
    ]
}

async fn members(ctx: &Ctx, user: &User, room: &str) -> Result<Vec<String>> {
    let v = ctx
        .http
        .send(Request::get(Ctx::api(&format!("/rooms/{}/members", crate::http::enc(room)))).token(&user.token))
        .await?
        .ok(200, "members_response")?;
    Ok(v["members"].as_array().into_iter().flatten().map(|m| s(m, "user_id").to_owned()).collect())
}

async fn rooms_list(ctx: &Ctx, user: &User) -> Result<Vec<(String, String)>> {
    let v = ctx.http.send(Request::get(Ctx::api("/rooms")).token(&user.token)).await?.ok(200, "rooms_response")?;
    Ok(v["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (s(r, "alias").to_owned(), s(r, "room_id").to_owned()))
        .collect())
}

async fn join_by_name_creates_room(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "new").await?;
    check_eq!(room.alias, ctx.alias(&room.name), "alias");
    check!(
        room.room_id.starts_with('!') && room.room_id.ends_with(&format!(":{}", ctx.server_name)),
        "room_id {} is not !opaque:{}",
        room.room_id,
        ctx.server_name
    );
    let page = ctx.messages(&user, &room.room_id, "").await?;
    let first = &page["events"][0];
    check!(
        n(first, "seq") == 1 && s(first, "type") == "join" && s(first, "sender") == user.user_id,
        "the creator's join is not event 1: {page}"
    );
    Ok(())
}

async fn join_folds_name(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let name = ctx.room_name("fold");
    let v = ctx.join(&user, &name.to_ascii_uppercase()).await?;
    check_eq!(s(&v, "alias"), ctx.alias(&name).as_str(), "alias of an upper-case name");
    let again = ctx.join(&user, &name).await?;
    check_eq!(s(&again, "room_id"), s(&v, "room_id"), "the lower-case name names the same room");
    Ok(())
}

async fn join_by_alias(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "al").await?;
    let v = ctx.join(&b, &room.alias).await?;
    check_eq!(s(&v, "room_id"), room.room_id.as_str(), "room_id joined by alias");
    check_eq!(s(&v, "alias"), room.alias.as_str(), "alias");
    Ok(())
}

async fn join_by_id(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "id").await?;
    let v = ctx.join(&b, &room.room_id).await?;
    check_eq!(s(&v, "room_id"), room.room_id.as_str(), "room_id joined by id");
    check_eq!(s(&v, "alias"), room.alias.as_str(), "alias");
    Ok(())
}

async fn join_twice_changes_nothing(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "twice").await?;
    let before = ctx.messages(&user, &room.room_id, "").await?;
    for r in [&room.name, &room.alias, &room.room_id] {
        let v = ctx.join(&user, r).await?;
        check_eq!(s(&v, "room_id"), room.room_id.as_str(), "room_id on joining again");
    }
    let after = ctx.messages(&user, &room.room_id, "").await?;
    check_eq!(n(&after, "latest_seq"), n(&before, "latest_seq"), "latest_seq after joining a room one is in");
    Ok(())
}

async fn join_appends_join_event(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "je").await?;
    ctx.join(&b, &room.alias).await?;
    let page = ctx.messages(&a, &room.room_id, "").await?;
    let last = page["events"].as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
    check!(
        s(&last, "type") == "join" && s(&last, "sender") == b.user_id && n(&last, "seq") == 2,
        "the second join is not event 2 by {}: {page}",
        b.user_id
    );
    check!(last.get("body").is_none_or(|b| b.is_null()), "a join event has a body: {last}");
    Ok(())
}

async fn join_unknown_id_not_found(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let id = format!("!{}:{}", ctx.unique("nosuch", 40), ctx.server_name);
    ctx.join_raw(&user, &id).await?.err(404, "room_not_found")?;
    Ok(())
}

async fn join_unresolvable_remote_alias_not_found(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    // A server name on this machine where nothing listens (port 9, discard):
    // resolving it fails fast and sends nothing off the machine.
    let alias = format!("#{}:127.0.0.1:9", ctx.room_name("far"));
    let resp = ctx.join_raw(&user, &alias).await?;
    // §11.5: with federation, an unreachable home server is said as such;
    // without it, the room simply is not found.
    let federates = ctx.http.send(Request::get("/_parlor/key/v1/server")).await?.status == 200;
    if federates {
        resp.err(503, "home_server_unreachable")?;
    } else {
        resp.err(404, "room_not_found")?;
    }
    Ok(())
}

async fn invalid_room_refused(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    for bad in ["bad room", "bad!", "caf\u{e9}", "#", "#:x", "!:x", "#x:", "@ann:x", "a:b:c:d"] {
        ctx.join_raw(&user, bad).await?.err(400, "invalid_room")?;
    }
    Ok(())
}

async fn room_name_length(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let base = format!("{}{}", ctx.room_name("len"), "x".repeat(64));
    ctx.join_raw(&user, &base[..65]).await?.err(400, "invalid_room")?;
    let v = ctx.join(&user, &base[..64]).await?;
    check_eq!(s(&v, "alias"), ctx.alias(&base[..64]).as_str(), "alias of a 64-character name");
    Ok(())
}

async fn leave(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "lv").await?;
    ctx.join(&b, &room.room_id).await?;
    ctx.leave_raw(&b, &room.alias).await?.ok(200, "empty")?;
    let page = ctx.messages(&a, &room.room_id, "").await?;
    let last = page["events"].as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
    check!(
        s(&last, "type") == "leave" && s(&last, "sender") == b.user_id,
        "no leave event by {} at the end: {page}",
        b.user_id
    );
    check!(!members(ctx, &a, &room.room_id).await?.contains(&b.user_id), "a user who left is still a member");
    check!(
        !rooms_list(ctx, &b).await?.iter().any(|(_, id)| *id == room.room_id),
        "a room one left is still in GET /rooms"
    );
    ctx.messages_raw(&b, &room.room_id, "").await?.err(403, "not_member")?;
    Ok(())
}

async fn leave_not_member(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "lnm").await?;
    ctx.leave_raw(&b, &room.room_id).await?.err(403, "not_member")?;
    Ok(())
}

async fn rejoin_after_leave(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "rj").await?;
    ctx.join(&b, &room.room_id).await?;
    ctx.leave_raw(&b, &room.room_id).await?.ok(200, "empty")?;
    ctx.join(&b, &room.room_id).await?;
    let page = ctx.messages(&b, &room.room_id, "").await?;
    let kinds: Vec<(String, u64)> = page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (format!("{} {}", s(e, "type"), s(e, "sender")), n(e, "seq")))
        .collect();
    let expected = vec![
        (format!("join {}", a.user_id), 1),
        (format!("join {}", b.user_id), 2),
        (format!("leave {}", b.user_id), 3),
        (format!("join {}", b.user_id), 4),
    ];
    check_eq!(kinds, expected, "events of join, leave, join again");
    Ok(())
}

async fn members_sorted(ctx: &Ctx) -> Result<()> {
    let users = [ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?];
    let room: Room = ctx.room(&users[2], "mem").await?;
    for u in &users[..2] {
        ctx.join(u, &room.alias).await?;
    }
    let got = members(ctx, &users[0], &room.alias).await?;
    let mut expected: Vec<String> = users.iter().map(|u| u.user_id.clone()).collect();
    expected.sort();
    check_eq!(got, expected, "members, sorted by user id");
    Ok(())
}

async fn members_not_member(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "mnm").await?;
    ctx.http
        .send(Request::get(Ctx::api(&format!("/rooms/{}/members", crate::http::enc(&room.room_id)))).token(&b.token))
        .await?
        .err(403, "not_member")?;
    Ok(())
}

async fn rooms_list_sorted(ctx: &Ctx) -> Result<()> {
    let user = ctx.user("rl").await?;
    check_eq!(rooms_list(ctx, &user).await?, Vec::<(String, String)>::new(), "rooms of a new user");
    let stem = ctx.room_name("ls");
    let mut made = Vec::new();
    for suffix in ["c", "a", "b"] {
        let v = ctx.join(&user, &format!("{stem}{suffix}")).await?;
        made.push((s(&v, "alias").to_owned(), s(&v, "room_id").to_owned()));
    }
    made.sort();
    check_eq!(rooms_list(ctx, &user).await?, made, "rooms, sorted by alias");
    ctx.leave_raw(&user, &made[1].1).await?.ok(200, "empty")?;
    made.remove(1);
    check_eq!(rooms_list(ctx, &user).await?, made, "rooms after leaving one");
    Ok(())
}

async fn unknown_room_not_found(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let name = ctx.room_name("nosuch");
    let id = format!("!{}:{}", crate::ctx::random_base36(18), ctx.server_name);
    for room in [name.clone(), ctx.alias(&name), id] {
        let r = crate::http::enc(&room);
        ctx.http
            .send(Request::get(Ctx::api(&format!("/rooms/{r}/members"))).token(&user.token))
            .await?
            .err(404, "room_not_found")?;
        ctx.leave_raw(&user, &room).await?.err(404, "room_not_found")?;
        ctx.messages_raw(&user, &room, "").await?.err(404, "room_not_found")?;
    }
    Ok(())
}

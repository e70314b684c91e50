//! The v1.1 room commands (spec §12 and §6's read marks): `create`, `room`,
//! `invite`, `reject`, `kick`, `ban`, `unban`, `role`, `dm` and `read`, and
//! how a USER argument (`ann` or `@ann:server`) becomes a user id. Each
//! is one request; the server decides who may do what, and its refusals
//! (`forbidden`, `not_invited`, `banned`, …) are reported like any other.

use http::Method;
use serde_json::{Value, json};

use crate::api::{Api, Retry, encode_segment};
use crate::cli::{CreateArgs, ModerationArgs, RoleArg, RoomArgs};
use crate::commands::Ctx;
use crate::failure::Failure;
use crate::output::sanitize;
use crate::wire::{
    CreateRoomRequest, CreateRoomResponse, DmResponse, ReadRequest, RoleRequest, RoomUpdate, UserRequest,
    WhoamiResponse,
};

/// The moderation requests, which share one body and one answer.
#[derive(Debug, Clone, Copy)]
pub enum Moderation {
    Kick,
    Ban,
    Unban,
}

impl Moderation {
    fn path(self) -> &'static str {
        match self {
            Moderation::Kick => "kick",
            Moderation::Ban => "ban",
            Moderation::Unban => "unban",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Moderation::Kick => "kicked",
            Moderation::Ban => "banned",
            Moderation::Unban => "unbanned",
        }
    }
}

/// `ann` means @ann on the server the session's user belongs to (which may
/// be named differently from the URL chatctl talks to); `@ann:server` is
/// taken as it is. Bare names are folded to lower case, as the server folds
/// usernames.
pub async fn user_id(ctx: &Ctx, api: &Api, user: &str) -> anyhow::Result<String> {
    if user.starts_with('@') {
        return Ok(user.to_owned());
    }
    if user.is_empty() || user.contains(':') {
        return Err(Failure::usage(format!("{user:?} is not a user: give `ann` or `@ann:server`")).into());
    }
    let own = match &ctx.target.session {
        Some(s) if api.token() == Some(s.token.as_str()) => s.user_id.clone(),
        // CHATCTL_TOKEN: only the server knows whose it is.
        _ => api.get::<WhoamiResponse>("/account/whoami").await.map_err(|e| ctx.fail(e))?.user_id,
    };
    let server = own.split_once(':').map(|(_, s)| s).unwrap_or_default();
    Ok(format!("@{}:{server}", user.to_lowercase()))
}

fn room_path(room: &str, action: &str) -> String {
    format!("/rooms/{}/{action}", encode_segment(room))
}

pub async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let mut invite = Vec::with_capacity(args.invite.len());
    for user in &args.invite {
        invite.push(user_id(ctx, &api, user).await?);
    }
    let req = CreateRoomRequest {
        alias: args.alias.as_deref(),
        name: args.name.as_deref(),
        topic: args.topic.as_deref(),
        visibility: Some(if args.private { "private" } else { "public" }),
        invite,
    };
    // Not repeated after a lost answer: a second create of an alias is
    // `alias_taken`, and one without an alias makes a second room.
    let resp: CreateRoomResponse =
        api.call(Method::POST, "/rooms", Some(&req), Retry::NOT_IDEMPOTENT).await.map_err(|e| ctx.fail(e))?;
    match &resp.alias {
        Some(alias) => ctx.out.human(&format!("created {alias} ({})", resp.room_id)),
        None => ctx.out.human(&format!("created {}", resp.room_id)),
    }
    ctx.out.json(&resp);
    Ok(())
}

pub async fn update(ctx: &Ctx, args: RoomArgs) -> anyhow::Result<()> {
    let visibility = match (args.public, args.private) {
        (true, _) => Some("public"),
        (_, true) => Some("private"),
        _ => None,
    };
    let req = RoomUpdate { name: args.name.as_deref(), topic: args.topic.as_deref(), visibility };
    let path = format!("/rooms/{}", encode_segment(&args.room));
    // Setting the same state twice leaves the same state.
    let _: Value =
        ctx.authed()?.call(Method::PATCH, &path, Some(&req), Retry::IDEMPOTENT).await.map_err(|e| ctx.fail(e))?;
    let mut changed = Vec::new();
    if let Some(n) = &req.name {
        changed.push(if n.is_empty() { "name removed".to_owned() } else { format!("name {:?}", sanitize(n)) });
    }
    if let Some(t) = &req.topic {
        changed.push(if t.is_empty() { "topic removed".to_owned() } else { format!("topic {:?}", sanitize(t)) });
    }
    if let Some(v) = visibility {
        changed.push(v.to_owned());
    }
    ctx.out.human(&format!("updated {}: {}", args.room, changed.join(", ")));
    let mut obj = json!({"room": args.room, "updated": true});
    for (k, v) in [("name", req.name), ("topic", req.topic), ("visibility", visibility)] {
        if let Some(v) = v {
            obj[k] = Value::String(v.to_owned());
        }
    }
    ctx.out.json(&obj);
    Ok(())
}

pub async fn invite(ctx: &Ctx, room: &str, user: &str) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let user_id = user_id(ctx, &api, user).await?;
    // Inviting someone already invited changes nothing.
    let _: Value = api
        .call(
            Method::POST,
            &room_path(room, "invite"),
            Some(&UserRequest { user_id: &user_id, reason: None }),
            Retry::IDEMPOTENT,
        )
        .await
        .map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("invited {user_id} to {room}"));
    ctx.out.json(&json!({"room": room, "user_id": user_id, "invited": true}));
    Ok(())
}

pub async fn reject(ctx: &Ctx, room: &str) -> anyhow::Result<()> {
    // Not repeated after a lost answer: a second reject is `not_invited`.
    let _: Value = ctx
        .authed()?
        .call(Method::POST, &room_path(room, "reject"), None::<&()>, Retry::NOT_IDEMPOTENT)
        .await
        .map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("rejected the invite to {room}"));
    ctx.out.json(&json!({"room": room, "rejected": true}));
    Ok(())
}

pub async fn moderate(ctx: &Ctx, what: Moderation, args: ModerationArgs) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let user_id = user_id(ctx, &api, &args.user).await?;
    let req = UserRequest { user_id: &user_id, reason: args.reason.as_deref() };
    // A ban or unban repeated changes nothing; a kick repeated is
    // `not_member`, so only it is not retried after a lost answer.
    let retry = match what {
        Moderation::Kick => Retry::NOT_IDEMPOTENT,
        Moderation::Ban | Moderation::Unban => Retry::IDEMPOTENT,
    };
    let _: Value = api
        .call(Method::POST, &room_path(&args.room, what.path()), Some(&req), retry)
        .await
        .map_err(|e| ctx.fail(e))?;
    let preposition = if matches!(what, Moderation::Unban) { "in" } else { "from" };
    ctx.out.human(&format!("{} {user_id} {preposition} {}", what.done(), args.room));
    let mut obj = json!({"room": args.room, "user_id": user_id, what.done(): true});
    if let Some(reason) = &args.reason {
        obj["reason"] = Value::String(reason.clone());
    }
    ctx.out.json(&obj);
    Ok(())
}

pub async fn role(ctx: &Ctx, room: &str, user: &str, role: RoleArg) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let user_id = user_id(ctx, &api, user).await?;
    let path = format!("/rooms/{}/roles/{}", encode_segment(room), encode_segment(&user_id));
    let _: Value = api
        .call(Method::PUT, &path, Some(&RoleRequest { role: role.as_str() }), Retry::IDEMPOTENT)
        .await
        .map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("{user_id} is now {} in {room}", role.as_str()));
    ctx.out.json(&json!({"room": room, "user_id": user_id, "role": role.as_str()}));
    Ok(())
}

pub async fn dm(ctx: &Ctx, user: &str) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let user_id = user_id(ctx, &api, user).await?;
    // The same pair always gets the same room.
    let resp: DmResponse = api
        .call(Method::POST, "/dm", Some(&UserRequest { user_id: &user_id, reason: None }), Retry::IDEMPOTENT)
        .await
        .map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("direct messages with {user_id}: {}", resp.room_id));
    ctx.out.json(&json!({"room_id": resp.room_id, "user_id": user_id}));
    Ok(())
}

pub async fn read(ctx: &Ctx, room: &str, seq: u64) -> anyhow::Result<()> {
    // A read mark never moves back, so repeating it is harmless.
    let _: Value = ctx
        .authed()?
        .call(Method::POST, &room_path(room, "read"), Some(&ReadRequest { seq }), Retry::IDEMPOTENT)
        .await
        .map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("marked {room} read up to seq {seq}"));
    ctx.out.json(&json!({"room": room, "seq": seq, "read": true}));
    Ok(())
}

//! HTTP handlers for join, leave, members and the rooms list, and (v1.1)
//! room creation, state changes, invites, roles, moderation and direct
//! messages. Each checks in spec §3's order: body, authentication, then the
//! path parameters (`invalid_param`, `invalid_room`), then the endpoint's
//! own checks.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Ctx, Resp, authenticate, json, param, parse_json, read_body};
use crate::protocol::accounts::Empty;
use crate::protocol::events::EventType;
use crate::protocol::rooms::{
    CreateRoomRequest, CreateRoomResponse, DmResponse, JoinResponse, Member, MembersResponse, ModerationRequest,
    RoleRequest, RoomSummary, RoomUpdate, RoomsResponse, UserRequest,
};
use crate::protocol::{ErrCode, UserId};
use crate::service::Error;
use crate::service::rooms::Rooms;

pub async fn join(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let _: Empty = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    let services = &ctx.app.services;
    let room = services.rooms.join(&session.user_id, &Rooms::parse_ref(&param(room)?)?).await?;
    services.live.joined(services.rooms.clone(), room.room_id.clone());
    Ok(json(StatusCode::OK, &JoinResponse { room_id: room.room_id, alias: room.alias }))
}

pub async fn leave(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let _: Empty = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    ctx.app.services.rooms.leave(&session.user_id, &Rooms::parse_ref(&param(room)?)?).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn members(ctx: &Ctx, req: &Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let session = authenticate(ctx, req.headers()).await?;
    let (room, members) =
        ctx.app.services.rooms.members_with_roles(&session.user_id, &Rooms::parse_ref(&param(room)?)?).await?;
    let live = &ctx.app.services.live;
    // Users of other servers: as far as their server told this one (§11.7).
    let members = members
        .into_iter()
        .map(|(user_id, role)| Member { presence: Some(live.presence(&user_id)), user_id, role })
        .collect();
    Ok(json(StatusCode::OK, &MembersResponse { room_id: room.room_id, members }))
}

pub async fn list(ctx: &Ctx, req: &Request<Incoming>) -> Result<Resp, Error> {
    let session = authenticate(ctx, req.headers()).await?;
    let services = &ctx.app.services;
    let listed = services.rooms.list(&session.user_id).await?;
    // Each joined room's count is its own reads; they run at once.
    let counts = futures_util::future::join_all(listed.iter().map(|r| async {
        match r.membership {
            crate::protocol::rooms::Membership::Join => {
                services.receipts.unread(&session.user_id, &r.room).await.map(Some)
            }
            crate::protocol::rooms::Membership::Invite => Ok(None),
        }
    }))
    .await;
    let mut rooms = Vec::with_capacity(listed.len());
    for (r, unread) in listed.into_iter().zip(counts) {
        rooms.push(RoomSummary {
            room_id: r.room.room_id,
            alias: r.room.alias,
            name: r.name,
            topic: r.topic,
            visibility: r.visibility,
            membership: r.membership,
            role: r.role,
            last_event: r.last_event,
            unread: unread?,
        });
    }
    Ok(json(StatusCode::OK, &RoomsResponse { rooms }))
}

pub async fn create(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: CreateRoomRequest = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    let room = ctx.app.services.rooms.create_room(&session.user_id, body).await?;
    Ok(json(StatusCode::CREATED, &CreateRoomResponse { room_id: room.room_id, alias: room.alias }))
}

pub async fn patch(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: RoomUpdate = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers).await?;
    ctx.app.services.rooms.patch(&session.user_id, &Rooms::parse_ref(&param(room)?)?, body).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn invite(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: UserRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers).await?;
    ctx.app.services.rooms.invite(&session.user_id, &Rooms::parse_ref(&param(room)?)?, &body.user_id).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn reject(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let _: Empty = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    ctx.app.services.rooms.reject(&session.user_id, &Rooms::parse_ref(&param(room)?)?).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

/// `kick`, `ban` or `unban`.
pub async fn moderate(ctx: &Ctx, req: Request<Incoming>, room: &str, what: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: ModerationRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers).await?;
    let kind = match what {
        "kick" => EventType::Kick,
        "ban" => EventType::Ban,
        _ => EventType::Unban,
    };
    let r = Rooms::parse_ref(&param(room)?)?;
    ctx.app.services.rooms.moderate(&session.user_id, &r, kind, &body.user_id, body.reason).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn set_role(ctx: &Ctx, req: Request<Incoming>, room: &str, user: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: RoleRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers).await?;
    let r = Rooms::parse_ref(&param(room)?)?;
    let raw = param(user)?;
    let target =
        UserId::parse(&raw).map_err(|e| Error::refused(ErrCode::InvalidParam, format!("user_id {raw:?}: {e}")))?;
    ctx.app.services.rooms.set_role(&session.user_id, &r, &target, body.role).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn dm(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: UserRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers).await?;
    let room = ctx.app.services.rooms.dm(&session.user_id, &body.user_id).await?;
    Ok(json(StatusCode::OK, &DmResponse { room_id: room.room_id }))
}

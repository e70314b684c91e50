//! HTTP handlers for join, leave, members and the joined-rooms list. Each
//! checks in spec §3's order: body, authentication, then the room parameter
//! (`invalid_param`, `invalid_room`), then the endpoint's own checks.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Ctx, Resp, authenticate, json, param, parse_json, read_body};
use crate::protocol::accounts::Empty;
use crate::protocol::rooms::{JoinResponse, Member, MembersResponse, RoomSummary, RoomsResponse};
use crate::service::Error;
use crate::service::rooms::Rooms;

pub async fn join(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let _: Empty = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    let room = ctx.app.services.rooms.join(&session.user_id, &Rooms::parse_ref(&param(room)?)?).await?;
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
    let (room, members) = ctx.app.services.rooms.members(&session.user_id, &Rooms::parse_ref(&param(room)?)?).await?;
    let (live, server) = (&ctx.app.services.live, ctx.app.services.config.server_name.as_str());
    // Only this server knows whether its own users are online (federation
    // does not carry presence yet).
    let members = members
        .into_iter()
        .map(|user_id| Member { presence: (user_id.server() == server).then(|| live.presence(&user_id)), user_id })
        .collect();
    Ok(json(StatusCode::OK, &MembersResponse { room_id: room.room_id, members }))
}

pub async fn list(ctx: &Ctx, req: &Request<Incoming>) -> Result<Resp, Error> {
    let session = authenticate(ctx, req.headers()).await?;
    let services = &ctx.app.services;
    let joined = services.rooms.joined(&session.user_id).await?;
    // Each room's count is its own reads; they run at once.
    let counts =
        futures_util::future::join_all(joined.iter().map(|r| services.receipts.unread(&session.user_id, r))).await;
    let mut rooms = Vec::with_capacity(joined.len());
    for (r, unread) in joined.into_iter().zip(counts) {
        rooms.push(RoomSummary { room_id: r.room_id, alias: r.alias, unread: Some(unread?) });
    }
    Ok(json(StatusCode::OK, &RoomsResponse { rooms }))
}

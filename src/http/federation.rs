//! HTTP handlers of the server-to-server API: the key document, discovery,
//! and the signed federation endpoints. Every federation request is verified
//! against its origin's key before its body is even parsed.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Ctx, Resp, json, parse_json, read_body};
use crate::protocol::accounts::Empty;
use crate::protocol::federation::{
    FedEphemeral, FedJoinRequest, FedJoinResponse, FedLeaveRequest, FedRejectRequest, FedSendRequest, FedTransaction,
};
use crate::protocol::{ErrCode, RoomId, ServerName};
use crate::service::Error;
use crate::service::federation::Federation;

fn federation(ctx: &Ctx) -> Result<&std::sync::Arc<Federation>, Error> {
    ctx.app
        .services
        .federation
        .as_ref()
        .ok_or_else(|| Error::refused(ErrCode::NotFound, "federation is off on this server"))
}

pub fn key(ctx: &Ctx) -> Result<Resp, Error> {
    Ok(json(StatusCode::OK, &federation(ctx)?.key_document()))
}

pub fn well_known(ctx: &Ctx) -> Result<Resp, Error> {
    Ok(json(StatusCode::OK, &federation(ctx)?.well_known()))
}

/// Reads the body and checks the signature; returns the origin and the body.
async fn signed(ctx: &Ctx, req: Request<Incoming>) -> Result<(ServerName, bytes::Bytes), Error> {
    let fed = federation(ctx)?.clone();
    let method = req.method().clone();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    // A header that is not visible ASCII is as good as none: `bad_signature`.
    let authorization = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = read_body(ctx, req).await?;
    let origin = fed.verify(method.as_str(), &path, authorization.as_deref(), &body).await?;
    Ok((origin, body))
}

fn room_id(raw: &str) -> Result<RoomId, Error> {
    RoomId::parse(raw).map_err(|e| Error::refused(ErrCode::InvalidRoom, format!("{raw:?}: {e}")))
}

pub async fn join(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let (origin, body) = signed(ctx, req).await?;
    let body: FedJoinRequest = parse_json(&body, false)?;
    if body.user_id.server() != origin.as_str() {
        return Err(Error::refused(ErrCode::UnknownServer, format!("{origin} cannot act for {}", body.user_id)));
    }
    let services = &ctx.app.services;
    let (room, head, members) = services.rooms.join_from_federation(&body.user_id, &body.room).await?;
    services.live.introduce(services.rooms.clone(), room.room_id.clone(), Some(origin));
    Ok(json(
        StatusCode::OK,
        &FedJoinResponse {
            room_id: room.room_id,
            alias: room.alias,
            epoch: head.epoch.to_string(),
            earliest_seq: head.earliest,
            latest_seq: head.latest,
            members,
        },
    ))
}

pub async fn leave(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let (origin, body) = signed(ctx, req).await?;
    let body: FedLeaveRequest = parse_json(&body, false)?;
    if body.user_id.server() != origin.as_str() {
        return Err(Error::refused(ErrCode::UnknownServer, format!("{origin} cannot act for {}", body.user_id)));
    }
    ctx.app.services.rooms.leave_from_federation(&body.user_id, &body.room_id).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn reject(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let (origin, body) = signed(ctx, req).await?;
    let body: FedRejectRequest = parse_json(&body, false)?;
    if body.user_id.server() != origin.as_str() {
        return Err(Error::refused(ErrCode::UnknownServer, format!("{origin} cannot act for {}", body.user_id)));
    }
    ctx.app.services.rooms.reject_from_federation(&body.user_id, &body.room_id).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn send(ctx: &Ctx, req: Request<Incoming>, room: &str, txn_id: &str) -> Result<Resp, Error> {
    let (origin, body) = signed(ctx, req).await?;
    let body: FedSendRequest = parse_json(&body, false)?;
    let answer = ctx.app.services.events.send_from_federation(&origin, &room_id(room)?, txn_id, body).await?;
    Ok(json(StatusCode::OK, &answer))
}

pub async fn events(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let query = req.uri().query().map(str::to_owned);
    let (origin, _) = signed(ctx, req).await?;
    let (range, limit) = super::events::history_query(query.as_deref())?;
    let crate::protocol::events::Range::After(after) = range else {
        return Err(Error::refused(ErrCode::InvalidParam, "federation backfill takes after=SEQ"));
    };
    let page = ctx.app.services.rooms.events_for_server(&origin, &room_id(room)?, after, limit).await?;
    Ok(json(StatusCode::OK, &page))
}

pub async fn ephemeral(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let (origin, body) = signed(ctx, req).await?;
    let body: FedEphemeral = parse_json(&body, false)?;
    let services = &ctx.app.services;
    services.live.from_federation(&origin, body, &services.rooms, &services.receipts).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn transaction(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let (origin, body) = signed(ctx, req).await?;
    let txn: FedTransaction = parse_json(&body, false)?;
    ctx.app.services.rooms.receive(&origin, txn.events).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

//! HTTP handler for read receipts: `POST /rooms/{room}/read`. Checks in
//! spec §3's order: body, authentication, the room parameter, then the
//! endpoint's own checks (membership, the seq against the room's latest).

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Ctx, Resp, authenticate, json, param, parse_json, read_body};
use crate::protocol::accounts::Empty;
use crate::protocol::rooms::ReadRequest;
use crate::service::Error;
use crate::service::rooms::Rooms;

pub async fn read(ctx: &Ctx, req: Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: ReadRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers).await?;
    let room = Rooms::parse_ref(&param(room)?)?;
    ctx.app.services.receipts.mark_read(&session.user_id, &room, body.seq).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

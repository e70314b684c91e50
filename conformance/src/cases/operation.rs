//! §10 Server operation: `/healthz`, and `storage_unavailable` when the room
//! log is down (only with `--storage-down`, since the suite cannot take a
//! server's storage away by itself).

use crate::ctx::Ctx;
use crate::failure::Result;
use crate::http::Request;
use crate::runner::{Case, Needs};
use crate::{case, check, check_eq};

use super::s;

pub fn cases() -> Vec<Case> {
    vec![
        case!("operation::healthz_ok", "10", healthz_ok),
        case!("operation::storage_down_503", "10", storage_down_503).needs(Needs::StorageDown),
    ]
}

async fn healthz_ok(ctx: &Ctx) -> Result<()> {
    if ctx.cfg.storage_down {
        return Err(crate::Failure::NotRun("the room log is down on purpose (--storage-down)".into()));
    }
    let v = ctx.http.send(Request::get("/healthz").own_error_body()).await?.ok(200, "health_response")?;
    check_eq!(s(&v, "status"), "ok", "status");
    check!(
        ["embedded", "redis"].contains(&s(&v, "room_log")),
        "room_log {:?} is neither embedded nor redis",
        v["room_log"]
    );
    Ok(())
}

async fn storage_down_503(ctx: &Ctx) -> Result<()> {
    let resp = ctx.http.send(Request::get("/healthz").own_error_body()).await?;
    check_eq!(resp.status, 503, "GET /healthz status with the room log down");
    let v = resp.json()?;
    ctx.schemas.check("health_response", "GET /healthz", &v)?;
    check_eq!(s(&v, "status"), "unavailable", "status");
    // Accounts may live elsewhere (the embedded store beside a Redis room
    // log): registering works, and anything that appends to a room log
    // fails at once with 503. Or they live in the same Redis (a server of
    // several processes): registering fails at once with 503 too. Either
    // way nothing is half-written.
    let name = ctx.username("down");
    let reg = ctx.register_raw(&name, crate::ctx::GOOD_PASSWORD).await?;
    if reg.status == 503 {
        reg.err(503, "storage_unavailable")?;
        return Ok(());
    }
    reg.ok(201, "register_response")?;
    let user = ctx.login(&name, crate::ctx::GOOD_PASSWORD).await?;
    let resp = ctx.join_raw(&user, &ctx.room_name("down")).await?;
    resp.err(503, "storage_unavailable")?;
    Ok(())
}

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
    // Accounts live elsewhere, so registering works; anything that appends
    // to a room log fails at once with 503, and nothing is half-written.
    let user = ctx.user("down").await?;
    let resp = ctx.join_raw(&user, &ctx.room_name("down")).await?;
    resp.err(503, "storage_unavailable")?;
    Ok(())
}

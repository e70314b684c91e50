//! `GET /_parlor/versions` and `GET /healthz`.

use http::StatusCode;

use super::{Ctx, Resp, json};
use crate::protocol::VERSIONS;
use crate::protocol::versions::{HealthResponse, ServerInfo, VersionsResponse};
use crate::service::Error;

pub fn versions(ctx: &Ctx) -> Result<Resp, Error> {
    Ok(json(
        StatusCode::OK,
        &VersionsResponse {
            versions: VERSIONS.iter().map(|v| v.to_string()).collect(),
            server: ServerInfo {
                name: ctx.app.services.config.server_name.to_string(),
                version: concat!("parlor ", env!("CARGO_PKG_VERSION")).into(),
            },
            registration: ctx.app.services.admin.registration(),
        },
    ))
}

pub async fn health(ctx: &Ctx) -> Result<Resp, Error> {
    let log = ctx.app.services.events.log();
    let ok = log.healthy().await;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(json(
        status,
        &HealthResponse { status: if ok { "ok" } else { "unavailable" }.into(), room_log: log.kind().into() },
    ))
}

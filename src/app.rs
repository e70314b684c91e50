//! What both wires (`http/`, `ws/`) share and stand on: the running server's
//! services and shutdown signal ([`App`]), one connection's context
//! ([`Ctx`]) and socket ([`conn`]), and authenticating a request's bearer
//! token. It sits below `server.rs`, `http/` and `ws/` and above `service/`,
//! so neither wire has to import the other or the accept loop.

pub mod conn;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::ErrCode;
use crate::protocol::parse::bearer_token;
use crate::service::accounts::Session;
use crate::service::{Error, Services};

/// What every connection shares.
pub struct App {
    pub services: Services,
    /// Cancelled at shutdown: WebSocket sessions close with 1001.
    pub shutdown: CancellationToken,
    /// WebSocket sessions, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Answer bytes waiting for slow readers, server-wide.
    pub responses: Arc<conn::ResponseBudget>,
}

/// An HTTP answer, as both wires build it.
pub type Resp = Response<Full<Bytes>>;

/// What a handler gets besides the request.
pub struct Ctx {
    pub app: Arc<App>,
    pub peer: SocketAddr,
    /// This connection's places under the connection caps; an upgraded
    /// WebSocket keeps them until it closes.
    pub permit: Arc<conn::ConnSlot>,
    /// What this connection's answers hold under [`App::responses`].
    pub conn: Arc<conn::ConnState>,
}

/// Authenticates a request by its `Authorization: Bearer` header.
pub fn authenticate(ctx: &Ctx, headers: &http::HeaderMap) -> Result<Session, Error> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Error::refused(ErrCode::MissingToken, "this endpoint needs Authorization: Bearer <access_token>"));
    };
    let token = bearer_token(value.to_str().ok())?;
    ctx.app.services.accounts.authenticate(token)
}

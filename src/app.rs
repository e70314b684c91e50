//! What both wires (`http/`, `ws/`) share and stand on: the running server's
//! services, metrics and shutdown signal ([`App`]), one request's context
//! ([`Ctx`]), one connection's socket ([`conn`]) and TLS ([`tls`]), and
//! authenticating a request's bearer token. It sits below `server.rs`, `http/` and `ws/` and above `service/`,
//! so neither wire has to import the other or the accept loop.

pub mod conn;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
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
    /// Takes over a WebSocket upgrade request (`ws::upgrade`): `server.rs`
    /// injects it, so the HTTP routing table can hand `/ws` on without
    /// `http/` importing `ws/`.
    pub ws_upgrade: WsUpgrade,
    /// What the wires record into (the services hold their own handles).
    pub metrics: Arc<Metrics>,
}

/// What answers a WebSocket upgrade request (see [`App::ws_upgrade`]).
pub type WsUpgrade = for<'a> fn(&'a Ctx, Request<Incoming>) -> WsUpgradeFuture<'a>;

/// The answer of a [`WsUpgrade`] (async: a token in the upgrade request is
/// looked up in the account store).
pub type WsUpgradeFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, Error>> + Send + 'a>>;

/// An HTTP answer, as both wires build it.
pub type Resp = Response<Full<Bytes>>;

/// What a handler gets besides the request.
pub struct Ctx {
    pub app: Arc<App>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client's address: the TCP peer's, or behind a trusted proxy the
    /// one it forwarded ([`conn::client_address`]). Rate limits and logs
    /// use this one.
    pub client: IpAddr,
    /// This connection's places under the connection caps; an upgraded
    /// WebSocket keeps them until it closes.
    pub permit: Arc<conn::ConnSlot>,
    /// What this connection's answers hold under [`App::responses`].
    pub conn: Arc<conn::ConnState>,
}

/// Authenticates a request by its `Authorization: Bearer` header.
pub async fn authenticate(ctx: &Ctx, headers: &http::HeaderMap) -> Result<Session, Error> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Error::refused(ErrCode::MissingToken, "this endpoint needs Authorization: Bearer <access_token>"));
    };
    let token = bearer_token(value.to_str().ok())?;
    ctx.app.services.accounts.authenticate(token).await
}

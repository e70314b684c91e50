//! The WebSocket wire: the upgrade of `GET /_parlor/client/v1/ws` (headers,
//! subprotocol, Origin, optional bearer auth) and, in [`session`], the life
//! of one connection.

pub mod frame;
mod io;
mod session;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::app::conn::ConnIo;
use crate::app::{Ctx, Resp, authenticate};
use crate::protocol::{ErrCode, WS_SUBPROTOCOL};
use crate::service::Error;

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Same-origin means the Origin's host[:port] is the Host header; anything
/// else must be on the allow-list (compared as full origins).
fn origin_allowed(req: &Request<Incoming>, allow: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    if allow.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

pub fn upgrade(ctx: &Ctx, mut req: Request<Incoming>) -> Result<Resp, Error> {
    let is_upgrade = header_has_token(&req, header::CONNECTION, "upgrade")
        && header_has_token(&req, header::UPGRADE, "websocket")
        && req.headers().get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return Err(Error::refused(ErrCode::UpgradeRequired, "this endpoint is a WebSocket (version 13) upgrade"));
    };
    if !origin_allowed(&req, &ctx.app.services.config.allow_origins) {
        return Err(Error::refused(ErrCode::ForbiddenOrigin, "this page's origin may not open Parlor WebSockets here"));
    }
    if !header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, WS_SUBPROTOCOL) {
        return Err(Error::refused(ErrCode::BadSubprotocol, format!("offer the {WS_SUBPROTOCOL} subprotocol")));
    }
    let preauth = match req.headers().contains_key(header::AUTHORIZATION) {
        true => Some(authenticate(ctx, req.headers())?),
        false => None,
    };
    let app = ctx.app.clone();
    let permit = ctx.permit.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    app.clone().tasks.spawn(async move {
        let _permit = permit;
        // The session frames its own traffic on the raw socket (see
        // `frame`), so take the TCP stream back from hyper, with whatever it
        // read past the request.
        let parts = match on_upgrade.await.map(|u| u.downcast::<TokioIo<ConnIo>>()) {
            Ok(Ok(parts)) => parts,
            Ok(Err(_)) => return tracing::error!("upgraded connection is not a TCP stream"),
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        session::run(io::Io::new(parts.io.into_inner().into_stream(), parts.read_buf), app, preauth).await;
    });
    let mut resp = Response::new(Full::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&frame::accept_key(key.as_bytes())).expect("base64 is a valid header"),
    );
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(WS_SUBPROTOCOL));
    Ok(resp)
}

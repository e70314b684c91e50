//! The WebSocket wire: the upgrade of `GET /_parlor/client/v1/ws` (headers,
//! subprotocol, Origin, optional bearer auth) and, in [`session`], the life
//! of one connection. The RFC 6455 framing is the `wsframe` crate (shared
//! with the load tool); [`io`] is the transport every connection runs on,
//! and [`echo`] an echo server on the same code for the Autobahn suite.

pub mod echo;
pub mod io;
mod session;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::app::conn::{ConnIo, Transport};
use crate::app::{Ctx, Resp, authenticate};
use crate::protocol::limits::MAX_FRAME_BYTES;
use crate::protocol::ws::close;
use crate::protocol::{ErrCode, WS_SUBPROTOCOL};
use crate::service::Error;
use crate::service::fanout::CloseReason;

fn header_has_token<B>(req: &Request<B>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a valid RFC 6455 (version 13) upgrade request,
/// `None` when `req` is not one.
pub(crate) fn accept<B>(req: &Request<B>) -> Option<HeaderValue> {
    let is_upgrade = header_has_token(req, header::CONNECTION, "upgrade")
        && header_has_token(req, header::UPGRADE, "websocket")
        && req.headers().get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).filter(|_| is_upgrade)?;
    Some(HeaderValue::from_str(&wsframe::accept_key(key.as_bytes())).expect("base64 is a valid header"))
}

/// The `101 Switching Protocols` answer.
pub(crate) fn switching_protocols(accept: HeaderValue, subprotocol: Option<&'static str>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

/// The upgraded connection, as the stream a session runs on.
pub(crate) enum Upgrade {
    /// Plain TCP, taken back whole from hyper (with what it read past the
    /// request), so that a session's writes are one `writev` each.
    Tcp(TcpStream, Bytes),
    /// TLS over TCP, taken back whole too (its session keeps what it
    /// decrypted and hyper did not read); writes go into the session.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Bytes),
    /// Any other transport hyper upgraded, through its own stream type.
    Other(TokioIo<Upgraded>),
}

pub(crate) async fn upgraded(on_upgrade: OnUpgrade) -> Option<Upgrade> {
    let upgraded = on_upgrade.await.map_err(|e| tracing::debug!(error = %e, "websocket upgrade failed")).ok()?;
    // The server hands hyper its `ConnIo` wrapper; the echo example a bare
    // `TcpStream`. Either way the socket comes back whole.
    let upgraded = match upgraded.downcast::<TokioIo<ConnIo>>() {
        Ok(parts) => {
            return Some(match parts.io.into_inner().into_transport() {
                Transport::Tcp(tcp) => Upgrade::Tcp(tcp, parts.read_buf),
                Transport::Tls(tls) => Upgrade::Tls(tls, parts.read_buf),
            });
        }
        Err(other) => other,
    };
    Some(match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Upgrade::Tcp(parts.io.into_inner(), parts.read_buf),
        Err(other) => Upgrade::Other(TokioIo::new(other)),
    })
}

/// How the WebSocket says why the service closed a connection.
pub(crate) fn close_code(reason: CloseReason) -> io::End {
    match reason {
        CloseReason::TokenRevoked => io::End::Close(close::UNAUTHORIZED, "access token revoked"),
        CloseReason::SlowConsumer => io::SLOW_CONSUMER,
        CloseReason::Shutdown => io::End::Close(close::GOING_AWAY, "server shutting down"),
    }
}

/// Same-origin means the Origin's host[:port] is the request's `Host` or
/// this server's name, whatever the scheme (TLS may end in front of us);
/// anything else must be on the allow-list (compared as full origins).
fn origin_allowed<B>(req: &Request<B>, allow: &[String], server_name: &str) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    if allow.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(authority) = origin.split_once("://").map(|(_, rest)| rest) else { return false };
    !authority.is_empty() && (authority.eq_ignore_ascii_case(host) || authority.eq_ignore_ascii_case(server_name))
}

pub fn upgrade(ctx: &Ctx, req: Request<hyper::body::Incoming>) -> crate::app::WsUpgradeFuture<'_> {
    Box::pin(answer_upgrade(ctx, req))
}

async fn answer_upgrade(ctx: &Ctx, mut req: Request<hyper::body::Incoming>) -> Result<Resp, Error> {
    let Some(accept) = accept(&req) else {
        return Err(Error::refused(ErrCode::UpgradeRequired, "this endpoint is a WebSocket (version 13) upgrade"));
    };
    let config = &ctx.app.services.config;
    if !origin_allowed(&req, &config.allow_origins, config.server_name.as_str()) {
        return Err(Error::refused(ErrCode::ForbiddenOrigin, "this page's origin may not open Parlor WebSockets here"));
    }
    if !header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, WS_SUBPROTOCOL) {
        return Err(Error::refused(ErrCode::BadSubprotocol, format!("offer the {WS_SUBPROTOCOL} subprotocol")));
    }
    let preauth = match req.headers().contains_key(header::AUTHORIZATION) {
        true => Some(authenticate(ctx, req.headers()).await?),
        false => None,
    };
    let app = ctx.app.clone();
    let permit = ctx.permit.clone();
    let client = ctx.client;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limit = config.ws_outbound_limit;
    app.clone().tasks.spawn(async move {
        let _permit = permit;
        let Some(upgrade) = upgraded(on_upgrade).await else { return };
        let metrics = app.metrics.ws.clone();
        let opened = std::time::Instant::now();
        metrics.open.inc();
        tracing::info!(%client, "websocket opened");
        let code = match upgrade {
            Upgrade::Tcp(tcp, leftover) => {
                session::run(io::Io::new(tcp, leftover, MAX_FRAME_BYTES, limit), app, preauth).await
            }
            Upgrade::Tls(tls, leftover) => {
                session::run(io::Io::new(*tls, leftover, MAX_FRAME_BYTES, limit), app, preauth).await
            }
            Upgrade::Other(stream) => {
                session::run(io::Io::new(stream, Bytes::new(), MAX_FRAME_BYTES, limit), app, preauth).await
            }
        };
        metrics.open.dec();
        metrics.closed(code);
        tracing::info!(%client, code, secs = opened.elapsed().as_millis() as f64 / 1000.0, "websocket closed");
    });
    Ok(switching_protocols(accept, Some(WS_SUBPROTOCOL)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(origin: &str, host: &str) -> Request<()> {
        Request::builder().header("origin", origin).header("host", host).body(()).unwrap()
    }

    #[test]
    fn origins() {
        let allow = ["https://app.example".to_owned()];
        let ok = |o, h| origin_allowed(&req(o, h), &allow, "chat.example");
        assert!(ok("http://127.0.0.1:8008", "127.0.0.1:8008"), "same host");
        assert!(ok("https://127.0.0.1:8008", "127.0.0.1:8008"), "the scheme does not matter");
        assert!(ok("http://chat.example", "127.0.0.1:8008"), "the server's own name behind an address");
        assert!(ok("https://app.example", "127.0.0.1:8008"), "allow-listed");
        assert!(!ok("http://app.example", "127.0.0.1:8008"), "the allow-list compares schemes");
        assert!(!ok("http://127.0.0.1:1", "127.0.0.1:8008"), "another port");
        assert!(!ok("null", "127.0.0.1:8008"));
        assert!(!ok("http://evil.example", "evil.example.invalid"));
    }
}

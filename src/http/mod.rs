//! The HTTP wire: one routing table, request bodies into protocol types,
//! answers back out as JSON. Handlers are thin: they parse, call a service
//! and serialize; errors become answers only in [`error_response`]. Every
//! answer is counted (metrics by route template) and logged on one access
//! line here; [`metrics`] serves them on their own listener.

pub mod accounts;
pub mod demo;
pub mod events;
pub mod federation;
pub mod metrics;
pub mod receipts;
pub mod rooms;
pub mod versions;

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Serialize;

pub use crate::app::{Ctx, Resp, authenticate};
use crate::protocol::federation::{FEDERATION_PREFIX, KEY_PATH, WELL_KNOWN_PATH};
use crate::protocol::limits::{MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_HEADER_FIELDS, MAX_TARGET_BYTES};
use crate::protocol::{CLIENT_PREFIX, ErrCode, ErrorBody};
use crate::service::Error;

/// Every route of the server. Path parameters of the client API stay as
/// sent (percent-encoded) here: decoding them is a parameter check, which
/// comes after the body and authentication (spec §3); see [`param`].
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Versions,
    Health,
    Demo(&'static str),
    Register,
    Login,
    Logout,
    LogoutAll,
    Whoami,
    Rooms,
    CreateRoom,
    PatchRoom(String),
    Invite(String),
    Reject(String),
    Moderate(String, &'static str),
    SetRole(String, String),
    Dm,
    Join(String),
    Leave(String),
    Members(String),
    Read(String),
    Messages(String),
    Send(String, String),
    Redact(String, String, String),
    Ws,
    FedKey,
    FedWellKnown,
    FedJoin,
    FedLeave,
    FedReject,
    FedEphemeral(String),
    FedSend(String, String),
    FedEvents(String),
    FedTransaction(String),
}

impl Route {
    /// The route as a template: its path with parameters named, never
    /// their values. Metrics and access lines name routes by it, so that
    /// neither carries room names nor grows with them.
    fn template(&self) -> &'static str {
        match self {
            Route::Versions => "/_parlor/versions",
            Route::Health => "/healthz",
            Route::Demo(path) => path,
            Route::Register => "/_parlor/client/v1/register",
            Route::Login => "/_parlor/client/v1/login",
            Route::Logout => "/_parlor/client/v1/logout",
            Route::LogoutAll => "/_parlor/client/v1/logout/all",
            Route::Whoami => "/_parlor/client/v1/account/whoami",
            Route::Rooms | Route::CreateRoom => "/_parlor/client/v1/rooms",
            Route::PatchRoom(_) => "/_parlor/client/v1/rooms/{room}",
            Route::Invite(_) => "/_parlor/client/v1/rooms/{room}/invite",
            Route::Reject(_) => "/_parlor/client/v1/rooms/{room}/reject",
            Route::Moderate(_, "kick") => "/_parlor/client/v1/rooms/{room}/kick",
            Route::Moderate(_, "ban") => "/_parlor/client/v1/rooms/{room}/ban",
            Route::Moderate(_, _) => "/_parlor/client/v1/rooms/{room}/unban",
            Route::SetRole(_, _) => "/_parlor/client/v1/rooms/{room}/roles/{user_id}",
            Route::Dm => "/_parlor/client/v1/dm",
            Route::Join(_) => "/_parlor/client/v1/rooms/{room}/join",
            Route::Leave(_) => "/_parlor/client/v1/rooms/{room}/leave",
            Route::Members(_) => "/_parlor/client/v1/rooms/{room}/members",
            Route::Read(_) => "/_parlor/client/v1/rooms/{room}/read",
            Route::Messages(_) => "/_parlor/client/v1/rooms/{room}/messages",
            Route::Send(_, _) => "/_parlor/client/v1/rooms/{room}/send/{txn_id}",
            Route::Redact(_, _, _) => "/_parlor/client/v1/rooms/{room}/redact/{event_id}/{txn_id}",
            Route::Ws => "/_parlor/client/v1/ws",
            Route::FedKey => KEY_PATH,
            Route::FedWellKnown => WELL_KNOWN_PATH,
            Route::FedJoin => "/_parlor/federation/v1/join",
            Route::FedLeave => "/_parlor/federation/v1/leave",
            Route::FedReject => "/_parlor/federation/v1/reject",
            Route::FedEphemeral(_) => "/_parlor/federation/v1/ephemeral/{txn_id}",
            Route::FedSend(_, _) => "/_parlor/federation/v1/rooms/{room}/send/{txn_id}",
            Route::FedEvents(_) => "/_parlor/federation/v1/rooms/{room}/events",
            Route::FedTransaction(_) => "/_parlor/federation/v1/send/{txn_id}",
        }
    }
}

/// What a request that matched no route is counted and logged as.
const UNMATCHED: &str = "unmatched";
/// A CORS preflight (`OPTIONS` on any path).
const PREFLIGHT: &str = "preflight";

/// A method as a label: the ones the API uses, or `other` (methods are
/// free-form, and labels must stay a bounded set).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn decode_segment(seg: &str) -> Result<String, Error> {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::refused(ErrCode::InvalidParam, "a path segment is not UTF-8 after URL-decoding"))
}

/// A path parameter of the client API, URL-decoded (`invalid_param` if it
/// is not UTF-8 then).
pub fn param(raw: &str) -> Result<String, Error> {
    decode_segment(raw)
}

/// The routing table: (method, path) → route, or `not_found` / `method_not_allowed`.
fn route(method: &Method, path: &str) -> Result<Route, Error> {
    use Method as M;
    let allow = |ok: bool, r: Route, allowed: &str| {
        if ok { Ok(r) } else { Err(Error::refused(ErrCode::MethodNotAllowed, format!("use {allowed} here"))) }
    };
    if let Some(asset) = demo::asset_name(path) {
        return allow(method == M::GET || method == M::HEAD, Route::Demo(asset), "GET");
    }
    match path {
        "/_parlor/versions" => return allow(method == M::GET, Route::Versions, "GET"),
        "/healthz" => return allow(method == M::GET, Route::Health, "GET"),
        KEY_PATH => return allow(method == M::GET, Route::FedKey, "GET"),
        WELL_KNOWN_PATH => return allow(method == M::GET, Route::FedWellKnown, "GET"),
        _ => {}
    }
    let not_found = || Error::refused(ErrCode::NotFound, format!("no endpoint {path}"));
    if let Some(rest) = path.strip_prefix(FEDERATION_PREFIX) {
        let segs: Vec<&str> = rest.strip_prefix('/').ok_or_else(not_found)?.split('/').collect();
        return match segs.as_slice() {
            ["join"] => allow(method == M::POST, Route::FedJoin, "POST"),
            ["leave"] => allow(method == M::POST, Route::FedLeave, "POST"),
            ["reject"] => allow(method == M::POST, Route::FedReject, "POST"),
            ["ephemeral", txn] => allow(method == M::PUT, Route::FedEphemeral(decode_segment(txn)?), "PUT"),
            ["send", txn] => allow(method == M::PUT, Route::FedTransaction(decode_segment(txn)?), "PUT"),
            ["rooms", room, "send", txn] => {
                allow(method == M::PUT, Route::FedSend(decode_segment(room)?, decode_segment(txn)?), "PUT")
            }
            ["rooms", room, "events"] => allow(method == M::GET, Route::FedEvents(decode_segment(room)?), "GET"),
            _ => Err(not_found()),
        };
    }
    let rest = path.strip_prefix(CLIENT_PREFIX).ok_or_else(not_found)?;
    let segs: Vec<&str> = rest.strip_prefix('/').ok_or_else(not_found)?.split('/').collect();
    match segs.as_slice() {
        ["register"] => allow(method == M::POST, Route::Register, "POST"),
        ["login"] => allow(method == M::POST, Route::Login, "POST"),
        ["logout"] => allow(method == M::POST, Route::Logout, "POST"),
        ["logout", "all"] => allow(method == M::POST, Route::LogoutAll, "POST"),
        ["account", "whoami"] => allow(method == M::GET, Route::Whoami, "GET"),
        ["ws"] => allow(method == M::GET, Route::Ws, "GET"),
        ["rooms"] if method == M::POST => Ok(Route::CreateRoom),
        ["rooms"] => allow(method == M::GET, Route::Rooms, "GET, POST"),
        ["rooms", room] => allow(method == M::PATCH, Route::PatchRoom(room.to_string()), "PATCH"),
        ["rooms", room, "invite"] => allow(method == M::POST, Route::Invite(room.to_string()), "POST"),
        ["rooms", room, "reject"] => allow(method == M::POST, Route::Reject(room.to_string()), "POST"),
        ["rooms", room, what @ ("kick" | "ban" | "unban")] => {
            let what = match *what {
                "kick" => "kick",
                "ban" => "ban",
                _ => "unban",
            };
            allow(method == M::POST, Route::Moderate(room.to_string(), what), "POST")
        }
        ["rooms", room, "roles", user] => {
            allow(method == M::PUT, Route::SetRole(room.to_string(), user.to_string()), "PUT")
        }
        ["dm"] => allow(method == M::POST, Route::Dm, "POST"),
        ["rooms", room, "join"] => allow(method == M::POST, Route::Join(room.to_string()), "POST"),
        ["rooms", room, "leave"] => allow(method == M::POST, Route::Leave(room.to_string()), "POST"),
        ["rooms", room, "members"] => allow(method == M::GET, Route::Members(room.to_string()), "GET"),
        ["rooms", room, "read"] => allow(method == M::POST, Route::Read(room.to_string()), "POST"),
        ["rooms", room, "messages"] => allow(method == M::GET, Route::Messages(room.to_string()), "GET"),
        ["rooms", room, "send", txn] => allow(method == M::PUT, Route::Send(room.to_string(), txn.to_string()), "PUT"),
        ["rooms", room, "redact", event, txn] => {
            allow(method == M::PUT, Route::Redact(room.to_string(), event.to_string(), txn.to_string()), "PUT")
        }
        _ => Err(not_found()),
    }
}

/// Entry point for every request on every connection: works out the
/// client's address, answers, then counts the answer and logs its access
/// line (method, route template, status, time, client address: never the
/// path's parameters, the query or a header).
pub async fn handle(req: Request<Incoming>, mut ctx: Ctx) -> Result<Resp, Infallible> {
    let started = Instant::now();
    ctx.client =
        crate::app::conn::client_address(ctx.peer.ip(), req.headers(), &ctx.app.services.config.trusted_proxies);
    let method = method_label(req.method());
    let (template, resp) = dispatch(req, &ctx).await;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    ctx.app.metrics.http.observe(method, template, status, took);
    tracing::info!(
        target: "parlor::access",
        method,
        route = template,
        status,
        ms = took.as_micros() as f64 / 1000.0,
        client = %ctx.client,
        "request"
    );
    Ok(resp)
}

/// Routes and answers: the route's template and the answer.
async fn dispatch(req: Request<Incoming>, ctx: &Ctx) -> (&'static str, Resp) {
    // hyper refuses longer targets itself only past 64 KiB (and without a
    // body; see `own_refusal`): this is the limit of spec §4.
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_TARGET_BYTES {
        let e = Error::refused(ErrCode::UriTooLong, format!("request targets are at most {MAX_TARGET_BYTES} bytes"));
        return (UNMATCHED, error_response(&e));
    }
    if req.method() == Method::OPTIONS {
        return (PREFLIGHT, preflight());
    }
    let route = match route(req.method(), req.uri().path()) {
        Ok(r) => r,
        Err(e) => return (UNMATCHED, error_response(&e)),
    };
    let template = route.template();
    let result = match route {
        Route::Versions => versions::versions(ctx),
        Route::Health => versions::health(ctx).await,
        Route::Demo(name) => Ok(demo::serve(name)),
        Route::Register => accounts::register(ctx, req).await,
        Route::Login => accounts::login(ctx, req).await,
        Route::Logout => accounts::logout(ctx, req).await,
        Route::LogoutAll => accounts::logout_all(ctx, req).await,
        Route::Whoami => accounts::whoami(ctx, &req).await,
        Route::Rooms => rooms::list(ctx, &req).await,
        Route::CreateRoom => rooms::create(ctx, req).await,
        Route::PatchRoom(room) => rooms::patch(ctx, req, &room).await,
        Route::Invite(room) => rooms::invite(ctx, req, &room).await,
        Route::Reject(room) => rooms::reject(ctx, req, &room).await,
        Route::Moderate(room, what) => rooms::moderate(ctx, req, &room, what).await,
        Route::SetRole(room, user) => rooms::set_role(ctx, req, &room, &user).await,
        Route::Dm => rooms::dm(ctx, req).await,
        Route::Join(room) => rooms::join(ctx, req, &room).await,
        Route::Leave(room) => rooms::leave(ctx, req, &room).await,
        Route::Members(room) => rooms::members(ctx, &req, &room).await,
        Route::Read(room) => receipts::read(ctx, req, &room).await,
        Route::Messages(room) => events::messages(ctx, &req, &room).await,
        Route::Send(room, txn) => events::send(ctx, req, &room, &txn).await,
        Route::Redact(room, event, txn) => events::redact(ctx, req, &room, &event, &txn).await,
        Route::Ws => (ctx.app.ws_upgrade)(ctx, req).await,
        Route::FedKey => federation::key(ctx),
        Route::FedWellKnown => federation::well_known(ctx),
        Route::FedJoin => federation::join(ctx, req).await,
        Route::FedLeave => federation::leave(ctx, req).await,
        Route::FedReject => federation::reject(ctx, req).await,
        Route::FedEphemeral(_) => federation::ephemeral(ctx, req).await,
        Route::FedSend(room, txn) => federation::send(ctx, req, &room, &txn).await,
        Route::FedEvents(room) => federation::events(ctx, req, &room).await,
        Route::FedTransaction(_) => federation::transaction(ctx, req).await,
    };
    (template, result.unwrap_or_else(|e| error_response(&e)))
}

/// The one place where a service error becomes an HTTP answer.
pub fn error_response(err: &Error) -> Resp {
    let code = err.code();
    if code == ErrCode::Internal {
        tracing::error!(error = %err, "internal error");
    }
    let body = ErrorBody { errcode: code, error: err.public_message(), retry_after_ms: err.retry_after_ms() };
    let status = StatusCode::from_u16(code.status()).expect("errcode statuses are valid");
    let mut resp = json(status, &body);
    if let Some(ms) = err.retry_after_ms() {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    }
    if code == ErrCode::MethodNotAllowed {
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST, PUT, PATCH, OPTIONS"));
    }
    resp
}

/// The spec's answer for a refusal hyper writes by itself, with an empty
/// body, to a request head it cannot parse (`app::conn::ConnIo` puts it in
/// place of hyper's). The limits behind 414 and 431 are set in `server.rs`.
pub fn own_refusal(status: StatusCode) -> Option<Response<Bytes>> {
    let err = match status {
        StatusCode::BAD_REQUEST => {
            Error::refused(ErrCode::MalformedRequest, "the request line or headers are not valid HTTP/1.1")
        }
        StatusCode::URI_TOO_LONG => {
            Error::refused(ErrCode::UriTooLong, format!("request targets are at most {MAX_TARGET_BYTES} bytes"))
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Error::refused(
            ErrCode::HeadersTooLarge,
            format!("the request line and headers are at most {MAX_HEAD_BYTES} bytes and {MAX_HEADER_FIELDS} fields"),
        ),
        _ => return None,
    };
    let (parts, body) = error_response(&err).into_parts();
    let body = body.collect().now_or_never()?.ok()?.to_bytes();
    Some(Response::from_parts(parts, body))
}

/// Counts and logs a refusal hyper wrote by itself (see [`own_refusal`])
/// like any answer: its method and route are unknown (the head did not
/// parse), so they read `unparsed`, and the client is the TCP peer (no
/// forwarded header was read).
pub fn own_refusal_seen(metrics: &crate::metrics::HttpMetrics, peer: std::net::SocketAddr, status: StatusCode) {
    metrics.observe("unparsed", "unparsed", status.as_u16(), std::time::Duration::ZERO);
    tracing::info!(
        target: "parlor::access",
        method = "unparsed",
        route = "unparsed",
        status = status.as_u16(),
        ms = 0.0,
        client = %peer.ip(),
        "request"
    );
}

/// A JSON answer with the headers every API answer carries.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Resp {
    json_bytes(status, serde_json::to_vec(value).expect("protocol types serialize"))
}

/// [`json`] for a body serialized already.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tokens travel in headers, never cookies, so any origin may call the
    // API; browser clients hosted elsewhere need this.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

fn preflight() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, PATCH, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}

/// Bodies up to this size are read to the end even when refused, so that the
/// client, still sending, gets the 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 1 << 20;

/// Whether a `Content-Type` value names JSON: `application/json`, in any
/// case, with or without parameters such as `charset=utf-8`.
fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(v) = content_type.to_str() else { return false };
    v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json")
}

/// Reads the whole body, within the size cap and the body timeout. A body
/// over the cap is refused with 413, after reading (and dropping) up to
/// `DRAIN_LIMIT` of it; a body that is not empty (nor only whitespace) and
/// says it is something else than JSON gets 415 (a body without
/// `Content-Type` is taken as JSON).
pub async fn read_body(ctx: &Ctx, req: Request<Incoming>) -> Result<Bytes, Error> {
    let too_large =
        || Error::refused(ErrCode::BodyTooLarge, format!("request bodies are at most {MAX_BODY_BYTES} bytes"));
    let not_json = req.headers().get(header::CONTENT_TYPE).is_some_and(|ct| !is_json(ct));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > DRAIN_LIMIT as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            seen += data.len();
            if seen <= MAX_BODY_BYTES {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
        Ok::<_, hyper::Error>(())
    };
    match tokio::time::timeout(ctx.app.services.config.body_timeout, read).await {
        Err(_) => Err(Error::refused(ErrCode::RequestTimeout, "the request body did not arrive in time")),
        Ok(Err(e)) => Err(Error::refused(ErrCode::MalformedJson, format!("cannot read the body: {e}"))),
        Ok(Ok(())) if seen > MAX_BODY_BYTES => Err(too_large()),
        Ok(Ok(())) if not_json && !buf.iter().all(u8::is_ascii_whitespace) => Err(Error::refused(
            ErrCode::UnsupportedMediaType,
            "request bodies are JSON: Content-Type: application/json",
        )),
        Ok(Ok(())) => Ok(buf.freeze()),
    }
}

pub use crate::protocol::parse::parse_json;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table() {
        let p = |s: &str| format!("{CLIENT_PREFIX}{s}");
        assert_eq!(route(&Method::POST, &p("/register")).unwrap(), Route::Register);
        assert_eq!(route(&Method::POST, &p("/logout/all")).unwrap(), Route::LogoutAll);
        assert_eq!(route(&Method::POST, &p("/rooms/%23lobby%3Ax/join")).unwrap(), Route::Join("%23lobby%3Ax".into()));
        assert_eq!(param("%23lobby%3Ax").unwrap(), "#lobby:x");
        assert_eq!(route(&Method::PUT, &p("/rooms/lobby/send/t1")).unwrap(), Route::Send("lobby".into(), "t1".into()));
        assert_eq!(route(&Method::GET, &p("/register")).unwrap_err().code(), ErrCode::MethodNotAllowed);
        assert_eq!(route(&Method::GET, &p("/nope")).unwrap_err().code(), ErrCode::NotFound);
        assert_eq!(route(&Method::GET, "/_parlor/client/v2/rooms").unwrap_err().code(), ErrCode::NotFound);
        // Decoding a parameter is checked after authentication, not here.
        assert_eq!(route(&Method::GET, &p("/rooms/%FF/members")).unwrap(), Route::Members("%FF".into()));
        assert_eq!(param("%FF").unwrap_err().code(), ErrCode::InvalidParam);
    }

    #[test]
    fn templates_name_parameters_not_values() {
        let p = |s: &str| format!("{CLIENT_PREFIX}{s}");
        let t = |m: &Method, path: &str| route(m, path).unwrap().template();
        assert_eq!(
            t(&Method::PUT, &p("/rooms/%23secret%3Ax/send/t1")),
            "/_parlor/client/v1/rooms/{room}/send/{txn_id}"
        );
        assert_eq!(t(&Method::GET, &p("/rooms/lobby/messages")), "/_parlor/client/v1/rooms/{room}/messages");
        assert_eq!(t(&Method::GET, "/app.js"), "/app.js");
        assert_eq!(t(&Method::PUT, "/_parlor/federation/v1/send/abc"), "/_parlor/federation/v1/send/{txn_id}");
        // Every template is a path of the table (parameters aside).
        for path in [p("/register"), p("/logout/all"), p("/ws"), KEY_PATH.into(), WELL_KNOWN_PATH.into()] {
            let r = route(&Method::GET, &path).or_else(|_| route(&Method::POST, &path)).unwrap();
            assert_eq!(r.template(), path);
        }
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }

    #[test]
    fn json_content_types() {
        for ok in ["application/json", "Application/JSON", "application/json; charset=utf-8", " application/json ;x=y"]
        {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for not in ["text/plain", "application/jsonx", "application/x-www-form-urlencoded", "", "json"] {
            assert!(!is_json(&HeaderValue::from_static(not)), "{not}");
        }
    }

    #[test]
    fn own_refusals_carry_the_spec_body() {
        for (status, code) in [(400, "malformed_request"), (414, "uri_too_long"), (431, "headers_too_large")] {
            let resp = own_refusal(StatusCode::from_u16(status).unwrap()).unwrap();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert_eq!(body["errcode"], code);
        }
        assert!(own_refusal(StatusCode::INTERNAL_SERVER_ERROR).is_none());
    }
}

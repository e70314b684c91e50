//! §3 Errors: `not_found`, `method_not_allowed`, the error body on requests
//! that are not HTTP at all, and the order in which a server applies its
//! checks when several fail.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::ctx::Ctx;
use crate::failure::Result;
use crate::http::{Http, Request, Response, enc};
use crate::runner::Case;
use crate::{case, check};

pub fn cases() -> Vec<Case> {
    vec![
        case!("errors::unknown_endpoint_not_found", "3", unknown_endpoint_not_found),
        case!("errors::wrong_method_not_allowed", "3", wrong_method_not_allowed),
        case!("errors::order_method_before_auth", "3", order_method_before_auth),
        case!("errors::order_body_before_auth", "3", order_body_before_auth),
        case!("errors::order_auth_before_params", "3", order_auth_before_params),
        case!("errors::order_params_before_membership", "3", order_params_before_membership),
        case!("errors::order_auth_before_path_params", "3", order_auth_before_path_params),
        case!("errors::order_invalid_param_before_invalid_room", "3", order_invalid_param_before_invalid_room),
        case!("errors::unparsable_request_has_error_body", "3", unparsable_request_has_error_body),
    ]
}

/// Writes raw bytes on a new connection and parses the one answer.
pub(crate) async fn raw_answer(ctx: &Ctx, what: &str, bytes: &[u8]) -> Result<Response> {
    let mut stream = ctx.http.raw_connect().await?;
    let started = Instant::now();
    // The server may answer and close before reading everything.
    let _ = Http::raw_write(&mut stream, bytes).await;
    let (raw, _) = Http::raw_read_until_close(&mut stream, Duration::from_secs(15)).await;
    ctx.http.parse_raw(what, &raw, started.elapsed())
}

async fn unknown_endpoint_not_found(ctx: &Ctx) -> Result<()> {
    ctx.http.send(Request::get(Ctx::api("/no_such_endpoint"))).await?.err(404, "not_found")?;
    ctx.http.send(Request::post(Ctx::api("/rooms/x/explode"))).await?.err(404, "not_found")?;
    Ok(())
}

async fn wrong_method_not_allowed(ctx: &Ctx) -> Result<()> {
    ctx.http.send(Request::get(Ctx::api("/register"))).await?.err(405, "method_not_allowed")?;
    ctx.http.send(Request::new(Method::DELETE, Ctx::api("/account/whoami"))).await?.err(405, "method_not_allowed")?;
    ctx.http.send(Request::post("/_parlor/versions")).await?.err(405, "method_not_allowed")?;
    Ok(())
}

async fn order_method_before_auth(ctx: &Ctx) -> Result<()> {
    // No token, wrong method: the method is checked first.
    ctx.http.send(Request::get(Ctx::api("/rooms/lobby/send/t1"))).await?.err(405, "method_not_allowed")?;
    Ok(())
}

async fn order_body_before_auth(ctx: &Ctx) -> Result<()> {
    let path = Ctx::api("/rooms/lobby/send/t1");
    ctx.http.send(Request::put(path.clone()).raw(&b"{\"body\": "[..])).await?.err(400, "malformed_json")?;
    ctx.http.send(Request::put(path.clone()).json(&json!({"bdy": "x"}))).await?.err(400, "invalid_field")?;
    let big = format!("{{\"body\": \"{}\"}}", "x".repeat(70_000));
    ctx.http.send(Request::put(path).raw(big)).await?.err(413, "body_too_large")?;
    Ok(())
}

async fn order_auth_before_params(ctx: &Ctx) -> Result<()> {
    let path = Ctx::api(&format!("/rooms/{}/send/{}", enc("bad room!"), enc("bad$txn")));
    ctx.http.send(Request::put(path.clone()).json(&json!({"body": "x"}))).await?.err(401, "missing_token")?;
    ctx.http
        .send(Request::put(path).token("not-a-token").json(&json!({"body": "x"})))
        .await?
        .err(401, "unknown_token")?;
    Ok(())
}

async fn order_params_before_membership(ctx: &Ctx) -> Result<()> {
    let owner = ctx.shared(0).await?;
    let outsider = ctx.shared(1).await?;
    let room = ctx.room(&owner, "ord").await?;
    // A bad room name is invalid_room, whoever asks.
    ctx.http
        .send(Ctx::send_req(&outsider, "bad room!", "t1", &json!({"body": "x"})))
        .await?
        .err(400, "invalid_room")?;
    // A bad txn_id in a room the user is not in: parameters come before membership.
    ctx.http
        .send(Ctx::send_req(&outsider, &room.room_id, "bad$txn", &json!({"body": "x"})))
        .await?
        .err(400, "invalid_param")?;
    // Only with valid parameters does membership decide.
    ctx.http
        .send(Ctx::send_req(&outsider, &room.room_id, "t1", &json!({"body": "x"})))
        .await?
        .err(403, "not_member")?;
    Ok(())
}

async fn order_auth_before_path_params(ctx: &Ctx) -> Result<()> {
    // A room segment that is not UTF-8 once decoded is a parameter: checked after auth.
    let path = Ctx::api("/rooms/%FF%FE/members");
    ctx.http.send(Request::get(path.clone())).await?.err(401, "missing_token")?;
    let user = ctx.shared(0).await?;
    ctx.http.send(Request::get(path).token(&user.token)).await?.err(400, "invalid_param")?;
    Ok(())
}

async fn order_invalid_param_before_invalid_room(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    ctx.http
        .send(Ctx::send_req(&user, "bad room!", "bad$txn", &json!({"body": "x"})))
        .await?
        .err(400, "invalid_param")?;
    for query in ["limit=0", "before=1&after=2", "after=x"] {
        ctx.messages_raw(&user, "bad room!", query).await?.err(400, "invalid_param")?;
    }
    Ok(())
}

async fn unparsable_request_has_error_body(ctx: &Ctx) -> Result<()> {
    for (what, bytes) in [
        ("garbage", &b"\x00\x01GARBAGE\r\n\r\n"[..]),
        ("a header name with a space", b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n"),
        ("no request line", b"\r\n: x\r\n\r\n"),
    ] {
        let resp = raw_answer(ctx, what, bytes).await?;
        let v = resp.err(400, "malformed_request")?;
        check!(!v["error"].as_str().unwrap_or_default().is_empty(), "{what}: no reason given: {v}");
    }
    // The server lives on.
    ctx.http.send(Request::get("/_parlor/versions")).await?.ok(200, "versions_response")?;
    Ok(())
}

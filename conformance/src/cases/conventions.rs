//! §1 Conventions: request bodies are strict JSON objects labelled as JSON
//! (or not labelled); an empty body; the bearer scheme in any case; unknown
//! query parameters ignored; every refusal names its reason with the right
//! errcode.

use serde_json::json;

use crate::ctx::{Ctx, GOOD_PASSWORD};
use crate::failure::Result;
use crate::http::{Request, enc};
use crate::runner::Case;
use crate::{case, check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("conventions::malformed_json_refused", "1", malformed_json_refused),
        case!("conventions::bad_utf8_refused", "1", bad_utf8_refused),
        case!("conventions::unknown_field_refused", "1", unknown_field_refused),
        case!("conventions::missing_field_refused", "1", missing_field_refused),
        case!("conventions::wrong_type_refused", "1", wrong_type_refused),
        case!("conventions::empty_body", "1", empty_body),
        case!("conventions::content_type_json_or_none", "1", content_type_json_or_none),
        case!("conventions::bearer_scheme_any_case", "1", bearer_scheme_any_case),
        case!("conventions::unknown_query_parameters_ignored", "1", unknown_query_parameters_ignored),
    ]
}

/// `req` with these exact body bytes and, if given, this `Content-Type`.
fn with_body(mut req: Request, content_type: Option<&str>, body: &'static [u8]) -> Request {
    req.body = Some(body.into());
    match content_type {
        Some(ct) => req.header(http::header::CONTENT_TYPE, ct),
        None => req,
    }
}

async fn malformed_json_refused(ctx: &Ctx) -> Result<()> {
    for body in [&b"{\"username\": \"ann\", "[..], b"not json", b"{'username': 'ann'}", b"{\"a\":1}}"] {
        ctx.http.send(Request::post(Ctx::api("/login")).raw(body.to_vec())).await?.err(400, "malformed_json")?;
    }
    Ok(())
}

async fn bad_utf8_refused(ctx: &Ctx) -> Result<()> {
    let mut body = b"{\"username\": \"ann".to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(format!("\", \"password\": \"{GOOD_PASSWORD}\"}}").as_bytes());
    ctx.http.send(Request::post(Ctx::api("/register")).raw(body)).await?.err(400, "malformed_json")?;
    Ok(())
}

async fn unknown_field_refused(ctx: &Ctx) -> Result<()> {
    let body = json!({"username": ctx.username("uf"), "password": GOOD_PASSWORD, "colour": "blue"});
    let v = ctx.http.send(Request::post(Ctx::api("/register")).json(&body)).await?.err(400, "invalid_field")?;
    check!(v["error"].as_str().unwrap_or_default().contains("colour"), "`error` does not name the field: {v}");
    Ok(())
}

async fn missing_field_refused(ctx: &Ctx) -> Result<()> {
    let body = json!({"username": ctx.username("mf")});
    let v = ctx.http.send(Request::post(Ctx::api("/register")).json(&body)).await?.err(400, "invalid_field")?;
    check!(v["error"].as_str().unwrap_or_default().contains("password"), "`error` does not name the field: {v}");
    Ok(())
}

async fn wrong_type_refused(ctx: &Ctx) -> Result<()> {
    let body = json!({"username": 5, "password": GOOD_PASSWORD});
    let v = ctx.http.send(Request::post(Ctx::api("/login")).json(&body)).await?.err(400, "invalid_field")?;
    check!(v["error"].as_str().unwrap_or_default().contains("username"), "`error` does not name the field: {v}");
    let body = json!({"username": "ann", "password": GOOD_PASSWORD, "device_name": ["x"]});
    let v = ctx.http.send(Request::post(Ctx::api("/login")).json(&body)).await?.err(400, "invalid_field")?;
    check!(v["error"].as_str().unwrap_or_default().contains("device_name"), "`error` does not name the field: {v}");
    Ok(())
}

async fn empty_body(ctx: &Ctx) -> Result<()> {
    // Where a body is required, nothing (or only whitespace) is not JSON.
    for body in [&b""[..], b"  \r\n"] {
        let req = with_body(Request::post(Ctx::api("/login")), Some("application/json"), body);
        ctx.http.send(req).await?.err(400, "malformed_json")?;
    }
    // Where it is "none or {}", nothing means {}.
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "eb").await?;
    let join = Request::post(Ctx::api(&format!("/rooms/{}/join", enc(&room.room_id)))).token(&user.token);
    ctx.http.send(with_body(join, Some("application/json"), b"")).await?.ok(200, "join_response")?;
    Ok(())
}

async fn content_type_json_or_none(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "ct").await?;
    let send =
        || Request::put(Ctx::api(&format!("/rooms/{}/send/{}", enc(&room.room_id), ctx.txn()))).token(&user.token);
    let body = br#"{"body": "typed"}"#;
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let v = ctx.http.send(with_body(send(), Some(ct), body)).await?.err(415, "unsupported_media_type")?;
        check!(!v["error"].as_str().unwrap_or_default().is_empty(), "415 without a reason: {v}");
    }
    for ct in [Some("application/json"), Some("application/json; charset=utf-8"), Some("Application/JSON"), None] {
        ctx.send_patiently(with_body(send(), ct, body)).await?.ok(200, "send_response")?;
    }
    // Only a body is checked: an empty one may be labelled anything.
    let join = Request::post(Ctx::api(&format!("/rooms/{}/join", enc(&room.room_id)))).token(&user.token);
    ctx.http.send(with_body(join, Some("text/plain"), b"")).await?.ok(200, "join_response")?;
    Ok(())
}

async fn bearer_scheme_any_case(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let whoami = |auth: String| Request::get(Ctx::api("/account/whoami")).header(http::header::AUTHORIZATION, auth);
    for auth in [format!("Bearer {}", user.token), format!("bearer {}", user.token), format!("BEARER   {}", user.token)]
    {
        let v = ctx.http.send(whoami(auth.clone())).await?.ok(200, "whoami_response")?;
        check_eq!(v["user_id"].as_str(), Some(user.user_id.as_str()), "whoami with {auth:?}");
    }
    for auth in
        [format!("Basic {}", user.token), "Basic YW5uOnB3".to_owned(), "Bearer".to_owned(), "Token x".to_owned()]
    {
        ctx.http.send(whoami(auth)).await?.err(401, "missing_token")?;
    }
    ctx.http.send(whoami(format!("Bearer {}x", user.token))).await?.err(401, "unknown_token")?;
    Ok(())
}

async fn unknown_query_parameters_ignored(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "uq").await?;
    let page = ctx.messages(&user, &room.room_id, "limit=1&cachebust=123&_=x").await?;
    check_eq!(page["events"].as_array().map(Vec::len), Some(1), "events with limit=1 and unknown parameters");
    ctx.http
        .send(Request::get(Ctx::api("/account/whoami?colour=blue")).token(&user.token))
        .await?
        .ok(200, "whoami_response")?;
    ctx.http.send(Request::get("/_parlor/versions?x=1")).await?.ok(200, "versions_response")?;
    Ok(())
}

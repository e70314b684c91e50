//! §3 Errors: `not_found`, `method_not_allowed`, and the order in which a
//! server applies its checks when several fail.

use http::Method;
use serde_json::json;

use crate::case;
use crate::ctx::Ctx;
use crate::failure::Result;
use crate::http::{Request, enc};
use crate::runner::Case;

pub fn cases() -> Vec<Case> {
    vec![
        case!("errors::unknown_endpoint_not_found", "3", unknown_endpoint_not_found),
        case!("errors::wrong_method_not_allowed", "3", wrong_method_not_allowed),
        case!("errors::order_method_before_auth", "3", order_method_before_auth),
        case!("errors::order_body_before_auth", "3", order_body_before_auth),
        case!("errors::order_auth_before_params", "3", order_auth_before_params),
        case!("errors::order_params_before_membership", "3", order_params_before_membership),
    ]
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

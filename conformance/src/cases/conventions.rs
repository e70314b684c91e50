//! §1 Conventions: request bodies are strict JSON objects; every refusal
//! names its reason with the right errcode.

use serde_json::json;

use crate::ctx::{Ctx, GOOD_PASSWORD};
use crate::failure::Result;
use crate::http::Request;
use crate::runner::Case;
use crate::{case, check};

pub fn cases() -> Vec<Case> {
    vec![
        case!("conventions::malformed_json_refused", "1", malformed_json_refused),
        case!("conventions::bad_utf8_refused", "1", bad_utf8_refused),
        case!("conventions::unknown_field_refused", "1", unknown_field_refused),
        case!("conventions::missing_field_refused", "1", missing_field_refused),
        case!("conventions::wrong_type_refused", "1", wrong_type_refused),
    ]
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

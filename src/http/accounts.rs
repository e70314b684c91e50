//! HTTP handlers for register, login, logout, logout/all and whoami.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Ctx, Resp, authenticate, json, parse_json, read_body};
use crate::protocol::accounts::{Empty, LoginRequest, RegisterRequest, RegisterResponse, WhoamiResponse};
use crate::service::Error;

pub async fn register(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let body: RegisterRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let services = &ctx.app.services;
    let token = body.registration_token.as_deref();
    let user_id =
        services.admin.register(&services.accounts, &body.username, &body.password, token, ctx.client).await?;
    Ok(json(StatusCode::CREATED, &RegisterResponse { user_id }))
}

pub async fn login(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let body: LoginRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let answer = ctx.app.services.accounts.login(&body, ctx.client).await?;
    Ok(json(StatusCode::OK, &answer))
}

pub async fn logout(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let _: Empty = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    ctx.app.services.accounts.logout(&session).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn logout_all(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let _: Empty = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    ctx.app.services.accounts.logout_all(&session).await?;
    Ok(json(StatusCode::OK, &Empty {}))
}

pub async fn whoami(ctx: &Ctx, req: &Request<Incoming>) -> Result<Resp, Error> {
    let session = authenticate(ctx, req.headers()).await?;
    Ok(json(StatusCode::OK, &WhoamiResponse { user_id: session.user_id, device_id: session.device_id }))
}

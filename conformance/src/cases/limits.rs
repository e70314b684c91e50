//! §4 Limits: request body size (by `Content-Length` and by chunked
//! streaming), the body read timeout, slow-drip headers, and the size of
//! the request target and head. The two timeout
//! cases mostly wait, so they run in the background alongside the others.

use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::failure::{Failure, Result, clip};
use crate::http::{Http, Request};
use crate::runner::Case;
use crate::{case, check, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!("limits::body_too_large", "4", body_too_large),
        case!("limits::body_too_large_chunked", "4", body_too_large_chunked),
        case!("limits::body_at_limit_reaches_endpoint", "4", body_at_limit_reaches_endpoint),
        case!("limits::slow_body_request_timeout", "4", slow_body_request_timeout).limit(45).background(),
        case!("limits::slow_headers_closed", "4", slow_headers_closed).limit(45).background(),
        case!("limits::request_target_too_long", "4", request_target_too_long),
        case!("limits::request_head_too_large", "4", request_head_too_large),
    ]
}

const MAX_TARGET: usize = 8_192;
const MAX_HEAD: usize = 16_384;
const MAX_HEADER_FIELDS: usize = 100;

async fn request_target_too_long(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    // At the limit it reaches the endpoint; one byte over, it does not.
    let at = format!("{}?pad=", Ctx::api("/account/whoami"));
    let at = format!("{at}{}", "x".repeat(MAX_TARGET - at.len()));
    ctx.http.send(Request::get(at.clone()).token(&user.token)).await?.ok(200, "whoami_response")?;
    ctx.http.send(Request::get(format!("{at}x")).token(&user.token)).await?.err(414, "uri_too_long")?;
    Ok(())
}

async fn request_head_too_large(ctx: &Ctx) -> Result<()> {
    let host = &ctx.authority;
    let fields: String = (1..=MAX_HEADER_FIELDS).map(|i| format!("X-F{i}: a\r\n")).collect();
    let cases = [
        ("one header field too many", format!("GET /_parlor/versions HTTP/1.1\r\nHost: {host}\r\n{fields}\r\n")),
        (
            "a head over 16,384 bytes",
            format!("GET /_parlor/versions HTTP/1.1\r\nHost: {host}\r\nX-Pad: {}\r\n\r\n", "a".repeat(MAX_HEAD)),
        ),
    ];
    for (what, head) in cases {
        super::errors::raw_answer(ctx, what, head.as_bytes()).await?.err(431, "headers_too_large")?;
    }
    // Within the limits (Host, Connection and 98 more: 100 fields): answered.
    let fields: String = (2..MAX_HEADER_FIELDS).map(|i| format!("X-F{i}: a\r\n")).collect();
    let head = format!("GET /_parlor/versions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{fields}\r\n");
    check!(head.len() < MAX_HEAD, "suite bug: the head is {} bytes", head.len());
    super::errors::raw_answer(ctx, "100 header fields", head.as_bytes()).await?.ok(200, "versions_response")?;
    Ok(())
}

const MAX_BODY: usize = 65_536;

async fn body_too_large(ctx: &Ctx) -> Result<()> {
    // Over the limit by one byte, and far over it.
    for size in [MAX_BODY + 1, 1_000_000] {
        let filler = "x".repeat(size - r#"{"username":"ann","password":""}"#.len());
        let body = format!(r#"{{"username":"ann","password":"{filler}"}}"#);
        assert_eq!(body.len(), size);
        ctx.http.send(Request::post(Ctx::api("/register")).raw(body)).await?.err(413, "body_too_large")?;
    }
    Ok(())
}

async fn body_too_large_chunked(ctx: &Ctx) -> Result<()> {
    // No Content-Length: the server must count while it reads.
    let mut stream = ctx.http.raw_connect().await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        Ctx::api("/login"),
        ctx.authority
    );
    Http::raw_write(&mut stream, head.as_bytes()).await?;
    let started = Instant::now();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
    // Up to 128 KiB; the server may answer and close before all of it is written.
    for _ in 0..16 {
        if Http::raw_write(&mut stream, chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = Http::raw_write(&mut stream, b"0\r\n\r\n").await;
    let (raw, _) = Http::raw_read_until_close(&mut stream, Duration::from_secs(15)).await;
    let resp = ctx.http.parse_raw("POST /login (chunked, 128 KiB)", &raw, started.elapsed())?;
    resp.err(413, "body_too_large")?;
    Ok(())
}

async fn body_at_limit_reaches_endpoint(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "lim").await?;
    let filler = "x".repeat(MAX_BODY - r#"{"body":""}"#.len());
    let body = format!(r#"{{"body":"{filler}"}}"#);
    assert_eq!(body.len(), MAX_BODY);
    let req = Request::put(Ctx::api(&format!("/rooms/{}/send/{}", crate::http::enc(&room.room_id), ctx.txn())))
        .token(&user.token)
        .raw(body);
    // Exactly at the body limit: accepted as a body, refused by the message rule.
    ctx.send_patiently(req).await?.err(413, "message_too_large")?;
    Ok(())
}

async fn slow_body_request_timeout(ctx: &Ctx) -> Result<()> {
    let mut stream = ctx.http.raw_connect().await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"username\": \"a",
        Ctx::api("/login"),
        ctx.authority
    );
    let started = Instant::now();
    Http::raw_write(&mut stream, head.as_bytes()).await?;
    let (raw, closed) = Http::raw_read_until_close(&mut stream, Duration::from_secs(30)).await;
    if raw.is_empty() {
        fail!(
            "no answer to a body that stopped arriving (waited {:?}, closed: {closed}); expected 408 request_timeout",
            started.elapsed()
        );
    }
    let resp = ctx.http.parse_raw("POST /login (body stalls)", &raw, started.elapsed())?;
    resp.err(408, "request_timeout")?;
    Ok(())
}

async fn slow_headers_closed(ctx: &Ctx) -> Result<()> {
    let mut stream = ctx.http.raw_connect().await?;
    let started = Instant::now();
    let head = format!("GET /_parlor/versions HTTP/1.1\r\nHost: {}\r\nX-Drip: ", ctx.authority);
    Http::raw_write(&mut stream, head.as_bytes()).await?;
    // One byte a second, never finishing the headers.
    while started.elapsed() < Duration::from_secs(30) {
        let (got, closed) = Http::raw_read_until_close(&mut stream, Duration::from_secs(1)).await;
        if closed {
            if !got.is_empty() {
                // A server may say 408 before closing; anything it says must be a valid error.
                let resp = ctx.http.parse_raw("slow-drip headers", &got, started.elapsed())?;
                check!(resp.status >= 400, "answered {} to headers that never finished", resp.status);
            }
            return Ok(());
        }
        check!(got.is_empty(), "answered unfinished headers: {}", clip(&String::from_utf8_lossy(&got), 200));
        if Http::raw_write(&mut stream, b"a").await.is_err() {
            return Ok(());
        }
    }
    Err(Failure::Check("a connection dripping headers one byte a second was still open after 30 s".into()))
}

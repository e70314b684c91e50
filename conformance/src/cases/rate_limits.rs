//! §4 Rate limits (only with `--rate-limited`): 429 `rate_limited` with
//! `retry_after_ms` and `Retry-After` on register and login (per address,
//! per username and origin, and not for a device proof of the account
//! against failures from elsewhere) and on sends (per user, HTTP and
//! WebSocket together, and before the send's parameters are looked at, §3).
//! These cases drain the server's buckets on purpose, so they run last.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::s;
use super::websocket::next_frame;
use crate::ctx::{Ctx, GOOD_PASSWORD};
use crate::failure::{Failure, Result};
use crate::http::{Request, Response};
use crate::runner::{Case, Needs};
use crate::{case, check, check_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!("rate_limits::register_per_address", "4", register_per_address).needs(Needs::RateLimits).limit(120),
        case!("rate_limits::login_per_username", "4", login_per_username).needs(Needs::RateLimits).limit(120),
        case!("rate_limits::login_per_address", "4", login_per_address).needs(Needs::RateLimits).limit(120),
        case!("rate_limits::login_known_device_not_slowed", "4", login_known_device_not_slowed)
            .needs(Needs::RateLimits)
            .limit(120),
        case!("rate_limits::send_per_user", "4", send_per_user).needs(Needs::RateLimits).limit(180),
    ]
}

/// Checks a 429: errcode, `retry_after_ms` and a matching `Retry-After`.
fn check_429(resp: &Response) -> Result<u64> {
    let v = resp.err(429, "rate_limited")?;
    let Some(ms) = v["retry_after_ms"].as_u64() else { fail!("{}: 429 without retry_after_ms: {v}", resp.what) };
    check!(ms > 0, "{}: retry_after_ms is 0", resp.what);
    let Some(header) = resp.header("retry-after") else { fail!("{}: 429 without a Retry-After header", resp.what) };
    let secs: u64 =
        header.trim().parse().map_err(|_| Failure::Check(format!("Retry-After {header:?} is not whole seconds")))?;
    // Seconds rounded up; the two are computed a moment apart, so allow one off.
    check!(secs.abs_diff(ms.div_ceil(1000)) <= 1, "Retry-After {secs} s does not match retry_after_ms {ms}");
    Ok(ms)
}

/// Sends `make(0..n)` all at once and checks the answers: some are 429
/// (each well formed) and every other one has the errcode `expected` (or is
/// a success when it is None). Returns how many were let through. All at
/// once because a limiter decides when a request arrives: sent one by one,
/// a slow answer (a login waits for its password hash) would let the bucket
/// refill between attempts, so the count would measure the server's speed.
async fn burst(ctx: &Ctx, n: usize, expected: Option<&str>, make: impl Fn(usize) -> Request) -> Result<usize> {
    let answers = futures_util::future::join_all((0..n).map(|i| ctx.http.send(make(i)))).await;
    let (mut through, mut refused) = (0, 0);
    for (i, resp) in answers.into_iter().enumerate() {
        let resp = resp?;
        if resp.status == 429 {
            check_429(&resp)?;
            refused += 1;
        } else {
            check_eq!(resp.errcode().as_deref(), expected, "answer {} of a burst of {n}", i + 1);
            through += 1;
        }
    }
    check!(refused > 0, "a burst of {n} requests and none was rate limited");
    Ok(through)
}

async fn register_per_address(ctx: &Ctx) -> Result<()> {
    // Too-short passwords: counted by the limiter (it comes before the
    // endpoint's own checks) without creating accounts or hashing.
    let through = burst(ctx, 15, Some("password_too_short"), |_| {
        Request::post(Ctx::api("/register")).json(&json!({"username": ctx.username("rl"), "password": "short"}))
    })
    .await?;
    check!(through <= 10, "{through} of 15 registrations got through; the burst is 10");
    Ok(())
}

async fn login_per_username(ctx: &Ctx) -> Result<()> {
    let target = ctx.username("rlu");
    let login =
        |name: &str| Request::post(Ctx::api("/login")).json(&json!({"username": name, "password": "#Wrong!pass%9"}));
    let through = burst(ctx, 12, Some("invalid_credentials"), |_| login(&target)).await?;
    check!(through <= 5, "{through} of 12 logins got through; the per-(username, address) burst is 5");
    // Another username from the same address is not limited by that bucket
    // (waiting out the address bucket if the rest of the run drained it).
    let other = ctx.username("rlo");
    let mut ok = false;
    for _ in 0..3 {
        let resp = ctx.http.send(login(&other)).await?;
        if resp.status == 429 {
            // Not synchronisation: waiting as long as the 429 said is the protocol.
            tokio::time::sleep(Duration::from_millis(check_429(&resp)?.min(10_000))).await;
            continue;
        }
        resp.err(401, "invalid_credentials")?;
        ok = true;
        break;
    }
    check!(ok, "a login for another username stayed rate limited: the limit is not per username");
    // ...and that login gave the target nothing back: its bucket is still
    // empty. A burst of 3, since a token refills every 30 s and the hashes
    // above may have taken that long on a loaded machine.
    burst(ctx, 3, Some("invalid_credentials"), |_| login(&target)).await?;
    Ok(())
}

async fn login_per_address(ctx: &Ctx) -> Result<()> {
    let through = burst(ctx, 25, Some("invalid_credentials"), |_| {
        Request::post(Ctx::api("/login")).json(&json!({"username": ctx.username("rla"), "password": "#Wrong!pass%9"}))
    })
    .await?;
    check!(through <= 20, "{through} of 25 logins got through; the per-address burst is 20");
    Ok(())
}

/// Failures drain the (username, address) bucket; a login with a device
/// proof of the account has a bucket of its own and still gets in.
async fn login_known_device_not_slowed(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("rlk");
    ctx.register_raw(&name, GOOD_PASSWORD).await?.ok(201, "register_response")?;
    let login = |password: &str, proof: Option<&str>| {
        let mut body = json!({"username": name, "password": password});
        if let Some(p) = proof {
            body["device_proof"] = json!(p);
        }
        Request::post(Ctx::api("/login")).json(&body)
    };
    let first = ctx.send_patiently(login(GOOD_PASSWORD, None)).await?.ok(200, "login_response")?;
    let proof = s(&first, "device_proof").to_owned();
    let through = burst(ctx, 8, Some("invalid_credentials"), |_| login("#Wrong!pass%9", None)).await?;
    check!(through <= 5, "{through} of 8 logins got through; the per-(username, address) burst is 5");
    // The right password from this address is slowed too: the bucket is the
    // address's (a burst of 3: a token refills every 30 s while hashes run)...
    let right = futures_util::future::join_all((0..3).map(|_| ctx.http.send(login(GOOD_PASSWORD, None)))).await;
    let mut slowed = false;
    for resp in right {
        let resp = resp?;
        if resp.status == 429 {
            check_429(&resp)?;
            slowed = true;
        } else {
            resp.ok(200, "login_response")?;
        }
    }
    check!(slowed, "the right password from an address whose failures drained the bucket was never slowed");
    // ...but not with the device proof.
    ctx.http.send(login(GOOD_PASSWORD, Some(&proof))).await?.ok(200, "login_response")?;
    Ok(())
}

async fn send_per_user(ctx: &Ctx) -> Result<()> {
    let user = ctx.user("rls").await?;
    let room = ctx.room(&user, "rls").await?;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        sockets.push(ctx.ws(&user).await?);
    }
    let started = Instant::now();
    let (mut attempts, mut acks) = (0u64, 0u64);
    let mut limited: Option<Value> = None;
    // Pipelined batches on two sockets until the first rate_limited.
    'outer: while limited.is_none() && attempts < 3000 && started.elapsed() < Duration::from_secs(60) {
        for (k, ws) in sockets.iter_mut().enumerate() {
            for i in 0..100 {
                let frame = json!({"type": "send", "room": room.room_id, "txn_id": ctx.txn(), "body": "r", "id": format!("{k}-{i}")});
                ws.send(frame).await?;
            }
        }
        for ws in sockets.iter_mut() {
            for _ in 0..100 {
                let f = next_frame(ws).await?;
                attempts += 1;
                match (s(&f, "type"), s(&f, "errcode")) {
                    ("ack", _) => acks += 1,
                    ("error", "rate_limited") => {
                        check!(
                            f["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
                            "rate_limited frame without retry_after_ms: {f}"
                        );
                        limited.get_or_insert(f);
                    }
                    _ => fail!("unexpected answer to a send: {f}"),
                }
            }
            if attempts >= 3000 {
                break 'outer;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if limited.is_none() {
        let rate = attempts as f64 / secs;
        if rate < 60.0 {
            return Err(Failure::NotRun(format!(
                "the server accepted sends at only {rate:.0}/s, too slow to pass the 50/s sustained limit"
            )));
        }
        fail!("{attempts} sends in {secs:.1} s over the WebSocket and none was rate limited (burst 300, 50/s)");
    }
    check!(acks >= 300, "rate limited after only {acks} accepted sends; the burst is 300");
    // HTTP shares the bucket, which is empty now: a burst of HTTP sends is
    // refused at once too (a bucket of its own would take all of them). A
    // burst, not one send, because the bucket refills one token per 20 ms
    // and a loaded machine may take that long to send the next request.
    let burst: Vec<_> = (0..10)
        .map(|_| ctx.http.send(Ctx::send_req(&user, &room.room_id, &ctx.txn(), &json!({"body": "http"}))))
        .collect();
    let mut http_acks = 0u64;
    let mut wait = None;
    for resp in futures_util::future::join_all(burst).await {
        let resp = resp?;
        if resp.status == 200 {
            http_acks += 1;
        } else {
            wait = Some(check_429(&resp)?);
        }
    }
    let Some(wait) = wait else { fail!("10 HTTP sends right after the WebSocket was rate limited were all accepted") };
    // §3: rate limits come before parameters and the endpoint's checks, so
    // with the bucket empty a send is 429 whatever its txn_id or room (a
    // burst each, as a token may refill meanwhile; never the other answer alone).
    let unknown = format!("!{}:{}", crate::ctx::random_base36(18), ctx.server_name);
    for (room_ref, txn, other) in [
        (room.room_id.as_str(), "bad!txn", "invalid_param"),
        ("bad room", "t1", "invalid_room"),
        (unknown.as_str(), "t1", "room_not_found"),
    ] {
        let burst: Vec<_> =
            (0..10).map(|_| ctx.http.send(Ctx::send_req(&user, room_ref, txn, &json!({"body": "x"})))).collect();
        let mut limited = 0;
        for resp in futures_util::future::join_all(burst).await {
            let resp = resp?;
            if resp.status == 429 {
                check_429(&resp)?;
                limited += 1;
            } else {
                check_eq!(resp.errcode().as_deref(), Some(other), "a send to {room_ref:?} with txn_id {txn:?}");
            }
        }
        check!(
            limited > 0,
            "with an empty bucket, 10 sends to {room_ref:?} with txn_id {txn:?} all got {other}: parameters were checked before the rate limit"
        );
    }
    // A refused send stores nothing.
    let events = ctx.all_events(&user, &room.room_id).await?;
    check_eq!(events.len() as u64, acks + http_acks + 1, "events stored (join + acknowledged sends)");
    // And after waiting as told, sending works again (the wait is what is
    // under test: the bucket refills in `retry_after_ms`).
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    ctx.http
        .send(Ctx::send_req(&user, &room.room_id, &ctx.txn(), &json!({"body": "later"})))
        .await?
        .ok(200, "send_response")?;
    for ws in sockets {
        ws.close().await;
    }
    Ok(())
}

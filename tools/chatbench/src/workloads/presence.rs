//! `presence`: what one presence change costs in a big room (issue 15). One
//! room of N members, each on its own subscribed WebSocket; then one more
//! member (a user of its own, joined but never subscribed) opens a
//! WebSocket and closes it, K times. Each open makes the user `online` and
//! each close `offline`, and each change must reach every one of the N
//! subscribers exactly once: `expected` = 2·K·N `presence` frames. The
//! server's CPU over the cycles, divided by the changes, is the cost of one
//! change; the time from the open (or close) to the N-th frame is how long
//! the room takes to learn it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use crate::cli::{Ctx, Outcome, PresenceArgs, put_usage};
use crate::engine::{Engine, Layout};
use crate::stats::round3;
use crate::sys::Usage;
use crate::users::unique_prefix;

const WS_PATH: &str = "/_parlor/client/v1/ws";

/// How long one change may take to reach every subscriber before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx, a: &PresenceArgs, nofile: u64) -> Result<Outcome> {
    let n = a.members.max(1);
    if (n as u64) + 64 > nofile {
        bail!("{n} members need about {} open files, but the limit is {nofile}", n + 64);
    }
    // Distinct users: presence is per user, so a user shared by two
    // members would not go offline when one of them closes.
    let mut users = ctx.users.take(n + 1, ctx.user_concurrency).await?;
    let mover = users.pop().expect("n + 1 users");
    let engine = Engine::prepare(
        &ctx.api,
        Layout {
            rooms: 1,
            members: n,
            users,
            room_prefix: unique_prefix(),
            body_bytes: 64,
            buf_cap: 1024,
            connect_concurrency: a.connect_concurrency,
            join_concurrency: ctx.setup_concurrency,
        },
    )
    .await?;
    let mut conn = ctx.api.conn().await?;
    conn.join(&mover.token, engine.room_id(0)).await?;
    engine.connect_all().await?;
    // The members' own connects were presence changes too: let them land.
    let mut settled = engine.live_frames("presence");
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = engine.live_frames("presence");
        if now == settled {
            break;
        }
        settled = now;
    }

    let usage = Usage::start(&ctx.server_pids);
    let mut online_ms = Vec::with_capacity(a.cycles);
    let mut offline_ms = Vec::with_capacity(a.cycles);
    let mut failed = None;
    let mut target = settled;
    for _ in 0..a.cycles {
        let t = Instant::now();
        let socket = crate::ws::connect(ctx.api.addr, &ctx.api.host, WS_PATH, Some(&mover.token), 1024).await?;
        target += n as u64;
        if !reached(&engine, target, t).await {
            failed = Some("online");
            break;
        }
        online_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        drop(socket);
        target += n as u64;
        if !reached(&engine, target, t).await {
            failed = Some("offline");
            break;
        }
        offline_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Anything past the target would be a duplicate: give strays a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let u = usage.stop();
    let got = engine.live_frames("presence") - settled;
    engine.close();

    let changes = (online_ms.len() + offline_ms.len()) as f64;
    let expected = (2 * a.cycles * n) as u64;
    let mut j = serde_json::Map::new();
    j.insert("workload".into(), json!("presence"));
    j.insert("members".into(), json!(n));
    j.insert("cycles".into(), json!(a.cycles));
    j.insert("expected".into(), json!(expected));
    j.insert("delivered".into(), json!(got));
    j.insert("failed_change".into(), json!(failed));
    j.insert("online_p50_ms".into(), json!(round3(median(&mut online_ms))));
    j.insert("offline_p50_ms".into(), json!(round3(median(&mut offline_ms))));
    j.insert("server_cpu_ms_per_change".into(), json!(u.server_cpu_s.map(|s| round3(s * 1e3 / changes.max(1.0)))));
    j.insert("server_cpu_us_per_frame".into(), json!(u.server_cpu_s.map(|s| round3(s * 1e6 / (got.max(1) as f64)))));
    put_usage(&mut j, &u);
    Ok(Outcome { json: j, ok: failed.is_none() && got == expected })
}

/// Waits until the members have received `target` presence frames in all.
async fn reached(engine: &Engine, target: u64, since: Instant) -> bool {
    while engine.live_frames("presence") < target {
        if since.elapsed() > CHANGE_TIMEOUT {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    true
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

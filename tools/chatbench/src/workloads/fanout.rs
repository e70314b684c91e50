//! `fanout`: R rooms × M members, each member on its own WebSocket and
//! sending over it; reports deliveries/s, delivery and ack latency, and the
//! delivery checks. `live-mix` is the same with typing and read marks mixed
//! in (each send preceded by `typing`, every 10th of a member by `read`).

use std::rc::Rc;

use anyhow::Result;
use serde_json::json;

use crate::cli::{Ctx, FanoutArgs, Outcome, Rate, put_usage};
use crate::engine::{Engine, Layout, Mode, PhaseSpec};
use crate::sys::Usage;
use crate::users::unique_prefix;

pub async fn run(ctx: &Ctx, a: &FanoutArgs, live_mix: bool) -> Result<Outcome> {
    let users = ctx.users.take(a.members, ctx.user_concurrency).await?;
    let engine = Engine::build(&ctx.api, layout(ctx, a.rooms, a.members, users, a.body_bytes)).await?;
    if live_mix {
        engine.mix_live();
    }
    let mode = match a.rate {
        Rate::PerSec(rate) => Mode::Open { rate },
        Rate::Max => Mode::Closed { window: a.window.unwrap_or(2 * a.rooms as u64).max(1) },
    };
    let usage = Usage::start(&ctx.server_pids);
    let res =
        engine.run_phase(PhaseSpec { mode, limit: Some(a.messages), stop: None, drain_timeout: ctx.drain }).await?;
    let u = usage.stop();
    engine.close();
    let mut j = res.json;
    j.insert("workload".into(), json!(if live_mix { "live-mix" } else { "fanout" }));
    j.insert("body_bytes".into(), json!(a.body_bytes));
    put_usage(&mut j, &u);
    Ok(Outcome { json: j, ok: res.failures == 0 })
}

/// The usual layout: every member a distinct user, 16 KiB read buffers.
pub fn layout(
    ctx: &Ctx,
    rooms: usize,
    members: usize,
    users: Vec<Rc<crate::users::User>>,
    body_bytes: usize,
) -> Layout {
    Layout {
        rooms,
        members,
        users,
        room_prefix: unique_prefix(),
        body_bytes,
        buf_cap: 16 * 1024,
        connect_concurrency: 128,
        join_concurrency: ctx.setup_concurrency,
    }
}

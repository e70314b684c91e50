//! `resume`: messages flow open-loop while, `--drops` times, every client
//! loses its connection at once (no close frame, as a network failure) and
//! immediately reconnects, subscribing with `since` = the last seq it saw
//! and re-sending its unacknowledged messages under the same `txn_id`.
//! Required: every member gets every message exactly once, in order, with no
//! `gap` frame (spec §9.3, §9.4). Also reports how long the herd took to be
//! caught up again.

use anyhow::Result;
use serde_json::json;

use crate::cli::{Ctx, Outcome, ResumeArgs, put_usage};
use crate::clock::now_ns;
use crate::engine::{Engine, Mode, PhaseSpec};
use crate::stats::Lat;
use crate::sys::Usage;

pub async fn run(ctx: &Ctx, a: &ResumeArgs) -> Result<Outcome> {
    let users = ctx.users.take(a.members, ctx.user_concurrency).await?;
    let engine = Engine::build(&ctx.api, super::fanout::layout(ctx, a.rooms, a.members, users, a.body_bytes)).await?;
    let usage = Usage::start(&ctx.server_pids);
    let drops = a.drops.max(1) as u64;
    let chat = engine.run_phase(PhaseSpec {
        mode: Mode::Open { rate: a.rate },
        limit: Some(a.messages),
        stop: None,
        drain_timeout: ctx.drain,
    });
    let dropper = async {
        let mut resumed = Lat::default();
        for k in 1..=drops {
            let at = a.messages * k / (drops + 1);
            while engine.issued() < at {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            engine.drop_all();
            let t = now_ns();
            resumed.add(&engine.resume_all(t, 512).await?);
        }
        anyhow::Ok(resumed)
    };
    let (res, resumed) = tokio::join!(chat, dropper);
    let (res, resumed) = (res?, resumed?);
    let u = usage.stop();
    engine.close();
    let mut j = res.json;
    j.insert("workload".into(), json!("resume"));
    j.insert("drops".into(), json!(drops));
    j.insert("reconnects".into(), json!(resumed.count()));
    resumed.put(&mut j, "resume_");
    put_usage(&mut j, &u);
    Ok(Outcome { json: j, ok: res.failures == 0 })
}

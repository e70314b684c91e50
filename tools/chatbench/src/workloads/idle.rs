//! `idle`: N authenticated, subscribed WebSockets held open; the server's
//! resident memory before and after gives its cost per connection. A probe
//! message into every room then proves each connection was really live:
//! `expected` = N deliveries.

use anyhow::{Result, bail};
use serde_json::json;

use crate::cli::{Ctx, IdleArgs, Outcome, put_usage};
use crate::engine::{Engine, Layout, Mode, PhaseSpec};
use crate::stats::round3;
use crate::sys::{self, Usage};
use crate::users::unique_prefix;

pub async fn run(ctx: &Ctx, a: &IdleArgs, nofile: u64) -> Result<Outcome> {
    let rooms = a.rooms.clamp(1, a.connections.max(1));
    let per_room = a.connections.div_ceil(rooms).max(1);
    let connections = rooms * per_room;
    // Our own sockets, the HTTP connections used for setup, stdio and the runtime.
    if (connections as u64) + 64 > nofile {
        bail!(
            "{connections} connections need about {} open files, but the limit is {nofile} \
             (raise it with `ulimit -n` or run as root so chatbench can raise it)",
            connections + 64
        );
    }
    let users = ctx.users.take(a.users.clamp(1, per_room), ctx.user_concurrency).await?;
    let engine = Engine::prepare(
        &ctx.api,
        Layout {
            rooms,
            members: per_room,
            users,
            room_prefix: unique_prefix(),
            body_bytes: 64,
            // Idle sockets only ever see one small frame at a time; the buffer grows if needed.
            buf_cap: 1024,
            connect_concurrency: a.connect_concurrency,
            join_concurrency: ctx.setup_concurrency,
        },
    )
    .await?;
    // Let the joins' allocations settle so they are not charged to the connections.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = sys::procs_rss_kib(&ctx.server_pids).map(|r| r.0);
    let client_before = sys::self_rss_kib();
    let usage = Usage::start(&ctx.server_pids);
    let t = crate::clock::now_ns();
    engine.connect_all().await?;
    let connect_s = (crate::clock::now_ns() - t) as f64 / 1e9;
    tokio::time::sleep(std::time::Duration::from_secs_f64(a.settle_secs)).await;
    let after = sys::procs_rss_kib(&ctx.server_pids).map(|r| r.0);
    let client_after = sys::self_rss_kib();
    // One message per room, all at once: every connection must get its room's.
    let probe = engine
        .run_phase(PhaseSpec {
            mode: Mode::Closed { window: rooms as u64 },
            limit: Some(rooms as u64),
            stop: None,
            drain_timeout: ctx.drain,
        })
        .await?;
    let u = usage.stop();
    engine.close();

    let mut j = probe.json;
    j.insert("workload".into(), json!("idle"));
    j.insert("connections".into(), json!(connections));
    j.insert("nofile_limit".into(), json!(nofile));
    j.insert("connect_s".into(), json!(round3(connect_s)));
    j.insert("connects_per_s".into(), json!(round3(connections as f64 / connect_s.max(1e-9))));
    j.insert("server_rss_before_kib".into(), json!(before));
    j.insert("server_rss_after_kib".into(), json!(after));
    let per_conn = match (before, after) {
        (Some(b), Some(a)) => Some(round3((a as f64 - b as f64) / connections as f64)),
        _ => None,
    };
    j.insert("server_kib_per_connection".into(), json!(per_conn));
    j.insert(
        "client_kib_per_connection".into(),
        json!(round3((client_after as f64 - client_before as f64) / connections as f64)),
    );
    put_usage(&mut j, &u);
    Ok(Outcome { json: j, ok: probe.failures == 0 })
}

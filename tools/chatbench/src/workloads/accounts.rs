//! `accounts`: how fast the server registers and logs in users, against
//! what argon2 allows on this machine's cores; with `--during-fanout`, how
//! far a login storm moves chat latency (quiet p99, then p99 during the storm).
//!
//! Without `--during-fanout` the common fields describe the logins:
//! `expected` = logins attempted, `delivered` = logins that succeeded,
//! `lost` = those that failed, and the latency fields are login latency.
//! With it they describe the chat messages sent during the storm.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use crate::cli::{AccountsArgs, Ctx, Outcome, put_usage};
use crate::clock::now_ns;
use crate::engine::{Engine, Mode, PhaseSpec};
use crate::http::Api;
use crate::stats::{Lat, round3};
use crate::sys::Usage;
use crate::users::PASSWORD;

/// The result of a burst of account requests.
struct Burst {
    lat: Lat,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    per_s: f64,
}

pub async fn run(ctx: &Ctx, a: &AccountsArgs) -> Result<Outcome> {
    let argon2_ms = argon2_reference_ms()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let argon2_limit = cores as f64 * 1000.0 / argon2_ms;

    let engine = if a.during_fanout {
        let users = ctx.users.take(a.members, ctx.user_concurrency).await?;
        Some(Engine::build(&ctx.api, super::fanout::layout(ctx, a.rooms, a.members, users, a.body_bytes)).await?)
    } else {
        None
    };

    let names: Vec<String> = (0..a.users).map(|_| ctx.users.fresh_name()).collect();
    let reg = burst(&ctx.api, &names, a.concurrency, Op::Register).await?;

    let mut j = Map::new();
    j.insert("workload".into(), json!("accounts"));
    let mut ok = reg.failed == 0;
    let (login, usage) = match &engine {
        None => {
            let usage = Usage::start(&ctx.server_pids);
            let login = burst(&ctx.api, &names, a.concurrency, Op::Login).await?;
            let u = usage.stop();
            j.insert("offered_rate".into(), Value::Null);
            j.insert("expected".into(), json!(a.users));
            j.insert("delivered".into(), json!(login.ok));
            j.insert("lost".into(), json!(login.failed));
            j.insert("duplicates".into(), json!(0));
            j.insert("out_of_order".into(), json!(0));
            j.insert("deliveries_per_s".into(), json!(round3(login.per_s)));
            login.lat.put(&mut j, "");
            (login, u)
        }
        Some(engine) => {
            let quiet = engine
                .run_phase(PhaseSpec {
                    mode: Mode::Open { rate: a.rate },
                    limit: Some((a.rate * a.quiet_secs).ceil() as u64),
                    stop: None,
                    drain_timeout: ctx.drain,
                })
                .await?;
            let stop = Rc::new(Cell::new(false));
            let usage = Usage::start(&ctx.server_pids);
            let storm = async {
                let r = burst(&ctx.api, &names, a.concurrency, Op::Login).await;
                stop.set(true);
                r
            };
            let chat = engine.run_phase(PhaseSpec {
                mode: Mode::Open { rate: a.rate },
                limit: None,
                stop: Some(stop.clone()),
                drain_timeout: ctx.drain,
            });
            let (login, stormy) = tokio::join!(storm, chat);
            let (login, stormy) = (login?, stormy?);
            let u = usage.stop();
            engine.close();
            ok &= quiet.failures == 0 && stormy.failures == 0;
            j.insert("quiet_p99_ms".into(), json!(round3(quiet.p99_ms)));
            j.insert("storm_p99_ms".into(), json!(round3(stormy.p99_ms)));
            j.insert(
                "p99_ratio".into(),
                json!(if quiet.p99_ms > 0.0 { round3(stormy.p99_ms / quiet.p99_ms) } else { 0.0 }),
            );
            j.insert("quiet".into(), Value::Object(quiet.json));
            for (k, v) in stormy.json {
                j.entry(k).or_insert(v);
            }
            (login, u)
        }
    };
    ok &= login.failed == 0;
    j.insert("users".into(), json!(a.users));
    j.insert("concurrency".into(), json!(a.concurrency));
    j.insert("cores".into(), json!(cores));
    j.insert("argon2_ms".into(), json!(round3(argon2_ms)));
    j.insert("argon2_limit_per_s".into(), json!(round3(argon2_limit)));
    j.insert("register_per_s".into(), json!(round3(reg.per_s)));
    j.insert("register_failed".into(), json!(reg.failed));
    reg.lat.put(&mut j, "register_");
    j.insert("login_per_s".into(), json!(round3(login.per_s)));
    j.insert("login_failed".into(), json!(login.failed));
    j.insert("login_efficiency".into(), json!(round3(login.per_s / argon2_limit)));
    login.lat.put(&mut j, "login_");
    if let Some(e) = reg.first_error.or(login.first_error) {
        j.insert("first_error".into(), json!(e));
    }
    put_usage(&mut j, &usage);
    Ok(Outcome { json: j, ok })
}

#[derive(Clone, Copy)]
enum Op {
    Register,
    Login,
}

/// `names.len()` requests, `concurrency` at a time, each timed.
async fn burst(api: &Api, names: &[String], concurrency: usize, op: Op) -> Result<Burst> {
    let next = Cell::new(0usize);
    let lat = RefCell::new(Lat::default());
    let (ok, failed) = (Cell::new(0u64), Cell::new(0u64));
    let first_error = RefCell::new(None);
    let t0 = now_ns();
    // Each worker keeps one connection, to the server's processes in turn.
    let worker = |w: usize| {
        let (next, lat, ok, failed, first_error) = (&next, &lat, &ok, &failed, &first_error);
        async move {
            let mut c = api.process(w).conn().await?;
            loop {
                let i = next.get();
                if i >= names.len() {
                    return anyhow::Ok(());
                }
                next.set(i + 1);
                let t = now_ns();
                let r = match op {
                    Op::Register => c.register(&names[i], PASSWORD).await.map(|_| ()),
                    Op::Login => c.login(&names[i], PASSWORD).await.map(|_| ()),
                };
                lat.borrow_mut().record_ns(now_ns() - t);
                match r {
                    Ok(()) => ok.set(ok.get() + 1),
                    Err(e) => {
                        failed.set(failed.get() + 1);
                        first_error.borrow_mut().get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        }
    };
    futures_util::future::try_join_all((0..concurrency.clamp(1, names.len().max(1))).map(worker)).await?;
    let secs = (now_ns() - t0) as f64 / 1e9;
    Ok(Burst {
        lat: lat.into_inner(),
        ok: ok.get(),
        failed: failed.get(),
        first_error: first_error.into_inner(),
        per_s: if secs > 0.0 { names.len() as f64 / secs } else { 0.0 },
    })
}

/// How long one argon2id hash with the spec's parameters (m = 19 MiB, t = 2,
/// p = 1) takes on this machine: the best of three, after a warm-up.
fn argon2_reference_ms() -> Result<f64> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(19 * 1024, 2, 1, Some(32)).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
    let a2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = [0u8; 32];
    let mut best = f64::MAX;
    for i in 0..4 {
        let t = now_ns();
        a2.hash_password_into(PASSWORD.as_bytes(), b"chatbench-salt-16", &mut out)
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
            .context("reference hash")?;
        if i > 0 {
            best = best.min((now_ns() - t) as f64 / 1e6);
        }
    }
    Ok(best)
}

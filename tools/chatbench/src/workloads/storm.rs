//! `login-storm`: the hostile login storm of issue 11 (item 5). `--logins`
//! wrong-password logins, each for its own `--username-bytes`-long username
//! (0: short, valid names no account has), sent from `--addresses` loopback
//! source addresses (127.0.0.2, 127.0.0.3, …), `--concurrency` in flight at
//! once; meanwhile a real user logs in again and again from 127.0.0.1, as a
//! client that logged in before would (with the `device_proof` its previous
//! login got, when the server hands one out).
//!
//! It reports what the storm was answered with, the server's resident memory
//! (before, the peak sampled during the storm, and after a settling pause)
//! and the real user's login latency. The common fields describe the real
//! logins: `expected` = attempted, `delivered` = answered 200, `lost` = the
//! others (a 429 counts as lost: the user had to retry).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http::Method;
use serde_json::{Map, Value, json};

use crate::cli::{Ctx, Outcome, StormArgs, put_usage};
use crate::clock::now_ns;
use crate::http::{PREFIX, api_error};
use crate::stats::{Lat, round3};
use crate::sys::{self, Usage};
use crate::users::PASSWORD;

pub async fn run(ctx: &Ctx, a: &StormArgs, nofile: u64) -> Result<Outcome> {
    if !ctx.api.addr.ip().is_loopback() || !ctx.api.addr.is_ipv4() {
        bail!("login-storm sends from 127.0.0.x source addresses, so the server must listen on 127.0.0.1");
    }
    let addresses = a.addresses.clamp(1, 250);
    let concurrency = a.concurrency.clamp(1, a.logins.max(1));
    if concurrency as u64 + 64 > nofile {
        bail!("{concurrency} connections need about {} open files, but the limit is {nofile}", concurrency + 64);
    }
    // The real user: registered, and logged in once before the storm, so the
    // server may know its address and device.
    let name = ctx.users.fresh_name();
    let mut own = ctx.api.conn_from(Some(IpAddr::V4(Ipv4Addr::LOCALHOST))).await?;
    own.register(&name, PASSWORD).await?;
    let proof = RefCell::new(None::<String>);
    let (status, first) = real_login(&mut own, &name, None).await?;
    if status != 200 {
        bail!("the real user's first login got {status}: {first}");
    }
    *proof.borrow_mut() = first.get("device_proof").and_then(Value::as_str).map(str::to_owned);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage = Usage::start(&ctx.server_pids);
    let rss_before = usage.server_rss0_kib;
    let peak = Rc::new(Cell::new(rss_before.unwrap_or(0)));
    let done = Rc::new(Cell::new(false));

    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), ctx.server_pid());
        async move {
            while !done.get() {
                if let Some((rss, _)) = pid.and_then(|p| sys::proc_rss_kib(p).ok()) {
                    peak.set(peak.get().max(rss));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let statuses = RefCell::new(BTreeMap::<String, u64>::new());
    let storm_lat = RefCell::new(Lat::default());
    let next = Cell::new(0usize);
    let connecting = tokio::sync::Semaphore::new(64);
    let t0 = now_ns();
    let storm = async {
        let worker = |w: usize| {
            let (statuses, storm_lat, next, connecting) = (&statuses, &storm_lat, &next, &connecting);
            async move {
                let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (w % addresses) as u8));
                // Connect a few at a time: thousands of SYNs at once overflow the
                // listen queue, and the kernel's SYN-cookie fallback then resets some.
                let permit = connecting.acquire().await?;
                let mut c = ctx.api.conn_from(Some(from)).await.with_context(|| format!("storm connection {w}"))?;
                drop(permit);
                loop {
                    let i = next.get();
                    if i >= a.logins {
                        return anyhow::Ok(());
                    }
                    next.set(i + 1);
                    let body = json!({"username": storm_name(i, a.username_bytes), "password": "wrong-password-7"});
                    let t = now_ns();
                    let key = match c.call(Method::POST, &format!("{PREFIX}/login"), None, Some(&body)).await {
                        Ok((status, bytes)) => format!("{status} {}", api_error(status, &bytes).errcode),
                        // A hostile client does not care; count it and go on with a new connection.
                        Err(e) => {
                            eprintln!("storm login {i} from {from}: {e:#}");
                            let _permit = connecting.acquire().await?;
                            c = ctx.api.conn_from(Some(from)).await?;
                            "connection error".to_owned()
                        }
                    };
                    storm_lat.borrow_mut().record_ns(now_ns() - t);
                    *statuses.borrow_mut().entry(key).or_default() += 1;
                }
            }
        };
        let r = futures_util::future::try_join_all((0..concurrency).map(worker)).await;
        done.set(true);
        r
    };

    let real_lat = RefCell::new(Lat::default());
    let real = RefCell::new(BTreeMap::<String, u64>::new());
    let prober = async {
        // Let the storm's requests reach the server first.
        tokio::time::sleep(Duration::from_millis(a.probe_delay_ms)).await;
        let mut attempts = 0u64;
        while !done.get() || attempts == 0 {
            attempts += 1;
            let t = now_ns();
            let sent = proof.borrow().clone();
            let (status, v) = real_login(&mut own, &name, sent.as_deref()).await.context("the real user's login")?;
            real_lat.borrow_mut().record_ns(now_ns() - t);
            if let Some(p) = v.get("device_proof").and_then(Value::as_str) {
                *proof.borrow_mut() = Some(p.to_owned());
            }
            let key = format!("{status} {}", v.get("errcode").and_then(Value::as_str).unwrap_or(""));
            *real.borrow_mut().entry(key.trim().to_owned()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(a.probe_pause_ms)).await;
        }
        anyhow::Ok(())
    };
    let (storm, (), probed) = tokio::join!(storm, sampler, prober);
    storm?;
    probed?;
    let storm_s = (now_ns() - t0) as f64 / 1e9;
    let u = usage.stop();
    tokio::time::sleep(Duration::from_secs_f64(a.settle_secs)).await;
    let rss_settled = ctx.server_pid().and_then(|p| sys::proc_rss_kib(p).ok()).map(|r| r.0);

    let real = real.into_inner();
    let real_ok = real.get("200").copied().unwrap_or(0);
    let real_total: u64 = real.values().sum();
    let mut j = Map::new();
    j.insert("workload".into(), json!("login-storm"));
    j.insert("offered_rate".into(), Value::Null);
    j.insert("expected".into(), json!(real_total));
    j.insert("delivered".into(), json!(real_ok));
    j.insert("lost".into(), json!(real_total - real_ok));
    j.insert("duplicates".into(), json!(0));
    j.insert("out_of_order".into(), json!(0));
    j.insert("deliveries_per_s".into(), Value::Null);
    real_lat.borrow().put(&mut j, "");
    j.insert("real_logins".into(), json!(real));
    j.insert("real_used_device_proof".into(), json!(proof.borrow().is_some()));
    j.insert("logins".into(), json!(a.logins));
    j.insert("addresses".into(), json!(addresses));
    j.insert("username_bytes".into(), json!(a.username_bytes));
    j.insert("concurrency".into(), json!(concurrency));
    j.insert("storm_s".into(), json!(round3(storm_s)));
    j.insert("storm_answers".into(), json!(statuses.into_inner()));
    storm_lat.borrow().put(&mut j, "storm_");
    j.insert("server_rss_before_kib".into(), json!(rss_before));
    j.insert("server_rss_peak_kib".into(), json!(ctx.server_pid().map(|_| peak.get())));
    j.insert("server_rss_settled_kib".into(), json!(rss_settled));
    put_usage(&mut j, &u);
    Ok(Outcome { json: j, ok: real_ok > 0 })
}

/// The `i`th storm username: `bytes` long (at least a short valid name).
fn storm_name(i: usize, bytes: usize) -> String {
    let mut s = format!("storm{i}x");
    while s.len() < bytes {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

/// One login of the real user; `(status, answer)`.
async fn real_login(c: &mut crate::http::HttpConn, name: &str, proof: Option<&str>) -> Result<(u16, Value)> {
    let mut body = json!({"username": name, "password": PASSWORD, "device_name": "chatbench"});
    if let Some(p) = proof {
        body["device_proof"] = json!(p);
    }
    let (status, bytes) = c.call(Method::POST, &format!("{PREFIX}/login"), None, Some(&body)).await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

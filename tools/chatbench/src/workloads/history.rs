//! `history`: one user fills a room with N messages; then newly joined
//! users each fetch the latest page and page backwards through the whole
//! room, and one of them fetches the latest page `--fetches` more times.
//! Every fetch is timed from request to the last body byte (parsing is not
//! timed). Every walk is checked: each of the N messages exactly once
//! (`expected` = N × joiners), seqs ascending and contiguous within and
//! across pages.
//!
//! The server's memory is read at each tenth of the fill (`fill_rss_kib`)
//! and after it; `--room` walks a room an earlier run filled instead of a new
//! one, so the same checks time reads after a restart, with the server's
//! caches cold (issue 17: memory bounded by configuration, not by data).

use std::cell::Cell;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use http::Method;
use serde_json::{Map, Value, json};

use crate::check::BitSet;
use crate::cli::{Ctx, HistoryArgs, Outcome, put_usage};
use crate::clock::now_ns;
use crate::http::{HttpConn, PREFIX, api_error, seg};
use crate::parse::{self, write_tag};
use crate::stats::{Lat, round3};
use crate::sys::{Usage, proc_rss_kib};
use crate::users::unique_prefix;

/// What walking one joiner's view of the room found.
#[derive(Default)]
struct Walk {
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    seq_gaps: u64,
    pages: u64,
    bytes: u64,
}

pub async fn run(ctx: &Ctx, a: &HistoryArgs) -> Result<Outcome> {
    if a.page == 0 || a.page > 1000 {
        bail!("--page must be 1..=1000 (the spec's maximum)");
    }
    let users = ctx.users.take(1 + a.joiners.max(1), ctx.user_concurrency).await?;
    let (writer, joiners) = users.split_first().expect("at least two users");
    let (room_id, fill_s, fill_rss) = match &a.room {
        Some(room_id) => (room_id.clone(), None, Vec::new()),
        None => {
            let (room_id, fill_s, fill_rss) = fill(ctx, a, &writer.token).await?;
            (room_id, Some(fill_s), fill_rss)
        }
    };

    let usage = Usage::start(&ctx.server_pids);
    let mut first = Lat::default();
    let mut all = Lat::default();
    let mut walk = Walk::default();
    let walks: Vec<Result<(Lat, Lat, Walk)>> = futures_util::stream::iter(joiners.iter())
        .map(|u| {
            let (api, room_id) = (&ctx.api, &room_id);
            async move {
                let mut c = api.conn().await?;
                c.join(&u.token, room_id).await?;
                walk_room(&mut c, &u.token, room_id, a.page, a.messages).await
            }
        })
        .buffer_unordered(joiners.len())
        .collect()
        .await;
    for w in walks {
        let (f, l, w) = w?;
        first.add(&f);
        all.add(&l);
        walk.delivered += w.delivered;
        walk.duplicates += w.duplicates;
        walk.out_of_order += w.out_of_order;
        walk.seq_gaps += w.seq_gaps;
        walk.pages += w.pages;
        walk.bytes += w.bytes;
    }
    let path = format!("{PREFIX}/rooms/{}/messages?limit={}", seg(&room_id), a.page);
    let mut latest = Lat::default();
    let mut c = ctx.api.conn().await?;
    for _ in 0..a.fetches {
        let t = now_ns();
        let (status, body) = c.call(Method::GET, &path, Some(&joiners[0].token), None).await?;
        let dt = now_ns() - t;
        if status != 200 {
            bail!("GET {path}: {}", api_error(status, &body));
        }
        latest.record_ns(dt);
        all.record_ns(dt);
    }
    let u = usage.stop();

    let expected = a.messages * joiners.len() as u64;
    let lost = expected.saturating_sub(walk.delivered);
    let mut j = Map::new();
    j.insert("workload".into(), json!("history"));
    j.insert("offered_rate".into(), Value::Null);
    j.insert("messages".into(), json!(a.messages));
    j.insert("page".into(), json!(a.page));
    j.insert("joiners".into(), json!(joiners.len()));
    j.insert("room_id".into(), json!(room_id));
    j.insert("fill_s".into(), json!(fill_s.map(round3)));
    j.insert("fill_sends_per_s".into(), json!(fill_s.map(|s| round3(a.messages as f64 / s.max(1e-9)))));
    j.insert("fill_rss_kib".into(), json!(fill_rss));
    // After the fill (or, with --room, before the walk): what the stored messages cost.
    j.insert("server_rss_before_walk_kib".into(), json!(usage.server_rss0_kib));
    j.insert("expected".into(), json!(expected));
    j.insert("delivered".into(), json!(walk.delivered));
    j.insert("lost".into(), json!(lost));
    j.insert("duplicates".into(), json!(walk.duplicates));
    j.insert("out_of_order".into(), json!(walk.out_of_order));
    j.insert("seq_gaps".into(), json!(walk.seq_gaps));
    j.insert("pages_walked".into(), json!(walk.pages));
    j.insert("page_bytes_mean".into(), json!(walk.bytes / walk.pages.max(1)));
    j.insert("fetches".into(), json!(all.count()));
    j.insert("deliveries_per_s".into(), Value::Null);
    all.put(&mut j, "");
    first.put(&mut j, "first_page_");
    latest.put(&mut j, "latest_page_");
    put_usage(&mut j, &u);
    let ok = lost == 0 && walk.duplicates == 0 && walk.out_of_order == 0 && walk.seq_gaps == 0;
    Ok(Outcome { json: j, ok })
}

/// Fills a new room with `a.messages` messages from `token`, 8 sends in
/// flight (order across senders does not matter: the walk checks each
/// message's presence by its tag, and seqs by the room's order). Returns the
/// room id, the fill's seconds, and the server's VmRSS (KiB) after each tenth.
async fn fill(ctx: &Ctx, a: &HistoryArgs, token: &str) -> Result<(String, f64, Vec<u64>)> {
    let room = format!("{}-hist", unique_prefix());
    let mut c = ctx.api.conn().await?;
    let room_id = c.join(token, &room).await?;
    let t_fill = now_ns();
    let next = Cell::new(0u64);
    let rss = std::cell::RefCell::new(Vec::new());
    let tenth = (a.messages / 10).max(1);
    let senders = (0..8).map(|_| async {
        let mut c = ctx.api.conn().await?;
        loop {
            let g = next.get();
            if g >= a.messages {
                return anyhow::Ok(());
            }
            next.set(g + 1);
            let mut body = Vec::with_capacity(a.body_bytes);
            write_tag(&mut body, g, 0);
            if a.body_bytes > body.len() {
                body.push(b' ');
                body.resize(a.body_bytes, b'x');
            }
            c.send(token, &room_id, &format!("t{g}"), std::str::from_utf8(&body)?).await?;
            if (g + 1).is_multiple_of(tenth)
                && let Some(r) = ctx.server_pid().and_then(|p| proc_rss_kib(p).ok())
            {
                rss.borrow_mut().push(r.0);
            }
        }
    });
    futures_util::future::try_join_all(senders).await?;
    Ok((room_id, (now_ns() - t_fill) as f64 / 1e9, rss.into_inner()))
}

/// Fetch the latest page (timed as the first page), then page backwards to
/// the start, checking every page. Returns (first-page latency, all
/// latencies, what was found).
async fn walk_room(c: &mut HttpConn, token: &str, room_id: &str, page: u64, messages: u64) -> Result<(Lat, Lat, Walk)> {
    let mut first = Lat::default();
    let mut all = Lat::default();
    let mut w = Walk::default();
    let mut seen = BitSet::default();
    let mut before: Option<u64> = None;
    // The lowest seq of the page after this one, which this page must end just below.
    let mut next_lowest: Option<u64> = None;
    loop {
        let path = match before {
            None => format!("{PREFIX}/rooms/{}/messages?limit={page}", seg(room_id)),
            Some(b) => format!("{PREFIX}/rooms/{}/messages?before={b}&limit={page}", seg(room_id)),
        };
        let t = now_ns();
        let (status, body) = c.call(Method::GET, &path, Some(token), None).await?;
        let dt = now_ns() - t;
        if status != 200 {
            bail!("GET {path}: {}", api_error(status, &body));
        }
        if before.is_none() {
            first.record_ns(dt);
        }
        all.record_ns(dt);
        w.pages += 1;
        w.bytes += body.len() as u64;
        let v: Value = serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))?;
        let events = v.get("events").and_then(Value::as_array).with_context(|| format!("GET {path}: no events"))?;
        let earliest = v.get("earliest_seq").and_then(Value::as_u64).unwrap_or(1);
        if events.len() as u64 > page {
            bail!("GET {path}: {} events on a page of {page}", events.len());
        }
        let mut prev: Option<u64> = None;
        for ev in events {
            let seq = ev.get("seq").and_then(Value::as_u64).with_context(|| format!("event without seq: {ev}"))?;
            if let Some(p) = prev {
                if seq <= p {
                    w.out_of_order += 1;
                } else if seq != p + 1 {
                    w.seq_gaps += 1;
                }
            }
            prev = Some(seq);
            if let Some(tag) = ev.get("body").and_then(Value::as_str).and_then(parse::tag_of)
                && tag.msg < messages
            {
                if seen.test_and_set(tag.msg) {
                    w.duplicates += 1;
                } else {
                    w.delivered += 1;
                }
            }
        }
        let (Some(lo), Some(hi)) = (events.first().and_then(|e| e["seq"].as_u64()), prev) else {
            break;
        };
        if let Some(n) = next_lowest
            && hi + 1 != n
        {
            // Pages must abut exactly: overlap repeats events, a hole skips them.
            if hi >= n { w.out_of_order += 1 } else { w.seq_gaps += 1 }
        }
        next_lowest = Some(lo);
        if lo <= earliest {
            break;
        }
        before = Some(lo);
    }
    Ok((first, all, w))
}

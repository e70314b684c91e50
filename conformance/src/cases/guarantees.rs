//! §9 Guarantees, one case each: durable acks, one order, gap-free resume
//! (across a reconnect while others write), idempotent sends under
//! concurrent retries, slow consumers cut off with 4008 without slowing
//! others, and bad input that leaves stored events untouched.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{live_events, subscribe, ws_send};
use super::{n, range, s, seqs};
use crate::ctx::Ctx;
use crate::failure::{Failure, Result};
use crate::http::Request;
use crate::runner::Case;
use crate::ws::{Incoming, WsOptions};
use crate::{case, check, check_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!("guarantees::durable_ack_visible_at_once", "9", durable_ack_visible_at_once),
        case!("guarantees::one_order_for_all_subscribers", "9", one_order_for_all_subscribers),
        case!("guarantees::gap_free_resume_while_others_write", "9", gap_free_resume_while_others_write),
        case!("guarantees::idempotent_under_concurrent_retries", "9", idempotent_under_concurrent_retries),
        case!("guarantees::slow_consumer_closed_4008_others_unaffected", "9", slow_consumer_closed_4008).limit(240),
        case!("guarantees::bad_input_loses_nothing", "9", bad_input_loses_nothing),
    ]
}

async fn durable_ack_visible_at_once(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "dur").await?;
    ctx.join(&b, &room.room_id).await?;
    let mut sub = ctx.ws(&b).await?;
    subscribe(&mut sub, &room.room_id, None).await?;
    let mut writer = ctx.ws(&a).await?;
    for i in 0..10 {
        // Alternate HTTP and WebSocket sends; each ack must be readable by
        // another user on another connection at once.
        let ack = if i % 2 == 0 {
            ctx.send(&a, &room.room_id, &ctx.txn(), &format!("d{i}")).await?
        } else {
            ws_send(&mut writer, &room.room_id, &ctx.txn(), &format!("d{i}"), &format!("w{i}")).await?
        };
        let seq = n(&ack, "seq");
        let page = ctx.messages(&b, &room.room_id, &format!("after={}&limit=1", seq - 1)).await?;
        check_eq!(s(&page["events"][0], "event_id"), s(&ack, "event_id"), "history right after ack {i}");
        check!(n(&page, "latest_seq") >= seq, "latest_seq {} behind an acknowledged seq {seq}", n(&page, "latest_seq"));
        let live = live_events(&mut sub, &room.room_id, 1).await?;
        check_eq!(s(&live[0], "event_id"), s(&ack, "event_id"), "subscriber's event {i}");
    }
    sub.close().await;
    writer.close().await;
    Ok(())
}

async fn one_order_for_all_subscribers(ctx: &Ctx) -> Result<()> {
    let users = [ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?];
    let room = ctx.room(&users[0], "ord").await?;
    for u in &users[1..] {
        ctx.join(u, &room.room_id).await?;
    }
    let mut subs = Vec::new();
    for u in users.iter().chain(users.iter()) {
        let mut ws = ctx.ws(u).await?;
        let (_, _, cu) = subscribe(&mut ws, &room.room_id, None).await?;
        check_eq!(n(&cu, "seq"), 3, "caught_up seq");
        subs.push(ws);
    }
    const EACH: usize = 10;
    let mut ws_writers = Vec::new();
    for u in &users[..2] {
        ws_writers.push(ctx.ws(u).await?);
    }
    let socket_writes = join_all(ws_writers.iter_mut().enumerate().map(|(w, ws)| {
        let room_id = room.room_id.clone();
        async move {
            for i in 0..EACH {
                ws_send(ws, &room_id, &ctx.txn(), &format!("ws{w} {i}"), &format!("{w}-{i}")).await?;
            }
            Ok::<_, Failure>(())
        }
    }));
    let http_writes = join_all(users[1..].iter().enumerate().map(|(w, u)| {
        let room_id = room.room_id.clone();
        async move {
            for i in 0..EACH {
                ctx.send(u, &room_id, &ctx.txn(), &format!("http{w} {i}")).await?;
            }
            Ok::<_, Failure>(())
        }
    }));
    let total = 4 * EACH;
    let reads = join_all(subs.iter_mut().map(|ws| live_events(ws, &room.room_id, total)));
    let (sw, hw, seen) = tokio::join!(socket_writes, http_writes, reads);
    sw.into_iter().chain(hw).collect::<Result<Vec<()>>>()?;
    let history = ctx.messages(&users[0], &room.room_id, "after=3&limit=1000").await?;
    check_eq!(seqs(&history["events"]), range(4, 3 + total as u64), "seqs in history");
    for (i, got) in seen.into_iter().enumerate() {
        let got = got?;
        check_eq!(json!(got), history["events"], "events seen by subscriber {i} vs history");
    }
    for ws in subs.into_iter().chain(ws_writers) {
        ws.close().await;
    }
    Ok(())
}

/// How long the writer of `gap_free_resume_while_others_write` waits for
/// the reader to reach a phase; only bounds a failure.
const PHASE_WAIT: Duration = Duration::from_secs(30);

async fn gap_free_resume_while_others_write(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.shared(0).await?, ctx.shared(1).await?);
    let room = ctx.room(&a, "gf").await?;
    ctx.join(&b, &room.room_id).await?;
    let mut first = ctx.ws(&b).await?;
    let (_, _, cu) = subscribe(&mut first, &room.room_id, None).await?;
    let (epoch, start) = (s(&cu, "epoch").to_owned(), n(&cu, "seq"));
    const TOTAL: u64 = 60;
    // The writer's three thirds go out before the reader drops its socket,
    // while it is away and resubscribing, and after it caught up: each phase
    // is waited for (bounded: a failing reader reports its own failure).
    let (dropped, resubscribed) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let writer = async {
        for i in 0..TOTAL {
            if i == TOTAL / 3 {
                let _ = tokio::time::timeout(PHASE_WAIT, dropped.notified()).await;
            } else if i == 2 * TOTAL / 3 {
                let _ = tokio::time::timeout(PHASE_WAIT, resubscribed.notified()).await;
            }
            ctx.send(&a, &room.room_id, &ctx.txn(), &format!("g{i}")).await?;
        }
        Ok::<_, Failure>(())
    };
    let reader = async {
        let mut seen: Vec<u64> = seqs(&json!(live_events(&mut first, &room.room_id, 10).await?));
        // Gone without a goodbye, as a dropped network would leave it.
        drop(first);
        dropped.notify_one();
        let last = *seen.last().unwrap_or(&start);
        let mut again = ctx.ws(&b).await?;
        let (gap, replay, cu) =
            subscribe(&mut again, &room.room_id, Some(json!({"epoch": epoch, "seq": last}))).await?;
        resubscribed.notify_one();
        check!(gap.is_none(), "gap on resuming from a cursor the log still holds: {gap:?}");
        let replayed = seqs(&json!(replay));
        check_eq!(n(&cu, "seq"), replayed.last().copied().unwrap_or(last), "caught_up seq vs last replayed");
        seen.extend(replayed);
        let remaining = (start + TOTAL).saturating_sub(*seen.last().unwrap_or(&start)) as usize;
        seen.extend(seqs(&json!(live_events(&mut again, &room.room_id, remaining).await?)));
        again.close().await;
        Ok::<_, Failure>(seen)
    };
    let (w, seen) = tokio::join!(writer, reader);
    w?;
    check_eq!(seen?, range(start + 1, start + TOTAL), "seqs seen across the reconnect (each exactly once, in order)");
    Ok(())
}

async fn idempotent_under_concurrent_retries(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "cidem").await?;
    let txn = ctx.txn();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        sockets.push(ctx.ws(&a).await?);
    }
    let http = join_all((0..5).map(|_| ctx.send(&a, &room.room_id, &txn, "exactly once")));
    let ws = join_all(sockets.iter_mut().enumerate().map(|(i, ws)| {
        let (room_id, txn) = (room.room_id.clone(), txn.clone());
        async move { ws_send(ws, &room_id, &txn, "exactly once", &format!("c{i}")).await }
    }));
    let (http, ws) = tokio::join!(http, ws);
    let answers: Vec<(String, u64)> = http
        .into_iter()
        .chain(ws)
        .map(|r| r.map(|v| (s(&v, "event_id").to_owned(), n(&v, "seq"))))
        .collect::<Result<_>>()?;
    check!(answers.windows(2).all(|w| w[0] == w[1]), "concurrent retries got different answers: {answers:?}");
    let events = ctx.all_events(&a, &room.room_id).await?;
    check_eq!(events.iter().filter(|e| s(e, "body") == "exactly once").count(), 1, "events stored");
    for ws in sockets {
        ws.close().await;
    }
    Ok(())
}

async fn slow_consumer_closed_4008(ctx: &Ctx) -> Result<()> {
    let (writer, slow_user, fast_user) = (ctx.shared(0).await?, ctx.shared(1).await?, ctx.shared(2).await?);
    let room = ctx.room(&writer, "slow").await?;
    ctx.join(&slow_user, &room.room_id).await?;
    ctx.join(&fast_user, &room.room_id).await?;
    let mut slow = ctx
        .ws_with(&WsOptions { token: Some(slow_user.token.clone()), small_recv_buffer: true, ..Default::default() })
        .await?;
    slow.expect("ready").await?;
    let (_, _, cu) = subscribe(&mut slow, &room.room_id, None).await?;
    let (epoch, start) = (s(&cu, "epoch").to_owned(), n(&cu, "seq"));
    let mut fast = ctx.ws(&fast_user).await?;
    subscribe(&mut fast, &room.room_id, None).await?;
    let mut w = ctx.ws(&writer).await?;

    // 640 messages of 16,000 bytes: about 10 MB of event frames, far more
    // than 1 MiB of queue plus what the kernel's socket buffers can hide.
    const BATCHES: u64 = 20;
    const BATCH: u64 = 32;
    let body = "s".repeat(16_000);
    let mut last = start;
    for batch in 0..BATCHES {
        for i in 0..BATCH {
            ws_send(&mut w, &room.room_id, &ctx.txn(), &body, &format!("{batch}-{i}")).await?;
        }
        // The reading subscriber keeps getting everything, in time.
        let got = seqs(&json!(live_events(&mut fast, &room.room_id, BATCH as usize).await?));
        check_eq!(got, range(last + 1, last + BATCH), "seqs the reading subscriber got in batch {batch}");
        last += BATCH;
    }
    // Now drain the stalled one: its events, then close 4008.
    let mut seen = start;
    loop {
        match slow.next(Duration::from_secs(30)).await {
            Ok(Incoming::Frame(f)) if s(&f, "type") == "event" => {
                let seq = n(&f["event"], "seq");
                check_eq!(seq, seen + 1, "seq delivered to the slow consumer before its close");
                seen = seq;
            }
            Ok(Incoming::Frame(f)) => fail!("unexpected frame to the slow consumer: {f}"),
            Ok(Incoming::Closed(Some(4008))) => break,
            Ok(Incoming::Closed(code)) => fail!("slow consumer closed with {code:?}, expected 4008"),
            Ok(Incoming::Dropped(why)) => fail!("slow consumer dropped without a close frame: {why}"),
            Err(Failure::Timeout(..)) => {
                fail!(
                    "a subscriber that read nothing while ~10 MB of events queued was never closed with 4008 (it got {} of {} events)",
                    seen - start,
                    last - start
                )
            }
            Err(e) => return Err(e),
        }
    }
    // It resumes gap-free from what it saw.
    let mut again = ctx.ws(&slow_user).await?;
    let (gap, replay, cu) = subscribe(&mut again, &room.room_id, Some(json!({"epoch": epoch, "seq": seen}))).await?;
    check!(gap.is_none(), "gap when resuming after 4008: {gap:?}");
    check_eq!(seqs(&json!(replay)), range(seen + 1, last), "seqs replayed after 4008");
    check_eq!(n(&cu, "seq"), last, "caught_up seq");
    for ws in [again, fast, w] {
        ws.close().await;
    }
    Ok(())
}

async fn bad_input_loses_nothing(ctx: &Ctx) -> Result<()> {
    let a = ctx.shared(0).await?;
    let room = ctx.room(&a, "bad").await?;
    let txn = ctx.txn();
    ctx.send(&a, &room.room_id, &txn, "keep me").await?;
    ctx.send_many(&a, &room.room_id, "keep", 3).await?;
    let before = ctx.all_events(&a, &room.room_id).await?;

    let path = Ctx::api(&format!("/rooms/{}/send/", crate::http::enc(&room.room_id)));
    let junk: Vec<(Request, &str)> = vec![
        (Request::put(format!("{path}x1")).token(&a.token).raw(&b"{\"body\": "[..]), "malformed_json"),
        (Request::put(format!("{path}x2")).token(&a.token).raw(b"{\"body\": \"\xff\"}".to_vec()), "malformed_json"),
        (Request::put(format!("{path}x3")).token(&a.token).json(&json!({"body": "x", "more": 1})), "invalid_field"),
        (Request::put(format!("{path}x4")).token(&a.token).raw(vec![b' '; 200_000]), "body_too_large"),
        (Request::put(format!("{path}x5")).token("wrong").json(&json!({"body": "x"})), "unknown_token"),
        (Request::put(format!("{path}{txn}")).token(&a.token).json(&json!({"body": "overwrite"})), "txn_conflict"),
        (Request::get(format!("{path}x6")).token(&a.token), "method_not_allowed"),
    ];
    for (req, errcode) in junk {
        let resp = ctx.http.send(req).await?;
        check_eq!(resp.errcode().as_deref(), Some(errcode), "errcode for {}", resp.what);
    }
    let mut ws = ctx.ws(&a).await?;
    ws.send_text("{oops").await?;
    ws.expect_error("malformed_json", None).await?;
    ws.send_text(
        json!({"type": "send", "room": room.room_id, "txn_id": txn, "body": "overwrite", "id": "o"}).to_string(),
    )
    .await?;
    ws.expect_error("txn_conflict", Some("o")).await?;
    let _ = ws.send_message(Message::text("x".repeat(100_000))).await;
    let _ = ws.expect_close(Duration::from_secs(10)).await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send_message(Message::binary(vec![1, 2, 3])).await?;
    let _ = ws.expect_close(Duration::from_secs(10)).await?;
    let mut ws = ctx.ws(&a).await?;
    ws.send_raw_text(vec![b'"', 0xc3, 0x28, b'"']).await?;
    let _ = ws.expect_close(Duration::from_secs(10)).await?;

    let after = ctx.all_events(&a, &room.room_id).await?;
    check_eq!(Value::from(after.clone()), Value::from(before.clone()), "events after a barrage of bad input");
    let next = ctx.send(&a, &room.room_id, &ctx.txn(), "still works").await?;
    check_eq!(n(&next, "seq"), n(before.last().unwrap_or(&json!({})), "seq") + 1, "seq of the next good send");
    Ok(())
}

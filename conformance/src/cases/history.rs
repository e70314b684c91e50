//! §7 History: pages in ascending seq, `before`/`after` paging in both
//! directions, `earliest_seq`/`latest_seq`, the `limit` bounds and default,
//! one epoch per page, the `epoch` selector.

use super::{n, range, s, seqs};
use crate::ctx::{Ctx, Room, User};
use crate::failure::Result;
use crate::runner::Case;
use crate::{case, check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("history::latest_page", "7", latest_page),
        case!("history::default_limit_is_50", "7", default_limit_is_50),
        case!("history::page_backwards", "7", page_backwards),
        case!("history::page_forwards", "7", page_forwards),
        case!("history::ends_are_empty", "7", ends_are_empty),
        case!("history::limit_bounds", "7", limit_bounds),
        case!("history::bad_query_params", "7", bad_query_params),
        case!("history::epoch_selector", "7", epoch_selector),
        case!("history::event_fields", "7", event_fields),
        case!("history::not_member", "7", not_member),
        case!("history::pages_are_cut_to_their_byte_size", "7", pages_are_cut_to_their_byte_size),
    ]
}

/// A room with the creator's join then `msgs` messages: seqs 1..=msgs+1.
async fn filled_room(ctx: &Ctx, tag: &str, msgs: usize) -> Result<(User, Room)> {
    let user = ctx.shared(1).await?;
    let room = ctx.room(&user, tag).await?;
    ctx.send_many(&user, &room.room_id, tag, msgs).await?;
    Ok((user, room))
}

async fn latest_page(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "hl", 9).await?;
    let page = ctx.messages(&user, &room.room_id, "").await?;
    check_eq!(s(&page, "room_id"), room.room_id.as_str(), "room_id");
    check_eq!(seqs(&page["events"]), range(1, 10), "seqs of the whole room");
    check_eq!((n(&page, "earliest_seq"), n(&page, "latest_seq")), (1, 10), "(earliest_seq, latest_seq)");
    check!(!s(&page, "epoch").is_empty(), "epoch is empty");
    let last3 = ctx.messages(&user, &room.alias, "limit=3").await?;
    check_eq!(seqs(&last3["events"]), range(8, 10), "seqs of the last 3, ascending");
    check_eq!(s(&last3, "epoch"), s(&page, "epoch"), "epoch across pages");
    Ok(())
}

async fn default_limit_is_50(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "h50", 54).await?;
    let page = ctx.messages(&user, &room.room_id, "").await?;
    check_eq!(seqs(&page["events"]), range(6, 55), "seqs of a page without limit");
    check_eq!((n(&page, "earliest_seq"), n(&page, "latest_seq")), (1, 55), "(earliest_seq, latest_seq)");
    let all = ctx.messages(&user, &room.room_id, "limit=1000").await?;
    check_eq!(seqs(&all["events"]), range(1, 55), "seqs with limit=1000");
    Ok(())
}

async fn page_backwards(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "hb", 10).await?;
    let first = ctx.messages(&user, &room.room_id, "limit=4").await?;
    let epoch = s(&first, "epoch").to_owned();
    let mut got = seqs(&first["events"]);
    check_eq!(got, range(8, 11), "the latest page");
    let mut pages = 0;
    while got.first().copied().unwrap_or(1) > n(&first, "earliest_seq") && pages < 10 {
        let before = got[0];
        let page = ctx.messages(&user, &room.room_id, &format!("before={before}&limit=4")).await?;
        check_eq!(s(&page, "epoch"), epoch.as_str(), "epoch while paging");
        let mut older = seqs(&page["events"]);
        check!(!older.is_empty(), "before={before} returned nothing though earliest_seq is 1");
        check!(older.iter().all(|&q| q < before), "before={before} returned {older:?}");
        older.extend(got);
        got = older;
        pages += 1;
    }
    check_eq!(got, range(1, 11), "every seq, paging backwards with before=");
    let mid = ctx.messages(&user, &room.room_id, "before=6&limit=2").await?;
    check_eq!(seqs(&mid["events"]), vec![4, 5], "before=6&limit=2");
    Ok(())
}

async fn page_forwards(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "hf", 10).await?;
    let mut got = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let page = ctx.messages(&user, &room.room_id, &format!("after={after}&limit=3")).await?;
        let page_seqs = seqs(&page["events"]);
        check!(page_seqs.iter().all(|&q| q > after), "after={after} returned {page_seqs:?}");
        if page_seqs.is_empty() {
            break;
        }
        after = *page_seqs.last().unwrap_or(&after);
        got.extend(page_seqs);
        if after >= n(&page, "latest_seq") {
            break;
        }
    }
    check_eq!(got, range(1, 11), "every seq, paging forwards with after=");
    let mid = ctx.messages(&user, &room.room_id, "after=4&limit=2").await?;
    check_eq!(seqs(&mid["events"]), vec![5, 6], "after=4&limit=2");
    Ok(())
}

async fn ends_are_empty(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "he", 2).await?;
    let past = ctx.messages(&user, &room.room_id, "after=3").await?;
    check_eq!(seqs(&past["events"]), Vec::<u64>::new(), "after=latest_seq");
    check_eq!(n(&past, "latest_seq"), 3, "latest_seq on an empty page");
    // Past the head is not an error either: the same empty page.
    let beyond = ctx.messages(&user, &room.room_id, "after=1000").await?;
    check_eq!(seqs(&beyond["events"]), Vec::<u64>::new(), "after=1000 with latest_seq 3");
    check_eq!((n(&beyond, "latest_seq"), s(&beyond, "epoch")), (3, s(&past, "epoch")), "(latest_seq, epoch)");
    let before_start = ctx.messages(&user, &room.room_id, "before=1").await?;
    check_eq!(seqs(&before_start["events"]), Vec::<u64>::new(), "before=1");
    Ok(())
}

async fn limit_bounds(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "hlim", 1).await?;
    for bad in ["limit=0", "limit=1001", "limit=-1", "limit=ten", "limit="] {
        ctx.messages_raw(&user, &room.room_id, bad).await?.err(400, "invalid_param")?;
    }
    let one = ctx.messages(&user, &room.room_id, "limit=1").await?;
    check_eq!(seqs(&one["events"]), vec![2], "limit=1");
    ctx.messages(&user, &room.room_id, "limit=1000").await?;
    Ok(())
}

async fn bad_query_params(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "hq", 1).await?;
    for bad in ["before=2&after=1", "before=abc", "after=-3", "after=1.5"] {
        ctx.messages_raw(&user, &room.room_id, bad).await?.err(400, "invalid_param")?;
    }
    Ok(())
}

/// `epoch=E` reads epoch `E`: the current one gives the same page; an
/// epoch the room never had is 404, an empty one `invalid_param`.
async fn epoch_selector(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "hepoch", 3).await?;
    let page = ctx.messages(&user, &room.room_id, "").await?;
    let epoch = crate::http::enc(s(&page, "epoch"));
    let same = ctx.messages(&user, &room.room_id, &format!("epoch={epoch}&after=1")).await?;
    check_eq!(seqs(&same["events"]), range(2, 4), "epoch=<current>&after=1");
    check_eq!(s(&same, "epoch"), s(&page, "epoch"), "epoch of the page");
    let unknown = format!("epoch=never{epoch}");
    ctx.messages_raw(&user, &room.room_id, &unknown).await?.err(404, "epoch_not_found")?;
    ctx.messages_raw(&user, &room.room_id, "epoch=").await?.err(400, "invalid_param")?;
    Ok(())
}

async fn event_fields(ctx: &Ctx) -> Result<()> {
    let (user, room) = filled_room(ctx, "hev", 1).await?;
    let page = ctx.messages(&user, &room.room_id, "").await?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    check_eq!(events.len(), 2, "events");
    check!(
        s(&events[0], "type") == "join" && events[0].get("body").is_none_or(|b| b.is_null()),
        "event 1: {}",
        events[0]
    );
    check!(s(&events[1], "type") == "message" && !s(&events[1], "body").is_empty(), "event 2: {}", events[1]);
    for e in &events {
        check_eq!(s(e, "sender"), user.user_id.as_str(), "sender of {e}");
    }
    check!(s(&events[0], "event_id") != s(&events[1], "event_id"), "two events share an event_id");
    check!(n(&events[0], "ts") <= n(&events[1], "ts"), "ts goes backwards: {page}");
    Ok(())
}

async fn not_member(ctx: &Ctx) -> Result<()> {
    let (_, room) = filled_room(ctx, "hnm", 1).await?;
    let outsider = ctx.shared(2).await?;
    ctx.messages_raw(&outsider, &room.room_id, "").await?.err(403, "not_member")?;
    Ok(())
}

/// 70 messages of 16,384 bytes make a room of more than 1,048,576 bytes:
/// a page of all of them is cut, keeping the events nearest its cursor, and
/// paging on reaches every event.
async fn pages_are_cut_to_their_byte_size(ctx: &Ctx) -> Result<()> {
    const PAGE_MAX: usize = 1_048_576;
    let user = ctx.shared(1).await?;
    let room = ctx.room(&user, "hbig").await?;
    let body = "y".repeat(16_384);
    for _ in 0..70 {
        ctx.send(&user, &room.room_id, &ctx.txn(), &body).await?;
    }
    let first = ctx.messages_raw(&user, &room.room_id, "after=0&limit=1000").await?;
    let page = first.ok(200, "messages_response")?;
    let got = seqs(&page["events"]);
    check!(first.body.len() <= PAGE_MAX, "a page of {} bytes", first.body.len());
    check!(!got.is_empty() && got.len() < 71, "{} events in a page of at most {PAGE_MAX} bytes", got.len());
    check_eq!(got, range(1, got.len() as u64), "the earliest events after 0");
    let mut seen = got;
    while seen.last().copied().unwrap_or(71) < 71 {
        let after = seen.last().copied().unwrap_or_default();
        let resp = ctx.messages_raw(&user, &room.room_id, &format!("after={after}&limit=1000")).await?;
        check!(resp.body.len() <= PAGE_MAX, "a page of {} bytes", resp.body.len());
        let more = seqs(&resp.ok(200, "messages_response")?["events"]);
        check!(!more.is_empty(), "after={after} gave nothing though latest_seq is 71");
        seen.extend(more);
    }
    check_eq!(seen, range(1, 71), "every seq, paging forwards");
    let latest = ctx.messages_raw(&user, &room.room_id, "limit=1000").await?;
    check!(latest.body.len() <= PAGE_MAX, "the latest page is {} bytes", latest.body.len());
    let last = seqs(&latest.ok(200, "messages_response")?["events"]);
    check!(last.len() < 71 && last.last() == Some(&71), "the latest page holds {last:?}");
    Ok(())
}

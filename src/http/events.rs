//! HTTP handlers for sending a message and reading history. A history page's
//! answer is bounded in bytes (spec §4): it holds the events nearest its
//! cursor that fit in `HISTORY_PAGE_MAX_BYTES` and in what the server-wide
//! response budget has free, and always at least one.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::{Ctx, Resp, authenticate, json_bytes, param, parse_json, read_body};
use crate::protocol::ErrCode;
use crate::protocol::events::Range;
use crate::protocol::limits::{HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, HISTORY_PAGE_MAX_BYTES};
use crate::protocol::rooms::{MessagesResponse, RedactRequest, SendRequest};
use crate::service::Error;
use crate::service::events::valid_txn_id;
use crate::service::rooms::Rooms;

/// Checks in spec §3's order: body, authentication, the send rate limit,
/// parameters (`invalid_param` before `invalid_room`), then the endpoint's
/// own (message size, membership).
pub async fn send(ctx: &Ctx, req: Request<Incoming>, room: &str, txn_id: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: SendRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers).await?;
    let events = &ctx.app.services.events;
    let token = events.take_send_token(&session.user_id)?;
    let (room, txn_id) = (param(room)?, param(txn_id)?);
    if !valid_txn_id(&txn_id) {
        return Err(Error::refused(ErrCode::InvalidParam, "txn_id: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -"));
    }
    let room = Rooms::parse_ref(&room)?;
    let (_, pending) = events.begin_send_with(token, &session, &room, &txn_id, body.body, body.replaces).await?;
    Ok(super::json(StatusCode::OK, &pending.await?))
}

/// v1.1 `PUT /rooms/{room}/redact/{event_id}/{txn_id}`, with the send's
/// order of checks: body, authentication, the send rate limit, parameters,
/// then the endpoint's own (`Events::redact`).
pub async fn redact(
    ctx: &Ctx,
    req: Request<Incoming>,
    room: &str,
    event_id: &str,
    txn_id: &str,
) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: RedactRequest = parse_json(&read_body(ctx, req).await?, true)?;
    let session = authenticate(ctx, &headers).await?;
    let events = &ctx.app.services.events;
    let token = events.take_send_token(&session.user_id)?;
    let (room, event_id, txn_id) = (param(room)?, param(event_id)?, param(txn_id)?);
    if !valid_txn_id(&txn_id) {
        return Err(Error::refused(ErrCode::InvalidParam, "txn_id: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -"));
    }
    let room = Rooms::parse_ref(&room)?;
    let answer = events.redact(token, &session, &room, &event_id, &txn_id, body.reason).await?;
    Ok(super::json(StatusCode::OK, &answer))
}

/// `before`, `after` and `limit` from the query string. Other parameters
/// are ignored (spec §1); a known one given twice or malformed is
/// `invalid_param`.
pub(crate) fn history_query(query: Option<&str>) -> Result<(Range, u32), Error> {
    let bad = |m: String| Error::refused(ErrCode::InvalidParam, m);
    let (mut before, mut after, mut limit) = (None, None, None);
    for (k, v) in form_pairs(query.unwrap_or("")) {
        let n = || v.parse::<u64>().map_err(|_| bad(format!("{k}: expected a non-negative integer, got {v:?}")));
        match k.as_str() {
            "before" if before.is_none() => before = Some(n()?),
            "after" if after.is_none() => after = Some(n()?),
            "limit" if limit.is_none() => limit = Some(n()?),
            // An epoch selector, read by `history_epoch`; empty says nothing.
            "epoch" if v.is_empty() => return Err(bad("epoch: empty".into())),
            "before" | "after" | "limit" => return Err(bad(format!("{k} given twice"))),
            _ => {}
        }
    }
    let range = match (before, after) {
        (Some(_), Some(_)) => return Err(bad("give before or after, not both".into())),
        (Some(b), None) => Range::Before(b),
        (None, Some(a)) => Range::After(a),
        (None, None) => Range::Latest,
    };
    let limit = match limit {
        None => HISTORY_LIMIT_DEFAULT,
        Some(n @ 1..) if n <= u64::from(HISTORY_LIMIT_MAX) => n as u32,
        Some(_) => return Err(bad(format!("limit: 1 to {HISTORY_LIMIT_MAX}"))),
    };
    Ok((range, limit))
}

/// The `epoch` query parameter of `messages` (once, if at all).
pub(crate) fn history_epoch(query: Option<&str>) -> Result<Option<String>, Error> {
    let mut epochs = form_pairs(query.unwrap_or("")).filter(|(k, _)| k == "epoch").map(|(_, v)| v);
    let first = epochs.next();
    if epochs.next().is_some() {
        return Err(Error::refused(ErrCode::InvalidParam, "epoch given twice"));
    }
    Ok(first)
}

fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        (dec(k), dec(v))
    })
}

pub async fn messages(ctx: &Ctx, req: &Request<Incoming>, room: &str) -> Result<Resp, Error> {
    let session = authenticate(ctx, req.headers()).await?;
    let (range, limit) = history_query(req.uri().query())?;
    let epoch = history_epoch(req.uri().query())?;
    let room = Rooms::parse_ref(&param(room)?)?;
    let page = read_page(ctx, &session, &room, range, limit, epoch.as_deref()).await?;
    Ok(page_answer(ctx, page, range))
}

/// Events of the first read of a page; later reads double it.
const FIRST_READ: u32 = 64;

/// Reads a page in growing steps from its cursor, and stops once it holds
/// `limit` events, reaches the end of the log or fills
/// `HISTORY_PAGE_MAX_BYTES`: a page of 1,000 large events that will be cut
/// to a few dozen is not read whole (on the embedded log, reading is work
/// done on the request's own thread). Every step reads `epoch` (None: the
/// current one) and is from one epoch: a step that finds another one is
/// dropped, and the page ends before it.
async fn read_page(
    ctx: &Ctx,
    session: &crate::service::accounts::Session,
    room: &crate::protocol::RoomRef,
    range: Range,
    limit: u32,
    epoch: Option<&str>,
) -> Result<MessagesResponse, Error> {
    let events = &ctx.app.services.events;
    let mut step = limit.min(FIRST_READ);
    let mut page = events.messages(session, room, range, step, epoch).await?;
    let mut bytes: usize = page.events.iter().map(json_len).sum();
    loop {
        let have = page.events.len() as u32;
        let (Some(first), Some(last)) = (page.events.first(), page.events.last()) else { break };
        if have >= limit || bytes >= HISTORY_PAGE_MAX_BYTES || have < step {
            break;
        }
        let next_range = match range {
            Range::After(_) => Range::After(last.seq),
            Range::Before(_) | Range::Latest => Range::Before(first.seq),
        };
        step = (step * 2).min(limit - have);
        let next = events.messages(session, room, next_range, step, epoch).await?;
        if next.epoch != page.epoch {
            break;
        }
        let got = next.events.len() as u32;
        bytes += next.events.iter().map(json_len).sum::<usize>();
        match range {
            Range::After(_) => page.events.extend(next.events),
            Range::Before(_) | Range::Latest => drop(page.events.splice(0..0, next.events)),
        }
        (page.earliest_seq, page.latest_seq) = (next.earliest_seq, next.latest_seq);
        if got < step {
            break;
        }
    }
    Ok(page)
}

/// A page's JSON answer, cut to the bytes it may take: the events nearest
/// the cursor are kept (the earliest for `after`, the latest otherwise), so
/// a client continues from the page's first or last seq as usual. The bytes
/// stay counted against the connection until its socket takes them.
pub fn page_answer(ctx: &Ctx, mut page: MessagesResponse, range: Range) -> Resp {
    let mut events = std::mem::take(&mut page.events);
    let envelope = json_len(&page);
    let sizes: Vec<usize> = events.iter().map(json_len).collect();
    // Each event after the first adds a comma.
    let whole = envelope + sizes.iter().sum::<usize>() + sizes.len().saturating_sub(1);
    let reserved = ctx.conn.reserve(whole.min(HISTORY_PAGE_MAX_BYTES));
    let keep = fitting(&sizes, reserved.saturating_sub(envelope), matches!(range, Range::After(_)));
    match range {
        Range::After(_) => events.truncate(keep),
        Range::Before(_) | Range::Latest => drop(events.drain(..events.len() - keep)),
    }
    page.events = events;
    let body = serde_json::to_vec(&page).expect("protocol types serialize");
    ctx.conn.settle(reserved, body.len());
    json_bytes(StatusCode::OK, body)
}

/// How many events fit in `room` bytes of a JSON array's contents, taken
/// from the front (or the back), and always at least one.
fn fitting(sizes: &[usize], room: usize, from_front: bool) -> usize {
    let mut used = 0;
    let mut n = 0;
    let order: Box<dyn Iterator<Item = &usize>> =
        if from_front { Box::new(sizes.iter()) } else { Box::new(sizes.iter().rev()) };
    for size in order {
        let more = size + usize::from(n > 0);
        if n > 0 && used + more > room {
            break;
        }
        used += more;
        n += 1;
    }
    n
}

/// The length of a value's JSON, without keeping it.
fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, value).expect("protocol types serialize");
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(history_query(None).unwrap(), (Range::Latest, 50));
        assert_eq!(history_query(Some("before=10&limit=5")).unwrap(), (Range::Before(10), 5));
        assert_eq!(history_query(Some("after=0")).unwrap(), (Range::After(0), 50));
        assert_eq!(history_query(Some("after=3&foo=1&_=99")).unwrap(), (Range::After(3), 50), "unknown ones ignored");
        assert_eq!(history_query(Some("limit=1000")).unwrap(), (Range::Latest, 1000));
        for bad in [
            "before=1&after=2",
            "before=-1",
            "limit=x",
            "limit=0",
            "limit=1001",
            "limit=99999999999",
            "after=1&after=2",
            "epoch=",
        ] {
            assert_eq!(history_query(Some(bad)).unwrap_err().code(), ErrCode::InvalidParam, "{bad}");
        }
        assert_eq!(history_query(Some("epoch=e1&after=3")).unwrap(), (Range::After(3), 50));
        assert_eq!(history_epoch(Some("epoch=e%2B1&after=3")).unwrap().as_deref(), Some("e+1"));
        assert_eq!(history_epoch(Some("after=3")).unwrap(), None);
        assert_eq!(history_epoch(Some("epoch=a&epoch=b")).unwrap_err().code(), ErrCode::InvalidParam);
    }

    #[test]
    fn pages_keep_what_fits_and_at_least_one() {
        let sizes = [10, 10, 10, 10];
        assert_eq!(fitting(&sizes, 1000, true), 4);
        assert_eq!(fitting(&sizes, 32, true), 3, "10 + 11 + 11");
        assert_eq!(fitting(&sizes, 31, false), 2);
        assert_eq!(fitting(&sizes, 0, true), 1, "always one");
        assert_eq!(fitting(&[], 0, true), 0);
        assert_eq!(fitting(&[5, 50], 20, false), 1, "from the back: the large one alone");
    }
}

//! HTTP handlers for sending a message and reading history.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Ctx, Resp, authenticate, json, parse_json, read_body};
use crate::protocol::ErrCode;
use crate::protocol::events::Range;
use crate::protocol::limits::HISTORY_LIMIT_DEFAULT;
use crate::protocol::rooms::SendRequest;
use crate::service::Error;
use crate::service::events::valid_txn_id;
use crate::service::rooms::Rooms;

pub async fn send(ctx: &Ctx, req: Request<Incoming>, room: &str, txn_id: &str) -> Result<Resp, Error> {
    let headers = req.headers().clone();
    let body: SendRequest = parse_json(&read_body(ctx, req).await?, false)?;
    let session = authenticate(ctx, &headers)?;
    if !valid_txn_id(txn_id) {
        return Err(Error::refused(ErrCode::InvalidParam, "txn_id: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -"));
    }
    let room = Rooms::parse_ref(room)?;
    let (_, pending) = ctx.app.services.events.begin_send(&session, &room, txn_id, body.body)?;
    Ok(json(StatusCode::OK, &pending.await?))
}

/// `before`, `after` and `limit` from the query string.
pub(crate) fn history_query(query: Option<&str>) -> Result<(Range, u32), Error> {
    let bad = |m: String| Error::refused(ErrCode::InvalidParam, m);
    let (mut before, mut after, mut limit) = (None, None, None);
    for (k, v) in form_pairs(query.unwrap_or("")) {
        let n = || v.parse::<u64>().map_err(|_| bad(format!("{k}: expected a non-negative integer, got {v:?}")));
        match k.as_str() {
            "before" if before.is_none() => before = Some(n()?),
            "after" if after.is_none() => after = Some(n()?),
            "limit" if limit.is_none() => {
                limit = Some(u32::try_from(n()?).map_err(|_| bad("limit: too large".into()))?)
            }
            // An epoch selector, read by `history_epoch`.
            "epoch" if !v.is_empty() => {}
            "epoch" => return Err(bad("epoch: empty".into())),
            "before" | "after" | "limit" => return Err(bad(format!("{k} given twice"))),
            _ => return Err(bad(format!("unknown query parameter {k:?}"))),
        }
    }
    let range = match (before, after) {
        (Some(_), Some(_)) => return Err(bad("give before or after, not both".into())),
        (Some(b), None) => Range::Before(b),
        (None, Some(a)) => Range::After(a),
        (None, None) => Range::Latest,
    };
    Ok((range, limit.unwrap_or(HISTORY_LIMIT_DEFAULT)))
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
    let session = authenticate(ctx, req.headers())?;
    let (range, limit) = history_query(req.uri().query())?;
    let epoch = history_epoch(req.uri().query())?;
    let room = Rooms::parse_ref(room)?;
    let page = ctx.app.services.events.messages(&session, &room, range, limit, epoch.as_deref()).await?;
    Ok(json(StatusCode::OK, &page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(history_query(None).unwrap(), (Range::Latest, 50));
        assert_eq!(history_query(Some("before=10&limit=5")).unwrap(), (Range::Before(10), 5));
        assert_eq!(history_query(Some("after=0")).unwrap(), (Range::After(0), 50));
        for bad in
            ["before=1&after=2", "before=-1", "limit=x", "limit=99999999999", "foo=1", "after=1&after=2", "epoch="]
        {
            assert_eq!(history_query(Some(bad)).unwrap_err().code(), ErrCode::InvalidParam, "{bad}");
        }
        assert_eq!(history_query(Some("epoch=e1&after=3")).unwrap(), (Range::After(3), 50));
        assert_eq!(history_epoch(Some("epoch=e%2B1&after=3")).unwrap().as_deref(), Some("e+1"));
        assert_eq!(history_epoch(Some("after=3")).unwrap(), None);
        assert_eq!(history_epoch(Some("epoch=a&epoch=b")).unwrap_err().code(), ErrCode::InvalidParam);
    }
}

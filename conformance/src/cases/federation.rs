//! §11 Federation (reserved in v1): the one check a client-side suite can
//! make without a second server — an unsigned request to the federation API
//! is refused with `bad_signature`. A server without federation answers
//! `not_found`, which v1 allows; the case then reports "not run", never a pass.

use serde_json::json;

use crate::ctx::Ctx;
use crate::failure::{Failure, Result};
use crate::http::Request;
use crate::runner::Case;
use crate::case;

pub fn cases() -> Vec<Case> {
    vec![case!("federation::unsigned_request_bad_signature", "11", unsigned_request_bad_signature)]
}

async fn unsigned_request_bad_signature(ctx: &Ctx) -> Result<()> {
    let txn = ctx.txn();
    let req = Request::put(format!("/_parlor/federation/v1/send/{txn}")).json(&json!({"origin": "127.0.0.1:9", "events": []}));
    let resp = ctx.http.send(req).await?;
    if resp.status == 404 && resp.errcode().as_deref() == Some("not_found") {
        return Err(Failure::NotRun("the server has no federation API (spec §11 reserves it for a later revision)".into()));
    }
    resp.err(401, "bad_signature")?;
    Ok(())
}

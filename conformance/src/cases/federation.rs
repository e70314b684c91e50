//! §11 Federation, checked black-box from one server URL. The runner plays a
//! second server ([`Peer`]: `127.0.0.1:PORT`, its own ed25519 key, its key and
//! well-known documents) and speaks to the server under test as that server
//! would: signed joins, sends, backfills and leaves for its users, and signed
//! requests that are wrong in exactly one way, each of which must be refused.
//! What the server pushes to the peer is checked too: signed with the key it
//! publishes, and the same events, in the same order, as its client API shows.
//!
//! A server without federation answers `GET /_parlor/key/v1/server` with 404
//! `not_found` (§11.5 allows that); every case then reports "not run", never
//! a pass.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::Method;
use serde_json::{Value, json};

use super::websocket::{live_events, next_frame, subscribe};
use super::{n, range, s, seqs};
use crate::ctx::{Ctx, Room, User};
use crate::failure::{Failure, Result};
use crate::http::{Request, Response, enc};
use crate::peer::{FEDERATION_PREFIX, KEY_PATH, Peer, SIGNATURE_WINDOW_MS, ServerKey, WELL_KNOWN_PATH, now_ms};
use crate::runner::Case;
use crate::{case, check, check_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!("federation::key_document", "11", key_document),
        case!("federation::well_known", "11", well_known),
        case!("federation::unsigned_request_bad_signature", "11", unsigned_request_bad_signature),
        case!("federation::signed_request_accepted", "11", signed_request_accepted),
        case!("federation::wrong_destination_bad_signature", "11", wrong_destination_bad_signature),
        case!("federation::stale_ts_bad_signature", "11", stale_ts_bad_signature),
        case!("federation::wrong_sig_bad_signature", "11", wrong_sig_bad_signature),
        case!("federation::unfetchable_key_unknown_server", "11", unfetchable_key_unknown_server),
        case!("federation::foreign_user_unknown_server", "11", foreign_user_unknown_server),
        case!("federation::replayed_request_refused", "11", replayed_request_refused),
        case!("federation::remote_join", "11", remote_join),
        case!("federation::remote_join_creates_room", "11", remote_join_creates_room),
        case!("federation::push_to_member_servers", "11", push_to_member_servers),
        case!("federation::push_for_foreign_room_refused", "11", push_for_foreign_room_refused),
        case!("federation::remote_send", "11", remote_send),
        case!("federation::backfill", "11", backfill),
        case!("federation::backfill_needs_a_member", "11", backfill_needs_a_member),
        case!("federation::remote_leave", "11", remote_leave),
        case!("federation::invite_reaches_the_invitees_server", "11", invite_reaches_the_invitees_server),
        case!("federation::remote_reject", "11", remote_reject),
        case!("federation::kicked_or_banned_remote_user_refused", "11", kicked_or_banned_remote_user_refused),
        case!("federation::ephemeral_both_ways", "11", ephemeral_both_ways),
        case!("federation::join_unreachable_home_server", "11", join_unreachable_home_server),
    ]
}

/// A server name nobody serves: the discard port of this machine, closed in
/// practice, so a connection to it is refused at once.
const NOWHERE: &str = "127.0.0.1:9";

/// How long the server under test may take to push an event to the peer.
const PUSH_WAIT: Duration = Duration::from_secs(10);

/// The device the peer names in its sends (the scope of `txn_id`, §11.3).
const PEER_DEVICE: &str = "CONFPEER";

/// The key endpoint's answer, or "not run" when the server has no federation.
async fn federation_key(ctx: &Ctx) -> Result<Response> {
    let resp = ctx.http.send(Request::get(KEY_PATH)).await?;
    if resp.status == 404 && resp.errcode().as_deref() == Some("not_found") {
        return Err(Failure::NotRun(format!("the server has no federation (GET {KEY_PATH} is 404 not_found)")));
    }
    Ok(resp)
}

/// The server's key, checked as a peer must before trusting it.
async fn server_key(ctx: &Ctx) -> Result<ServerKey> {
    let doc = federation_key(ctx).await?.ok(200, "federation_server_key")?;
    ServerKey::from_document(&doc, &ctx.server_name).map_err(|e| Failure::Check(format!("GET {KEY_PATH}: {e}")))
}

/// Federation is on, and the peer is up.
async fn peer(ctx: &Ctx) -> Result<std::sync::Arc<Peer>> {
    federation_key(ctx).await?;
    ctx.peer().await
}

/// The body as the peer sends it, after checking it against its schema (a
/// suite bug must not pass as a server bug).
fn body_bytes(ctx: &Ctx, schema: &str, body: &Value) -> Result<String> {
    ctx.schemas.check(schema, "the runner's own federation request", body)?;
    Ok(body.to_string())
}

/// A request from the peer, signed as §11.2 says.
fn signed(ctx: &Ctx, peer: &Peer, method: Method, path: &str, body: Option<String>) -> Request {
    let bytes = body.clone().unwrap_or_default();
    let auth = peer.authorization(method.as_str(), path, &peer.name, &ctx.server_name, now_ms(), bytes.as_bytes());
    let req = Request::new(method, path).header(http::header::AUTHORIZATION, auth);
    match body {
        Some(b) => req.raw(b),
        None => req,
    }
}

fn push_path(ctx: &Ctx) -> String {
    format!("{FEDERATION_PREFIX}/send/{}", ctx.txn())
}

const EMPTY_TXN: &str = r#"{"events":[]}"#;

/// A correctly signed, empty transaction from the peer must be accepted.
/// Every refusal case runs it first, so that a refusal is the variant's doing
/// and not, say, a server that cannot reach the peer to fetch its key.
async fn accepted_control(ctx: &Ctx, peer: &Peer) -> Result<()> {
    let body = body_bytes(ctx, "federation_transaction", &json!({"events": []}))?;
    let resp = ctx.send_patiently(signed(ctx, peer, Method::PUT, &push_path(ctx), Some(body))).await?;
    if resp.status == 403 && resp.errcode().as_deref() == Some("unknown_server") {
        fail!(
            "a correctly signed request from the runner ({}) was refused with unknown_server: the server could not \
             fetch http://{}{KEY_PATH}. A server reaches a private address only for a named peer (§11.1): start it \
             with --federation-peer {}=http://{} and the runner with --peer-listen {}. {}",
            peer.name,
            peer.name,
            peer.name,
            peer.name,
            peer.name,
            resp.json().map(|v| s(&v, "error").to_owned()).unwrap_or_default()
        );
    }
    resp.ok(200, "empty").map_err(|e| Failure::Check(format!("a correctly signed empty transaction: {e}")))?;
    Ok(())
}

async fn fed_join(ctx: &Ctx, peer: &Peer, room: &str, user_id: &str) -> Result<Response> {
    let body = body_bytes(ctx, "federation_join_request", &json!({"room": room, "user_id": user_id}))?;
    ctx.send_patiently(signed(ctx, peer, Method::POST, &format!("{FEDERATION_PREFIX}/join"), Some(body))).await
}

async fn fed_leave(ctx: &Ctx, peer: &Peer, room_id: &str, user_id: &str) -> Result<Response> {
    let body = body_bytes(ctx, "federation_leave_request", &json!({"room_id": room_id, "user_id": user_id}))?;
    ctx.send_patiently(signed(ctx, peer, Method::POST, &format!("{FEDERATION_PREFIX}/leave"), Some(body))).await
}

async fn fed_send(ctx: &Ctx, peer: &Peer, room_id: &str, txn: &str, sender: &str, body: &str) -> Result<Response> {
    let req = json!({"sender": sender, "device_id": PEER_DEVICE, "body": body});
    let bytes = body_bytes(ctx, "federation_send_request", &req)?;
    let path = format!("{FEDERATION_PREFIX}/rooms/{}/send/{}", enc(room_id), enc(txn));
    ctx.send_patiently(signed(ctx, peer, Method::PUT, &path, Some(bytes))).await
}

async fn fed_events(ctx: &Ctx, peer: &Peer, room_id: &str, query: &str) -> Result<Response> {
    let path = format!("{FEDERATION_PREFIX}/rooms/{}/events?{query}", enc(room_id));
    ctx.send_patiently(signed(ctx, peer, Method::GET, &path, None)).await
}

/// Joins a fresh user of the peer to `room`; returns its user id and the answer.
async fn remote_member(ctx: &Ctx, peer: &Peer, room: &Room, tag: &str) -> Result<(String, Value)> {
    let user_id = peer.user_id(&ctx.username(tag));
    let answer = fed_join(ctx, peer, &room.alias, &user_id).await?.ok(200, "federation_join_response")?;
    Ok((user_id, answer))
}

async fn members(ctx: &Ctx, user: &User, room: &str) -> Result<Vec<String>> {
    let v = ctx
        .http
        .send(Request::get(Ctx::api(&format!("/rooms/{}/members", enc(room)))).token(&user.token))
        .await?
        .ok(200, "members_response")?;
    Ok(v["members"].as_array().map(|a| a.iter().map(|m| s(m, "user_id").to_owned()).collect()).unwrap_or_default())
}

/// Two events are the same event (the fields §7 gives every event; `body`
/// absent and `null` alike, as the schema allows both).
fn same_event(a: &Value, b: &Value) -> bool {
    ["event_id", "seq", "type", "sender", "ts"].iter().all(|k| a.get(k) == b.get(k))
        && a.get("body").filter(|v| !v.is_null()) == b.get("body").filter(|v| !v.is_null())
}

fn check_same_events(got: &Value, want: &Value, what: &str) -> Result<()> {
    let (g, w) = (got.as_array().cloned().unwrap_or_default(), want.as_array().cloned().unwrap_or_default());
    check!(
        g.len() == w.len() && g.iter().zip(&w).all(|(a, b)| same_event(a, b)),
        "{what}: the events differ from the client API's:\n got  {got}\n want {want}"
    );
    Ok(())
}

// ---- §11.1 ----

async fn key_document(ctx: &Ctx) -> Result<()> {
    let key = server_key(ctx).await?;
    check_eq!(key.server_name, ctx.server_name, "server_name of the key document");
    Ok(())
}

async fn well_known(ctx: &Ctx) -> Result<()> {
    federation_key(ctx).await?;
    let v = ctx.http.send(Request::get(WELL_KNOWN_PATH)).await?.ok(200, "federation_well_known")?;
    let url = s(&v, "base_url");
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|r| r.split('/').next().unwrap_or_default()).unwrap_or_default();
    check!(
        !host.is_empty() && !url.chars().any(char::is_whitespace),
        "base_url {url:?} is not an http(s) URL with a host"
    );
    Ok(())
}

// ---- §11.2 ----

async fn unsigned_request_bad_signature(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let unsigned = Request::put(push_path(ctx)).raw(EMPTY_TXN);
    ctx.http.send(unsigned).await?.err(401, "bad_signature")?;
    // A client's credentials are no signature.
    let bearer = Request::put(push_path(ctx)).raw(EMPTY_TXN).token("not-a-signature");
    ctx.http.send(bearer).await?.err(401, "bad_signature")?;
    // The scheme with its `sig` left out; the origin is the peer, whose key
    // can be fetched, so only the missing signature is wrong.
    let mut h = peer.header("PUT", "/", &peer.name, &ctx.server_name, now_ms(), b"").render();
    h.truncate(h.rfind(",sig=").unwrap_or(h.len()));
    let no_sig = Request::put(push_path(ctx)).raw(EMPTY_TXN).header(http::header::AUTHORIZATION, h);
    ctx.http
        .send(no_sig)
        .await?
        .err(401, "bad_signature")
        .map_err(|e| Failure::Check(format!("a header without sig: {e}")))?;
    Ok(())
}

async fn signed_request_accepted(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await
}

/// Sends the empty transaction with this `Authorization`.
async fn push_with(ctx: &Ctx, path: &str, body: &str, authorization: String) -> Result<Response> {
    ctx.send_patiently(Request::put(path).raw(body.to_owned()).header(http::header::AUTHORIZATION, authorization)).await
}

async fn wrong_destination_bad_signature(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await?;
    // Signed correctly, for another server: a request replayed to the wrong receiver.
    for destination in ["elsewhere.invalid", peer.name.as_str()] {
        let path = push_path(ctx);
        let auth = peer.authorization("PUT", &path, &peer.name, destination, now_ms(), EMPTY_TXN.as_bytes());
        push_with(ctx, &path, EMPTY_TXN, auth)
            .await?
            .err(401, "bad_signature")
            .map_err(|e| Failure::Check(format!("destination {destination:?}: {e}")))?;
    }
    Ok(())
}

async fn stale_ts_bad_signature(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await?;
    let margin = 60_000;
    let now = now_ms();
    for (what, ts) in [("older", now - SIGNATURE_WINDOW_MS - margin), ("newer", now + SIGNATURE_WINDOW_MS + margin)] {
        let path = push_path(ctx);
        let auth = peer.authorization("PUT", &path, &peer.name, &ctx.server_name, ts, EMPTY_TXN.as_bytes());
        push_with(ctx, &path, EMPTY_TXN, auth)
            .await?
            .err(401, "bad_signature")
            .map_err(|e| Failure::Check(format!("ts 6 minutes {what} than now: {e}")))?;
    }
    Ok(())
}

async fn wrong_sig_bad_signature(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await?;
    let now = now_ms();

    // The right signature with one bit flipped.
    let path = push_path(ctx);
    let mut h = peer.header("PUT", &path, &peer.name, &ctx.server_name, now, EMPTY_TXN.as_bytes());
    let mut sig = B64.decode(&h.sig).map_err(|e| Failure::Suite(format!("own sig: {e}")))?;
    sig[10] ^= 0x01;
    h.sig = B64.encode(&sig);
    push_with(ctx, &path, EMPTY_TXN, h.render())
        .await?
        .err(401, "bad_signature")
        .map_err(|e| over("a flipped bit", e))?;

    // Signed for the same JSON written another way: the signature covers the
    // body's bytes, not its meaning.
    let path = push_path(ctx);
    let auth = peer.authorization("PUT", &path, &peer.name, &ctx.server_name, now, EMPTY_TXN.as_bytes());
    push_with(ctx, &path, r#"{ "events": [] }"#, auth)
        .await?
        .err(401, "bad_signature")
        .map_err(|e| over("another body", e))?;

    // Signed for another path.
    let (signed_path, sent_path) = (push_path(ctx), push_path(ctx));
    let auth = peer.authorization("PUT", &signed_path, &peer.name, &ctx.server_name, now, EMPTY_TXN.as_bytes());
    push_with(ctx, &sent_path, EMPTY_TXN, auth)
        .await?
        .err(401, "bad_signature")
        .map_err(|e| over("another path", e))?;

    // Signed for another method.
    let path = push_path(ctx);
    let auth = peer.authorization("POST", &path, &peer.name, &ctx.server_name, now, EMPTY_TXN.as_bytes());
    push_with(ctx, &path, EMPTY_TXN, auth).await?.err(401, "bad_signature").map_err(|e| over("another method", e))?;
    Ok(())
}

/// Names the variant in a refusal case's failure.
fn over(what: &str, e: Failure) -> Failure {
    match e {
        Failure::Check(m) => Failure::Check(format!("signature over {what}: {m}")),
        other => other,
    }
}

async fn unfetchable_key_unknown_server(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await?;
    let path = push_path(ctx);
    let auth = peer.authorization("PUT", &path, NOWHERE, &ctx.server_name, now_ms(), EMPTY_TXN.as_bytes());
    push_with(ctx, &path, EMPTY_TXN, auth)
        .await?
        .err(403, "unknown_server")
        .map_err(|e| Failure::Check(format!("origin {NOWHERE}, whose key cannot be fetched: {e}")))?;
    Ok(())
}

async fn foreign_user_unknown_server(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "ffor").await?;
    let name = ctx.username("x");
    // Same host, other port: a server name is host *and* port.
    for foreign in [format!("@{name}:{NOWHERE}"), format!("@{name}:elsewhere.invalid"), ctx.user_id(&user.username)] {
        fed_join(ctx, &peer, &room.alias, &foreign)
            .await?
            .err(403, "unknown_server")
            .map_err(|e| Failure::Check(format!("join for {foreign}: {e}")))?;
        fed_send(ctx, &peer, &room.room_id, &ctx.txn(), &foreign, "not mine to say")
            .await?
            .err(403, "unknown_server")
            .map_err(|e| Failure::Check(format!("send as {foreign}: {e}")))?;
    }
    // The room's own creator, whom the peer has no say over.
    fed_leave(ctx, &peer, &room.room_id, &user.user_id)
        .await?
        .err(403, "unknown_server")
        .map_err(|e| Failure::Check(format!("leave for {}: {e}", user.user_id)))?;
    check_eq!(members(ctx, &user, &room.room_id).await?, vec![user.user_id.clone()], "members after refused requests");
    let page = ctx.messages(&user, &room.room_id, "").await?;
    check_eq!(seqs(&page["events"]), vec![1], "seqs after refused requests (only the creator's join)");
    Ok(())
}

/// A signed request is single-use: the same request sent again (a replay
/// by whoever captured it) is refused, even after what it did was undone.
async fn replayed_request_refused(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "freplay").await?;
    let a = peer.user_id(&ctx.username("fr"));
    let path = format!("{FEDERATION_PREFIX}/join");
    let body = body_bytes(ctx, "federation_join_request", &json!({"room": room.alias, "user_id": a}))?;
    let auth = peer.authorization("POST", &path, &peer.name, &ctx.server_name, now_ms(), body.as_bytes());
    let captured = || Request::post(&path).header(http::header::AUTHORIZATION, auth.clone()).raw(body.clone());
    ctx.send_patiently(captured()).await?.ok(200, "federation_join_response")?;
    fed_leave(ctx, &peer, &room.room_id, &a).await?.ok(200, "empty")?;
    ctx.send_patiently(captured())
        .await?
        .err(401, "bad_signature")
        .map_err(|e| Failure::Check(format!("the same signed join sent again after a leave: {e}")))?;
    check_eq!(members(ctx, &user, &room.room_id).await?, vec![user.user_id.clone()], "members after the replay");
    Ok(())
}

// ---- §11.3 ----

async fn remote_join(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "fjoin").await?;

    let (a, answer) = remote_member(ctx, &peer, &room, "fa").await?;
    check_eq!(s(&answer, "room_id"), room.room_id.as_str(), "room_id of a join by alias");
    check_eq!(s(&answer, "alias"), room.alias.as_str(), "alias of a join by alias");
    let page = ctx.messages(&user, &room.room_id, "").await?;
    check_eq!(s(&answer, "epoch"), s(&page, "epoch"), "epoch of the join answer and of the client API");
    check_eq!(n(&answer, "latest_seq"), 2, "latest_seq after the creator's and the remote join");
    check_eq!(n(&answer, "earliest_seq"), n(&page, "earliest_seq"), "earliest_seq");
    let last = page["events"].as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
    check!(
        s(&last, "type") == "join" && s(&last, "sender") == a && n(&last, "seq") == 2,
        "the remote join is not event 2: {last}"
    );
    let mut listed: Vec<&str> =
        answer["members"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    listed.sort_unstable();
    let mut want = vec![a.as_str(), user.user_id.as_str()];
    want.sort_unstable();
    check_eq!(listed, want, "members in the join answer");

    // By room id, a second remote user.
    let b = peer.user_id(&ctx.username("fb"));
    let by_id = fed_join(ctx, &peer, &room.room_id, &b).await?.ok(200, "federation_join_response")?;
    check_eq!((s(&by_id, "room_id"), s(&by_id, "alias")), (room.room_id.as_str(), room.alias.as_str()), "a join by id");
    check_eq!(n(&by_id, "latest_seq"), 3, "latest_seq after a second remote join");
    // Joining again changes nothing and answers the same (§6).
    let again = fed_join(ctx, &peer, &room.room_id, &a).await?.ok(200, "federation_join_response")?;
    check_eq!(n(&again, "latest_seq"), 3, "latest_seq after a remote user joined again");

    let mut want = vec![a.clone(), b.clone(), user.user_id.clone()];
    want.sort();
    check_eq!(
        members(ctx, &user, &room.room_id).await?,
        want,
        "GET /members (sorted by user id) after two remote joins"
    );
    for u in [&a, &b] {
        fed_leave(ctx, &peer, &room.room_id, u).await?.ok(200, "empty")?;
    }
    Ok(())
}

async fn remote_join_creates_room(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let name = ctx.room_name("fnew");
    let alias = ctx.alias(&name);
    let a = peer.user_id(&ctx.username("fa"));
    let answer = fed_join(ctx, &peer, &alias, &a).await?.ok(200, "federation_join_response")?;
    check_eq!(s(&answer, "alias"), alias.as_str(), "alias of a room created by a remote join");
    let room_id = s(&answer, "room_id").to_owned();
    check!(room_id.ends_with(&format!(":{}", ctx.server_name)), "room {room_id} is not homed on {}", ctx.server_name);
    check_eq!(n(&answer, "latest_seq"), 1, "latest_seq: the remote user's join is event 1");
    check_eq!(answer["members"], json!([a]), "members of the new room");

    let user = ctx.shared(1).await?;
    let joined = ctx.join(&user, &alias).await?;
    check_eq!(
        s(&joined, "room_id"),
        room_id.as_str(),
        "a local join of the alias reaches the room the remote join made"
    );
    let page = ctx.messages(&user, &room_id, "").await?;
    let senders: Vec<(&str, &str)> = page["events"]
        .as_array()
        .map(|e| e.iter().map(|e| (s(e, "type"), s(e, "sender"))).collect())
        .unwrap_or_default();
    check_eq!(senders, vec![("join", a.as_str()), ("join", user.user_id.as_str())], "events of the room");
    fed_leave(ctx, &peer, &room_id, &a).await?.ok(200, "empty")?;
    Ok(())
}

// ---- §11.4 ----

async fn push_to_member_servers(ctx: &Ctx) -> Result<()> {
    let key = server_key(ctx).await?;
    let peer = peer(ctx).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "fpush").await?;
    let (a, answer) = remote_member(ctx, &peer, &room, "fa").await?;
    let joined_at = n(&answer, "latest_seq");
    ctx.send_many(&user, &room.room_id, "pushed", 3).await?;
    let history = ctx.messages(&user, &room.room_id, "after=0").await?;
    let epoch = s(&history, "epoch").to_owned();
    let owed: Vec<Value> = history["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| n(e, "seq") > joined_at)
        .collect();
    check_eq!(owed.len(), 3, "messages after the remote join");

    // Wait until every owed event has arrived, then check everything that came.
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    let pushed = loop {
        let pushed = pushed_events(ctx, &peer, &room.room_id)?;
        let have = |e: &Value| pushed.iter().any(|(_, p)| s(&p["event"], "event_id") == s(e, "event_id"));
        if owed.iter().all(have) {
            break pushed;
        }
        if tokio::time::Instant::now() >= deadline {
            let got: Vec<u64> = pushed.iter().map(|(_, p)| n(&p["event"], "seq")).collect();
            fail!(
                "within {PUSH_WAIT:?} of the sends the peer got pushes of seqs {got:?} of {}, but seqs {:?} are owed to it (§11.4)",
                room.room_id,
                seqs(&json!(owed))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for (i, req) in peer.received().iter().enumerate() {
        if !pushed.iter().any(|(j, _)| *j == i) {
            continue;
        }
        let what = format!("push {} {}", req.method, req.path_and_query);
        check!(req.method == Method::PUT, "{what}: pushes are PUT");
        check!(
            req.content_type.as_deref().is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json")),
            "{what}: Content-Type {:?}, the spec says application/json",
            req.content_type
        );
        key.verify_request("PUT", &req.path_and_query, &peer.name, req.authorization.as_deref(), &req.body, now_ms())
            .map_err(|e| Failure::Check(format!("{what}: its signature does not check out: {e}")))?;
    }

    // In seq order across transactions; a repeat (a retried transaction) must
    // be the very same event.
    let mut by_seq: BTreeMap<u64, Value> = BTreeMap::new();
    let mut last = None;
    for (_, p) in &pushed {
        check_eq!(s(p, "epoch"), epoch.as_str(), "epoch of a pushed event");
        let e = &p["event"];
        let seq = n(e, "seq");
        if let Some(prev) = by_seq.get(&seq) {
            check!(same_event(prev, e), "two different events pushed as seq {seq}: {prev} and {e}");
            continue;
        }
        check!(
            last.is_none_or(|l| seq > l),
            "pushed out of seq order: seq {seq} after seq {}",
            last.unwrap_or_default()
        );
        last = Some(seq);
        by_seq.insert(seq, e.clone());
    }
    for e in history["events"].as_array().cloned().unwrap_or_default() {
        if let Some(p) = by_seq.get(&n(&e, "seq")) {
            check!(
                same_event(p, &e),
                "the pushed event differs from the client API's history:\n pushed  {p}\n history {e}"
            );
        }
    }
    fed_leave(ctx, &peer, &room.room_id, &a).await?.ok(200, "empty")?;
    Ok(())
}

/// A server accepts pushed events only for rooms homed on the origin: a
/// transaction with an event of a room homed on the server itself (or on a
/// third server) is refused whole with 403 `unknown_server`, and changes
/// nothing.
async fn push_for_foreign_room_refused(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    accepted_control(ctx, &peer).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "fforeign").await?;
    let page = ctx.messages(&user, &room.room_id, "").await?;
    let intruder = peer.user_id(&ctx.username("fi"));
    let elsewhere = format!("!{}:elsewhere.invalid", ctx.unique("r", 20));
    for room_id in [room.room_id.as_str(), elsewhere.as_str()] {
        let event = json!({"event_id": format!("$forged{}:{}", ctx.unique("e", 20), peer.name), "seq": 2,
                           "type": "join", "sender": intruder, "ts": now_ms()});
        let txn = json!({"events": [{"room_id": room_id, "epoch": s(&page, "epoch"), "event": event}]});
        let body = body_bytes(ctx, "federation_transaction", &txn)?;
        ctx.send_patiently(signed(ctx, &peer, Method::PUT, &push_path(ctx), Some(body)))
            .await?
            .err(403, "unknown_server")
            .map_err(|e| Failure::Check(format!("a push of a join into {room_id}, not homed on the runner: {e}")))?;
    }
    check_eq!(members(ctx, &user, &room.room_id).await?, vec![user.user_id.clone()], "members after the forged push");
    let after = ctx.messages(&user, &room.room_id, "").await?;
    check_eq!(seqs(&after["events"]), vec![1], "seqs after the forged push (only the creator's join)");
    Ok(())
}

/// The `{room_id, epoch, event}` items pushed to the peer for `room_id`, in
/// arrival order, each with the index of the request that carried it. Every
/// push is checked against `federation_transaction.json` on the way.
fn pushed_events(ctx: &Ctx, peer: &Peer, room_id: &str) -> Result<Vec<(usize, Value)>> {
    let mut out = Vec::new();
    for (i, req) in peer.received().iter().enumerate() {
        let is_push = req.path_and_query.starts_with(&format!("{FEDERATION_PREFIX}/send/"));
        if !is_push {
            continue;
        }
        let what = format!("push {} {}", req.method, req.path_and_query);
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|e| Failure::Check(format!("{what}: the body is not JSON ({e})")))?;
        ctx.schemas.check("federation_transaction", &what, &body)?;
        for item in body["events"].as_array().into_iter().flatten() {
            if s(item, "room_id") == room_id {
                out.push((i, item.clone()));
            }
        }
    }
    Ok(out)
}

async fn remote_send(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "fsend").await?;
    let (a, _) = remote_member(ctx, &peer, &room, "fa").await?;
    let mut ws = ctx.ws(&user).await?;
    subscribe(&mut ws, &room.room_id, None).await?;

    let txn = ctx.txn();
    let body = "from another server";
    let first = fed_send(ctx, &peer, &room.room_id, &txn, &a, body).await?.ok(200, "send_response")?;
    let live = live_events(&mut ws, &room.room_id, 1).await?;
    let e = &live[0];
    check_eq!(
        (s(e, "event_id"), n(e, "seq")),
        (s(&first, "event_id"), n(&first, "seq")),
        "the live event of the remote send"
    );
    check_eq!(
        (s(e, "type"), s(e, "sender"), s(e, "body")),
        ("message", a.as_str(), body),
        "type, sender, body of the live event"
    );

    let again = fed_send(ctx, &peer, &room.room_id, &txn, &a, body).await?.ok(200, "send_response")?;
    check_eq!(again, first, "the answer to the same txn_id and body again");
    fed_send(ctx, &peer, &room.room_id, &txn, &a, "another body").await?.err(409, "txn_conflict")?;
    // Nothing was delivered for the repeat: the next frame answers a ping.
    ws.send(json!({"type": "ping", "id": "after-repeat"})).await?;
    let f = next_frame(&mut ws).await?;
    check!(s(&f, "type") == "pong", "after a repeated remote send, expected only a pong, got {f}");
    ws.close().await;

    let events = ctx.all_events(&user, &room.room_id).await?;
    let stored: Vec<&Value> = events.iter().filter(|e| s(e, "body") == body).collect();
    check_eq!(stored.len(), 1, "events stored for one remote txn_id sent twice");
    check!(same_event(stored[0], e), "history and the live event differ: {} vs {e}", stored[0]);
    check!(!events.iter().any(|e| s(e, "body") == "another body"), "the conflicting body was stored");

    // A user of the peer who is not in the room.
    let outsider = peer.user_id(&ctx.username("fo"));
    fed_send(ctx, &peer, &room.room_id, &ctx.txn(), &outsider, "let me in").await?.err(403, "not_member")?;
    fed_leave(ctx, &peer, &room.room_id, &a).await?.ok(200, "empty")?;
    Ok(())
}

async fn backfill(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "fback").await?;
    ctx.send_many(&user, &room.room_id, "before", 3).await?;
    let (a, _) = remote_member(ctx, &peer, &room, "fa").await?;
    ctx.send_many(&user, &room.room_id, "after", 2).await?;

    let page = fed_events(ctx, &peer, &room.room_id, "after=0").await?.ok(200, "messages_response")?;
    let client = ctx.messages(&user, &room.room_id, "after=0").await?;
    for k in ["room_id", "epoch"] {
        check_eq!(s(&page, k), s(&client, k), "{k} of the backfill page and of the client API");
    }
    for k in ["earliest_seq", "latest_seq"] {
        check_eq!(n(&page, k), n(&client, k), "{k} of the backfill page and of the client API");
    }
    check_eq!(seqs(&page["events"]), range(1, 7), "seqs of the backfill page");
    check_same_events(&page["events"], &client["events"], "backfill after=0")?;

    let part = fed_events(ctx, &peer, &room.room_id, "after=2&limit=3").await?.ok(200, "messages_response")?;
    check_eq!(seqs(&part["events"]), range(3, 5), "seqs of a backfill page after=2&limit=3");
    let client = ctx.messages(&user, &room.room_id, "after=2&limit=3").await?;
    check_same_events(&part["events"], &client["events"], "backfill after=2&limit=3")?;
    fed_leave(ctx, &peer, &room.room_id, &a).await?.ok(200, "empty")?;
    Ok(())
}

async fn backfill_needs_a_member(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "fnomem").await?;
    fed_events(ctx, &peer, &room.room_id, "after=0")
        .await?
        .err(403, "not_member")
        .map_err(|e| Failure::Check(format!("backfill by a server with no member in the room: {e}")))?;
    // With a member the same request is answered, so the refusal was about membership…
    let (a, _) = remote_member(ctx, &peer, &room, "fa").await?;
    fed_events(ctx, &peer, &room.room_id, "after=0").await?.ok(200, "messages_response")?;
    // …and once its last member left, the server is refused again.
    fed_leave(ctx, &peer, &room.room_id, &a).await?.ok(200, "empty")?;
    fed_events(ctx, &peer, &room.room_id, "after=0")
        .await?
        .err(403, "not_member")
        .map_err(|e| Failure::Check(format!("backfill after the server's last member left: {e}")))?;
    Ok(())
}

async fn remote_leave(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "fleave").await?;
    let (a, _) = remote_member(ctx, &peer, &room, "fa").await?;
    let sent = ctx.send(&user, &room.room_id, &ctx.txn(), "still here?").await?;
    fed_leave(ctx, &peer, &room.room_id, &a).await?.ok(200, "empty")?;
    check_eq!(members(ctx, &user, &room.room_id).await?, vec![user.user_id.clone()], "members after the remote leave");
    let page = ctx.messages(&user, &room.room_id, "").await?;
    let last = page["events"].as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
    check!(
        s(&last, "type") == "leave" && s(&last, "sender") == a && n(&last, "seq") == n(&sent, "seq") + 1,
        "the last event is not {a}'s leave right after seq {}: {last}",
        n(&sent, "seq")
    );
    fed_leave(ctx, &peer, &room.room_id, &a)
        .await?
        .err(403, "not_member")
        .map_err(|e| Failure::Check(format!("leaving again: {e}")))?;
    Ok(())
}

// ---- §11.6: v1.1 state across servers ----

/// A room made with `POST /rooms` (§12); returns its id.
async fn create_v11(ctx: &Ctx, user: &User, body: Value) -> Result<String> {
    let v = ctx
        .http
        .send(Request::post(Ctx::api("/rooms")).token(&user.token).json(&body))
        .await?
        .ok(201, "create_room_response")?;
    Ok(s(&v, "room_id").to_owned())
}

/// `POST /rooms/{room}/{what}` of the client API.
async fn room_post(ctx: &Ctx, user: &User, room: &str, what: &str, body: Value) -> Result<Response> {
    let path = Ctx::api(&format!("/rooms/{}/{what}", enc(room)));
    ctx.http.send(Request::post(path).token(&user.token).json(&body)).await
}

/// Waits until the peer was pushed an event of `room_id` that `want` accepts.
async fn wait_pushed(ctx: &Ctx, peer: &Peer, room_id: &str, what: &str, want: impl Fn(&Value) -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    loop {
        if pushed_events(ctx, peer, room_id)?.iter().any(|(_, p)| want(&p["event"])) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let got: Vec<Value> =
                pushed_events(ctx, peer, room_id)?.into_iter().map(|(_, p)| p["event"].clone()).collect();
            fail!("within {PUSH_WAIT:?} the peer was not pushed {what} (§11.6); it got {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn invite_reaches_the_invitees_server(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let owner = ctx.shared(0).await?;
    let room = create_v11(ctx, &owner, json!({"visibility": "private"})).await?;
    let (invitee, outsider) = (peer.user_id(&ctx.username("fi")), peer.user_id(&ctx.username("fo")));
    fed_join(ctx, &peer, &room, &invitee).await?.err(403, "not_invited")?;
    room_post(ctx, &owner, &room, "invite", json!({"user_id": invitee})).await?.ok(200, "empty")?;
    // The peer has no member in the room, yet it is pushed the invite…
    wait_pushed(ctx, &peer, &room, "the invite of its user", |e| s(e, "type") == "invite" && s(e, "target") == invitee)
        .await?;
    // …and nothing else of the private room.
    let pushed = pushed_events(ctx, &peer, &room)?;
    check!(
        pushed.iter().all(|(_, p)| s(&p["event"], "type") == "invite"),
        "a server with no member in a private room was pushed more than the invite: {pushed:?}"
    );
    // The invited user joins through the peer; another of its users may not.
    let answer = fed_join(ctx, &peer, &room, &invitee).await?.ok(200, "federation_join_response")?;
    check_eq!(s(&answer, "room_id"), room.as_str(), "room_id of the join answer");
    check!(answer.get("alias").is_none(), "a room made without an alias answers no alias: {answer}");
    fed_join(ctx, &peer, &room, &outsider).await?.err(403, "not_invited")?;
    fed_leave(ctx, &peer, &room, &invitee).await?.ok(200, "empty")?;
    Ok(())
}

async fn fed_reject(ctx: &Ctx, peer: &Peer, room_id: &str, user_id: &str) -> Result<Response> {
    let body = body_bytes(ctx, "federation_reject_request", &json!({ "room_id": room_id, "user_id": user_id }))?;
    ctx.send_patiently(signed(ctx, peer, Method::POST, &format!("{FEDERATION_PREFIX}/reject"), Some(body))).await
}

async fn remote_reject(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let owner = ctx.shared(0).await?;
    let room = create_v11(ctx, &owner, json!({"visibility": "private"})).await?;
    let invitee = peer.user_id(&ctx.username("fr"));
    fed_reject(ctx, &peer, &room, &invitee).await?.err(403, "not_invited")?;
    room_post(ctx, &owner, &room, "invite", json!({"user_id": invitee})).await?.ok(200, "empty")?;
    fed_reject(ctx, &peer, &room, &invitee).await?.ok(200, "empty")?;
    let events = ctx.all_events(&owner, &room).await?;
    let last = events.last().cloned().unwrap_or_default();
    check!(s(&last, "type") == "reject" && s(&last, "sender") == invitee, "the last event is not the reject: {last}");
    fed_join(ctx, &peer, &room, &invitee).await?.err(403, "not_invited")?;
    // The peer may decline only for its own users.
    let local = ctx.shared(1).await?;
    fed_reject(ctx, &peer, &room, &local.user_id).await?.err(403, "unknown_server")?;
    Ok(())
}

async fn kicked_or_banned_remote_user_refused(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let owner = ctx.shared(0).await?;
    let alias = ctx.room_name("fmod");
    let room = create_v11(ctx, &owner, json!({ "alias": alias })).await?;
    let (kicked, banned) = (peer.user_id(&ctx.username("fk")), peer.user_id(&ctx.username("fb")));
    for u in [&kicked, &banned] {
        fed_join(ctx, &peer, &room, u).await?.ok(200, "federation_join_response")?;
    }
    fed_send(ctx, &peer, &room, &ctx.txn(), &kicked, "before").await?.ok(200, "send_response")?;
    room_post(ctx, &owner, &room, "kick", json!({"user_id": kicked, "reason": "spam"})).await?.ok(200, "empty")?;
    fed_send(ctx, &peer, &room, &ctx.txn(), &kicked, "after the kick").await?.err(403, "not_member")?;
    room_post(ctx, &owner, &room, "ban", json!({"user_id": banned})).await?.ok(200, "empty")?;
    fed_send(ctx, &peer, &room, &ctx.txn(), &banned, "after the ban").await?.err(403, "not_member")?;
    fed_join(ctx, &peer, &room, &banned).await?.err(403, "banned")?;
    // The peer lost its last member with the ban, and is still pushed it.
    wait_pushed(ctx, &peer, &room, "the ban of its last member", |e| s(e, "type") == "ban" && s(e, "target") == banned)
        .await?;
    fed_events(ctx, &peer, &room, "after=0").await?.err(403, "not_member")?;
    // Nothing is pushed to it after that: a message sent now is not pushed,
    // though one sent once it has a member again is (a room's events are
    // pushed in seq order, so by then the first would have been).
    let hidden = ctx.send(&owner, &room, &ctx.txn(), "after the peer's last member").await?;
    let hidden_id = s(&hidden, "event_id").to_owned();
    // A kicked user may join again (a public room); a banned one may not.
    fed_join(ctx, &peer, &room, &kicked).await?.ok(200, "federation_join_response")?;
    let marker = ctx.send(&owner, &room, &ctx.txn(), "the peer has a member again").await?;
    let marker_id = s(&marker, "event_id").to_owned();
    wait_pushed(ctx, &peer, &room, "a message sent once it had a member again", |e| s(e, "event_id") == marker_id)
        .await?;
    let leaked = pushed_events(ctx, &peer, &room)?.into_iter().any(|(_, p)| s(&p["event"], "event_id") == hidden_id);
    check!(!leaked, "an event sent while the peer had no member in the room was pushed to it");
    fed_leave(ctx, &peer, &room, &kicked).await?.ok(200, "empty")?;
    Ok(())
}

// ---- §11.7: typing, read marks and presence ----

async fn fed_ephemeral(ctx: &Ctx, peer: &Peer, body: &Value) -> Result<Response> {
    let bytes = body_bytes(ctx, "federation_ephemeral", body)?;
    let path = format!("{FEDERATION_PREFIX}/ephemeral/{}", ctx.txn());
    ctx.send_patiently(signed(ctx, peer, Method::PUT, &path, Some(bytes))).await
}

/// The next frame of type `ty` that `want` accepts, others skipped.
async fn frame_where(ws: &mut crate::ws::Ws, ty: &str, want: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await? {
            crate::ws::Incoming::Frame(f) if s(&f, "type") == ty && want(&f) => return Ok(f),
            crate::ws::Incoming::Frame(_) => continue,
            other => fail!("waiting for a `{ty}` frame: {other:?}"),
        }
    }
}

async fn ephemeral_both_ways(ctx: &Ctx) -> Result<()> {
    let peer = peer(ctx).await?;
    let user = ctx.shared(0).await?;
    let room = ctx.room(&user, "feph").await?;
    let (a, _) = remote_member(ctx, &peer, &room, "fa").await?;
    let mut ws = ctx.ws(&user).await?;
    subscribe(&mut ws, &room.room_id, None).await?;
    ws.follow_live();

    // The peer's user is online and typing: this server's subscribers see it.
    let body = json!({
        "typing": [{"room_id": room.room_id, "user_id": a, "typing": true}],
        "presence": [{"user_id": a, "presence": "online"}],
    });
    fed_ephemeral(ctx, &peer, &body).await?.ok(200, "empty")?;
    frame_where(&mut ws, "presence", |f| s(f, "user_id") == a && s(f, "presence") == "online").await?;
    frame_where(&mut ws, "typing", |f| f["user_ids"].as_array().is_some_and(|u| u.iter().any(|x| x == a.as_str())))
        .await?;
    let v = ctx
        .http
        .send(Request::get(Ctx::api(&format!("/rooms/{}/members", enc(&room.room_id)))).token(&user.token))
        .await?
        .ok(200, "members_response")?;
    let listed = v["members"].as_array().into_iter().flatten().find(|m| s(m, "user_id") == a).cloned();
    check_eq!(listed.as_ref().map(|m| s(m, "presence")), Some("online"), "presence of the peer's member in members");

    // The peer may speak only for its own users.
    let body = json!({"presence": [{"user_id": user.user_id, "presence": "offline"}]});
    fed_ephemeral(ctx, &peer, &body).await?.err(403, "unknown_server")?;

    // A read mark of this server's user reaches the peer, which has a member in the room.
    let sent = ctx.send(&user, &room.room_id, &ctx.txn(), "read me").await?;
    let seq = n(&sent, "seq");
    let read = Request::post(Ctx::api(&format!("/rooms/{}/read", enc(&room.room_id))))
        .token(&user.token)
        .json(&json!({ "seq": seq }));
    ctx.http.send(read).await?.ok(200, "empty")?;
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    loop {
        let mut told = false;
        for req in peer.received() {
            if !req.path_and_query.starts_with(&format!("{FEDERATION_PREFIX}/ephemeral/")) {
                continue;
            }
            let what = format!("ephemeral push {}", req.path_and_query);
            let body: Value = serde_json::from_slice(&req.body)
                .map_err(|e| Failure::Check(format!("{what}: the body is not JSON ({e})")))?;
            ctx.schemas.check("federation_ephemeral", &what, &body)?;
            told |= body["receipts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| s(r, "room_id") == room.room_id && s(r, "user_id") == user.user_id && n(r, "seq") == seq);
        }
        if told {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            fail!("within {PUSH_WAIT:?} the peer was not told {}'s read mark {seq} (§11.7)", user.user_id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws.close().await;
    fed_leave(ctx, &peer, &room.room_id, &a).await?.ok(200, "empty")?;
    Ok(())
}

// ---- §11.5 ----

async fn join_unreachable_home_server(ctx: &Ctx) -> Result<()> {
    federation_key(ctx).await?;
    let user = ctx.shared(1).await?;
    let name = ctx.room_name("fgone");
    for room in [format!("#{name}:{NOWHERE}"), format!("!{name}:{NOWHERE}")] {
        ctx.join_raw(&user, &room)
            .await?
            .err(503, "home_server_unreachable")
            .map_err(|e| Failure::Check(format!("joining {room}, on a server that cannot be reached: {e}")))?;
    }
    let rooms = ctx.http.send(Request::get(Ctx::api("/rooms")).token(&user.token)).await?.ok(200, "rooms_response")?;
    check!(
        !rooms["rooms"].as_array().into_iter().flatten().any(|r| s(r, "room_id").ends_with(&format!(":{NOWHERE}"))),
        "a room on the unreachable server is listed as joined: {rooms}"
    );
    Ok(())
}

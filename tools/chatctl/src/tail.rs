//! `tail`: follows one room over the WebSocket and keeps following it. It
//! owns the cursor `{epoch, seq}` of the last event printed: every
//! (re)connection subscribes with `since` = that cursor, so after a drop the
//! server replays exactly what was missed, and a `gap` (events that will
//! never come) is printed rather than silently skipped. Reconnects back off
//! exponentially; Ctrl-C (or SIGTERM) closes the socket politely and exits 0.

use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::api::{ApiError, encode_segment, ws_url};
use crate::cli::TailArgs;
use crate::commands::Ctx;
use crate::failure::{Exit, Failure};
use crate::output::{RecentIds, notice, sanitize, stderr_is_terminal};
use crate::wire::{ClientFrame, Cursor, ErrorBody, MessagesResponse, ServerFrame, WS_SUBPROTOCOL};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `ready` after the upgrade.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// chatctl pings this often, so a dead connection is noticed even when the
/// room is quiet…
const PING_EVERY: Duration = Duration::from_secs(20);
/// …and gives up on a connection that said nothing for this long (the
/// server's own pings come every 30 s).
const SILENCE_LIMIT: Duration = Duration::from_secs(65);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const SUBSCRIBE_ID: &str = "tail";
const PING_ID: &str = "keepalive";

/// How following ended, when it ended well.
enum Stop {
    Interrupted,
    /// The user left the room (from another client).
    Left,
}

/// Why one connection was lost.
enum Lost {
    /// Reconnecting cannot help.
    Fatal(Failure),
    /// Reconnect (after `wait`, if the server asked for it).
    Retry { why: String, unreachable: bool, wait: Option<Duration> },
}

impl Lost {
    fn retry(why: impl Into<String>) -> Self {
        Lost::Retry { why: why.into(), unreachable: false, wait: None }
    }
}

/// What survives reconnections.
struct Follow {
    room: String,
    cursor: Option<Cursor>,
    /// A `caught_up` was seen on some connection: the room is being followed.
    following: bool,
    /// The current connection reached `caught_up`.
    reached_live: bool,
    /// A connection was lost since the last `caught_up`.
    interrupted: bool,
    /// What edits refer to.
    recent: RecentIds,
    /// `--activity`: print typing, presence and receipt frames.
    activity: bool,
    /// Who the connection is (from `ready`), to tell a kick or ban of
    /// oneself from a leave.
    me: Option<String>,
    /// Set when a kick or ban of `me` was printed: why the room ends.
    removed: Option<String>,
}

/// SIGINT and SIGTERM, either of which ends `tail` cleanly.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

pub async fn run(ctx: &Ctx, args: TailArgs) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let token = api.token().expect("authed clients have a token").to_owned();
    let mut state = Follow {
        room: args.room.clone(),
        cursor: None,
        following: false,
        reached_live: false,
        interrupted: false,
        recent: RecentIds::default(),
        activity: args.activity,
        me: None,
        removed: None,
    };

    // A starting point in the past needs the room's epoch, which only the
    // history endpoint tells outside a subscription.
    if let Some(seq) = args.since {
        let path = format!("/rooms/{}/messages?limit=1", encode_segment(&args.room));
        let page: MessagesResponse = api.get(&path).await.map_err(|e| ctx.fail(e))?;
        state.cursor = Some(Cursor { epoch: page.epoch, seq });
    } else if args.lines > 0 {
        let path = format!("/rooms/{}/messages?limit={}", encode_segment(&args.room), args.lines);
        let page: MessagesResponse = api.get(&path).await.map_err(|e| ctx.fail(e))?;
        for event in &page.events {
            let edit_of = state.recent.note(event);
            ctx.out.event(&page.room_id, &page.epoch, event, edit_of);
        }
        let seq = page.events.last().map_or(page.latest_seq, |e| e.seq);
        state.cursor = Some(Cursor { epoch: page.epoch, seq });
    }

    let mut signals = Signals::new()?;
    let mut backoff = BACKOFF_MIN;
    loop {
        let ended = connection(ctx, &token, &mut state, &mut signals).await;
        match ended {
            Ok(Stop::Interrupted) => {
                if let (Some(c), true) = (&state.cursor, stderr_is_terminal()) {
                    notice(&format!(
                        "stopped after seq {}; resume with: chatctl tail {} --since {}",
                        c.seq, state.room, c.seq
                    ));
                }
                return Ok(());
            }
            Ok(Stop::Left) => return Ok(()),
            Err(Lost::Fatal(f)) => return Err(f.into()),
            Err(Lost::Retry { why, unreachable, wait }) => {
                // A server that was never there is a mistake to report, not
                // an outage to wait out.
                if unreachable && !state.following {
                    return Err(Failure::new(Exit::Unreachable, format!("cannot reach {}: {why}", ctx.server())).into());
                }
                // A connection that got as far as following was healthy:
                // this drop starts a fresh series of attempts.
                if std::mem::take(&mut state.reached_live) {
                    backoff = BACKOFF_MIN;
                }
                let delay = wait.unwrap_or_else(|| jitter(backoff));
                let (what, then) =
                    if unreachable { ("cannot connect", "retrying") } else { ("connection lost", "reconnecting") };
                notice(&format!("{what} ({why}); {then} in {:.1} s", delay.as_secs_f32()));
                state.interrupted = true;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = signals.recv() => return Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One connection: upgrade, `ready`, `subscribe`, then events until the
/// connection ends or the user stops.
async fn connection(ctx: &Ctx, token: &str, state: &mut Follow, signals: &mut Signals) -> Result<Stop, Lost> {
    let mut req = ws_url(ctx.server())
        .into_client_request()
        .map_err(|e| Lost::Fatal(Failure::usage(format!("bad WebSocket URL: {e}"))))?;
    let headers = req.headers_mut();
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Lost::Fatal(Failure::local("the access token has characters a header cannot carry")))?;
    headers.insert(header::AUTHORIZATION, bearer);
    headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(WS_SUBPROTOCOL));
    headers.insert(header::USER_AGENT, HeaderValue::from_static(concat!("chatctl/", env!("CARGO_PKG_VERSION"))));
    // Server frames are small, but a message of 16 KiB of escaped text is
    // several times that as JSON.
    let config = WebSocketConfig::default().max_message_size(Some(4 << 20));
    let connect = tokio_tungstenite::connect_async_with_config(req, Some(config), true);

    let (mut ws, _) = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => match r {
            Err(_) => return Err(Lost::Retry { why: "timed out connecting".into(), unreachable: true, wait: None }),
            Ok(Err(e)) => return Err(upgrade_failure(e)),
            Ok(Ok(pair)) => pair,
        },
        _ = signals.recv() => return Ok(Stop::Interrupted),
    };

    // With the token on the upgrade the server says `ready` at once.
    let ready = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Ready { user_id }) => return Ok(user_id),
                    Ok(ServerFrame::Error { errcode, error, .. }) => {
                        return Err(Lost::Fatal(Failure::refused(&errcode, &error)));
                    }
                    _ => continue,
                },
                Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Lost::retry(e.to_string())),
                None => return Err(Lost::retry("the server closed the connection")),
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(READY_TIMEOUT, ready) => match r {
            Err(_) => return Err(Lost::retry("no `ready` from the server")),
            Ok(r) => state.me = r?,
        },
        _ = signals.recv() => return Ok(Stop::Interrupted),
    }

    let subscribe = ClientFrame::Subscribe { id: SUBSCRIBE_ID, room: &state.room, since: state.cursor.clone() };
    send_frame(&mut ws, &subscribe).await?;

    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = signals.recv() => {
                let bye = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(bye))).await;
                return Ok(Stop::Interrupted);
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    return Err(Lost::retry(format!("nothing from the server for {} s", SILENCE_LIMIT.as_secs())));
                }
                send_frame(&mut ws, &ClientFrame::Ping { id: PING_ID }).await?;
            }
            msg = ws.next() => match msg {
                None => return Err(Lost::retry("the server closed the connection")),
                Some(Err(e)) => return Err(Lost::retry(e.to_string())),
                Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    if let Some(stop) = handle(ctx, state, &text)? {
                        return Ok(stop);
                    }
                }
                Some(Ok(_)) => last_heard = Instant::now(),
            }
        }
    }
}

/// Acts on one server frame; `Some` ends following.
fn handle(ctx: &Ctx, state: &mut Follow, text: &str) -> Result<Option<Stop>, Lost> {
    let frame = match serde_json::from_str::<ServerFrame>(text) {
        Ok(f) => f,
        Err(e) => {
            notice(&format!("warning: ignoring a frame outside the protocol ({e})"));
            return Ok(None);
        }
    };
    match frame {
        ServerFrame::Event { room_id, epoch, event } => {
            match &state.cursor {
                // Already printed (a replay overlapping what we saw).
                Some(c) if c.epoch == epoch && event.seq <= c.seq => return Ok(None),
                Some(c) if c.epoch == epoch && event.seq > c.seq + 1 => notice(&format!(
                    "warning: events {}..{} are missing and the server did not report a gap",
                    c.seq + 1,
                    event.seq - 1
                )),
                Some(c) if c.epoch != epoch => {
                    notice("warning: the room's epoch changed and the server did not report a gap")
                }
                _ => {}
            }
            let edit_of = state.recent.note(&event);
            ctx.out.event(&room_id, &epoch, &event, edit_of);
            let target = event.extra.get("target").and_then(|t| t.as_str());
            if matches!(event.kind.as_str(), "kick" | "ban") && target.is_some() && target == state.me.as_deref() {
                let how = if event.kind == "kick" { "kicked from" } else { "banned from" };
                state.removed = Some(format!("you were {how} {} by {}", state.room, sanitize(&event.sender)));
            }
            state.cursor = Some(Cursor { epoch, seq: event.seq });
        }
        ServerFrame::CaughtUp { epoch, seq, room_id } => {
            match &state.cursor {
                // In the same epoch the cursor already says what was printed.
                Some(c) if c.epoch == epoch => {}
                _ => state.cursor = Some(Cursor { epoch, seq }),
            }
            if !state.following && !ctx.out.json && stderr_is_terminal() {
                notice(&format!("following {} ({room_id}); Ctrl-C to stop", state.room));
            }
            if std::mem::take(&mut state.interrupted) {
                let after = state.cursor.as_ref().map_or(0, |c| c.seq);
                notice(&format!("reconnected; resumed after seq {after}"));
            }
            state.following = true;
            state.reached_live = true;
        }
        ServerFrame::Gap { room_id, from, to, reason } => {
            ctx.out.gap(&room_id, &from, &to, &reason);
            state.cursor = Some(to);
        }
        ServerFrame::Unsubscribed { reason, .. } => {
            if reason.as_deref() == Some("left") {
                notice(&state.removed.take().unwrap_or_else(|| format!("you left {}", state.room)));
                return Ok(Some(Stop::Left));
            }
            return Err(Lost::retry("the server ended the subscription"));
        }
        ServerFrame::Error { id, errcode, error, retry_after_ms } => {
            if id.as_deref() == Some(SUBSCRIBE_ID) {
                return Err(subscribe_refused(errcode, error, retry_after_ms));
            }
            if id.as_deref() != Some(PING_ID) {
                notice(&format!("server error: {errcode}: {error}"));
            }
        }
        ServerFrame::Typing { .. } | ServerFrame::Presence { .. } | ServerFrame::Receipt { .. } => {
            if state.activity {
                ctx.out.activity(&frame, text);
            }
        }
        ServerFrame::Ready { .. } | ServerFrame::Other => {}
    }
    Ok(None)
}

/// A refused `subscribe`: wait out what is temporary, report the rest.
fn subscribe_refused(errcode: String, error: String, retry_after_ms: Option<u64>) -> Lost {
    match errcode.as_str() {
        "rate_limited" => Lost::Retry {
            why: format!("{errcode}: {error}"),
            unreachable: false,
            wait: Some(Duration::from_millis(retry_after_ms.unwrap_or(1000))),
        },
        "storage_unavailable" | "home_server_unreachable" | "internal" => Lost::retry(format!("{errcode}: {error}")),
        _ => Lost::Fatal(Failure::refused(&errcode, &error)),
    }
}

/// The server closed the socket; its close code says whether to come back.
fn closed(frame: Option<CloseFrame>) -> Lost {
    let Some(frame) = frame else {
        return Lost::retry("the server closed the connection");
    };
    let code = u16::from(frame.code);
    let reason = if frame.reason.is_empty() { String::new() } else { format!(": {}", frame.reason) };
    match code {
        4001 => Lost::Fatal(Failure::new(
            Exit::NotLoggedIn,
            format!("the server ended the session (close 4001{reason}); log in again"),
        )),
        // Frames chatctl sent were refused: retrying would repeat them.
        1003 | 1007 | 1009 => {
            Lost::Fatal(Failure::new(Exit::Refused, format!("the server refused a frame (close {code}{reason})")))
        }
        _ => Lost::retry(format!("closed by the server, code {code}{reason}")),
    }
}

/// A failed upgrade: a refused token or request is final, an absent server
/// or an overloaded one is worth waiting for.
fn upgrade_failure(e: tungstenite::Error) -> Lost {
    match e {
        tungstenite::Error::Io(io) => {
            let unreachable = matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::NotFound
            );
            let why = io.to_string();
            let why = why.find(" (os error").map_or(why.clone(), |i| why[..i].to_owned());
            Lost::Retry { why, unreachable, wait: None }
        }
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let body = resp.body().as_deref().and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
            match body {
                Some(body) => {
                    let err = ApiError::Refused { body: body.clone() };
                    match body.errcode.as_str() {
                        "rate_limited" => Lost::Retry {
                            why: format!("{}: {}", body.errcode, body.error),
                            unreachable: false,
                            wait: Some(Duration::from_millis(body.retry_after_ms.unwrap_or(1000))),
                        },
                        "storage_unavailable" | "internal" => Lost::retry(format!("{}: {}", body.errcode, body.error)),
                        _ => Lost::Fatal(err.into_failure("")),
                    }
                }
                None if status.is_server_error() => Lost::retry(format!("HTTP {status} on the WebSocket upgrade")),
                None => Lost::Fatal(Failure::new(
                    Exit::Unreachable,
                    format!("the server refused the WebSocket upgrade with HTTP {status}"),
                )),
            }
        }
        other => Lost::retry(other.to_string()),
    }
}

async fn send_frame<S>(ws: &mut S, frame: &ClientFrame<'_>) -> Result<(), Lost>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let text = serde_json::to_string(frame).expect("client frames serialize");
    ws.send(Message::text(text)).await.map_err(|e| Lost::retry(e.to_string()))
}

/// Up to a quarter more, so many clients cut off together do not all come
/// back in the same instant.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    let spread = (d.as_millis() as u64 / 4).max(1);
    d + Duration::from_millis(u64::from(nanos) % spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: u16) -> Option<CloseFrame> {
        Some(CloseFrame { code: CloseCode::from(code), reason: "".into() })
    }

    #[test]
    fn close_codes_decide_between_reconnecting_and_stopping() {
        assert!(matches!(closed(close(4001)), Lost::Fatal(f) if f.exit == Exit::NotLoggedIn));
        assert!(matches!(closed(close(1009)), Lost::Fatal(_)));
        for code in [1000, 1001, 1011, 4003, 4008] {
            assert!(matches!(closed(close(code)), Lost::Retry { .. }), "{code}");
        }
        assert!(matches!(closed(None), Lost::Retry { .. }));
    }

    #[test]
    fn refused_subscriptions() {
        assert!(
            matches!(subscribe_refused("not_member".into(), "x".into(), None), Lost::Fatal(f) if f.exit == Exit::Refused)
        );
        assert!(matches!(
            subscribe_refused("rate_limited".into(), "x".into(), Some(1500)),
            Lost::Retry { wait: Some(w), .. } if w == Duration::from_millis(1500)
        ));
        assert!(matches!(subscribe_refused("storage_unavailable".into(), "x".into(), None), Lost::Retry { .. }));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(4));
            assert!(j >= Duration::from_secs(4) && j < Duration::from_secs(5), "{j:?}");
        }
    }
}

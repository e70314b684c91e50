//! The request/answer commands (everything but `tail` and `completions`):
//! each turns its arguments into protocol requests, and the answers into
//! output lines. Which server and token to use was decided before (see
//! `session::Target`); this module decides what each command prints and
//! when the stored session is written or forgotten.

use std::io::{self, BufRead, Read};
use std::path::PathBuf;

use http::Method;
use serde_json::{Value, json};

use crate::api::{Api, ApiError, Retry, encode_segment};
use crate::cli::{Command, HistoryArgs, LoginArgs, RedactArgs, RegisterArgs};
use crate::failure::{Exit, Failure};
use crate::output::{Out, RecentIds, notice, sanitize, stderr_is_terminal};
use crate::rooms::Moderation;
use crate::session::{self, Session, Target, TokenSource};
use crate::txn::{Journal, Pending};
use crate::wire::{
    LoginRequest, LoginResponse, MembersResponse, MessagesResponse, RedactRequest, RegisterRequest, RegisterResponse,
    RoomItem, RoomSummary, RoomsResponse, SendRequest, SendResponse, WhoamiResponse,
};

/// What every command gets: where to print, where the config lives and
/// which server and token to use.
pub struct Ctx {
    pub out: Out,
    pub config_dir: Result<PathBuf, Failure>,
    pub target: Target,
}

impl Ctx {
    pub fn config_dir(&self) -> Result<PathBuf, Failure> {
        match &self.config_dir {
            Ok(d) => Ok(d.clone()),
            Err(f) => Err(Failure::new(f.exit, f.message.clone())),
        }
    }

    pub fn server(&self) -> &str {
        &self.target.server
    }

    fn anonymous(&self) -> Api {
        Api::new(self.server(), None)
    }

    /// A client with the session's token; "not logged in" (exit 3) without one.
    pub fn authed(&self) -> Result<Api, Failure> {
        Ok(Api::new(self.server(), Some(self.target.require_token()?.to_owned())))
    }

    pub fn fail(&self, e: ApiError) -> anyhow::Error {
        e.into_failure(self.server()).into()
    }
}

pub async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Register(args) => register(ctx, args).await,
        Command::Login(args) => {
            let password = read_password(args.password_stdin, false)?;
            login(ctx, &args, &password).await
        }
        Command::Logout { all } => logout(ctx, all).await,
        Command::Whoami => whoami(ctx).await,
        Command::Rooms => rooms(ctx).await,
        Command::Join { room } => join(ctx, &room).await,
        Command::Leave { room } => leave(ctx, &room).await,
        Command::Members { room } => members(ctx, &room).await,
        Command::Create(args) => crate::rooms::create(ctx, args).await,
        Command::Room(args) => crate::rooms::update(ctx, args).await,
        Command::Invite { room, user } => crate::rooms::invite(ctx, &room, &user).await,
        Command::Reject { room } => crate::rooms::reject(ctx, &room).await,
        Command::Kick(args) => crate::rooms::moderate(ctx, Moderation::Kick, args).await,
        Command::Ban(args) => crate::rooms::moderate(ctx, Moderation::Ban, args).await,
        Command::Unban(args) => crate::rooms::moderate(ctx, Moderation::Unban, args).await,
        Command::Role { room, user, role } => crate::rooms::role(ctx, &room, &user, role).await,
        Command::Dm { user } => crate::rooms::dm(ctx, &user).await,
        Command::Read { room, seq } => crate::rooms::read(ctx, &room, seq).await,
        Command::Send(args) => send(ctx, &args.room, args.text, args.txn_id, None).await,
        Command::Edit(args) => send(ctx, &args.room, args.text, args.txn_id, Some(&args.event_id)).await,
        Command::Redact(args) => redact(ctx, args).await,
        Command::History(args) => history(ctx, args).await,
        Command::Tail(args) => crate::tail::run(ctx, args).await,
        Command::Completions { .. } => unreachable!("handled before the runtime starts"),
    }
}

async fn register(ctx: &Ctx, args: RegisterArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin, true)?;
    let req = RegisterRequest { username: &args.username, password: &password };
    let resp: RegisterResponse = ctx
        .anonymous()
        .call(Method::POST, "/register", Some(&req), Retry::NOT_IDEMPOTENT)
        .await
        .map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("registered {}", resp.user_id));
    ctx.out.json(&json!({"user_id": resp.user_id}));
    if args.login {
        let login_args = LoginArgs { username: args.username, password_stdin: true, device_name: args.device_name };
        login(ctx, &login_args, &password).await?;
    }
    Ok(())
}

async fn login(ctx: &Ctx, args: &LoginArgs, password: &str) -> anyhow::Result<()> {
    // Fail before the server creates a device whose token we could not keep.
    let dir = ctx.config_dir()?;
    let req = LoginRequest { username: &args.username, password, device_name: &args.device_name };
    let resp: LoginResponse = ctx
        .anonymous()
        .call(Method::POST, "/login", Some(&req), Retry::NOT_IDEMPOTENT)
        .await
        .map_err(|e| ctx.fail(e))?;
    let session = Session {
        server: ctx.server().to_owned(),
        user_id: resp.user_id,
        device_id: resp.device_id,
        token: resp.access_token,
    };
    if let Err(e) = session::save(&dir, &session) {
        // A token nobody holds should not stay valid on the server.
        let api = Api::new(ctx.server(), Some(session.token.clone()));
        let _ = api.call::<Value, ()>(Method::POST, "/logout", None, Retry::NOT_IDEMPOTENT).await;
        return Err(e.context("the login worked but the session could not be stored (the new token was revoked)"));
    }
    ctx.out.human(&format!("logged in as {} on {} (device {})", session.user_id, session.server, session.device_id));
    ctx.out.json(&json!({"server": session.server, "user_id": session.user_id, "device_id": session.device_id}));
    Ok(())
}

async fn logout(ctx: &Ctx, all: bool) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let path = if all { "/logout/all" } else { "/logout" };
    match api.call::<Value, ()>(Method::POST, path, None, Retry::NOT_IDEMPOTENT).await {
        Ok(_) => {}
        // The token is dead either way, which is what logout is for.
        Err(e) if e.errcode() == Some("unknown_token") => notice("the server had already ended this session"),
        // The token may still be valid: keep it, so the logout can be retried.
        Err(e) => return Err(ctx.fail(e)),
    }
    let used_stored = matches!(&ctx.target.token, Some((_, TokenSource::File)))
        || ctx.target.session.as_ref().map(|s| Some(s.token.as_str()) == api.token()).unwrap_or(false);
    if used_stored {
        session::remove(&ctx.config_dir()?)?;
    }
    ctx.out.human(if all { "logged out on every device" } else { "logged out" });
    ctx.out.json(&json!({"logged_out": true, "all": all}));
    Ok(())
}

async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let resp: WhoamiResponse = ctx.authed()?.get("/account/whoami").await.map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("{} (device {}) on {}", resp.user_id, resp.device_id, ctx.server()));
    ctx.out.json(&json!({"server": ctx.server(), "user_id": resp.user_id, "device_id": resp.device_id}));
    Ok(())
}

/// One line per room: alias (`-` for a room without one), id, your role
/// (`invited` for a pending invite), unread count (`99+` for the server's
/// "100 or more"; `-` for an invite) and the room's name when it has one.
async fn rooms(ctx: &Ctx) -> anyhow::Result<()> {
    let resp: RoomsResponse = ctx.authed()?.get("/rooms").await.map_err(|e| ctx.fail(e))?;
    for room in &resp.rooms {
        ctx.out.human(&room_line(room));
        ctx.out.json(room);
    }
    if resp.rooms.is_empty() && !ctx.out.json && stderr_is_terminal() {
        notice("no rooms yet; try `chatctl join lobby`");
    }
    Ok(())
}

fn room_line(room: &RoomItem) -> String {
    let alias = room.alias.as_deref().map_or_else(|| "-".to_owned(), sanitize);
    let mut cols = vec![alias, sanitize(&room.room_id)];
    if room.is_invite() {
        cols.extend(["invited".to_owned(), "-".to_owned()]);
    } else {
        cols.push(room.role.as_deref().map_or_else(|| "-".to_owned(), sanitize));
        cols.push(match room.unread {
            Some(n) if n >= 100 => "99+".to_owned(),
            Some(n) => n.to_string(),
            None => "-".to_owned(),
        });
    }
    if let Some(name) = &room.name {
        cols.push(sanitize(name).replace(['\n', '\t'], " "));
    }
    cols.join("\t")
}

async fn join(ctx: &Ctx, room: &str) -> anyhow::Result<()> {
    let path = format!("/rooms/{}/join", encode_segment(room));
    // Joining twice changes nothing, so a lost answer may be retried.
    let resp: RoomSummary =
        ctx.authed()?.call(Method::POST, &path, None::<&()>, Retry::IDEMPOTENT).await.map_err(|e| ctx.fail(e))?;
    match &resp.alias {
        Some(alias) => ctx.out.human(&format!("joined {alias} ({})", resp.room_id)),
        None => ctx.out.human(&format!("joined {}", resp.room_id)),
    }
    ctx.out.json(&resp);
    Ok(())
}

async fn leave(ctx: &Ctx, room: &str) -> anyhow::Result<()> {
    let path = format!("/rooms/{}/leave", encode_segment(room));
    // Not retried after a lost answer: a second leave would say `not_member`.
    let _: Value =
        ctx.authed()?.call(Method::POST, &path, None::<&()>, Retry::NOT_IDEMPOTENT).await.map_err(|e| ctx.fail(e))?;
    ctx.out.human(&format!("left {room}"));
    ctx.out.json(&json!({"room": room, "left": true}));
    Ok(())
}

async fn members(ctx: &Ctx, room: &str) -> anyhow::Result<()> {
    let path = format!("/rooms/{}/members", encode_segment(room));
    let resp: MembersResponse = ctx.authed()?.get(&path).await.map_err(|e| ctx.fail(e))?;
    for m in &resp.members {
        // A v1 server gives neither; a remote member has no presence.
        let mut line = m.user_id.clone();
        for col in [&m.role, &m.presence].into_iter().flatten() {
            line.push('\t');
            line.push_str(&sanitize(col));
        }
        ctx.out.human(&line);
        let mut obj = json!({"room_id": resp.room_id, "user_id": m.user_id});
        for (k, v) in [("role", &m.role), ("presence", &m.presence)] {
            if let Some(v) = v {
                obj[k] = Value::String(v.clone());
            }
        }
        ctx.out.json(&obj);
    }
    Ok(())
}

/// `send`, and `edit` (a send with `replaces`): both carry a txn id kept in
/// the journal, so running the command again never stores it twice.
async fn send(
    ctx: &Ctx,
    room: &str,
    text: String,
    txn_id: Option<String>,
    replaces: Option<&str>,
) -> anyhow::Result<()> {
    let body = if text == "-" { read_message_stdin()? } else { text };
    if body.is_empty() {
        return Err(Failure::usage("nothing to send: the message is empty").into());
    }
    let api = ctx.authed()?;
    let token = api.token().expect("authed clients have a token").to_owned();
    // An edit's journal key differs from a message with the same text.
    let journal_room = match replaces {
        Some(id) => format!("{room}\u{0}replaces {id}"),
        None => room.to_owned(),
    };
    let (pending, txn_id) =
        journaled_txn(ctx, &token, &journal_room, &body, txn_id, "an earlier send of this message")?;
    let path = format!("/rooms/{}/send/{}", encode_segment(room), encode_segment(&txn_id));
    let req = SendRequest { body: &body, replaces };
    let result = api.call::<SendResponse, _>(Method::PUT, &path, Some(&req), Retry::SEND).await;
    match result {
        Ok(resp) => {
            if let Some(p) = pending {
                p.settle()?;
            }
            let done = if replaces.is_some() { "edited" } else { "sent" };
            ctx.out.human(&format!("{done} (seq {}, {})", resp.seq, resp.event_id));
            let mut obj = json!({"event_id": resp.event_id, "seq": resp.seq, "txn_id": txn_id});
            if let Some(id) = replaces {
                obj["replaces"] = Value::String(id.to_owned());
            }
            ctx.out.json(&obj);
            Ok(())
        }
        Err(e) => Err(journaled_failure(
            ctx,
            e,
            pending,
            " (the message may not have been sent; run the same command again to retry: it will not be sent twice)",
        )?),
    }
}

/// `redact`: like `send`, its txn id is kept in the journal until the
/// server answered, so running it again never appends a second deletion.
async fn redact(ctx: &Ctx, args: RedactArgs) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let token = api.token().expect("authed clients have a token").to_owned();
    let journal_room = format!("{}\u{0}redact {}", args.room, args.event_id);
    let reason = args.reason.as_deref();
    let given = args.txn_id.clone();
    let (pending, txn_id) =
        journaled_txn(ctx, &token, &journal_room, reason.unwrap_or(""), given, "an earlier deletion")?;
    let path = format!(
        "/rooms/{}/redact/{}/{}",
        encode_segment(&args.room),
        encode_segment(&args.event_id),
        encode_segment(&txn_id)
    );
    let result = api.call::<SendResponse, _>(Method::PUT, &path, Some(&RedactRequest { reason }), Retry::SEND).await;
    match result {
        Ok(resp) => {
            if let Some(p) = pending {
                p.settle()?;
            }
            ctx.out.human(&format!("deleted {} (seq {}, {})", args.event_id, resp.seq, resp.event_id));
            ctx.out
                .json(&json!({"event_id": resp.event_id, "seq": resp.seq, "txn_id": txn_id, "redacts": args.event_id}));
            Ok(())
        }
        Err(e) => Err(journaled_failure(
            ctx,
            e,
            pending,
            " (the message may not be deleted yet; run the same command again to finish: it will not be done twice)",
        )?),
    }
}

/// The txn id of a journaled request (`send`, `redact`): the one given, or
/// the journal's for `key` and `content`, which is an earlier attempt's
/// when its outcome was unknown (said on stderr as `what`'s retry).
fn journaled_txn(
    ctx: &Ctx,
    token: &str,
    key: &str,
    content: &str,
    given: Option<String>,
    what: &str,
) -> anyhow::Result<(Option<Pending>, String)> {
    if let Some(id) = given {
        return Ok((None, id));
    }
    let pending = Journal::new(&ctx.config_dir()?).begin(token, key, content)?;
    let txn_id = pending.txn_id.clone();
    if pending.reused {
        notice(&format!("retrying {what} whose outcome was unknown (txn {txn_id})"));
    }
    Ok((Some(pending), txn_id))
}

/// A journaled request's failure. A plain refusal is an answer: nothing
/// was stored and a later identical request is a new attempt. Anything
/// else may have been stored, so the txn id is kept for the user's retry
/// (`retry_hint` says so).
fn journaled_failure(
    ctx: &Ctx,
    e: ApiError,
    pending: Option<Pending>,
    retry_hint: &str,
) -> anyhow::Result<anyhow::Error> {
    let settled = matches!(e, ApiError::Refused { .. }) && !is_retryable_refusal(&e);
    let mut failure = e.into_failure(ctx.server());
    match pending {
        Some(p) if settled => p.settle()?,
        Some(p) => {
            p.keep();
            failure.message.push_str(retry_hint);
        }
        None => {}
    }
    Ok(failure.into())
}

fn is_retryable_refusal(e: &ApiError) -> bool {
    matches!(
        e.errcode(),
        Some("rate_limited" | "storage_unavailable" | "home_server_unreachable" | "request_timeout" | "internal")
    )
}

async fn history(ctx: &Ctx, args: HistoryArgs) -> anyhow::Result<()> {
    let mut path = format!("/rooms/{}/messages?limit={}", encode_segment(&args.room), args.limit);
    if let Some(b) = args.before {
        path.push_str(&format!("&before={b}"));
    }
    if let Some(a) = args.after {
        path.push_str(&format!("&after={a}"));
    }
    let page: MessagesResponse = ctx.authed()?.get(&path).await.map_err(|e| ctx.fail(e))?;
    let mut recent = RecentIds::default();
    for event in &page.events {
        let edit_of = recent.note(event);
        ctx.out.event(&page.room_id, &page.epoch, event, edit_of);
    }
    if !ctx.out.json && stderr_is_terminal() {
        match page.events.first() {
            Some(first) if first.seq > page.earliest_seq => {
                notice(&format!("older messages: chatctl history {} --before {}", args.room, first.seq));
            }
            None => notice("no messages here"),
            _ => {}
        }
    }
    Ok(())
}

/// The password from the terminal (hidden), or from the first line of
/// standard input for scripts.
fn read_password(from_stdin: bool, confirm: bool) -> Result<String, Failure> {
    if from_stdin {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::local(format!("reading the password from standard input: {e}")))?;
        let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
        if password.is_empty() {
            return Err(Failure::usage("no password on standard input"));
        }
        return Ok(password.to_owned());
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::new(Exit::Usage, format!("cannot ask for a password ({e}); use --password-stdin")))
    };
    let password = ask("Password: ")?;
    if password.is_empty() {
        return Err(Failure::usage("the password is empty"));
    }
    if confirm && ask("Password (again): ")? != password {
        return Err(Failure::usage("the passwords do not match"));
    }
    Ok(password)
}

/// `send ROOM -`: the whole of standard input, minus the one newline that
/// `echo` and editors add.
fn read_message_stdin() -> Result<String, Failure> {
    let mut body = String::new();
    io::stdin()
        .read_to_string(&mut body)
        .map_err(|e| Failure::local(format!("reading the message from standard input: {e}")))?;
    if body.ends_with('\n') {
        body.pop();
        if body.ends_with('\r') {
            body.pop();
        }
    }
    Ok(body)
}

//! End-to-end: the built `chatctl` binary against a real Parlor server on
//! 127.0.0.1, each user with a temporary config directory. These tests own
//! the user-visible contract of chatctl: output lines, exit codes, the
//! session file, idempotent retries and live following.

mod support;

use std::time::Duration;

use support::{PASSWORD, Proxy, Server, User, dead_port, json_lines, mode};

const LINE_WAIT: Duration = Duration::from_secs(20);

/// Registers and logs in `name`.
fn user(name: &str, server: &Server) -> User {
    let u = User::new(name, server);
    u.register().ok();
    u.login().ok();
    u
}

/// The room's last seq, from `history --json`.
fn last_seq(u: &User, room: &str) -> u64 {
    let out = u.run(&["--json", "history", room, "--limit", "1"]).ok();
    json_lines(&out).last().map_or(0, |e| e["seq"].as_u64().expect("seq"))
}

/// The bodies of a room's messages, oldest first.
fn bodies(u: &User, room: &str) -> Vec<String> {
    let out = u.run(&["--json", "history", room, "--limit", "1000"]).ok();
    json_lines(&out)
        .into_iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["body"].as_str().expect("body").to_owned())
        .collect()
}

#[test]
fn the_whole_flow_from_register_to_logout() {
    let server = Server::start();
    let host = server.name();
    let ann = User::new("Ann", &server);

    // Register, with the username folded to lower case.
    let out = ann.register().ok();
    assert_eq!(out.trim(), format!("registered @ann:{host}"));

    // Login stores a private session file.
    let out = ann.login().ok();
    assert!(out.starts_with(&format!("logged in as @ann:{host} on {}", server.url)), "{out}");
    let file = ann.session_file();
    assert_eq!(mode(&file), 0o600, "the token file must be private");
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(session["server"], server.url.as_str());
    assert_eq!(session["user_id"], format!("@ann:{host}"));
    assert!(session["device_id"].is_string());
    assert_eq!(session["token"].as_str().unwrap().len(), 43);

    let out = ann.run(&["whoami"]).ok();
    assert!(out.starts_with(&format!("@ann:{host} (device ")), "{out}");

    // Bob registers and logs in in one go, from another terminal.
    let bob = User::new("bob", &server);
    let out =
        bob.run_stdin(&["--json", "register", "bob", "--password-stdin", "--login"], &format!("{PASSWORD}\n")).ok();
    let lines = json_lines(&out);
    assert_eq!(lines[0]["user_id"], format!("@bob:{host}"));
    assert_eq!(lines[1]["user_id"], format!("@bob:{host}"));
    assert_eq!(lines[1]["server"], server.url.as_str());
    assert!(lines[1].get("token").is_none() && lines[1].get("access_token").is_none(), "no token on stdout");

    // Both join the lobby.
    let out = ann.run(&["join", "lobby"]).ok();
    assert!(out.starts_with(&format!("joined #lobby:{host} (!")), "{out}");
    let out = bob.run(&["--json", "join", &format!("#lobby:{host}")]).ok();
    let joined = &json_lines(&out)[0];
    assert_eq!(joined["alias"], format!("#lobby:{host}"));
    let room_id = joined["room_id"].as_str().unwrap().to_owned();

    // A room made by a v1 join has no owner: everyone is a member.
    let out = ann.run(&["rooms"]).ok();
    assert_eq!(out, format!("#lobby:{host}\t{room_id}\tmember\t0\n"));
    let out = ann.run(&["members", "lobby"]).ok();
    assert_eq!(out, format!("@ann:{host}\tmember\toffline\n@bob:{host}\tmember\toffline\n"));

    // Send, from an argument and from standard input.
    let out = ann.run(&["send", "lobby", "hello bob"]).ok();
    assert!(out.starts_with("sent (seq "), "{out}");
    ann.run_stdin(&["send", "lobby", "-"], "line one\nline two\n").ok();

    // History: time, sender and text.
    let out = bob.run(&["history", "lobby"]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}"); // 2 joins, 2 messages, one of them on two lines
    assert!(lines[0].ends_with(&format!("* @ann:{host} joined")), "{out}");
    assert!(lines[1].ends_with(&format!("* @bob:{host} joined")), "{out}");
    assert!(lines[2].ends_with(&format!(" <@ann:{host}> hello bob")), "{out}");
    assert!(lines[3].ends_with(&format!(" <@ann:{host}> line one")), "{out}");
    assert_eq!(lines[4], "    line two");
    let time = &lines[2][..19];
    assert!(
        time.as_bytes()[4] == b'-' && time.as_bytes()[10] == b' ' && time.as_bytes()[13] == b':',
        "{time:?} is not a date and time"
    );

    // --json history: one event object per line with room and epoch.
    let out = bob.run(&["--json", "history", "lobby", "--limit", "2"]).ok();
    let events = json_lines(&out);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["body"], "hello bob");
    assert_eq!(events[1]["body"], "line one\nline two");
    assert_eq!(events[0]["room_id"], room_id.as_str());
    assert!(events[0]["epoch"].is_string());
    let seq = events[0]["seq"].as_u64().unwrap();
    assert_eq!(events[1]["seq"].as_u64().unwrap(), seq + 1);

    // --before and --after page through it.
    let out = bob.run(&["--json", "history", "lobby", "--before", &seq.to_string()]).ok();
    assert_eq!(json_lines(&out).len() as u64, seq - 1);
    let out = bob.run(&["--json", "history", "lobby", "--after", &seq.to_string()]).ok();
    assert_eq!(json_lines(&out)[0]["body"], "line one\nline two");

    // Ann follows the room from where she is; Bob talks; Ann sees it live.
    let mut tail = ann.tail("lobby", &["--since", &(seq + 1).to_string()]);
    bob.run(&["send", "lobby", "hi ann"]).ok();
    let line = tail.next_line(LINE_WAIT);
    assert!(line.ends_with(&format!(" <@bob:{host}> hi ann")), "{line}");
    bob.run(&["send", "lobby", "still there?"]).ok();
    let line = tail.next_line(LINE_WAIT);
    assert!(line.ends_with(&format!(" <@bob:{host}> still there?")), "{line}");
    // Ctrl-C ends it cleanly.
    assert_eq!(tail.interrupt(), 0);

    // Leave, then the room is closed to Bob.
    assert_eq!(bob.run(&["leave", "lobby"]).ok(), "left lobby\n");
    bob.run(&["send", "lobby", "hello?"]).fails(1, "chatctl: not_member: ");
    assert_eq!(bob.run(&["rooms"]).ok(), "");

    // Logout revokes the token and forgets the session.
    let token = ann.token();
    assert_eq!(ann.run(&["logout"]).ok(), "logged out\n");
    assert!(!ann.session_file().exists());
    ann.run(&["whoami"]).fails(3, "not logged in");
    let mut cmd = ann.command(&["whoami"]);
    cmd.env("CHATCTL_TOKEN", &token);
    ann.run_with(cmd, None).fails(3, "chatctl: unknown_token: ");
}

#[test]
fn tail_starts_live_prints_recent_lines_and_json() {
    let server = Server::start();
    let host = server.name();
    let ann = user("ann", &server);
    let bob = user("bob", &server);
    ann.run(&["join", "den"]).ok();
    bob.run(&["join", "den"]).ok();
    bob.run(&["send", "den", "before tail"]).ok();

    // Without --since it is live from now: keep talking until a line shows,
    // then every later message must come, in order, exactly once.
    let mut tail = ann.tail("den", &[]);
    let mut probe = 0;
    let first = loop {
        probe += 1;
        assert!(probe < 40, "tail never went live; stderr: {}", tail.stderr());
        bob.run(&["send", "den", &format!("probe {probe}")]).ok();
        if let Some(line) = tail.lines_within(Duration::from_millis(500)).into_iter().next() {
            break line;
        }
    };
    assert!(first.contains("<@bob:"), "{first}");
    assert!(!tail.seen.iter().any(|l| l.contains("before tail")), "{:?}", tail.seen);
    for i in 0..3 {
        bob.run(&["send", "den", &format!("live {i}")]).ok();
    }
    let mut rest = Vec::new();
    while rest.iter().filter(|l: &&String| l.contains("live ")).count() < 3 {
        rest.push(tail.next_line(LINE_WAIT));
    }
    let live: Vec<_> = rest.iter().filter(|l| l.contains("live ")).collect();
    assert!(live[0].ends_with("live 0") && live[1].ends_with("live 1") && live[2].ends_with("live 2"), "{rest:?}");
    assert_eq!(tail.interrupt(), 0);

    // -n shows recent history first, then follows, with JSON events shaped
    // like history's.
    let mut tail = support::Tail::spawn_command(ann.command(&["--json", "tail", "den", "-n", "1"]));
    let last = serde_json::from_str::<serde_json::Value>(&tail.next_line(LINE_WAIT)).unwrap();
    assert_eq!(last["body"], "live 2");
    assert_eq!(last["sender"], format!("@bob:{host}"));
    bob.run(&["send", "den", "after json tail"]).ok();
    let ev = serde_json::from_str::<serde_json::Value>(&tail.next_line(LINE_WAIT)).unwrap();
    assert_eq!(ev["type"], "message");
    assert_eq!(ev["body"], "after json tail");
    assert_eq!(ev["seq"].as_u64().unwrap(), last["seq"].as_u64().unwrap() + 1);
    assert!(ev["room_id"].is_string() && ev["epoch"].is_string() && ev["ts"].is_u64());
    assert_eq!(tail.interrupt(), 0);
}

#[test]
fn tail_reconnects_after_a_server_restart_and_resumes_without_gaps_or_repeats() {
    let mut server = Server::start();
    let ann = user("ann", &server);
    let bob = user("bob", &server);
    ann.run(&["join", "lobby"]).ok();
    bob.run(&["join", "lobby"]).ok();
    let since = last_seq(&ann, "lobby");

    let mut tail = ann.tail("lobby", &["--since", &since.to_string()]);
    bob.run(&["send", "lobby", "m1"]).ok();
    assert!(tail.next_line(LINE_WAIT).ends_with("> m1"));

    // The server goes away and comes back; meanwhile (before tail is back)
    // a message is sent, and another one after.
    server.restart();
    bob.run(&["send", "lobby", "m2"]).ok();
    assert!(tail.next_line(LINE_WAIT).ends_with("> m2"), "{:?} {}", tail.seen, tail.stderr());
    bob.run(&["send", "lobby", "m3"]).ok();
    assert!(tail.next_line(LINE_WAIT).ends_with("> m3"), "{:?}", tail.seen);
    // Nothing printed twice.
    assert!(tail.lines_within(Duration::from_millis(500)).is_empty(), "{:?}", tail.seen);
    assert!(tail.stderr().contains("reconnecting"), "{}", tail.stderr());
    assert_eq!(tail.interrupt(), 0);
}

#[test]
fn tail_says_so_when_the_server_reports_a_gap() {
    let server = Server::start_with(|cfg| cfg.retention = Some(3));
    let ann = user("ann", &server);
    ann.run(&["join", "lobby"]).ok();
    for i in 1..=6 {
        ann.run(&["send", "lobby", &format!("m{i}")]).ok();
    }
    // Seq 1 is the join, m1..m6 are 2..7; only 5..7 are kept.
    let mut tail = ann.tail("lobby", &["--since", "1"]);
    let gap = tail.next_line(LINE_WAIT);
    assert!(gap.starts_with("-- gap (trimmed): events 2..4 are no longer available"), "{gap}");
    for m in ["m4", "m5", "m6"] {
        assert!(tail.next_line(LINE_WAIT).ends_with(&format!("> {m}")), "{:?}", tail.seen);
    }
    assert_eq!(tail.interrupt(), 0);

    let mut tail = support::Tail::spawn_command(ann.command(&["--json", "tail", "lobby", "--since", "1"]));
    let gap: serde_json::Value = serde_json::from_str(&tail.next_line(LINE_WAIT)).unwrap();
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["reason"], "trimmed");
    assert_eq!(gap["from"]["seq"], 1);
    assert_eq!(gap["to"]["seq"], 4);
    let next: serde_json::Value = serde_json::from_str(&tail.next_line(LINE_WAIT)).unwrap();
    assert_eq!(next["seq"], 5);
    assert_eq!(tail.interrupt(), 0);
}

#[test]
fn a_send_retried_after_a_lost_answer_is_stored_once() {
    let server = Server::start();
    let ann = user("ann", &server);
    ann.run(&["join", "lobby"]).ok();
    let proxy = Proxy::start(server.port);
    let via_proxy = |args: &[&str]| {
        let mut all = vec!["--server", proxy.url.as_str()];
        all.extend_from_slice(args);
        let mut cmd = ann.command(&all);
        // The session is for the direct URL; the token works through the proxy.
        cmd.env("CHATCTL_TOKEN", ann.token());
        ann.run_with(cmd, None)
    };

    // The first answer is lost on the way back; chatctl retries by itself
    // with the same txn id and the server answers with the stored event.
    proxy.swallow.store(1, std::sync::atomic::Ordering::SeqCst);
    let out = via_proxy(&["--json", "send", "lobby", "exactly once"]).ok();
    assert_eq!(proxy.swallowed.load(std::sync::atomic::Ordering::SeqCst), 1, "the proxy did cut an answer");
    let sent = &json_lines(&out)[0];
    assert_eq!(bodies(&ann, "lobby"), ["exactly once"]);
    assert_eq!(sent["seq"].as_u64().unwrap(), last_seq(&ann, "lobby"));

    // Every answer is lost: the command gives up, unsure whether it sent…
    proxy.swallow.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let err = via_proxy(&["send", "lobby", "run me twice"]).fails(4, "run the same command again");
    assert!(err.contains("no answer from"), "{err}");
    assert_eq!(bodies(&ann, "lobby"), ["exactly once", "run me twice"], "the server did store it");
    // …and running the same command again does not send it a second time.
    proxy.swallow.store(0, std::sync::atomic::Ordering::SeqCst);
    let run = via_proxy(&["send", "lobby", "run me twice"]);
    assert!(run.stderr.contains("retrying an earlier send"), "{run:?}");
    run.ok();
    assert_eq!(bodies(&ann, "lobby"), ["exactly once", "run me twice"]);

    // A message that was delivered and then sent again on purpose is two messages.
    ann.run(&["send", "lobby", "ok"]).ok();
    ann.run(&["send", "lobby", "ok"]).ok();
    assert_eq!(bodies(&ann, "lobby"), ["exactly once", "run me twice", "ok", "ok"]);

    // An explicit txn id is the caller's idempotency key.
    let a = ann.run(&["--json", "send", "lobby", "keyed", "--txn-id", "my-key-1"]).ok();
    let b = ann.run(&["--json", "send", "lobby", "keyed", "--txn-id", "my-key-1"]).ok();
    assert_eq!(json_lines(&a)[0]["event_id"], json_lines(&b)[0]["event_id"]);
    ann.run(&["send", "lobby", "other text", "--txn-id", "my-key-1"]).fails(1, "chatctl: txn_conflict: ");
    assert_eq!(bodies(&ann, "lobby").iter().filter(|b| *b == "keyed").count(), 1);
}

#[test]
fn refusals_carry_the_servers_errcode_and_exit_codes() {
    let server = Server::start();
    let ann = User::new("ann", &server);

    // Weak passwords, each with its own errcode; nothing registered.
    for (password, code) in [
        ("short", "password_too_short"),
        ("password", "password_too_common"),
        ("83749261093", "password_entirely_numeric"),
    ] {
        ann.run_stdin(&["register", "ann", "--password-stdin"], &format!("{password}\n"))
            .fails(1, &format!("chatctl: {code}: "));
    }
    ann.run_stdin(&["register", "annabelle", "--password-stdin"], "annabelle1\n")
        .fails(1, "chatctl: password_too_similar: ");
    ann.register().ok();
    ann.register().fails(1, "chatctl: username_taken: ");
    User::new("x", &server)
        .run_stdin(&["register", "no spaces", "--password-stdin"], &format!("{PASSWORD}\n"))
        .fails(1, "chatctl: invalid_username: ");

    // A wrong password: refused, and no session is stored.
    ann.run_stdin(&["login", "ann", "--password-stdin"], "not-the-password-at-all\n")
        .fails(1, "chatctl: invalid_credentials: ");
    assert!(!ann.session_file().exists());
    // So is an unknown user, with the same errcode.
    User::new("nobody", &server).login().fails(1, "chatctl: invalid_credentials: ");

    // Not logged in: exit 3 for every command that needs a session.
    for args in [
        &["whoami"][..],
        &["rooms"],
        &["join", "lobby"],
        &["send", "lobby", "hi"],
        &["history", "lobby"],
        &["tail", "lobby"],
        &["logout"],
        &["create", "garden"],
        &["invite", "garden", "bob"],
        &["kick", "garden", "bob"],
        &["role", "garden", "bob", "owner"],
        &["dm", "bob"],
        &["edit", "garden", "$e", "x"],
        &["redact", "garden", "$e"],
        &["read", "garden", "1"],
    ] {
        ann.run(args).fails(3, "not logged in");
    }

    ann.login().ok();
    ann.run(&["send", "nowhere", "hi"]).fails(1, "chatctl: ");
    ann.run(&["history", "#bad alias"]).fails(1, "chatctl: invalid_room: ");
    ann.run(&["tail", "nowhere"]).fails(1, "chatctl: ");

    // Usage errors: exit 2, nothing on stdout.
    let run = ann.run(&["history", "lobby", "--before", "3", "--after", "1"]);
    assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
    let run = ann.run(&["frobnicate"]);
    assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
    ann.run_stdin(&["send", "lobby", "-"], "").fails(2, "empty");
    ann.run_stdin(&["login", "ann", "--password-stdin"], "").fails(2, "no password");
    // No terminal to ask a password on.
    ann.run(&["login", "ann"]).fails(2, "--password-stdin");
    ann.run(&["--server", "https://example.org", "rooms"]).fails(2, "http://");
}

#[test]
fn an_unreachable_server_is_exit_4() {
    let server = Server::start();
    let ann = user("ann", &server);
    let token = ann.token();
    let dead = format!("http://127.0.0.1:{}", dead_port());

    let mut u = User::new("ann", &server);
    u.server = dead.clone();
    u.run_stdin(&["login", "ann", "--password-stdin"], &format!("{PASSWORD}\n")).fails(4, "cannot reach");
    u.run_stdin(&["register", "zed", "--password-stdin"], &format!("{PASSWORD}\n")).fails(4, "cannot reach");
    for args in [
        &["rooms"][..],
        &["send", "lobby", "hi"],
        &["history", "lobby"],
        &["tail", "lobby"],
        &["create", "garden"],
        &["ban", "lobby", "@bob:x"],
        &["dm", "@bob:x"],
    ] {
        let mut cmd = u.command(args);
        cmd.env("CHATCTL_TOKEN", &token);
        u.run_with(cmd, None).fails(4, &format!("cannot reach {dead}"));
    }

    // A stored session survives a logout that could not reach the server,
    // so the logout can be tried again.
    let mut cmd = ann.command(&["--server", &dead, "logout"]);
    cmd.env("CHATCTL_TOKEN", &token);
    ann.run_with(cmd, None).fails(4, "cannot reach");
    assert!(ann.session_file().exists());
    ann.run(&["whoami"]).ok();
}

#[test]
fn logout_all_ends_every_session_and_tail_stops_with_exit_3() {
    let server = Server::start();
    let laptop = user("ann", &server);
    let phone = User::new("ann", &server);
    phone.login().ok();
    phone.run(&["join", "lobby"]).ok();
    assert_ne!(laptop.token(), phone.token());

    // Membership is the account's: the laptop is in the room too.
    let mut tail = phone.tail("lobby", &["--since", "1"]);
    laptop.run(&["send", "lobby", "from the laptop"]).ok();
    assert!(tail.next_line(LINE_WAIT).ends_with("> from the laptop"), "{:?}", tail.seen);

    assert_eq!(laptop.run(&["logout", "--all"]).ok(), "logged out on every device\n");
    assert!(!laptop.session_file().exists());
    phone.run(&["whoami"]).fails(3, "chatctl: unknown_token: ");
    // The phone's live connection is closed by the server (4001), which
    // tail reports as a revoked session.
    let (code, stderr) = tail.wait(Duration::from_secs(20));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.lines().last().unwrap_or_default().contains("log in again"), "{stderr}");
    // A revoked session can still be logged out of locally.
    phone.run(&["logout"]).ok();
    assert!(!phone.session_file().exists());
}

#[test]
fn the_session_picks_the_server_and_completions_are_generated() {
    let server = Server::start();
    let ann = user("ann", &server);
    // Without CHATCTL_SERVER the stored session says where to go.
    let mut cmd = ann.command(&["whoami"]);
    cmd.env_remove("CHATCTL_SERVER");
    assert!(ann.run_with(cmd, None).ok().contains(&server.url));
    // Another server does not get this server's token.
    let other = format!("http://127.0.0.1:{}", dead_port());
    ann.run(&["--server", &other, "rooms"]).fails(3, "stored session is for");

    for shell in ["bash", "zsh", "fish"] {
        let out = ann.run(&["completions", shell]).ok();
        assert!(out.contains("chatctl") && out.contains("history"), "{shell}: {out}");
    }
}

#[test]
fn tail_ends_when_you_leave_the_room_and_refuses_a_bad_token() {
    let server = Server::start();
    let ann = user("ann", &server);
    ann.run(&["join", "lobby"]).ok();
    let mut tail = ann.tail("lobby", &["--since", "0"]);
    assert!(tail.next_line(LINE_WAIT).ends_with("joined"));
    ann.run(&["leave", "lobby"]).ok();
    // The leave event itself may or may not reach the subscription first.
    let (code, stderr) = tail.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("you left lobby"), "{stderr}");

    // A token the server does not know is refused on the upgrade: exit 3.
    let mut cmd = ann.command(&["tail", "lobby"]);
    cmd.env("CHATCTL_TOKEN", "bm90LWEtcmVhbC10b2tlbi1hdC1hbGwtbm90LWV2ZW4tY2xvc2U");
    ann.run_with(cmd, None).fails(3, "chatctl: unknown_token: ");
}

#[test]
fn a_rate_limited_register_is_waited_out() {
    let server = Server::start_with(|cfg| cfg.rate_limit = true);
    // The register burst is 10 per client address…
    for i in 0..10 {
        User::new(&format!("user{i}"), &server).register().ok();
    }
    // …and the 11th is told to wait a few seconds, which chatctl does.
    let started = std::time::Instant::now();
    let out = User::new("patient", &server).register().ok();
    assert!(out.starts_with("registered @patient:"), "{out}");
    // A plain register takes a fraction of that: it did wait.
    let waited = started.elapsed();
    assert!(waited > Duration::from_secs(2), "not rate limited? {waited:?}");
}

/// The `history` lines of a room, without their time.
fn history_lines(u: &User, room: &str) -> Vec<String> {
    let out = u.run(&["history", room, "--limit", "1000"]).ok();
    out.lines().map(|l| l.get(20..).unwrap_or(l).to_owned()).collect()
}

#[test]
fn private_rooms_invites_roles_and_moderation() {
    let server = Server::start();
    let host = server.name();
    let ann = user("ann", &server);
    let bob = user("bob", &server);
    let cat = user("cat", &server);

    // Ann creates a private room and invites Bob (a bare name is a user of her server).
    let out = ann
        .run(&["create", "garden", "--name", "The Garden", "--topic", "plants", "--private", "--invite", "bob"])
        .ok();
    assert!(out.starts_with(&format!("created #garden:{host} (!")), "{out}");
    let room_id = out.trim().rsplit_once(" (").unwrap().1.trim_end_matches(')').to_owned();

    // Bob sees the invite, marked as such, with the room's name.
    assert_eq!(bob.run(&["rooms"]).ok(), format!("#garden:{host}\t{room_id}\tinvited\t-\tThe Garden\n"));
    let rooms = json_lines(&bob.run(&["--json", "rooms"]).ok());
    assert_eq!(rooms[0]["membership"], "invite");
    assert_eq!(rooms[0]["topic"], "plants");
    assert_eq!(rooms[0]["visibility"], "private");
    // Ann owns it.
    let rooms = json_lines(&ann.run(&["--json", "rooms"]).ok());
    assert_eq!((rooms[0]["role"].as_str(), rooms[0]["membership"].as_str()), (Some("owner"), Some("join")));
    assert_eq!(ann.run(&["rooms"]).ok(), format!("#garden:{host}\t{room_id}\towner\t0\tThe Garden\n"));

    // Uninvited Cat is refused with the server's errcode, exit 1.
    cat.run(&["join", "garden"]).fails(1, "chatctl: not_invited: ");
    cat.run(&["reject", "garden"]).fails(1, "chatctl: not_invited: ");

    // Bob declines, is invited again (as a full user id) and joins.
    assert_eq!(bob.run(&["reject", "garden"]).ok(), "rejected the invite to garden\n");
    assert_eq!(bob.run(&["rooms"]).ok(), "");
    assert_eq!(
        ann.run(&["invite", "garden", &format!("@bob:{host}")]).ok(),
        format!("invited @bob:{host} to garden\n")
    );
    bob.run(&["join", "garden"]).ok();

    // Ann follows the room; she is online while she does.
    let mut tail = ann.tail("garden", &["--since", &last_seq(&ann, "garden").to_string()]);
    let mut online = String::new();
    for _ in 0..100 {
        online = ann.run(&["members", "garden"]).ok();
        if online.contains("owner\tonline") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(online, format!("@ann:{host}\towner\tonline\n@bob:{host}\tmember\toffline\n"));
    let members = json_lines(&bob.run(&["--json", "members", "garden"]).ok());
    assert_eq!(members[1]["role"], "member");
    assert_eq!(members[1]["presence"], "offline");

    // Only the owner sets roles.
    bob.run(&["role", "garden", "bob", "owner"]).fails(1, "chatctl: forbidden: ");
    assert_eq!(
        ann.run(&["role", "garden", "bob", "moderator"]).ok(),
        format!("@bob:{host} is now moderator in garden\n")
    );
    let line = tail.next_line(LINE_WAIT);
    assert!(line.ends_with(&format!("* @ann:{host} made @bob:{host} moderator")), "{line}");

    // A moderator cannot act on the owner.
    bob.run(&["kick", "garden", "ann"]).fails(1, "chatctl: forbidden: ");
    // …but on a member: Cat is invited, joins, and is kicked with a reason.
    ann.run(&["invite", "garden", "cat"]).ok();
    cat.run(&["join", "garden"]).ok();
    let out = bob.run(&["--json", "kick", "garden", "cat", "--reason", "spam"]).ok();
    let kicked = &json_lines(&out)[0];
    assert_eq!(kicked["user_id"], format!("@cat:{host}"));
    assert_eq!((kicked["kicked"].as_bool(), kicked["reason"].as_str()), (Some(true), Some("spam")));
    cat.run(&["send", "garden", "hello?"]).fails(1, "chatctl: not_member: ");
    // A ban keeps Cat out, even with an invite.
    assert_eq!(
        bob.run(&["ban", "garden", "cat", "--reason", "again"]).ok(),
        format!("banned @cat:{host} from garden\n")
    );
    ann.run(&["invite", "garden", "cat"]).fails(1, "chatctl: banned: ");
    cat.run(&["join", "garden"]).fails(1, "chatctl: banned: ");
    assert_eq!(bob.run(&["unban", "garden", "cat"]).ok(), format!("unbanned @cat:{host} in garden\n"));
    cat.run(&["join", "garden"]).fails(1, "chatctl: not_invited: ");

    // Name, topic and visibility: moderators and up.
    cat.run(&["room", "garden", "--topic", "mine"]).fails(1, "chatctl: ");
    assert_eq!(
        bob.run(&["room", "garden", "--topic", "herbs", "--public"]).ok(),
        "updated garden: topic \"herbs\", public\n"
    );
    cat.run(&["join", "garden"]).ok();

    // Every change reads as a `*` line, live and in history.
    let expected = [
        format!("* @ann:{host} joined"),
        format!("* @ann:{host} set the room: name \"The Garden\", topic \"plants\", private"),
        format!("* @ann:{host} invited @bob:{host}"),
        format!("* @bob:{host} rejected the invite"),
        format!("* @ann:{host} invited @bob:{host}"),
        format!("* @bob:{host} joined"),
        format!("* @ann:{host} made @bob:{host} moderator"),
        format!("* @ann:{host} invited @cat:{host}"),
        format!("* @cat:{host} joined"),
        format!("* @bob:{host} kicked @cat:{host}: spam"),
        format!("* @bob:{host} banned @cat:{host}: again"),
        format!("* @bob:{host} unbanned @cat:{host}"),
        format!("* @bob:{host} set the room: name \"The Garden\", topic \"herbs\", public"),
        format!("* @cat:{host} joined"),
    ];
    assert_eq!(history_lines(&ann, "garden"), expected);
    let mut live = Vec::new();
    while live.len() < 7 {
        live.push(tail.next_line(LINE_WAIT)[20..].to_owned());
    }
    assert_eq!(live, expected[7..]);
    assert_eq!(tail.interrupt(), 0);

    // A room without an alias is known by its id.
    let out = ann.run(&["--json", "create", "--name", "Nameless"]).ok();
    let made = &json_lines(&out)[0];
    assert!(made["room_id"].as_str().unwrap().starts_with('!') && made.get("alias").is_none(), "{made}");
    let line = ann.run(&["rooms"]).ok();
    assert!(
        line.lines().any(|l| l.starts_with(&format!("-\t{}\towner\t0\tNameless", made["room_id"].as_str().unwrap()))),
        "{line}"
    );
    // Usage errors are exit 2.
    let run = ann.run(&["room", "garden"]);
    assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
    ann.run(&["invite", "garden", "bob:elsewhere"]).fails(2, "not a user");
}

#[test]
fn direct_messages_edits_and_read_marks() {
    let server = Server::start();
    let host = server.name();
    let ann = user("ann", &server);
    let bob = user("bob", &server);

    // The same pair gets the same room, however asked.
    let out = ann.run(&["dm", "bob"]).ok();
    assert!(out.starts_with(&format!("direct messages with @bob:{host}: !")), "{out}");
    let room = out.trim().rsplit_once(": ").unwrap().1.to_owned();
    let again = json_lines(&ann.run(&["--json", "dm", &format!("@bob:{host}")]).ok());
    assert_eq!(again[0]["room_id"], room.as_str());
    // Bob sees an invite to a room without an alias, and joins it.
    assert_eq!(bob.run(&["rooms"]).ok(), format!("-\t{room}\tinvited\t-\n"));
    assert_eq!(bob.run(&["join", &room]).ok(), format!("joined {room}\n"));
    let joined = json_lines(&bob.run(&["--json", "join", &room]).ok());
    assert!(joined[0].get("alias").is_none(), "{joined:?}");
    assert_eq!(bob.run(&["dm", "ann"]).ok().trim_end().rsplit_once(": ").unwrap().1, room);
    // A bare name is a user of the server of whoever the token belongs to:
    // Ann's token in Bob's terminal makes `bob` Ann's partner, not Bob himself.
    let phone = User::new("ann", &server);
    phone.login().ok();
    let mut cmd = bob.command(&["--json", "dm", "bob"]);
    cmd.env("CHATCTL_TOKEN", phone.token());
    assert_eq!(json_lines(&bob.run_with(cmd, None).ok())[0]["room_id"], room.as_str());

    // Unread counts what others sent after the read mark.
    for i in 1..=3 {
        bob.run(&["send", &room, &format!("b{i}")]).ok();
    }
    assert_eq!(ann.run(&["rooms"]).ok(), format!("-\t{room}\towner\t3\n"));
    let events = json_lines(&ann.run(&["--json", "history", &room]).ok());
    let second = events.iter().find(|e| e["body"] == "b2").unwrap()["seq"].as_u64().unwrap();
    let out = ann.run(&["read", &room, &second.to_string()]).ok();
    assert_eq!(out, format!("marked {room} read up to seq {second}\n"));
    assert_eq!(json_lines(&ann.run(&["--json", "rooms"]).ok())[0]["unread"], 1);
    let last = last_seq(&ann, &room);
    let read = json_lines(&ann.run(&["--json", "read", &room, &last.to_string()]).ok());
    assert_eq!((read[0]["seq"].as_u64(), read[0]["read"].as_bool()), (Some(last), Some(true)));
    assert_eq!(ann.run(&["rooms"]).ok(), format!("-\t{room}\towner\t0\n"));
    ann.run(&["read", &room, &(last + 10).to_string()]).fails(1, "chatctl: invalid_field: ");

    // Ann edits her message; readers see the new text and which one it replaced.
    let sent = json_lines(&ann.run(&["--json", "send", &room, "helo"]).ok());
    let (orig_id, orig_seq) = (sent[0]["event_id"].as_str().unwrap().to_owned(), sent[0]["seq"].as_u64().unwrap());
    let out = ann.run(&["edit", &room, &orig_id, "hello"]).ok();
    assert!(out.starts_with(&format!("edited (seq {}, ", orig_seq + 1)), "{out}");
    let lines = history_lines(&bob, &room);
    assert_eq!(
        lines[lines.len() - 2..],
        [format!("<@ann:{host}> helo"), format!("<@ann:{host}> (edited seq {orig_seq}) hello")]
    );
    let last_event = json_lines(&bob.run(&["--json", "history", &room, "--limit", "1"]).ok()).remove(0);
    assert_eq!((last_event["body"].as_str(), last_event["replaces"].as_str()), (Some("hello"), Some(orig_id.as_str())));
    // Without the original on the page, the edit names its event id.
    let page = bob.run(&["history", &room, "--limit", "1"]).ok();
    assert!(page.trim_end().ends_with(&format!("<@ann:{host}> (edited {orig_id}) hello")), "{page}");
    // Tail names it too, and a repeated edit with its txn id is stored once.
    let mut tail = bob.tail(&room, &["-n", "2"]);
    tail.next_line(LINE_WAIT);
    assert!(tail.next_line(LINE_WAIT).ends_with(&format!("(edited seq {orig_seq}) hello")), "{:?}", tail.seen);
    let a = json_lines(&ann.run(&["--json", "edit", &room, &orig_id, "hello!", "--txn-id", "ed-1"]).ok());
    let b = json_lines(&ann.run(&["--json", "edit", &room, &orig_id, "hello!", "--txn-id", "ed-1"]).ok());
    assert_eq!(a[0]["event_id"], b[0]["event_id"]);
    assert_eq!(a[0]["replaces"], orig_id.as_str());
    let line = tail.next_line(LINE_WAIT);
    assert!(line.ends_with(&format!("<@ann:{host}> (edited seq {orig_seq}) hello!")), "{line}");
    assert!(tail.lines_within(Duration::from_millis(300)).is_empty(), "{:?}", tail.seen);
    assert_eq!(tail.interrupt(), 0);

    // Someone else's message is not Bob's to edit.
    bob.run(&["edit", &room, &orig_id, "mine now"]).fails(1, "chatctl: forbidden: ");
    // Nor is an edit to edit again, nor a made-up id.
    let edit_id = a[0]["event_id"].as_str().unwrap();
    ann.run(&["edit", &room, edit_id, "x"]).fails(1, "chatctl: invalid_field: ");
}

#[test]
fn redactions_delete_for_everyone_and_tail_shows_them() {
    let server = Server::start();
    let host = server.name();
    let ann = user("ann", &server);
    let bob = user("bob", &server);
    ann.run(&["create", "yard"]).ok();
    bob.run(&["join", "yard"]).ok();
    let sent = json_lines(&bob.run(&["--json", "send", "yard", "my secret"]).ok());
    let (id, seq) = (sent[0]["event_id"].as_str().unwrap().to_owned(), sent[0]["seq"].as_u64().unwrap());
    let mine = json_lines(&ann.run(&["--json", "send", "yard", "ann's own"]).ok());
    let mine_id = mine[0]["event_id"].as_str().unwrap().to_owned();
    let mut tail = ann.tail("yard", &["-n", "2"]);
    tail.next_line(LINE_WAIT);
    tail.next_line(LINE_WAIT);

    // Bob deletes his own message; a repeat with the same txn id is stored once.
    let a = json_lines(&bob.run(&["--json", "redact", "yard", &id, "--reason", "typo", "--txn-id", "rd-1"]).ok());
    let b = json_lines(&bob.run(&["--json", "redact", "yard", &id, "--reason", "typo", "--txn-id", "rd-1"]).ok());
    assert_eq!((&a[0]["event_id"], a[0]["redacts"].as_str()), (&b[0]["event_id"], Some(id.as_str())));
    let line = tail.next_line(LINE_WAIT);
    assert!(line.ends_with(&format!("* @bob:{host} deleted seq {seq}: typo")), "{line}");
    assert!(tail.lines_within(Duration::from_millis(300)).is_empty(), "{:?}", tail.seen);
    assert_eq!(tail.interrupt(), 0);
    let lines = history_lines(&ann, "yard");
    assert!(lines.contains(&format!("<@bob:{host}> (deleted)")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("my secret")), "{lines:?}");
    // Bob may not delete Ann's message; Ann, the owner, may delete anyone's.
    bob.run(&["redact", "yard", &mine_id]).fails(1, "chatctl: forbidden: ");
    bob.run(&["redact", "yard", "$nosuch:x"]).fails(1, "chatctl: event_not_found: ");
    let other = json_lines(&bob.run(&["--json", "send", "yard", "spam"]).ok());
    let out = ann.run(&["redact", "yard", other[0]["event_id"].as_str().unwrap()]).ok();
    assert!(out.starts_with(&format!("deleted {} (seq ", other[0]["event_id"].as_str().unwrap())), "{out}");
}

/// Reads `tail`'s lines until one contains `needle`, and returns it.
#[track_caller]
fn line_with(tail: &mut support::Tail, needle: &str) -> String {
    for _ in 0..20 {
        let line = tail.next_line(LINE_WAIT);
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no line with {needle:?} in {:?}", tail.seen);
}

#[test]
fn tail_shows_activity_on_request_and_says_when_you_are_kicked() {
    let server = Server::start();
    let host = server.name();
    let ann = user("ann", &server);
    let bob = user("bob", &server);
    ann.run(&["create", "den"]).ok();
    bob.run(&["join", "den"]).ok();
    let since = last_seq(&ann, "den").to_string();

    // Ann follows the room with --activity, in both output forms; a message
    // of hers shows when both are live.
    let mut human = ann.tail("den", &["--activity", "--since", &since]);
    let mut json =
        support::Tail::spawn_command(ann.command(&["--json", "tail", "den", "--activity", "--since", &since]));
    ann.run(&["send", "den", "ready"]).ok();
    line_with(&mut human, "> ready");
    line_with(&mut json, "\"ready\"");

    // Bob comes online by following the room himself (without --activity).
    let mut quiet = bob.tail("den", &["--since", &last_seq(&bob, "den").to_string()]);
    let line = line_with(&mut human, &format!("~ @bob:{host} is online"));
    assert_eq!(line.as_bytes()[4], b'-', "{line}");
    // Bob marks the room read: a receipt for Ann's --activity tails, nothing for his.
    let seq = last_seq(&bob, "den");
    bob.run(&["read", "den", &seq.to_string()]).ok();
    line_with(&mut human, &format!("~ @bob:{host} read up to seq {seq}"));
    let receipt: serde_json::Value = serde_json::from_str(&line_with(&mut json, "\"receipt\"")).unwrap();
    assert_eq!(
        (receipt["user_id"].as_str(), receipt["seq"].as_u64()),
        (Some(format!("@bob:{host}").as_str()), Some(seq))
    );
    assert!(quiet.lines_within(Duration::from_millis(500)).is_empty(), "{:?}", quiet.seen);

    // Ann (the owner) kicks Bob: his tail prints it and ends, saying why.
    ann.run(&["kick", "den", "bob", "--reason", "closing time"]).ok();
    let line = quiet.next_line(LINE_WAIT);
    assert!(line.ends_with(&format!("* @ann:{host} kicked @bob:{host}: closing time")), "{line}");
    let (code, stderr) = quiet.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("you were kicked from den by @ann:{host}")), "{stderr}");
    line_with(&mut human, "kicked");
    assert_eq!(human.interrupt(), 0);
    assert_eq!(json.interrupt(), 0);
}

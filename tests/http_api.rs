//! The client HTTP API end to end, on both room-log backends: every
//! endpoint, every errcode a client can cause over HTTP, idempotency and
//! history across restarts, and the server still answering after bad input.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Backend, Harness, P, enc, uniq};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The v1 fields (`room_id`, `alias`) of each item of a `GET /rooms` answer:
/// v1.1 adds others, which these tests do not look at.
fn v1_fields(rooms: &serde_json::Value) -> serde_json::Value {
    rooms
        .as_array()
        .map(|a| a.iter().map(|r| serde_json::json!({"room_id": r["room_id"], "alias": r["alias"]})).collect())
        .unwrap_or(serde_json::Value::Null)
}

backend_tests!(
    versions_and_health,
    accounts_lifecycle,
    password_and_username_rules,
    login_failure_does_not_tell_whether_the_user_exists,
    rooms_join_leave_members_list,
    sends_are_idempotent_and_checked,
    seqs_are_contiguous_under_concurrent_senders,
    history_pages_both_ways,
    bad_input_gets_clear_errors_and_loses_nothing,
    everything_survives_a_restart,
    rate_limits_answer_429_with_retry_after,
    slow_clients_are_cut_off,
    connection_cap_closes_extra_connections,
    concurrent_account_and_room_writes_do_not_hang,
);

async fn versions_and_health(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let (s, v) = api.raw("GET", "/_parlor/versions", None, vec![]).await;
    assert_eq!(s, 200);
    assert_eq!(v["versions"], json!(["v1", "v1.1"]));
    assert_eq!(v["server"]["name"], h.server.addr.to_string());
    let (s, v) = api.raw("GET", "/healthz", None, vec![]).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    assert_eq!(v["room_log"], if b == Backend::Redis { "redis" } else { "embedded" });
}

async fn accounts_lifecycle(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let name = uniq("Ann");
    let (s, v) = api.register(&name, "zebra-quartz-71").await;
    assert_eq!(s, 201, "{v}");
    let lower = name.to_lowercase();
    assert_eq!(v["user_id"], format!("@{lower}:{}", h.server.addr));
    // Folded at register: the other case is the same account.
    let (s, v) = api.register(&lower.to_uppercase(), "zebra-quartz-71").await;
    assert_eq!((s, v["errcode"].as_str()), (409, Some("username_taken")));
    // Folded at login too.
    let (s, v) = api
        .call(
            "POST",
            "/login",
            None,
            Some(json!({"username": name.to_uppercase(), "password": "zebra-quartz-71", "device_name": "laptop"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let t1 = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(t1.len(), 43);
    let (_, t2) = api.login(&lower).await;
    let (_, t3) = api.login(&lower).await;
    let (s, who) = api.call("GET", "/account/whoami", Some(&t1), None).await;
    assert_eq!(s, 200);
    assert_eq!(who["user_id"], format!("@{lower}:{}", h.server.addr));
    assert_eq!(who["device_id"], v["device_id"]);

    // logout revokes only this token
    let (s, v) = api.call("POST", "/logout", Some(&t1), None).await;
    assert_eq!((s, &v), (200, &json!({})));
    let (s, v) = api.call("GET", "/account/whoami", Some(&t1), None).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("unknown_token")));
    assert_eq!(api.call("GET", "/account/whoami", Some(&t2), None).await.0, 200);
    // logout/all revokes the rest
    let (s, _) = api.call("POST", "/logout/all", Some(&t2), Some(json!({}))).await;
    assert_eq!(s, 200);
    for t in [&t2, &t3] {
        let (s, v) = api.call("GET", "/account/whoami", Some(t), None).await;
        assert_eq!((s, v["errcode"].as_str()), (401, Some("unknown_token")));
    }
    // no token / malformed header / garbage token
    let (s, v) = api.call("GET", "/account/whoami", None, None).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("missing_token")));
    let (s, v) = api.call("GET", "/account/whoami", Some("not-a-token"), None).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("unknown_token")));
}

async fn password_and_username_rules(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("short", "Ab1!x", 400, "password_too_short"),
        ("toolong", &"x".repeat(1025), 400, "password_too_long"),
        ("common", "password1", 400, "password_too_common"),
        ("numeric", "4815162342718", 400, "password_entirely_numeric"),
        ("margaret", "margaret7", 400, "password_too_similar"),
        ("bad name!", "zebra-quartz-71", 400, "invalid_username"),
        ("", "zebra-quartz-71", 400, "invalid_username"),
        (&"a".repeat(33), "zebra-quartz-71", 400, "invalid_username"),
        ("émile", "zebra-quartz-71", 400, "invalid_username"),
    ];
    for (name, pw, status, code) in cases {
        let (s, v) = api.register(name, pw).await;
        assert_eq!((s, v["errcode"].as_str()), (*status, Some(*code)), "{name:?}/{pw:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Refused registrations created nothing.
    let (s, v) = api.call("POST", "/login", None, Some(json!({"username": "margaret", "password": "margaret7"}))).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("invalid_credentials")));
    let (s, _) = api.register(&"a".repeat(32), "zebra-quartz-71").await;
    assert_eq!(s, 201, "32 characters is allowed");
}

async fn login_failure_does_not_tell_whether_the_user_exists(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let name = uniq("bob");
    api.user(&name).await;
    let attempt = |user: String| {
        let api = api.clone();
        async move {
            let t = Instant::now();
            let r =
                api.call("POST", "/login", None, Some(json!({"username": user, "password": "wrong-password-9"}))).await;
            (r, t.elapsed())
        }
    };
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..5 {
        let (rw, tw) = attempt(name.clone()).await;
        let (ru, tu) = attempt(format!("nobody{i}{name}")).await;
        assert_eq!(rw, ru, "same status and body for a wrong password and an unknown user");
        assert_eq!(rw.0, 401);
        assert_eq!(rw.1["errcode"], "invalid_credentials");
        wrong.push(tw);
        unknown.push(tu);
    }
    wrong.sort();
    unknown.sort();
    // An unknown user costs a full password hash too (without the dummy hash
    // it would answer ~100x faster).
    assert!(unknown[2] * 3 >= wrong[2], "unknown-user logins are much faster: {unknown:?} vs {wrong:?}");
}

async fn rooms_join_leave_members_list(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let server = h.server.addr.to_string();
    let (ann, ta) = api.user(&uniq("ann")).await;
    let (bob, tb) = api.user(&uniq("bob")).await;
    let room = uniq("Lobby");
    let lower = room.to_lowercase();

    // First join of a bare name creates the room.
    let j = api.join(&ta, &room).await;
    let alias = format!("#{lower}:{server}");
    assert_eq!(j["alias"], alias);
    let room_id = j["room_id"].as_str().unwrap().to_owned();
    assert!(room_id.starts_with('!') && room_id.ends_with(&format!(":{server}")));
    // By alias and by id: the same room. Joining twice changes nothing.
    assert_eq!(api.join(&tb, &alias).await, j);
    assert_eq!(api.join(&tb, &room_id).await, j);
    let (_, page) = api.messages(&ta, &room_id, "").await;
    let kinds: Vec<_> =
        page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["join", "join"], "one join event per effective join");
    assert_eq!(page["events"][0]["sender"], ann);
    assert_eq!(page["events"][1]["sender"], bob);

    let (s, m) = api.call("GET", &format!("/rooms/{}/members", enc(&alias)), Some(&ta), None).await;
    assert_eq!(s, 200);
    let mut want = vec![ann.clone(), bob.clone()];
    want.sort();
    let got: Vec<_> =
        m["members"].as_array().unwrap().iter().map(|x| x["user_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, want);
    assert_eq!(m["room_id"], room_id);

    let (s, l) = api.call("GET", "/rooms", Some(&ta), None).await;
    assert_eq!(s, 200);
    assert_eq!(v1_fields(&l["rooms"]), json!([{"room_id": room_id, "alias": alias}]));

    // Leave, then every member-only endpoint refuses.
    let (s, v) = api.call("POST", &format!("/rooms/{}/leave", enc(&room)), Some(&tb), None).await;
    assert_eq!((s, v), (200, json!({})));
    for (method, path) in [
        ("GET", format!("/rooms/{}/members", enc(&room))),
        ("GET", format!("/rooms/{}/messages", enc(&room))),
        ("POST", format!("/rooms/{}/leave", enc(&room))),
    ] {
        let (s, v) = api.call(method, &path, Some(&tb), None).await;
        assert_eq!((s, v["errcode"].as_str()), (403, Some("not_member")), "{method} {path}");
    }
    let (s, v) = api.send(&tb, &room, "t1", "hi").await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_member")));
    let (_, page) = api.messages(&ta, &room, "").await;
    assert_eq!(page["events"][2]["type"], "leave");
    assert_eq!(page["events"][2]["sender"], bob);
    let (_, l) = api.call("GET", "/rooms", Some(&tb), None).await;
    assert_eq!(l["rooms"], json!([]));

    // Unknown rooms and bad names.
    for (r, status, code) in [
        (format!("!nosuchroom:{server}"), 404, "room_not_found"),
        // Nothing listens on port 9 here: a home server that cannot be reached.
        ("#elsewhere:127.0.0.1:9".to_owned(), 503, "home_server_unreachable"),
        ("bad room".to_owned(), 400, "invalid_room"),
        ("#nope".to_owned(), 400, "invalid_room"),
        ("x".repeat(65), 400, "invalid_room"),
    ] {
        let (s, v) = api.call("POST", &format!("/rooms/{}/join", enc(&r)), Some(&ta), None).await;
        assert_eq!((s, v["errcode"].as_str()), (status, Some(code)), "{r}: {v}");
    }
    let (s, v) = api.call("GET", &format!("/rooms/{}/members", enc("neverjoined")), Some(&ta), None).await;
    assert_eq!((s, v["errcode"].as_str()), (404, Some("room_not_found")));
}

async fn sends_are_idempotent_and_checked(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let (ann, ta) = api.user(&uniq("ann")).await;
    let room = uniq("r");
    api.join(&ta, &room).await;
    let (s, first) = api.send(&ta, &room, "txn-1", "hello").await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["seq"], 2);
    // Same txn, same body: same answer, nothing stored twice.
    let (s, again) = api.send(&ta, &room, "txn-1", "hello").await;
    assert_eq!((s, &again), (200, &first));
    // Same txn, other body: conflict.
    let (s, v) = api.send(&ta, &room, "txn-1", "changed").await;
    assert_eq!((s, v["errcode"].as_str()), (409, Some("txn_conflict")));
    // The txn belongs to the device: another login of the same user may reuse the id.
    let (_, ta2) = api.login(&ann[1..ann.find(':').unwrap()]).await;
    let (s, other) = api.send(&ta2, &room, "txn-1", "hello").await;
    assert_eq!(s, 200);
    assert_eq!(other["seq"], 3);
    let (_, page) = api.messages(&ta, &room, "").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    assert_eq!(page["events"][1]["body"], "hello");
    assert_eq!(page["events"][1]["event_id"], first["event_id"]);

    let max = "é".repeat(8192);
    assert_eq!(max.len(), 16384);
    assert_eq!(api.send(&ta, &room, "big-ok", &max).await.0, 200);
    let (s, v) = api.send(&ta, &room, "big", &format!("{max}x")).await;
    assert_eq!((s, v["errcode"].as_str()), (413, Some("message_too_large")));
    let (s, v) = api.send(&ta, &room, "empty", "").await;
    assert_eq!((s, v["errcode"].as_str()), (413, Some("message_too_large")));
    for bad in ["a%20b", &"t".repeat(65), "%C3%A9"] {
        let (s, v) = api.send(&ta, &room, bad, "x").await;
        assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_param")), "{bad}");
    }
    let (s, v) = api
        .call("PUT", &format!("/rooms/{}/send/t9", enc(&room)), Some(&ta), Some(json!({"body": "x", "extra": 1})))
        .await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_field")));
    let (s, v) = api.call("PUT", &format!("/rooms/{}/send/t9", enc(&room)), Some(&ta), Some(json!({"body": 5}))).await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_field")));
    let (_, page) = api.messages(&ta, &room, "").await;
    assert_eq!(page["latest_seq"], 4, "refused sends stored nothing");
}

async fn seqs_are_contiguous_under_concurrent_senders(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let room = uniq("busy");
    let mut tokens = Vec::new();
    for i in 0..8 {
        let (_, t) = api.user(&uniq(&format!("u{i}"))).await;
        api.join(&t, &room).await;
        tokens.push(t);
    }
    let mut tasks = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let (api, t, room) = (api.clone(), t.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..25 {
                let (s, v) = api.send(&t, &room, &format!("m{n}"), &format!("{i}:{n}")).await;
                assert_eq!(s, 200, "{v}");
                seqs.push(v["seq"].as_u64().unwrap());
            }
            seqs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one sender's messages keep their order");
        acked.extend(seqs);
    }
    let (_, page) = api.messages(&tokens[0], &room, "after=0&limit=1000").await;
    let events = page["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=208).collect::<Vec<_>>(), "8 joins + 200 messages, no holes, no duplicates");
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 208, "event ids are unique");
    acked.sort();
    assert_eq!(acked, seqs.iter().copied().filter(|s| *s > 8).collect::<Vec<_>>());
}

async fn history_pages_both_ways(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = uniq("hist");
    api.join(&t, &room).await;
    for n in 1..=30 {
        assert_eq!(api.send(&t, &room, &format!("t{n}"), &format!("m{n}")).await.0, 200);
    }
    let seqs =
        |v: &Value| v["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>();
    let (s, latest) = api.messages(&t, &room, "limit=5").await;
    assert_eq!(s, 200);
    assert_eq!(seqs(&latest), [27, 28, 29, 30, 31]);
    assert_eq!((latest["earliest_seq"].as_u64(), latest["latest_seq"].as_u64()), (Some(1), Some(31)));
    let epoch = latest["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    let (_, before) = api.messages(&t, &room, "before=27&limit=5").await;
    assert_eq!(seqs(&before), [22, 23, 24, 25, 26]);
    assert_eq!(before["epoch"], epoch);
    let (_, after) = api.messages(&t, &room, "after=0&limit=3").await;
    assert_eq!(seqs(&after), [1, 2, 3]);
    let (_, tail) = api.messages(&t, &room, "after=29").await;
    assert_eq!(seqs(&tail), [30, 31]);
    let (_, none) = api.messages(&t, &room, "after=31").await;
    assert_eq!(seqs(&none), Vec::<u64>::new());
    let (_, start) = api.messages(&t, &room, "before=3").await;
    assert_eq!(seqs(&start), [1, 2]);
    let (_, all) = api.messages(&t, &room, "").await;
    assert_eq!(seqs(&all).len(), 31, "default limit 50");
    // Walking backwards from the end reaches every event once.
    let mut walked = Vec::new();
    let mut before = u64::MAX;
    loop {
        let (_, p) = api.messages(&t, &room, &format!("before={before}&limit=7")).await;
        let s = seqs(&p);
        if s.is_empty() {
            break;
        }
        before = s[0];
        walked.splice(0..0, s);
    }
    assert_eq!(walked, (1..=31).collect::<Vec<_>>());
    for bad in ["before=1&after=2", "limit=0", "limit=1001", "before=x", "after=-1", "limit=1&limit=2"] {
        let (s, v) = api.messages(&t, &room, bad).await;
        assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_param")), "{bad}");
    }
}

async fn bad_input_gets_clear_errors_and_loses_nothing(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = uniq("safe");
    api.join(&t, &room).await;
    api.send(&t, &room, "keep", "precious").await;
    let send_path = format!("{P}/rooms/{}/send/x1", enc(&room));
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("PUT", send_path.clone(), b"{not json".to_vec(), 400, "malformed_json"),
        ("PUT", send_path.clone(), b"".to_vec(), 400, "malformed_json"),
        ("PUT", send_path.clone(), b"[1,2]".to_vec(), 400, "invalid_field"),
        ("PUT", send_path.clone(), b"{\"body\":\"\xff\xfe\"}".to_vec(), 400, "malformed_json"),
        ("PUT", send_path.clone(), b"{}".to_vec(), 400, "invalid_field"),
        ("PUT", send_path.clone(), vec![b' '; 70_000], 413, "body_too_large"),
        (
            "POST",
            format!("{P}/register"),
            b"{\"username\":\"x\",\"password\":\"y\",\"admin\":true}".to_vec(),
            400,
            "invalid_field",
        ),
        ("POST", format!("{P}/login"), b"null".to_vec(), 400, "invalid_field"),
        ("GET", format!("{P}/nope"), vec![], 404, "not_found"),
        ("GET", "/".to_owned() + "does/not/exist", vec![], 404, "not_found"),
        ("DELETE", format!("{P}/register"), vec![], 405, "method_not_allowed"),
        ("GET", format!("{P}/rooms/%FF%FE/members"), vec![], 400, "invalid_param"),
        ("GET", format!("{P}/ws"), vec![], 426, "upgrade_required"),
    ];
    for (method, path, body, status, code) in cases {
        let (s, v) = api.raw(method, &path, Some(&t), body).await;
        assert_eq!((s, v["errcode"].as_str()), (status, Some(code)), "{method} {path}: {v}");
    }
    // Raw garbage on the socket: a clean close, and the server lives on.
    let mut sock = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
    sock.write_all(b"\x00\x01GARBAGE\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    let (_, page) = api.messages(&t, &room, "").await;
    assert_eq!(page["events"][1]["body"], "precious", "nothing stored was lost");
    assert_eq!(api.call("GET", "/account/whoami", Some(&t), None).await.0, 200);
}

async fn everything_survives_a_restart(b: Backend) {
    let mut h = Harness::start(b).await;
    let api = h.api();
    let name = uniq("ann");
    let (_, t) = api.user(&name).await;
    let room = uniq("kept");
    let j = api.join(&t, &room).await;
    let (_, first) = api.send(&t, &room, "once", "before restart").await;
    let (_, before) = api.messages(&t, &room, "").await;
    h.restart().await;
    let api = h.api();
    // Tokens, accounts, rooms, history, epoch and txn memory all survived.
    assert_eq!(api.call("GET", "/account/whoami", Some(&t), None).await.0, 200);
    api.login(&name).await;
    assert_eq!(api.join(&t, &room).await, j);
    let (_, after) = api.messages(&t, &room, "").await;
    assert_eq!(after, before);
    let (s, again) = api.send(&t, &room, "once", "before restart").await;
    assert_eq!((s, &again), (200, &first), "idempotent across a restart");
    let (_, next) = api.send(&t, &room, "twice", "after restart").await;
    assert_eq!(next["seq"].as_u64(), Some(first["seq"].as_u64().unwrap() + 1));
}

async fn rate_limits_answer_429_with_retry_after(b: Backend) {
    let h = Harness::start_with(b, |c| c.rate_limit = true).await;
    let api = h.api();
    // register: 10 per address, then 429
    let mut statuses = Vec::new();
    for i in 0..11 {
        let (s, v) = api.register(&uniq(&format!("rl{i}")), "1").await; // refused fast by the policy, still counted
        statuses.push((s, v));
    }
    assert!(statuses[..10].iter().all(|(s, _)| *s == 400), "{statuses:?}");
    let (s, v) = &statuses[10];
    assert_eq!((*s, v["errcode"].as_str()), (429, Some("rate_limited")));
    assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 6000), "{v}");
    // login: 10 per username
    let mut last = (0, Value::Null);
    for _ in 0..11 {
        last =
            api.call("POST", "/login", None, Some(json!({"username": "victim", "password": "wrong-password"}))).await;
    }
    assert_eq!((last.0, last.1["errcode"].as_str()), (429, Some("rate_limited")));
    assert!(last.1["retry_after_ms"].as_u64().is_some());
}

async fn slow_clients_are_cut_off(b: Backend) {
    let h = Harness::start_with(b, |c| {
        c.header_timeout = Duration::from_millis(500);
        c.body_timeout = Duration::from_millis(500);
    })
    .await;
    // Headers dripped slowly: the connection is closed.
    let mut sock = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
    sock.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the server closed a slow-drip connection");
    assert!(t.elapsed() < Duration::from_secs(4));
    // Body promised but never sent: 408.
    let mut sock = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
    sock.write_all(format!("POST {P}/register HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"));
    assert_eq!(h.api().raw("GET", "/_parlor/versions", None, vec![]).await.0, 200);
}

async fn connection_cap_closes_extra_connections(b: Backend) {
    let h = Harness::start_with(b, |c| c.max_connections = 3).await;
    let mut held = Vec::new();
    // The harness's health check may hold a place for a moment after its
    // answer: a refused connection here is retried until that place is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 3 {
        let mut s = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
        let _ = s.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = vec![0u8; 1024];
        if s.read(&mut buf).await.is_ok_and(|n| n > 0) {
            held.push(s);
        } else {
            assert!(Instant::now() < deadline, "only {} connections were served under a cap of 3", held.len());
        }
    }
    let mut extra = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
    let _ = extra.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = vec![0u8; 1024];
    let n =
        tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await.expect("closed at once").unwrap_or(0);
    assert_eq!(n, 0, "the connection over the cap is closed without an answer");
    drop(held);
    // Slots come back once connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
        let _ = s.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = vec![0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
            && n > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Many account and membership writes at once, each flushed before its
/// answer: none may hang (sled 0.34's `flush_async` could, under exactly this).
async fn concurrent_account_and_room_writes_do_not_hang(b: Backend) {
    let h = Harness::start(b).await;
    let api = h.api();
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(api.user(&uniq(&format!("c{i}"))).await.1);
    }
    let work = async {
        let mut tasks = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            for r in 0..8 {
                let (api, t) = (api.clone(), t.clone());
                tasks.push(tokio::spawn(async move {
                    let room = format!("cw{r}");
                    api.join(&t, &room).await;
                    let (s, _) = api.send(&t, &room, &format!("t{i}"), "x").await;
                    assert_eq!(s, 200);
                    let (s, _) = api.call("POST", &format!("/rooms/{room}/leave"), Some(&t), None).await;
                    assert_eq!(s, 200);
                    api.join(&t, &room).await;
                }));
            }
        }
        for name in 0..6 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let (s, _) = api.register(&uniq(&format!("cr{name}")), "zebra-quartz-71").await;
                assert_eq!(s, 201);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), work).await.expect("concurrent writes finished");
}

// ---------------------------------------------------------------------------
// The HTTP wire itself (the same on both backends, so run on the embedded one).

/// A connection from a given loopback address (Linux routes all of 127/8 to lo).
async fn connect_from(addr: std::net::SocketAddr, from: [u8; 4]) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Writes `bytes` and reads until the server closes (or 10 s pass).
async fn exchange(sock: &mut tokio::net::TcpStream, bytes: &[u8]) -> Vec<u8> {
    let _ = sock.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    buf
}

/// The answers in a byte stream: (status, lower-case head, JSON body).
fn answers(mut raw: &[u8]) -> Vec<(u16, String, Value)> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
        let body = &raw[end + 4..(end + 4 + len).min(raw.len())];
        out.push((status, head, serde_json::from_slice(body).unwrap_or(Value::Null)));
        raw = &raw[(end + 4 + len).min(raw.len())..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_refuses_get_the_spec_error_body() {
    let h = Harness::start(Backend::Embedded).await;
    let addr = h.server.addr;
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: a\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"\x00\x01GARBAGE\r\n\r\n".to_vec(), 400, "malformed_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n".to_vec(), 400, "malformed_request"),
        (format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(), 431, "headers_too_large"),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(17_000)).into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(9000)).into_bytes(),
            414,
            "uri_too_long",
        ),
    ];
    for (bytes, status, code) in cases {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let raw = exchange(&mut sock, &bytes).await;
        let got = answers(&raw);
        assert_eq!(got.len(), 1, "{}", String::from_utf8_lossy(&raw));
        let (s, head, body) = &got[0];
        assert_eq!((*s, body["errcode"].as_str()), (status, Some(code)), "{}", String::from_utf8_lossy(&raw));
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // After answers of its own on the same connection, too.
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = exchange(
        &mut sock,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nBAD\x01 x\r\n\r\n",
    )
    .await;
    let got: Vec<_> = answers(&raw).into_iter().map(|(s, _, v)| (s, v["errcode"].clone())).collect();
    assert_eq!(got, [(200, Value::Null), (200, Value::Null), (400, json!("malformed_request"))]);
    assert_eq!(h.api().raw("GET", "/_parlor/versions", None, vec![]).await.0, 200, "the server lives on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_types_auth_schemes_and_query_parameters_as_the_spec_says() {
    let h = Harness::start(Backend::Embedded).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = uniq("conv");
    api.join(&t, &room).await;
    let send = format!("{P}/rooms/{}/send/", enc(&room));
    let req = |ct: Option<&str>, auth: &str, path: &str, body: &str| {
        let mut r = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\n");
        if let Some(ct) = ct {
            r += &format!("Content-Type: {ct}\r\n");
        }
        format!("{r}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    };
    let bearer = format!("Bearer {t}");
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (
            req(Some("text/plain"), &bearer, &format!("{send}a1"), r#"{"body":"x"}"#),
            415,
            Some("unsupported_media_type"),
        ),
        (
            req(Some("application/x-www-form-urlencoded"), &bearer, &format!("{send}a2"), "body=x"),
            415,
            Some("unsupported_media_type"),
        ),
        (req(None, &bearer, &format!("{send}a3"), r#"{"body":"x"}"#), 200, None),
        (req(Some("Application/JSON; charset=utf-8"), &bearer, &format!("{send}a4"), r#"{"body":"x"}"#), 200, None),
        (req(Some("application/json"), &format!("bearer {t}"), &format!("{send}a5"), r#"{"body":"x"}"#), 200, None),
        (req(Some("application/json"), &format!("BEARER   {t}"), &format!("{send}a6"), r#"{"body":"x"}"#), 200, None),
        (
            req(Some("application/json"), "Basic YW5uOnB3", &format!("{send}a7"), r#"{"body":"x"}"#),
            401,
            Some("missing_token"),
        ),
        (req(Some("application/json"), "Bearer ", &format!("{send}a8"), r#"{"body":"x"}"#), 401, Some("missing_token")),
        (
            req(
                Some("application/json"),
                &format!("Bearer {}", "x".repeat(43)),
                &format!("{send}a8"),
                r#"{"body":"x"}"#,
            ),
            401,
            Some("unknown_token"),
        ),
        // A required body that is empty is not JSON at all.
        (req(Some("application/json"), &bearer, &format!("{send}a9"), ""), 400, Some("malformed_json")),
        (req(Some("text/plain"), &bearer, &format!("{send}a10"), "  "), 400, Some("malformed_json")),
    ];
    for (bytes, status, code) in cases {
        let mut sock = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
        let raw = exchange(&mut sock, &bytes).await;
        let (s, _, v) = answers(&raw).pop().unwrap();
        assert_eq!((s, v["errcode"].as_str()), (status, code), "{}: {v}", String::from_utf8_lossy(&bytes));
    }
    // An optional body may be empty, whatever it is labelled.
    let mut sock = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
    let join = format!(
        "POST {P}/rooms/{}/join HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {bearer}\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
        enc(&room)
    );
    assert_eq!(answers(&exchange(&mut sock, join.as_bytes()).await)[0].0, 200);
    // Unknown query parameters are ignored, on every endpoint.
    let (s, page) = api.messages(&t, &room, "limit=2&_=1700000000&colour=blue").await;
    assert_eq!((s, page["events"].as_array().map(Vec::len)), (200, Some(2)), "{page}");
    assert_eq!(api.call("GET", "/account/whoami?x=1", Some(&t), None).await.0, 200);
    // A room that does not exist: 404 on members and leave too.
    for (method, path) in [("GET", "members"), ("POST", "leave"), ("GET", "messages")] {
        let (s, v) = api.call(method, &format!("/rooms/{}/{path}", enc(&uniq("nosuch"))), Some(&t), None).await;
        assert_eq!((s, v["errcode"].as_str()), (404, Some("room_not_found")), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_checked_after_auth_and_invalid_param_before_invalid_room() {
    let h = Harness::start(Backend::Embedded).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    // A path parameter that is not UTF-8 is a parameter check: auth first.
    let (s, v) = api.raw("GET", &format!("{P}/rooms/%FF%FE/members"), None, vec![]).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("missing_token")));
    let (s, v) = api.raw("GET", &format!("{P}/rooms/%FF%FE/members"), Some(&t), vec![]).await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_param")));
    // Both a bad parameter and a bad room: invalid_param.
    let (s, v) = api.send(&t, "bad room!", "bad$txn", "x").await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_param")));
    for q in ["limit=0", "before=1&after=2", "limit=x"] {
        let (s, v) = api.messages(&t, "bad room!", q).await;
        assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_param")), "{q}");
    }
    // A cursor past the head is an empty page, not an error.
    let room = uniq("head");
    api.join(&t, &room).await;
    let (s, page) = api.messages(&t, &room, "after=1000").await;
    assert_eq!((s, page["events"].clone(), page["latest_seq"].as_u64()), (200, json!([]), Some(1)), "{page}");
    assert!(page["epoch"].as_str().is_some_and(|e| !e.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_send_bucket_is_429_whatever_the_parameters() {
    let h = Harness::start_with(Backend::Embedded, |c| c.rate_limit = true).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = uniq("rl");
    api.join(&t, &room).await;
    // Sends refused for their txn_id still take tokens: drain the bucket with them.
    let mut drained = false;
    for _ in 0..2000 {
        let (s, v) = api.send(&t, &room, "bad%21txn", "x").await;
        if s == 429 {
            drained = true;
            break;
        }
        assert_eq!((s, v["errcode"].as_str()), (400, Some("invalid_param")));
    }
    assert!(drained, "2,000 sends with a bad txn_id and none rate limited: the limit comes after the parameters");
    // The bucket refills one token per 20 ms: a burst of each, at least one 429.
    let cases = [
        (room.clone(), "bad%21txn", 400),
        ("bad room".to_owned(), "t1", 400),
        (uniq("nosuchroom"), "t1", 404),
        (room.clone(), "too-big", 413),
    ];
    for (r, txn, refused) in cases {
        let body = if txn == "too-big" { "x".repeat(20_000) } else { "x".to_owned() };
        let burst: Vec<_> = (0..8).map(|_| api.send(&t, &r, txn, &body)).collect();
        let statuses: Vec<u16> = futures_util::future::join_all(burst).await.into_iter().map(|(s, _)| s).collect();
        assert!(statuses.contains(&429), "{r}/{txn}: {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 429 || *s == refused), "{r}/{txn}: {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let h = Harness::start_with(Backend::Embedded, |c| {
        c.max_connections = 50;
        c.max_connections_per_address = 3;
    })
    .await;
    let addr = h.server.addr;
    let get = b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\n\r\n";
    let served = |mut s: tokio::net::TcpStream| async move {
        let _ = s.write_all(get).await;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.ok()?.unwrap_or(0);
        (n > 0).then_some(s)
    };
    let greedy = [127, 0, 0, 3];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(served(connect_from(addr, greedy).await).await.expect("within the per-address cap"));
    }
    assert!(served(connect_from(addr, greedy).await).await.is_none(), "a 4th connection from one address is closed");
    // Others are served all the same.
    for other in [[127, 0, 0, 4], [127, 0, 0, 5]] {
        assert!(served(connect_from(addr, other).await).await.is_some(), "{other:?} was refused");
    }
    // A place freed is a place taken again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(connect_from(addr, greedy).await).await.is_none() {
        assert!(Instant::now() < deadline, "the per-address place was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A room of `n` messages of 16 KiB each after the creator's join.
async fn big_room(api: &support::Api, t: &str, n: usize) -> String {
    let room = uniq("big");
    api.join(t, &room).await;
    let body = "x".repeat(16 * 1024);
    for i in 0..n {
        assert_eq!(api.send(t, &room, &format!("b{i}"), &body).await.0, 200);
    }
    room
}

fn seq_list(page: &Value) -> Vec<u64> {
    page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_cut_to_their_byte_limit() {
    let h = Harness::start(Backend::Embedded).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = big_room(&api, &t, 80).await;
    let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
    // Forwards: the earliest events that fit, then on from the last one.
    let (s, first) = api.messages(&t, &room, "after=0&limit=1000").await;
    assert_eq!(s, 200);
    let got = seq_list(&first);
    assert!(got.len() < 81 && size(&first) <= 1 << 20, "{} events, {} bytes", got.len(), size(&first));
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    let mut seen = got;
    while *seen.last().unwrap() < 81 {
        let (_, p) = api.messages(&t, &room, &format!("after={}&limit=1000", seen.last().unwrap())).await;
        assert!(size(&p) <= 1 << 20);
        seen.extend(seq_list(&p));
    }
    assert_eq!(seen, (1..=81).collect::<Vec<_>>());
    // Backwards: the latest events that fit, then on from the first one.
    let (_, latest) = api.messages(&t, &room, "limit=1000").await;
    let mut seen = seq_list(&latest);
    assert!(seen.len() < 81 && *seen.last().unwrap() == 81 && size(&latest) <= 1 << 20);
    while seen[0] > 1 {
        let (_, p) = api.messages(&t, &room, &format!("before={}&limit=1000", seen[0])).await;
        seen.splice(0..0, seq_list(&p));
    }
    assert_eq!(seen, (1..=81).collect::<Vec<_>>());
    // Small pages are untouched.
    let (_, few) = api.messages(&t, &room, "after=10&limit=5").await;
    assert_eq!(seq_list(&few), [11, 12, 13, 14, 15]);
}

/// A page of many small events is read in steps (64, then 128, …) and
/// joined without a hole or a repeat, whichever way it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_many_small_events_come_whole_and_in_order() {
    let h = Harness::start(Backend::Embedded).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = uniq("many");
    api.join(&t, &room).await;
    for i in 0..299 {
        assert_eq!(api.send(&t, &room, &format!("m{i}"), "hi").await.0, 200);
    }
    let range = |a: u64, b: u64| (a..=b).collect::<Vec<_>>();
    assert_eq!(seq_list(&api.messages(&t, &room, "limit=1000").await.1), range(1, 300));
    assert_eq!(seq_list(&api.messages(&t, &room, "limit=250").await.1), range(51, 300));
    assert_eq!(seq_list(&api.messages(&t, &room, "after=7&limit=200").await.1), range(8, 207));
    assert_eq!(seq_list(&api.messages(&t, &room, "after=100&limit=1000").await.1), range(101, 300));
    assert_eq!(seq_list(&api.messages(&t, &room, "before=290&limit=195").await.1), range(95, 289));
    assert_eq!(seq_list(&api.messages(&t, &room, "before=100&limit=1000").await.1), range(1, 99));
}

/// Clients that ask many pages at once and never read: once the kernel's
/// buffers are full their answers wait in the server, until the write
/// timeout closes their connections (their places under the per-address
/// cap show when).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_after_the_write_timeout() {
    let h = Harness::start_with(Backend::Embedded, |c| {
        c.max_connections_per_address = 2;
        c.write_timeout = Duration::from_secs(5);
    })
    .await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = big_room(&api, &t, 80).await;
    let addr = h.server.addr;
    let slow = [127, 0, 0, 6];
    let ask = format!(
        "GET {P}/rooms/{}/messages?after=0&limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n",
        enc(&room)
    );
    const ASKED: usize = 12;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind((std::net::Ipv4Addr::from(slow), 0).into()).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(ask.repeat(ASKED).as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // A connection from `from` that got an answer, kept open.
    let served = |from: [u8; 4]| async move {
        let mut s = connect_from(addr, from).await;
        let _ = s.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.ok()?.unwrap_or(0);
        (n > 0).then_some(s)
    };
    assert!(served(slow).await.is_none(), "the stalled connections were closed too soon (or not counted)");
    // Both places of the address come free: both stalled connections are gone.
    let started = Instant::now();
    loop {
        if let Some(_first) = served(slow).await
            && served(slow).await.is_some()
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "connections that never read were never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What they read in the end stops short: the server gave up on them.
    for mut s in stalled {
        let mut raw = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
        assert!(r.is_ok(), "the server did not close the connection");
        let complete = answers(&raw).iter().filter(|(s, _, v)| *s == 200 && v["events"].is_array()).count();
        assert!(complete < ASKED, "all {ASKED} answers arrived ({} bytes)", raw.len());
    }
}

/// The response budget is what pages may take: with none left, a page
/// holds one event (the nearest its cursor) and still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_shrink_to_one_event_when_the_response_budget_is_spent() {
    let h = Harness::start_with(Backend::Embedded, |c| c.response_budget = 0).await;
    let api = h.api();
    let (_, t) = api.user(&uniq("ann")).await;
    let room = uniq("tight");
    api.join(&t, &room).await;
    for i in 0..5 {
        api.send(&t, &room, &format!("t{i}"), "hello").await;
    }
    let (s, page) = api.messages(&t, &room, "limit=50").await;
    assert_eq!((s, seq_list(&page), page["latest_seq"].as_u64()), (200, vec![6], Some(6)));
    assert_eq!(seq_list(&api.messages(&t, &room, "after=0").await.1), [1]);
    assert_eq!(seq_list(&api.messages(&t, &room, "before=4").await.1), [3]);
    assert_eq!(seq_list(&api.messages(&t, &room, "after=6").await.1), Vec::<u64>::new());
}

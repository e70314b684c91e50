//! The real binary's logs, as an operator's log shipper reads them:
//! `--log-format json` gives one JSON object per line, every request has an
//! access line (method, route template, status, ms, client address),
//! WebSockets log their open and close with the close code, and no token,
//! password, query string or message body ever reaches the log (nor a room
//! name through an access line). Text logs carry no colour codes when
//! stderr is not a terminal.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Api, LoggedProcess, P, WsClient, health_status, uniq};

async fn healthy(proc: &LoggedProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while health_status(proc.addr).await != Some(200) {
        assert!(Instant::now() < deadline, "not healthy within 30 s: {}", proc.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Traffic with secrets in every place a careless log would pick them up:
/// the password, the token in a header and in a WebSocket frame, a query
/// string, a message body. Returns the secrets, and the room name (in paths).
async fn traffic(proc: &LoggedProcess) -> (Vec<String>, String) {
    let api = Api::new(&proc.url);
    let name = uniq("logan");
    let password = "zebra-quartz-71";
    let (_, token) = api.user(&name).await;
    let room = uniq("secretroom");
    api.join(&token, &room).await;
    assert_eq!(api.send(&token, &room, "t1", "a private message").await.0, 200);
    let (s, _) = api.messages(&token, &room, "limit=5&access_token=QUERYSECRET").await;
    assert_eq!(s, 200);
    assert_eq!(api.call("GET", "/account/whoami", Some("not-a-real-token"), None).await.0, 401);
    // One WebSocket authenticated by header, one by its first frame; both closed by the client (1000).
    let mut by_header = WsClient::authed(&proc.url, &token).await;
    by_header.ws.close(None).await.unwrap();
    assert_eq!(by_header.closed().await, Some(1000));
    let mut by_frame = WsClient::connect(&proc.url, None).await;
    by_frame.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(by_frame.recv().await["type"], "ready");
    by_frame.ws.close(None).await.unwrap();
    assert_eq!(by_frame.closed().await, Some(1000));
    (vec![token, password.to_owned(), "QUERYSECRET".to_owned(), "a private message".to_owned()], room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_access_lines_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let proc = LoggedProcess::spawn(
        &dir.path().join("data"),
        &["--log-format", "json", "--rate-limit", "off", "--metrics-listen", "127.0.0.1:0"],
        &[],
    );
    healthy(&proc).await;
    let (secrets, room) = traffic(&proc).await;
    assert!(proc.wait_for_log("websocket closed", 2, Duration::from_secs(30)), "{}", proc.log_text());
    // A head hyper refuses by itself gets its access line too.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut raw = tokio::net::TcpStream::connect(proc.addr).await.unwrap();
        raw.write_all(b"\x00\x01GARBAGE\r\n\r\n").await.unwrap();
        let _ = raw.read_to_end(&mut Vec::new()).await;
    }
    assert!(proc.wait_for_log("\"unparsed\"", 1, Duration::from_secs(30)), "{}", proc.log_text());
    // The binary's metrics flag serves, too.
    let metrics = proc.metrics.expect("--metrics-listen printed its address");
    assert_eq!(health_status_of(metrics, "/metrics").await, Some(200));

    let log = proc.log_text();
    assert!(!log.contains('\u{1b}'), "no colour codes in a file");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret:?} is in the log:\n{log}");
    }
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "parlor::access").collect();
    for line in &access {
        assert!(!line.to_string().contains(&room), "a room name in an access line: {line}");
    }
    let send = access
        .iter()
        .find(|l| l["route"] == "/_parlor/client/v1/rooms/{room}/send/{txn_id}")
        .unwrap_or_else(|| panic!("an access line for the send: {access:#?}"));
    assert_eq!(send["method"], "PUT");
    assert_eq!(send["status"], 200);
    assert_eq!(send["client"], "127.0.0.1");
    assert!(send["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{send}");
    assert!(send["timestamp"].is_string() && send["level"] == "INFO", "{send}");
    let statuses: Vec<(String, u64)> =
        access.iter().map(|l| (l["route"].as_str().unwrap().to_owned(), l["status"].as_u64().unwrap())).collect();
    for want in [
        ("/_parlor/client/v1/register", 201),
        ("/_parlor/client/v1/login", 200),
        ("/_parlor/client/v1/rooms/{room}/join", 200),
        ("/_parlor/client/v1/rooms/{room}/messages", 200),
        ("/_parlor/client/v1/account/whoami", 401),
        ("/_parlor/client/v1/ws", 101),
        ("unparsed", 400),
    ] {
        assert!(statuses.contains(&(want.0.to_owned(), want.1)), "{want:?} in {statuses:?}");
    }
    let opened = lines.iter().filter(|l| l["message"] == "websocket opened").count();
    let closed: Vec<&Value> = lines.iter().filter(|l| l["message"] == "websocket closed").collect();
    assert_eq!(opened, 2);
    assert_eq!(closed.len(), 2);
    for c in closed {
        assert_eq!(c["code"], 1000, "{c}");
        assert_eq!(c["client"], "127.0.0.1", "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let proc = LoggedProcess::spawn(&dir.path().join("data"), &["--rate-limit", "off"], &[]);
    healthy(&proc).await;
    let (secrets, room) = traffic(&proc).await;
    assert!(proc.wait_for_log("websocket closed", 2, Duration::from_secs(30)), "{}", proc.log_text());
    let log = proc.log_text();
    assert!(!log.contains('\u{1b}'), "no colour codes when stderr is not a terminal:\n{log}");
    assert!(log.lines().filter(|l| l.contains("parlor::access")).all(|l| !l.contains(&room)), "{log}");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret:?} is in the log:\n{log}");
    }
    let route = format!("route=\"{P}/rooms/{{room}}/send/{{txn_id}}\"");
    let line = log.lines().find(|l| l.contains(&route)).unwrap_or_else(|| panic!("an access line: {log}"));
    for field in ["parlor::access", "method=\"PUT\"", "status=200", "ms=", "client=127.0.0.1"] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(log.lines().any(|l| l.contains("websocket closed") && l.contains("code=1000")), "{log}");
}

/// The status of `GET path` on `addr`.
async fn health_status_of(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    std::str::from_utf8(buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?).ok()?.parse().ok()
}

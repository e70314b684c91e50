//! `/metrics` on its own listener, read by a real Prometheus parser
//! (`promtool check metrics`, from Debian's `prometheus` package, which
//! `scripts/setup` installs) and checked to move with what the server does:
//! requests by route template and status, message appends, deliveries,
//! WebSockets open and closed by code, slow consumers cut off (4008), the
//! room log up, the hashing queue, and the federation queue and backoff of a
//! destination that went down.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parlor::config::Config;
use serde_json::json;
use support::{Api, P, TestServer, WsClient, enc, uniq};

/// A server with a metrics listener, named to `peers` as federation peers.
async fn start(peers: &[SocketAddr], listener: tokio::net::TcpListener) -> (TestServer, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = metrics.local_addr().unwrap();
    let mut cfg: Config = TestServer::config(listener.local_addr().unwrap().port(), dir.path());
    cfg.federation_peers = peers.iter().map(|p| (p.to_string(), format!("http://{p}"))).collect();
    cfg.federation_retry_max = Duration::from_millis(800);
    cfg.federation_catch_up = Duration::from_secs(3600);
    let listeners = parlor::server::Listeners { client: listener, metrics: Some(metrics) };
    (TestServer::start_serving(listeners, cfg).await, at, dir)
}

async fn scrape(at: SocketAddr, path: &str) -> (u16, String, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp: http::Response<hyper::body::Incoming> =
        client.get(format!("http://{at}{path}").parse().unwrap()).await.expect("the metrics listener answers");
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

/// Runs `promtool check metrics` on `text`; fails the test on any complaint.
fn promtool_check(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("this test needs promtool: run scripts/setup (apt-get install prometheus)")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n---\n{text}");
}

/// Samples as `name{k="v",…}` → value, labels sorted.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let key = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let mut labels: Vec<&str> =
                    labels.trim_end_matches('}').split("\",").map(|l| l.trim_end_matches('"')).collect();
                labels.sort();
                let labels: Vec<String> = labels.iter().map(|l| format!("{l}\"")).collect();
                format!("{name}{{{}}}", labels.join(","))
            }
        };
        out.insert(key, value);
    }
    out
}

/// The value of `name` with exactly `labels` (0 when absent: a counter not yet moved).
fn value(s: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        l.sort();
        format!("{name}{{{}}}", l.join(","))
    };
    s.get(&key).copied().unwrap_or(0.0)
}

async fn until(at: SocketAddr, what: &str, ok: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = samples(&scrape(at, "/metrics").await.2);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} within 30 s; last scrape: {s:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SEND: &str = "/_parlor/client/v1/rooms/{room}/send/{txn_id}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_what_the_server_does_and_parse() {
    let (la, lb) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (a_addr, b_addr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let (a, at, _da) = start(&[b_addr], la).await;
    let (b, _, _db) = start(&[a_addr], lb).await;
    let (api, bapi) = (Api::new(&a.url), Api::new(&b.url));

    let (status, ctype, text) = scrape(at, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    promtool_check(&text);
    assert_eq!(scrape(at, "/").await.0, 404, "only /metrics is served there");

    let room = uniq("metered");
    let (_, ann) = api.user(&uniq("ann")).await;
    let (_, bob) = api.user(&uniq("bob")).await;
    api.join(&ann, &room).await;
    api.join(&bob, &room).await;
    let mut ws = WsClient::authed(&a.url, &bob).await;
    ws.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    ws.until("caught_up").await;

    let before = samples(&scrape(at, "/metrics").await.2);
    assert_eq!(value(&before, "parlor_websockets_open", &[]), 1.0);
    assert_eq!(value(&before, "parlor_room_log_up", &[("backend", "embedded")]), 1.0);
    assert!(before.contains_key("parlor_hash_queue_depth{lane=\"known\"}"), "{before:#?}");
    let sent = [("method", "PUT"), ("route", SEND), ("status", "200")];
    assert_eq!(api.send(&ann, &room, "t1", "hello").await.0, 200);
    assert_eq!(ws.until("event").await.0["event"]["body"], "hello");
    assert_eq!(api.send(&ann, &room, "t1", "hello").await.0, 200, "an idempotent retry");
    let after = samples(&scrape(at, "/metrics").await.2);
    let delta = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(delta("parlor_message_appends_total", &[("outcome", "stored")]), 1.0);
    assert_eq!(delta("parlor_message_appends_total", &[("outcome", "repeated")]), 1.0);
    assert_eq!(delta("parlor_message_append_duration_seconds_count", &[]), 2.0);
    assert_eq!(delta("parlor_websocket_deliveries_total", &[]), 1.0, "one event, one subscriber");
    assert_eq!(delta("parlor_http_requests_total", &sent), 2.0);
    assert_eq!(delta("parlor_http_request_duration_seconds_count", &sent), 2.0);
    let le_inf = [("method", "PUT"), ("route", SEND), ("status", "200"), ("le", "+Inf")];
    assert_eq!(delta("parlor_http_request_duration_seconds_bucket", &le_inf), 2.0);

    // A user of B joins: A pushes the room to B. Then B goes down, and A's
    // queue for it grows while its pusher backs off.
    let (_, carol) = bapi.user(&uniq("carol")).await;
    let alias = format!("#{room}:{a_addr}");
    let (s, v) = bapi.call("POST", &format!("/rooms/{}/join", enc(&alias)), Some(&carol), None).await;
    assert_eq!(s, 200, "{v}");
    let b_name = b_addr.to_string();
    let dest = [("destination", b_name.as_str())];
    // The next event of the room is pushed to B: B is a destination, with
    // nothing left waiting once it took it.
    assert_eq!(api.send(&ann, &room, "to-b", "hello B").await.0, 200);
    let known = format!("parlor_federation_queue_depth{{destination=\"{b_name}\"}}");
    until(at, "B a destination with nothing waiting", |s| s.get(&known) == Some(&0.0)).await;
    b.stop().await;
    for n in 0..3 {
        assert_eq!(api.send(&ann, &room, &format!("d{n}"), "while B is down").await.0, 200);
    }
    let s = until(at, "a queue and a backoff for B", |s| {
        value(s, "parlor_federation_queue_depth", &dest) >= 1.0
            && value(s, "parlor_federation_backoff_seconds", &dest) > 0.0
    })
    .await;
    assert_eq!(value(&s, "parlor_federation_destination_down", &dest), 0.0);

    // Logging out closes bob's WebSocket with 4001.
    assert_eq!(api.call("POST", "/logout", Some(&bob), Some(json!({}))).await.0, 200);
    assert_eq!(ws.closed().await, Some(4001));
    until(at, "the close counted", |s| {
        value(s, "parlor_websocket_closes_total", &[("code", "4001")]) == 1.0
            && value(s, "parlor_websockets_open", &[]) == 0.0
    })
    .await;

    let (_, _, text) = scrape(at, "/metrics").await;
    promtool_check(&text);
    assert!(!text.contains(&room), "no room name in any label");
    assert!(!text.contains(&ann) && !text.contains(&bob), "no token");
    a.stop().await;
}

/// A path that matched no route is counted as `unmatched`, whatever it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_paths_do_not_make_labels() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, at, _d) = start(&[], listener).await;
    let api = Api::new(&a.url);
    for n in 0..5 {
        assert_eq!(api.raw("GET", &format!("{P}/no-such-{n}"), None, Vec::new()).await.0, 404);
    }
    assert_eq!(api.raw("BREW", "/pot", None, Vec::new()).await.0, 404);
    let (_, _, text) = scrape(at, "/metrics").await;
    let s = samples(&text);
    assert_eq!(
        value(&s, "parlor_http_requests_total", &[("method", "GET"), ("route", "unmatched"), ("status", "404")]),
        5.0
    );
    assert_eq!(
        value(&s, "parlor_http_requests_total", &[("method", "other"), ("route", "unmatched"), ("status", "404")]),
        1.0
    );
    assert!(!text.contains("no-such") && !text.contains("BREW") && !text.contains("/pot"), "{text}");
    promtool_check(&text);
    a.stop().await;
}

/// A subscriber that stops reading is cut off with 4008, and counted as a
/// slow consumer and as a close with that code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = metrics.local_addr().unwrap();
    let mut cfg: Config = TestServer::config(listener.local_addr().unwrap().port(), dir.path());
    // A small outbound queue: once the socket buffers are full, it
    // overflows after a few messages.
    cfg.ws_outbound_limit = 64 << 10;
    let a =
        TestServer::start_serving(parlor::server::Listeners { client: listener, metrics: Some(metrics) }, cfg).await;
    let api = Api::new(&a.url);
    let room = uniq("slow");
    let (_, ann) = api.user(&uniq("ann")).await;
    let (_, bob) = api.user(&uniq("bob")).await;
    api.join(&ann, &room).await;
    api.join(&bob, &room).await;
    let mut stalled = WsClient::authed(&a.url, &bob).await;
    stalled.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    stalled.until("caught_up").await;
    let mut sender = WsClient::authed(&a.url, &ann).await;
    let body = "x".repeat(16_000);
    // Rounds of 20 acked sends until the server has cut the stalled reader
    // off (loopback buffers hold some MB first); bounded at 64 MB.
    let slow = |s: &BTreeMap<String, f64>| value(s, "parlor_websocket_slow_consumer_closes_total", &[]);
    let mut n = 0;
    while slow(&samples(&scrape(at, "/metrics").await.2)) < 1.0 {
        assert!(n < 4000, "no 4008 after {n} messages of 16 kB to a client that does not read");
        for _ in 0..20 {
            n += 1;
            sender.send(json!({"type": "send", "room": room, "txn_id": format!("m{n}"), "body": body})).await;
        }
        for _ in 0..20 {
            assert_eq!(sender.until("ack").await.0["type"], "ack");
        }
    }
    assert_eq!(stalled.closed().await, Some(4008));
    let s = until(at, "the close counted", |s| value(s, "parlor_websockets_open", &[]) == 1.0).await;
    assert_eq!(slow(&s), 1.0);
    assert_eq!(value(&s, "parlor_websocket_closes_total", &[("code", "4008")]), 1.0);
    promtool_check(&scrape(at, "/metrics").await.2);
    a.stop().await;
}

/// `parlor_room_log_up` follows a real Redis: 1 while it answers, 0 while
/// it is down, 1 again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_log_up_follows_redis() {
    let mut redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = metrics.local_addr().unwrap();
    let mut cfg: Config = TestServer::config(listener.local_addr().unwrap().port(), dir.path());
    cfg.redis = Some(redis.url.clone());
    let a =
        TestServer::start_serving(parlor::server::Listeners { client: listener, metrics: Some(metrics) }, cfg).await;
    let up = |s: &BTreeMap<String, f64>| s.get("parlor_room_log_up{backend=\"redis\"}").copied();
    until(at, "redis up", |s| up(s) == Some(1.0)).await;
    redis.kill();
    until(at, "redis down", |s| up(s) == Some(0.0)).await;
    redis.restart(&[]);
    until(at, "redis up again", |s| up(s) == Some(1.0)).await;
    promtool_check(&scrape(at, "/metrics").await.2);
    a.stop().await;
}

/// What ends before any request is answered is counted too: a request
/// head hyper refuses by itself (its own 400, sent with the spec's body)
/// reads `unparsed` / `unparsed`; a connection over the per-address cap,
/// and TLS handshakes that fail or never finish, count under
/// `parlor_connections_refused_total` by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_below_http_are_counted() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    let pki = support::tls::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"]).write(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = metrics.local_addr().unwrap();
    let mut cfg: Config = TestServer::config(listener.local_addr().unwrap().port(), &dir.path().join("data"));
    cfg.tls = Some(parlor::config::TlsFiles { cert, key });
    cfg.max_connections_per_address = 2;
    cfg.header_timeout = Duration::from_secs(3);
    let a =
        TestServer::start_serving(parlor::server::Listeners { client: listener, metrics: Some(metrics) }, cfg).await;
    let client = pki.client();
    support::tls::wait_healthy(a.addr, &client).await;

    // A request head hyper cannot parse, over TLS: answered 400 with the spec's body.
    let mut tls = support::tls::connect(a.addr, &client).await;
    tls.write_all(b"\x00\x01GARBAGE\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("malformed_request"), "{answer}");
    drop(tls);

    // Plain HTTP to the TLS port: the handshake fails.
    let mut plain = TcpStream::connect(a.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let _ = plain.read_to_end(&mut Vec::new()).await;
    drop(plain);

    // Two connections from one address that never start a handshake, then
    // a third: refused at once; the two are cut at the header timeout.
    let held = (TcpStream::connect(a.addr).await.unwrap(), TcpStream::connect(a.addr).await.unwrap());
    let mut third = TcpStream::connect(a.addr).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), third.read_to_end(&mut Vec::new())).await;
    let s = until(at, "the refusals counted", |s| {
        value(s, "parlor_connections_refused_total", &[("reason", "address_full")]) >= 1.0
            && value(s, "parlor_connections_refused_total", &[("reason", "tls_handshake_timeout")]) >= 1.0
    })
    .await;
    drop(held);
    assert_eq!(
        value(&s, "parlor_http_requests_total", &[("method", "unparsed"), ("route", "unparsed"), ("status", "400")]),
        1.0
    );
    assert_eq!(value(&s, "parlor_connections_refused_total", &[("reason", "tls_handshake_failed")]), 1.0);
    promtool_check(&scrape(at, "/metrics").await.2);
    a.stop().await;
}

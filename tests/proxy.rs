//! Parlor behind a real nginx (Debian's `nginx`, which `scripts/setup`
//! installs), configured by `contrib/nginx.conf` itself: TLS ends at nginx,
//! register, login, send and a WebSocket work through it, and Parlor, told
//! to trust nginx (`--trusted-proxy`), keys rate limits and access lines by
//! the client's address from `X-Forwarded-For`, never by nginx's own and
//! never by what a client wrote in that header itself.
//!
//! nginx runs as this test's child with its own prefix, pid file and logs,
//! on 127.0.0.2; clients connect from 127.0.0.3 and 127.0.0.4 (all loopback)
//! so that each party has its own address.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::tls::{Https, Pki, connect_from, wss_over};
use support::{LoggedProcess, P, free_port, health_status, nginx, uniq};

const NGINX_ADDR: &str = "127.0.0.2";

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_with_tls_and_forwarded_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path());
    // Parlor trusts the address nginx connects from, with rate limits on.
    let parlor = LoggedProcess::spawn(
        &dir.path().join("data"),
        &["--trusted-proxy", "127.0.0.1/32", "--log-format", "json"],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while health_status(parlor.addr).await != Some(200) {
        assert!(Instant::now() < deadline, "parlor not healthy: {}", parlor.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let https: SocketAddr = format!("{NGINX_ADDR}:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("{NGINX_ADDR}:{}", free_port()).parse().unwrap();
    let nginx =
        nginx::run(&dir.path().join("nginx"), &nginx::tls_site(&[parlor.addr], https, http, &cert, &key), https);
    let client = pki.client();

    // Plain HTTP is redirected to HTTPS.
    let (status, location) = redirect(http).await;
    assert_eq!(status, 301);
    assert!(location.starts_with("https://"), "{location}");

    // A client at 127.0.0.3 that also claims, in the header, to be 6.6.6.6.
    let from3 = ip("127.0.0.3");
    let mut c3 = Https::over(connect_from(https, from3, &client).await, https).await;
    c3.headers.push(("x-forwarded-for".into(), "6.6.6.6".into()));
    let (_, ann) = c3.user(&uniq("ann")).await;
    let room = uniq("proxied");
    assert_eq!(c3.call("POST", &format!("{P}/rooms/{room}/join"), Some(&ann), None).await.0, 200);

    // A WebSocket through nginx, from a page on nginx's origin.
    let ws_stream = connect_from(https, from3, &client).await;
    let mut ws = wss_over(ws_stream, https, &ann).await;
    ws.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    ws.until("caught_up").await;
    let (s, v) =
        c3.call("PUT", &format!("{P}/rooms/{room}/send/t1"), Some(&ann), Some(json!({"body": "via nginx"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ws.until("event").await.0["event"]["body"], "via nginx");
    ws.send(json!({"type": "send", "id": "w", "room": room, "txn_id": "w1", "body": "over the socket"})).await;
    assert_eq!(ws.until("ack").await.0["id"], "w");

    // Rate limits count 127.0.0.3, not nginx: its registrations run out (10
    // in a burst; one was ann's) while 127.0.0.4's are untouched. Too-short
    // passwords: the limiter counts them before any hashing, so a slow
    // machine cannot refill the bucket between attempts.
    let mut refused = false;
    for n in 0..12 {
        let body = json!({"username": uniq(&format!("r{n}")), "password": "short"});
        match c3.call("POST", &format!("{P}/register"), None, Some(body)).await {
            (400, v) => assert_eq!(v["errcode"], "password_too_short", "{v}"),
            (429, v) => {
                assert_eq!(v["errcode"], "rate_limited");
                refused = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused, "127.0.0.3 ran out of registrations");
    let mut c4 = Https::over(connect_from(https, ip("127.0.0.4"), &client).await, https).await;
    c4.user(&uniq("bob")).await;

    // Parlor's access lines name each client by its own address.
    drop(ws);
    assert!(parlor.wait_for_log("websocket closed", 1, Duration::from_secs(30)), "{}", parlor.log_text());
    let log = parlor.log_text();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let clients_of = |route: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["target"] == "parlor::access" && l["route"] == route)
            .map(|l| l["client"].as_str().unwrap().to_owned())
            .collect()
    };
    let send = clients_of("/_parlor/client/v1/rooms/{room}/send/{txn_id}");
    assert_eq!(send, ["127.0.0.3"], "{log}");
    let registers = clients_of("/_parlor/client/v1/register");
    assert!(registers.iter().any(|c| c == "127.0.0.4"), "{registers:?}");
    assert!(registers.iter().all(|c| c == "127.0.0.3" || c == "127.0.0.4"), "{registers:?}");
    assert_eq!(clients_of("/_parlor/client/v1/ws"), ["127.0.0.3"]);
    let ws_lines: Vec<&Value> = lines.iter().filter(|l| l["message"] == "websocket opened").collect();
    assert_eq!(ws_lines.len(), 1);
    assert_eq!(ws_lines[0]["client"], "127.0.0.3");
    assert!(!log.contains("6.6.6.6"), "what a client writes in X-Forwarded-For is not believed");
    drop(nginx);
}

/// A plain-HTTP GET on nginx's port 80 stand-in: (status, Location).
async fn redirect(addr: SocketAddr) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text[9..12].parse().unwrap();
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
        .unwrap_or_default()
        .to_owned();
    (status, location)
}

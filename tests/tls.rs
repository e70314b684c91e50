//! TLS (`--tls-cert`, `--tls-key`) against a real rustls client and a CA
//! made at test time: HTTPS and WSS on the same port with a full chain, the
//! demo page, a certificate reloaded on SIGHUP while connections stay open
//! (and kept when the new files are bad), and refusals at start.

mod support;

use std::time::Duration;

use serde_json::json;
use support::tls::{Https, Pki, connect, peer_leaf, wait_healthy, wss, wss_over};
use support::{LoggedProcess, P, TestServer, uniq};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_on_one_port() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
    let (cert, key) = leaf.write(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = TestServer::config(listener.local_addr().unwrap().port(), &dir.path().join("data"));
    cfg.tls = Some(parlor::config::TlsFiles { cert, key });
    let server = TestServer::start_serving(parlor::server::Listeners { client: listener, metrics: None }, cfg).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let client = pki.client();
    wait_healthy(server.addr, &client).await;

    let stream = connect(server.addr, &client).await;
    assert_eq!(peer_leaf(&stream), leaf.der, "the leaf of the configured chain");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut https = Https::over(stream, server.addr).await;
    let (status, page) = {
        let (s, _) = https.call("GET", "/", None, None).await;
        (s, ())
    };
    assert_eq!((status, page), (200, ()), "the demo page over HTTPS");
    let (_, ann) = https.user(&uniq("ann")).await;
    let (_, bob) = https.user(&uniq("bob")).await;
    let room = uniq("tls");
    for t in [&ann, &bob] {
        let (s, v) = https.call("POST", &format!("{P}/rooms/{room}/join"), Some(t), None).await;
        assert_eq!(s, 200, "{v}");
    }

    let mut ws = wss(server.addr, &client, &bob).await;
    ws.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    assert_eq!(ws.until("caught_up").await.0["id"], "s");
    let (s, v) = https.call("PUT", &format!("{P}/rooms/{room}/send/t1"), Some(&ann), Some(json!({"body": "hi"}))).await;
    assert_eq!(s, 200, "{v}");
    let ev = ws.until("event").await.0;
    assert_eq!(ev["event"]["body"], "hi");
    // A burst both ways, larger than one TLS record.
    let big = "y".repeat(12_000);
    for n in 0..20 {
        ws.send(json!({"type": "send", "id": format!("w{n}"), "room": room, "txn_id": format!("w{n}"), "body": big}))
            .await;
    }
    let (mut acks, mut events) = (0, 0);
    while acks < 20 || events < 20 {
        let f = ws.recv().await;
        match f["type"].as_str() {
            Some("ack") => acks += 1,
            Some("event") => {
                assert_eq!(f["event"]["body"].as_str().map(str::len), Some(big.len()));
                events += 1;
            }
            _ => panic!("unexpected frame {f}"),
        }
    }

    // Logging out closes the token's WebSockets (4001), here over TLS.
    let (s, _) = https.call("POST", &format!("{P}/logout"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, 200);
    assert_eq!(ws.closed().await, Some(4001));

    // Plain HTTP on the TLS port gets no HTTP answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buf)).await.expect("closed");
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "no plain-text answer on a TLS port");
    server.stop().await;
}

/// A renewal as certbot does it: new files, then SIGHUP. New connections get
/// the new certificate; connections open before keep theirs and keep
/// working; a bad renewal is refused with an error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let first = pki.leaf(&["localhost"]);
    let (cert, key) = first.write(dir.path());
    let data = dir.path().join("data");
    let proc = LoggedProcess::spawn(
        &data,
        &["--rate-limit", "off"],
        &[("PARLOR_TLS_CERT", cert.to_str().unwrap()), ("PARLOR_TLS_KEY", key.to_str().unwrap())],
    );
    assert!(proc.url.starts_with("https://"), "{}", proc.url);
    let client = pki.client();
    wait_healthy(proc.addr, &client).await;

    // Connections opened before the renewal: a keep-alive HTTPS one and a WebSocket.
    let mut old_http = Https::connect(proc.addr, &client).await;
    assert_eq!(old_http.leaf, first.der);
    let (_, token) = old_http.user(&uniq("ann")).await;
    let room = uniq("renew");
    assert_eq!(old_http.call("POST", &format!("{P}/rooms/{room}/join"), Some(&token), None).await.0, 200);
    let ws_stream = connect(proc.addr, &client).await;
    assert_eq!(peer_leaf(&ws_stream), first.der);
    let mut old_ws = wss_over(ws_stream, proc.addr, &token).await;
    old_ws.send(json!({"type": "subscribe", "id": "s", "room": room})).await;
    old_ws.until("caught_up").await;

    let second = pki.leaf(&["localhost"]);
    second.replace(&cert, &key);
    proc.signal(rustix::process::Signal::HUP);
    assert!(proc.wait_for_log("TLS certificate reloaded", 1, Duration::from_secs(30)), "{}", proc.log_text());
    // A client of its own each time: a resumed session shows the certificate
    // its first handshake saw.
    assert_eq!(peer_leaf(&connect(proc.addr, &pki.client()).await), second.der, "new handshakes get the new one");

    // The old connections still work, and keep the session they had.
    let (s, v) = old_http
        .call("PUT", &format!("{P}/rooms/{room}/send/t1"), Some(&token), Some(json!({"body": "still here"})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(old_ws.until("event").await.0["event"]["body"], "still here");
    old_ws.send(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(old_ws.until("pong").await.0["id"], "p");

    // A bad renewal: a key that is not the certificate's, then a file that is not PEM.
    let third = pki.leaf(&["localhost"]);
    std::fs::write(&cert, &third.chain_pem).unwrap();
    proc.signal(rustix::process::Signal::HUP);
    assert!(proc.wait_for_log("TLS certificate not reloaded", 1, Duration::from_secs(30)), "{}", proc.log_text());
    std::fs::write(&key, "not a key").unwrap();
    proc.signal(rustix::process::Signal::HUP);
    assert!(proc.wait_for_log("TLS certificate not reloaded", 2, Duration::from_secs(30)), "{}", proc.log_text());
    let log = proc.log_text();
    assert!(log.contains("do not go together") && log.contains("not a PEM private key"), "{log}");
    assert_eq!(peer_leaf(&connect(proc.addr, &pki.client()).await), second.der, "a bad renewal keeps the current one");
    assert_eq!(old_http.call("GET", "/healthz", None, None).await.0, 200, "and the server runs on");
    old_ws.send(json!({"type": "ping", "id": "q"})).await;
    assert_eq!(old_ws.until("pong").await.0["id"], "q");
}

#[test]
fn unusable_certificates_refuse_to_start() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = pki.leaf(&["localhost"]).write(dir.path());
    let other_key = dir.path().join("other.pem");
    std::fs::write(&other_key, pki.leaf(&["localhost"]).key_pem).unwrap();
    let missing = dir.path().join("missing.pem");
    for (key, says) in [(&other_key, "do not go together"), (&missing, "cannot read")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "it never said it listens");
    }
    // One of the pair alone is a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

/// Without TLS, SIGHUP (a service manager's reload) is logged, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let proc = LoggedProcess::spawn(&dir.path().join("data"), &[], &[]);
    let healthy = || async { support::health_status(proc.addr).await == Some(200) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !healthy().await {
        assert!(std::time::Instant::now() < deadline, "not healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proc.signal(rustix::process::Signal::HUP);
    assert!(proc.wait_for_log("no TLS certificate to reload", 1, Duration::from_secs(30)), "{}", proc.log_text());
    assert!(healthy().await, "still serving");
}

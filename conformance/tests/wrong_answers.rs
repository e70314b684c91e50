//! The suite must fail a server that answers wrongly. A tiny fake server
//! (raw TCP, fixed answers) gives answers that are off-schema in different
//! ways, or well-formed but wrong (a key document that is not the server's);
//! the cases that read them must fail, not pass, and cases a server cannot
//! take part in (federation, when it has none) must say "not run".

use std::collections::HashMap;
use std::net::SocketAddr;

use conformance::{Config, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `answers[path] = (status, body)`; every other path gets a
/// well-formed 404 `not_found`.
async fn fake_server(answers: HashMap<&'static str, (u16, &'static str)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_owned();
                let (status, body) =
                    answers.get(path.as_str()).copied().unwrap_or((404, r#"{"errcode":"not_found","error":"no"}"#));
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

async fn outcomes(addr: SocketAddr, filter: &str) -> Vec<(String, Outcome)> {
    let cfg = Config { server: format!("http://{addr}"), filter: Some(filter.into()), ..Default::default() };
    let report = conformance::run(&cfg, |_| {}).await.unwrap();
    report.results.into_iter().map(|r| (r.name.to_owned(), r.outcome)).collect()
}

fn assert_schema_failure(results: &[(String, Outcome)], case: &str, schema: &str) {
    let (_, outcome) = results.iter().find(|(n, _)| n == case).unwrap_or_else(|| panic!("{case} did not run"));
    match outcome {
        Outcome::Fail(reason) => {
            assert!(reason.contains(&format!("violates {schema}")), "{case} failed, but not on {schema}: {reason}")
        }
        other => panic!("{case} should fail on {schema}, got {other:?}"),
    }
}

#[tokio::test]
async fn off_schema_answers_fail_their_cases() {
    let addr = fake_server(HashMap::from([
        // `versions` must be an array.
        (
            "/_parlor/versions",
            (200, r#"{"versions":"v1","server":{"name":"127.0.0.1:1","version":"fake"},"registration":"open"}"#),
        ),
        // `room_log` is missing.
        ("/healthz", (200, r#"{"status":"ok"}"#)),
        // An errcode that is not in the spec's table.
        ("/_parlor/client/v1/no_such_endpoint", (404, r#"{"errcode":"no_such_thing","error":"no"}"#)),
    ]))
    .await;
    let versions = outcomes(addr, "versions::").await;
    assert_schema_failure(&versions, "versions::lists_v1", "versions_response.json");
    assert_schema_failure(&versions, "versions::server_name_is_valid", "versions_response.json");
    assert_schema_failure(&outcomes(addr, "operation::healthz").await, "operation::healthz_ok", "health_response.json");
    assert_schema_failure(
        &outcomes(addr, "errors::unknown_endpoint").await,
        "errors::unknown_endpoint_not_found",
        "error.json",
    );
}

#[tokio::test]
async fn right_shape_wrong_content_still_fails() {
    // Schema-valid, but v1 is not listed: the case must still fail.
    let addr = fake_server(HashMap::from([(
        "/_parlor/versions",
        (200, r#"{"versions":["v0"],"server":{"name":"127.0.0.1:1","version":"fake"},"registration":"open"}"#),
    )]))
    .await;
    let results = outcomes(addr, "versions::lists_v1").await;
    assert!(matches!(&results[0].1, Outcome::Fail(r) if r.contains("v1")), "{results:?}");
}

#[tokio::test]
async fn a_server_that_is_not_there_fails_every_case() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = Config { server: format!("http://{addr}"), filter: Some("accounts::".into()), ..Default::default() };
    let report = conformance::run(&cfg, |_| {}).await.unwrap();
    assert!(report.results.len() > 20);
    assert_eq!(report.passed(), 0, "{:?}", report.results.iter().find(|r| r.outcome == Outcome::Pass));
}

/// A WebSocket endpoint that accepts `parlor.v1` and sends `frames`.
async fn fake_ws_server(frames: Vec<&'static str>) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        // The error type is tungstenite's, not ours to shrink.
        #[allow(clippy::result_large_err)]
        let pick = |_: &Request, mut resp: Response| {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", "parlor.v1".parse().unwrap());
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(sock, pick).await.unwrap();
        for f in frames {
            ws.send(Message::text(f)).await.unwrap();
        }
        // Hold the connection open until the client is done with it.
        while let Some(Ok(_)) = ws.next().await {}
    });
    addr
}

#[tokio::test]
async fn off_schema_frames_fail() {
    use conformance::Failure;
    use conformance::schema::Schemas;
    use conformance::ws::{Ws, WsOptions};
    use std::sync::Arc;

    let schemas = Arc::new(Schemas::load().unwrap());
    let bad = [
        // `ready` without its device_id.
        r#"{"type":"ready","user_id":"@ann:b.example"}"#,
        // An errcode outside the spec's table.
        r#"{"type":"error","errcode":"oops","error":"x"}"#,
        // An event whose seq is a string.
        r#"{"type":"event","room_id":"!r:b.example","epoch":"e","event":{"event_id":"$e","seq":"1","type":"message","sender":"@a:b.example","ts":1}}"#,
        // A frame type the spec does not have.
        r#"{"type":"hello"}"#,
    ];
    for frame in bad {
        let addr = fake_ws_server(vec![r#"{"type":"pong"}"#, frame]).await;
        let mut ws = Ws::connect(&addr.to_string(), schemas.clone(), &WsOptions::default()).await.unwrap();
        ws.expect("pong").await.expect("a valid frame passes");
        match ws.next(std::time::Duration::from_secs(5)).await {
            Err(Failure::Schema { schema, .. }) => assert_eq!(schema, "server_frame.json"),
            other => panic!("{frame} was not caught: {other:?}"),
        }
    }
}

#[tokio::test]
async fn without_federation_every_federation_case_is_not_run() {
    // Every path, the key endpoint included, is 404 `not_found`.
    let addr = fake_server(HashMap::new()).await;
    let results = outcomes(addr, "federation::").await;
    assert!(results.len() >= 15, "{results:?}");
    for (name, outcome) in &results {
        assert!(matches!(outcome, Outcome::NotRun(r) if r.contains("no federation")), "{name}: {outcome:?}");
    }
}

/// A schema-valid key document for `name`, signed by a fresh key over the
/// bytes §11.1 names, but for `signed_name`.
fn key_document(name: &str, signed_name: &str) -> &'static str {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let pk = B64.encode(key.public_key().as_ref());
    let sig = B64.encode(key.sign(&conformance::peer::key_signed_bytes(signed_name, "ed25519:k1", &pk)).as_ref());
    let doc = serde_json::json!({"server_name": name, "key_id": "ed25519:k1", "public_key": pk, "signature": sig});
    Box::leak(doc.to_string().into_boxed_str())
}

#[tokio::test]
async fn a_key_document_that_is_not_the_servers_fails() {
    const VERSIONS: &str =
        r#"{"versions":["v1"],"server":{"name":"127.0.0.1:1","version":"fake"},"registration":"open"}"#;
    for (doc, why) in [
        (key_document("127.0.0.1:1", "127.0.0.1:2"), "does not verify"),
        (key_document("127.0.0.1:2", "127.0.0.1:2"), "names"),
    ] {
        let addr = fake_server(HashMap::from([
            ("/_parlor/versions", (200, VERSIONS)),
            ("/_parlor/key/v1/server", (200, doc)),
        ]))
        .await;
        let results = outcomes(addr, "federation::key_document").await;
        assert!(matches!(&results[0].1, Outcome::Fail(r) if r.contains(why)), "{why}: {results:?}");
    }
}

//! Federation between two real servers on loopback, on both room-log
//! backends: keys and signatures, a remote user joining and talking live, a
//! server that was down catching up gap-free, a home server that is down
//! making its room read-only for remote users, and leaving.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Api, Backend, Harness, WsClient, enc, uniq};

backend_tests!(
    keys_are_published_and_requests_must_be_signed,
    remote_users_join_and_talk_live_in_one_order,
    a_server_that_was_down_catches_up_gap_free,
    a_home_server_that_is_down_makes_its_room_read_only,
    leaving_a_remote_room,
);

/// Pushes and catch-ups retried quickly, so tests need not wait a minute.
fn quick(cfg: &mut parlor::config::Config) {
    cfg.federation_retry_max = Duration::from_millis(500);
    cfg.federation_catch_up = Duration::from_millis(500);
}

async fn two_servers(b: Backend) -> (Harness, Harness) {
    (Harness::start_with(b, quick).await, Harness::start_with(b, quick).await)
}

/// Retries `check` until it holds (bounded): federation is asynchronous.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn seqs_and_ids(page: &Value) -> Vec<(u64, String)> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["event_id"].as_str().unwrap().to_owned()))
        .collect()
}

async fn keys_are_published_and_requests_must_be_signed(b: Backend) {
    let (a, _b) = two_servers(b).await;
    let api = a.api();
    let (s, key) = api.raw("GET", "/_parlor/key/v1/server", None, vec![]).await;
    assert_eq!(s, 200, "{key}");
    assert_eq!(key["server_name"], a.server.addr.to_string());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pk = b64.decode(key["public_key"].as_str().unwrap()).unwrap();
    let sig = b64.decode(key["signature"].as_str().unwrap()).unwrap();
    let signed = format!(
        "parlor-key-v1\n{}\n{}\n{}",
        key["server_name"].as_str().unwrap(),
        key["key_id"].as_str().unwrap(),
        key["public_key"].as_str().unwrap()
    );
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &pk)
        .verify(signed.as_bytes(), &sig)
        .expect("the key document is self-signed");
    let (s, wk) = api.raw("GET", "/.well-known/parlor/server", None, vec![]).await;
    assert_eq!((s, wk["base_url"].as_str()), (200, Some(format!("http://{}", a.server.addr).as_str())));

    let body = br#"{"events":[]}"#.to_vec();
    // Unsigned.
    let (s, v) = api.raw("PUT", "/_parlor/federation/v1/send/t1", None, body.clone()).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("bad_signature")), "{v}");
    // A forged signature in the right shape, claiming to be the other server.
    let dest = a.server.addr.to_string();
    let forged = format!(
        r#"Parlor-Signature origin="{}",destination="{dest}",key="{}",ts="{}",sig="{}""#,
        _b.server.addr,
        key["key_id"].as_str().unwrap(),
        parlor::storage::events::now_ms(),
        b64.encode([7u8; 64])
    );
    let (s, v) = raw_with_auth(&api, "PUT", "/_parlor/federation/v1/send/t2", &forged, body.clone()).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("bad_signature")), "{v}");
    // An origin whose key cannot be fetched.
    let nobody = format!(
        r#"Parlor-Signature origin="127.0.0.1:9",destination="{dest}",key="ed25519:x",ts="{}",sig="{}""#,
        parlor::storage::events::now_ms(),
        b64.encode([7u8; 64])
    );
    let (s, v) = raw_with_auth(&api, "PUT", "/_parlor/federation/v1/send/t3", &nobody, body).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("unknown_server")), "{v}");
}

async fn raw_with_auth(api: &Api, method: &str, path: &str, auth: &str, body: Vec<u8>) -> (u16, Value) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.base))
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn remote_users_join_and_talk_live_in_one_order(b: Backend) {
    let (a, home) = two_servers(b).await;
    let (bob, tb) = home.api().user(&uniq("bob")).await;
    let lobby = uniq("lobby");
    let j = home.api().join(&tb, &lobby).await;
    let alias = j["alias"].as_str().unwrap().to_owned();
    let room_id = j["room_id"].as_str().unwrap().to_owned();

    // Ann, on server A, joins #lobby on the home server through A.
    let (ann, ta) = a.api().user(&uniq("ann")).await;
    let ja = a.api().join(&ta, &alias).await;
    assert_eq!(ja, j, "the same room, by its home server's id and alias");
    let mut both = vec![ann.clone(), bob.clone()];
    both.sort();
    for (h, t) in [(&a, &ta), (&home, &tb)] {
        let (s, m) = h.api().call("GET", &format!("/rooms/{}/members", enc(&room_id)), Some(t), None).await;
        assert_eq!(s, 200, "{m}");
        let got: Vec<String> =
            m["members"].as_array().unwrap().iter().map(|x| x["user_id"].as_str().unwrap().into()).collect();
        assert_eq!(got, both, "both servers agree on the members");
    }
    let (_, rooms) = a.api().call("GET", "/rooms", Some(&ta), None).await;
    assert_eq!(rooms["rooms"], json!([{"room_id": room_id, "alias": alias}]));

    // Live, both ways, each server's subscribers in the home server's order.
    let mut wa = WsClient::authed(a.url(), &ta).await;
    wa.send(json!({"type": "subscribe", "room": room_id})).await;
    wa.until("caught_up").await;
    let mut wb = WsClient::authed(home.url(), &tb).await;
    wb.send(json!({"type": "subscribe", "room": room_id})).await;
    wb.until("caught_up").await;
    let (s, from_bob) = home.api().send(&tb, &room_id, "b1", "hello from the home server").await;
    assert_eq!(s, 200);
    let (s, from_ann) = a.api().send(&ta, &room_id, "a1", "hello from A").await;
    assert_eq!(s, 200, "{from_ann}");
    assert_eq!(from_ann["seq"].as_u64(), Some(from_bob["seq"].as_u64().unwrap() + 1), "ordered by the home server");
    // A retried remote send is the same event.
    let (s, again) = a.api().send(&ta, &room_id, "a1", "hello from A").await;
    assert_eq!((s, &again), (200, &from_ann));
    for (w, name) in [(&mut wa, "A"), (&mut wb, "home")] {
        let mut got = Vec::new();
        while got.len() < 2 {
            let f = w.recv().await;
            assert_eq!(f["type"], "event", "{name}: {f}");
            got.push((f["event"]["seq"].as_u64().unwrap(), f["event"]["sender"].as_str().unwrap().to_owned()));
        }
        assert_eq!(
            got,
            vec![(from_bob["seq"].as_u64().unwrap(), bob.clone()), (from_ann["seq"].as_u64().unwrap(), ann.clone())],
            "{name} sees both messages once, in the home server's order, with their senders"
        );
    }
    // The replica on A holds the home server's log: same epoch, seqs and ids.
    let (_, on_home) = home.api().messages(&tb, &room_id, "after=0").await;
    eventually("A's replica matches the home log", || {
        let api = a.api();
        let (ta, room_id, want) = (ta.clone(), room_id.clone(), on_home.clone());
        async move {
            let (_, page) = api.messages(&ta, &room_id, "after=0").await;
            page["epoch"] == want["epoch"] && seqs_and_ids(&page) == seqs_and_ids(&want)
        }
    })
    .await;
    let (_, on_a) = a.api().messages(&ta, &room_id, "after=0").await;
    assert_eq!(on_a["events"], on_home["events"]);
}

async fn a_server_that_was_down_catches_up_gap_free(b: Backend) {
    let (mut a, home) = two_servers(b).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let j = home.api().join(&tb, &uniq("room")).await;
    let room_id = j["room_id"].as_str().unwrap().to_owned();
    let (_, ta) = a.api().user(&uniq("ann")).await;
    a.api().join(&ta, &room_id).await;
    let mut wa = WsClient::authed(a.url(), &ta).await;
    wa.send(json!({"type": "subscribe", "room": room_id})).await;
    let (cu, _) = wa.until("caught_up").await;
    let epoch = cu["epoch"].as_str().unwrap().to_owned();
    home.api().send(&tb, &room_id, "m0", "before").await;
    let f = wa.recv().await;
    let last = f["event"]["seq"].as_u64().unwrap();
    drop(wa);

    // A goes down; the room goes on at home.
    a.stop().await;
    for n in 1..=3 {
        let (s, _) = home.api().send(&tb, &room_id, &format!("m{n}"), &format!("while A was down {n}")).await;
        assert_eq!(s, 200);
    }
    a.resume().await;
    eventually("A caught up with the home server", || {
        let api = a.api();
        let (ta, room_id) = (ta.clone(), room_id.clone());
        async move { api.messages(&ta, &room_id, "").await.1["latest_seq"].as_u64() == Some(last + 3) }
    })
    .await;
    // Ann resumes from the last event she saw: exactly the three, in order.
    let mut wa = WsClient::authed(a.url(), &ta).await;
    wa.send(json!({"type": "subscribe", "room": room_id, "since": {"epoch": epoch, "seq": last}})).await;
    let (cu, events) = wa.until("caught_up").await;
    let got: Vec<(u64, String)> = events
        .iter()
        .map(|e| (e["event"]["seq"].as_u64().unwrap(), e["event"]["body"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(got, (1..=3).map(|n| (last + n, format!("while A was down {n}"))).collect::<Vec<_>>());
    assert_eq!(cu["seq"].as_u64(), Some(last + 3));
}

async fn a_home_server_that_is_down_makes_its_room_read_only(b: Backend) {
    let (a, mut home) = two_servers(b).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let j = home.api().join(&tb, &uniq("room")).await;
    let room_id = j["room_id"].as_str().unwrap().to_owned();
    let (_, ta) = a.api().user(&uniq("ann")).await;
    a.api().join(&ta, &room_id).await;
    home.api().send(&tb, &room_id, "m1", "kept").await;
    eventually("the message reached A", || {
        let api = a.api();
        let (ta, room_id) = (ta.clone(), room_id.clone());
        async move { api.messages(&ta, &room_id, "").await.1["events"].as_array().is_some_and(|e| e.len() == 3) }
    })
    .await;

    home.stop().await;
    let t = Instant::now();
    let (s, v) = a.api().send(&ta, &room_id, "a1", "anyone?").await;
    assert_eq!((s, v["errcode"].as_str()), (503, Some("home_server_unreachable")), "{v}");
    assert!(t.elapsed() < Duration::from_secs(6), "told at once, not hung");
    // Over the WebSocket too.
    let mut wa = WsClient::authed(a.url(), &ta).await;
    wa.send(json!({"type": "send", "id": "s", "room": room_id, "txn_id": "a2", "body": "anyone?"})).await;
    let e = wa.recv().await;
    assert_eq!((e["errcode"].as_str(), e["id"].as_str()), (Some("home_server_unreachable"), Some("s")));
    // Still readable.
    let (s, page) = a.api().messages(&ta, &room_id, "").await;
    assert_eq!(s, 200);
    assert_eq!(page["events"][2]["body"], "kept");

    home.resume().await;
    let (s, v) = a.api().send(&ta, &room_id, "a1", "anyone?").await;
    assert_eq!(s, 200, "writable again once the home server is back: {v}");
}

async fn leaving_a_remote_room(b: Backend) {
    let (a, home) = two_servers(b).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let j = home.api().join(&tb, &uniq("room")).await;
    let room_id = j["room_id"].as_str().unwrap().to_owned();
    let (ann, ta) = a.api().user(&uniq("ann")).await;
    a.api().join(&ta, &room_id).await;
    let (s, v) = a.api().call("POST", &format!("/rooms/{}/leave", enc(&room_id)), Some(&ta), None).await;
    assert_eq!((s, &v), (200, &json!({})));
    let (_, rooms) = a.api().call("GET", "/rooms", Some(&ta), None).await;
    assert_eq!(rooms["rooms"], json!([]));
    let (_, m) = home.api().call("GET", &format!("/rooms/{}/members", enc(&room_id)), Some(&tb), None).await;
    assert!(!m["members"].as_array().unwrap().iter().any(|x| x["user_id"] == ann.as_str()), "{m}");
    let (s, v) = a.api().send(&ta, &room_id, "x", "still here?").await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_member")));
    let (_, page) = home.api().messages(&tb, &room_id, "").await;
    let kinds: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["join", "join", "leave"]);
}

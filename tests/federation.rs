//! Federation between two real servers on loopback, on both room-log
//! backends: keys and signatures, a remote user joining and talking live, a
//! server that was down catching up gap-free, a home server that is down
//! making its room read-only for remote users, and leaving. Then a hostile
//! peer (a fake server written here, signing as §11.2 says): private
//! addresses are never fetched, key fetches are rate-limited, a signed
//! request cannot be replayed, a home server cannot move this server's users
//! or push for rooms it is not home to, and a server that cannot take pushes
//! makes the home server queue a bounded number of events for it. v1.1
//! redactions reach replicas (pushed and by catch-up) and erase there too.
//!
//! Servers here all listen on 127.0.0.1, which federation refuses to reach
//! unless the server is named with `--federation-peer` (`Config::federation_peers`),
//! so every server is given the others as peers.

#[macro_use]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use parlor::config::Config;
use serde_json::{Value, json};
use support::{Api, Backend, RedisServer, TestServer, WsClient, enc, uniq};

/// The v1 fields (`room_id`, `alias`) of each item of a `GET /rooms` answer:
/// v1.1 adds others, which these tests do not look at.
fn v1_fields(rooms: &serde_json::Value) -> serde_json::Value {
    rooms
        .as_array()
        .map(|a| a.iter().map(|r| serde_json::json!({"room_id": r["room_id"], "alias": r["alias"]})).collect())
        .unwrap_or(serde_json::Value::Null)
}

backend_tests!(
    keys_are_published_and_requests_must_be_signed,
    remote_users_join_and_talk_live_in_one_order,
    a_server_that_was_down_catches_up_gap_free,
    a_home_server_that_is_down_makes_its_room_read_only,
    leaving_a_remote_room,
    redactions_reach_replicas_and_erase_there,
    a_remote_user_is_invited_joins_and_talks,
    a_remote_user_declines_an_invite,
    a_kicked_remote_member_can_no_longer_send_or_read,
    typing_receipts_and_presence_reach_the_other_server,
);

/// Pushes and catch-ups retried quickly, so tests need not wait a minute.
fn quick(cfg: &mut Config) {
    cfg.federation_retry_max = Duration::from_millis(500);
    cfg.federation_catch_up = Duration::from_millis(500);
}

/// A server of these tests, with what it takes to stop it and start it again
/// on the same port, data and Redis.
struct Node {
    server: Option<TestServer>,
    addr: SocketAddr,
    url: String,
    cfg: Config,
    _redis: Option<RedisServer>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts on `listener` with the test config, `peers` as its
    /// `--federation-peer`s, and `tweak` applied.
    async fn start(
        listener: tokio::net::TcpListener,
        b: Backend,
        peers: &[SocketAddr],
        tweak: impl FnOnce(&mut Config),
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let redis = (b == Backend::Redis).then(RedisServer::start);
        let addr = listener.local_addr().unwrap();
        let mut cfg = TestServer::config(addr.port(), dir.path());
        cfg.redis = redis.as_ref().map(|r| r.url.clone());
        cfg.federation_peers = peers.iter().map(|p| (p.to_string(), format!("http://{p}"))).collect();
        quick(&mut cfg);
        tweak(&mut cfg);
        let server = TestServer::start_with(listener, cfg.clone()).await;
        Node { server: Some(server), addr, url: format!("http://{addr}"), cfg, _redis: redis, _dir: dir }
    }

    fn name(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn api(&self) -> Api {
        Api::new(&self.url)
    }

    async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    async fn resume(&mut self) {
        assert!(self.addr.ip().is_loopback(), "test servers bind 127.0.0.1");
        let listener = support::rebind(self.addr.port()).await;
        self.server = Some(TestServer::start_with(listener, self.cfg.clone()).await);
    }
}

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Two servers, each the other's named peer.
async fn two_servers(b: Backend) -> (Node, Node) {
    let (la, lb) = (listener().await, listener().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    (Node::start(la, b, &[ab], |_| {}).await, Node::start(lb, b, &[aa], |_| {}).await)
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
    assert_eq!(key["server_name"], a.addr.to_string());
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
    assert_eq!((s, wk["base_url"].as_str()), (200, Some(format!("http://{}", a.addr).as_str())));

    let body = br#"{"events":[]}"#.to_vec();
    // Unsigned.
    let (s, v) = api.raw("PUT", "/_parlor/federation/v1/send/t1", None, body.clone()).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("bad_signature")), "{v}");
    // A forged signature in the right shape, claiming to be the other server.
    let dest = a.addr.to_string();
    let forged = format!(
        r#"Parlor-Signature origin="{}",destination="{dest}",key="{}",ts="{}",sig="{}""#,
        _b.addr,
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
    assert_eq!(v1_fields(&rooms["rooms"]), json!([{"room_id": room_id, "alias": alias}]));

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

/// Whether the replica's store still holds `needle` anywhere: its Redis
/// (room streams, archives and feed, as `DUMP` shows them, entries only
/// flagged as deleted included) or, embedded, any value of its sled
/// `events` tree (read after the node stopped, which releases the data dir).
fn replica_store_holds(node: &Node, needle: &str) -> bool {
    match &node._redis {
        Some(redis) => {
            let keys = redis.cli(&["KEYS", "parlor:{*}:*"]).unwrap();
            redis.cli(&["CONFIG", "SET", "rdbcompression", "no"]).unwrap();
            let logs = keys.lines().filter(|k| k.ends_with(":log") || k.contains(":archive:"));
            logs.into_iter().any(|k| redis.cli(&["DUMP", k]).unwrap().contains(needle))
                || redis.cli(&["DUMP", "parlor:feed"]).unwrap().contains(needle)
        }
        None => {
            // The stopped server's last handles on the data dir go with its tasks.
            let deadline = Instant::now() + Duration::from_secs(10);
            let db = loop {
                match parlor::storage::Db::open(node._dir.path()) {
                    Ok(db) => break db,
                    Err(e) => assert!(Instant::now() < deadline, "the stopped replica's data dir: {e}"),
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            db.tree("events").unwrap().iter().any(|kv| {
                let (_, v) = kv.unwrap();
                v.windows(needle.len()).any(|w| w == needle.as_bytes())
            })
        }
    }
}

/// v1.1 redactions reach replicas, by push and by catch-up, and erase the
/// bodies there too; a replica does not take redactions itself.
async fn redactions_reach_replicas_and_erase_there(b: Backend) {
    let (mut a, home) = two_servers(b).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let name = uniq("garden");
    let (s, created) = home.api().call("POST", "/rooms", Some(&tb), Some(json!({"alias": name}))).await;
    assert_eq!(s, 201, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    let (_, ta) = a.api().user(&uniq("ann")).await;
    a.api().join(&ta, created["alias"].as_str().unwrap()).await;
    let (s, by_ann) = a.api().send(&ta, &room_id, "a1", "ann-secret-b0dy").await;
    assert_eq!(s, 200, "{by_ann}");
    let (_, by_bob) = home.api().send(&tb, &room_id, "b1", "bob-secret-b0dy").await;
    let (_, kept) = home.api().send(&tb, &room_id, "b2", "kept-b0dy").await;
    let latest = kept["seq"].as_u64().unwrap();
    fn find<'a>(page: &'a Value, sent: &Value) -> Option<&'a Value> {
        page["events"].as_array()?.iter().find(|e| e["event_id"] == sent["event_id"])
    }
    fn redacted(page: &Value, sent: &Value) -> bool {
        find(page, sent).is_some_and(|e| e.get("body").is_none() && e["redacted"] == json!(true))
    }
    let on_a = async |a: &Node, what: &str, pred: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, page) = a.api().messages(&ta, &room_id, "after=0").await;
            if pred(&page) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    on_a(&a, "both messages on A", &|p| find(p, &by_ann).is_some() && find(p, &by_bob).is_some()).await;
    // A replica does not redact: that is the home's to do.
    let path = |id: &Value, txn: &str| format!("/rooms/{}/redact/{}/{txn}", enc(&room_id), enc(id.as_str().unwrap()));
    let (s, v) = a.api().call("PUT", &path(&by_ann["event_id"], "r0"), Some(&ta), Some(json!({}))).await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("remote_user_unsupported")), "{v}");

    // Pushed: the owner redacts Ann's message while A is up.
    let (s, v) = home.api().call("PUT", &path(&by_ann["event_id"], "r1"), Some(&tb), Some(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    on_a(&a, "A erased Ann's message", &|p| redacted(p, &by_ann)).await;
    // Caught up: Bob redacts his while A is down.
    a.stop().await;
    let (s, v) = home.api().call("PUT", &path(&by_bob["event_id"], "r2"), Some(&tb), Some(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    a.resume().await;
    // A replica erases before it stores the redaction: wait for both.
    let redaction_of = |p: &Value, sent: &Value| {
        p["events"]
            .as_array()
            .is_some_and(|es| es.iter().any(|e| e["type"] == "redaction" && e["redacts"] == sent["event_id"]))
    };
    on_a(&a, "A erased Bob's message after catching up", &|p| redacted(p, &by_bob) && redaction_of(p, &by_bob)).await;
    let (_, page) = a.api().messages(&ta, &room_id, "after=0").await;
    let last = page["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["type"].as_str(), &last["redacts"]), (Some("redaction"), &by_bob["event_id"]), "{last}");
    assert!(page["events"].as_array().unwrap().iter().any(|e| e["seq"] == latest && e["body"] == "kept-b0dy"));
    // The newest event on A redacted: its copy is the newest entry of A's
    // Redis feed, rewritten in place under the same id (`scrub_feed.lua`).
    let (_, newest) = home.api().send(&tb, &room_id, "b3", "newest-secret-b0dy").await;
    on_a(&a, "the newest message on A", &|p| find(p, &newest).is_some()).await;
    let (s, v) = home.api().call("PUT", &path(&newest["event_id"], "r3"), Some(&tb), Some(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    on_a(&a, "A erased the newest message", &|p| redacted(p, &newest) && redaction_of(p, &newest)).await;
    a.stop().await;
    for gone in ["ann-secret-b0dy", "bob-secret-b0dy", "newest-secret-b0dy"] {
        assert!(!replica_store_holds(&a, gone), "{gone} is still in the replica's store");
    }
    assert!(replica_store_holds(&a, "kept-b0dy"), "the test sees the replica's store");
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

/// The `(room_id, membership)` of each item of a `GET /rooms` answer.
async fn room_list(node: &Node, token: &str) -> Vec<(String, String)> {
    let (s, v) = node.api().call("GET", "/rooms", Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["room_id"].as_str().unwrap().to_owned(), r["membership"].as_str().unwrap().to_owned()))
        .collect()
}

/// Waits until the user's room list on `node` is `want`.
async fn room_list_becomes(node: &Node, token: &str, want: Vec<(String, String)>) {
    let what = format!("the room list on {} becomes {want:?}", node.name());
    eventually(&what, || {
        let want = want.clone();
        async move { room_list(node, token).await == want }
    })
    .await;
}

/// A private room without an alias, made on `home` by its owner.
async fn private_room(home: &Node, owner_token: &str) -> String {
    let body = json!({"visibility": "private", "name": "plans"});
    let (s, v) = home.api().call("POST", "/rooms", Some(owner_token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["room_id"].as_str().unwrap().to_owned()
}

fn kinds(page: &Value) -> Vec<String> {
    page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

async fn a_remote_user_is_invited_joins_and_talks(b: Backend) {
    let (a, home) = two_servers(b).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let room_id = private_room(&home, &tb).await;
    let (ann, ta) = a.api().user(&uniq("ann")).await;
    let join_path = format!("/rooms/{}/join", enc(&room_id));
    let (s, v) = a.api().call("POST", &join_path, Some(&ta), None).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_invited")), "uninvited: {v}");

    let invite = format!("/rooms/{}/invite", enc(&room_id));
    let (s, v) = home.api().call("POST", &invite, Some(&tb), Some(json!({"user_id": ann}))).await;
    assert_eq!((s, &v), (200, &json!({})));
    // The invite reached A, which lists it; nothing else of the room did.
    room_list_becomes(&a, &ta, vec![(room_id.clone(), "invite".into())]).await;

    let (s, v) = a.api().call("POST", &join_path, Some(&ta), None).await;
    assert_eq!(s, 200, "an invited remote user joins a private room: {v}");
    assert_eq!(v["room_id"], room_id.as_str());
    assert_eq!(room_list(&a, &ta).await, vec![(room_id.clone(), "join".into())]);
    let (s, sent) = a.api().send(&ta, &room_id, "a1", "hi from A").await;
    assert_eq!(s, 200, "{sent}");
    let (_, page) = home.api().messages(&tb, &room_id, "after=0").await;
    assert_eq!(kinds(&page), ["join", "room", "invite", "join", "message"]);
    assert_eq!(page["events"][4]["sender"], ann.as_str());
    // A's replica has it all, and the room's state with it.
    eventually("A's replica holds the message", || {
        let (api, ta, room_id) = (a.api(), ta.clone(), room_id.clone());
        async move { api.messages(&ta, &room_id, "after=0").await.1["latest_seq"].as_u64() == Some(5) }
    })
    .await;
    let (_, rooms) = a.api().call("GET", "/rooms", Some(&ta), None).await;
    assert_eq!(
        (rooms["rooms"][0]["name"].as_str(), rooms["rooms"][0]["visibility"].as_str()),
        (Some("plans"), Some("private"))
    );
    // Ann reads the private room from her join on, on her own server too.
    let (_, on_a) = a.api().messages(&ta, &room_id, "after=0").await;
    assert_eq!(kinds(&on_a), ["join", "message"], "{on_a}");
    // A role the home server gives her shows on A.
    let role = format!("/rooms/{}/roles/{}", enc(&room_id), enc(&ann));
    let (s, v) = home.api().call("PUT", &role, Some(&tb), Some(json!({"role": "moderator"}))).await;
    assert_eq!((s, &v), (200, &json!({})));
    eventually("A shows ann as moderator", || {
        let (api, ta) = (a.api(), ta.clone());
        async move { api.call("GET", "/rooms", Some(&ta), None).await.1["rooms"][0]["role"] == "moderator" }
    })
    .await;
}

async fn a_remote_user_declines_an_invite(b: Backend) {
    let (a, home) = two_servers(b).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let room_id = private_room(&home, &tb).await;
    let (ann, ta) = a.api().user(&uniq("ann")).await;
    let invite = format!("/rooms/{}/invite", enc(&room_id));
    home.api().call("POST", &invite, Some(&tb), Some(json!({"user_id": ann}))).await;
    room_list_becomes(&a, &ta, vec![(room_id.clone(), "invite".into())]).await;
    let reject = format!("/rooms/{}/reject", enc(&room_id));
    let (s, v) = a.api().call("POST", &reject, Some(&ta), None).await;
    assert_eq!((s, &v), (200, &json!({})));
    assert_eq!(room_list(&a, &ta).await, vec![]);
    let (_, page) = home.api().messages(&tb, &room_id, "after=0").await;
    assert_eq!(kinds(&page), ["join", "room", "invite", "reject"]);
    assert_eq!(page["events"][3]["sender"], ann.as_str());
    // The invite is gone at home too: joining is refused again.
    let (s, v) = a.api().call("POST", &format!("/rooms/{}/join", enc(&room_id)), Some(&ta), None).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_invited")), "{v}");
    let (s, v) = a.api().call("POST", &reject, Some(&ta), None).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_invited")), "{v}");
}

async fn a_kicked_remote_member_can_no_longer_send_or_read(b: Backend) {
    let (a, home) = two_servers(b).await;
    let (bob, tb) = home.api().user(&uniq("bob")).await;
    let (s, v) = home.api().call("POST", "/rooms", Some(&tb), Some(json!({"alias": uniq("hall")}))).await;
    assert_eq!(s, 201, "{v}");
    let room_id = v["room_id"].as_str().unwrap().to_owned();
    let (ann, ta) = a.api().user(&uniq("ann")).await;
    a.api().join(&ta, &room_id).await;
    let mut wa = WsClient::authed(a.url(), &ta).await;
    wa.send(json!({"type": "subscribe", "room": room_id})).await;
    wa.until("caught_up").await;

    // A moderator on A cannot act on a room homed elsewhere: refused, clearly.
    let kick = format!("/rooms/{}/kick", enc(&room_id));
    let (s, v) = a.api().call("POST", &kick, Some(&ta), Some(json!({"user_id": bob}))).await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("remote_user_unsupported")), "{v}");

    let (s, v) = home.api().call("POST", &kick, Some(&tb), Some(json!({"user_id": ann, "reason": "spam"}))).await;
    assert_eq!((s, &v), (200, &json!({})));
    // Ann's subscription on A ends after the kick event.
    let (f, _) = wa.until("unsubscribed").await;
    assert_eq!(f["reason"], "left", "{f}");
    eventually("A applied the kick", || {
        let (a, ta) = (&a, ta.clone());
        async move { room_list(a, &ta).await.is_empty() }
    })
    .await;
    let (s, v) = a.api().send(&ta, &room_id, "a1", "still here?").await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_member")), "{v}");
    let (s, v) = a.api().messages(&ta, &room_id, "after=0").await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("not_member")), "{v}");
    // Nothing new reaches A: it has no member left, so the home server no
    // longer pushes to it, and a backfill is refused.
    home.api().send(&tb, &room_id, "b1", "after the kick").await;
    let (s, v) = home.api().call("GET", &format!("/rooms/{}/members", enc(&room_id)), Some(&tb), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["members"].as_array().unwrap().len(), 1, "{v}");
    // Invited again, Ann sees the invite on A (whose replica missed what
    // was sent meanwhile); a ban then drops it there too.
    let invite = format!("/rooms/{}/invite", enc(&room_id));
    let (s, v) = home.api().call("POST", &invite, Some(&tb), Some(json!({"user_id": ann}))).await;
    assert_eq!((s, &v), (200, &json!({})));
    room_list_becomes(&a, &ta, vec![(room_id.clone(), "invite".into())]).await;
    let ban = format!("/rooms/{}/ban", enc(&room_id));
    let (s, _) = home.api().call("POST", &ban, Some(&tb), Some(json!({"user_id": ann}))).await;
    assert_eq!(s, 200);
    room_list_becomes(&a, &ta, vec![]).await;
    // A ban keeps Ann out of the room for good.
    let (s, v) = a.api().call("POST", &format!("/rooms/{}/join", enc(&room_id)), Some(&ta), None).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("banned")), "{v}");
}

/// Reads frames until one of type `ty` that `want` accepts.
async fn frame_until(w: &mut WsClient, ty: &str, want: impl Fn(&Value) -> bool) -> Value {
    loop {
        let (f, _) = w.until(ty).await;
        if want(&f) {
            return f;
        }
    }
}

/// The `presence` of `user` in the room's members as `node` lists them.
async fn presence_on(node: &Node, token: &str, room_id: &str, user: &str) -> String {
    let (s, m) = node.api().call("GET", &format!("/rooms/{}/members", enc(room_id)), Some(token), None).await;
    assert_eq!(s, 200, "{m}");
    let me = m["members"].as_array().unwrap().iter().find(|x| x["user_id"] == user).cloned().unwrap_or_default();
    me["presence"].as_str().unwrap_or_default().to_owned()
}

async fn typing_receipts_and_presence_reach_the_other_server(b: Backend) {
    let (a, home) = two_servers(b).await;
    let (bob, tb) = home.api().user(&uniq("bob")).await;
    let room_id = home.api().join(&tb, &uniq("lounge")).await["room_id"].as_str().unwrap().to_owned();
    let mut wb = WsClient::authed(home.url(), &tb).await;
    wb.follow_live();
    wb.send(json!({"type": "subscribe", "room": room_id})).await;
    wb.until("caught_up").await;
    // Ann is online on A before she shares a room with anyone at home.
    let (ann, ta) = a.api().user(&uniq("ann")).await;
    let mut wa = WsClient::authed(a.url(), &ta).await;
    wa.follow_live();

    // She joins: each server tells the other who of its members is online.
    a.api().join(&ta, &room_id).await;
    let f = frame_until(&mut wb, "presence", |f| f["user_id"] == ann.as_str()).await;
    assert_eq!(f["presence"], "online");
    assert_eq!(presence_on(&home, &tb, &room_id, &ann).await, "online");
    eventually("A lists bob online", || {
        let (a, ta, room_id, bob) = (&a, ta.clone(), room_id.clone(), bob.clone());
        async move { presence_on(a, &ta, &room_id, &bob).await == "online" }
    })
    .await;
    wa.send(json!({"type": "subscribe", "room": room_id})).await;
    wa.until("caught_up").await;

    // Typing, both ways.
    wa.send(json!({"type": "typing", "room": room_id, "typing": true})).await;
    let f = frame_until(&mut wb, "typing", |f| !f["user_ids"].as_array().unwrap().is_empty()).await;
    assert_eq!(f["user_ids"], json!([ann]), "{f}");
    wa.send(json!({"type": "typing", "room": room_id, "typing": false})).await;
    let f = frame_until(&mut wb, "typing", |_| true).await;
    assert_eq!(f["user_ids"], json!([]), "ann stopped typing: {f}");
    wb.send(json!({"type": "typing", "room": room_id, "typing": true})).await;
    // (A's own frames of ann's typing come first.)
    let f =
        frame_until(&mut wa, "typing", |f| f["user_ids"].as_array().unwrap().iter().any(|u| u == bob.as_str())).await;
    assert_eq!(f["user_ids"], json!([bob]), "{f}");

    // A read mark, both ways.
    let (s, sent) = home.api().send(&tb, &room_id, "b1", "read me").await;
    assert_eq!(s, 200);
    let seq = sent["seq"].as_u64().unwrap();
    frame_until(&mut wa, "event", |f| f["event"]["seq"] == seq).await;
    let (s, v) =
        a.api().call("POST", &format!("/rooms/{}/read", enc(&room_id)), Some(&ta), Some(json!({"seq": seq}))).await;
    assert_eq!(s, 200, "{v}");
    let f = frame_until(&mut wb, "receipt", |f| f["user_id"] == ann.as_str()).await;
    assert_eq!((f["room"].as_str(), f["seq"].as_u64()), (Some(room_id.as_str()), Some(seq)), "{f}");
    let (s, _) =
        home.api().call("POST", &format!("/rooms/{}/read", enc(&room_id)), Some(&tb), Some(json!({"seq": seq}))).await;
    assert_eq!(s, 200);
    let f = frame_until(&mut wa, "receipt", |f| f["user_id"] == bob.as_str()).await;
    assert_eq!(f["seq"].as_u64(), Some(seq), "{f}");

    // Ann's last socket closes: offline at home too.
    drop(wa);
    let f = frame_until(&mut wb, "presence", |f| f["user_id"] == ann.as_str()).await;
    assert_eq!(f["presence"], "offline");
    assert_eq!(presence_on(&home, &tb, &room_id, &ann).await, "offline");
}

// ---- hostile peers ----

type Answer = Arc<dyn Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync>;

/// A fake server on 127.0.0.1: its own ed25519 key, its key document (each
/// fetch counted), and for everything else what `answer` says.
struct Fake {
    name: String,
    key: ring::signature::Ed25519KeyPair,
    key_fetches: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_pair() -> ring::signature::Ed25519KeyPair {
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

const FAKE_KEY_ID: &str = "ed25519:fake";

impl Fake {
    async fn start(listener: tokio::net::TcpListener, answer: Answer) -> Fake {
        use ring::signature::KeyPair as _;
        let name = listener.local_addr().unwrap().to_string();
        let key = key_pair();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let pk = b64.encode(key.public_key().as_ref());
        let signed = parlor::protocol::federation::ServerKeyResponse::signed_bytes(&name, FAKE_KEY_ID, &pk);
        let doc = json!({"server_name": name, "key_id": FAKE_KEY_ID, "public_key": pk,
                         "signature": b64.encode(key.sign(&signed).as_ref())});
        let key_fetches = Arc::new(Mutex::new(0));
        let fetches = key_fetches.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let stream = tokio::select! {
                    Ok((stream, _)) = listener.accept() => stream,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let (doc, fetches, answer) = (doc.clone(), fetches.clone(), answer.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (doc, fetches, answer) = (doc.clone(), fetches.clone(), answer.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let method = req.method().to_string();
                            let path = req.uri().path_and_query().unwrap().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let (status, v) = if path == "/_parlor/key/v1/server" {
                                *fetches.lock().unwrap() += 1;
                                (200, doc)
                            } else {
                                answer(&method, &path, &body)
                            };
                            let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from(v.to_string())));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        Fake { name, key, key_fetches, task }
    }

    fn key_fetches(&self) -> usize {
        *self.key_fetches.lock().unwrap()
    }

    /// `Authorization` for a request from this server to `to`, signed with `key`.
    fn sign_with(
        &self,
        key: &ring::signature::Ed25519KeyPair,
        method: &str,
        path: &str,
        to: &Node,
        body: &[u8],
    ) -> String {
        let ts = parlor::storage::events::now_ms();
        let hash =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, body));
        let signed =
            parlor::protocol::federation::request_signed_bytes(method, path, &self.name, &to.name(), ts, &hash);
        parlor::protocol::federation::render_auth_header(
            &self.name,
            &to.name(),
            FAKE_KEY_ID,
            ts,
            key.sign(&signed).as_ref(),
        )
    }

    fn sign(&self, method: &str, path: &str, to: &Node, body: &[u8]) -> String {
        self.sign_with(&self.key, method, path, to, body)
    }

    /// Sends a signed request to `to`.
    async fn call(&self, to: &Node, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string().into_bytes();
        let auth = self.sign(method, path, to, &body);
        raw_with_auth(&to.api(), method, path, &auth, body).await
    }
}

fn not_found() -> (u16, Value) {
    (404, json!({"errcode": "not_found", "error": "fake"}))
}

/// `Authorization` in the right shape from `origin`, with a signature of nothing.
fn garbage_signature(origin: &str, to: &Node) -> String {
    parlor::protocol::federation::render_auth_header(
        origin,
        &to.name(),
        "ed25519:x",
        parlor::storage::events::now_ms(),
        &[7u8; 64],
    )
}

const EMPTY_TXN: &[u8] = br#"{"events":[]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_never_fetched_and_refusals_tell_nothing() {
    let a = Node::start(listener().await, Backend::Embedded, &[], |_| {}).await;
    // An open port on loopback, and a closed one: the answers must not tell them apart.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let port = bait.local_addr().unwrap().port();
    let mut texts = Vec::new();
    for origin in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "127.0.0.1:9".to_owned()] {
        let auth = garbage_signature(&origin, &a);
        let (s, v) = raw_with_auth(&a.api(), "PUT", "/_parlor/federation/v1/send/t1", &auth, EMPTY_TXN.to_vec()).await;
        assert_eq!((s, v["errcode"].as_str()), (403, Some("unknown_server")), "{origin}: {v}");
        texts.push(v["error"].as_str().unwrap().replace(&origin, "ORIGIN"));
    }
    assert!(texts.iter().all(|t| *t == texts[0]), "the answers differ: {texts:?}");
    // A local user joining a room there is told the server cannot be reached, and nothing more.
    let (_, t) = a.api().user(&uniq("ann")).await;
    for room in [format!("#x:127.0.0.1:{port}"), format!("#x:localhost:{port}")] {
        let (s, v) = a.api().call("POST", &format!("/rooms/{}/join", enc(&room)), Some(&t), None).await;
        assert_eq!((s, v["errcode"].as_str()), (503, Some("home_server_unreachable")), "{room}: {v}");
        assert!(!v["error"].as_str().unwrap().contains("refused"), "{v}");
    }
    match bait.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the server connected to a private address: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_fetches_are_rate_limited_per_origin() {
    let (la, lf) = (listener().await, listener().await);
    let a = Node::start(la, Backend::Embedded, &[lf.local_addr().unwrap()], |_| {}).await;
    let fake = Fake::start(lf, Arc::new(|_: &str, _: &str, _: &Value| (200, json!({})))).await;
    // Requests in the fake's name signed with another key: each would make
    // the server fetch the fake's key again, to see whether it changed.
    let impostor = key_pair();
    for i in 0..10 {
        let path = format!("/_parlor/federation/v1/send/i{i}");
        let auth = fake.sign_with(&impostor, "PUT", &path, &a, EMPTY_TXN);
        let (s, v) = raw_with_auth(&a.api(), "PUT", &path, &auth, EMPTY_TXN.to_vec()).await;
        assert!(
            [(401, "bad_signature"), (429, "rate_limited")].contains(&(s, v["errcode"].as_str().unwrap())),
            "{s} {v}"
        );
    }
    assert!(fake.key_fetches() <= 3, "{} key fetches for one origin", fake.key_fetches());
    // The real server is still heard: its key was kept.
    let (s, v) = fake.call(&a, "PUT", "/_parlor/federation/v1/send/real", &json!({"events": []})).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_cannot_be_replayed() {
    let (lh, lf) = (listener().await, listener().await);
    let home = Node::start(lh, Backend::Embedded, &[lf.local_addr().unwrap()], |_| {}).await;
    let fake = Fake::start(lf, Arc::new(|_: &str, _: &str, _: &Value| not_found())).await;
    let (bob, tb) = home.api().user(&uniq("bob")).await;
    let j = home.api().join(&tb, &uniq("lobby")).await;
    let room_id = j["room_id"].as_str().unwrap().to_owned();
    let u = format!("@u:{}", fake.name);

    let join_path = "/_parlor/federation/v1/join";
    let join = json!({"room": j["alias"], "user_id": u}).to_string().into_bytes();
    let captured = fake.sign("POST", join_path, &home, &join);
    let (s, v) = raw_with_auth(&home.api(), "POST", join_path, &captured, join.clone()).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) =
        fake.call(&home, "POST", "/_parlor/federation/v1/leave", &json!({"room_id": room_id, "user_id": u})).await;
    assert_eq!(s, 200, "{v}");
    // The captured join, sent again within the window, after the leave.
    let (s, v) = raw_with_auth(&home.api(), "POST", join_path, &captured, join.clone()).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("bad_signature")), "{v}");
    let (_, m) = home.api().call("GET", &format!("/rooms/{}/members", enc(&room_id)), Some(&tb), None).await;
    let members: Vec<&str> = m["members"].as_array().unwrap().iter().map(|x| x["user_id"].as_str().unwrap()).collect();
    assert_eq!(members, [bob.as_str()], "the replay re-added the user");
    // The server remembers it across a restart too.
    let mut home = home;
    home.stop().await;
    home.resume().await;
    let (s, v) = raw_with_auth(&home.api(), "POST", join_path, &captured, join).await;
    assert_eq!((s, v["errcode"].as_str()), (401, Some("bad_signature")), "after a restart: {v}");
}

fn event(seq: u64, kind: &str, sender: &str, server: &str) -> Value {
    json!({"event_id": format!("$e{seq}:{server}"), "seq": seq, "type": kind, "sender": sender, "ts": seq})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_server_cannot_move_local_users_nor_push_for_rooms_it_is_not_home_to() {
    let (la, lf) = (listener().await, listener().await);
    let f_name = lf.local_addr().unwrap().to_string();
    let a = Node::start(la, Backend::Embedded, &[lf.local_addr().unwrap()], |_| {}).await;
    let (room_id, alias) = (format!("!r:{f_name}"), format!("#r:{f_name}"));
    let bob = format!("@bob:{}", a.name());
    // A hostile home server: it answers a join by listing a user of A who never asked.
    let log = Arc::new(Mutex::new(vec![event(1, "join", &format!("@x:{f_name}"), &f_name)]));
    let answer: Answer = {
        let (log, room_id, alias, bob, f_name) =
            (log.clone(), room_id.clone(), alias.clone(), bob.clone(), f_name.clone());
        Arc::new(move |method: &str, path: &str, body: &Value| {
            let mut log = log.lock().unwrap();
            if method == "POST" && path == "/_parlor/federation/v1/join" {
                let user = body["user_id"].as_str().unwrap().to_owned();
                let seq = log.len() as u64 + 1;
                log.push(event(seq, "join", &user, &f_name));
                let members = json!([format!("@x:{f_name}"), user, bob]);
                let answer = json!({"room_id": room_id, "alias": alias, "epoch": "e1",
                                    "earliest_seq": 1, "latest_seq": seq, "members": members});
                return (200, answer);
            }
            if method == "GET" && path.contains("/events?after=") {
                let after: u64 = path.split("after=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
                let events: Vec<Value> = log.iter().filter(|e| e["seq"].as_u64().unwrap() > after).cloned().collect();
                let page = json!({"room_id": room_id, "epoch": "e1", "events": events,
                                  "earliest_seq": 1, "latest_seq": log.len()});
                return (200, page);
            }
            not_found()
        })
    };
    let fake = Fake::start(lf, answer).await;
    let (ann, ta) = a.api().user("ann").await;
    let (_, tbob) = a.api().user("bob").await;
    let joined = a.api().join(&ta, &alias).await;
    assert_eq!(joined["room_id"], room_id.as_str());
    let rooms_of = |t: String| {
        let api = a.api();
        async move { api.call("GET", "/rooms", Some(&t), None).await.1["rooms"].clone() }
    };
    assert_eq!(rooms_of(tbob.clone()).await, json!([]), "bob never asked to join");

    // It pushes a join of bob and a leave of ann, neither of whom asked.
    let (e3, e4) = (event(3, "join", &bob, &f_name), event(4, "leave", &ann, &f_name));
    log.lock().unwrap().extend([e3.clone(), e4.clone()]);
    let txn = json!({"events": [{"room_id": room_id, "epoch": "e1", "event": e3},
                                {"room_id": room_id, "epoch": "e1", "event": e4}]});
    let (s, v) = fake.call(&a, "PUT", "/_parlor/federation/v1/send/t1", &txn).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(rooms_of(tbob).await, json!([]), "the home server made bob a member");
    assert_eq!(
        v1_fields(&rooms_of(ta.clone()).await),
        json!([{"room_id": room_id, "alias": alias}]),
        "ann was removed"
    );
    let (_, page) = a.api().messages(&ta, &room_id, "").await;
    assert_eq!(page["latest_seq"], 4, "the events are in the replica all the same: {page}");
    let (_, m) = a.api().call("GET", &format!("/rooms/{}/members", enc(&room_id)), Some(&ta), None).await;
    let members: Vec<&str> = m["members"].as_array().unwrap().iter().map(|x| x["user_id"].as_str().unwrap()).collect();
    assert_eq!(members, [ann.as_str(), &format!("@x:{f_name}")]);

    // A push for a room homed on A itself is refused whole, and changes nothing.
    let local = a.api().join(&ta, "local").await;
    let local_id = local["room_id"].as_str().unwrap();
    let forged = event(2, "join", &format!("@x:{f_name}"), &a.name());
    let txn = json!({"events": [{"room_id": room_id, "epoch": "e1", "event": event(5, "message", &format!("@x:{f_name}"), &f_name)},
                                {"room_id": local_id, "epoch": "whatever", "event": forged}]});
    let (s, v) = fake.call(&a, "PUT", "/_parlor/federation/v1/send/t2", &txn).await;
    assert_eq!((s, v["errcode"].as_str()), (403, Some("unknown_server")), "{v}");
    let (_, page) = a.api().messages(&ta, local_id, "").await;
    assert_eq!(page["latest_seq"], 1, "{page}");
    let (_, page) = a.api().messages(&ta, &room_id, "").await;
    assert_eq!(page["latest_seq"], 4, "nothing of a refused transaction is applied: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_takes_no_pushes_gets_a_bounded_queue() {
    let (lh, lf) = (listener().await, listener().await);
    let home = Node::start(lh, Backend::Embedded, &[lf.local_addr().unwrap()], |c| {
        c.federation_queue_max = 5;
        c.federation_give_up = Duration::from_secs(3600);
    })
    .await;
    // The fake takes no pushes (503) until told to; then it records them.
    let taking = Arc::new(Mutex::new(false));
    let pushed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let answer: Answer = {
        let (taking, pushed) = (taking.clone(), pushed.clone());
        Arc::new(move |method: &str, path: &str, body: &Value| {
            if method != "PUT" || !path.starts_with("/_parlor/federation/v1/send/") {
                return not_found();
            }
            if !*taking.lock().unwrap() {
                return (503, json!({"errcode": "storage_unavailable", "error": "down"}));
            }
            let seqs = body["events"].as_array().unwrap().iter().map(|e| e["event"]["seq"].as_u64().unwrap());
            pushed.lock().unwrap().extend(seqs);
            (200, json!({}))
        })
    };
    let fake = Fake::start(lf, answer).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let j = home.api().join(&tb, &uniq("room")).await;
    let room_id = j["room_id"].as_str().unwrap().to_owned();
    let (s, v) = fake
        .call(
            &home,
            "POST",
            "/_parlor/federation/v1/join",
            &json!({"room": room_id, "user_id": format!("@u:{}", fake.name)}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut last = 0;
    for n in 0..30 {
        let (s, v) = home.api().send(&tb, &room_id, &format!("m{n}"), "while the fake takes nothing").await;
        assert_eq!(s, 200, "{v}");
        last = v["seq"].as_u64().unwrap();
    }
    *taking.lock().unwrap() = true;
    eventually("the newest event reaches the fake", || {
        let pushed = pushed.clone();
        async move { pushed.lock().unwrap().contains(&last) }
    })
    .await;
    let got = pushed.lock().unwrap().clone();
    assert!(got.len() <= 6, "{} events were kept for a server that took none: {got:?}", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in seq order: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_home_server_tells_member_servers_where_its_rooms_stand() {
    let (lh, lf) = (listener().await, listener().await);
    let mut home = Node::start(lh, Backend::Embedded, &[lf.local_addr().unwrap()], |_| {}).await;
    let pushed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let answer: Answer = {
        let pushed = pushed.clone();
        Arc::new(move |method: &str, path: &str, body: &Value| {
            if method != "PUT" || !path.starts_with("/_parlor/federation/v1/send/") {
                return not_found();
            }
            let seqs = body["events"].as_array().unwrap().iter().map(|e| e["event"]["seq"].as_u64().unwrap());
            pushed.lock().unwrap().extend(seqs);
            (200, json!({}))
        })
    };
    let fake = Fake::start(lf, answer).await;
    let (_, tb) = home.api().user(&uniq("bob")).await;
    let j = home.api().join(&tb, &uniq("room")).await;
    let room_id = j["room_id"].as_str().unwrap().to_owned();
    let join = json!({"room": room_id, "user_id": format!("@u:{}", fake.name)});
    let (s, v) = fake.call(&home, "POST", "/_parlor/federation/v1/join", &join).await;
    assert_eq!(s, 200, "{v}");
    let (_, sent) = home.api().send(&tb, &room_id, "m1", "before the restart").await;
    let last = sent["seq"].as_u64().unwrap();
    eventually("the message is pushed", || {
        let pushed = pushed.clone();
        async move { pushed.lock().unwrap().contains(&last) }
    })
    .await;
    pushed.lock().unwrap().clear();
    // After a restart, with nothing new in the room, the fake is told the
    // room's newest event (what was queued is not kept across restarts).
    home.stop().await;
    home.resume().await;
    eventually("the newest event is pushed again", || {
        let pushed = pushed.clone();
        async move { pushed.lock().unwrap().contains(&last) }
    })
    .await;
}

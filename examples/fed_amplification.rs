//! Federation amplification (issue 11, item 9), reproduced: one room of a
//! Parlor server joined by N fake remote servers, each of which serves only
//! its key document (everything else is 404), with one signed join each.
//! Prints the room's send rate and ack latency with no remote member, with
//! the N fakes up, and with the N fakes down, plus the server's RSS and data
//! dir size, so a change to federation's push path can be judged by numbers.
//!
//! ```sh
//! cargo run --release --example fed_amplification -- [--fakes 200] [--secs 5] [--window 32]
//! ```
//!
//! Everything runs in this process on 127.0.0.1: the server on its own
//! two-thread runtime, the fakes and the sending client on another. The fakes
//! are named to the server with `--federation-peer` (`Config::federation_peers`),
//! as a loopback address must be.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use parlor::config::Config;
use parlor::protocol::ServerName;
use parlor::protocol::federation::{FEDERATION_PREFIX, KEY_PATH, ServerKeyResponse, request_signed_bytes};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Args {
    fakes: usize,
    secs: u64,
    window: usize,
}

fn args() -> Result<Args> {
    let mut a = Args { fakes: 200, secs: 5, window: 32 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v: u64 = it.next().context("a flag needs a value")?.parse()?;
        match flag.as_str() {
            "--fakes" => a.fakes = v as usize,
            "--secs" => a.secs = v,
            "--window" => a.window = v as usize,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// A fake server: a key pair, a name, and a listener serving its key document.
struct Fake {
    name: String,
    key: Ed25519KeyPair,
    key_id: String,
    task: tokio::task::JoinHandle<()>,
}

async fn fake(listener: TcpListener) -> Result<Fake> {
    let name = listener.local_addr()?.to_string();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let public_key = B64.encode(key.public_key().as_ref());
    let key_id = "ed25519:fake".to_owned();
    let signature = B64.encode(key.sign(&ServerKeyResponse::signed_bytes(&name, &key_id, &public_key)).as_ref());
    let doc = Bytes::from(
        serde_json::to_vec(&ServerKeyResponse {
            server_name: name.clone(),
            key_id: key_id.clone(),
            public_key,
            signature,
        })
        .expect("serializes"),
    );
    // Connections live in the accept task's set, so aborting it (the fake
    // goes down) closes kept-alive connections too.
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let stream = tokio::select! {
                Ok((stream, _)) = listener.accept() => stream,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let doc = doc.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let doc = doc.clone();
                    async move {
                        let (status, body) = if req.uri().path() == KEY_PATH {
                            (200, doc)
                        } else {
                            (404, Bytes::from_static(br#"{"errcode":"not_found","error":"only a key here"}"#))
                        };
                        let mut resp = http::Response::new(Full::new(body));
                        *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(Fake { name, key, key_id, task })
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(client: &Client, method: &str, url: &str, headers: &[(&str, String)], body: Value) -> Result<Value> {
    let mut req = http::Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = client.request(req.body(Full::new(Bytes::from(body.to_string())))?).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{method} {url}: {status} {v}");
    }
    Ok(v)
}

/// The fake asks the server to let `@fake:<its name>` join `alias`, signed as
/// §11.2 says (anew for each attempt); a 429 (key fetches are rate-limited)
/// is waited out as told.
async fn fake_join(client: &Client, base: &str, server: &str, f: &Fake, alias: &str) -> Result<()> {
    loop {
        match fake_join_once(client, base, server, f, alias).await {
            Err(JoinError::RateLimited(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Err(JoinError::Other(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

enum JoinError {
    RateLimited(u64),
    Other(anyhow::Error),
}

async fn fake_join_once(client: &Client, base: &str, server: &str, f: &Fake, alias: &str) -> Result<(), JoinError> {
    let path = format!("{FEDERATION_PREFIX}/join");
    let body = json!({"room": alias, "user_id": format!("@fake:{}", f.name)}).to_string();
    let ts = parlor::storage::events::now_ms();
    let hash = B64.encode(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()));
    let sig = B64.encode(f.key.sign(&request_signed_bytes("POST", &path, &f.name, server, ts, &hash)).as_ref());
    let auth = format!(
        r#"Parlor-Signature origin="{}",destination="{server}",key="{}",ts="{ts}",sig="{sig}""#,
        f.name, f.key_id
    );
    let req = http::Request::post(format!("{base}{path}"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| JoinError::Other(e.into()))?;
    let resp = client.request(req).await.map_err(|e| JoinError::Other(e.into()))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| JoinError::Other(e.into()))?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match status.as_u16() {
        200 => Ok(()),
        429 => Err(JoinError::RateLimited(v["retry_after_ms"].as_u64().unwrap_or(100))),
        _ => Err(JoinError::Other(anyhow::anyhow!("join: {status} {v}"))),
    }
}

struct Figures {
    sends_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Sends over one WebSocket with `window` sends in flight for `secs`; every ack frees a slot.
async fn measure(base: &str, token: &str, room: &str, window: usize, secs: u64, tag: &str) -> Result<Figures> {
    let url = format!("{}/_parlor/client/v1/ws", base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request()?;
    req.headers_mut().insert("sec-websocket-protocol", "parlor.v1".parse()?);
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let _ready = ws.next().await.context("ready")??;
    let mut sent_at = std::collections::HashMap::new();
    let mut lat = Vec::new();
    let mut n = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let send = |n: u64| {
        Message::text(json!({"type": "send", "id": n.to_string(), "room": room, "txn_id": format!("{tag}{n}"), "body": format!("message {n}")}).to_string())
    };
    for _ in 0..window {
        ws.send(send(n)).await?;
        sent_at.insert(n, Instant::now());
        n += 1;
    }
    while !sent_at.is_empty() {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.context("an ack in 60 s")?;
        let Some(Ok(Message::Text(t))) = msg else { bail!("socket ended: {msg:?}") };
        let f: Value = serde_json::from_str(&t)?;
        if f["type"] != "ack" {
            if f["type"] == "error" {
                bail!("send refused: {f}");
            }
            continue;
        }
        let id: u64 = f["id"].as_str().unwrap_or_default().parse()?;
        if let Some(at) = sent_at.remove(&id) {
            lat.push(at.elapsed());
        }
        if Instant::now() < end {
            ws.send(send(n)).await?;
            sent_at.insert(n, Instant::now());
            n += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    Ok(Figures { sends_per_s: lat.len() as f64 / elapsed, p50_ms: q(0.5), p99_ms: q(0.99) })
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(md) = e.metadata() else { continue };
        total += if md.is_dir() { dir_bytes(&e.path()) } else { md.len() };
    }
    total
}

fn main() -> Result<()> {
    let a = args()?;
    let data = tempfile::tempdir()?;
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let (listener, fakes) = client_rt.block_on(async {
        let mut fakes = Vec::new();
        for _ in 0..a.fakes {
            fakes.push(fake(TcpListener::bind("127.0.0.1:0").await?).await?);
        }
        Ok::<_, anyhow::Error>((std::net::TcpListener::bind("127.0.0.1:0")?, fakes))
    })?;
    let addr = listener.local_addr()?;
    let server_name = addr.to_string();
    let mut cfg = Config::new(ServerName::parse(&server_name)?, data.path());
    cfg.rate_limit = false;
    cfg.federation_peers = fakes.iter().map(|f| (f.name.clone(), format!("http://{}", f.name))).collect();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    listener.set_nonblocking(true)?;
    let server = server_rt.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("listener");
        parlor::server::run(listener, cfg, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let base = format!("http://{addr}");
    client_rt.block_on(async {
        let client: Client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let p = "/_parlor/client/v1";
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the server did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let creds = json!({"username": "bench", "password": "zebra-quartz-71"});
        call(&client, "POST", &format!("{base}{p}/register"), &[], creds.clone()).await?;
        let login = call(&client, "POST", &format!("{base}{p}/login"), &[], creds).await?;
        let token = login["access_token"].as_str().context("token")?.to_owned();
        let bearer = [("authorization", format!("Bearer {token}"))];
        let alone = call(&client, "POST", &format!("{base}{p}/rooms/alone/join"), &bearer, json!({})).await?;
        let crowd = call(&client, "POST", &format!("{base}{p}/rooms/crowd/join"), &bearer, json!({})).await?;
        let (alone, crowd) =
            (alone["room_id"].as_str().unwrap().to_owned(), crowd["room_id"].as_str().unwrap().to_owned());
        let alias = format!("#crowd:{server_name}");

        let report = |what: &str, f: &Figures| {
            println!(
                "{what:<34} sends/s {:>8.0}  ack p50 {:>7.2} ms  p99 {:>8.2} ms  rss {:>6.1} MiB  data dir {:>6.1} MiB",
                f.sends_per_s,
                f.p50_ms,
                f.p99_ms,
                rss_mib(),
                dir_bytes(data.path()) as f64 / (1 << 20) as f64
            )
        };
        let f = measure(&base, &token, &alone, a.window, a.secs, "a").await?;
        report("no remote member", &f);

        let t = Instant::now();
        for f in &fakes {
            fake_join(&client, &base, &server_name, f, &alias).await?;
        }
        println!("{} fakes joined in {:.1} s", fakes.len(), t.elapsed().as_secs_f64());
        let f = measure(&base, &token, &crowd, a.window, a.secs, "b").await?;
        report(&format!("{} fakes up (key document only)", fakes.len()), &f);

        for f in &fakes {
            f.task.abort();
        }
        let f = measure(&base, &token, &crowd, a.window, a.secs, "c").await?;
        report(&format!("{} fakes down", fakes.len()), &f);
        let f = measure(&base, &token, &crowd, a.window, a.secs, "d").await?;
        report(&format!("{} fakes down, again", fakes.len()), &f);
        Ok(())
    })?;
    let _ = stop_tx.send(());
    server_rt.block_on(server)?.context("server")?;
    Ok(())
}

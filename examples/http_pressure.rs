//! Reproduces two ways one client could hurt everyone else over HTTP, against
//! a `parlor` binary it starts itself, and prints what it measured (one
//! human line and one JSON line per run). Not a test: figures depend on the
//! machine; compare two binaries on the same one.
//!
//! ```sh
//! cargo build --release && cargo run --release --example http_pressure -- slow-readers
//! cargo run --release --example http_pressure -- conn-flood
//! cargo run --release --example http_pressure -- slow-readers --bin /path/to/old/parlor
//! ```
//!
//! - `slow-readers`: a room of 1,000 messages of 16 KiB; N connections (80)
//!   each ask `messages?limit=1000` (`--pipeline N` times in a row) and never
//!   read. Reports the server's RSS (before, peak, at the end), the latency of
//!   small probe requests sent meanwhile from another connection, and how many
//!   readers the server still holds open after `--hold-secs`.
//! - `conn-flood`: one address (127.0.0.1) opens 2,500 connections against
//!   `--max-connections 2000`; then probes from another address (127.0.0.2)
//!   each open a connection and ask `GET /_parlor/versions`. Reports how many
//!   probes were served.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const P: &str = "/_parlor/client/v1";

struct Args {
    mode: String,
    bin: String,
    readers: usize,
    pipeline: usize,
    hold: Duration,
    extra: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        bin: "target/release/parlor".into(),
        readers: 80,
        pipeline: 1,
        hold: Duration::from_secs(15),
        extra: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bin" => a.bin = it.next().expect("--bin PATH"),
            "--readers" => a.readers = it.next().and_then(|n| n.parse().ok()).expect("--readers N"),
            "--pipeline" => a.pipeline = it.next().and_then(|n| n.parse().ok()).expect("--pipeline N"),
            "--hold-secs" => {
                a.hold = Duration::from_secs(it.next().and_then(|n| n.parse().ok()).expect("--hold-secs N"))
            }
            // Passed on to `parlor serve`.
            "--" => a.extra.extend(it.by_ref()),
            m if a.mode.is_empty() => a.mode = m.to_owned(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    a
}

struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: &str, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "off", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("parlor printed its address").unwrap();
            if let Some(rest) = line.strip_prefix("parlor listening on http://") {
                break rest.trim().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr, _dir: dir }
    }

    /// (current, peak) resident memory in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a keep-alive connection; returns (status, body).
async fn request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Vec<u8>) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(format!("{head}{body}").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head[9..12].parse().unwrap();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-answer");
                buf.extend_from_slice(&chunk[..n]);
            }
            return (status, buf[end + 4..end + 4 + len].to_vec());
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn json_call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (status, bytes) = request(&mut s, method, path, token, Some(&body)).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(status < 300, "{method} {path}: {status} {v}");
    v
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn slow_readers(a: &Args) -> Value {
    let server = Server::start(&a.bin, &a.extra);
    let addr = server.addr;
    let name = format!("slow{}", std::process::id());
    json_call(addr, "POST", &format!("{P}/register"), None, json!({"username": name, "password": "zebra-quartz-71"}))
        .await;
    let login =
        json_call(addr, "POST", &format!("{P}/login"), None, json!({"username": name, "password": "zebra-quartz-71"}))
            .await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    json_call(addr, "POST", &format!("{P}/rooms/big/join"), Some(&token), json!({})).await;
    // 1,000 messages of 16 KiB, sent on 8 connections.
    let body = "x".repeat(16 * 1024);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (token, body) = (token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for i in (w..1000).step_by(8) {
                let (st, _) = request(
                    &mut s,
                    "PUT",
                    &format!("{P}/rooms/big/send/t{i}"),
                    Some(&token),
                    Some(&json!({"body": body})),
                )
                .await;
                assert_eq!(st, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let probe_path = format!("{P}/rooms/big/messages?limit=1");
    let mut probe = TcpStream::connect(addr).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(request(&mut probe, "GET", &probe_path, Some(&token), None).await.0, 200);
        idle.push(t.elapsed());
    }
    idle.sort();
    let (rss_before, _) = server.rss_mib();

    // The slow readers: a small receive buffer, one big request, no reads.
    let req =
        format!("GET {P}/rooms/big/messages?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut readers = Vec::new();
    for _ in 0..a.readers {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(req.repeat(a.pipeline).as_bytes()).await.unwrap();
        readers.push(s);
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut peak = 0f64;
    while started.elapsed() < a.hold {
        let t = Instant::now();
        let (st, _) = request(&mut probe, "GET", &probe_path, Some(&token), None).await;
        assert_eq!(st, 200);
        lat.push(t.elapsed());
        peak = peak.max(server.rss_mib().0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rss_end, hwm) = server.rss_mib();
    // How many readers the server still holds open: read what is there for
    // a moment (a closed one ends with EOF once the kernel's bytes are read).
    let mut open = 0;
    for mut s in readers {
        let mut buf = vec![0u8; 1 << 16];
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        let closed = loop {
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        open += usize::from(!closed);
    }
    lat.sort();
    json!({
        "mode": "slow-readers", "bin": a.bin, "readers": a.readers, "pipeline": a.pipeline, "hold_s": a.hold.as_secs(),
        "rss_before_mib": rss_before.round(), "rss_peak_sampled_mib": peak.round(), "rss_hwm_mib": hwm.round(),
        "rss_end_mib": rss_end.round(),
        "probe_idle_p50_ms": percentile(&idle, 0.5), "probe_idle_p99_ms": percentile(&idle, 0.99),
        "probe_p50_ms": percentile(&lat, 0.5), "probe_p99_ms": percentile(&lat, 0.99),
        "probe_max_ms": percentile(&lat, 1.0), "probes": lat.len(),
        "readers_still_open_at_end": open,
    })
}

async fn conn_flood(a: &Args) -> Value {
    let mut extra = vec!["--max-connections".to_owned(), "2000".to_owned()];
    extra.extend(a.extra.iter().cloned());
    let server = Server::start(&a.bin, &extra);
    let addr = server.addr;
    let mut flood = Vec::new();
    for _ in 0..2500 {
        match TcpStream::connect(addr).await {
            Ok(s) => flood.push(s),
            Err(e) => panic!("flood connect: {e}"),
        }
    }
    // The server has taken them all off its accept queue once it answers or
    // closes a connection made after them.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let mut sync = sock.connect(addr).await.unwrap();
    sync.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let _ = sync.read_to_end(&mut Vec::new()).await;
    let (mut served, mut refused) = (0, 0);
    let started = Instant::now();
    for _ in 0..123 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let ok = async {
            let mut s = sock.connect(addr).await.ok()?;
            s.write_all(b"GET /_parlor/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await.ok()?.ok()?;
            buf.starts_with(b"HTTP/1.1 200").then_some(())
        }
        .await;
        if ok.is_some() { served += 1 } else { refused += 1 }
    }
    let elapsed = started.elapsed();
    drop(flood);
    json!({
        "mode": "conn-flood", "bin": a.bin, "flood_connections": 2500, "max_connections": 2000,
        "probes": 123, "probes_served": served, "probes_refused": refused, "probe_secs": elapsed.as_secs_f64(),
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let result = match a.mode.as_str() {
        "slow-readers" => slow_readers(&a).await,
        "conn-flood" => conn_flood(&a).await,
        other => panic!("mode is slow-readers or conn-flood, not {other:?}"),
    };
    if let Some(obj) = result.as_object() {
        let line: Vec<String> = obj.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{}", line.join(" "));
    }
    println!("{result}");
}

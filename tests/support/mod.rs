//! Shared harness for the integration tests: each test gets its own server
//! (in-process or the real binary) on 127.0.0.1:0 with a temp data dir and,
//! where needed, its own `redis-server` on a free port.

#![allow(dead_code)]

pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parlor::config::Config;
use parlor::protocol::ServerName;
use tokio::sync::oneshot;

/// A port that was free a moment ago (for servers that cannot bind port 0 themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` of our own: temp dir, free port, no persistence unless asked.
pub struct RedisServer {
    pub port: u16,
    pub url: String,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    fn start_in(mut dir: tempfile::TempDir, extra: &[&str]) -> Self {
        for _attempt in 0..5 {
            let port = free_port();
            let child = spawn_redis(port, dir.path(), extra);
            let mut server = RedisServer { port, url: format!("redis://127.0.0.1:{port}/"), child, dir };
            if server.wait_ready(Duration::from_secs(5)) {
                return server;
            }
            // Another process took the port between our probe and redis's bind: try another.
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
            drop(server);
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.cli(&["PING"]).is_some_and(|s| s.trim() == "PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs one command with `redis-cli`; None when it fails.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills the server (SIGKILL): nothing is saved.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new redis-server on the same port and dir (after `kill`).
    pub fn restart(&mut self, extra: &[&str]) {
        self.kill();
        self.child = spawn_redis(self.port, self.dir.path(), extra);
        assert!(self.wait_ready(Duration::from_secs(5)), "redis-server did not come back");
    }
}

fn spawn_redis(port: u16, dir: &Path, extra: &[&str]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "this test needs redis-server and it is not installed: run `apt-get install -y redis-server` (or `.ci/run`, which does it)"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server running in this process, on its own runtime tasks.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// A config for a server on `127.0.0.1:<port>` with rate limits off.
    pub fn config(port: u16, data_dir: &Path) -> Config {
        let mut cfg = Config::new(ServerName::parse(&format!("127.0.0.1:{port}")).unwrap(), data_dir);
        cfg.rate_limit = false;
        cfg
    }

    /// Starts with `tweak` applied to the default test config.
    pub async fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = Self::config(addr.port(), data_dir);
        tweak(&mut cfg);
        Self::start_with(listener, cfg).await
    }

    pub async fn start_with(listener: tokio::net::TcpListener, cfg: Config) -> Self {
        let addr = listener.local_addr().unwrap();
        let data_dir = cfg.data_dir.clone();
        let room_log = if cfg.redis.is_some() { "redis" } else { "embedded" };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            parlor::server::run(listener, cfg, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        let s = TestServer { addr, url: format!("http://{addr}"), data_dir, shutdown: Some(tx), task: Some(task) };
        s.wait_healthy(room_log).await;
        s
    }

    /// Starts on these listeners (the client one, and maybe a metrics one).
    /// A TLS server (`cfg.tls`) is not probed here: its test's own client,
    /// which trusts the test CA, waits for it.
    pub async fn start_serving(listeners: parlor::server::Listeners, cfg: Config) -> Self {
        let addr = listeners.client.local_addr().unwrap();
        let data_dir = cfg.data_dir.clone();
        let probe = cfg.tls.is_none();
        let room_log = if cfg.redis.is_some() { "redis" } else { "embedded" };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            parlor::server::serve(listeners, cfg, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        let scheme = if probe { "http" } else { "https" };
        let s = TestServer { addr, url: format!("{scheme}://{addr}"), data_dir, shutdown: Some(tx), task: Some(task) };
        if probe {
            s.wait_healthy(room_log).await;
        }
        s
    }

    /// Waits until `GET /healthz` answers 200 with `{"status": "ok",
    /// "room_log": room_log}` (the listener being open is not enough:
    /// storage may still be opening); fails at once if the server task ended.
    async fn wait_healthy(&self, room_log: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                panic!("the server stopped before it was healthy");
            }
            let answer = health(self.addr).await;
            if let Some((200, body)) = &answer {
                assert_eq!(
                    body,
                    &serde_json::json!({"status": "ok", "room_log": room_log}),
                    "GET /healthz answered 200 with the wrong body"
                );
                return;
            }
            assert!(Instant::now() < deadline, "GET /healthz did not answer 200 within 30 s (last: {answer:?})");
            // Poll interval of a wait on a condition (bounded by `deadline`).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Shuts down gracefully and waits until the data dir is released.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// The status of `GET /healthz` on `addr`, or None when nothing answers.
pub async fn health_status(addr: SocketAddr) -> Option<u16> {
    health(addr).await.map(|(status, _)| status)
}

/// `GET /healthz` on `addr`: its status and JSON body, or None when nothing
/// answers (or the answer is not a status line and a JSON body).
pub async fn health(addr: SocketAddr) -> Option<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(HEALTH_REQUEST).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        parse_health(&buf)
    };
    tokio::time::timeout(Duration::from_secs(5), ask).await.ok().flatten()
}

const HEALTH_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: parlor.test\r\nConnection: close\r\n\r\n";

/// A whole `Connection: close` answer to [`HEALTH_REQUEST`] → status and body.
fn parse_health(answer: &[u8]) -> Option<(u16, serde_json::Value)> {
    let status = std::str::from_utf8(answer.strip_prefix(b"HTTP/1.1 ")?.get(..3)?).ok()?.parse().ok()?;
    let body = &answer[answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4..];
    Some((status, serde_json::from_slice(body).ok()?))
}

/// The real `parlor` binary, started as a child process.
pub struct ParlorProcess {
    pub url: String,
    pub addr: SocketAddr,
    pub child: Child,
}

impl ParlorProcess {
    /// Spawns `parlor serve --listen 127.0.0.1:0 --data-dir DIR ARGS…` and waits
    /// for the line `parlor listening on http://ADDR` on its stdout.
    pub fn spawn(data_dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("parlor binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr: SocketAddr = loop {
            let line = lines.next().expect("parlor printed its address").expect("stdout readable");
            if let Some(rest) = line.strip_prefix("parlor listening on http://") {
                break rest.trim().parse().expect("address parses");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let mut p = ParlorProcess { url: format!("http://{addr}"), addr, child };
        p.wait_healthy_or_exit(Duration::from_secs(30));
        p
    }

    /// Waits until `GET /healthz` answers 200 with `"status": "ok"` (the
    /// address is printed before storage is open), the process exits, or
    /// `within` passes; a test that expects the process to fail or to be
    /// unhealthy sees that itself.
    fn wait_healthy_or_exit(&mut self, within: Duration) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            let healthy = (|| {
                let mut s = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                s.write_all(HEALTH_REQUEST).ok()?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).ok()?;
                let (status, body) = parse_health(&buf)?;
                (status == 200 && body["status"] == "ok").then_some(())
            })();
            if healthy.is_some() {
                return;
            }
            // Poll interval of a wait on a condition (bounded by `deadline`).
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ =
            rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), rustix::process::Signal::TERM);
        self.child.wait().unwrap()
    }
}

impl Drop for ParlorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `parlor` binary with its log (stderr) kept in a file, for tests
/// that read the log, send signals or scrape metrics. It does not wait for
/// the server to be healthy: the test probes it with its own client.
pub struct LoggedProcess {
    pub child: Child,
    /// `http://ADDR` or `https://ADDR`.
    pub url: String,
    pub addr: SocketAddr,
    /// Where `--metrics-listen` serves, when given.
    pub metrics: Option<SocketAddr>,
    pub log: PathBuf,
}

impl LoggedProcess {
    /// Spawns `parlor serve --listen 127.0.0.1:0 --data-dir DIR ARGS…` (ARGS
    /// may name another `--listen`) with `env`, logging to `DIR.log`; waits
    /// for the lines that say where it listens.
    pub fn spawn(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = data_dir.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_parlor"));
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "parlor=info,warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("parlor binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wants_metrics = args.contains(&"--metrics-listen");
        let (mut url, mut metrics) = (None, None);
        while url.is_none() || (wants_metrics && metrics.is_none()) {
            let Some(Ok(line)) = lines.next() else {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("parlor exited before saying where it listens; its log:\n{log}");
            };
            if let Some(rest) = line.strip_prefix("parlor listening on ") {
                url = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("parlor metrics on http://") {
                metrics = Some(rest.trim().trim_end_matches("/metrics").parse().expect("metrics address"));
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let url = url.unwrap();
        let addr = url.split_once("://").unwrap().1.parse().expect("address parses");
        LoggedProcess { child, url, addr, metrics, log }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `n` lines containing `needle`; false after `within`.
    pub fn wait_for_log(&self, needle: &str, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log_text().lines().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal (e.g. `Signal::HUP`).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig);
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.child.wait().unwrap()
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which room log a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

/// A server on one backend, with its temp dir and (for Redis) its own redis-server.
pub struct Harness {
    pub server: TestServer,
    pub redis: Option<RedisServer>,
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    tweak: fn(&mut Config),
}

impl Harness {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// `tweak` adjusts the test config (rate limits are off unless it turns them on).
    pub async fn start_with(backend: Backend, tweak: fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let redis = (backend == Backend::Redis).then(RedisServer::start);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Self::boot(listener, dir.path(), redis.as_ref(), tweak).await;
        Harness { server, redis, dir, backend, tweak }
    }

    /// Starts a server on `listener` with the test config for this data and Redis.
    async fn boot(
        listener: tokio::net::TcpListener,
        dir: &Path,
        redis: Option<&RedisServer>,
        tweak: fn(&mut Config),
    ) -> TestServer {
        let mut cfg = TestServer::config(listener.local_addr().unwrap().port(), dir);
        cfg.redis = redis.map(|r| r.url.clone());
        tweak(&mut cfg);
        TestServer::start_with(listener, cfg).await
    }

    /// Stops the server gracefully and starts it again on the same data (and Redis).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.resume().await;
    }

    /// Stops the server gracefully (its port and data stay reserved for `resume`).
    pub async fn stop(&mut self) {
        let addr = self.server.addr;
        let old = std::mem::replace(&mut self.server, placeholder(addr));
        old.stop().await;
    }

    /// Starts the server again on the same port and data after `stop`.
    pub async fn resume(&mut self) {
        let port = self.server.addr.port();
        let listener = rebind(port).await;
        self.server = Self::boot(listener, self.dir.path(), self.redis.as_ref(), self.tweak).await;
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    pub fn api(&self) -> Api {
        Api::new(&self.server.url)
    }
}

/// Binds `127.0.0.1:port` again after a server on it stopped; the old
/// listener may still be releasing it for a moment (bounded wait).
pub async fn rebind(port: u16) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) => assert!(Instant::now() < deadline, "cannot bind 127.0.0.1:{port} again within 10 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn placeholder(addr: SocketAddr) -> TestServer {
    TestServer { addr, url: String::new(), data_dir: PathBuf::new(), shutdown: None, task: None }
}

/// Instantiates each named `async fn(Backend)` as a test on both backends.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::support::Backend::Embedded).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::support::Backend::Redis).await } )*
        }
    };
}

/// A raw-JSON HTTP client for the client API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

pub const P: &str = "/_parlor/client/v1";

impl Api {
    pub fn new(base: &str) -> Self {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Api { base: base.to_owned(), client }
    }

    /// Sends raw bytes; returns (status, parsed JSON or Null).
    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
        let mut req = http::Request::builder().method(method).uri(format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
        let resp = self.client.request(req).await.expect("server answers");
        let status = resp.status().as_u16();
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON answer")
        };
        (status, v)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        self.raw(method, &format!("{P}{path}"), token, bytes).await
    }

    pub async fn register(&self, name: &str, password: &str) -> (u16, serde_json::Value) {
        self.call("POST", "/register", None, Some(serde_json::json!({"username": name, "password": password}))).await
    }

    /// Registers and logs in a fresh user; returns (user_id, token).
    pub async fn user(&self, name: &str) -> (String, String) {
        let (s, v) = self.register(name, "zebra-quartz-71").await;
        assert_eq!(s, 201, "register {name}: {v}");
        self.login(name).await
    }

    pub async fn login(&self, name: &str) -> (String, String) {
        let (s, v) = self
            .call("POST", "/login", None, Some(serde_json::json!({"username": name, "password": "zebra-quartz-71"})))
            .await;
        assert_eq!(s, 200, "login {name}: {v}");
        (v["user_id"].as_str().unwrap().to_owned(), v["access_token"].as_str().unwrap().to_owned())
    }

    pub async fn join(&self, token: &str, room: &str) -> serde_json::Value {
        let (s, v) = self.call("POST", &format!("/rooms/{}/join", enc(room)), Some(token), None).await;
        assert_eq!(s, 200, "join {room}: {v}");
        v
    }

    pub async fn send(&self, token: &str, room: &str, txn: &str, body: &str) -> (u16, serde_json::Value) {
        self.call(
            "PUT",
            &format!("/rooms/{}/send/{txn}", enc(room)),
            Some(token),
            Some(serde_json::json!({"body": body})),
        )
        .await
    }

    pub async fn messages(&self, token: &str, room: &str, query: &str) -> (u16, serde_json::Value) {
        self.call("GET", &format!("/rooms/{}/messages?{query}", enc(room)), Some(token), None).await
    }
}

/// URL-encodes a path segment.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A unique-enough suffix for names in one test run.
pub fn uniq(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 10000, N.fetch_add(1, Ordering::Relaxed))
}

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket test client speaking raw JSON frames.
pub struct WsClient {
    pub ws: WsStream,
}

impl WsClient {
    /// Connects with the `parlor.v1` subprotocol and, if given, a bearer token header.
    pub async fn connect(base: &str, token: Option<&str>) -> Self {
        Self::connect_with(base, token, &[]).await.expect("websocket upgrade succeeds")
    }

    pub async fn connect_with(
        base: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}{P}/ws", base.replacen("http://", "ws://", 1));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", "parlor.v1".parse().unwrap());
        if let Some(t) = token {
            req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        for (k, v) in headers {
            req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(WsClient { ws })
    }

    /// Connects and authenticates with the header; waits for `ready`.
    pub async fn authed(base: &str, token: &str) -> Self {
        let mut c = Self::connect(base, Some(token)).await;
        let ready = c.recv().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        c
    }

    pub async fn send(&mut self, frame: serde_json::Value) {
        use futures_util::SinkExt;
        self.ws.send(tokio_tungstenite::tungstenite::Message::text(frame.to_string())).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, msg: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        let _ = self.ws.send(msg).await;
    }

    /// The next JSON frame (panics after 10 s or on close).
    pub async fn recv(&mut self) -> serde_json::Value {
        match self.next().await {
            Next::Frame(v) => v,
            Next::Closed(code) => panic!("connection closed ({code:?}) while waiting for a frame"),
        }
    }

    /// The next JSON frame or the close code.
    pub async fn next(&mut self) -> Next {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("a frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => return Next::Frame(serde_json::from_str(&t).expect("JSON frame")),
                Some(Ok(Message::Close(f))) => return Next::Closed(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Next::Closed(None),
            }
        }
    }

    /// Reads frames until the connection closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Next::Closed(c) = self.next().await {
                return c;
            }
        }
    }

    /// Reads frames until one of type `ty` arrives; returns it and the frames before it.
    pub async fn until(&mut self, ty: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
        let mut before = Vec::new();
        loop {
            let f = self.recv().await;
            if f["type"] == ty {
                return (f, before);
            }
            before.push(f);
        }
    }
}

pub enum Next {
    Frame(serde_json::Value),
    Closed(Option<u16>),
}

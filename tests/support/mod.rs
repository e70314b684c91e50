//! Shared harness for the integration tests: each test gets its own server
//! (in-process or the real binary) on 127.0.0.1:0 with a temp data dir and,
//! where needed, its own `redis-server` on a free port.

#![allow(dead_code)]

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
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            parlor::server::run(listener, cfg, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        let s = TestServer { addr, url: format!("http://{addr}"), data_dir, shutdown: Some(tx), task: Some(task) };
        s.wait_healthy().await;
        s
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not start");
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
        ParlorProcess { url: format!("http://{addr}"), addr, child }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }
}

impl Drop for ParlorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

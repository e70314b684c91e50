//! A `redis-server` of a test's own: a temp dir, a free port, no persistence
//! unless asked, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
            // Poll interval of a wait on a condition (bounded by `deadline`).
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

//! A Parlor server running in the test's own process, on its own runtime
//! tasks: 127.0.0.1:0, the caller's data dir, rate limits off unless a test
//! turns them on; ready once `GET /healthz` says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parlor::config::Config;
use parlor::protocol::ServerName;
use tokio::sync::oneshot;

use crate::health::health;

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
        wait_released(&data_dir).await;
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
        wait_released(&data_dir).await;
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
        wait_released(&self.data_dir).await;
    }

    /// A stopped server's stand-in: it keeps the address for a restart.
    pub(crate) fn placeholder(addr: SocketAddr) -> Self {
        TestServer { addr, url: String::new(), data_dir: PathBuf::new(), shutdown: None, task: None }
    }
}

/// Waits until no server in this process holds the data dir's storage
/// lock (sled's `flock` on `sled/db`). `server::run` returns once it has
/// flushed, but a background task that held a service (a presence fan-out,
/// a catch-up) may drop its handle on storage a moment later; a server
/// started on the same dir before that fails to take the lock. A real
/// process exits, so only in-process restarts (tests) wait here.
pub async fn wait_released(data_dir: &Path) {
    use rustix::fs::{FlockOperation, flock};
    let path = data_dir.join("sled").join("db");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(file) = std::fs::File::open(&path) else { return };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            // Closing the file releases the probe's own lock.
            Ok(()) => return,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                assert!(Instant::now() < deadline, "{} still locked 10 s after its server stopped", path.display());
            }
            Err(e) => panic!("flock {}: {e}", path.display()),
        }
        // Poll interval of a bounded wait for other tasks to let go.
        tokio::time::sleep(Duration::from_millis(10)).await;
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

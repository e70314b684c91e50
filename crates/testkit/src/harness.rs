//! A server on one room-log backend with everything it stands on (temp data
//! dir, its own `redis-server` for Redis), restartable on the same port and
//! data; [`backend_tests!`] runs a test on both backends, and
//! [`BlockingServer`] gives synchronous tests the same server.

use std::path::Path;

use parlor::config::Config;

use crate::client::Api;
use crate::redis::RedisServer;
use crate::server::{TestServer, rebind};

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
        let old = std::mem::replace(&mut self.server, TestServer::placeholder(addr));
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

/// Instantiates each named `async fn(Backend)` as a test on both backends,
/// in modules `embedded` and `redis` beside them.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::Backend::Embedded).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::Backend::Redis).await } )*
        }
    };
}

/// A [`Harness`] on the embedded backend for synchronous tests (ones that
/// run and wait on child processes): it brings its own runtime, whose
/// worker threads serve while the test blocks. Stopped gracefully on drop.
pub struct BlockingServer {
    /// The port, the same across restarts.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    harness: Harness,
    runtime: tokio::runtime::Runtime,
}

impl BlockingServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts a server whose config `tweak` adjusts (e.g. retention).
    pub fn start_with(tweak: fn(&mut Config)) -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let harness = runtime.block_on(Harness::start_with(Backend::Embedded, tweak));
        BlockingServer { port: harness.server.addr.port(), url: harness.url().to_owned(), harness, runtime }
    }

    /// The server name in user ids and aliases.
    pub fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully; its data stays for [`BlockingServer::restart`].
    pub fn stop(&mut self) {
        self.runtime.block_on(self.harness.stop());
    }

    /// Stops and starts again on the same port with the same data.
    pub fn restart(&mut self) {
        self.runtime.block_on(self.harness.restart());
    }
}

impl Drop for BlockingServer {
    fn drop(&mut self) {
        // Graceful stop before the data dir and the runtime go.
        self.stop();
    }
}

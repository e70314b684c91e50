//! A `redis-server` of a test's own: a temp dir, a free port, no persistence
//! unless asked, killed on drop; and a Redis Cluster of three of them
//! ([`RedisCluster`]).

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

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_on(dir, extra, free_port)
    }

    fn start_on(mut dir: tempfile::TempDir, extra: &[&str], pick_port: fn() -> u16) -> Self {
        for _attempt in 0..5 {
            let port = pick_port();
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

/// A port that was free a moment ago, with port + 10000 free too (a
/// cluster node's bus port).
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of our own: three masters without replicas, each with
/// `appendfsync always` (nothing it acknowledged is lost when it is killed
/// and restarted), serving the slots it has while another is away
/// (`cluster-require-full-coverage no`).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// The `redis-server` arguments of every node.
    pub const NODE_ARGS: [&'static str; 12] = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--cluster-require-full-coverage",
        "no",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ];

    /// Starts three nodes and makes them a cluster (`redis-cli --cluster
    /// create`), then waits until every node says `cluster_state:ok`.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_on(tempfile::tempdir().unwrap(), &Self::NODE_ARGS, free_cluster_port))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(20));
        cluster
    }

    /// The `--redis-cluster` argument: every node's URL, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Waits until every node says `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for n in &self.nodes {
            while !n.cli(&["CLUSTER", "INFO"]).is_some_and(|s| s.contains("cluster_state:ok")) {
                assert!(Instant::now() < deadline, "the redis cluster did not come up on port {}", n.port);
                // Poll interval of a wait on a condition (bounded by `deadline`).
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The node that holds `key`'s slot.
    pub fn node_of(&self, key: &str) -> usize {
        self.node_of_slot(self.slot(key))
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of a node that is up).
    pub fn slot(&self, key: &str) -> u16 {
        let answer = self.nodes.iter().find_map(|n| n.cli(&["CLUSTER", "KEYSLOT", key])).expect("CLUSTER KEYSLOT");
        answer.trim().parse().unwrap()
    }

    /// The node that holds `slot`.
    pub fn node_of_slot(&self, slot: u16) -> usize {
        let slots = self.nodes.iter().find_map(|n| n.cli(&["CLUSTER", "SLOTS"])).expect("CLUSTER SLOTS");
        // redis-cli prints each range as: start, end, ip, port, id (one per line).
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        for w in lines.windows(4) {
            if let (Ok(start), Ok(end), Ok(port)) = (w[0].parse::<u16>(), w[1].parse::<u16>(), w[3].parse::<u16>())
                && w[2] == "127.0.0.1"
                && (start..=end).contains(&slot)
                && let Some(i) = self.nodes.iter().position(|n| n.port == port)
            {
                return i;
            }
        }
        panic!("no node holds slot {slot}:\n{slots}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

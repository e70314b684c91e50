//! Runs the conformance suite (`conformance/`, a black-box client written
//! from the spec) in-process against the real `parlor` binary: on the
//! embedded room log, on Redis Streams (and again with Redis stopped, for
//! `storage_unavailable`), and on a server with rate limits on (in Redis, and
//! in a Redis Cluster, whose whole suite runs in tests/several_processes.rs). The suite and
//! the server keep each other honest: any failed case fails the test.

mod support;

use std::sync::Arc;

use conformance::{Config, Outcome, Report};
use support::{ParlorProcess, RedisCluster, RedisServer};

/// Cases allowed to end "not run" against this server: the modes a test
/// does not switch on. Federation is on, so its cases must all run.
fn expected_not_run(name: &str, cfg: &Config) -> bool {
    (name.starts_with("rate_limits::") && !cfg.rate_limited)
        || (name == "operation::storage_down_503" && !cfg.storage_down)
        || (name == "operation::healthz_ok" && cfg.storage_down)
        || (name == "websocket::gap_when_trimmed" && cfg.retention.is_none())
        || (name == "websocket::heartbeat_timeout_closes_4003" && cfg.ws_ping_secs.is_none())
}

async fn run(url: &str, filter: Option<&str>, rate_limited: bool, storage_down: bool, peer: Option<&Peer>) -> Report {
    let cfg = Config {
        server: url.to_owned(),
        filter: filter.map(str::to_owned),
        rate_limited,
        storage_down,
        peer_listener: peer.map(|p| p.listener.clone()),
        ..Default::default()
    };
    run_with(cfg).await
}

/// The address the suite's fake federation peer listens on: the server
/// must name it with `--federation-peer` to reach it (it is on loopback).
struct Peer {
    listener: Arc<std::net::TcpListener>,
    arg: String,
}

fn peer() -> Peer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    Peer { listener: Arc::new(listener), arg: format!("{addr}=http://{addr}") }
}

async fn run_with(cfg: Config) -> Report {
    let report = conformance::run(&cfg, |r| println!("{}", r.line())).await.expect("the suite runs");
    println!("{}", report.summary());
    let failed: Vec<String> = report.failures().iter().map(|r| r.line()).collect();
    assert!(failed.is_empty(), "{} conformance case(s) failed:\n{}", failed.len(), failed.join("\n"));
    let unexpected: Vec<String> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::NotRun(_)) && !expected_not_run(r.name, &cfg))
        .map(|r| r.line())
        .collect();
    assert!(unexpected.is_empty(), "cases that should have run did not:\n{}", unexpected.join("\n"));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let server = ParlorProcess::spawn(dir.path(), &["--rate-limit", "off", "--federation-peer", &peer.arg]);
    let report = run(&server.url, None, false, false, Some(&peer)).await;
    assert!(report.passed() >= 100, "only {} cases passed", report.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let args = ["--rate-limit", "off", "--redis", &redis.url, "--federation-peer", &peer.arg];
    let mut server = ParlorProcess::spawn(dir.path(), &args);
    let report = run(&server.url, None, false, false, Some(&peer)).await;
    assert!(report.passed() >= 100, "only {} cases passed", report.passed());

    // With Redis gone, the room log is unreachable: 503 storage_unavailable.
    let mut redis = redis;
    redis.kill();
    let down = run(&server.url, Some("operation::"), false, true, None).await;
    assert_eq!(down.passed(), 1, "operation::storage_down_503 must run and pass");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = ParlorProcess::spawn(dir.path(), &["--rate-limit", "on"]);
    let report = run(&server.url, Some("rate_limits::"), true, false, None).await;
    assert_eq!(report.passed(), 5, "every rate-limit case must run and pass");
}

/// The rate-limit cases with the buckets in Redis (shared by processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_rate_limited_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let server = ParlorProcess::spawn(dir.path(), &["--rate-limit", "on", "--redis", &redis.url]);
    let report = run(&server.url, Some("rate_limits::"), true, false, None).await;
    assert_eq!(report.passed(), 5, "every rate-limit case must run and pass");
}

/// The cases tests/several_processes.rs cannot run on a Redis Cluster: the
/// rate limits (buckets in the cluster), then every master stopped (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_rate_limited_redis_cluster_then_storage_down() {
    let mut cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut server = ParlorProcess::spawn(dir.path(), &["--rate-limit", "on", "--redis-cluster", &cluster.urls()]);
    let report = run(&server.url, Some("rate_limits::"), true, false, None).await;
    assert_eq!(report.passed(), 5, "every rate-limit case must run and pass");
    for node in &mut cluster.nodes {
        node.kill();
    }
    let down = run(&server.url, Some("operation::"), false, true, None).await;
    assert_eq!(down.passed(), 1, "operation::storage_down_503 must run and pass");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_retention_and_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let server = ParlorProcess::spawn(dir.path(), &["--rate-limit", "off", "--retention", "20", "--ws-ping-secs", "1"]);
    for filter in ["websocket::gap_when_trimmed", "websocket::heartbeat_timeout"] {
        let cfg = Config {
            server: server.url.clone(),
            filter: Some(filter.into()),
            retention: Some(20),
            ws_ping_secs: Some(1),
            ..Default::default()
        };
        let report = run_with(cfg).await;
        assert_eq!(report.passed(), 1, "{filter} must run and pass");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_registration_modes() {
    for mode in ["token", "closed"] {
        let dir = tempfile::tempdir().unwrap();
        let server = ParlorProcess::spawn(dir.path(), &["--rate-limit", "off", "--registration", mode]);
        let report = run(&server.url, Some("registration::"), false, false, None).await;
        assert_eq!(report.passed(), 1, "the registration case must run and pass with --registration {mode}");
    }
}

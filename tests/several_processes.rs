//! Several `parlor serve` processes with one `--server-name` on one Redis,
//! or on one Redis Cluster of three masters, are one server: the whole
//! conformance suite runs green through a real nginx (`contrib/nginx.conf`,
//! round-robin over three upstreams), so consecutive requests of one client
//! land on different processes. The two runs take turns (one at a time:
//! six processes and a suite each would crowd a small machine).
//! `CONFORMANCE_FILTER=NAME` runs only the cases whose names contain NAME.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use conformance::{Config, Outcome};
use support::{ParlorProcess, RedisCluster, RedisServer, free_port, nginx};

/// One run at a time (see the module doc).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Cases that cannot run here, and why.
fn expected_not_run(name: &str) -> bool {
    name.starts_with("rate_limits::")
        || name == "operation::storage_down_503"
        || name == "websocket::gap_when_trimmed"
        || name == "websocket::heartbeat_timeout_closes_4003"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_nginx_on_three_processes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    conformance_through_nginx(&["--redis", &redis.url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_nginx_on_three_processes_and_a_redis_cluster() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start();
    conformance_through_nginx(&["--redis-cluster", &cluster.urls()]).await;
}

/// The suite through nginx over three processes started with `storage`
/// (`--redis URL` or `--redis-cluster URLS`).
async fn conformance_through_nginx(storage: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    // The suite's fake federation peer, named by every process.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let peer_arg = format!("{peer_addr}=http://{peer_addr}");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // One server name for all three: the address clients reach them by.
    let server_name = listen.to_string();
    let processes: Vec<ParlorProcess> = (0..3)
        .map(|i| {
            let mut args = vec![
                "--rate-limit",
                "off",
                "--server-name",
                &server_name,
                "--trusted-proxy",
                "127.0.0.1/32",
                "--federation-peer",
                &peer_arg,
            ];
            args.extend_from_slice(storage);
            ParlorProcess::spawn(&dir.path().join(format!("p{i}")), &args)
        })
        .collect();
    let upstreams: Vec<SocketAddr> = processes.iter().map(|p| p.addr).collect();
    let nginx = nginx::run(&dir.path().join("nginx"), &nginx::plain_site(&upstreams, listen), listen);

    let cfg = Config { server: format!("http://{listen}"), peer_listener: Some(Arc::new(peer)), ..Default::default() };
    let report = conformance::run(&cfg, |r| println!("{}", r.line())).await.expect("the suite runs");
    println!("{}", report.summary());
    let failed: Vec<String> = report.failures().iter().map(|r| r.line()).collect();
    assert!(
        failed.is_empty(),
        "{} conformance case(s) failed through nginx:\n{}\nnginx: {}",
        failed.len(),
        failed.join("\n"),
        nginx.error_log()
    );
    let unexpected: Vec<String> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::NotRun(_)) && !expected_not_run(r.name))
        .map(|r| r.line())
        .collect();
    assert!(unexpected.is_empty(), "cases that should have run did not:\n{}", unexpected.join("\n"));
    assert!(report.passed() >= 100, "only {} cases passed", report.passed());

    // Round-robin really spread the suite: each process served a share.
    let access = nginx.access_log();
    for p in &processes {
        let served = access.lines().filter(|l| l.ends_with(&format!("upstream={}", p.addr))).count();
        assert!(served >= 20, "process {} served only {served} requests:\n{access}", p.addr);
    }
    drop(processes);
}

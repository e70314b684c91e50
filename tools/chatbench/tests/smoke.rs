//! Smoke runs of every workload at tiny sizes against a real Parlor server
//! started in-process. They assert correctness only — every message
//! delivered exactly once, in order — never timing: CI machines are noisy.

use std::path::Path;

use serde_json::Value;
use testkit::TestServer;

/// A server (testkit's) with its data in `dir/data`, and `dir` for chatbench's users file.
struct Server {
    server: TestServer,
    dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(&dir.path().join("data"), |_| {}).await;
    Server { server, dir }
}

/// Run chatbench with `args` against `s`; every result line it printed.
async fn bench(s: &Server, args: &[&str]) -> Vec<Value> {
    bench_at(&[&s.server.url], s.dir.path(), args).await
}

/// Run chatbench with `args` against the processes `servers` of one server,
/// its users file in `dir`; every result line it printed.
async fn bench_at(servers: &[&str], dir: &Path, args: &[&str]) -> Vec<Value> {
    let users = dir.join("users.jsonl");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args(servers.iter().flat_map(|s| ["--server", s]))
        .args(["--json", "--users-file", path(&users)])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chatbench {args:?} exited {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status.code()
    );
    let runs: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(!runs.is_empty(), "no result; stderr: {stderr}");
    runs
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fields every run reports, with nothing lost, duplicated or reordered.
fn assert_clean(v: &Value) {
    for k in [
        "workload",
        "offered_rate",
        "expected",
        "delivered",
        "lost",
        "duplicates",
        "out_of_order",
        "deliveries_per_s",
        "p50_ms",
        "p99_ms",
        "max_ms",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["expected"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["delivered"], v["expected"], "{v}");
    for k in ["lost", "duplicates", "out_of_order"] {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mix_delivers_everything_once_with_typing_and_receipts() {
    let s = server().await;
    let v = bench(&s, &["live-mix", "--rooms", "2", "--members", "3", "--rate", "200", "--messages", "60"]).await;
    assert_clean(&v[0]);
    assert_eq!(v[0]["workload"], "live-mix");
    assert_eq!(v[0]["expected"], 180, "{}", v[0]);
    assert_eq!(v[0]["errcodes"], serde_json::json!({}), "typing and read frames are accepted: {}", v[0]);
    // Typing that a message ends within a quarter of a second may never
    // reach others (coalesced, spec §8); read marks always move here.
    assert!(v[0]["live_frames"]["receipt"].as_u64().unwrap_or(0) > 0, "receipt frames arrive: {}", v[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_open_and_closed_loop_deliver_everything_once() {
    let s = server().await;
    let open = bench(&s, &["fanout", "--rooms", "2", "--members", "3", "--rate", "200", "--messages", "60"]).await;
    assert_clean(&open[0]);
    assert_eq!(open[0]["expected"], 180, "60 messages × 3 members each: {}", open[0]);
    assert_eq!(open[0]["acked"], 60);
    // Closed loop, repeated: the second run reuses the users (from the users file and in process).
    let max = bench(
        &s,
        &[
            "--repeat",
            "2",
            "fanout",
            "--rooms",
            "2",
            "--members",
            "3",
            "--rate",
            "max",
            "--messages",
            "60",
            "--body-bytes",
            "300",
        ],
    )
    .await;
    assert_eq!(max.len(), 2);
    for r in &max {
        assert_clean(r);
        assert_eq!(r["mode"], "closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_register_and_log_in_everyone_even_during_chat() {
    let s = server().await;
    let quiet = bench(&s, &["accounts", "--users", "4", "--concurrency", "2"]).await;
    assert_clean(&quiet[0]);
    assert_eq!(quiet[0]["expected"], 4);
    assert_eq!(quiet[0]["register_failed"], 0);
    let storm = bench(
        &s,
        &[
            "accounts",
            "--users",
            "3",
            "--during-fanout",
            "--rooms",
            "1",
            "--members",
            "2",
            "--rate",
            "100",
            "--quiet-secs",
            "0.3",
        ],
    )
    .await;
    assert_clean(&storm[0]);
    assert_eq!(storm[0]["login_failed"], 0);
    assert_eq!(storm[0]["quiet"]["ok"], true, "{}", storm[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_walk_finds_every_message_once_in_order() {
    let s = server().await;
    let h = bench(&s, &["history", "--messages", "35", "--page", "10", "--joiners", "2", "--fetches", "5"]).await;
    assert_clean(&h[0]);
    assert_eq!(h[0]["expected"], 70, "35 messages seen by each of 2 joiners: {}", h[0]);
    assert_eq!(h[0]["seq_gaps"], 0);
    // --room walks the same room again without filling it (reads after a restart).
    let room = h[0]["room_id"].as_str().unwrap();
    let again = bench(&s, &["history", "--room", room, "--messages", "35", "--page", "10", "--fetches", "0"]).await;
    assert_clean(&again[0]);
    assert_eq!(again[0]["expected"], 175, "35 messages seen by each of 5 joiners: {}", again[0]);
    assert_eq!(again[0]["fill_s"], serde_json::Value::Null, "nothing sent: {}", again[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_all_receive_the_probe() {
    let s = server().await;
    let i = bench(&s, &["idle", "--connections", "24", "--rooms", "3", "--users", "2", "--settle-secs", "0.2"]).await;
    assert_clean(&i[0]);
    assert_eq!(i[0]["connections"], 24);
    assert_eq!(i[0]["expected"], 24, "one probe per connection: {}", i[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_mass_drops_loses_and_repeats_nothing() {
    let s = server().await;
    let r =
        bench(&s, &["resume", "--rooms", "2", "--members", "3", "--rate", "300", "--messages", "300", "--drops", "2"])
            .await;
    assert_clean(&r[0]);
    assert_eq!(r[0]["reconnects"], 12, "6 members × 2 drops: {}", r[0]);
    assert_eq!(r[0]["gap_frames"], 0);
    assert_eq!(r[0]["unacked"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_storm_answers_every_storm_login_and_the_real_user_gets_in() {
    let s = server().await;
    let args = ["login-storm", "--logins", "24", "--addresses", "4", "--username-bytes", "200", "--concurrency", "8"];
    let runs = bench(&s, &[&args[..], &["--probe-delay-ms", "0", "--settle-secs", "0"]].concat()).await;
    let v = &runs[0];
    assert_eq!(v["workload"], "login-storm");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["delivered"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["real_used_device_proof"], true, "{v}");
    // Over-long usernames are refused as such, every one of them.
    assert_eq!(v["storm_answers"], serde_json::json!({"400 invalid_username": 24}), "{v}");
}

/// `ceiling` needs no server: its writer thread's frames go through the
/// same reader and checks as `fanout`'s, every event once and in order,
/// with and without batching.
#[test]
fn ceiling_delivers_every_frame_once_in_order() {
    for batch in ["1", "7"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatbench"))
            .args(["--json", "ceiling", "--rooms", "3", "--members", "4", "--messages", "300", "--batch", batch])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ceiling --batch {batch}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!((v["expected"].as_u64(), v["delivered"].as_u64()), (Some(1200), Some(1200)), "{v}");
        assert_eq!(
            (v["lost"].as_u64(), v["out_of_order"].as_u64(), v["malformed"].as_u64()),
            (Some(0), Some(0), Some(0))
        );
        assert!(v["deliveries_per_s"].as_f64().unwrap() > 0.0, "{v}");
    }
}

/// `presence`: every open and close of the extra member reaches every
/// subscriber once, and the run says what a change cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_reach_every_member_once() {
    let s = server().await;
    let runs = bench(&s, &["presence", "--members", "6", "--cycles", "3"]).await;
    let v = &runs[0];
    assert_eq!(v["workload"], "presence");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!((v["expected"].as_u64(), v["delivered"].as_u64()), (Some(36), Some(36)), "{v}");
    assert!(v["server_cpu_ms_per_change"].as_f64().is_some(), "{v}");
}

/// `--server` twice: two processes of one server on one Redis, each room's
/// members on both, so most deliveries cross from one process to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_two_processes_of_one_server() {
    let redis = testkit::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let first = TestServer::start_in(&dir.path().join("a"), |c| c.redis = Some(redis.url.clone())).await;
    // The second process: its own data dir and port, the first one's name.
    let mut cfg = TestServer::config(first.addr.port(), &dir.path().join("b"));
    cfg.redis = Some(redis.url.clone());
    let second = TestServer::start_with(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), cfg).await;
    let servers = [first.url.as_str(), second.url.as_str()];
    let v = bench_at(
        &servers,
        dir.path(),
        &["fanout", "--rooms", "2", "--members", "4", "--rate", "200", "--messages", "80"],
    )
    .await;
    assert_clean(&v[0]);
    assert_eq!(v[0]["expected"], 320, "{}", v[0]);
    assert_eq!(v[0]["server"], format!("{},{}", first.url, second.url), "{}", v[0]);
}

//! The data directory holds messages and password hashes: only the server's
//! own user may read it. A new one is created 0700 with files 0600; files
//! left looser by an older version are tightened; an existing directory
//! open to others is kept as the operator made it, with a warning at start.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Api, LoggedProcess, ParlorProcess};

/// Every path under `dir` (itself included) with its permission bits.
fn modes(dir: &Path) -> Vec<(String, bool, u32)> {
    let mut out = Vec::new();
    let meta = std::fs::symlink_metadata(dir).unwrap();
    out.push((dir.display().to_string(), meta.is_dir(), meta.permissions().mode() & 0o777));
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            out.extend(modes(&entry.unwrap().path()));
        }
    }
    out
}

fn assert_private(dir: &Path) {
    let all = modes(dir);
    assert!(all.len() > 3, "{all:?}");
    for (path, is_dir, mode) in all {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{path} is {mode:o}, not {want:o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_dir_and_everything_in_it_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("parlor-data");
    let mut server = ParlorProcess::spawn(&dir, &["--rate-limit", "off"]);
    let api = Api::new(&server.url);
    let (_, ann) = api.user("ann").await;
    api.join(&ann, "lobby").await;
    assert_eq!(api.send(&ann, "lobby", "t1", "a message").await.0, 200);
    assert!(server.terminate().success());
    assert_private(&dir);
}

#[test]
fn files_left_open_by_an_older_version_are_tightened() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    drop(parlor::storage::Db::open(&dir).unwrap());
    for (path, is_dir, _) in modes(&dir.join("sled")) {
        let mode = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(parlor::storage::Db::open(&dir).unwrap());
    assert_private(&dir);
}

#[test]
fn an_existing_data_dir_open_to_others_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = LoggedProcess::spawn(dir.path(), &[], &[]);
    let needle = "open to other users";
    assert!(server.wait_for_log(needle, 1, Duration::from_secs(30)), "a warning about the data directory's mode");
    let log = server.log_text();
    let line = log.lines().find(|l| l.contains(needle)).unwrap();
    assert!(line.contains("755"), "{line}");
    assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o755, "left as it was");
}

/// Runs `parlor serve` on `dir` with `args`, expecting it to refuse to
/// start: returns its stderr. Fails if it is still running after 60 s.
fn refused(dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("parlor serve {args:?} did not refuse to start");
        }
        // Poll interval of a wait on a condition (bounded by `deadline`).
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap();
    assert!(!status.success(), "refused with a failure status: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_belongs_to_one_server_name() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let mut a = ParlorProcess::spawn(&dir, &["--server-name", "a.test", "--rate-limit", "off"]);
    let api = Api::new(&a.url);
    let (ann, token) = api.user("ann").await;
    assert_eq!(ann, "@ann:a.test");
    api.join(&token, "lobby").await;
    assert_eq!(api.send(&token, "lobby", "t1", "kept").await.0, 200);
    assert!(a.terminate().success());
    let recorded = std::fs::read_to_string(dir.join("identity.json")).unwrap();
    assert!(recorded.contains("\"a.test\"") && recorded.contains("\"embedded\""), "{recorded}");

    let err = refused(&dir, &["--server-name", "b.test"]);
    assert!(err.contains("belongs to server \"a.test\", not \"b.test\""), "{err}");
    assert!(err.contains("--server-name a.test"), "says what to do: {err}");

    // Without --server-name, the recorded name is kept, and so is everything stored.
    let mut again = ParlorProcess::spawn(&dir, &["--rate-limit", "off"]);
    let api = Api::new(&again.url);
    let (ann, token) = api.login("ann").await;
    assert_eq!(ann, "@ann:a.test");
    let (s, page) = api.messages(&token, "lobby", "").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().iter().filter(|e| e["body"] == "kept").count(), 1, "{page}");
    assert!(again.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_keeps_its_room_log_backend() {
    let redis = support::RedisServer::start();
    let parent = tempfile::tempdir().unwrap();
    let embedded = parent.path().join("embedded");
    let mut a = ParlorProcess::spawn(&embedded, &["--server-name", "a.test"]);
    assert!(a.terminate().success());
    let err = refused(&embedded, &["--server-name", "a.test", "--redis", &redis.url]);
    assert!(err.contains("was used with the embedded room log") && err.contains("without --redis"), "{err}");
    assert_eq!(
        redis.cli(&["EXISTS", "parlor:identity"]).map(|s| s.trim().to_owned()).as_deref(),
        Some("0"),
        "a refused start records nothing"
    );

    let with_redis = parent.path().join("redis");
    let mut b = ParlorProcess::spawn(&with_redis, &["--server-name", "a.test", "--redis", &redis.url]);
    assert!(b.terminate().success());
    let err = refused(&with_redis, &["--server-name", "a.test"]);
    assert!(err.contains("was used with the Redis room log") && err.contains("with the same --redis"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_belongs_to_one_server_name() {
    let redis = support::RedisServer::start();
    let parent = tempfile::tempdir().unwrap();
    let mut a = ParlorProcess::spawn(&parent.path().join("a"), &["--server-name", "a.test", "--redis", &redis.url]);
    assert_eq!(redis.cli(&["GET", "parlor:identity"]).map(|s| s.trim().to_owned()).as_deref(), Some("a.test"));

    let fresh = parent.path().join("b");
    let err = refused(&fresh, &["--server-name", "b.test", "--redis", &redis.url]);
    assert!(err.contains("this Redis holds the rooms of server \"a.test\", not \"b.test\""), "{err}");
    assert!(!fresh.join("identity.json").exists(), "a refused start records nothing");

    // Another process of the same server on the same Redis is welcome.
    let mut a2 = ParlorProcess::spawn(&fresh, &["--server-name", "a.test", "--redis", &redis.url]);
    assert!(a2.terminate().success());
    assert!(a.terminate().success());
}

/// `--cache-mib`, the embedded store's memory budget, is checked before
/// anything starts. A budget far smaller than the data still keeps and
/// serves all of it, across a restart (sled reads evicted leaves back from
/// disk). What the budget does to memory is a benchmark figure
/// (BENCHMARKS.md, finding 8), never a test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_cache_budget_is_checked_and_small_ones_keep_everything() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    for bad in ["0", "1048577", "lots"] {
        let err = refused(&dir, &["--cache-mib", bad]);
        assert!(err.contains("is not a cache size in MiB from 1 to 1048576"), "{bad}: {err}");
    }
    assert!(!dir.exists(), "a refused start creates nothing");

    // 160 messages of 12 KiB: about 2 MiB stored, twice the budget.
    let body = "m".repeat(12 << 10);
    let mut a = ParlorProcess::spawn(&dir, &["--rate-limit", "off", "--cache-mib", "1"]);
    let api = Api::new(&a.url);
    let (_, token) = api.user("ann").await;
    api.join(&token, "lobby").await;
    for i in 0..160 {
        let (s, v) = api.send(&token, "lobby", &format!("t{i}"), &format!("{i} {body}")).await;
        assert_eq!(s, 200, "{v}");
    }
    assert!(a.terminate().success());

    let mut b = ParlorProcess::spawn(&dir, &["--rate-limit", "off", "--cache-mib", "1"]);
    let api = Api::new(&b.url);
    let (_, token) = api.login("ann").await;
    let mut seen = Vec::new();
    let mut query = "limit=50".to_owned();
    loop {
        let (s, page) = api.messages(&token, "lobby", &query).await;
        assert_eq!(s, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        for e in events.iter().rev() {
            if let Some((n, rest)) = e["body"].as_str().and_then(|b| b.split_once(' ')) {
                assert_eq!(rest.len(), 12 << 10);
                seen.push(n.parse::<u32>().unwrap());
            }
        }
        let Some(first) = events.first() else { break };
        query = format!("limit=50&before={}", first["seq"]);
    }
    seen.reverse();
    assert_eq!(seen, (0..160).collect::<Vec<_>>(), "every message once, in order");
    assert!(b.terminate().success());
}

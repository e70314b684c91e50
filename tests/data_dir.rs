//! The data directory holds messages and password hashes: only the server's
//! own user may read it. A new one is created 0700 with files 0600; files
//! left looser by an older version are tightened; an existing directory
//! open to others is kept as the operator made it, with a warning at start.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Api, ParlorProcess};

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("open to other users") => break Some(line),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = found.expect("a warning about the data directory's mode");
    assert!(line.contains("755"), "{line}");
    assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o755, "left as it was");
}

//! `parlor backup` and `parlor restore` against the real binary: a backup
//! of a running server taken while several senders write, restored into a
//! fresh data dir that a fresh server then serves (a gap-free prefix of the
//! history with every send acknowledged before the backup began, the same
//! accounts and passwords, the same federation signing key); the offline
//! path; and restore's refusals (a tampered backup, a non-empty data dir
//! without --force, a data dir a server runs on) writing nothing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{Api, ParlorProcess, run_parlor};

const NAME: &str = "backup.test";
const SENDERS: usize = 4;

fn backup(dir: &Path, out: &Path) -> Value {
    let (ok, stdout, stderr) =
        run_parlor(&["backup", "--data-dir", dir.to_str().unwrap(), out.to_str().unwrap(), "--json"]);
    assert!(ok, "parlor backup: {stdout} {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn restore(from: &Path, dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["restore", from.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_parlor(&args)
}

fn spawn(dir: &Path) -> ParlorProcess {
    ParlorProcess::spawn(dir, &["--rate-limit", "off", "--server-name", NAME])
}

/// The federation signing key the server publishes.
async fn server_key(api: &Api) -> Value {
    let (s, v) = api.raw("GET", "/_parlor/key/v1/server", None, Vec::new()).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// The whole history of a room: seq → body, read forward in pages.
async fn history(api: &Api, token: &str, room: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let (s, page) = api.messages(token, room, &format!("after={after}&limit=1000")).await;
        assert_eq!(s, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return out;
        }
        for e in events {
            let seq = e["seq"].as_u64().unwrap();
            assert!(seq > after, "pages go forward");
            after = seq;
            out.insert(seq, e["body"].as_str().unwrap_or_default().to_owned());
        }
    }
}

/// The room log's epoch.
async fn epoch(api: &Api, token: &str, room: &str) -> String {
    let (s, page) = api.messages(token, room, "limit=1").await;
    assert_eq!(s, 200, "{page}");
    page["epoch"].as_str().unwrap().to_owned()
}

/// Messages (seq → body) of a room, as the senders saw them acknowledged.
type Acked = Arc<Mutex<BTreeMap<u64, String>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_write_load_restores_into_a_server_with_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out, restored) = (tmp.path().join("data"), tmp.path().join("backup"), tmp.path().join("restored"));
    let mut server = spawn(&dir);
    let api = Api::new(&server.url);
    let key = server_key(&api).await;
    let mut tokens = Vec::new();
    let mut room = String::new();
    for n in 0..SENDERS {
        let (_, token) = api.user(&format!("sender{n}")).await;
        room = api.join(&token, "load").await["room_id"].as_str().unwrap().to_owned();
        tokens.push(token);
    }
    let (_, reader) = api.user("reader").await;
    api.join(&reader, "load").await;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (n, token) in tokens.iter().cloned().enumerate() {
        let (api, room, acked, stop) = (api.clone(), room.clone(), acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("sender {n} message {i}");
                let (s, v) = api.send(&token, &room, &format!("s{n}m{i}"), &body).await;
                assert_eq!(s, 200, "{v}");
                acked.lock().unwrap().insert(v["seq"].as_u64().unwrap(), body);
                i += 1;
            }
        }));
    }
    // Load first, then the backup while it goes on.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = acked.lock().unwrap().clone();
    let report = {
        let (dir, out) = (dir.clone(), out.clone());
        tokio::task::spawn_blocking(move || backup(&dir, &out)).await.unwrap()
    };
    let during_and_after = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < during_and_after + 100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let old_epoch = epoch(&api, &reader, &room).await;
    assert!(server.terminate().success());
    assert_eq!(report["answer"], "backup", "{report}");
    assert_eq!(report["backup"]["server_name"], NAME);
    assert_eq!(report["backup"]["room_log"], "embedded");
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let paths: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"identity.json") && paths.contains(&"server.ed25519.pk8"), "{manifest}");
    assert!(manifest["files"].as_array().unwrap().iter().all(|f| f["sha256"].as_str().unwrap().len() == 64));

    let (ok, stdout, stderr) = restore(&out, &restored, &[]);
    assert!(ok, "restore: {stdout} {stderr}");
    // No --server-name: the restored data dir names its server.
    let server = ParlorProcess::spawn(&restored, &["--rate-limit", "off"]);
    let api = Api::new(&server.url);
    assert_eq!(server_key(&api).await, key, "the same signing key");
    let (user_id, reader) = api.login("reader").await;
    assert_eq!(user_id, format!("@reader:{NAME}"));
    for n in 0..SENDERS {
        api.login(&format!("sender{n}")).await;
    }
    let got = history(&api, &reader, &room).await;
    // Clients saw seqs past the backup: the restored log is a new epoch of
    // the same events, so that they re-read instead of skipping new ones.
    assert_ne!(epoch(&api, &reader, &room).await, old_epoch);
    let n = got.len() as u64;
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "seqs 1..n, no gap");
    let all_acked = acked.lock().unwrap().clone();
    for (seq, body) in &got {
        if let Some(sent) = all_acked.get(seq) {
            assert_eq!(body, sent, "seq {seq} holds what was acknowledged for it");
        }
    }
    for (seq, body) in &before {
        assert_eq!(got.get(seq), Some(body), "acknowledged before the backup began: seq {seq}");
    }
    let last_acked = *all_acked.keys().last().unwrap();
    assert!(last_acked > n, "a copy of one instant: sends acknowledged after it ({last_acked}) are not in it ({n})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_checks_every_file_and_refuses_what_it_must_writing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("data"), tmp.path().join("backup"));
    let mut server = spawn(&dir);
    let api = Api::new(&server.url);
    let (_, ann) = api.user("ann").await;
    let room = api.join(&ann, "quiet").await["room_id"].as_str().unwrap().to_owned();
    for i in 0..20 {
        assert_eq!(api.send(&ann, &room, &format!("t{i}"), &format!("message {i}")).await.0, 200);
    }
    let key = server_key(&api).await;
    let old_epoch = epoch(&api, &ann, &room).await;
    assert!(server.terminate().success());

    // Offline: no server runs, so `parlor backup` opens the data dir itself.
    assert_eq!(backup(&dir, &out)["backup"]["server_name"], NAME);
    let (ok, _, stderr) = run_parlor(&["backup", "--data-dir", dir.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("not empty"), "a backup never writes into another: {stderr}");

    // A flipped byte in any file: refused, nothing written.
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let tree = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .find(|p| p.starts_with("sled/") && std::fs::metadata(out.join(p)).unwrap().len() > 100)
        .unwrap();
    let tampered = tmp.path().join("tampered");
    copy_dir(&out, &tampered);
    let mut bytes = std::fs::read(tampered.join(&tree)).unwrap();
    bytes[50] ^= 0x01;
    std::fs::write(tampered.join(&tree), bytes).unwrap();
    let fresh = tmp.path().join("fresh");
    let (ok, _, stderr) = restore(&tampered, &fresh, &[]);
    assert!(!ok, "a tampered backup is refused");
    assert!(stderr.contains("damaged") && stderr.contains(&tree) && stderr.contains("SHA-256"), "{stderr}");
    assert!(!fresh.exists(), "nothing was written");

    // A data dir with something in it: refused without --force, untouched.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let (ok, _, stderr) = restore(&out, &busy, &[]);
    assert!(!ok && stderr.contains("not empty") && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1, "nothing was written");
    // The server did not run after this backup: its epochs may be kept.
    let (ok, stdout, stderr) = restore(&out, &busy, &["--force", "--keep-epochs"]);
    assert!(ok, "{stdout} {stderr}");
    assert_eq!(std::fs::read_to_string(busy.join("notes.txt")).unwrap(), "mine", "only Parlor's entries are replaced");

    // A data dir a server runs on: refused, even with --force.
    let server = ParlorProcess::spawn(&busy, &["--rate-limit", "off"]);
    let (ok, _, stderr) = restore(&out, &busy, &["--force"]);
    assert!(!ok && stderr.contains("stop it"), "{stderr}");
    let api = Api::new(&server.url);
    let (_, ann) = api.login("ann").await;
    let got = history(&api, &ann, &room).await;
    let bodies: Vec<&str> = got.values().map(String::as_str).filter(|b| b.starts_with("message")).collect();
    assert_eq!(bodies, (0..20).map(|i| format!("message {i}")).collect::<Vec<_>>());
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), (1..=got.len() as u64).collect::<Vec<_>>());
    assert_eq!(server_key(&api).await, key);
    assert_eq!(epoch(&api, &ann, &room).await, old_epoch, "--keep-epochs");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Redis mode: the data dir (identity, key, high-water marks) is backed up
/// by the running server; Redis keeps the room logs. Restored with Redis
/// intact and `--keep-epochs`, rooms go on in their epochs; restored by
/// default (as after losing Redis and restoring it too), every room starts
/// a new epoch and the old one stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_servers_data_dir_is_backed_up_and_its_rooms_start_new_epochs_unless_kept() {
    let redis = support::RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("data"), tmp.path().join("backup"));
    let args = ["--rate-limit", "off", "--server-name", NAME, "--redis", redis.url.as_str()];
    let mut server = ParlorProcess::spawn(&dir, &args);
    let api = Api::new(&server.url);
    let (_, ann) = api.user("ann").await;
    let room = api.join(&ann, "red").await["room_id"].as_str().unwrap().to_owned();
    for i in 0..10 {
        assert_eq!(api.send(&ann, &room, &format!("t{i}"), &format!("message {i}")).await.0, 200);
    }
    let key = server_key(&api).await;
    let old_epoch = epoch(&api, &ann, &room).await;
    let report = backup(&dir, &out);
    assert_eq!(report["backup"]["room_log"], "redis", "{report}");
    assert!(server.terminate().success());

    let kept = tmp.path().join("kept");
    let (ok, stdout, stderr) = restore(&out, &kept, &["--keep-epochs"]);
    assert!(ok, "{stdout} {stderr}");
    let mut server = ParlorProcess::spawn(&kept, &["--rate-limit", "off", "--redis", redis.url.as_str()]);
    let api = Api::new(&server.url);
    assert_eq!(server_key(&api).await, key);
    assert_eq!(epoch(&api, &ann, &room).await, old_epoch, "Redis was not restored: the epoch goes on");
    assert_eq!(history(&api, &ann, &room).await.len(), 11);
    assert!(server.terminate().success());

    let renewed = tmp.path().join("renewed");
    let (ok, stdout, stderr) = restore(&out, &renewed, &[]);
    assert!(ok, "{stdout} {stderr}");
    let server = ParlorProcess::spawn(&renewed, &["--rate-limit", "off", "--redis", redis.url.as_str()]);
    let api = Api::new(&server.url);
    let (_, ann) = api.login("ann").await;
    assert_ne!(epoch(&api, &ann, &room).await, old_epoch, "a new epoch");
    let (s, page) = api.messages(&ann, &room, &format!("epoch={old_epoch}&after=0&limit=100")).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 11, "the old epoch is archived, still readable");
}

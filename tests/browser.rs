//! The demo page in real headless Chromium, against the real `parlor` binary
//! (two servers: a default one, and one with `--retention 5` for `gap`):
//! runs `tests/browser/demo.test.mjs` (playwright-core driving Debian's
//! `/usr/bin/chromium`; no browser is ever downloaded) and fails with its
//! output when it fails. `PARLOR_SCREENSHOTS=1` makes it refresh the
//! screenshots in `docs/`.
//!
//! Needs `node`, `npm` and `chromium` (`.ci/run` installs them); the npm
//! package is installed here with `npm ci` when `node_modules` is missing or
//! stale.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The node script has its own 180 s watchdog; this one catches a node that hangs before it starts.
const DEADLINE: Duration = Duration::from_secs(240);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn json_file(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// `npm ci` unless node_modules already holds the playwright-core version the lock file names.
fn install_npm_packages(dir: &Path) {
    let lock = json_file(&dir.join("package-lock.json")).expect("tests/browser/package-lock.json is readable JSON");
    let wanted = lock["packages"]["node_modules/playwright-core"]["version"].as_str().map(str::to_owned);
    let installed = json_file(&dir.join("node_modules/playwright-core/package.json"))
        .and_then(|p| p["version"].as_str().map(str::to_owned));
    if wanted.is_some() && wanted == installed {
        return;
    }
    let status =
        Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir).status().unwrap_or_else(|e| {
            panic!("cannot run npm ({e}): run `apt-get install -y nodejs npm` (or `.ci/run`, which does it)")
        });
    assert!(status.success(), "`npm ci` in tests/browser failed");
}

fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[test]
fn demo_page_works_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "this test needs Chromium at {chromium}: run `apt-get install -y chromium` (or `.ci/run`, which does it)"
    );
    let dir = browser_dir();
    install_npm_packages(&dir);

    let data = tempfile::tempdir().unwrap();
    let server = support::ParlorProcess::spawn(data.path(), &["--rate-limit", "off"]);
    // A second server that keeps only 5 events per room, so the page meets a real `gap`.
    let data_retention = tempfile::tempdir().unwrap();
    let retention = support::ParlorProcess::spawn(data_retention.path(), &["--rate-limit", "off", "--retention", "5"]);

    // A third that asks for a registration token, issued with `parlor admin`.
    let data_token = tempfile::tempdir().unwrap();
    let token_server =
        support::ParlorProcess::spawn(data_token.path(), &["--rate-limit", "off", "--registration", "token"]);
    let issued = Command::new(testkit::process::parlor_bin())
        .args(["admin", "--data-dir"])
        .arg(data_token.path())
        .args(["registration-tokens", "create", "--uses", "1"])
        .output()
        .unwrap();
    assert!(issued.status.success(), "parlor admin: {}", String::from_utf8_lossy(&issued.stderr));
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();

    let mut node = Command::new("node")
        .arg(dir.join("demo.test.mjs"))
        .arg(&server.url)
        .arg(&retention.url)
        .arg(&token_server.url)
        .arg(&token)
        .env("CHROMIUM_PATH", &chromium)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run `apt-get install -y nodejs` (or `.ci/run`)"));
    let stdout = drain(node.stdout.take().unwrap());
    let stderr = drain(node.stderr.take().unwrap());

    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    println!("{stdout}");
    if !stderr.is_empty() {
        println!("--- stderr ---\n{stderr}");
    }
    match status {
        None => panic!("the browser test did not finish within {DEADLINE:?}"),
        Some(status) => assert!(status.success(), "the browser test failed ({status}); its output is above"),
    }
    assert!(stdout.contains("ok: "), "the browser test exited 0 without reporting its steps");
}

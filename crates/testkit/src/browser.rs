//! Browser tests: a node script under `tests/browser/` (playwright-core
//! driving Debian's Chromium; see its `harness.mjs`) run against servers a
//! test started, with the script's output shown when it fails.
//!
//! Needs `node`, `npm` and `chromium` (`scripts/setup` installs them); the
//! npm packages are installed with `npm ci` when `node_modules` is missing or
//! stale.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `tests/browser` of the workspace.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

/// Chromium's path (`CHROMIUM_PATH`, else Debian's), checked to exist.
fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "this test needs Chromium at {chromium}: run `apt-get install -y chromium` (or scripts/setup, which does it)"
    );
    chromium
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
            panic!("cannot run npm ({e}): run `apt-get install -y nodejs npm` (or scripts/setup, which does it)")
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

/// Runs `node tests/browser/SCRIPT ARGS…` and returns its stdout; panics,
/// with everything the script printed, when it fails, prints no `ok: ` line,
/// or runs past `deadline` (scripts have watchdogs of their own; this one
/// catches a node that hangs before it starts). Blocks: call it from
/// `spawn_blocking` in an async test.
pub fn run_script(script: &str, args: &[&str], deadline: Duration) -> String {
    let chromium = chromium();
    let dir = browser_dir();
    install_npm_packages(&dir);
    let mut node = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .env("CHROMIUM_PATH", &chromium)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run `apt-get install -y nodejs` (or scripts/setup)"));
    let stdout = drain(node.stdout.take().unwrap());
    let stderr = drain(node.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > deadline {
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
        None => panic!("{script} did not finish within {deadline:?}"),
        Some(status) => assert!(status.success(), "{script} failed ({status}); its output is above"),
    }
    assert!(stdout.contains("ok: "), "{script} exited 0 without reporting its steps");
    stdout
}

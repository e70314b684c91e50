//! The demo page over TLS in real headless Chromium: the `parlor` binary
//! with `--tls-cert`/`--tls-key` (a certificate for `localhost` from a CA made
//! at test time), and `tests/browser/tls.test.mjs`, which loads the page over
//! `https://`, checks that it opens its WebSocket as `wss://` on its own
//! origin, and sends a message that comes back over it. The server's log
//! must show that WebSocket, and the certificate chain is checked here with
//! a rustls client that trusts only the test CA.
//!
//! Needs `node`, `chromium` and the npm packages of `tests/browser`
//! (`scripts/setup` installs them all).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::LoggedProcess;
use support::tls::{Pki, connect, peer_leaf, wait_healthy};

/// The node script has its own 120 s watchdog; this one catches a node that hangs before it starts.
const DEADLINE: Duration = Duration::from_secs(180);

fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_over_https_uses_wss() {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(Path::new(&chromium).exists(), "this test needs Chromium at {chromium}: run scripts/setup");
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core/package.json").exists(),
        "this test needs tests/browser/node_modules: run scripts/setup (or `cargo test --test browser`, which installs it)"
    );

    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
    let (cert, key) = leaf.write(tmp.path());
    let proc = LoggedProcess::spawn(
        &tmp.path().join("data"),
        &["--rate-limit", "off", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
        &[],
    );
    assert!(proc.url.starts_with("https://"), "{}", proc.url);
    let client = pki.client();
    wait_healthy(proc.addr, &client).await;
    assert_eq!(peer_leaf(&connect(proc.addr, &client).await), leaf.der, "the chain verifies against the test CA");

    let base = format!("https://localhost:{}", proc.addr.port());
    let mut node = Command::new("node")
        .arg(dir.join("tls.test.mjs"))
        .arg(&base)
        .env("CHROMIUM_PATH", &chromium)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/setup"));
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    assert!(stdout.contains("ok: "), "the browser test exited 0 without reporting");
    assert!(proc.wait_for_log("websocket opened", 1, Duration::from_secs(30)), "{}", proc.log_text());
}

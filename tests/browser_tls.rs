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

use std::time::Duration;

use support::tls::{Pki, connect, peer_leaf, wait_healthy};
use support::{LoggedProcess, browser};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_over_https_uses_wss() {
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
    let script = tokio::task::spawn_blocking(move || {
        browser::run_script("tls.test.mjs", &[&base], Duration::from_secs(180));
    });
    script.await.unwrap();
    assert!(proc.wait_for_log("websocket opened", 1, Duration::from_secs(30)), "{}", proc.log_text());
}

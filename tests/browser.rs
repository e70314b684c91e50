//! The demo page in real headless Chromium, against the real `parlor` binary
//! (two servers: a default one, and one with `--retention 5` for `gap`):
//! runs `tests/browser/demo.test.mjs` (playwright-core driving Debian's
//! `/usr/bin/chromium`; no browser is ever downloaded) and fails with its
//! output when it fails. `PARLOR_SCREENSHOTS=1` makes it refresh the
//! screenshots in `docs/`.
//!
//! Needs `node`, `npm` and `chromium` (`scripts/setup` installs them;
//! testkit's `browser` runs the script).

mod support;

use std::time::Duration;

use support::browser;

#[test]
fn demo_page_works_in_headless_chromium() {
    let data = tempfile::tempdir().unwrap();
    let server = support::ParlorProcess::spawn(data.path(), &["--rate-limit", "off"]);
    // A second server that keeps only 5 events per room, so the page meets a real `gap`.
    let data_retention = tempfile::tempdir().unwrap();
    let retention = support::ParlorProcess::spawn(data_retention.path(), &["--rate-limit", "off", "--retention", "5"]);

    // A third that asks for a registration token, issued with `parlor admin`.
    let data_token = tempfile::tempdir().unwrap();
    let token_server =
        support::ParlorProcess::spawn(data_token.path(), &["--rate-limit", "off", "--registration", "token"]);
    let issued = std::process::Command::new(testkit::process::parlor_bin())
        .args(["admin", "--data-dir"])
        .arg(data_token.path())
        .args(["registration-tokens", "create", "--uses", "1"])
        .output()
        .unwrap();
    assert!(issued.status.success(), "parlor admin: {}", String::from_utf8_lossy(&issued.stderr));
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    browser::run_script(
        "demo.test.mjs",
        &[&server.url, &retention.url, &token_server.url, &token],
        Duration::from_secs(300),
    );
}

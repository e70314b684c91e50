//! The README's federation quick start, run as written: its shell block,
//! with the built binaries on `PATH`, free ports for 8008 and 8009 and a
//! temporary directory as the clone's top. It keeps the README honest: a
//! flag renamed, a chatctl command changed or a federation regression makes
//! the block (and this test) fail.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The shell block that follows `marker` in the README.
fn block_after(readme: &str, marker: &str) -> String {
    let from = readme.find(marker).expect("README lost the quick start's marker");
    let rest = &readme[from..];
    let open = rest.find("```sh\n").expect("no shell block after the marker") + "```sh\n".len();
    let len = rest[open..].find("```").expect("unclosed shell block");
    rest[open..open + len].to_owned()
}

#[test]
fn the_readmes_federation_quick_start_works_on_one_machine_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let block = block_after(&readme, "Two servers on one machine, as written");
    let (a, b) = (testkit::redis::free_port(), testkit::redis::free_port());
    let script: String = block
        .lines()
        // The binaries are built already: the test runs these very ones.
        .filter(|line| !line.starts_with("cargo build"))
        .map(|line| line.replace("8008", &a.to_string()).replace("8009", &b.to_string()) + "\n")
        .collect();
    assert!(script.contains("parlor serve") && script.contains("chatctl"), "{script}");

    let chatctl = Path::new(env!("CARGO_BIN_EXE_chatctl"));
    let parlor = testkit::process::parlor_bin();
    let path = format!(
        "{}:{}:{}",
        chatctl.parent().unwrap().display(),
        parlor.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let top = tempfile::tempdir().unwrap();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &format!("{script}\nwait")])
        .current_dir(top.path())
        .env("PATH", path)
        .env_remove("CHATCTL_SERVER")
        .env_remove("CHATCTL_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The block ends by stopping both servers; a hang means it broke.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            for port in [a, b] {
                Command::new("pkill").args(["-f", &format!("parlor serve --listen 127.0.0.1:{port} ")]).status().ok();
            }
            panic!("the quick start did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("<@ann:a.test> hello from a.test"),
        "b.test's history lacks ann's message\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("joined #lobby:b.test"), "{stdout}");
}

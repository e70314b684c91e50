//! The real `parlor` binary as a child process: started on 127.0.0.1:0,
//! waited for until healthy (or exited), killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::health::health_blocking;

/// The real `parlor` binary, started as a child process.
pub struct ParlorProcess {
    pub url: String,
    pub addr: SocketAddr,
    pub child: Child,
}

impl ParlorProcess {
    /// Spawns `parlor serve --listen 127.0.0.1:0 --data-dir DIR ARGS…` (the
    /// binary of [`parlor_bin`]; its log level is `PARLOR_TEST_LOG`, default
    /// `warn`) and waits for the line `parlor listening on
    /// http://ADDR` on its stdout.
    pub fn spawn(data_dir: &Path, args: &[&str]) -> Self {
        Self::spawn_bin(&parlor_bin(), data_dir, args)
    }

    /// [`ParlorProcess::spawn`] with the binary at `bin`.
    pub fn spawn_bin(bin: &Path, data_dir: &Path, args: &[&str]) -> Self {
        Self::spawn_bin_at(bin, "127.0.0.1:0", data_dir, args)
    }

    /// [`ParlorProcess::spawn`] listening on `listen` (e.g. a port a peer
    /// must be told before this process starts).
    pub fn spawn_at(listen: &str, data_dir: &Path, args: &[&str]) -> Self {
        Self::spawn_bin_at(&parlor_bin(), listen, data_dir, args)
    }

    fn spawn_bin_at(bin: &Path, listen: &str, data_dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", std::env::var("PARLOR_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("parlor binary {} starts: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr: SocketAddr = loop {
            let line = lines.next().expect("parlor printed its address").expect("stdout readable");
            if let Some(rest) = line.strip_prefix("parlor listening on http://") {
                break rest.trim().parse().expect("address parses");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let mut p = ParlorProcess { url: format!("http://{addr}"), addr, child };
        p.wait_healthy_or_exit(Duration::from_secs(30));
        p
    }

    /// Waits until `GET /healthz` answers 200 with `"status": "ok"` (the
    /// address is printed before storage is open), the process exits, or
    /// `within` passes; a test that expects the process to fail or to be
    /// unhealthy sees that itself.
    fn wait_healthy_or_exit(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if health_blocking(self.addr).is_some_and(|(status, body)| status == 200 && body["status"] == "ok") {
                return;
            }
            // Poll interval of a wait on a condition (bounded by `deadline`).
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ =
            rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), rustix::process::Signal::TERM);
        self.child.wait().unwrap()
    }
}

impl Drop for ParlorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `parlor` binary cargo built for the running test. Cargo names it in
/// `CARGO_BIN_EXE_parlor` to the test at run time (recent cargo) and always
/// puts it next to the `deps/` directory that holds the test binary, which
/// is where older cargo leaves us to look. Only the `parlor` package's own
/// integration tests get the binary built for them.
pub fn parlor_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_parlor") {
        return bin.into();
    }
    let test = std::env::current_exe().expect("the test binary's path");
    let dir = test.parent().and_then(|deps| deps.parent()).expect("the test binary lives in target/<profile>/deps");
    let bin = dir.join(format!("parlor{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "no parlor binary at {}: run this test through `cargo test -p parlor`", bin.display());
    bin
}

/// Runs `parlor ARGS…` to completion (a one-shot command: `admin`,
/// `backup`, `migrate`…), with no `PARLOR_REDIS` / `PARLOR_DATA_DIR` from
/// the environment; returns whether it succeeded, stdout and stderr.
pub fn run_parlor(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(parlor_bin())
        .args(args)
        .env_remove("PARLOR_REDIS")
        .env_remove("PARLOR_DATA_DIR")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("parlor runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The real `parlor` binary with its log (stderr) kept in a file, for tests
/// that read the log, send signals or scrape metrics. It does not wait for
/// the server to be healthy: the test probes it with its own client.
pub struct LoggedProcess {
    pub child: Child,
    /// `http://ADDR` or `https://ADDR`.
    pub url: String,
    pub addr: SocketAddr,
    /// Where `--metrics-listen` serves, when given.
    pub metrics: Option<SocketAddr>,
    pub log: PathBuf,
}

impl LoggedProcess {
    /// Spawns `parlor serve --listen 127.0.0.1:0 --data-dir DIR ARGS…` (ARGS
    /// may name another `--listen`) with `env`, logging to `DIR.log`; waits
    /// for the lines that say where it listens.
    pub fn spawn(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = data_dir.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(parlor_bin());
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "parlor=info,warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("parlor binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wants_metrics = args.contains(&"--metrics-listen");
        let (mut url, mut metrics) = (None, None);
        while url.is_none() || (wants_metrics && metrics.is_none()) {
            let Some(Ok(line)) = lines.next() else {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("parlor exited before saying where it listens; its log:\n{log}");
            };
            if let Some(rest) = line.strip_prefix("parlor listening on ") {
                url = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("parlor metrics on http://") {
                metrics = Some(rest.trim().trim_end_matches("/metrics").parse().expect("metrics address"));
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let url = url.unwrap();
        let addr = url.split_once("://").unwrap().1.parse().expect("address parses");
        LoggedProcess { child, url, addr, metrics, log }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `n` lines containing `needle`; false after `within`.
    pub fn wait_for_log(&self, needle: &str, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log_text().lines().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            // Poll interval of a wait on a condition (bounded by `deadline`).
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal (e.g. `Signal::HUP`).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig);
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.child.wait().unwrap()
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

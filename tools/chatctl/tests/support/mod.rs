//! What the end-to-end tests stand on: a real Parlor server in-process on
//! 127.0.0.1 (testkit's: its own data directory, restartable on the same
//! port), users who run the built `chatctl` binary with their own temporary
//! config directory, a `tail` process whose lines can be awaited, and a TCP proxy
//! that can swallow answers to simulate a network failure after the server
//! has done the work.

#![allow(dead_code)] // each test binary uses a different part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_chatctl");
/// Good enough for the server's password rules, unlike the username.
pub const PASSWORD: &str = "quiet-harbor-lantern-42";

/// A Parlor server on loopback (testkit's, on a runtime of its own, as
/// these tests are synchronous), restartable on the same port and data,
/// stopped (and its data removed) on drop.
pub type Server = testkit::BlockingServer;

/// What one chatctl run produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "chatctl failed: {self:#?}");
        self.stdout
    }

    /// Asserts the documented failure shape: the exit code, nothing on
    /// stdout, one line on stderr starting `chatctl: ` and containing `needle`.
    #[track_caller]
    pub fn fails(self, code: i32, needle: &str) -> String {
        assert_eq!(self.code, code, "wrong exit code: {self:#?}");
        assert_eq!(self.stdout, "", "stdout must stay empty on failure: {self:#?}");
        let last = self.stderr.lines().last().unwrap_or_default().to_owned();
        assert!(last.starts_with("chatctl: "), "{self:#?}");
        assert!(last.contains(needle), "stderr lacks {needle:?}: {self:#?}");
        last
    }
}

/// A person at a terminal: their own config directory and default server.
pub struct User {
    pub name: String,
    pub server: String,
    home: TempDir,
}

impl User {
    pub fn new(name: &str, server: &Server) -> Self {
        User { name: name.to_owned(), server: server.url.clone(), home: tempfile::tempdir().expect("temp dir") }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("config")
    }

    pub fn session_file(&self) -> PathBuf {
        self.config_dir().join("chatctl").join("session.json")
    }

    /// The stored access token.
    pub fn token(&self) -> String {
        let text = std::fs::read_to_string(self.session_file()).expect("a stored session");
        let v: serde_json::Value = serde_json::from_str(&text).expect("session JSON");
        v["token"].as_str().expect("token").to_owned()
    }

    /// chatctl with a clean environment: nothing from the machine's own
    /// config, session or token can leak into a test.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_dir())
            .env("CHATCTL_SERVER", &self.server)
            .env("TZ", "UTC");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(self.command(args), None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.run_with(self.command(args), Some(stdin))
    }

    pub fn run_with(&self, mut cmd: Command, stdin: Option<&str>) -> Run {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("chatctl starts");
        {
            let mut pipe = child.stdin.take().expect("stdin");
            if let Some(input) = stdin {
                pipe.write_all(input.as_bytes()).expect("writing stdin");
            }
        }
        Run::from(wait_output(child, Duration::from_secs(60)))
    }

    pub fn register(&self) -> Run {
        self.run_stdin(&["register", &self.name, "--password-stdin"], &format!("{PASSWORD}\n"))
    }

    pub fn login(&self) -> Run {
        self.run_stdin(&["login", &self.name, "--password-stdin"], &format!("{PASSWORD}\n"))
    }

    /// Starts `chatctl tail` with `args` after the room.
    pub fn tail(&self, room: &str, args: &[&str]) -> Tail {
        let mut all = vec!["tail", room];
        all.extend_from_slice(args);
        Tail::spawn_command(self.command(&all))
    }
}

/// Waits for a child, killing it if it overstays.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("chatctl did not finish within {limit:?}: {out:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A running `chatctl tail`, its stdout and stderr read line by line.
pub struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<std::sync::Mutex<String>>,
    /// The thread reading stderr: it ends at EOF, once the process has exited.
    stderr_reader: Option<JoinHandle<()>>,
    pub seen: Vec<String>,
}

impl Tail {
    /// Starts a prepared `chatctl tail` command.
    pub fn spawn_command(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("chatctl tail starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Tail { child, lines: rx, stderr, stderr_reader: Some(stderr_reader), seen: Vec::new() }
    }

    /// The next stdout line, within `limit`.
    #[track_caller]
    pub fn next_line(&mut self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(_) => panic!("no line from tail within {limit:?}; so far {:#?}; stderr: {}", self.seen, self.stderr()),
        }
    }

    /// Lines that arrive within `limit`, without failing when none do.
    pub fn lines_within(&mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    got.push(line);
                }
                Err(_) => break,
            }
        }
        got
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit code.
    pub fn interrupt(mut self) -> i32 {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("a child's pid is positive");
        rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("signal our own child");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "tail ignored Ctrl-C; stderr: {}", self.stderr());
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end by itself.
    pub fn wait(mut self, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // All of stderr is read once its reader sees EOF.
                if let Some(reader) = self.stderr_reader.take() {
                    reader.join().expect("stderr reader");
                }
                return (status.code().unwrap_or(-1), self.stderr());
            }
            assert!(Instant::now() < deadline, "tail did not end; stderr: {}", self.stderr());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a server. While `swallow` is above zero, the
/// answer to a connection that starts with a `PUT` is read from the server
/// (so the server has done the work) and then thrown away, and the client's
/// connection is cut: exactly a network failure after the server stored a
/// message.
pub struct Proxy {
    pub url: String,
    pub swallow: Arc<AtomicUsize>,
    pub swallowed: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let swallow = Arc::new(AtomicUsize::new(0));
        let swallowed = Arc::new(AtomicUsize::new(0));
        let (swallow2, swallowed2) = (swallow.clone(), swallowed.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (swallow, swallowed) = (swallow2.clone(), swallowed2.clone());
                thread::spawn(move || proxy_connection(client, upstream_port, &swallow, &swallowed));
            }
        });
        Proxy { url, swallow, swallowed }
    }
}

fn proxy_connection(mut client: TcpStream, upstream_port: u16, swallow: &AtomicUsize, swallowed: &AtomicUsize) {
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    let mut first = [0u8; 4096];
    let n = match client.read(&mut first) {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let is_put = first[..n].starts_with(b"PUT ");
    if upstream.write_all(&first[..n]).is_err() {
        return;
    }
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let take = is_put && swallow.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if take {
        // The first byte of the answer means the server has finished.
        let mut buf = [0u8; 1];
        let _ = upstream.read(&mut buf);
        swallowed.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    }
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Write);
}

/// A loopback port with nothing listening on it.
pub use testkit::free_port as dead_port;

/// Parses every stdout line as a JSON object.
#[track_caller]
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

//! A real nginx (Debian's `nginx`, which `scripts/setup` installs) in front
//! of Parlor, configured by `contrib/nginx.conf` itself with only its
//! example addresses and paths replaced, so the shipped file is what the
//! tests run. nginx runs as the test's child with its own prefix, pid file
//! and logs: no path outside that prefix, no root needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx as a child process, stopped (fast shutdown) when dropped.
pub struct Nginx {
    child: Child,
    prefix: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits.
        let _ =
            rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Each request nginx answered, one line per request, ending in
    /// `upstream=ADDR` (the Parlor process that served it; empty when nginx
    /// answered itself).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default()
    }

    /// nginx's error log, for a failing test's message.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }
}

/// `contrib/nginx.conf` as shipped.
fn contrib() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/nginx.conf"))
        .expect("contrib/nginx.conf is readable")
}

/// `conf` with each `from` replaced by its `to`; each must occur exactly once,
/// so a change to the shipped file cannot silently leave a test on defaults.
fn replace_each(mut conf: String, pairs: &[(&str, String)]) -> String {
    for (from, to) in pairs {
        assert_eq!(conf.matches(from).count(), 1, "contrib/nginx.conf has {from:?} once");
        conf = conf.replace(from, to);
    }
    conf
}

/// The `server` lines of the upstream block, one per Parlor process.
fn upstream_lines(upstreams: &[SocketAddr]) -> String {
    assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
    upstreams.iter().map(|u| format!("server {u};")).collect::<Vec<_>>().join("\n    ")
}

/// `contrib/nginx.conf` as an operator installs it: TLS on `https` with
/// `cert`/`key`, plain HTTP on `http` redirecting to it, `upstreams` behind.
pub fn tls_site(upstreams: &[SocketAddr], https: SocketAddr, http: SocketAddr, cert: &Path, key: &Path) -> String {
    replace_each(
        contrib(),
        &[
            ("    listen [::]:80;\n", String::new()),
            ("    listen [::]:443 ssl;\n", String::new()),
            ("listen 80;", format!("listen {http};")),
            ("listen 443 ssl;", format!("listen {https} ssl;")),
            ("server 127.0.0.1:8008;", upstream_lines(upstreams)),
            ("/etc/letsencrypt/live/chat.example/fullchain.pem", cert.display().to_string()),
            ("/etc/letsencrypt/live/chat.example/privkey.pem", key.display().to_string()),
        ],
    )
}

/// `contrib/nginx.conf` with its TLS server block listening on plain HTTP at
/// `listen` (for clients that speak only HTTP, like the conformance suite)
/// and without the redirecting port-80 block: the same upstream, upgrade and
/// forwarding settings, `upstreams` behind.
pub fn plain_site(upstreams: &[SocketAddr], listen: SocketAddr) -> String {
    let conf = contrib();
    // The port-80 block only redirects; it ends before the TLS block begins.
    let start = conf.find("server {\n    listen 80;").expect("contrib/nginx.conf has its port-80 block");
    let end = start + conf[start..].find("\n}\n").expect("the port-80 block ends") + 3;
    let conf = format!("{}{}", &conf[..start], &conf[end..]);
    replace_each(
        conf,
        &[
            ("    listen [::]:443 ssl;\n", String::new()),
            ("listen 443 ssl;", format!("listen {listen};")),
            ("server 127.0.0.1:8008;", upstream_lines(upstreams)),
            ("    ssl_certificate     /etc/letsencrypt/live/chat.example/fullchain.pem;\n", String::new()),
            ("    ssl_certificate_key /etc/letsencrypt/live/chat.example/privkey.pem;\n", String::new()),
            ("    ssl_protocols       TLSv1.2 TLSv1.3;\n", String::new()),
            ("    ssl_session_cache   shared:parlor_tls:10m;\n", String::new()),
        ],
    )
}

/// nginx from PATH, or where Debian puts it (/usr/sbin is not on every
/// user's PATH).
fn binary() -> PathBuf {
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).find(|f| f.is_file()));
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// Starts nginx on `prefix` (created if missing) with `site` in an http
/// block of a main configuration of our own, and waits until it accepts
/// connections on `ready`.
pub fn run(prefix: &Path, site: &str, ready: SocketAddr) -> Nginx {
    std::fs::create_dir_all(prefix).unwrap();
    std::fs::write(prefix.join("parlor.conf"), site).unwrap();
    // As root, workers would switch to `nobody`; stay who we are.
    let user = if rustix::process::geteuid().is_root() { "user root;\n" } else { "" };
    let d = prefix.display();
    let main = format!(
        "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  log_format upstream '$remote_addr \"$request\" $status upstream=$upstream_addr';\n  \
         access_log {d}/access.log upstream;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/parlor.conf;\n}}\n"
    );
    std::fs::write(prefix.join("nginx.conf"), main).unwrap();
    let nginx = || {
        let mut c = Command::new(binary());
        c.arg("-p").arg(prefix).arg("-c").arg(prefix.join("nginx.conf")).arg("-e").arg(prefix.join("error.log"));
        c
    };
    let test = match nginx().arg("-t").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("this test needs nginx: run scripts/setup (apt-get install nginx)")
        }
        Err(e) => panic!("cannot run nginx: {e}"),
    };
    assert!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
    let child = nginx().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut n = Nginx { child, prefix: prefix.to_owned() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(ready).is_err() {
        if let Ok(Some(status)) = n.child.try_wait() {
            panic!("nginx exited ({status}): {}", n.error_log());
        }
        assert!(Instant::now() < deadline, "nginx did not listen within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    n
}

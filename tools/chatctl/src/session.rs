//! The stored login: where it lives (`$XDG_CONFIG_HOME/chatctl/`, else
//! `~/.config/chatctl/`), how it is written (atomically, mode 0600 in a 0700
//! directory, because it holds a bearer token) and which server and token a
//! command ends up using (`--server`, `CHATCTL_SERVER`, `CHATCTL_TOKEN`).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::api::normalize_server;
use crate::failure::{Exit, Failure};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8008";
const SESSION_FILE: &str = "session.json";

/// What `login` stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

/// chatctl's directory. A relative `XDG_CONFIG_HOME` is ignored, as the XDG
/// spec says, rather than resolved against whatever the cwd happens to be.
pub fn config_dir() -> Result<PathBuf, Failure> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(dir.join("chatctl"));
    }
    match std::env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(home) => Ok(home.join(".config").join("chatctl")),
        None => Err(Failure::local("cannot find a config directory: set XDG_CONFIG_HOME or HOME")),
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))
}

pub fn session_path(dir: &Path) -> PathBuf {
    dir.join(SESSION_FILE)
}

pub fn load(dir: &Path) -> anyhow::Result<Option<Session>> {
    let path = session_path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // Someone (a copy, an editor) widened the permissions of a file that
    // holds a bearer token: narrow them again and say so.
    let too_open = fs::metadata(&path).map(|m| m.permissions().mode() & 0o077 != 0).unwrap_or(false);
    if too_open {
        eprintln!("chatctl: warning: {} was readable by others; set it to 0600", path.display());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    let session = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a chatctl session; remove it and log in again", path.display()))?;
    Ok(Some(session))
}

/// Writes the session to a fresh 0600 file and renames it into place, so a
/// crash never leaves a half-written token file, and an old file with
/// looser permissions is replaced rather than reused.
pub fn save(dir: &Path, session: &Session) -> anyhow::Result<()> {
    ensure_private_dir(dir)?;
    let path = session_path(dir);
    let tmp = dir.join(format!(".{SESSION_FILE}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f: File = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The umask can only remove bits; make the mode exact anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&serde_json::to_vec_pretty(session).expect("sessions serialize"))?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

pub fn remove(dir: &Path) -> anyhow::Result<()> {
    let path = session_path(dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Where a token came from, which matters to `logout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `CHATCTL_TOKEN`.
    Env,
    /// The stored session.
    File,
}

/// The server and credentials one command uses.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub token: Option<(String, TokenSource)>,
    /// The stored session, when it is for `server`.
    pub session: Option<Session>,
    /// Why there is no token, for the "not logged in" message.
    why_no_token: String,
}

impl Target {
    /// Resolves the server and token:
    /// - the server is `--server`/`CHATCTL_SERVER` when given, else the stored
    ///   session's server, else the default;
    /// - the token is `CHATCTL_TOKEN` when set, else the stored session's, but
    ///   only when the session is for that server (a token is meaningless to
    ///   any other).
    pub fn resolve(
        explicit_server: Option<&str>,
        env_token: Option<String>,
        stored: Option<Session>,
    ) -> Result<Self, Failure> {
        let explicit = explicit_server.map(normalize_server).transpose()?;
        let stored = stored.map(|mut s| {
            // Sessions written by hand may spell the server differently.
            if let Ok(n) = normalize_server(&s.server) {
                s.server = n;
            }
            s
        });
        let server = explicit
            .clone()
            .or_else(|| stored.as_ref().map(|s| s.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let session = stored.clone().filter(|s| s.server == server);
        let why_no_token = match &stored {
            None => "not logged in: run `chatctl login USERNAME` first".to_owned(),
            Some(s) => format!(
                "not logged in to {server} (the stored session is for {}): run `chatctl --server {server} login USERNAME`",
                s.server
            ),
        };
        let token = match env_token.filter(|t| !t.is_empty()) {
            Some(t) => Some((t, TokenSource::Env)),
            None => session.as_ref().map(|s| (s.token.clone(), TokenSource::File)),
        };
        Ok(Self { server, token, session, why_no_token })
    }

    pub fn require_token(&self) -> Result<&str, Failure> {
        match &self.token {
            Some((t, _)) => Ok(t),
            None => Err(Failure::new(Exit::NotLoggedIn, self.why_no_token.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(server: &str) -> Session {
        Session { server: server.into(), user_id: "@ann:h".into(), device_id: "D".into(), token: "tok".into() }
    }

    #[test]
    fn saved_sessions_are_private_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("chatctl");
        let s = session("http://h:1");
        save(&dir, &s).unwrap();
        assert_eq!(fs::metadata(session_path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(load(&dir).unwrap(), Some(s.clone()));

        // A file whose mode was widened is replaced by a private one on save…
        fs::set_permissions(session_path(&dir), fs::Permissions::from_mode(0o644)).unwrap();
        save(&dir, &s).unwrap();
        assert_eq!(fs::metadata(session_path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
        // …and narrowed on load.
        fs::set_permissions(session_path(&dir), fs::Permissions::from_mode(0o640)).unwrap();
        load(&dir).unwrap();
        assert_eq!(fs::metadata(session_path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);

        remove(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        remove(&dir).unwrap();
    }

    #[test]
    fn server_and_token_resolution() {
        // Nothing stored: the default server, no token.
        let t = Target::resolve(None, None, None).unwrap();
        assert_eq!(t.server, DEFAULT_SERVER);
        assert_eq!(t.require_token().unwrap_err().exit, Exit::NotLoggedIn);

        // A stored session picks the server when none is given.
        let t = Target::resolve(None, None, Some(session("http://h:1/"))).unwrap();
        assert_eq!(t.server, "http://h:1");
        assert_eq!(t.require_token().unwrap(), "tok");

        // An explicit other server does not get the stored token.
        let t = Target::resolve(Some("other:2"), None, Some(session("http://h:1"))).unwrap();
        assert_eq!(t.server, "http://other:2");
        let err = t.require_token().unwrap_err();
        assert_eq!(err.exit, Exit::NotLoggedIn);
        assert!(err.message.contains("http://h:1"), "{}", err.message);

        // CHATCTL_TOKEN wins, on whichever server is chosen.
        let t = Target::resolve(Some("other:2"), Some("envtok".into()), Some(session("http://h:1"))).unwrap();
        assert_eq!(t.token, Some(("envtok".into(), TokenSource::Env)));
        // An empty CHATCTL_TOKEN counts as unset.
        let t = Target::resolve(None, Some(String::new()), Some(session("http://h:1"))).unwrap();
        assert_eq!(t.token, Some(("tok".into(), TokenSource::File)));
    }
}

//! Transaction ids for `send`, chosen so that a retried command never sends
//! twice. The server makes a send idempotent per (device, room, txn_id); the
//! client's half of the bargain is to reuse the txn id whenever it repeats a
//! send that may already have been stored. Inside one command the retry loop
//! simply keeps the id. Across commands (the user runs the same `send` again
//! after a network failure) the id is found in a small journal:
//!
//! - before sending, an entry keyed by hash(token, room, body) is created
//!   (or found) under `pending/` in the config directory, holding a fresh
//!   random txn id;
//! - when the send is settled (the server answered, yes or no), the entry is
//!   removed, so sending the same text again later is a new message;
//! - when the outcome is unknown (no answer), the entry stays, and running
//!   the same command again reuses its txn id: the server then answers with
//!   the first attempt's event instead of storing a second one.
//!
//! Entries are locked (flock) while a send is in flight, so two concurrent
//! identical sends are serialized instead of sharing one id by accident,
//! and they expire before the server's 24-hour txn memory does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::session::ensure_private_dir;

/// Comfortably inside the server's promise to remember a txn id for 24 h:
/// an older id might be forgotten, and a reused one would then send anyway.
const ENTRY_TTL: Duration = Duration::from_secs(23 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    txn_id: String,
    created_ms: u64,
}

pub struct Journal {
    dir: PathBuf,
}

/// A send in flight: its txn id, with the journal entry locked until it is
/// settled or kept.
#[derive(Debug)]
pub struct Pending {
    file: File,
    path: PathBuf,
    pub txn_id: String,
    /// The id came from an earlier attempt whose outcome was unknown.
    pub reused: bool,
}

impl Journal {
    pub fn new(config_dir: &Path) -> Self {
        Self { dir: config_dir.join("pending") }
    }

    pub fn begin(&self, token: &str, room: &str, body: &str) -> anyhow::Result<Pending> {
        ensure_private_dir(&self.dir)?;
        self.sweep();
        let path = self.dir.join(format!("{}.json", key(token, room, body)));
        let mut file = lock_entry(&path).with_context(|| format!("locking {}", path.display()))?;
        let now = now_ms();
        let mut text = String::new();
        file.read_to_string(&mut text).with_context(|| format!("reading {}", path.display()))?;
        let live = serde_json::from_str::<Entry>(&text)
            .ok()
            .filter(|e| now.saturating_sub(e.created_ms) < ENTRY_TTL.as_millis() as u64);
        if let Some(entry) = live {
            return Ok(Pending { file, path, txn_id: entry.txn_id, reused: true });
        }
        let entry = Entry { txn_id: new_txn_id(), created_ms: now };
        let write = |f: &mut File| -> io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&serde_json::to_vec(&entry).expect("entries serialize"))?;
            // The id must be on disk before the request can reach the server,
            // or a crash could lose the only record of it.
            f.sync_all()
        };
        write(&mut file).with_context(|| format!("writing {}", path.display()))?;
        Ok(Pending { file, path, txn_id: entry.txn_id, reused: false })
    }

    /// Removes entries too old to be reused. Best effort: a failure here
    /// only leaves a stale file behind.
    fn sweep(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let cutoff = SystemTime::now() - ENTRY_TTL;
        for entry in dir.flatten() {
            let old = entry.metadata().and_then(|m| m.modified()).map(|t| t < cutoff).unwrap_or(false);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl Pending {
    /// The server gave its answer: the txn is finished and the same text
    /// sent later is a new message.
    pub fn settle(self) -> anyhow::Result<()> {
        // Removing while still holding the lock lets a waiting sender see
        // (by inode) that this entry is gone and start a fresh one.
        fs::remove_file(&self.path).with_context(|| format!("removing {}", self.path.display()))?;
        drop(self.file);
        Ok(())
    }

    /// The outcome is unknown: leave the entry for the next attempt.
    pub fn keep(self) {
        drop(self.file);
    }
}

/// Opens and exclusively locks the entry at `path`, making sure the locked
/// file is still the one at `path` (a sender that settled while we waited
/// unlinks it).
fn lock_entry(path: &Path) -> io::Result<File> {
    loop {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let held = file.metadata()?;
        match fs::metadata(path) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => return Ok(file),
            _ => continue,
        }
    }
}

/// A fixed-length, filesystem-safe name that does not reveal the message or
/// the token. Parts are length-prefixed so that no two inputs collide by
/// shifting bytes between fields.
fn key(token: &str, room: &str, body: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [token, room, body] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    hex(&ctx.finish().as_ref()[..16])
}

/// 128 random bits; the characters are within the spec's txn_id alphabet.
pub fn new_txn_id() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).expect("the system random source works");
    format!("cc{}", hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsettled_sends_reuse_their_txn_id_and_settled_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path());

        let first = j.begin("tok", "lobby", "hi").unwrap();
        assert!(!first.reused);
        let id = first.txn_id.clone();
        first.keep();

        // The same command again: the outcome of the first is unknown.
        let again = j.begin("tok", "lobby", "hi").unwrap();
        assert!(again.reused);
        assert_eq!(again.txn_id, id);
        again.settle().unwrap();

        // Settled: the same text again is a new message.
        let later = j.begin("tok", "lobby", "hi").unwrap();
        assert!(!later.reused);
        assert_ne!(later.txn_id, id);
        later.settle().unwrap();
    }

    #[test]
    fn other_rooms_bodies_and_devices_get_other_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path());
        let a = j.begin("tok", "lobby", "hi").unwrap();
        let (a_id, a_path) = (a.txn_id.clone(), a.path.clone());
        a.keep();
        for (tok, room, body) in [("tok", "lobby", "hi!"), ("tok", "other", "hi"), ("tok2", "lobby", "hi")] {
            let p = j.begin(tok, room, body).unwrap();
            assert!(!p.reused);
            assert_ne!(p.txn_id, a_id);
            assert_ne!(p.path, a_path);
            p.keep();
        }
    }

    #[test]
    fn expired_entries_are_not_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path());
        let p = j.begin("tok", "lobby", "hi").unwrap();
        let stale = Entry { txn_id: "ccold".into(), created_ms: now_ms() - ENTRY_TTL.as_millis() as u64 - 1 };
        fs::write(&p.path, serde_json::to_vec(&stale).unwrap()).unwrap();
        p.keep();
        let p = j.begin("tok", "lobby", "hi").unwrap();
        assert!(!p.reused);
        assert_ne!(p.txn_id, "ccold");
    }

    #[test]
    fn a_concurrent_identical_send_waits_and_then_gets_its_own_id() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let first = Journal::new(&dir).begin("tok", "lobby", "hi").unwrap();
        let first_id = first.txn_id.clone();
        let waiter = std::thread::spawn(move || {
            let p = Journal::new(&dir).begin("tok", "lobby", "hi").unwrap();
            (p.txn_id.clone(), p.reused)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "the second sender must wait for the first");
        first.settle().unwrap();
        let (second_id, reused) = waiter.join().unwrap();
        assert!(!reused);
        assert_ne!(second_id, first_id);
    }

    #[test]
    fn txn_ids_fit_the_spec_alphabet() {
        let id = new_txn_id();
        assert!(id.len() <= 64);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)));
    }
}

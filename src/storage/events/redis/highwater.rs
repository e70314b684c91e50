//! What this process has seen of each room's log: the defence against a
//! Redis that comes back with less than it had (a failover, a restore from
//! an older AOF or snapshot, a host crash under `appendfsync everysec`).
//!
//! Every script call carries the epoch, generation and highest seq the
//! process has seen of the room; the script starts a new epoch instead of
//! continuing one whose counter is behind that (see `scripts/epoch.lua`).
//! Two places keep those marks:
//!
//! - [`SeenMap`], in memory, for the rooms this process appends to or reads;
//! - [`HighWater`], in the data directory (a sled tree), for every room whose
//!   events this process handed out or read from the shared feed, so that a
//!   process that restarts together with Redis still knows how far each
//!   room had gone, and so that processes sharing one Redis agree: each
//!   one's mark covers what every process appended while it was reading the
//!   feed, not only its own appends.
//!
//! When must a mark be on disk? Before the seq it covers reaches a client
//! whenever Redis could come back from a crash of the machine with *part* of
//! what it acknowledged: AOF with `appendfsync everysec` or `no`, or RDB
//! snapshots ([`Durability::BeforeHandOut`]). A crash that takes Parlor and
//! the last second of Redis together would otherwise lose both the mark and
//! the events, and the seqs would be handed out again. Marks are then made
//! durable in groups, not per append: the feed's hand-out stage records a
//! whole batch and syncs once before handing it to subscribers (acks wait
//! for that hand-off), and the sync is the data directory's group commit.
//!
//! With `appendfsync always` a crash loses nothing Redis acknowledged, and
//! with no persistence at all a restart loses everything (every room then
//! starts a new epoch because its meta key is gone): neither comes back
//! with part of a log. Only an operator's restore or a failover to a lagging
//! replica can, and Parlor is not killed at that moment but running (its
//! marks are current in sled) or stopped cleanly (they were synced). So
//! there marks are written before hand-out but synced in the background
//! (sled flushes every second, and at shutdown): [`Durability::Background`],
//! which spares the send path a sync per batch (measured: one fsync of
//! latency per append, and about a quarter of the appends per second with
//! 256 in flight). Which one applies is read from Redis's configuration at
//! start, at every [`super::feed`] check (reconnect, idle) and every 30 s
//! while the feed is busy; unknown (`CONFIG` refused) means before hand-out.
//! A change of Redis's settings at run time is therefore seen late, by up to
//! that period.
//!
//! Reserving ranges ahead ("seqs up to N may have been handed out", synced
//! once per N) would cost fewer syncs, but after any unclean exit of Parlor
//! alone a counter below N could not be told from a rollback, so every
//! active room would start a new epoch after a plain `kill -9`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::protocol::RoomId;
use crate::storage::{Db, StorageError};

/// An epoch, its generation (when it started, Redis clock in ms) and the
/// highest seq seen in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub epoch: Arc<str>,
    pub generation: u64,
    pub seq: u64,
}

impl Seen {
    /// Whether this mark already covers `(generation, seq)`.
    pub fn covers(&self, generation: u64, seq: u64) -> bool {
        self.generation > generation || (self.generation == generation && self.seq >= seq)
    }

    /// Raises this mark by a sighting; a newer generation replaces it, an
    /// older one is ignored. Returns whether it changed.
    fn merge(&mut self, epoch: &Arc<str>, generation: u64, seq: u64) -> bool {
        if self.covers(generation, seq) {
            return false;
        }
        if self.generation == generation {
            self.seq = seq;
        } else {
            *self = Seen { epoch: epoch.clone(), generation, seq };
        }
        true
    }
}

/// The marks of the rooms this process appends to or reads, in memory.
#[derive(Default)]
pub(super) struct SeenMap(Mutex<HashMap<RoomId, Seen>>);

impl SeenMap {
    pub fn get(&self, room: &RoomId) -> Option<Seen> {
        self.0.lock().expect("seen lock").get(room).cloned()
    }

    /// Forgets a room (purged).
    pub fn forget(&self, room: &RoomId) {
        self.0.lock().expect("seen lock").remove(room);
    }

    /// Records a sighting of a room this process uses.
    pub fn observe(&self, room: &RoomId, epoch: &Arc<str>, generation: u64, seq: u64) {
        let mut m = self.0.lock().expect("seen lock");
        match m.get_mut(room) {
            Some(s) => drop(s.merge(epoch, generation, seq)),
            None => drop(m.insert(room.clone(), Seen { epoch: epoch.clone(), generation, seq })),
        }
    }

    /// Records a sighting from the feed, only for rooms already tracked
    /// (every room with a local subscriber was read at subscribe): the map
    /// grows with this process's rooms, not with all rooms.
    pub fn observe_tracked(&self, room: &RoomId, epoch: &Arc<str>, generation: u64, seq: u64) {
        if let Some(s) = self.0.lock().expect("seen lock").get_mut(room) {
            s.merge(epoch, generation, seq);
        }
    }
}

/// The marks on disk: sled tree `redis_high_water`, room id → generation
/// (u64 BE), seq (u64 BE), epoch.
pub(super) struct HighWater {
    db: Db,
    tree: sled::Tree,
    /// Rooms whose mark changed since the last sync that covers it, with the
    /// number of the change (so a sync only clears what it covered). Kept
    /// only while marks are synced before hand-out.
    dirty: Mutex<HashMap<RoomId, u64>>,
    changes: AtomicU64,
    /// Whether marks must be on disk before hand-out (see the module doc).
    before_hand_out: AtomicBool,
}

/// When marks must reach the disk, from what Redis's persistence can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Before the seqs they cover reach a client.
    BeforeHandOut,
    /// Soon after (sled's flush every second, and at shutdown).
    Background,
}

impl Durability {
    /// From `CONFIG GET appendonly appendfsync save` (None: not allowed).
    pub fn of_redis(appendonly: Option<&str>, appendfsync: Option<&str>, save: Option<&str>) -> Self {
        match (appendonly, appendfsync, save) {
            (Some("yes"), Some("always"), _) => Durability::Background,
            (Some("no"), _, Some(s)) if s.trim().is_empty() => Durability::Background,
            _ => Durability::BeforeHandOut,
        }
    }
}

const TREE: &str = "redis_high_water";

fn encode(s: &Seen) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + s.epoch.len());
    v.extend_from_slice(&s.generation.to_be_bytes());
    v.extend_from_slice(&s.seq.to_be_bytes());
    v.extend_from_slice(s.epoch.as_bytes());
    v
}

fn decode(v: &[u8]) -> Result<Seen, StorageError> {
    let corrupt = |detail: &str| StorageError::Corrupt { tree: TREE, detail: detail.into() };
    if v.len() < 16 {
        return Err(corrupt("short high-water mark"));
    }
    let generation = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(v[8..16].try_into().expect("8 bytes"));
    let epoch = std::str::from_utf8(&v[16..]).map_err(|_| corrupt("epoch is not UTF-8"))?;
    Ok(Seen { epoch: epoch.into(), generation, seq })
}

/// Makes every mark in `db` say that more was handed out than any Redis
/// holds (the highest seq there is, same generation), and returns how many.
/// For a data dir restored from a backup together with Redis from a
/// snapshot: clients may have seen seqs past the snapshot, which Redis
/// would issue again to other events under the epoch those clients hold.
/// The start-up check then moves every room with a mark to a new epoch
/// (the old one archived, still readable with `?epoch=`).
pub fn mark_all_rolled_back(db: &Db) -> Result<usize, StorageError> {
    let tree = db.tree(TREE)?;
    let mut writes = sled::Batch::default();
    let mut n = 0;
    for item in tree.iter() {
        let (k, v) = item?;
        let mut mark = decode(&v)?;
        mark.seq = u64::MAX;
        writes.insert(k, encode(&mark));
        n += 1;
    }
    db.gate().with(|| tree.apply_batch(writes))?;
    db.sync_blocking()?;
    Ok(n)
}

impl HighWater {
    pub fn open(db: &Db) -> Result<Self, StorageError> {
        Ok(Self {
            db: db.clone(),
            tree: db.tree(TREE)?,
            dirty: Mutex::default(),
            changes: AtomicU64::new(0),
            before_hand_out: AtomicBool::new(true),
        })
    }

    /// Sets when marks must reach the disk; moving to [`Durability::BeforeHandOut`]
    /// first syncs everything noted so far.
    pub async fn set_durability(&self, d: Durability) -> Result<(), StorageError> {
        let strict = d == Durability::BeforeHandOut;
        if self.before_hand_out.swap(strict, Ordering::AcqRel) != strict {
            tracing::info!(durability = ?d, "redis high-water marks");
            if strict {
                self.db.sync().await?;
            } else {
                self.dirty.lock().expect("dirty lock").clear();
            }
        }
        Ok(())
    }

    pub fn strict(&self) -> bool {
        self.before_hand_out.load(Ordering::Acquire)
    }

    pub fn get(&self, room: &RoomId) -> Result<Option<Seen>, StorageError> {
        self.tree.get(room.as_str())?.map(|v| decode(&v)).transpose()
    }

    /// Raises the room's mark (as [`SeenMap::observe`] does). It is on disk
    /// after the next [`HighWater::sync`].
    pub fn note(&self, room: &RoomId, epoch: &Arc<str>, generation: u64, seq: u64) -> Result<(), StorageError> {
        let mut changed = false;
        let mut bad = None;
        self.db.gate().with(|| {
            self.tree.update_and_fetch(room.as_str(), |old| {
                bad = None;
                let mut mark = match old.map(decode) {
                    Some(Ok(m)) => m,
                    // Replaced: a mark that does not decode protects nothing.
                    Some(Err(e)) => {
                        bad = Some(e);
                        Seen { epoch: epoch.clone(), generation: 0, seq: 0 }
                    }
                    None => Seen { epoch: epoch.clone(), generation: 0, seq: 0 },
                };
                changed = mark.merge(epoch, generation, seq) || old.is_none() || bad.is_some();
                match (changed, old) {
                    (false, Some(old)) => Some(old.to_vec()),
                    _ => Some(encode(&mark)),
                }
            })
        })?;
        if let Some(e) = bad {
            tracing::warn!(room = %room, error = %e, "replaced an undecodable redis high-water mark");
        }
        if changed && self.strict() {
            let n = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
            self.dirty.lock().expect("dirty lock").insert(room.clone(), n);
        }
        Ok(())
    }

    /// Makes every mark noted so far durable (one group commit of the data
    /// directory; a call with nothing pending returns at once) when marks
    /// must be on disk before hand-out.
    pub async fn sync(&self) -> Result<(), StorageError> {
        let Some(covered) = self.pending() else { return Ok(()) };
        self.db.sync().await?;
        self.synced(covered);
        Ok(())
    }

    /// The changes a sync starting now covers.
    fn pending(&self) -> Option<Vec<(RoomId, u64)>> {
        let d = self.dirty.lock().expect("dirty lock");
        (!d.is_empty()).then(|| d.iter().map(|(r, n)| (r.clone(), *n)).collect())
    }

    /// Forgets the changes a sync covered, unless the room changed since.
    fn synced(&self, covered: Vec<(RoomId, u64)>) {
        let mut d = self.dirty.lock().expect("dirty lock");
        for (room, n) in covered {
            if d.get(&room) == Some(&n) {
                d.remove(&room);
            }
        }
    }

    /// Makes sure the room's mark covers `(generation, seq)` (on disk when
    /// marks must be before hand-out), syncing only when it does not yet.
    pub async fn cover(&self, room: &RoomId, epoch: &Arc<str>, generation: u64, seq: u64) -> Result<(), StorageError> {
        let pending = self.dirty.lock().expect("dirty lock").contains_key(room);
        if !pending && self.get(room)?.is_some_and(|m| m.covers(generation, seq)) {
            return Ok(());
        }
        self.note(room, epoch, generation, seq)?;
        self.sync().await
    }

    /// Whether the data directory refused a sync: marks can no longer be
    /// made durable, so nothing more may be handed out.
    pub fn failed(&self) -> bool {
        self.db.sync_failed()
    }

    /// Removes a room's mark (purged); durable after the next sync of the data directory.
    pub fn forget(&self, room: &RoomId) -> Result<(), StorageError> {
        self.dirty.lock().expect("dirty lock").remove(room);
        self.db.gate().with(|| self.tree.remove(room.as_str()))?;
        Ok(())
    }

    /// The data directory, to sync.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Every mark on disk.
    pub fn all(&self) -> impl Iterator<Item = Result<(RoomId, Seen), StorageError>> + '_ {
        self.tree.iter().map(|item| {
            let (k, v) = item?;
            let room = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| RoomId::parse(s).ok())
                .ok_or_else(|| StorageError::Corrupt { tree: TREE, detail: "room id".into() })?;
            Ok((room, decode(&v)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keeps_the_newest_generation_and_the_highest_seq() {
        let seen = SeenMap::default();
        let room = RoomId::parse("!r:x").unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        seen.observe(&room, &a, 5, 10);
        seen.observe(&room, &a, 5, 7);
        assert_eq!(seen.get(&room).unwrap().seq, 10);
        seen.observe(&room, &b, 4, 99);
        assert_eq!(&*seen.get(&room).unwrap().epoch, "a", "an older generation is ignored");
        seen.observe(&room, &b, 6, 1);
        let s = seen.get(&room).unwrap();
        assert_eq!((&*s.epoch, s.generation, s.seq), ("b", 6, 1));
        seen.observe_tracked(&room, &b, 6, 3);
        assert_eq!(seen.get(&room).unwrap().seq, 3);
        let other = RoomId::parse("!o:x").unwrap();
        seen.observe_tracked(&other, &b, 6, 3);
        assert!(seen.get(&other).is_none(), "untouched rooms are not tracked");
    }

    #[test]
    fn marks_wait_for_the_disk_unless_redis_cannot_lose_part_of_a_log() {
        let d = |a, f, s| Durability::of_redis(a, f, s);
        assert_eq!(d(Some("yes"), Some("always"), Some("")), Durability::Background);
        assert_eq!(d(Some("no"), Some("everysec"), Some("")), Durability::Background, "no persistence");
        assert_eq!(d(Some("yes"), Some("everysec"), Some("")), Durability::BeforeHandOut);
        assert_eq!(d(Some("yes"), Some("no"), Some("")), Durability::BeforeHandOut);
        assert_eq!(d(Some("no"), Some("everysec"), Some("3600 1 300 100")), Durability::BeforeHandOut, "snapshots");
        assert_eq!(d(None, None, None), Durability::BeforeHandOut, "unknown");
    }

    #[tokio::test]
    async fn marks_merge_like_sightings_and_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let hw = HighWater::open(&db).unwrap();
        let room = RoomId::parse("!r:x").unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        hw.note(&room, &a, 5, 10).unwrap();
        hw.note(&room, &a, 5, 3).unwrap();
        hw.note(&room, &b, 4, 99).unwrap();
        assert_eq!(hw.get(&room).unwrap(), Some(Seen { epoch: a.clone(), generation: 5, seq: 10 }));
        assert!(hw.dirty.lock().unwrap().contains_key(&room));
        hw.sync().await.unwrap();
        assert!(hw.dirty.lock().unwrap().is_empty(), "a sync clears what it covered");
        hw.cover(&room, &a, 5, 8).await.unwrap();
        assert!(hw.dirty.lock().unwrap().is_empty(), "a covered seq costs no note");
        hw.cover(&room, &b, 6, 1).await.unwrap();
        assert_eq!(hw.get(&room).unwrap(), Some(Seen { epoch: b, generation: 6, seq: 1 }));
        let all: Vec<_> = hw.all().collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 1);
    }
}

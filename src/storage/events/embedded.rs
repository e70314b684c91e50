//! The embedded room log: sled, with group commit.
//!
//! Appends go through a two-stage pipeline on two threads. The writer takes
//! all waiting appends at once, assigns seqs, and writes events and
//! transaction records in one atomic sled batch. The syncer makes everything
//! written so far durable (sled flush + fdatasync) and only then, batch by
//! batch in order, answers and feeds the sink. So acks are durable, seqs have
//! no holes, a burst costs one sync instead of one per message, and the
//! writer prepares the next batch while the syncer waits on the disk (the
//! sync is most of a batch's time, and it covers every batch written before
//! it, so under load one sync serves several).
//!
//! Keys (one tree, `events`), parts separated by NUL:
//! - `e` room seq(u64 BE) → event JSON
//! - `t` room device txn_id → fingerprint(32) seq(u64 BE) event_id
//! - `x` expiry(u64 BE, ms) followed by a `t` key → nothing: when that
//!   transaction record may be forgotten. The writer deletes expired records
//!   before a batch, at most every [`SWEEP_EVERY_MAX`] and [`SWEEP_MAX`]
//!   at a time, so the records kept are those of the last `txn_ttl` (24 h).
//! - `v` `txn-expiry` → the expiry given to records written before the `x`
//!   index existed (indexed once, when such a store is first opened).
//! - `m` room → epoch, optionally NUL and a base seq (u64 BE): the seq before
//!   the first event, kept for a log that was started over at a later seq
//!   (federated rooms joined after their home trimmed its history)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{
    AppendOutcome, BoxFuture, EventLog, EventSink, Imported, LogHead, LogSettings, NewEvent, Page, Range, event_id,
    new_epoch, now_ms,
};
use crate::protocol::RoomId;
use crate::protocol::events::Event;
use crate::storage::{StorageError, WriteGate, json_record, key};

const MAX_BATCH: usize = 1024;
/// Expired transaction records deleted per sweep at most (more wait for the next batch).
const SWEEP_MAX: usize = 10_000;
/// The longest time between sweeps (shorter for a shorter `txn_ttl`).
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(600);
const TXN_EXPIRY_MARK: &[u8] = b"v\0txn-expiry";

enum Job {
    Append {
        room: RoomId,
        event: NewEvent,
        reply: oneshot::Sender<Result<AppendOutcome, StorageError>>,
    },
    Import {
        room: RoomId,
        epoch: String,
        restart_at: Option<u64>,
        events: Vec<Event>,
        reply: oneshot::Sender<Result<Imported, StorageError>>,
    },
}

impl Job {
    fn fail(self, e: StorageError) {
        match self {
            Job::Append { reply, .. } => drop(reply.send(Err(e))),
            Job::Import { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

enum Msg {
    Job(Job),
    /// Deletes a room's log, after every job sent before it.
    Purge(RoomId, oneshot::Sender<Result<bool, StorageError>>),
    /// Erases bodies of a room's events, after every job sent before it.
    Erase(RoomId, String, Vec<u64>, oneshot::Sender<Result<usize, StorageError>>),
    /// Flush and stop; answered once the last batch is on disk.
    Stop(oneshot::Sender<()>),
}

pub struct EmbeddedLog {
    tree: sled::Tree,
    db: crate::storage::Db,
    durable: Arc<Durable>,
    jobs: mpsc::UnboundedSender<Msg>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    poisoned: Arc<AtomicBool>,
}

fn ekey_prefix(room: &RoomId) -> Vec<u8> {
    let mut k = key(&[b"e", room.as_str().as_bytes()]);
    k.push(0);
    k
}

fn ekey(room: &RoomId, seq: u64) -> Vec<u8> {
    let mut k = ekey_prefix(room);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn mkey(room: &RoomId) -> Vec<u8> {
    key(&[b"m", room.as_str().as_bytes()])
}

fn tkey(room: &RoomId, device: &str, txn_id: &str) -> Vec<u8> {
    key(&[b"t", room.as_str().as_bytes(), device.as_bytes(), txn_id.as_bytes()])
}

/// The expiry index key of transaction record `tk`.
fn xkey(expires_ms: u64, tk: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + tk.len());
    k.extend_from_slice(b"x\0");
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(tk);
    k
}

/// Indexes transaction records written before the expiry index existed,
/// once, all with one expiry (stored first, so an interrupted run resumes
/// with the same keys). They are then forgotten a `txn_ttl` from now.
fn index_old_txns(tree: &sled::Tree, ttl_ms: u64) -> Result<(), StorageError> {
    let expires = match tree.get(TXN_EXPIRY_MARK)? {
        Some(v) if v.len() == 9 && v[8] == 1 => return Ok(()),
        Some(v) if v.len() >= 8 => u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        _ => {
            let e = now_ms() + ttl_ms;
            let mut v = e.to_be_bytes().to_vec();
            v.push(0);
            tree.insert(TXN_EXPIRY_MARK, v)?;
            e
        }
    };
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for item in tree.scan_prefix(b"t\0") {
        let (k, _) = item?;
        batch.insert(xkey(expires, &k), &[][..]);
        n += 1;
        if n % 10_000 == 0 {
            tree.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    let mut done = expires.to_be_bytes().to_vec();
    done.push(1);
    batch.insert(TXN_EXPIRY_MARK, done);
    tree.apply_batch(batch)?;
    if n > 0 {
        tracing::info!(records = n, "indexed transaction records for expiry");
    }
    Ok(())
}

/// Gives every room homed on `server` a new epoch, keeping its events and
/// seqs, and returns how many. For a data dir restored from a backup:
/// clients may have seen seqs past the backup's last, and the restored
/// log would issue those seqs again, to other events, under the epoch
/// the clients hold; with a new epoch a resuming client is told of a gap
/// and reads the history again. Rooms homed elsewhere keep the epoch of
/// their home server, from which they catch up.
pub fn start_new_epochs(db: &crate::storage::Db, server: &str) -> Result<usize, StorageError> {
    let tree = db.tree("events")?;
    let mut writes = sled::Batch::default();
    let mut n = 0;
    for item in tree.scan_prefix(b"m\0") {
        let (k, meta) = item?;
        let homed_here =
            std::str::from_utf8(&k[2..]).ok().and_then(|r| RoomId::parse(r).ok()).is_some_and(|r| r.server() == server);
        if !homed_here {
            continue;
        }
        // Epoch, then optionally NUL and the base seq, which stays.
        let rest = meta.iter().position(|&b| b == 0).map_or(&[][..], |i| &meta[i..]);
        let mut new = new_epoch().into_bytes();
        new.extend_from_slice(rest);
        writes.insert(k, new);
        n += 1;
    }
    db.gate().with(|| tree.apply_batch(writes))?;
    db.sync_blocking()?;
    Ok(n)
}

fn seq_of(k: &[u8]) -> u64 {
    let tail: [u8; 8] = k[k.len() - 8..].try_into().expect("event keys end in a u64");
    u64::from_be_bytes(tail)
}

/// Reads where a room's log stands, straight from the tree.
fn read_head(tree: &sled::Tree, room: &RoomId) -> Result<Option<LogHead>, StorageError> {
    let Some(meta) = tree.get(mkey(room))? else { return Ok(None) };
    let (epoch, base) = match meta.iter().position(|&b| b == 0) {
        Some(i) if meta.len() == i + 9 => (&meta[..i], u64::from_be_bytes(meta[i + 1..].try_into().expect("8 bytes"))),
        _ => (&meta[..], 0),
    };
    let epoch: Arc<str> = String::from_utf8_lossy(epoch).into();
    let prefix = ekey_prefix(room);
    let mut scan = tree.scan_prefix(&prefix);
    let first = scan.next().transpose()?.map(|(k, _)| seq_of(&k));
    let last = scan.next_back().transpose()?.map(|(k, _)| seq_of(&k));
    let (earliest, latest) = match (first, last) {
        (Some(f), Some(l)) => (f, l),
        (Some(f), None) => (f, f),
        _ => (base + 1, base),
    };
    Ok(Some(LogHead { epoch, earliest, latest }))
}

/// The last durable seq of each room written since start-up. Readers cap what
/// they return at it, so nobody sees an event before its fsync (which could
/// otherwise be lost in a crash and its seq reused). Rooms not in the map
/// were not written since start-up: all they hold is durable. A room whose
/// log is started over gets a new generation, so that a sync finishing for
/// the old log cannot raise the new one's mark.
#[derive(Default)]
struct Durable(Mutex<HashMap<RoomId, (u64, u64)>>);

impl Durable {
    fn get(&self, room: &RoomId) -> Option<u64> {
        self.0.lock().expect("durable lock").get(room).map(|d| d.1)
    }
    /// Starts a room's mark (or a new generation of it) at `seq`.
    fn reset(&self, room: &RoomId, generation: u64, seq: u64) {
        self.0.lock().expect("durable lock").insert(room.clone(), (generation, seq));
    }
    fn forget(&self, room: &RoomId) {
        self.0.lock().expect("durable lock").remove(room);
    }
    fn set(&self, room: &RoomId, generation: u64, seq: u64) {
        if let Some(d) = self.0.lock().expect("durable lock").get_mut(room)
            && d.0 == generation
        {
            d.1 = d.1.max(seq);
        }
    }
}

struct RoomState {
    epoch: Arc<str>,
    earliest: u64,
    latest: u64,
    /// Bumped whenever the log is started over (see [`Durable`]).
    generation: u64,
}

struct Writer {
    tree: sled::Tree,
    gate: WriteGate,
    durable: Arc<Durable>,
    retention: Option<u64>,
    txn_ttl_ms: u64,
    sweep_every_ms: u64,
    /// When the next sweep of expired transaction records is due (ms).
    next_sweep_ms: u64,
    rooms: HashMap<RoomId, RoomState>,
    syncer: std::sync::mpsc::Sender<ToSyncer>,
    /// Set when a sync failed: the disk may have lost acknowledged-looking
    /// writes, so the log refuses everything from then on (as databases do
    /// after a failed fsync) instead of guessing.
    poisoned: Arc<AtomicBool>,
}

enum ToSyncer {
    Batch(Vec<Committed>),
    Stop(oneshot::Sender<()>),
}

/// An event written in a batch, to mark durable and hand to the sink once synced.
struct Delivery {
    room: RoomId,
    epoch: Arc<str>,
    seq: u64,
    generation: u64,
    json: String,
}

enum Reply {
    Append(oneshot::Sender<Result<AppendOutcome, StorageError>>, AppendOutcome),
    Import(oneshot::Sender<Result<Imported, StorageError>>, Imported),
}

/// A job written to the tree, waiting for its sync.
struct Committed {
    deliveries: Vec<Delivery>,
    reply: Reply,
}

impl Committed {
    fn fail(self, e: StorageError) {
        match self.reply {
            Reply::Append(tx, _) => drop(tx.send(Err(e))),
            Reply::Import(tx, _) => drop(tx.send(Err(e))),
        }
    }
    fn answer(self) {
        match self.reply {
            Reply::Append(tx, outcome) => drop(tx.send(Ok(outcome))),
            Reply::Import(tx, imported) => drop(tx.send(Ok(imported))),
        }
    }
}

struct Syncer {
    db: crate::storage::Db,
    durable: Arc<Durable>,
    sink: Arc<dyn EventSink>,
    poisoned: Arc<AtomicBool>,
}

fn poisoned_error() -> StorageError {
    StorageError::SyncFailed("an earlier sync of the room log failed".into())
}

impl Syncer {
    fn run(self, batches: std::sync::mpsc::Receiver<ToSyncer>) {
        let mut stop = None;
        while stop.is_none() {
            let Ok(first) = batches.recv() else { break };
            let mut ready = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    ToSyncer::Batch(b) => ready.push(b),
                    ToSyncer::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
                next = batches.try_recv().ok();
            }
            self.settle(ready);
        }
        let _ = self.db.sync_blocking();
        if let Some(done) = stop {
            let _ = done.send(());
        }
    }

    /// One sync for every batch written so far, then their answers in order.
    fn settle(&self, batches: Vec<Vec<Committed>>) {
        if !self.poisoned.load(Ordering::Acquire)
            && let Err(e) = self.db.sync_blocking()
        {
            tracing::error!(error = %e, "room log sync failed; refusing further writes");
            self.poisoned.store(true, Ordering::Release);
        }
        if self.poisoned.load(Ordering::Acquire) {
            for c in batches.into_iter().flatten() {
                c.fail(poisoned_error());
            }
            return;
        }
        for d in batches.iter().flatten().flat_map(|c| &c.deliveries) {
            self.durable.set(&d.room, d.generation, d.seq);
        }
        for c in batches.into_iter().flatten() {
            for d in &c.deliveries {
                self.sink.deliver(&d.room, &d.epoch, d.seq, &d.json);
            }
            c.answer();
        }
    }
}

impl Writer {
    fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Msg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut stop = None;
        while stop.is_none() {
            let Some(first) = jobs.blocking_recv() else { break };
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Job(j) => batch.push(j),
                    Msg::Purge(room, reply) => {
                        if !batch.is_empty() {
                            self.commit(std::mem::take(&mut batch));
                        }
                        let _ = reply.send(self.purge(&room));
                    }
                    Msg::Erase(room, epoch, seqs, reply) => {
                        if !batch.is_empty() {
                            self.commit(std::mem::take(&mut batch));
                        }
                        let _ = reply.send(self.erase(&room, &epoch, &seqs));
                    }
                    Msg::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = jobs.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.sweep_if_due();
                self.commit(std::mem::take(&mut batch));
            }
        }
        // The syncer answers `stop` after a last sync of everything written.
        if let Some(done) = stop {
            let _ = self.syncer.send(ToSyncer::Stop(done));
        }
    }

    /// Deletes expired transaction records (expiry on write: nothing is
    /// written while no batch comes, so nothing grows either). Not synced: a
    /// delete lost in a crash is done again.
    fn sweep_if_due(&mut self) {
        let now = now_ms();
        if now < self.next_sweep_ms {
            return;
        }
        match self.sweep(now) {
            Ok(n) if n == SWEEP_MAX => self.next_sweep_ms = now,
            Ok(_) => self.next_sweep_ms = now + self.sweep_every_ms,
            Err(e) => {
                tracing::error!(error = %e, "cannot delete expired transaction records");
                self.next_sweep_ms = now + self.sweep_every_ms;
            }
        }
    }

    /// Deletes the room's events, transaction records (with their expiry
    /// index entries, found by a scan of the whole index) and head, and
    /// forgets its cached state.
    fn purge(&mut self, room: &RoomId) -> Result<bool, StorageError> {
        self.rooms.remove(room);
        self.durable.forget(room);
        let mut txns = key(&[b"t", room.as_str().as_bytes()]);
        txns.push(0);
        let mut writes = sled::Batch::default();
        let mut any = false;
        for item in self.tree.scan_prefix(b"x\0").keys() {
            let k = item?;
            if k.get(10..).is_some_and(|tk| tk.starts_with(&txns)) {
                writes.remove(k);
            }
        }
        for prefix in [ekey_prefix(room), txns] {
            for item in self.tree.scan_prefix(&prefix).keys() {
                writes.remove(item?);
                any = true;
            }
        }
        any |= self.tree.contains_key(mkey(room))?;
        writes.remove(mkey(room));
        self.gate.with(|| self.tree.apply_batch(writes))?;
        Ok(any)
    }

    /// Rewrites the events at `seqs` without their bodies, when the room's
    /// log is still of `epoch`. Run on the writer thread, so no trim or
    /// start-over of the room can interleave. The old value's bytes leave
    /// sled's files when sled reuses their segments, not at once.
    fn erase(&mut self, room: &RoomId, epoch: &str, seqs: &[u64]) -> Result<usize, StorageError> {
        match read_head(&self.tree, room)? {
            Some(h) if *h.epoch == *epoch => {}
            _ => return Ok(0),
        }
        let mut writes = sled::Batch::default();
        let mut n = 0;
        for &seq in seqs {
            let k = ekey(room, seq);
            let Some(v) = self.tree.get(&k)? else { continue };
            let mut event: Event = json_record("events", &v)?;
            if event.body.is_none() && event.content.redacted {
                continue;
            }
            super::redact_event(&mut event);
            writes.insert(k, serde_json::to_vec(&event).expect("events serialize"));
            n += 1;
        }
        if n > 0 {
            self.gate.with(|| self.tree.apply_batch(writes))?;
        }
        Ok(n)
    }

    fn sweep(&self, now: u64) -> Result<usize, StorageError> {
        let mut writes = sled::Batch::default();
        let mut n = 0;
        for item in self.tree.range(xkey(0, b"")..xkey(now.saturating_add(1), b"")).take(SWEEP_MAX) {
            let (k, _) = item?;
            writes.remove(&k[10..]);
            writes.remove(k);
            n += 1;
        }
        if n > 0 {
            self.gate.with(|| self.tree.apply_batch(writes))?;
        }
        Ok(n)
    }

    fn state(&mut self, room: &RoomId, writes: &mut sled::Batch) -> Result<&mut RoomState, StorageError> {
        if !self.rooms.contains_key(room) {
            let st = match read_head(&self.tree, room)? {
                Some(h) => RoomState { epoch: h.epoch, earliest: h.earliest, latest: h.latest, generation: 0 },
                None => {
                    let epoch = new_epoch();
                    writes.insert(mkey(room), epoch.as_bytes());
                    RoomState { epoch: epoch.into(), earliest: 1, latest: 0, generation: 0 }
                }
            };
            self.durable.reset(room, st.generation, st.latest);
            self.rooms.insert(room.clone(), st);
        }
        Ok(self.rooms.get_mut(room).expect("just inserted"))
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        if self.poisoned.load(Ordering::Acquire) {
            for job in jobs {
                job.fail(poisoned_error());
            }
            return;
        }
        let mut writes = sled::Batch::default();
        let mut done: Vec<Committed> = Vec::with_capacity(jobs.len());
        // Transactions decided earlier in this same batch, not yet in the tree.
        let mut pending_txns: HashMap<Vec<u8>, ([u8; 32], u64, String)> = HashMap::new();
        for job in jobs {
            // A job that fails here wrote nothing to `writes`; the rest go on.
            let prepared = match &job {
                Job::Append { room, event, .. } => self.prepare_append(room, event, &mut writes, &mut pending_txns),
                Job::Import { room, epoch, restart_at, events, .. } => {
                    self.prepare_import(room, epoch, *restart_at, events, &mut writes)
                }
            };
            match (prepared, job) {
                (Ok((deliveries, Prepared::Append(outcome))), Job::Append { reply, .. }) => {
                    done.push(Committed { deliveries, reply: Reply::Append(reply, outcome) })
                }
                (Ok((deliveries, Prepared::Import(imported))), Job::Import { reply, .. }) => {
                    done.push(Committed { deliveries, reply: Reply::Import(reply, imported) })
                }
                (Ok((_, Prepared::Append(_))), Job::Import { .. })
                | (Ok((_, Prepared::Import(_))), Job::Append { .. }) => {
                    unreachable!("a job is prepared as its own kind")
                }
                (Err(e), job) => job.fail(e),
            }
        }
        if let Err(e) = self.gate.with(|| self.tree.apply_batch(writes)) {
            // Nothing of this batch is written; forget cached counters so
            // the next batch re-reads the truth from the tree.
            self.rooms.clear();
            for c in done {
                c.fail(StorageError::Sled(e.clone()));
            }
            return;
        }
        if let Err(std::sync::mpsc::SendError(ToSyncer::Batch(done))) = self.syncer.send(ToSyncer::Batch(done)) {
            for c in done {
                c.fail(poisoned_error());
            }
        }
    }

    fn prepare_append(
        &mut self,
        room: &RoomId,
        new: &NewEvent,
        writes: &mut sled::Batch,
        pending_txns: &mut HashMap<Vec<u8>, ([u8; 32], u64, String)>,
    ) -> Result<(Vec<Delivery>, Prepared), StorageError> {
        let tk = new.txn.as_ref().map(|t| tkey(room, &t.device, &t.txn_id));
        if let (Some(tk), Some(txn)) = (&tk, &new.txn) {
            let known = match pending_txns.get(tk) {
                Some(v) => Some(v.clone()),
                None => self.tree.get(tk)?.map(|v| decode_txn(&v)).transpose()?,
            };
            if let Some((fp, seq, event_id)) = known {
                let outcome = if fp == txn.fingerprint {
                    AppendOutcome::Repeated { event_id, seq }
                } else {
                    AppendOutcome::Conflict
                };
                return Ok((Vec::new(), Prepared::Append(outcome)));
            }
        }
        let server = room.server().to_owned();
        let st = self.state(room, writes)?;
        let seq = st.latest + 1;
        let event = Event {
            event_id: event_id(room, &st.epoch, seq, &server),
            seq,
            kind: new.kind,
            sender: new.sender.clone(),
            body: new.body.clone(),
            ts: now_ms(),
            content: new.content.clone(),
        };
        let delivery = self.write_event(room, &event, writes)?;
        if let (Some(tk), Some(txn)) = (tk, &new.txn) {
            writes.insert(xkey(event.ts + self.txn_ttl_ms, &tk), &[][..]);
            writes.insert(tk.clone(), encode_txn(&txn.fingerprint, seq, &event.event_id));
            pending_txns.insert(tk, (txn.fingerprint, seq, event.event_id.clone()));
        }
        Ok((vec![delivery], Prepared::Append(AppendOutcome::Stored { event_id: event.event_id, seq })))
    }

    /// Writes the room's next event (its seq must be `latest + 1`) and trims to the retention.
    fn write_event(
        &mut self,
        room: &RoomId,
        event: &Event,
        writes: &mut sled::Batch,
    ) -> Result<Delivery, StorageError> {
        let retention = self.retention;
        let st = self.state(room, writes)?;
        let json = serde_json::to_string(event).expect("events serialize");
        writes.insert(ekey(room, event.seq), json.as_bytes());
        st.latest = event.seq;
        if st.earliest > event.seq {
            st.earliest = event.seq;
        }
        if let Some(keep) = retention {
            while st.latest - st.earliest + 1 > keep.max(1) {
                writes.remove(ekey(room, st.earliest));
                st.earliest += 1;
            }
        }
        Ok(Delivery { room: room.clone(), epoch: st.epoch.clone(), seq: event.seq, generation: st.generation, json })
    }

    fn prepare_import(
        &mut self,
        room: &RoomId,
        epoch: &str,
        restart_at: Option<u64>,
        events: &[Event],
        writes: &mut sled::Batch,
    ) -> Result<(Vec<Delivery>, Prepared), StorageError> {
        let st = self.state(room, writes)?;
        if *st.epoch != *epoch || restart_at.is_some() {
            // Start over: drop every event the log holds (the cached range
            // covers this batch's writes too), then continue from the base.
            for seq in st.earliest..=st.latest {
                writes.remove(ekey(room, seq));
            }
            let base = restart_at.unwrap_or(1).saturating_sub(1);
            let mut meta = epoch.as_bytes().to_vec();
            meta.push(0);
            meta.extend_from_slice(&base.to_be_bytes());
            writes.insert(mkey(room), meta);
            st.epoch = epoch.into();
            st.earliest = base + 1;
            st.latest = base;
            st.generation += 1;
            let generation = st.generation;
            self.durable.reset(room, generation, base);
        }
        let before = self.rooms.get(room).expect("state loaded").latest;
        let mut deliveries = Vec::new();
        let mut hole = false;
        for event in events {
            let latest = self.rooms.get(room).expect("state loaded").latest;
            if event.seq <= latest {
                continue;
            }
            if event.seq != latest + 1 {
                hole = true;
                break;
            }
            deliveries.push(self.write_event(room, event, writes)?);
        }
        let latest = self.rooms.get(room).expect("state loaded").latest;
        let written = deliveries.len();
        Ok((deliveries, Prepared::Import(Imported { before, latest, written, hole })))
    }
}

enum Prepared {
    Append(AppendOutcome),
    Import(Imported),
}

fn encode_txn(fp: &[u8; 32], seq: u64, event_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + event_id.len());
    v.extend_from_slice(fp);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(event_id.as_bytes());
    v
}

fn decode_txn(v: &[u8]) -> Result<([u8; 32], u64, String), StorageError> {
    if v.len() < 40 {
        return Err(StorageError::Corrupt { tree: "events", detail: "short txn record".into() });
    }
    let fp: [u8; 32] = v[..32].try_into().expect("length checked");
    let seq = u64::from_be_bytes(v[32..40].try_into().expect("length checked"));
    Ok((fp, seq, String::from_utf8_lossy(&v[40..]).into_owned()))
}

impl EmbeddedLog {
    /// Opens the log in `db` and starts its writer and syncer threads; the
    /// syncer feeds `sink`.
    pub fn open(
        db: &crate::storage::Db,
        sink: Arc<dyn EventSink>,
        settings: &LogSettings,
    ) -> Result<Self, StorageError> {
        let tree = db.tree("events")?;
        let txn_ttl_ms = settings.txn_ttl.as_millis() as u64;
        db.gate().with(|| index_old_txns(&tree, txn_ttl_ms))?;
        // Unbounded so that `append` can enqueue synchronously (fixing the
        // order at call time); callers bound their own in-flight appends.
        let (tx, rx) = mpsc::unbounded_channel();
        let durable = Arc::new(Durable::default());
        let poisoned = Arc::new(AtomicBool::new(false));
        let (to_syncer, batches) = std::sync::mpsc::channel();
        let syncer = Syncer { db: db.clone(), durable: durable.clone(), sink, poisoned: poisoned.clone() };
        let writer = Writer {
            tree: tree.clone(),
            gate: db.gate().clone(),
            durable: durable.clone(),
            retention: settings.retention,
            txn_ttl_ms,
            sweep_every_ms: (txn_ttl_ms / 16).clamp(10, SWEEP_EVERY_MAX.as_millis() as u64),
            next_sweep_ms: 0,
            rooms: HashMap::new(),
            syncer: to_syncer,
            poisoned: poisoned.clone(),
        };
        let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| StorageError::Thread { name, source })
        };
        let threads = vec![
            spawn("parlor-log-syncer", Box::new(move || syncer.run(batches)))?,
            spawn("parlor-log-writer", Box::new(move || writer.run(rx)))?,
        ];
        Ok(Self { tree, db: db.clone(), durable, jobs: tx, threads: Mutex::new(threads), poisoned })
    }

    /// The head as readers may see it: capped at the durable seq.
    fn durable_head(&self, room: &RoomId) -> Result<Option<LogHead>, StorageError> {
        let Some(mut head) = read_head(&self.tree, room)? else { return Ok(None) };
        if let Some(d) = self.durable.get(room) {
            head.latest = head.latest.min(d);
            head.earliest = head.earliest.min(head.latest + 1);
        }
        Ok(Some(head))
    }

    /// The durable head, or that of an empty log for a room never written
    /// (its epoch is picked by the writer at its first append).
    fn head_or_empty(&self, room: &RoomId) -> Result<LogHead, StorageError> {
        Ok(self.durable_head(room)?.unwrap_or(LogHead { epoch: "".into(), earliest: 1, latest: 0 }))
    }

    fn page(&self, room: &RoomId, range: Range, limit: usize) -> Result<Page, StorageError> {
        let head = self.head_or_empty(room)?;
        let visible_end = head.latest.saturating_add(1);
        let prefix = ekey_prefix(room);
        let decode = |item: Result<(sled::IVec, sled::IVec), sled::Error>| -> Result<Event, StorageError> {
            json_record("events", &item?.1)
        };
        let events = match range {
            Range::After(n) => {
                let start = ekey(room, n.saturating_add(1));
                let end = ekey(room, visible_end);
                if start >= end {
                    Vec::new()
                } else {
                    self.tree.range(start..end).take(limit).map(decode).collect::<Result<Vec<_>, _>>()?
                }
            }
            Range::Before(_) | Range::Latest => {
                let end = match range {
                    Range::Before(n) => ekey(room, n.min(visible_end)),
                    _ => ekey(room, visible_end),
                };
                let mut v =
                    self.tree.range(prefix..end).rev().take(limit).map(decode).collect::<Result<Vec<_>, _>>()?;
                v.reverse();
                v
            }
        };
        Ok(Page { head, events })
    }
}

impl EventLog for EmbeddedLog {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn append(&self, room: &RoomId, event: NewEvent) -> BoxFuture<'static, Result<AppendOutcome, StorageError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.jobs.send(Msg::Job(Job::Append { room: room.clone(), event, reply }));
        Box::pin(async move {
            sent.map_err(|_| StorageError::Stopped("room log writer"))?;
            rx.await.map_err(|_| StorageError::Stopped("room log writer"))?
        })
    }

    fn read<'a>(&'a self, room: &'a RoomId, range: Range, limit: usize) -> BoxFuture<'a, Result<Page, StorageError>> {
        Box::pin(async move { self.page(room, range, limit) })
    }

    fn read_epoch<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: &'a str,
        range: Range,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Page>, StorageError>> {
        // The embedded log keeps one epoch per room: it never loses data,
        // and a replica that follows its home server's new epoch drops the old.
        Box::pin(async move {
            let page = self.page(room, range, limit)?;
            Ok((!epoch.is_empty() && *page.head.epoch == *epoch).then_some(page))
        })
    }

    fn head<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<LogHead, StorageError>> {
        Box::pin(async move { self.head_or_empty(room) })
    }

    fn import(
        &self,
        room: &RoomId,
        epoch: &str,
        restart_at: Option<u64>,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Imported, StorageError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Import { room: room.clone(), epoch: epoch.to_owned(), restart_at, events, reply };
        let sent = self.jobs.send(Msg::Job(job));
        Box::pin(async move {
            sent.map_err(|_| StorageError::Stopped("room log writer"))?;
            rx.await.map_err(|_| StorageError::Stopped("room log writer"))?
        })
    }

    fn purge<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.jobs.send(Msg::Purge(room.clone(), reply)).map_err(|_| StorageError::Stopped("room log writer"))?;
            let had = rx.await.map_err(|_| StorageError::Stopped("room log writer"))??;
            self.db.sync().await?;
            Ok(had)
        })
    }

    fn erase<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: &'a str,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<usize, StorageError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let msg = Msg::Erase(room.clone(), epoch.to_owned(), seqs.to_vec(), reply);
            self.jobs.send(msg).map_err(|_| StorageError::Stopped("room log writer"))?;
            let n = rx.await.map_err(|_| StorageError::Stopped("room log writer"))??;
            if n > 0 {
                self.db.sync().await?;
            }
            Ok(n)
        })
    }

    fn archived_epochs<'a>(&'a self, _room: &'a RoomId) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        // One epoch per room (see `read_epoch`).
        Box::pin(async { Ok(Vec::new()) })
    }

    fn healthy(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { !self.jobs.is_closed() && !self.poisoned.load(Ordering::Acquire) })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (done, flushed) = oneshot::channel();
            if self.jobs.send(Msg::Stop(done)).is_ok() {
                let _ = flushed.await;
            }
            let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
            let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
        })
    }
}

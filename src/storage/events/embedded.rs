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
//! - `m` room → epoch

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{
    AppendOutcome, BoxFuture, EventLog, EventSink, LogHead, NewEvent, Page, Range, event_id, new_epoch, now_ms,
};
use crate::protocol::RoomId;
use crate::protocol::events::Event;
use crate::storage::{StorageError, json_record, key};

const MAX_BATCH: usize = 1024;

struct Job {
    room: RoomId,
    event: NewEvent,
    reply: oneshot::Sender<Result<AppendOutcome, StorageError>>,
}

enum Msg {
    Append(Job),
    /// Flush and stop; answered once the last batch is on disk.
    Stop(oneshot::Sender<()>),
}

pub struct EmbeddedLog {
    tree: sled::Tree,
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

fn seq_of(k: &[u8]) -> u64 {
    let tail: [u8; 8] = k[k.len() - 8..].try_into().expect("event keys end in a u64");
    u64::from_be_bytes(tail)
}

/// Reads where a room's log stands, straight from the tree.
fn read_head(tree: &sled::Tree, room: &RoomId) -> Result<Option<LogHead>, StorageError> {
    let Some(epoch) = tree.get(mkey(room))? else { return Ok(None) };
    let epoch: Arc<str> = String::from_utf8_lossy(&epoch).into();
    let prefix = ekey_prefix(room);
    let mut scan = tree.scan_prefix(&prefix);
    let first = scan.next().transpose()?.map(|(k, _)| seq_of(&k));
    let last = scan.next_back().transpose()?.map(|(k, _)| seq_of(&k));
    let (earliest, latest) = match (first, last) {
        (Some(f), Some(l)) => (f, l),
        (Some(f), None) => (f, f),
        _ => (1, 0),
    };
    // An empty log keeps its counter in the meta value's absence of events;
    // `latest` can only be 0 when nothing was ever appended or all was trimmed.
    Ok(Some(LogHead { epoch, earliest, latest }))
}

/// The last durable seq of each room written since start-up. Readers cap what
/// they return at it, so nobody sees an event before its fsync (which could
/// otherwise be lost in a crash and its seq reused). Rooms not in the map
/// were not written since start-up: all they hold is durable.
#[derive(Default)]
struct Durable(Mutex<HashMap<RoomId, u64>>);

impl Durable {
    fn get(&self, room: &RoomId) -> Option<u64> {
        self.0.lock().expect("durable lock").get(room).copied()
    }
    fn set(&self, room: &RoomId, seq: u64) {
        let mut m = self.0.lock().expect("durable lock");
        match m.get_mut(room) {
            Some(s) => *s = (*s).max(seq),
            None => {
                m.insert(room.clone(), seq);
            }
        }
    }
}

struct RoomState {
    epoch: Arc<str>,
    earliest: u64,
    latest: u64,
}

struct Writer {
    tree: sled::Tree,
    durable: Arc<Durable>,
    retention: Option<u64>,
    rooms: HashMap<RoomId, RoomState>,
    syncer: std::sync::mpsc::Sender<ToSyncer>,
    /// Set when a sync failed: the disk may have lost acknowledged-looking
    /// writes, so the log refuses everything from then on (as databases do
    /// after a failed fsync) instead of guessing.
    poisoned: Arc<AtomicBool>,
}

enum ToSyncer {
    Batch(Vec<Done>),
    Stop(oneshot::Sender<()>),
}

struct Syncer {
    db: crate::storage::Db,
    durable: Arc<Durable>,
    sink: Arc<dyn EventSink>,
    poisoned: Arc<AtomicBool>,
}

fn poisoned_error() -> StorageError {
    StorageError::Log("the room log could not sync to disk and refuses writes; restart the server".into())
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
    fn settle(&self, batches: Vec<Vec<Done>>) {
        if !self.poisoned.load(Ordering::Acquire) {
            if let Err(e) = self.db.sync_blocking() {
                tracing::error!(error = %e, "room log sync failed; refusing further writes");
                self.poisoned.store(true, Ordering::Release);
            }
        }
        if self.poisoned.load(Ordering::Acquire) {
            for d in batches.into_iter().flatten() {
                let _ = d.reply.send(Err(poisoned_error()));
            }
            return;
        }
        for d in batches.iter().flatten() {
            if d.json.is_some() {
                self.durable.set(&d.room, d.seq);
            }
        }
        for d in batches.into_iter().flatten() {
            if let Some(json) = &d.json {
                self.sink.deliver(&d.room, &d.epoch, d.seq, json);
            }
            let _ = d.reply.send(Ok(d.outcome));
        }
    }
}

struct Done {
    room: RoomId,
    epoch: Arc<str>,
    seq: u64,
    json: Option<String>,
    outcome: AppendOutcome,
    reply: oneshot::Sender<Result<AppendOutcome, StorageError>>,
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
                    Msg::Append(j) => batch.push(j),
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
                self.commit(std::mem::take(&mut batch));
            }
        }
        // The syncer answers `stop` after a last sync of everything written.
        if let Some(done) = stop {
            let _ = self.syncer.send(ToSyncer::Stop(done));
        }
    }

    fn state(&mut self, room: &RoomId, writes: &mut sled::Batch) -> Result<&mut RoomState, StorageError> {
        if !self.rooms.contains_key(room) {
            let st = match read_head(&self.tree, room)? {
                Some(h) => {
                    self.durable.set(room, h.latest);
                    RoomState { epoch: h.epoch, earliest: h.earliest, latest: h.latest }
                }
                None => {
                    self.durable.set(room, 0);
                    let epoch = new_epoch();
                    writes.insert(mkey(room), epoch.as_bytes());
                    RoomState { epoch: epoch.into(), earliest: 1, latest: 0 }
                }
            };
            self.rooms.insert(room.clone(), st);
        }
        Ok(self.rooms.get_mut(room).expect("just inserted"))
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        if self.poisoned.load(Ordering::Acquire) {
            for job in jobs {
                let _ = job.reply.send(Err(poisoned_error()));
            }
            return;
        }
        let mut writes = sled::Batch::default();
        let mut done: Vec<Done> = Vec::with_capacity(jobs.len());
        // Transactions decided earlier in this same batch, not yet in the tree.
        let mut pending_txns: HashMap<Vec<u8>, ([u8; 32], u64, String)> = HashMap::new();
        for job in jobs {
            // A job that fails here wrote nothing to `writes`; the rest go on.
            match self.prepare(&job, &mut writes, &mut pending_txns) {
                Ok((epoch, seq, json, outcome)) => {
                    done.push(Done { room: job.room, epoch, seq, json, outcome, reply: job.reply })
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        if let Err(e) = self.tree.apply_batch(writes) {
            // Nothing of this batch is written; forget cached counters so
            // the next batch re-reads the truth from the tree.
            self.rooms.clear();
            for d in done {
                let _ = d.reply.send(Err(StorageError::Log(e.to_string())));
            }
            return;
        }
        if let Err(std::sync::mpsc::SendError(ToSyncer::Batch(done))) = self.syncer.send(ToSyncer::Batch(done)) {
            for d in done {
                let _ = d.reply.send(Err(poisoned_error()));
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        job: &Job,
        writes: &mut sled::Batch,
        pending_txns: &mut HashMap<Vec<u8>, ([u8; 32], u64, String)>,
    ) -> Result<(Arc<str>, u64, Option<String>, AppendOutcome), StorageError> {
        let room = &job.room;
        let tk = job.event.txn.as_ref().map(|t| tkey(room, &t.device, &t.txn_id));
        if let (Some(tk), Some(txn)) = (&tk, &job.event.txn) {
            let known = match pending_txns.get(tk) {
                Some(v) => Some(v.clone()),
                None => self.tree.get(tk)?.map(|v| decode_txn(&v)).transpose()?,
            };
            if let Some((fp, seq, event_id)) = known {
                let epoch = self.state(room, writes)?.epoch.clone();
                let outcome =
                    if fp == txn.fingerprint { AppendOutcome::Repeated { event_id, seq } } else { AppendOutcome::Conflict };
                return Ok((epoch, seq, None, outcome));
            }
        }
        let server = room.server().to_owned();
        let retention = self.retention;
        let st = self.state(room, writes)?;
        let seq = st.latest + 1;
        let event = Event {
            event_id: event_id(room, &st.epoch, seq, &server),
            seq,
            kind: job.event.kind,
            sender: job.event.sender.clone(),
            body: job.event.body.clone(),
            ts: now_ms(),
        };
        let json = serde_json::to_string(&event).expect("events serialize");
        writes.insert(ekey(room, seq), json.as_bytes());
        st.latest = seq;
        if st.earliest > seq {
            st.earliest = seq;
        }
        if let Some(keep) = retention {
            while st.latest - st.earliest + 1 > keep.max(1) {
                writes.remove(ekey(room, st.earliest));
                st.earliest += 1;
            }
        }
        let epoch = st.epoch.clone();
        if let (Some(tk), Some(txn)) = (tk, &job.event.txn) {
            writes.insert(tk.clone(), encode_txn(&txn.fingerprint, seq, &event.event_id));
            pending_txns.insert(tk, (txn.fingerprint, seq, event.event_id.clone()));
        }
        Ok((epoch, seq, Some(json), AppendOutcome::Stored { event_id: event.event_id, seq }))
    }
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
    pub fn open(db: &crate::storage::Db, sink: Arc<dyn EventSink>, retention: Option<u64>) -> Result<Self, StorageError> {
        let tree = db.tree("events")?;
        // Unbounded so that `append` can enqueue synchronously (fixing the
        // order at call time); callers bound their own in-flight appends.
        let (tx, rx) = mpsc::unbounded_channel();
        let durable = Arc::new(Durable::default());
        let poisoned = Arc::new(AtomicBool::new(false));
        let (to_syncer, batches) = std::sync::mpsc::channel();
        let syncer = Syncer { db: db.clone(), durable: durable.clone(), sink, poisoned: poisoned.clone() };
        let writer = Writer {
            tree: tree.clone(),
            durable: durable.clone(),
            retention,
            rooms: HashMap::new(),
            syncer: to_syncer,
            poisoned: poisoned.clone(),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StorageError::Log(format!("cannot start the log {name}: {e}")))
        };
        let threads = vec![
            spawn("parlor-log-syncer", Box::new(move || syncer.run(batches)))?,
            spawn("parlor-log-writer", Box::new(move || writer.run(rx)))?,
        ];
        Ok(Self { tree, durable, jobs: tx, threads: Mutex::new(threads), poisoned })
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

    fn page(&self, room: &RoomId, range: Range, limit: usize) -> Result<Page, StorageError> {
        let head = self.durable_head(room)?.unwrap_or(LogHead { epoch: "".into(), earliest: 1, latest: 0 });
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
                let mut v = self.tree.range(prefix..end).rev().take(limit).map(decode).collect::<Result<Vec<_>, _>>()?;
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
        let sent = self.jobs.send(Msg::Append(Job { room: room.clone(), event, reply }));
        Box::pin(async move {
            sent.map_err(|_| StorageError::Log("the log writer has stopped".into()))?;
            rx.await.map_err(|_| StorageError::Log("the log writer has stopped".into()))?
        })
    }

    fn read<'a>(&'a self, room: &'a RoomId, range: Range, limit: usize) -> BoxFuture<'a, Result<Page, StorageError>> {
        Box::pin(async move { self.page(room, range, limit) })
    }

    fn head<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<LogHead, StorageError>> {
        Box::pin(async move {
            if let Some(h) = self.durable_head(room)? {
                return Ok(h);
            }
            // No log yet: let the writer create it, so only one thread ever
            // picks a room's epoch.
            Ok(LogHead { epoch: "".into(), earliest: 1, latest: 0 })
        })
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

//! Live delivery between processes: each process tails every feed stream
//! (`Feeds`: one on one Redis, one per slot range on a cluster) with `XREAD
//! BLOCK`, one reader per feed, and hands their entries to the local sink
//! in feed order, which is seq order per room on one Redis. On a cluster two
//! processes' entries of one room may reach its feed in the other order
//! (each writes its feed entry after its script): a session then fills the
//! hole from the room stream and skips the late entry. The read path costs
//! one `XREAD` per batch and feed however many rooms there are.
//!
//! Each feed has a connection of its own: a blocking read holds its
//! connection for the whole block, and on the shared multiplexed connection
//! it would stall other commands behind it and outlast their 1 s response
//! timeout.
//!
//! Two stages, like the embedded log's writer and syncer: the reader reads
//! and decodes batches, and the hand-out task records the rooms' marks for
//! everything read so far, syncs them once (see `highwater`), and only then
//! hands the events to the sink, in order. So a seq reaches no client before
//! this process can tell, after a crash, that it was handed out, and the
//! reader goes on reading while a sync runs: under load one sync serves many
//! batches. Both stages are tasks: handing out from a thread of its own was
//! measured to double the futex calls per send (every subscriber and append
//! woken from outside the runtime), for no gain.
//!
//! A reader that falls behind the feed's trim, or a feed lost with Redis's
//! data, costs live delivery only: sessions fill a seq hole from the room
//! stream, and a new epoch is a gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamRangeReply;
use redis::{AsyncCommands as _, RedisError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::link::Conn;
use super::replies::{FeedEntry, RawEntry, feed_batch, feed_entry, stream_id};
use crate::storage::StorageError;

pub(super) const FEED_BLOCK: Duration = Duration::from_secs(2);
const FEED_COUNT: usize = 1_024;
/// Batches read but not yet handed out, at most: the reader stays one batch
/// ahead, so that while a sync runs the next events gather in Redis and come
/// back in one `XREAD` rather than in many small ones.
const HAND_OUT_QUEUE: usize = 1;
/// How often Redis's persistence settings are read again while the feed is busy.
const DURABILITY_CHECK: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) struct FeedReader {
    shared: Arc<Shared>,
    conn: Conn,
    key: String,
    /// The id of the last entry handed out ("0-0": none).
    cursor: String,
    /// Set when the feed was found replaced under the cursor (Redis lost or
    /// rolled back its data) and is read again from its start: entries up to
    /// this id may have been handed out before, and are skipped if the
    /// rooms' marks say so.
    replay_until: Option<String>,
    stop: CancellationToken,
    hand_out: mpsc::Sender<ToHandOut>,
    durability_checked: tokio::time::Instant,
}

pub(super) enum ToHandOut {
    Batch(Vec<FeedEntry>),
    /// Answered once everything sent before it has been handed out.
    Barrier(oneshot::Sender<()>),
}

/// The queue from the feeds' readers to the one hand-out stage.
pub(super) fn hand_out_channel() -> (mpsc::Sender<ToHandOut>, mpsc::Receiver<ToHandOut>) {
    mpsc::channel(HAND_OUT_QUEUE)
}

/// The hand-out stage, to run beside the readers; it ends once they have.
pub(super) fn hand_out_task(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<ToHandOut>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    hand_out(shared, rx)
}

impl FeedReader {
    /// A reader of the feed `key` that starts after its current last entry:
    /// no append is sent before this returns, so none of this process's can
    /// be missed.
    pub async fn start(
        shared: Arc<Shared>,
        conn: Conn,
        key: String,
        hand_out: mpsc::Sender<ToHandOut>,
        stop: CancellationToken,
    ) -> Result<Self, RedisError> {
        let mut reader = Self {
            shared,
            conn,
            key,
            cursor: "0-0".into(),
            replay_until: None,
            stop,
            hand_out,
            durability_checked: tokio::time::Instant::now(),
        };
        reader.cursor = reader.tail().await?.unwrap_or_else(|| "0-0".into());
        Ok(reader)
    }

    pub async fn run(mut self) {
        let stop = self.stop.clone();
        let mut backoff = BACKOFF_MIN;
        // After an error: look at the feed again before reading on.
        let mut suspect = false;
        while !self.stop.is_cancelled() {
            if suspect {
                let checked = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = self.check() => c,
                };
                match checked {
                    Ok(()) => {
                        tracing::info!(feed = %self.key, cursor = %self.cursor, "redis feed reconnected");
                        suspect = false;
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "redis feed still unreachable");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            if self.durability_checked.elapsed() >= DURABILITY_CHECK {
                self.check_durability().await;
            }
            let got = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.read() => r,
            };
            match got {
                // Idle: make sure the feed was not replaced under us.
                Ok(Ok(batch)) if batch.is_empty() => {
                    if let Err(e) = self.check().await {
                        tracing::warn!(feed = %self.key, error = %e, "redis feed lost");
                        suspect = true;
                    }
                }
                Ok(Ok(batch)) => {
                    let entries = self.decode(batch);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        sent = self.hand_out.send(ToHandOut::Batch(entries)) => if sent.is_err() { break },
                    }
                }
                Ok(Err(e)) => {
                    // Not something to read past: sessions would miss events silently.
                    tracing::error!(error = %e, "undecodable redis feed answer; reading it again");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(BACKOFF_MAX) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(feed = %self.key, error = %e, "redis feed lost; reconnecting");
                    suspect = true;
                }
            }
        }
    }

    /// The next batch (empty when the block timed out). Parsed by
    /// `replies::feed_batch`, not redis-rs's `StreamReadReply` (why: there).
    async fn read(&mut self) -> Result<Result<Vec<RawEntry>, StorageError>, RedisError> {
        let v: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(FEED_COUNT)
            .arg("BLOCK")
            .arg(FEED_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.cursor)
            .query_async(&mut self.conn)
            .await?;
        Ok(feed_batch(v))
    }

    /// The id of the feed's last entry, if it has any.
    async fn tail(&mut self) -> Result<Option<String>, RedisError> {
        let r: StreamRangeReply = self.conn.xrevrange_count(&self.key, "+", "-", 1).await?;
        Ok(r.ids.into_iter().next().map(|e| e.id))
    }

    /// Whether Redis lost data under the cursor: the feed's last entry is
    /// below it, or the entry at the cursor is gone. Either way the rooms'
    /// marks are checked against Redis (rooms behind theirs start a new
    /// epoch), and if the feed went back it is read again from its start.
    async fn check(&mut self) -> Result<(), RedisError> {
        self.check_durability().await;
        let tail = self.tail().await?;
        let went_back = match &tail {
            None => self.cursor != "0-0",
            Some(t) => stream_id(t) < stream_id(&self.cursor),
        };
        let lost = went_back
            || (self.cursor != "0-0" && {
                let at: StreamRangeReply = self.conn.xrange(&self.key, &self.cursor, &self.cursor).await?;
                at.ids.is_empty()
            });
        if lost {
            tracing::warn!(cursor = %self.cursor, tail = ?tail, "redis lost data: checking every room's high-water mark");
        }
        if lost || self.shared.marks_unchecked.load(std::sync::atomic::Ordering::Acquire) {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Err(e) = shared.check_marks().await {
                    tracing::error!(error = %e, "cannot check the rooms' high-water marks");
                }
            });
        }
        if went_back {
            tracing::warn!(feed = %self.key, cursor = %self.cursor, tail = ?tail, "the redis feed went back; reading it from the start");
            // What was read before is handed out (and its marks recorded)
            // before the feed is read again and filtered by those marks.
            let (done, handed_out) = oneshot::channel();
            if self.hand_out.send(ToHandOut::Barrier(done)).await.is_ok() {
                let _ = handed_out.await;
            }
            self.replay_until = Some(std::mem::replace(&mut self.cursor, "0-0".into()));
        }
        Ok(())
    }

    /// Rereads Redis's persistence settings (see `highwater`); a failure is
    /// retried at the next check.
    async fn check_durability(&mut self) {
        match self.shared.check_durability().await {
            Ok(()) => self.durability_checked = tokio::time::Instant::now(),
            Err(e) => tracing::debug!(error = %e, "cannot read redis's persistence settings"),
        }
    }

    /// The batch's entries, less any handed out before the feed went back;
    /// moves the cursor past the batch.
    fn decode(&mut self, batch: Vec<RawEntry>) -> Vec<FeedEntry> {
        let last = batch.last().expect("a batch is not empty").id.clone();
        let mut entries = Vec::with_capacity(batch.len());
        for raw in batch {
            let id = raw.id.clone();
            match feed_entry(raw) {
                Ok(e) if !self.handed_out_before(&id, &e) => entries.push(e),
                Ok(_) => {}
                // Skipped, not fatal: sessions fill the hole from the room stream.
                Err(e) => tracing::error!(error = %e, "undecodable redis feed entry"),
            }
        }
        if self.replay_until.as_deref().is_some_and(|u| stream_id(&last) >= stream_id(u)) {
            self.replay_until = None;
        }
        self.cursor = last;
        entries
    }

    /// While the feed is read again after going back: whether this entry
    /// was handed out before (its room's mark covers it).
    fn handed_out_before(&self, id: &str, e: &FeedEntry) -> bool {
        let Some(until) = &self.replay_until else { return false };
        if stream_id(id) > stream_id(until) {
            return false;
        }
        match self.shared.high_water.get(&e.room) {
            Ok(Some(mark)) => mark.covers(e.generation, e.event.seq),
            Ok(None) => false,
            Err(err) => {
                tracing::error!(error = %err, "cannot read a high-water mark");
                false
            }
        }
    }
}

/// The hand-out stage: takes every batch read so far, records the rooms'
/// marks and syncs them once, then hands each event to the sink and
/// completes the appends waiting for it.
async fn hand_out(shared: Arc<Shared>, mut rx: mpsc::Receiver<ToHandOut>) {
    while let Some(first) = rx.recv().await {
        let mut batches = Vec::new();
        let mut barriers = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ToHandOut::Batch(b) => batches.push(b),
                ToHandOut::Barrier(done) => barriers.push(done),
            }
            next = rx.try_recv().ok();
        }
        hand_out_batches(&shared, batches).await;
        for done in barriers {
            let _ = done.send(());
        }
    }
    // Nobody will complete these now; let their appends return.
    shared.tickets.lock().expect("tickets lock").clear();
}

async fn hand_out_batches(shared: &Shared, batches: Vec<Vec<FeedEntry>>) {
    if let Err(e) = record(shared, &batches).await {
        // Handing these out could let a rollback reissue their seqs
        // unnoticed. The data directory refuses writes after a failed sync
        // and health says so: sessions that read the room stream later fail
        // the same way.
        tracing::error!(error = %e, "cannot record the rooms' high-water marks; events not delivered");
        return;
    }
    for e in batches.into_iter().flatten() {
        let json = serde_json::to_string(&e.event).expect("events serialize");
        shared.seen.observe_tracked(&e.room, &e.epoch, e.generation, e.event.seq);
        shared.sink.deliver(&e.room, &e.epoch, e.event.seq, &json);
        if let Some(ticket) = e.origin.strip_prefix(&shared.instance).and_then(|t| t.strip_prefix('/'))
            && let Ok(t) = ticket.parse::<u64>()
            && let Some(fed) = shared.tickets.lock().expect("tickets lock").remove(&t)
        {
            let _ = fed.send(());
        }
    }
}

/// One mark per room for the batches, then one sync for all of them.
async fn record(shared: &Shared, batches: &[Vec<FeedEntry>]) -> Result<(), StorageError> {
    let mut marks: HashMap<&crate::protocol::RoomId, (&Arc<str>, u64, u64)> = HashMap::new();
    for e in batches.iter().flatten() {
        let m = marks.entry(&e.room).or_insert((&e.epoch, e.generation, e.event.seq));
        if (e.generation, e.event.seq) > (m.1, m.2) {
            *m = (&e.epoch, e.generation, e.event.seq);
        }
    }
    for (room, (epoch, generation, seq)) in marks {
        shared.high_water.note(room, epoch, generation, seq)?;
    }
    shared.high_water.sync().await
}

//! The append path: `append` puts a job on an unbounded queue at call time
//! (which fixes the order); one writer task takes everything waiting and
//! sends it as one pipeline of `EVALSHA append` calls, one per job, so a
//! burst costs one round trip. Each call is atomic on its own (see
//! `scripts/append.lua`), so a failed one leaves nothing half-written.
//!
//! On a Redis Cluster the batch is cut by the rooms' slots, and the slots'
//! pipelines go out concurrently (each room's jobs stay in one, in order);
//! the feed entries of what was stored follow in one more pipeline, since a
//! script touches only its room's slot (see `Feeds`). A process that dies
//! between the two leaves its last events out of the feed: other processes'
//! subscribers get them with the room's next event (hole filling).

use std::sync::Arc;

use redis::{Cmd, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::link::{evalsha, storage_error};
use super::replies::{Appended, appended, script_error};
use super::{FEED_MAXLEN, Shared, cluster, hex, log_key, meta_key, push_known, txn_key};
use crate::protocol::RoomId;
use crate::storage::StorageError;
use crate::storage::events::{NewEvent, new_epoch};

const MAX_BATCH: usize = 1_024;
const MAX_BATCH_BYTES: usize = 1 << 20;

pub(super) struct Job {
    pub room: RoomId,
    pub event: NewEvent,
    pub ts: u64,
    /// `<instance>/<ticket>`: how the feed reader recognises the event as this append's.
    pub origin: String,
    pub reply: oneshot::Sender<Result<Appended, StorageError>>,
}

impl Job {
    fn size(&self) -> usize {
        self.event.body.as_ref().map_or(0, String::len) + 256
    }

    fn fail(self, e: StorageError) {
        let _ = self.reply.send(Err(e));
    }
}

pub(super) enum Msg {
    Append(Job),
    /// Answered once every job queued before it has been answered.
    Stop(oneshot::Sender<()>),
}

pub(super) struct Writer {
    pub shared: Arc<Shared>,
}

impl Writer {
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut next = Some(first);
            let mut bytes = 0;
            let mut stop = None;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(j) => {
                        bytes += j.size();
                        batch.push(j);
                    }
                    Msg::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(std::mem::take(&mut batch)).await;
            }
            if let Some(done) = stop {
                let _ = done.send(());
                return;
            }
        }
    }

    fn command(&self, job: &Job, candidate: &str) -> Result<Cmd, StorageError> {
        let room = &job.room;
        let shared = &self.shared;
        let mut cmd = evalsha(&shared.link.scripts.append, 4);
        let feed = if shared.feeds.separate { meta_key(room) } else { shared.feeds.of(room).to_owned() };
        cmd.arg(meta_key(room)).arg(log_key(room)).arg(feed);
        match &job.event.txn {
            Some(t) => cmd.arg(txn_key(room, &t.device, &t.txn_id)),
            None => cmd.arg(meta_key(room)),
        };
        cmd.arg(room.as_str());
        push_known(&mut cmd, shared.known(room)?.as_ref());
        cmd.arg(candidate).arg(shared.retention.unwrap_or(0)).arg(FEED_MAXLEN);
        match &job.event.txn {
            Some(t) => cmd.arg(hex(&t.fingerprint)),
            None => cmd.arg(""),
        };
        cmd.arg(shared.txn_ttl_secs).arg(&job.origin).arg(job.ts);
        cmd.arg("t").arg(job.event.kind.as_str()).arg("s").arg(job.event.sender.as_str());
        if let Some(body) = &job.event.body {
            cmd.arg("b").arg(body);
        }
        if !job.event.content.is_empty() {
            cmd.arg("x").arg(serde_json::to_string(&job.event.content).expect("contents serialize"));
        }
        Ok(cmd)
    }

    async fn commit(&self, jobs: Vec<Job>) {
        // One candidate serves the whole batch: the first script of a room
        // that needs a new epoch takes it, the others then find it stored.
        let candidate = new_epoch();
        if !self.shared.feeds.separate {
            return self.commit_scripts(jobs, &candidate, &mut Vec::new()).await;
        }
        let mut by_slot: Vec<(u16, Vec<Job>)> = Vec::new();
        for job in jobs {
            let slot = cluster::slot(meta_key(&job.room).as_bytes());
            match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, group)) => group.push(job),
                None => by_slot.push((slot, vec![job])),
            }
        }
        let mut feed = Vec::new();
        let groups = by_slot.into_iter().map(|(_, group)| async {
            let mut entries = Vec::new();
            self.commit_scripts(group, &candidate, &mut entries).await;
            entries
        });
        for entries in futures_util::future::join_all(groups).await {
            feed.extend(entries);
        }
        if feed.is_empty() {
            return;
        }
        // Each feed's entries together, in order; the feeds concurrently.
        feed.sort_by_key(|(feed, _)| *feed);
        let mut pipe = redis::pipe();
        for (_, cmd) in feed {
            pipe.add_command(cmd);
        }
        if let Err(e) = self.shared.link.conn().concurrently::<redis::Value>(&pipe).await {
            tracing::warn!(error = %e, "cannot write the redis feed: other processes get these events with their rooms' next");
        }
    }

    /// The feed entry of a stored append, for a feed the script does not
    /// write, with the feed's slot.
    fn feed_entry(&self, job: &Job, a: &Appended) -> (u16, Cmd) {
        let feed = self.shared.feeds.of(&job.room);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(feed).arg("MAXLEN").arg("~").arg(FEED_MAXLEN).arg("*");
        cmd.arg("r").arg(job.room.as_str()).arg("e").arg(&*a.epoch).arg("g").arg(a.generation).arg("q").arg(a.seq);
        cmd.arg("o").arg(&job.origin);
        cmd.arg("t").arg(job.event.kind.as_str()).arg("s").arg(job.event.sender.as_str());
        if let Some(body) = &job.event.body {
            cmd.arg("b").arg(body);
        }
        if !job.event.content.is_empty() {
            cmd.arg("x").arg(serde_json::to_string(&job.event.content).expect("contents serialize"));
        }
        cmd.arg("ts").arg(job.ts);
        (cluster::slot(feed.as_bytes()), cmd)
    }

    /// Runs the jobs' scripts; on a cluster, adds the feed entry of each
    /// stored one to `feed`.
    async fn commit_scripts(&self, jobs: Vec<Job>, candidate: &str, feed: &mut Vec<(u16, Cmd)>) {
        let mut pending = jobs;
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut sent = Vec::with_capacity(pending.len());
            for job in pending {
                match self.command(&job, candidate) {
                    Ok(cmd) => {
                        pipe.add_command(cmd);
                        sent.push(job);
                    }
                    Err(e) => job.fail(e),
                }
            }
            if sent.is_empty() {
                return;
            }
            let values = match self.shared.link.pipeline(&pipe).await {
                Ok(v) if v.len() == sent.len() => v,
                Ok(v) => {
                    let detail = format!("{} answers to {} appends", v.len(), sent.len());
                    return sent.into_iter().for_each(|j| j.fail(script_error("append", detail.clone())));
                }
                Err(e) => return fail_all(sent, || storage_error(&e)),
            };
            // Scripts lost (Redis restarted, or SCRIPT FLUSH): nothing ran
            // for those calls, so they are sent again once the scripts are
            // loaded — unless a later call of the batch did run (another
            // process loaded them meanwhile), which would reorder the room.
            let mut again = Vec::new();
            let mut ran_after_noscript = false;
            for (job, v) in sent.into_iter().zip(values) {
                match v {
                    Value::ServerError(se) if se.kind() == Some(ServerErrorKind::NoScript) && attempt == 0 => {
                        again.push(job)
                    }
                    Value::ServerError(se) => job.fail(storage_error(&se.into())),
                    v => {
                        ran_after_noscript |= !again.is_empty();
                        let result = appended(v).inspect(|a| self.observe(&job.room, a));
                        if let Ok(a) = &result
                            && self.shared.feeds.separate
                            && a.status == "stored"
                        {
                            feed.push(self.feed_entry(&job, a));
                        }
                        let _ = job.reply.send(result);
                    }
                }
            }
            if again.is_empty() {
                return;
            }
            if ran_after_noscript {
                let e = || StorageError::Unavailable("redis lost its scripts in the middle of a batch".into());
                return fail_all(again, e);
            }
            if let Err(e) = self.shared.link.load_scripts().await {
                return fail_all(again, || storage_error(&e));
            }
            pending = again;
        }
    }

    fn observe(&self, room: &RoomId, a: &Appended) {
        if a.status != "conflict" {
            self.shared.seen.observe(room, &a.epoch, a.generation, a.seq);
        }
    }
}

fn fail_all(jobs: Vec<Job>, error: impl Fn() -> StorageError) {
    for job in jobs {
        job.fail(error());
    }
}

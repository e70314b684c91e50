//! The bus that carries ephemeral state (typing, presence) between the
//! processes of one server: nothing here is stored. Embedded servers are one
//! process and have no bus; with `--redis` every process publishes on one
//! pub/sub channel, [`LIVE_CHANNEL`], and hears every other process on it.
//!
//! The bus carries opaque text notes in publish order; what they say is the
//! service's business (`service/live.rs`). A note published while a process
//! was not subscribed is lost to it, so every (re)subscription is announced
//! with [`BusNote::Resubscribed`] and the service asks the others to say
//! their state again.

use std::time::Duration;

use redis::Client;
use tokio::sync::{mpsc, oneshot};

use crate::storage::StorageError;
use crate::storage::events::redis::link::{Conn, Target, connect, follow_channel};

/// The channel every process of the server publishes its live notes on.
pub const LIVE_CHANNEL: &str = "parlor:live";
/// Notes waiting to be published at most; beyond it new ones are dropped
/// (ephemeral state: the next change or heartbeat says it again).
const OUTBOX_MAX: usize = 65_536;

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusNote {
    /// A note some process (maybe this one) published.
    Note(String),
    /// The subscription is (again) in place; notes published before were lost.
    Resubscribed,
}

/// What the publisher task is given.
enum Out {
    Note(String),
    /// Answered once every note queued before it was published (or failed).
    Flush(oneshot::Sender<()>),
}

/// The bus of a server with several processes.
pub struct RedisBus {
    nodes: Vec<Client>,
    outbox: mpsc::Sender<Out>,
}

impl RedisBus {
    /// Connects the publisher; [`RedisBus::subscribe`] opens the other connection.
    pub async fn open(target: &Target) -> Result<Self, StorageError> {
        let nodes = target.nodes()?;
        let conn = connect(target).await?;
        let (outbox, rx) = mpsc::channel(OUTBOX_MAX);
        tokio::spawn(publish_forever(conn, rx));
        Ok(Self { nodes, outbox })
    }

    /// Queues a note; notes are published in the order queued, many per
    /// round trip. Never waits: a full outbox drops the note.
    pub fn publish(&self, note: String) {
        if self.outbox.try_send(Out::Note(note)).is_err() {
            tracing::warn!("live bus outbox full or closed; a note was dropped");
        }
    }

    /// Waits (at most `within`) until every note queued so far is published:
    /// a process that stops says its last notes before it goes.
    pub async fn flush(&self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        let _ = tokio::time::timeout(within, async {
            if self.outbox.send(Out::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
        .await;
    }

    /// Every note on the channel (this process's own included), until the
    /// receiver is dropped.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<BusNote> {
        let (tx, rx) = mpsc::unbounded_channel();
        let note = |payload: &str| Some(BusNote::Note(payload.to_owned()));
        tokio::spawn(follow_channel(
            self.nodes.clone(),
            LIVE_CHANNEL,
            LIVE_CHANNEL,
            tx,
            || BusNote::Resubscribed,
            note,
        ));
        rx
    }
}

/// Publishes queued notes in order, one pipeline per batch waiting.
async fn publish_forever(conn: Conn, mut rx: mpsc::Receiver<Out>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        let mut flushes = Vec::new();
        for out in batch.drain(..) {
            match out {
                Out::Note(note) => {
                    pipe.cmd("PUBLISH").arg(LIVE_CHANNEL).arg(note).ignore();
                }
                Out::Flush(done) => flushes.push(done),
            }
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn.clone()).await {
            // Ephemeral: the next change or heartbeat carries the state again.
            tracing::debug!(error = %e, "cannot publish live notes");
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

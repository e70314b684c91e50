//! The outgoing side of ephemeral federation (spec §11.7): typing, read
//! marks and presence of this server's users, pushed to the other servers
//! with members in the rooms concerned. None of it is in a room log, so
//! none of it is backfilled: what a server misses stays missed (typing
//! lapses anyway; a read mark is said again when it next moves).
//!
//! Cost stays flat however busy the clients are: `service::live` hands over
//! a user's typing at most once per its publish gap per room, and only on
//! the process that received the client's frames (so several processes on
//! one Redis send each change once, not once each). Here each destination
//! has one outbox that keeps only the latest state per (room, user) for
//! typing and receipts and per user for presence, and one task that sends
//! it at most once per [`SEND_GAP`] in one request, so a client toggling
//! typing a thousand times a second costs each other server at most a few
//! requests a second, whatever the number of users.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::{Failure, Federation, RETRY_MIN};
use crate::protocol::federation::{
    EPHEMERAL_ITEMS_MAX, FEDERATION_PREFIX, FedEphemeral, FedMethod, FedPresence, FedReceipt, FedTyping,
};
use crate::protocol::rooms::Presence;
use crate::protocol::{RoomId, UserId};

/// The shortest time between two ephemeral pushes to one server.
pub const SEND_GAP: Duration = Duration::from_millis(250);
/// Changes waiting for the router at most; past it they are dropped.
pub(super) const EPHEMERAL_FEED_CAPACITY: usize = 16_384;
/// Entries one server's outbox holds at most; past it new ones are dropped
/// (the oldest pending state of each key is already coalesced).
const OUTBOX_MAX: usize = 10_000;

/// A change of one of this server's users that other servers are told of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ephemeral {
    Typing { room: RoomId, user: UserId, typing: bool },
    Receipt { room: RoomId, user: UserId, seq: u64 },
    Presence { user: UserId, presence: Presence },
}

/// What waits for one server: the latest state of each key.
#[derive(Default)]
struct Outbox {
    typing: BTreeMap<(RoomId, UserId), bool>,
    receipts: BTreeMap<(RoomId, UserId), u64>,
    presence: BTreeMap<UserId, Presence>,
}

impl Outbox {
    fn len(&self) -> usize {
        self.typing.len() + self.receipts.len() + self.presence.len()
    }

    fn put(&mut self, e: &Ephemeral) {
        let full = self.len() >= OUTBOX_MAX;
        match e {
            Ephemeral::Typing { room, user, typing } => {
                let key = (room.clone(), user.clone());
                if !full || self.typing.contains_key(&key) {
                    self.typing.insert(key, *typing);
                }
            }
            Ephemeral::Receipt { room, user, seq } => {
                let key = (room.clone(), user.clone());
                if !full || self.receipts.contains_key(&key) {
                    let s = self.receipts.entry(key).or_default();
                    *s = (*s).max(*seq);
                }
            }
            Ephemeral::Presence { user, presence } => {
                if !full || self.presence.contains_key(user) {
                    self.presence.insert(user.clone(), *presence);
                }
            }
        }
    }

    /// Takes at most [`EPHEMERAL_ITEMS_MAX`] items out, as one request's body.
    fn take(&mut self) -> FedEphemeral {
        let mut out = FedEphemeral::default();
        while out.len() < EPHEMERAL_ITEMS_MAX
            && let Some(((room_id, user_id), typing)) = self.typing.pop_first()
        {
            out.typing.push(FedTyping { room_id, user_id, typing });
        }
        while out.len() < EPHEMERAL_ITEMS_MAX
            && let Some(((room_id, user_id), seq)) = self.receipts.pop_first()
        {
            out.receipts.push(FedReceipt { room_id, user_id, seq });
        }
        while out.len() < EPHEMERAL_ITEMS_MAX
            && let Some((user_id, presence)) = self.presence.pop_first()
        {
            out.presence.push(FedPresence { user_id, presence });
        }
        out
    }

    /// Puts back what a failed request held and was not superseded since,
    /// but typing, which is stale by the time a retry could bring it.
    fn put_back(&mut self, sent: FedEphemeral) {
        for r in sent.receipts {
            self.put(&Ephemeral::Receipt { room: r.room_id, user: r.user_id, seq: r.seq });
        }
        for p in sent.presence {
            self.presence.entry(p.user_id).or_insert(p.presence);
        }
    }
}

/// One server's outbox and the task that sends it.
pub(super) struct EphemeralDest {
    outbox: Mutex<Outbox>,
    work: Notify,
}

impl Federation {
    /// Tells the other servers that share a room with one of this server's
    /// users what they are doing. Never waits: when the router's input is
    /// full the change is dropped. Changes of other servers' users (applied
    /// here from their own server) are not passed on.
    pub fn ephemeral(&self, e: Ephemeral) {
        let user = match &e {
            Ephemeral::Typing { user, .. } | Ephemeral::Receipt { user, .. } | Ephemeral::Presence { user, .. } => user,
        };
        if user.server() != self.server_name.as_str() {
            return;
        }
        if self.ephemeral_feed.try_send(e).is_err() {
            tracing::debug!("the ephemeral router is behind; a typing, receipt or presence change is not pushed");
        }
    }

    /// Tells one server the presence of one of this server's users, now
    /// (a server that just got a member in a room the user is in).
    pub fn presence_to(self: &Arc<Self>, server: &str, user: &UserId, presence: Presence) {
        if user.server() != self.server_name.as_str() || server == self.server_name.as_str() {
            return;
        }
        let mut dests = self.ephemeral_dests.lock().expect("ephemeral lock");
        let d = self.ephemeral_dest(&mut dests, server);
        d.outbox.lock().expect("outbox lock").put(&Ephemeral::Presence { user: user.clone(), presence });
        d.work.notify_one();
    }

    /// Puts each change in the outbox of each server it concerns.
    pub(super) async fn route_ephemeral(self: Arc<Self>, mut rx: mpsc::Receiver<Ephemeral>) {
        loop {
            let e = tokio::select! {
                e = rx.recv() => match e { Some(e) => e, None => return },
                _ = self.stop.cancelled() => return,
            };
            let servers = match &e {
                Ephemeral::Typing { room, .. } | Ephemeral::Receipt { room, .. } => {
                    self.participants(room).await.as_ref().clone()
                }
                Ephemeral::Presence { user, .. } => self.servers_sharing_a_room(user).await,
            };
            if servers.is_empty() {
                continue;
            }
            let mut dests = self.ephemeral_dests.lock().expect("ephemeral lock");
            for server in servers {
                let d = self.ephemeral_dest(&mut dests, &server);
                d.outbox.lock().expect("outbox lock").put(&e);
                d.work.notify_one();
            }
        }
    }

    /// The other servers with members in any room the user is in.
    async fn servers_sharing_a_room(&self, user: &UserId) -> Vec<String> {
        let rooms = match self.directory.rooms_of(user.as_str()).await {
            Ok(r) => r,
            Err(e) => {
                // `live` warns of the same read failing for its own delivery.
                tracing::debug!(%user, error = %e, "cannot read a user's rooms to tell other servers of their presence");
                return Vec::new();
            }
        };
        let mut servers = Vec::new();
        for rec in rooms {
            let Ok(room) = RoomId::parse(&rec.room_id) else { continue };
            servers.extend(self.participants(&room).await.iter().cloned());
        }
        servers.sort();
        servers.dedup();
        servers
    }

    fn ephemeral_dest(
        self: &Arc<Self>,
        dests: &mut HashMap<String, Arc<EphemeralDest>>,
        name: &str,
    ) -> Arc<EphemeralDest> {
        if let Some(d) = dests.get(name) {
            return d.clone();
        }
        let d = Arc::new(EphemeralDest { outbox: Mutex::new(Outbox::default()), work: Notify::new() });
        dests.insert(name.to_owned(), d.clone());
        let (fed, dest, name) = (self.clone(), d.clone(), name.to_owned());
        self.tasks.spawn(async move { fed.ephemeral_loop(name, dest).await });
        d
    }

    /// Sends one server's outbox whenever it holds something, at most once
    /// per [`SEND_GAP`]; while it fails, backs off as pushes do.
    async fn ephemeral_loop(self: Arc<Self>, server: String, d: Arc<EphemeralDest>) {
        let mut backoff = RETRY_MIN;
        loop {
            let body = d.outbox.lock().expect("outbox lock").take();
            if body.is_empty() {
                tokio::select! {
                    _ = d.work.notified() => continue,
                    _ = self.stop.cancelled() => return,
                }
            }
            let wait = match self.send_ephemeral(&server, &body).await {
                Ok(()) => {
                    backoff = RETRY_MIN;
                    SEND_GAP
                }
                Err(Failure::Refused(status @ (400 | 413), err)) => {
                    tracing::warn!(%server, status, errcode = %err.errcode, error = %err.error, "ephemeral push refused; dropped");
                    SEND_GAP
                }
                Err(e) => {
                    tracing::debug!(%server, error = ?e, "ephemeral push failed; will retry");
                    d.outbox.lock().expect("outbox lock").put_back(body);
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.settings.retry_max.max(RETRY_MIN));
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    async fn send_ephemeral(&self, server: &str, body: &FedEphemeral) -> Result<(), Failure> {
        match self.is_denied(server).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(Failure::Unreachable(format!("the deny list cannot be read: {e}"))),
        }
        let n = self.txn_counter.fetch_add(1, Ordering::Relaxed);
        let path = format!("{FEDERATION_PREFIX}/ephemeral/{:x}.{n:x}", self.started_ms);
        let bytes = serde_json::to_vec(body).expect("ephemeral pushes serialize");
        let _permit = self.push_permits.acquire().await;
        self.call(server, FedMethod::Put, &path, bytes).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_keeps_the_latest_state_of_each_key() {
        let (room, ann) = (RoomId::parse("!r:x").unwrap(), UserId::parse("@ann:x").unwrap());
        let mut o = Outbox::default();
        for i in 0..1000 {
            o.put(&Ephemeral::Typing { room: room.clone(), user: ann.clone(), typing: i % 2 == 0 });
        }
        o.put(&Ephemeral::Receipt { room: room.clone(), user: ann.clone(), seq: 7 });
        o.put(&Ephemeral::Receipt { room: room.clone(), user: ann.clone(), seq: 5 });
        o.put(&Ephemeral::Presence { user: ann.clone(), presence: Presence::Online });
        let body = o.take();
        assert_eq!(body.typing, vec![FedTyping { room_id: room.clone(), user_id: ann.clone(), typing: false }]);
        assert_eq!(body.receipts, vec![FedReceipt { room_id: room.clone(), user_id: ann.clone(), seq: 7 }]);
        assert_eq!(body.presence.len(), 1);
        assert_eq!(o.len(), 0);
        // A failed send puts receipts and presence back, not typing, and
        // never over a newer state.
        o.put(&Ephemeral::Presence { user: ann.clone(), presence: Presence::Offline });
        o.put_back(body);
        let again = o.take();
        assert!(again.typing.is_empty());
        assert_eq!(again.receipts[0].seq, 7);
        assert_eq!(again.presence[0].presence, Presence::Offline);
    }

    #[test]
    fn a_full_outbox_takes_no_new_keys_and_a_request_is_bounded() {
        let mut o = Outbox::default();
        let room = RoomId::parse("!r:x").unwrap();
        for i in 0..OUTBOX_MAX + 10 {
            let user = UserId::parse(&format!("@u{i}:x")).unwrap();
            o.put(&Ephemeral::Receipt { room: room.clone(), user, seq: 1 });
        }
        assert_eq!(o.len(), OUTBOX_MAX);
        assert_eq!(o.take().len(), EPHEMERAL_ITEMS_MAX);
        assert_eq!(o.len(), OUTBOX_MAX - EPHEMERAL_ITEMS_MAX);
    }
}

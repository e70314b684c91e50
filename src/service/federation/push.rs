//! The push side of federation (home server): the router that takes each
//! durable event of a local room off the room log's delivery path, the
//! per-room queues of events waiting to be pushed, and one pusher task per
//! remote server.
//!
//! Each local room with members elsewhere has one queue, shared by all its
//! servers: an event is encoded and queued once, whatever the number of
//! servers, and each server has a cursor into the queue of each room it
//! shares. A queue keeps the newest `queue_max` events (and at most
//! [`QUEUE_BYTES_MAX`]); a server further behind skips to the oldest kept,
//! and the seq of what it is pushed next shows it what it lacks (it
//! backfills, §11.4). A cursor moves only when the receiver answered 200, so
//! a failed transaction is simply read again.
//!
//! Several processes of one server (`--redis`) all see every event (the
//! room log's feed) and all queue it, but only the holder of a server's
//! push lease pushes to it; it renews the lease before each transaction.
//! The others keep only the newest event of each room pending and ask for
//! the lease every [`LEASE_RETRY`]: when the holder dies (or idles past its
//! lease), the next one to get the lease pushes those newest events, which
//! the receiver already has (an import skips them) or learns from what it
//! lacks (it backfills).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::{
    DestinationStats, Failure, Federation, IDLE_FORGET, LEASE_RETRY, MEMBERSHIP_SETTLE, PUSH_BATCH_MAX, PUSH_LEASE,
    PUSH_TXN_BYTES, QUEUE_BYTES_MAX, RETRY_MIN, Stats,
};
use crate::protocol::events::Event;
use crate::protocol::federation::{FEDERATION_PREFIX, FedEventOut, FedMethod, FedTransactionOut};
use crate::protocol::{RoomId, UserId};

/// The JSON around a transaction's events: `{"events":[]}`.
const TXN_OVERHEAD: usize = r#"{"events":[]}"#.len();

/// One event on its way to the router.
pub(super) struct Routed {
    room: RoomId,
    epoch: Arc<str>,
    json: String,
    /// The newest event of a room at start-up, not a new one: queued only
    /// when the room's queue is empty.
    seed: bool,
    /// The server of the user an `invite`, `kick` or `ban` is about, when
    /// it is another server: it is pushed this event even when it has no
    /// members in the room (an invitee's server learns of the invite; a
    /// kicked user's server of the kick that may have removed its last member).
    target_server: Option<String>,
}

/// The server of the `target` of an `invite`, `kick` or `ban` event, when
/// that is not `own`. Events are serialized by serde, so only the event's
/// own fields can match the quick check.
fn target_server(event_json: &str, own: &str) -> Option<String> {
    let types = [r#""type":"invite""#, r#""type":"kick""#, r#""type":"ban""#];
    if !types.iter().any(|t| event_json.contains(t)) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Head {
        target: Option<UserId>,
    }
    let target = serde_json::from_str::<Head>(event_json).ok()?.target?;
    (target.server() != own).then(|| target.server().to_owned())
}

/// An event encoded for pushing (a `FedEvent`), shared by every server.
pub(super) struct Item {
    json: Box<RawValue>,
}

impl Item {
    fn len(&self) -> usize {
        self.json.get().len()
    }
}

/// The events of one room waiting to be pushed: `items[i]` is event number
/// `base + i` of the queue (not its seq: a queue numbers what it was given).
pub(super) struct RoomQueue {
    base: u64,
    pub(super) items: VecDeque<Arc<Item>>,
    bytes: usize,
    /// The room's other servers, as the router last saw them.
    servers: Arc<Vec<String>>,
    /// Servers not (or no longer) in `servers` that are still pushed the
    /// events numbered below the given one: those queued while they had
    /// members in the room (a server whose last member was kicked gets the
    /// kick), or one event about a user of theirs (an invite).
    linger: HashMap<String, u64>,
}

impl RoomQueue {
    /// Where `server`'s pushes of this room end (exclusive).
    fn end_for(&self, server: &str) -> u64 {
        match self.servers.iter().any(|s| s == server) {
            true => self.head(),
            false => self.linger.get(server).copied().unwrap_or(0).min(self.head()),
        }
    }
}

impl RoomQueue {
    /// The number the next event will get.
    pub(super) fn head(&self) -> u64 {
        self.base + self.items.len() as u64
    }
}

/// One remote server as the push side sees it.
pub(super) struct Dest {
    name: String,
    /// Something was queued.
    work: Notify,
    /// It was heard from: try again now.
    kick: Notify,
    state: Mutex<DestState>,
}

#[derive(Default)]
struct DestState {
    /// Per room it shares: the number of the next event to push to it.
    cursors: HashMap<RoomId, u64>,
    /// Pushes to it have failed since then (tokio's clock, which tests can pause).
    failing_since: Option<tokio::time::Instant>,
    /// Dropped from push sets: nothing is pushed to it; it is probed.
    down: bool,
    /// Heard from since its pusher last looked: retry at once.
    kicked: bool,
    /// How long its pusher waits before the next attempt (zero while pushes
    /// succeed; the probe interval while it is dropped).
    backoff: Duration,
}

/// A transaction read from the queues: its events, and where the cursors go
/// once it is taken.
struct Batch {
    items: Vec<Arc<Item>>,
    cursors: Vec<(RoomId, u64)>,
}

impl Federation {
    /// The other servers with members in a local room, if known and settled.
    fn cached_participants(&self, room: &RoomId) -> Option<Arc<Vec<String>>> {
        self.participants.read().expect("participants lock").get(room).cloned()
    }

    /// The other servers with members in a local room.
    pub(super) async fn participants(&self, room: &RoomId) -> Arc<Vec<String>> {
        if let Some(p) = self.cached_participants(room) {
            return p;
        }
        let mut servers: Vec<String> = match self.directory.members(room.as_str()).await {
            Ok(m) => m.iter().filter_map(|u| UserId::parse(u).ok()).map(|u| u.server().to_owned()).collect(),
            Err(e) => {
                tracing::error!(error = %e, %room, "cannot read the room's members for federation");
                Vec::new()
            }
        };
        servers.retain(|s| s != self.server_name.as_str());
        servers.sort();
        servers.dedup();
        let p = Arc::new(servers);
        let mut cache = self.participants.write().expect("participants lock");
        // Cached only once settled: while a membership change is recent, the
        // directory read above may predate its write (and the change may have
        // been noted while this read was under way), so every use reads again.
        let unsettled = self.unsettled.lock().expect("unsettled lock").get(room).is_some_and(|u| *u > Instant::now());
        if !unsettled {
            cache.insert(room.clone(), p.clone());
        }
        p
    }

    /// The room's membership changed (here, or on another process: its join
    /// or leave event came through the room log's feed): recompute its
    /// servers on next use, and keep recomputing them for
    /// [`MEMBERSHIP_SETTLE`], in which the directory may not show it yet.
    pub fn membership_changed(&self, room: &RoomId) {
        let now = Instant::now();
        {
            let mut u = self.unsettled.lock().expect("unsettled lock");
            u.retain(|_, until| *until > now);
            u.insert(room.clone(), now + MEMBERSHIP_SETTLE);
        }
        self.participants.write().expect("participants lock").remove(room);
    }

    /// A durable event of a room. Called on the room log's delivery path, in
    /// seq order: it never blocks and never waits. A room homed here that
    /// may have other servers in it goes to the router; when the router's
    /// input is full the event is not pushed (counted), and receivers get it
    /// by backfill when they see the next one.
    pub fn on_event(&self, room: &RoomId, epoch: &Arc<str>, event_json: &str) {
        if room.server() != self.server_name.as_str() {
            return;
        }
        // Events are serialized by serde: a quote inside a body is escaped,
        // so only an event's own type field can match.
        let membership = [r#""type":"join""#, r#""type":"leave""#, r#""type":"kick""#, r#""type":"ban""#];
        if membership.iter().any(|t| event_json.contains(t)) {
            self.membership_changed(room);
        }
        let target_server = target_server(event_json, self.server_name.as_str());
        if target_server.is_none() && self.cached_participants(room).is_some_and(|p| p.is_empty()) {
            return;
        }
        let routed = Routed {
            room: room.clone(),
            epoch: epoch.clone(),
            json: event_json.to_owned(),
            seed: false,
            target_server,
        };
        if self.feed.try_send(routed).is_err() {
            self.counters.dropped_feed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The newest event of a local room, at start-up: every server with
    /// members in it is sent it, so that each learns at once what it lacks
    /// (what was queued before a restart is not kept).
    pub fn seed(&self, room: &RoomId, epoch: &str, event: &Event) {
        let json = serde_json::to_string(event).expect("events serialize");
        let routed = Routed { room: room.clone(), epoch: epoch.into(), json, seed: true, target_server: None };
        if self.feed.try_send(routed).is_err() {
            self.counters.dropped_feed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) async fn route(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<Routed>) {
        loop {
            let routed = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                _ = self.stop.cancelled() => return,
            };
            self.route_one(routed).await;
        }
    }

    /// Encodes one event once, queues it in its room's queue, and wakes the
    /// room's servers' pushers (giving a cursor to a server new in the room).
    async fn route_one(self: &Arc<Self>, r: Routed) {
        let servers = self.participants(&r.room).await;
        let target = r.target_server.filter(|t| !servers.contains(t));
        let mut queues = self.queues.lock().expect("queues lock");
        let lingering = |q: &RoomQueue| q.linger.values().any(|end| *end > q.base);
        if servers.is_empty() && target.is_none() && !queues.get(&r.room).is_some_and(lingering) {
            if queues.remove(&r.room).is_some() {
                drop(queues);
                // A queue made again numbers from 0: no server may keep a
                // cursor into this one (it would wait for that number).
                for d in self.dests.lock().expect("dests lock").values() {
                    d.state.lock().expect("dest lock").cursors.remove(&r.room);
                }
            }
            return;
        }
        if r.seed && queues.get(&r.room).is_some_and(|q| !q.items.is_empty()) {
            return;
        }
        let encoded = RawValue::from_string(r.json).and_then(|event| {
            serde_json::to_string(&FedEventOut { room_id: &r.room, epoch: &r.epoch, event: &event })
                .and_then(RawValue::from_string)
        });
        let item = match encoded {
            Ok(json) => Item { json },
            Err(e) => {
                tracing::error!(room = %r.room, error = %e, "an event of the room log is not JSON; not pushed");
                return;
            }
        };
        if TXN_OVERHEAD + item.len() > PUSH_TXN_BYTES {
            // Too large for any transaction: receivers backfill it when they
            // see the event after it.
            self.counters.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let q = queues.entry(r.room.clone()).or_insert_with(|| RoomQueue {
            base: 0,
            items: VecDeque::new(),
            bytes: 0,
            servers: Arc::new(Vec::new()),
            linger: HashMap::new(),
        });
        let number = q.head();
        q.bytes += item.len();
        q.items.push_back(Arc::new(item));
        while q.items.len() > 1 && (q.items.len() > self.settings.queue_max || q.bytes > QUEUE_BYTES_MAX) {
            let old = q.items.pop_front().expect("an item");
            q.bytes -= old.len();
            q.base += 1;
        }
        let joined = !Arc::ptr_eq(&q.servers, &servers);
        if joined {
            // A server that had members until now is still pushed what was
            // queued while it had (the event that removed its last member
            // among them); one back in the room needs no lingering.
            for gone in q.servers.iter().filter(|s| !servers.contains(s)) {
                q.linger.insert(gone.clone(), number);
            }
            q.linger.retain(|s, end| !servers.contains(s) && *end > q.base);
        }
        if let Some(t) = &target {
            q.linger.insert(t.clone(), number + 1);
        }
        q.servers = servers.clone();
        drop(queues);
        let mut dests = self.dests.lock().expect("dests lock");
        for server in servers.iter() {
            let (d, new) = self.dest(&mut dests, server);
            if joined || new || r.seed {
                d.state.lock().expect("dest lock").cursors.entry(r.room.clone()).or_insert(number);
            }
            d.work.notify_one();
        }
        if let Some(t) = &target {
            let (d, _) = self.dest(&mut dests, t);
            d.state.lock().expect("dest lock").cursors.entry(r.room.clone()).or_insert(number);
            d.work.notify_one();
        }
    }

    /// The push state of `name`, made (with its pusher) when new; and whether it is.
    fn dest(self: &Arc<Self>, dests: &mut HashMap<String, Arc<Dest>>, name: &str) -> (Arc<Dest>, bool) {
        if let Some(d) = dests.get(name) {
            return (d.clone(), false);
        }
        let d = Arc::new(Dest {
            name: name.to_owned(),
            work: Notify::new(),
            kick: Notify::new(),
            state: Mutex::new(DestState::default()),
        });
        dests.insert(name.to_owned(), d.clone());
        let (fed, pusher) = (self.clone(), d.clone());
        self.tasks.spawn(async move { fed.push_loop(pusher).await });
        (d, true)
    }

    /// Reads the next transaction for `d` from the queues of the rooms it
    /// shares (it moves no cursor, but those that fell behind a queue's
    /// oldest event, which skip to it). Forgets rooms it no longer shares.
    fn take_batch(&self, d: &Dest) -> Batch {
        let mut st = d.state.lock().expect("dest lock");
        let queues = self.queues.lock().expect("queues lock");
        let mut batch = Batch { items: Vec::new(), cursors: Vec::new() };
        let mut bytes = TXN_OVERHEAD;
        let name = &d.name;
        st.cursors.retain(|room, cursor| {
            queues.get(room).is_some_and(|q| *cursor < q.end_for(name) || q.servers.contains(name))
        });
        'rooms: for (room, cursor) in st.cursors.iter_mut() {
            let q = &queues[room];
            if *cursor < q.base {
                self.counters.dropped_overflow.fetch_add(q.base - *cursor, Ordering::Relaxed);
                *cursor = q.base;
            }
            let mut next = *cursor;
            let end = q.end_for(name);
            while next < end {
                if batch.items.len() == PUSH_BATCH_MAX {
                    break;
                }
                let item = &q.items[(next - q.base) as usize];
                if bytes + item.len() + 1 > PUSH_TXN_BYTES {
                    if next > *cursor {
                        batch.cursors.push((room.clone(), next));
                    }
                    break 'rooms;
                }
                bytes += item.len() + 1;
                batch.items.push(item.clone());
                next += 1;
            }
            if next > *cursor {
                batch.cursors.push((room.clone(), next));
            }
            if batch.items.len() == PUSH_BATCH_MAX {
                break;
            }
        }
        batch
    }

    /// The receiver took a transaction: its rooms' cursors move past it.
    fn commit(&self, d: &Dest, batch: &Batch) {
        let mut st = d.state.lock().expect("dest lock");
        for (room, next) in &batch.cursors {
            if let Some(c) = st.cursors.get_mut(room) {
                *c = (*c).max(*next);
            }
        }
    }

    /// Sends one transaction (or, with no events, a probe).
    async fn push(&self, server: &str, events: &[Arc<Item>]) -> Result<(), Failure> {
        // A denied server gets nothing; its events count as sent (once
        // allowed again, it backfills what it missed). When the deny list
        // cannot be read, nothing is sent either: the push is retried.
        match self.is_denied(server).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(Failure::Unreachable(format!("the deny list cannot be read: {e}"))),
        }
        let items: Vec<&RawValue> = events.iter().map(|i| &*i.json).collect();
        let body = serde_json::to_vec(&FedTransactionOut { events: &items }).expect("transactions serialize");
        let n = self.txn_counter.fetch_add(1, Ordering::Relaxed);
        let path = format!("{FEDERATION_PREFIX}/send/{:x}.{n:x}", self.started_ms);
        self.call(server, FedMethod::Put, &path, body).await.map(drop)
    }

    /// Pushes one server's events, oldest first, in transactions; backs off
    /// while it fails, drops it from push sets after `give_up`, then probes it.
    async fn push_loop(self: Arc<Self>, d: Arc<Dest>) {
        let mut backoff = RETRY_MIN;
        loop {
            let down = {
                let mut st = d.state.lock().expect("dest lock");
                if std::mem::take(&mut st.kicked) {
                    backoff = RETRY_MIN;
                }
                st.down
            };
            if down {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.retry_max) => {}
                    _ = d.kick.notified() => {}
                    _ = self.stop.cancelled() => return,
                }
                if !d.state.lock().expect("dest lock").down {
                    continue;
                }
                if !self.participates(&d.name) && self.forget(&d, true) {
                    return;
                }
                let result = {
                    let Some(_permit) = self.permit().await else { return };
                    self.push(&d.name, &[]).await
                };
                match result {
                    Ok(()) => self.revive(&d),
                    Err(e) => tracing::debug!(server = %d.name, error = ?e, "federation probe failed"),
                }
                continue;
            }
            let batch = self.take_batch(&d);
            if batch.items.is_empty() {
                tokio::select! {
                    _ = d.work.notified() => {}
                    _ = d.kick.notified() => {}
                    _ = tokio::time::sleep(IDLE_FORGET) => if self.forget(&d, false) { return },
                    _ = self.stop.cancelled() => return,
                }
                continue;
            }
            match self.leases.hold(&d.name, &self.holder, PUSH_LEASE).await {
                Ok(true) => {}
                held => {
                    if let Err(e) = held {
                        tracing::debug!(server = %d.name, error = %e, "cannot ask for the push lease; will retry");
                    }
                    self.leave_to_holder(&d);
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_RETRY) => {}
                        _ = self.stop.cancelled() => return,
                    }
                    continue;
                }
            }
            let result = {
                let Some(_permit) = self.permit().await else { return };
                self.push(&d.name, &batch.items).await
            };
            match result {
                Ok(()) => {
                    backoff = RETRY_MIN;
                    self.commit(&d, &batch);
                    let mut st = d.state.lock().expect("dest lock");
                    st.failing_since = None;
                    st.backoff = Duration::ZERO;
                }
                Err(Failure::Refused(status @ (400 | 413), err)) => {
                    // It is up, and will never take these: skip them (it
                    // backfills them) rather than retry forever.
                    tracing::warn!(server = %d.name, status, errcode = %err.errcode, error = %err.error, "federation push refused; skipped");
                    self.counters.dropped_refused.fetch_add(batch.items.len() as u64, Ordering::Relaxed);
                    self.commit(&d, &batch);
                    d.state.lock().expect("dest lock").failing_since = None;
                }
                Err(e) => {
                    let went_down = {
                        let mut st = d.state.lock().expect("dest lock");
                        let since = *st.failing_since.get_or_insert_with(tokio::time::Instant::now);
                        st.down = since.elapsed() >= self.settings.give_up;
                        st.backoff = if st.down { self.settings.retry_max } else { backoff };
                        st.down
                    };
                    if went_down {
                        tracing::warn!(server = %d.name, after = ?self.settings.give_up, error = ?e, "a server kept failing; dropped from push sets until it is back");
                        continue;
                    }
                    tracing::debug!(server = %d.name, error = ?e, "federation push failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = d.kick.notified() => {}
                        _ = self.stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(self.settings.retry_max.max(RETRY_MIN));
                }
            }
        }
    }

    /// Another process pushes to `d`: keep only the newest event of each
    /// room pending, for the case that it dies before pushing it.
    fn leave_to_holder(&self, d: &Dest) {
        let mut st = d.state.lock().expect("dest lock");
        let queues = self.queues.lock().expect("queues lock");
        for (room, cursor) in st.cursors.iter_mut() {
            if let Some(q) = queues.get(room) {
                *cursor = (*cursor).max(q.head().saturating_sub(1));
            }
        }
    }

    /// Gives up every push lease this process holds (at shutdown), so that
    /// another process takes each server over at once.
    pub(super) async fn release_leases(&self) {
        let names: Vec<String> = self.dests.lock().expect("dests lock").keys().cloned().collect();
        for name in names {
            if let Err(e) = self.leases.release(&name, &self.holder).await {
                tracing::debug!(server = %name, error = %e, "cannot give up a push lease; it expires");
            }
        }
    }

    /// A slot among the pushes in flight; `None` once stopping.
    async fn permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::select! {
            p = self.push_permits.acquire() => p.ok(),
            _ = self.stop.cancelled() => None,
        }
    }

    /// Whether `server` has members in a local room with a push queue.
    fn participates(&self, server: &str) -> bool {
        self.queues.lock().expect("queues lock").values().any(|q| q.servers.iter().any(|s| s == server))
    }

    /// Forgets a server's push state (its pusher then ends): one idle with
    /// nothing to push, or (`down`) one dropped from push sets that no
    /// longer has members here. False when it is not so after all.
    fn forget(&self, d: &Arc<Dest>, down: bool) -> bool {
        let mut dests = self.dests.lock().expect("dests lock");
        let st = d.state.lock().expect("dest lock");
        let forgettable = if down {
            st.down
        } else {
            let queues = self.queues.lock().expect("queues lock");
            let idle = st.cursors.iter().all(|(room, c)| queues.get(room).is_none_or(|q| *c >= q.end_for(&d.name)));
            idle && !st.down && st.failing_since.is_none()
        };
        if forgettable && dests.get(&d.name).is_some_and(|x| Arc::ptr_eq(x, d)) {
            dests.remove(&d.name);
            return true;
        }
        false
    }

    /// `server` signed a request that verified: it is up. If it was
    /// failing, retry at once; if it was dropped from push sets, take it back.
    pub(super) fn heard_from(&self, server: &str) {
        let d = self.dests.lock().expect("dests lock").get(server).cloned();
        if let Some(d) = d {
            let troubled = {
                let st = d.state.lock().expect("dest lock");
                st.down || st.failing_since.is_some()
            };
            if troubled {
                self.revive(&d);
            }
        }
    }

    /// Takes a server back: pushes resume at once. If it was dropped from
    /// push sets, it skips to the newest event of each room it shares, so it
    /// learns now what it missed and backfills it, rather than at its next
    /// periodic catch-up.
    fn revive(&self, d: &Dest) {
        {
            let mut st = d.state.lock().expect("dest lock");
            if st.down {
                tracing::info!(server = %d.name, "a server is back; pushing to it again");
                let queues = self.queues.lock().expect("queues lock");
                for (room, cursor) in st.cursors.iter_mut() {
                    let Some(q) = queues.get(room) else { continue };
                    let newest = q.head().saturating_sub(1).max(q.base);
                    if *cursor < newest {
                        self.counters.dropped_down.fetch_add(newest - *cursor, Ordering::Relaxed);
                        *cursor = newest;
                    }
                }
            }
            st.down = false;
            st.failing_since = None;
            st.backoff = Duration::ZERO;
            st.kicked = true;
        }
        d.kick.notify_one();
        d.work.notify_one();
    }

    /// Each server the push side knows now: what waits for it and how long
    /// its pusher backs off.
    pub fn destinations(&self) -> Vec<DestinationStats> {
        let dests: Vec<Arc<Dest>> = self.dests.lock().expect("dests lock").values().cloned().collect();
        let mut out = Vec::with_capacity(dests.len());
        for d in dests {
            let st = d.state.lock().expect("dest lock");
            let queues = self.queues.lock().expect("queues lock");
            let queued = st
                .cursors
                .iter()
                .filter_map(|(room, cursor)| queues.get(room).map(|q| q.head() - (*cursor).max(q.base)))
                .sum();
            out.push(DestinationStats { server: d.name.clone(), queued, backoff: st.backoff, down: st.down });
        }
        out
    }

    /// What the push side holds and has dropped.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let mut s = Stats {
            dropped_overflow: c.dropped_overflow.load(Ordering::Relaxed),
            dropped_down: c.dropped_down.load(Ordering::Relaxed),
            dropped_feed: c.dropped_feed.load(Ordering::Relaxed),
            dropped_too_large: c.dropped_too_large.load(Ordering::Relaxed),
            dropped_refused: c.dropped_refused.load(Ordering::Relaxed),
            ..Stats::default()
        };
        let dests: Vec<Arc<Dest>> = self.dests.lock().expect("dests lock").values().cloned().collect();
        for d in dests {
            let st = d.state.lock().expect("dest lock");
            let queues = self.queues.lock().expect("queues lock");
            for (room, cursor) in &st.cursors {
                if let Some(q) = queues.get(room) {
                    s.queued += (q.head() - (*cursor).max(q.base)) as usize;
                }
            }
            s.failing += usize::from(st.failing_since.is_some() || st.down);
            s.down += usize::from(st.down);
        }
        s
    }
}

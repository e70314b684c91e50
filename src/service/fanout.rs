//! The fan-out hub: hands every durable event to each local subscriber of
//! its room. An event is serialized once per room, as the JSON of its
//! `event` frame that every subscriber shares (the wire adds its own framing
//! when it writes), and pushed into each connection's bounded outbound
//! queue. Publishing never waits on a socket: a connection whose queue would
//! pass its byte limit is marked for closing (as a slow consumer) instead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::protocol::ws::EventFrame;
use crate::protocol::{RoomId, UserId};
use crate::storage::events::EventSink;

/// Something queued for one connection.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A room event: the JSON of its `event` frame, the same bytes for
    /// every subscriber.
    Event { room: Arc<RoomId>, epoch: Arc<str>, seq: u64, json: Bytes },
    /// The subscription is over: the user left the room (`reason`
    /// `left`), or the room was purged (`room_purged`).
    Left { room: Arc<RoomId>, reason: &'static str },
    /// A frame about a subscribed room that is not in its log (`typing`):
    /// written only while the connection is still subscribed to it.
    Room { room: Arc<RoomId>, json: Bytes },
    /// A frame for the connection as a whole (`presence`).
    Frame { json: Bytes },
}

/// Why the server closes a connection. The service says why; the wire
/// decides how to say it (a WebSocket close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The connection's access token was revoked (logout): log in again.
    TokenRevoked,
    /// The connection fell too far behind: its queue passed its byte limit.
    /// It may resume from its cursor.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    bytes: usize,
    close: Option<CloseReason>,
}

/// One connection's side of the hub: who it is and its outbound queue.
pub struct Conn {
    pub user_id: UserId,
    pub token_hash: [u8; 32],
    limit: usize,
    queue: Mutex<Queue>,
    notify: Notify,
}

impl Conn {
    pub fn new(user_id: UserId, token_hash: [u8; 32], limit: usize) -> Arc<Self> {
        Arc::new(Self { user_id, token_hash, limit, queue: Mutex::new(Queue::default()), notify: Notify::new() })
    }

    fn push(&self, item: Outgoing, bytes: usize) {
        let mut q = self.queue.lock().expect("queue lock");
        if q.close.is_some() {
            return;
        }
        if q.bytes + bytes > self.limit {
            // Drop what is queued at once: the client resumes from its own
            // cursor, so keeping it would only hold memory.
            q.items = VecDeque::new();
            q.bytes = 0;
            q.close = Some(CloseReason::SlowConsumer);
            drop(q);
            self.notify.notify_one();
            return;
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(item);
        q.bytes += bytes;
        drop(q);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Asks the connection to close (e.g. its token was revoked).
    pub fn close(&self, reason: CloseReason) {
        let mut q = self.queue.lock().expect("queue lock");
        if q.close.is_none() {
            q.close = Some(reason);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Waits until something is queued or a close is asked.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Takes everything queued, or the close reason once one is set.
    pub fn take(&self) -> Result<VecDeque<Outgoing>, CloseReason> {
        let mut q = self.queue.lock().expect("queue lock");
        if let Some(c) = q.close {
            return Err(c);
        }
        q.bytes = 0;
        Ok(std::mem::take(&mut q.items))
    }
}

struct RoomSubs {
    room: Arc<RoomId>,
    conns: Mutex<Vec<Arc<Conn>>>,
}

/// Subscribers by room.
#[derive(Default)]
pub struct Hub {
    rooms: RwLock<HashMap<RoomId, Arc<RoomSubs>>>,
    /// Counts events handed to subscribers (one per event and subscriber).
    deliveries: Option<prometheus::IntCounter>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A hub that counts what it hands out in `deliveries`.
    pub fn with_deliveries(deliveries: prometheus::IntCounter) -> Arc<Self> {
        Arc::new(Self { deliveries: Some(deliveries), ..Self::default() })
    }

    /// Adds `conn` to the room's subscribers (once); returns the shared room id.
    pub fn subscribe(&self, room: &RoomId, conn: &Arc<Conn>) -> Arc<RoomId> {
        let subs = {
            let mut rooms = self.rooms.write().expect("hub lock");
            rooms
                .entry(room.clone())
                .or_insert_with(|| Arc::new(RoomSubs { room: Arc::new(room.clone()), conns: Mutex::new(Vec::new()) }))
                .clone()
        };
        let mut conns = subs.conns.lock().expect("room lock");
        if !conns.iter().any(|c| Arc::ptr_eq(c, conn)) {
            conns.push(conn.clone());
        }
        subs.room.clone()
    }

    /// Pushes one shared frame about `room` to each of its subscribers.
    pub fn push_room(&self, room: &RoomId, json: Bytes) {
        let Some(subs) = self.rooms.read().expect("hub lock").get(room).cloned() else { return };
        let bytes = json.len();
        for c in subs.conns.lock().expect("room lock").iter() {
            c.push(Outgoing::Room { room: subs.room.clone(), json: json.clone() }, bytes);
        }
    }

    /// Pushes one shared frame once to each connection subscribed to any of `rooms`.
    pub fn push_rooms(&self, rooms: &[RoomId], json: Bytes) {
        let found: Vec<Arc<RoomSubs>> = {
            let all = self.rooms.read().expect("hub lock");
            rooms.iter().filter_map(|r| all.get(r).cloned()).collect()
        };
        let mut seen: std::collections::HashSet<*const Conn> = std::collections::HashSet::new();
        for subs in found {
            for c in subs.conns.lock().expect("room lock").iter() {
                if seen.insert(Arc::as_ptr(c)) {
                    c.push(Outgoing::Frame { json: json.clone() }, json.len());
                }
            }
        }
    }

    pub fn unsubscribe(&self, room: &RoomId, conn: &Arc<Conn>) {
        self.remove_where(room, |c| Arc::ptr_eq(c, conn), None);
    }

    /// Ends every subscription of `user` to `room`, telling each connection.
    pub fn kick(&self, room: &RoomId, user: &UserId) {
        self.remove_where(room, |c| &c.user_id == user, Some("left"));
    }

    /// Ends every subscription to `room` (purged), telling each connection
    /// as a leave does.
    pub fn end_room(&self, room: &RoomId) {
        self.remove_where(room, |_| true, Some("room_purged"));
    }

    fn remove_where(&self, room: &RoomId, pred: impl Fn(&Arc<Conn>) -> bool, notify: Option<&'static str>) {
        let mut rooms = self.rooms.write().expect("hub lock");
        let Some(subs) = rooms.get(room).cloned() else { return };
        let mut conns = subs.conns.lock().expect("room lock");
        conns.retain(|c| {
            if !pred(c) {
                return true;
            }
            if let Some(reason) = notify {
                c.push(Outgoing::Left { room: subs.room.clone(), reason }, 64);
            }
            false
        });
        if conns.is_empty() {
            rooms.remove(room);
        }
    }
}

impl EventSink for Hub {
    fn deliver(&self, room: &RoomId, epoch: &Arc<str>, seq: u64, event_json: &str) {
        let Some(subs) = self.rooms.read().expect("hub lock").get(room).cloned() else { return };
        // Once per room: the log's own JSON of the event goes into the frame as is.
        let event: &RawValue = match serde_json::from_str(event_json) {
            Ok(e) => e,
            Err(e) => {
                return tracing::error!(error = %e, %room, seq, "the room log delivered an event that is not JSON");
            }
        };
        let json = Bytes::from(EventFrame { room_id: room, epoch, event }.to_json());
        let bytes = json.len();
        let conns = subs.conns.lock().expect("room lock");
        for c in conns.iter() {
            c.push(Outgoing::Event { room: subs.room.clone(), epoch: epoch.clone(), seq, json: json.clone() }, bytes);
        }
        if let Some(d) = &self.deliveries {
            d.inc_by(conns.len() as u64);
        }
    }
}

/// Where every durable event goes: the local subscribers, and (for rooms
/// homed here with members elsewhere) the federation queue.
pub struct Fanout {
    pub hub: Arc<Hub>,
    pub federation: Option<Arc<crate::service::federation::Federation>>,
}

impl EventSink for Fanout {
    fn deliver(&self, room: &RoomId, epoch: &Arc<str>, seq: u64, event_json: &str) {
        self.hub.deliver(room, epoch, seq, event_json);
        // A leave (a kick, a ban: v1.1) ends the leaver's subscriptions to
        // the room on every process: each one sees the event here, whichever
        // process appended it (after the event itself, so subscribers get it
        // first).
        if let Some(user) = leaver(event_json) {
            self.hub.kick(room, &user);
        }
        if let Some(f) = &self.federation {
            f.on_event(room, epoch, event_json);
        }
    }
}

/// The sender of a `leave` event, or the `target` of a `kick` or `ban`.
/// Events are serialized by serde, so a quote inside a body is escaped and
/// only the event's own type field can match the cheap test that spares
/// every other event a parse.
fn leaver(event_json: &str) -> Option<UserId> {
    let types = [r#""type":"leave""#, r#""type":"kick""#, r#""type":"ban""#];
    if !types.iter().any(|t| event_json.contains(t)) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        sender: &'a str,
        #[serde(default)]
        target: Option<&'a str>,
    }
    let head: Head = serde_json::from_str(event_json).ok()?;
    match head.kind {
        "leave" => UserId::parse(head.sender).ok(),
        "kick" | "ban" => UserId::parse(head.target?).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(limit: usize) -> Arc<Conn> {
        Conn::new(UserId::parse("@a:x").unwrap(), [0; 32], limit)
    }

    #[test]
    fn one_frame_is_shared_by_every_subscriber() {
        let hub = Hub::new();
        let room = RoomId::parse("!r:x").unwrap();
        let (a, b) = (conn(1 << 20), conn(1 << 20));
        hub.subscribe(&room, &a);
        hub.subscribe(&room, &b);
        hub.deliver(&room, &"e".into(), 1, r#"{"seq":1}"#);
        let fa = a.take().unwrap();
        let fb = b.take().unwrap();
        let (Outgoing::Event { json: x, .. }, Outgoing::Event { json: y, .. }) = (&fa[0], &fb[0]) else { panic!() };
        assert_eq!(&x[..], br##"{"type":"event","room_id":"!r:x","epoch":"e","event":{"seq":1}}"##);
        assert_eq!(x.as_ptr(), y.as_ptr(), "serialized once");
    }

    #[test]
    fn overflow_closes_instead_of_growing() {
        let hub = Hub::new();
        let room = RoomId::parse("!r:x").unwrap();
        let slow = conn(1000);
        hub.subscribe(&room, &slow);
        for seq in 1..=100 {
            hub.deliver(&room, &"e".into(), seq, r#"{"body":"0123456789012345678901234567890123456789"}"#);
        }
        assert_eq!(slow.take().unwrap_err(), CloseReason::SlowConsumer);
        assert_eq!(slow.queue.lock().unwrap().bytes, 0, "queued frames are released");
    }

    #[test]
    fn a_leave_event_ends_its_senders_subscription() {
        let hub = Hub::new();
        let fanout = Fanout { hub: hub.clone(), federation: None };
        let room = RoomId::parse("!r:x").unwrap();
        let (a, b) = (conn(1 << 20), Conn::new(UserId::parse("@b:x").unwrap(), [0; 32], 1 << 20));
        hub.subscribe(&room, &a);
        hub.subscribe(&room, &b);
        let quoted = r#"{"seq":1,"type":"message","sender":"@a:x","body":"\"type\":\"leave\"","ts":1}"#;
        fanout.deliver(&room, &Arc::from("e"), 1, quoted);
        let leave = r#"{"seq":2,"type":"leave","sender":"@a:x","ts":2}"#;
        fanout.deliver(&room, &Arc::from("e"), 2, leave);
        let got = a.take().unwrap();
        assert_eq!(got.len(), 3, "two events, then the end of the subscription");
        assert!(matches!(got[2], Outgoing::Left { .. }));
        assert_eq!(b.take().unwrap().len(), 2, "the other subscriber gets both events and stays");
        assert_eq!(leaver(quoted), None);
        let kick = r#"{"seq":3,"type":"kick","sender":"@m:x","ts":3,"target":"@a:x"}"#;
        assert_eq!(leaver(kick), Some(UserId::parse("@a:x").unwrap()));
        let invite = r#"{"seq":4,"type":"invite","sender":"@m:x","ts":4,"target":"@a:x"}"#;
        assert_eq!(leaver(invite), None);
    }

    #[test]
    fn kick_tells_and_removes_only_that_user() {
        let hub = Hub::new();
        let room = RoomId::parse("!r:x").unwrap();
        let a = conn(1 << 20);
        let b = Conn::new(UserId::parse("@b:x").unwrap(), [0; 32], 1 << 20);
        hub.subscribe(&room, &a);
        hub.subscribe(&room, &b);
        hub.kick(&room, &UserId::parse("@a:x").unwrap());
        assert!(matches!(a.take().unwrap()[0], Outgoing::Left { .. }));
        hub.deliver(&room, &"e".into(), 2, "{}");
        assert!(a.take().unwrap().is_empty());
        assert_eq!(b.take().unwrap().len(), 1);
    }
}

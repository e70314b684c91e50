//! Live state that is never stored: who is typing in which room, and who is
//! online. It owns the rules (a typing state's timeout and rate limits,
//! online = at least one open WebSocket on any process) and hands `typing`
//! and `presence` frames to the fan-out hub.
//!
//! Every process keeps the whole server's view in memory. A typing state or
//! a user's sockets belong to the process that received them (its
//! *origin*); with `--redis` the origin says every change on the live bus
//! (`storage/live.rs`) and the other processes apply it, keyed by origin, so
//! a process that dies takes only its own states with it (its heartbeats
//! stop and the others drop them after [`PROCESS_TIMEOUT`]).
//!
//! Costs, by construction:
//! - Typing: a client's `typing` frames only change a flag in memory; the
//!   origin publishes a user's state in a room at most once per
//!   [`PUBLISH_GAP`], and each process writes a room's `typing` frame at
//!   most once per [`ROOM_GAP`] and only when the list changed. A client
//!   toggling a thousand times a second costs other clients at most four
//!   frames a second per room, and Redis at most four notes a second.
//! - Presence: a user's first socket (server-wide) and their last are the
//!   only changes; each makes every process read the user's room list once
//!   and push one shared frame to each local connection subscribed to any of
//!   those rooms, deduplicated: O(members of the user's rooms), once per
//!   change, never per pair of members.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::protocol::federation::{EPHEMERAL_ITEMS_MAX, FedEphemeral};
use crate::protocol::limits::TYPING_FRAMES_PER_SEC;
use crate::protocol::rooms::Presence;
use crate::protocol::ws::ServerFrame;
use crate::protocol::{ErrCode, RoomId, ServerName, UserId};
use crate::service::error::{Error, Result};
use crate::service::fanout::Hub;
use crate::service::federation::{Ephemeral, Federation};
use crate::service::receipts::Receipts;
use crate::service::rooms::Rooms;
use crate::storage::backend::Bus;
use crate::storage::live::BusNote;

/// The shortest time between two notes about one user's typing in one room
/// from their origin process.
pub const PUBLISH_GAP: Duration = ROOM_GAP;
/// The shortest time between two `typing` frames of one room.
pub const ROOM_GAP: Duration = Duration::from_millis(1000 / TYPING_FRAMES_PER_SEC as u64);
/// How often a process says it is alive on the bus.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A process not heard for this long is gone: its states are dropped.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(5);

/// One user's typing state in one room, as its origin (this process) sees it.
struct Mine {
    typing: bool,
    until: Instant,
    /// What was last published, and when.
    published: Option<(bool, Instant)>,
}

/// One room's typing users, every origin's.
#[derive(Default)]
struct RoomTyping {
    /// (user, origin) → when the entry lapses if its origin never says more.
    who: HashMap<(UserId, Arc<str>), Instant>,
    /// The list last sent to subscribers, and when.
    sent: Vec<UserId>,
    sent_at: Option<Instant>,
    dirty: bool,
}

impl RoomTyping {
    fn users(&self) -> Vec<UserId> {
        let mut u: Vec<UserId> = self.who.keys().map(|(u, _)| u.clone()).collect();
        u.sort_unstable();
        u.dedup();
        u
    }
}

#[derive(Default)]
struct State {
    /// Open WebSockets per user on this process.
    sockets: HashMap<UserId, usize>,
    /// Other processes with at least one socket of the user.
    remote_online: HashMap<UserId, HashSet<Arc<str>>>,
    /// Users of other servers whose server told this process they are
    /// online (§11.7), until it tells it otherwise.
    fed_online: HashSet<UserId>,
    /// Other processes, by when they were last heard.
    procs: HashMap<Arc<str>, Instant>,
    mine: HashMap<(RoomId, UserId), Mine>,
    rooms: HashMap<RoomId, RoomTyping>,
    /// Another process's snapshot being received: the users and typing
    /// states it said again so far.
    snapshots: HashMap<Arc<str>, Snapshot>,
}

#[derive(Default)]
struct Snapshot {
    online: HashSet<UserId>,
    typing: HashSet<(RoomId, UserId)>,
}

impl State {
    fn online(&self, user: &UserId) -> bool {
        self.sockets.contains_key(user)
            || self.fed_online.contains(user)
            || self.remote_online.get(user).is_some_and(|s| !s.is_empty())
    }

    fn set_typing(&mut self, room: &RoomId, user: &UserId, origin: &Arc<str>, until: Option<Instant>) {
        let key = (user.clone(), origin.clone());
        let changed = match until {
            Some(t) => self.rooms.entry(room.clone()).or_default().who.insert(key, t).is_none(),
            None => self.rooms.get_mut(room).is_some_and(|r| r.who.remove(&key).is_some()),
        };
        if changed && let Some(r) = self.rooms.get_mut(room) {
            r.dirty = true;
        }
    }
}

/// Live notes on the bus, one line of space-separated words (ids never hold spaces).
#[derive(Debug, PartialEq, Eq)]
enum Note {
    /// The process is alive.
    Heartbeat,
    /// The process (re)subscribed and missed notes: everyone says their state again.
    Hello,
    Online(UserId),
    Offline(UserId),
    Typing(RoomId, UserId, bool),
    /// The user sent a message in the room: every origin ends their typing there.
    Sent(RoomId, UserId),
    /// The user's read mark in the room moved to this seq (already stored).
    Receipt(RoomId, UserId, u64),
    /// The process is stopping: drop its states now rather than after its silence.
    Gone,
    /// The process's whole state follows, then `SnapshotEnd`: what it held
    /// before and does not say again is gone (notes lost in an outage).
    SnapshotBegin,
    SnapshotEnd,
}

impl Note {
    fn encode(&self, from: &str) -> String {
        match self {
            Note::Heartbeat => format!("h {from}"),
            Note::Hello => format!("w {from}"),
            Note::Online(u) => format!("o {from} {u}"),
            Note::Offline(u) => format!("f {from} {u}"),
            Note::Typing(r, u, on) => format!("t {from} {r} {u} {}", u8::from(*on)),
            Note::Sent(r, u) => format!("x {from} {r} {u}"),
            Note::Receipt(r, u, seq) => format!("r {from} {r} {u} {seq}"),
            Note::Gone => format!("g {from}"),
            Note::SnapshotBegin => format!("a {from}"),
            Note::SnapshotEnd => format!("e {from}"),
        }
    }

    fn decode(s: &str) -> Option<(&str, Note)> {
        let mut w = s.split(' ');
        let (kind, from) = (w.next()?, w.next()?);
        let user = |w: &mut std::str::Split<'_, char>| UserId::parse(w.next()?).ok();
        let note = match kind {
            "h" => Note::Heartbeat,
            "w" => Note::Hello,
            "g" => Note::Gone,
            "a" => Note::SnapshotBegin,
            "e" => Note::SnapshotEnd,
            "o" => Note::Online(user(&mut w)?),
            "f" => Note::Offline(user(&mut w)?),
            "t" => {
                let room = RoomId::parse(w.next()?).ok()?;
                let u = user(&mut w)?;
                Note::Typing(room, u, w.next()? == "1")
            }
            "x" => {
                let room = RoomId::parse(w.next()?).ok()?;
                Note::Sent(room, user(&mut w)?)
            }
            "r" => {
                let room = RoomId::parse(w.next()?).ok()?;
                let u = user(&mut w)?;
                Note::Receipt(room, u, w.next()?.parse().ok()?)
            }
            _ => return None,
        };
        Some((from, note))
    }
}

/// Typing and presence of one server.
pub struct Live {
    me: Arc<str>,
    bus: Option<Arc<Bus>>,
    hub: Arc<Hub>,
    ttl: Duration,
    state: Mutex<State>,
    presence_tx: mpsc::UnboundedSender<UserId>,
    /// Where this server's users' typing, receipts and presence go to
    /// other servers (§11.7); only the process where a change is made
    /// hands it over, so it is sent once whatever the number of processes.
    federation: Option<Arc<Federation>>,
}

impl Live {
    /// Starts the live state's tasks; `bus` is the other processes' (None:
    /// this process is the whole server). A typing state lasts `ttl` after
    /// the user's last `typing: true`.
    pub fn start(hub: Arc<Hub>, rooms: Arc<Rooms>, bus: Option<Bus>, ttl: Duration) -> Arc<Self> {
        let me: Arc<str> = format!("{:016x}", rand_u64()).into();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let federation = rooms.federation().cloned();
        let live = Arc::new(Self {
            me,
            bus: bus.map(Arc::new),
            hub,
            ttl,
            state: Mutex::new(State::default()),
            presence_tx,
            federation,
        });
        if let Some(bus) = &live.bus {
            tokio::spawn(listen(Arc::downgrade(&live), bus.subscribe()));
        }
        tokio::spawn(tick_forever(Arc::downgrade(&live)));
        tokio::spawn(deliver_presence(Arc::downgrade(&live), rooms, presence_rx));
        live
    }

    fn tell_servers(&self, e: Ephemeral) {
        if let Some(f) = &self.federation {
            f.ephemeral(e);
        }
    }

    fn publish(&self, note: Note) {
        if let Some(bus) = &self.bus {
            bus.publish(note.encode(&self.me));
        }
    }

    /// A WebSocket of `user` is open (authenticated) on this process.
    pub fn connected(&self, user: &UserId) {
        let mut st = self.state.lock().expect("live lock");
        let was_online = st.online(user);
        let n = st.sockets.entry(user.clone()).or_default();
        *n += 1;
        if *n == 1 {
            self.publish(Note::Online(user.clone()));
        }
        if !was_online {
            let _ = self.presence_tx.send(user.clone());
            self.tell_servers(Ephemeral::Presence { user: user.clone(), presence: Presence::Online });
        }
    }

    /// A WebSocket of `user` on this process closed. The last one ends
    /// every typing state the user set through this process.
    pub fn disconnected(&self, user: &UserId) {
        let mut st = self.state.lock().expect("live lock");
        let Some(n) = st.sockets.get_mut(user) else { return };
        *n -= 1;
        if *n > 0 {
            return;
        }
        st.sockets.remove(user);
        self.publish(Note::Offline(user.clone()));
        for ((_, u), m) in st.mine.iter_mut() {
            if u == user {
                m.typing = false;
            }
        }
        if !st.online(user) {
            let _ = self.presence_tx.send(user.clone());
            self.tell_servers(Ephemeral::Presence { user: user.clone(), presence: Presence::Offline });
        }
    }

    /// Whether the user has an open WebSocket on any process (as far as
    /// this process has heard).
    pub fn presence(&self, user: &UserId) -> Presence {
        if self.state.lock().expect("live lock").online(user) { Presence::Online } else { Presence::Offline }
    }

    /// A client's `typing` frame. Only a flag changes here; the ticker
    /// publishes and delivers, rate-limited.
    pub fn typing(&self, room: &RoomId, user: &UserId, typing: bool) {
        let mut st = self.state.lock().expect("live lock");
        let now = Instant::now();
        if typing {
            let m = st.mine.entry((room.clone(), user.clone())).or_insert(Mine {
                typing: true,
                until: now,
                published: None,
            });
            m.typing = true;
            m.until = now + self.ttl;
        } else if let Some(m) = st.mine.get_mut(&(room.clone(), user.clone())) {
            m.typing = false;
        }
    }

    /// The user sent a message in the room: their typing there ends,
    /// whichever process it was set through.
    pub fn message_sent(&self, room: &RoomId, user: &UserId) {
        let mut st = self.state.lock().expect("live lock");
        if let Some(m) = st.mine.get_mut(&(room.clone(), user.clone())) {
            m.typing = false;
        }
        let elsewhere =
            st.rooms.get(room).is_some_and(|r| r.who.keys().any(|(u, origin)| u == user && *origin != self.me));
        if elsewhere {
            self.publish(Note::Sent(room.clone(), user.clone()));
        }
    }

    /// A member's read mark moved (it is stored): every process tells the
    /// room's subscribers.
    pub fn receipt(&self, room: &RoomId, user: &UserId, seq: u64) {
        self.deliver_receipt(room, user, seq);
        self.publish(Note::Receipt(room.clone(), user.clone(), seq));
        self.tell_servers(Ephemeral::Receipt { room: room.clone(), user: user.clone(), seq });
    }

    /// A user of this server joined a room: if it is homed elsewhere, the
    /// room's other servers learn who of this server is online in it.
    pub fn joined(self: &Arc<Self>, rooms: Arc<Rooms>, room_id: RoomId) {
        if rooms.is_remote(&room_id) {
            self.introduce(rooms, room_id, None);
        }
    }

    /// A server got a member in a room (§11.7): tells it which of this
    /// server's members of the room are online, since it heard nothing of
    /// them before. `to` is that server (a user of it joined a room homed
    /// here), or `None` when the new member is this server's, joining a
    /// room homed elsewhere: then every other server in the room is told.
    /// In the background: a join does not wait for it.
    pub fn introduce(self: &Arc<Self>, rooms: Arc<Rooms>, room_id: RoomId, to: Option<ServerName>) {
        let Some(fed) = self.federation.clone() else { return };
        let live = self.clone();
        tokio::spawn(async move {
            let members = match rooms.member_list(&room_id).await {
                Ok(m) => m,
                Err(e) => {
                    return tracing::debug!(room = %room_id, error = %e, "cannot read a room's members to tell presence");
                }
            };
            let own = rooms.server_name();
            let servers: Vec<String> = match to {
                Some(s) => vec![s.to_string()],
                None => {
                    let mut s: Vec<String> =
                        members.iter().map(|m| m.server().to_owned()).filter(|s| s != own.as_str()).collect();
                    s.sort();
                    s.dedup();
                    s
                }
            };
            for m in members.iter().filter(|m| m.server() == own.as_str()) {
                if live.presence(m) == Presence::Online {
                    for s in &servers {
                        fed.presence_to(s, m, Presence::Online);
                    }
                }
            }
        });
    }

    /// What another server says its users are doing (§11.7): typing is
    /// taken as if this process had received their frames (rate-limited,
    /// lapsing and told to the other processes the same way), read marks
    /// are stored as local ones, presence is kept until their server says
    /// otherwise. Items about a room the user is not a member of here are
    /// ignored; an item about another server's user refuses the whole push.
    pub async fn from_federation(
        &self,
        origin: &ServerName,
        body: FedEphemeral,
        rooms: &Rooms,
        receipts: &Receipts,
    ) -> Result<()> {
        if body.len() > EPHEMERAL_ITEMS_MAX {
            return Err(Error::refused(
                ErrCode::InvalidField,
                format!("at most {EPHEMERAL_ITEMS_MAX} items in one ephemeral push"),
            ));
        }
        let users = body.typing.iter().map(|t| &t.user_id).chain(body.receipts.iter().map(|r| &r.user_id));
        if let Some(u) = users.chain(body.presence.iter().map(|p| &p.user_id)).find(|u| u.server() != origin.as_str()) {
            return Err(Error::refused(ErrCode::UnknownServer, format!("{origin} cannot speak for {u}")));
        }
        for t in &body.typing {
            if rooms.is_member(&t.room_id, &t.user_id).await? {
                self.typing(&t.room_id, &t.user_id, t.typing);
            }
        }
        for r in body.receipts {
            receipts.mark_from_federation(&r.room_id, &r.user_id, r.seq).await?;
        }
        let mut st = self.state.lock().expect("live lock");
        for p in body.presence {
            let was = st.online(&p.user_id);
            match p.presence {
                Presence::Online => {
                    st.fed_online.insert(p.user_id.clone());
                    self.publish(Note::Online(p.user_id.clone()));
                }
                Presence::Offline => {
                    st.fed_online.remove(&p.user_id);
                    self.publish(Note::Offline(p.user_id.clone()));
                }
            }
            if st.online(&p.user_id) != was {
                let _ = self.presence_tx.send(p.user_id);
            }
        }
        Ok(())
    }

    fn deliver_receipt(&self, room: &RoomId, user: &UserId, seq: u64) {
        let frame = ServerFrame::Receipt { room: room.clone(), user_id: user.clone(), seq };
        self.hub.push_room(room, Bytes::from(frame.to_json()));
    }

    /// Who is typing in the room now (the list last sent to its subscribers).
    pub fn typing_now(&self, room: &RoomId) -> Vec<UserId> {
        self.state.lock().expect("live lock").rooms.get(room).map(|r| r.sent.clone()).unwrap_or_default()
    }

    /// Applies another process's note.
    fn on_note(&self, text: &str) {
        let Some((from, note)) = Note::decode(text) else {
            return tracing::warn!(note = %text, "unreadable live note");
        };
        if *from == *self.me {
            return;
        }
        let mut st = self.state.lock().expect("live lock");
        let origin: Arc<str> = match st.procs.get_key_value(from) {
            Some((k, _)) => k.clone(),
            None => from.into(),
        };
        let now = Instant::now();
        if note == Note::Gone {
            st.procs.remove(&origin);
            return self.drop_process(&mut st, &origin);
        }
        st.procs.insert(origin.clone(), now);
        if let Some(snap) = st.snapshots.get_mut(&origin) {
            match &note {
                Note::Online(u) => {
                    snap.online.insert(u.clone());
                }
                Note::Typing(r, u, true) => {
                    snap.typing.insert((r.clone(), u.clone()));
                }
                _ => {}
            }
        }
        match note {
            Note::Heartbeat | Note::Gone => {}
            Note::SnapshotBegin => {
                st.snapshots.insert(origin, Snapshot::default());
            }
            Note::SnapshotEnd => {
                if let Some(snap) = st.snapshots.remove(&origin) {
                    self.sweep(&mut st, &origin, &snap);
                }
            }
            Note::Hello => self.announce(&st),
            Note::Online(user) => {
                let was = st.online(&user);
                st.remote_online.entry(user.clone()).or_default().insert(origin);
                if !was {
                    let _ = self.presence_tx.send(user);
                }
            }
            Note::Offline(user) => {
                // A user of another server has no sockets here: an offline
                // note about one is their server's word, taken by another
                // process; it ends whatever this process took from it.
                st.fed_online.remove(&user);
                if let Some(set) = st.remote_online.get_mut(&user) {
                    set.remove(&origin);
                    if set.is_empty() {
                        st.remote_online.remove(&user);
                    }
                }
                if !st.online(&user) {
                    let _ = self.presence_tx.send(user);
                }
            }
            // Kept twice the timeout: the origin ends it itself, and
            // refreshes it every half timeout while it lasts.
            Note::Typing(room, user, on) => st.set_typing(&room, &user, &origin, on.then(|| now + self.ttl * 2)),
            Note::Sent(room, user) => {
                if let Some(m) = st.mine.get_mut(&(room, user)) {
                    m.typing = false;
                }
            }
            Note::Receipt(room, user, seq) => {
                drop(st);
                self.deliver_receipt(&room, &user, seq);
            }
        }
    }

    /// Says this process's whole state again (after another process, or
    /// this one, missed notes).
    fn announce(&self, st: &State) {
        self.publish(Note::SnapshotBegin);
        for user in st.sockets.keys().chain(&st.fed_online) {
            self.publish(Note::Online(user.clone()));
        }
        for ((room, user), m) in &st.mine {
            if m.published.is_some_and(|(on, _)| on) {
                self.publish(Note::Typing(room.clone(), user.clone(), true));
            }
        }
        self.publish(Note::SnapshotEnd);
    }

    /// Drops what process `p` held before its snapshot and did not say again in it.
    fn sweep(&self, st: &mut State, p: &Arc<str>, snap: &Snapshot) {
        let users: Vec<UserId> = st.remote_online.keys().cloned().collect();
        for u in users {
            if snap.online.contains(&u) {
                continue;
            }
            let Some(set) = st.remote_online.get_mut(&u) else { continue };
            if set.remove(p) && set.is_empty() {
                st.remote_online.remove(&u);
                if !st.online(&u) {
                    let _ = self.presence_tx.send(u);
                }
            }
        }
        for (room, r) in st.rooms.iter_mut() {
            let before = r.who.len();
            r.who.retain(|(u, origin), _| origin != p || snap.typing.contains(&(room.clone(), u.clone())));
            r.dirty |= r.who.len() != before;
        }
    }

    /// Forgets every state another process `p` held (it died or stopped):
    /// its users' sockets and its typing states.
    fn drop_process(&self, st: &mut State, p: &Arc<str>) {
        let users: Vec<UserId> = st.remote_online.keys().cloned().collect();
        for u in users {
            let Some(set) = st.remote_online.get_mut(&u) else { continue };
            if set.remove(p) && set.is_empty() {
                st.remote_online.remove(&u);
                if !st.online(&u) {
                    let _ = self.presence_tx.send(u);
                }
            }
        }
        for r in st.rooms.values_mut() {
            let before = r.who.len();
            r.who.retain(|(_, origin), _| origin != p);
            r.dirty |= r.who.len() != before;
        }
    }

    /// This process stops: the others drop its states at once, and the
    /// notes queued so far (its users' last offline notes) go out first.
    pub async fn close(&self) {
        if let Some(bus) = &self.bus {
            self.publish(Note::Gone);
            bus.flush(Duration::from_secs(1)).await;
        }
    }

    /// One pass of the ticker: lapses, publishes and delivers what is due.
    fn tick(&self, now: Instant) {
        let mut st = self.state.lock().expect("live lock");
        let st = &mut *st;
        // This process's own typing states: lapse, then publish changes
        // (and refreshes every half timeout), each at most once per gap.
        let mut changes = Vec::new();
        st.mine.retain(|(room, user), m| {
            if m.typing && m.until <= now {
                m.typing = false;
            }
            let due = match m.published {
                None => true,
                Some((on, at)) => {
                    now.duration_since(at) >= PUBLISH_GAP
                        && (on != m.typing || (on && now.duration_since(at) >= self.ttl / 2))
                }
            };
            if due {
                m.published = Some((m.typing, now));
                changes.push((room.clone(), user.clone(), m.typing));
            }
            // Kept a gap after its last note, so a toggler stays rate-limited.
            m.typing || m.published.is_some_and(|(_, at)| now.duration_since(at) < PUBLISH_GAP)
        });
        for (room, user, on) in changes {
            let me = self.me.clone();
            st.set_typing(&room, &user, &me, on.then(|| now + self.ttl * 2));
            self.publish(Note::Typing(room.clone(), user.clone(), on));
            self.tell_servers(Ephemeral::Typing { room, user, typing: on });
        }
        // Processes that went quiet take their states with them.
        let dead: Vec<Arc<str>> = st
            .procs
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= PROCESS_TIMEOUT)
            .map(|(p, _)| p.clone())
            .collect();
        for p in dead {
            st.procs.remove(&p);
            self.drop_process(st, &p);
        }
        // Lapsed entries, then each changed room's frame, at most once per gap.
        st.rooms.retain(|room, r| {
            let before = r.who.len();
            r.who.retain(|_, until| *until > now);
            r.dirty |= r.who.len() != before;
            if r.dirty && r.sent_at.is_none_or(|at| now.duration_since(at) >= ROOM_GAP) {
                r.dirty = false;
                let users = r.users();
                if users != r.sent {
                    let frame = ServerFrame::Typing { room: room.clone(), user_ids: users.clone() };
                    self.hub.push_room(room, Bytes::from(frame.to_json()));
                    r.sent = users;
                    r.sent_at = Some(now);
                }
            }
            !(r.who.is_empty() && r.sent.is_empty() && !r.dirty)
        });
    }
}

/// The ticker's period: fine enough for the typing timeout.
fn tick_period(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

async fn tick_forever(live: std::sync::Weak<Live>) {
    let Some(period) = live.upgrade().map(|l| tick_period(l.ttl)) else { return };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = Instant::now();
    loop {
        let now = tick.tick().await;
        let Some(live) = live.upgrade() else { return };
        live.tick(now);
        if now.duration_since(beat) >= HEARTBEAT {
            beat = now;
            live.publish(Note::Heartbeat);
        }
    }
}

async fn listen(live: std::sync::Weak<Live>, mut notes: mpsc::UnboundedReceiver<BusNote>) {
    while let Some(note) = notes.recv().await {
        let Some(live) = live.upgrade() else { return };
        match note {
            BusNote::Note(text) => live.on_note(&text),
            BusNote::Resubscribed => {
                live.publish(Note::Hello);
                let st = live.state.lock().expect("live lock");
                live.announce(&st);
            }
        }
    }
}

/// Delivers presence changes in the order they happened, one at a time:
/// reads the user's rooms once and pushes one frame to every local
/// connection subscribed to any of them. A change already undone by the
/// time it is delivered is skipped, as is one that would repeat the last
/// delivered state.
async fn deliver_presence(live: std::sync::Weak<Live>, rooms: Arc<Rooms>, mut rx: mpsc::UnboundedReceiver<UserId>) {
    let mut last: HashMap<UserId, Presence> = HashMap::new();
    while let Some(user) = rx.recv().await {
        let Some(live) = live.upgrade() else { return };
        let now = live.presence(&user);
        if last.get(&user).copied().unwrap_or(Presence::Offline) == now {
            continue;
        }
        match now {
            Presence::Online => last.insert(user.clone(), now),
            Presence::Offline => last.remove(&user),
        };
        let room_ids = match rooms.joined(&user).await {
            Ok(r) => r.into_iter().map(|r| r.room_id).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, %user, "cannot read a user's rooms for a presence change");
                continue;
            }
        };
        let frame = ServerFrame::Presence { user_id: user, presence: now };
        live.hub.push_rooms(&room_ids, Bytes::from(frame.to_json()));
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("system randomness");
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip() {
        let (r, u) = (RoomId::parse("!r:x").unwrap(), UserId::parse("@a:x").unwrap());
        for n in [
            Note::Heartbeat,
            Note::Hello,
            Note::Gone,
            Note::SnapshotBegin,
            Note::SnapshotEnd,
            Note::Online(u.clone()),
            Note::Offline(u.clone()),
            Note::Typing(r.clone(), u.clone(), true),
            Note::Typing(r.clone(), u.clone(), false),
            Note::Sent(r.clone(), u.clone()),
            Note::Receipt(r, u, 42),
        ] {
            let text = n.encode("p1");
            assert_eq!(Note::decode(&text), Some(("p1", n)), "{text}");
        }
        assert_eq!(Note::decode("t p1 !r:x"), None);
        assert_eq!(Note::decode("q p1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_that_says_it_is_gone_takes_its_states_along() {
        let hub = Hub::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let live = Live {
            me: "me".into(),
            bus: None,
            hub: hub.clone(),
            ttl: Duration::from_secs(30),
            state: Mutex::default(),
            presence_tx: tx,
            federation: None,
        };
        let (room, ann) = (RoomId::parse("!r:x").unwrap(), UserId::parse("@ann:x").unwrap());
        let conn = crate::service::fanout::Conn::new(UserId::parse("@b:x").unwrap(), [0; 32], 1 << 20);
        hub.subscribe(&room, &conn);
        live.on_note(&Note::Online(ann.clone()).encode("other"));
        live.on_note(&Note::Typing(room.clone(), ann.clone(), true).encode("other"));
        assert_eq!(live.presence(&ann), Presence::Online);
        assert_eq!(rx.try_recv().ok(), Some(ann.clone()), "online: a presence change");
        live.tick(Instant::now());
        assert_eq!(live.typing_now(&room), vec![ann.clone()]);
        live.on_note(&Note::Gone.encode("other"));
        assert_eq!(live.presence(&ann), Presence::Offline, "at once, not after the process timeout");
        assert_eq!(rx.try_recv().ok(), Some(ann.clone()), "offline: a presence change");
        live.tick(Instant::now() + ROOM_GAP);
        assert!(live.typing_now(&room).is_empty());
        // Its own notes are not applied twice.
        live.on_note(&Note::Online(ann.clone()).encode("me"));
        assert_eq!(live.presence(&ann), Presence::Offline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_drops_what_its_process_no_longer_says() {
        let hub = Hub::new();
        let live = Live {
            me: "me".into(),
            bus: None,
            hub,
            ttl: Duration::from_secs(30),
            state: Mutex::default(),
            presence_tx: mpsc::unbounded_channel().0,
            federation: None,
        };
        let room = RoomId::parse("!r:x").unwrap();
        let (ann, bob) = (UserId::parse("@ann:x").unwrap(), UserId::parse("@bob:x").unwrap());
        for n in [
            Note::Online(ann.clone()),
            Note::Online(bob.clone()),
            Note::Typing(room.clone(), ann.clone(), true),
            Note::Typing(room.clone(), bob.clone(), true),
        ] {
            live.on_note(&n.encode("p"));
        }
        live.on_note(&Note::Online(bob.clone()).encode("q"));
        // Bob's socket on p closed and ann stopped typing while the notes were lost.
        for n in [Note::SnapshotBegin, Note::Online(ann.clone()), Note::Typing(room.clone(), bob.clone(), true)] {
            live.on_note(&n.encode("p"));
        }
        assert_eq!(live.presence(&ann), Presence::Online, "nothing is dropped before the snapshot ends");
        live.on_note(&Note::SnapshotEnd.encode("p"));
        assert_eq!(live.presence(&ann), Presence::Online);
        assert_eq!(live.presence(&bob), Presence::Online, "still on q");
        live.on_note(&Note::Offline(bob.clone()).encode("q"));
        assert_eq!(live.presence(&bob), Presence::Offline, "p's entry was swept");
        live.tick(Instant::now());
        assert_eq!(live.typing_now(&room), vec![bob.clone()], "ann's typing on p was swept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_toggling_client_costs_a_room_at_most_one_frame_per_gap() {
        let hub = Hub::new();
        let live = Live {
            me: "me".into(),
            bus: None,
            hub: hub.clone(),
            ttl: Duration::from_secs(30),
            state: Mutex::default(),
            presence_tx: mpsc::unbounded_channel().0,
            federation: None,
        };
        let (room, user) = (RoomId::parse("!r:x").unwrap(), UserId::parse("@a:x").unwrap());
        let conn = crate::service::fanout::Conn::new(UserId::parse("@b:x").unwrap(), [0; 32], 1 << 20);
        hub.subscribe(&room, &conn);
        let start = Instant::now();
        let mut t = start;
        // A thousand toggles a second for two seconds, ticked every 10 ms.
        for i in 0..2000u32 {
            live.typing(&room, &user, i % 2 == 0);
            t += Duration::from_millis(1);
            if i % 7 == 6 {
                live.tick(t);
            }
        }
        let frames = conn.take().unwrap().len();
        assert!((1..=2 * 4 + 1).contains(&frames), "{frames} frames in two seconds");
    }
}

//! The fan-out engine shared by the `fanout`, `accounts --during-fanout`,
//! `resume` and `idle` workloads: rooms full of members, each member one
//! WebSocket subscribed to one room, messages sent by members over their own
//! sockets, and every delivery checked.
//!
//! Message `g` (numbered across the whole run) is sent by member `g mod C`
//! (C = rooms × members) into room `g mod R`: members are laid out so that
//! member `c` sits in room `c mod R`, which makes both hold at once, spreads
//! consecutive messages over rooms, and lets every member send in turn. Its
//! body starts with the tag `cb <g> <scheduled µs>`; its `id` and `txn_id`
//! derive from `g`, so a retried send after a reconnect is the same
//! transaction.
//!
//! Schedules are open-loop (`--rate N`): message `i` of a phase is due at
//! `start + i/N` whatever happened before, and latency runs from that due
//! time, so a server stall shows up in full instead of silently slowing the
//! sender (coordinated omission). `--rate max` is closed-loop by design: a
//! fixed number of sends in flight, each freed slot refilled at once, and
//! latency measured from the moment a send was issued.
//!
//! Everything runs on one thread (a current-thread runtime and a LocalSet),
//! so state is shared with `Rc`/`RefCell` and never locked.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use crate::check::{Counts, MemberCheck, SeqBook};
use crate::clock::now_ns;
use crate::http::Api;
use crate::pacer::Pacer;
use crate::parse::{self, Frame, Tag};
use crate::stats::{Lat, round3};
use crate::users::User;
use crate::ws::{self, ReadOutcome, WsReader, WsShared};

/// How a room full of members is set up.
pub struct Layout {
    pub rooms: usize,
    /// WebSockets per room.
    pub members: usize,
    /// Member `j` of each room authenticates as `users[j % users.len()]`,
    /// and every one of those users joins every room.
    pub users: Vec<Rc<User>>,
    /// Prefix of the room names; rooms are `<prefix>-r<i>`.
    pub room_prefix: String,
    pub body_bytes: usize,
    /// Initial read buffer per WebSocket.
    pub buf_cap: usize,
    /// Handshakes in flight at once while connecting.
    pub connect_concurrency: usize,
    /// HTTP joins in flight at once while setting up.
    pub join_concurrency: usize,
}

/// One room as the engine tracks it.
pub struct RoomState {
    pub room_id: String,
    /// The room id as a JSON string, pasted into every `send` frame.
    room_json: String,
    pub book: RefCell<SeqBook>,
}

/// One member: a user's subscription to one room, over one WebSocket at a time.
pub struct Member {
    pub idx: usize,
    pub room: usize,
    pub user: Rc<User>,
    ws: RefCell<Option<Rc<WsShared>>>,
    pub check: RefCell<MemberCheck>,
    /// Counts at the start of the current phase.
    phase0: Cell<Counts>,
    epoch: RefCell<String>,
    /// Messages issued to this member and not yet acknowledged or refused,
    /// in order: what a reconnect re-sends.
    unacked: RefCell<BTreeSet<u64>>,
    /// `gap` frames received (each one is a failure of gap-free delivery here).
    pub gaps: Cell<u64>,
    pub unsubscribed: Cell<u64>,
    /// Tags naming another room, a message never sent, or the wrong schedule.
    pub foreign: Cell<u64>,
    /// Close codes (None: EOF or reset) of connections the server ended.
    pub closes: RefCell<Vec<Option<u16>>>,
}

/// How a phase issues its messages.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Open loop: `rate` messages per second in total.
    Open { rate: f64 },
    /// Closed loop: at most `window` sends in flight.
    Closed { window: u64 },
}

/// What a phase runs.
pub struct PhaseSpec {
    pub mode: Mode,
    /// Messages to issue; None: until `stop` is set.
    pub limit: Option<u64>,
    pub stop: Option<Rc<Cell<bool>>>,
    /// Give up waiting for the last deliveries after this long without progress.
    pub drain_timeout: Duration,
}

#[derive(Default)]
struct Phase {
    mode: Option<Mode>,
    limit: Option<u64>,
    issuing_done: bool,
    issued: u64,
    acked: u64,
    refused: u64,
    extra_acks: u64,
    in_flight: u64,
    expected: u64,
    delivered: u64,
    issued_room: Vec<u64>,
    refused_room: Vec<u64>,
    start_ns: u64,
    last_arrival_ns: u64,
    last_ack_ns: u64,
    lat: Lat,
    ack_lat: Lat,
    /// How late the tool itself issued each send (its own overload).
    lag: Lat,
    conflicts0: u64,
    io0: (u64, u64),
}

impl Phase {
    fn done(&self) -> bool {
        self.issuing_done && self.acked + self.refused == self.issued && self.delivered >= self.expected
    }
}

/// The engine: rooms, members, the current phase.
pub struct Engine {
    api: Api,
    /// Origin of the `scheduled µs` in message tags.
    t0: u64,
    pub rooms: Vec<RoomState>,
    pub members: Vec<Rc<Member>>,
    per_room: u64,
    body_bytes: usize,
    buf_cap: usize,
    next_g: Cell<u64>,
    /// Scheduled time of every message, indexed by its number.
    sched: RefCell<Vec<u64>>,
    phase: RefCell<Phase>,
    done: tokio::sync::Notify,
    pumps: RefCell<Vec<Option<JoinHandle<()>>>>,
    errcodes: RefCell<BTreeMap<String, u64>>,
    malformed: Cell<u64>,
    stray_acks: Cell<u64>,
    /// Sends written again after a reconnect (same txn_id).
    resent: Cell<u64>,
    /// Resumes answered with a `caught_up` seq below the cursor resumed from.
    caught_up_behind: Cell<u64>,
    /// Resumes where live events arrived before `caught_up`.
    live_before_caught_up: Cell<u64>,
    scratch: RefCell<Vec<u8>>,
    connect_concurrency: usize,
    /// Each send is preceded by `typing: true`, and every 10th send of a
    /// member by a `read` mark of the last seq it saw (the `live-mix` workload).
    live_mix: Cell<bool>,
    /// `typing`, `presence` and `receipt` frames received, by type.
    live_frames: RefCell<BTreeMap<String, u64>>,
}

/// The outcome of one phase, ready to print.
pub struct PhaseResult {
    pub json: Map<String, Value>,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub p99_ms: f64,
    /// Everything that must be zero for the run to count as correct.
    pub failures: u64,
}

const WS_PATH: &str = "/_parlor/client/v1/ws";

impl Engine {
    /// Join the rooms, open and subscribe every member's WebSocket, and start
    /// reading them.
    pub async fn build(api: &Api, layout: Layout) -> Result<Rc<Engine>> {
        let engine = Self::prepare(api, layout).await?;
        engine.connect_all().await?;
        Ok(engine)
    }

    /// Join the rooms; no WebSocket is open yet.
    pub async fn prepare(api: &Api, layout: Layout) -> Result<Rc<Engine>> {
        if layout.rooms == 0 || layout.members == 0 || layout.users.is_empty() {
            bail!("need at least one room, one member and one user");
        }
        let rooms = join_rooms(api, &layout).await?;
        let c = layout.rooms * layout.members;
        let members: Vec<Rc<Member>> = (0..c)
            .map(|idx| {
                Rc::new(Member {
                    idx,
                    room: idx % layout.rooms,
                    user: layout.users[(idx / layout.rooms) % layout.users.len()].clone(),
                    ws: RefCell::new(None),
                    check: RefCell::new(MemberCheck::new(0)),
                    phase0: Cell::new(Counts::default()),
                    epoch: RefCell::new(String::new()),
                    unacked: RefCell::new(BTreeSet::new()),
                    gaps: Cell::new(0),
                    unsubscribed: Cell::new(0),
                    foreign: Cell::new(0),
                    closes: RefCell::new(Vec::new()),
                })
            })
            .collect();
        let engine = Rc::new(Engine {
            api: api.clone(),
            t0: now_ns(),
            rooms: rooms
                .into_iter()
                .map(|room_id| RoomState {
                    room_json: serde_json::to_string(&room_id).expect("json"),
                    room_id,
                    book: RefCell::new(SeqBook::new(0)),
                })
                .collect(),
            members,
            per_room: layout.members as u64,
            body_bytes: layout.body_bytes,
            buf_cap: layout.buf_cap,
            next_g: Cell::new(0),
            sched: RefCell::new(Vec::new()),
            phase: RefCell::new(Phase::default()),
            done: tokio::sync::Notify::new(),
            pumps: RefCell::new((0..c).map(|_| None).collect()),
            errcodes: RefCell::new(BTreeMap::new()),
            malformed: Cell::new(0),
            stray_acks: Cell::new(0),
            resent: Cell::new(0),
            caught_up_behind: Cell::new(0),
            live_before_caught_up: Cell::new(0),
            live_mix: Cell::new(false),
            live_frames: RefCell::new(BTreeMap::new()),
            scratch: RefCell::new(Vec::with_capacity(256)),
            connect_concurrency: layout.connect_concurrency.max(1),
        });
        Ok(engine)
    }

    /// Open and subscribe every member's WebSocket, `connect_concurrency` at a time.
    pub async fn connect_all(self: &Rc<Self>) -> Result<()> {
        let engine = self;
        let caught: Vec<Result<(usize, u64)>> = futures_util::stream::iter(engine.members.clone())
            .map(|m| {
                let e = engine.clone();
                async move {
                    let seq = e
                        .connect_member(&m, None)
                        .await
                        .with_context(|| format!("member {} ({})", m.idx, m.user.user_id))?;
                    Ok((m.room, seq))
                }
            })
            .buffer_unordered(self.connect_concurrency)
            .collect()
            .await;
        let mut base = vec![u64::MAX; self.rooms.len()];
        for r in caught {
            let (room, seq) = r?;
            base[room] = base[room].min(seq);
        }
        for (room, b) in engine.rooms.iter().zip(base) {
            *room.book.borrow_mut() = SeqBook::new(b);
        }
        Ok(())
    }

    /// Open `m`'s WebSocket, subscribe (from `since` when resuming), wait for
    /// `caught_up` (handling replayed events), then re-send what is unacked
    /// and start the reading task. Returns the `caught_up` seq.
    async fn connect_member(self: &Rc<Self>, m: &Rc<Member>, since: Option<(String, u64)>) -> Result<u64> {
        // The member's place in its room picks the process (members of a room are idx ≡ room mod rooms).
        let (addr, host) = self.api.ws_target(m.idx / self.rooms.len());
        let (shared, mut reader) = ws::connect(addr, host, WS_PATH, Some(&m.user.token), self.buf_cap).await?;
        self.wait_for(m, &mut reader, "ready").await?;
        let mut sub = json!({"type": "subscribe", "id": "sub", "room": self.rooms[m.room].room_id});
        if let Some((epoch, seq)) = &since {
            sub["since"] = json!({"epoch": epoch, "seq": seq});
        }
        shared.send_text(sub.to_string().as_bytes())?;
        let (caught, held) = self.wait_for(m, &mut reader, "caught_up").await?;
        let seq =
            caught.get("seq").and_then(Value::as_u64).ok_or_else(|| anyhow!("caught_up without seq: {caught}"))?;
        let epoch = caught.get("epoch").and_then(Value::as_str).unwrap_or_default().to_string();
        if since.is_none() {
            *m.check.borrow_mut() = MemberCheck::new(seq);
        } else if let Some((_, from)) = &since
            && seq < held
        {
            // Spec §8: replayed events, then `caught_up`, then live events.
            // A `caught_up` below what this member already holds means either
            // the server went back behind the cursor, or live events
            // overtook `caught_up` on the new connection. Both are counted;
            // what follows is still checked.
            let c = if seq < *from { &self.caught_up_behind } else { &self.live_before_caught_up };
            c.set(c.get() + 1);
        }
        *m.epoch.borrow_mut() = epoch;
        *m.ws.borrow_mut() = Some(shared.clone());
        let unacked: Vec<u64> = m.unacked.borrow().iter().copied().collect();
        self.resent.set(self.resent.get() + unacked.len() as u64);
        for g in unacked {
            let sched = self.sched.borrow()[g as usize];
            self.write_send(&shared, m, g, sched);
        }
        self.pumps.borrow_mut()[m.idx] = Some(self.spawn_pump(m.clone(), reader));
        Ok(seq)
    }

    /// Read until a control frame of type `want` arrives (events and acks on
    /// the way are accounted as usual); an `error` not answering a send fails.
    ///
    /// Returns the frame and the member's last seq at the moment the frame
    /// was read: frames behind it in the same read are accounted before this
    /// returns, so only that snapshot says what came *before* it.
    async fn wait_for(&self, m: &Member, r: &mut WsReader, want: &str) -> Result<(Value, u64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut found: Option<(Value, u64)> = None;
            let mut err: Option<Value> = None;
            let out = tokio::time::timeout_at(
                deadline,
                r.read_frames(&mut |p, now| {
                    if let Some(v) = self.on_frame(m, p, now) {
                        match v.get("type").and_then(Value::as_str) {
                            Some(t) if t == want && found.is_none() => found = Some((v, m.check.borrow().last_seq())),
                            Some("error") if send_id(&v).is_none() && err.is_none() => err = Some(v),
                            _ => {}
                        }
                    }
                }),
            )
            .await
            .map_err(|_| anyhow!("no {want} within 60 s"))??;
            if let Some(f) = found {
                return Ok(f);
            }
            if let Some(e) = err {
                bail!("waiting for {want}, the server answered {e}");
            }
            if let ReadOutcome::Closed(code) = out {
                bail!("the server closed the WebSocket (code {code:?}) while we waited for {want}");
            }
        }
    }

    fn spawn_pump(self: &Rc<Self>, m: Rc<Member>, mut r: WsReader) -> JoinHandle<()> {
        let e = self.clone();
        tokio::task::spawn_local(async move {
            loop {
                match r
                    .read_frames(&mut |p, now| {
                        e.on_frame(&m, p, now);
                    })
                    .await
                {
                    Ok(ReadOutcome::Data) => {}
                    Ok(ReadOutcome::Closed(code)) => {
                        m.closes.borrow_mut().push(code);
                        break;
                    }
                    Err(err) => {
                        *e.errcodes.borrow_mut().entry(format!("client: {err}")).or_default() += 1;
                        m.closes.borrow_mut().push(None);
                        break;
                    }
                }
            }
            // Sends issued from now on wait in `unacked` for a reconnect (or count as lost).
            *m.ws.borrow_mut() = None;
        })
    }

    /// Account one text frame; control frames are returned for the caller.
    fn on_frame(&self, m: &Member, p: &[u8], now: u64) -> Option<Value> {
        match parse::classify(p) {
            Frame::Event { seq, tag } => {
                self.on_event(m, seq, tag, now);
                None
            }
            Frame::Ack { id: Some(g), seq } => {
                self.on_ack(m, g, seq, now);
                None
            }
            Frame::Ack { id: None, .. } => {
                self.stray_acks.set(self.stray_acks.get() + 1);
                None
            }
            Frame::Control(v) => {
                self.on_control(m, &v);
                Some(v)
            }
            Frame::Malformed => {
                self.malformed.set(self.malformed.get() + 1);
                None
            }
        }
    }

    fn on_event(&self, m: &Member, seq: u64, tag: Option<Tag>, now: u64) {
        let rooms = self.rooms.len() as u64;
        let tag = match tag {
            Some(t)
                if t.msg % rooms == m.room as u64
                    && self.sched.borrow().get(t.msg as usize).is_some_and(|&s| (s - self.t0) / 1000 == t.sched_us) =>
            {
                Some(t)
            }
            Some(_) => {
                m.foreign.set(m.foreign.get() + 1);
                None
            }
            None => None,
        };
        let verdict = m.check.borrow_mut().on_event(seq, tag.map(|t| t.msg / rooms));
        let Some(t) = tag else { return };
        self.rooms[m.room].book.borrow_mut().record(seq, t.msg);
        if matches!(verdict, crate::check::Verdict::New | crate::check::Verdict::OutOfOrder) {
            let mut ph = self.phase.borrow_mut();
            ph.delivered += 1;
            ph.lat.record_ns(now.saturating_sub(self.t0 + t.sched_us * 1000));
            ph.last_arrival_ns = ph.last_arrival_ns.max(now);
            if ph.done() {
                self.done.notify_one();
            }
        }
    }

    fn on_ack(&self, m: &Member, g: u64, seq: u64, now: u64) {
        if !m.unacked.borrow_mut().remove(&g) {
            self.phase.borrow_mut().extra_acks += 1;
            return;
        }
        self.rooms[m.room].book.borrow_mut().record(seq, g);
        let sched = self.sched.borrow()[g as usize];
        {
            let mut ph = self.phase.borrow_mut();
            ph.acked += 1;
            ph.in_flight -= 1;
            ph.ack_lat.record_ns(now.saturating_sub(sched));
            ph.last_ack_ns = ph.last_ack_ns.max(now);
        }
        self.completed();
    }

    fn on_control(&self, m: &Member, v: &Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("error") => {
                let code = v.get("errcode").and_then(Value::as_str).unwrap_or("?").to_string();
                *self.errcodes.borrow_mut().entry(code).or_default() += 1;
                if let Some(g) = send_id(v)
                    && m.unacked.borrow_mut().remove(&g)
                {
                    {
                        let mut ph = self.phase.borrow_mut();
                        ph.refused += 1;
                        ph.in_flight -= 1;
                        ph.refused_room[m.room] += 1;
                        ph.expected -= self.per_room;
                    }
                    self.completed();
                }
            }
            Some("gap") => m.gaps.set(m.gaps.get() + 1),
            Some("unsubscribed") => m.unsubscribed.set(m.unsubscribed.get() + 1),
            Some(t @ ("typing" | "presence" | "receipt")) => {
                *self.live_frames.borrow_mut().entry(t.to_owned()).or_default() += 1;
            }
            _ => {}
        }
    }

    /// A send finished (acked or refused): refill a closed loop, and wake the
    /// drain when everything is in.
    fn completed(&self) {
        if matches!(self.phase.borrow().mode, Some(Mode::Closed { .. })) {
            self.refill();
        }
        if self.phase.borrow().done() {
            self.done.notify_one();
        }
    }

    /// Closed loop: issue until the window is full or the phase has issued all.
    fn refill(&self) {
        loop {
            let g = {
                let mut ph = self.phase.borrow_mut();
                let Some(Mode::Closed { window }) = ph.mode else {
                    return;
                };
                if ph.issuing_done || ph.in_flight >= window {
                    return;
                }
                if ph.limit.is_some_and(|l| ph.issued >= l) {
                    ph.issuing_done = true;
                    return;
                }
                self.next_g.get()
            };
            self.next_g.set(g + 1);
            self.issue(g, now_ns());
        }
    }

    /// Hand message `g`, due at `sched`, to its sender.
    fn issue(&self, g: u64, sched: u64) {
        let m = &self.members[(g % self.members.len() as u64) as usize];
        {
            let mut s = self.sched.borrow_mut();
            debug_assert_eq!(s.len() as u64, g);
            s.push(sched);
        }
        {
            let mut ph = self.phase.borrow_mut();
            ph.issued += 1;
            ph.in_flight += 1;
            ph.issued_room[m.room] += 1;
            ph.expected += self.per_room;
            ph.lag.record_ns(now_ns().saturating_sub(sched));
        }
        m.unacked.borrow_mut().insert(g);
        let ws = m.ws.borrow().clone();
        if let Some(ws) = ws {
            self.write_send(&ws, m, g, sched);
        }
    }

    /// `typing`, `presence` or `receipt` frames received so far, of every member.
    pub fn live_frames(&self, kind: &str) -> u64 {
        self.live_frames.borrow().get(kind).copied().unwrap_or(0)
    }

    /// The id of room `i`, as the server answered the join.
    pub fn room_id(&self, i: usize) -> &str {
        &self.rooms[i].room_id
    }

    /// Mixes typing and read marks into every later phase (see `live_mix`).
    pub fn mix_live(&self) {
        self.live_mix.set(true);
    }

    /// Write the `send` frame of message `g` (no allocation: one scratch buffer).
    fn write_send(&self, ws: &Rc<WsShared>, m: &Member, g: u64, sched: u64) {
        use std::io::Write;
        let mut buf = self.scratch.borrow_mut();
        if self.live_mix.get() {
            let room = &self.rooms[m.room].room_json;
            buf.clear();
            let _ = write!(buf, r#"{{"type":"typing","room":{room},"typing":true}}"#);
            let _ = ws.send_text(&buf);
            if (g / self.members.len() as u64).is_multiple_of(10) {
                buf.clear();
                let seq = m.check.borrow().last_seq();
                let _ = write!(buf, r#"{{"type":"read","room":{room},"seq":{seq}}}"#);
                let _ = ws.send_text(&buf);
            }
        }
        buf.clear();
        let _ = write!(
            buf,
            r#"{{"type":"send","id":"{g}","room":{},"txn_id":"t{g}","body":""#,
            self.rooms[m.room].room_json
        );
        let body_start = buf.len();
        parse::write_tag(&mut buf, g, (sched - self.t0) / 1000);
        let tag_len = buf.len() - body_start;
        if self.body_bytes > tag_len {
            buf.push(b' ');
            buf.resize(body_start + self.body_bytes, b'x');
        }
        buf.extend_from_slice(b"\"}");
        // A dead socket leaves the message unacked: re-sent on reconnect, or counted lost.
        let _ = ws.send_text(&buf);
    }

    /// Run one phase on the connected members and account it.
    pub async fn run_phase(self: &Rc<Self>, spec: PhaseSpec) -> Result<PhaseResult> {
        for m in &self.members {
            m.phase0.set(m.check.borrow().counts);
        }
        let start = now_ns() + 2_000_000;
        {
            let mut ph = self.phase.borrow_mut();
            *ph = Phase {
                mode: Some(spec.mode),
                limit: spec.limit,
                issued_room: vec![0; self.rooms.len()],
                refused_room: vec![0; self.rooms.len()],
                start_ns: start,
                conflicts0: self.rooms.iter().map(|r| r.book.borrow().conflicts).sum(),
                io0: ws::io_counts(),
                ..Phase::default()
            };
        }
        let stopped = || spec.stop.as_ref().is_some_and(|s| s.get());
        match spec.mode {
            Mode::Open { rate } => {
                let pacer = Pacer::new()?;
                let period = 1e9 / rate;
                let mut i: u64 = 0;
                while spec.limit.is_none_or(|l| i < l) && !stopped() {
                    let sched = start + (i as f64 * period) as u64;
                    pacer.wait_until(sched).await?;
                    let g = self.next_g.get();
                    self.next_g.set(g + 1);
                    self.issue(g, sched);
                    i += 1;
                }
            }
            Mode::Closed { .. } => {
                Pacer::new()?.wait_until(start).await?;
                self.refill();
                loop {
                    if self.phase.borrow().issuing_done {
                        break;
                    }
                    if stopped() {
                        self.phase.borrow_mut().issuing_done = true;
                        break;
                    }
                    tokio::select! {
                        _ = self.done.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        }
        self.phase.borrow_mut().issuing_done = true;
        let drained = self.drain(spec.drain_timeout).await;
        Ok(self.result(drained))
    }

    /// Wait for the last acks and deliveries, or for `timeout` without progress.
    async fn drain(&self, timeout: Duration) -> bool {
        let progress = || {
            let ph = self.phase.borrow();
            ph.delivered + ph.acked + ph.refused
        };
        let mut last = progress();
        let mut since = tokio::time::Instant::now();
        loop {
            if self.phase.borrow().done() {
                return true;
            }
            tokio::select! {
                _ = self.done.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let p = progress();
            if p != last {
                last = p;
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= timeout {
                return false;
            }
        }
    }

    /// The number of messages issued so far in the current phase.
    pub fn issued(&self) -> u64 {
        self.phase.borrow().issued
    }

    fn result(&self, drained: bool) -> PhaseResult {
        let ph = self.phase.borrow();
        let mut counts = Counts::default();
        let mut lost = 0;
        let (mut gaps, mut unsubscribed, mut foreign, mut closes) = (0, 0, 0, BTreeMap::<String, u64>::new());
        for m in &self.members {
            let c = m.check.borrow().counts.since(&m.phase0.get());
            let expected_m = ph.issued_room[m.room] - ph.refused_room[m.room];
            lost += expected_m.saturating_sub(c.delivered);
            counts.add(&c);
            gaps += m.gaps.get();
            unsubscribed += m.unsubscribed.get();
            foreign += m.foreign.get();
            for code in m.closes.borrow().iter() {
                *closes.entry(code.map_or("eof".into(), |c| c.to_string())).or_default() += 1;
            }
        }
        let conflicts = self.rooms.iter().map(|r| r.book.borrow().conflicts).sum::<u64>() - ph.conflicts0;
        let unacked = ph.issued - ph.acked - ph.refused;
        let span = |end: u64| {
            if end > ph.start_ns { (end - ph.start_ns) as f64 / 1e9 } else { 0.0 }
        };
        let deliver_s = span(ph.last_arrival_ns);
        let ack_s = span(ph.last_ack_ns);
        let mut j = Map::new();
        let (mode, rate, window) = match ph.mode {
            Some(Mode::Open { rate }) => ("open", json!(rate), Value::Null),
            Some(Mode::Closed { window }) => ("closed", Value::Null, json!(window)),
            None => ("none", Value::Null, Value::Null),
        };
        j.insert("mode".into(), json!(mode));
        j.insert("offered_rate".into(), rate);
        j.insert("window".into(), window);
        j.insert("rooms".into(), json!(self.rooms.len()));
        j.insert("members".into(), json!(self.per_room));
        j.insert("connections".into(), json!(self.members.len()));
        j.insert("messages".into(), json!(ph.issued));
        j.insert("acked".into(), json!(ph.acked));
        j.insert("refused".into(), json!(ph.refused));
        j.insert("unacked".into(), json!(unacked));
        j.insert("expected".into(), json!(ph.expected));
        j.insert("delivered".into(), json!(counts.delivered));
        j.insert("lost".into(), json!(lost));
        j.insert("duplicates".into(), json!(counts.duplicates));
        j.insert("out_of_order".into(), json!(counts.out_of_order));
        j.insert("seq_gaps".into(), json!(counts.seq_gaps));
        j.insert("seq_conflicts".into(), json!(conflicts));
        j.insert("foreign".into(), json!(foreign));
        j.insert("gap_frames".into(), json!(gaps));
        j.insert("unsubscribed".into(), json!(unsubscribed));
        j.insert("server_closes".into(), json!(closes));
        j.insert("drained".into(), json!(drained));
        j.insert("duration_s".into(), json!(round3(deliver_s)));
        j.insert(
            "deliveries_per_s".into(),
            json!(if deliver_s > 0.0 { (counts.delivered as f64 / deliver_s).round() } else { 0.0 }),
        );
        j.insert("sends_per_s".into(), json!(if ack_s > 0.0 { (ph.acked as f64 / ack_s).round() } else { 0.0 }));
        ph.lat.put(&mut j, "");
        ph.ack_lat.put(&mut j, "ack_");
        j.insert("client_lag_p99_ms".into(), json!(round3(ph.lag.q_ms(0.99))));
        j.insert("client_lag_max_ms".into(), json!(round3(ph.lag.max_ms())));
        let (reads, msgs) = ws::io_counts();
        let (reads, msgs) = (reads - ph.io0.0, msgs - ph.io0.1);
        j.insert("client_reads".into(), json!(reads));
        j.insert("frames_per_read".into(), json!(if reads > 0 { round3(msgs as f64 / reads as f64) } else { 0.0 }));
        j.insert("errcodes".into(), json!(*self.errcodes.borrow()));
        j.insert("malformed_frames".into(), json!(self.malformed.get()));
        j.insert("stray_acks".into(), json!(self.stray_acks.get() + ph.extra_acks));
        j.insert("resent".into(), json!(self.resent.get()));
        j.insert("caught_up_behind".into(), json!(self.caught_up_behind.get()));
        j.insert("live_before_caught_up".into(), json!(self.live_before_caught_up.get()));
        j.insert("live_frames".into(), json!(*self.live_frames.borrow()));
        let failures = lost
            + counts.duplicates
            + counts.out_of_order
            + counts.seq_gaps
            + conflicts
            + foreign
            + gaps
            + unacked
            + self.malformed.get()
            + self.caught_up_behind.get()
            + self.live_before_caught_up.get();
        j.insert("ok".into(), json!(failures == 0));
        PhaseResult {
            expected: ph.expected,
            delivered: counts.delivered,
            lost,
            duplicates: counts.duplicates,
            out_of_order: counts.out_of_order,
            p99_ms: ph.lat.q_ms(0.99),
            json: j,
            failures,
        }
    }

    /// Cut every member's connection at once, as a network failure would
    /// (no close frame): their reading tasks end and their sockets close.
    pub fn drop_all(&self) {
        for (m, pump) in self.members.iter().zip(self.pumps.borrow_mut().iter_mut()) {
            if let Some(p) = pump.take() {
                p.abort();
            }
            *m.ws.borrow_mut() = None;
        }
    }

    /// Reconnect every member, resuming from its last seen seq; returns the
    /// time each took from `dropped_at` to `caught_up`.
    pub async fn resume_all(self: &Rc<Self>, dropped_at: u64, concurrency: usize) -> Result<Lat> {
        let times: Vec<Result<u64>> = futures_util::stream::iter(self.members.clone())
            .map(|m| {
                let e = self.clone();
                async move {
                    // The task may still be winding down after abort(); wait for it to let go.
                    tokio::task::yield_now().await;
                    let since = (m.epoch.borrow().clone(), m.check.borrow().last_seq());
                    e.connect_member(&m, Some(since)).await.with_context(|| format!("resume member {}", m.idx))?;
                    Ok(now_ns() - dropped_at)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut lat = Lat::default();
        for t in times {
            lat.record_ns(t?);
        }
        Ok(lat)
    }

    /// Stop reading and close every connection.
    pub fn close(&self) {
        self.drop_all();
    }
}

/// The message number an `error` frame answers, when it answers one of our sends.
fn send_id(v: &Value) -> Option<u64> {
    let id = v.get("id")?.as_str()?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Create the rooms (the first user's join creates each), then join every
/// other user to every room, over HTTP.
async fn join_rooms(api: &Api, layout: &Layout) -> Result<Vec<String>> {
    let conc = layout.join_concurrency.max(1);
    let distinct = layout.members.min(layout.users.len());
    let users = &layout.users[..distinct];
    let names: Vec<String> = (0..layout.rooms).map(|r| format!("{}-r{r}", layout.room_prefix)).collect();
    let by_chunks = |pairs: Vec<(usize, usize)>| {
        let per = pairs.len().div_ceil(conc).max(1);
        let chunks: Vec<Vec<(usize, usize)>> = pairs.chunks(per).map(<[_]>::to_vec).collect();
        let names = &names;
        futures_util::stream::iter(chunks)
            .map(move |chunk| async move {
                let mut c = api.conn().await?;
                let mut out = Vec::with_capacity(chunk.len());
                for (r, u) in chunk {
                    let id = c
                        .join(&users[u].token, &names[r])
                        .await
                        .with_context(|| format!("join {} as {}", names[r], users[u].user_id))?;
                    out.push((r, id));
                }
                anyhow::Ok(out)
            })
            .buffer_unordered(conc)
            .collect::<Vec<_>>()
    };
    // Creation first, so the joins below never race a room into existence:
    // the benchmark measures messaging, not that race.
    let mut ids = vec![String::new(); layout.rooms];
    for res in by_chunks((0..layout.rooms).map(|r| (r, 0)).collect()).await {
        for (r, id) in res? {
            ids[r] = id;
        }
    }
    let rest: Vec<(usize, usize)> = (0..layout.rooms).flat_map(|r| (1..distinct).map(move |u| (r, u))).collect();
    if !rest.is_empty() {
        for res in by_chunks(rest).await {
            for (r, id) in res? {
                if id != ids[r] {
                    bail!("joining {} answered room id {id}, but its creator got {}", names[r], ids[r]);
                }
            }
        }
    }
    Ok(ids)
}

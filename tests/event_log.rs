//! The `EventLog` contract, driven directly on both implementations: seqs
//! contiguous under concurrency, order fixed at call time, idempotent
//! transactions, read ranges, retention, and the sink fed once per event in
//! order. Redis-only cases follow: two logs sharing one Redis, epochs after
//! data loss, outages.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use parlor::protocol::events::EventType;
use parlor::protocol::{RoomId, UserId};
use parlor::storage::Db;
use parlor::storage::StorageError;
use parlor::storage::events::embedded::EmbeddedLog;
use parlor::storage::events::redis::RedisLog;
use parlor::storage::events::{AppendOutcome, EventLog, EventSink, LogHead, LogSettings, NewEvent, Range, Txn};
use rustix::process::Signal;
use support::{Backend, RedisServer};

/// (epoch, seq, event JSON) as handed to the sink.
type Delivery = (String, u64, String);

/// Everything the log handed to the sink, per room, in order.
#[derive(Default)]
struct Recorder(Mutex<HashMap<RoomId, Vec<Delivery>>>);

impl EventSink for Recorder {
    fn deliver(&self, room: &RoomId, epoch: &Arc<str>, seq: u64, event_json: &str) {
        self.0.lock().unwrap().entry(room.clone()).or_default().push((epoch.to_string(), seq, event_json.to_owned()));
    }
}

impl Recorder {
    fn seqs(&self, room: &RoomId) -> Vec<u64> {
        self.0.lock().unwrap().get(room).map(|v| v.iter().map(|(_, s, _)| *s).collect()).unwrap_or_default()
    }
    fn epochs(&self, room: &RoomId) -> Vec<String> {
        self.0.lock().unwrap().get(room).map(|v| v.iter().map(|(e, _, _)| e.clone()).collect()).unwrap_or_default()
    }
    fn json(&self, room: &RoomId, seq: u64) -> Option<String> {
        self.0.lock().unwrap().get(room)?.iter().find(|(_, s, _)| *s == seq).map(|(_, _, j)| j.clone())
    }
    /// Waits (bounded) until the room has `n` deliveries.
    async fn wait_for(&self, room: &RoomId, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seqs(room).len() < n {
            assert!(
                Instant::now() < deadline,
                "sink got {} of {n} events: {:?}",
                self.seqs(room).len(),
                self.seqs(room)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A log of the given kind with its sink; keeps its temp dir and Redis alive.
struct Harness {
    log: Arc<dyn EventLog>,
    sink: Arc<Recorder>,
    _dir: tempfile::TempDir,
    db: Db,
    redis: Option<RedisServer>,
}

async fn harness(backend: Backend, retention: Option<u64>) -> Harness {
    harness_with(backend, LogSettings::new(retention)).await
}

async fn harness_with(backend: Backend, settings: LogSettings) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let sink = Arc::new(Recorder::default());
    match backend {
        Backend::Embedded => {
            let log = Arc::new(EmbeddedLog::open(&db, sink.clone(), &settings).unwrap());
            Harness { log, sink, _dir: dir, db, redis: None }
        }
        Backend::Redis => {
            let redis = RedisServer::start();
            let log = Arc::new(RedisLog::open(&redis.url, &db, sink.clone(), &settings).await.unwrap());
            Harness { log, sink, _dir: dir, db, redis: Some(redis) }
        }
    }
}

/// A Redis log as one server process has it: its own data directory (where
/// its high-water marks live) and sink.
struct Process {
    log: RedisLog,
    sink: Arc<Recorder>,
    db: Db,
    _dir: tempfile::TempDir,
}

async fn process(url: &str) -> Process {
    process_in(url, tempfile::tempdir().unwrap()).await
}

/// A process on a data directory that another process used before it.
async fn process_in(url: &str, dir: tempfile::TempDir) -> Process {
    let db = Db::open(dir.path()).unwrap();
    let sink = Arc::new(Recorder::default());
    let log = RedisLog::open(url, &db, sink.clone(), &LogSettings::default()).await.unwrap();
    Process { log, sink, db, _dir: dir }
}

impl Process {
    /// Shuts down and hands back the data directory.
    async fn stop(self) -> tempfile::TempDir {
        self.log.close().await;
        drop(self.log);
        self.db.sync().await.unwrap();
        drop(self.db);
        self._dir
    }
}

fn room(name: &str) -> RoomId {
    RoomId::parse(&format!("!{name}:test.local")).unwrap()
}

fn alice() -> UserId {
    UserId::parse("@alice:test.local").unwrap()
}

fn msg(body: &str) -> NewEvent {
    NewEvent {
        kind: EventType::Message,
        sender: alice(),
        body: Some(body.into()),
        content: Default::default(),
        txn: None,
    }
}

fn txn_msg(device: &str, txn_id: &str, body: &str) -> NewEvent {
    let fingerprint: [u8; 32] =
        ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref().try_into().unwrap();
    NewEvent {
        txn: Some(Txn { device: format!("@alice:test.local\0{device}"), txn_id: txn_id.into(), fingerprint }),
        ..msg(body)
    }
}

fn stored(o: AppendOutcome) -> (String, u64) {
    match o {
        AppendOutcome::Stored { event_id, seq } => (event_id, seq),
        other => panic!("expected Stored, got {other:?}"),
    }
}

async fn contiguous_under_concurrency(b: Backend) {
    let h = harness(b, None).await;
    let rooms: Vec<RoomId> = (0..3).map(|i| room(&format!("c{i}"))).collect();
    let mut futs = Vec::new();
    for i in 0..200 {
        for r in &rooms {
            let log = h.log.clone();
            let r = r.clone();
            let f = log.append(&r, msg(&format!("m{i}")));
            futs.push(tokio::spawn(f));
        }
    }
    let mut by_room: HashMap<usize, Vec<u64>> = HashMap::new();
    for (i, f) in futs.into_iter().enumerate() {
        let (_, seq) = stored(f.await.unwrap().unwrap());
        by_room.entry(i % rooms.len()).or_default().push(seq);
    }
    for (i, r) in rooms.iter().enumerate() {
        let seqs = &by_room[&i];
        assert_eq!(seqs, &(1..=200).collect::<Vec<u64>>(), "acks of {r} follow call order");
        assert_eq!(h.sink.seqs(r), (1..=200).collect::<Vec<u64>>(), "sink got {r} once each, in order");
        let head = h.log.head(r).await.unwrap();
        assert_eq!((head.earliest, head.latest), (1, 200));
    }
}

async fn pipelined_order(b: Backend) {
    let h = harness(b, None).await;
    let r = room("pipe");
    let futs: Vec<_> = (0..50).map(|i| h.log.append(&r, msg(&format!("p{i}")))).collect();
    // Await in reverse: the order was fixed when `append` was called.
    let mut seqs = Vec::new();
    for f in futs.into_iter().rev() {
        seqs.push(stored(f.await.unwrap()).1);
    }
    seqs.reverse();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
    let page = h.log.read(&r, Range::After(0), 100).await.unwrap();
    let bodies: Vec<String> = page.events.iter().map(|e| e.body.clone().unwrap()).collect();
    assert_eq!(bodies, (0..50).map(|i| format!("p{i}")).collect::<Vec<_>>());
}

async fn resolves_after_the_sink_has_it(b: Backend) {
    let h = harness(b, None).await;
    let r = room("sink");
    for i in 0..20 {
        let (event_id, seq) = stored(h.log.append(&r, msg(&format!("s{i}"))).await.unwrap());
        let json = h.sink.json(&r, seq).unwrap_or_else(|| panic!("seq {seq} was acknowledged before the sink had it"));
        let ev: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(ev["event_id"], event_id.as_str());
        assert_eq!(ev["body"], format!("s{i}"));
        assert_eq!(ev["sender"], "@alice:test.local");
        assert_eq!(ev["type"], "message");
    }
}

async fn idempotent_transactions(b: Backend) {
    let h = harness(b, None).await;
    let r = room("txn");
    let first = stored(h.log.append(&r, txn_msg("D1", "t1", "hello")).await.unwrap());
    h.log.append(&r, msg("between")).await.unwrap();
    let again = h.log.append(&r, txn_msg("D1", "t1", "hello")).await.unwrap();
    assert_eq!(again, AppendOutcome::Repeated { event_id: first.0.clone(), seq: first.1 });
    assert_eq!(h.log.append(&r, txn_msg("D1", "t1", "other")).await.unwrap(), AppendOutcome::Conflict);
    let other_device = stored(h.log.append(&r, txn_msg("D2", "t1", "hello")).await.unwrap());
    assert_eq!(other_device.1, 3);
    // Both copies of one txn in one batch: the second is a repeat of the first.
    let (a, b2) = (h.log.append(&r, txn_msg("D1", "t9", "x")), h.log.append(&r, txn_msg("D1", "t9", "x")));
    let (a, b2) = (a.await.unwrap(), b2.await.unwrap());
    let (id, seq) = stored(a);
    assert_eq!(b2, AppendOutcome::Repeated { event_id: id, seq });
    let page = h.log.read(&r, Range::After(0), 100).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4], "nothing stored twice");
    assert_eq!(h.sink.seqs(&r), vec![1, 2, 3, 4]);
}

async fn read_ranges(b: Backend) {
    let h = harness(b, None).await;
    let r = room("ranges");
    for i in 1..=30 {
        h.log.append(&r, msg(&format!("r{i}"))).await.unwrap();
    }
    let seqs = |p: &parlor::storage::events::Page| p.events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let after = h.log.read(&r, Range::After(10), 5).await.unwrap();
    assert_eq!(seqs(&after), vec![11, 12, 13, 14, 15]);
    assert_eq!(after.events[0].body.as_deref(), Some("r11"));
    assert_eq!(seqs(&h.log.read(&r, Range::Before(10), 3).await.unwrap()), vec![7, 8, 9]);
    assert_eq!(seqs(&h.log.read(&r, Range::Latest, 4).await.unwrap()), vec![27, 28, 29, 30]);
    assert_eq!(seqs(&h.log.read(&r, Range::Before(3), 10).await.unwrap()), vec![1, 2]);
    assert!(h.log.read(&r, Range::Before(1), 10).await.unwrap().events.is_empty());
    assert!(h.log.read(&r, Range::After(30), 10).await.unwrap().events.is_empty());
    assert_eq!(seqs(&h.log.read(&r, Range::Before(1000), 2).await.unwrap()), vec![29, 30]);
    let head = h.log.head(&r).await.unwrap();
    assert_eq!((head.earliest, head.latest), (1, 30));
    assert!(!head.epoch.is_empty());
    // The current epoch by name reads the same; an epoch the log never had is none.
    let named = h.log.read_epoch(&r, &head.epoch, Range::Before(10), 3).await.unwrap().unwrap();
    assert_eq!((seqs(&named), named.head.clone()), (vec![7, 8, 9], head.clone()));
    assert!(h.log.read_epoch(&r, "no-such-epoch", Range::Latest, 3).await.unwrap().is_none());
    assert!(h.log.read_epoch(&room("never"), &head.epoch, Range::Latest, 3).await.unwrap().is_none());
    // What the sink got is what a reader gets.
    let page = h.log.read(&r, Range::After(0), 100).await.unwrap();
    assert_eq!(page.head, head);
    for e in &page.events {
        let from_sink: serde_json::Value = serde_json::from_str(&h.sink.json(&r, e.seq).unwrap()).unwrap();
        assert_eq!(from_sink, serde_json::to_value(e).unwrap());
    }
}

async fn retention_trims(b: Backend) {
    let h = harness(b, Some(10)).await;
    let r = room("ret");
    let futs: Vec<_> = (0..300).map(|i| h.log.append(&r, msg(&format!("k{i}")))).collect();
    join_all(futs).await.into_iter().for_each(|o| drop(stored(o.unwrap())));
    let head = h.log.head(&r).await.unwrap();
    assert_eq!(head.latest, 300);
    assert_eq!(head.earliest, 291, "exactly the last 10 are kept");
    let page = h.log.read(&r, Range::After(0), 1000).await.unwrap();
    assert_eq!(page.events.first().unwrap().seq, head.earliest, "earliest is what is really kept");
    assert_eq!(page.events.last().unwrap().seq, 300);
    assert_eq!(page.events.len() as u64, 300 - head.earliest + 1);
}

/// An event as a federated room's home server would send it.
fn remote_event(seq: u64, body: &str) -> parlor::protocol::events::Event {
    parlor::protocol::events::Event {
        event_id: format!("$remote{seq}:home.example"),
        seq,
        kind: EventType::Message,
        sender: UserId::parse("@bob:home.example").unwrap(),
        body: Some(body.into()),
        ts: 1_700_000_000_000 + seq,
        content: Default::default(),
    }
}

/// Imports keep the home server's epoch, seqs, ids and times; repeats are
/// skipped, a hole stops the import, a new epoch or a restart starts over.
async fn imports_keep_the_home_servers_order(b: Backend) {
    let h = harness(b, None).await;
    let r = RoomId::parse("!replica:home.example").unwrap();
    let ev = |seqs: std::ops::RangeInclusive<u64>| seqs.map(|s| remote_event(s, &format!("m{s}"))).collect::<Vec<_>>();

    let i = h.log.import(&r, "home-epoch", None, ev(1..=3)).await.unwrap();
    assert_eq!((i.latest, i.written, i.hole), (3, 3, false));
    // Again, overlapping: only the new one is written.
    let i = h.log.import(&r, "home-epoch", None, ev(2..=4)).await.unwrap();
    assert_eq!((i.latest, i.written, i.hole), (4, 1, false));
    assert_eq!(i.before, 3, "what the log held before, for the caller to apply only what is new");
    // A hole stops the import before it.
    let i = h.log.import(&r, "home-epoch", None, ev(6..=7)).await.unwrap();
    assert_eq!((i.latest, i.written, i.hole), (4, 0, true));
    let page = h.log.read(&r, Range::After(0), 10).await.unwrap();
    assert_eq!(&*page.head.epoch, "home-epoch");
    assert_eq!(page.events, ev(1..=4), "ids, senders and times are the home server's");
    h.sink.wait_for(&r, 4).await;
    assert_eq!(h.sink.seqs(&r), vec![1, 2, 3, 4], "the sink saw each once, in order");

    // The home server trimmed what we missed: start over at its earliest.
    let i = h.log.import(&r, "home-epoch", Some(10), ev(10..=11)).await.unwrap();
    assert_eq!((i.latest, i.written, i.hole), (11, 2, false));
    assert_eq!(i.before, 9, "started over just before the restart seq");
    let page = h.log.read(&r, Range::After(0), 10).await.unwrap();
    assert_eq!((page.head.earliest, page.head.latest), (10, 11));
    assert_eq!(page.events, ev(10..=11));

    // The home server's log started a new epoch.
    let i = h.log.import(&r, "epoch-two", None, ev(1..=2)).await.unwrap();
    assert_eq!((i.latest, i.written, i.hole), (2, 2, false));
    let page = h.log.read(&r, Range::Latest, 10).await.unwrap();
    assert_eq!((&*page.head.epoch, page.head.earliest, page.head.latest), ("epoch-two", 1, 2));
    assert_eq!(page.events, ev(1..=2));
    h.sink.wait_for(&r, 8).await;
    assert_eq!(h.sink.epochs(&r).last().map(String::as_str), Some("epoch-two"));
}

/// v1.1 state events keep their type and content (target, name, topic,
/// visibility, role, reason) through append, read, the sink and import.
async fn state_events_keep_their_content(b: Backend) {
    use parlor::protocol::events::EventContent;
    use parlor::protocol::rooms::{Role, Visibility};
    let h = harness(b, None).await;
    let r = room("state");
    let bob = UserId::parse("@bob:test.local").unwrap();
    let contents = [
        (
            EventType::Room,
            EventContent {
                name: Some("N \"q\"".into()),
                topic: Some("t".into()),
                visibility: Some(Visibility::Private),
                ..EventContent::default()
            },
        ),
        (EventType::Invite, EventContent { target: Some(bob.clone()), ..EventContent::default() }),
        (
            EventType::Role,
            EventContent { target: Some(bob.clone()), role: Some(Role::Moderator), ..EventContent::default() },
        ),
        (
            EventType::Ban,
            EventContent { target: Some(bob.clone()), reason: Some("spam".into()), ..EventContent::default() },
        ),
        (EventType::Reject, EventContent::default()),
    ];
    for (kind, content) in &contents {
        let new = NewEvent { kind: *kind, sender: alice(), body: None, content: Box::new(content.clone()), txn: None };
        stored(h.log.append(&r, new).await.unwrap());
    }
    let page = h.log.read(&r, Range::After(0), 10).await.unwrap();
    let got: Vec<_> = page.events.iter().map(|e| (e.kind, (*e.content).clone())).collect();
    assert_eq!(got, contents.to_vec());
    h.sink.wait_for(&r, 5).await;
    let delivered: serde_json::Value = serde_json::from_str(&h.sink.json(&r, 3).unwrap()).unwrap();
    assert_eq!((delivered["type"].as_str(), delivered["role"].as_str()), (Some("role"), Some("moderator")));
    // A replica keeps them too.
    let replica = RoomId::parse("!replica:home.example").unwrap();
    h.log.import(&replica, "home-epoch", None, page.events.clone()).await.unwrap();
    let copy = h.log.read(&replica, Range::After(0), 10).await.unwrap();
    assert_eq!(copy.events, page.events);
}

/// Whether any value the embedded log stores holds `needle`.
fn sled_holds(db: &Db, needle: &str) -> bool {
    db.tree("events").unwrap().iter().any(|kv| {
        let (_, v) = kv.unwrap();
        v.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

/// Whether the Redis key holds `needle` in any form: `DUMP` serializes a
/// stream's nodes as they are in memory, entries only flagged as deleted
/// included (uncompressed, so that the bytes show).
fn redis_key_holds(redis: &RedisServer, key: &str, needle: &str) -> bool {
    redis.cli(&["CONFIG", "SET", "rdbcompression", "no"]).unwrap();
    redis.cli(&["DUMP", key]).unwrap().contains(needle)
}

/// v1.1 redactions: `erase` takes the bodies of the named events out of
/// the store (not only out of reads), keeps everything else of them and of
/// the log, and is idempotent. 250 events span several Redis stream nodes.
async fn erase_takes_bodies_out_of_the_store(b: Backend) {
    use parlor::protocol::events::EventContent;
    let h = harness(b, None).await;
    let r = room("erase");
    let mut ids = Vec::new();
    for i in 1..=250u64 {
        let body = if i == 120 { "secret-original-b0dy".to_owned() } else { format!("m{i}") };
        ids.push(stored(h.log.append(&r, msg(&body)).await.unwrap()).0);
    }
    let edit = NewEvent {
        content: Box::new(EventContent { replaces: Some(ids[119].clone()), ..EventContent::default() }),
        ..msg("secret-edited-b0dy")
    };
    assert_eq!(stored(h.log.append(&r, edit).await.unwrap()).1, 251);
    h.sink.wait_for(&r, 251).await;
    let before = h.log.read(&r, Range::After(0), 1000).await.unwrap();
    let holds = |needle: &str| match &h.redis {
        None => sled_holds(&h.db, needle),
        // DUMP: what Redis keeps, entries flagged as deleted included.
        Some(redis) => {
            redis_key_holds(redis, &format!("parlor:{{{r}}}:log"), needle)
                || redis_key_holds(redis, "parlor:feed", needle)
        }
    };
    assert!(holds("secret-original-b0dy") && holds("secret-edited-b0dy"), "the test sees stored bodies");

    // 251 is the newest event: on Redis its copy is the feed's newest entry,
    // rewritten in place like the others (its id stays, for the feed's readers).
    assert_eq!(h.log.erase(&r, &before.head.epoch, &[120, 251]).await.unwrap(), 2);
    assert!(!holds("secret-original-b0dy") && !holds("secret-edited-b0dy"), "the bodies are gone from the store");
    if let Some(redis) = &h.redis {
        // Rewritten, not dropped: the feed keeps an entry per event.
        assert_eq!(redis.cli(&["XLEN", "parlor:feed"]).unwrap().trim(), "251");
    }
    assert_eq!(stored(h.log.append(&r, msg("after")).await.unwrap()).1, 252);
    assert_eq!(h.log.erase(&r, &before.head.epoch, &[120, 251]).await.unwrap(), 0, "idempotent");
    let after = h.log.read(&r, Range::After(0), 251).await.unwrap();
    assert_eq!(after.head.epoch, before.head.epoch);
    assert_eq!(after.events.len(), 251);
    for (a, b) in after.events.iter().zip(&before.events) {
        if a.seq == 120 || a.seq == 251 {
            assert_eq!((a.body.as_deref(), a.content.redacted), (None, true), "{a:?}");
            assert_eq!((&a.event_id, a.kind, &a.sender, a.ts), (&b.event_id, b.kind, &b.sender, b.ts));
            assert_eq!(a.content.replaces, b.content.replaces);
        } else {
            assert_eq!(a, b);
        }
    }
    // Every way of reading agrees, and the log goes on from where it was.
    let back = h.log.read(&r, Range::Before(200), 100).await.unwrap();
    assert_eq!(back.events.iter().map(|e| e.seq).collect::<Vec<_>>(), (100..200).collect::<Vec<_>>());
    assert!(back.events[20].content.redacted);
    assert_eq!(h.log.erase(&r, "another-epoch", &[5]).await.unwrap(), 0, "an epoch the log does not keep");
    assert_eq!(stored(h.log.append(&r, msg("next")).await.unwrap()).1, 253);
    h.sink.wait_for(&r, 253).await;
}

backend_tests!(
    erase_takes_bodies_out_of_the_store,
    state_events_keep_their_content,
    contiguous_under_concurrency,
    pipelined_order,
    resolves_after_the_sink_has_it,
    idempotent_transactions,
    read_ranges,
    retention_trims,
    imports_keep_the_home_servers_order
);

// ---- Redis only ----

fn meta(redis: &RedisServer, r: &RoomId) -> String {
    redis.cli(&["HGET", &format!("parlor:{{{r}}}:meta"), "epoch"]).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logs_on_one_redis_see_each_others_appends_once_in_order() {
    let redis = RedisServer::start();
    let (pa, pb) = (process(&redis.url).await, process(&redis.url).await);
    let (sa, sb) = (pa.sink.clone(), pb.sink.clone());
    let (a, b) = (Arc::new(pa.log), Arc::new(pb.log));
    let r = room("shared");
    let mut futs = Vec::new();
    for i in 0..300 {
        let log: Arc<dyn EventLog> = if i % 2 == 0 { a.clone() } else { b.clone() };
        futs.push(tokio::spawn(
            log.append(&r, txn_msg(if i % 2 == 0 { "A" } else { "B" }, &format!("t{i}"), &format!("m{i}"))),
        ));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for f in futs {
        seqs.push(stored(f.await.unwrap().unwrap()).1);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>(), "contiguous, no duplicates across logs");
    sa.wait_for(&r, 300).await;
    sb.wait_for(&r, 300).await;
    assert_eq!(sa.seqs(&r), (1..=300).collect::<Vec<u64>>());
    assert_eq!(sb.seqs(&r), (1..=300).collect::<Vec<u64>>());
    // One more event marks the end: anything delivered twice would show before it.
    b.append(&r, msg("end")).await.unwrap();
    sa.wait_for(&r, 301).await;
    assert_eq!(sa.seqs(&r), (1..=301).collect::<Vec<u64>>(), "nothing delivered twice");
    assert_eq!(sa.json(&r, 7), sb.json(&r, 7), "both processes build the same event");
    a.close().await;
    b.close().await;
}

/// A redacted copy deep in the feed (more than the 5,000 entries the
/// scrub rewrites in place from the feed's end) goes with a trim of the
/// feed past its stream node; the feed keeps its newest entries and goes
/// on delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_trims_a_deep_feed_copy_away() {
    let h = harness(Backend::Redis, None).await;
    let redis = h.redis.as_ref().unwrap();
    let r = room("deep");
    let mut appends = Vec::new();
    for i in 1..=5_300u64 {
        let body = if i == 10 { "deep-secret-b0dy".to_owned() } else { format!("m{i}") };
        appends.push(h.log.append(&r, msg(&body)));
    }
    let mut last = 0;
    for a in appends {
        last = last.max(stored(a.await.unwrap()).1);
    }
    assert_eq!(last, 5_300);
    h.sink.wait_for(&r, 5_300).await;
    let epoch = h.log.read(&r, Range::After(0), 1).await.unwrap().head.epoch;
    assert!(redis_key_holds(redis, "parlor:feed", "deep-secret-b0dy"), "the test sees the feed's copy");

    assert_eq!(h.log.erase(&r, &epoch, &[10]).await.unwrap(), 1);
    assert!(!redis_key_holds(redis, "parlor:feed", "deep-secret-b0dy"), "the feed's node is gone");
    assert!(!redis_key_holds(redis, &format!("parlor:{{{r}}}:log"), "deep-secret-b0dy"), "the log's too");
    let len: u64 = redis.cli(&["XLEN", "parlor:feed"]).unwrap().trim().parse().unwrap();
    assert!((5_000..5_300).contains(&len), "trimmed past the copy's node, newest kept: {len}");
    assert_eq!(stored(h.log.append(&r, msg("after")).await.unwrap()).1, 5_301);
    h.sink.wait_for(&r, 5_301).await;
}

/// A redaction reaches an epoch Redis archived after a rollback: the
/// archive is rewritten without the body, and reads of it say `redacted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_reaches_an_archived_epoch() {
    let h = harness(Backend::Redis, None).await;
    let redis = h.redis.as_ref().unwrap();
    let r = room("archived");
    for body in ["a1", "secret-archived-b0dy", "a3"] {
        h.log.append(&r, msg(body)).await.unwrap();
    }
    let old = h.log.head(&r).await.unwrap().epoch.to_string();
    // A counter behind the stream (a restore of an older meta) makes the
    // next append archive the stream and start a new epoch.
    redis.cli(&["HSET", &format!("parlor:{{{r}}}:meta"), "seq", "0"]).unwrap();
    h.log.append(&r, msg("new")).await.unwrap();
    assert_ne!(*h.log.head(&r).await.unwrap().epoch, *old);
    assert_eq!(h.log.archived_epochs(&r).await.unwrap(), vec![old.clone()]);
    let archive = format!("parlor:{{{r}}}:archive:{old}");
    assert!(redis_key_holds(redis, &archive, "secret-archived-b0dy"));
    assert_eq!(h.log.erase(&r, &old, &[2]).await.unwrap(), 1);
    assert!(!redis_key_holds(redis, &archive, "secret-archived-b0dy"));
    assert!(!redis.cli(&["XRANGE", "parlor:feed", "-", "+"]).unwrap().contains("secret-archived-b0dy"));
    let page = h.log.read_epoch(&r, &old, Range::After(0), 10).await.unwrap().unwrap();
    let got: Vec<_> = page.events.iter().map(|e| (e.seq, e.body.as_deref(), e.content.redacted)).collect();
    assert_eq!(got, vec![(1, Some("a1"), false), (2, None, true), (3, Some("a3"), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_starts_a_new_epoch_and_reuses_no_seq() {
    let h = harness(Backend::Redis, None).await;
    let redis = h.redis.as_ref().unwrap();
    let r = room("flush");
    for i in 0..5 {
        h.log.append(&r, msg(&format!("f{i}"))).await.unwrap();
    }
    let before: LogHead = h.log.head(&r).await.unwrap();
    assert_eq!(before.latest, 5);
    assert_eq!(redis.cli(&["FLUSHALL"]).unwrap().trim(), "OK");
    let after = h.log.head(&r).await.unwrap();
    assert_ne!(after.epoch, before.epoch, "lost data means a new epoch");
    assert_eq!((after.earliest, after.latest), (1, 0));
    let (_, seq) = stored(h.log.append(&r, msg("new")).await.unwrap());
    assert_eq!(seq, 1);
    assert_eq!(h.sink.epochs(&r).last().unwrap(), &*after.epoch, "the feed survived the flush");
    assert_eq!(h.sink.seqs(&r), vec![1, 2, 3, 4, 5, 1]);
    assert_eq!(meta(redis, &r), &*after.epoch);
}

/// A restart from an older snapshot (as a failover that lost the last
/// writes): the counter is behind what this process saw, so the epoch
/// changes instead of handing out seqs 4 and 5 a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_behind_what_was_seen_starts_a_new_epoch() {
    let mut redis = RedisServer::start();
    let Process { log, sink: _sink, _dir, .. } = process(&redis.url).await;
    let r = room("failover");
    for i in 0..3 {
        log.append(&r, msg(&format!("a{i}"))).await.unwrap();
    }
    assert_eq!(redis.cli(&["SAVE"]).unwrap().trim(), "OK");
    for i in 3..5 {
        log.append(&r, msg(&format!("a{i}"))).await.unwrap();
    }
    let old = log.head(&r).await.unwrap();
    assert_eq!(old.latest, 5);
    redis.restart(&[]);
    assert_eq!(redis.cli(&["HGET", &format!("parlor:{{{r}}}:meta"), "seq"]).unwrap().trim(), "3", "snapshot is older");
    let head = wait_ok(|| log.head(&r)).await;
    assert_ne!(head.epoch, old.epoch);
    assert_eq!((head.earliest, head.latest), (1, 0), "the old epoch's stream is not served as the new one");
    let (_, seq) = stored(wait_ok(|| log.append(&r, msg("after"))).await);
    assert_eq!(seq, 1);
    // What Redis still had of the old epoch is kept, under its name.
    let kept = log.read_epoch(&r, &old.epoch, Range::After(0), 10).await.unwrap().expect("the old epoch is archived");
    assert_eq!((&*kept.head.epoch, kept.head.earliest, kept.head.latest), (&*old.epoch, 1, 3));
    let bodies: Vec<_> = kept.events.iter().map(|e| e.body.clone().unwrap()).collect();
    assert_eq!(bodies, ["a0", "a1", "a2"]);
    log.close().await;
}

/// A second process that never saw the lost writes still must not
/// continue an epoch that another process has replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_generation_is_not_resumed() {
    let mut redis = RedisServer::start();
    let Process { log, _dir, .. } = process(&redis.url).await;
    let r = room("gen");
    log.append(&r, msg("e1")).await.unwrap();
    assert_eq!(redis.cli(&["SAVE"]).unwrap().trim(), "OK");
    let e1 = log.head(&r).await.unwrap().epoch;
    // The room's data is lost, and a new epoch starts with seq 1, 2 …
    redis.cli(&["FLUSHALL"]).unwrap();
    log.append(&r, msg("e2-1")).await.unwrap();
    let e2 = log.head(&r).await.unwrap().epoch;
    assert_ne!(e1, e2);
    // … then Redis comes back from the old snapshot, epoch e1 at seq 1.
    redis.restart(&[]);
    let head = wait_ok(|| log.head(&r)).await;
    assert_ne!(head.epoch, e1, "e1 was replaced; resuming it could reuse seq 2");
    assert_ne!(head.epoch, e2);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_fast_and_recovers_by_itself() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let Process { log, sink, _dir, .. } = process(&redis.url).await;
    let r = room("outage");
    for i in 0..3 {
        log.append(&r, msg(&format!("o{i}"))).await.unwrap();
    }
    let epoch = log.head(&r).await.unwrap().epoch;
    redis.kill();
    for _ in 0..3 {
        let t = Instant::now();
        let res = log.append(&r, msg("lost")).await;
        let took = t.elapsed();
        assert!(matches!(res, Err(StorageError::Unavailable(_))), "{res:?}");
        assert!(took < Duration::from_secs(1), "failed in {took:?}: not fast");
        assert!(matches!(log.head(&r).await, Err(StorageError::Unavailable(_))));
    }
    assert!(!log.healthy().await);
    redis.restart(&["--appendonly", "yes", "--appendfsync", "always"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.healthy().await {
        assert!(Instant::now() < deadline, "did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, seq) = stored(log.append(&r, msg("back")).await.unwrap());
    assert_eq!(seq, 4, "acknowledged events survived (appendfsync always), none of the failed ones was written");
    assert_eq!(log.head(&r).await.unwrap().epoch, epoch);
    sink.wait_for(&r, 4).await;
    assert_eq!(sink.seqs(&r), vec![1, 2, 3, 4], "the feed reader reconnected by itself");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded() {
    let h = harness(Backend::Redis, None).await;
    let r = room("noscript");
    h.log.append(&r, msg("one")).await.unwrap();
    h.redis.as_ref().unwrap().cli(&["SCRIPT", "FLUSH"]).unwrap();
    assert_eq!(wait_ok(|| h.log.head(&r)).await.latest, 1);
    let (_, seq) = stored(wait_ok(|| h.log.append(&r, msg("two"))).await);
    assert_eq!(seq, 2);
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_an_error() {
    let port = support::free_port();
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let url = format!("redis://127.0.0.1:{port}/");
    let res = RedisLog::open(&url, &db, Arc::new(Recorder::default()), &LogSettings::default()).await;
    assert!(matches!(res, Err(StorageError::Unavailable(_))), "{:?}", res.err());
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// Retries an operation that may meet the outage's tail (a dead connection
/// found on first use); gives up after a few seconds.
async fn wait_ok<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(StorageError::Unavailable(e)) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn signal(pid: i32, sig: Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).expect("a positive pid"), sig).unwrap();
}

fn redis_pid(redis: &RedisServer) -> i32 {
    let info = redis.cli(&["INFO", "server"]).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix("process_id:")).expect("INFO has process_id");
    line.trim().parse().unwrap()
}

/// A Redis that accepts connections but never answers (stopped, or a
/// network black hole) must not hang sends: they fail within the response
/// timeout, and work again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_fails_sends_within_the_timeout() {
    let h = harness(Backend::Redis, None).await;
    let redis = h.redis.as_ref().unwrap();
    let r = room("hung");
    h.log.append(&r, txn_msg("D", "before", "before")).await.unwrap();
    let pid = redis_pid(redis);
    signal(pid, Signal::STOP);
    let t = Instant::now();
    let res = h.log.append(&r, txn_msg("D", "during", "during")).await;
    let took = t.elapsed();
    let read = h.log.head(&r).await;
    let healthy = h.log.healthy().await;
    signal(pid, Signal::CONT);
    assert!(matches!(res, Err(StorageError::Unavailable(_))), "{res:?}");
    assert!(took < Duration::from_secs(3), "a send to a hung redis took {took:?}");
    assert!(matches!(read, Err(StorageError::Unavailable(_))), "{read:?}");
    assert!(!healthy);
    // The timed-out send may still have landed once Redis resumed; resending
    // the same transaction tells, and never stores it twice.
    let again = wait_ok(|| h.log.append(&r, txn_msg("D", "during", "during"))).await;
    let seq = match again {
        AppendOutcome::Stored { seq, .. } | AppendOutcome::Repeated { seq, .. } => seq,
        other => panic!("{other:?}"),
    };
    assert_eq!(seq, 2);
    let page = h.log.read(&r, Range::After(0), 10).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
}

/// Many appends in flight over 20 rooms, on each log, with deep and with no
/// pipelining: every ack arrives and each room's seqs are exactly 1..=n, in
/// the log and at the sink. It prints the rate it saw (`--nocapture`) as a
/// rough figure only; the load tool (`chatbench`) is where speed is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_appends_over_many_rooms_stay_contiguous() {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    const TOTAL: u64 = 4_000;
    const ROOMS: u64 = 20;
    for (name, backend, window) in [
        ("embedded", Backend::Embedded, 256),
        ("redis", Backend::Redis, 256),
        ("embedded", Backend::Embedded, 1),
        ("redis", Backend::Redis, 1),
    ] {
        let total = if window == 1 { TOTAL / 10 } else { TOTAL };
        let h = harness(backend, None).await;
        let rooms: Vec<RoomId> = (0..ROOMS).map(|i| room(&format!("bench{i}"))).collect();
        let body = "x".repeat(64);
        let started = Instant::now();
        let mut in_flight = FuturesUnordered::new();
        let mut issued = 0u64;
        let mut done = 0u64;
        while done < total {
            while issued < total && in_flight.len() < window {
                let r = &rooms[(issued % ROOMS) as usize];
                in_flight.push(h.log.append(r, txn_msg("bench", &format!("t{issued}"), &body)));
                issued += 1;
            }
            stored(in_flight.next().await.unwrap().unwrap());
            done += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        for r in &rooms {
            assert_eq!(h.log.head(r).await.unwrap().latest, total / ROOMS);
            h.sink.wait_for(r, (total / ROOMS) as usize).await;
            assert_eq!(h.sink.seqs(r), (1..=total / ROOMS).collect::<Vec<_>>());
        }
        println!("{name:9} window {window:4}: {total} appends in {secs:.2} s = {:.0}/s", total as f64 / secs);
        h.log.close().await;
    }
}

fn epoch_of(redis: &RedisServer, r: &RoomId) -> String {
    meta(redis, r)
}

/// Issue 11 #2: Redis comes back from an older snapshot while every server
/// is down. The process that appended starts again and, before anything is
/// appended, moves the room to a new epoch (its high-water mark on disk says
/// Redis is behind), so even a process that never saw the room cannot
/// reissue the lost seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_process_moves_a_rolled_back_room_on_before_anyone_appends() {
    let mut redis = RedisServer::start();
    let a = process(&redis.url).await;
    let r = room("snapshot");
    for i in 0..10 {
        a.log.append(&r, msg(&format!("kept {i}"))).await.unwrap();
    }
    assert_eq!(redis.cli(&["SAVE"]).unwrap().trim(), "OK");
    for i in 10..15 {
        a.log.append(&r, msg(&format!("lost {i}"))).await.unwrap();
    }
    let old_epoch = epoch_of(&redis, &r);
    let dir = a.stop().await;
    redis.restart(&[]);
    assert_eq!(redis.cli(&["HGET", &format!("parlor:{{{r}}}:meta"), "seq"]).unwrap().trim(), "10");

    let a = process_in(&redis.url, dir).await;
    let new_epoch = epoch_of(&redis, &r);
    assert_ne!(new_epoch, old_epoch, "the room moved on when the process started");
    let fresh = process(&redis.url).await;
    let (_, seq) = stored(fresh.log.append(&r, msg("from a process that never saw the room")).await.unwrap());
    assert_eq!(seq, 1);
    assert_eq!(epoch_of(&redis, &r), new_epoch);
    let kept = a.log.read_epoch(&r, &old_epoch, Range::Latest, 100).await.unwrap().unwrap();
    assert_eq!(kept.events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
}

/// Issue 11 #2, while running: a process that only read a room's events on
/// the feed (it never appended to it or read it) notices that Redis came
/// back with less when its feed reconnects, and moves the room on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_process_moves_rooms_on_when_redis_comes_back_older() {
    let mut redis = RedisServer::start();
    let (a, b) = (process(&redis.url).await, process(&redis.url).await);
    let r = room("watched");
    for i in 0..10 {
        a.log.append(&r, msg(&format!("kept {i}"))).await.unwrap();
    }
    assert_eq!(redis.cli(&["SAVE"]).unwrap().trim(), "OK");
    for i in 10..15 {
        a.log.append(&r, msg(&format!("lost {i}"))).await.unwrap();
    }
    b.sink.wait_for(&r, 15).await;
    let old_epoch = epoch_of(&redis, &r);
    drop(a.stop().await);
    redis.restart(&[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while epoch_of(&redis, &r) == old_epoch {
        assert!(Instant::now() < deadline, "the room was not moved on after redis came back older");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = process(&redis.url).await;
    let (_, seq) = stored(fresh.log.append(&r, msg("after")).await.unwrap());
    assert_eq!(seq, 1, "no seq of the old epoch is handed out again");
    // B delivered 1..15 of the old epoch once; the feed read again after the
    // rollback does not deliver them twice, and the new epoch follows.
    b.sink.wait_for(&r, 16).await;
    assert_eq!(b.sink.seqs(&r), (1..=15).chain([1]).collect::<Vec<_>>());
    assert_eq!(b.sink.epochs(&r).last().unwrap(), &epoch_of(&redis, &r));
    drop(b);
}

/// The embedded log forgets a transaction id once its TTL has passed (24 h
/// outside tests), so its records do not grow without bound; never sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_transaction_records_expire_after_their_ttl() {
    let ttl = Duration::from_millis(400);
    let h = harness_with(Backend::Embedded, LogSettings { retention: None, txn_ttl: ttl }).await;
    let r = room("expiry");
    let tree = h.db.tree("events").unwrap();
    let records = || tree.scan_prefix(b"t\0").count();
    let written = Instant::now();
    let (id, seq) = stored(h.log.append(&r, txn_msg("D", "t1", "hello")).await.unwrap());
    for i in 0..20 {
        h.log.append(&r, txn_msg("D", &format!("other{i}"), "x")).await.unwrap();
    }
    match h.log.append(&r, txn_msg("D", "t1", "hello")).await.unwrap() {
        AppendOutcome::Repeated { event_id, seq: s } => assert_eq!((event_id, s), (id, seq)),
        other => assert!(written.elapsed() >= ttl, "forgotten before its ttl: {other:?}"),
    }
    assert!(records() > 0);
    tokio::time::sleep_until((written + ttl).into()).await;
    // Expiry happens on write: appends without a transaction sweep too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while records() > 0 {
        assert!(Instant::now() < deadline, "{} transaction records left after their ttl", records());
        h.log.append(&r, msg("tick")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, again) = stored(h.log.append(&r, txn_msg("D", "t1", "hello")).await.unwrap());
    assert!(again > seq, "an expired transaction id is a new send");
}

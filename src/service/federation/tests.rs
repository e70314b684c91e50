//! The push side against a fake network: bounded queues, backing off, being
//! dropped from push sets and taken back; and the replay memory.

use std::collections::HashSet;

use super::*;
use crate::protocol::events::{Event, EventType};
use crate::storage::federation::SeenRequests;
use crate::storage::rooms::{EmbeddedRooms, RoomRecord};

/// A network where each server is up (answers `{}`) or down, recording every request.
#[derive(Default)]
struct FakeNet {
    up: Mutex<HashSet<String>>,
    /// Requests it took.
    sent: Mutex<Vec<(String, FedRequest)>>,
    /// Every attempt: to whom, and how many events it carried.
    attempts: Mutex<Vec<(String, usize)>>,
}

impl FakeNet {
    fn set_up(&self, server: &str, up: bool) {
        let mut s = self.up.lock().unwrap();
        if up {
            s.insert(server.into());
        } else {
            s.remove(server);
        }
    }

    fn pushes_to(&self, server: &str) -> Vec<FedRequest> {
        self.sent.lock().unwrap().iter().filter(|(s, _)| s == server).map(|(_, r)| r.clone()).collect()
    }

    /// The seqs of the events pushed to `server` that it took.
    fn seqs_pushed(&self, server: &str) -> Vec<u64> {
        let mut seqs = Vec::new();
        for req in self.pushes_to(server) {
            let txn: crate::protocol::federation::FedTransaction = serde_json::from_slice(&req.body).unwrap();
            seqs.extend(txn.events.iter().map(|e| e.event.seq));
        }
        seqs
    }
}

impl Transport for FakeNet {
    fn send<'a>(
        &'a self,
        server: &'a str,
        req: FedRequest,
        _within: Duration,
    ) -> BoxFuture<'a, Result<FedAnswer, TransportError>> {
        let up = self.up.lock().unwrap().contains(server);
        Box::pin(async move {
            assert!(req.body.len() <= PUSH_TXN_BYTES, "a transaction over the receiver's body limit");
            let txn: crate::protocol::federation::FedTransaction = serde_json::from_slice(&req.body).unwrap();
            self.attempts.lock().unwrap().push((server.to_owned(), txn.events.len()));
            if !up {
                return Err(TransportError::Unreachable { server: server.into(), detail: "down".into() });
            }
            self.sent.lock().unwrap().push((server.to_owned(), req));
            Ok(FedAnswer { status: 200, body: Bytes::from_static(b"{}") })
        })
    }
}

struct Setup {
    fed: Arc<Federation>,
    net: Arc<FakeNet>,
    room: RoomId,
    _dir: tempfile::TempDir,
}

/// A federation of `home` whose room `!r:home` has a member on server `b`.
async fn setup(settings: Settings) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::Db::open(dir.path()).unwrap();
    let store = EmbeddedRooms::open(&db).unwrap();
    let room = RoomId::parse("!r:home").unwrap();
    let rec =
        RoomRecord { room_id: room.to_string(), alias: Some("#r:home".into()), created_ms: 0, ..RoomRecord::default() };
    store.create(&rec).await.unwrap();
    let members = [("@a:home".to_owned(), true), ("@u:b".to_owned(), true)];
    store.set_members(room.as_str(), &members, 0).await.unwrap();
    let net = Arc::new(FakeNet::default());
    let seen = SeenRequests::open(&db).unwrap();
    let fed = Federation::new(
        ServerName::parse("home").unwrap(),
        &Federation::generate_key(),
        settings,
        net.clone(),
        Arc::new(store),
        seen,
        PushLeases::Local,
    )
    .unwrap();
    fed.start();
    Setup { fed, net, room, _dir: dir }
}

fn settings() -> Settings {
    Settings {
        public_url: "http://home".into(),
        retry_max: Duration::from_secs(1),
        give_up: Duration::from_secs(10),
        queue_max: 10,
    }
}

fn event(seq: u64, body: &str) -> String {
    serde_json::to_string(&Event {
        event_id: format!("$e{seq}:home"),
        seq,
        kind: EventType::Message,
        sender: UserId::parse("@a:home").unwrap(),
        body: Some(body.into()),
        ts: seq,
        content: Default::default(),
    })
    .unwrap()
}

/// Waits (in the test's paused time) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn an_unreachable_server_is_bounded_dropped_and_taken_back_when_heard_from() {
    let s = setup(settings()).await;
    tokio::time::pause();
    let epoch: Arc<str> = "ep".into();
    for seq in 1..=50 {
        s.fed.on_event(&s.room, &epoch, &event(seq, "x"));
    }
    let head = |s: &Setup| s.fed.queues.lock().unwrap().get(&s.room).map_or(0, |q| q.head());
    until("every event routed and a retry made", || head(&s) == 50 && s.fed.stats().dropped_overflow > 0).await;
    let st = s.fed.stats();
    assert!(st.queued <= 10, "the queue is bounded: {st:?}");
    assert!(st.dropped_overflow >= 30, "{st:?}");
    assert_eq!(st.failing, 1, "{st:?}");
    let len = s.fed.queues.lock().unwrap()[&s.room].items.len();
    assert_eq!(len, 10, "a room's queue keeps queue_max events");

    // Past `give_up` it is dropped from push sets: only probes (empty
    // transactions) go to it from then on, however many events come.
    until("the server is dropped", || s.fed.stats().down == 1).await;
    let before = s.net.attempts.lock().unwrap().len();
    for seq in 51..=55 {
        s.fed.on_event(&s.room, &epoch, &event(seq, "x"));
    }
    until("the new events are routed", || head(&s) == 55).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later: Vec<(String, usize)> = s.net.attempts.lock().unwrap()[before..].to_vec();
    assert!(later.iter().all(|(_, n)| *n == 0), "pushes to a dropped server: {later:?}");
    assert!((3..=6).contains(&later.len()), "probed every retry_max (1 s) for 5 s: {later:?}");
    assert!(s.net.pushes_to("b").is_empty(), "it never took anything");

    // It is back and signs a request to us: taken back at once, and sent the
    // newest event of the room, which shows it what it lacks.
    s.net.set_up("b", true);
    s.fed.heard_from("b");
    until("the newest event is pushed", || s.net.seqs_pushed("b").contains(&55)).await;
    assert_eq!(s.net.seqs_pushed("b"), [55], "only the newest: it backfills the rest");
    let st = s.fed.stats();
    assert_eq!((st.down, st.failing, st.queued), (0, 0, 0), "{st:?}");
    assert!(st.dropped_down >= 4, "{st:?}");
    s.fed.on_event(&s.room, &epoch, &event(56, "x"));
    until("new events flow again", || s.net.seqs_pushed("b").contains(&56)).await;
    s.fed.close().await;
}

#[tokio::test]
async fn a_server_dropped_from_push_sets_is_probed_and_taken_back() {
    let s = setup(settings()).await;
    tokio::time::pause();
    let epoch: Arc<str> = "ep".into();
    s.fed.on_event(&s.room, &epoch, &event(1, "x"));
    until("the server is dropped", || s.fed.stats().down == 1).await;
    // Probes are paced by retry_max: over 10 s, about ten.
    let t = tokio::time::Instant::now();
    s.net.set_up("b", true);
    until("a probe found it", || s.fed.stats().down == 0).await;
    assert!(t.elapsed() <= Duration::from_secs(2), "probed every retry_max: {:?}", t.elapsed());
    until("the newest event is pushed", || s.net.seqs_pushed("b") == [1]).await;
    let probes = s.net.pushes_to("b").len() - 1;
    assert_eq!(probes, 1, "the probe is an empty transaction");
    s.fed.close().await;
}

#[tokio::test]
async fn transactions_stay_under_the_body_limit() {
    let s = setup(Settings { queue_max: 100, ..settings() }).await;
    s.net.set_up("b", true);
    let epoch: Arc<str> = "ep".into();
    let big = "y".repeat(16 * 1024);
    for seq in 1..=9 {
        s.fed.on_event(&s.room, &epoch, &event(seq, &big));
    }
    // Escaped, this one is larger than any transaction may be: not pushed.
    s.fed.on_event(&s.room, &epoch, &event(10, &"\u{1}".repeat(12 * 1024)));
    s.fed.on_event(&s.room, &epoch, &event(11, "z"));
    until("everything pushed", || s.net.seqs_pushed("b").contains(&11)).await;
    assert_eq!(s.net.seqs_pushed("b"), [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
    assert!(s.net.pushes_to("b").len() >= 3, "16 KiB events go at most three to a transaction");
    assert_eq!(s.fed.stats().dropped_too_large, 1);
    s.fed.close().await;
}

#[tokio::test]
async fn events_of_rooms_homed_elsewhere_are_not_pushed() {
    let s = setup(settings()).await;
    s.net.set_up("b", true);
    let epoch: Arc<str> = "ep".into();
    s.fed.on_event(&RoomId::parse("!r:b").unwrap(), &epoch, &event(1, "theirs"));
    s.fed.on_event(&s.room, &epoch, &event(2, "ours"));
    until("ours pushed", || !s.net.seqs_pushed("b").is_empty()).await;
    assert_eq!(s.net.seqs_pushed("b"), [2]);
    s.fed.close().await;
}

#[test]
fn a_signed_request_is_accepted_once() {
    let mut r = Replays::new(2, 3);
    let now = 1_000_000;
    let d = Replays::digest;
    r.remember("a", d("a", b"sig1"), now, now).unwrap();
    assert_eq!(r.remember("a", d("a", b"sig1"), now, now + 1000), Err(Replay::Seen));
    assert_eq!(r.remember("b", d("b", b"sig1"), now, now), Ok(()), "per origin");
    r.remember("a", d("a", b"sig2"), now, now).unwrap();
    assert!(matches!(r.remember("a", d("a", b"sig3"), now, now), Err(Replay::Full { .. })), "at most 2 for a");
    assert!(matches!(r.remember("c", d("c", b"sig4"), now, now), Err(Replay::Full { .. })), "at most 3 in all");
    // Once the window has passed, a signature is forgotten (its ts is refused anyway).
    let later = now + SIGNATURE_WINDOW_MS + 2 * REPLAY_SLOT_MS;
    assert_eq!(r.remember("a", d("a", b"sig3"), later, later), Ok(()));
    assert_eq!(r.total, 1);
    assert!(!r.per_origin.contains_key("b"), "counts of forgotten origins go");
}

#[test]
fn signing_times_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::Db::open(dir.path()).unwrap();
    let fed = Federation::new(
        ServerName::parse("home").unwrap(),
        &Federation::generate_key(),
        settings(),
        Arc::new(FakeNet::default()),
        Arc::new(EmbeddedRooms::open(&db).unwrap()),
        SeenRequests::open(&db).unwrap(),
        PushLeases::Local,
    )
    .unwrap();
    let ts: Vec<u64> = (0..500).map(|_| fed.next_ts()).collect();
    assert!(ts.windows(2).all(|w| w[1] > w[0]), "strictly increasing");
    assert!(ts[499] <= now_ms() + 1000, "never far ahead of the clock");
}

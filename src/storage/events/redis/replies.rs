//! Turning Redis answers into the log's types: stream entries into events,
//! the scripts' answers into outcomes. Every malformed answer is an error
//! that says what was wrong, never a panic.

use std::sync::Arc;

use redis::streams::StreamId;
use redis::{FromRedisValue, Value};

use super::super::event_id;
use crate::protocol::events::{Event, EventContent, EventType};
use crate::protocol::{RoomId, UserId};
use crate::storage::StorageError;

pub(super) fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt { tree: "redis", detail }
}

pub(super) fn script_error(script: &'static str, detail: String) -> StorageError {
    StorageError::Script { script, detail }
}

/// `ms-seq` as a pair, for ordering stream ids.
pub(super) fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A stream entry's fields as (name, value) pairs, in stream order.
type Fields = Vec<(String, String)>;

fn text(v: Value, what: &str) -> Result<String, StorageError> {
    String::from_redis_value(v).map_err(|e| corrupt(format!("{what}: {e}")))
}

fn number(s: &str) -> Result<u64, StorageError> {
    s.parse().map_err(|_| corrupt(format!("not a number: {s:?}")))
}

/// A room stream entry (id `<seq>-0`) as the event it holds.
pub(super) fn event(room: &RoomId, epoch: &str, entry: StreamId) -> Result<Event, StorageError> {
    let seq = stream_id(&entry.id).0;
    let id = entry.id;
    let fields =
        entry.map.into_iter().map(|(k, v)| Ok((k, text(v, &id)?))).collect::<Result<Fields, StorageError>>()?;
    event_at(room, epoch, seq, fields)
}

/// The event fields of a room stream or feed entry: `t` type, `s` sender,
/// `b` body (messages only), `ts`, `x` the v1.1 content of state events
/// (JSON), and `i` the event id of events imported
/// from a federated room's home server (others derive theirs).
fn event_at(room: &RoomId, epoch: &str, seq: u64, fields: Fields) -> Result<Event, StorageError> {
    let (mut kind, mut sender, mut body, mut ts, mut id) = (None, None, None, 0, None);
    let mut content = EventContent::default();
    for (k, v) in fields {
        match k.as_str() {
            "t" => {
                kind = Some(
                    EventType::from_wire(&v).ok_or_else(|| corrupt(format!("event {seq} of {room}: type {v:?}")))?,
                )
            }
            "s" => sender = Some(UserId::parse(&v).map_err(|e| corrupt(format!("sender {v:?}: {e}")))?),
            "b" => body = Some(v),
            "ts" => ts = number(&v)?,
            "i" => id = Some(v),
            "x" => content = serde_json::from_str(&v).map_err(|e| corrupt(format!("event {seq} of {room}: x: {e}")))?,
            _ => {}
        }
    }
    let (Some(kind), Some(sender)) = (kind, sender) else {
        return Err(corrupt(format!("event {seq} of {room} without a type or a sender")));
    };
    let event_id = id.unwrap_or_else(|| event_id(room, epoch, seq, room.server()));
    Ok(Event { event_id, seq, kind, sender, body, ts, content: Box::new(content) })
}

/// One entry of the shared feed, as read.
pub(super) struct RawEntry {
    pub id: String,
    fields: Fields,
}

/// An `XREAD` answer for the feed (nil when the block timed out) as its
/// entries. Parsed here rather than with redis-rs's `StreamReadReply`,
/// which clones the whole answer before parsing it and builds two hash maps
/// per entry. Every event of every room passes here, and that costs: on the
/// machine of BENCHMARKS.md, decoding one feed entry into a `FeedEntry` took
/// 7.9–8.6 µs through `StreamReadReply` against 2.8–3.2 µs here (timed on
/// a 1,024-entry batch), out of ~35 µs of server CPU per send; test
/// `feed_batch_agrees_with_stream_read_reply` keeps the two in agreement.
pub(super) fn feed_batch(v: Value) -> Result<Vec<RawEntry>, StorageError> {
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams.into_iter().map(|s| match s {
            Value::Array(kv) if kv.len() == 2 => Ok(kv.into_iter().nth(1).expect("two items")),
            other => Err(corrupt(format!("XREAD stream: {other:?}"))),
        }),
        other => return Err(corrupt(format!("XREAD answer: {other:?}"))),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries? else { return Err(corrupt("XREAD entries".into())) };
        out.reserve(entries.len());
        for entry in entries {
            let Value::Array(pair) = entry else { return Err(corrupt("XREAD entry".into())) };
            let [id, fields] = <[Value; 2]>::try_from(pair).map_err(|_| corrupt("XREAD entry".into()))?;
            let id = text(id, "feed entry id")?;
            let fields = match fields {
                Value::Array(f) if f.len() % 2 == 0 => f,
                Value::Nil => Vec::new(),
                other => return Err(corrupt(format!("fields of feed entry {id}: {other:?}"))),
            };
            let mut pairs = Vec::with_capacity(fields.len() / 2);
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((text(k, &id)?, text(v, &id)?));
            }
            out.push(RawEntry { id, fields: pairs });
        }
    }
    Ok(out)
}

/// One entry of the shared feed.
pub(super) struct FeedEntry {
    pub room: RoomId,
    pub epoch: Arc<str>,
    pub generation: u64,
    pub event: Event,
    /// `<instance>/<ticket>` of the appending process (`<instance>/import` for imports).
    pub origin: String,
}

/// A feed entry: `r` room, `e` epoch, `g` generation, `q` seq, `o` origin, then the event's fields.
pub(super) fn feed_entry(raw: RawEntry) -> Result<FeedEntry, StorageError> {
    let (mut room, mut epoch, mut generation, mut seq, mut origin) = (None, None, None, None, String::new());
    let mut rest = Vec::with_capacity(raw.fields.len());
    for (k, v) in raw.fields {
        match k.as_str() {
            "r" => room = Some(RoomId::parse(&v).map_err(|e| corrupt(format!("feed room {v:?}: {e}")))?),
            "e" => epoch = Some(v),
            "g" => generation = Some(number(&v)?),
            "q" => seq = Some(number(&v)?),
            "o" => origin = v,
            _ => rest.push((k, v)),
        }
    }
    let (Some(room), Some(epoch), Some(generation), Some(seq)) = (room, epoch, generation, seq) else {
        return Err(corrupt(format!("feed entry {} without a room, epoch, generation or seq", raw.id)));
    };
    let epoch: Arc<str> = epoch.into();
    let event = event_at(&room, &epoch, seq, rest)?;
    Ok(FeedEntry { room, epoch, generation, event, origin })
}

/// The append script's answer.
pub(super) struct Appended {
    pub status: String,
    pub epoch: Arc<str>,
    pub generation: u64,
    pub seq: u64,
}

pub(super) fn appended(v: Value) -> Result<Appended, StorageError> {
    let (status, epoch, generation, seq): (String, String, u64, u64) =
        FromRedisValue::from_redis_value(v).map_err(|e| script_error("append", e.to_string()))?;
    Ok(Appended { status, epoch: epoch.into(), generation, seq })
}

/// Which epoch a read answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadStatus {
    /// The page is of the room's current epoch.
    Current,
    /// The page is of an archived epoch.
    Archived,
    /// The room has no such epoch.
    Unknown,
}

/// The read script's answer.
pub(super) struct ReadAnswer {
    pub status: ReadStatus,
    pub epoch: Arc<str>,
    pub generation: u64,
    pub latest: u64,
    pub earliest: u64,
    pub entries: Vec<StreamId>,
}

pub(super) fn read_answer(v: Value) -> Result<ReadAnswer, StorageError> {
    type Raw = (String, String, u64, u64, u64, redis::streams::StreamRangeReply);
    let (status, epoch, generation, latest, earliest, entries): Raw =
        FromRedisValue::from_redis_value(v).map_err(|e| script_error("read", e.to_string()))?;
    let status = match status.as_str() {
        "current" => ReadStatus::Current,
        "archived" => ReadStatus::Archived,
        "unknown" => ReadStatus::Unknown,
        other => return Err(script_error("read", format!("status {other:?}"))),
    };
    Ok(ReadAnswer {
        status,
        epoch: epoch.into(),
        generation,
        latest,
        earliest: earliest.min(latest + 1),
        entries: entries.ids,
    })
}

/// The import script's answer: generation, seq before, seq after, events written, hole.
pub(super) fn imported(v: Value) -> Result<(u64, u64, u64, u64, bool), StorageError> {
    let (generation, before, latest, written, hole): (u64, u64, u64, u64, u64) =
        FromRedisValue::from_redis_value(v).map_err(|e| script_error("import", e.to_string()))?;
    Ok((generation, before, latest, written, hole == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(stream_id("9-5") < stream_id("10-0"));
        assert!(stream_id("10-1") > stream_id("10-0"));
        assert_eq!(stream_id("0-0"), (0, 0));
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: id.into(),
            map: fields.iter().map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec()))).collect(),
            ..Default::default()
        }
    }

    fn xread(entries: &[(&str, &[(&str, &str)])]) -> Value {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entries = entries
            .iter()
            .map(|(id, f)| {
                let fields = f.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect();
                Value::Array(vec![bulk(id), Value::Array(fields)])
            })
            .collect();
        Value::Array(vec![Value::Array(vec![bulk("parlor:feed"), Value::Array(entries)])])
    }

    #[test]
    fn entries_become_events_and_bad_ones_errors() {
        let room = RoomId::parse("!r:x").unwrap();
        let e = event(&room, "E", entry("7-0", &[("t", "message"), ("s", "@a:x"), ("b", "hi"), ("ts", "5")])).unwrap();
        assert_eq!((e.seq, e.kind, e.body.as_deref(), e.ts), (7, EventType::Message, Some("hi"), 5));
        assert_eq!(e.event_id, event_id(&room, "E", 7, "x"));
        let imported = event(&room, "E", entry("8-0", &[("t", "join"), ("s", "@a:x"), ("i", "$id:y")])).unwrap();
        assert_eq!(imported.event_id, "$id:y");
        assert!(event(&room, "E", entry("9-0", &[("t", "dance"), ("s", "@a:x")])).is_err());
        assert!(event(&room, "E", entry("9-0", &[("t", "join")])).is_err());
    }

    #[test]
    fn feed_answers_become_feed_entries() {
        assert!(feed_batch(Value::Nil).unwrap().is_empty(), "a block that timed out");
        let batch = feed_batch(xread(&[
            ("1-1", &[("r", "!r:x"), ("e", "E"), ("g", "3"), ("q", "2"), ("o", "i/9"), ("t", "leave"), ("s", "@a:x")]),
            ("1-2", &[("r", "!r:x"), ("e", "E"), ("q", "3")]),
        ]))
        .unwrap();
        assert_eq!(batch.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["1-1", "1-2"]);
        let mut batch = batch.into_iter();
        let f = feed_entry(batch.next().unwrap()).unwrap();
        assert_eq!((&*f.epoch, f.generation, f.event.seq, f.origin.as_str()), ("E", 3, 2, "i/9"));
        assert_eq!(f.event.kind, EventType::Leave);
        assert!(feed_entry(batch.next().unwrap()).is_err(), "no generation");
        assert!(feed_batch(Value::Int(3)).is_err());
    }

    /// `feed_batch` reads a feed answer exactly as redis-rs's
    /// `StreamReadReply` does (the decoder it replaces for speed: see its doc).
    #[test]
    fn feed_batch_agrees_with_stream_read_reply() {
        let body = "x".repeat(64);
        let fields: Vec<(&str, &str)> = vec![
            ("r", "!room0001:bench.example"),
            ("e", "AbCdEfGhIjKl"),
            ("g", "1764000000000"),
            ("q", "12345"),
            ("o", "AbCdEfGhIjKl/777"),
            ("t", "message"),
            ("s", "@someone:bench.example"),
            ("b", &body),
            ("ts", "1764000000123"),
        ];
        let ids: Vec<String> = (0..64).map(|i| format!("1764000000000-{i}")).collect();
        let batch: Vec<(&str, &[(&str, &str)])> = ids.iter().map(|id| (id.as_str(), &fields[..])).collect();
        let answer = xread(&batch);
        let ours: Vec<FeedEntry> =
            feed_batch(answer.clone()).unwrap().into_iter().map(|r| feed_entry(r).unwrap()).collect();
        let reply = redis::streams::StreamReadReply::from_redis_value(answer).unwrap();
        let theirs: Vec<FeedEntry> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|e| {
                let id = e.id;
                let fields = e.map.into_iter().map(|(k, v)| (k, text(v, &id).unwrap())).collect();
                feed_entry(RawEntry { id, fields }).unwrap()
            })
            .collect();
        assert_eq!(ours.len(), 64);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(
                (&a.room, &a.epoch, a.generation, &a.event, &a.origin),
                (&b.room, &b.epoch, b.generation, &b.event, &b.origin)
            );
        }
    }
}

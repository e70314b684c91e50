//! Turning Redis answers into the log's types: stream entries into events,
//! the scripts' answers into outcomes. Every malformed answer is an error
//! that says what was wrong, never a panic.

use std::sync::Arc;

use redis::streams::StreamId;
use redis::{FromRedisValue, Value};

use super::super::event_id;
use crate::protocol::events::{Event, EventType};
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

fn text(entry: &StreamId, field: &str) -> Result<Option<String>, StorageError> {
    match entry.map.get(field) {
        None => Ok(None),
        Some(v) => String::from_redis_value_ref(v)
            .map(Some)
            .map_err(|e| corrupt(format!("field {field:?} of stream entry {}: {e}", entry.id))),
    }
}

fn number(entry: &StreamId, field: &str) -> Result<Option<u64>, StorageError> {
    match text(entry, field)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| corrupt(format!("field {field:?} is not a number: {s:?}"))),
    }
}

/// A room stream entry (id `<seq>-0`) as the event it holds.
pub(super) fn event(room: &RoomId, epoch: &str, entry: &StreamId) -> Result<Event, StorageError> {
    event_at(room, epoch, stream_id(&entry.id).0, entry)
}

/// The event fields of a room stream or feed entry: `t` type, `s` sender,
/// `b` body (messages only), `ts`, and `i` the event id of events imported
/// from a federated room's home server (others derive theirs).
fn event_at(room: &RoomId, epoch: &str, seq: u64, entry: &StreamId) -> Result<Event, StorageError> {
    let kind = match text(entry, "t")?.as_deref() {
        Some("message") => EventType::Message,
        Some("join") => EventType::Join,
        Some("leave") => EventType::Leave,
        other => return Err(corrupt(format!("event {seq} of {room}: type {other:?}"))),
    };
    let sender = text(entry, "s")?.ok_or_else(|| corrupt(format!("event {seq} of {room} without a sender")))?;
    let sender = UserId::parse(&sender).map_err(|e| corrupt(format!("sender {sender:?}: {e}")))?;
    let event_id = match text(entry, "i")? {
        Some(id) => id,
        None => event_id(room, epoch, seq, room.server()),
    };
    Ok(Event { event_id, seq, kind, sender, body: text(entry, "b")?, ts: number(entry, "ts")?.unwrap_or(0) })
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
pub(super) fn feed_entry(entry: &StreamId) -> Result<FeedEntry, StorageError> {
    let missing = |f: &str| corrupt(format!("feed entry {} without {f}", entry.id));
    let room = text(entry, "r")?.ok_or_else(|| missing("a room"))?;
    let room = RoomId::parse(&room).map_err(|e| corrupt(format!("feed room {room:?}: {e}")))?;
    let epoch: Arc<str> = text(entry, "e")?.ok_or_else(|| missing("an epoch"))?.into();
    let generation = number(entry, "g")?.ok_or_else(|| missing("a generation"))?;
    let seq = number(entry, "q")?.ok_or_else(|| missing("a seq"))?;
    let event = event_at(&room, &epoch, seq, entry)?;
    Ok(FeedEntry { room, epoch, generation, event, origin: text(entry, "o")?.unwrap_or_default() })
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

    #[test]
    fn entries_become_events_and_bad_ones_errors() {
        let room = RoomId::parse("!r:x").unwrap();
        let e = event(&room, "E", &entry("7-0", &[("t", "message"), ("s", "@a:x"), ("b", "hi"), ("ts", "5")])).unwrap();
        assert_eq!((e.seq, e.kind, e.body.as_deref(), e.ts), (7, EventType::Message, Some("hi"), 5));
        assert_eq!(e.event_id, event_id(&room, "E", 7, "x"));
        let imported = event(&room, "E", &entry("8-0", &[("t", "join"), ("s", "@a:x"), ("i", "$id:y")])).unwrap();
        assert_eq!(imported.event_id, "$id:y");
        assert!(event(&room, "E", &entry("9-0", &[("t", "dance"), ("s", "@a:x")])).is_err());
        assert!(event(&room, "E", &entry("9-0", &[("t", "join")])).is_err());
        let f = feed_entry(&entry(
            "1-1",
            &[("r", "!r:x"), ("e", "E"), ("g", "3"), ("q", "2"), ("o", "i/9"), ("t", "leave"), ("s", "@a:x")],
        ))
        .unwrap();
        assert_eq!((&*f.epoch, f.generation, f.event.seq, f.origin.as_str()), ("E", 3, 2, "i/9"));
        assert!(feed_entry(&entry("1-2", &[("r", "!r:x"), ("e", "E"), ("q", "2")])).is_err());
    }
}

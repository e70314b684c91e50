//! Room events and cursors, shared by history pages and WebSocket frames.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ids::UserId;

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A chat message; has a `body`.
    Message,
    /// The sender joined the room.
    Join,
    /// The sender left the room.
    Leave,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// One event of a room log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Opaque and unique.
    pub event_id: String,
    /// The room's own counter: 1, 2, 3, … with no holes within an epoch.
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Who sent it; every event carries its sender.
    pub sender: UserId,
    /// The text of a `message` event; absent on `join` and `leave`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// When the room's home server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
}

/// A position in a room log: the last event a client has seen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// The room log's epoch; it changes only when the log was started again.
    pub epoch: String,
    /// The seq of the last event seen; 0 means none.
    pub seq: u64,
}

/// Which events of a room log to read: the `before` / `after` of a
/// history request or the `since` of a subscription, as the log sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The first `limit` events with seq > n.
    After(u64),
    /// The last `limit` events with seq < n.
    Before(u64),
    /// The last `limit` events.
    Latest,
}

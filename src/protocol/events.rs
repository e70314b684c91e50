//! Room events and cursors, shared by history pages and WebSocket frames.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ids::UserId;
use super::rooms::{Role, Visibility};

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
    /// v1.1: the sender changed the room's state; carries the new `name`,
    /// `topic` and `visibility` (the room's whole state after the change;
    /// `name` and `topic` absent when unset). The first event of a room made
    /// by `POST /rooms` is one, sent by its creator.
    Room,
    /// v1.1: the sender invited `target`.
    Invite,
    /// v1.1: the sender declined their invite.
    Reject,
    /// v1.1: the sender removed `target` from the room (`reason` optional).
    Kick,
    /// v1.1: the sender banned `target` (`reason` optional); a member is removed too.
    Ban,
    /// v1.1: the sender lifted the ban of `target` (`reason` optional).
    Unban,
    /// v1.1: the sender gave `target` the `role`.
    Role,
    /// v1.1: the sender erased the body of the message `redacts` (and of
    /// its edits); `reason` optional.
    Redaction,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Room => "room",
            Self::Invite => "invite",
            Self::Reject => "reject",
            Self::Kick => "kick",
            Self::Ban => "ban",
            Self::Unban => "unban",
            Self::Role => "role",
            Self::Redaction => "redaction",
        }
    }

    /// The type a wire string names.
    pub fn from_wire(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// v1.1: what a state event carries besides v1's fields; every field is
/// absent on the events that do not use it (all of them on v1's types).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventContent {
    /// The user the event concerns, when not the sender (`invite`, `kick`, `ban`, `unban`, `role`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<UserId>,
    /// `room`: the room's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `room`: the room's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `room`: the room's visibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    /// `role`: the target's new role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `kick`, `ban`, `unban`, `redaction`: the reason, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `message`: the `event_id` of the sender's earlier message this one
    /// edits; `body` is that message's new text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// `redaction`: the `event_id` of the message whose body it erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacts: Option<String>,
    /// v1.1: the event (a `message`, or an edit of one) was redacted: it
    /// keeps its `event_id`, `seq`, `type`, `sender`, `ts` and `replaces`,
    /// and has no `body`. Absent on events that were not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

impl EventContent {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
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
    /// The text of a `message` event; absent on `join` and `leave`, and on a
    /// redacted message (v1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// When the room's home server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// v1.1 fields of state events (boxed: most events have none).
    #[serde(flatten)]
    pub content: Box<EventContent>,
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

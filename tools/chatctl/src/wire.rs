//! The v1 and v1.1 wire format as chatctl sees it, written from `spec/protocol.md`
//! and `spec/schemas/` alone: chatctl must work against any server that
//! follows the spec, so it deliberately does not share the reference
//! server's types. Answers ignore fields they do not know (the spec lets
//! servers add fields); events keep them so `--json` passes them through.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The prefix of every client endpoint.
pub const CLIENT_PREFIX: &str = "/_parlor/client/v1";
/// The WebSocket subprotocol a client must offer.
pub const WS_SUBPROTOCOL: &str = "parlor.v1";

/// Every error answer, on HTTP and (with `type: "error"`) on the WebSocket.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub errcode: String,
    pub error: String,
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct RegisterRequest<'a> {
    pub username: &'a str,
    pub password: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct RegisterResponse {
    pub user_id: String,
}

#[derive(Debug, Serialize)]
pub struct LoginRequest<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub device_name: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct LoginResponse {
    pub user_id: String,
    pub device_id: String,
    pub access_token: String,
}

#[derive(Debug, Deserialize)]
pub struct WhoamiResponse {
    pub user_id: String,
    pub device_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room_id: String,
    /// Absent for v1.1 rooms made without an alias (direct messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// One item of `GET /rooms`. v1.1 fields are optional so a v1 server's
/// answer still reads; `extra` keeps fields a later server adds, so
/// `rooms --json` passes the item through whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomItem {
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `join` or `invite` (v1.1); a v1 server lists joined rooms only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// At most 100, which means "100 or more".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RoomItem {
    pub fn is_invite(&self) -> bool {
        self.membership.as_deref() == Some("invite")
    }
}

#[derive(Debug, Deserialize)]
pub struct RoomsResponse {
    pub rooms: Vec<RoomItem>,
}

#[derive(Debug, Deserialize)]
pub struct Member {
    pub user_id: String,
    /// v1.1; absent from a v1 server.
    #[serde(default)]
    pub role: Option<String>,
    /// v1.1, for the server's own users only.
    #[serde(default)]
    pub presence: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MembersResponse {
    pub room_id: String,
    pub members: Vec<Member>,
}

#[derive(Debug, Serialize)]
pub struct SendRequest<'a> {
    pub body: &'a str,
    /// v1.1: the `event_id` of one's own earlier message this one edits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<&'a str>,
}

/// v1.1 `PUT /rooms/{room}/redact/{event_id}/{txn_id}`.
#[derive(Debug, Serialize)]
pub struct RedactRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// v1.1 `POST /rooms`.
#[derive(Debug, Default, Serialize)]
pub struct CreateRoomRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invite: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRoomResponse {
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// v1.1 `PATCH /rooms/{room}`: only the fields given change.
#[derive(Debug, Default, Serialize)]
pub struct RoomUpdate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<&'a str>,
}

/// v1.1 `invite`, `kick`, `ban`, `unban` and `POST /dm` (the latter two
/// without a reason).
#[derive(Debug, Serialize)]
pub struct UserRequest<'a> {
    pub user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct RoleRequest<'a> {
    pub role: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct DmResponse {
    pub room_id: String,
}

#[derive(Debug, Serialize)]
pub struct ReadRequest {
    pub seq: u64,
}

#[derive(Debug, Deserialize)]
pub struct SendResponse {
    pub event_id: String,
    pub seq: u64,
}

/// One event of a room log. `extra` keeps fields a later server adds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub ts: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct MessagesResponse {
    pub room_id: String,
    pub epoch: String,
    pub earliest_seq: u64,
    pub latest_seq: u64,
    pub events: Vec<Event>,
}

/// A position in a room log: the last event seen (`seq` 0: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: String,
    pub seq: u64,
}

/// The frames chatctl sends on the WebSocket (it needs only these).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame<'a> {
    Subscribe {
        id: &'a str,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Cursor>,
    },
    Ping {
        id: &'a str,
    },
}

/// Server frames; `Other` absorbs frame types chatctl does not act on
/// (and any a later minor revision adds), instead of failing on them.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ready {
        #[serde(default)]
        user_id: Option<String>,
    },
    /// v1.1: everyone typing in a subscribed room now (`tail` follows one
    /// room, so which one is known).
    Typing {
        user_ids: Vec<String>,
    },
    /// v1.1: a user sharing a subscribed room came online or went offline.
    Presence {
        user_id: String,
        presence: String,
    },
    /// v1.1: a member's read mark in a subscribed room moved.
    Receipt {
        user_id: String,
        seq: u64,
    },
    Event {
        room_id: String,
        epoch: String,
        event: Event,
    },
    CaughtUp {
        room_id: String,
        epoch: String,
        seq: u64,
    },
    Gap {
        room_id: String,
        from: Cursor,
        to: Cursor,
        reason: String,
    },
    Unsubscribed {
        #[serde(default)]
        reason: Option<String>,
    },
    Error {
        #[serde(default)]
        id: Option<String>,
        errcode: String,
        error: String,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_unknown_fields_and_omit_absent_body() {
        let ev: Event =
            serde_json::from_str(r#"{"event_id":"$a","seq":3,"type":"join","sender":"@ann:x","ts":5,"future":true}"#)
                .unwrap();
        assert_eq!(ev.kind, "join");
        assert_eq!(ev.body, None);
        let back = serde_json::to_value(&ev).unwrap();
        assert_eq!(back["future"], Value::Bool(true));
        assert!(back.get("body").is_none());
    }

    #[test]
    fn subscribe_frame_matches_the_schema() {
        let f = ClientFrame::Subscribe { id: "s1", room: "lobby", since: None };
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"type":"subscribe","id":"s1","room":"lobby"}"#);
        let f = ClientFrame::Subscribe { id: "s1", room: "lobby", since: Some(Cursor { epoch: "e".into(), seq: 4 }) };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"type":"subscribe","id":"s1","room":"lobby","since":{"epoch":"e","seq":4}}"#
        );
    }

    #[test]
    fn unknown_server_frames_are_tolerated() {
        let f: ServerFrame = serde_json::from_str(r##"{"type":"joined","room_id":"!a:x","alias":"#a:x"}"##).unwrap();
        assert!(matches!(f, ServerFrame::Other));
        let f: ServerFrame = serde_json::from_str(
            r#"{"type":"gap","room_id":"!a:x","from":{"epoch":"e","seq":1},"to":{"epoch":"e","seq":4},"reason":"trimmed"}"#,
        )
        .unwrap();
        assert!(matches!(f, ServerFrame::Gap { .. }));
        let f: ServerFrame =
            serde_json::from_str(r#"{"type":"receipt","room":"!a:x","user_id":"@b:x","seq":4}"#).unwrap();
        assert!(matches!(f, ServerFrame::Receipt { seq: 4, .. }));
    }
}

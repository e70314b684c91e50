//! WebSocket frames (subprotocol `parlor.v1`): JSON text messages, each with
//! a `type`. A client may add an `id` to any frame; the answer echoes it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::errors::ErrCode;
use super::events::{Cursor, Event};
use super::ids::{RoomAlias, RoomId, RoomRef, UserId};

/// Close codes the server uses, beyond RFC 6455's own.
pub mod close {
    /// The server is shutting down; reconnect later and resume with `since`.
    pub const GOING_AWAY: u16 = 1001;
    /// Binary frames are not part of the protocol.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message exceeded 65,536 bytes.
    pub const TOO_BIG: u16 = 1009;
    /// An unexpected server fault.
    pub const INTERNAL: u16 = 1011;
    /// Authentication failed, or the token was revoked while connected.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No `auth` frame arrived within the auth timeout.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// The client stopped answering heartbeats.
    pub const HEARTBEAT_TIMEOUT: u16 = 4003;
    /// The client fell too far behind (its outbound queue overflowed); resume with `since`.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// A frame from client to server.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(title = "ClientFrame")]
pub enum ClientFrame {
    /// Authenticate with an access token (when the upgrade had no `Authorization`).
    Auth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        token: String,
    },
    /// Join a room (creating it on first join of a local alias); answered by `joined`.
    Join {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[schemars(with = "RoomRef")]
        room: String,
    },
    /// Leave a room; also ends a subscription to it; answered by `left`.
    Leave {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[schemars(with = "RoomRef")]
        room: String,
    },
    /// Receive a room's events: those after `since` first, then `caught_up`, then live.
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[schemars(with = "RoomRef")]
        room: String,
        /// Without it, live from now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Cursor>,
    },
    /// Stop receiving a room's events; answered by `unsubscribed`.
    Unsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[schemars(with = "RoomRef")]
        room: String,
    },
    /// Send a message; answered by `ack` once it is durably in the room log.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[schemars(with = "RoomRef")]
        room: String,
        /// Same rules and idempotency as the HTTP send's `txn_id`.
        txn_id: String,
        body: String,
    },
    /// Answered by `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

/// The frame type names a client may send.
pub const CLIENT_FRAME_TYPES: &[&str] = &["auth", "join", "leave", "subscribe", "unsubscribe", "send", "ping"];

/// Just enough of a client frame to route errors: its `type` and `id`.
#[derive(Debug, Deserialize)]
pub struct FrameHead {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub id: Option<serde_json::Value>,
}

/// Why a `gap` was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The cursor's epoch is not the log's epoch: the log was started again (or the epoch is unknown).
    EpochChanged,
    /// Retention removed events after the cursor.
    Trimmed,
}

/// A frame from server to client.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schemars(title = "ServerFrame")]
pub enum ServerFrame {
    /// The connection is authenticated.
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        user_id: UserId,
        device_id: String,
    },
    /// Answer to `join`.
    Joined {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: RoomId,
        alias: RoomAlias,
    },
    /// Answer to `leave`.
    Left {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: RoomId,
    },
    /// One event of a subscribed room, in seq order.
    Event { room_id: RoomId, epoch: String, event: Event },
    /// Replay is done: `seq` is the last event sent so far; live events follow.
    CaughtUp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: RoomId,
        epoch: String,
        seq: u64,
    },
    /// Events after `from` up to and including `to` cannot be delivered; delivery goes on after `to`.
    Gap { room_id: RoomId, from: Cursor, to: Cursor, reason: GapReason },
    /// Answer to `send`: the event is durably in the room log.
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: RoomId,
        event_id: String,
        seq: u64,
    },
    /// The subscription ended: answer to `unsubscribe`, or because the user left the room (`reason` = `left`).
    Unsubscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A frame failed; `id` echoes the failed frame's `id` when it had one.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        errcode: ErrCode,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_and_refuse_unknown_fields() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"send","id":"1","room":"lobby","txn_id":"t","body":"hi"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Send { .. }));
        let f: ClientFrame =
            serde_json::from_str(r##"{"type":"subscribe","room":"#a:x","since":{"epoch":"e","seq":3}}"##).unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { since: Some(_), .. }));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"ping","extra":1}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"bogus"}"#).is_err());
        for t in CLIENT_FRAME_TYPES {
            assert!(serde_json::to_string(&ClientFrame::Ping { id: None }).is_ok(), "{t}");
        }
    }

    #[test]
    fn server_frames_serialize_with_type() {
        let f = ServerFrame::Pong { id: Some("7".into()) };
        assert_eq!(f.to_json(), r#"{"type":"pong","id":"7"}"#);
    }
}

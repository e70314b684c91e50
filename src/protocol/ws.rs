//! WebSocket frames (subprotocol `parlor.v1`): JSON text messages, each with
//! a `type`. A client may add an `id` to any frame; the answer echoes it.
//! Also how a client frame's text becomes a [`ClientFrame`] (with the
//! errcode and the `id` to answer with when it does not), and the one
//! encoder of `event` frames ([`EventFrame`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::errors::ErrCode;
use super::events::{Cursor, Event};
use super::ids::{RoomAlias, RoomId, RoomRef, UserId};
use super::limits::WS_ID_MAX;
use super::parse::{Refusal, check_object, parse_fields};
use super::rooms::Presence;

/// Close codes the server uses (RFC 6455's and its own).
pub mod close {
    /// A normal close: the answer to a client's close 1000 (or one without a code).
    pub const NORMAL: u16 = 1000;
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
        /// v1.1: the `event_id` of one's own message this one edits, with
        /// the HTTP send's rules (spec §12, Edits).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    /// Answered by `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// The user is (or stopped) typing in a room this connection is
    /// subscribed to. Not answered unless refused; never stored.
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[schemars(with = "RoomRef")]
        room: String,
        typing: bool,
    },
    /// The room is read up to `seq`, as `POST /rooms/{room}/read`. Not
    /// answered unless refused; members' subscribed connections get `receipt`.
    Read {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[schemars(with = "RoomRef")]
        room: String,
        seq: u64,
    },
}

/// The frame type names a client may send.
pub const CLIENT_FRAME_TYPES: &[&str] =
    &["auth", "join", "leave", "subscribe", "unsubscribe", "send", "ping", "typing", "read"];

/// Just enough of a client frame to route errors: its `type` and `id`,
/// whatever their JSON types.
#[derive(Debug, Deserialize)]
struct FrameHead {
    #[serde(rename = "type", default)]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Parses a client frame's text, sorting failures into the spec's errcodes
/// in the order §8 gives: `malformed_json`, then a `type` that is missing or
/// not a string (`invalid_field`) or unknown (`unknown_type`), then the
/// fields (`invalid_field`, naming the field as HTTP does). A refusal keeps
/// the frame's `id` for the answer when the frame has a usable one (a
/// string of at most 64 bytes).
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, (Option<String>, Refusal)> {
    let bytes = text.as_bytes();
    check_object(bytes).map_err(|e| (None, e))?;
    let head: FrameHead = parse_fields(bytes).map_err(|e| (None, e))?;
    let id = head.id.as_ref().and_then(|v| v.as_str()).filter(|i| i.len() <= WS_ID_MAX).map(str::to_owned);
    let kind = match &head.kind {
        Some(serde_json::Value::String(k)) => k.as_str(),
        Some(_) => return Err((id, Refusal::new(ErrCode::InvalidField, "type: must be a string"))),
        None => return Err((id, Refusal::new(ErrCode::InvalidField, "type: missing"))),
    };
    if !CLIENT_FRAME_TYPES.contains(&kind) {
        return Err((id, Refusal::new(ErrCode::UnknownType, format!("unknown frame type {kind:?}"))));
    }
    if head.id.as_ref().and_then(|v| v.as_str()).is_some_and(|i| i.len() > WS_ID_MAX) {
        return Err((None, Refusal::new(ErrCode::InvalidField, format!("id: at most {WS_ID_MAX} bytes"))));
    }
    wire::parse(kind, bytes).map_err(|e| (id, e))
}

/// Each client frame type's fields, read on their own. serde reads an
/// internally tagged enum through a buffer that loses the field path, so
/// `{"type":"join","room":5}` would say "invalid type: integer `5`" without
/// naming `room`; these structs mirror [`ClientFrame`]'s variants (a test
/// checks they agree) and name it.
mod wire {
    use serde::Deserialize;
    use serde::de::IgnoredAny;

    use super::{ClientFrame, Cursor, Refusal, parse_fields};

    macro_rules! frames {
        ($($variant:ident { $($field:ident: $ty:ty),* })*) => {
            $(
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                #[allow(non_camel_case_types)]
                struct $variant {
                    #[serde(rename = "type")]
                    _kind: IgnoredAny,
                    #[serde(default)]
                    id: Option<String>,
                    $($field: $ty,)*
                }
                impl From<$variant> for ClientFrame {
                    fn from(f: $variant) -> Self {
                        ClientFrame::$variant { id: f.id, $($field: f.$field),* }
                    }
                }
            )*
        };
    }

    frames! {
        Auth { token: String }
        Join { room: String }
        Leave { room: String }
        Subscribe { room: String, since: Option<Cursor> }
        Unsubscribe { room: String }
        Send { room: String, txn_id: String, body: String, replaces: Option<String> }
        Ping {}
        Typing { room: String, typing: bool }
        Read { room: String, seq: u64 }
    }

    /// `kind` is one of [`super::CLIENT_FRAME_TYPES`].
    pub(super) fn parse(kind: &str, bytes: &[u8]) -> Result<ClientFrame, Refusal> {
        Ok(match kind {
            "auth" => parse_fields::<Auth>(bytes)?.into(),
            "join" => parse_fields::<Join>(bytes)?.into(),
            "leave" => parse_fields::<Leave>(bytes)?.into(),
            "subscribe" => parse_fields::<Subscribe>(bytes)?.into(),
            "unsubscribe" => parse_fields::<Unsubscribe>(bytes)?.into(),
            "send" => parse_fields::<Send>(bytes)?.into(),
            "typing" => parse_fields::<Typing>(bytes)?.into(),
            "read" => parse_fields::<Read>(bytes)?.into(),
            _ => parse_fields::<Ping>(bytes)?.into(),
        })
    }
}

/// The `event` frame with borrowed parts, serialized exactly as
/// [`ServerFrame::Event`]: the one encoder of `event` frames. The fan-out hub
/// encodes each event once per room with the JSON the room log stored
/// (`E` = `serde_json::value::RawValue`); a replay encodes an [`Event`] it read.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "event")]
pub struct EventFrame<'a, E: ?Sized + Serialize> {
    pub room_id: &'a RoomId,
    pub epoch: &'a str,
    pub event: &'a E,
}

impl<E: ?Sized + Serialize> EventFrame<'_, E> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("event frames always serialize")
    }
}

/// Why a `gap` was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The cursor's epoch is not the log's epoch: the log was started again (or the epoch is unknown).
    EpochChanged,
    /// Retention removed events after the cursor.
    Trimmed,
    /// v1.1: the room is private and the events after the cursor are from before the user joined.
    HistoryHidden,
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
        /// Absent only for a v1.1 room without an alias.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alias: Option<RoomAlias>,
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
    /// The subscription ended: answer to `unsubscribe`, or because the user left the room (`reason` = `left`)
    /// or an operator purged it (`reason` = `room_purged`).
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
    /// Everyone typing in a subscribed room now (the whole list; empty when nobody is).
    Typing { room: RoomId, user_ids: Vec<UserId> },
    /// A user who shares a subscribed room came online or went offline.
    Presence { user_id: UserId, presence: Presence },
    /// A member of a subscribed room read it up to `seq`.
    Receipt { room: RoomId, user_id: UserId, seq: u64 },
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
    fn frame_refusals_name_the_field_and_keep_the_id() {
        let refusal = |t: &str| parse_client_frame(t).map(|_| ()).unwrap_err();
        let (id, e) = refusal(r#"{"type":"join","room":5,"id":"j"}"#);
        assert_eq!((id.as_deref(), e.code), (Some("j"), ErrCode::InvalidField));
        assert!(e.message.starts_with("room:"), "{}", e.message);
        let (_, e) = refusal(r#"{"type":"subscribe","room":"r","since":{"epoch":"e","seq":-1}}"#);
        assert!(e.message.starts_with("since.seq:"), "{}", e.message);
        let (_, e) = refusal(r#"{"type":"ping","extra":1}"#);
        assert!(e.message.contains("extra"), "{}", e.message);
        let (id, e) = refusal(r#"{"type":5,"id":"g"}"#);
        assert_eq!((id.as_deref(), e.code), (Some("g"), ErrCode::InvalidField));
        let (id, e) = refusal(r#"{"type":"dance","id":"d"}"#);
        assert_eq!((id.as_deref(), e.code), (Some("d"), ErrCode::UnknownType));
        let (id, e) = refusal(r#"{"id":"m"}"#);
        assert_eq!((id.as_deref(), e.code), (Some("m"), ErrCode::InvalidField));
        let (id, e) = refusal(&format!(r#"{{"type":"ping","id":"{}"}}"#, "i".repeat(65)));
        assert_eq!((id, e.code), (None, ErrCode::InvalidField));
        assert_eq!(refusal("{nope").1.code, ErrCode::MalformedJson);
        assert_eq!(refusal("[1]").1.code, ErrCode::InvalidField);
    }

    #[test]
    fn the_field_by_field_parse_agrees_with_the_enum() {
        let frames = [
            r#"{"type":"auth","token":"t","id":"1"}"#,
            r#"{"type":"join","room":"lobby"}"#,
            r#"{"type":"leave","room":"!r:x","id":"l"}"#,
            r##"{"type":"subscribe","room":"#a:x","since":{"epoch":"e","seq":3}}"##,
            r#"{"type":"subscribe","room":"a"}"#,
            r#"{"type":"unsubscribe","room":"a","id":"u"}"#,
            r#"{"type":"send","room":"a","txn_id":"t","body":"hi","id":"s"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"typing","room":"a","typing":true,"id":"t"}"#,
            r#"{"type":"read","room":"a","seq":4,"id":"r"}"#,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for f in frames {
            let ours = serde_json::to_value(parse_client_frame(f).unwrap()).unwrap();
            let serdes = serde_json::to_value(serde_json::from_str::<ClientFrame>(f).unwrap()).unwrap();
            assert_eq!(ours, serdes, "{f}");
            assert_eq!(ours, serde_json::from_str::<serde_json::Value>(f).unwrap(), "{f}");
            seen.insert(ours["type"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), CLIENT_FRAME_TYPES.len(), "every type is covered");
        // The same fields are required and refused.
        for f in [r#"{"type":"send","room":"a","body":"x"}"#, r#"{"type":"auth","token":"t","room":"r"}"#] {
            assert!(parse_client_frame(f).is_err() && serde_json::from_str::<ClientFrame>(f).is_err(), "{f}");
        }
    }

    #[test]
    fn the_event_frame_encoder_matches_the_enum() {
        let room_id = RoomId::parse("!r:x").unwrap();
        let event: Event = serde_json::from_str(
            r#"{"event_id":"$e","seq":7,"type":"message","sender":"@a:x","body":"hi \"there\"","ts":5}"#,
        )
        .unwrap();
        let whole = ServerFrame::Event { room_id: room_id.clone(), epoch: "ep".into(), event: event.clone() }.to_json();
        assert_eq!(EventFrame { room_id: &room_id, epoch: "ep", event: &event }.to_json(), whole);
        let stored = serde_json::to_string(&event).unwrap();
        let raw: &serde_json::value::RawValue = serde_json::from_str(&stored).unwrap();
        assert_eq!(EventFrame { room_id: &room_id, epoch: "ep", event: raw }.to_json(), whole);
    }

    #[test]
    fn server_frames_serialize_with_type() {
        let f = ServerFrame::Pong { id: Some("7".into()) };
        assert_eq!(f.to_json(), r#"{"type":"pong","id":"7"}"#);
    }
}

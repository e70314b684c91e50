//! Room requests and responses: join, leave, rooms list, members, send,
//! history, and (v1.1) room state: creation, name/topic/visibility, invites,
//! roles, moderation and direct messages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::events::Event;
use super::ids::{RoomAlias, RoomId, UserId};

/// `POST /rooms/{room}/join` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JoinResponse {
    pub room_id: RoomId,
    /// Absent only for a v1.1 room created without an alias (and direct messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<RoomAlias>,
}

/// v1.1: who may read and join a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Anyone may join; members read the whole history (v1's only kind).
    #[default]
    Public,
    /// Only invited users may join; members read history from their join on.
    Private,
}

/// v1.1: a member's role in a room, lowest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Member,
    Moderator,
    Owner,
}

/// v1.1: the user's relation to a room in `GET /rooms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// The user is a member.
    Join,
    /// The user has a pending invite.
    Invite,
}

/// One room in `GET /rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoomSummary {
    pub room_id: RoomId,
    /// Absent only for a v1.1 room created without an alias (and direct messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<RoomAlias>,
    /// v1.1: the room's display name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// v1.1: the room's topic, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// v1.1.
    pub visibility: Visibility,
    /// v1.1: `join` for a room the user is in, `invite` for a pending invite.
    pub membership: Membership,
    /// v1.1: the user's role (`member` for an invite).
    pub role: Role,
    /// v1.1: the room's newest event, for members only (absent for an
    /// invite, an empty log, or a replica not filled yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<Event>,
    /// Messages others sent after the user's read mark, at most 100 (meaning
    /// 100 or more) (v1.1; a v1 server leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

/// `GET /rooms` answer: the rooms the user has joined, sorted by alias
/// (rooms without one after those with one, by id), then (v1.1) the pending
/// invites in the same order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomsResponse {
    pub rooms: Vec<RoomSummary>,
}

/// One member in `GET /rooms/{room}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub user_id: UserId,
    /// v1.1: the member's role in the room.
    pub role: Role,
    /// Whether the member has an open WebSocket (v1.1; a v1 server leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
}

/// Whether a user has at least one open WebSocket, on any process of their server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Online,
    Offline,
}

/// v1.1 `POST /rooms` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// A room name (`garden`) or a local alias (`#garden:this.server`); the
    /// room gets no alias without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Display name: 1 to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Topic: 1 to 4,096 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `public` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    /// Users of this server to invite, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<Vec<UserId>>,
}

/// v1.1 `POST /rooms` answer (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreateRoomResponse {
    pub room_id: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<RoomAlias>,
}

/// v1.1 `PATCH /rooms/{room}` body: the fields to change. An empty string
/// clears `name` or `topic`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

/// v1.1 `POST /rooms/{room}/invite` body, and `POST /dm`'s.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub user_id: UserId,
}

/// v1.1 `POST /rooms/{room}/kick`, `/ban` and `/unban` body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerationRequest {
    pub user_id: UserId,
    /// Shown to members with the event: at most 1,024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// v1.1 `PUT /rooms/{room}/redact/{event_id}/{txn_id}` body (`{}` for none);
/// answered with a [`SendResponse`], the `redaction` event's id and seq.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactRequest {
    /// Shown to members with the `redaction` event: at most 1,024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// v1.1 `PUT /rooms/{room}/roles/{user_id}` body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    pub role: Role,
}

/// v1.1 `POST /dm` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DmResponse {
    pub room_id: RoomId,
}

/// `GET /rooms/{room}/members` answer: current members, sorted by user id.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MembersResponse {
    pub room_id: RoomId,
    pub members: Vec<Member>,
}

/// `POST /rooms/{room}/read` body: the room is read up to and including `seq`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// A seq of the room's current epoch, at most its latest.
    pub seq: u64,
}

/// `PUT /rooms/{room}/send/{txn_id}` body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The message text: 1 to 16,384 bytes of UTF-8.
    pub body: String,
    /// v1.1: the `event_id` of one's own message this one edits (its new
    /// text); one of the room's last 1,000 events, and not itself an edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// `PUT /rooms/{room}/send/{txn_id}` answer; the same for a repeated `txn_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SendResponse {
    pub event_id: String,
    pub seq: u64,
}

/// `GET /rooms/{room}/messages` answer: a page of events in ascending `seq`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessagesResponse {
    pub room_id: RoomId,
    /// The room log's epoch; seqs from another epoch mean nothing here.
    pub epoch: String,
    pub events: Vec<Event>,
    /// The lowest seq still kept (1 unless retention trimmed the log; `latest_seq + 1` when the log is empty).
    pub earliest_seq: u64,
    /// The room's current last seq (0 when the log is empty).
    pub latest_seq: u64,
}

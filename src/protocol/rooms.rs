//! Room requests and responses: join, leave, rooms list, members, send, history.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::events::Event;
use super::ids::{RoomAlias, RoomId, UserId};

/// `POST /rooms/{room}/join` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JoinResponse {
    pub room_id: RoomId,
    pub alias: RoomAlias,
}

/// One room in `GET /rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoomSummary {
    pub room_id: RoomId,
    pub alias: RoomAlias,
    /// Messages others sent after the user's read mark, at most 100 (meaning
    /// 100 or more) (v1.1; a v1 server leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

/// `GET /rooms` answer: the rooms the user has joined, sorted by alias.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomsResponse {
    pub rooms: Vec<RoomSummary>,
}

/// One member in `GET /rooms/{room}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub user_id: UserId,
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

//! Federation v1 ("lite"): server keys, discovery, and the server-to-server
//! requests by which a room's home server orders its events and pushes them
//! to the other servers with members in the room.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::events::Event;
use super::ids::{RoomAlias, RoomId, UserId};

/// Prefix of every server-to-server path.
pub const FEDERATION_PREFIX: &str = "/_parlor/federation/v1";
/// Where a server publishes its signing key.
pub const KEY_PATH: &str = "/_parlor/key/v1/server";
/// Where a server name says which base URL serves it.
pub const WELL_KNOWN_PATH: &str = "/.well-known/parlor/server";
/// The `Authorization` scheme of signed server-to-server requests.
pub const SIGNATURE_SCHEME: &str = "Parlor-Signature";
/// How far a request's `ts` may be from the receiver's clock, in ms.
pub const SIGNATURE_WINDOW_MS: u64 = 5 * 60 * 1000;

/// `GET /_parlor/key/v1/server`: the server's ed25519 key, signed by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServerKeyResponse {
    pub server_name: String,
    /// `ed25519:` and a short id.
    pub key_id: String,
    /// The 32-byte public key, base64url without padding.
    pub public_key: String,
    /// ed25519 signature, base64url without padding, of
    /// `parlor-key-v1\n{server_name}\n{key_id}\n{public_key}`.
    pub signature: String,
}

impl ServerKeyResponse {
    /// The bytes `signature` signs.
    pub fn signed_bytes(server_name: &str, key_id: &str, public_key: &str) -> Vec<u8> {
        format!("parlor-key-v1\n{server_name}\n{key_id}\n{public_key}").into_bytes()
    }
}

/// The bytes a request signature signs: method, path with query, origin,
/// destination, `ts` and the base64url SHA-256 of the body, one per line.
pub fn request_signed_bytes(
    method: &str,
    path_and_query: &str,
    origin: &str,
    destination: &str,
    ts: u64,
    body_sha256_b64: &str,
) -> Vec<u8> {
    format!("parlor-request-v1\n{method}\n{path_and_query}\n{origin}\n{destination}\n{ts}\n{body_sha256_b64}")
        .into_bytes()
}

/// `GET /.well-known/parlor/server`: where this server name is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WellKnownResponse {
    /// e.g. `https://chat.example:8448`; federation requests go to `{base_url}/_parlor/...`.
    pub base_url: String,
}

/// `POST /_parlor/federation/v1/join`: a user of the origin server joins a
/// room of this (its home) server.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedJoinRequest {
    /// A room id or alias on this server.
    pub room: String,
    /// A user of the origin server.
    pub user_id: UserId,
}

/// Answer to a federated join: the room and where its log stands.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FedJoinResponse {
    pub room_id: RoomId,
    pub alias: RoomAlias,
    pub epoch: String,
    pub earliest_seq: u64,
    pub latest_seq: u64,
    /// Current members, the new one included.
    pub members: Vec<UserId>,
}

/// `POST /_parlor/federation/v1/leave`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedLeaveRequest {
    pub room_id: RoomId,
    /// A user of the origin server.
    pub user_id: UserId,
}

/// `PUT /_parlor/federation/v1/rooms/{room_id}/send/{txn_id}`: a message from
/// a user of the origin server, to be ordered by this (the home) server.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedSendRequest {
    pub sender: UserId,
    /// The sender's device on the origin server: with `txn_id` and the room,
    /// the scope of idempotency, as for local sends.
    pub device_id: String,
    pub body: String,
}

/// One event of a pushed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FedEvent {
    pub room_id: RoomId,
    pub epoch: String,
    pub event: Event,
}

/// `PUT /_parlor/federation/v1/send/{txn_id}`: events of rooms whose home is
/// the origin, in seq order per room. Receivers deduplicate by room and seq
/// (or event id), so a transaction may be retried any number of times.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedTransaction {
    pub events: Vec<FedEvent>,
}

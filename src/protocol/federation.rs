//! Federation v1 ("lite"): server keys, discovery, and the server-to-server
//! requests by which a room's home server orders its events and pushes them
//! to the other servers with members in the room. Also the
//! `Authorization: Parlor-Signature …` header, as pure functions: reading one
//! ([`parse_auth_header`], which takes any string a peer may send) and
//! writing one ([`render_auth_header`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::events::Event;
use super::ids::{RoomAlias, RoomId, ServerName, UserId};
use super::rooms::Presence;

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

/// The HTTP methods of the server-to-server API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FedMethod {
    Get,
    Post,
    Put,
}

impl FedMethod {
    /// As in the request line, and as signed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
        }
    }
}

/// Length of an ed25519 signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;

/// The parameters of a well-formed `Authorization: Parlor-Signature …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureParams {
    pub origin: ServerName,
    /// Not parsed as a server name: the receiver only compares it with its own.
    pub destination: String,
    /// The origin's key id, e.g. `ed25519:Ab12Cd34`.
    pub key: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The decoded signature ([`SIGNATURE_BYTES`] long).
    pub sig: Vec<u8>,
}

/// Why an `Authorization` value is not a well-formed signature header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    #[error(
        "federation requests carry Authorization: {SIGNATURE_SCHEME} origin=\"…\",destination=\"…\",key=\"…\",ts=\"…\",sig=\"…\""
    )]
    NotSignature,
    #[error("malformed signature header: parameters are name=\"value\" pairs separated by commas")]
    Malformed,
    #[error("the signature header names {0} twice")]
    Duplicate(&'static str),
    #[error("the signature header lacks {0}")]
    Missing(&'static str),
    #[error("the signature header's {0} is not valid")]
    Invalid(&'static str),
}

/// The parameters a signature header must carry, each exactly once.
const AUTH_PARAMS: [&str; 5] = ["origin", "destination", "key", "ts", "sig"];

/// Reads an `Authorization` value as §11.2 writes it: the scheme, at least
/// one space, then `name="value"` pairs separated by commas (spaces around a
/// pair are allowed), in any order. Unknown parameters are ignored; each of
/// the five known ones must appear exactly once. `ts` is decimal
/// milliseconds; `sig` is base64url without padding of 64 bytes. Total: any
/// string gives an answer, never a panic (it is fuzzed).
pub fn parse_auth_header(value: &str) -> Result<SignatureParams, AuthHeaderError> {
    let rest = value.strip_prefix(SIGNATURE_SCHEME).ok_or(AuthHeaderError::NotSignature)?;
    if !rest.starts_with([' ', '\t']) {
        return Err(AuthHeaderError::NotSignature);
    }
    let mut found: [Option<&str>; 5] = [None; 5];
    for part in rest.split(',') {
        let (name, quoted) = part.trim_matches([' ', '\t']).split_once('=').ok_or(AuthHeaderError::Malformed)?;
        let v = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .filter(|v| !v.contains('"'))
            .ok_or(AuthHeaderError::Malformed)?;
        if let Some(i) = AUTH_PARAMS.iter().position(|p| *p == name)
            && found[i].replace(v).is_some()
        {
            return Err(AuthHeaderError::Duplicate(AUTH_PARAMS[i]));
        }
    }
    let get = |i: usize| found[i].ok_or(AuthHeaderError::Missing(AUTH_PARAMS[i]));
    let origin = ServerName::parse(get(0)?).map_err(|_| AuthHeaderError::Invalid("origin"))?;
    let (destination, key) = (get(1)?.to_owned(), get(2)?.to_owned());
    let ts = get(3)?;
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthHeaderError::Invalid("ts"));
    }
    let ts = ts.parse().map_err(|_| AuthHeaderError::Invalid("ts"))?;
    let sig = B64.decode(get(4)?).ok().filter(|s| s.len() == SIGNATURE_BYTES).ok_or(AuthHeaderError::Invalid("sig"))?;
    Ok(SignatureParams { origin, destination, key, ts, sig })
}

/// Writes the header [`parse_auth_header`] reads.
pub fn render_auth_header(origin: &str, destination: &str, key: &str, ts: u64, sig: &[u8]) -> String {
    format!(
        r#"{SIGNATURE_SCHEME} origin="{origin}",destination="{destination}",key="{key}",ts="{ts}",sig="{}""#,
        B64.encode(sig)
    )
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
    /// Absent for a room made without one (v1.1: `POST /rooms` without
    /// `alias`, which a user of the origin joins by id after an invite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<RoomAlias>,
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

/// `POST /_parlor/federation/v1/reject`: a user of the origin declines an
/// invite to a room of this (its home) server.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedRejectRequest {
    pub room_id: RoomId,
    /// A user of the origin server, invited to the room.
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

/// A [`FedEvent`] as a home server encodes it to push: the event is already
/// JSON (the room log's encoding of [`Event`]), so each event is encoded once
/// per room, whatever the number of servers it goes to.
#[derive(Debug, Serialize)]
pub struct FedEventOut<'a> {
    pub room_id: &'a RoomId,
    pub epoch: &'a str,
    pub event: &'a RawValue,
}

/// A [`FedTransaction`] as a home server encodes it to push: items already
/// encoded as [`FedEventOut`].
#[derive(Debug, Serialize)]
pub struct FedTransactionOut<'a> {
    pub events: &'a [&'a RawValue],
}

/// `PUT /_parlor/federation/v1/send/{txn_id}`: events of rooms whose home is
/// the origin, in seq order per room. Receivers deduplicate by room and seq
/// (or event id), so a transaction may be retried any number of times.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedTransaction {
    pub events: Vec<FedEvent>,
}

/// Items of one ephemeral push at most (typing, receipts and presence together).
pub const EPHEMERAL_ITEMS_MAX: usize = 1000;

/// `PUT /_parlor/federation/v1/ephemeral/{txn_id}`: what the origin's users
/// are doing that is not in any room log: typing, read marks and presence,
/// pushed to the servers with members in the rooms concerned (§11.7). Each
/// list may be absent (empty); at most [`EPHEMERAL_ITEMS_MAX`] items in all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedEphemeral {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub typing: Vec<FedTyping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<FedReceipt>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presence: Vec<FedPresence>,
}

impl FedEphemeral {
    pub fn len(&self) -> usize {
        self.typing.len() + self.receipts.len() + self.presence.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A user of the origin started (`true`) or stopped typing in a room; a
/// `true` is said again while it lasts (§8's timeout applies from the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedTyping {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub typing: bool,
}

/// A user of the origin's read mark in a room moved to `seq` (of the home
/// server's log, which every replica shares).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedReceipt {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub seq: u64,
}

/// A user of the origin came online (their first WebSocket on any of its
/// processes) or went offline (their last closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FedPresence {
    pub user_id: UserId,
    pub presence: Presence,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Vec<u8> {
        (0..64).collect()
    }

    #[test]
    fn auth_headers_round_trip() {
        let h = render_auth_header("a.example:8448", "b", "ed25519:x", 17, &sig());
        let p = parse_auth_header(&h).unwrap();
        assert_eq!(p.origin.as_str(), "a.example:8448");
        assert_eq!((p.destination.as_str(), p.key.as_str(), p.ts, p.sig), ("b", "ed25519:x", 17, sig()));
        let s = B64.encode(sig());
        let spaced = format!(r#"Parlor-Signature  origin="a", destination="b" , key="k",ts="1",sig="{s}", extra="x""#);
        assert_eq!(parse_auth_header(&spaced).unwrap().destination, "b");
    }

    #[test]
    fn auth_headers_refuse_garbage() {
        let s = B64.encode(sig());
        let cases: &[(&str, AuthHeaderError)] = &[
            ("Bearer abc", AuthHeaderError::NotSignature),
            ("Parlor-Signatureorigin=\"a\"", AuthHeaderError::NotSignature),
            (r#"Parlor-Signature origin=a"#, AuthHeaderError::Malformed),
            (r#"Parlor-Signature origin="a"b""#, AuthHeaderError::Malformed),
            (r#"Parlor-Signature origin="a",origin="a""#, AuthHeaderError::Duplicate("origin")),
            (r#"Parlor-Signature origin="a",destination="b",key="k",ts="1""#, AuthHeaderError::Missing("sig")),
            (
                r#"Parlor-Signature origin="a b",destination="b",key="k",ts="1",sig="x""#,
                AuthHeaderError::Invalid("origin"),
            ),
        ];
        for (h, want) in cases {
            assert_eq!(parse_auth_header(h).unwrap_err(), *want, "{h}");
        }
        for ts in ["", "-1", "+1", "1.0", "99999999999999999999999"] {
            let h = format!(r#"Parlor-Signature origin="a",destination="b",key="k",ts="{ts}",sig="{s}""#);
            assert_eq!(parse_auth_header(&h).unwrap_err(), AuthHeaderError::Invalid("ts"), "{ts}");
        }
        for bad in [format!("{s}="), B64.encode([1u8; 63]), "!!".into()] {
            let h = format!(r#"Parlor-Signature origin="a",destination="b",key="k",ts="1",sig="{bad}""#);
            assert_eq!(parse_auth_header(&h).unwrap_err(), AuthHeaderError::Invalid("sig"), "{bad}");
        }
    }

    #[test]
    fn pushed_items_encode_as_fed_events() {
        let event = Event {
            event_id: "$e:x".into(),
            seq: 3,
            kind: super::super::events::EventType::Message,
            sender: UserId::parse("@a:x").unwrap(),
            body: Some("hi \"there\"\n".into()),
            ts: 9,
            content: Default::default(),
        };
        let raw = RawValue::from_string(serde_json::to_string(&event).unwrap()).unwrap();
        let room_id = RoomId::parse("!r:x").unwrap();
        let item = serde_json::to_string(&FedEventOut { room_id: &room_id, epoch: "ep", event: &raw }).unwrap();
        let item = RawValue::from_string(item).unwrap();
        let txn = serde_json::to_vec(&FedTransactionOut { events: &[&item, &item] }).unwrap();
        let back: FedTransaction = serde_json::from_slice(&txn).unwrap();
        let want = FedEvent { room_id, epoch: "ep".into(), event };
        assert_eq!(back.events, vec![want.clone(), want]);
    }
}

//! Error codes: the complete list of `errcode` values of protocol v1, each
//! with its wire string and HTTP status. This table is the one place where
//! an error becomes a status; the spec's errcode table is checked against it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! errcodes {
    ($( $(#[doc = $doc:literal])* $variant:ident = ($wire:literal, $status:literal), )*) => {
        /// Every `errcode` a v1 server may send. Each variant's doc says when.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum ErrCode {
            $( $(#[doc = $doc])* #[serde(rename = $wire)] $variant, )*
        }

        impl ErrCode {
            /// Every code, in spec order.
            pub const ALL: &'static [ErrCode] = &[$(ErrCode::$variant),*];

            /// The wire string, e.g. `"not_member"`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrCode::$variant => $wire,)* }
            }

            /// The HTTP status an error with this code is sent with.
            pub const fn status(self) -> u16 {
                match self { $(ErrCode::$variant => $status,)* }
            }

            /// The spec's one-line description of the code.
            pub fn describe(self) -> &'static str {
                match self { $(ErrCode::$variant => concat!($($doc),*).trim_ascii(),)* }
            }
        }
    };
}

errcodes! {
    /// The body or frame is not well-formed JSON, or not UTF-8.
    MalformedJson = ("malformed_json", 400),
    /// The JSON is well-formed but a field is missing, unknown, of the wrong type or out of range; `error` names the field.
    InvalidField = ("invalid_field", 400),
    /// A path or query parameter is malformed (e.g. a `txn_id` with bad characters, `before` and `after` together).
    InvalidParam = ("invalid_param", 400),
    /// The request body is larger than 65,536 bytes.
    BodyTooLarge = ("body_too_large", 413),
    /// The request body did not arrive within the body read timeout.
    RequestTimeout = ("request_timeout", 408),
    /// The request line or headers are not valid HTTP/1.1; the server answers and closes the connection.
    MalformedRequest = ("malformed_request", 400),
    /// The request target (path and query) is longer than 8,192 bytes.
    UriTooLong = ("uri_too_long", 414),
    /// The request line and headers are larger than 16,384 bytes, or there are more than 100 header fields; the server answers and closes the connection.
    HeadersTooLarge = ("headers_too_large", 431),
    /// A request body is sent with a `Content-Type` that is not `application/json`.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// No such endpoint.
    NotFound = ("not_found", 404),
    /// The endpoint exists but not with this method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// Too many requests; wait `retry_after_ms` milliseconds and try again.
    RateLimited = ("rate_limited", 429),
    /// The username is not 1-32 characters of a-z 0-9 . _ - (after folding to lower case).
    InvalidUsername = ("invalid_username", 400),
    /// An account with this (folded) username already exists.
    UsernameTaken = ("username_taken", 409),
    /// The password has fewer than 8 characters.
    PasswordTooShort = ("password_too_short", 400),
    /// The password is longer than 1,024 bytes.
    PasswordTooLong = ("password_too_long", 400),
    /// The password is made of digits only.
    PasswordEntirelyNumeric = ("password_entirely_numeric", 400),
    /// The password is on the list of common passwords.
    PasswordTooCommon = ("password_too_common", 400),
    /// The password is too similar to the username.
    PasswordTooSimilar = ("password_too_similar", 400),
    /// Registration: the server takes no new accounts (`--registration closed`).
    RegistrationClosed = ("registration_closed", 403),
    /// Registration: the server takes new accounts only with a `registration_token`, and the request has none.
    RegistrationTokenRequired = ("registration_token_required", 403),
    /// Registration: the `registration_token` is not one the server issued (or it was revoked).
    InvalidRegistrationToken = ("invalid_registration_token", 403),
    /// Registration: every use of the `registration_token` is taken.
    RegistrationTokenUsedUp = ("registration_token_used_up", 403),
    /// Registration: the `registration_token` has expired.
    RegistrationTokenExpired = ("registration_token_expired", 403),
    /// Login failed: unknown username or wrong password (the server never says which).
    InvalidCredentials = ("invalid_credentials", 401),
    /// Login: the account was deactivated by the server's operator (the password was right).
    UserDeactivated = ("user_deactivated", 403),
    /// No account has this username (admin channel), or the `user_id` a room request names is not a user of this server (v1.1).
    UserNotFound = ("user_not_found", 404),
    /// The request needs `Authorization: Bearer <access_token>` and has none.
    MissingToken = ("missing_token", 401),
    /// The access token is unknown, malformed or revoked (logged out).
    UnknownToken = ("unknown_token", 401),
    /// The room name, alias or id is not valid syntax.
    InvalidRoom = ("invalid_room", 400),
    /// No room with this id or alias exists.
    RoomNotFound = ("room_not_found", 404),
    /// The user is not a member of the room.
    NotMember = ("not_member", 403),
    /// A message `body` is empty or longer than 16,384 bytes.
    MessageTooLarge = ("message_too_large", 413),
    /// This `txn_id` was already used by this device in this room with a different body.
    TxnConflict = ("txn_conflict", 409),
    /// History: the room's log keeps no epoch of that name (`messages?epoch=`).
    EpochNotFound = ("epoch_not_found", 404),
    /// The room log storage is unreachable (e.g. Redis is down); nothing was written. Retry later.
    StorageUnavailable = ("storage_unavailable", 503),
    /// The room's home server cannot be reached; the room is read-only until it is back.
    HomeServerUnreachable = ("home_server_unreachable", 503),
    /// WebSocket: the frame `type` is unknown.
    UnknownType = ("unknown_type", 400),
    /// WebSocket: the frame needs an authenticated connection; send `auth` first.
    NotAuthenticated = ("not_authenticated", 401),
    /// WebSocket: the connection is already authenticated.
    AlreadyAuthenticated = ("already_authenticated", 400),
    /// WebSocket: the connection is subscribed to the maximum of 256 rooms.
    TooManySubscriptions = ("too_many_subscriptions", 400),
    /// WebSocket: the frame (`typing`) needs a subscription to the room on this connection.
    NotSubscribed = ("not_subscribed", 400),
    /// WebSocket upgrade: the request is not a WebSocket upgrade.
    UpgradeRequired = ("upgrade_required", 426),
    /// WebSocket upgrade: the client did not offer the `parlor.v1` subprotocol.
    BadSubprotocol = ("bad_subprotocol", 400),
    /// WebSocket upgrade: the page's `Origin` is neither this server nor on the allow-list.
    ForbiddenOrigin = ("forbidden_origin", 403),
    /// Federation: the request's signature is missing or does not verify against the origin's key.
    BadSignature = ("bad_signature", 401),
    /// Federation: the origin server's key could not be fetched, or the origin acted for another server's user.
    UnknownServer = ("unknown_server", 403),
    /// Federation: this server's operator denies federation with the origin server.
    ServerDenied = ("server_denied", 403),
    /// v1.1: the user's role in the room is too low for this request, or the request would leave the room without an owner.
    Forbidden = ("forbidden", 403),
    /// v1.1: the room is private and the user has no pending invite to it.
    NotInvited = ("not_invited", 403),
    /// v1.1: the user is banned from the room.
    Banned = ("banned", 403),
    /// v1.1: `POST /rooms` named an alias that already names a room.
    AliasTaken = ("alias_taken", 409),
    /// v1.1: the request names a user (or a room) of another server where only this server's are supported: a direct message with a remote user, a user of another server when federation is off, or a change of the state of a room homed on another server (an edit or a redaction there included).
    RemoteUserUnsupported = ("remote_user_unsupported", 400),
    /// v1.1: a redaction names an event the room's log does not hold (in any epoch it keeps).
    EventNotFound = ("event_not_found", 404),
    /// An unexpected server fault; details are in the server log.
    Internal = ("internal", 500),
}

impl std::fmt::Display for ErrCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error answer: `{"errcode": …, "error": …}`, plus `retry_after_ms`
/// on `rate_limited`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Error")]
pub struct ErrorBody {
    pub errcode: ErrCode,
    /// Human-readable text; clients show it but must not parse it.
    pub error: String,
    /// With `rate_limited`: milliseconds to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_unique_snake_case_and_described() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate {s}");
            assert!(s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'), "{s}");
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(s));
            assert!(!c.describe().is_empty());
            assert!((400..600).contains(&c.status()));
        }
    }
}

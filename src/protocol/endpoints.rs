//! The HTTP endpoints and WebSocket frames of protocol v1 as data: for each
//! endpoint its method, path, authentication, parameters, body and answer
//! types and the errcodes the spec gives it; for each client frame its answers
//! and errcodes. `openapi.rs` and `asyncapi.rs` build `spec/openapi.json` and
//! `spec/asyncapi.json` from it and from the types it names.
//!
//! The router (`http::route`) is not derived from this table: `tests/spec.rs`
//! checks the two agree by asking a running server for every endpoint here.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::errors::ErrCode::{self, *};
use super::federation::{self as fed, FEDERATION_PREFIX, KEY_PATH, WELL_KNOWN_PATH};
use super::limits::{HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, TXN_ID_MAX};
use super::ws::close;
use super::{CLIENT_PREFIX, RoomId, RoomRef, WS_SUBPROTOCOL, accounts, rooms, versions};

/// Makes (or refers to) the schema of a body, answer or parameter.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn of<T: JsonSchema>() -> SchemaFn {
    SchemaGenerator::subschema_for::<T>
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// How a request proves who sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `Authorization: Bearer <access_token>`.
    Bearer,
    /// The WebSocket upgrade: a bearer header, or else an `auth` frame first.
    BearerOrAuthFrame,
    /// `Authorization: Parlor-Signature …` (spec §11.2).
    Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamIn {
    Path,
    Query,
    Header,
}

impl ParamIn {
    pub const fn as_str(self) -> &'static str {
        match self {
            ParamIn::Path => "path",
            ParamIn::Query => "query",
            ParamIn::Header => "header",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: &'static str,
    pub location: ParamIn,
    pub required: bool,
    pub description: &'static str,
    pub schema: SchemaFn,
}

/// An answer that is not an error body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub description: &'static str,
    /// `None`: no body (the WebSocket upgrade).
    pub body: Option<SchemaFn>,
}

#[derive(Debug, Clone)]
pub struct Body {
    pub schema: SchemaFn,
    /// `false`: "none or `{}`".
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Unique, camelCase; the OpenAPI `operationId`.
    pub id: &'static str,
    pub method: Method,
    /// Full path with `{name}` for each path parameter.
    pub path: String,
    pub tag: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    pub auth: Auth,
    pub params: Vec<Param>,
    pub body: Option<Body>,
    /// Answers that are not errors, the success first.
    pub answers: Vec<Answer>,
    /// Every errcode the spec gives this endpoint, besides `not_found` and
    /// `method_not_allowed` (see [`ROUTING_ERRORS`]).
    pub errors: Vec<ErrCode>,
}

/// The tags of the HTTP API, with what each covers, in spec order.
pub const TAGS: &[(&str, &str)] = &[
    ("server", "Versions and health (spec §5, §10)."),
    ("accounts", "Register, log in and out (spec §5)."),
    ("rooms", "Join, leave, list rooms and members (spec §6)."),
    ("messages", "Send messages and read history (spec §7)."),
    ("websocket", "The WebSocket upgrade; its frames are in asyncapi.json (spec §8)."),
    ("federation", "Server keys, discovery and the signed server-to-server API (spec §11)."),
];

/// Errcodes any request may get from routing or from reading the request
/// itself, whatever its endpoint.
pub const ROUTING_ERRORS: &[ErrCode] = &[NotFound, MethodNotAllowed, MalformedRequest, UriTooLong, HeadersTooLarge];

/// A request body was read and parsed into a protocol type.
const BODY: &[ErrCode] = &[BodyTooLarge, RequestTimeout, UnsupportedMediaType, MalformedJson, InvalidField];
/// The endpoint takes a bearer token.
const BEARER: &[ErrCode] = &[MissingToken, UnknownToken];
/// A signed federation request; `not_found` when federation is off.
const SIGNED: &[ErrCode] = &[BadSignature, UnknownServer, ServerDenied, NotFound];
/// A `{room}` path parameter naming a room.
const ROOM: &[ErrCode] = &[InvalidParam, InvalidRoom, RoomNotFound];

fn errors(groups: &[&[ErrCode]]) -> Vec<ErrCode> {
    let mut all: Vec<ErrCode> = groups.iter().flat_map(|g| g.iter().copied()).chain([Internal]).collect();
    all.sort_by_key(|c| ErrCode::ALL.iter().position(|x| x == c));
    all.dedup();
    all
}

fn txn_id_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": format!("^[A-Za-z0-9._~-]{{1,{TXN_ID_MAX}}}$"),
        "description": "Chosen by the client; makes the send idempotent."
    })
}

fn seq_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "minimum": 0, "format": "uint64" })
}

fn limit_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT_MAX, "default": HISTORY_LIMIT_DEFAULT })
}

fn epoch_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "minLength": 1 })
}

fn event_id_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "minLength": 1, "description": "An event's `event_id`, as the room log gave it." })
}

fn subprotocol_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": format!("(^|[ ,]){}($|[ ,])", WS_SUBPROTOCOL.replace('.', "\\.")),
        "description": format!("Must offer `{WS_SUBPROTOCOL}`.")
    })
}

fn origin_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string" })
}

fn param(name: &'static str, location: ParamIn, required: bool, description: &'static str, schema: SchemaFn) -> Param {
    Param { name, location, required, description, schema }
}

fn room_param() -> Param {
    param("room", ParamIn::Path, true, "A room id, alias or bare local name, URL-encoded.", of::<RoomRef>())
}

fn room_id_param() -> Param {
    param("room_id", ParamIn::Path, true, "A room id of this (the home) server, URL-encoded.", of::<RoomId>())
}

fn txn_param() -> Param {
    param("txn_id", ParamIn::Path, true, "1-64 bytes of A-Z a-z 0-9 . _ ~ -.", txn_id_schema)
}

fn ok(status: u16, description: &'static str, body: SchemaFn) -> Vec<Answer> {
    vec![Answer { status, description, body: Some(body) }]
}

fn body<T: JsonSchema>() -> Option<Body> {
    Some(Body { schema: of::<T>(), required: true })
}

/// `POST /rooms/{room}/kick`, `/ban`, `/unban`.
fn moderation(what: &'static str, summary: &'static str, description: &'static str) -> Endpoint {
    Endpoint {
        id: what,
        method: Method::Post,
        path: format!("{CLIENT_PREFIX}/rooms/{{room}}/{what}"),
        tag: "rooms",
        summary,
        description,
        auth: Auth::Bearer,
        params: vec![room_param()],
        body: body::<rooms::ModerationRequest>(),
        answers: ok(200, "Done (also when there was nothing to do).", of::<accounts::Empty>()),
        errors: errors(&[
            BODY,
            BEARER,
            ROOM,
            &[UserNotFound, NotMember, StorageUnavailable, Forbidden, RemoteUserUnsupported],
        ]),
    }
}

fn optional_empty_body() -> Option<Body> {
    Some(Body { schema: of::<accounts::Empty>(), required: false })
}

/// Every HTTP endpoint of protocol v1, in spec order.
pub fn http() -> Vec<Endpoint> {
    let client = |p: &str| format!("{CLIENT_PREFIX}{p}");
    let federation = |p: &str| format!("{FEDERATION_PREFIX}{p}");
    let history = |after_only: bool| {
        let mut q = vec![
            param("after", ParamIn::Query, after_only, "The first `limit` events with seq > after.", seq_schema),
            param("limit", ParamIn::Query, false, "Events per page.", limit_schema),
        ];
        if !after_only {
            q.insert(
                0,
                param("before", ParamIn::Query, false, "The last `limit` events with seq < before.", seq_schema),
            );
        }
        q
    };
    vec![
        Endpoint {
            id: "versions",
            method: Method::Get,
            path: "/_parlor/versions".into(),
            tag: "server",
            summary: "Protocol versions and server name",
            description: "Spec §5.",
            auth: Auth::None,
            params: vec![],
            body: None,
            answers: ok(200, "The versions this server speaks.", of::<versions::VersionsResponse>()),
            errors: errors(&[]),
        },
        Endpoint {
            id: "health",
            method: Method::Get,
            path: "/healthz".into(),
            tag: "server",
            summary: "Whether the server can serve",
            description: "Spec §10. The 503 answer is a health body, not an error body.",
            auth: Auth::None,
            params: vec![],
            body: None,
            answers: vec![
                Answer { status: 200, description: "`status` is `ok`.", body: Some(of::<versions::HealthResponse>()) },
                Answer {
                    status: 503,
                    description: "The room log cannot be reached; `status` is `unavailable`.",
                    body: Some(of::<versions::HealthResponse>()),
                },
            ],
            errors: errors(&[]),
        },
        Endpoint {
            id: "register",
            method: Method::Post,
            path: client("/register"),
            tag: "accounts",
            summary: "Create an account",
            description: "Spec §5. Checked in this order: registration mode and token, rate limit, username syntax, password rules, username taken.",
            auth: Auth::None,
            params: vec![],
            body: body::<accounts::RegisterRequest>(),
            answers: ok(201, "The account is on disk.", of::<accounts::RegisterResponse>()),
            errors: errors(&[
                BODY,
                &[
                    RegistrationClosed,
                    RegistrationTokenRequired,
                    InvalidRegistrationToken,
                    RegistrationTokenUsedUp,
                    RegistrationTokenExpired,
                    RateLimited,
                    InvalidUsername,
                    PasswordTooShort,
                    PasswordTooLong,
                    PasswordTooSimilar,
                    PasswordTooCommon,
                    PasswordEntirelyNumeric,
                    UsernameTaken,
                ],
            ]),
        },
        Endpoint {
            id: "login",
            method: Method::Post,
            path: client("/login"),
            tag: "accounts",
            summary: "Log in: a new device and its access token",
            description: "Spec §5. An unknown username and a wrong password get the same answer.",
            auth: Auth::None,
            params: vec![],
            body: body::<accounts::LoginRequest>(),
            answers: ok(200, "A new device and its access token.", of::<accounts::LoginResponse>()),
            errors: errors(&[BODY, &[RateLimited, InvalidCredentials, UserDeactivated]]),
        },
        Endpoint {
            id: "logout",
            method: Method::Post,
            path: client("/logout"),
            tag: "accounts",
            summary: "Revoke the token used",
            description: "Spec §5. WebSockets authenticated with it are closed with 4001.",
            auth: Auth::Bearer,
            params: vec![],
            body: optional_empty_body(),
            answers: ok(200, "Revoked.", of::<accounts::Empty>()),
            errors: errors(&[BODY, BEARER]),
        },
        Endpoint {
            id: "logoutAll",
            method: Method::Post,
            path: client("/logout/all"),
            tag: "accounts",
            summary: "Revoke every token of the user",
            description: "Spec §5.",
            auth: Auth::Bearer,
            params: vec![],
            body: optional_empty_body(),
            answers: ok(200, "Revoked.", of::<accounts::Empty>()),
            errors: errors(&[BODY, BEARER]),
        },
        Endpoint {
            id: "whoami",
            method: Method::Get,
            path: client("/account/whoami"),
            tag: "accounts",
            summary: "Who the token belongs to",
            description: "Spec §5.",
            auth: Auth::Bearer,
            params: vec![],
            body: None,
            answers: ok(200, "The token's user and device.", of::<accounts::WhoamiResponse>()),
            errors: errors(&[BEARER]),
        },
        Endpoint {
            id: "join",
            method: Method::Post,
            path: client("/rooms/{room}/join"),
            tag: "rooms",
            summary: "Join a room (creating a local one on first join)",
            description: "Spec §6. A room of another server is joined through it (§11).",
            auth: Auth::Bearer,
            params: vec![room_param()],
            body: optional_empty_body(),
            answers: ok(200, "Joined (also when already a member).", of::<rooms::JoinResponse>()),
            errors: errors(&[BODY, BEARER, ROOM, &[StorageUnavailable, HomeServerUnreachable]]),
        },
        Endpoint {
            id: "leave",
            method: Method::Post,
            path: client("/rooms/{room}/leave"),
            tag: "rooms",
            summary: "Leave a room",
            description: "Spec §6. Ends the user's subscriptions to the room.",
            auth: Auth::Bearer,
            params: vec![room_param()],
            body: optional_empty_body(),
            answers: ok(200, "Left.", of::<accounts::Empty>()),
            errors: errors(&[BODY, BEARER, ROOM, &[NotMember, StorageUnavailable, HomeServerUnreachable]]),
        },
        Endpoint {
            id: "rooms",
            method: Method::Get,
            path: client("/rooms"),
            tag: "rooms",
            summary: "The rooms the user has joined, and (v1.1) pending invites",
            description: "Spec §6, §12.",
            auth: Auth::Bearer,
            params: vec![],
            body: None,
            answers: ok(200, "Joined rooms, sorted by alias.", of::<rooms::RoomsResponse>()),
            errors: errors(&[BEARER]),
        },
        Endpoint {
            id: "members",
            method: Method::Get,
            path: client("/rooms/{room}/members"),
            tag: "rooms",
            summary: "A room's current members",
            description: "Spec §6.",
            auth: Auth::Bearer,
            params: vec![room_param()],
            body: None,
            answers: ok(200, "Members, sorted by user id.", of::<rooms::MembersResponse>()),
            errors: errors(&[BEARER, ROOM, &[NotMember]]),
        },
        Endpoint {
            id: "read",
            method: Method::Post,
            path: client("/rooms/{room}/read"),
            tag: "rooms",
            summary: "Mark a room read up to a seq",
            description: "Spec §6. A read mark never moves back; members' subscribed connections get `receipt`.",
            auth: Auth::Bearer,
            params: vec![room_param()],
            body: body::<rooms::ReadRequest>(),
            answers: ok(200, "Marked (or already marked further).", of::<accounts::Empty>()),
            errors: errors(&[BODY, BEARER, ROOM, &[NotMember, StorageUnavailable]]),
        },
        Endpoint {
            id: "create_room",
            method: Method::Post,
            path: client("/rooms"),
            tag: "rooms",
            summary: "v1.1: create a room",
            description: "Spec §12. The creator is its owner and first member.",
            auth: Auth::Bearer,
            params: vec![],
            body: body::<rooms::CreateRoomRequest>(),
            answers: ok(201, "Created.", of::<rooms::CreateRoomResponse>()),
            errors: errors(&[
                BODY,
                BEARER,
                &[InvalidRoom, UserNotFound, StorageUnavailable, AliasTaken, RemoteUserUnsupported],
            ]),
        },
        Endpoint {
            id: "patch_room",
            method: Method::Patch,
            path: client("/rooms/{room}"),
            tag: "rooms",
            summary: "v1.1: change a room's name, topic or visibility",
            description: "Spec §12. Moderators and owners; appends a `room` event.",
            auth: Auth::Bearer,
            params: vec![room_param()],
            body: body::<rooms::RoomUpdate>(),
            answers: ok(200, "Changed.", of::<accounts::Empty>()),
            errors: errors(&[BODY, BEARER, ROOM, &[NotMember, StorageUnavailable, Forbidden, RemoteUserUnsupported]]),
        },
        Endpoint {
            id: "invite",
            method: Method::Post,
            path: client("/rooms/{room}/invite"),
            tag: "rooms",
            summary: "v1.1: invite a user",
            description: "Spec §12. Members; of a private room, moderators and owners. Appends an `invite` event.",
            auth: Auth::Bearer,
            params: vec![room_param()],
            body: body::<rooms::UserRequest>(),
            answers: ok(200, "Invited (also when already invited or a member).", of::<accounts::Empty>()),
            errors: errors(&[
                BODY,
                BEARER,
                ROOM,
                &[UserNotFound, NotMember, StorageUnavailable, Forbidden, Banned, RemoteUserUnsupported],
            ]),
        },
        Endpoint {
            id: "reject",
            method: Method::Post,
            path: client("/rooms/{room}/reject"),
            tag: "rooms",
            summary: "v1.1: decline an invite",
            description: "Spec §12. Appends a `reject` event.",
            auth: Auth::Bearer,
            params: vec![room_param()],
            body: optional_empty_body(),
            answers: ok(200, "Declined.", of::<accounts::Empty>()),
            errors: errors(&[BODY, BEARER, ROOM, &[StorageUnavailable, NotInvited]]),
        },
        moderation("kick", "v1.1: remove a member", "Appends a `kick` event; ends the member's subscriptions."),
        moderation("ban", "v1.1: ban a user", "Appends a `ban` event; a member is removed too."),
        moderation("unban", "v1.1: lift a ban", "Appends an `unban` event."),
        Endpoint {
            id: "set_role",
            method: Method::Put,
            path: client("/rooms/{room}/roles/{user_id}"),
            tag: "rooms",
            summary: "v1.1: set a member's role",
            description: "Spec §12. Owners only; appends a `role` event.",
            auth: Auth::Bearer,
            params: vec![
                room_param(),
                param("user_id", ParamIn::Path, true, "A member's user id, URL-encoded.", of::<super::UserId>()),
            ],
            body: body::<rooms::RoleRequest>(),
            answers: ok(200, "Set.", of::<accounts::Empty>()),
            errors: errors(&[
                BODY,
                BEARER,
                ROOM,
                &[UserNotFound, NotMember, StorageUnavailable, Forbidden, RemoteUserUnsupported],
            ]),
        },
        Endpoint {
            id: "dm",
            method: Method::Post,
            path: client("/dm"),
            tag: "rooms",
            summary: "v1.1: the direct-message room with a user",
            description: "Spec §12. The same pair always gets the same private room.",
            auth: Auth::Bearer,
            params: vec![],
            body: body::<rooms::UserRequest>(),
            answers: ok(200, "The room; the other user is invited unless a member.", of::<rooms::DmResponse>()),
            errors: errors(&[
                BODY,
                BEARER,
                &[UserNotFound, StorageUnavailable, Forbidden, Banned, RemoteUserUnsupported],
            ]),
        },
        Endpoint {
            id: "send",
            method: Method::Put,
            path: client("/rooms/{room}/send/{txn_id}"),
            tag: "messages",
            summary: "Send a message, idempotently",
            description: "Spec §7. Answered once the event is durably in the room log; the same `txn_id` \
                          and body from the same device answer the same event. v1.1: `replaces` edits one's own \
                          message (§12).",
            auth: Auth::Bearer,
            params: vec![room_param(), txn_param()],
            body: body::<rooms::SendRequest>(),
            answers: ok(200, "The event is durably in the room log.", of::<rooms::SendResponse>()),
            errors: errors(&[
                BODY,
                BEARER,
                ROOM,
                &[
                    RateLimited,
                    NotMember,
                    MessageTooLarge,
                    TxnConflict,
                    StorageUnavailable,
                    HomeServerUnreachable,
                    Forbidden,
                    RemoteUserUnsupported,
                ],
            ]),
        },
        Endpoint {
            id: "redact",
            method: Method::Put,
            path: client("/rooms/{room}/redact/{event_id}/{txn_id}"),
            tag: "messages",
            summary: "v1.1: redact a message, idempotently",
            description: "Spec §12. Its sender, or a moderator or owner. Erases the message's body (and its edits') \
                          from storage and appends a `redaction` event; the same `txn_id` and event from the same \
                          device answer the same event.",
            auth: Auth::Bearer,
            params: vec![
                room_param(),
                param("event_id", ParamIn::Path, true, "The message's `event_id`, URL-encoded.", event_id_schema),
                txn_param(),
            ],
            body: Some(Body { schema: of::<rooms::RedactRequest>(), required: false }),
            answers: ok(200, "Redacted; the `redaction` event's id and seq.", of::<rooms::SendResponse>()),
            errors: errors(&[
                BODY,
                BEARER,
                ROOM,
                &[
                    RateLimited,
                    NotMember,
                    TxnConflict,
                    EventNotFound,
                    StorageUnavailable,
                    Forbidden,
                    RemoteUserUnsupported,
                ],
            ]),
        },
        Endpoint {
            id: "messages",
            method: Method::Get,
            path: client("/rooms/{room}/messages"),
            tag: "messages",
            summary: "A page of a room's history",
            description: "Spec §7. `before` and `after` exclude each other; neither: the latest events.",
            auth: Auth::Bearer,
            params: [
                vec![room_param()],
                history(false),
                vec![param(
                    "epoch",
                    ParamIn::Query,
                    false,
                    "Read this epoch: the current one or an older one the room's log keeps (default: the current \
                     one).",
                    epoch_schema,
                )],
            ]
            .concat(),
            body: None,
            answers: ok(200, "Events in ascending seq.", of::<rooms::MessagesResponse>()),
            errors: errors(&[BEARER, ROOM, &[NotMember, EpochNotFound, StorageUnavailable]]),
        },
        Endpoint {
            id: "websocket",
            method: Method::Get,
            path: client("/ws"),
            tag: "websocket",
            summary: "Upgrade to the WebSocket (frames: asyncapi.json)",
            description: "Spec §8. Authenticate with the `Authorization` header here, or with an `auth` frame \
                          within 10 s.",
            auth: Auth::BearerOrAuthFrame,
            params: vec![
                param("Sec-WebSocket-Protocol", ParamIn::Header, true, "The subprotocols offered.", subprotocol_schema),
                param(
                    "Origin",
                    ParamIn::Header,
                    false,
                    "Sent by browsers: must be this server or on its allow-list.",
                    origin_schema,
                ),
            ],
            body: None,
            answers: vec![Answer {
                status: 101,
                description: "Switching to the WebSocket, subprotocol `parlor.v1`.",
                body: None,
            }],
            errors: errors(&[&[UpgradeRequired, BadSubprotocol, ForbiddenOrigin, UnknownToken]]),
        },
        Endpoint {
            id: "serverKey",
            method: Method::Get,
            path: KEY_PATH.into(),
            tag: "federation",
            summary: "The server's signing key",
            description: "Spec §11.1. `not_found` when federation is off.",
            auth: Auth::None,
            params: vec![],
            body: None,
            answers: ok(200, "The key, signed by itself.", of::<fed::ServerKeyResponse>()),
            errors: errors(&[&[NotFound]]),
        },
        Endpoint {
            id: "wellKnown",
            method: Method::Get,
            path: WELL_KNOWN_PATH.into(),
            tag: "federation",
            summary: "Where this server name is served",
            description: "Spec §11.1. `not_found` when federation is off.",
            auth: Auth::None,
            params: vec![],
            body: None,
            answers: ok(200, "The base URL.", of::<fed::WellKnownResponse>()),
            errors: errors(&[&[NotFound]]),
        },
        Endpoint {
            id: "federationJoin",
            method: Method::Post,
            path: federation("/join"),
            tag: "federation",
            summary: "A user of the origin joins a room of this server",
            description: "Spec §11.3.",
            auth: Auth::Signature,
            params: vec![],
            body: body::<fed::FedJoinRequest>(),
            answers: ok(200, "Joined; where the room's log stands.", of::<fed::FedJoinResponse>()),
            errors: errors(&[BODY, SIGNED, &[InvalidRoom, RoomNotFound, Banned, NotInvited, StorageUnavailable]]),
        },
        Endpoint {
            id: "federationLeave",
            method: Method::Post,
            path: federation("/leave"),
            tag: "federation",
            summary: "A user of the origin leaves a room of this server",
            description: "Spec §11.3.",
            auth: Auth::Signature,
            params: vec![],
            body: body::<fed::FedLeaveRequest>(),
            answers: ok(200, "Left.", of::<accounts::Empty>()),
            errors: errors(&[BODY, SIGNED, &[RoomNotFound, NotMember, StorageUnavailable]]),
        },
        Endpoint {
            id: "federationReject",
            method: Method::Post,
            path: federation("/reject"),
            tag: "federation",
            summary: "A user of the origin declines an invite to a room of this server",
            description: "Spec §11.3. The home server appends `reject`.",
            auth: Auth::Signature,
            params: vec![],
            body: body::<fed::FedRejectRequest>(),
            answers: ok(200, "Declined.", of::<accounts::Empty>()),
            errors: errors(&[BODY, SIGNED, &[RoomNotFound, NotInvited, StorageUnavailable]]),
        },
        Endpoint {
            id: "federationSend",
            method: Method::Put,
            path: federation("/rooms/{room_id}/send/{txn_id}"),
            tag: "federation",
            summary: "A message from a user of the origin, to be ordered here",
            description: "Spec §11.3. Idempotent per sender, `device_id`, room and `txn_id`.",
            auth: Auth::Signature,
            params: vec![room_id_param(), txn_param()],
            body: body::<fed::FedSendRequest>(),
            answers: ok(200, "The event is durably in the room log.", of::<rooms::SendResponse>()),
            errors: errors(&[
                BODY,
                SIGNED,
                &[
                    InvalidParam,
                    InvalidRoom,
                    RoomNotFound,
                    RateLimited,
                    NotMember,
                    MessageTooLarge,
                    TxnConflict,
                    StorageUnavailable,
                ],
            ]),
        },
        Endpoint {
            id: "federationEvents",
            method: Method::Get,
            path: federation("/rooms/{room_id}/events"),
            tag: "federation",
            summary: "Backfill: events of a room after a seq",
            description: "Spec §11.3. Answered only to a server with a member in the room.",
            auth: Auth::Signature,
            params: [vec![room_id_param()], history(true)].concat(),
            body: None,
            answers: ok(200, "A page as in §7.", of::<rooms::MessagesResponse>()),
            errors: errors(&[SIGNED, &[InvalidParam, InvalidRoom, RoomNotFound, NotMember, StorageUnavailable]]),
        },
        Endpoint {
            id: "federationEphemeral",
            method: Method::Put,
            path: federation("/ephemeral/{txn_id}"),
            tag: "federation",
            summary: "Push typing, read marks and presence of the origin's users",
            description: "Spec §11.7. Items about rooms or users this server does not share with the origin are ignored.",
            auth: Auth::Signature,
            params: vec![txn_param()],
            body: body::<fed::FedEphemeral>(),
            answers: ok(200, "Taken.", of::<accounts::Empty>()),
            errors: errors(&[BODY, SIGNED, &[InvalidField, StorageUnavailable]]),
        },
        Endpoint {
            id: "federationTransaction",
            method: Method::Put,
            path: federation("/send/{txn_id}"),
            tag: "federation",
            summary: "Push events of rooms homed on the origin",
            description: "Spec §11.4. Events of rooms not homed on the origin are ignored; retries are harmless.",
            auth: Auth::Signature,
            params: vec![txn_param()],
            body: body::<fed::FedTransaction>(),
            answers: ok(200, "Taken (or already had).", of::<accounts::Empty>()),
            errors: errors(&[BODY, SIGNED, &[StorageUnavailable]]),
        },
    ]
}

/// A client frame: the server frames that answer it and its errcodes.
#[derive(Debug, Clone)]
pub struct FrameRule {
    /// The client frame's `type`.
    pub frame: &'static str,
    /// `type`s of the server frames that answer it, in the order they come.
    pub answers: &'static [&'static str],
    /// Errcodes of the `error` frame that may answer it, besides [`ANY_FRAME_ERRORS`].
    pub errors: &'static [ErrCode],
}

/// Errcodes any client frame may get (§8).
pub const ANY_FRAME_ERRORS: &[ErrCode] = &[MalformedJson, InvalidField, UnknownType, NotAuthenticated, Internal];

/// Errcodes answered only on the operator's admin channel (`parlor admin`),
/// never to a client of the protocol.
pub const ADMIN_ERRORS: &[ErrCode] = &[UserNotFound];

/// Server frames that may come without a client frame asking: live events,
/// gaps, the end of a subscription when the user left, errors.
pub const UNPROMPTED_FRAMES: &[&str] = &["event", "gap", "unsubscribed", "error", "typing", "presence", "receipt"];

/// Every client frame of §8, in the order of `ws::CLIENT_FRAME_TYPES`.
pub const FRAMES: &[FrameRule] = &[
    FrameRule { frame: "auth", answers: &["ready"], errors: &[UnknownToken, AlreadyAuthenticated] },
    FrameRule {
        frame: "join",
        answers: &["joined"],
        errors: &[InvalidRoom, RoomNotFound, StorageUnavailable, HomeServerUnreachable],
    },
    FrameRule {
        frame: "leave",
        answers: &["left"],
        errors: &[InvalidRoom, RoomNotFound, NotMember, StorageUnavailable, HomeServerUnreachable],
    },
    FrameRule {
        frame: "subscribe",
        answers: &["gap", "event", "caught_up"],
        errors: &[InvalidRoom, RoomNotFound, NotMember, TooManySubscriptions, StorageUnavailable],
    },
    FrameRule { frame: "unsubscribe", answers: &["unsubscribed"], errors: &[InvalidRoom] },
    FrameRule {
        frame: "send",
        answers: &["ack"],
        errors: &[
            RateLimited,
            InvalidRoom,
            RoomNotFound,
            NotMember,
            MessageTooLarge,
            TxnConflict,
            StorageUnavailable,
            HomeServerUnreachable,
        ],
    },
    FrameRule { frame: "ping", answers: &["pong"], errors: &[] },
    FrameRule { frame: "typing", answers: &[], errors: &[InvalidRoom, NotSubscribed] },
    FrameRule { frame: "read", answers: &[], errors: &[InvalidRoom, RoomNotFound, NotMember, StorageUnavailable] },
];

/// The close codes a server sends (§8), with what a client should do.
pub const CLOSE_CODES: &[(u16, &str)] = &[
    (1000, "normal close"),
    (close::GOING_AWAY, "the server is shutting down: reconnect with backoff, resume with `since`"),
    (close::UNSUPPORTED_DATA, "a binary frame was sent: send text frames"),
    (close::INVALID_PAYLOAD, "a text frame was not valid UTF-8"),
    (close::TOO_BIG, "a message over 65,536 bytes"),
    (close::INTERNAL, "internal server error: reconnect with backoff"),
    (close::UNAUTHORIZED, "bad token, or token revoked: log in again"),
    (close::AUTH_TIMEOUT, "no `auth` within 10 s"),
    (close::HEARTBEAT_TIMEOUT, "no answer to pings: reconnect, resume with `since`"),
    (close::SLOW_CONSUMER, "more than 1 MiB of frames waiting: reconnect, resume with `since`"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ws::CLIENT_FRAME_TYPES;

    #[test]
    fn every_errcode_has_a_place() {
        let eps = http();
        for code in ErrCode::ALL {
            let placed = ROUTING_ERRORS.contains(code)
                || ANY_FRAME_ERRORS.contains(code)
                || ADMIN_ERRORS.contains(code)
                || eps.iter().any(|e| e.errors.contains(code))
                || FRAMES.iter().any(|f| f.errors.contains(code));
            assert!(
                placed,
                "errcode {code} is in no endpoint or frame of protocol/endpoints.rs: add it where the spec says"
            );
        }
    }

    #[test]
    fn every_client_frame_has_a_rule() {
        let rules: Vec<_> = FRAMES.iter().map(|f| f.frame).collect();
        assert_eq!(rules, CLIENT_FRAME_TYPES, "FRAMES must list every client frame type, in order");
    }

    #[test]
    fn operation_ids_are_unique() {
        let eps = http();
        let mut ids: Vec<_> = eps.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), eps.len());
    }
}

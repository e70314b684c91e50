//! Every size limit of protocol v1. The spec's "Limits" table lists these
//! same numbers; `tests/spec.rs` fails when the two disagree.

/// Largest HTTP request body, in bytes (larger: 413 `body_too_large`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest WebSocket message (frame payload), in bytes (larger: close 1009).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest message `body`, in bytes of UTF-8 (larger: `message_too_large`).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Username length, in characters, after folding to lower case.
pub const USERNAME_MAX: usize = 32;
/// Room name length, in characters, after folding to lower case.
pub const ROOM_NAME_MAX: usize = 64;
/// Minimum password length, in characters.
pub const PASSWORD_MIN: usize = 8;
/// Maximum password length, in bytes (bounds the work of one hash).
pub const PASSWORD_MAX_BYTES: usize = 1024;
/// Longest `txn_id`, in bytes.
pub const TXN_ID_MAX: usize = 64;
/// Longest `device_name`, in characters.
pub const DEVICE_NAME_MAX: usize = 64;
/// Largest `limit` on a history page.
pub const HISTORY_LIMIT_MAX: u32 = 1000;
/// `limit` of a history page when the client gives none.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Rooms one WebSocket connection may be subscribed to at once.
pub const WS_MAX_SUBSCRIPTIONS: usize = 256;
/// Longest WebSocket frame `id`, in bytes.
pub const WS_ID_MAX: usize = 64;
/// Largest JSON body of a history page, in bytes: a page that would be larger
/// holds fewer events than `limit` (always at least one).
pub const HISTORY_PAGE_MAX_BYTES: usize = 1024 * 1024;
/// Longest request target (path and query), in bytes (longer: 414 `uri_too_long`).
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Largest request line and headers together, in bytes (larger: 431 `headers_too_large`).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request (more: 431 `headers_too_large`).
pub const MAX_HEADER_FIELDS: usize = 100;
/// Seconds a typing state lasts after the user's last `typing: true`.
pub const TYPING_TIMEOUT_SECS: u64 = 30;
/// Most `typing` frames one room sends a connection per second.
pub const TYPING_FRAMES_PER_SEC: usize = 4;
/// Largest `unread` count in `GET /rooms`: it means this many or more.
pub const UNREAD_MAX: usize = 100;
/// Most events read after a read mark to count one room's `unread`; past
/// them the count so far is given.
pub const UNREAD_SCAN_MAX: usize = 2048;
/// v1.1: longest room `name`, in bytes of UTF-8.
pub const ROOM_DISPLAY_NAME_MAX_BYTES: usize = 256;
/// v1.1: longest room `topic`, in bytes of UTF-8.
pub const ROOM_TOPIC_MAX_BYTES: usize = 4096;
/// v1.1: longest moderation `reason`, in bytes of UTF-8.
pub const REASON_MAX_BYTES: usize = 1024;
/// v1.1: an edit (`replaces`) names one of the room's last this many events.
pub const EDIT_WINDOW: usize = 1000;
/// v1.1: most users one `POST /rooms` may invite.
pub const CREATE_INVITES_MAX: usize = 100;

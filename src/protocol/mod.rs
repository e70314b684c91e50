//! The Parlor v1 wire protocol: every request, response, WebSocket frame and
//! error as a serde + schemars type. This module is the single source of the
//! JSON Schemas in `spec/schemas/`.
//!
//! Invariant: nothing here does I/O or knows about storage, services or
//! hyper. Types validate their own syntax (identifiers, names) and nothing
//! else; whether a room exists is a service question.

pub mod accounts;
pub mod admin;
pub mod asyncapi;
pub mod endpoints;
pub mod errors;
pub mod events;
pub mod federation;
pub mod ids;
pub mod limits;
pub mod openapi;
pub mod parse;
pub mod rooms;
pub mod schemas;
pub mod versions;
pub mod ws;

pub use errors::{ErrCode, ErrorBody};
pub use ids::{IdError, RoomAlias, RoomId, RoomName, RoomRef, ServerName, UserId, Username};

/// The protocol versions this implementation speaks.
pub const VERSIONS: &[&str] = &["v1", "v1.1"];

/// The WebSocket subprotocol a client must offer on the upgrade.
pub const WS_SUBPROTOCOL: &str = "parlor.v1";

/// Prefix of every client API path.
pub const CLIENT_PREFIX: &str = "/_parlor/client/v1";

//! Generates `spec/schemas/*.json` (JSON Schema 2020-12) from the protocol
//! types. `tests/spec.rs` compares the output with the committed files, and
//! `parlor schemas --out spec/schemas` rewrites them.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};

use super::{accounts, errors, events, federation, rooms, versions, ws};

fn schema_for<T: JsonSchema>(id: &str) -> Schema {
    let mut schema = SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<T>();
    schema.insert("$id".into(), format!("https://parlor.chat/spec/v1/schemas/{id}").into());
    schema
}

/// Every schema file of the spec: `(file name, schema)`, in spec order.
pub fn all() -> Vec<(&'static str, Schema)> {
    macro_rules! files {
        ($($file:literal => $ty:ty,)*) => { vec![$(($file, schema_for::<$ty>($file)),)*] };
    }
    files! {
        "error.json" => errors::ErrorBody,
        "versions_response.json" => versions::VersionsResponse,
        "health_response.json" => versions::HealthResponse,
        "register_request.json" => accounts::RegisterRequest,
        "register_response.json" => accounts::RegisterResponse,
        "login_request.json" => accounts::LoginRequest,
        "login_response.json" => accounts::LoginResponse,
        "whoami_response.json" => accounts::WhoamiResponse,
        "empty.json" => accounts::Empty,
        "join_response.json" => rooms::JoinResponse,
        "rooms_response.json" => rooms::RoomsResponse,
        "members_response.json" => rooms::MembersResponse,
        "read_request.json" => rooms::ReadRequest,
        "send_request.json" => rooms::SendRequest,
        "send_response.json" => rooms::SendResponse,
        "messages_response.json" => rooms::MessagesResponse,
        "create_room_request.json" => rooms::CreateRoomRequest,
        "create_room_response.json" => rooms::CreateRoomResponse,
        "room_update.json" => rooms::RoomUpdate,
        "user_request.json" => rooms::UserRequest,
        "moderation_request.json" => rooms::ModerationRequest,
        "role_request.json" => rooms::RoleRequest,
        "redact_request.json" => rooms::RedactRequest,
        "dm_response.json" => rooms::DmResponse,
        "event.json" => events::Event,
        "cursor.json" => events::Cursor,
        "client_frame.json" => ws::ClientFrame,
        "server_frame.json" => ws::ServerFrame,
        "federation_server_key.json" => federation::ServerKeyResponse,
        "federation_well_known.json" => federation::WellKnownResponse,
        "federation_join_request.json" => federation::FedJoinRequest,
        "federation_join_response.json" => federation::FedJoinResponse,
        "federation_leave_request.json" => federation::FedLeaveRequest,
        "federation_reject_request.json" => federation::FedRejectRequest,
        "federation_ephemeral.json" => federation::FedEphemeral,
        "federation_send_request.json" => federation::FedSendRequest,
        "federation_transaction.json" => federation::FedTransaction,
    }
}

/// A schema file's text as committed: pretty JSON with a final newline.
pub fn render(schema: &Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).expect("schemas serialize");
    s.push('\n');
    s
}

/// The machine-readable API documents of the spec: `(file name, document)`,
/// `spec/openapi.json` (HTTP) and `spec/asyncapi.json` (WebSocket), generated
/// from the same types as the schemas.
pub fn api_documents() -> Vec<(&'static str, serde_json::Value)> {
    vec![("openapi.json", super::openapi::document()), ("asyncapi.json", super::asyncapi::document())]
}

/// An API document's text as committed: pretty JSON with a final newline.
pub fn render_document(doc: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(doc).expect("documents serialize");
    s.push('\n');
    s
}

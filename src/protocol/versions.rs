//! `GET /_parlor/versions` and `GET /healthz`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which protocol versions the server speaks, and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VersionsResponse {
    /// Protocol versions, e.g. `["v1"]`.
    pub versions: Vec<String>,
    pub server: ServerInfo,
    /// Who may create an account: `open` (anyone), `token` (with a
    /// `registration_token` from the operator) or `closed` (nobody).
    pub registration: Registration,
}

/// Whether `POST /register` takes new accounts (`--registration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// Anyone may register.
    #[default]
    Open,
    /// Registration needs a `registration_token` issued by the operator.
    Token,
    /// Nobody may register.
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ServerInfo {
    /// The server name, as in user and room ids.
    pub name: String,
    /// Implementation version, e.g. `parlor 0.1.0`.
    pub version: String,
}

/// `GET /healthz` answer: 200 when the server can serve, 503 when its room log is unreachable.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HealthResponse {
    /// `ok` or `unavailable`.
    pub status: String,
    /// `embedded` or `redis`.
    pub room_log: String,
}

//! `GET /_parlor/versions` and `GET /healthz`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which protocol versions the server speaks, and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VersionsResponse {
    /// Protocol versions, e.g. `["v1"]`.
    pub versions: Vec<String>,
    pub server: ServerInfo,
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

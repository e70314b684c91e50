//! Account requests and responses: register, login, logout, whoami.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ids::UserId;

/// `POST /register` body. The username is a plain string here so that a bad
/// one is answered with `invalid_username`, not a generic field error.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1-32 characters of a-z 0-9 . _ -; folded to lower case.
    pub username: String,
    /// At least 8 characters, at most 1,024 bytes, not all digits, not common, not like the username.
    pub password: String,
    /// A token from the server's operator; needed when `GET /_parlor/versions`
    /// says `"registration": "token"`, ignored otherwise.
    #[serde(default)]
    pub registration_token: Option<String>,
}

/// `POST /register` answer (status 201).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RegisterResponse {
    pub user_id: UserId,
}

/// `POST /login` body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Folded to lower case, so `Ann` logs in as `ann`.
    pub username: String,
    pub password: String,
    /// A label for the new device (at most 64 characters), e.g. "laptop".
    #[serde(default)]
    pub device_name: Option<String>,
    /// The `device_proof` an earlier login of this account answered with.
    /// A valid one makes the login count as from a known device: a guesser
    /// elsewhere cannot slow it down. One the server does not recognise is
    /// ignored (the login then counts as from a new device).
    #[serde(default)]
    pub device_proof: Option<String>,
}

/// `POST /login` answer: a new device and its access token.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LoginResponse {
    pub user_id: UserId,
    pub device_id: String,
    /// Send as `Authorization: Bearer <access_token>`; valid until logout.
    pub access_token: String,
    /// Keep it and send it with later logins of this account (43 characters
    /// of base64url). It outlives logout; `logout/all` forgets it.
    pub device_proof: String,
}

/// `GET /account/whoami` answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WhoamiResponse {
    pub user_id: UserId,
    pub device_id: String,
}

/// An empty JSON object, the answer of `logout`, `logout/all` and `leave`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

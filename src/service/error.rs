//! The service error: what went wrong, as one `ErrCode` plus human text, or
//! a storage fault. The wire layers turn it into an answer only through
//! [`Error::code`] and `ErrCode::status`.

use crate::protocol::ErrCode;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was refused for a reason the client can act on.
    #[error("{message}")]
    Refused { code: ErrCode, message: String },
    /// Too many requests; retry after the given time.
    #[error("too many requests; retry in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    pub fn refused(code: ErrCode, message: impl Into<String>) -> Self {
        Self::Refused { code, message: message.into() }
    }

    pub fn code(&self) -> ErrCode {
        match self {
            Self::Refused { code, .. } => *code,
            Self::RateLimited { .. } => ErrCode::RateLimited,
            Self::Storage(StorageError::Unavailable(_)) => ErrCode::StorageUnavailable,
            Self::Storage(_) => ErrCode::Internal,
        }
    }

    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// Text for the client: storage details stay in the server log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Storage(StorageError::Unavailable(_)) => {
                "the room log is unavailable; if this was a send, retry with the same txn_id (it is stored at most once)".into()
            }
            Self::Storage(_) => "internal server error".into(),
            other => other.to_string(),
        }
    }
}

impl From<crate::protocol::parse::Refusal> for Error {
    fn from(r: crate::protocol::parse::Refusal) -> Self {
        Self::Refused { code: r.code, message: r.message }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the services could not start: which part failed, and how.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    HashPool(#[from] super::hashing::StartError),
    #[error("cannot start federation: {0}")]
    Federation(#[from] super::federation::FederationError),
    /// `parlor admin` on a directory no server has used.
    #[error("{} holds no Parlor data (no identity.json): give the --data-dir of a server", .0.display())]
    NotADataDir(std::path::PathBuf),
}

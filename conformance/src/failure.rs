//! Why a case did not pass: the one error type every case returns, plus the
//! `check!` macros that turn a broken expectation into a readable reason.

use std::time::Duration;

/// A case's reason for not passing.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// An answer or frame does not match its schema in `spec/schemas`.
    #[error("{what}: violates {schema}: {detail}")]
    Schema { what: String, schema: String, detail: String },
    /// An answer is well-formed but not what the spec says.
    #[error("{0}")]
    Check(String),
    /// The server could not be reached, or the connection broke.
    #[error("transport: {0}")]
    Transport(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The case cannot run against this server in this mode; never a pass.
    #[error("{0}")]
    NotRun(String),
    /// A bug in the suite itself (e.g. an unknown schema name).
    #[error("suite bug: {0}")]
    Suite(String),
}

pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// Shortens `s` to about `max` bytes for a one-line reason.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Fails the case with a formatted reason unless `cond` holds.
#[macro_export]
#[doc(hidden)]
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::failure::Failure::Check(format!($($fmt)+)));
        }
    };
}

/// Fails the case unless `left == right`, showing both.
#[macro_export]
#[doc(hidden)]
macro_rules! check_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {
        // A match keeps temporaries in both expressions alive for the comparison.
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err($crate::failure::Failure::Check(format!(
                        "{}: expected {:?}, got {:?}", format!($($fmt)+), r, l
                    )));
                }
            }
        }
    };
}

/// Fails the case with a formatted reason.
#[macro_export]
#[doc(hidden)]
macro_rules! fail {
    ($($fmt:tt)+) => {
        return Err($crate::failure::Failure::Check(format!($($fmt)+)))
    };
}

//! Failures as the user sees them: each is one line on stderr and one of the
//! documented exit codes, so scripts can tell "the server said no" from "the
//! server is not there" without parsing text.

use std::fmt;

/// The exit codes, as documented in `chatctl --help` (`cli.rs`) and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The server refused the request; the message carries its errcode.
    Refused = 1,
    /// The command line (or an interactive answer) was not usable.
    Usage = 2,
    /// No session, or the server no longer accepts its token.
    NotLoggedIn = 3,
    /// The server could not be reached, or did not answer in the protocol.
    Unreachable = 4,
    /// A local problem: the config directory, standard input, a terminal.
    Local = 5,
}

/// A failure with its exit code; `message` is one line, without the
/// `chatctl:` prefix.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: one_line(&message.into()) }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn local(message: impl Into<String>) -> Self {
        Self::new(Exit::Local, message)
    }

    /// A server's error answer, shown as `errcode: text`. A refused token
    /// means the session is over, which is exit 3 rather than 1.
    pub fn refused(errcode: &str, error: &str) -> Self {
        let exit = match errcode {
            "missing_token" | "unknown_token" => Exit::NotLoggedIn,
            _ => Exit::Refused,
        };
        Self::new(exit, format!("{errcode}: {error}"))
    }

    /// Turns whatever a command returned into a failure to report; errors
    /// that are not a `Failure` are local faults (I/O and the like).
    pub fn from_anyhow(err: anyhow::Error) -> Self {
        match err.downcast::<Failure>() {
            Ok(f) => f,
            Err(other) => Failure::local(format!("{other:#}")),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Server text may hold newlines; the contract is one line on stderr.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r']).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_mean_not_logged_in() {
        assert_eq!(Failure::refused("unknown_token", "revoked").exit, Exit::NotLoggedIn);
        assert_eq!(Failure::refused("missing_token", "x").exit, Exit::NotLoggedIn);
        let f = Failure::refused("not_member", "you are not a member of #x:y");
        assert_eq!(f.exit, Exit::Refused);
        assert_eq!(f.to_string(), "not_member: you are not a member of #x:y");
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(Failure::local("a\nb\r\nc").message, "a b c");
    }

    #[test]
    fn other_errors_are_local() {
        let f = Failure::from_anyhow(anyhow::anyhow!("disk full"));
        assert_eq!(f.exit, Exit::Local);
        let f = Failure::from_anyhow(Failure::usage("bad").into());
        assert_eq!(f.exit, Exit::Usage);
    }
}

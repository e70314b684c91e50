//! Parlor v1 conformance suite: a black-box client, written from
//! `spec/protocol.md` alone, that runs every case against a server URL and
//! validates every answer and frame against the embedded `spec/schemas`.
//!
//! Use [`run`] in-process (the workspace's `tests/conformance.rs` does) or the
//! `conformance` binary from a shell.

#![forbid(unsafe_code)]

pub mod failure;
pub mod http;
pub mod peer;
pub mod schema;
pub mod ws;

mod cases;
pub mod ctx;
pub mod runner;

pub use failure::Failure;
pub use runner::{Case, CaseResult, Config, Needs, Outcome, Report, RunError, all_cases, run};

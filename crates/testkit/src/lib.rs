//! Parlor's one test harness, shared by the server's integration tests
//! (through `tests/support`), chatctl's and chatbench's end-to-end tests:
//! each test gets its own server on 127.0.0.1:0 with a temp data dir
//! (in-process, [`TestServer`], or the real binary, [`ParlorProcess`]), its
//! own `redis-server` on a free port where it needs one ([`RedisServer`]),
//! and waits on `GET /healthz` before it starts talking.
//!
//! - [`server`]: the in-process server ([`TestServer`]).
//! - [`process`]: the `parlor` binary as a child process.
//! - [`redis`]: a hermetic `redis-server`.
//! - [`health`]: `GET /healthz` probes.
//! - [`nginx`]: a real nginx running `contrib/nginx.conf` in front of Parlor.
//! - [`harness`]: a server on one room-log backend ([`Harness`]; for
//!   synchronous tests on a runtime of its own, [`BlockingServer`]) and
//!   [`backend_tests!`], which runs a test on both.
//! - [`browser`]: the Chromium tests' node scripts, run and watched.
//! - [`client`]: raw-JSON HTTP and WebSocket clients.

#![forbid(unsafe_code)]

pub mod browser;
pub mod client;
pub mod harness;
pub mod health;
pub mod nginx;
pub mod process;
pub mod redis;
pub mod server;

pub use client::{Api, Next, P, WsClient, WsStream, enc, uniq};
pub use harness::{Backend, BlockingServer, Harness};
pub use health::{health, health_status};
pub use process::{LoggedProcess, ParlorProcess, parlor_bin, run_parlor};
pub use redis::{RedisCluster, RedisServer, free_port};
pub use server::{TestServer, rebind};
pub use tempfile::{TempDir, tempdir};

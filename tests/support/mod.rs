//! Shared harness for the integration tests: each test gets its own server
//! (in-process or the real binary) on 127.0.0.1:0 with a temp data dir and,
//! where needed, its own `redis-server` on a free port. All of it lives in
//! the `testkit` crate (crates/testkit), which chatctl's and chatbench's
//! tests use too; this module names it for the `mod support;` test files.

// Each test binary uses a different part of this.
#![allow(dead_code, unused_imports)]

pub mod tls;

pub use testkit::{
    Api, Backend, Harness, LoggedProcess, Next, P, ParlorProcess, RedisCluster, RedisServer, TestServer, WsClient,
    WsStream, browser, enc, free_port, health, health_status, nginx, rebind, run_parlor, uniq,
};

/// Instantiates each named `async fn(Backend)` as a test on both backends
/// (`testkit::backend_tests!`, named at this crate's root for the
/// `#[macro_use] mod support;` test files).
#[macro_export]
macro_rules! backend_tests {
    ($($names:tt)*) => {
        testkit::backend_tests!($($names)*);
    };
}

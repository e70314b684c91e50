//! An RFC 6455 echo server built on Parlor's own WebSocket code (the
//! `wsframe` codec and the server's connection transport, see
//! `src/ws/echo.rs`), for the Autobahn|Testsuite fuzzingclient:
//!
//! ```sh
//! cargo run --release --example ws_echo -- 127.0.0.1:9001
//! ../shared/tools/autobahn/run-fuzzingclient ws://127.0.0.1:9001 \
//!     '["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*"]' /tmp/ab-report
//! ```
//!
//! The limits are raised as the Autobahn README asks of a server under
//! test: 9.* sends messages of up to 16 MiB (the Parlor endpoint takes
//! 64 KiB) and reads echoes of that size back.

use anyhow::Context;
use parlor::ws::echo::{Limits, serve};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("bind {addr}"))?;
    println!("ws_echo listening on ws://{}", listener.local_addr()?);
    serve(listener, Limits::AUTOBAHN).await.context("accept")
}

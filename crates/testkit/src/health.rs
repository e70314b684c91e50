//! `GET /healthz` probes over raw TCP (no client library between the test
//! and the status line), async for in-process servers and blocking for
//! child processes.

use std::net::SocketAddr;
use std::time::Duration;

const HEALTH_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: parlor.test\r\nConnection: close\r\n\r\n";

/// The status of `GET /healthz` on `addr`, or None when nothing answers.
pub async fn health_status(addr: SocketAddr) -> Option<u16> {
    health(addr).await.map(|(status, _)| status)
}

/// `GET /healthz` on `addr`: its status and JSON body, or None when nothing
/// answers (or the answer is not a status line and a JSON body).
pub async fn health(addr: SocketAddr) -> Option<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(HEALTH_REQUEST).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        parse_health(&buf)
    };
    tokio::time::timeout(Duration::from_secs(5), ask).await.ok().flatten()
}

/// [`health`] without a runtime, for a thread that waits on a child process.
pub fn health_blocking(addr: SocketAddr) -> Option<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(HEALTH_REQUEST).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    parse_health(&buf)
}

/// A whole `Connection: close` answer to [`HEALTH_REQUEST`] → status and body.
fn parse_health(answer: &[u8]) -> Option<(u16, serde_json::Value)> {
    let status = std::str::from_utf8(answer.strip_prefix(b"HTTP/1.1 ")?.get(..3)?).ok()?.parse().ok()?;
    let body = &answer[answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4..];
    Some((status, serde_json::from_slice(body).ok()?))
}

//! `parlor admin`'s end of the admin socket: one request per connection.

use std::path::Path;

use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::protocol::ErrorBody;
use crate::protocol::admin::{AdminAnswer, AdminRequest};

/// Why a call over the admin socket failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No server listens there (no socket file, or nobody accepts on it).
    #[error("no server answers on {0}")]
    NoServer(String),
    #[error("admin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin socket: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin socket answered {status} with {body}")]
    BadAnswer { status: u16, body: String },
}

/// Sends `req` to the server listening on `socket`; `Ok(Err(_))` is the
/// server's refusal (an unknown user, a weak password…).
pub async fn call(socket: &Path, req: &AdminRequest) -> Result<Result<AdminAnswer, ErrorBody>, CallError> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(CallError::NoServer(socket.display().to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let body = serde_json::to_vec(req).expect("admin requests serialize");
    let request = Request::builder()
        .method(Method::POST)
        .uri(super::PATH)
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("a valid request");
    let answer = sender.send_request(request).await?;
    let status = answer.status().as_u16();
    let bytes = answer.into_body().collect().await?.to_bytes();
    driver.abort();
    let bad = || CallError::BadAnswer { status, body: String::from_utf8_lossy(&bytes).into_owned() };
    if status == 200 {
        serde_json::from_slice(&bytes).map(Ok).map_err(|_| bad())
    } else {
        serde_json::from_slice(&bytes).map(Err).map_err(|_| bad())
    }
}

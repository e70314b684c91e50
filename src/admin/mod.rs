//! The admin channel: the running server listens on a unix socket in its
//! data directory (`admin.sock`, mode 0600, made at start and removed at
//! stop) and answers `POST /v1/admin` with one [`AdminRequest`] as JSON; the
//! answer is an [`AdminAnswer`](crate::protocol::admin::AdminAnswer) (200)
//! or the protocol's error body, through `http::error_response` like every
//! other error. Only a process of the server's own user can reach it (the
//! socket and the data directory are that user's only), so it carries no
//! token: the file permission is the authentication. `client` is the other
//! end, used by `parlor admin`.

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

use crate::app::{App, Resp};
use crate::http::{error_response, json};
use crate::protocol::ErrCode;
use crate::protocol::admin::AdminRequest;
use crate::service::Error;

/// The socket's file name in the data directory.
pub const SOCKET: &str = "admin.sock";
/// The one path the socket answers.
pub const PATH: &str = "/v1/admin";
/// Admin requests are small (a password at most).
const MAX_BODY: usize = 64 << 10;

/// The admin socket of the data directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// The bound admin socket; removes its file when dropped.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds `DIR/admin.sock` (mode 0600). A file left there by a server
    /// that did not stop cleanly is replaced: the caller holds the data
    /// directory's lock, so no other server is using it.
    pub fn bind(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = socket_path(dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { listener, path })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the admin socket until the server shuts down.
pub async fn serve(socket: AdminSocket, app: Arc<App>, conns: TaskTracker) {
    loop {
        let stream = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app2 = app.clone();
        let svc = service_fn(move |req| {
            let app = app2.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&app, req).await.unwrap_or_else(|e| error_response(&e))) }
        });
        let stop = app.shutdown.clone();
        conns.spawn(async move {
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let _ = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
        });
    }
}

async fn handle(app: &App, req: Request<Incoming>) -> Result<Resp, Error> {
    if req.uri().path() != PATH {
        return Err(Error::refused(ErrCode::NotFound, format!("the admin socket answers only {PATH}")));
    }
    if req.method() != Method::POST {
        return Err(Error::refused(ErrCode::MethodNotAllowed, "POST an admin command"));
    }
    let body =
        http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await.map(|b| b.to_bytes()).map_err(
            |_| Error::refused(ErrCode::BodyTooLarge, format!("admin commands are at most {MAX_BODY} bytes")),
        )?;
    let cmd = parse(&body)?;
    let services = &app.services;
    let answer = services.admin.run(&services.accounts, cmd).await?;
    Ok(json(StatusCode::OK, &answer))
}

fn parse(body: &Bytes) -> Result<AdminRequest, Error> {
    serde_json::from_slice(body).map_err(|e| Error::refused(ErrCode::InvalidField, format!("admin command: {e}")))
}

//! An RFC 6455 echo server on the server's own WebSocket code: the same
//! upgrade checks and answer, the same transport ([`Io`]: the `wsframe`
//! decoder, control frames, the bounded outbound queue and its vectored
//! writes, the close handshake). It echoes every text and binary message.
//! It exists so that the Autobahn|Testsuite fuzzingclient, which speaks no
//! Parlor protocol, can hold that code to RFC 6455: `examples/ws_echo.rs`
//! runs it, and `tests/autobahn.rs` runs the suite against it. The Parlor
//! endpoint differs only above [`Io`] (JSON frames instead of echoes).

use std::convert::Infallible;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wsframe::OpCode;

use super::io::{Data, End, Io, Stream};
use super::{Upgrade, accept, switching_protocols, upgraded};

/// The echo server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message taken, in bytes (the Parlor endpoint: 65,536).
    pub max_message: usize,
    /// Bytes that may wait for the peer before it is closed as a slow consumer.
    pub outbound: usize,
}

impl Limits {
    /// What the Autobahn README asks of a server under test: 9.* sends
    /// messages of up to 16 MiB and reads their echoes back, so take 20 MiB
    /// and let 64 MiB wait for the peer.
    pub const AUTOBAHN: Limits = Limits { max_message: 20 << 20, outbound: 64 << 20 };
}

/// How long a close frame may take to get out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves WebSocket upgrades on any path until the listener fails.
pub async fn serve(listener: TcpListener, limits: Limits) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| async move {
                let Some(key) = accept(&req) else {
                    let mut no = http::Response::new(Full::new(Bytes::from_static(b"a WebSocket upgrade, please\n")));
                    *no.status_mut() = StatusCode::UPGRADE_REQUIRED;
                    return Ok::<_, Infallible>(no);
                };
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    match upgraded(on_upgrade).await {
                        Some(Upgrade::Tcp(tcp, rest)) => {
                            echo(Io::new(tcp, rest, limits.max_message, limits.outbound)).await
                        }
                        Some(Upgrade::Tls(s, rest)) => {
                            echo(Io::new(*s, rest, limits.max_message, limits.outbound)).await
                        }
                        Some(Upgrade::Other(s)) => {
                            echo(Io::new(s, Bytes::new(), limits.max_message, limits.outbound)).await
                        }
                        None => {}
                    }
                });
                Ok(switching_protocols(key, None))
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            let _ = conn.with_upgrades().await;
        });
    }
}

/// Echoes messages until the connection ends, then closes it.
pub async fn echo<S: Stream>(mut io: Io<S>) {
    let end = run(&mut io).await;
    io.finish(end, CLOSE_GRACE).await;
}

async fn run<S: Stream>(io: &mut Io<S>) -> End {
    loop {
        // Bytes read past the upgrade request may already hold frames.
        loop {
            match io.next_data() {
                Ok(Some(Data::Text(t))) => io.push(OpCode::Text, Bytes::from(t)),
                Ok(Some(Data::Binary(b))) => io.push(OpCode::Binary, b),
                Ok(None) => break,
                Err(end) => return end,
            }
        }
        if let Err(end) = io.check_bound().and_then(|()| io.try_flush()) {
            return end;
        }
        let read = poll_fn(|cx| {
            if io.has_unsent()
                && let Poll::Ready(Err(end)) = io.poll_write(cx)
            {
                return Poll::Ready(Err(end));
            }
            io.poll_read(cx)
        });
        match read.await {
            Ok(true) => {}
            Ok(false) | Err(_) => return End::Gone,
        }
    }
}

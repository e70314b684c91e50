//! The accept loop, in the style of mini-redis: `run` takes its listener
//! and its shutdown signal as arguments, so tests bind port 0 and stop the
//! server when they like. It owns connection limits (server-wide and per
//! address), HTTP/1 limits and timeouts, and graceful shutdown (including
//! upgraded WebSockets, which hyper does not track: they are told to close
//! with 1001 and awaited).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::conn::{ConnCaps, ConnIo, ConnState, Refused, ResponseBudget, address_key};
use crate::app::{App, Ctx};
use crate::config::Config;
use crate::protocol::limits::{MAX_HEAD_BYTES, MAX_HEADER_FIELDS};
use crate::service::{Services, StartError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How long shutdown waits for connections to finish before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections the open-file limit leaves room for.
fn fd_budget() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if !ok || lim.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    // sled, the listener, Redis and the runtime need a few descriptors too.
    (lim.rlim_cur as usize).saturating_sub(64).max(16)
}

/// Raises the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

/// Serves on `listener` until `shutdown` resolves, then drains and returns
/// with everything flushed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let max_conns = config.max_connections.min(fd_budget());
    let caps = ConnCaps::new(max_conns, config.max_connections_per_address);
    let (header_timeout, write_timeout) = (config.header_timeout, config.write_timeout);
    let responses = Arc::new(ResponseBudget::new(config.response_budget));
    let transport = Arc::new(crate::fedclient::HttpTransport::new(config.federation_peers.clone()));
    let services = Services::open(config, transport).await?;
    let app = Arc::new(App { services, shutdown: CancellationToken::new(), tasks: TaskTracker::new(), responses });
    let http_conns = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADER_FIELDS)
        .keep_alive(true);
    tracing::info!(addr = %listener.local_addr()?, max_conns, room_log = app.services.events.log().kind(), "serving");

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match caps.admit(address_key(peer.ip())) {
            Ok(slot) => Arc::new(slot),
            Err(why) => {
                match why {
                    Refused::ServerFull => tracing::warn!(%peer, "connection cap reached; closing"),
                    Refused::AddressFull => tracing::debug!(%peer, "per-address connection cap reached; closing"),
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = ConnState::new(app.responses.clone());
        let io = ConnIo::new(stream, state.clone(), write_timeout, crate::http::own_refusal);
        let app2 = app.clone();
        let svc = service_fn(move |req| {
            crate::http::handle(req, Ctx { app: app2.clone(), peer, permit: permit.clone(), conn: state.clone() })
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
        let stop = app.shutdown.clone();
        http_conns.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!("shutting down: closing connections");
    app.shutdown.cancel();
    http_conns.close();
    app.tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, async { tokio::join!(http_conns.wait(), app.tasks.wait()) }).await.is_err() {
        tracing::warn!("some connections did not finish in time");
    }
    app.services.close().await;
    tracing::info!("stopped");
    Ok(())
}

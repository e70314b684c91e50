//! The accept loop, in the style of mini-redis: `run` takes its listener
//! and its shutdown signal as arguments, so tests bind port 0 and stop the
//! server when they like. It owns connection limits (server-wide and per
//! address; trusted proxies only server-wide), the TLS handshake and the
//! certificate's reload on SIGHUP, HTTP/1 limits and timeouts, the metrics
//! listener, and graceful shutdown (including upgraded WebSockets, which
//! hyper does not track: they are told to close with 1001 and awaited).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::conn::{ConnCaps, ConnIo, ConnState, Refused, ResponseBudget, Transport, address_key, is_trusted};
use crate::app::tls::{CertStore, TlsError};
use crate::app::{App, Ctx};
use crate::config::Config;
use crate::metrics::{ConnRefusal, Metrics};
use crate::protocol::limits::{MAX_HEAD_BYTES, MAX_HEADER_FIELDS};
use crate::service::{Services, StartError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("federation CA: {0}")]
    FederationCa(#[from] crate::fedclient::RootsError),
}

/// What the server listens on.
pub struct Listeners {
    /// The client API, WebSocket, federation and demo page (TLS when
    /// `Config::tls` is set).
    pub client: TcpListener,
    /// `GET /metrics` (plain HTTP; meant for a private address).
    pub metrics: Option<TcpListener>,
}

/// How long shutdown waits for connections to finish before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections the open-file limit leaves room for.
fn fd_budget() -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        // sled, the listener, Redis and the runtime need a few descriptors too.
        Some(soft) => (soft as usize).saturating_sub(64).max(16),
        None => usize::MAX, // unlimited
    }
}

/// Raises the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is unlimited (RLIM_INFINITY).
    let (soft, hard) = (lim.current.unwrap_or(u64::MAX), lim.maximum.unwrap_or(u64::MAX));
    if soft < hard && setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum }).is_ok() {
        return hard;
    }
    soft
}

/// Serves on `listener` until `shutdown` resolves, then drains and returns
/// with everything flushed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    serve(Listeners { client: listener, metrics: None }, config, shutdown).await
}

/// [`run`] with a metrics listener too.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let listener = listeners.client;
    let max_conns = config.max_connections.min(fd_budget());
    let caps = ConnCaps::new(max_conns, config.max_connections_per_address);
    let (header_timeout, write_timeout) = (config.header_timeout, config.write_timeout);
    let trusted = config.trusted_proxies.clone();
    let certs = config.tls.clone().map(CertStore::load).transpose()?;
    let acceptor = certs.as_ref().map(|c| c.acceptor()).transpose()?;
    let responses = Arc::new(ResponseBudget::new(config.response_budget));
    let metrics = Arc::new(Metrics::new());
    let roots = crate::fedclient::trust_roots(config.federation_ca.as_deref())?;
    let transport = Arc::new(crate::fedclient::HttpTransport::new(config.federation_peers.clone(), roots));
    let services = Services::open(config, transport, &metrics).await?;
    let app = Arc::new(App {
        services,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        responses,
        metrics,
        ws_upgrade: crate::ws::upgrade,
    });
    let http_conns = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADER_FIELDS)
        .keep_alive(true);
    let builder = Arc::new(builder);
    // SIGHUP is watched before the first connection is accepted: once a
    // client has been answered, a reload can never hit the default action
    // (which ends the process).
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(reload_on_sighup(hup, certs, app.shutdown.clone()));
    // The admin socket is made once storage is open (and its lock held), so
    // `parlor admin` finding it means a server is there to answer.
    // A data dir where no socket can be made (a path over the 107 bytes a
    // socket address holds, a filesystem without sockets) still serves;
    // `parlor admin` then needs the server stopped.
    match crate::admin::AdminSocket::bind(&app.services.config.data_dir) {
        Ok(admin) => {
            http_conns.spawn(crate::admin::serve(admin, app.clone(), http_conns.clone()));
        }
        Err(e) => tracing::warn!(error = %e, "no admin socket; parlor admin works only while the server is stopped"),
    }
    if let Some(m) = listeners.metrics {
        tracing::info!(addr = %m.local_addr()?, "serving metrics at /metrics");
        http_conns.spawn(serve_metrics(m, app.clone(), builder.clone(), http_conns.clone()));
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = acceptor.is_some(),
        max_conns,
        room_log = app.services.events.log().kind(),
        "serving"
    );

    let http_metrics = app.metrics.http.clone();
    let refusals: crate::app::conn::RefusalSeen =
        Arc::new(move |peer, status| crate::http::own_refusal_seen(&http_metrics, peer, status));
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
        // A trusted proxy carries many clients: it is exempt from the
        // per-address cap (their rate limits use the forwarded address).
        let admitted =
            if is_trusted(peer.ip(), &trusted) { caps.admit_proxy() } else { caps.admit(address_key(peer.ip())) };
        let permit = match admitted {
            Ok(slot) => Arc::new(slot),
            Err(why) => {
                match why {
                    Refused::ServerFull => {
                        app.metrics.conns.refused(ConnRefusal::ServerFull);
                        tracing::warn!(%peer, "connection cap reached; closing")
                    }
                    Refused::AddressFull => {
                        app.metrics.conns.refused(ConnRefusal::AddressFull);
                        tracing::debug!(%peer, "per-address connection cap reached; closing")
                    }
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app2, builder, acceptor, refusals) = (app.clone(), builder.clone(), acceptor.clone(), refusals.clone());
        let stop = app.shutdown.clone();
        http_conns.spawn(async move {
            // The handshake runs on the connection's own task, within the
            // header timeout: a slow-drip handshake holds only its own place.
            let stream = match acceptor {
                None => Transport::Tcp(stream),
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    let done = tokio::select! {
                        done = handshake => done,
                        _ = stop.cancelled() => return,
                    };
                    // Logged with the access lines: a client that cannot
                    // connect at all is what an operator looks for there.
                    let why = match done {
                        Ok(Ok(tls)) => Ok(Transport::Tls(Box::new(tls))),
                        Ok(Err(e)) => Err((ConnRefusal::TlsHandshakeFailed, e.to_string())),
                        Err(_) => Err((ConnRefusal::TlsHandshakeTimeout, "timed out".to_owned())),
                    };
                    match why {
                        Ok(t) => t,
                        Err((why, error)) => {
                            app2.metrics.conns.refused(why);
                            return tracing::info!(
                                target: "parlor::access",
                                client = %peer.ip(),
                                reason = why.as_str(),
                                error,
                                "TLS handshake failed"
                            );
                        }
                    }
                }
            };
            let state = ConnState::new(app2.responses.clone());
            let io = ConnIo::new(stream, state.clone(), write_timeout, crate::http::own_refusal)
                .with_refusals_seen(peer, refusals);
            let svc = service_fn(move |req| {
                let ctx =
                    Ctx { app: app2.clone(), peer, client: peer.ip(), permit: permit.clone(), conn: state.clone() };
                crate::http::handle(req, ctx)
            });
            let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
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

/// Reloads the TLS certificate on every SIGHUP until `stop`. A server
/// without TLS says so and goes on (SIGHUP never ends the process: a
/// service manager's reload must not be a kill).
async fn reload_on_sighup(
    hup: std::io::Result<tokio::signal::unix::Signal>,
    certs: Option<Arc<CertStore>>,
    stop: CancellationToken,
) {
    let mut hup = match hup {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "cannot watch SIGHUP; certificates will not be reloaded"),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        match &certs {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some(certs) => match certs.reload() {
                Ok(()) => tracing::info!(cert = %certs.cert_path().display(), "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; new connections keep the current one")
                }
            },
        }
    }
}

/// Serves `GET /metrics` on its own listener until shutdown.
async fn serve_metrics(listener: TcpListener, app: Arc<App>, builder: Arc<http1::Builder>, conns: TaskTracker) {
    loop {
        let stream = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app2 = app.clone();
        let svc = service_fn(move |req| crate::http::metrics::handle(req, app2.clone()));
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let stop = app.shutdown.clone();
        conns.spawn(async move {
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

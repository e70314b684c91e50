//! `GET /metrics` on the metrics listener (`--metrics-listen`): the
//! registry of [`crate::metrics`] in the Prometheus text format. Gauges that
//! mirror a service's state (room log up, hashing queue, federation queues
//! and backoff per destination) are refreshed here, when scraped, from the
//! services' own snapshots, rather than on every change. Nothing else is served there,
//! and nothing of the client API is served on it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus::{Encoder as _, TextEncoder};

use crate::app::{App, Resp};
use crate::metrics::Destination;

/// How long a scrape waits for the room log to say it is up.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers one request on the metrics listener.
pub async fn handle<B>(req: Request<B>, app: Arc<App>) -> Result<Resp, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "metrics are at /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
    }
    refresh(&app).await;
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&app.metrics.registry().gather(), &mut body) {
        tracing::error!(error = %e, "cannot encode metrics");
        return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"));
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let ctype = HeaderValue::from_str(encoder.format_type()).expect("a valid content type");
    resp.headers_mut().insert(header::CONTENT_TYPE, ctype);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Reads the service state that gauges mirror.
async fn refresh(app: &App) {
    let services = &app.services;
    let log = services.events.log();
    let up = tokio::time::timeout(HEALTH_TIMEOUT, log.healthy()).await.unwrap_or(false);
    app.metrics.room_log_up.with_label_values(&[log.kind()]).set(i64::from(up));
    let (known, other) = services.accounts.hash_queue();
    app.metrics.hash_queue.with_label_values(&["known"]).set(known as i64);
    app.metrics.hash_queue.with_label_values(&["other"]).set(other as i64);
    if let Some(fed) = &services.federation {
        let dests = fed.destinations();
        let dests: Vec<Destination<'_>> = dests
            .iter()
            .map(|d| Destination {
                server: &d.server,
                queued: d.queued,
                backoff: d.backoff.as_secs_f64(),
                down: d.down,
            })
            .collect();
        let s = fed.stats();
        let dropped = [
            ("overflow", s.dropped_overflow),
            ("down", s.dropped_down),
            ("feed", s.dropped_feed),
            ("too_large", s.dropped_too_large),
            ("refused", s.dropped_refused),
        ];
        app.metrics.federation.set(&dests, &dropped);
    }
}

fn plain(status: StatusCode, text: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

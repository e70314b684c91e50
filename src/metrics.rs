//! The server's metrics: every handle a layer records into, registered once
//! in a registry of this server's own (never a process-wide one) and passed
//! down like the `Config`. Services get only the handles they record into
//! ([`EventMetrics`], [`WsMetrics::deliveries`] for the hub); gauges that
//! mirror a service's state (federation queues, hashing queue, room log up)
//! are set from the service's own snapshot when scraped. Nothing here knows
//! the exposition format, which `http::metrics` renders for
//! `--metrics-listen`.
//!
//! Every handle is a cheap clone of shared atomics. Label values are bounded
//! sets: route templates (never raw paths), status codes, close codes,
//! lanes, backends, and the names of servers this one federates with.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Request latencies, in seconds: from a cache hit to a slow login.
const HTTP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Append latencies, in seconds: a group commit's fsync or a Redis round trip.
const APPEND_BUCKETS: &[f64] = &[0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Every metric of one server, and the registry that holds them.
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub conns: ConnMetrics,
    pub ws: WsMetrics,
    pub events: EventMetrics,
    pub federation: FederationMetrics,
    /// 1 while the room log answers, by backend (`embedded`, `redis`);
    /// refreshed when scraped.
    pub room_log_up: IntGaugeVec,
    /// Password hashes waiting for a hashing thread, by lane (`known`,
    /// `other`); refreshed when scraped.
    pub hash_queue: IntGaugeVec,
}

/// The HTTP wire's: one observation per answered request.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// A request to `route` (a template such as
    /// `/_parlor/client/v1/rooms/{room}/send/{txn_id}`) was answered.
    pub fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        let status = status_label(status);
        let labels = [method, route, status];
        self.requests.with_label_values(&labels).inc();
        self.duration.with_label_values(&labels).observe(took.as_secs_f64());
    }
}

/// Why a connection ended before any request of it was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// `--max-connections` was reached.
    ServerFull,
    /// `--max-connections-per-address` was reached for the client's address.
    AddressFull,
    /// The TLS handshake failed (not TLS, no common protocol, a bad certificate…).
    TlsHandshakeFailed,
    /// The TLS handshake did not finish within the header timeout.
    TlsHandshakeTimeout,
}

impl ConnRefusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerFull => "server_full",
            Self::AddressFull => "address_full",
            Self::TlsHandshakeFailed => "tls_handshake_failed",
            Self::TlsHandshakeTimeout => "tls_handshake_timeout",
        }
    }
}

/// Connections, below HTTP: the ones refused or lost before a request.
#[derive(Clone)]
pub struct ConnMetrics {
    refused: IntCounterVec,
}

impl ConnMetrics {
    pub fn refused(&self, why: ConnRefusal) {
        self.refused.with_label_values(&[why.as_str()]).inc();
    }
}

/// A status code as a label without allocating for the common ones.
fn status_label(status: u16) -> &'static str {
    match status {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        414 => "414",
        415 => "415",
        426 => "426",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The WebSocket wire's, and the hub's delivery count.
#[derive(Clone)]
pub struct WsMetrics {
    /// WebSockets open now (after the upgrade, until the socket is let go).
    pub open: IntGauge,
    closes: IntCounterVec,
    /// Connections cut off as slow consumers (close code 4008).
    pub slow_consumer: IntCounter,
    /// Events handed to local subscribers' outbound queues (one per event
    /// and subscriber).
    pub deliveries: IntCounter,
}

impl WsMetrics {
    /// A WebSocket ended: `code` is the close code the server sent (or
    /// echoed), `None` when the peer was gone before one could be sent.
    pub fn closed(&self, code: Option<u16>) {
        let label = match code {
            Some(c) => c.to_string(),
            None => "none".to_owned(),
        };
        self.closes.with_label_values(&[&label]).inc();
        if code == Some(crate::protocol::ws::close::SLOW_CONSUMER) {
            self.slow_consumer.inc();
        }
    }
}

/// What sending a message to the room log came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// A new event is durable.
    Stored,
    /// The same `txn_id` and body again: the first answer, nothing stored.
    Repeated,
    /// The same `txn_id` with another body (409).
    Conflict,
    /// The log failed.
    Failed,
}

impl AppendOutcome {
    fn label(self) -> &'static str {
        match self {
            AppendOutcome::Stored => "stored",
            AppendOutcome::Repeated => "repeated",
            AppendOutcome::Conflict => "conflict",
            AppendOutcome::Failed => "failed",
        }
    }
}

/// The events service's: message appends and how long they took to be durable.
#[derive(Clone)]
pub struct EventMetrics {
    appends: IntCounterVec,
    append_seconds: Histogram,
}

impl EventMetrics {
    pub fn appended(&self, outcome: AppendOutcome, took: Duration) {
        self.appends.with_label_values(&[outcome.label()]).inc();
        self.append_seconds.observe(took.as_secs_f64());
    }
}

/// One destination of the federation push side, as scraped.
pub struct Destination<'a> {
    pub server: &'a str,
    /// Events waiting to be pushed to it.
    pub queued: u64,
    /// Seconds its pusher waits before the next attempt (0 while pushes succeed).
    pub backoff: f64,
    /// Dropped from push sets until it answers again.
    pub down: bool,
}

/// The federation push side's, per destination server; set when scraped.
pub struct FederationMetrics {
    queue_depth: IntGaugeVec,
    backoff: GaugeVec,
    down: IntGaugeVec,
    dropped: IntCounterVec,
    /// One scrape at a time replaces the per-destination series.
    scrape: Mutex<()>,
}

impl FederationMetrics {
    /// Replaces the per-destination series with `destinations` (a server
    /// the push side forgot disappears), and brings the dropped-event
    /// counters up to the service's totals since start, by reason.
    pub fn set(&self, destinations: &[Destination<'_>], dropped: &[(&str, u64)]) {
        let _one = self.scrape.lock().expect("federation metrics lock");
        self.queue_depth.reset();
        self.backoff.reset();
        self.down.reset();
        for d in destinations {
            self.queue_depth.with_label_values(&[d.server]).set(d.queued as i64);
            self.backoff.with_label_values(&[d.server]).set(d.backoff);
            self.down.with_label_values(&[d.server]).set(i64::from(d.down));
        }
        for (reason, total) in dropped {
            let counter = self.dropped.with_label_values(&[reason]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, all named `parlor_…`.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("parlor".into()), None).expect("a valid prefix");
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("metric names are unique");
        let labels_http = ["method", "route", "status"];

        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered, by method, route template and status."),
            &labels_http,
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from a request's head to its answer (not counting the body's transfer), by method, route template and status.",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &labels_http,
        )
        .expect("valid metric");
        reg(Box::new(requests.clone()));
        reg(Box::new(duration.clone()));

        let refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "Connections closed before any request was read, by reason (server_full, address_full, \
                 tls_handshake_failed, tls_handshake_timeout).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        reg(Box::new(refused.clone()));

        let open = IntGauge::new("websockets_open", "WebSocket connections open now.").expect("valid metric");
        let closes = IntCounterVec::new(
            Opts::new(
                "websocket_closes_total",
                "WebSocket connections ended, by the close code the server sent (none: the peer was gone).",
            ),
            &["code"],
        )
        .expect("valid metric");
        let slow_consumer = IntCounter::new(
            "websocket_slow_consumer_closes_total",
            "WebSocket connections cut off for not reading fast enough (close code 4008).",
        )
        .expect("valid metric");
        let deliveries = IntCounter::new(
            "websocket_deliveries_total",
            "Room events handed to local WebSocket subscribers (one per event and subscriber).",
        )
        .expect("valid metric");
        reg(Box::new(open.clone()));
        reg(Box::new(closes.clone()));
        reg(Box::new(slow_consumer.clone()));
        reg(Box::new(deliveries.clone()));

        let appends = IntCounterVec::new(
            Opts::new(
                "message_appends_total",
                "Messages sent to room logs homed here (HTTP, WebSocket and federation), by outcome: stored, repeated (idempotent retry), conflict, failed.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let append_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "message_append_duration_seconds",
                "Time from a message's checks to its event being durable in the room log.",
            )
            .buckets(APPEND_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        reg(Box::new(appends.clone()));
        reg(Box::new(append_seconds.clone()));

        let queue_depth = IntGaugeVec::new(
            Opts::new("federation_queue_depth", "Events waiting to be pushed to another server, by destination."),
            &["destination"],
        )
        .expect("valid metric");
        let backoff = GaugeVec::new(
            Opts::new(
                "federation_backoff_seconds",
                "Seconds before the next attempt to push to a server that failed, by destination (0 while pushes succeed).",
            ),
            &["destination"],
        )
        .expect("valid metric");
        let down = IntGaugeVec::new(
            Opts::new(
                "federation_destination_down",
                "1 for a server dropped from push sets after failing too long (it is probed, and backfills), by destination.",
            ),
            &["destination"],
        )
        .expect("valid metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "federation_dropped_events_total",
                "Events a server did not get by push (it backfills them), by reason: overflow, down, feed, too_large, refused.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        reg(Box::new(queue_depth.clone()));
        reg(Box::new(backoff.clone()));
        reg(Box::new(down.clone()));
        reg(Box::new(dropped.clone()));

        let room_log_up = IntGaugeVec::new(
            Opts::new("room_log_up", "1 while the room log answers, 0 while it does not, by backend."),
            &["backend"],
        )
        .expect("valid metric");
        let hash_queue = IntGaugeVec::new(
            Opts::new("hash_queue_depth", "Password hashes waiting for a hashing thread, by lane (known, other)."),
            &["lane"],
        )
        .expect("valid metric");
        reg(Box::new(room_log_up.clone()));
        reg(Box::new(hash_queue.clone()));

        Self {
            registry,
            http: HttpMetrics { requests, duration },
            conns: ConnMetrics { refused },
            ws: WsMetrics { open, closes, slow_consumer, deliveries },
            events: EventMetrics { appends, append_seconds },
            federation: FederationMetrics { queue_depth, backoff, down, dropped, scrape: Mutex::new(()) },
            room_log_up,
            hash_queue,
        }
    }

    /// The registry, for the exporter.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_record_into_the_registry() {
        let m = Metrics::new();
        m.events.appended(AppendOutcome::Stored, Duration::from_millis(2));
        m.ws.closed(Some(4008));
        let dest = Destination { server: "b.example", queued: 3, backoff: 2.0, down: false };
        m.federation.set(&[dest], &[("overflow", 5)]);
        m.http.observe("GET", "/healthz", 200, Duration::from_millis(1));
        let read = |families: &[prometheus::proto::MetricFamily], name: &str| {
            let f = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{name} is gathered"));
            let metric = &f.get_metric()[0];
            match f.get_field_type() {
                prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
                _ => metric.get_histogram().get_sample_count() as f64,
            }
        };
        let families = m.registry().gather();
        let value = |name: &str| read(&families, name);
        assert_eq!(value("parlor_message_appends_total"), 1.0);
        assert_eq!(value("parlor_message_append_duration_seconds"), 1.0);
        assert_eq!(value("parlor_websocket_slow_consumer_closes_total"), 1.0);
        assert_eq!(value("parlor_federation_queue_depth"), 3.0);
        assert_eq!(value("parlor_federation_backoff_seconds"), 2.0);
        assert_eq!(value("parlor_http_requests_total"), 1.0);
        m.federation.set(&[], &[("overflow", 7)]);
        let families = m.registry().gather();
        let value = |name: &str| read(&families, name);
        assert!(
            families.iter().all(|f| f.name() != "parlor_federation_queue_depth"),
            "a forgotten destination disappears"
        );
        assert_eq!(value("parlor_federation_dropped_events_total"), 7.0, "counters follow the service's totals");
    }

    #[test]
    fn status_labels() {
        assert_eq!(status_label(201), "201");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
    }
}

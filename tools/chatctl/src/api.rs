//! The HTTP side of the protocol: one request with a timeout, the server's
//! error body decoded into its errcode, and the retry policy. The key
//! distinction it keeps is whether a failed request may have reached the
//! server (`Lost`) or certainly did not (`Unreachable`): only requests that
//! are safe to repeat are retried after the former.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::failure::{Exit, Failure};
use crate::wire::{CLIENT_PREFIX, ErrorBody};

/// A whole request, body included, must finish within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A history page is at most 1,000 events of at most 16 KiB each.
const MAX_ANSWER_BYTES: usize = 32 << 20;
/// The longest `retry_after_ms` chatctl waits out by itself.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(10);

/// Path segments are encoded except for RFC 3986's unreserved characters,
/// so `#lobby:b.example` becomes `%23lobby%3Ab.example`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Why a request did not produce a protocol answer.
#[derive(Debug)]
pub enum ApiError {
    /// The connection could not be made: the request was certainly not sent.
    Unreachable(String),
    /// The request may have reached the server, but no complete answer came.
    Lost(String),
    /// The server answered with a protocol error.
    Refused { body: ErrorBody },
    /// The server answered, but not in the protocol (e.g. a proxy's 502 page).
    BadAnswer(String),
}

impl ApiError {
    /// Whether trying again later may succeed.
    fn transient(&self) -> bool {
        match self {
            ApiError::Unreachable(_) | ApiError::Lost(_) => true,
            ApiError::Refused { body, .. } => matches!(
                body.errcode.as_str(),
                "rate_limited" | "storage_unavailable" | "home_server_unreachable" | "request_timeout" | "internal"
            ),
            ApiError::BadAnswer(_) => false,
        }
    }

    /// Whether the server certainly did nothing with the request, so that
    /// even a request that is not idempotent (register, login) may be
    /// repeated: it was never sent, or the server said it refused it
    /// before acting (rate limit) or wrote nothing (storage down).
    fn certainly_not_done(&self) -> bool {
        match self {
            ApiError::Unreachable(_) => true,
            ApiError::Refused { body, .. } => {
                matches!(body.errcode.as_str(), "rate_limited" | "storage_unavailable")
            }
            _ => false,
        }
    }

    pub fn errcode(&self) -> Option<&str> {
        match self {
            ApiError::Refused { body, .. } => Some(&body.errcode),
            _ => None,
        }
    }

    pub fn into_failure(self, server: &str) -> Failure {
        match self {
            ApiError::Unreachable(why) => Failure::new(Exit::Unreachable, format!("cannot reach {server}: {why}")),
            ApiError::Lost(why) => Failure::new(Exit::Unreachable, format!("no answer from {server}: {why}")),
            ApiError::BadAnswer(why) => {
                Failure::new(Exit::Unreachable, format!("unexpected answer from {server}: {why}"))
            }
            ApiError::Refused { body, .. } => Failure::refused(&body.errcode, &body.error),
        }
    }
}

/// How hard to try one request.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    /// Repeating the request cannot do anything twice (GETs, joins, sends
    /// with a txn id), so it may be retried after a `Lost` request too.
    pub idempotent: bool,
}

impl Retry {
    /// Not idempotent (register, login, logout, leave): retry only what
    /// the server surely did not act on.
    pub const NOT_IDEMPOTENT: Retry = Retry { attempts: 3, idempotent: false };
    pub const IDEMPOTENT: Retry = Retry { attempts: 3, idempotent: true };
    /// Sends carry a txn id, so they are worth trying harder.
    pub const SEND: Retry = Retry { attempts: 6, idempotent: true };
}

/// Backoff between attempts: 250 ms doubling, at most 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(3)).min(Duration::from_secs(2))
}

/// A client for one server, optionally with an access token.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Api {
    /// `base` is the normalized server URL (see `normalize_server`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(http);
        Self { client, base: base.to_owned(), token }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `GET` a client endpoint (`path` is relative to the client prefix).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(Method::GET, path, None::<&()>, Retry::IDEMPOTENT).await
    }

    /// Sends one request, retrying by `retry`. Bodiless POSTs send `{}`.
    pub async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        retry: Retry,
    ) -> Result<T, ApiError> {
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).expect("request bodies serialize")),
            None if method == Method::GET => Bytes::new(),
            None => Bytes::from_static(b"{}"),
        };
        let mut attempt = 0;
        loop {
            let result = self.once(method.clone(), path, body.clone()).await;
            let err = match result {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::BadAnswer(format!("invalid answer: {e}")));
                }
                Err(e) => e,
            };
            attempt += 1;
            let repeatable = err.certainly_not_done() || (retry.idempotent && err.transient());
            if attempt >= retry.attempts || !repeatable {
                return Err(err);
            }
            let wait = match &err {
                ApiError::Refused { body, .. } if body.errcode == "rate_limited" => {
                    let wait = Duration::from_millis(body.retry_after_ms.unwrap_or(1000));
                    if wait > MAX_RATE_LIMIT_WAIT {
                        return Err(err);
                    }
                    wait
                }
                _ => backoff(attempt - 1),
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn once(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, ApiError> {
        let uri = if path.starts_with("/_parlor/") {
            format!("{}{path}", self.base)
        } else {
            format!("{}{CLIENT_PREFIX}{path}", self.base)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::USER_AGENT, concat!("chatctl/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/json");
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ApiError::BadAnswer("the access token has characters a header cannot carry".into()))?;
            req = req.header(header::AUTHORIZATION, value);
        }
        let req = req.body(Full::new(body)).map_err(|e| ApiError::Unreachable(format!("bad URL {uri}: {e}")))?;

        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() { ApiError::Unreachable(root_cause(&e)) } else { ApiError::Lost(root_cause(&e)) }
            })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::Lost(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ApiError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Lost(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))??;
        if status.is_success() {
            return Ok(bytes);
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ApiError::Refused { body }),
            Err(_) => Err(ApiError::BadAnswer(format!("HTTP {status} without a protocol error body"))),
        }
    }
}

/// hyper's errors wrap the interesting part ("Connection refused") a few
/// levels down; show the innermost cause.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    // io::Error's Display appends " (os error 111)", noise for a user.
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Accepts `host:port`, `http://host:port` and `http://host:port/prefix/`,
/// and returns `http://host:port[/prefix]` without a trailing slash, so that
/// the same server always compares equal. chatctl has no TLS: `https://`
/// is refused with a usage error rather than failing obscurely later.
pub fn normalize_server(raw: &str) -> Result<String, Failure> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") { raw.to_owned() } else { format!("http://{raw}") };
    let uri: http::Uri = with_scheme.parse().map_err(|e| Failure::usage(format!("invalid server URL {raw:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(Failure::usage(format!(
                "{raw}: chatctl speaks plain http:// only; reach a TLS server through a local proxy"
            )));
        }
        _ => {
            return Err(Failure::usage(format!("invalid server URL {raw:?}: the scheme must be http://")));
        }
    }
    let authority = uri.authority().ok_or_else(|| Failure::usage(format!("invalid server URL {raw:?}: no host")))?;
    if uri.query().is_some() {
        return Err(Failure::usage(format!("invalid server URL {raw:?}: no query string allowed")));
    }
    let path = uri.path().trim_end_matches('/');
    Ok(format!("http://{}{path}", authority.as_str().to_ascii_lowercase()))
}

/// The WebSocket endpoint of a normalized server URL.
pub fn ws_url(base: &str) -> String {
    let rest = base.strip_prefix("http://").unwrap_or(base);
    format!("ws://{rest}{CLIENT_PREFIX}/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_normalize() {
        assert_eq!(normalize_server("127.0.0.1:8008").unwrap(), "http://127.0.0.1:8008");
        assert_eq!(normalize_server("http://Chat.Example:80/").unwrap(), "http://chat.example:80");
        assert_eq!(normalize_server("http://h:1/parlor/").unwrap(), "http://h:1/parlor");
        assert_eq!(normalize_server("https://h").unwrap_err().exit, Exit::Usage);
        assert_eq!(normalize_server("ftp://h").unwrap_err().exit, Exit::Usage);
        assert_eq!(normalize_server("http://h/?x=1").unwrap_err().exit, Exit::Usage);
    }

    #[test]
    fn ws_url_follows_the_base() {
        assert_eq!(ws_url("http://h:1/p"), "ws://h:1/p/_parlor/client/v1/ws");
    }

    #[test]
    fn room_segments_are_encoded() {
        assert_eq!(encode_segment("#lobby:b.example"), "%23lobby%3Ab.example");
        assert_eq!(encode_segment("!Xb3k~_.-:h:8008"), "%21Xb3k~_.-%3Ah%3A8008");
        assert_eq!(encode_segment("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(30), Duration::from_secs(2));
    }

    #[test]
    fn only_some_refusals_are_transient() {
        let refused = |code: &str| ApiError::Refused {
            body: ErrorBody { errcode: code.into(), error: String::new(), retry_after_ms: None },
        };
        assert!(refused("storage_unavailable").transient());
        assert!(refused("rate_limited").transient());
        assert!(!refused("not_member").transient());
        assert!(!refused("txn_conflict").transient());
        assert!(ApiError::Lost("reset".into()).transient());
        // Only what the server surely did not act on may be repeated when
        // the request is not idempotent.
        assert!(refused("rate_limited").certainly_not_done());
        assert!(ApiError::Unreachable("refused".into()).certainly_not_done());
        assert!(!ApiError::Lost("reset".into()).certainly_not_done());
        assert!(!refused("internal").certainly_not_done());
    }
}

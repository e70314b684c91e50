//! The federation transport: the outgoing half of the server-to-server wire.
//! It implements [`Transport`], the service's view of "send this request to
//! server N and give me the answer", with hyper-util's HTTP client over
//! rustls, and owns everything about *where* a server is and *who* it is: the
//! static map of `--federation-peer`s, discovery through
//! `/.well-known/parlor/server` (a bounded cache with a TTL), which addresses
//! may be reached at all ([`guard`]: public addresses only, unless the server
//! is a named peer), and which certificates are believed ([`trust_roots`]).
//!
//! Federation speaks HTTPS: discovery asks `https://<name>`, a discovered
//! `base_url` must be `https://`, and the fallback is `https://<name>`. Each
//! certificate is checked against the host of the URL asked (for discovery
//! and the fallback, the server name itself; for a `base_url`, the host that
//! the server name's own verified well-known document delegated to). Plain
//! HTTP is spoken only to a peer named `--federation-peer NAME=http://…`.
//! A peer whose certificate is not trusted fails like one that is down: the
//! reason is logged here and never told to whoever asked.
//!
//! It knows nothing of signatures, keys or queues: `service::federation`
//! signs and checks, and is given an `Arc<dyn Transport>` when the services
//! are built (`server.rs`), so tests can give it another.

pub mod guard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::protocol::federation::{FedMethod, WELL_KNOWN_PATH, WellKnownResponse};
use crate::service::federation::{BoxFuture, FedAnswer, FedRequest, Transport, TransportError};
use guard::{GuardError, GuardedResolver, ip_literal, is_public};

/// How long discovery waits for a well-known document.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a discovered base URL is used before asking again.
const DISCOVERED_TTL: Duration = Duration::from_secs(600);
/// How long "no usable well-known, use `https://<name>`" is remembered.
const FALLBACK_TTL: Duration = Duration::from_secs(60);
/// Server names whose discovery is remembered at most (spec §4).
pub const DISCOVERY_CACHE_MAX: usize = 10_000;
/// The largest well-known document read.
const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a server is served.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Base {
    /// `https://host[:port]` (`http://` for a named peer), no trailing slash.
    url: String,
    /// Named with `--federation-peer`: reached whatever its address.
    trusted: bool,
}

/// Discovered base URLs by server name, each until it expires; never more
/// than [`DISCOVERY_CACHE_MAX`] of them.
#[derive(Default)]
struct Discovered {
    entries: HashMap<String, (Base, Instant)>,
}

impl Discovered {
    fn get(&self, server: &str, now: Instant) -> Option<Base> {
        self.entries.get(server).filter(|(_, until)| *until > now).map(|(b, _)| b.clone())
    }

    fn insert(&mut self, server: &str, base: Base, until: Instant, now: Instant) {
        if self.entries.len() >= DISCOVERY_CACHE_MAX && !self.entries.contains_key(server) {
            self.entries.retain(|_, (_, u)| *u > now);
            if self.entries.len() >= DISCOVERY_CACHE_MAX {
                // Full of live entries: forget the one closest to expiring.
                if let Some(k) = self.entries.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| k.clone()) {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(server.to_owned(), (base, until));
    }
}

/// The hyper-util implementation of [`Transport`].
pub struct HttpTransport {
    peers: HashMap<String, String>,
    /// For named peers only: any address, HTTPS or (if named so) plain HTTP.
    trusted: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// For everything discovered: public addresses only, HTTPS only.
    guarded: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    discovered: Mutex<Discovered>,
}

/// Why the certificates federation trusts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not PEM certificates: {source}", path.display())]
    BadPem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: no PEM certificate in it", path.display())]
    Empty { path: PathBuf },
    #[error("{}: a certificate that cannot be a trust anchor: {source}", path.display())]
    BadAnchor { path: PathBuf, source: rustls::Error },
}

/// The certificate authorities peers' certificates are checked against:
/// those in `ca` (PEM, one or more; `--federation-ca`) if given, *instead*
/// of the system's, else the system's (on Debian, the `ca-certificates`
/// bundle). A private federation names its own CA and so believes no public
/// CA about its peers; a server on the public internet uses the roots its
/// operating system keeps up to date.
pub fn trust_roots(ca: Option<&Path>) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| RootsError::Read { path: path.to_owned(), source })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| RootsError::BadPem { path: path.to_owned(), source })?;
            if certs.is_empty() {
                return Err(RootsError::Empty { path: path.to_owned() });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| RootsError::BadAnchor { path: path.to_owned(), source })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "federation: a system CA certificate could not be read");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::warn!(ignored, "federation: system CA certificates that cannot be trust anchors were skipped");
            }
            if added == 0 {
                tracing::warn!(
                    "federation: no system CA certificates (install ca-certificates or use --federation-ca); \
                     HTTPS peers will not be reached"
                );
            }
        }
    }
    Ok(roots)
}

/// The reason a TLS handshake failed, if that is why `e` happened: rustls
/// errors come wrapped in `io::Error`s, which do not list them as a source.
fn tls_failure_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(tls) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(tls) = tls.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        cur = err.source();
    }
    None
}

/// Whether `e` or one of its sources is the guard's refusal.
fn forbidden_in(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(err.downcast_ref::<GuardError>(), Some(GuardError::Forbidden { .. })) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A well-known `base_url` this server will use: `https://host[:port]`
/// with an optional `/`, no user info, path, query or fragment, and not an
/// address literal the guard refuses. Anything else, plain `http://`
/// included, is ignored (the server is then tried at `https://<name>`).
fn usable_base_url(raw: &str) -> Option<String> {
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    let uri: http::Uri = trimmed.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let plain = scheme == "https"
        && !authority.as_str().contains('@')
        && uri.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
        && !trimmed.contains(['#', '?']);
    if !plain || ip_literal(authority.host()).is_some_and(|ip| !is_public(ip)) {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

impl HttpTransport {
    /// `peers`: server name → base URL, from `--federation-peer`; `roots`:
    /// the CAs peers' certificates are checked against ([`trust_roots`]).
    pub fn new(peers: impl IntoIterator<Item = (String, String)>, roots: RootCertStore) -> Self {
        // ring, the provider the TLS listener and the server's keys use.
        let tls = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut plain = HttpConnector::new();
        plain.set_nodelay(true);
        plain.set_connect_timeout(Some(CONNECT_TIMEOUT));
        plain.enforce_http(false);
        let mut guarded = HttpConnector::new_with_resolver(GuardedResolver);
        guarded.set_nodelay(true);
        guarded.set_connect_timeout(Some(CONNECT_TIMEOUT));
        guarded.enforce_http(false);
        // Named peers may be named with http://; nothing discovered may.
        let plain = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(plain);
        let guarded =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().wrap_connector(guarded);
        let exec = hyper_util::rt::TokioExecutor::new();
        Self {
            peers: peers.into_iter().map(|(n, u)| (n, u.trim_end_matches('/').to_owned())).collect(),
            trusted: Client::builder(exec.clone()).build(plain),
            guarded: Client::builder(exec).build(guarded),
            discovered: Mutex::new(Discovered::default()),
        }
    }

    /// Where `server` is served: the static map, else its well-known
    /// document's `base_url`, else `https://{server}`.
    async fn base(&self, server: &str) -> Result<Base, TransportError> {
        if let Some(url) = self.peers.get(server) {
            return Ok(Base { url: url.clone(), trusted: true });
        }
        let forbidden = || TransportError::Forbidden { server: server.to_owned() };
        let fallback = format!("https://{server}");
        let host =
            fallback.parse::<http::Uri>().ok().and_then(|u| u.host().map(str::to_owned)).ok_or_else(forbidden)?;
        if ip_literal(&host).is_some_and(|ip| !is_public(ip)) {
            return Err(forbidden());
        }
        let now = Instant::now();
        if let Some(b) = self.discovered.lock().expect("discovery lock").get(server, now) {
            return Ok(b);
        }
        let url = format!("{fallback}{WELL_KNOWN_PATH}");
        let found = match self.get(&url, DISCOVERY_TIMEOUT).await {
            Ok((200, body)) => {
                serde_json::from_slice::<WellKnownResponse>(&body).ok().and_then(|w| usable_base_url(&w.base_url))
            }
            _ => None,
        };
        let (base, ttl) = match found {
            Some(url) => (Base { url, trusted: false }, DISCOVERED_TTL),
            None => (Base { url: fallback, trusted: false }, FALLBACK_TTL),
        };
        self.discovered.lock().expect("discovery lock").insert(server, base.clone(), now + ttl, now);
        Ok(base)
    }

    async fn get(&self, url: &str, within: Duration) -> Result<(u16, Bytes), String> {
        let req = Request::get(url).body(Full::default()).map_err(|e| e.to_string())?;
        exchange(&self.guarded, req, within, WELL_KNOWN_MAX_BYTES).await.map_err(|e| e.to_string())
    }

    async fn send_to(&self, server: &str, req: FedRequest, within: Duration) -> Result<FedAnswer, TransportError> {
        let base = self.base(server).await?;
        let unreachable = |detail: String| TransportError::Unreachable { server: server.to_owned(), detail };
        let method = match req.method {
            FedMethod::Get => http::Method::GET,
            FedMethod::Post => http::Method::POST,
            FedMethod::Put => http::Method::PUT,
        };
        let mut builder = Request::builder().method(method).uri(format!("{}{}", base.url, req.path_and_query));
        if let Some(auth) = &req.authorization {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        if !req.body.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(req.body)).map_err(|e| unreachable(e.to_string()))?;
        if !base.trusted {
            // A discovered base_url was checked when it was found; check again
            // in case it is an address literal (the resolver never sees those).
            let host = request.uri().host().unwrap_or_default();
            if ip_literal(host).is_some_and(|ip| !is_public(ip)) {
                return Err(TransportError::Forbidden { server: server.to_owned() });
            }
        }
        let result = match base.trusted {
            true => exchange(&self.trusted, request, within, req.max_answer_bytes).await,
            false => exchange(&self.guarded, request, within, req.max_answer_bytes).await,
        };
        match result {
            Ok((status, body)) => Ok(FedAnswer { status, body }),
            Err(e) => {
                // Its address may have changed: discover it again next time.
                self.discovered.lock().expect("discovery lock").entries.remove(server);
                match e {
                    Exchange::Failed(err) if forbidden_in(err.as_ref()) => {
                        Err(TransportError::Forbidden { server: server.to_owned() })
                    }
                    Exchange::Failed(err) => match tls_failure_in(err.as_ref()) {
                        Some(why) => {
                            // Logged here, where the operator can fix it; the
                            // caller treats the peer as down (backoff, 503).
                            tracing::warn!(%server, url = %base.url, error = %why, "federation: TLS with a peer failed");
                            Err(unreachable(format!("TLS: {why}")))
                        }
                        None => Err(unreachable(err.to_string())),
                    },
                    other => Err(unreachable(other.to_string())),
                }
            }
        }
    }
}

/// Why one HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
enum Exchange {
    #[error("{0}")]
    Failed(Box<dyn std::error::Error + Send + Sync>),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

async fn exchange<C>(
    client: &Client<C, Full<Bytes>>,
    req: Request<Full<Bytes>>,
    within: Duration,
    max_bytes: usize,
) -> Result<(u16, Bytes), Exchange>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let round_trip = async {
        let resp = client.request(req).await.map_err(|e| Exchange::Failed(Box::new(e)))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), max_bytes).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() { Exchange::TooLarge(max_bytes) } else { Exchange::Failed(e) }
        })?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(within, round_trip).await.map_err(|_| Exchange::TimedOut(within))?
}

impl Transport for HttpTransport {
    fn send<'a>(
        &'a self,
        server: &'a str,
        req: FedRequest,
        within: Duration,
    ) -> BoxFuture<'a, Result<FedAnswer, TransportError>> {
        Box::pin(self.send_to(server, req, within))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_from_well_known_documents() {
        for (raw, want) in [
            ("https://chat.example:8448", Some("https://chat.example:8448")),
            ("https://chat.example/", Some("https://chat.example")),
            ("https://8.8.8.8:443", Some("https://8.8.8.8:443")),
            ("http://chat.example", None),
            ("http://8.8.8.8:80", None),
            ("https://127.0.0.1:22", None),
            ("http://127.0.0.1:22", None),
            ("http://[::1]:8008", None),
            ("http://169.254.169.254", None),
            ("http://10.0.0.1", None),
            ("http://user@chat.example", None),
            ("http://chat.example/api", None),
            ("http://chat.example?x=1", None),
            ("ftp://chat.example", None),
            ("chat.example", None),
            ("", None),
        ] {
            assert_eq!(usable_base_url(raw).as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn the_discovery_cache_is_bounded_and_expires() {
        let mut d = Discovered::default();
        let now = Instant::now();
        let base = |n: usize| Base { url: format!("http://s{n}"), trusted: false };
        for n in 0..DISCOVERY_CACHE_MAX + 500 {
            d.insert(&format!("s{n}"), base(n), now + Duration::from_secs(n as u64 + 1), now);
        }
        assert_eq!(d.entries.len(), DISCOVERY_CACHE_MAX, "never more than the bound");
        assert!(d.get("s0", now).is_none(), "the entry closest to expiring went first");
        let last = DISCOVERY_CACHE_MAX + 499;
        assert_eq!(d.get(&format!("s{last}"), now), Some(base(last)));
        assert!(d.get(&format!("s{last}"), now + Duration::from_secs(100_000)).is_none(), "expired");
        // Once expired, entries make room at once.
        d.insert("fresh", base(0), now + Duration::from_secs(1_000_000), now + Duration::from_secs(100_000));
        assert_eq!(d.entries.len(), 1);
    }

    #[tokio::test]
    async fn private_names_are_never_contacted() {
        // A listener on loopback: nothing may connect to it unless it is a named peer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = HttpTransport::new([], RootCertStore::empty());
        let req = || FedRequest {
            method: FedMethod::Get,
            path_and_query: "/_parlor/key/v1/server".into(),
            authorization: None,
            body: Bytes::new(),
            max_answer_bytes: 1024,
        };
        for name in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
            let err = t.send(&name, req(), Duration::from_secs(5)).await.unwrap_err();
            assert!(matches!(err, TransportError::Forbidden { .. }), "{name}: {err}");
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a refused destination was connected to");
    }
}

//! Federation, the server-to-server side: this server's ed25519 key,
//! discovery of other servers, signing outgoing and verifying incoming
//! requests, the client calls a participating server makes to a room's home
//! server (join, leave, send, backfill), and the durable outbound queue that
//! pushes a home server's events to every server with members in the room,
//! retried with backoff until delivered.
//!
//! What a room *is* stays in `rooms`: this module moves signed JSON between
//! servers and knows which servers take part in which local room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::Error;
use crate::protocol::federation::{
    FEDERATION_PREFIX, FedJoinRequest, FedJoinResponse, FedLeaveRequest, FedSendRequest, KEY_PATH, SIGNATURE_SCHEME,
    SIGNATURE_WINDOW_MS, ServerKeyResponse, WELL_KNOWN_PATH, WellKnownResponse, request_signed_bytes,
};
use crate::protocol::rooms::{MessagesResponse, SendResponse};
use crate::protocol::{ErrCode, ErrorBody, RoomId, ServerName, UserId};
use crate::storage::RoomStore;
use crate::storage::events::now_ms;
use crate::storage::federation::Outbox;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);
const DISCOVERY_TTL: Duration = Duration::from_secs(600);
const KEY_TTL: Duration = Duration::from_secs(3600);
const PUSH_BATCH: usize = 100;
const RETRY_MIN: Duration = Duration::from_millis(500);

/// How federation is set up (from `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// What `/.well-known/parlor/server` announces (default `http://<server name>`).
    pub public_url: String,
    /// Fixed base URLs for some server names, instead of discovery.
    pub peers: HashMap<String, String>,
    /// The longest wait between two attempts to push to a server that is down.
    pub retry_max: Duration,
}

/// Why a call to another server failed.
#[derive(Debug)]
pub enum Failure {
    /// It could not be reached, or did not answer in time, or answered nonsense.
    Unreachable(String),
    /// It answered with an error.
    Refused(StatusCode, ErrorBody),
}

impl Failure {
    /// As a service error for a client whose request needed that server.
    pub fn into_error(self, server: &str) -> Error {
        match self {
            Failure::Unreachable(why) => Error::refused(
                ErrCode::HomeServerUnreachable,
                format!(
                    "the room's home server {server} cannot be reached ({why}); the room is read-only until it is back"
                ),
            ),
            Failure::Refused(_, body) => Error::refused(body.errcode, format!("{server}: {}", body.error)),
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A server's key as last fetched: (key id, public key, when).
type CachedKey = (String, Vec<u8>, Instant);

pub struct Federation {
    server_name: ServerName,
    key: Ed25519KeyPair,
    key_id: String,
    public_key: String,
    settings: Settings,
    client: HttpClient,
    bases: Mutex<HashMap<String, (String, Instant)>>,
    keys: Mutex<HashMap<String, CachedKey>>,
    outbox: Outbox,
    directory: RoomStore,
    participants: RwLock<HashMap<RoomId, Arc<Vec<String>>>>,
    pushers: Mutex<HashMap<String, Arc<Notify>>>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Events reach `on_event` on the room log's own threads, outside the
    /// runtime: pushers are spawned onto it through this handle.
    runtime: tokio::runtime::Handle,
}

fn sha256_b64(body: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, body))
}

fn bad_signature(why: impl Into<String>) -> Error {
    Error::refused(ErrCode::BadSignature, why)
}

/// `k="v", k2="v2"` after the scheme name. Public for the fuzz target
/// (`fuzz/fuzz_targets/federation_auth.rs`).
pub fn parse_signature_header(value: &str) -> Option<HashMap<&str, &str>> {
    let rest = value.strip_prefix(SIGNATURE_SCHEME)?.trim_start();
    let mut out = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        out.insert(k.trim(), v.trim().strip_prefix('"')?.strip_suffix('"')?);
    }
    Some(out)
}

impl Federation {
    pub fn new(
        server_name: ServerName,
        pkcs8: &[u8],
        settings: Settings,
        outbox: Outbox,
        directory: RoomStore,
    ) -> Result<Arc<Self>, String> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("bad server key: {e}"))?;
        let public_key = B64.encode(key.public_key().as_ref());
        let key_id = format!("ed25519:{}", &sha256_b64(key.public_key().as_ref())[..8]);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let fed = Arc::new(Self {
            server_name,
            key,
            key_id,
            public_key,
            settings,
            client,
            bases: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            outbox,
            directory,
            participants: RwLock::new(HashMap::new()),
            pushers: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|e| format!("federation needs a tokio runtime: {e}"))?,
        });
        Ok(fed)
    }

    /// A new key pair, PKCS#8, for a server's first start.
    pub fn generate_key() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key generation").as_ref().to_vec()
    }

    /// Starts pushing whatever was queued before a restart.
    pub fn start(self: &Arc<Self>) -> Result<(), crate::storage::StorageError> {
        for dest in self.outbox.destinations()? {
            self.wake_pusher(&dest);
        }
        Ok(())
    }

    /// `GET /_parlor/key/v1/server`.
    pub fn key_document(&self) -> ServerKeyResponse {
        let bytes = ServerKeyResponse::signed_bytes(self.server_name.as_str(), &self.key_id, &self.public_key);
        ServerKeyResponse {
            server_name: self.server_name.to_string(),
            key_id: self.key_id.clone(),
            public_key: self.public_key.clone(),
            signature: B64.encode(self.key.sign(&bytes).as_ref()),
        }
    }

    /// `GET /.well-known/parlor/server`.
    pub fn well_known(&self) -> WellKnownResponse {
        WellKnownResponse { base_url: self.settings.public_url.clone() }
    }

    // ---- discovery and keys ----

    /// Where `server` is served: the static map, else its well-known
    /// document, else `http://{server}`.
    async fn base_url(&self, server: &str) -> String {
        if let Some(url) = self.settings.peers.get(server) {
            return url.trim_end_matches('/').to_owned();
        }
        if let Some((url, at)) = self.bases.lock().expect("bases lock").get(server) {
            if at.elapsed() < DISCOVERY_TTL {
                return url.clone();
            }
        }
        let fallback = format!("http://{server}");
        let found = match self
            .get_json::<WellKnownResponse>(&format!("{fallback}{WELL_KNOWN_PATH}"), DISCOVERY_TIMEOUT)
            .await
        {
            Ok(w) if w.base_url.starts_with("http://") || w.base_url.starts_with("https://") => {
                w.base_url.trim_end_matches('/').to_owned()
            }
            _ => fallback,
        };
        self.bases.lock().expect("bases lock").insert(server.to_owned(), (found.clone(), Instant::now()));
        found
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str, within: Duration) -> Result<T, Failure> {
        let req = Request::get(url).body(Full::default()).map_err(|e| Failure::Unreachable(e.to_string()))?;
        let (status, body) = self.round_trip(req, within).await?;
        if !status.is_success() {
            return Err(Failure::Unreachable(format!("{url} answered {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| Failure::Unreachable(format!("{url}: {e}")))
    }

    async fn round_trip(&self, req: Request<Full<Bytes>>, within: Duration) -> Result<(StatusCode, Bytes), Failure> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| Failure::Unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| Failure::Unreachable(e.to_string()))?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(within, exchange).await.map_err(|_| Failure::Unreachable("timed out".into()))?
    }

    /// `server`'s public key `key_id`, fetched from its key endpoint and
    /// checked (self-signed, for that server name), cached for an hour.
    async fn public_key(&self, server: &str, key_id: &str, fresh: bool) -> Result<Vec<u8>, Error> {
        if !fresh {
            if let Some((id, pk, at)) = self.keys.lock().expect("keys lock").get(server) {
                if id == key_id && at.elapsed() < KEY_TTL {
                    return Ok(pk.clone());
                }
            }
        }
        let unknown =
            |why: String| Error::refused(ErrCode::UnknownServer, format!("cannot get the key of {server}: {why}"));
        let base = self.base_url(server).await;
        let doc: ServerKeyResponse = self
            .get_json(&format!("{base}{KEY_PATH}"), REQUEST_TIMEOUT)
            .await
            .map_err(|e| unknown(format!("{e:?}")))?;
        if doc.server_name != server {
            return Err(unknown(format!("its key document is for {}", doc.server_name)));
        }
        let pk = B64.decode(&doc.public_key).map_err(|e| unknown(e.to_string()))?;
        let sig = B64.decode(&doc.signature).map_err(|e| unknown(e.to_string()))?;
        let signed = ServerKeyResponse::signed_bytes(&doc.server_name, &doc.key_id, &doc.public_key);
        UnparsedPublicKey::new(&ring::signature::ED25519, &pk)
            .verify(&signed, &sig)
            .map_err(|_| unknown("its key document is not signed by its key".into()))?;
        self.keys
            .lock()
            .expect("keys lock")
            .insert(server.to_owned(), (doc.key_id.clone(), pk.clone(), Instant::now()));
        if doc.key_id != key_id {
            return Err(bad_signature(format!("{server} signs with {}, not {key_id}", doc.key_id)));
        }
        Ok(pk)
    }

    /// Checks an incoming request's signature; returns the origin server.
    pub async fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ServerName, Error> {
        let header = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad_signature(format!("federation requests carry Authorization: {SIGNATURE_SCHEME} …")))?;
        let p = parse_signature_header(header).ok_or_else(|| bad_signature("malformed signature header"))?;
        let field = |k: &str| p.get(k).copied().ok_or_else(|| bad_signature(format!("the signature lacks {k}")));
        let origin = ServerName::parse(field("origin")?).map_err(|_| bad_signature("bad origin"))?;
        let destination = field("destination")?;
        if destination != self.server_name.as_str() {
            return Err(bad_signature(format!("this is {}, not {destination}", self.server_name)));
        }
        let ts: u64 = field("ts")?.parse().map_err(|_| bad_signature("bad ts"))?;
        if now_ms().abs_diff(ts) > SIGNATURE_WINDOW_MS {
            return Err(bad_signature("the signature's ts is too far from now"));
        }
        let key_id = field("key")?;
        let sig = B64.decode(field("sig")?).map_err(|_| bad_signature("bad sig"))?;
        let signed =
            request_signed_bytes(method.as_str(), path_and_query, origin.as_str(), destination, ts, &sha256_b64(body));
        for fresh in [false, true] {
            let pk = self.public_key(origin.as_str(), key_id, fresh).await?;
            if UnparsedPublicKey::new(&ring::signature::ED25519, &pk).verify(&signed, &sig).is_ok() {
                return Ok(origin);
            }
        }
        Err(bad_signature(format!("the signature does not verify against {origin}'s key")))
    }

    // ---- outgoing requests ----

    /// Sends a signed request to `server` and returns its answer's body.
    async fn call(&self, server: &str, method: Method, path_and_query: &str, body: Vec<u8>) -> Result<Bytes, Failure> {
        let base = self.base_url(server).await;
        let ts = now_ms();
        let signed = request_signed_bytes(
            method.as_str(),
            path_and_query,
            self.server_name.as_str(),
            server,
            ts,
            &sha256_b64(&body),
        );
        let sig = B64.encode(self.key.sign(&signed).as_ref());
        let auth = format!(
            r#"{SIGNATURE_SCHEME} origin="{}",destination="{server}",key="{}",ts="{ts}",sig="{sig}""#,
            self.server_name, self.key_id
        );
        let req = Request::builder()
            .method(method)
            .uri(format!("{base}{path_and_query}"))
            .header(http::header::AUTHORIZATION, auth)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let result = self.round_trip(req, REQUEST_TIMEOUT).await;
        let (status, body) = match result {
            Ok(r) => r,
            Err(e) => {
                // Its address may have changed: discover it again next time.
                self.bases.lock().expect("bases lock").remove(server);
                return Err(e);
            }
        };
        if status.is_success() {
            return Ok(body);
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(err) => Err(Failure::Refused(status, err)),
            Err(_) => Err(Failure::Unreachable(format!("{server} answered {status}"))),
        }
    }

    async fn call_json<T: Serialize, R: DeserializeOwned>(
        &self,
        server: &str,
        method: Method,
        path_and_query: &str,
        body: Option<&T>,
    ) -> Result<R, Failure> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("requests serialize")).unwrap_or_default();
        let answer = self.call(server, method, path_and_query, bytes).await?;
        serde_json::from_slice(&answer).map_err(|e| Failure::Unreachable(format!("{server} answered nonsense: {e}")))
    }

    fn enc(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// Asks `home` to let `user` (ours) join `room` (an id or alias there).
    pub async fn join(&self, home: &str, room: &str, user: &UserId) -> Result<FedJoinResponse, Failure> {
        let req = FedJoinRequest { room: room.to_owned(), user_id: user.clone() };
        self.call_json(home, Method::POST, &format!("{FEDERATION_PREFIX}/join"), Some(&req)).await
    }

    pub async fn leave(&self, home: &str, room_id: &RoomId, user: &UserId) -> Result<(), Failure> {
        let req = FedLeaveRequest { room_id: room_id.clone(), user_id: user.clone() };
        let _: serde_json::Value =
            self.call_json(home, Method::POST, &format!("{FEDERATION_PREFIX}/leave"), Some(&req)).await?;
        Ok(())
    }

    /// Asks the room's home server to order a message from one of our users.
    pub async fn send(&self, room_id: &RoomId, txn_id: &str, req: &FedSendRequest) -> Result<SendResponse, Failure> {
        let path = format!("{FEDERATION_PREFIX}/rooms/{}/send/{}", Self::enc(room_id.as_str()), Self::enc(txn_id));
        self.call_json(room_id.server(), Method::PUT, &path, Some(req)).await
    }

    /// The home server's events after `after`.
    pub async fn backfill(&self, room_id: &RoomId, after: u64, limit: u32) -> Result<MessagesResponse, Failure> {
        let path =
            format!("{FEDERATION_PREFIX}/rooms/{}/events?after={after}&limit={limit}", Self::enc(room_id.as_str()));
        self.call_json::<(), _>(room_id.server(), Method::GET, &path, None).await
    }

    // ---- the outbound queue (home side) ----

    /// The other servers with members in a local room.
    fn participants(&self, room: &RoomId) -> Arc<Vec<String>> {
        if let Some(p) = self.participants.read().expect("participants lock").get(room) {
            return p.clone();
        }
        let mut servers: Vec<String> = match self.directory.members(room.as_str()) {
            Ok(m) => m.iter().filter_map(|u| UserId::parse(u).ok()).map(|u| u.server().to_owned()).collect(),
            Err(e) => {
                tracing::error!(error = %e, %room, "cannot read the room's members for federation");
                Vec::new()
            }
        };
        servers.retain(|s| s != self.server_name.as_str());
        servers.sort();
        servers.dedup();
        let p = Arc::new(servers);
        self.participants.write().expect("participants lock").insert(room.clone(), p.clone());
        p
    }

    /// The room's membership changed: recompute its servers on next use.
    pub fn membership_changed(&self, room: &RoomId) {
        self.participants.write().expect("participants lock").remove(room);
    }

    /// A durable event of a room: when it is ours, queue it for every other
    /// server with members in it. Called on the log's delivery path, in seq
    /// order: it only writes to the queue and wakes the pushers.
    pub fn on_event(self: &Arc<Self>, room: &RoomId, epoch: &str, event_json: &str) {
        if room.server() != self.server_name.as_str() {
            return;
        }
        let servers = self.participants(room);
        if servers.is_empty() {
            return;
        }
        let mut item = String::with_capacity(event_json.len() + 96);
        item.push_str(r#"{"room_id":"#);
        item.push_str(&serde_json::to_string(room.as_str()).expect("strings serialize"));
        item.push_str(r#","epoch":"#);
        item.push_str(&serde_json::to_string(epoch).expect("strings serialize"));
        item.push_str(r#","event":"#);
        item.push_str(event_json);
        item.push('}');
        for server in servers.iter() {
            if let Err(e) = self.outbox.push(server, item.as_bytes()) {
                tracing::error!(error = %e, %server, "cannot queue an event for federation");
                continue;
            }
            self.wake_pusher(server);
        }
    }

    fn wake_pusher(self: &Arc<Self>, server: &str) {
        let mut pushers = self.pushers.lock().expect("pushers lock");
        if let Some(n) = pushers.get(server) {
            n.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        pushers.insert(server.to_owned(), notify.clone());
        let fed = self.clone();
        let server = server.to_owned();
        self.tasks.spawn_on(async move { fed.push_loop(server, notify).await }, &self.runtime);
    }

    /// Pushes `server`'s queue, oldest first, in transactions of up to
    /// [`PUSH_BATCH`] events, retrying with backoff while it is down.
    async fn push_loop(self: Arc<Self>, server: String, notify: Arc<Notify>) {
        let mut backoff = RETRY_MIN;
        loop {
            let (keys, first, events) = match self.outbox.peek(&server, PUSH_BATCH) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the federation queue");
                    (Vec::new(), 0, Vec::new())
                }
            };
            if keys.is_empty() {
                tokio::select! {
                    _ = notify.notified() => continue,
                    _ = self.stop.cancelled() => return,
                }
            }
            let mut body = br#"{"events":["#.to_vec();
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(e);
            }
            body.extend_from_slice(b"]}");
            // The first event's queue number names the transaction: a retry
            // of the same batch is the same transaction.
            let path = format!("{FEDERATION_PREFIX}/send/{first:016x}");
            match self.call(&server, Method::PUT, &path, body).await {
                Ok(_) => {
                    backoff = RETRY_MIN;
                    if let Err(e) = self.outbox.remove(&keys) {
                        tracing::error!(error = %e, "cannot clear pushed federation events");
                    }
                }
                Err(Failure::Refused(status, err))
                    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    // It will never take these: drop them rather than retry forever.
                    tracing::warn!(%server, %status, errcode = %err.errcode, error = %err.error, "federation push refused; dropped");
                    let _ = self.outbox.remove(&keys);
                }
                Err(e) => {
                    tracing::debug!(%server, error = ?e, "federation push failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(self.settings.retry_max.max(RETRY_MIN));
                }
            }
        }
    }

    /// Spawns background work that stops with [`Federation::close`].
    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn_on(
            async move {
                tokio::select! {
                    _ = work => {}
                    _ = stop.cancelled() => {}
                }
            },
            &self.runtime,
        );
    }

    /// Stops the pushers and background work.
    pub async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_headers_parse() {
        let h = r#"Parlor-Signature origin="a.example:8448",destination="b",key="ed25519:x",ts="1",sig="c2ln""#;
        let p = parse_signature_header(h).unwrap();
        assert_eq!(p["origin"], "a.example:8448");
        assert_eq!(p["sig"], "c2ln");
        assert!(parse_signature_header("Bearer abc").is_none());
        assert!(parse_signature_header(r#"Parlor-Signature origin=unquoted"#).is_none());
    }
}

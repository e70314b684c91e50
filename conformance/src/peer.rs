//! The second server the runner plays for §11 (federation). It listens on
//! the address the run was given (`--peer-listen`, else 127.0.0.1:0), so its
//! server name is `127.0.0.1:PORT`; the server under test reaches it through
//! its `--federation-peer` map (a server reaches private addresses only for
//! the peers it is given, §11.1); it has an ed25519
//! key of its own, publishes its key and well-known documents, signs the
//! requests the cases send in its name (§11.2), and records the transactions
//! the server under test pushes to it (§11.4), answering `{}`.
//!
//! Signing and checking follow the spec's text alone; the same code checks
//! the server's signatures against the key the server publishes, so a server
//! and this peer can only agree by both following §11.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::failure::{Failure, Result};
use crate::schema::Schemas;

/// The prefix of the server-to-server API.
pub const FEDERATION_PREFIX: &str = "/_parlor/federation/v1";
/// Where a server publishes its key document.
pub const KEY_PATH: &str = "/_parlor/key/v1/server";
/// Where a server name says which base URL serves it.
pub const WELL_KNOWN_PATH: &str = "/.well-known/parlor/server";
/// The `Authorization` scheme of signed requests.
pub const SIGNATURE_SCHEME: &str = "Parlor-Signature";
/// How far a signed request's `ts` may be from the receiver's clock.
pub const SIGNATURE_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Milliseconds since the Unix epoch, as in `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// base64url of the SHA-256 of `bytes`, without padding.
pub fn sha256_b64(bytes: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// What a key document's `signature` signs (§11.1).
pub fn key_signed_bytes(server_name: &str, key_id: &str, public_key: &str) -> Vec<u8> {
    format!("parlor-key-v1\n{server_name}\n{key_id}\n{public_key}").into_bytes()
}

/// What a request's `sig` signs (§11.2): the lines `parlor-request-v1`,
/// method, path with query, origin, destination, `ts` and the body's hash.
pub fn request_signed_bytes(
    method: &str,
    path_and_query: &str,
    origin: &str,
    destination: &str,
    ts: u64,
    body: &[u8],
) -> Vec<u8> {
    format!("parlor-request-v1\n{method}\n{path_and_query}\n{origin}\n{destination}\n{ts}\n{}", sha256_b64(body))
        .into_bytes()
}

/// The parameters of an `Authorization: Parlor-Signature …` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureHeader {
    pub origin: String,
    pub destination: String,
    pub key: String,
    /// Kept as text: a case may send a `ts` that is not a number.
    pub ts: String,
    pub sig: String,
}

impl SignatureHeader {
    pub fn render(&self) -> String {
        format!(
            r#"{SIGNATURE_SCHEME} origin="{}",destination="{}",key="{}",ts="{}",sig="{}""#,
            self.origin, self.destination, self.key, self.ts, self.sig
        )
    }

    /// Reads a header as §11.2 writes it: the scheme, then `name="value"`
    /// pairs separated by commas. Spaces around the pairs are tolerated, and
    /// so are parameters the spec does not name; each of the five it names
    /// must be there exactly once.
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest = value
            .strip_prefix(SIGNATURE_SCHEME)
            .filter(|r| r.starts_with(' '))
            .ok_or_else(|| format!("not a `{SIGNATURE_SCHEME} …` header: {value:?}"))?;
        let mut fields: [Option<String>; 5] = Default::default();
        const NAMES: [&str; 5] = ["origin", "destination", "key", "ts", "sig"];
        for part in rest.split(',') {
            let (name, quoted) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("`{}` is not name=\"value\" in {value:?}", part.trim()))?;
            let v = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .ok_or_else(|| format!("the value of `{name}` is not quoted in {value:?}"))?;
            if let Some(i) = NAMES.iter().position(|n| *n == name)
                && fields[i].replace(v.to_owned()).is_some()
            {
                return Err(format!("`{name}` appears twice in {value:?}"));
            }
        }
        let mut take = |i: usize| fields[i].take().ok_or_else(|| format!("`{}` is missing from {value:?}", NAMES[i]));
        Ok(SignatureHeader { origin: take(0)?, destination: take(1)?, key: take(2)?, ts: take(3)?, sig: take(4)? })
    }
}

/// A server's key, from a key document that checked out.
#[derive(Clone, Debug)]
pub struct ServerKey {
    pub server_name: String,
    pub key_id: String,
    pub public_key: Vec<u8>,
}

impl ServerKey {
    /// Checks a (schema-valid) key document as §11.1 says a server must
    /// before trusting it: it names `server_name`, its key is 32 bytes of
    /// base64url without padding, and its signature by that key verifies.
    pub fn from_document(doc: &Value, server_name: &str) -> Result<ServerKey, String> {
        let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or_default();
        let (name, key_id, public_key, signature) =
            (field("server_name"), field("key_id"), field("public_key"), field("signature"));
        if name != server_name {
            return Err(format!("the key document names {name:?}, but the server is {server_name:?}"));
        }
        if !key_id.starts_with("ed25519:") || key_id.len() == "ed25519:".len() {
            return Err(format!("key_id {key_id:?} is not `ed25519:` and an id"));
        }
        let pk = B64
            .decode(public_key)
            .map_err(|e| format!("public_key {public_key:?} is not base64url without padding: {e}"))?;
        if pk.len() != 32 {
            return Err(format!("public_key is {} bytes, an ed25519 key is 32", pk.len()));
        }
        let sig = B64.decode(signature).map_err(|e| format!("signature is not base64url without padding: {e}"))?;
        UnparsedPublicKey::new(&ED25519, &pk)
            .verify(&key_signed_bytes(name, key_id, public_key), &sig)
            .map_err(|_| "the key document's signature does not verify against its public_key".to_owned())?;
        Ok(ServerKey { server_name: name.to_owned(), key_id: key_id.to_owned(), public_key: pk })
    }

    /// Checks a request this server signed and sent to `destination`, as a
    /// receiver must (§11.2), at `now` (milliseconds).
    pub fn verify_request(
        &self,
        method: &str,
        path_and_query: &str,
        destination: &str,
        authorization: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<(), String> {
        let header = authorization.ok_or("no Authorization header")?;
        let h = SignatureHeader::parse(header)?;
        if h.origin != self.server_name {
            return Err(format!("origin is {:?}, but the server is {:?}", h.origin, self.server_name));
        }
        if h.destination != destination {
            return Err(format!("destination is {:?}, but it was sent to {destination:?}", h.destination));
        }
        if h.key != self.key_id {
            return Err(format!("key is {:?}, but the server publishes {:?}", h.key, self.key_id));
        }
        let ts: u64 = h.ts.parse().map_err(|_| format!("ts {:?} is not milliseconds since the Unix epoch", h.ts))?;
        if ts.abs_diff(now) > SIGNATURE_WINDOW_MS {
            return Err(format!("ts {ts} is more than 5 minutes from now ({now})"));
        }
        let sig = B64.decode(&h.sig).map_err(|e| format!("sig is not base64url without padding: {e}"))?;
        let signed = request_signed_bytes(method, path_and_query, &h.origin, &h.destination, ts, body);
        UnparsedPublicKey::new(&ED25519, &self.public_key).verify(&signed, &sig).map_err(|_| {
            format!("sig does not verify against the server's published key for {method} {path_and_query}")
        })
    }
}

/// A request the server under test sent to the peer's federation API.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// What the listener shares with its connections.
struct Shared {
    key_document: Bytes,
    well_known: Bytes,
    received: Mutex<Vec<Received>>,
}

/// The fake peer server. Dropping it stops its listener and connections.
pub struct Peer {
    /// `127.0.0.1:PORT`: its server name and address alike.
    pub name: String,
    pub key_id: String,
    key: Ed25519KeyPair,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Peer {
    /// Serves on `listener` (a copy of it), or binds 127.0.0.1:0; makes a key
    /// and starts serving.
    pub async fn start(schemas: &Schemas, listener: Option<Arc<std::net::TcpListener>>) -> Result<Peer> {
        let listener = match listener {
            Some(l) => l
                .try_clone()
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
                .map_err(|e| Failure::Transport(format!("the fake federation peer's listener: {e}")))?,
            None => TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| Failure::Transport(format!("the fake federation peer cannot bind 127.0.0.1:0: {e}")))?,
        };
        let port = listener.local_addr().map_err(|e| Failure::Transport(format!("fake federation peer: {e}")))?.port();
        let name = format!("127.0.0.1:{port}");
        let suite = |what: &str| Failure::Suite(format!("fake federation peer: {what}"));
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| suite("cannot generate a key"))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| suite("cannot load its own key"))?;
        let public_key = B64.encode(key.public_key().as_ref());
        // A short id derived from the key, so a new key never reuses an id.
        let key_id = format!("ed25519:{}", &sha256_b64(key.public_key().as_ref())[..8]);
        let signature = B64.encode(key.sign(&key_signed_bytes(&name, &key_id, &public_key)).as_ref());
        let key_document =
            json!({"server_name": name, "key_id": key_id, "public_key": public_key, "signature": signature});
        let well_known = json!({"base_url": format!("http://{name}")});
        // The peer's own documents are held to the spec like the server's, so
        // a suite bug cannot pass as a server bug.
        schemas.check("federation_server_key", "the runner's own key document", &key_document)?;
        schemas.check("federation_well_known", "the runner's own well-known document", &well_known)?;
        ServerKey::from_document(&key_document, &name).map_err(|e| suite(&e))?;
        let shared = Arc::new(Shared {
            key_document: Bytes::from(key_document.to_string()),
            well_known: Bytes::from(well_known.to_string()),
            received: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(Peer { name, key_id, key, shared, server })
    }

    /// `@username:127.0.0.1:PORT`.
    pub fn user_id(&self, username: &str) -> String {
        format!("@{username}:{}", self.name)
    }

    /// A full `Authorization` value for a request from `origin` (normally
    /// this peer; another name for cases that lie about it), signed with the
    /// peer's key over exactly these parameters.
    pub fn authorization(
        &self,
        method: &str,
        path_and_query: &str,
        origin: &str,
        destination: &str,
        ts: u64,
        body: &[u8],
    ) -> String {
        self.header(method, path_and_query, origin, destination, ts, body).render()
    }

    /// The header's parameters, for cases that alter one after signing.
    pub fn header(
        &self,
        method: &str,
        path_and_query: &str,
        origin: &str,
        destination: &str,
        ts: u64,
        body: &[u8],
    ) -> SignatureHeader {
        let signed = request_signed_bytes(method, path_and_query, origin, destination, ts, body);
        SignatureHeader {
            origin: origin.to_owned(),
            destination: destination.to_owned(),
            key: self.key_id.clone(),
            ts: ts.to_string(),
            sig: B64.encode(self.key.sign(&signed).as_ref()),
        }
    }

    /// Every federation request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("peer lock").clone()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set, so aborting the accept loop (the peer was
    // dropped) ends them too rather than leaving keep-alive sockets behind.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(req, &shared).await) }
                    });
                    // A broken connection is the server's business; what it
                    // did send is already recorded.
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn reply(status: StatusCode, body: Bytes) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, errcode: &str, error: &str) -> http::Response<Full<Bytes>> {
    reply(status, Bytes::from(json!({"errcode": errcode, "error": error}).to_string()))
}

async fn answer(req: http::Request<Incoming>, shared: &Shared) -> http::Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| path.clone());
    let header =
        |name: http::header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let authorization = header(http::header::AUTHORIZATION);
    let content_type = header(http::header::CONTENT_TYPE);
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return error(StatusCode::BAD_REQUEST, "malformed_json", "the body did not arrive");
    };
    match (&method, path.as_str()) {
        (&Method::GET, KEY_PATH) => return reply(StatusCode::OK, shared.key_document.clone()),
        (&Method::GET, WELL_KNOWN_PATH) => return reply(StatusCode::OK, shared.well_known.clone()),
        _ => {}
    }
    if !path.starts_with(FEDERATION_PREFIX) {
        return error(StatusCode::NOT_FOUND, "not_found", "the conformance runner serves only federation");
    }
    let is_push =
        method == Method::PUT && path.strip_prefix(FEDERATION_PREFIX).is_some_and(|r| r.starts_with("/send/"));
    // Everything under the prefix is recorded, pushes or not, so a case can
    // see what the server asked of a peer that is not a home server.
    shared.received.lock().expect("peer lock").push(Received {
        method,
        path_and_query,
        authorization,
        content_type,
        body,
    });
    if is_push {
        // Checked by the cases, which know which server sent it and say why it
        // is wrong far better than a refusal the server would only log.
        reply(StatusCode::OK, Bytes::from_static(b"{}"))
    } else {
        error(StatusCode::NOT_FOUND, "not_found", "the conformance runner is home to no room")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn document(key: &Ed25519KeyPair, name: &str, signed_name: &str) -> Value {
        let pk = B64.encode(key.public_key().as_ref());
        let sig = B64.encode(key.sign(&key_signed_bytes(signed_name, "ed25519:k1", &pk)).as_ref());
        json!({"server_name": name, "key_id": "ed25519:k1", "public_key": pk, "signature": sig})
    }

    #[test]
    fn key_documents_are_checked() {
        let key = key_pair();
        let good = document(&key, "b.example", "b.example");
        assert_eq!(ServerKey::from_document(&good, "b.example").unwrap().public_key, key.public_key().as_ref());
        assert!(ServerKey::from_document(&good, "c.example").unwrap_err().contains("names"));
        // Signed for another name, then relabelled: the signature must not verify.
        let relabelled = document(&key, "b.example", "c.example");
        assert!(ServerKey::from_document(&relabelled, "b.example").unwrap_err().contains("does not verify"));
        let mut padded = good.clone();
        padded["public_key"] = json!(format!("{}=", good["public_key"].as_str().unwrap()));
        assert!(ServerKey::from_document(&padded, "b.example").is_err());
    }

    #[test]
    fn headers_round_trip_and_refuse_garbage() {
        let h = SignatureHeader {
            origin: "a.example:8448".into(),
            destination: "b".into(),
            key: "ed25519:x".into(),
            ts: "1".into(),
            sig: "c2ln".into(),
        };
        assert_eq!(SignatureHeader::parse(&h.render()).unwrap(), h);
        let spaced = r#"Parlor-Signature origin="a", destination="b", key="k", ts="1", sig="s", extra="x""#;
        assert_eq!(SignatureHeader::parse(spaced).unwrap().sig, "s");
        for bad in [
            "Bearer abc",
            r#"Parlor-Signatureorigin="a",destination="b",key="k",ts="1",sig="s""#,
            r#"Parlor-Signature origin=a,destination="b",key="k",ts="1",sig="s""#,
            r#"Parlor-Signature origin="a",destination="b",key="k",ts="1""#,
            r#"Parlor-Signature origin="a",origin="a",destination="b",key="k",ts="1",sig="s""#,
        ] {
            assert!(SignatureHeader::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_signatures_cover_every_part() {
        let key = key_pair();
        let server = ServerKey {
            server_name: "b.example".into(),
            key_id: "ed25519:k1".into(),
            public_key: key.public_key().as_ref().to_vec(),
        };
        let now = now_ms();
        let sign = |method: &str, path: &str, dest: &str, ts: u64, body: &[u8]| {
            let sig = B64.encode(key.sign(&request_signed_bytes(method, path, "b.example", dest, ts, body)).as_ref());
            SignatureHeader {
                origin: "b.example".into(),
                destination: dest.into(),
                key: "ed25519:k1".into(),
                ts: ts.to_string(),
                sig,
            }
            .render()
        };
        let good = sign("PUT", "/p?q=1", "a", now, b"{}");
        server.verify_request("PUT", "/p?q=1", "a", Some(&good), b"{}", now).unwrap();
        assert!(server.verify_request("POST", "/p?q=1", "a", Some(&good), b"{}", now).is_err(), "method");
        assert!(server.verify_request("PUT", "/p?q=2", "a", Some(&good), b"{}", now).is_err(), "query");
        assert!(server.verify_request("PUT", "/p?q=1", "a", Some(&good), b"{ }", now).is_err(), "body");
        assert!(server.verify_request("PUT", "/p?q=1", "c", Some(&good), b"{}", now).is_err(), "destination");
        assert!(
            server.verify_request("PUT", "/p?q=1", "a", Some(&good), b"{}", now + SIGNATURE_WINDOW_MS + 1).is_err(),
            "ts"
        );
        assert!(server.verify_request("PUT", "/p?q=1", "a", None, b"{}", now).is_err(), "unsigned");
        let other = key_pair();
        let forged = SignatureHeader {
            sig: B64.encode(other.sign(&request_signed_bytes("PUT", "/p?q=1", "b.example", "a", now, b"{}")).as_ref()),
            ..SignatureHeader::parse(&good).unwrap()
        };
        assert!(
            server.verify_request("PUT", "/p?q=1", "a", Some(&forged.render()), b"{}", now).is_err(),
            "another key"
        );
    }

    #[tokio::test]
    async fn the_peer_serves_its_documents_and_records_pushes() {
        let schemas = Schemas::load().unwrap();
        let peer = Peer::start(&schemas, None).await.unwrap();
        let http = crate::http::Http::new(peer.name.clone(), Arc::new(Schemas::load().unwrap()));
        let doc =
            http.send(crate::http::Request::get(KEY_PATH)).await.unwrap().ok(200, "federation_server_key").unwrap();
        ServerKey::from_document(&doc, &peer.name).unwrap();
        let wk = http
            .send(crate::http::Request::get(WELL_KNOWN_PATH))
            .await
            .unwrap()
            .ok(200, "federation_well_known")
            .unwrap();
        assert_eq!(wk["base_url"], format!("http://{}", peer.name));
        let path = format!("{FEDERATION_PREFIX}/send/t1");
        let push = crate::http::Request::put(&path).json(&json!({"events": []}));
        http.send(push).await.unwrap().ok(200, "empty").unwrap();
        let got = peer.received();
        assert_eq!(
            (got.len(), got[0].path_and_query.as_str(), &got[0].body[..]),
            (1, path.as_str(), &b"{\"events\":[]}"[..])
        );
    }
}

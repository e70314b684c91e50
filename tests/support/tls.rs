//! TLS for tests: a CA made at test time (root, intermediate, then server
//! certificates whose full chain is leaf + intermediate, as a real
//! deployment's), a rustls client that trusts only that root, and HTTPS and
//! WSS clients on it. No key is ever committed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpSocket, TcpStream};

use super::{Next, P};

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A root CA and an intermediate that signs server certificates.
pub struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate: its full chain and key in PEM, and its DER.
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

fn ca_params(name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(constraints);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        let root = ca_params("Parlor test root", BasicConstraints::Unconstrained);
        let root = CertifiedIssuer::self_signed(root, KeyPair::generate().unwrap()).unwrap();
        let mid = ca_params("Parlor test intermediate", BasicConstraints::Constrained(0));
        let intermediate = CertifiedIssuer::signed_by(mid, KeyPair::generate().unwrap(), &root).unwrap();
        Pki { root, intermediate }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.intermediate).unwrap();
        Leaf {
            chain_pem: cert.pem() + &self.intermediate.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// The root certificate in PEM (for other clients: nginx, curl, Chromium).
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// A client that trusts this root only.
    pub fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.der().clone()).unwrap();
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl Leaf {
    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        self.replace(&cert, &key);
        (cert, key)
    }

    /// Replaces the files as a renewal tool does: each written aside, then renamed over.
    pub fn replace(&self, cert: &Path, key: &Path) {
        for (path, pem) in [(cert, &self.chain_pem), (key, &self.key_pem)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

/// A TLS connection to `addr` for the name `localhost`, from `from` when given.
pub async fn connect_from(addr: SocketAddr, from: Option<IpAddr>, client: &Arc<ClientConfig>) -> TlsStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await.unwrap().unwrap();
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    tokio::time::timeout(Duration::from_secs(20), connector.connect(ServerName::try_from("localhost").unwrap(), tcp))
        .await
        .expect("TLS handshake within 20 s")
        .expect("TLS handshake succeeds")
}

pub async fn connect(addr: SocketAddr, client: &Arc<ClientConfig>) -> TlsStream {
    connect_from(addr, None, client).await
}

/// The server certificate (leaf, DER) of a connection.
pub fn peer_leaf(s: &TlsStream) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("the server sent certificates")[0].to_vec()
}

/// HTTP/1.1 over one TLS connection: several requests on it.
pub struct Https {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    /// The certificate the server presented.
    pub leaf: Vec<u8>,
    /// Extra headers sent with every request.
    pub headers: Vec<(String, String)>,
}

impl Https {
    pub async fn connect(addr: SocketAddr, client: &Arc<ClientConfig>) -> Self {
        Self::over(connect(addr, client).await, addr).await
    }

    pub async fn over(stream: TlsStream, addr: SocketAddr) -> Self {
        let leaf = peer_leaf(&stream);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Https { send, host: format!("localhost:{}", addr.port()), leaf, headers: Vec::new() }
    }

    /// One request on this connection: (status, JSON answer or Null).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = http::Request::builder().method(method).uri(path).header("host", &self.host);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&b).unwrap())
            }
            None => Bytes::new(),
        };
        self.send.ready().await.expect("the connection is still open");
        let resp =
            tokio::time::timeout(Duration::from_secs(30), self.send.send_request(req.body(Full::new(body)).unwrap()))
                .await
                .expect("an answer within 30 s")
                .expect("the server answers");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    /// Registers and logs in `name`; returns (user_id, token).
    pub async fn user(&mut self, name: &str) -> (String, String) {
        let creds = serde_json::json!({"username": name, "password": "zebra-quartz-71"});
        let (s, v) = self.call("POST", &format!("{P}/register"), None, Some(creds.clone())).await;
        assert_eq!(s, 201, "register {name}: {v}");
        let (s, v) = self.call("POST", &format!("{P}/login"), None, Some(creds)).await;
        assert_eq!(s, 200, "login {name}: {v}");
        (v["user_id"].as_str().unwrap().to_owned(), v["access_token"].as_str().unwrap().to_owned())
    }
}

/// A WebSocket test client over TLS speaking raw JSON frames.
pub type Wss = testkit::WsClient<TlsStream>;

/// A WebSocket (`parlor.v1`) over `stream`, authenticated by header; waits for `ready`.
pub async fn wss_over(stream: TlsStream, addr: SocketAddr, token: &str) -> Wss {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://localhost:{}{P}/ws", addr.port()).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "parlor.v1".parse().unwrap());
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio::time::timeout(Duration::from_secs(20), tokio_tungstenite::client_async(req, stream))
        .await
        .expect("the upgrade within 20 s")
        .expect("the upgrade succeeds");
    let mut c = Wss::over(ws);
    let ready = c.recv().await;
    assert_eq!(ready["type"], "ready", "{ready}");
    c
}

pub async fn wss(addr: SocketAddr, client: &Arc<ClientConfig>, token: &str) -> Wss {
    wss_over(connect(addr, client).await, addr, token).await
}

/// Waits until `GET /healthz` answers 200 over TLS (the server prints its
/// address before its storage is open).
pub async fn wait_healthy(addr: SocketAddr, client: &Arc<ClientConfig>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = Https::connect(addr, client).await;
        if c.call("GET", "/healthz", None, None).await.0 == 200 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not healthy within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

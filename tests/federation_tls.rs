//! Federation over HTTPS between two real servers on loopback, each serving
//! TLS with a certificate from a CA made at test time and trusting only that
//! CA for its peers (`--federation-ca`). Each names the other with
//! `--federation-peer NAME=https://127.0.0.1:PORT`, so the peer's certificate
//! must cover the address 127.0.0.1. A remote join, key fetches and pushes
//! all go over HTTPS. A home server whose certificate comes from another CA,
//! or names another host, is treated as unreachable: the join is refused
//! with `home_server_unreachable` and nothing of it is stored on either side.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor::config::{Config, TlsFiles};
use rustls::ClientConfig;
use serde_json::{Value, json};
use support::tls::{Https, Leaf, Pki, wait_healthy};
use support::{P, TestServer, enc, uniq};

/// A TLS server on `listener` with `leaf` as its certificate, trusting the
/// CA in `ca` for federation, with `peer` as its one `--federation-peer`
/// (at `https://`).
async fn start(listener: tokio::net::TcpListener, dir: &Path, leaf: &Leaf, ca: &Path, peer: SocketAddr) -> TestServer {
    let (cert, key) = leaf.write(dir);
    let mut cfg: Config = TestServer::config(listener.local_addr().unwrap().port(), &dir.join("data"));
    cfg.tls = Some(TlsFiles { cert, key });
    cfg.federation_ca = Some(ca.to_owned());
    cfg.federation_peers = vec![(peer.to_string(), format!("https://{peer}"))];
    cfg.federation_retry_max = Duration::from_millis(500);
    cfg.federation_catch_up = Duration::from_millis(500);
    TestServer::start_serving(parlor::server::Listeners { client: listener, metrics: None }, cfg).await
}

/// Two servers A and B: A's certificate from `pki`, B's `b_leaf`; both trust
/// only `pki`'s root for federation. Returns them and a client of each.
async fn two_servers(
    pki: &Pki,
    b_leaf: &Leaf,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
) -> (TestServer, TestServer, Https, Https) {
    let ca = dirs.0.path().join("federation-ca.pem");
    std::fs::write(&ca, pki.root_pem()).unwrap();
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    // Clients of these tests connect for the name `localhost`; peers verify 127.0.0.1.
    let a = start(la, dirs.0.path(), &pki.leaf(&["127.0.0.1", "localhost"]), &ca, ab).await;
    let b = start(lb, dirs.1.path(), b_leaf, &ca, aa).await;
    let (ca_client, any_client) = (pki.client(), accept_any());
    wait_healthy(a.addr, &ca_client).await;
    wait_healthy(b.addr, &any_client).await;
    let (ha, hb) = (Https::connect(a.addr, &ca_client).await, Https::connect(b.addr, &any_client).await);
    (a, b, ha, hb)
}

/// Retries `check` until it holds (bounded): federation is asynchronous.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn bodies(page: &Value) -> Vec<String> {
    page["events"].as_array().unwrap().iter().filter_map(|e| e["body"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_user_joins_and_talks_over_https() {
    let pki = Pki::new();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, mut ha, mut hb) = two_servers(&pki, &pki.leaf(&["127.0.0.1", "localhost"]), &dirs).await;

    let (_, tb) = hb.user(&uniq("bob")).await;
    let (s, j) = hb.call("POST", &format!("{P}/rooms/{}/join", uniq("room")), Some(&tb), None).await;
    assert_eq!(s, 200, "{j}");
    let room = enc(j["room_id"].as_str().unwrap());
    let (ann, ta) = ha.user(&uniq("ann")).await;
    let (s, v) = ha.call("POST", &format!("{P}/rooms/{room}/join"), Some(&ta), None).await;
    assert_eq!(s, 200, "A joins B's room over HTTPS: {v}");

    // B to A (a push), then A to B (a send ordered by the home server).
    let (s, v) = hb.call("PUT", &format!("{P}/rooms/{room}/send/b1"), Some(&tb), Some(json!({"body": "from B"}))).await;
    assert_eq!(s, 200, "{v}");
    eventually("B's message reached A", async || {
        let (_, page) = ha.call("GET", &format!("{P}/rooms/{room}/messages"), Some(&ta), None).await;
        bodies(&page).contains(&"from B".to_owned())
    })
    .await;
    let (s, v) = ha.call("PUT", &format!("{P}/rooms/{room}/send/a1"), Some(&ta), Some(json!({"body": "from A"}))).await;
    assert_eq!(s, 200, "A's user sends through the home server: {v}");
    let (_, page) = hb.call("GET", &format!("{P}/rooms/{room}/messages"), Some(&tb), None).await;
    assert_eq!(bodies(&page), ["from B", "from A"], "{page}");
    let (_, m) = hb.call("GET", &format!("{P}/rooms/{room}/members"), Some(&tb), None).await;
    assert!(m["members"].as_array().unwrap().iter().any(|x| x["user_id"] == ann.as_str()), "{m}");
    eventually("A's message is back on A", async || {
        let (_, page) = ha.call("GET", &format!("{P}/rooms/{room}/messages"), Some(&ta), None).await;
        bodies(&page) == ["from B", "from A"]
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_server_with_an_untrusted_certificate_is_unreachable() {
    let pki = Pki::new();
    let other = Pki::new();
    for (why, b_leaf) in [
        ("a certificate from another CA", other.leaf(&["127.0.0.1", "localhost"])),
        ("a certificate for another name", pki.leaf(&["localhost"])),
    ] {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b, mut ha, mut hb) = two_servers(&pki, &b_leaf, &dirs).await;
        let (_, tb) = hb.user(&uniq("bob")).await;
        let (s, j) = hb.call("POST", &format!("{P}/rooms/{}/join", uniq("room")), Some(&tb), None).await;
        assert_eq!(s, 200, "{j}");
        let room = enc(j["room_id"].as_str().unwrap());
        let (ann, ta) = ha.user(&uniq("ann")).await;
        let (s, v) = ha.call("POST", &format!("{P}/rooms/{room}/join"), Some(&ta), None).await;
        assert_eq!((s, v["errcode"].as_str()), (503, Some("home_server_unreachable")), "{why}: {v}");
        let text = v.to_string().to_lowercase();
        assert!(!text.contains("certificate") && !text.contains("tls"), "{why}: no TLS detail told: {v}");
        // Nothing stored: no room on A, no member on B.
        let (_, rooms) = ha.call("GET", &format!("{P}/rooms"), Some(&ta), None).await;
        assert_eq!(rooms["rooms"], json!([]), "{why}");
        let (s, _) = ha.call("GET", &format!("{P}/rooms/{room}/messages"), Some(&ta), None).await;
        assert_ne!(s, 200, "{why}: A keeps no replica");
        let (_, m) = hb.call("GET", &format!("{P}/rooms/{room}/members"), Some(&tb), None).await;
        assert!(!m["members"].as_array().unwrap().iter().any(|x| x["user_id"] == ann.as_str()), "{why}: {m}");
        a.stop().await;
        b.stop().await;
    }
}

/// A client for reaching B whatever its certificate: the tests check what
/// A (the federation client) believes, not what this client does.
fn accept_any() -> Arc<ClientConfig> {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

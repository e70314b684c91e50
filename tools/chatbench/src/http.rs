//! The HTTP half of the client API, as the benchmark uses it: one
//! keep-alive HTTP/1.1 connection per [`HttpConn`] (hyper's low-level
//! client, no pool), and typed helpers for register, login, join, send and
//! history. Errors keep the server's `errcode` so callers can tell a refusal
//! from a fault.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};

/// The client API prefix (spec §1).
pub const PREFIX: &str = "/_parlor/client/v1";

/// Path segments keep only unreserved characters unescaped (spec §1: `{room}` is URL-encoded).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encode one path segment.
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    /// `host:port` as given, for `Host` headers.
    pub host: String,
    /// Every process of the server named on the command line, this one
    /// first: WebSockets are spread over them (several processes on one
    /// shared Redis are one server, so any of them serves any member).
    pub processes: Arc<Vec<(SocketAddr, String)>>,
}

/// A refusal from the server: status and errcode.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub errcode: String,
    pub error: String,
    pub retry_after_ms: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.errcode, self.error)
    }
}

impl std::error::Error for ApiError {}

impl Api {
    /// Several URLs of one server (its processes): HTTP goes to the first,
    /// WebSockets are spread over all of them ([`Api::ws_target`]).
    pub async fn parse_all(urls: &[String]) -> Result<Self> {
        let Some((first, rest)) = urls.split_first() else { bail!("--server URL is required (or CHATBENCH_SERVER)") };
        let mut api = Self::parse(first).await?;
        let mut processes = vec![(api.addr, api.host.clone())];
        for url in rest {
            let other = Self::parse(url).await?;
            processes.push((other.addr, other.host));
        }
        api.processes = Arc::new(processes);
        Ok(api)
    }

    /// Where member `k` of a room opens its WebSocket: the processes in
    /// turn, so that every room has members on every process.
    pub fn ws_target(&self, k: usize) -> (SocketAddr, &str) {
        let (addr, host) = &self.processes[k % self.processes.len()];
        (*addr, host)
    }

    /// This server as reached through its `k`-th process (the processes in
    /// turn), for spreading HTTP requests over them too.
    pub fn process(&self, k: usize) -> Api {
        let (addr, host) = self.ws_target(k);
        Api { addr, host: host.to_owned(), processes: self.processes.clone() }
    }

    /// Parse `http://host:port[/]` and resolve the host once.
    pub async fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--server must be an http:// URL (TLS is not supported), got {url}"))?;
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            bail!("--server must be just scheme, host and port, got {url}");
        }
        let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !host.ends_with(']')
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolve {with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port} resolves to nothing"))?;
        let host = host.to_string();
        Ok(Self { addr, processes: Arc::new(vec![(addr, host.clone())]), host })
    }

    pub async fn conn(&self) -> Result<HttpConn> {
        self.conn_from(None).await
    }

    /// A connection from the local address `local` (e.g. one of 127.0.0.0/8,
    /// so that one machine can look like many clients to a loopback server).
    pub async fn conn_from(&self, local: Option<IpAddr>) -> Result<HttpConn> {
        let mut c = HttpConn { api: self.clone(), tx: None, local };
        c.connect().await?;
        Ok(c)
    }
}

/// One keep-alive connection; reconnects if the server closed it.
pub struct HttpConn {
    api: Api,
    tx: Option<SendRequest<Full<Bytes>>>,
    local: Option<IpAddr>,
}

impl HttpConn {
    async fn connect(&mut self) -> Result<()> {
        let addr = self.api.addr;
        let stream = match self.local {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("bind {ip}"))?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        self.tx = Some(tx);
        Ok(())
    }

    /// One request; `(status, body)`. Retries once on a connection the server had closed.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes)> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(b).expect("json")));
        for attempt in 0..2 {
            if self.tx.as_ref().is_none_or(|t| t.is_closed()) {
                self.connect().await?;
            }
            let tx = self.tx.as_mut().expect("connected");
            if tx.ready().await.is_err() {
                self.tx = None;
                continue;
            }
            let mut req = Request::builder().method(method.clone()).uri(path).header("host", &self.api.host);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Full::new(body.clone().unwrap_or_default()))?;
            match tx.send_request(req).await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let bytes = res.into_body().collect().await?.to_bytes();
                    return Ok((status, bytes));
                }
                Err(e) if attempt == 0 && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                    self.tx = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("{method} {path}: connection closed twice")
    }

    /// A request whose 2xx answer is JSON; other statuses become [`ApiError`].
    /// A 429 is waited out and retried (benchmarks run with rate limits off,
    /// so this only matters against a server that has them on).
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        for _ in 0..20 {
            let (status, bytes) = self.call(method.clone(), path, token, body).await?;
            if (200..300).contains(&status) {
                return serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: answer is not JSON"));
            }
            let err = api_error(status, &bytes);
            if status == 429 {
                tokio::time::sleep(Duration::from_millis(err.retry_after_ms.unwrap_or(100).max(1))).await;
                continue;
            }
            return Err(anyhow::Error::new(err).context(format!("{method} {path}")));
        }
        bail!("{method} {path}: still rate limited after 20 tries")
    }

    pub async fn register(&mut self, username: &str, password: &str) -> Result<String> {
        let v = self
            .json(
                Method::POST,
                &format!("{PREFIX}/register"),
                None,
                Some(&json!({"username": username, "password": password})),
            )
            .await?;
        str_field(&v, "user_id")
    }

    /// `(user_id, access_token)`.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<(String, String)> {
        let v = self
            .json(
                Method::POST,
                &format!("{PREFIX}/login"),
                None,
                Some(&json!({"username": username, "password": password, "device_name": "chatbench"})),
            )
            .await?;
        Ok((str_field(&v, "user_id")?, str_field(&v, "access_token")?))
    }

    /// Whether `token` is still valid.
    pub async fn token_valid(&mut self, token: &str) -> Result<bool> {
        let (status, _) = self.call(Method::GET, &format!("{PREFIX}/account/whoami"), Some(token), None).await?;
        Ok(status == 200)
    }

    /// `room_id` of the joined room.
    pub async fn join(&mut self, token: &str, room: &str) -> Result<String> {
        let v = self
            .json(Method::POST, &format!("{PREFIX}/rooms/{}/join", seg(room)), Some(token), Some(&json!({})))
            .await?;
        str_field(&v, "room_id")
    }

    /// `seq` of the stored message.
    pub async fn send(&mut self, token: &str, room: &str, txn: &str, body: &str) -> Result<u64> {
        let v = self
            .json(
                Method::PUT,
                &format!("{PREFIX}/rooms/{}/send/{}", seg(room), seg(txn)),
                Some(token),
                Some(&json!({"body": body})),
            )
            .await?;
        v.get("seq").and_then(Value::as_u64).ok_or_else(|| anyhow!("send answer without seq: {v}"))
    }
}

/// The errcode body of a refusal (or a stand-in when the body is not one).
pub fn api_error(status: u16, bytes: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    ApiError {
        status,
        errcode: v.get("errcode").and_then(Value::as_str).unwrap_or("?").to_string(),
        error: v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
        retry_after_ms: v.get("retry_after_ms").and_then(Value::as_u64),
    }
}

pub fn str_field(v: &Value, k: &str) -> Result<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| anyhow!("answer lacks {k}: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each room's members alternate over the processes, so every process
    /// holds members of every room; HTTP stays on the first.
    #[tokio::test]
    async fn members_of_a_room_spread_over_the_processes() {
        let urls: Vec<String> = ["http://127.0.0.1:7001", "http://127.0.0.1:7002/", "http://127.0.0.1:7003"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let api = Api::parse_all(&urls).await.unwrap();
        assert_eq!(api.addr.port(), 7001);
        let ports: Vec<u16> = (0..6).map(|k| api.ws_target(k).0.port()).collect();
        assert_eq!(ports, [7001, 7002, 7003, 7001, 7002, 7003]);
        assert_eq!(api.ws_target(4).1, "127.0.0.1:7002");
        assert_eq!(api.process(2).addr.port(), 7003);
        assert!(Api::parse_all(&[]).await.is_err());
        let one = Api::parse("http://127.0.0.1:7001").await.unwrap();
        assert_eq!((0..3).map(|k| one.ws_target(k).0.port()).collect::<Vec<_>>(), [7001; 3]);
    }
}

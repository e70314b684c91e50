//! Raw-JSON clients for the client API: HTTP ([`Api`]) and WebSocket
//! ([`WsClient`], the `parlor.v1` subprotocol), plus small helpers for the
//! paths and names tests build.

use std::time::Duration;

/// A raw-JSON HTTP client for the client API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

/// The client API's path prefix.
pub const P: &str = "/_parlor/client/v1";

impl Api {
    pub fn new(base: &str) -> Self {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Api { base: base.to_owned(), client }
    }

    /// Sends raw bytes; returns (status, parsed JSON or Null).
    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
        let mut req = http::Request::builder().method(method).uri(format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
        let resp = self.client.request(req).await.expect("server answers");
        let status = resp.status().as_u16();
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON answer")
        };
        (status, v)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        self.raw(method, &format!("{P}{path}"), token, bytes).await
    }

    pub async fn register(&self, name: &str, password: &str) -> (u16, serde_json::Value) {
        self.call("POST", "/register", None, Some(serde_json::json!({"username": name, "password": password}))).await
    }

    /// Registers and logs in a fresh user; returns (user_id, token).
    pub async fn user(&self, name: &str) -> (String, String) {
        let (s, v) = self.register(name, "zebra-quartz-71").await;
        assert_eq!(s, 201, "register {name}: {v}");
        self.login(name).await
    }

    pub async fn login(&self, name: &str) -> (String, String) {
        let (s, v) = self
            .call("POST", "/login", None, Some(serde_json::json!({"username": name, "password": "zebra-quartz-71"})))
            .await;
        assert_eq!(s, 200, "login {name}: {v}");
        (v["user_id"].as_str().unwrap().to_owned(), v["access_token"].as_str().unwrap().to_owned())
    }

    pub async fn join(&self, token: &str, room: &str) -> serde_json::Value {
        let (s, v) = self.call("POST", &format!("/rooms/{}/join", enc(room)), Some(token), None).await;
        assert_eq!(s, 200, "join {room}: {v}");
        v
    }

    pub async fn send(&self, token: &str, room: &str, txn: &str, body: &str) -> (u16, serde_json::Value) {
        self.call(
            "PUT",
            &format!("/rooms/{}/send/{txn}", enc(room)),
            Some(token),
            Some(serde_json::json!({"body": body})),
        )
        .await
    }

    pub async fn messages(&self, token: &str, room: &str, query: &str) -> (u16, serde_json::Value) {
        self.call("GET", &format!("/rooms/{}/messages?{query}", enc(room)), Some(token), None).await
    }
}

/// URL-encodes a path segment.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A unique-enough suffix for names in one test run.
pub fn uniq(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 10000, N.fetch_add(1, Ordering::Relaxed))
}

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket test client speaking raw JSON frames, over plain TCP by
/// default or over any other stream (the TLS tests' own).
pub struct WsClient<S = tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    pub ws: tokio_tungstenite::WebSocketStream<S>,
    /// Whether `typing` and `presence` frames are returned. They come
    /// unprompted whenever users who share a room come and go, so by default
    /// they are skipped, as the spec tells a client that does not follow them.
    live: bool,
}

impl WsClient {
    /// Connects with the `parlor.v1` subprotocol and, if given, a bearer token header.
    pub async fn connect(base: &str, token: Option<&str>) -> Self {
        Self::connect_with(base, token, &[]).await.expect("websocket upgrade succeeds")
    }

    pub async fn connect_with(
        base: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}{P}/ws", base.replacen("http://", "ws://", 1));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", "parlor.v1".parse().unwrap());
        if let Some(t) = token {
            req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        for (k, v) in headers {
            req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(WsClient::over(ws))
    }

    /// Connects and authenticates with the header; waits for `ready`.
    pub async fn authed(base: &str, token: &str) -> Self {
        let mut c = Self::connect(base, Some(token)).await;
        let ready = c.recv().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        c
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> WsClient<S> {
    /// A client on an upgraded stream (`typing` and `presence` skipped).
    pub fn over(ws: tokio_tungstenite::WebSocketStream<S>) -> Self {
        WsClient { ws, live: false }
    }

    /// From now on `typing` and `presence` frames are returned too.
    pub fn follow_live(&mut self) {
        self.live = true;
    }

    /// Parses a text frame; None when it is one this client skips.
    fn frame(&self, text: &str) -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(text).expect("JSON frame");
        let skipped = !self.live && (v["type"] == "typing" || v["type"] == "presence");
        (!skipped).then_some(v)
    }

    pub async fn send(&mut self, frame: serde_json::Value) {
        use futures_util::SinkExt;
        self.ws.send(tokio_tungstenite::tungstenite::Message::text(frame.to_string())).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, msg: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        let _ = self.ws.send(msg).await;
    }

    /// The next JSON frame (panics after 10 s or on close).
    pub async fn recv(&mut self) -> serde_json::Value {
        match self.next().await {
            Next::Frame(v) => v,
            Next::Closed(code) => panic!("connection closed ({code:?}) while waiting for a frame"),
        }
    }

    /// The next JSON frame, or None when none came within `within` (for
    /// waits longer than [`WsClient::recv`]'s 10 s); panics on close.
    pub async fn recv_within(&mut self, within: Duration) -> Option<serde_json::Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => match self.frame(&t) {
                    Some(v) => return Some(v),
                    None => continue,
                },
                Some(Ok(Message::Close(f))) => panic!("connection closed ({f:?}) while waiting for a frame"),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => panic!("connection closed while waiting for a frame"),
            }
        }
    }

    /// The next JSON frame or the close code.
    pub async fn next(&mut self) -> Next {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("a frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => match self.frame(&t) {
                    Some(v) => return Next::Frame(v),
                    None => continue,
                },
                Some(Ok(Message::Close(f))) => return Next::Closed(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Next::Closed(None),
            }
        }
    }

    /// Reads frames until the connection closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Next::Closed(c) = self.next().await {
                return c;
            }
        }
    }

    /// The next `message` event (other frames skipped) within `within`; panics without one.
    pub async fn next_message(&mut self, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.recv_within(left).await.unwrap_or_else(|| panic!("no message event within {within:?}"));
            if f["type"] == "event" && f["event"]["type"] == "message" {
                return f["event"].clone();
            }
        }
    }

    /// Reads frames until one of type `ty` arrives; returns it and the frames before it.
    pub async fn until(&mut self, ty: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
        let mut before = Vec::new();
        loop {
            let f = self.recv().await;
            if f["type"] == ty {
                return (f, before);
            }
            before.push(f);
        }
    }
}

pub enum Next {
    Frame(serde_json::Value),
    Closed(Option<u16>),
}

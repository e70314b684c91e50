//! The suite's HTTP client: one fresh TCP connection per request (so one
//! case's broken request never poisons another's), every error answer checked
//! against `error.json` as it arrives, and a raw-socket path for requests a
//! well-behaved client library would refuse to send (partial bodies, slow
//! headers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::failure::{Failure, Result, clip};
use crate::schema::Schemas;

/// How long one ordinary request may take, end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of the client API.
pub const CLIENT: &str = "/_parlor/client/v1";

/// A request to build and send with [`Http::send`].
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Option<Bytes>,
    /// An error status here may carry another documented body (§10: `/healthz`
    /// answers 503 with `health_response.json`); the caller validates it.
    pub not_an_error_body: bool,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Request { method, path: path.into(), headers: Vec::new(), body: None, not_an_error_body: false }
    }
    /// See [`Request::not_an_error_body`].
    pub fn own_error_body(mut self) -> Self {
        self.not_an_error_body = true;
        self
    }
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }
    pub fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }
    /// `Authorization: Bearer <token>`.
    pub fn token(self, token: &str) -> Self {
        self.header(http::header::AUTHORIZATION, format!("Bearer {token}"))
    }
    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, value: &Value) -> Self {
        self.raw(value.to_string())
    }
    /// These exact bytes as the body, labelled as JSON.
    pub fn raw(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self.header(http::header::CONTENT_TYPE, "application/json")
    }
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An answer, read in full.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
    /// `METHOD path`, for failure messages.
    pub what: String,
    schemas: Arc<Schemas>,
}

impl Response {
    /// The JSON body, or a failure naming what the body was instead.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::Check(format!(
                "{}: answered {} with a body that is not JSON ({e}): {}",
                self.what,
                self.status,
                clip(&String::from_utf8_lossy(&self.body), 200)
            ))
        })
    }

    /// Expects `status` and a JSON body valid against `spec/schemas/<schema>.json`.
    pub fn ok(&self, status: u16, schema: &str) -> Result<Value> {
        if self.status != status {
            return Err(Failure::Check(format!(
                "{}: expected {status}, got {}: {}",
                self.what,
                self.status,
                clip(&String::from_utf8_lossy(&self.body), 300)
            )));
        }
        self.check_content_type()?;
        let v = self.json()?;
        self.schemas.check(schema, &self.what, &v)?;
        Ok(v)
    }

    /// Expects an error answer with this status and errcode.
    pub fn err(&self, status: u16, errcode: &str) -> Result<Value> {
        let v = self.error_body().map_err(|e| match e {
            Failure::Check(m) => Failure::Check(format!("expected {status} {errcode}; {m}")),
            other => other,
        })?;
        let got = v["errcode"].as_str().unwrap_or_default();
        if self.status != status || got != errcode {
            return Err(Failure::Check(format!(
                "{}: expected {status} {errcode}, got {} {got} ({})",
                self.what,
                self.status,
                v["error"].as_str().unwrap_or_default()
            )));
        }
        Ok(v)
    }

    /// The errcode of an error answer, if it is one.
    pub fn errcode(&self) -> Option<String> {
        if self.status < 400 {
            return None;
        }
        self.json().ok()?.get("errcode")?.as_str().map(str::to_owned)
    }

    /// The body of an error answer, validated against `error.json`.
    pub fn error_body(&self) -> Result<Value> {
        if self.status < 400 {
            return Err(Failure::Check(format!(
                "{}: expected an error, got {}: {}",
                self.what,
                self.status,
                clip(&String::from_utf8_lossy(&self.body), 300)
            )));
        }
        self.check_content_type()?;
        let v = self.json()?;
        self.schemas.check("error", &self.what, &v)?;
        Ok(v)
    }

    fn check_content_type(&self) -> Result<()> {
        let ct = self.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.trim_start().to_ascii_lowercase().starts_with("application/json") {
            return Err(Failure::Check(format!(
                "{}: Content-Type is {ct:?}, the spec says every body is application/json",
                self.what
            )));
        }
        Ok(())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The client for one server.
#[derive(Clone)]
pub struct Http {
    /// `host:port`, as in the `Host` header.
    pub authority: String,
    schemas: Arc<Schemas>,
}

impl Http {
    pub fn new(authority: String, schemas: Arc<Schemas>) -> Self {
        Http { authority, schemas }
    }

    pub fn schemas(&self) -> &Arc<Schemas> {
        &self.schemas
    }

    /// Sends `req` on a new connection and reads the whole answer. Every
    /// answer with an error status is checked against `error.json` here, so
    /// no case can forget to.
    pub async fn send(&self, req: Request) -> Result<Response> {
        let what = req.describe();
        let own_error_body = req.not_an_error_body;
        let started = Instant::now();
        let fut = self.exchange(req);
        let (status, headers, body) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| Failure::Timeout(REQUEST_TIMEOUT, format!("the answer to {what}")))??;
        let resp = Response { status, headers, body, elapsed: started.elapsed(), what, schemas: self.schemas.clone() };
        if resp.status >= 400 && !own_error_body {
            resp.error_body()?;
        }
        Ok(resp)
    }

    async fn exchange(&self, req: Request) -> Result<(u16, HeaderMap, Bytes)> {
        let what = req.describe();
        let transport = |e: &dyn std::fmt::Display| Failure::Transport(format!("{what}: {e}"));
        let stream = TcpStream::connect(&self.authority).await.map_err(|e| transport(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| transport(&e))?;
        tokio::spawn(async move {
            // The connection ends with the exchange; its error, if any, shows up in send_request.
            let _ = conn.await;
        });
        let mut builder = http::Request::builder().method(req.method.clone()).uri(&req.path);
        builder = builder.header(http::header::HOST, &self.authority);
        for (name, value) in &req.headers {
            let value = HeaderValue::from_str(value).map_err(|e| transport(&e))?;
            builder = builder.header(name, value);
        }
        let body = req.body.clone().unwrap_or_default();
        let request = builder.body(Full::new(body)).map_err(|e| transport(&e))?;
        let resp = sender.send_request(request).await.map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| transport(&e))?.to_bytes();
        Ok((status, headers, body))
    }

    /// Opens a raw TCP connection to the server, for byte-level requests.
    pub async fn raw_connect(&self) -> Result<TcpStream> {
        TcpStream::connect(&self.authority).await.map_err(|e| Failure::Transport(format!("connect: {e}")))
    }

    /// Reads from a raw connection until the peer closes it or `within`
    /// passes; returns what was read and whether the peer closed.
    pub async fn raw_read_until_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return (got, false),
                Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Writes `bytes` to a raw connection.
    pub async fn raw_write(stream: &mut TcpStream, bytes: &[u8]) -> Result<()> {
        stream.write_all(bytes).await.map_err(|e| Failure::Transport(format!("write: {e}")))
    }

    /// Parses a raw HTTP/1.1 answer (status, headers, `Content-Length` body)
    /// into a [`Response`], checking an error body against `error.json`.
    pub fn parse_raw(&self, what: &str, raw: &[u8], elapsed: Duration) -> Result<Response> {
        let text_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
            Failure::Check(format!("{what}: no complete HTTP answer: {}", clip(&String::from_utf8_lossy(raw), 200)))
        })?;
        let head = String::from_utf8_lossy(&raw[..text_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure::Check(format!("{what}: bad status line {status_line:?}")))?;
        let mut headers = HeaderMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':')
                && let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.trim().as_bytes()), HeaderValue::from_str(v.trim()))
            {
                headers.append(k, v);
            }
        }
        let mut body = raw[text_end + 4..].to_vec();
        if let Some(len) = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()) {
            body.truncate(len);
        }
        let resp = Response {
            status,
            headers,
            body: Bytes::from(body),
            elapsed,
            what: what.to_owned(),
            schemas: self.schemas.clone(),
        };
        if resp.status >= 400 {
            resp.error_body()?;
        }
        Ok(resp)
    }
}

/// Percent-encodes a path segment (`#lobby:b.example` → `%23lobby%3Ab.example`).
pub fn enc(segment: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SET).to_string()
}

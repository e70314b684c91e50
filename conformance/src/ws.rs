//! The suite's WebSocket client: connects with the `parlor.v1` subprotocol,
//! checks every frame it sends against `client_frame.json` (so a suite bug
//! cannot pass as a server bug) and every frame it receives against
//! `server_frame.json`, and reports close codes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::failure::{Failure, Result, clip};
use crate::http::CLIENT;
use crate::schema::Schemas;

/// How long the suite waits for an answer frame unless a case says otherwise.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

pub const SUBPROTOCOL: &str = "parlor.v1";

/// How to open a connection.
#[derive(Clone, Debug, Default)]
pub struct WsOptions {
    /// Sent as `Authorization: Bearer` on the upgrade.
    pub token: Option<String>,
    pub origin: Option<String>,
    /// A tiny receive buffer, so the server's unsent frames pile up on its
    /// side rather than in this machine's kernel (for slow-consumer cases).
    pub small_recv_buffer: bool,
}

/// What arrived.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame, parsed and valid against `server_frame.json`.
    Frame(Value),
    /// A close frame with its code (None: a close frame without a code).
    Closed(Option<u16>),
    /// The connection ended without a close frame.
    Dropped(String),
}

pub struct Ws {
    inner: WebSocketStream<TcpStream>,
    schemas: Arc<Schemas>,
    /// The subprotocol the server selected in its handshake answer.
    pub selected_protocol: Option<String>,
    closed: bool,
    /// Whether `typing` and `presence` frames are returned; by default they
    /// are skipped, as §8 tells a client that does not follow them to do
    /// (they come unprompted whenever users who share a room come and go).
    live: bool,
}

impl Ws {
    /// Upgrades a new connection; fails when the server refuses the upgrade.
    pub async fn connect(authority: &str, schemas: Arc<Schemas>, opts: &WsOptions) -> Result<Ws> {
        let transport = |e: &dyn std::fmt::Display| Failure::Transport(format!("WebSocket upgrade: {e}"));
        let addr = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| transport(&e))?
            .next()
            .ok_or_else(|| transport(&"no address"))?;
        let socket =
            if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| transport(&e))?;
        if opts.small_recv_buffer {
            socket.set_recv_buffer_size(4096).map_err(|e| transport(&e))?;
        }
        let stream = socket.connect(addr).await.map_err(|e| transport(&e))?;
        let mut req = format!("ws://{authority}{CLIENT}/ws").into_client_request().map_err(|e| transport(&e))?;
        let h = req.headers_mut();
        h.insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().expect("static header value"));
        if let Some(t) = &opts.token {
            h.insert("Authorization", format!("Bearer {t}").parse().map_err(|e| transport(&e))?);
        }
        if let Some(o) = &opts.origin {
            h.insert("Origin", o.parse().map_err(|e| transport(&e))?);
        }
        let handshake = tokio_tungstenite::client_async_with_config(req, stream, None);
        let (inner, resp) = match tokio::time::timeout(FRAME_WAIT, handshake).await {
            Err(_) => return Err(Failure::Timeout(FRAME_WAIT, "the WebSocket upgrade".into())),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                return Err(Failure::Check(format!(
                    "WebSocket upgrade refused with {}: {}",
                    resp.status(),
                    clip(&body, 200)
                )));
            }
            Ok(Err(e)) => return Err(transport(&e)),
            Ok(Ok(pair)) => pair,
        };
        let selected_protocol =
            resp.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Ws { inner, schemas, selected_protocol, closed: false, live: false })
    }

    /// From now on `next` returns `typing` and `presence` frames too.
    pub fn follow_live(&mut self) {
        self.live = true;
    }

    /// Sends a frame that the spec says a client may send (checked against
    /// `client_frame.json` first).
    pub async fn send(&mut self, frame: Value) -> Result<()> {
        self.schemas.check("client_frame", "the suite's own frame", &frame)?;
        self.send_text(frame.to_string()).await
    }

    /// Sends any text, valid or not (for bad-input cases).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.send_message(Message::text(text.into())).await
    }

    /// Sends a text frame whose payload is these bytes, UTF-8 or not.
    pub async fn send_raw_text(&mut self, payload: Vec<u8>) -> Result<()> {
        self.send_message(Message::Frame(Frame::message(Bytes::from(payload), OpCode::Data(Data::Text), true))).await
    }

    pub async fn send_message(&mut self, msg: Message) -> Result<()> {
        match tokio::time::timeout(FRAME_WAIT, self.inner.send(msg)).await {
            Err(_) => Err(Failure::Timeout(FRAME_WAIT, "a frame to be written".into())),
            Ok(Err(e)) => Err(Failure::Transport(format!("sending a frame: {e}"))),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The next frame or close, within `within`. A received text frame that
    /// is not JSON or not valid against `server_frame.json` fails here.
    pub async fn next(&mut self, within: Duration) -> Result<Incoming> {
        if self.closed {
            return Ok(Incoming::Dropped("already closed".into()));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => return Err(Failure::Timeout(within, "a frame from the server".into())),
                Ok(None) => {
                    self.closed = true;
                    return Ok(Incoming::Dropped("end of stream".into()));
                }
                Ok(Some(Err(e))) => {
                    self.closed = true;
                    return Ok(Incoming::Dropped(e.to_string()));
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).map_err(|e| {
                        Failure::Check(format!("server sent a text frame that is not JSON ({e}): {}", clip(&t, 200)))
                    })?;
                    self.schemas.check("server_frame", "a server frame", &v)?;
                    if !self.live && (v["type"] == "typing" || v["type"] == "presence") {
                        continue;
                    }
                    return Ok(Incoming::Frame(v));
                }
                Message::Binary(_) => {
                    return Err(Failure::Check(
                        "server sent a binary frame; the spec has only JSON text frames".into(),
                    ));
                }
                Message::Close(frame) => {
                    self.closed = true;
                    return Ok(Incoming::Closed(frame.map(|f| u16::from(f.code))));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// The next frame, which must have this `type`.
    pub async fn expect(&mut self, ty: &str) -> Result<Value> {
        self.expect_within(ty, FRAME_WAIT).await
    }

    pub async fn expect_within(&mut self, ty: &str, within: Duration) -> Result<Value> {
        match self.next(within).await.map_err(|e| waiting_for(e, ty))? {
            Incoming::Frame(v) if v["type"] == ty => Ok(v),
            Incoming::Frame(v) => {
                Err(Failure::Check(format!("expected a `{ty}` frame, got {}", clip(&v.to_string(), 300))))
            }
            Incoming::Closed(code) => {
                Err(Failure::Check(format!("expected a `{ty}` frame, the server closed with {code:?}")))
            }
            Incoming::Dropped(why) => {
                Err(Failure::Check(format!("expected a `{ty}` frame, the connection dropped: {why}")))
            }
        }
    }

    /// The next frame must be `error` with this errcode, echoing `id`.
    pub async fn expect_error(&mut self, errcode: &str, id: Option<&str>) -> Result<Value> {
        let v = self.expect("error").await.map_err(|e| match e {
            Failure::Check(m) => Failure::Check(format!("wanted error {errcode}: {m}")),
            other => other,
        })?;
        if v["errcode"] != errcode {
            return Err(Failure::Check(format!("expected error {errcode}, got {}", clip(&v.to_string(), 300))));
        }
        if let Some(id) = id
            && v["id"] != id
        {
            return Err(Failure::Check(format!("error frame does not echo id {id:?}: {v}")));
        }
        Ok(v)
    }

    /// Sends `frame` with `id` added and expects the answer of type `ty`
    /// echoing that id.
    pub async fn call(&mut self, mut frame: Value, id: &str, ty: &str) -> Result<Value> {
        frame["id"] = json!(id);
        self.send(frame).await?;
        let v = self.expect(ty).await?;
        if v["id"] != id {
            return Err(Failure::Check(format!("`{ty}` does not echo the frame's id {id:?}: {v}")));
        }
        Ok(v)
    }

    /// Reads (and drops) frames until the server closes; returns the close
    /// code, or fails if the connection drops without a close frame or stays
    /// open past `within`.
    pub async fn expect_close(&mut self, within: Duration) -> Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Err(Failure::Timeout(..)) => {
                    return Err(Failure::Check(format!("the server did not close the connection within {within:?}")));
                }
                Err(e) => return Err(e),
                Ok(Incoming::Frame(_)) => continue,
                Ok(Incoming::Closed(code)) => return Ok(code),
                Ok(Incoming::Dropped(why)) => {
                    return Err(Failure::Check(format!("the connection ended without a close frame: {why}")));
                }
            }
        }
    }

    /// Expects a close with exactly `code`.
    pub async fn expect_close_code(&mut self, code: u16, within: Duration) -> Result<()> {
        match self.expect_close(within).await? {
            Some(c) if c == code => Ok(()),
            other => Err(Failure::Check(format!("expected close {code}, got {other:?}"))),
        }
    }

    /// Without reading a frame (so without answering pings), waits until
    /// the bytes the server sent end in a close frame; returns the server's
    /// frames as (opcode, payload), close last. Polls the socket's receive
    /// queue with `peek`, which takes nothing from it.
    pub async fn peek_until_close(&mut self, within: Duration) -> Result<Vec<(u8, Vec<u8>)>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::time::timeout_at(deadline, self.inner.get_ref().peek(&mut buf)).await {
                Err(_) => return Err(Failure::Check(format!("no close frame from the server within {within:?}"))),
                Ok(Err(e)) => return Err(Failure::Transport(format!("peeking at the socket: {e}"))),
                Ok(Ok(n)) => n,
            };
            let frames = server_frames(&buf[..n])?;
            if frames.last().is_some_and(|f| f.0 == 0x8) {
                return Ok(frames);
            }
            if n == 0 {
                return Err(Failure::Check("the connection ended without a close frame".into()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure::Check(format!("no close frame from the server within {within:?}")));
            }
            // The queue holds only part of what is coming: look again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes politely (errors ignored: the case is over).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.close(None)).await;
    }
}

/// The complete frames at the start of `bytes` sent by a server (unmasked,
/// as RFC 6455 requires of it), as (opcode, payload).
fn server_frames(mut bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        if bytes[1] & 0x80 != 0 {
            return Err(Failure::Check("the server sent a masked frame".into()));
        }
        let (len, at) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize, 10),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if bytes.len() < at + len {
            break;
        }
        out.push((bytes[0] & 0x0F, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    Ok(out)
}

fn waiting_for(e: Failure, ty: &str) -> Failure {
    match e {
        Failure::Timeout(d, _) => Failure::Timeout(d, format!("a `{ty}` frame")),
        other => other,
    }
}

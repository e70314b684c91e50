//! A minimal RFC 6455 WebSocket client for the benchmark's hot path.
//!
//! It owns the upgrade handshake and decodes frames straight out of one
//! reusable read buffer; the framing itself (headers, masking, the accept
//! key) is the `wsframe` crate, the same code the server runs. A general
//! library would allocate a message per frame and validate UTF-8 we never
//! look at; here a text frame is handed to the caller as a borrowed slice of
//! the read buffer, stamped with the time its read() returned, so the tool
//! stays much cheaper than the server it measures.
//!
//! The connection is split in two: [`WsShared`] (the socket and the queue of
//! bytes not yet written, shared through `Rc` so a pacer can write a `send`
//! frame without waking the connection's task) and [`WsReader`] (owned by
//! the one task that reads). Everything runs on one thread.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use wsframe::{OpCode, Role, encode_masked, parse_header};

use crate::clock::now_ns;

/// Frames larger than this are refused: the protocol caps messages at 64 KiB,
/// so anything much larger means the stream is corrupt.
const MAX_FRAME: u64 = 1 << 24;

/// The socket and its not-yet-written bytes, shared by the reading task and
/// whoever sends (the pacer, or another member's ack handler). Sends write
/// straight to the socket; only what it does not take waits in `pending`.
pub struct WsShared {
    stream: TcpStream,
    pending: RefCell<Vec<u8>>,
    /// A task is already waiting for the socket to drain `pending`.
    flushing: Cell<bool>,
    dead: Cell<bool>,
    mask: Cell<u64>,
}

thread_local! {
    /// Reads that returned data, and text messages decoded, on this thread:
    /// their ratio shows whether the server coalesces frames into one write.
    static READS: Cell<u64> = const { Cell::new(0) };
    static MESSAGES: Cell<u64> = const { Cell::new(0) };
}

/// (reads that returned data, text messages decoded) so far on this thread.
pub fn io_counts() -> (u64, u64) {
    (READS.with(Cell::get), MESSAGES.with(Cell::get))
}

/// What one call to [`WsReader::read_frames`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Some bytes were read (maybe no complete frame yet); call again.
    Data,
    /// The server closed: a close frame (with its code, if any) or EOF (`None`).
    Closed(Option<u16>),
}

/// The reading half: one buffer, frames decoded in place.
pub struct WsReader {
    shared: Rc<WsShared>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented text message being reassembled (rare: servers seldom fragment).
    frag: Vec<u8>,
    in_frag: bool,
    /// Frame bytes that arrived with the upgrade answer and were not decoded yet.
    undecoded: bool,
}

/// Open a WebSocket to `path` on `addr`, offering the `parlor.v1` subprotocol
/// and, when given, authenticating with `Authorization: Bearer`.
///
/// `buf_cap` is the initial read buffer; it grows when a frame needs more.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
    token: Option<&str>,
    buf_cap: usize,
) -> Result<(Rc<WsShared>, WsReader)> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let mut key_raw = [0u8; 16];
    fill_random(&mut key_raw);
    let key = base64::engine::general_purpose::STANDARD.encode(key_raw);
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parlor.v1\r\n"
    );
    if let Some(t) = token {
        req.push_str("Authorization: Bearer ");
        req.push_str(t);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;

    let mut buf = vec![0u8; buf_cap.max(1024)];
    let mut end = 0;
    let head_len = loop {
        if let Some(i) = find(&buf[..end], b"\r\n\r\n") {
            break i + 4;
        }
        if end == buf.len() {
            if buf.len() >= 64 * 1024 {
                bail!("upgrade answer headers exceed 64 KiB");
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            bail!("server closed during the WebSocket upgrade");
        }
        end += n;
    };
    let head = std::str::from_utf8(&buf[..head_len]).context("upgrade answer is not UTF-8")?;
    let status_line = head.lines().next().unwrap_or("");
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status != 101 {
        // Read a little of the body so the error says why (e.g. unknown_token).
        let mut body = String::from_utf8_lossy(&buf[head_len..end]).into_owned();
        if body.is_empty() {
            let mut more = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(500), stream.read(&mut more)).await
            {
                body = String::from_utf8_lossy(&more[..n]).into_owned();
            }
        }
        bail!("WebSocket upgrade refused: {status_line}: {}", body.trim());
    }
    let expected = accept_key(&key);
    let accept =
        header(head, "sec-websocket-accept").ok_or_else(|| anyhow!("upgrade answer lacks Sec-WebSocket-Accept"))?;
    if accept != expected {
        bail!("bad Sec-WebSocket-Accept {accept:?}, expected {expected:?}");
    }
    match header(head, "sec-websocket-protocol") {
        Some("parlor.v1") => {}
        other => bail!("server chose subprotocol {other:?}, expected parlor.v1"),
    }
    let mut seed = [0u8; 8];
    fill_random(&mut seed);
    let shared = Rc::new(WsShared {
        stream,
        pending: RefCell::new(Vec::new()),
        flushing: Cell::new(false),
        dead: Cell::new(false),
        mask: Cell::new(u64::from_le_bytes(seed) | 1),
    });
    let reader = WsReader {
        shared: shared.clone(),
        buf,
        start: head_len,
        end,
        frag: Vec::new(),
        in_frag: false,
        undecoded: end > head_len,
    };
    Ok((shared, reader))
}

/// `Sec-WebSocket-Accept` for a given key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    wsframe::accept_key(key.as_bytes())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl WsShared {
    /// Queue a text frame and write it at once if nothing is queued ahead of
    /// it. Never blocks: what the socket does not take now is written by the
    /// reading task when the socket becomes writable.
    pub fn send_text(self: &Rc<Self>, payload: &[u8]) -> io::Result<()> {
        self.send_frame(OpCode::Text, payload)
    }

    fn send_frame(self: &Rc<Self>, op: OpCode, payload: &[u8]) -> io::Result<()> {
        if self.dead.get() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut pending = self.pending.borrow_mut();
        let was_empty = pending.is_empty();
        encode_masked(&mut pending, op, payload, self.next_mask());
        if was_empty {
            match self.stream.try_write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.dead.set(true);
                    return Err(e);
                }
            }
        }
        if !pending.is_empty() && !self.flushing.replace(true) {
            // Rare (the socket buffer is full): a one-off task waits for room,
            // so the reading loop never has to watch for writability.
            let me = self.clone();
            tokio::task::spawn_local(async move {
                while me.pending_bytes() > 0 && !me.dead.get() {
                    if me.stream.writable().await.is_err() || me.flush().is_err() {
                        me.dead.set(true);
                    }
                }
                me.flushing.set(false);
            });
        }
        Ok(())
    }

    /// Write as much of the queue as the socket takes now.
    fn flush(&self) -> io::Result<()> {
        let mut pending = self.pending.borrow_mut();
        while !pending.is_empty() {
            match self.stream.try_write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.dead.set(true);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Bytes queued and not yet taken by the socket.
    pub fn pending_bytes(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Whether a write already failed (the server is gone).
    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    fn next_mask(&self) -> [u8; 4] {
        // xorshift64: masks only need to be unpredictable to proxies, not secret.
        let mut x = self.mask.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask.set(x);
        (x as u32).to_le_bytes()
    }
}

impl WsReader {
    /// The shared half of this connection.
    pub fn shared(&self) -> &Rc<WsShared> {
        &self.shared
    }

    /// Wait until the socket has data, read once, and hand every complete text
    /// message to `on_text(payload, arrival_ns)`; answers pings. Cancel-safe:
    /// it only awaits readiness.
    pub async fn read_frames(&mut self, on_text: &mut dyn FnMut(&[u8], u64)) -> Result<ReadOutcome> {
        if std::mem::take(&mut self.undecoded) {
            if let Some(code) = self.decode(now_ns(), on_text)? {
                return Ok(ReadOutcome::Closed(code));
            }
            return Ok(ReadOutcome::Data);
        }
        loop {
            let ready = self.shared.stream.ready(Interest::READABLE).await?;
            if !ready.is_readable() && !ready.is_read_closed() {
                continue;
            }
            self.make_room(4096);
            match self.shared.stream.try_read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(ReadOutcome::Closed(None)),
                Ok(n) => {
                    self.end += n;
                    READS.with(|r| r.set(r.get() + 1));
                    let now = now_ns();
                    if let Some(code) = self.decode(now, on_text)? {
                        return Ok(ReadOutcome::Closed(code));
                    }
                    return Ok(ReadOutcome::Data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                    return Ok(ReadOutcome::Closed(None));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Decode every complete frame in the buffer. Returns `Some(code)` on a close frame.
    fn decode(&mut self, now: u64, on_text: &mut dyn FnMut(&[u8], u64)) -> Result<Option<Option<u16>>> {
        let mut closed = None;
        loop {
            let avail = &self.buf[self.start..self.end];
            let Some(h) = parse_header(avail, Role::Client)? else {
                break;
            };
            if h.payload_len > MAX_FRAME {
                bail!("WebSocket frame of {} bytes", h.payload_len);
            }
            let (op, fin, hdr, len) = (h.opcode, h.fin, h.len, h.payload_len as usize);
            if avail.len() < hdr + len {
                // Make sure the whole frame will fit once it has arrived.
                self.make_room(hdr + len - avail.len());
                break;
            }
            let p0 = self.start + hdr;
            let p1 = p0 + len;
            self.start = p1;
            match op {
                OpCode::Text | OpCode::Binary if fin && !self.in_frag => {
                    if op == OpCode::Text {
                        MESSAGES.with(|m| m.set(m.get() + 1));
                        on_text(&self.buf[p0..p1], now);
                    }
                }
                OpCode::Text | OpCode::Binary => {
                    if self.in_frag {
                        bail!("new data frame inside a fragmented message");
                    }
                    self.in_frag = true;
                    self.frag.clear();
                    self.frag.extend_from_slice(&self.buf[p0..p1]);
                }
                OpCode::Continuation => {
                    if !self.in_frag {
                        bail!("continuation frame without a message");
                    }
                    self.frag.extend_from_slice(&self.buf[p0..p1]);
                    if fin {
                        self.in_frag = false;
                        MESSAGES.with(|m| m.set(m.get() + 1));
                        on_text(&self.frag, now);
                    }
                }
                OpCode::Ping => {
                    let payload = self.buf[p0..p1].to_vec();
                    // A dead socket will show up as EOF on the next read.
                    let _ = self.shared.send_frame(OpCode::Pong, &payload);
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let code = (len >= 2).then(|| u16::from_be_bytes([self.buf[p0], self.buf[p0 + 1]]));
                    closed = Some(code);
                    break;
                }
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(closed)
    }

    /// Ensure at least `want` free bytes after `end`, compacting first and
    /// growing only when a frame is larger than the buffer.
    fn make_room(&mut self, want: usize) {
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            let need = (self.end + want).next_power_of_two();
            self.buf.resize(need, 0);
        }
    }
}

/// Random bytes for keys and mask seeds: not cryptographic, only unpredictable enough.
fn fill_random(out: &mut [u8]) {
    thread_local!(static STATE: Cell<u64> = Cell::new(now_ns() ^ ((std::process::id() as u64) << 32) | 1));
    STATE.with(|s| {
        for b in out.iter_mut() {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            *b = (x >> 24) as u8;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsframe::apply_mask;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_masked_send_decodes_as_the_server_would() {
        let mut out = Vec::new();
        encode_masked(&mut out, OpCode::Text, b"hello", [1, 2, 3, 4]);
        let h = parse_header(&out, Role::Server).unwrap().unwrap();
        assert_eq!((h.opcode, h.fin, h.mask, h.payload_len), (OpCode::Text, true, Some([1, 2, 3, 4]), 5));
        let mut body = out[h.len..].to_vec();
        apply_mask(&mut body, [1, 2, 3, 4], 0);
        assert_eq!(body, b"hello");
        // Server frames come unmasked; a masked one is a protocol error here.
        assert!(parse_header(&out, Role::Client).is_err());
    }
}

//! One client connection, below both wires: its places under the
//! server-wide and per-address connection caps ([`ConnCaps`], [`ConnSlot`]),
//! the client address behind a trusted proxy ([`client_address`]), the
//! socket as hyper sees it ([`ConnIo`] over plain TCP or TLS,
//! [`Transport`]: a stalled write times out, and hyper's own body-less
//! refusals are replaced by answers with the spec's error body), and what
//! its answers may hold in memory while the client does not read
//! ([`ResponseBudget`], [`ConnState`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Response, StatusCode};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The key the per-address cap counts a connection under: the TCP peer's
/// IPv4 address, or the /64 network of an IPv6 one (one host usually holds
/// a whole /64, so counting /128s would not cap anyone). This is the one
/// place that decides it. A trusted proxy is not counted under any key (see
/// [`ConnCaps::admit_proxy`]): it carries many clients' connections.
pub fn address_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Whether `addr` is in one of the `trusted` proxy ranges.
pub fn is_trusted(addr: IpAddr, trusted: &[IpNet]) -> bool {
    let addr = canonical(addr);
    trusted.iter().any(|net| net.contains(&addr))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`192.0.2.7:5000`,
/// `[2001:db8::1]:5000`), as proxies write them.
fn forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(canonical)
}

/// The address a request comes from: the TCP peer, unless the peer is a
/// trusted proxy. Then it is the rightmost `X-Forwarded-For` entry that is
/// not itself a trusted proxy (each proxy appends the address it got the
/// request from, so entries left of the first untrusted one were written by
/// the client and prove nothing). When every entry is trusted, the leftmost
/// one; when an entry is not an address, the last trusted hop before it.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let entries: Vec<&str> =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(addr) = forwarded_entry(entry) else { break };
        client = addr;
        if !is_trusted(addr, trusted) {
            break;
        }
    }
    client
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server holds `--max-connections` connections already.
    ServerFull,
    /// This address holds `--max-connections-per-address` connections already.
    AddressFull,
}

/// The connection caps: one server-wide, one per address key.
pub struct ConnCaps {
    global: Arc<Semaphore>,
    per_address: Arc<AddressCaps>,
}

impl ConnCaps {
    pub fn new(max: usize, max_per_address: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(max)),
            per_address: Arc::new(AddressCaps { max: max_per_address, open: Mutex::new(HashMap::new()) }),
        }
    }

    /// A place for a new connection under `key` (see [`address_key`]). The
    /// address is checked first, so that one address at its cap does not
    /// also take server-wide places from others while it is refused.
    pub fn admit(&self, key: IpAddr) -> Result<ConnSlot, Refused> {
        let address = self.per_address.try_acquire(key).ok_or(Refused::AddressFull)?;
        let global = self.global.clone().try_acquire_owned().map_err(|_| Refused::ServerFull)?;
        Ok(ConnSlot { _global: global, _address: Some(address) })
    }

    /// A place for a connection from a trusted proxy: under the server-wide
    /// cap only. A proxy carries the connections of many clients, which the
    /// per-address cap cannot tell apart (their rate limits still can: they
    /// are keyed by the forwarded address); the proxy caps them itself.
    pub fn admit_proxy(&self) -> Result<ConnSlot, Refused> {
        let global = self.global.clone().try_acquire_owned().map_err(|_| Refused::ServerFull)?;
        Ok(ConnSlot { _global: global, _address: None })
    }

    /// Connections open under `key` now.
    pub fn open_under(&self, key: IpAddr) -> usize {
        self.per_address.open.lock().expect("address caps lock").get(&key).copied().unwrap_or(0)
    }
}

/// Open connections per address key. The map holds only keys with open
/// connections, so it is bounded by the connection cap.
struct AddressCaps {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCaps {
    fn try_acquire(self: &Arc<Self>, key: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().expect("address caps lock");
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { caps: self.clone(), key })
    }
}

struct AddressSlot {
    caps: Arc<AddressCaps>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().expect("address caps lock");
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A connection's places under both caps, given back when it is dropped; an
/// upgraded WebSocket keeps it until it closes.
pub struct ConnSlot {
    _global: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
}

/// The bytes of answers, server-wide, that wait in this process for clients
/// to read them. History pages take from it and are cut shorter when it is
/// spent (spec §4), so slow readers cannot make the server hold more than
/// this however many of them there are.
pub struct ResponseBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ResponseBudget {
    pub fn new(limit: usize) -> Self {
        Self { limit, used: AtomicUsize::new(0) }
    }

    /// Takes up to `want` bytes, as many as are free (maybe none).
    fn reserve(&self, want: usize) -> usize {
        let mut taken = 0;
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            taken = want.min(self.limit.saturating_sub(used));
            Some(used + taken)
        });
        taken
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Bytes taken now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What one connection's handlers share with its socket: the answer bytes it
/// holds under the [`ResponseBudget`] until the socket has taken them.
pub struct ConnState {
    budget: Arc<ResponseBudget>,
    owed: AtomicUsize,
}

impl ConnState {
    pub fn new(budget: Arc<ResponseBudget>) -> Arc<Self> {
        Arc::new(Self { budget, owed: AtomicUsize::new(0) })
    }

    /// Reserves room for an answer of up to `want` bytes; returns how many
    /// the budget has free (maybe 0). Follow with [`ConnState::settle`].
    pub fn reserve(&self, want: usize) -> usize {
        self.budget.reserve(want)
    }

    /// The answer built within a reservation of `reserved` bytes is `len`
    /// bytes long: those stay counted until the socket takes them (an answer
    /// may exceed its reservation, e.g. a page of one large event).
    pub fn settle(&self, reserved: usize, len: usize) {
        if len <= reserved {
            self.budget.release(reserved - len);
        } else {
            self.budget.used.fetch_add(len - reserved, Ordering::AcqRel);
        }
        self.owed.fetch_add(len, Ordering::AcqRel);
    }

    /// The socket took `n` bytes. They are counted against what is owed
    /// whatever answer they belong to (headers included): close enough, as
    /// one connection writes one answer at a time.
    fn wrote(&self, n: usize) {
        let mut paid = 0;
        let _ = self.owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
            paid = owed.min(n);
            Some(owed - paid)
        });
        self.budget.release(paid);
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.budget.release(*self.owed.get_mut());
    }
}

/// Turns the status of a refusal hyper wrote by itself (a request it could
/// not parse, answered with an empty body) into the full answer to send
/// instead, or `None` to leave hyper's. The wire above provides it.
pub type OwnRefusal = fn(StatusCode) -> Option<Response<Bytes>>;

/// Told of each refusal hyper wrote by itself on a connection from the
/// given peer (so it gets its access line and is counted like any answer).
pub type RefusalSeen = Arc<dyn Fn(SocketAddr, StatusCode) + Send + Sync>;

/// A client's byte stream: plain TCP, or TLS over TCP.
pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A client's stream ([`Transport`]) as hyper sees it.
///
/// - A write that the socket cannot take starts a clock: unless hyper's
///   buffer is drained (it flushes) within `write_timeout`, the write fails
///   and the connection ends, so a client that stops reading cannot pin its
///   answer in memory. A trickle of reads does not restart the clock.
/// - hyper answers a request head it cannot parse (400, 414, 431) with an
///   empty body and closes; those answers are recognised here, at the end of
///   what hyper writes, and replaced by [`OwnRefusal`]'s.
/// - Bytes written pay back what the connection owes its [`ResponseBudget`].
///
/// The WebSocket takes the stream back out with [`ConnIo::into_transport`].
pub struct ConnIo {
    stream: Transport,
    state: Arc<ConnState>,
    write_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    own_refusal: OwnRefusal,
    seen: Option<(SocketAddr, RefusalSeen)>,
    /// What is left to write of a replacement answer.
    replacement: Bytes,
}

impl ConnIo {
    pub fn new(stream: Transport, state: Arc<ConnState>, write_timeout: Duration, own_refusal: OwnRefusal) -> Self {
        Self { stream, state, write_timeout, stall: None, own_refusal, seen: None, replacement: Bytes::new() }
    }

    /// Tells `seen` of every refusal hyper writes by itself to `peer`.
    pub fn with_refusals_seen(mut self, peer: SocketAddr, seen: RefusalSeen) -> Self {
        self.seen = Some((peer, seen));
        self
    }

    /// The stream, for a connection that is no longer HTTP.
    pub fn into_transport(self) -> Transport {
        self.stream
    }

    /// Called when the socket cannot take more: starts the clock, or fails
    /// once it ran out.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.write_timeout;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client did not read the answer within {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_counted(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.state.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_stall(cx),
        }
    }

    /// Writes what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.replacement.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.replacement) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.replacement.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    ready!(self.poll_stall(cx))?;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// `buf` is everything hyper has left to write: when it ends with one of
    /// hyper's own refusals, what comes before it is written first, then the
    /// replacement is queued in its place.
    fn poll_write_checked(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if let Some((at, head)) = hypers_refusal(buf)
            && let Some(answer) = (self.own_refusal)(head.status)
        {
            if at > 0 {
                return self.poll_write_counted(cx, &buf[..at]);
            }
            if let Some((peer, seen)) = &self.seen {
                seen(*peer, head.status);
            }
            self.replacement = render(answer, head.date);
            // Written by poll_flush if the socket cannot take it now.
            if let Poll::Ready(Err(e)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        self.poll_write_counted(cx, buf)
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_checked(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper writes its own refusal alone (nothing is queued behind a
        // request it could not parse), so only the last buffer can end one;
        // that rare case is flattened and handled as a plain write.
        let last = bufs.iter().rev().find(|b| !b.is_empty());
        if last.is_some_and(|b| hypers_refusal(b).is_some()) {
            let flat: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            return self.poll_write_checked(cx, &flat);
        }
        ready!(self.poll_replacement(cx))?;
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                self.state.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_stall(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        // TLS holds encrypted bytes until the socket takes them: a client
        // that stops reading stalls the flush, on the same clock as a write.
        if Pin::new(&mut self.stream).poll_flush(cx)?.is_pending() {
            ready!(self.poll_stall(cx))?;
        }
        // hyper flushes only once its buffer is empty: the client took
        // everything written so far, so the clock stops.
        self.stall = None;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response head hyper wrote by itself.
#[derive(Debug, PartialEq, Eq)]
struct OwnHead<'a> {
    status: StatusCode,
    date: Option<&'a str>,
}

/// Whether `buf` ends with a refusal that hyper wrote by itself, and where
/// it starts: `HTTP/1.1 4xx|5xx …` with no header but `connection`,
/// `content-length: 0` and `date`. Every answer of Parlor's own has a
/// `content-type` (or is a 101/204, which are not refusals), and no body of
/// its own ends in a blank line (JSON escapes line breaks), so only hyper's
/// match.
fn hypers_refusal(buf: &[u8]) -> Option<(usize, OwnHead<'_>)> {
    const START: &[u8] = b"HTTP/1.1 ";
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    // hyper's refusal heads are about 110 bytes; look no further back.
    let from = buf.len().saturating_sub(256);
    let at = from + buf[from..].windows(START.len()).rposition(|w| w == START)?;
    let head = std::str::from_utf8(&buf[at..buf.len() - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let status = StatusCode::from_bytes(status.as_bytes()).ok()?;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let (mut empty_body, mut date) = (false, None);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match (name.to_ascii_lowercase().as_str(), value.trim()) {
            ("content-length", "0") => empty_body = true,
            ("date", v) => date = Some(v),
            ("connection", _) => {}
            _ => return None,
        }
    }
    empty_body.then_some((at, OwnHead { status, date }))
}

/// An answer as HTTP/1.1 bytes, closing the connection as hyper's would.
fn render(answer: Response<Bytes>, date: Option<&str>) -> Bytes {
    let (parts, body) = answer.into_parts();
    let mut out =
        format!("HTTP/1.1 {} {}\r\n", parts.status.as_str(), parts.status.canonical_reason().unwrap_or("Error"))
            .into_bytes();
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH && name != http::header::CONNECTION {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(date) = date {
        out.extend_from_slice(format!("date: {date}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("connection: close\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_400: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 11:33:44 GMT\r\n\r\n";

    #[test]
    fn recognises_hypers_own_refusals_only() {
        let (at, head) = hypers_refusal(HYPER_400).unwrap();
        assert_eq!((at, head.status, head.date), (0, StatusCode::BAD_REQUEST, Some("Thu, 03 Dec 2026 11:33:44 GMT")));
        // After a pipelined answer of our own.
        let ours = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let both = [&ours[..], HYPER_400].concat();
        assert_eq!(hypers_refusal(&both).unwrap().0, ours.len());
        // Answers of our own never match: they have a content-type, or are not refusals.
        for not in [
            &ours[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n",
            &HYPER_400[..HYPER_400.len() - 2],
        ] {
            assert_eq!(hypers_refusal(not), None, "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn replacement_keeps_the_date_and_closes() {
        let answer = Response::builder()
            .status(431)
            .header("content-type", "application/json")
            .body(Bytes::from_static(b"{\"errcode\":\"x\"}"))
            .unwrap();
        let out = render(answer, Some("Thu, 03 Dec 2026 11:33:44 GMT"));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text}");
        assert!(text.contains("\r\ndate: Thu, 03 Dec 2026 11:33:44 GMT\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\ncontent-length: 15\r\n\r\n{\"errcode\":\"x\"}"), "{text}");
    }

    #[test]
    fn address_keys_group_an_ipv6_host() {
        let k = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(k("192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
    }

    #[test]
    fn client_address_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8:ffff::/48".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        let at = |peer: &str, xff: &[&str]| client_address(ip(peer), &with(xff), &trusted);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(at("192.0.2.9", &["198.51.100.1"]), ip("192.0.2.9"));
        // A trusted proxy: the address it got the request from.
        assert_eq!(at("10.0.0.1", &["198.51.100.1"]), ip("198.51.100.1"));
        // The rightmost untrusted entry; what the client wrote left of it is ignored.
        assert_eq!(at("10.0.0.1", &["6.6.6.6, 198.51.100.1, 10.1.1.1"]), ip("198.51.100.1"));
        assert_eq!(at("10.0.0.1", &["6.6.6.6", "198.51.100.1", "10.1.1.1"]), ip("198.51.100.1"), "several fields");
        // Ports and brackets as some proxies write them; mapped IPv4 as IPv4.
        assert_eq!(at("10.0.0.1", &["198.51.100.1:4711"]), ip("198.51.100.1"));
        assert_eq!(at("10.0.0.1", &["[2001:db8::7]:4711"]), ip("2001:db8::7"));
        assert_eq!(at("::ffff:10.0.0.1", &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(at("2001:db8:ffff::1", &["2001:db8::7"]), ip("2001:db8::7"));
        // Nothing forwarded: the proxy itself. All trusted: the leftmost.
        assert_eq!(at("10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(at("10.0.0.1", &["10.2.2.2, 10.3.3.3"]), ip("10.2.2.2"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(at("10.0.0.1", &["198.51.100.1, unknown"]), ip("10.0.0.1"));
        assert_eq!(at("10.0.0.1", &["unknown, 10.3.3.3"]), ip("10.3.3.3"));
        // No trusted proxies: never read.
        assert_eq!(client_address(ip("10.0.0.1"), &with(&["198.51.100.1"]), &[]), ip("10.0.0.1"));
    }

    #[test]
    fn a_proxy_takes_only_a_server_wide_place() {
        let caps = ConnCaps::new(3, 1);
        let key = address_key("10.0.0.1".parse().unwrap());
        let _p1 = caps.admit_proxy().unwrap();
        let _p2 = caps.admit_proxy().unwrap();
        assert_eq!(caps.open_under(key), 0, "not counted under its address");
        let _c = caps.admit(key).unwrap();
        assert_eq!(caps.admit_proxy().err(), Some(Refused::ServerFull));
    }

    #[test]
    fn caps_per_address_and_in_all() {
        let caps = ConnCaps::new(3, 2);
        let (a, b) = (address_key("192.0.2.1".parse().unwrap()), address_key("192.0.2.2".parse().unwrap()));
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).err(), Some(Refused::AddressFull));
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).err(), Some(Refused::ServerFull));
        // A refusal took nothing: the address count is back where it was.
        assert_eq!(caps.open_under(b), 1);
        drop(a1);
        assert_eq!(caps.open_under(a), 1);
        caps.admit(b).unwrap();
    }

    #[test]
    fn budget_is_paid_back_as_the_socket_takes_bytes() {
        let budget = Arc::new(ResponseBudget::new(100));
        let conn = ConnState::new(budget.clone());
        let r = conn.reserve(80);
        assert_eq!(r, 80);
        conn.settle(r, 60);
        assert_eq!(budget.in_use(), 60);
        assert_eq!(conn.reserve(80), 40, "only what is free");
        conn.settle(40, 0);
        conn.wrote(50);
        assert_eq!(budget.in_use(), 10);
        conn.wrote(50);
        assert_eq!(budget.in_use(), 0, "never pays back more than it owes");
        conn.settle(conn.reserve(10), 30);
        assert_eq!(budget.in_use(), 30, "an answer may exceed its reservation");
        drop(conn);
        assert_eq!(budget.in_use(), 0, "a closed connection owes nothing");
    }
}

//! One WebSocket's transport, below the Parlor protocol: a read buffer
//! feeding the RFC 6455 decoder ([`wsframe`]), the connection-level half of
//! the protocol (pings answered, the close handshake, a violation failing
//! the connection with its code), and one bounded outbound queue that every
//! byte to the peer goes through — answers, events, pongs, pings, close
//! frames. A frame in the queue is a header built here and a payload that is
//! often shared: the hub encodes an event's JSON once per room, and each
//! connection only adds its 2–10 byte header when it writes, several frames
//! per vectored write.
//!
//! It runs over any `AsyncRead + AsyncWrite` stream. On a `TcpStream`
//! (what the server hands it today) a vectored write is one `writev`.
//!
//! Nothing here waits on the peer except [`Io::flush_until`] and
//! [`Io::finish`]: queued bytes are bounded, and passing the bound is the
//! caller's cue to close the connection as a slow consumer.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wsframe::{Decoder, Head, Message, OpCode, Role};

use crate::protocol::ws::close;

/// What a WebSocket can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Slices handed to the kernel per vectored write; a frame takes two.
const IOV_MAX: usize = 128;
/// Read buffer: reserved when reading, released when idle and large.
const READ_CHUNK: usize = 1024;
const KEEP_READ_CAPACITY: usize = 8 * 1024;
/// How long a closed connection keeps reading (and dropping) what the peer
/// still sends, waiting for it to close too.
const LINGER: Duration = Duration::from_secs(2);

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer is gone or the socket failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Passing the outbound bound: the peer does not read fast enough.
pub const SLOW_CONSUMER: End = End::Close(close::SLOW_CONSUMER, "slow consumer: resume with since");

/// A data message for the layer above.
#[derive(Debug)]
pub enum Data {
    Text(String),
    Binary(Bytes),
}

/// A frame waiting to go out.
struct Out {
    head: Head,
    payload: Bytes,
    /// Bytes of header and payload already written.
    sent: usize,
}

impl Out {
    fn len(&self) -> usize {
        self.head.as_bytes().len() + self.payload.len()
    }
}

pub struct Io<S> {
    stream: S,
    rbuf: BytesMut,
    decoder: Decoder,
    out: VecDeque<Out>,
    out_bytes: usize,
    /// Bytes that may wait for the peer before it is a slow consumer.
    limit: usize,
}

impl<S: Stream> Io<S> {
    /// `leftover` is what was read past the upgrade request; messages are at
    /// most `max_message` bytes; at most `limit` bytes may wait for the peer.
    pub fn new(stream: S, leftover: Bytes, max_message: usize, limit: usize) -> Self {
        Self {
            stream,
            rbuf: BytesMut::from(&leftover[..]),
            decoder: Decoder::new(Role::Server, max_message),
            out: VecDeque::new(),
            out_bytes: 0,
            limit,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out_bytes
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn has_unsent(&self) -> bool {
        !self.out.is_empty()
    }

    /// Queues a frame without checking the bound: a caller queuing a batch
    /// checks once after it, with [`Io::check_bound`].
    pub fn push(&mut self, opcode: OpCode, payload: Bytes) {
        let out = Out { head: Head::new(opcode, payload.len(), None), payload, sent: 0 };
        self.out_bytes += out.len();
        self.out.push_back(out);
    }

    /// Queues a frame: a slow consumer once the queue is over its bound.
    pub fn queue(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), End> {
        self.push(opcode, payload);
        self.check_bound()
    }

    pub fn check_bound(&self) -> Result<(), End> {
        if self.out_bytes > self.limit { Err(SLOW_CONSUMER) } else { Ok(()) }
    }

    /// Drops everything queued that has not started going out, keeping a
    /// partly written frame so that the stream stays well-formed.
    pub fn discard_unsent(&mut self) {
        let keep = self.out.pop_front().filter(|f| f.sent > 0);
        self.out.clear();
        self.out_bytes = 0;
        if let Some(f) = keep {
            self.out_bytes = f.len() - f.sent;
            self.out.push_back(f);
        }
    }

    /// Writes until the queue is empty (`Ready(Ok)`), the stream is full
    /// (`Pending`, woken when it can take more) or fails.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); IOV_MAX];
            let mut n = 0;
            for f in &self.out {
                if n + 2 > IOV_MAX {
                    break;
                }
                let head = f.head.as_bytes();
                if f.sent < head.len() {
                    slices[n] = IoSlice::new(&head[f.sent..]);
                    n += 1;
                    if !f.payload.is_empty() {
                        slices[n] = IoSlice::new(&f.payload);
                        n += 1;
                    }
                } else {
                    slices[n] = IoSlice::new(&f.payload[f.sent - head.len()..]);
                    n += 1;
                }
            }
            match ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..n])) {
                Ok(0) => return Poll::Ready(Err(End::Gone)),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Poll::Ready(Err(End::Gone)),
            }
        }
        Pin::new(&mut self.stream).poll_flush(cx).map_err(|_| End::Gone)
    }

    fn advance(&mut self, mut written: usize) {
        self.out_bytes -= written;
        while written > 0 {
            let front = self.out.front_mut().expect("written bytes were queued");
            let left = front.len() - front.sent;
            if written < left {
                front.sent += written;
                return;
            }
            written -= left;
            self.out.pop_front();
        }
    }

    /// Writes what the stream takes now, without waiting.
    pub fn try_flush(&mut self) -> Result<(), End> {
        // A task that is interested in writability polls `poll_write` with
        // its own waker before it sleeps (the session loop does).
        match self.poll_write(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Waits until no more than `target` bytes are queued, for at most `within`.
    pub async fn flush_until(&mut self, target: usize, within: Duration) -> Result<(), End> {
        let written = std::future::poll_fn(|cx| match self.poll_write(cx) {
            Poll::Pending if self.out_bytes <= target => Poll::Ready(Ok(())),
            other => other,
        });
        tokio::time::timeout(within, written).await.unwrap_or(Err(End::Gone))
    }

    /// Reads what the stream has: `Ready(Ok(false))` at its end.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, End>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)) {
            Ok(0) => Poll::Ready(Ok(false)),
            Ok(_) => Poll::Ready(Ok(true)),
            Err(e) if e.kind() == ErrorKind::Interrupted => Poll::Ready(Ok(true)),
            Err(_) => Poll::Ready(Err(End::Gone)),
        }
    }

    /// The next data message already read. Control frames are handled on
    /// the way: a ping is answered with a pong (queued under the bound like
    /// everything else, so a peer that pings and never reads is a slow
    /// consumer), a pong is dropped, the peer's close ends the connection
    /// (answered with 1000 whatever valid code it gave: the closing
    /// handshake completed normally; RFC 6455 §5.5.1 lets the answer echo
    /// the code or not, and clients such as Autobahn's expect 1000 after they
    /// close with 1001), and a frame that breaks RFC 6455 fails it with the
    /// code the decoder gives.
    pub fn next_data(&mut self) -> Result<Option<Data>, End> {
        loop {
            let msg = match self.decoder.next(&mut self.rbuf) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_READ_CAPACITY {
                        // A big message came and went: do not keep its buffer for an idle connection.
                        self.rbuf = BytesMut::new();
                    }
                    return Ok(None);
                }
                Err(v) => return Err(End::Close(v.code, v.reason)),
            };
            match msg {
                Message::Text(t) => return Ok(Some(Data::Text(t))),
                Message::Binary(b) => return Ok(Some(Data::Binary(b))),
                Message::Ping(payload) => self.queue(OpCode::Pong, payload)?,
                Message::Pong(_) => {}
                Message::Close(_) => return Err(End::Close(close::NORMAL, "")),
            }
        }
    }

    /// Ends the connection. For a close, the close frame goes after what is
    /// queued, within `grace`; then our side is shut and what the peer
    /// still sends is read and dropped until it closes too (for a short
    /// while), so that bytes in flight do not turn the close into a reset
    /// that could destroy the close frame before the peer reads it.
    pub async fn finish(mut self, end: End, grace: Duration) {
        let End::Close(code, reason) = end else { return };
        self.push(OpCode::Close, Bytes::from(wsframe::close_payload(code, reason)));
        if self.flush_until(0, grace).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        let linger = std::future::poll_fn(|cx| {
            loop {
                self.rbuf.clear();
                match ready!(self.poll_read(cx)) {
                    Ok(true) => continue,
                    Ok(false) | Err(_) => return Poll::Ready(()),
                }
            }
        });
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn client_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wsframe::encode_masked(&mut out, op, payload, [1, 2, 3, 4]);
        out
    }

    #[tokio::test]
    async fn runs_over_any_stream_and_answers_control_frames() {
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        let mut io = Io::new(ours, Bytes::from(client_frame(OpCode::Ping, b"hi")), 1024, 1 << 16);
        peer.write_all(&client_frame(OpCode::Text, b"hello")).await.unwrap();
        peer.write_all(&client_frame(OpCode::Close, &1000u16.to_be_bytes())).await.unwrap();
        let mut got = Vec::new();
        let end = loop {
            match io.next_data() {
                Ok(Some(Data::Text(t))) => got.push(t),
                Ok(Some(Data::Binary(_))) => unreachable!(),
                Ok(None) => assert!(std::future::poll_fn(|cx| io.poll_read(cx)).await.unwrap()),
                Err(end) => break end,
            }
        };
        assert_eq!((got, end), (vec!["hello".to_owned()], End::Close(1000, "")));
        io.push(OpCode::Text, Bytes::from_static(b"bye"));
        let reader = tokio::spawn(async move {
            let mut wire = Vec::new();
            peer.read_to_end(&mut wire).await.unwrap();
            wire
        });
        io.finish(end, Duration::from_secs(5)).await;
        let wire = reader.await.unwrap();
        assert_eq!(wire, [&[0x8A, 2, b'h', b'i'][..], &[0x81, 3, b'b', b'y', b'e'], &[0x88, 2, 0x03, 0xe8]].concat());
    }

    #[tokio::test]
    async fn every_byte_counts_against_the_bound() {
        // The peer pings and never reads: the pongs pass the bound.
        let (ours, _peer) = tokio::io::duplex(64);
        let pings: Vec<u8> = (0..20).flat_map(|_| client_frame(OpCode::Ping, &[b'p'; 125])).collect();
        let mut io = Io::new(ours, Bytes::from(pings), 1024, 1000);
        let mut answered = 0;
        let end = loop {
            match io.next_data() {
                Ok(_) => {
                    answered += 1;
                    io.try_flush().unwrap();
                }
                Err(end) => break end,
            }
        };
        assert_eq!(end, SLOW_CONSUMER);
        assert!(answered < 10 && io.queued() <= 1000 + 127, "{answered} pongs, {} bytes queued", io.queued());
    }

    #[tokio::test]
    async fn a_partly_written_frame_survives_a_discard() {
        let (ours, mut peer) = tokio::io::duplex(10);
        let mut io = Io::new(ours, Bytes::new(), 1024, 1 << 20);
        io.push(OpCode::Text, Bytes::from(vec![b'a'; 100]));
        io.push(OpCode::Text, Bytes::from(vec![b'b'; 100]));
        io.try_flush().unwrap();
        assert_eq!(io.queued(), 204 - 10);
        io.discard_unsent();
        assert_eq!(io.queued(), 102 - 10, "the started frame is kept whole");
        let reader = tokio::spawn(async move {
            let mut wire = Vec::new();
            peer.read_to_end(&mut wire).await.unwrap();
            wire
        });
        io.finish(End::Close(4008, "slow"), Duration::from_secs(5)).await;
        let wire = reader.await.unwrap();
        assert_eq!(&wire[..2], &[0x81, 100]);
        assert_eq!(&wire[102..], &[0x88, 6, 0x0f, 0xa8, b's', b'l', b'o', b'w']);
    }
}

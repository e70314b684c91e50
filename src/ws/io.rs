//! One WebSocket's socket: a read buffer feeding the frame decoder, and an
//! outbound queue of ready-made frames written with non-blocking `writev`.
//!
//! Nothing here ever waits on the peer except the explicit `flush_*` calls:
//! queued bytes are bounded, and going over the bound is the caller's cue to
//! close the connection as a slow consumer.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

use super::frame::{Decoder, Incoming, Violation};
use crate::protocol::limits::MAX_FRAME_BYTES;

/// Frames handed to the kernel per `writev`.
const IOV_MAX: usize = 64;
/// Read buffer: reserved when reading, released when idle and large.
const READ_CHUNK: usize = 1024;
const KEEP_READ_CAPACITY: usize = 8 * 1024;

/// The peer is gone or the socket failed.
#[derive(Debug)]
pub struct Broken;

pub struct Io {
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// The front frame is partly written: it must be finished before any
    /// other frame, or the stream is corrupt.
    front_partial: bool,
}

impl Io {
    /// `leftover` is what hyper read past the upgrade request.
    pub fn new(stream: TcpStream, leftover: Bytes) -> Self {
        Self {
            stream,
            rbuf: BytesMut::from(&leftover[..]),
            decoder: Decoder::new(MAX_FRAME_BYTES),
            out: VecDeque::new(),
            out_bytes: 0,
            front_partial: false,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out_bytes
    }

    pub fn queue(&mut self, frame: Bytes) {
        self.out_bytes += frame.len();
        self.out.push_back(frame);
    }

    /// Drops everything queued that the kernel has not started on, keeping a
    /// partly written frame so that the stream stays well-formed.
    pub fn discard_unsent(&mut self) {
        let keep = if self.front_partial { self.out.pop_front() } else { None };
        self.out.clear();
        self.out_bytes = 0;
        if let Some(f) = keep {
            self.queue(f);
        }
    }

    /// Writes as much as the socket takes now, without waiting.
    pub fn try_flush(&mut self) -> Result<(), Broken> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); IOV_MAX];
            let mut n = 0;
            for (slot, b) in slices.iter_mut().zip(&self.out) {
                *slot = IoSlice::new(b);
                n += 1;
            }
            match self.stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(Broken),
                Ok(mut n) => {
                    self.out_bytes -= n;
                    while n > 0 {
                        let front = self.out.front_mut().expect("written bytes were queued");
                        if n >= front.len() {
                            n -= front.len();
                            self.out.pop_front();
                            self.front_partial = false;
                        } else {
                            front.advance(n);
                            self.front_partial = true;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Broken),
            }
        }
        Ok(())
    }

    /// Waits until the socket can take more, then writes.
    pub async fn flush_some(&mut self) -> Result<(), Broken> {
        self.stream.writable().await.map_err(|_| Broken)?;
        self.try_flush()
    }

    /// Waits until no more than `target` bytes are queued, for at most `within`.
    pub async fn flush_until(&mut self, target: usize, within: Duration) -> Result<(), Broken> {
        self.try_flush()?;
        let deadline = tokio::time::Instant::now() + within;
        while self.out_bytes > target {
            match tokio::time::timeout_at(deadline, self.flush_some()).await {
                Ok(r) => r?,
                Err(_) => return Err(Broken),
            }
        }
        Ok(())
    }

    pub fn has_unsent(&self) -> bool {
        !self.out.is_empty()
    }

    /// Ready when the socket can take more (or failed: the write says so).
    pub fn poll_writable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.stream.poll_write_ready(cx).map(|_| ())
    }

    /// Ready when the socket has bytes (or failed: the read says so).
    pub fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.stream.poll_read_ready(cx).map(|_| ())
    }

    /// Reads what the socket has now (after `readable`). Returns false at EOF.
    pub fn try_read(&mut self) -> Result<bool, Broken> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(true),
            Err(_) => Err(Broken),
        }
    }

    /// The next complete message already read, if any.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, Violation> {
        let m = self.decoder.next(&mut self.rbuf)?;
        if m.is_none() && self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_READ_CAPACITY {
            // A big message came and went: do not keep its buffer for an idle connection.
            self.rbuf = BytesMut::new();
        }
        Ok(m)
    }

    /// Half-closes our side after a close frame went out.
    pub async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.shutdown().await;
    }
}

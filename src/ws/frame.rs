//! RFC 6455 framing, server side: encoding the (unmasked) frames we send and
//! decoding the (masked) frames clients send, with the protocol's limits.
//!
//! Parlor frames its own WebSocket traffic instead of going through a
//! general WebSocket library because of the fan-out: an event frame is built
//! once per room — header and payload, ready for the wire — and the same
//! bytes are written to every subscriber's socket, several at a time with
//! one `writev`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::ws::close;

const FIN: u8 = 0x80;
const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The GUID of RFC 6455 §1.3, for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(FIN | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A complete text frame carrying `text`.
pub fn text(text: &str) -> Bytes {
    encode(OP_TEXT, text.as_bytes())
}

/// A close frame with a status code and a short reason (cut to fit 125 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

pub fn ping() -> Bytes {
    encode(OP_PING, b"")
}

pub fn pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, payload)
}

/// A complete message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close code, if it gave one.
    Close(Option<u16>),
}

/// Why the connection must be closed, as a close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const PROTOCOL_ERROR: u16 = 1002;

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Decodes client frames from bytes as they arrive, reassembling fragmented
/// messages, never holding more than one message of at most `max` bytes.
pub struct Decoder {
    max: usize,
    /// A fragmented message being reassembled: (opcode, payload so far).
    partial: Option<(u8, BytesMut)>,
}

impl Decoder {
    pub fn new(max: usize) -> Self {
        Self { max, partial: None }
    }

    /// The next complete message in `buf` (consuming its bytes), `Ok(None)`
    /// if more bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, Violation> {
        loop {
            if buf.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (buf[0], buf[1]);
            if b0 & 0x70 != 0 {
                return Err(violation(PROTOCOL_ERROR, "reserved bits set"));
            }
            if b1 & 0x80 == 0 {
                return Err(violation(PROTOCOL_ERROR, "client frames must be masked"));
            }
            let fin = b0 & FIN != 0;
            let opcode = b0 & 0x0F;
            let (len, header) = match b1 & 0x7F {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
                126 | 127 => return Ok(None),
                n => (n as u64, 2),
            };
            let is_control = opcode & 0x8 != 0;
            if is_control && (len > 125 || !fin) {
                return Err(violation(PROTOCOL_ERROR, "bad control frame"));
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.1.len());
            if len > self.max as u64 || so_far as u64 + len > self.max as u64 {
                return Err(violation(close::TOO_BIG, "messages are at most 65536 bytes"));
            }
            let len = len as usize;
            if buf.len() < header + 4 + len {
                // Reserve once for the whole frame rather than growing in steps.
                buf.reserve(header + 4 + len - buf.len());
                return Ok(None);
            }
            let mask: [u8; 4] = buf[header..header + 4].try_into().expect("4 bytes");
            buf.advance(header + 4);
            let mut payload = buf.split_to(len);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            match opcode {
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    if payload.len() == 1 || std::str::from_utf8(payload.get(2..).unwrap_or_default()).is_err() {
                        return Err(violation(PROTOCOL_ERROR, "bad close frame"));
                    }
                    return Ok(Some(Incoming::Close(code)));
                }
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(violation(PROTOCOL_ERROR, "a new message inside a fragmented one"));
                    }
                    if fin {
                        return finish(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
                OP_CONT => {
                    let Some((op, mut data)) = self.partial.take() else {
                        return Err(violation(PROTOCOL_ERROR, "continuation without a message"));
                    };
                    data.extend_from_slice(&payload);
                    if fin {
                        return finish(op, data).map(Some);
                    }
                    self.partial = Some((op, data));
                }
                _ => return Err(violation(PROTOCOL_ERROR, "unknown opcode")),
            }
        }
    }
}

fn finish(opcode: u8, payload: BytesMut) -> Result<Incoming, Violation> {
    if opcode == OP_BINARY {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload.to_vec())
        .map(Incoming::Text)
        .map_err(|_| violation(close::INVALID_PAYLOAD, "text frames must be UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn encodes_all_three_length_forms() {
        assert_eq!(&text("hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text(&"x".repeat(300));
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        let f = text(&"x".repeat(70_000));
        assert_eq!(&f[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
        assert_eq!(&close(4008, "slow")[..], &[0x88, 6, 0x0f, 0xa8, b's', b'l', b'o', b'w']);
    }

    #[test]
    fn decodes_messages_split_anywhere_and_fragmented() {
        let mut wire = masked(0x81, b"{\"type\":\"ping\"}");
        wire.extend(masked(0x01, b"hel"));
        wire.extend(masked(0x89, b"p")); // a ping between fragments is allowed
        wire.extend(masked(0x80, "lo ✓".as_bytes()));
        wire.extend(masked(0x82, &[1, 2]));
        wire.extend(masked(0x88, &[0x03, 0xe8]));
        let mut d = Decoder::new(1 << 16);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(m) = d.next(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                Incoming::Text("{\"type\":\"ping\"}".into()),
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text("hello ✓".into()),
                Incoming::Binary,
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn refuses_what_the_protocol_forbids() {
        let mut d = Decoder::new(100);
        let code = |d: &mut Decoder, bytes: Vec<u8>| d.next(&mut BytesMut::from(&bytes[..])).unwrap_err().code;
        assert_eq!(code(&mut d, vec![0x81, 0x02, b'h', b'i']), 1002, "unmasked");
        assert_eq!(code(&mut Decoder::new(100), masked(0x81, &[b'x'; 101])), 1009, "too big");
        assert_eq!(code(&mut Decoder::new(1 << 20), masked(0x81, &[0xff, 0xfe])), 1007, "not UTF-8");
        assert_eq!(code(&mut Decoder::new(100), masked(0xC1, b"x")), 1002, "reserved bit");
        assert_eq!(code(&mut Decoder::new(100), masked(0x80, b"x")), 1002, "stray continuation");
        assert_eq!(code(&mut Decoder::new(100), masked(0x09, b"x")), 1002, "fragmented ping");
        assert_eq!(code(&mut Decoder::new(100), masked(0x83, b"x")), 1002, "unknown opcode");
        let mut d = Decoder::new(100);
        let mut buf = BytesMut::from(&masked(0x01, &[b'a'; 60])[..]);
        assert_eq!(d.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(&masked(0x80, &[b'a'; 60]));
        assert_eq!(d.next(&mut buf).unwrap_err().code, 1009, "the limit is on the whole message");
    }

    #[test]
    fn a_header_promising_a_huge_frame_is_refused_before_buffering_it() {
        let mut d = Decoder::new(1 << 16);
        let mut buf = BytesMut::from(&[0x81u8, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(d.next(&mut buf).unwrap_err().code, 1009);
    }
}

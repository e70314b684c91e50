//! RFC 6455 framing, both ends, with no I/O: what Parlor's server
//! (`src/ws/`) and its load tool (`tools/chatbench`) share.
//!
//! - [`parse_header`] reads one frame header and enforces what the RFC makes
//!   a protocol error (reserved bits, unknown opcodes, control frames that
//!   are long or fragmented, a mask from the wrong end);
//! - [`Head`] encodes a header (masked when a client sends), and
//!   [`apply_mask`] (un)masks a payload eight bytes at a time;
//! - [`Decoder`] turns bytes as they arrive into whole messages: it
//!   reassembles fragments, bounds a message's size, checks text for UTF-8
//!   *as it arrives* (a bad byte fails the connection at once, not when the
//!   message is complete) and checks close frames (§7.4 codes, UTF-8 reason);
//! - [`accept_key`] answers `Sec-WebSocket-Key`.
//!
//! Parlor frames its own WebSocket traffic because of the fan-out: an event
//! is encoded once per room and the same bytes are written to every
//! subscriber, several frames per `writev`, behind a header of 2–10 bytes
//! built per write. A general WebSocket library owns its write path and
//! would copy each frame per connection.

#![forbid(unsafe_code)]

pub mod close;
mod decoder;
mod utf8;

pub use decoder::{Decoder, Message};
pub use utf8::Utf8Validator;

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// The opcode of a header's low nibble; `None` for the reserved ones.
    pub fn from_u8(op: u8) -> Option<Self> {
        Some(match op {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented.
    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// Which end is decoding. A server reads masked frames and must fail an
/// unmasked one; a client reads unmasked frames and must fail a masked one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Why the connection must be failed: the close code to send and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for Violation {}

pub(crate) fn protocol_error(reason: &'static str) -> Violation {
    Violation { code: close::PROTOCOL_ERROR, reason }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    /// Bytes of header, mask key included: the payload starts here.
    pub len: usize,
    pub payload_len: u64,
}

/// Parses the frame header at the start of `buf`: `Ok(None)` when more
/// bytes are needed, an error when the frame breaks RFC 6455 §5 for this
/// `role` (no extension is ever negotiated, so every reserved bit is one).
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(protocol_error("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(protocol_error("unknown opcode"))?;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(protocol_error("client frames must be masked")),
        (Role::Client, true) => return Err(protocol_error("server frames must not be masked")),
        _ => {}
    }
    let (payload_len, mut len) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    if payload_len >> 63 != 0 {
        return Err(protocol_error("frame length has its top bit set"));
    }
    if opcode.is_control() && (payload_len > 125 || !fin) {
        return Err(protocol_error("control frames are unfragmented and at most 125 bytes"));
    }
    let mask = if masked {
        let Some(key) = buf.get(len..len + 4) else { return Ok(None) };
        len += 4;
        Some(key.try_into().expect("4 bytes"))
    } else {
        None
    };
    Ok(Some(Header { fin, opcode, mask, len, payload_len }))
}

/// An encoded frame header: 2 to 14 bytes, kept inline so that a frame can
/// go out as (header, shared payload) without allocating.
#[derive(Clone, Copy)]
pub struct Head {
    bytes: [u8; 14],
    len: u8,
}

impl Head {
    /// The header of a final frame carrying `len` payload bytes, masked with
    /// `mask` when a client sends it.
    pub fn new(opcode: OpCode, len: usize, mask: Option<[u8; 4]>) -> Self {
        Self::with_fin(true, opcode, len, mask)
    }

    pub fn with_fin(fin: bool, opcode: OpCode, len: usize, mask: Option<[u8; 4]>) -> Self {
        let mut bytes = [0u8; 14];
        bytes[0] = (fin as u8) << 7 | opcode as u8;
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let mut n = match len {
            n if n < 126 => {
                bytes[1] = mask_bit | n as u8;
                2
            }
            n if n <= u16::MAX as usize => {
                bytes[1] = mask_bit | 126;
                bytes[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                bytes[1] = mask_bit | 127;
                bytes[2..10].copy_from_slice(&(n as u64).to_be_bytes());
                10
            }
        };
        if let Some(m) = mask {
            bytes[n..n + 4].copy_from_slice(&m);
            n += 4;
        }
        Self { bytes, len: n as u8 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The bytes a header takes for a payload of `len` (unmasked).
    pub fn size_for(len: usize) -> usize {
        match len {
            n if n < 126 => 2,
            n if n <= u16::MAX as usize => 4,
            _ => 10,
        }
    }
}

impl AsRef<[u8]> for Head {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Head({:02x?})", self.as_bytes())
    }
}

/// XORs `data` with the mask key, as if `data` started `offset` bytes into
/// the payload (so a payload can be unmasked in pieces as it arrives).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let m: [u8; 4] = std::array::from_fn(|i| mask[(offset + i) & 3]);
    let m8 = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
}

/// Appends one whole client frame (masked with `mask`) to `out`.
pub fn encode_masked(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    out.extend_from_slice(Head::new(opcode, payload.len(), Some(mask)).as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// The payload of a close frame: the code, then a reason cut (at a
/// character boundary) to fit the 125 bytes a control frame may carry.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// The GUID of RFC 6455 §1.3, for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut h = sha1_smol::Sha1::new();
    h.update(key);
    h.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn heads_in_all_three_length_forms() {
        assert_eq!(Head::new(OpCode::Text, 2, None).as_bytes(), &[0x81, 2]);
        assert_eq!(Head::new(OpCode::Text, 300, None).as_bytes(), &[0x81, 126, 1, 44]);
        let h = Head::new(OpCode::Binary, 70_000, None);
        assert_eq!(&h.as_bytes()[..2], &[0x82, 127]);
        assert_eq!(u64::from_be_bytes(h.as_bytes()[2..10].try_into().unwrap()), 70_000);
        assert_eq!(Head::new(OpCode::Ping, 0, Some([1, 2, 3, 4])).as_bytes(), &[0x89, 0x80, 1, 2, 3, 4]);
        assert_eq!(Head::with_fin(false, OpCode::Text, 1, None).as_bytes(), &[0x01, 1]);
        for n in [0, 125, 126, 65535, 65536] {
            assert_eq!(Head::new(OpCode::Text, n, None).as_bytes().len(), Head::size_for(n));
        }
    }

    #[test]
    fn headers_round_trip_for_both_roles() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let h = Head::new(OpCode::Text, len, Some([9, 8, 7, 6]));
            let got = parse_header(h.as_bytes(), Role::Server).unwrap().unwrap();
            assert_eq!(
                (got.opcode, got.fin, got.mask, got.len, got.payload_len),
                (OpCode::Text, true, Some([9, 8, 7, 6]), h.as_bytes().len(), len as u64)
            );
            assert!(parse_header(&h.as_bytes()[..h.as_bytes().len() - 1], Role::Server).unwrap().is_none());
            let h = Head::new(OpCode::Binary, len, None);
            let got = parse_header(h.as_bytes(), Role::Client).unwrap().unwrap();
            assert_eq!((got.mask, got.payload_len), (None, len as u64));
        }
    }

    #[test]
    fn headers_that_break_the_rfc() {
        let code = |b: &[u8], role| parse_header(b, role).unwrap_err().code;
        assert_eq!(code(&[0x81, 0x02], Role::Server), 1002, "unmasked from a client");
        assert_eq!(code(&[0x81, 0x82, 0, 0, 0, 0], Role::Client), 1002, "masked from a server");
        assert_eq!(code(&[0xC1, 0x80], Role::Server), 1002, "reserved bit");
        assert_eq!(code(&[0x83, 0x80], Role::Server), 1002, "reserved opcode");
        assert_eq!(code(&[0x09, 0x80], Role::Server), 1002, "fragmented ping");
        assert_eq!(code(&[0x89, 0xFE, 0, 126], Role::Server), 1002, "long ping");
        assert_eq!(code(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], Role::Client), 1002, "top length bit");
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let data: Vec<u8> = (0..100u8).collect();
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        assert!(whole.iter().enumerate().all(|(i, b)| *b == data[i] ^ mask[i & 3]));
        let mut pieces = data.clone();
        let (a, rest) = pieces.split_at_mut(13);
        let (b, c) = rest.split_at_mut(50);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 13);
        apply_mask(c, mask, 63);
        assert_eq!(pieces, whole);
    }

    #[test]
    fn close_payloads_fit_a_control_frame() {
        assert_eq!(close_payload(4008, "slow"), [0x0f, 0xa8, b's', b'l', b'o', b'w']);
        let p = close_payload(1000, &"é".repeat(100));
        assert!(p.len() <= 125 && std::str::from_utf8(&p[2..]).is_ok());
    }
}

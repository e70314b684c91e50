//! From bytes as they arrive to whole messages, for either end.

use bytes::{Buf, Bytes, BytesMut};

use crate::utf8::Utf8Validator;
use crate::{OpCode, Role, Violation, apply_mask, close, parse_header, protocol_error};

/// A whole message, or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The peer's close frame with its code and reason, if it gave a code
    /// (already checked: a code a peer may send, a UTF-8 reason).
    Close(Option<(u16, String)>),
}

const NOT_UTF8: Violation = Violation { code: close::INVALID_PAYLOAD, reason: "text must be UTF-8" };

/// Decodes frames from a buffer the caller fills, reassembling fragmented
/// messages. It never holds more than one message of at most `max` bytes
/// (the frame being read stays in the caller's buffer until it is whole),
/// and it checks text as it arrives: an invalid byte fails the connection
/// as soon as it is read, even in the middle of a frame.
pub struct Decoder {
    role: Role,
    max: usize,
    /// The fragmented message being reassembled: its opcode and payload so far.
    partial: Option<(OpCode, BytesMut)>,
    /// The UTF-8 state of the text message being received.
    utf8: Utf8Validator,
    /// Payload bytes of the (incomplete) frame at the head of the buffer
    /// that are already unmasked and checked.
    scanned: usize,
}

impl Decoder {
    /// `max` bounds a whole message (all its fragments), in bytes.
    pub fn new(role: Role, max: usize) -> Self {
        Self { role, max, partial: None, utf8: Utf8Validator::default(), scanned: 0 }
    }

    /// The next message whose last byte is in `buf` (its bytes are taken
    /// from `buf`), `Ok(None)` if more bytes are needed. After an error the
    /// connection must be failed with its code: the decoder is spent.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Violation> {
        loop {
            let Some(h) = parse_header(buf, self.role)? else { return Ok(None) };
            let in_text = match (h.opcode, &self.partial) {
                (OpCode::Continuation, None) => return Err(protocol_error("continuation without a message")),
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(protocol_error("a new message inside a fragmented one"));
                }
                (OpCode::Text, None) => true,
                (OpCode::Continuation, Some((op, _))) => *op == OpCode::Text,
                _ => false,
            };
            let so_far = self.partial.as_ref().map_or(0, |p| p.1.len()) as u64;
            if so_far + h.payload_len > self.max as u64 {
                return Err(Violation { code: close::TOO_BIG, reason: "message too big" });
            }
            let len = h.payload_len as usize;
            let total = h.len + len;
            if buf.len() < total {
                if in_text {
                    self.scan(buf, h.len, h.mask, buf.len() - h.len)?;
                }
                // Reserve once for the whole frame rather than growing in steps.
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let scanned = std::mem::take(&mut self.scanned);
            if let Some(mask) = h.mask {
                apply_mask(&mut buf[h.len + scanned..total], mask, scanned);
            }
            buf.advance(h.len);
            let payload = buf.split_to(len);
            match h.opcode {
                OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
                OpCode::Close => return close_frame(&payload).map(Some),
                // The common case: a whole message in one frame, checked once.
                OpCode::Text if h.fin && scanned == 0 => return text(payload).map(Some),
                OpCode::Binary if h.fin => return Ok(Some(Message::Binary(payload.freeze()))),
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    if in_text {
                        self.utf8.feed(&payload[scanned..]).map_err(|_| NOT_UTF8)?;
                    }
                    let mut data = match self.partial.take() {
                        Some((op, mut data)) => {
                            data.extend_from_slice(&payload);
                            (op, data)
                        }
                        None => (h.opcode, payload),
                    };
                    if !h.fin {
                        self.partial = Some(data);
                        continue;
                    }
                    if data.0 == OpCode::Binary {
                        return Ok(Some(Message::Binary(std::mem::take(&mut data.1).freeze())));
                    }
                    let complete = self.utf8.is_complete();
                    self.utf8.reset();
                    if !complete {
                        return Err(NOT_UTF8);
                    }
                    return text(data.1).map(Some);
                }
            }
        }
    }

    /// Unmasks and checks the text payload bytes that have arrived of a frame
    /// that has not, so that bad UTF-8 fails the connection without waiting
    /// for the rest.
    fn scan(&mut self, buf: &mut BytesMut, at: usize, mask: Option<[u8; 4]>, avail: usize) -> Result<(), Violation> {
        if avail <= self.scanned {
            return Ok(());
        }
        let piece = &mut buf[at + self.scanned..at + avail];
        if let Some(mask) = mask {
            apply_mask(piece, mask, self.scanned);
        }
        self.utf8.feed(piece).map_err(|_| NOT_UTF8)?;
        self.scanned = avail;
        Ok(())
    }
}

fn text(payload: BytesMut) -> Result<Message, Violation> {
    String::from_utf8(payload.to_vec()).map(Message::Text).map_err(|_| NOT_UTF8)
}

fn close_frame(payload: &[u8]) -> Result<Message, Violation> {
    let [hi, lo, reason @ ..] = payload else {
        return match payload.len() {
            0 => Ok(Message::Close(None)),
            _ => Err(protocol_error("a close frame of one byte")),
        };
    };
    let code = u16::from_be_bytes([*hi, *lo]);
    if !close::is_valid(code) {
        return Err(protocol_error("invalid close code"));
    }
    let reason = std::str::from_utf8(reason)
        .map_err(|_| Violation { code: close::INVALID_PAYLOAD, reason: "close reason must be UTF-8" })?;
    Ok(Message::Close(Some((code, reason.to_owned()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Head, encode_masked};
    use bytes::BufMut;
    use proptest::prelude::*;

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let op = OpCode::from_u8(b0 & 0x0F).unwrap();
        let mut f =
            Head::with_fin(b0 & 0x80 != 0, op, payload.len(), Some([0x12, 0x34, 0x56, 0x78])).as_bytes().to_vec();
        let start = f.len();
        f.extend_from_slice(payload);
        apply_mask(&mut f[start..], [0x12, 0x34, 0x56, 0x78], 0);
        f
    }

    fn decode_all(d: &mut Decoder, wire: &[u8]) -> Result<Vec<Message>, Violation> {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.put_u8(*byte);
            while let Some(m) = d.next(&mut buf)? {
                got.push(m);
            }
        }
        Ok(got)
    }

    #[test]
    fn decodes_messages_split_anywhere_and_fragmented() {
        let mut wire = masked(0x81, b"{\"type\":\"ping\"}");
        wire.extend(masked(0x01, b"hel"));
        wire.extend(masked(0x89, b"p")); // a ping between fragments is allowed
        wire.extend(masked(0x80, "lo ✓".as_bytes()));
        wire.extend(masked(0x82, &[1, 2]));
        wire.extend(masked(0x8A, b""));
        wire.extend(masked(0x88, &[0x03, 0xe8, b'o', b'k']));
        let got = decode_all(&mut Decoder::new(Role::Server, 1 << 16), &wire).unwrap();
        assert_eq!(
            got,
            vec![
                Message::Text("{\"type\":\"ping\"}".into()),
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text("hello ✓".into()),
                Message::Binary(Bytes::from_static(&[1, 2])),
                Message::Pong(Bytes::new()),
                Message::Close(Some((1000, "ok".into()))),
            ]
        );
    }

    #[test]
    fn refuses_what_the_protocol_forbids() {
        let code = |bytes: Vec<u8>, max| decode_all(&mut Decoder::new(Role::Server, max), &bytes).unwrap_err().code;
        assert_eq!(code(masked(0x81, &[b'x'; 101]), 100), 1009, "too big");
        assert_eq!(code(masked(0x81, &[0xff, 0xfe]), 100), 1007, "not UTF-8");
        assert_eq!(code(masked(0x80, b"x"), 100), 1002, "stray continuation");
        let mut two = masked(0x01, b"a");
        two.extend(masked(0x81, b"b"));
        assert_eq!(code(two, 100), 1002, "a message inside a message");
        let mut long = masked(0x01, &[b'a'; 60]);
        long.extend(masked(0x80, &[b'a'; 60]));
        assert_eq!(code(long, 100), 1009, "the limit is on the whole message");
        let mut cut = masked(0x01, &[0xce]);
        cut.extend(masked(0x80, b""));
        assert_eq!(code(cut, 100), 1007, "a message ending inside a character");
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(code(masked(0x88, &bad.to_be_bytes()), 100), 1002, "close code {bad}");
        }
        assert_eq!(code(masked(0x88, &[3]), 100), 1002, "one-byte close");
        assert_eq!(code(masked(0x88, &[3, 0xe8, 0xff]), 100), 1007, "close reason not UTF-8");
        for good in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let m = decode_all(&mut Decoder::new(Role::Server, 100), &masked(0x88, &good.to_be_bytes())).unwrap();
            assert_eq!(m, vec![Message::Close(Some((good, String::new())))]);
        }
    }

    #[test]
    fn bad_utf8_fails_before_the_frame_is_complete() {
        let wire = masked(0x81, &[b'a', b'b', 0xff, b'c', b'd', b'e']);
        let mut d = Decoder::new(Role::Server, 1 << 16);
        // Header, mask and the first three payload bytes: enough to know.
        let mut buf = BytesMut::from(&wire[..2 + 4 + 3]);
        assert_eq!(d.next(&mut buf).unwrap_err().code, 1007);
        // Valid text cut short waits, then decodes whole.
        let wire = masked(0x81, "héllo".as_bytes());
        let mut d = Decoder::new(Role::Server, 1 << 16);
        let mut buf = BytesMut::from(&wire[..8]);
        assert_eq!(d.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(&wire[8..]);
        assert_eq!(d.next(&mut buf).unwrap(), Some(Message::Text("héllo".into())));
    }

    #[test]
    fn a_header_promising_a_huge_frame_is_refused_before_buffering_it() {
        let mut d = Decoder::new(Role::Server, 1 << 16);
        let mut buf = BytesMut::from(&[0x81u8, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4][..]);
        assert_eq!(d.next(&mut buf).unwrap_err().code, 1009);
    }

    #[test]
    fn a_client_decodes_unmasked_frames() {
        let mut wire = Head::new(OpCode::Text, 2, None).as_bytes().to_vec();
        wire.extend_from_slice(b"hi");
        let got = decode_all(&mut Decoder::new(Role::Client, 100), &wire).unwrap();
        assert_eq!(got, vec![Message::Text("hi".into())]);
        assert_eq!(decode_all(&mut Decoder::new(Role::Client, 100), &masked(0x81, b"hi")).unwrap_err().code, 1002);
    }

    /// A message as a sender might frame it: fragments of any size,
    /// with pings between them.
    #[derive(Debug, Clone)]
    enum Sent {
        Text(String, Vec<usize>),
        Binary(Vec<u8>, Vec<usize>),
        Ping(Vec<u8>),
    }

    fn sent() -> impl Strategy<Value = Sent> {
        let cuts = proptest::collection::vec(any::<usize>(), 0..4);
        prop_oneof![
            (any::<String>(), cuts.clone()).prop_map(|(s, c)| Sent::Text(s, c)),
            (proptest::collection::vec(any::<u8>(), 0..300), cuts).prop_map(|(b, c)| Sent::Binary(b, c)),
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
        ]
    }

    fn frame_it(out: &mut Vec<u8>, op: OpCode, data: &[u8], cuts: &[usize], mask: [u8; 4]) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.retain(|c| *c != 0 && *c != data.len());
        let mut at = 0;
        let mut first = true;
        for end in cuts.into_iter().chain([data.len()]) {
            let fin = end == data.len();
            let opcode = if first { op } else { OpCode::Continuation };
            out.extend_from_slice(Head::with_fin(fin, opcode, end - at, Some(mask)).as_bytes());
            let start = out.len();
            out.extend_from_slice(&data[at..end]);
            apply_mask(&mut out[start..], mask, 0);
            // A ping between fragments, as a sender may.
            if !fin {
                encode_masked(out, OpCode::Ping, b"", mask);
            }
            at = end;
            first = false;
        }
    }

    proptest! {
        #[test]
        fn what_is_framed_is_decoded_whatever_the_reads(
            msgs in proptest::collection::vec(sent(), 1..6),
            reads in proptest::collection::vec(1usize..200, 1..20),
            mask in any::<[u8; 4]>(),
        ) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for m in &msgs {
                match m {
                    Sent::Text(s, cuts) => {
                        frame_it(&mut wire, OpCode::Text, s.as_bytes(), cuts, mask);
                        let pings = wire_pings(s.len(), cuts);
                        expected.extend(std::iter::repeat_n(Message::Ping(Bytes::new()), pings));
                        expected.push(Message::Text(s.clone()));
                    }
                    Sent::Binary(b, cuts) => {
                        frame_it(&mut wire, OpCode::Binary, b, cuts, mask);
                        expected.extend(std::iter::repeat_n(Message::Ping(Bytes::new()), wire_pings(b.len(), cuts)));
                        expected.push(Message::Binary(Bytes::from(b.clone())));
                    }
                    Sent::Ping(p) => {
                        encode_masked(&mut wire, OpCode::Ping, p, mask);
                        expected.push(Message::Ping(Bytes::from(p.clone())));
                    }
                }
            }
            let mut d = Decoder::new(Role::Server, 1 << 16);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < wire.len() {
                let n = reads[i % reads.len()].min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                i += 1;
                while let Some(m) = d.next(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn any_bytes_end_in_messages_more_bytes_or_a_close_code(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            client in any::<bool>(),
        ) {
            let role = if client { Role::Client } else { Role::Server };
            let mut d = Decoder::new(role, 1000);
            let mut buf = BytesMut::new();
            'feed: for c in chunks {
                buf.extend_from_slice(&c);
                loop {
                    match d.next(&mut buf) {
                        Ok(Some(m)) => {
                            if let Message::Text(t) | Message::Close(Some((_, t))) = &m { prop_assert!(t.len() <= 1000) }
                        }
                        Ok(None) => break,
                        Err(v) => {
                            prop_assert!([1002, 1007, 1009].contains(&v.code), "{v:?}");
                            break 'feed;
                        }
                    }
                }
                // Never more than one frame header plus the bound is held.
                prop_assert!(d.partial.as_ref().map_or(0, |p| p.1.len()) <= 1000);
            }
        }
    }

    /// How many pings `frame_it` puts between the fragments.
    fn wire_pings(len: usize, cuts: &[usize]) -> usize {
        let mut c: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).filter(|c| *c != 0 && *c != len).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    }
}

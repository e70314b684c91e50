//! The RFC 6455 decoder, both roles, fed the input in pieces whose sizes
//! come from the input itself: it must end in messages, a wait for more
//! bytes, or a close code, never a panic, and never hold more than its bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsframe::{Decoder, Message, Role};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let role = if ctl & 1 == 0 { Role::Server } else { Role::Client };
    let step = 1 + (ctl >> 1) as usize;
    let mut d = Decoder::new(role, MAX);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match d.next(&mut buf) {
                Ok(Some(Message::Text(t))) => assert!(t.len() <= MAX),
                Ok(Some(Message::Binary(b))) => assert!(b.len() <= MAX),
                Ok(Some(Message::Ping(p) | Message::Pong(p))) => assert!(p.len() <= 125),
                Ok(Some(Message::Close(c))) => {
                    if let Some((code, reason)) = c {
                        assert!(wsframe::close::is_valid(code) && reason.len() <= 123);
                    }
                }
                Ok(None) => break,
                Err(v) => {
                    assert!([1002, 1007, 1009].contains(&v.code));
                    return;
                }
            }
        }
    }
});

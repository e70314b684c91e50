//! A WebSocket text frame into a client frame: every input is a frame or a
//! refusal with a spec errcode, and an answer never echoes an id over the
//! 64-byte limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::protocol::ErrCode;
use parlor::protocol::limits::WS_ID_MAX;
use parlor::protocol::ws::parse_client_frame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_client_frame(text) {
        Ok(frame) => {
            // What parsed re-serializes and parses to the same frame.
            let again = serde_json::to_string(&frame).expect("client frames serialize");
            let back = parse_client_frame(&again).expect("a serialized frame parses");
            assert_eq!(format!("{frame:?}"), format!("{back:?}"));
        }
        Err((id, refusal)) => {
            assert!(id.is_none_or(|i| i.len() <= WS_ID_MAX));
            assert!(matches!(refusal.code, ErrCode::MalformedJson | ErrCode::InvalidField | ErrCode::UnknownType));
        }
    }
});

//! Request bodies into protocol types, as both wires parse them: every
//! input is a value or `malformed_json` / `invalid_field`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::protocol::ErrCode;
use parlor::protocol::accounts::{Empty, LoginRequest, RegisterRequest};
use parlor::protocol::federation::{FedJoinRequest, FedLeaveRequest, FedSendRequest, FedTransaction};
use parlor::protocol::parse::{Refusal, parse_json};
use parlor::protocol::rooms::SendRequest;

fn check<T: serde::de::DeserializeOwned>(data: &[u8], empty_ok: bool) {
    if let Err(Refusal { code, .. }) = parse_json::<T>(data, empty_ok) {
        assert!(matches!(code, ErrCode::MalformedJson | ErrCode::InvalidField), "{code:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 8 {
        0 => check::<RegisterRequest>(body, false),
        1 => check::<LoginRequest>(body, false),
        2 => check::<SendRequest>(body, false),
        3 => check::<Empty>(body, true),
        4 => check::<FedJoinRequest>(body, false),
        5 => check::<FedLeaveRequest>(body, false),
        6 => check::<FedSendRequest>(body, false),
        _ => check::<FedTransaction>(body, false),
    }
});

//! The federation `Authorization: Parlor-Signature k="v", …` header parser:
//! never a panic, and what it returns was in the header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::service::federation::parse_signature_header;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(fields) = parse_signature_header(s) {
        for (k, v) in fields {
            assert!(s.contains(k) && s.contains(v));
            assert!(!k.contains(',') && !v.contains(','));
        }
    }
});
